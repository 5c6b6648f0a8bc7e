//! `/oauth2/token`: the grant types, parsed once, each handed to the one operation that serves it.

use axum::Form;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use idbridge_core::{GrantType, TokenType, UnknownValue};
use idbridge_tokens::exchange::{Exchange, target};
use idbridge_tokens::{Client, TokenPair};
use serde::Deserialize;
use serde_json::json;

use crate::http::client::{client, oauth};
use crate::http::error::ApiError;
use crate::http::extract::RequestCtx;
use crate::http::reply::{no_store, token_body, token_response};
use crate::state::AppState;

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

/// A form field that must be present and not empty.
fn required<'a>(field: &'a Option<String>, name: &str) -> Result<&'a str, ApiError> {
    field
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::invalid_request(format!("{name} is required")))
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
            format!(
                "client {:?} may not use grant_type {:?}",
                client.id,
                grant.as_str()
            ),
        ));
    }
    let scope = || req.scope.clone().unwrap_or_default();
    let target = |requested: &Option<String>| target(&settings.tokens, client, requested.clone());
    let pair = match grant {
        GrantType::RefreshToken => {
            let token = required(&req.refresh_token, "refresh_token")?;
            let source = crate::login::recheck::Sources::new(&state, &ctx);
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
            crate::login::password::password_login(
                &state,
                crate::login::password::PasswordLogin {
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
            let (pair, mutual) = crate::login::kerberos::kerberos_login(
                &state,
                crate::login::kerberos::KerberosRequest {
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
            state
                .service()
                .redeem_code(
                    client,
                    code,
                    req.redirect_uri.as_deref(),
                    req.code_verifier.as_deref(),
                    ctx.origin(),
                )
                .await?
        }
        GrantType::DeviceCode => {
            let code = required(&req.device_code, "device_code")?;
            state
                .service()
                .poll_device(client, code, ctx.origin())
                .await?
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
        && t.parse() != Ok(TokenType::AccessToken)
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
            crate::login::oidc::exchange_id_token(state, client, subject, audience, scope, ctx)
                .await?
        }
    })
}
