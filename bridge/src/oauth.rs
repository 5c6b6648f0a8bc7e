//! The OAuth endpoints: `/oauth2/token` (refresh and RFC 8693 token exchange), `/oauth2/revoke`
//! (RFC 7009) and `/oauth2/introspect` (RFC 7662).

use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use idbridge_core::{SessionState, UnixTime};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Denial;
use crate::error::ApiError;
use crate::sessions::{Grant, Login, TokenPair};
use crate::settings::{AudienceChange, Client, Settings};
use crate::state::{AppState, RequestCtx};
use crate::tokens::{AccessClaims, Actor, REFRESH_TOKEN_PREFIX, STATIC_TOKEN_PREFIX, hash_token};

/// The built-in first-party public client.
pub(crate) const CLI_CLIENT: &str = "idbridge-cli";
const STATIC_TOKEN_TYPE: &str = "urn:idbridge:params:oauth:token-type:static";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// A scope value selecting one group for an exchanged token.
const GROUP_SCOPE: &str = "group:";

// No `Debug`: the request holds secrets (passwords, tokens, client secrets).
#[derive(Deserialize)]
pub(crate) struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    actor_token: Option<String>,
    actor_token_type: Option<String>,
    audience: Option<String>,
    requested_token_type: Option<String>,
    scope: Option<String>,
    username: Option<String>,
    password: Option<String>,
    kerberos_token: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    device_code: Option<String>,
}

fn oauth(status: StatusCode, error: &'static str, description: impl Into<String>) -> ApiError {
    ApiError::OAuth {
        status,
        error,
        description: description.into(),
    }
}

/// A form field that must be present and not empty.
fn required<'a>(field: &'a Option<String>, name: &str) -> Result<&'a str, ApiError> {
    field
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::invalid_request(format!("{name} is required")))
}

fn invalid_client(description: &str) -> ApiError {
    oauth(StatusCode::UNAUTHORIZED, "invalid_client", description)
}

fn form_decode(s: &str) -> String {
    // client_secret_basic encodes id and secret with application/x-www-form-urlencoded first.
    let plus = s.replace('+', " ");
    let bytes = plus.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Authenticates the OAuth client: HTTP Basic (`client_secret_basic`), form fields
/// (`client_secret_post`), or a public client naming itself; the built-in `idbridge-cli` when
/// nothing is said. Secrets are compared in constant time.
pub(crate) fn client<'a>(
    settings: &'a Settings,
    headers: &HeaderMap,
    form_id: Option<&str>,
    form_secret: Option<&str>,
) -> Result<&'a Client, ApiError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .map(|b| {
            let raw = STANDARD
                .decode(b.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or_else(|| invalid_client("malformed Basic credentials"))?;
            let (id, secret) = raw
                .split_once(':')
                .ok_or_else(|| invalid_client("malformed Basic credentials"))?;
            Ok::<_, ApiError>((form_decode(id), form_decode(secret)))
        })
        .transpose()?;
    let (id, secret) = match (&basic, form_id) {
        (Some((id, _)), Some(f)) if f != id => {
            return Err(invalid_client(
                "client_id differs from the Basic credentials",
            ));
        }
        (Some((id, secret)), _) => (id.as_str(), Some(secret.as_str())),
        (None, id) => (id.unwrap_or(CLI_CLIENT), form_secret),
    };
    let client = settings
        .client(id)
        .ok_or_else(|| invalid_client("unknown client_id"))?;
    match (&client.secret, secret) {
        (Some(expected), Some(given)) if expected.matches(given) => Ok(client),
        (Some(_), _) => Err(invalid_client("client authentication failed")),
        (None, None) => Ok(client),
        (None, Some(_)) => Err(invalid_client("this public client has no secret")),
    }
}

/// The audience a client asks for (the default one when it names none), if its allow-list has it.
pub(crate) fn target(
    settings: &Settings,
    client: &Client,
    requested: Option<String>,
) -> Result<String, ApiError> {
    let audience = requested.unwrap_or_else(|| settings.default_audience().to_owned());
    if client.audiences.contains(&audience) {
        Ok(audience)
    } else {
        Err(oauth(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            format!(
                "audience {audience:?} is not allowed for client {:?}",
                client.id
            ),
        ))
    }
}

