//! The Kubernetes webhooks kube-apiserver calls: TokenReview (webhook token authentication).
//! AdmissionReview (`/webhooks/mutate-pod`) and workload credentials, which pods reach with their
//! ServiceAccount token.

use axum::Router;
use axum::routing::post;

use crate::state::AppState;

pub(crate) mod tokenreview;
mod workload;

/// This area's routes, as axum's `MatchedPath` names them.
pub(crate) const ROUTES: &[&str] = &[
    "/webhooks/tokenreview",
    "/webhooks/mutate-pod",
    "/v1/workload/credentials",
];

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks/tokenreview", post(tokenreview::token_review))
        .route("/webhooks/mutate-pod", post(workload::mutate_pod))
        .route("/v1/workload/credentials", post(workload::credentials))
}
