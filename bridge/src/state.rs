//! Shared state and the router.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use idbridge_core::{Clock, Store};
use idbridge_tokens::{
    AdminOps, Audit, AuditEvent, Authenticated, Authenticator, Kek, KeySet, Origin, Refusal,
    Rotate, TokenError, TokenService,
};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::server::PeerInfo;
use crate::settings::Settings;
use crate::{admin, authorize, device, discovery, negotiate, oauth, proxy, review};

struct Inner {
    service: TokenService,
    settings: RwLock<Arc<Settings>>,
    metrics: Metrics,
    ready: AtomicBool,
    // Failed password logins; kept across reloads.
    throttle: crate::throttle::Throttle,
}

/// The service's shared state; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

impl AppState {
    /// State over a store, keys and settings.
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        keys: KeySet,
        settings: Settings,
        audit: Audit,
    ) -> Self {
        Self::over(
            TokenService::new(store, clock, keys, settings.tokens.clone(), audit),
            settings,
        )
    }

    /// State over a token service (whose policy `settings.tokens` replaces).
    #[must_use]
    pub fn over(service: TokenService, settings: Settings) -> Self {
        service.set_policy(settings.tokens.clone());
        Self(Arc::new(Inner {
            service,
            settings: RwLock::new(Arc::new(settings)),
            metrics: Metrics::new(&ROUTES),
            ready: AtomicBool::new(true),
            throttle: crate::throttle::Throttle::default(),
        }))
    }

    pub(crate) fn throttle(&self) -> &crate::throttle::Throttle {
        &self.0.throttle
    }

    /// The token service.
    #[must_use]
    pub fn service(&self) -> &TokenService {
        &self.0.service
    }

    /// Current settings.
    #[must_use]
    pub fn settings(&self) -> Arc<Settings> {
        read(&self.0.settings)
    }

    /// Replaces the settings (on reload); caches are emptied so new mappings apply at once.
    pub fn set_settings(&self, settings: Settings) {
        let policy = settings.tokens.clone();
        *self
            .0
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(settings);
        self.0.service.set_policy(policy);
    }

    /// Sets the key-encryption key that seals signing keys at rest.
    pub fn set_kek(&self, kek: Option<Kek>) {
        self.0.service.set_kek(kek);
    }

    /// See [`TokenService::maintain_keys`].
    ///
    /// # Errors
    /// A store or key failure; the keys in use stay as they were.
    pub async fn maintain_keys(&self, rotate: Rotate) -> Result<bool, TokenError> {
        self.0.service.maintain_keys(rotate).await
    }

    /// Current keys.
    #[must_use]
    pub fn keys(&self) -> Arc<KeySet> {
        self.0.service.keys()
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        self.0.service.store()
    }

    /// The clock.
    #[must_use]
    pub fn clock(&self) -> &dyn Clock {
        self.0.service.clock()
    }

    /// Administrative operations.
    #[must_use]
    pub fn ops(&self) -> &AdminOps {
        self.0.service.ops()
    }

    /// The audit log.
    #[must_use]
    pub fn audit(&self) -> &Audit {
        self.0.service.audit()
    }

    /// Metrics.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The authenticator.
    #[must_use]
    pub fn authenticator(&self) -> &Authenticator {
        self.0.service.authenticator()
    }

    /// Empties authentication caches after a change that may revoke access.
    pub fn invalidate(&self) {
        self.0.service.invalidate();
    }

    /// Drops what the caches hold for one account (see [`Authenticator::invalidate_account`]).
    pub fn invalidate_account(&self, uid: idbridge_core::AccountUid) {
        self.0.service.invalidate_account(uid);
    }

    /// Marks the service as not ready (shutting down).
    pub fn set_not_ready(&self) {
        self.0.ready.store(false, Ordering::SeqCst);
    }

    /// See [`TokenService::authenticate_here`].
    ///
    /// # Errors
    /// A refusal that says why.
    pub async fn authenticate_here(&self, token: &str) -> Result<Arc<Authenticated>, Refusal> {
        self.0.service.authenticate_here(token).await
    }

    /// See [`TokenService::authenticate`].
    ///
    /// # Errors
    /// A refusal that says why.
    pub async fn authenticate(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<Arc<Authenticated>, Refusal> {
        self.0.service.authenticate(token, audiences).await
    }
}

/// The token of an `Authorization: Bearer` header, if there is one.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Per-request context: correlation id and peer.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// Correlation id (from `X-Request-Id`, or generated).
    pub id: String,
    /// The peer address.
    pub source: Option<SocketAddr>,
    /// Whether the peer presented a client certificate that verified against a configured CA.
    pub client_cert: bool,
    /// The peer's certificate chain, end entity first, when it presented one.
    pub chain: Option<std::sync::Arc<[rustls::pki_types::CertificateDer<'static>]>>,
}

#[derive(Debug, Clone)]
struct RequestId(String);

impl<S: Send + Sync> FromRequestParts<S> for RequestCtx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<PeerInfo>();
        Ok(Self {
            id: parts
                .extensions
                .get::<RequestId>()
                .map_or_else(String::new, |r| r.0.clone()),
            source: peer.map(|p| p.addr),
            client_cert: peer.is_some_and(|p| p.client_cert),
            chain: peer.and_then(|p| p.chain.clone()),
        })
    }
}