pub(crate) fn token_response(pair: &TokenPair, refresh_grant: bool) -> Response {
    no_store(token_body(pair, refresh_grant))
}

/// The fields of a successful token response (RFC 6749 section 5.1).
pub(crate) fn token_body(pair: &TokenPair, refresh_grant: bool) -> Value {
    let mut body = json!({
        "access_token": pair.access_token,
        "token_type": "Bearer",
        "expires_in": pair.expires_in,
    });
    if !refresh_grant {
        body["issued_token_type"] = json!(ACCESS_TOKEN_TYPE);
    }
    if let Some(r) = &pair.refresh_token {
        body["refresh_token"] = json!(r);
    }
    if !pair.scope.is_empty() {
        body["scope"] = json!(pair.scope);
    }
    body
}

/// A JSON body holding tokens: never cached.
pub(crate) fn no_store(body: Value) -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(body),
    )
        .into_response()
}

pub(crate) async fn token(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    form: Result<Form<TokenRequest>, FormRejection>,
) -> Result<Response, ApiError> {
    let Form(req) = form?;
    let grant = req
        .grant_type
        .clone()
        .ok_or_else(|| ApiError::invalid_request("grant_type is required"))?;
    if !crate::discovery::GRANT_TYPES.contains(&grant.as_str()) {
        return Err(oauth(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("grant_type {grant:?} is not supported"),
        ));
    }
    let settings = state.settings();
    let client = client(
        &settings,
        &headers,
        req.client_id.as_deref(),
        req.client_secret.as_deref(),
    )?;
    if !client.grants.contains(&grant) {
        return Err(oauth(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            format!("client {:?} may not use grant_type {grant:?}", client.id),
        ));
    }
    if grant == "refresh_token" {
        let token = required(&req.refresh_token, "refresh_token")?;
        let pair = state.refresh(&client.id, token, &ctx).await?;
        return Ok(token_response(&pair, true));
    }
    if grant == crate::discovery::PASSWORD_GRANT {
        let username = req
            .username
            .as_deref()
            .ok_or_else(|| ApiError::invalid_request("username is required"))?;
        // An empty password is a failed login (never an anonymous bind); the directory layer
        // answers it like any wrong password.
        let password = req
            .password
            .as_deref()
            .ok_or_else(|| ApiError::invalid_request("password is required"))?;
        let audience = target(&settings, client, req.audience.clone())?;
        let pair = state
            .password_login(
                crate::ldap::PasswordLogin {
                    client,
                    username,
                    password,
                    audience,
                    scope: req.scope.clone().unwrap_or_default(),
                },
                &ctx,
            )
            .await?;
        return Ok(token_response(&pair, true));
    }
    if grant == crate::discovery::KERBEROS_GRANT {
        let token = required(&req.kerberos_token, "kerberos_token")?;
        let audience = target(&settings, client, req.audience.clone())?;
        let (pair, mutual) = state
            .kerberos_login(
                crate::negotiate::KerberosRequest {
                    client,
                    token,
                    audience,
                    scope: req.scope.clone().unwrap_or_default(),
                },
                &ctx,
            )
            .await?;
        let mut body = token_body(&pair, true);
        if let Some(m) = mutual {
            body["kerberos_mutual_token"] = json!(STANDARD.encode(m));
        }
        return Ok(no_store(body));
    }
    if grant == crate::authorize::AUTHORIZATION_CODE_GRANT {
        let code = required(&req.code, "code")?;
        let pair = state
            .redeem_code(
                client,
                code,
                req.redirect_uri.as_deref(),
                req.code_verifier.as_deref(),
                &ctx,
            )
            .await?;
        return Ok(token_response(&pair, true));
    }
    if grant == crate::device::DEVICE_GRANT {
        let code = required(&req.device_code, "device_code")?;
        let pair = state.poll_device(client, code, &ctx).await?;
        return Ok(token_response(&pair, true));
    }
    debug_assert_eq!(grant, TOKEN_EXCHANGE);
    if let Some(t) = req.requested_token_type.as_deref()
        && t != ACCESS_TOKEN_TYPE
    {
        return Err(ApiError::invalid_request(format!(
            "requested_token_type must be {ACCESS_TOKEN_TYPE}"
        )));
    }
    let subject = required(&req.subject_token, "subject_token")?.to_owned();
    // An access token keeps its own audience unless a rule re-targets it: its audience is
    // judged once the subject token is verified.
    let audience = if req.subject_token_type.as_deref() == Some(ACCESS_TOKEN_TYPE) {
        String::new()
    } else {
        target(&settings, client, req.audience.clone())?
    };
    let pair = match req.subject_token_type.as_deref() {
        Some(STATIC_TOKEN_TYPE) => {
            if req.actor_token.is_some() {
                return Err(ApiError::invalid_request(
                    "actor_token is accepted only with an access-token subject",
                ));
            }
            exchange_static(&state, &ctx, client, &subject, audience, req.scope).await?
        }
        Some(ACCESS_TOKEN_TYPE) => exchange_access(&state, &ctx, client, &req, &subject).await?,
        Some(ID_TOKEN_TYPE) => {
            if req.actor_token.is_some() {
                return Err(ApiError::invalid_request(
                    "actor_token is accepted only with an access-token subject",
                ));
            }
            let scope = req.scope.clone().unwrap_or_default();
            state
                .exchange_id_token(client, &subject, audience, scope, &ctx)
                .await?
        }
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "subject_token_type {other:?} is not supported; use {STATIC_TOKEN_TYPE}, {ACCESS_TOKEN_TYPE} or {ID_TOKEN_TYPE}"
            )));
        }
        None => return Err(ApiError::invalid_request("subject_token_type is required")),
    };
    Ok(token_response(&pair, false))
}

