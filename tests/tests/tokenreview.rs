//! TokenReview against a real `idbridge serve`: the Kubernetes user mapping, revocation and
//! disabling taking effect at once, caller authentication, and malformed input (hostile tokens
//! are in attacks.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use idbridge_tests::{Idbridge, scratch};
use serde_json::{Value, json};

#[tokio::test]
async fn admin_token_passes_with_the_design_mapping() {
    let dir = scratch();
    let s = Idbridge::start(dir.path()).await.unwrap();
    let uid = s.account_uid("admin", false).await.unwrap();
    let st = s.review(&s.admin_token(), &[]).await.unwrap();
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(st["user"]["username"], "admin");
    assert_eq!(st["user"]["uid"], uid.as_str());
    assert_eq!(st["user"]["groups"], json!(["idbridge-admins"]));
    assert_eq!(st["user"]["extra"]["idbridge.io/amr"], json!(["static"]));
    assert_eq!(st["audiences"], json!(["kubernetes"]));
    // kube-apiserver asks with its own API audiences (kubeadm's default below). A token for this
    // cluster's API server is answered with no audiences, which the TokenReview contract defines
    // as "valid against the audience of the Kubernetes API server".
    const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
    let jwt = s.access_token(&s.admin_token()).await.unwrap();
    for token in [s.admin_token(), jwt] {
        let st = s.review(&token, &[API_AUDIENCE]).await.unwrap();
        assert_eq!(st["authenticated"], true, "{st}");
        assert!(st.get("audiences").is_none(), "{st}");
        assert_eq!(st["user"]["uid"], uid.as_str());
    }
    // Any matching audience among several is enough, and only it is returned.
    let st = s
        .review(&s.admin_token(), &["vault", "kubernetes"])
        .await
        .unwrap();
    assert_eq!(st["audiences"], json!(["kubernetes"]));
    // A caller's correlation id is echoed and recorded.
    let r = s
        .http
        .post(s.url("/webhooks/tokenreview"))
        .bearer_auth(s.webhook_token())
        .header("x-request-id", "corr-42.a")
        .json(
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "spec": {"token": s.admin_token()}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "corr-42.a");
    let st = s.review("idb_st_unknown", &[]).await.unwrap();
    assert_eq!(st["authenticated"], false);
    // The audit log names user and UID and never holds the secret.
    let secret = s.admin_token();
    let audit = s.stop_and_read_audit().await.unwrap();
    assert!(
        audit.contains(&uid) && audit.contains("\"account\":\"admin\""),
        "{audit}"
    );
    assert!(audit.contains("\"event\":\"tokenreview\",\"outcome\":\"denied\""));
    assert!(!audit.contains(&secret));
    let line: serde_json::Value = serde_json::from_str(
        audit
            .lines()
            .find(|l| l.contains("corr-42.a"))
            .expect("the correlated line"),
    )
    .unwrap();
    assert_eq!(line["event"], "tokenreview");
    assert_eq!(line["outcome"], "allowed");
    assert_eq!(line["account"], "admin");
    assert_eq!(line["uid"], uid.as_str());
    assert!(line["source"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(line["ts"].is_string());
}

#[tokio::test]
async fn prefixes_namespace_and_accounts_file_apply_to_static_and_jwt_alike() {
    let dir = scratch();
    std::fs::write(
        dir.path().join("accounts.yaml"),
        "- name: alice\n  groups: [dev, ops]\n  default_namespace: team-a\n",
    )
    .unwrap();
    let cfg = format!(
        "kubernetes:\n  username_prefix: 'idb:'\n  groups_prefix: 'idb:'\naccounts_file: {}\n",
        dir.path().join("accounts.yaml").display()
    );
    let s = Idbridge::start_config(dir.path(), cfg).await.unwrap();
    // The enterprise profile creates no admin account; administer it offline.
    let secret = s.create_token("alice", true).await.unwrap();
    let secret = secret.trim();
    let uid = s.account_uid("alice", true).await.unwrap();
    let by_static = s.review(secret, &[]).await.unwrap();
    assert_eq!(by_static["authenticated"], true, "{by_static}");
    assert_eq!(by_static["user"]["username"], "idb:alice");
    assert_eq!(by_static["user"]["uid"], uid.as_str());
    assert_eq!(by_static["user"]["groups"], json!(["idb:dev", "idb:ops"]));
    assert_eq!(
        by_static["user"]["extra"]["idbridge.io/namespace"],
        json!(["team-a"])
    );
    let jwt = s.access_token(secret).await.unwrap();
    let by_jwt = s.review(&jwt, &[]).await.unwrap();
    assert_eq!(
        by_jwt["user"], by_static["user"],
        "TokenReview must map both the same way"
    );
}

#[tokio::test]
async fn disabling_and_revoking_take_effect_at_the_next_review() {
    let dir = scratch();
    let s = Idbridge::start(dir.path()).await.unwrap();
    s.cli_ok(&["user", "add", "bob", "--group", "dev"])
        .await
        .unwrap();
    let secret = s.create_token("bob", false).await.unwrap();
    let secret = secret.trim();
    let jwt = s.access_token(secret).await.unwrap();
    // Twice, so the second answer comes from the cache.
    for _ in 0..2 {
        assert_eq!(s.review(secret, &[]).await.unwrap()["authenticated"], true);
        assert_eq!(s.review(&jwt, &[]).await.unwrap()["authenticated"], true);
    }
    s.cli_ok(&["user", "disable", "bob"]).await.unwrap();
    for t in [secret, jwt.as_str()] {
        let st = s.review(t, &[]).await.unwrap();
        assert_eq!(st["authenticated"], false, "{st}");
        assert_eq!(st["error"], "account is disabled");
    }
    s.cli_ok(&["user", "enable", "bob"]).await.unwrap();
    assert_eq!(s.review(secret, &[]).await.unwrap()["authenticated"], true);
    let list: Vec<Value> = serde_json::from_str(
        &s.cli_ok(&["token", "list", "--user", "bob", "--json"])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(list.len(), 1);
    let id = list[0]["id"].as_str().unwrap();
    s.cli_ok(&["token", "revoke", id]).await.unwrap();
    let st = s.review(secret, &[]).await.unwrap();
    assert_eq!(st["authenticated"], false);
    assert_eq!(st["error"], "token is invalid or revoked");
    // A revoked static token can no longer be exchanged either.
    assert_eq!(s.exchange(secret, None).await.unwrap().status(), 400);
    let metrics = s.metrics().await.unwrap();
    assert!(
        metrics.contains("idbridge_review_cache_total{result=\"hit\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("idbridge_review_cache_total{result=\"hit\"} 0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn webhook_callers_must_authenticate() {
    let dir = scratch();
    let s = Idbridge::start(dir.path()).await.unwrap();
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "spec": {"token": s.admin_token()}});
    let url = s.url("/webhooks/tokenreview?timeout=30s");
    let none = s.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert!(none.headers().contains_key("www-authenticate"));
    let wrong = s
        .http
        .post(&url)
        .bearer_auth("idb_wh_wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // A user's own token is not a caller credential.
    let user = s
        .http
        .post(&url)
        .bearer_auth(s.admin_token())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(user.status(), 401);
    let audit = s.stop_and_read_audit().await.unwrap();
    assert!(audit.contains("\"event\":\"webhook.caller\",\"outcome\":\"denied\""));
}

#[tokio::test]
async fn v1beta1_reviews_are_answered_in_kind() {
    let dir = scratch();
    let s = Idbridge::start(dir.path()).await.unwrap();
    let body = json!({"apiVersion": "authentication.k8s.io/v1beta1", "kind": "TokenReview",
                      "metadata": {"creationTimestamp": null},
                      "spec": {"token": s.admin_token()}});
    let v: Value = s
        .http
        .post(s.url("/webhooks/tokenreview"))
        .bearer_auth(s.webhook_token())
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["apiVersion"], "authentication.k8s.io/v1beta1");
    assert_eq!(v["status"]["authenticated"], true);
    assert_eq!(v["spec"]["token"], "", "the token must not be echoed back");
}

#[tokio::test]
async fn malformed_requests_are_refused_without_harm() {
    let dir = scratch();
    let s = Idbridge::start(dir.path()).await.unwrap();
    let url = s.url("/webhooks/tokenreview");
    let post = |body: Vec<u8>, ctype: &'static str| {
        s.http
            .post(&url)
            .bearer_auth(s.webhook_token())
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    assert_eq!(
        post(b"{not json".to_vec(), "application/json")
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post(
            b"{\"apiVersion\":\"authentication.k8s.io/v1\"}".to_vec(),
            "text/plain"
        )
        .await
        .unwrap()
        .status(),
        415
    );
    let big = format!(
        "{{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\",\"spec\":{{\"token\":\"{}\"}}}}",
        "a".repeat(70 * 1024)
    );
    assert_eq!(
        post(big.into_bytes(), "application/json")
            .await
            .unwrap()
            .status(),
        413
    );
    let wrong_kind = json!({"apiVersion": "v1", "kind": "Pod", "spec": {}}).to_string();
    assert_eq!(
        post(wrong_kind.into_bytes(), "application/json")
            .await
            .unwrap()
            .status(),
        400
    );
    for token in ["", "garbage", "a.b.c", "..", "idb_st_", "\u{0}"] {
        let st = s.review(token, &[]).await.unwrap();
        assert_eq!(st["authenticated"], false, "{token:?}: {st}");
        assert!(st["error"].is_string());
    }
    assert_eq!(
        s.http.get(s.url("/healthz")).send().await.unwrap().status(),
        200
    );
}
