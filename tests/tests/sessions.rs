//! Sessions against the real binary (refresh reuse and concurrent refreshes are in attacks.rs):
//! token exchange with narrowing and delegation, revocation (by user, session, jti, RFC 7009),
//! introspection, key rotation and encryption at rest, a crash during a refresh storm, and the
//! trusted authenticating proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use std::time::Duration;

use idbridge_tests::{Idbridge, client_trusting, scratch};
use serde_json::{Value, json};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const STATIC: &str = "urn:idbridge:params:oauth:token-type:static";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no {k} in {v}"))
        .to_owned()
}

async fn authenticated(i: &Idbridge, token: &str, aud: &[&str]) -> bool {
    i.review(token, aud).await.unwrap()["authenticated"] == true
}

/// A server with accounts alice (dev, ops), bob (qa) and helm-bot, from an accounts file.
async fn with_accounts(dir: &std::path::Path, extra: &str) -> Idbridge {
    Idbridge::start_with_accounts(
        dir,
        "- name: alice\n  groups: [dev, ops]\n- name: bob\n  groups: [qa]\n- name: helm-bot\n  groups: [robots]\n",
        extra,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn exchange_narrows_and_refuses_a_wider_audience() {
    let dir = scratch();
    let i = with_accounts(
        dir.path(),
        "clients:\n  - id: idbridge-cli\n    audiences: [kubernetes, vault]\n\
         token_exchange:\n  audience_changes:\n    - {from: kubernetes, to: [vault]}\n",
    )
    .await;
    let alice = i.create_token("alice", false).await.unwrap();
    let subject = s(&i.login_static(&alice).await.unwrap(), "access_token");
    let ex = |aud: &'static str, scope: &'static str| {
        let subject = subject.clone();
        let i = &i;
        async move {
            i.oauth(
                "/oauth2/token",
                &[
                    ("grant_type", EXCHANGE),
                    ("subject_token", &subject),
                    ("subject_token_type", ACCESS),
                    ("audience", aud),
                    ("scope", scope),
                ],
            )
            .await
            .unwrap()
        }
    };
    let (st, narrow) = ex("vault", "group:dev").await;
    assert_eq!(st, 200, "{narrow}");
    assert!(narrow.get("refresh_token").is_none());
    let token = s(&narrow, "access_token");
    let review = i.review(&token, &["vault"]).await.unwrap();
    assert_eq!(review["user"]["groups"], json!(["dev"]));
    assert_eq!(review["audiences"], json!(["vault"]));
    assert!(!authenticated(&i, &token, &[]).await, "not for kubernetes");
    // Wider than the client may have, or more than the subject carries: refused.
    let (st, e) = ex("prod-db", "").await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_target")));
    let (st, e) = ex("vault", "group:admins").await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_scope")));
    let back = |aud: &'static str, scope: &'static str| {
        let token = token.clone();
        let i = &i;
        async move {
            i.oauth(
                "/oauth2/token",
                &[
                    ("grant_type", EXCHANGE),
                    ("subject_token", &token),
                    ("subject_token_type", ACCESS),
                    ("audience", aud),
                    ("scope", scope),
                ],
            )
            .await
            .unwrap()
        }
    };
    // The rule goes one way: a token for vault never becomes one for kubernetes, and the
    // audience is judged before the scope.
    let (st, e) = back("kubernetes", "group:ops").await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_target")),
        "{e}"
    );
    // An exchanged token cannot be exchanged back up to a group it lost.
    let (st, e) = back("vault", "group:ops").await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_scope")));
}

#[tokio::test]
async fn delegation_follows_the_may_act_policy() {
    let dir = scratch();
    let i = with_accounts(
        dir.path(),
        "delegation:\n  - actors: {users: [helm-bot]}\n    subjects: {groups: [dev]}\n    audiences: [kubernetes]\n",
    )
    .await;
    let alice = s(
        &i.login_static(&i.create_token("alice", false).await.unwrap())
            .await
            .unwrap(),
        "access_token",
    );
    let bob = s(
        &i.login_static(&i.create_token("bob", false).await.unwrap())
            .await
            .unwrap(),
        "access_token",
    );
    let helm = i.create_token("helm-bot", false).await.unwrap();
    let act = |subject: String, actor: String| {
        let i = &i;
        async move {
            i.oauth(
                "/oauth2/token",
                &[
                    ("grant_type", EXCHANGE),
                    ("subject_token", &subject),
                    ("subject_token_type", ACCESS),
                    ("actor_token", &actor),
                    ("actor_token_type", STATIC),
                ],
            )
            .await
            .unwrap()
        }
    };
    let (st, ok) = act(alice.clone(), helm.clone()).await;
    assert_eq!(st, 200, "{ok}");
    let delegated = s(&ok, "access_token");
    let review = i.review(&delegated, &[]).await.unwrap();
    assert_eq!(review["user"]["username"], "alice");
    assert_eq!(
        review["user"]["extra"]["idbridge.io/actor"],
        json!(["helm-bot"])
    );
    let claims: Value =
        serde_json::from_slice(&base64_url(delegated.split('.').nth(1).unwrap())).unwrap();
    assert_eq!(claims["act"]["name"], "helm-bot");
    // bob is not in dev; alice may not act for anyone.
    let (st, e) = act(bob, helm).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_grant")));
    let alice_static = i.create_token("alice", false).await.unwrap();
    let (st, _) = act(alice.clone(), alice_static).await;
    assert_eq!(st, 400);
    let (st, _) = act(alice, "idb_st_forged".into()).await;
    assert_eq!(st, 400);
}

fn base64_url(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

#[tokio::test]
async fn revocation_by_user_session_and_jti_is_seen_by_the_next_review() {
    let dir = scratch();
    let i = with_accounts(dir.path(), "").await;
    let st = i.create_token("alice", false).await.unwrap();
    let one = i.login_static(&st).await.unwrap();
    let two = i.login_static(&st).await.unwrap();
    let bob = i
        .login_static(&i.create_token("bob", false).await.unwrap())
        .await
        .unwrap();
    for p in [&one, &two, &bob] {
        // Reviewed twice: the second answer comes from the cache.
        assert!(authenticated(&i, &s(p, "access_token"), &[]).await);
        assert!(authenticated(&i, &s(p, "access_token"), &[]).await);
    }
    let listed: Vec<Value> = serde_json::from_str(
        &i.cli_ok(&["session", "list", "--user", "alice", "--json"])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|l| l["state"] == "active" && l["amr"] == json!(["static"]))
    );

    // One access token by jti: only it stops.
    let claims: Value = serde_json::from_slice(&base64_url(
        s(&one, "access_token").split('.').nth(1).unwrap(),
    ))
    .unwrap();
    i.cli_ok(&["revoke", "--jti", claims["jti"].as_str().unwrap()])
        .await
        .unwrap();
    assert!(!authenticated(&i, &s(&one, "access_token"), &[]).await);
    assert!(authenticated(&i, &s(&two, "access_token"), &[]).await);

    // One session: its tokens stop, and it cannot be refreshed.
    let sid = claims["sid"].as_str().unwrap();
    i.cli_ok(&["session", "revoke", sid]).await.unwrap();
    assert_eq!(i.refresh(&s(&one, "refresh_token")).await.unwrap().0, 400);
    assert_eq!(i.refresh(&s(&two, "refresh_token")).await.unwrap().0, 200);

    // The user: every session and access token, at the next review; bob is untouched.
    let out = i.cli(&["revoke", "--user", "alice"]).await.unwrap();
    assert_eq!(out.0, 0, "{out:?}");
    assert!(out.2.contains("revoked 1 session(s)"), "{out:?}");
    assert!(!authenticated(&i, &s(&two, "access_token"), &[]).await);
    assert_eq!(i.refresh(&s(&two, "refresh_token")).await.unwrap().0, 400);
    assert!(authenticated(&i, &s(&bob, "access_token"), &[]).await);
    let listed: Vec<Value> = serde_json::from_str(
        &i.cli_ok(&["session", "list", "--user", "alice", "--json"])
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(listed.iter().all(|l| l["state"] == "revoked"), "{listed:?}");
    // The static token was not asked for, so it still starts sessions; with --static-tokens it
    // stops too.
    assert!(i.login_static(&st).await.is_ok());
    i.cli_ok(&["revoke", "--user", "alice", "--static-tokens"])
        .await
        .unwrap();
    assert!(i.login_static(&st).await.is_err());
    let (code, _, err) = i.cli(&["revoke"]).await.unwrap();
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn rfc7009_revocation_and_rfc7662_introspection() {
    let dir = scratch();
    let secret_file = dir.path().join("gate.secret");
    std::fs::write(&secret_file, "gate-secret-123\n").unwrap();
    let i = with_accounts(
        dir.path(),
        &format!(
            "clients:\n  - id: gatekeeper\n    secret_file: {}\n",
            secret_file.display()
        ),
    )
    .await;
    let pair = i
        .login_static(&i.create_token("alice", false).await.unwrap())
        .await
        .unwrap();
    let (at, rt) = (s(&pair, "access_token"), s(&pair, "refresh_token"));
    let introspect = |token: String, creds: Option<(&'static str, &'static str)>| {
        let i = &i;
        async move {
            let mut req = i
                .http
                .post(i.url("/oauth2/introspect"))
                .form(&[("token", token)]);
            if let Some((u, p)) = creds {
                req = req.basic_auth(u, Some(p));
            }
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let creds = Some(("gatekeeper", "gate-secret-123"));
    let (st, v) = introspect(at.clone(), creds).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["active"].as_bool(), v["username"].as_str()),
        (Some(true), Some("alice"))
    );
    assert_eq!(v["groups"], json!(["dev", "ops"]));
    let (_, v) = introspect(rt.clone(), creds).await;
    assert_eq!(
        (v["active"].as_bool(), v["token_type"].as_str()),
        (Some(true), Some("refresh_token"))
    );
    // Callers must authenticate as a confidential client (or an admin).
    assert_eq!(introspect(at.clone(), None).await.0, 401);
    assert_eq!(
        introspect(at.clone(), Some(("gatekeeper", "wrong")))
            .await
            .0,
        401
    );
    let (st, _) = i
        .oauth(
            "/oauth2/introspect",
            &[("token", &at), ("client_id", "idbridge-cli")],
        )
        .await
        .unwrap();
    assert_eq!(st, 401);

    // Revoking the access token stops it alone; revoking the refresh token ends the session.
    let (st, _) = i.oauth("/oauth2/revoke", &[("token", &at)]).await.unwrap();
    assert_eq!(st, 200);
    assert_eq!(introspect(at.clone(), creds).await.1["active"], false);
    assert!(!authenticated(&i, &at, &[]).await);
    let (st, fresh) = i.refresh(&rt).await.unwrap();
    assert_eq!(st, 200);
    // Another client may not revoke it.
    let r = i
        .http
        .post(i.url("/oauth2/revoke"))
        .basic_auth("gatekeeper", Some("gate-secret-123"))
        .form(&[("token", s(&fresh, "refresh_token"))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (st, _) = i
        .oauth("/oauth2/revoke", &[("token", &s(&fresh, "refresh_token"))])
        .await
        .unwrap();
    assert_eq!(st, 200);
    assert!(!authenticated(&i, &s(&fresh, "access_token"), &[]).await);
    assert_eq!(i.refresh(&s(&fresh, "refresh_token")).await.unwrap().0, 400);
    // Unknown tokens are answered 200 (RFC 7009 section 2.2).
    assert_eq!(
        i.oauth("/oauth2/revoke", &[("token", "nonsense")])
            .await
            .unwrap()
            .0,
        200
    );
    let disc = i
        .get_json("/.well-known/openid-configuration")
        .await
        .unwrap();
    assert!(s(&disc, "revocation_endpoint").ends_with("/oauth2/revoke"));
    assert!(s(&disc, "introspection_endpoint").ends_with("/oauth2/introspect"));
    assert!(
        disc["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("refresh_token"))
    );
}

async fn jwks_kids(i: &Idbridge) -> Vec<String> {
    i.get_json("/oauth2/jwks").await.unwrap()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| s(k, "kid"))
        .collect()
}

fn kid_of(jwt: &str) -> String {
    let h: Value = serde_json::from_slice(&base64_url(jwt.split('.').next().unwrap())).unwrap();
    s(&h, "kid")
}

#[tokio::test]
async fn key_rotation_publishes_the_next_key_first_and_keeps_old_tokens_valid() {
    let dir = scratch();
    let kek = dir.path().join("kek");
    std::fs::write(&kek, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").unwrap();
    let cfg = format!(
        "bootstrap_admin: true\nissuer: https://idbridge.test\nkeys:\n  publish_lead: 1h\n  encryption_key_file: {}\n",
        kek.display()
    );
    let i = Idbridge::start_config(dir.path(), cfg.clone())
        .await
        .unwrap();
    let old = s(
        &i.login_static(&i.admin_token()).await.unwrap(),
        "access_token",
    );
    let k1 = kid_of(&old);
    let kids = jwks_kids(&i).await;
    assert_eq!(kids.len(), 2);
    let k2 = kids.iter().find(|k| **k != k1).unwrap().clone();

    // A normal rotation waits for the next key's publish lead.
    let keys: Vec<Value> =
        serde_json::from_str(&i.cli_ok(&["keys", "rotate", "--json"]).await.unwrap()).unwrap();
    let next = keys.iter().find(|k| k["kid"] == k2.as_str()).unwrap();
    assert_eq!(next["state"], "next");
    assert!(next["activated_at"].as_i64().unwrap() > 0);
    assert!(keys.iter().all(|k| k["encrypted"] == true), "{keys:?}");
    let t = s(
        &i.login_static(&i.admin_token()).await.unwrap(),
        "access_token",
    );
    assert_eq!(kid_of(&t), k1, "the next key does not sign before its lead");

    // An emergency rotation: the published next key signs, a newer one is published, and the
    // old key stays until its tokens expire.
    i.cli_ok(&["keys", "rotate", "--now"]).await.unwrap();
    let t = s(
        &i.login_static(&i.admin_token()).await.unwrap(),
        "access_token",
    );
    assert_eq!(kid_of(&t), k2);
    let kids = jwks_kids(&i).await;
    assert_eq!(kids.len(), 3);
    assert!(kids.contains(&k1) && kids.contains(&k2));
    assert!(authenticated(&i, &old, &[]).await, "old tokens stay valid");
    assert!(authenticated(&i, &t, &[]).await);
    let listed = i.cli_ok(&["keys", "list"]).await.unwrap();
    assert!(listed.contains("retired") && listed.contains("current") && listed.contains("next"));
    i.stop().await.unwrap();

    // At rest the keys are sealed: without the key-encryption key the server will not start,
    // and says which field to set.
    let store = idbridge_store::SqliteStore::open(&dir.path().join("data/idbridge.db"))
        .await
        .unwrap();
    let stored = idbridge_core::KeyStore::signing_keys(&store).await.unwrap();
    assert!(idbridge_tokens::KeySet::from_stored(&stored, None).is_err());
    drop(store);
    let plain = "bootstrap_admin: true\nissuer: https://idbridge.test\nkeys:\n  publish_lead: 1h\n";
    let err = Idbridge::start_config(dir.path(), plain.into())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("keys.encryption_key_file"), "{err}");
    // With it, everything is as it was after a restart.
    let i = Idbridge::start_config(dir.path(), cfg).await.unwrap();
    assert!(authenticated(&i, &old, &[]).await);
    assert!(authenticated(&i, &t, &[]).await);
}

#[tokio::test]
async fn every_refresh_the_client_saw_succeed_survives_kill_9() {
    let dir = scratch();
    // A lost answer is retried within the grace window, so a refresh the server committed but
    // the client never heard of is not mistaken for reuse.
    let cfg =
        "bootstrap_admin: true\nissuer: https://idbridge.test\nsessions:\n  refresh_grace: 60s\n";
    let i = Idbridge::start_config(dir.path(), cfg.into())
        .await
        .unwrap();
    let admin = i.admin_token();
    let mut latest = Vec::new();
    for _ in 0..6 {
        latest.push(i.login_static(&admin).await.unwrap());
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for pair in latest {
        let (http, url, stop) = (i.http.clone(), i.url("/oauth2/token"), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = pair;
            let mut ok = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = http
                    .post(&url)
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", &s(&seen, "refresh_token")),
                    ])
                    .send()
                    .await;
                let Ok(r) = r else { break };
                if r.status() != 200 {
                    break;
                }
                match r.json::<Value>().await {
                    Ok(v) => {
                        seen = v;
                        ok += 1;
                    }
                    Err(_) => break,
                }
            }
            (seen, ok)
        }));
    }
    // Let the storm run, then crash the server in the middle of it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    i.kill9().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut seen = Vec::new();
    let mut total = 0;
    for t in tasks {
        let (pair, ok) = t.await.unwrap();
        total += ok;
        seen.push(pair);
    }
    assert!(total >= 6, "too few refreshes before the crash: {total}");
    let i = Idbridge::start_config(dir.path(), cfg.into())
        .await
        .unwrap();
    for pair in &seen {
        assert!(authenticated(&i, &s(pair, "access_token"), &[]).await);
        let (st, v) = i.refresh(&s(pair, "refresh_token")).await.unwrap();
        assert_eq!(st, 200, "a refresh token the client held was lost: {v}");
    }
}

fn ca(name: &str) -> (rcgen::CertificateParams, rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    let pem = p.self_signed(&key).unwrap().pem();
    (p, key, pem)
}

fn client_identity(
    ca: &(rcgen::CertificateParams, rcgen::KeyPair, String),
    dns: &str,
) -> reqwest::Identity {
    let issuer = rcgen::Issuer::new(ca.0.clone(), &ca.1);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec![dns.to_owned()]).unwrap();
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    reqwest::Identity::from_pem(format!("{}{}", cert.pem(), key.serialize_pem()).as_bytes())
        .unwrap()
}

