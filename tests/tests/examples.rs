//! The configurations in `examples/` run as written.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use idbridge_tests::{Idbridge, Options, repo_root, scratch};
use serde_json::json;

/// Starts idbridge with `examples/<file>` from the repository root, as a reader would.
async fn start_example(dir: &std::path::Path, file: &str) -> Idbridge {
    Idbridge::start_with(
        dir,
        Options {
            config_file: Some(repo_root().join("examples").join(file)),
            cwd: Some(repo_root()),
            ..Options::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn example_configs_pass_the_check() {
    for f in [
        "examples/simple.yaml",
        "examples/enterprise.yaml",
        "examples/openldap.yaml",
        "examples/active-directory.yaml",
    ] {
        let out = tokio::process::Command::new(idbridge_tests::idbridge_bin())
            .args(["serve", "--check", "--config", f])
            .current_dir(repo_root())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "configuration OK"
        );
    }
}

#[tokio::test]
async fn the_enterprise_example_serves_its_accounts() {
    let dir = scratch();
    let s = start_example(dir.path(), "enterprise.yaml").await;
    assert!(
        !s.data_dir.join("admin.token").exists(),
        "only the simple profile makes an admin"
    );
    let secret = s.create_token("alice", true).await.unwrap();
    let st = s.review(secret.trim(), &[]).await.unwrap();
    assert_eq!(st["user"]["username"], "idb:alice");
    assert_eq!(
        st["user"]["groups"],
        json!(["idb:developers", "idb:team-a"])
    );
    assert_eq!(
        st["user"]["extra"]["idbridge.io/namespace"],
        json!(["team-a"])
    );
    let gone = s.create_token("former-employee", true).await.unwrap();
    let st = s.review(gone.trim(), &[]).await.unwrap();
    assert_eq!(st["authenticated"], false);
}

#[tokio::test]
async fn the_simple_example_is_the_simple_profile() {
    let dir = scratch();
    let s = start_example(dir.path(), "simple.yaml").await;
    let st = s.review(&s.admin_token(), &[]).await.unwrap();
    assert_eq!(st["user"]["username"], "admin");
    assert_eq!(st["user"]["groups"], json!(["idbridge-admins"]));
    let disc: serde_json::Value = s
        .get_json("/.well-known/openid-configuration")
        .await
        .unwrap();
    assert_eq!(disc["issuer"], s.base.as_str());
}

#[tokio::test]
async fn the_kerberos_example_logs_users_in() {
    use idbridge_tests::kdc::Kdc;
    let kdc = Kdc::start("EXAMPLE.COM").await.unwrap();
    kdc.add_service("HTTP/localhost").await.unwrap();
    let keytab = kdc.dir().join("http.keytab");
    kdc.export_keytab(&keytab, &["HTTP/localhost"])
        .await
        .unwrap();
    kdc.add_user("bob/admin", "bob-pw").await.unwrap();
    // The example as written, with the realm's keytab in place of /etc/idbridge/http.keytab.
    let mut env = kdc.env();
    env.push((
        "IDBRIDGE__KERBEROS__KEYTAB".into(),
        keytab.display().to_string(),
    ));
    let check = tokio::process::Command::new(idbridge_tests::idbridge_bin())
        .args(["serve", "--check", "--config", "examples/kerberos.yaml"])
        .current_dir(repo_root())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let dir = scratch();
    let s = Idbridge::start_with(
        dir.path(),
        Options {
            config_file: Some(repo_root().join("examples/kerberos.yaml")),
            cwd: Some(repo_root()),
            env: env.clone(),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let cc = kdc.dir().join("bob.cc");
    kdc.kinit("bob/admin@EXAMPLE.COM", "bob-pw", &cc, None)
        .await
        .unwrap();
    let out = tokio::process::Command::new(idbridge_tests::idbridge_bin())
        .args([
            "login",
            "--service",
            "HTTP@localhost",
            "--issuer",
            &s.base,
            "--ca-file",
        ])
        .arg(s.data_dir.join("ca.crt"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("KRB5CCNAME", format!("FILE:{}", cc.display()))
        .env_remove("KUBERNETES_EXEC_INFO")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The example's rule maps bob/admin@EXAMPLE.COM to bob-admin.
    assert!(stdout.starts_with("logged in as bob-admin;"), "{stdout}");
}

#[tokio::test]
async fn the_oidc_example_offers_its_provider_on_the_login_page() {
    let check = tokio::process::Command::new(idbridge_tests::idbridge_bin())
        .args(["serve", "--check", "--config", "examples/oidc.yaml"])
        .current_dir(repo_root())
        .output()
        .await
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let dir = scratch();
    let s = Idbridge::start_with(
        dir.path(),
        Options {
            config_file: Some(repo_root().join("examples/oidc.yaml")),
            cwd: Some(repo_root()),
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let d = s
        .get_json("/.well-known/openid-configuration")
        .await
        .unwrap();
    assert_eq!(
        d["authorization_endpoint"],
        "https://idbridge.example.com:8443/oauth2/authorize"
    );
    let page = s
        .http
        .get(s.url(
            "/oauth2/authorize?response_type=code&client_id=dashboard&redirect_uri=https%3A%2F%2Fdashboard.example.com%2Foauth%2Fcallback&state=s&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let body = page.text().await.unwrap();
    assert!(body.contains("Sign in with Example SSO"), "{body}");
}