/// A static token starts a session (`amr=static`).
async fn exchange_static(
    state: &AppState,
    ctx: &RequestCtx,
    client: &Client,
    subject: &str,
    audience: String,
    scope: Option<String>,
) -> Result<TokenPair, ApiError> {
    if !subject.starts_with(STATIC_TOKEN_PREFIX) {
        return Err(ApiError::invalid_grant(
            "subject_token is not a static token",
        ));
    }
    let who = match state.authenticate_here(subject).await {
        Ok(w) => w,
        Err(refusal) => {
            let reason = refusal.audit(state, ctx, "token.exchange");
            if refusal.denial == Denial::Unavailable {
                return Err(ApiError::Unavailable(reason));
            }
            return Err(ApiError::invalid_grant(reason));
        }
    };
    let account = state
        .store()
        .account(who.uid)
        .await?
        .ok_or_else(|| ApiError::invalid_grant("account is disabled"))?;
    state
        .start_session(
            Login {
                account: &account,
                client_id: &client.id,
                amr: "static",
                audience,
                scope: scope.unwrap_or_default(),
                login_groups: Vec::new(),
                upstream: None,
            },
            ctx,
        )
        .await
}

async fn verified_access(state: &AppState, token: &str) -> Result<AccessClaims, Denial> {
    let settings = state.settings();
    state
        .authenticator()
        .access_claims(
            token,
            &settings,
            &state.keys(),
            &**state.store(),
            state.clock().now().0,
        )
        .await
        .map_err(|r| r.denial)
}

