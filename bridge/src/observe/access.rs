//! One `info` span per request, with method, route, status, latency and request id; and the
//! per-route metrics.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::http::extract::{RequestId, request_id};
use crate::state::AppState;

/// The request span, access line and metrics around `inner` (the rest of the request).
pub(crate) async fn observed<F, Fut>(state: &AppState, mut req: Request, inner: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    use tracing::Instrument;
    let start = Instant::now();
    let id = request_id(&req);
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route_str = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    // One span per request, attached to the handler's future (not entered across an await), so
    // every event of the request carries its fields and none of another's.
    let span = tracing::info_span!(
        target: "idbridge::request",
        "request",
        method = %req.method(),
        route = %route_str,
        request_id = %id,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let header = HeaderValue::from_str(&id).ok();
    req.extensions_mut().insert(RequestId(id));
    let mut resp = inner(req).instrument(span.clone()).await;
    if let Some(v) = header {
        resp.headers_mut().insert("x-request-id", v);
    }
    let elapsed = start.elapsed();
    span.record("status", resp.status().as_u16());
    // Milliseconds to the microsecond.
    span.record("latency_ms", elapsed.as_micros() as f64 / 1000.0);
    // The access line: its own target, so it can be turned off while every other line keeps
    // the request's fields.
    tracing::info!(target: "idbridge::access", parent: &span, "request");
    state
        .metrics()
        .observe(route_str, resp.status().as_u16(), elapsed);
    resp
}

/// What every routed request passes through, as one layer (each layer costs a request a few
/// allocations and a move of its future): the request span, access line and metrics around
/// reading the whole body before the handler runs, so a refused body is seen too.
pub(crate) async fn edge(State(state): State<AppState>, req: Request, next: Next) -> Response {
    observed(&state, req, |req| {
        crate::http::body::body_first(&state, req, |req| next.run(req))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;

    use tower::ServiceExt;
    use tracing::Subscriber;
    use tracing::field::{Field, Visit};
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    use super::*;

    /// The fields of each `request` span, and for every event the request id of the span it was
    /// recorded in.
    type Shared<T> = Arc<Mutex<Vec<T>>>;

    #[derive(Clone, Default)]
    struct Capture {
        events: Shared<(String, Option<String>)>,
        closed: Shared<Vec<(String, String)>>,
    }

    #[derive(Default)]
    struct Fields(Vec<(String, String)>);

    impl Visit for Fields {
        fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
            self.0.push((f.name().to_owned(), format!("{v:?}")));
        }
        fn record_str(&mut self, f: &Field, v: &str) {
            self.0.push((f.name().to_owned(), v.to_owned()));
        }
    }

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            id: &tracing::span::Id,
            ctx: Context<'_, S>,
        ) {
            let mut f = Fields::default();
            attrs.record(&mut f);
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(f);
            }
        }

        fn on_record(
            &self,
            id: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            ctx: Context<'_, S>,
        ) {
            if let Some(span) = ctx.span(id)
                && let Some(f) = span.extensions_mut().get_mut::<Fields>()
            {
                values.record(f);
            }
        }

        fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
            let mut msg = Fields::default();
            event.record(&mut msg);
            let rid = ctx.event_scope(event).and_then(|scope| {
                scope.from_root().find_map(|s| {
                    s.extensions().get::<Fields>().and_then(|f| {
                        f.0.iter()
                            .find(|(k, _)| k == "request_id")
                            .map(|(_, v)| v.clone())
                    })
                })
            });
            let text = msg
                .0
                .into_iter()
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
                .join(" ");
            self.events.lock().unwrap().push((text, rid));
        }

        fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
            if let Some(span) = ctx.span(&id)
                && let Some(f) = span.extensions().get::<Fields>()
            {
                self.closed.lock().unwrap().push(f.0.clone());
            }
        }
    }

    /// Captures this thread's spans and events at info level until the guard goes.
    fn capturing() -> (Capture, tracing::subscriber::DefaultGuard) {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(
            capture
                .clone()
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        );
        (capture, tracing::subscriber::set_default(subscriber))
    }

    async fn slow(headers: axum::http::HeaderMap) -> &'static str {
        let who = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        tracing::info!("before {who}");
        // Another request runs here: its events must not land in this one's span.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        tracing::info!("after {who}");
        "ok"
    }

    #[tokio::test]
    async fn each_request_has_one_info_span_that_its_events_and_only_they_carry() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::state::test_state(dir.path()).await;
        let app = Router::new()
            .route("/slow", get(slow))
            .route_layer(axum::middleware::from_fn_with_state(state.clone(), edge))
            .with_state(state);
        let (capture, _guard) = capturing();
        let call = |id: &'static str| {
            let app = app.clone();
            async move {
                let req = axum::http::Request::get("/slow")
                    .header("x-request-id", id)
                    .body(Body::empty())
                    .unwrap();
                app.oneshot(req).await.unwrap()
            }
        };
        let (a, b) = tokio::join!(call("req-a"), call("req-b"));
        assert_eq!(a.headers()["x-request-id"], "req-a");
        assert_eq!(b.headers()["x-request-id"], "req-b");
        let events = capture.events.lock().unwrap().clone();
        assert_eq!(
            events.len(),
            6,
            "two lines and an access line each: {events:?}"
        );
        let mut access: Vec<&str> = Vec::new();
        for (text, rid) in &events {
            if text == "request" {
                access.push(rid.as_deref().unwrap_or_default());
                continue;
            }
            let want = if text.ends_with("req-a") {
                "req-a"
            } else {
                "req-b"
            };
            assert_eq!(
                rid.as_deref(),
                Some(want),
                "{text:?} was recorded in the wrong span"
            );
        }
        access.sort_unstable();
        assert_eq!(
            access,
            ["req-a", "req-b"],
            "one access line per request, in its span"
        );
        let closed = capture.closed.lock().unwrap().clone();
        assert_eq!(closed.len(), 2, "one span per request: {closed:?}");
        for fields in &closed {
            let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            assert_eq!(get("method"), Some("GET"));
            assert_eq!(get("route"), Some("/slow"));
            assert_eq!(get("status"), Some("200"));
            assert!(get("latency_ms").is_some(), "{fields:?}");
            assert!(get("request_id").is_some_and(|r| r.starts_with("req-")));
        }
    }

    #[tokio::test]
    async fn a_body_refused_before_the_handler_still_has_its_span_request_id_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let state = crate::state::test_state(dir.path()).await;
        let app = Router::new()
            .route("/echo", axum::routing::post(|b: String| async move { b }))
            .route_layer(axum::middleware::from_fn_with_state(state.clone(), edge))
            .with_state(state.clone());
        let (capture, _guard) = capturing();
        let too_big = vec![b'x'; state.settings().max_body_bytes + 1];
        let req = axum::http::Request::post("/echo")
            .header("x-request-id", "req-big")
            .body(Body::from(too_big))
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(resp.headers()["x-request-id"], "req-big");
        let closed = capture.closed.lock().unwrap().clone();
        assert_eq!(closed.len(), 1, "{closed:?}");
        let get = |k: &str| {
            closed[0]
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("status").as_deref(), Some("413"));
        assert_eq!(get("route").as_deref(), Some("/echo"));
        assert!(
            state.metrics().render().contains("status=\"413\"} 1"),
            "the refusal is counted"
        );
    }
}
