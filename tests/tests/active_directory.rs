//! The `active-directory` preset against a real Samba AD DC over LDAPS: nested groups by the
//! in-chain rule and by `tokenGroups`, `objectGUID` links, and AD's bind sub-codes turned into
//! clear messages only when the password was right; then the sync worker against the same DC.
//! One test: the DC is shared and serialized.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use idbridge_tests::Idbridge;
use idbridge_tests::samba::SambaAd;
use serde_json::Value;

async fn login(i: &Idbridge, user: &str, pw: &str) -> (u16, Value) {
    i.password_login_json(user, pw).await.unwrap()
}

use idbridge_tests::text as s;

#[tokio::test]
async fn active_directory_preset_against_samba() {
    let ad = SambaAd::start().await.unwrap();
    for args in [
        &["user", "create", "alice", "Alice-Passw0rd!"][..],
        &["user", "create", "dis", "Dis-Passw0rd!"],
        &["user", "disable", "dis"],
        &[
            "user",
            "create",
            "chg",
            "Chg-Passw0rd!",
            "--must-change-at-next-login",
        ],
        &["user", "create", "exp", "Exp-Passw0rd!"],
        &["user", "setexpiry", "exp", "--days=0"],
        &["user", "create", "lck", "Lck-Passw0rd!"],
        &["group", "add", "dev"],
        &["group", "add", "eng"],
        &["group", "addmembers", "dev", "alice,lck"],
        &["group", "addmembers", "eng", "dev"],
        &[
            "domain",
            "passwordsettings",
            "set",
            "--account-lockout-threshold=3",
            "--account-lockout-duration=30",
            "--reset-account-lockout-after=30",
        ],
    ] {
        ad.tool(args).await.unwrap();
    }
    let dir = idbridge_tests::scratch();
    let yaml = format!(
        "sessions:\n  refresh_grace: 0s\n{}",
        ad.directory_yaml(
            "throttle:\n  per_source: 1000",
            "include: [dev, eng, \"Domain Users\"]"
        )
    );
    let i = Idbridge::start_config(dir.path(), yaml).await.unwrap();

    // Nested groups by the in-chain rule; sAMAccountName and userPrincipalName both log in.
    let (st, pair) = login(&i, "alice", "Alice-Passw0rd!").await;
    assert_eq!(st, 200, "{pair}");
    let review = i.review(&s(&pair, "access_token"), &[]).await.unwrap();
    assert_eq!(review["user"]["username"], "alice", "{review}");
    assert_eq!(review["user"]["groups"], serde_json::json!(["dev", "eng"]));
    assert_eq!(
        review["user"]["extra"]["idbridge.io/amr"],
        serde_json::json!(["ldap"])
    );
    let (st, upn) = login(&i, "alice@idb.test", "Alice-Passw0rd!").await;
    assert_eq!(st, 200, "{upn}");
    let again = i.review(&s(&upn, "access_token"), &[]).await.unwrap();
    assert_eq!(
        again["user"]["uid"], review["user"]["uid"],
        "one account per objectGUID"
    );

    // A wrong password tells nothing, whoever it is for.
    let (st, wrong) = login(&i, "alice", "nope").await;
    assert_eq!(
        (st, s(&wrong, "error_description").as_str()),
        (400, "invalid username or password")
    );
    for user in ["dis", "chg", "exp", "nobody"] {
        assert_eq!(
            login(&i, user, "nope").await,
            (400, wrong.clone()),
            "{user}"
        );
    }
    // The right password: AD's sub-codes become clear messages.
    for (user, pw, words) in [
        ("dis", "Dis-Passw0rd!", "disabled"),
        ("chg", "Chg-Passw0rd!", "must be changed"),
        ("exp", "Exp-Passw0rd!", "expired"),
    ] {
        let (st, v) = login(&i, user, pw).await;
        assert_eq!(st, 400, "{v}");
        assert!(s(&v, "error_description").contains(words), "{user}: {v}");
    }

    // Locked after three failed binds: even the right password gets the plain answer (AD says
    // "locked" whatever the password), and the session that lck already has stops refreshing.
    let (st, lck) = login(&i, "lck", "Lck-Passw0rd!").await;
    assert_eq!(st, 200, "{lck}");
    for _ in 0..3 {
        assert!(!ad.bind("lck", "wrong").await.unwrap());
    }
    assert_eq!(
        login(&i, "lck", "Lck-Passw0rd!").await,
        (400, wrong.clone())
    );
    let (st, v) = i.refresh(&s(&lck, "refresh_token")).await.unwrap();
    assert_eq!(st, 400);
    assert!(s(&v, "error_description").contains("locked"), "{v}");

    // Disabled after login: refresh refused, session revoked.
    let (st, v) = i.refresh(&s(&pair, "refresh_token")).await.unwrap();
    assert_eq!(st, 200, "{v}");
    ad.tool(&["user", "disable", "alice"]).await.unwrap();
    let (st, d) = i.refresh(&s(&v, "refresh_token")).await.unwrap();
    assert_eq!(st, 400);
    assert!(s(&d, "error_description").contains("disabled"), "{d}");
    ad.tool(&["user", "enable", "alice"]).await.unwrap();
    drop(i);

    // tokenGroups: the same nesting, plus the primary group (Domain Users).
    let dir = idbridge_tests::scratch();
    let yaml = ad.directory_yaml(
        "",
        "nested: token_groups\ninclude: [dev, eng, \"Domain Users\"]",
    );
    let i = Idbridge::start_config(dir.path(), yaml).await.unwrap();
    let (st, pair) = login(&i, "alice", "Alice-Passw0rd!").await;
    assert_eq!(st, 200, "{pair}");
    let review = i.review(&s(&pair, "access_token"), &[]).await.unwrap();
    assert_eq!(
        review["user"]["groups"],
        serde_json::json!(["Domain Users", "dev", "eng"])
    );
    let logs = format!("{}{}", i.log(), i.audit_log());
    assert!(!logs.contains("Svc-Passw0rd-1!") && !logs.contains("Alice-Passw0rd!"));
    drop(i);

    // The sync worker against the DC: objectGUID links, nested groups from the member lists,
    // entries AD disables, a rename that keeps the UID, and the DC's invocationID.
    let dir = idbridge_tests::scratch();
    let yaml = format!(
        "bootstrap_admin: true\ndata_dir: {data:?}\n{}sync:\n  interval: 1h\n  name_case: lower\n  guards:\n    max_disable_percent: 100\n",
        ad.directory_yaml("", "include: [dev, eng, \"Domain Users\"]"),
        data = dir.path().join("data").display().to_string(),
    );
    let i = Idbridge::start_config(dir.path(), yaml).await.unwrap();
    i.wait_for_log("sync applied", 1).await.unwrap();
    async fn accounts(i: &Idbridge) -> Vec<Value> {
        let (code, out, err) = i.cli(&["user", "list", "--json"]).await.unwrap();
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }
    let all = accounts(&i).await;
    let find = |all: &[Value], n: &str| all.iter().find(|a| a["name"] == n).cloned();
    let alice = find(&all, "alice").expect("alice synced");
    assert_eq!(
        alice["labels"]["groups.idbridge.io/dev"], "member",
        "{alice}"
    );
    assert_eq!(
        alice["labels"]["groups.idbridge.io/eng"], "member",
        "nested: {alice}"
    );
    assert!(find(&all, "administrator").is_some(), "name_case: lower");
    for inactive in ["guest", "dis", "exp", "lck"] {
        assert!(
            find(&all, inactive).is_none(),
            "{inactive} is not active in AD"
        );
    }
    let uid = alice["uid"].clone();
    ad.tool(&["user", "rename", "alice", "--samaccountname=alice2"])
        .await
        .unwrap();
    ad.tool(&["user", "disable", "chg"]).await.unwrap();
    let (code, out, err) = i.cli(&["sync", "--once", "--json"]).await.unwrap();
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let invocation = &report["read"]["identity"]["invocation"];
    assert!(
        invocation[0].as_str().unwrap().contains("NTDS Settings")
            && invocation[1].as_str().unwrap().len() == 36,
        "{report}"
    );
    let all = accounts(&i).await;
    assert_eq!(find(&all, "alice2").expect("renamed")["uid"], uid);
    assert_eq!(find(&all, "chg").unwrap()["disabled"], true);
}