/// Narrows the subject's groups and scopes to what `scope` asks for: `group:NAME` values select
/// groups (all of the subject's when none is named); other values must be among the subject's
/// scopes.
fn narrow(subject: &AccessClaims, scope: Option<&str>) -> Result<(Vec<String>, String), ApiError> {
    let Some(scope) = scope.filter(|s| !s.trim().is_empty()) else {
        return Ok((subject.groups.clone(), subject.scope.clone()));
    };
    let have: Vec<&str> = subject.scope.split_whitespace().collect();
    let mut groups = Vec::new();
    let mut scopes = Vec::new();
    for s in scope.split_whitespace() {
        if let Some(g) = s.strip_prefix(GROUP_SCOPE) {
            if !subject.groups.iter().any(|h| h == g) {
                return Err(oauth(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    format!("the subject token does not carry group {g:?}"),
                ));
            }
            if !groups.iter().any(|h: &String| h == g) {
                groups.push(g.to_owned());
            }
        } else if have.contains(&s) {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        } else {
            return Err(oauth(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                format!("the subject token does not carry scope {s:?}"),
            ));
        }
    }
    if groups.is_empty() {
        groups.clone_from(&subject.groups);
    }
    Ok((groups, scopes.join(" ")))
}

/// The audience an access-token exchange yields: the subject token's own (the requested one,
/// or the subject's when none is asked for), or another only where an `audience_changes` rule
/// (global or the client's) allows the change from the subject's audience; the client's
/// allow-list applies on top.
///
/// # Errors
/// `invalid_target` naming the audiences at fault.
fn exchange_target(
    settings: &Settings,
    client: &Client,
    subject: &AccessClaims,
    requested: Option<&str>,
) -> Result<String, ApiError> {
    let audience = match requested.filter(|a| !a.is_empty()) {
        Some(a) => a.to_owned(),
        None => subject
            .aud
            .iter()
            .find(|a| *a == settings.default_audience())
            .or_else(|| subject.aud.first())
            .cloned()
            .unwrap_or_else(|| settings.default_audience().to_owned()),
    };
    if !subject.aud.contains(&audience)
        && !AudienceChange::allows(&settings.audience_changes, &subject.aud, &audience)
        && !AudienceChange::allows(&client.audience_changes, &subject.aud, &audience)
    {
        return Err(oauth(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            format!(
                "the subject token is for {:?}; no token_exchange.audience_changes rule allows \
                 re-targeting it to {audience:?}",
                subject.aud.join(" ")
            ),
        ));
    }
    target(settings, client, Some(audience))
}

