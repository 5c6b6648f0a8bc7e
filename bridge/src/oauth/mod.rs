//! The OAuth 2.0 and OpenID endpoints: discovery and JWKS, the token endpoint and its grants,
//! authorization (code with PKCE), the device grant, revocation and introspection.

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

pub(crate) mod authorize;
pub(crate) mod device;
pub(crate) mod discovery;
pub(crate) mod revoke;
pub(crate) mod token;

/// This area's routes, as axum's `MatchedPath` names them.
pub(crate) const ROUTES: &[&str] = &[
    "/.well-known/openid-configuration",
    "/oauth2/jwks",
    "/oauth2/token",
    "/oauth2/revoke",
    "/oauth2/introspect",
    "/oauth2/authorize",
    "/oauth2/device_authorization",
    "/device",
];

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(discovery::openid_configuration),
        )
        .route("/oauth2/jwks", get(discovery::jwks))
        .route("/oauth2/token", post(token::token))
        .route("/oauth2/revoke", post(revoke::revoke))
        .route("/oauth2/introspect", post(revoke::introspect))
        .route("/oauth2/authorize", get(authorize::authorize))
        .route(
            "/oauth2/device_authorization",
            post(device::device_authorization),
        )
        .route(
            "/device",
            get(device::device_page).post(device::device_submit),
        )
}
