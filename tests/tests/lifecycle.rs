//! Start, restart, crash and reload of a real `idbridge serve`, and configuration errors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use idbridge_tests::{Idbridge, run_idbridge, scratch};
use serde_json::{Value, json};

async fn file_hashes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for f in [
        "ca.crt",
        "tls.crt",
        "admin.token",
        "webhook.token",
        "webhook.kubeconfig",
        "authentication-config.yaml",
    ] {
        out.push((f.to_owned(), std::fs::read(dir.join(f)).unwrap()));
    }
    out
}

#[tokio::test]
async fn a_restart_keeps_everything() {
    let dir = scratch();
    let s = Idbridge::start(dir.path()).await.unwrap();
    s.cli_ok(&["user", "add", "carol", "--namespace", "team-c"])
        .await
        .unwrap();
    let secret = s.create_token("carol", false).await.unwrap();
    let before = s.review(secret.trim(), &[]).await.unwrap();
    // Standard output is not a terminal here: it names the file, never the token.
    let printed = s.stdout();
    assert!(printed.contains("admin token written to"), "{printed:?}");
    assert!(!printed.contains(&s.admin_token()));
    assert!(
        !s.log().contains(&s.admin_token()),
        "the log must not hold the token"
    );
    let jwks_before: Value = s.get_json("/oauth2/jwks").await.unwrap();
    let files_before = file_hashes(&s.data_dir).await;
    assert_eq!(
        s.stop().await.unwrap(),
        Some(0),
        "SIGTERM must end the server cleanly"
    );

    // The same port is not guaranteed, so the issuer-bearing files may differ; compare the rest.
    let s = Idbridge::start(dir.path()).await.unwrap();
    let files_after = file_hashes(&s.data_dir).await;
    for ((name, a), (_, b)) in files_before.iter().zip(&files_after) {
        if name.ends_with(".crt") || name.ends_with(".token") {
            assert_eq!(a, b, "{name} changed across a restart");
        }
    }
    assert_eq!(s.review(secret.trim(), &[]).await.unwrap(), before);
    let jwks_after: Value = s.get_json("/oauth2/jwks").await.unwrap();
    assert_eq!(
        jwks_before, jwks_after,
        "the signing key must survive a restart"
    );
    let accounts = s.cli_ok(&["user", "list"]).await.unwrap();
    assert!(
        accounts.contains("carol") && accounts.contains("team-c"),
        "{accounts}"
    );
    // The admin token was not re-created and no second admin exists.
    assert_eq!(accounts.matches("admin ").count(), 1, "{accounts}");
}

#[tokio::test]
async fn an_acknowledged_write_survives_kill_9() {
    let dir = scratch();
    let s = Idbridge::start(dir.path()).await.unwrap();
    let mut secrets = Vec::new();
    for i in 0..5 {
        s.cli_ok(&["user", "add", &format!("crash{i}")])
            .await
            .unwrap();
        let out = s
            .cli_ok(&["token", "create", "--user", &format!("crash{i}")])
            .await
            .unwrap();
        secrets.push(out.trim().to_owned());
    }
    // Revocation acknowledged just before the kill must hold too.
    let list: Vec<Value> = serde_json::from_str(
        &s.cli_ok(&["token", "list", "--user", "crash4", "--json"])
            .await
            .unwrap(),
    )
    .unwrap();
    s.cli_ok(&["token", "revoke", list[0]["id"].as_str().unwrap()])
        .await
        .unwrap();
    s.kill9().await.unwrap();
    let s = Idbridge::start(dir.path()).await.unwrap();
    for (i, secret) in secrets.iter().enumerate() {
        let st = s.review(secret, &[]).await.unwrap();
        assert_eq!(st["authenticated"], i < 4, "crash{i}: {st}");
    }
}

