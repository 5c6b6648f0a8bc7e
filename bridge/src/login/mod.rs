//! The ways a person proves who they are: a directory password, Kerberos (SPNEGO), an upstream
//! OpenID provider, an authenticating proxy; the login page that offers them, the records of a
//! login in progress, the failed-login throttle, and what a refresh asks those sources again.
//! Each ends in the token service, which starts the session.

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

pub(crate) mod finish;
pub(crate) mod kerberos;
pub(crate) mod oidc;
pub(crate) mod page;
pub(crate) mod password;
pub(crate) mod proxy;
pub(crate) mod recheck;
pub(crate) mod records;
pub(crate) mod throttle;
pub(crate) mod upstream;

/// This area's routes, as axum's `MatchedPath` names them.
pub(crate) const ROUTES: &[&str] = &[
    "/login",
    "/login/proxy",
    "/login/oidc/{name}",
    "/login/oidc/callback",
    "/login/password",
    "/login/kerberos",
];

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(kerberos::login))
        .route("/login/proxy", post(proxy::login))
        .route("/login/oidc/callback", get(oidc::upstream_callback))
        .route("/login/oidc/{name}", post(oidc::login_upstream))
        .route("/login/password", post(password::login_password))
        .route("/login/kerberos", get(kerberos::login_kerberos))
}
