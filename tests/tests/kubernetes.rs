//! The Kubernetes contracts against a real kube-apiserver (v1.33), wired with the files idbridge
//! generates, unchanged: the TokenReview webhook (`webhook.kubeconfig`) and the JWT
//! authenticator (`authentication-config.yaml`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use idbridge_tests::kube::{ApiServer, Authn};
use idbridge_tests::{Idbridge, scratch};
use serde_json::{Value, json};

/// The user without what kube-apiserver adds itself: `system:authenticated` for every user, and
/// for a JWT its `jti` as `authentication.kubernetes.io/credential-id`.
fn user(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(groups) = v["groups"].as_array_mut() {
        groups.retain(|g| g != "system:authenticated");
    }
    if let Some(extra) = v["extra"].as_object_mut() {
        extra.remove("authentication.kubernetes.io/credential-id");
    }
    v
}

#[tokio::test]
async fn the_webhook_and_the_jwt_authenticator_see_the_same_user() {
    let dir = scratch();
    let s = Idbridge::start(dir.path()).await.unwrap();
    let (webhook, jwt) = tokio::join!(
        ApiServer::start(
            dir.path(),
            Authn {
                webhook_kubeconfig: Some(s.data_dir.join("webhook.kubeconfig")),
                ..Authn::default()
            },
        ),
        ApiServer::start(
            dir.path(),
            Authn {
                authentication_config: Some(s.data_dir.join("authentication-config.yaml")),
                ..Authn::default()
            },
        ),
    );
    let (webhook, jwt) = (webhook.unwrap(), jwt.unwrap());
    let uid = s.account_uid("admin", false).await.unwrap();
    let token = s.access_token(&s.admin_token()).await.unwrap();

    let by_webhook = webhook.whoami(&token).await.unwrap();
    let by_jwt = jwt.wait_authenticated(&token).await.unwrap();
    assert_eq!(by_webhook["username"], "admin", "{by_webhook}");
    assert_eq!(by_webhook["uid"], uid.as_str());
    assert_eq!(
        by_webhook["groups"],
        json!(["idbridge-admins", "system:authenticated"])
    );
    assert_eq!(
        by_webhook["extra"]["idbridge.io/amr"],
        json!(["static"]),
        "{by_webhook}"
    );
    assert_eq!(
        user(&by_webhook),
        user(&by_jwt),
        "the two authenticators disagree"
    );
    assert!(
        by_jwt["extra"]["authentication.kubernetes.io/credential-id"][0]
            .as_str()
            .is_some_and(|c| c.starts_with("JTI=")),
        "{by_jwt}"
    );
    // A static token is not a JWT: only the webhook knows it.
    let by_static = webhook.whoami(&s.admin_token()).await.unwrap();
    assert_eq!(by_static["uid"], uid.as_str());
    assert!(jwt.whoami(&s.admin_token()).await.is_err());

    // A token altered anywhere is Unauthorized by both.
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for api in [&webhook, &jwt] {
        let e = api.whoami(&tampered).await.unwrap_err();
        assert!(format!("{e:#}").contains("Unauthorized"), "{e:#}");
    }
}