/// An access token becomes a narrower one; with an actor token, a delegated one carrying `act`.
async fn exchange_access(
    state: &AppState,
    ctx: &RequestCtx,
    client: &Client,
    req: &TokenRequest,
    subject: &str,
) -> Result<TokenPair, ApiError> {
    let deny = |reason: &str, who: Option<&AccessClaims>| {
        let mut ev = ctx.event("token.exchange", "denied");
        ev.reason = Some(reason);
        ev.account = who.map(|c| c.name.as_str());
        ev.uid = who.map(|c| c.sub.clone());
        state.audit().record(&ev);
    };
    let claims = match verified_access(state, subject).await {
        Ok(c) => c,
        Err(Denial::Unavailable) => {
            return Err(ApiError::Unavailable(Denial::Unavailable.to_string()));
        }
        Err(d) => {
            deny(&d.to_string(), None);
            return Err(ApiError::invalid_grant(format!("subject_token: {d}")));
        }
    };
    // The audience first: a refused re-target answers invalid_target whatever the scope says.
    let audience =
        match exchange_target(&state.settings(), client, &claims, req.audience.as_deref()) {
            Ok(a) => a,
            Err(e) => {
                deny(&e.to_string(), Some(&claims));
                return Err(e);
            }
        };
    let (groups, scope) = match narrow(&claims, req.scope.as_deref()) {
        Ok(n) => n,
        Err(e) => {
            deny(&e.to_string(), Some(&claims));
            return Err(e);
        }
    };
    let act = match (&req.actor_token, req.actor_token_type.as_deref()) {
        (None, None) => None,
        (Some(actor), Some(STATIC_TOKEN_TYPE | ACCESS_TOKEN_TYPE)) => {
            let (name, uid, groups) = if actor.starts_with(STATIC_TOKEN_PREFIX) {
                match state.authenticate_here(actor).await {
                    Ok(a) => (a.name.clone(), a.uid.to_string(), a.groups.clone()),
                    Err(_) => {
                        deny("actor_token is invalid", Some(&claims));
                        return Err(ApiError::invalid_grant("actor_token is invalid"));
                    }
                }
            } else {
                match verified_access(state, actor).await {
                    // An actor's access token must be meant for idbridge itself or for the
                    // subject token's audience: a token for some other service proves nothing
                    // here.
                    Ok(a)
                        if !a
                            .aud
                            .iter()
                            .any(|x| *x == state.settings().issuer || claims.aud.contains(x)) =>
                    {
                        deny("actor_token is for another audience", Some(&claims));
                        return Err(ApiError::invalid_grant(format!(
                            "actor_token: the token is for {:?}, neither idbridge nor the \
                             subject token's audience",
                            a.aud.join(" ")
                        )));
                    }
                    Ok(a) => (a.name, a.sub, a.groups),
                    Err(d) => {
                        deny("actor_token is invalid", Some(&claims));
                        return Err(ApiError::invalid_grant(format!("actor_token: {d}")));
                    }
                }
            };
            let settings = state.settings();
            let allowed = settings.may_act.iter().any(|rule| {
                rule.actors.matches(&name, &groups)
                    && rule.subjects.matches(&claims.name, &claims.groups)
                    && rule.audiences.contains(&audience)
            });
            if !allowed {
                let reason = format!(
                    "{name:?} may not act for {:?} towards audience {audience:?}",
                    claims.name
                );
                deny(&reason, Some(&claims));
                return Err(ApiError::invalid_grant(format!(
                    "{reason} (no delegation rule allows it)"
                )));
            }
            Some(Actor {
                sub: uid,
                name,
                act: claims.act.clone().map(Box::new),
            })
        }
        (Some(_), Some(other)) => {
            return Err(ApiError::invalid_request(format!(
                "actor_token_type {other:?} is not supported"
            )));
        }
        (Some(_), None) => {
            return Err(ApiError::invalid_request("actor_token_type is required"));
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid_request(
                "actor_token_type without actor_token",
            ));
        }
    };
    let act = act.or_else(|| claims.act.clone());
    let sid = claims
        .sid
        .parse()
        .map_err(|_| ApiError::invalid_grant("subject_token has no session"))?;
    let session = state
        .store()
        .session(sid)
        .await?
        .ok_or_else(|| ApiError::invalid_grant("subject_token: token is invalid or revoked"))?;
    let account = state
        .store()
        .account(session.account)
        .await?
        .ok_or_else(|| ApiError::invalid_grant("subject_token: account is disabled"))?;
    let actor_name = act.as_ref().map(|a| a.name.clone());
    let now = state.clock().now().0;
    let pair = state.mint(
        &account,
        &session,
        Grant {
            audience: audience.clone(),
            groups,
            scope,
            act,
            not_after: Some(claims.exp),
        },
        now,
    )?;
    let mut ev = ctx.event("token.exchange", "ok");
    ev.account = Some(account.name.as_str());
    ev.uid = Some(account.uid.to_string());
    ev.actor = actor_name.as_deref();
    ev.object = Some(format!(
        "session={} from_jti={} jti={} aud={audience}",
        session.id, claims.jti, pair.jti
    ));
    state.audit().record_durable(&ev).await;
    Ok(pair)
}

#[derive(Debug, Deserialize)]
pub(crate) struct TokenForm {
    token: Option<String>,
    #[allow(dead_code)] // accepted as RFC 7009 and 7662 allow; the token's form says its type
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

impl TokenForm {
    /// The `token` both endpoints require.
    fn token(&self) -> Result<String, ApiError> {
        self.token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::invalid_request("token is required"))
    }
}

/// Revocation requests allowed from one address per minute.
const REVOCATIONS_PER_MINUTE: u32 = 60;

