//! idbridge as the authorization server of its declared clients: `/oauth2/authorize`
//! (authorization code with PKCE S256, RFC 6749 and 7636, loopback redirects per RFC 8252), the
//! login page offering every configured method (upstream OpenID providers, the directory
//! password, Kerberos Negotiate), the upstream callback, and the `authorization_code` grant.
//!
//! A login in progress is a single-use record in the store, named by a secret held in a
//! host-only, `Secure`, `HttpOnly`, `SameSite=Lax` cookie; every form carries a CSRF token
//! stored with it. The upstream `state` is bound to that cookie, the upstream `nonce` and PKCE
//! verifier never leave the server. Codes live 60 seconds, are used once, and a code presented
//! again revokes the session it started.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use idbridge_core::{AccountUid, Amr, ExternalIdentity, Pending, PendingKind, UserAccount};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::page::{self, escape};
use crate::settings::Settings;
use crate::state::{AppState, RequestCtx};
use crate::upstream::{Upstream, UpstreamError};
use idbridge_tokens::provision::Provision;
use idbridge_tokens::{Client, Secret};
use idbridge_tokens::{Login, TokenPair, UpstreamGrant};
use idbridge_tokens::{hash_token, new_secret};

/// The cookie naming the login in progress.
pub(crate) const LOGIN_COOKIE: &str = "__Host-idbridge-login";
/// How long a login may take, from the login page to its end.
pub(crate) const LOGIN_TTL: u64 = 600;
/// How long an authorization code is worth anything.
const CODE_TTL: u64 = 60;
pub(crate) const AUTHORIZATION_CODE_GRANT: &str = "authorization_code";

/// A login in progress, from `/oauth2/authorize` or the device page. `Debug` hides the CSRF
/// token and the device's codes.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct LoginRequest {
    pub csrf: String,
    pub client_id: String,
    pub audience: String,
    pub scope: String,
    pub then: Then,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("csrf", &"<redacted>")
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("then", &self.then)
            .finish()
    }
}

impl std::fmt::Debug for Then {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code {
                redirect_uri,
                code_challenge,
                ..
            } => f
                .debug_struct("Code")
                .field("redirect_uri", redirect_uri)
                .field("state", &"<redacted>")
                .field("code_challenge", code_challenge)
                .finish(),
            Self::Device { .. } => f
                .debug_struct("Device")
                .field("device_key", &"<redacted>")
                .field("user_code", &"<redacted>")
                .finish(),
        }
    }
}

/// Where a finished login goes.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Then {
    /// Back to the client with a code.
    Code {
        redirect_uri: String,
        state: String,
        code_challenge: String,
    },
    /// To the waiting device (the hex hash of its device code).
    Device {
        device_key: String,
        user_code: String,
    },
}

/// An upstream login waiting for its callback.
#[derive(Serialize, Deserialize)]
struct UpstreamState {
    login_key: String,
    upstream: String,
    nonce: String,
    verifier: String,
}

/// Who logged in, as a code or an approved device carries it.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Approved {
    pub uid: String,
    pub amr: Amr,
    pub login_groups: Vec<String>,
    /// The upstream grant: sealed under the code for a code; as is for a device.
    #[serde(default)]
    pub upstream_sealed: Option<Vec<u8>>,
    #[serde(default)]
    pub upstream: Option<UpstreamGrant>,
}

#[derive(Serialize, Deserialize)]
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    audience: String,
    scope: String,
    approved: Approved,
}

/// A login that succeeded, before it becomes a code or a device approval.
pub(crate) struct Verified {
    pub account: UserAccount,
    pub amr: Amr,
    pub login_groups: Vec<String>,
    pub upstream: Option<UpstreamGrant>,
}

pub(crate) fn hex(h: &idbridge_core::TokenHash) -> String {
    h.0.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<idbridge_core::TokenHash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(idbridge_core::TokenHash(out))
}

/// Whether `uri` is a plain-HTTP loopback redirect (RFC 8252 section 7.3).
fn loopback(uri: &reqwest::Url) -> bool {
    uri.scheme() == "http"
        && uri
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<std::net::IpAddr>().ok())
            .is_some_and(|a| a.is_loopback())
}

