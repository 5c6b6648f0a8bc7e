//! The Kubernetes webhooks kube-apiserver calls: TokenReview (webhook token authentication).
//! SubjectAccessReview and AdmissionReview come here too.

use axum::Router;
use axum::routing::post;

use crate::state::AppState;

pub(crate) mod tokenreview;

/// This area's routes, as axum's `MatchedPath` names them.
pub(crate) const ROUTES: &[&str] = &["/webhooks/tokenreview"];

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/webhooks/tokenreview", post(tokenreview::token_review))
}