/// RFC 7009: revokes a refresh token (its whole session), an access token (by `jti`) or a static
/// token. Unknown tokens are answered 200, as the RFC asks.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Result<Response, ApiError> {
    let Form(req) = form?;
    let settings = state.settings();
    let client = client(
        &settings,
        &headers,
        req.client_id.as_deref(),
        req.client_secret.as_deref(),
    )?;
    let token = req.token()?;
    let now = state.clock().now();
    // Each revocation makes every replica read its revocation list again: a few per minute per
    // address are plenty for a client logging out.
    state
        .throttle()
        .count_per_source(
            "revoke",
            ctx.source.map(|s| s.ip()),
            REVOCATIONS_PER_MINUTE,
            std::time::Duration::from_secs(60),
        )
        .map_err(ApiError::Throttled)?;
    let mut what = None;
    if token.starts_with(REFRESH_TOKEN_PREFIX) {
        if let Some(r) = state.store().refresh_token(hash_token(&token)).await?
            && let Some(s) = state.store().session(r.session).await?
        {
            if s.client_id != client.id {
                return Err(invalid_client("the token was issued to another client"));
            }
            state
                .store()
                .revoke_session(s.id, "revoked by its client", now)
                .await?;
            what = Some((s.account, format!("session={}", s.id)));
        }
    } else if token.starts_with(STATIC_TOKEN_PREFIX) {
        if let Some(t) = state
            .store()
            .static_token_by_hash(hash_token(&token))
            .await?
        {
            state.store().revoke_static_token(t.id, now).await?;
            what = Some((t.account, format!("token={}", t.id)));
        }
    } else if let Ok(claims) = verified_access(&state, &token).await {
        if !claims.client_id.is_empty() && claims.client_id != client.id {
            return Err(invalid_client("the token was issued to another client"));
        }
        state
            .store()
            .revoke_jti(&claims.jti, UnixTime(claims.exp), now)
            .await?;
        if let Ok(uid) = claims.sub.parse() {
            what = Some((uid, format!("jti={}", claims.jti)));
        }
    }
    if let Some((uid, object)) = what {
        state.invalidate_account(uid);
        let account = state.store().account(uid).await?;
        let mut ev = ctx.event("token.revoke", "ok");
        ev.account = account.as_ref().map(|a| a.name.as_str());
        ev.uid = Some(uid.to_string());
        ev.actor = Some(&client.id);
        ev.object = Some(object);
        state.audit().record_durable(&ev).await;
    }
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(json!({}))).into_response())
}

/// RFC 7662: for confidential clients and admin-group bearers.
pub(crate) async fn introspect(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Result<Response, ApiError> {
    let Form(req) = form?;
    let settings = state.settings();
    let caller = if let Some(b) = crate::state::bearer(&headers) {
        let who = state
            .authenticate_here(b)
            .await
            .map_err(|_| ApiError::Unauthorized("the bearer token is invalid"))?;
        if !settings.is_admin(&who.groups) {
            return Err(ApiError::Forbidden(
                "only confidential clients and admins may introspect",
            ));
        }
        who.name.clone()
    } else {
        let c = client(
            &settings,
            &headers,
            req.client_id.as_deref(),
            req.client_secret.as_deref(),
        )?;
        if c.secret.is_none() {
            return Err(invalid_client(
                "introspection needs a confidential client or an admin bearer token",
            ));
        }
        c.id.clone()
    };
    let token = req.token()?;
    let answer = describe(&state, &token).await?;
    let mut ev = ctx.event("token.introspect", "ok");
    ev.actor = Some(&caller);
    ev.object = Some(format!(
        "active={}",
        answer
            .get("active")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    ));
    state.audit().record(&ev);
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(answer)).into_response())
}

