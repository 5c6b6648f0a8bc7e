//! The sync worker against a real slapd and the real idbridge binary: accounts created with
//! group labels (nested groups included), a disable that ends sessions at the next TokenReview,
//! a rename that keeps the UID, a membership change, the mass-disable guard and `--force`, a
//! second run that writes nothing, a dry run, the lease against `--offline`, and a directory
//! that stops mid-run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use idbridge_tests::Idbridge;
use idbridge_tests::ldap::{SUFFIX, Slapd};
use serde_json::Value;

const PW: &str = "sync-test-pw-1";

fn label(account: &Value, key: &str) -> Option<String> {
    account["labels"][key].as_str().map(str::to_owned)
}

async fn accounts(i: &Idbridge) -> Vec<Value> {
    let out = i.cli_ok(&["user", "list", "--json"]).await.unwrap();
    serde_json::from_str(&out).unwrap()
}

fn find<'a>(all: &'a [Value], name: &str) -> Option<&'a Value> {
    all.iter().find(|a| a["name"] == name)
}

async fn sync(i: &Idbridge, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["sync", "--once", "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = i.cli(&args).await.unwrap();
    let report = serde_json::from_str(&out).unwrap_or(Value::Null);
    (code, report, err)
}

#[tokio::test]
async fn sync_keeps_accounts_in_step_with_the_directory_and_guards_its_changes() {
    let dir = idbridge_tests::scratch();
    let mut s = Slapd::start().await.unwrap();
    let alice = s.add_user("alice", PW).await.unwrap();
    let bob = s.add_user("bob", PW).await.unwrap();
    let carol = s.add_user("carol", PW).await.unwrap();
    let dave = s.add_user("dave", PW).await.unwrap();
    // alice ∈ dev ∈ eng; bob ∈ ops; "Domain Users" has everyone (not a label-safe name).
    let dev = s.add_group("dev", &[&alice]).await.unwrap();
    s.add_group("eng", &[&dev]).await.unwrap();
    s.add_group("ops", &[&bob]).await.unwrap();
    s.add_group("Domain Users", &[&alice, &bob, &carol, &dave])
        .await
        .unwrap();
    let yaml = format!(
        "bootstrap_admin: true\ndata_dir: {data:?}\n{}sync:\n  interval: 1h\n  guards:\n    max_disable_percent: 30\n  labels:\n    roles:\n      - group: ops\n        role: operator\n",
        s.directory_yaml(&[s.ldaps_url()], "", ""),
        data = dir.path().join("data").display().to_string(),
    );
    let i = Idbridge::start_config(dir.path(), yaml).await.unwrap();

    // The run at start creates every account, with group and role labels.
    i.wait_for_log("sync applied", 1).await.unwrap();
    let all = accounts(&i).await;
    let a = find(&all, "alice").expect("alice synced");
    assert_eq!(
        label(a, "groups.idbridge.io/dev").as_deref(),
        Some("member")
    );
    assert_eq!(
        label(a, "groups.idbridge.io/eng").as_deref(),
        Some("member"),
        "nested"
    );
    assert!(
        a["labels"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("hashed.groups.idbridge.io/Domain-Users-")),
        "{a}"
    );
    let b = find(&all, "bob").unwrap();
    assert_eq!(
        label(b, "roles.idbridge.io/operator").as_deref(),
        Some("true")
    );
    let bob_uid = b["uid"].as_str().unwrap().to_owned();
    assert!(find(&all, "carol").is_some() && find(&all, "dave").is_some());
    assert!(find(&all, "admin").is_some(), "local accounts are kept");
    let (code, out, err) = i.cli(&["sync"]).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("last success:") && !out.contains("never"),
        "{out}"
    );

    // A second run with no change in the directory writes nothing.
    let (code, report, err) = sync(&i, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["outcome"], "applied");
    assert_eq!(
        report["plan"]["changes"].as_array().unwrap().len(),
        0,
        "{report}"
    );
    assert_eq!(accounts(&i).await, all, "nothing written");

    // alice logs in; the directory then locks her: the sync disables her account and the next
    // TokenReview refuses her token.
    let (status, login) = i.password_login_json("alice", PW).await.unwrap();
    assert_eq!(status, 200, "{login}");
    let token = login["access_token"].as_str().unwrap();
    assert_eq!(i.review(token, &[]).await.unwrap()["authenticated"], true);
    s.modify(&format!(
        "dn: {alice}\nchangetype: modify\nadd: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n"
    ))
    .await
    .unwrap();
    // bob is renamed robert; carol joins dev.
    s.modify(&format!(
        "dn: {bob}\nchangetype: modrdn\nnewrdn: uid=robert\ndeleteoldrdn: 1\n"
    ))
    .await
    .unwrap();
    s.modify(&format!(
        "dn: {dev}\nchangetype: modify\nadd: member\nmember: {carol}\n"
    ))
    .await
    .unwrap();
    // A dry run shows the plan and writes nothing.
    let (code, out, err) = i.cli(&["sync", "--dry-run"]).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("disable") && out.contains("bob → robert") && out.contains("update"),
        "{out}"
    );
    assert!(err.contains("sync dry run"), "{err}");
    assert_eq!(accounts(&i).await, all, "a dry run writes nothing");

    let (code, report, err) = sync(&i, &[]).await;
    assert_eq!(code, 0, "{err}\n{report}");
    let kinds: Vec<&str> = report["plan"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["rename", "update", "disable"], "{report}");
    let all = accounts(&i).await;
    assert_eq!(find(&all, "alice").unwrap()["disabled"], true);
    assert_eq!(
        label(find(&all, "alice").unwrap(), "sync.idbridge.io/disabled").as_deref(),
        Some("directory")
    );
    let robert = find(&all, "robert").expect("renamed");
    assert_eq!(robert["uid"], bob_uid.as_str(), "the UID stays");
    assert!(find(&all, "bob").is_none());
    assert_eq!(
        label(find(&all, "carol").unwrap(), "groups.idbridge.io/eng").as_deref(),
        Some("member")
    );
    assert_eq!(
        i.review(token, &[]).await.unwrap()["authenticated"],
        false,
        "sessions of an account sync disabled are refused at once"
    );
    let (status, _) = i
        .refresh(login["refresh_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(status, 400);

    // Deleting two of the three enabled users is more than 30 %: refused, nothing applied.
    for dn in [format!("uid=robert,ou=people,{SUFFIX}"), carol.clone()] {
        s.modify(&format!("dn: {dn}\nchangetype: delete\n"))
            .await
            .unwrap();
    }
    let (code, report, err) = sync(&i, &[]).await;
    assert_eq!(code, 3, "{err}\n{report}");
    assert_eq!(report["outcome"], "refused");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("max_disable_percent"),
        "{report}"
    );
    let before_force = accounts(&i).await;
    assert_eq!(find(&before_force, "carol").unwrap()["disabled"], false);
    let (code, report, err) = sync(&i, &["--force"]).await;
    assert_eq!(code, 0, "{err}\n{report}");
    assert_eq!(report["forced"], true);
    let all = accounts(&i).await;
    assert_eq!(find(&all, "carol").unwrap()["disabled"], true);
    assert_eq!(
        label(find(&all, "carol").unwrap(), "sync.idbridge.io/disabled").as_deref(),
        Some("deleted")
    );

    // While the server holds the store, an offline run is refused.
    let config = dir.path().join("config.yaml");
    let (code, _, err) = idbridge_tests::run_idbridge(&[
        "sync",
        "--offline",
        "--config",
        config.to_str().unwrap(),
        "--once",
    ])
    .await
    .unwrap();
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("holds the sync lease"), "{err}");

    // The directory stops: the run fails, nothing is applied.
    s.stop().await.unwrap();
    let (code, report, err) = sync(&i, &[]).await;
    assert_eq!(code, 1, "{err}\n{report}");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("reading the directory failed"),
        "{report}"
    );
    assert_eq!(accounts(&i).await, all);
    let metrics = i.metrics().await.unwrap();
    for line in [
        "idbridge_sync_runs_total{outcome=\"failed\"} 1",
        "idbridge_sync_guard_trips_total 1",
        "idbridge_sync_changes_total{kind=\"rename\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    let audit = i.audit_log();
    assert!(
        audit.contains("\"account.sync\"") && audit.contains("sync.guard"),
        "{audit}"
    );
}
