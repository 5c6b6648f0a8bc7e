//! `POST /webhooks/tokenreview`: Kubernetes webhook token authentication.
//!
//! kube-apiserver posts an `authentication.k8s.io/v1` (or `v1beta1`) TokenReview and expects the
//! same object back with `status` filled in, always with HTTP 200 once the caller is accepted: a
//! refused token is `authenticated: false` with an `error`, not an HTTP error.

use std::borrow::Cow;
use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use idbridge_tokens::Authenticated;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::http::error::ApiError;
use crate::http::extract::RequestCtx;
use crate::state::AppState;

const API_VERSIONS: [&str; 2] = ["authentication.k8s.io/v1", "authentication.k8s.io/v1beta1"];

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
    pub audiences: Vec<idbridge_core::Audience>,
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
    extra.insert(
        "idbridge.io/amr".to_owned(),
        who.amr.iter().map(ToString::to_string).collect(),
    );
    if let Some(ns) = &who.namespace {
        extra.insert("idbridge.io/namespace".to_owned(), vec![ns.clone()]);
    }
    if let Some(actor) = &who.actor {
        extra.insert("idbridge.io/actor".to_owned(), vec![actor.clone()]);
    }
    UserInfo {
        username: format!("{username_prefix}{}", who.name),
        uid: who.uid.to_string(),
        groups: who
            .groups
            .iter()
            .map(|g| format!("{groups_prefix}{g}"))
            .filter(|g| !idbridge_core::is_reserved(g))
            .collect(),
        extra,
    }
}

/// A caller allowed to use the webhooks: it presented a verified client certificate (when those
/// are enabled) or a configured bearer token, compared in constant time. It carries the request's
/// context, so the handler does not build it again.
pub(crate) struct WebhookCaller(pub(crate) RequestCtx);

impl FromRequestParts<AppState> for WebhookCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Ok(ctx) = RequestCtx::from_request_parts(parts, state).await;
        let settings = state.settings();
        if settings.webhook_client_cert
            && ctx.client_cert
            && settings
                .webhook_client_verifier
                .as_ref()
                .is_none_or(|v| crate::http::tls::verify_chain(&**v, ctx.chain.as_deref()))
        {
            return Ok(Self(ctx));
        }
        if let Some(p) = crate::http::extract::bearer(&parts.headers) {
            // Check every configured token so the time taken does not say which one matched.
            let matched = settings
                .webhook_tokens
                .iter()
                .fold(false, |acc, t| t.matches(p) | acc);
            if matched {
                return Ok(Self(ctx));
            }
        }
        let mut ev = ctx.event("webhook.caller", "denied");
        ev.reason = Some("no valid caller credentials");
        state.audit().record(&ev);
        Err(ApiError::Unauthorized(
            "webhook callers must present a client certificate or bearer token this server accepts",
        ))
    }
}

/// A request body that must be JSON, as raw bytes (parsed by the handler, borrowing from it).
pub(crate) struct JsonBytes(pub(crate) Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "Content-Type must be application/json".into(),
            ));
        }
        Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(|r| {
                if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::BadRequest(r.body_text())
                }
            })
    }
}

/// A TokenReview as kube-apiserver sends it, borrowed from the request body: the token is not
/// copied and `metadata` is passed back untouched.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReviewRequest<'a> {
    #[serde(borrow)]
    api_version: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
    /// What is asked.
    #[serde(borrow)]
    pub spec: TokenReviewSpec<'a>,
}

/// What kube-apiserver asks.
#[derive(Debug, Deserialize)]
pub struct TokenReviewSpec<'a> {
    /// The bearer token.
    #[serde(default, borrow)]
    pub token: Cow<'a, str>,
    /// Audiences the token must be valid for (any of them).
    #[serde(default)]
    pub audiences: Vec<idbridge_core::Audience>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'a str,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a RawValue>,
    spec: SpecOut<'a>,
    status: &'a RawValue,
}

/// The spec echoed back, without the token.
#[derive(Serialize)]
struct SpecOut<'a> {
    token: &'static str,
    #[serde(skip_serializing_if = "<[idbridge_core::Audience]>::is_empty")]
    audiences: &'a [idbridge_core::Audience],
}

