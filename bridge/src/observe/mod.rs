//! Observability: the request span and per-route metrics every request passes, and the health
//! and metrics endpoints.

use axum::Router;
use axum::routing::get;

use crate::state::AppState;

pub(crate) mod access;
pub(crate) mod health;
pub(crate) mod metrics;

/// This area's routes, as axum's `MatchedPath` names them.
pub(crate) const ROUTES: &[&str] = &["/healthz", "/readyz", "/metrics"];

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
}