/// Whether `client` may be sent to `redirect_uri`: an exact registered URI, or a loopback URI
/// matching a registered one but for the port; the built-in CLI may use any loopback URI.
pub(crate) fn redirect_allowed(client: &Client, redirect_uri: &str) -> bool {
    let Ok(given) = reqwest::Url::parse(redirect_uri) else {
        return false;
    };
    if given.fragment().is_some() || given.username() != "" || given.password().is_some() {
        return false;
    }
    if client.id == idbridge_tokens::CLI_CLIENT
        && client.redirect_uris.is_empty()
        && loopback(&given)
    {
        return true;
    }
    client.redirect_uris.iter().any(|r| {
        if r == redirect_uri {
            return true;
        }
        let Ok(mut reg) = reqwest::Url::parse(r) else {
            return false;
        };
        if !loopback(&reg) || !loopback(&given) {
            return false;
        }
        let _ = reg.set_port(given.port());
        reg == given
    })
}

/// S256: base64url(SHA-256(verifier)), compared in constant time.
pub(crate) fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let shape = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    let computed = URL_SAFE_NO_PAD.encode(d.as_ref());
    shape && Secret::new(computed).matches(challenge)
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    match reqwest::Url::parse(base) {
        Ok(mut u) => {
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in pairs {
                    q.append_pair(k, v);
                }
            }
            u.into()
        }
        Err(_) => base.to_owned(),
    }
}

fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, v),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(_) => page::error(StatusCode::BAD_REQUEST, "Sign-in failed", "bad redirect"),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    scope: Option<String>,
    audience: Option<String>,
}

/// `GET /oauth2/authorize`: checks the client and its redirect URI (a bad one is shown, never
/// followed), then the rest (reported to the client), then shows the login page.
pub(crate) async fn authorize(
    State(state): State<AppState>,
    Query(q): Query<AuthorizeQuery>,
) -> Response {
    let settings = state.settings();
    let bad = |m: &str| page::error(StatusCode::BAD_REQUEST, "Sign-in request refused", m);
    let Some(client) = q
        .client_id
        .as_deref()
        .and_then(|id| settings.tokens.client(id))
    else {
        return bad("unknown or missing client_id");
    };
    if !client.grants.iter().any(|g| g == AUTHORIZATION_CODE_GRANT) {
        return bad(&format!(
            "client {:?} may not use the authorization code flow",
            client.id
        ));
    }
    let Some(redirect_uri) = q
        .redirect_uri
        .as_deref()
        .filter(|r| redirect_allowed(client, r))
    else {
        return bad("redirect_uri is missing or not registered for this client");
    };
    let client_state = q.state.clone().unwrap_or_default();
    let refuse = |error: &str, description: &str| {
        let mut pairs = vec![("error", error), ("error_description", description)];
        if !client_state.is_empty() {
            pairs.push(("state", &client_state));
        }
        pairs.push(("iss", &settings.tokens.issuer));
        see_other(&with_query(redirect_uri, &pairs))
    };
    if q.response_type.as_deref() != Some("code") {
        return refuse("unsupported_response_type", "response_type must be code");
    }
    if client_state.is_empty() {
        return refuse("invalid_request", "state is required");
    }
    let Some(challenge) = q.code_challenge.as_deref().filter(|c| c.len() == 43) else {
        return refuse(
            "invalid_request",
            "PKCE is required: code_challenge (S256, 43 characters)",
        );
    };
    if q.code_challenge_method.as_deref() != Some("S256") {
        return refuse("invalid_request", "code_challenge_method must be S256");
    }
    let audience =
        match idbridge_tokens::exchange::target(&settings.tokens, client, q.audience.clone()) {
            Ok(a) => a,
            Err(e) => return refuse("invalid_target", &e.to_string()),
        };
    let login = LoginRequest {
        csrf: new_secret(""),
        client_id: client.id.clone(),
        audience,
        scope: q.scope.clone().unwrap_or_default(),
        then: Then::Code {
            redirect_uri: redirect_uri.to_owned(),
            state: client_state.clone(),
            code_challenge: challenge.to_owned(),
        },
    };
    match begin_login(&state, &login).await {
        Ok(id) => login_page(&settings, &login, None, StatusCode::OK, Some(&id)),
        Err(e) => e.into_response(),
    }
}

