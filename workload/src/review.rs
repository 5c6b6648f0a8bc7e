//! Attestation: the pod's projected ServiceAccount token, checked by a TokenReview against the
//! cluster's API server. The API server checks the signature, the audience, the expiry and
//! that the pod the token is bound to still exists (a deleted pod's token fails within about
//! ten seconds: the API server caches a successful review that long); what it answers names
//! the workload.

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// A workload the API server vouched for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Workload {
    /// Its namespace.
    pub namespace: String,
    /// Its serviceaccount.
    pub serviceaccount: String,
    /// The serviceaccount's UID.
    pub serviceaccount_uid: String,
    /// The pod the token is bound to.
    pub pod_name: String,
    /// Its UID.
    pub pod_uid: String,
    /// The token's credential id (`JTI=…`), when the API server gives one.
    pub credential_id: Option<String>,
    /// When the token expires (Unix seconds).
    pub expires_at: i64,
}

impl Workload {
    /// `namespace/serviceaccount`.
    #[must_use]
    pub fn service_account(&self) -> String {
        format!("{}/{}", self.namespace, self.serviceaccount)
    }
}

/// Why a token does not attest a workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The API server refused the token (its reason).
    #[error("the ServiceAccount token is not valid: {0}")]
    Refused(String),
    /// Valid, but not a ServiceAccount's, or not bound to a pod.
    #[error("{0}")]
    NotAPod(String),
    /// The API server could not be asked.
    #[error("cannot review the token at the Kubernetes API: {0}")]
    Unavailable(String),
}

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// The `exp` claim of a JWT, read without checking it (the API server just did).
fn expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()
}

/// Asks the API server about `token` for `audience`.
///
/// # Errors
/// [`ReviewError`].
pub async fn review(
    client: &kube::Client,
    token: &str,
    audience: &str,
) -> Result<Workload, ReviewError> {
    let expires_at = expiry(token)
        .ok_or_else(|| ReviewError::Refused("it is not a JWT with an `exp` claim".into()))?;
    let asked = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..TokenReview::default()
    };
    let answer = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &asked)
        .await
        .map_err(|e| ReviewError::Unavailable(unavailable(&e)))?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(ReviewError::Refused(refused(
            status.error.as_deref().unwrap_or("not authenticated"),
            audience,
        )));
    }
    if !status
        .audiences
        .unwrap_or_default()
        .iter()
        .any(|a| a == audience)
    {
        return Err(ReviewError::Refused(format!(
            "it is not valid for the audience {audience:?}"
        )));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, serviceaccount)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err(ReviewError::NotAPod(format!(
            "the token is {username:?}'s, not a ServiceAccount's"
        )));
    };
    let extra = user.extra.unwrap_or_default();
    let one = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    let (Some(pod_name), Some(pod_uid)) = (one(POD_NAME), one(POD_UID)) else {
        return Err(ReviewError::NotAPod(format!(
            "the token of {namespace}/{serviceaccount} is not bound to a pod: present a pod's projected token (a `serviceAccountToken` volume with audience {audience:?}), or for a test `kubectl create token {serviceaccount} -n {namespace} --audience {audience} --bound-object-kind Pod --bound-object-name POD --bound-object-uid UID`"
        )));
    };
    Ok(Workload {
        namespace: namespace.to_owned(),
        serviceaccount: serviceaccount.to_owned(),
        serviceaccount_uid: user.uid.unwrap_or_default(),
        pod_name,
        pod_uid,
        credential_id: one(CREDENTIAL_ID),
        expires_at,
    })
}

/// What an API server's refusal says, with a hint when it is about the audience.
fn refused(error: &str, audience: &str) -> String {
    if error.contains("audience") {
        format!(
            "{error} (the pod's projected token must be made for the audience {audience:?}: \
             `audience: {audience}` in its `serviceAccountToken` volume, or `workloads.audience` \
             changed to match)"
        )
    } else {
        error.to_owned()
    }
}

/// Why the API server could not be asked, in words: the status and message of its answer (a
/// 403 with what the identity lacks), or the transport error.
fn unavailable(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if status.code == 401 => format!(
            "{} {}: {} (the API server does not accept idbridge's own credential in \
             `kubernetes.api`: an expired or replaced token? A token written inline in the \
             kubeconfig is read at start and on reload only; one named by `tokenFile` is read \
             again every minute)",
            status.code, status.reason, status.message
        ),
        kube::Error::Api(status) if status.code == 403 => format!(
            "{} {}: {} (give idbridge's identity in `kubernetes.api` the ClusterRole \
             system:auth-delegator, as examples/workload-rbac.yaml does)",
            status.code, status.reason, status.message
        ),
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => {
            let said = other.to_string();
            if said.contains("failed to parse header value") {
                format!(
                    "{said} (idbridge's token in `kubernetes.api` is not a valid header value: \
                     does its tokenFile end with a newline? Write it without one)"
                )
            } else {
                said
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_is_read_from_the_payload() {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let t = format!("{}.{}.sig", b("{}"), b(r#"{"exp":1700000000,"aud":["x"]}"#));
        assert_eq!(expiry(&t), Some(1_700_000_000));
        assert_eq!(expiry("not-a-jwt"), None);
        assert_eq!(expiry(&format!("a.{}.c", b(r#"{"aud":"x"}"#))), None);
    }

    #[test]
    fn refusals_say_what_to_change() {
        let audience = refused(
            r#"[invalid bearer token, token audiences ["other"] is invalid for the target audiences ["idbridge"]]"#,
            "idbridge",
        );
        assert!(audience.starts_with("[invalid bearer token"), "{audience}");
        assert!(audience.contains("`audience: idbridge`"), "{audience}");
        assert_eq!(
            refused("token has expired", "idbridge"),
            "token has expired"
        );

        let forbidden = kube::Error::Api(
            kube::core::Status::failure(
                "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:idbridge:idbridge\" cannot create resource \"tokenreviews\"",
                "Forbidden",
            )
            .with_code(403)
            .boxed(),
        );
        let said = unavailable(&forbidden);
        assert!(said.starts_with("403 Forbidden: tokenreviews"), "{said}");
        assert!(said.contains("system:auth-delegator"), "{said}");

        let unauthorized = kube::Error::Api(
            kube::core::Status::failure("Unauthorized", "Unauthorized")
                .with_code(401)
                .boxed(),
        );
        let said = unavailable(&unauthorized);
        assert!(said.starts_with("401 Unauthorized: Unauthorized"), "{said}");
        assert!(said.contains("tokenFile"), "{said}");
        assert!(!said.contains("system:auth-delegator"), "{said}");
    }
}