#[tokio::test]
async fn invalid_configuration_exits_2_naming_the_field() {
    let dir = scratch();
    let cases = [
        (
            "kubernetes:\n  audience: [x]\n",
            "kubernetes",
            Some("line 2"),
        ),
        (
            "listen: 127.0.0.1:0\ntokens:\n  access_token_ttl: soon\n",
            "tokens.access_token_ttl",
            Some("line 3"),
        ),
        (
            "admin:\n  groups: ['system:masters']\n",
            "admin.groups",
            Some("line 2"),
        ),
        ("issuer: http://insecure.example\n", "`issuer`", None),
        (
            "kubernetes:\n  audiences: []\n",
            "kubernetes.audiences",
            None,
        ),
        (
            "webhooks:\n  client_certificates: true\n",
            "webhooks.client_certificates",
            None,
        ),
        ("- just\n- a list\n", "config.yaml", None),
        (
            "webhooks:\n  bearer_token_file: /nonexistent/wh.token\n",
            "webhooks.bearer_token_file",
            None,
        ),
        (
            "accounts_file: /nonexistent/accounts.yaml\n",
            "accounts_file",
            None,
        ),
        (
            "proxy:\n  enabled: true\n  client_ca_file: /nonexistent/ca.crt\n",
            "proxy.allowed_names",
            None,
        ),
        (
            "token_exchange:\n  audience_changes: [{from: kubernetes, to: []}]\n",
            "token_exchange.audience_changes[0].to",
            None,
        ),
        (
            "limits:\n  header_read_timeout: 60s\n",
            "limits.header_read_timeout",
            None,
        ),
        (
            "limits:\n  max_connections_per_source: 0\n",
            "limits.max_connections_per_source",
            None,
        ),
    ];
    for (yaml, field, line) in cases {
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        let data = dir.path().join("data");
        let (code, _, err) = run_idbridge(&[
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .await
        .unwrap();
        assert_eq!(code, 2, "{yaml}: {err}");
        assert!(
            err.contains(field),
            "{yaml}: message does not name {field}: {err}"
        );
        if let Some(line) = line {
            assert!(
                err.contains(line),
                "{yaml}: message does not give {line}: {err}"
            );
        }
        assert!(
            !data.join("idbridge.db").exists(),
            "a bad config must change nothing"
        );
    }
    // A bad accounts file is a configuration error too, named down to the entry and line.
    let accounts = dir.path().join("accounts.yaml");
    std::fs::write(&accounts, "- name: bob\n- name: carol\n  group: [dev]\n").unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        format!("accounts_file: {}\n", accounts.display()),
    )
    .unwrap();
    let (code, _, err) = run_idbridge(&[
        "serve",
        "--config",
        dir.path().join("config.yaml").to_str().unwrap(),
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--check",
    ])
    .await
    .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("accounts.yaml")
            && err.contains("[1]")
            && err.contains("group")
            && err.contains("line 3"),
        "{err}"
    );
    // Environment overrides are checked the same way.
    let (code, _, err) = {
        let out = tokio::process::Command::new(idbridge_tests::idbridge_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("IDBRIDGE__REVIEW_CACHE__TTL", "forever")
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            (),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("review_cache.ttl"), "{err}");
}

#[tokio::test]
async fn sighup_reloads_mappings_and_accounts() {
    let dir = scratch();
    let accounts = dir.path().join("accounts.yaml");
    std::fs::write(&accounts, "- name: dave\n  groups: [dev]\n").unwrap();
    let cfg = |prefix: &str| {
        format!(
            "kubernetes:\n  username_prefix: '{prefix}'\naccounts_file: {}\n",
            accounts.display()
        )
    };
    let s = Idbridge::start_config(dir.path(), cfg("a:")).await.unwrap();
    let secret = s.create_token("dave", true).await.unwrap();
    let st = s.review(secret.trim(), &[]).await.unwrap();
    assert_eq!(st["user"]["username"], "a:dave");
    assert_eq!(st["user"]["groups"], json!(["dev"]));

    std::fs::write(dir.path().join("config.yaml"), cfg("b:")).unwrap();
    std::fs::write(&accounts, "- name: dave\n  groups: [dev, ops]\n").unwrap();
    s.signal("HUP").await.unwrap();
    // The reload is asynchronous; the log line says when it is done.
    s.wait_for_log("configuration reloaded", 1).await.unwrap();
    let st = s.review(secret.trim(), &[]).await.unwrap();
    assert_eq!(st["user"]["username"], "b:dave", "{st}");
    assert_eq!(st["user"]["groups"], json!(["dev", "ops"]));

    // A broken config is refused and the running one kept.
    std::fs::write(dir.path().join("config.yaml"), "kubernetes: [\n").unwrap();
    s.signal("HUP").await.unwrap();
    s.wait_for_log("reload failed", 1).await.unwrap();
    let st = s.review(secret.trim(), &[]).await.unwrap();
    assert_eq!(st["user"]["username"], "b:dave");
}
