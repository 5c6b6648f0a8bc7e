//! Token responses (RFC 6749 section 5.1): the JSON body, never cached.

use axum::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use idbridge_core::TokenType;
use idbridge_tokens::TokenPair;
use serde_json::{Value, json};

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
