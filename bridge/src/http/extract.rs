//! What every handler may ask of a request: its context (correlation id, peer, client
//! certificate) and its bearer token.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::extract::{FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use idbridge_tokens::{AuditEvent, Origin};

use crate::http::server::PeerInfo;

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
    pub id: std::sync::Arc<str>,
    /// The peer address.
    pub source: Option<SocketAddr>,
    /// Whether the peer presented a client certificate that verified against a configured CA.
    pub client_cert: bool,
    /// The peer's certificate chain, end entity first, when it presented one.
    pub chain: Option<std::sync::Arc<[rustls::pki_types::CertificateDer<'static>]>>,
}

#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub std::sync::Arc<str>);

impl<S: Send + Sync> FromRequestParts<S> for RequestCtx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<PeerInfo>();
        Ok(Self {
            id: parts
                .extensions
                .get::<RequestId>()
                .map_or_else(|| std::sync::Arc::from(""), |r| r.0.clone()),
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
fn next_request_id() -> std::sync::Arc<str> {
    use std::io::Write;
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
    // Made on the stack, so the id costs one allocation, its own.
    let mut buf = [0u8; 40];
    let mut out = &mut buf[..];
    let _ = write!(out, "{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed));
    let len = 40 - out.len();
    std::sync::Arc::from(std::str::from_utf8(&buf[..len]).unwrap_or(prefix))
}

pub(crate) fn request_id(req: &Request) -> std::sync::Arc<str> {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(next_request_id, std::sync::Arc::from)
}
