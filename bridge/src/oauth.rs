//! `POST /oauth2/token`: RFC 8693 token exchange of a static token for an access token.

use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::json;

use crate::auth::Denial;
use crate::discovery::GRANT_TYPES;
use crate::error::ApiError;
use crate::state::{AppState, RequestCtx};
use crate::tokens::AccessClaims;

/// The built-in first-party public client.
pub(crate) const CLI_CLIENT: &str = "idbridge-cli";
const STATIC_TOKEN_TYPE: &str = "urn:idbridge:params:oauth:token-type:static";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

#[derive(Debug, Deserialize)]
pub(crate) struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    audience: Option<String>,
    requested_token_type: Option<String>,
    scope: Option<String>,
}

fn oauth(status: StatusCode, error: &'static str, description: impl Into<String>) -> ApiError {
    ApiError::OAuth {
        status,
        error,
        description: description.into(),
    }
}

pub(crate) async fn token(
    State(state): State<AppState>,
    ctx: RequestCtx,
    form: Result<Form<TokenRequest>, FormRejection>,
) -> Result<Response, ApiError> {
    let Form(req) = form?;
    let grant = req
        .grant_type
        .ok_or_else(|| ApiError::invalid_request("grant_type is required"))?;
    if !GRANT_TYPES.contains(&grant.as_str()) {
        return Err(oauth(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("grant_type {grant:?} is not supported"),
        ));
    }
    let client = req.client_id.as_deref().unwrap_or(CLI_CLIENT);
    if client != CLI_CLIENT {
        return Err(oauth(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client_id",
        ));
    }
    if let Some(t) = req.requested_token_type.as_deref()
        && t != ACCESS_TOKEN_TYPE
    {
        return Err(ApiError::invalid_request(format!(
            "requested_token_type must be {ACCESS_TOKEN_TYPE}"
        )));
    }
    let subject = req
        .subject_token
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::invalid_request("subject_token is required"))?;
    match req.subject_token_type.as_deref() {
        Some(STATIC_TOKEN_TYPE) => {}
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "subject_token_type {other:?} is not supported; use {STATIC_TOKEN_TYPE}"
            )));
        }
        None => return Err(ApiError::invalid_request("subject_token_type is required")),
    }
    if !subject.starts_with(crate::tokens::STATIC_TOKEN_PREFIX) {
        return Err(oauth(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "subject_token is not a static token",
        ));
    }
    let settings = state.settings();
    let audience = req
        .audience
        .unwrap_or_else(|| settings.default_audience().to_owned());
    if !settings.audiences.contains(&audience) {
        return Err(oauth(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            format!("audience {audience:?} is not allowed for this client"),
        ));
    }
    let who = match state
        .authenticate(&subject, std::slice::from_ref(&audience))
        .await
        .and_then(|w| w.require_audience().map(|()| w))
    {
        Ok(w) => w,
        Err(refusal) => {
            let reason = refusal.audit(&state, &ctx, "token.exchange");
            if refusal.denial == Denial::Unavailable {
                return Err(ApiError::Unavailable(reason));
            }
            return Err(oauth(StatusCode::BAD_REQUEST, "invalid_grant", reason));
        }
    };
    let now = state.clock().now().0;
    let ttl = i64::try_from(settings.access_token_ttl.as_secs()).unwrap_or(900);
    let claims = AccessClaims {
        iss: settings.issuer.clone(),
        sub: who.uid.to_string(),
        aud: vec![audience.clone()],
        exp: now + ttl,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        name: who.name.clone(),
        groups: who.groups.clone(),
        namespace: who.namespace.clone(),
        amr: who.amr.clone(),
        scope: req.scope.unwrap_or_default(),
    };
    let jwt = state.keys().sign(&claims).map_err(|e| {
        tracing::error!(error = %e, "cannot sign an access token");
        ApiError::Internal
    })?;
    let mut ev = ctx.event("token.exchange", "ok");
    ev.account = Some(&who.name);
    ev.uid = Some(who.uid.to_string());
    ev.object = Some(format!("jti={} aud={audience}", claims.jti));
    state.audit().record_durable(&ev).await;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "access_token": jwt,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": ttl,
        })),
    )
        .into_response())
}
