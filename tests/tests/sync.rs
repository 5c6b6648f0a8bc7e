//! The sync worker against a real slapd and the real idbridge binary: accounts created with
//! group labels (nested groups included), a disable that ends sessions at the next TokenReview,
//! a rename that keeps the UID, a membership change, the mass-disable guard and `--force`, a
//! second run that writes nothing, a dry run, the lease against `--offline`, and a directory
//! that stops mid-run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use idbridge_tests::Idbridge;
use idbridge_tests::kube::{ApiServer, Authn};
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
    // alice ∈ dev ∈ eng; bob and dave ∈ ops; "Domain Users" has everyone (not a label-safe
    // name).
    let dev = s.add_group("dev", &[&alice]).await.unwrap();
    s.add_group("eng", &[&dev]).await.unwrap();
    s.add_group("ops", &[&bob, &dave]).await.unwrap();
    s.add_group("Domain Users", &[&alice, &bob, &carol, &dave])
        .await
        .unwrap();
    let yaml = format!(
        "bootstrap_admin: true\ndata_dir: {data:?}\n{}sync:\n  interval: 1h\n  guards:\n    max_disable_percent: 30\n  labels:\n    roles:\n      - group: ops\n        role: operator\n",
        // A token carries one group here; sync still sees them all.
        s.directory_yaml(&[s.ldaps_url()], "", "max: 1"),
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
    // robert leaves ops (its member value already names him by his new DN).
    s.modify(&format!(
        "dn: cn=ops,ou=groups,{SUFFIX}\nchangetype: modify\ndelete: member\nmember: uid=robert,ou=people,{SUFFIX}\n"
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
    assert_eq!(label(robert, "groups.idbridge.io/ops"), None, "left ops");
    assert_eq!(label(robert, "roles.idbridge.io/operator"), None);
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

    // frank's entry is deleted and made again (a new entryUUID): his old account is disabled
    // and keeps the name, so the new entry waits until an admin renames the old account.
    let frank = s.add_user("frank", PW).await.unwrap();
    let (code, _, err) = sync(&i, &[]).await;
    assert_eq!(code, 0, "{err}");
    s.modify(&format!("dn: {frank}\nchangetype: delete\n"))
        .await
        .unwrap();
    s.add_user("frank", PW).await.unwrap();
    let (code, report, err) = sync(&i, &["--force"]).await;
    assert_eq!(code, 0, "{err}\n{report}");
    assert!(
        report["plan"]["skipped"]
            .to_string()
            .contains("user frank not created"),
        "{report}"
    );
    let old_uid = find(&accounts(&i).await, "frank").unwrap()["uid"].clone();
    i.cli_ok(&["user", "rename", "frank", "frank-old"])
        .await
        .unwrap();
    let (code, report, err) = sync(&i, &[]).await;
    assert_eq!(code, 0, "{err}\n{report}");
    assert_eq!(report["plan"]["changes"][0]["kind"], "create", "{report}");
    let all = accounts(&i).await;
    let old = find(&all, "frank-old").unwrap();
    assert_eq!(
        (old["uid"].clone(), old["disabled"].clone()),
        (old_uid.clone(), true.into())
    );
    assert_ne!(find(&all, "frank").unwrap()["uid"], old_uid);

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

    // The server is killed outright: its lease names a process that is gone, so an offline
    // run takes it over at once (and fails here only because the directory is down).
    i.kill9().await.unwrap();
    s.restart().await.unwrap();
    let (code, out, err) = idbridge_tests::run_idbridge(&[
        "sync",
        "--offline",
        "--config",
        config.to_str().unwrap(),
        "--once",
        "--json",
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("holds the sync lease"), "{err}");
}

/// A kubectl run as the API server's admin.
async fn admin(api: &ApiServer, args: &[&str]) -> String {
    let kc = api.token_kubeconfig(&api.admin_token).unwrap();
    let (code, out, err) = api.kubectl(&kc, args, &[]).await.unwrap();
    assert_eq!(code, 0, "kubectl {args:?}: {err}");
    out
}

/// Whether `token` may list pods in `ns`, once RBAC has caught up (bounded).
async fn can_list_pods(api: &ApiServer, token: &str, ns: &str, expect: bool) {
    let kc = api.token_kubeconfig(token).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, out, err) = api
            .kubectl(&kc, &["auth", "can-i", "list", "pods", "-n", ns], &[])
            .await
            .unwrap();
        let yes = code == 0 && out.trim() == "yes";
        if yes == expect {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "can-i list pods -n {ns}: {out} {err} (expected {expect})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn namespace_rules_become_bindings_and_quotas_in_a_real_api_server() {
    let dir = idbridge_tests::scratch();
    let s = Slapd::start().await.unwrap();
    let alice = s.add_user("alice", PW).await.unwrap();
    let bob = s.add_user("bob", PW).await.unwrap();
    s.add_group("k8s-pay-devs", &[&alice]).await.unwrap();
    let web = s.add_group("k8s-web-devs", &[&bob]).await.unwrap();
    let config = |api: Option<&std::path::Path>| {
        let kube = api.map_or_else(String::new, |kc| {
            format!(
                "kubernetes:\n  instance: test\n  api:\n    kubeconfig: {:?}\n",
                kc.display().to_string()
            )
        });
        format!(
            "bootstrap_admin: true\ndata_dir: {data:?}\n{kube}{}sync:\n  interval: 1h\n  guards:\n    max_disable_percent: 100\n  namespaces:\n    - regex: 'k8s-(.+)-devs'\n      namespace: 'team-$1'\n      role: team-dev\n      create: true\n      labels: {{tier: apps}}\n      quota: {{hard: {{pods: '10'}}}}\n",
            s.directory_yaml(&[s.ldaps_url()], "", ""),
            data = dir.path().join("data").display().to_string(),
        )
    };
    let i = Idbridge::start_config(dir.path(), config(None))
        .await
        .unwrap();
    i.wait_for_log("sync applied", 1).await.unwrap();
    // Without `kubernetes.api`, the objects can still be reviewed as manifests.
    let (code, out, err) = i
        .cli(&["sync", "--dry-run", "--manifests", "-"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("kind: RoleBinding")
            && out.contains("name: team-pay")
            && out.contains("app.kubernetes.io/managed-by: idbridge"),
        "{out}"
    );

    let api = ApiServer::start(dir.path(), Authn::webhook(&i.data_dir))
        .await
        .unwrap();
    admin(
        &api,
        &[
            "create",
            "clusterrole",
            "team-dev",
            "--verb=get,list",
            "--resource=pods",
        ],
    )
    .await;
    // idbridge reaches the API server as the ServiceAccount of the shipped RBAC example, with
    // exactly its rights.
    let rbac = idbridge_tests::repo_root().join("examples/sync-rbac.yaml");
    admin(&api, &["apply", "-f", rbac.to_str().unwrap()]).await;
    let sa_token = admin(
        &api,
        &[
            "create",
            "token",
            "idbridge",
            "-n",
            "idbridge",
            "--duration=1h",
        ],
    )
    .await;
    let sync_kc = api.token_kubeconfig(sa_token.trim()).unwrap();
    std::fs::write(dir.path().join("config.yaml"), config(Some(&sync_kc))).unwrap();
    i.signal("HUP").await.unwrap();
    i.wait_for_log("configuration reloaded", 1).await.unwrap();

    let (code, report, err) = sync(&i, &[]).await;
    assert_eq!(code, 0, "{err}\n{report}");
    let applied = &report["kubernetes"]["applied"];
    assert_eq!(
        applied["applied"], 6,
        "2 namespaces, 2 bindings, 2 quotas: {report}"
    );
    assert_eq!(applied["changed"], 6);
    let ns: Value =
        serde_json::from_str(&admin(&api, &["get", "ns", "team-pay", "-o", "json"]).await).unwrap();
    let labels = &ns["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "idbridge");
    assert_eq!(labels["app.kubernetes.io/instance"], "test");
    assert_eq!(labels["tier"], "apps");
    let quota: Value = serde_json::from_str(
        &admin(
            &api,
            &[
                "get",
                "resourcequota",
                "idbridge-quota",
                "-n",
                "team-pay",
                "-o",
                "json",
            ],
        )
        .await,
    )
    .unwrap();
    assert_eq!(quota["spec"]["hard"]["pods"], "10");
    let rb: Value = serde_json::from_str(
        &admin(
            &api,
            &[
                "get",
                "rolebindings",
                "-n",
                "team-pay",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        )
        .await,
    )
    .unwrap();
    let ours = &rb["items"][0];
    assert_eq!(ours["subjects"][0]["name"], "k8s-pay-devs");
    let managers: Vec<&str> = ours["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, ["idbridge"], "server-side apply by idbridge");
    let ours_version = ours["metadata"]["resourceVersion"].clone();

    // alice, in k8s-pay-devs, may list pods in team-pay and not in team-web.
    let (status, login) = i.password_login_json("alice", PW).await.unwrap();
    assert_eq!(status, 200, "{login}");
    let alice_token = login["access_token"].as_str().unwrap();
    can_list_pods(&api, alice_token, "team-pay", true).await;
    can_list_pods(&api, alice_token, "team-web", false).await;

    // A second run writes nothing to the API server.
    let (code, report, err) = sync(&i, &[]).await;
    assert_eq!(code, 0, "{err}\n{report}");
    assert_eq!(report["kubernetes"]["applied"]["changed"], 0, "{report}");

    // Hand-made bindings (one unlabelled, one of another installation) are never pruned.
    admin(
        &api,
        &[
            "create",
            "rolebinding",
            "hand-made",
            "--clusterrole=team-dev",
            "--group=ops",
            "-n",
            "team-web",
        ],
    )
    .await;
    admin(
        &api,
        &[
            "create",
            "rolebinding",
            "other-install",
            "--clusterrole=team-dev",
            "--group=ops",
            "-n",
            "team-web",
        ],
    )
    .await;
    admin(
        &api,
        &[
            "label",
            "rolebinding",
            "other-install",
            "-n",
            "team-web",
            "app.kubernetes.io/managed-by=idbridge",
            "app.kubernetes.io/instance=other",
        ],
    )
    .await;

    // The web group is renamed: its binding and quota move to team-shop; team-web keeps its
    // namespace and the hand-made bindings; alice's binding is untouched.
    s.modify(&format!(
        "dn: {web}\nchangetype: modrdn\nnewrdn: cn=k8s-shop-devs\ndeleteoldrdn: 1\n"
    ))
    .await
    .unwrap();
    let (code, report, err) = sync(&i, &[]).await;
    assert_eq!(code, 0, "{err}\n{report}");
    let pruned: Vec<String> = report["kubernetes"]["prune"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["namespace"].as_str().unwrap(),
                p["kind"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        pruned,
        ["team-web/RoleBinding", "team-web/ResourceQuota"],
        "{report}"
    );
    let left = admin(
        &api,
        &["get", "rolebindings", "-n", "team-web", "-o", "name"],
    )
    .await;
    assert_eq!(
        left.lines().collect::<Vec<_>>(),
        [
            "rolebinding.rbac.authorization.k8s.io/hand-made",
            "rolebinding.rbac.authorization.k8s.io/other-install"
        ]
    );
    admin(&api, &["get", "ns", "team-web"]).await;
    admin(
        &api,
        &["get", "resourcequota", "idbridge-quota", "-n", "team-shop"],
    )
    .await;
    let rb: Value = serde_json::from_str(
        &admin(
            &api,
            &["get", "rolebindings", "-n", "team-pay", "-o", "json"],
        )
        .await,
    )
    .unwrap();
    assert_eq!(rb["items"][0]["metadata"]["resourceVersion"], ours_version);
    can_list_pods(&api, alice_token, "team-pay", true).await;

    // alice is renamed: her account keeps its UID, the group's binding is untouched, and she
    // logs in under her new name with the same access.
    s.modify(&format!(
        "dn: {alice}\nchangetype: modrdn\nnewrdn: uid=alice2\ndeleteoldrdn: 1\n"
    ))
    .await
    .unwrap();
    let (code, report, err) = sync(&i, &[]).await;
    assert_eq!(code, 0, "{err}\n{report}");
    assert_eq!(report["plan"]["changes"][0]["kind"], "rename", "{report}");
    assert_eq!(report["kubernetes"]["applied"]["changed"], 0, "{report}");
    let (status, login) = i.password_login_json("alice2", PW).await.unwrap();
    assert_eq!(status, 200, "{login}");
    let renamed = login["access_token"].as_str().unwrap();
    can_list_pods(&api, renamed, "team-pay", true).await;
    let who = api.whoami(renamed).await.unwrap();
    assert_eq!(who["username"], "alice2", "{who}");

    // A rule naming a ClusterRole that does not exist: reported, not made, and nothing is
    // deleted while it stands.
    let file = dir.path().join("config.yaml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(
        "    - group: k8s-pay-devs\n      namespace: team-pay\n      role: no-such-role\n",
    );
    std::fs::write(&file, text).unwrap();
    i.signal("HUP").await.unwrap();
    i.wait_for_log("configuration reloaded", 2).await.unwrap();
    let (code, report, err) = sync(&i, &["--dry-run"]).await;
    assert_eq!(code, 0, "{err}\n{report}");
    let skipped = report["plan"]["skipped"].to_string();
    assert!(
        skipped.contains("\\\"no-such-role\\\" does not exist")
            && skipped.contains("no Kubernetes object is deleted this run"),
        "{skipped}"
    );
    assert_eq!(report["kubernetes"]["prune"], serde_json::json!([]));
}
