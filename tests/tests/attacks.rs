//! One test per attack class, named for it, against the real binary and real servers.
//! docs/security.md maps each control of the threat model to the test here that proves it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use idbridge_tests::{Idbridge, scratch, text};
use serde_json::Value;

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const STATIC: &str = "urn:idbridge:params:oauth:token-type:static";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A server with accounts alice (dev, ops) and helm-bot (robots), from an accounts file.
async fn with_accounts(dir: &std::path::Path, extra: &str) -> Idbridge {
    let accounts = dir.join("accounts.yaml");
    std::fs::write(
        &accounts,
        "- name: alice\n  groups: [dev, ops]\n- name: helm-bot\n  groups: [robots]\n",
    )
    .unwrap();
    Idbridge::start_config(
        dir,
        format!(
            "bootstrap_admin: true\naccounts_file: {}\n{extra}",
            accounts.display()
        ),
    )
    .await
    .unwrap()
}

async fn exchange_access(i: &Idbridge, subject: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS),
    ];
    form.extend_from_slice(extra);
    i.oauth("/oauth2/token", &form).await.unwrap()
}

/// A token alice obtained for another service (`vault`) must not become her Kubernetes
/// credential, nor be an actor token elsewhere.
#[tokio::test]
async fn audience_widening_by_exchange() {
    let dir = scratch();
    let i = with_accounts(
        dir.path(),
        "clients:\n  - id: idbridge-cli\n    audiences: [kubernetes, vault]\n\
         delegation:\n  - actors: {users: [helm-bot]}\n    subjects: {users: [alice]}\n    audiences: [kubernetes]\n",
    )
    .await;
    let alice = i.create_token("alice", false).await.unwrap();
    let r = i.exchange(&alice, Some("vault")).await.unwrap();
    assert_eq!(r.status(), 200);
    let vault: Value = r.json().await.unwrap();
    let vault = text(&vault, "access_token");

    // Asked for kubernetes, with or without a scope: the audience is refused before the scope.
    for scope in ["", "group:dev", "group:nope"] {
        let (st, e) =
            exchange_access(&i, &vault, &[("audience", "kubernetes"), ("scope", scope)]).await;
        assert_eq!(
            (st, e["error"].as_str()),
            (400, Some("invalid_target")),
            "{e}"
        );
    }
    // With no audience named, the exchange keeps the subject's: still only vault.
    let (st, kept) = exchange_access(&i, &vault, &[]).await;
    assert_eq!(st, 200, "{kept}");
    let kept = text(&kept, "access_token");
    let review = i.review(&kept, &[]).await.unwrap();
    assert_eq!(review["authenticated"], false, "{review}");
    assert_eq!(
        i.review(&kept, &["vault"]).await.unwrap()["authenticated"],
        true
    );

    // A helm-bot token for vault is no actor token for a Kubernetes delegation.
    let helm = i.create_token("helm-bot", false).await.unwrap();
    let r = i.exchange(&helm, Some("vault")).await.unwrap();
    let helm_vault: Value = r.json().await.unwrap();
    let helm_vault = text(&helm_vault, "access_token");
    let subject = i.access_token(&alice).await.unwrap();
    let (st, e) = exchange_access(
        &i,
        &subject,
        &[("actor_token", &helm_vault), ("actor_token_type", ACCESS)],
    )
    .await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "{e}"
    );
    assert!(text(&e, "error_description").contains("actor_token"), "{e}");
    // The same actor with a token for idbridge itself (a static token) may act.
    let (st, ok) = exchange_access(
        &i,
        &subject,
        &[("actor_token", &helm), ("actor_token_type", STATIC)],
    )
    .await;
    assert_eq!(st, 200, "{ok}");
}