async fn describe(state: &AppState, token: &str) -> Result<Value, ApiError> {
    let inactive = json!({"active": false});
    let now = state.clock().now();
    let settings = state.settings();
    if token.starts_with(REFRESH_TOKEN_PREFIX) {
        let Some(r) = state.store().refresh_token(hash_token(token)).await? else {
            return Ok(inactive);
        };
        let Some(s) = state.store().session(r.session).await? else {
            return Ok(inactive);
        };
        let account = state.store().account(s.account).await?;
        let live = r.spent_at.is_none()
            && s.state(now, settings.session_idle_timeout.as_secs()) == SessionState::Active
            && account.as_ref().is_some_and(|a| !a.disabled);
        return Ok(match (live, account) {
            (true, Some(a)) => json!({
                "active": true,
                "token_type": "refresh_token",
                "sub": a.uid.to_string(),
                "username": a.name.to_string(),
                "client_id": s.client_id,
                "sid": s.id.to_string(),
                "iat": r.created_at.0,
                "exp": s.expires_at.0,
                "iss": settings.issuer,
            }),
            _ => inactive,
        });
    }
    if token.starts_with(STATIC_TOKEN_PREFIX) {
        return Ok(match state.authenticate(token, &[]).await {
            Ok(w) => json!({
                "active": true,
                "token_type": "static",
                "sub": w.uid.to_string(),
                "username": w.name,
                "groups": w.groups,
                "exp": w.expires_at,
                "iss": settings.issuer,
            }),
            Err(_) => inactive,
        });
    }
    Ok(match verified_access(state, token).await {
        Ok(c) => {
            let mut v = serde_json::to_value(&c).map_err(|_| ApiError::Internal)?;
            v["active"] = json!(true);
            v["token_type"] = json!("Bearer");
            v["username"] = json!(c.name);
            v
        }
        Err(Denial::Unavailable) => {
            return Err(ApiError::Unavailable(Denial::Unavailable.to_string()));
        }
        Err(_) => inactive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(groups: &[&str], scope: &str) -> AccessClaims {
        AccessClaims {
            iss: "i".into(),
            sub: "s".into(),
            aud: vec!["kubernetes".into()],
            exp: 2,
            iat: 1,
            nbf: 1,
            jti: "j".into(),
            name: "alice".into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            namespace: None,
            amr: vec![],
            scope: scope.into(),
            sid: "x".into(),
            client_id: String::new(),
            act: None,
        }
    }

    #[test]
    fn narrowing_keeps_only_what_the_subject_has() {
        let c = claims(&["dev", "ops"], "read write");
        assert_eq!(
            narrow(&c, None).unwrap(),
            (vec!["dev".into(), "ops".into()], "read write".into())
        );
        assert_eq!(
            narrow(&c, Some("group:dev read")).unwrap(),
            (vec!["dev".into()], "read".into())
        );
        assert!(narrow(&c, Some("group:admins")).is_err());
        assert!(narrow(&c, Some("delete")).is_err());
    }

    #[test]
    fn an_exchange_keeps_the_audience_unless_a_rule_retargets_it() {
        let mut settings = Settings::new("https://idb".into());
        let mut client = Client::cli(vec!["kubernetes".into(), "vault".into()]);
        let mut c = claims(&["dev"], "");
        let err = |r: Result<String, ApiError>| match r {
            Err(ApiError::OAuth { error, .. }) => error,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            exchange_target(&settings, &client, &c, None).unwrap(),
            "kubernetes"
        );
        assert_eq!(
            err(exchange_target(&settings, &client, &c, Some("vault"))),
            "invalid_target"
        );
        // A rule on the client, then globally; it goes one way only.
        client.audience_changes = vec![AudienceChange {
            from: "kubernetes".into(),
            to: vec!["vault".into()],
        }];
        assert_eq!(
            exchange_target(&settings, &client, &c, Some("vault")).unwrap(),
            "vault"
        );
        settings.audience_changes = std::mem::take(&mut client.audience_changes);
        assert_eq!(
            exchange_target(&settings, &client, &c, Some("vault")).unwrap(),
            "vault"
        );
        c.aud = vec!["vault".into()];
        assert_eq!(
            exchange_target(&settings, &client, &c, None).unwrap(),
            "vault"
        );
        assert_eq!(
            err(exchange_target(&settings, &client, &c, Some("kubernetes"))),
            "invalid_target"
        );
        // The client's allow-list still applies on top of a rule.
        settings.audience_changes = vec![AudienceChange {
            from: "vault".into(),
            to: vec!["prod-db".into()],
        }];
        assert_eq!(
            err(exchange_target(&settings, &client, &c, Some("prod-db"))),
            "invalid_target"
        );
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("a%3Ab+c"), "a:b c");
        assert_eq!(form_decode("100%"), "100%");
    }
}
