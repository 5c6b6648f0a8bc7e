//! The whole service as one router: every area's routes, and the layers every request passes
//! (request span and metrics, body first, body limit). Nothing below imports this module.

use axum::extract::DefaultBodyLimit;
use axum::{Router, middleware};

use crate::state::AppState;
use crate::{admin, kube, login, oauth, observe};

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
            observe::access::edge,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {

    use axum::body::Body;
    use axum::http::{Request, StatusCode};

    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn every_route_the_metrics_name_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::state::test_state(dir.path()).await;
        let router = app(state);
        for area in [
            observe::ROUTES,
            oauth::ROUTES,
            login::ROUTES,
            kube::ROUTES,
            admin::ROUTES,
        ] {
            for route in area {
                let path = route.replace("{name}", "x").replace("{id}", "x");
                let resp = router
                    .clone()
                    .oneshot(Request::get(&path).body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                // Any answer but the router's own "no such route", a bare 404 (a POST-only route
                // answers 405; a handler's 404 says why).
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
                    .await
                    .unwrap();
                assert!(
                    status != StatusCode::NOT_FOUND || !body.is_empty(),
                    "{route} is not served"
                );
            }
        }
    }

    #[test]
    fn every_route_served_is_named_for_the_metrics() {
        // The areas' `routes()`, read from their source: every path given to `.route(` must be
        // in that area's `ROUTES`, or its requests would be counted as `other`.
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for (file, prefix, names) in [
            ("observe/mod.rs", "", observe::ROUTES),
            ("oauth/mod.rs", "", oauth::ROUTES),
            ("login/mod.rs", "", login::ROUTES),
            ("kube/mod.rs", "", kube::ROUTES),
            ("admin/mod.rs", "/admin/v1", admin::ROUTES),
        ] {
            let text = std::fs::read_to_string(src.join(file)).unwrap();
            let mut served = 0;
            for part in text.split(".route(").skip(1) {
                let path = part.trim_start().trim_start_matches('"');
                let path = &path[..path.find('"').unwrap()];
                let full = format!("{prefix}{path}");
                assert!(
                    names.contains(&full.as_str()),
                    "{file} serves {full} but its ROUTES does not name it"
                );
                served += 1;
            }
            assert_eq!(
                served,
                names.len(),
                "{file}: ROUTES names a route it does not serve"
            );
        }
    }
}
