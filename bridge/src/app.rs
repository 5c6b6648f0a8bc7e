//! The whole service as one router: every area's routes, and the layers every request passes
//! (request span and metrics, body first, body limit). Nothing below imports this module.

use axum::extract::DefaultBodyLimit;
use axum::{Router, middleware};

use crate::state::AppState;
use crate::{admin, http, kube, login, oauth, observe};

/// The whole service as a router; tests drive it with `oneshot`, `serve` puts it behind TLS.
pub fn app(state: AppState) -> Router {
    let limit = state.settings().max_body_bytes;
    let routes: Vec<&'static str> = [
        observe::ROUTES,
        oauth::ROUTES,
        login::ROUTES,
        kube::ROUTES,
        admin::ROUTES,
    ]
    .concat();
    state.metrics().register(&routes);
    Router::new()
        .merge(observe::routes())
        .merge(oauth::routes())
        .merge(login::routes())
        .merge(kube::routes())
        .nest("/admin/v1", admin::routes())
        .layer(DefaultBodyLimit::max(limit))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            http::body::body_first,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            observe::access::observe,
        ))
        .with_state(state)
}
