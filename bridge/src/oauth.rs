//! The OAuth endpoints: `/oauth2/token` (refresh and RFC 8693 token exchange), `/oauth2/revoke`
//! (RFC 7009) and `/oauth2/introspect` (RFC 7662).

use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use idbridge_core::{GrantType, TokenType, UnknownValue};
use idbridge_tokens::exchange::{Exchange, target};
use idbridge_tokens::{CLI_CLIENT, Client, TokenPair};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::settings::Settings;
use crate::state::{AppState, RequestCtx};

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
        .tokens
        .client(id)
        .ok_or_else(|| invalid_client("unknown client_id"))?;
    match (&client.secret, secret) {
        (Some(expected), Some(given)) if expected.matches(given) => Ok(client),
        (Some(_), _) => Err(invalid_client("client authentication failed")),
        (None, None) => Ok(client),
        (None, Some(_)) => Err(invalid_client("this public client has no secret")),
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
        body["issued_token_type"] = json!(TokenType::AccessToken.as_str());
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
    let grant: GrantType = req
        .grant_type
        .as_deref()
        .ok_or_else(|| ApiError::invalid_request("grant_type is required"))?
        .parse()
        .map_err(|e: UnknownValue| {
            oauth(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {:?} is not supported", e.value),
            )
        })?;
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
    let scope = || req.scope.clone().unwrap_or_default();
    let target = |requested: &Option<String>| target(&settings.tokens, client, requested.clone());
    let pair = match grant {
        GrantType::RefreshToken => {
            let token = required(&req.refresh_token, "refresh_token")?;
            let source = crate::recheck::Sources::new(&state, &ctx);
            state
                .service()
                .refresh(&client.id, token, ctx.origin(), &source)
                .await?
        }
        GrantType::Password => {
            let username = req
                .username
                .as_deref()
                .ok_or_else(|| ApiError::invalid_request("username is required"))?;
            // An empty password is a failed login (never an anonymous bind); the directory
            // layer answers it like any wrong password.
            let password = req
                .password
                .as_deref()
                .ok_or_else(|| ApiError::invalid_request("password is required"))?;
            let audience = target(&req.audience)?;
            crate::ldap::password_login(
                &state,
                crate::ldap::PasswordLogin {
                    client,
                    username,
                    password,
                    audience,
                    scope: scope(),
                },
                &ctx,
            )
            .await?
        }
        GrantType::Kerberos => {
            let token = required(&req.kerberos_token, "kerberos_token")?;
            let audience = target(&req.audience)?;
            let (pair, mutual) = crate::negotiate::kerberos_login(
                &state,
                crate::negotiate::KerberosRequest {
                    client,
                    token,
                    audience,
                    scope: scope(),
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
        GrantType::AuthorizationCode => {
            let code = required(&req.code, "code")?;
            crate::authorize::redeem_code(
                &state,
                client,
                code,
                req.redirect_uri.as_deref(),
                req.code_verifier.as_deref(),
                &ctx,
            )
            .await?
        }
        GrantType::DeviceCode => {
            let code = required(&req.device_code, "device_code")?;
            crate::device::poll_device(&state, client, code, &ctx).await?
        }
        GrantType::TokenExchange => {
            let pair = exchange(&state, &ctx, client, &req).await?;
            return Ok(token_response(&pair, false));
        }
    };
    Ok(token_response(&pair, true))
}

/// The token-exchange grant: which subject token type, and what goes with it.
async fn exchange(
    state: &AppState,
    ctx: &RequestCtx,
    client: &Client,
    req: &TokenRequest,
) -> Result<TokenPair, ApiError> {
    let access = TokenType::AccessToken.as_str();
    if let Some(t) = req.requested_token_type.as_deref()
        && t != access
    {
        return Err(ApiError::invalid_request(format!(
            "requested_token_type must be {access}"
        )));
    }
    let subject = required(&req.subject_token, "subject_token")?;
    let Some(kind) = req.subject_token_type.as_deref() else {
        return Err(ApiError::invalid_request("subject_token_type is required"));
    };
    let Ok(kind) = kind.parse::<TokenType>() else {
        return Err(ApiError::invalid_request(format!(
            "subject_token_type {kind:?} is not supported; use {}, {access} or {}",
            TokenType::Static,
            TokenType::IdToken
        )));
    };
    let no_actor = || {
        if req.actor_token.is_some() {
            Err(ApiError::invalid_request(
                "actor_token is accepted only with an access-token subject",
            ))
        } else {
            Ok(())
        }
    };
    let service = state.service();
    Ok(match kind {
        // An access token keeps its own audience unless a rule re-targets it: its audience is
        // judged once the subject token is verified.
        TokenType::AccessToken => {
            let exchange = Exchange {
                client,
                subject,
                audience: req.audience.as_deref(),
                scope: req.scope.as_deref(),
                actor_token: req.actor_token.as_deref(),
                actor_token_type: req.actor_token_type.as_deref(),
            };
            service.exchange_access(&exchange, ctx.origin()).await?
        }
        TokenType::Static => {
            let audience = target(&state.settings().tokens, client, req.audience.clone())?;
            no_actor()?;
            service
                .exchange_static(ctx.origin(), client, subject, audience, req.scope.clone())
                .await?
        }
        TokenType::IdToken => {
            let audience = target(&state.settings().tokens, client, req.audience.clone())?;
            no_actor()?;
            let scope = req.scope.clone().unwrap_or_default();
            crate::authorize::exchange_id_token(state, client, subject, audience, scope, ctx)
                .await?
        }
    })
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
    state.service().revoke(client, &token, ctx.origin()).await?;
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
        if !settings.tokens.is_admin(&who.groups) {
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
    let answer = state.service().describe(&token).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("a%3Ab+c"), "a:b c");
        assert_eq!(form_decode("100%"), "100%");
    }
}