impl RequestCtx {
    /// The request as the token service's audit log names it.
    #[must_use]
    pub fn origin(&self) -> Origin<'_> {
        Origin {
            request_id: &self.id,
            source: self.source,
        }
    }

    /// An audit event pre-filled with this request's id and source.
    #[must_use]
    pub fn event<'a>(&'a self, event: &'a str, outcome: &'a str) -> AuditEvent<'a> {
        self.origin().event(event, outcome)
    }
}

/// Correlation ids are a per-process random prefix and a counter: unique without a system call
/// per request (they identify, they do not authorise).
fn next_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
    format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn request_id(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(next_request_id, str::to_owned)
}

async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let start = Instant::now();
    let id = request_id(&req);
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route_str = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    // One span per request, attached to the handler's future (not entered across an await), so
    // every event of the request carries its fields and none of another's.
    let span = tracing::info_span!(
        target: "idbridge::access",
        "request",
        method = %req.method(),
        route = %route_str,
        request_id = %id,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let elapsed = start.elapsed();
    span.record("status", resp.status().as_u16());
    span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
    state
        .metrics()
        .observe(route_str, resp.status().as_u16(), elapsed);
    resp
}

/// How much of an oversized body is read (and dropped) before answering 413: enough that
/// ordinary clients see the answer rather than a reset stream.
const DRAIN_CAP: usize = 1024 * 1024;
/// The whole body must arrive within this: a body trickled in keeps no connection forever.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the whole request body before any handler runs, so that every answer, a refusal
/// before the body was looked at included, goes out after the body was received: a response
/// sent while the client is still sending makes HTTP/2 reset the stream, and clients then
/// report a framing error instead of the answer. A body over `limits.max_body_bytes` is read
/// up to a cap, dropped, and answered 413.
async fn body_first(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use http_body_util::BodyExt;
    let limit = state.settings().max_body_bytes;
    let (parts, mut body) = req.into_parts();
    if axum::body::HttpBody::is_end_stream(&body) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    // The chunks as they came: a body in one chunk (the usual case) is passed on uncopied.
    let mut chunks: Vec<axum::body::Bytes> = Vec::new();
    let mut total = 0usize;
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(ApiError::BadRequest(
                    "the request body could not be read".into(),
                ));
            };
            if let Ok(data) = frame.into_data() {
                total += data.len();
                if total <= limit {
                    chunks.push(data);
                } else if total > DRAIN_CAP {
                    break;
                } else {
                    chunks.clear();
                }
            }
        }
        Ok(())
    };
    // A small body is usually in hand already: only a body still arriving gets a timer.
    let mut read = std::pin::pin!(read);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
    let done = match first {
        std::task::Poll::Ready(r) => Ok(r),
        std::task::Poll::Pending => tokio::time::timeout(BODY_TIMEOUT, read.as_mut()).await,
    };
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return e.into_response(),
        Err(_) => return ApiError::RequestTimeout.into_response(),
    }
    if total > limit {
        return ApiError::PayloadTooLarge.into_response();
    }
    let body = match chunks.len() {
        0 => axum::body::Body::empty(),
        1 => axum::body::Body::from(chunks.remove(0)),
        _ => axum::body::Body::from(chunks.concat()),
    };
    next.run(Request::from_parts(parts, body)).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.0.ready.load(Ordering::SeqCst) {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics().render(),
    )
        .into_response()
}

/// Every route, as axum's `MatchedPath` names it (metrics keep a cell for each).
const ROUTES: [&str; 29] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/.well-known/openid-configuration",
    "/oauth2/jwks",
    "/oauth2/token",
    "/oauth2/revoke",
    "/oauth2/introspect",
    "/login",
    "/login/proxy",
    "/oauth2/authorize",
    "/oauth2/device_authorization",
    "/device",
    "/login/oidc/{name}",
    "/login/oidc/callback",
    "/login/password",
    "/login/kerberos",
    "/webhooks/tokenreview",
    "/admin/v1/accounts",
    "/admin/v1/accounts/{name}",
    "/admin/v1/accounts/{name}/disable",
    "/admin/v1/accounts/{name}/enable",
    "/admin/v1/tokens",
    "/admin/v1/tokens/{id}/revoke",
    "/admin/v1/sessions",
    "/admin/v1/sessions/{id}/revoke",
    "/admin/v1/revoke",
    "/admin/v1/keys",
    "/admin/v1/keys/rotate",
];

/// The whole service as a router; tests drive it with `oneshot`, `serve` puts it behind TLS.
pub fn app(state: AppState) -> Router {
    let limit = state.settings().max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/.well-known/openid-configuration",
            get(discovery::openid_configuration),
        )
        .route("/oauth2/jwks", get(discovery::jwks))
        .route("/oauth2/token", post(oauth::token))
        .route("/oauth2/revoke", post(oauth::revoke))
        .route("/oauth2/introspect", post(oauth::introspect))
        .route("/login", get(negotiate::login))
        .route("/login/proxy", post(proxy::login))
        .route("/oauth2/authorize", get(authorize::authorize))
        .route(
            "/oauth2/device_authorization",
            post(device::device_authorization),
        )
        .route(
            "/device",
            get(device::device_page).post(device::device_submit),
        )
        .route("/login/oidc/callback", get(authorize::upstream_callback))
        .route("/login/oidc/{name}", post(authorize::login_upstream))
        .route("/login/password", post(authorize::login_password))
        .route("/login/kerberos", get(authorize::login_kerberos))
        .route("/webhooks/tokenreview", post(review::token_review))
        .nest("/admin/v1", admin::routes())
        .layer(DefaultBodyLimit::max(limit))
        .route_layer(middleware::from_fn_with_state(state.clone(), body_first))
        .route_layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}
