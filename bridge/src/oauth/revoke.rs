//! `/oauth2/revoke` (RFC 7009) and `/oauth2/introspect` (RFC 7662).

use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::client::{client, invalid_client};
use crate::http::error::ApiError;
use crate::http::extract::RequestCtx;
use crate::state::AppState;

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
    let caller = if let Some(b) = crate::http::extract::bearer(&headers) {
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
        c.id.to_string()
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