/// Stores an unused single-use record of `kind`, named by the hash of `secret` (and by
/// `alias`), holding `data`, for `ttl` seconds.
pub(crate) async fn put_pending(
    state: &AppState,
    secret: &str,
    alias: Option<String>,
    kind: PendingKind,
    data: &impl Serialize,
    ttl: u64,
) -> Result<(), ApiError> {
    let record = Pending {
        key: hash_token(secret),
        alias,
        kind: kind.to_string(),
        data: serde_json::to_string(data)
            .map_err(|e| ApiError::internal("serialize a pending record", &e))?,
        expires_at: state.clock().now().plus_secs(ttl),
        used_at: None,
        session: None,
    };
    Ok(state.store().put_pending(&record).await?)
}

/// Stores a login in progress; returns the secret its cookie carries.
pub(crate) async fn begin_login(
    state: &AppState,
    login: &LoginRequest,
) -> Result<String, ApiError> {
    let id = new_secret("");
    put_pending(state, &id, None, PendingKind::Login, login, LOGIN_TTL).await?;
    Ok(id)
}

/// The login in progress this browser holds, if its cookie names a live one.
async fn current_login(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(String, LoginRequest), Response> {
    let expired = || {
        page::error(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "this sign-in has expired, was finished, or was started in another browser or window: start again from your application",
        )
    };
    let Some(id) = page::read_cookie(headers, LOGIN_COOKIE) else {
        return Err(expired());
    };
    let now = state.clock().now();
    match state.store().pending(hash_token(id), now).await {
        Ok(Some(p)) if PendingKind::Login == p.kind && p.used_at.is_none() => {
            match serde_json::from_str(&p.data) {
                Ok(l) => Ok((id.to_owned(), l)),
                Err(_) => Err(expired()),
            }
        }
        Ok(_) => Err(expired()),
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

/// The login page: one button per upstream, the password form with a directory, the Kerberos
/// link with a keytab. With `set_cookie`, it starts the login in this browser.
pub(crate) fn login_page(
    settings: &Settings,
    login: &LoginRequest,
    error: Option<&str>,
    status: StatusCode,
    set_cookie: Option<&str>,
) -> Response {
    let csrf = escape(&login.csrf);
    let mut body = format!("<p>to <b>{}</b></p>", escape(&login.client_id));
    if let Then::Device { user_code, .. } = &login.then {
        body.push_str(&format!(
            "<p>Check that your device shows this code: <span class=\"code\">{}</span></p>",
            escape(user_code)
        ));
    }
    if let Some(e) = error {
        body.push_str(&format!("<p class=\"error\">{}</p>", escape(e)));
    }
    for u in &settings.upstreams {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/login/oidc/{name}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\">Sign in with {display}</button></form>",
            name = escape(&u.config.name),
            display = escape(&u.config.display_name),
        ));
    }
    if settings.kerberos.is_some() {
        body.push_str(&format!(
            "<p><a href=\"/login/kerberos?csrf={csrf}\">Sign in with Kerberos (your computer's login)</a></p>"
        ));
    }
    if settings.directory.is_some() {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/login/password\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label>Username <input name=\"username\" autocomplete=\"username\" required></label>\
             <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <button type=\"submit\">Sign in</button></form>"
        ));
    }
    if settings.upstreams.is_empty() && settings.kerberos.is_none() && settings.directory.is_none()
    {
        body.push_str("<p class=\"error\">No sign-in method is configured (upstreams, directory or kerberos).</p>");
    }
    let mut r = page::html(status, "Sign in", &body);
    if let Some(id) = set_cookie {
        r.headers_mut().append(
            header::SET_COOKIE,
            page::cookie(LOGIN_COOKIE, id, LOGIN_TTL),
        );
    }
    r
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    csrf: Option<String>,
}

