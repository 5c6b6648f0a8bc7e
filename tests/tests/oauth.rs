//! Discovery, JWKS, the token endpoint's static-token exchange, the admin API's access rules, and
//! webhook callers with client certificates.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use idbridge_tests::{Idbridge, client_trusting, scratch};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const STATIC: &str = "urn:idbridge:params:oauth:token-type:static";

async fn token_call(s: &Idbridge, form: &[(&str, &str)]) -> (u16, Value) {
    let r = s
        .http
        .post(s.url("/oauth2/token"))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(r.headers()["cache-control"], "no-store");
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn exchanged_tokens_verify_against_the_published_jwks() {
    let dir = scratch();
    let s = Idbridge::start(dir.path()).await.unwrap();
    let disc: Value = s
        .get_json("/.well-known/openid-configuration")
        .await
        .unwrap();
    assert_eq!(disc["issuer"], s.base.as_str());
    assert_eq!(disc["jwks_uri"], s.url("/oauth2/jwks").as_str());
    assert_eq!(disc["token_endpoint"], s.url("/oauth2/token").as_str());
    assert!(
        disc["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(EXCHANGE))
    );
    assert_eq!(
        disc["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    let jwks: Value = s
        .http
        .get(disc["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The signing key and the next one, published ahead of its first signature.
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{jwks}");
    for jwk in keys {
        assert_eq!(
            (
                jwk["kty"].as_str(),
                jwk["crv"].as_str(),
                jwk["alg"].as_str()
            ),
            (Some("EC"), Some("P-256"), Some("ES256"))
        );
    }

    let (status, body) = token_call(
        &s,
        &[
            ("grant_type", EXCHANGE),
            ("client_id", "idbridge-cli"),
            ("subject_token", &s.admin_token()),
            ("subject_token_type", STATIC),
            ("scope", "openid"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(body["expires_in"], 900);
    let jwt = body["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    let jwk = keys
        .iter()
        .find(|k| k["kid"].as_str() == header.kid.as_deref())
        .expect("the signing key is in the JWKS");
    // Verified the way any relying party would: from the JWKS alone.
    let key =
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["kubernetes"]);
    v.set_issuer(&[&s.base]);
    let claims = jsonwebtoken::decode::<Value>(jwt, &key, &v).unwrap().claims;
    for c in [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "name",
        "groups",
        "amr",
        "scope",
        "sid",
        "client_id",
    ] {
        assert!(claims.get(c).is_some(), "claim {c} missing: {claims}");
    }
    assert_eq!(claims["name"], "admin");
    assert_eq!(claims["amr"], json!(["static"]));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    let review = s.review(jwt, &["kubernetes"]).await.unwrap();
    assert_eq!(review["user"]["uid"], claims["sub"]);
}

#[tokio::test]
async fn the_token_endpoint_refuses_what_it_must() {
    let dir = scratch();
    let s = Idbridge::start(dir.path()).await.unwrap();
    let admin = s.admin_token();
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (vec![("subject_token", &admin)], 400, "invalid_request"),
        (
            vec![
                ("grant_type", "password"),
                ("username", "admin"),
                ("password", "x"),
            ],
            400,
            "unsupported_grant_type",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", &admin),
                ("subject_token_type", STATIC),
                ("client_id", "mallory"),
            ],
            401,
            "invalid_client",
        ),
        (
            vec![("grant_type", EXCHANGE), ("subject_token", &admin)],
            400,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", &admin),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:saml2",
                ),
            ],
            400,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", &admin),
                ("subject_token_type", STATIC),
                ("audience", "vault"),
            ],
            400,
            "invalid_target",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", "idb_st_nope"),
                ("subject_token_type", STATIC),
            ],
            400,
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", "a.b.c"),
                ("subject_token_type", STATIC),
            ],
            400,
            "invalid_grant",
        ),
    ];
    for (form, status, error) in cases {
        let (got, body) = token_call(&s, &form).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(error)),
            "{form:?}: {body}"
        );
        assert!(body["error_description"].is_string());
    }
    let r = s
        .http
        .post(s.url("/oauth2/token"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let audit = s.stop_and_read_audit().await.unwrap();
    assert!(
        audit.contains("\"event\":\"token.exchange\",\"outcome\":\"denied\""),
        "{audit}"
    );
    assert!(!audit.contains(&admin));
}

#[tokio::test]
async fn the_admin_api_needs_an_admin() {
    let dir = scratch();
    let s = Idbridge::start(dir.path()).await.unwrap();
    let url = s.url("/admin/v1/accounts");
    let r = s.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"idbridge\"");
    s.cli_ok(&["user", "add", "eve"]).await.unwrap();
    let eve = s.create_token("eve", false).await.unwrap();
    let r = s
        .http
        .get(&url)
        .bearer_auth(eve.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = s
        .http
        .post(s.url("/admin/v1/tokens"))
        .bearer_auth(eve.trim())
        .json(&json!({"user": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "a non-admin must not mint tokens for others"
    );
    let r = s
        .http
        .get(&url)
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // An access token minted for Kubernetes is not an admin credential, even the admin's.
    let jwt = s.access_token(&s.admin_token()).await.unwrap();
    let r = s.http.get(&url).bearer_auth(jwt).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Bad input names the problem and changes nothing.
    let r = s
        .http
        .post(&url)
        .bearer_auth(s.admin_token())
        .json(&json!({"name": "system:evil"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("system:"));
    let (code, _, err) = s.cli(&["user", "add", "eve"]).await.unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = s
        .cli(&["token", "create", "--user", "nobody"])
        .await
        .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("nobody"), "{err}");
    // A change the caller saw acknowledged is in the log already, before any shutdown.
    assert!(s.audit_log().contains("\"event\":\"token.create\""));
    let audit = s.stop_and_read_audit().await.unwrap();
    assert!(
        audit.contains("\"event\":\"admin.auth\",\"outcome\":\"denied\""),
        "{audit}"
    );
    assert!(!audit.contains(eve.trim()));
}

#[tokio::test]
async fn webhook_callers_may_use_a_client_certificate() {
    let dir = scratch();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test client CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut cp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    cp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = cp.signed_by(&client_key, &issuer).unwrap();
    let ca_file = dir.path().join("client-ca.crt");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let cfg = format!(
        "tls:\n  client_ca_file: {}\nwebhooks:\n  client_certificates: true\n",
        ca_file.display()
    );
    let s = Idbridge::start_config(dir.path(), cfg).await.unwrap();
    let secret = s
        .cli_ok(&["token", "create", "--user", "nobody-yet", "--offline"])
        .await;
    assert!(secret.is_err(), "no such account yet");
    s.cli_ok(&["user", "add", "frank", "--offline"])
        .await
        .unwrap();
    let secret = s.create_token("frank", true).await.unwrap();
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "spec": {"token": secret.trim()}});
    let url = s.url("/webhooks/tokenreview");
    let identity = reqwest::Identity::from_pem(
        format!("{}{}", client_cert.pem(), client_key.serialize_pem()).as_bytes(),
    )
    .unwrap();
    let server_ca = std::fs::read(s.data_dir.join("ca.crt")).unwrap();
    let with_cert = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&server_ca).unwrap())
        .identity(identity)
        .build()
        .unwrap();
    let r = with_cert.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"]["user"]["username"], "frank");
    // Without the certificate (and without a token) the caller is refused.
    let plain = client_trusting(&s.data_dir.join("ca.crt")).unwrap();
    assert_eq!(
        plain.post(&url).json(&body).send().await.unwrap().status(),
        401
    );
}

#[tokio::test]
async fn the_webhook_token_can_come_from_a_file() {
    let dir = scratch();
    let token_file = dir.path().join("wh.token");
    std::fs::write(&token_file, "idb_wh_from_a_file\n").unwrap();
    let s = Idbridge::start_config(
        dir.path(),
        format!("webhooks:\n  bearer_token_file: {}\n", token_file.display()),
    )
    .await
    .unwrap();
    let kubeconfig = std::fs::read_to_string(s.data_dir.join("webhook.kubeconfig")).unwrap();
    assert!(
        kubeconfig.contains("token: idb_wh_from_a_file"),
        "{kubeconfig}"
    );
    assert!(!s.data_dir.join("webhook.token").exists());
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "spec": {"token": "idb_st_x"}});
    let r = s
        .http
        .post(s.url("/webhooks/tokenreview"))
        .bearer_auth("idb_wh_from_a_file")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        !s.log().contains("idb_wh_from_a_file"),
        "a secret reached the log"
    );
}
