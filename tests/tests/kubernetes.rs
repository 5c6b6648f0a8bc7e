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
        ApiServer::start(dir.path(), Authn::webhook(&s.data_dir),),
        ApiServer::start(dir.path(), Authn::jwt(&s.data_dir),),
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

    // Altered, expired and wrong-audience tokens are Unauthorized by both; the last two are
    // signed with the server's own key.
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let expired = resigned(&s, &token, |c| {
        c.exp = c.iat - 60;
        c.nbf = c.iat - 3600;
        c.iat -= 3600;
    })
    .await;
    let elsewhere = resigned(&s, &token, |c| c.aud = vec!["vault".parse().unwrap()]).await;
    for (what, bad) in [
        ("tampered", &tampered),
        ("expired", &expired),
        ("wrong audience", &elsewhere),
    ] {
        for (wiring, api) in [("webhook", &webhook), ("JWT", &jwt)] {
            let e = api.whoami(bad).await.unwrap_err();
            assert!(
                format!("{e:#}").contains("Unauthorized"),
                "{what} token through the {wiring} authenticator: {e:#}"
            );
        }
    }
}

/// `token`'s claims changed by `f`, signed again with the server's own signing key.
async fn resigned(
    s: &Idbridge,
    token: &str,
    f: impl Fn(&mut idbridge_tokens::AccessClaims),
) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = token.split('.').nth(1).unwrap();
    let mut claims: idbridge_tokens::AccessClaims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    f(&mut claims);
    s.own_keys().await.unwrap().sign(&claims).unwrap()
}

/// Accounts alice (dev) and bob (ops), from an accounts file.
async fn with_accounts(dir: &std::path::Path) -> Idbridge {
    Idbridge::start_with_accounts(
        dir,
        "- name: alice\n  groups: [dev]\n- name: bob\n  groups: [ops]\n",
        "",
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn rbac_forbids_until_a_binding_names_the_users_group() {
    let dir = scratch();
    let s = with_accounts(dir.path()).await;
    let api = ApiServer::start(dir.path(), Authn::webhook(&s.data_dir))
        .await
        .unwrap();
    let alice = s
        .access_token(&s.create_token("alice", false).await.unwrap())
        .await
        .unwrap();
    let alice_cfg = api.token_kubeconfig(&alice).unwrap();
    let (code, _, err) = api
        .kubectl(&alice_cfg, &["get", "namespaces"], &[])
        .await
        .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("Forbidden") && err.contains("User \"alice\""),
        "{err}"
    );
    // The binding, and RBAC's informers have it (bounded); the webhook's answer was never the
    // question.
    api.let_group_list_namespaces("dev").await.unwrap();
    let (code, out, err) = api
        .kubectl(&alice_cfg, &["get", "namespaces", "-o", "name"], &[])
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("namespace/"), "{out}");
    // bob is in another group: still Forbidden.
    let bob = s
        .access_token(&s.create_token("bob", false).await.unwrap())
        .await
        .unwrap();
    let (code, _, err) = api
        .kubectl(
            &api.token_kubeconfig(&bob).unwrap(),
            &["get", "namespaces"],
            &[],
        )
        .await
        .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("Forbidden"), "{err}");
}

/// Webhook only: a disabled account's token is refused once kube-apiserver's cache of the
/// webhook's answer expires. JWT and webhook: kube-apiserver verifies the token itself and keeps
/// accepting it until it expires; the webhook never sees it.
#[tokio::test]
async fn disabling_takes_effect_through_the_webhook_only_wiring_and_not_through_the_jwt_one() {
    let dir = scratch();
    let s = with_accounts(dir.path()).await;
    let ttl = "--authentication-token-webhook-cache-ttl=1s";
    let webhook = Authn::webhook(&s.data_dir).arg(ttl);
    let both = Authn::both(&s.data_dir).arg(ttl);
    let (only, both) = tokio::join!(
        ApiServer::start(dir.path(), webhook),
        ApiServer::start(dir.path(), both)
    );
    let (only, both) = (only.unwrap(), both.unwrap());
    let alice = s
        .access_token(&s.create_token("alice", false).await.unwrap())
        .await
        .unwrap();
    assert_eq!(only.whoami(&alice).await.unwrap()["username"], "alice");
    assert_eq!(
        both.wait_authenticated(&alice).await.unwrap()["username"],
        "alice"
    );

    s.cli_ok(&["user", "disable", "alice"]).await.unwrap();
    // kube-apiserver 1.33 caches a webhook's success for at least 10 s, whatever the TTL.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match only.whoami(&alice).await {
            Err(e) if format!("{e:#}").contains("Unauthorized") => break,
            Err(e) => panic!("{e:#}"),
            Ok(_) if std::time::Instant::now() > deadline => {
                panic!("a disabled account's token was still accepted after a minute")
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
    let still = both.whoami(&alice).await.unwrap();
    assert_eq!(
        still["username"], "alice",
        "the JWT authenticator does not ask idbridge: the token works until it expires"
    );
}

/// The header's `kid` of a JWT.
fn kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let v: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn after_a_key_rotation_the_jwt_authenticator_accepts_the_new_key_without_a_restart() {
    let dir = scratch();
    let s = Idbridge::start_config(
        dir.path(),
        "bootstrap_admin: true\nkeys:\n  publish_lead: 2s\n".into(),
    )
    .await
    .unwrap();
    let api = ApiServer::start(dir.path(), Authn::jwt(&s.data_dir))
        .await
        .unwrap();
    let before = s.access_token(&s.admin_token()).await.unwrap();
    api.wait_authenticated(&before).await.unwrap();
    // The next key has been published since the start; once the lead has passed, a rotation
    // asked for signs with it at once.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let out = s.cli(&["keys", "rotate"]).await.unwrap();
    assert_eq!(out.0, 0, "{out:?}");
    assert!(out.2.contains("signs now"), "{}", out.2);
    let after = s.access_token(&s.admin_token()).await.unwrap();
    assert_ne!(
        kid(&before),
        kid(&after),
        "the rotation did not take effect at once"
    );
    let who = api.wait_authenticated(&after).await.unwrap();
    assert_eq!(who["username"], "admin");
    // Tokens signed by the old key still work until they expire.
    assert_eq!(api.whoami(&before).await.unwrap()["username"], "admin");
}
