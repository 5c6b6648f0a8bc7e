//! The request body, read whole before any handler runs, within a size and a time limit.

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;
use crate::state::AppState;

/// How much of an oversized body is read (and dropped) before answering 413: enough that
/// ordinary clients see the answer rather than a reset stream.
const DRAIN_CAP: usize = 1024 * 1024;

/// The whole body must arrive within this: a body trickled in keeps no connection forever.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the whole request body before any handler runs, so that every answer, a refusal
/// before the body was looked at included, goes out after the body was received: a response
/// sent while the client is still sending makes HTTP/2 reset the stream, and clients then
/// report a framing error instead of the answer. A body over `limits.max_body_bytes` is read
/// up to a cap, dropped, and answered 413.
pub(crate) async fn body_first<F, Fut>(state: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    use http_body_util::BodyExt;
    let limit = state.settings().max_body_bytes;
    let (parts, mut body) = req.into_parts();
    if axum::body::HttpBody::is_end_stream(&body) {
        return next(Request::from_parts(parts, body)).await;
    }
    // The chunks as they came: a body in one chunk (the usual case) is passed on uncopied.
    let mut chunks: Vec<axum::body::Bytes> = Vec::new();
    let mut total = 0usize;
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(ApiError::BadRequest(
                    "the request body could not be read".into(),
                ));
            };
            if let Ok(data) = frame.into_data() {
                total += data.len();
                if total <= limit {
                    chunks.push(data);
                } else if total > DRAIN_CAP {
                    break;
                } else {
                    chunks.clear();
                }
            }
        }
        Ok(())
    };
    // A small body is usually in hand already: only a body still arriving gets a timer.
    let mut read = std::pin::pin!(read);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
    let done = match first {
        std::task::Poll::Ready(r) => Ok(r),
        std::task::Poll::Pending => tokio::time::timeout(BODY_TIMEOUT, read.as_mut()).await,
    };
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return e.into_response(),
        Err(_) => return ApiError::RequestTimeout.into_response(),
    }
    if total > limit {
        return ApiError::PayloadTooLarge.into_response();
    }
    let body = match chunks.len() {
        0 => axum::body::Body::empty(),
        1 => axum::body::Body::from(chunks.remove(0)),
        _ => axum::body::Body::from(chunks.concat()),
    };
    next(Request::from_parts(parts, body)).await
}
