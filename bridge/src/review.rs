//! `POST /webhooks/tokenreview`: Kubernetes webhook token authentication.
//!
//! kube-apiserver posts an `authentication.k8s.io/v1` (or `v1beta1`) TokenReview and expects the
//! same object back with `status` filled in, always with HTTP 200 once the caller is accepted: a
//! refused token is `authenticated: false` with an `error`, not an HTTP error.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, header};
use serde::{Deserialize, Serialize};

use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::state::{AppState, RequestCtx};

const API_VERSIONS: [&str; 2] = ["authentication.k8s.io/v1", "authentication.k8s.io/v1beta1"];

/// A TokenReview object.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReview {
    /// `authentication.k8s.io/v1` or `v1beta1`.
    pub api_version: String,
    /// `TokenReview`.
    pub kind: String,
    /// Object metadata, passed through.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
    /// The request.
    pub spec: TokenReviewSpec,
    /// The answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TokenReviewStatus>,
}

/// What kube-apiserver asks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReviewSpec {
    /// The bearer token.
    #[serde(default)]
    pub token: String,
    /// Audiences the token must be valid for (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

/// The answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenReviewStatus {
    /// Whether the token names a user.
    pub authenticated: bool,
    /// The user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserInfo>,
    /// The audiences the token is valid for, among those asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Why the token was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A Kubernetes user.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserInfo {
    /// Username.
    pub username: String,
    /// UID.
    pub uid: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Extra attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Shapes an authenticated identity into the Kubernetes user (the same mapping kube-apiserver's
/// JWT authenticator applies to our access tokens through the generated configuration).
#[must_use]
pub fn user_info(who: &Authenticated, username_prefix: &str, groups_prefix: &str) -> UserInfo {
    let mut extra = BTreeMap::new();
    extra.insert("idbridge.io/amr".to_owned(), who.amr.clone());
    if let Some(ns) = &who.namespace {
        extra.insert("idbridge.io/namespace".to_owned(), vec![ns.clone()]);
    }
    UserInfo {
        username: format!("{username_prefix}{}", who.name),
        uid: who.uid.to_string(),
        groups: who
            .groups
            .iter()
            .map(|g| format!("{groups_prefix}{g}"))
            .filter(|g| !g.starts_with("system:"))
            .collect(),
        extra,
    }
}

/// Checks the webhook caller: a verified client certificate (when enabled) or a configured bearer
/// token, compared in constant time.
pub(crate) fn check_webhook_caller(
    state: &AppState,
    ctx: &RequestCtx,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let settings = state.settings();
    if settings.webhook_client_cert && ctx.client_cert {
        return Ok(());
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(p) = presented {
        // Check every configured token so the time taken does not say which one matched.
        let matched = settings
            .webhook_tokens
            .iter()
            .fold(false, |acc, t| t.matches(p) | acc);
        if matched {
            return Ok(());
        }
    }
    let mut ev = ctx.event("webhook.caller", "denied");
    ev.reason = Some("no valid caller credentials");
    state.audit().record(&ev);
    Err(ApiError::Unauthorized(
        "webhook callers must present a client certificate or bearer token",
    ))
}

pub(crate) async fn token_review(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    body: Result<Json<TokenReview>, JsonRejection>,
) -> Result<Json<TokenReview>, ApiError> {
    check_webhook_caller(&state, &ctx, &headers)?;
    let Json(mut review) = body?;
    if !API_VERSIONS.contains(&review.api_version.as_str()) || review.kind != "TokenReview" {
        return Err(ApiError::BadRequest(format!(
            "expected kind TokenReview in {}, got {} {}",
            API_VERSIONS.join(" or "),
            review.kind,
            review.api_version
        )));
    }
    let token = std::mem::take(&mut review.spec.token);
    let result = if token.is_empty() {
        Err(crate::auth::Denial::Malformed.into())
    } else {
        state.authenticate(&token, &review.spec.audiences).await
    };
    let settings = state.settings();
    let status = match result {
        Ok(who) => {
            state.metrics().review(true, who.cached);
            let mut ev = ctx.event("tokenreview", "allowed");
            ev.account = Some(&who.name);
            ev.uid = Some(who.uid.to_string());
            ev.object = Some(who.audiences.join(","));
            ev.reason = Some(if who.cached { "cached" } else { "verified" });
            state.audit().record(&ev);
            TokenReviewStatus {
                authenticated: true,
                user: Some(user_info(
                    &who,
                    &settings.username_prefix,
                    &settings.groups_prefix,
                )),
                audiences: who.audiences.clone(),
                error: None,
            }
        }
        Err(refusal) => {
            state.metrics().review(false, false);
            let reason = refusal.denial.to_string();
            let mut ev = ctx.event("tokenreview", "denied");
            let named = refusal.account.as_ref();
            ev.account = named.map(|(n, _)| n.as_str());
            ev.uid = named.map(|(_, u)| u.to_string());
            ev.reason = Some(&reason);
            state.audit().record(&ev);
            TokenReviewStatus {
                authenticated: false,
                error: Some(reason),
                ..TokenReviewStatus::default()
            }
        }
    };
    review.status = Some(status);
    Ok(Json(review))
}

#[cfg(test)]
mod tests {
    use super::*;
    use idbridge_core::AccountUid;

    #[test]
    fn user_info_applies_prefixes_and_drops_system_groups() {
        let who = Authenticated {
            name: "alice".into(),
            uid: AccountUid::random(),
            groups: vec!["dev".into(), "masters".into()],
            namespace: Some("team-a".into()),
            amr: vec!["static".into()],
            audiences: vec!["kubernetes".into()],
            expires_at: None,
            cached: false,
        };
        let u = user_info(&who, "idb:", "idb:");
        assert_eq!(u.username, "idb:alice");
        assert_eq!(u.groups, vec!["idb:dev", "idb:masters"]);
        assert_eq!(u.extra["idbridge.io/namespace"], vec!["team-a"]);
        let u = user_info(&who, "", "system:");
        assert!(u.groups.is_empty());
    }
}
