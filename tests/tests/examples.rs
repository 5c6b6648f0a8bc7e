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