impl<'a> TokenReviewRequest<'a> {
    /// Parses a request body and checks its kind and version.
    ///
    /// # Errors
    /// A message saying what is wrong with the body.
    pub fn parse(body: &'a [u8]) -> Result<Self, String> {
        let review: Self =
            serde_json::from_slice(body).map_err(|e| format!("invalid TokenReview: {e}"))?;
        if !API_VERSIONS.contains(&&*review.api_version) || review.kind != "TokenReview" {
            return Err(format!(
                "expected kind TokenReview in {}, got {} {}",
                API_VERSIONS.join(" or "),
                review.kind,
                review.api_version
            ));
        }
        Ok(review)
    }

    /// The answer: this review in its own version, with `status` and without the token.
    ///
    /// # Errors
    /// If serialization fails.
    pub fn answer(&self, status: &RawValue) -> Result<Vec<u8>, serde_json::Error> {
        let out = ReviewOut {
            api_version: &self.api_version,
            kind: "TokenReview",
            metadata: self.metadata,
            spec: SpecOut {
                token: "",
                audiences: &self.spec.audiences,
            },
            status,
        };
        let mut buf = Vec::with_capacity(256 + status.get().len());
        serde_json::to_writer(&mut buf, &out)?;
        Ok(buf)
    }
}

fn to_raw<T: Serialize>(v: &T) -> Result<Box<RawValue>, ApiError> {
    serde_json::value::to_raw_value(v)
        .map_err(|e| ApiError::internal("serialize a TokenReview status", &e))
}

pub(crate) async fn token_review(
    State(state): State<AppState>,
    WebhookCaller(ctx): WebhookCaller,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let review = TokenReviewRequest::parse(&body).map_err(ApiError::BadRequest)?;
    let result = if review.spec.token.is_empty() {
        Err(idbridge_tokens::Denial::Malformed.into())
    } else {
        state
            .authenticate(&review.spec.token, &review.spec.audiences)
            .await
    };
    let denied;
    let status: &RawValue = match &result {
        Ok(who) => {
            state.metrics().review(true, who.cached);
            let mut ev = ctx.event("tokenreview", "allowed");
            ev.account = Some(&who.name);
            ev.uid = Some(who.uid.to_string());
            ev.object = Some(if who.audiences.is_empty() {
                "api-server".to_owned()
            } else {
                who.audiences
                    .iter()
                    .map(idbridge_core::Audience::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            });
            ev.reason = Some(if who.cached { "cached" } else { "verified" });
            state.audit().record(&ev);
            if let Some(s) = who.review_status.get() {
                s
            } else {
                let settings = state.settings();
                let raw = to_raw(&TokenReviewStatus {
                    authenticated: true,
                    user: Some(user_info(
                        who,
                        &settings.tokens.username_prefix,
                        &settings.tokens.groups_prefix,
                    )),
                    audiences: who.audiences.clone(),
                    error: None,
                })?;
                who.review_status.get_or_init(|| raw)
            }
        }
        Err(refusal) => {
            state.metrics().review(false, false);
            let reason = refusal.audit(state.audit(), ctx.origin(), "tokenreview");
            denied = to_raw(&TokenReviewStatus {
                authenticated: false,
                error: Some(reason),
                ..TokenReviewStatus::default()
            })?;
            &denied
        }
    };
    let buf = review
        .answer(status)
        .map_err(|e| ApiError::internal("serialize a TokenReview", &e))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], buf).into_response())
}

#[cfg(test)]
mod tests {
    use idbridge_core::AccountUid;

    use super::*;

    #[test]
    fn user_info_applies_prefixes_and_drops_system_groups() {
        let who = Authenticated {
            name: "alice".into(),
            uid: AccountUid::random(),
            groups: vec!["dev".into(), "masters".into()],
            namespace: Some("team-a".into()),
            amr: vec![idbridge_core::Amr::Static],
            actor: None,
            audiences: vec![idbridge_core::Audience::kubernetes()],
            for_api_server: true,
            expires_at: None,
            cached: false,
            review_status: std::sync::OnceLock::new(),
        };
        let u = user_info(&who, "idb:", "idb:");
        assert_eq!(u.username, "idb:alice");
        assert_eq!(u.groups, vec!["idb:dev", "idb:masters"]);
        assert_eq!(u.extra["idbridge.io/namespace"], vec!["team-a"]);
        let u = user_info(&who, "", "system:");
        assert!(u.groups.is_empty());
    }
}