/// The browser's login in progress, if the form (or link) carries its CSRF token.
async fn checked_login(
    state: &AppState,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<(String, LoginRequest), Response> {
    let (id, login) = current_login(state, headers).await?;
    if !csrf.is_some_and(|g| Secret::new(login.csrf.clone()).matches(g)) {
        return Err(page::error(
            StatusCode::FORBIDDEN,
            "Sign-in refused",
            "the form did not come from this sign-in page (CSRF check failed): start again from your application",
        ));
    }
    Ok((id, login))
}

fn callback_uri(settings: &Settings) -> String {
    format!(
        "{}/login/oidc/callback",
        settings.tokens.issuer.trim_end_matches('/')
    )
}

/// `POST /login/oidc/{name}`: off to the upstream provider with `state`, `nonce` and PKCE.
pub(crate) async fn login_upstream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (id, login) = match checked_login(&state, &headers, form.csrf.as_deref()).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let settings = state.settings();
    let Some(up) = settings.upstream(&name) else {
        return page::error(
            StatusCode::NOT_FOUND,
            "Sign-in failed",
            &format!("no identity provider is named {name:?}"),
        );
    };
    let (challenge, verifier) = openidconnect::PkceCodeChallenge::new_random_sha256();
    let upstream_state = new_secret("");
    let nonce = new_secret("");
    let url = match up
        .authorize_url(
            &callback_uri(&settings),
            &upstream_state,
            &nonce,
            challenge.as_str(),
        )
        .await
    {
        Ok(u) => u,
        Err(e) => return upstream_error_page(&settings, &login, &e),
    };
    let record = UpstreamState {
        login_key: hex(&hash_token(&id)),
        upstream: name,
        nonce,
        verifier: verifier.secret().clone(),
    };
    match put_pending(
        &state,
        &upstream_state,
        None,
        PendingKind::Upstream,
        &record,
        LOGIN_TTL,
    )
    .await
    {
        Ok(()) => see_other(&url),
        Err(e) => e.into_response(),
    }
}

