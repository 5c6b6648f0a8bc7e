//! One `info` span per request, with method, route, status, latency and request id; and the
//! per-route metrics.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::http::extract::{RequestId, request_id};
use crate::state::AppState;

pub(crate) async fn observe(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    use tracing::Instrument;
    let start = Instant::now();
    let id = request_id(&req);
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route_str = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    // One span per request, attached to the handler's future (not entered across an await), so
    // every event of the request carries its fields and none of another's.
    let span = tracing::info_span!(
        target: "idbridge::access",
        "request",
        method = %req.method(),
        route = %route_str,
        request_id = %id,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let elapsed = start.elapsed();
    span.record("status", resp.status().as_u16());
    span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
    state
        .metrics()
        .observe(route_str, resp.status().as_u16(), elapsed);
    resp
}