#[tokio::test]
async fn proxy_headers_count_only_with_the_proxy_certificate() {
    let dir = scratch();
    let proxy_ca = ca("proxy CA");
    let webhook_ca = ca("webhook CA");
    let (pf, wf) = (
        dir.path().join("proxy-ca.crt"),
        dir.path().join("webhook-ca.crt"),
    );
    std::fs::write(&pf, &proxy_ca.2).unwrap();
    std::fs::write(&wf, &webhook_ca.2).unwrap();
    let i = with_accounts(
        dir.path(),
        &format!(
            "tls:\n  client_ca_file: {}\nwebhooks:\n  client_certificates: true\nproxy:\n  enabled: true\n  client_ca_file: {}\n  allowed_names: [front-proxy.example]\n",
            wf.display(),
            pf.display()
        ),
    )
    .await;
    let server_ca =
        reqwest::Certificate::from_pem_bundle(&std::fs::read(i.data_dir.join("ca.crt")).unwrap())
            .unwrap();
    let with = |id: Option<reqwest::Identity>| {
        let mut b = reqwest::Client::builder().tls_certs_only(server_ca.clone());
        if let Some(id) = id {
            b = b.identity(id);
        }
        b.build().unwrap()
    };
    let login = |c: reqwest::Client| {
        let url = i.url("/login/proxy");
        async move {
            let r = c
                .post(url)
                .header("X-Remote-User", "alice")
                .header("X-Remote-Group", "vpn-users")
                .header("X-Remote-Group", "system:masters")
                .form(&[("client_id", "idbridge-cli")])
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    // No certificate, the webhook CA's certificate, or a proxy-CA certificate for another name:
    // the headers are not believed.
    assert_eq!(
        login(client_trusting(&i.data_dir.join("ca.crt")).unwrap())
            .await
            .0,
        401
    );
    assert_eq!(
        login(with(Some(client_identity(
            &webhook_ca,
            "front-proxy.example"
        ))))
        .await
        .0,
        401
    );
    assert_eq!(
        login(with(Some(client_identity(&proxy_ca, "other.example"))))
            .await
            .0,
        401
    );
    // The proxy's certificate: a session for alice with the proxy's groups (never `system:`).
    let (st, pair) = login(with(Some(client_identity(
        &proxy_ca,
        "front-proxy.example",
    ))))
    .await;
    assert_eq!(st, 200, "{pair}");
    let review = i.review(&s(&pair, "access_token"), &[]).await.unwrap();
    assert_eq!(review["user"]["username"], "alice");
    assert_eq!(review["user"]["groups"], json!(["dev", "ops", "vpn-users"]));
    assert_eq!(review["user"]["extra"]["idbridge.io/amr"], json!(["proxy"]));
    assert_eq!(i.refresh(&s(&pair, "refresh_token")).await.unwrap().0, 200);
    // The proxy's certificate does not make a webhook caller.
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "spec": {"token": s(&pair, "access_token")}});
    let r = with(Some(client_identity(&proxy_ca, "front-proxy.example")))
        .post(i.url("/webhooks/tokenreview"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = with(Some(client_identity(&webhook_ca, "kube-apiserver")))
        .post(i.url("/webhooks/tokenreview"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A disabled account gets what every other login method answers.
    i.cli_ok(&["user", "disable", "alice"]).await.unwrap();
    let (st, v) = login(with(Some(client_identity(
        &proxy_ca,
        "front-proxy.example",
    ))))
    .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
}

#[tokio::test]
async fn the_proxy_is_off_by_default() {
    let dir = scratch();
    let i = Idbridge::start(dir.path()).await.unwrap();
    let r = i
        .http
        .post(i.url("/login/proxy"))
        .header("X-Remote-User", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