fn upstream_error_page(settings: &Settings, login: &LoginRequest, e: &UpstreamError) -> Response {
    let status = match e {
        UpstreamError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    tracing::info!(error = %e, "upstream login failed");
    login_page(settings, login, Some(&e.to_string()), status, None)
}

#[derive(Deserialize)]
pub(crate) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /login/oidc/callback`: the upstream provider's answer.
pub(crate) async fn upstream_callback(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let refused = |m: &str| {
        state
            .service()
            .login_denied(ctx.origin(), "login.oidc", None, m);
        page::error(StatusCode::BAD_REQUEST, "Sign-in refused", m)
    };
    let Some(upstream_state) = q.state.as_deref().filter(|s| !s.is_empty()) else {
        return refused("the identity provider's answer has no state");
    };
    let now = state.clock().now();
    let record = match state
        .store()
        .use_pending(hash_token(upstream_state), now)
        .await
    {
        Ok(Some((p, true))) if PendingKind::Upstream == p.kind => p,
        Ok(Some((_, false))) => {
            return refused("this answer of the identity provider was already used");
        }
        Ok(_) => {
            return refused(
                "the state does not match a sign-in in progress (tampered with, or expired)",
            );
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Ok(up_state) = serde_json::from_str::<UpstreamState>(&record.data) else {
        return ApiError::Internal.into_response();
    };
    // The state must come back to the browser that started the login.
    let (id, login) = match current_login(&state, &headers).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    if !Secret::new(hex(&hash_token(&id))).matches(&up_state.login_key) {
        return refused("the state belongs to a sign-in started in another browser");
    }
    let settings = state.settings();
    let Some(up) = settings.upstream(&up_state.upstream) else {
        return refused("the identity provider is no longer configured");
    };
    if let Some(err) = q.error.as_deref() {
        let why = format!(
            "{} answered {err}{}",
            up.config.display_name,
            q.error_description
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
        state
            .service()
            .login_denied(ctx.origin(), "login.oidc", None, &why);
        return login_page(
            &settings,
            &login,
            Some(&why),
            StatusCode::UNAUTHORIZED,
            None,
        );
    }
    let Some(code) = q.code.as_deref().filter(|c| !c.is_empty()) else {
        return refused("the identity provider's answer has no code");
    };
    let verified = match upstream_login(&state, up, code, &up_state, &settings, &ctx).await {
        Ok(v) => v,
        Err(LoginFailure::Upstream(e)) => {
            state
                .service()
                .login_denied(ctx.origin(), "login.oidc", None, &e.to_string());
            return upstream_error_page(&settings, &login, &e);
        }
        Err(LoginFailure::Api(e)) => return login_failed(&settings, &login, e),
    };
    complete_login(&state, &id, login, verified, &ctx).await
}

pub(crate) enum LoginFailure {
    Upstream(UpstreamError),
    Api(ApiError),
}

impl From<ApiError> for LoginFailure {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<idbridge_tokens::TokenError> for LoginFailure {
    fn from(e: idbridge_tokens::TokenError) -> Self {
        Self::Api(e.into())
    }
}

/// A refused login shown on the login page, with its reason.
fn login_failed(settings: &Settings, login: &LoginRequest, e: ApiError) -> Response {
    let (status, message) = match &e {
        ApiError::OAuth { description, .. } => (StatusCode::UNAUTHORIZED, description.clone()),
        ApiError::Throttled(_) => (StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m.clone()),
        _ => return e.into_response(),
    };
    let mut r = login_page(settings, login, Some(&message), status, None);
    if let ApiError::Throttled(secs) = e
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// The upstream's code exchanged and its ID token checked: the linked account.
async fn upstream_login(
    state: &AppState,
    up: &Upstream,
    code: &str,
    st: &UpstreamState,
    settings: &Settings,
    ctx: &RequestCtx,
) -> Result<Verified, LoginFailure> {
    let tokens = up
        .exchange_code(code, &st.verifier, &callback_uri(settings))
        .await
        .map_err(LoginFailure::Upstream)?;
    let raw = tokens.id_token.as_deref().ok_or_else(|| {
        LoginFailure::Upstream(UpstreamError::Invalid {
            name: up.config.name.clone(),
            why: "its token response has no id_token".into(),
        })
    })?;
    let claims = up
        .verify_id_token(raw, Some(&st.nonce))
        .await
        .map_err(LoginFailure::Upstream)?;
    let (account, groups) = upstream_account(state, up, &claims, ctx).await?;
    let upstream = if up.config.refresh {
        let rt = tokens.refresh_token.ok_or_else(|| {
            LoginFailure::Upstream(UpstreamError::Invalid {
                name: up.config.name.clone(),
                why: "it sent no refresh token, and `refresh` is on for it (does the client allow the refresh_token grant and offline_access?)".into(),
            })
        })?;
        Some(UpstreamGrant {
            upstream: up.config.name.clone(),
            refresh_token: rt,
        })
    } else {
        None
    };
    Ok(Verified {
        account,
        amr: idbridge_core::Amr::Oidc,
        login_groups: groups,
        upstream,
    })
}

/// The account an upstream's verified claims name, linked by `iss` + `sub`.
pub(crate) async fn upstream_account(
    state: &AppState,
    up: &Upstream,
    claims: &serde_json::Value,
    ctx: &RequestCtx,
) -> Result<(UserAccount, Vec<String>), LoginFailure> {
    let user = up.user(claims).map_err(LoginFailure::Upstream)?;
    let name = user.name.parse().map_err(|e| {
        LoginFailure::Upstream(UpstreamError::Invalid {
            name: up.config.name.clone(),
            why: format!(
                "its {} claim is not a usable account name: {e}",
                up.config.username_claim
            ),
        })
    })?;
    let account = state
        .service()
        .provisioned_account(
            Provision {
                identity: ExternalIdentity::Oidc {
                    iss: user.iss,
                    sub: user.sub,
                },
                name: &name,
                jit: up.config.jit,
                link_by_name: up.config.link_by_name,
                event: "login.oidc",
                what: "identity provider's user",
                section: "upstreams[]",
            },
            ctx.origin(),
        )
        .await?;
    if account.disabled {
        state.service().login_denied(
            ctx.origin(),
            "login.oidc",
            Some(account.name.as_str()),
            "account is disabled in idbridge",
        );
        return Err(ApiError::invalid_grant("your idbridge account is disabled").into());
    }
    Ok((account, user.groups))
}

/// Ends a successful login: a code back to the client, or the waiting device approved.
pub(crate) async fn complete_login(
    state: &AppState,
    id: &str,
    login: LoginRequest,
    v: Verified,
    ctx: &RequestCtx,
) -> Response {
    match finish(state, id, login, v, ctx).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn finish(
    state: &AppState,
    id: &str,
    login: LoginRequest,
    v: Verified,
    ctx: &RequestCtx,
) -> Result<Response, ApiError> {
    let now = state.clock().now();
    match state.store().use_pending(hash_token(id), now).await? {
        Some((_, true)) => {}
        _ => {
            return Ok(page::error(
                StatusCode::BAD_REQUEST,
                "Sign-in already finished",
                "this sign-in was already finished: start again from your application",
            ));
        }
    }
    let settings = state.settings();
    let clear = page::cookie(LOGIN_COOKIE, "", 0);
    let mut ev = ctx.event("login.approve", "ok");
    ev.account = Some(v.account.name.as_str());
    ev.uid = Some(v.account.uid.to_string());
    let object = format!("client={} amr={}", login.client_id, v.amr);
    ev.object = Some(object);
    state.audit().record(&ev);
    match login.then {
        Then::Code {
            redirect_uri,
            state: oauth_state,
            code_challenge,
        } => {
            let code = new_secret("idb_ac_");
            let key = hash_token(&code);
            let approved = Approved {
                uid: v.account.uid.to_string(),
                amr: v.amr,
                login_groups: v.login_groups,
                upstream_sealed: v.upstream.map(|u| u.seal(&code, &key)).transpose()?,
                upstream: None,
            };
            let grant = CodeGrant {
                client_id: login.client_id,
                redirect_uri: redirect_uri.clone(),
                code_challenge,
                audience: login.audience,
                scope: login.scope,
                approved,
            };
            put_pending(state, &code, None, PendingKind::Code, &grant, CODE_TTL).await?;
            let mut r = see_other(&with_query(
                &redirect_uri,
                &[
                    ("code", &code),
                    ("state", &oauth_state),
                    ("iss", &settings.tokens.issuer),
                ],
            ));
            r.headers_mut().append(header::SET_COOKIE, clear);
            Ok(r)
        }
        Then::Device { device_key, .. } => {
            let approved = Approved {
                uid: v.account.uid.to_string(),
                amr: v.amr,
                login_groups: v.login_groups,
                upstream_sealed: None,
                upstream: v.upstream,
            };
            let approved_ok =
                crate::device::approve_device(state, &device_key, approved, now).await?;
            let mut r = if approved_ok {
                page::html(
                    StatusCode::OK,
                    "Signed in",
                    "<p>You are signed in. Return to your device: it will continue on its own.</p>",
                )
            } else {
                page::error(
                    StatusCode::BAD_REQUEST,
                    "Code expired",
                    "the device's code has expired or was already used: start again on the device",
                )
            };
            r.headers_mut().append(header::SET_COOKIE, clear);
            Ok(r)
        }
    }
}

/// The `authorization_code` grant: the code used once, its client, redirect URI and PKCE
/// verifier checked, then a session. A code presented again revokes that session.
pub(crate) async fn redeem_code(
    state: &AppState,
    client: &Client,
    code: &str,
    redirect_uri: Option<&str>,
    verifier: Option<&str>,
    ctx: &RequestCtx,
) -> Result<TokenPair, ApiError> {
    let now = state.clock().now();
    let key = hash_token(code);
    let deny = |reason: &str| {
        state
            .service()
            .login_denied(ctx.origin(), "token.code", None, reason);
        ApiError::invalid_grant(reason)
    };
    let (record, first) = match state.store().use_pending(key, now).await? {
        Some((p, first)) if PendingKind::Code == p.kind => (p, first),
        _ => return Err(deny("the code is invalid or has expired")),
    };
    if !first {
        if let Some(sid) = record.session {
            state
                .store()
                .revoke_session(sid, "authorization code presented twice", now)
                .await?;
            state.invalidate();
        }
        let mut ev = ctx.event("token.reuse", "revoked");
        ev.object = record.session.map(|s| format!("session={s}"));
        ev.reason = Some("an authorization code was presented twice; what it produced is revoked");
        state.audit().record_durable(&ev).await;
        return Err(ApiError::invalid_grant(
            "the code was already used; the tokens it produced are revoked",
        ));
    }
    let grant: CodeGrant = serde_json::from_str(&record.data)
        .map_err(|e| ApiError::internal("read an authorization code record", &e))?;
    if grant.client_id != client.id {
        return Err(deny("the code was issued to another client"));
    }
    if redirect_uri != Some(grant.redirect_uri.as_str()) {
        return Err(deny(
            "redirect_uri differs from the authorization request's",
        ));
    }
    let Some(verifier) = verifier else {
        return Err(ApiError::invalid_request(
            "code_verifier is required (PKCE)",
        ));
    };
    if !pkce_matches(verifier, &grant.code_challenge) {
        return Err(deny(
            "code_verifier does not match the code_challenge (PKCE)",
        ));
    }
    let upstream = grant
        .approved
        .upstream_sealed
        .as_deref()
        .map(|s| UpstreamGrant::open(code, &key, s).ok_or(ApiError::Internal))
        .transpose()?;
    let pair = start_approved(
        state,
        &client.id,
        grant.audience,
        grant.scope,
        grant.approved,
        upstream,
        ctx,
    )
    .await?;
    if let Some(sid) = pair.session {
        state.store().set_pending_session(key, sid).await?;
    }
    Ok(pair)
}

/// A session for an approved login.
pub(crate) async fn start_approved(
    state: &AppState,
    client_id: &str,
    audience: String,
    scope: String,
    approved: Approved,
    upstream: Option<UpstreamGrant>,
    ctx: &RequestCtx,
) -> Result<TokenPair, ApiError> {
    let uid: AccountUid = approved
        .uid
        .parse()
        .map_err(|e| ApiError::internal("read an approved login's account", &e))?;
    let account = state
        .store()
        .account(uid)
        .await?
        .filter(|a| !a.disabled)
        .ok_or_else(|| ApiError::invalid_grant("the account is disabled"))?;
    state
        .service()
        .start_session(
            Login {
                account: &account,
                client_id,
                amr: approved.amr,
                audience,
                scope,
                login_groups: approved.login_groups,
                upstream,
            },
            ctx.origin(),
        )
        .await
        .map_err(ApiError::from)
}

#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    csrf: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// `POST /login/password`: the directory password from the login page's form.
pub(crate) async fn login_password(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Response {
    let (id, login) = match checked_login(&state, &headers, form.csrf.as_deref()).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let settings = state.settings();
    let username = form.username.unwrap_or_default();
    let password = form.password.unwrap_or_default();
    match crate::ldap::password_account(&state, &username, &password, &login.audience, &ctx).await {
        Ok((account, groups)) => {
            let v = Verified {
                account,
                amr: idbridge_core::Amr::Ldap,
                login_groups: groups,
                upstream: None,
            };
            complete_login(&state, &id, login, v, &ctx).await
        }
        Err(e) => login_failed(&settings, &login, e),
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfQuery {
    csrf: Option<String>,
}

/// `GET /login/kerberos`: HTTP Negotiate for the login in progress.
pub(crate) async fn login_kerberos(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    Query(q): Query<CsrfQuery>,
) -> Response {
    let (id, login) = match checked_login(&state, &headers, q.csrf.as_deref()).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let settings = state.settings();
    let Some(token) = crate::negotiate::offered(&headers) else {
        let mut r = login_page(
            &settings,
            &login,
            Some(
                "Your browser did not offer a Kerberos ticket: sign in to your computer's domain (kinit), or allow this site for Negotiate, or use another method.",
            ),
            StatusCode::UNAUTHORIZED,
            None,
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Negotiate"),
        );
        return r;
    };
    match crate::negotiate::kerberos_account(&state, token, &login.audience, &ctx).await {
        Ok((account, groups, _mutual)) => {
            let v = Verified {
                account,
                amr: idbridge_core::Amr::Krb5,
                login_groups: groups,
                upstream: None,
            };
            complete_login(&state, &id, login, v, &ctx).await
        }
        Err(e) => login_failed(&settings, &login, e),
    }
}

impl From<LoginFailure> for ApiError {
    fn from(f: LoginFailure) -> Self {
        match f {
            LoginFailure::Api(e) => e,
            LoginFailure::Upstream(e @ UpstreamError::Unavailable { .. }) => {
                ApiError::Unavailable(format!("{e}; no token was issued"))
            }
            LoginFailure::Upstream(e) => ApiError::invalid_grant(e.to_string()),
        }
    }
}

/// The `iss` a JWT claims, before anything about it is checked (to pick the upstream that
/// then checks it).
fn claimed_issuer(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

/// RFC 8693 with an upstream ID token as the subject: the token checked by the upstream
/// whose issuer it names (audience: idbridge's client there), then a session (`amr=oidc`).
pub(crate) async fn exchange_id_token(
    state: &AppState,
    client: &Client,
    raw: &str,
    audience: String,
    scope: String,
    ctx: &RequestCtx,
) -> Result<TokenPair, ApiError> {
    let settings = state.settings();
    let deny = |reason: String| {
        state
            .service()
            .login_denied(ctx.origin(), "login.oidc", None, &reason);
        ApiError::invalid_grant(reason)
    };
    let Some(iss) = claimed_issuer(raw) else {
        return Err(deny("subject_token is not a JWT with an iss claim".into()));
    };
    let Some(up) = settings.upstreams.iter().find(|u| u.config.issuer == iss) else {
        return Err(deny(format!(
            "no configured identity provider has the issuer {iss:?} (upstreams[].issuer)"
        )));
    };
    let claims = match up.verify_id_token(raw, None).await {
        Ok(c) => c,
        Err(e) => {
            let err = ApiError::from(LoginFailure::Upstream(e));
            if let ApiError::OAuth { description, .. } = &err {
                state
                    .service()
                    .login_denied(ctx.origin(), "login.oidc", None, description);
            }
            return Err(err);
        }
    };
    // An exchanged ID token carries no refresh token, so the provider cannot be asked again:
    // the session ends when the ID token does, and each ID token starts one session only.
    let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_i64) else {
        return Err(deny("the ID token has no exp claim".into()));
    };
    let once = Pending {
        key: hash_token(&format!("id_token\0{raw}")),
        alias: None,
        kind: PendingKind::IdToken.to_string(),
        data: String::new(),
        expires_at: idbridge_core::UnixTime(exp).plus_secs(settings.tokens.clock_skew.as_secs()),
        used_at: Some(state.clock().now()),
        session: None,
    };
    match state.store().put_pending(&once).await {
        Ok(()) => {}
        Err(idbridge_core::StoreError::Conflict(_)) => {
            return Err(deny(
                "this ID token was exchanged already; log in at the provider again for a new one"
                    .into(),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let (account, groups) = upstream_account(state, up, &claims, ctx).await?;
    state
        .service()
        .start_session_until(
            Login {
                account: &account,
                client_id: &client.id,
                amr: idbridge_core::Amr::Oidc,
                audience,
                scope,
                login_groups: groups,
                upstream: None,
            },
            Some(idbridge_core::UnixTime(exp)),
            ctx.origin(),
        )
        .await
        .map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, uris: &[&str]) -> Client {
        Client {
            id: id.into(),
            secret: None,
            grants: vec![],
            audiences: vec![],
            redirect_uris: uris.iter().map(|u| (*u).to_owned()).collect(),
            audience_changes: vec![],
        }
    }

    #[test]
    fn debug_output_of_a_login_in_progress_shows_no_secret() {
        let login = LoginRequest {
            csrf: "csrf-secret-1".into(),
            client_id: "idbridge-cli".into(),
            audience: "kubernetes".into(),
            scope: String::new(),
            then: Then::Device {
                device_key: "device-key-2".into(),
                user_code: "BCDF-GHJK".into(),
            },
        };
        let shown = format!("{login:?}");
        for secret in ["csrf-secret-1", "device-key-2", "BCDF-GHJK"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("idbridge-cli"), "{shown}");
        let code = Then::Code {
            redirect_uri: "http://127.0.0.1/cb".into(),
            state: "state-secret-3".into(),
            code_challenge: "c".into(),
        };
        assert!(!format!("{code:?}").contains("state-secret-3"));
    }

    #[test]
    fn redirects_are_exact_except_loopback_ports() {
        let cli = client("idbridge-cli", &[]);
        assert!(redirect_allowed(&cli, "http://127.0.0.1:41234/callback"));
        assert!(redirect_allowed(&cli, "http://[::1]:5000/"));
        assert!(!redirect_allowed(&cli, "http://localhost:5000/"));
        assert!(!redirect_allowed(&cli, "https://evil.example/cb"));
        assert!(!redirect_allowed(&cli, "http://127.0.0.1:1/cb#frag"));
        let web = client("web", &["https://app.example/cb", "http://127.0.0.1/cb"]);
        assert!(redirect_allowed(&web, "https://app.example/cb"));
        assert!(!redirect_allowed(&web, "https://app.example/cb2"));
        assert!(!redirect_allowed(&web, "https://app.example/cb?x=1"));
        assert!(!redirect_allowed(&web, "https://app.example.evil/cb"));
        assert!(redirect_allowed(&web, "http://127.0.0.1:8000/cb"));
        assert!(!redirect_allowed(&web, "http://127.0.0.1:8000/other"));
        assert!(!redirect_allowed(&web, "http://127.0.0.2:8000/cb"));
        assert!(!redirect_allowed(&web, "http://user@127.0.0.1:8000/cb"));
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXl",
            challenge
        ));
        assert!(!pkce_matches("short", challenge));
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = hash_token("x");
        assert_eq!(unhex(&hex(&h)), Some(h));
        assert_eq!(unhex("zz"), None);
    }
}
