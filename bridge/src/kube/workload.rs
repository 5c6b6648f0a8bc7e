//! Workload credentials: `POST /v1/workload/credentials` (a pod presents its projected
//! ServiceAccount token and gets its credential cache or keytab) and `POST
//! /webhooks/mutate-pod` (the AdmissionReview that puts the agent into pods). The work is the
//! workload crate's; this is HTTP and the audit trail.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use idbridge_workload::Refusal;
use idbridge_workload::admission::Decision;

use super::tokenreview::{JsonBytes, WebhookCaller};
use crate::http::error::ApiError;
use crate::http::extract::RequestCtx;
use crate::state::AppState;

fn workloads(state: &AppState) -> Result<std::sync::Arc<idbridge_workload::Issuer>, ApiError> {
    state.settings().workloads.clone().ok_or_else(|| {
        ApiError::NotFound(
            "workload credentials are not configured on this server: add a `workloads` section to its config".into(),
        )
    })
}

/// The audit object for a workload: `pod NS/NAME (UID)`.
fn pod_of(w: &idbridge_workload::review::Workload) -> String {
    format!("pod {}/{} ({})", w.namespace, w.pod_name, w.pod_uid)
}

/// Refused tokens allowed from one address per minute: each may have cost a TokenReview at the
/// API server, and a pod's agent that is refused stops asking, so a stream of them is somebody
/// guessing or a client gone wrong.
const REFUSED_TOKENS_PER_MINUTE: u32 = 30;

pub(crate) async fn credentials(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let issuer = workloads(&state)?;
    let Some(token) = crate::http::extract::bearer(&headers) else {
        let mut ev = ctx.event("workload.issue", "denied");
        ev.reason = Some("no bearer token");
        state.audit().record(&ev);
        return Err(ApiError::Refused {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_token",
            description: "present the pod's projected ServiceAccount token (audience idbridge) as a bearer token".into(),
        });
    };
    let source = ctx.source.map(|s| s.ip());
    let throttle = state.throttle();
    if let Err(wait) = throttle.count_per_source(
        "workload",
        source,
        REFUSED_TOKENS_PER_MINUTE,
        std::time::Duration::from_secs(60),
    ) {
        let mut ev = ctx.event("workload.issue", "denied");
        ev.reason = Some("throttled: too many refused tokens from this address");
        state.audit().record(&ev);
        return Err(ApiError::Throttled(wait));
    }
    let result = issuer.issue(token).await;
    // Only a token the API server or idbridge found invalid counts against the address.
    if !matches!(result, Err(Refusal::Unauthenticated(_))) {
        throttle.forgive_per_source("workload", source);
    }
    match result {
        Ok(issued) => {
            let w = &issued.workload;
            let account = format!("system:serviceaccount:{}:{}", w.namespace, w.serviceaccount);
            let mut ev = ctx.event("workload.issue", "ok");
            ev.account = Some(&account);
            ev.uid = Some(w.serviceaccount_uid.clone());
            let until = time::OffsetDateTime::from_unix_timestamp(issued.expires_at)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| issued.expires_at.to_string());
            ev.object = Some(format!(
                "{} principal {} {} until {until}",
                pod_of(w),
                issued.principal,
                issued.form.as_str(),
            ));
            state.audit().record(&ev);
            Ok(crate::http::reply::no_store(
                serde_json::to_value(&issued).map_err(|_| ApiError::Internal)?,
            ))
        }
        Err(refusal) => {
            let account = refusal
                .workload()
                .map(|w| format!("system:serviceaccount:{}:{}", w.namespace, w.serviceaccount));
            let mut ev = ctx.event("workload.issue", "denied");
            ev.account = account.as_deref();
            ev.object = refusal.workload().map(pod_of);
            let message = refusal.to_string();
            ev.reason = Some(&message);
            state.audit().record(&ev);
            let (status, error) = match &refusal {
                Refusal::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
                Refusal::Forbidden { reason, .. } => (StatusCode::FORBIDDEN, *reason),
                Refusal::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            if status == StatusCode::SERVICE_UNAVAILABLE {
                tracing::warn!(error = %message, "a workload credential could not be issued");
            }
            // A caller whose token was not yet reviewed learns nothing of the server's setup.
            let description = if matches!(refusal, Refusal::Unavailable { workload: None, .. }) {
                "idbridge cannot review tokens at the Kubernetes API just now; its log says why"
                    .to_owned()
            } else {
                message
            };
            Err(ApiError::Refused {
                status,
                error,
                description,
            })
        }
    }
}

pub(crate) async fn mutate_pod(
    State(state): State<AppState>,
    WebhookCaller(ctx): WebhookCaller,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let issuer = workloads(&state)?;
    let review: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid AdmissionReview: {e}")))?;
    let (answer, decision) = issuer.admit(&review).map_err(ApiError::BadRequest)?;
    let request = &review["request"];
    let object = format!(
        "pod {}/{}",
        request["namespace"].as_str().unwrap_or(""),
        request["object"]["metadata"]["name"]
            .as_str()
            .or_else(|| request["object"]["metadata"]["generateName"].as_str())
            .unwrap_or("")
    );
    match &decision {
        Decision::Unchanged => {}
        Decision::Patch(_) => {
            let mut ev = ctx.event("workload.admit", "ok");
            ev.object = Some(object);
            state.audit().record(&ev);
        }
        Decision::Deny(why) => {
            let mut ev = ctx.event("workload.admit", "denied");
            ev.object = Some(object);
            ev.reason = Some(why);
            state.audit().record(&ev);
        }
    }
    Ok(axum::Json(answer).into_response())
}
