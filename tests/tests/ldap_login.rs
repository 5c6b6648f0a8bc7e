//! LDAP logins against the real binary and a real slapd: the `password` grant with nested groups
//! over LDAPS, failover, a directory that goes down and comes back, refresh re-checking the
//! directory, provisioning, group caps, throttling, and every security point of the login.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use idbridge_tests::Idbridge;
use idbridge_tests::ldap::{Slapd, free_port};
use serde_json::Value;

const SERVICE_PASSWORD: &str = "service-secret-1";

async fn start(dir: &std::path::Path, slapd: &Slapd, urls: &[String], extra: &str) -> Idbridge {
    start_groups(dir, slapd, urls, extra, "").await
}

async fn start_groups(
    dir: &std::path::Path,
    slapd: &Slapd,
    urls: &[String],
    extra: &str,
    groups: &str,
) -> Idbridge {
    let yaml = format!(
        "bootstrap_admin: true\nsessions:\n  refresh_grace: 0s\n{}",
        slapd.directory_yaml(urls, extra, groups)
    );
    Idbridge::start_config(dir, yaml).await.unwrap()
}

async fn login(i: &Idbridge, user: &str, pw: &str) -> (u16, Value) {
    i.password_login_json(user, pw).await.unwrap()
}

use idbridge_tests::text as s;

#[tokio::test]
async fn password_login_over_ldaps_gives_a_session_with_nested_groups() {
    let slapd = Slapd::start().await.unwrap();
    let alice = slapd.add_user("alice", "alice-pw-1").await.unwrap();
    let dev = slapd.add_group("dev", &[&alice]).await.unwrap();
    let eng = slapd.add_group("eng", &[&dev]).await.unwrap();
    slapd.add_group("staff", &[&eng]).await.unwrap();
    let dir = idbridge_tests::scratch();
    let i = start(dir.path(), &slapd, &[slapd.ldaps_url()], "").await;
    let discovery = i
        .get_json("/.well-known/openid-configuration")
        .await
        .unwrap();
    assert!(
        discovery["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&"password".into())
    );
    let (st, pair) = login(&i, "alice", "alice-pw-1").await;
    assert_eq!(st, 200, "{pair}");
    assert!(s(&pair, "refresh_token").starts_with("idb_rt_"));
    let review = i.review(&s(&pair, "access_token"), &[]).await.unwrap();
    let user = &review["user"];
    assert_eq!(review["authenticated"], true, "{review}");
    assert_eq!(user["username"], "alice");
    assert_eq!(user["groups"], serde_json::json!(["dev", "eng", "staff"]));
    assert_eq!(
        user["extra"]["idbridge.io/amr"],
        serde_json::json!(["ldap"])
    );
    // The account was created at first login, linked to the entry; the next login finds it.
    let uid = i.account_uid("alice", false).await.unwrap();
    assert_eq!(user["uid"], uid.as_str());
    let (st, again) = login(&i, "alice", "alice-pw-1").await;
    assert_eq!(st, 200, "{again}");
    let review = i.review(&s(&again, "access_token"), &[]).await.unwrap();
    assert_eq!(review["user"]["uid"], uid.as_str());
    let sessions = i
        .cli_ok(&["session", "list", "--user", "alice"])
        .await
        .unwrap();
    assert!(sessions.contains("ldap"), "{sessions}");
    // Secrets never reach the logs.
    let logs = format!("{}{}", i.log(), i.audit_log());
    for secret in [SERVICE_PASSWORD, "alice-pw-1"] {
        assert!(!logs.contains(secret), "a password reached the logs");
    }
    assert!(i.audit_log().contains("amr=ldap"), "{}", i.audit_log());
}

#[tokio::test]
async fn failures_look_the_same_and_empty_passwords_never_bind() {
    let slapd = Slapd::start().await.unwrap();
    slapd.add_user("bob", "bob-pw-1").await.unwrap();
    let dir = idbridge_tests::scratch();
    // Generous limits: this test is about the answers, not the throttle.
    let i = start(
        dir.path(),
        &slapd,
        &[slapd.url()],
        "throttle:\n  per_source: 1000\n  per_user_source: 1000",
    )
    .await;
    let (st, wrong) = login(&i, "bob", "wrong").await;
    assert_eq!(st, 400);
    assert_eq!(wrong["error"], "invalid_grant");
    for (user, pw) in [
        ("nobody", "bob-pw-1"),
        ("*", "bob-pw-1"),
        ("bob)(uid=*", "bob-pw-1"),
        ("b*", "bob-pw-1"),
        ("bob\\00", "bob-pw-1"),
        ("bob\0", "bob-pw-1"),
    ] {
        let (st, v) = login(&i, user, pw).await;
        assert_eq!((st, &v), (400, &wrong), "{user:?}");
    }
    // An empty password: the same answer, and no bind reached the directory.
    let before = slapd.binds();
    let (st, v) = login(&i, "bob", "").await;
    assert_eq!((st, &v), (400, &wrong));
    assert_eq!(slapd.binds(), before, "an empty password must not bind");
    // The right one works; the unknown user did bind (a decoy), like a wrong password.
    let (st, _) = login(&i, "bob", "bob-pw-1").await;
    assert_eq!(st, 200);
    assert!(slapd.log().contains("cn=idbridge-no-such-user"));
    // A client that was not given the password grant may not use it.
    drop(i);
    let dir = idbridge_tests::scratch();
    let yaml = format!(
        "clients:\n  - id: web\n{}",
        slapd.directory_yaml(&[slapd.url()], "", "")
    );
    let i = Idbridge::start_config(dir.path(), yaml).await.unwrap();
    let (st, v) = i
        .oauth(
            "/oauth2/token",
            &[
                ("grant_type", "password"),
                ("client_id", "web"),
                ("username", "bob"),
                ("password", "bob-pw-1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        (st, s(&v, "error").as_str()),
        (400, "unauthorized_client"),
        "{v}"
    );
}

#[tokio::test]
async fn throttled_per_user_and_source_with_retry_after() {
    let slapd = Slapd::start().await.unwrap();
    slapd.add_user("carol", "carol-pw-1").await.unwrap();
    slapd.add_user("dan", "dan-pw-1").await.unwrap();
    let dir = idbridge_tests::scratch();
    let i = start(
        dir.path(),
        &slapd,
        &[slapd.url()],
        "throttle:\n  per_source: 6\n  per_user_source: 2\n  window: 2m",
    )
    .await;
    for _ in 0..2 {
        assert_eq!(login(&i, "carol", "wrong").await.0, 400);
    }
    // Throttled before the directory's lockout (3 failures): the directory is not asked.
    let before = slapd.binds();
    let r = i.password_login("carol", "carol-pw-1").await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=120).contains(&retry), "{retry}");
    assert_eq!(slapd.binds(), before);
    assert!(
        slapd
            .bind(
                &format!("uid=carol,ou=people,{}", idbridge_tests::ldap::SUFFIX),
                "carol-pw-1"
            )
            .await
            .unwrap(),
        "the directory did not lock carol"
    );
    // Someone else from the same place is not held up by carol's count...
    assert_eq!(login(&i, "dan", "dan-pw-1").await.0, 200);
    // ...until the source's own limit is reached.
    for u in ["x1", "x2", "x3", "x4"] {
        let _ = login(&i, u, "wrong").await;
    }
    assert_eq!(login(&i, "dan", "dan-pw-1").await.0, 429);
}

#[tokio::test]
async fn refresh_rechecks_the_directory() {
    let slapd = Slapd::start().await.unwrap();
    let erin = slapd.add_user("erin", "erin-pw-1").await.unwrap();
    let frank = slapd.add_user("frank", "frank-pw-1").await.unwrap();
    slapd.add_group("dev", &[&erin, &frank]).await.unwrap();
    let dir = idbridge_tests::scratch();
    let i = start(dir.path(), &slapd, &[slapd.url()], "").await;
    let (_, pair) = login(&i, "erin", "erin-pw-1").await;
    // Groups are read again on refresh.
    slapd.add_group("ops", &[&erin]).await.unwrap();
    let (st, next) = i.refresh(&s(&pair, "refresh_token")).await.unwrap();
    assert_eq!(st, 200, "{next}");
    let review = i.review(&s(&next, "access_token"), &[]).await.unwrap();
    assert_eq!(review["user"]["groups"], serde_json::json!(["dev", "ops"]));
    // Disabled in the directory: the refresh is refused and the session revoked, its access
    // token too.
    slapd
        .modify(&format!(
            "dn: {erin}\nchangetype: modify\nadd: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n"
        ))
        .await
        .unwrap();
    let (st, v) = i.refresh(&s(&next, "refresh_token")).await.unwrap();
    assert_eq!(st, 400);
    assert!(s(&v, "error_description").contains("disabled"), "{v}");
    let review = i.review(&s(&next, "access_token"), &[]).await.unwrap();
    assert_eq!(review["authenticated"], false);
    // Deleted from the directory: refused too.
    let (_, fp) = login(&i, "frank", "frank-pw-1").await;
    slapd
        .modify(&format!("dn: {frank}\nchangetype: delete\n"))
        .await
        .unwrap();
    let (st, v) = i.refresh(&s(&fp, "refresh_token")).await.unwrap();
    assert_eq!(st, 400);
    assert!(
        s(&v, "error_description").contains("no longer exists"),
        "{v}"
    );
    let audit = i.audit_log();
    assert!(
        audit.contains("the directory account is disabled"),
        "{audit}"
    );
}

#[tokio::test]
async fn failover_outage_and_restart() {
    let mut slapd = Slapd::start().await.unwrap();
    slapd.add_user("gina", "gina-pw-1").await.unwrap();
    let dead = format!("ldap://127.0.0.1:{}", free_port().unwrap());
    let dir = idbridge_tests::scratch();
    // StartTLS with the test CA; the first server is dead, the second serves.
    let i = start(
        dir.path(),
        &slapd,
        &[dead.clone(), slapd.url()],
        "start_tls: true",
    )
    .await;
    let (st, pair) = login(&i, "gina", "gina-pw-1").await;
    assert_eq!(st, 200, "{pair}");
    // The directory goes down: 503 with a clear message, and no token.
    slapd.stop().await.unwrap();
    let (st, v) = login(&i, "gina", "gina-pw-1").await;
    assert_eq!(st, 503, "{v}");
    let msg = s(&v, "message");
    assert!(
        msg.contains("directory is unavailable") && msg.contains("no token"),
        "{msg}"
    );
    // The servers' addresses and the cause are for the operator's log, not for the caller.
    assert!(!msg.contains("127.0.0.1"), "{msg}");
    assert!(
        i.log().contains("no directory server answered"),
        "{}",
        i.log()
    );
    // In RFC 6749's field too, which OAuth clients show.
    assert_eq!(s(&v, "error_description"), msg);
    assert!(v.get("access_token").is_none());
    // A refresh meanwhile is refused without ending the session.
    let (st, _) = i.refresh(&s(&pair, "refresh_token")).await.unwrap();
    assert_eq!(st, 503);
    // Back up: the pool recovers, and the session is still good.
    slapd.restart().await.unwrap();
    let (st, v) = login(&i, "gina", "gina-pw-1").await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = i.refresh(&s(&pair, "refresh_token")).await.unwrap();
    assert_eq!(st, 200, "{v}");
    // Restarted under idle pooled connections: still fine.
    slapd.restart().await.unwrap();
    assert_eq!(login(&i, "gina", "gina-pw-1").await.0, 200);
}

#[tokio::test]
async fn provisioning_existing_links_and_group_caps() {
    let slapd = Slapd::start().await.unwrap();
    let hal = slapd.add_user("hal", "hal-pw-1").await.unwrap();
    slapd.add_user("ivy", "ivy-pw-1").await.unwrap();
    for g in ["k8s-a", "k8s-b", "k8s-c", "other"] {
        slapd.add_group(g, &[&hal]).await.unwrap();
    }
    let dir = idbridge_tests::scratch();
    let i = start_groups(
        dir.path(),
        &slapd,
        &[slapd.url()],
        "provisioning: existing\nlink_by_name: true",
        "include: [\"k8s-*\"]\nprefix: \"ldap:\"\nmax: 2\nmax_per_audience: {kubernetes: 2}",
    )
    .await;
    // No account: refused.
    let (st, v) = login(&i, "ivy", "ivy-pw-1").await;
    assert_eq!(st, 400);
    assert!(s(&v, "error_description").contains("existing"), "{v}");
    assert!(i.account_uid("ivy", false).await.is_err());
    // An account of that name is linked at its first login (link_by_name).
    i.cli_ok(&["user", "add", "hal"]).await.unwrap();
    let uid = i.account_uid("hal", false).await.unwrap();
    let (st, pair) = login(&i, "hal", "hal-pw-1").await;
    assert_eq!(st, 200, "{pair}");
    let review = i.review(&s(&pair, "access_token"), &[]).await.unwrap();
    assert_eq!(review["user"]["uid"], uid.as_str());
    // Shaped: only k8s-*, prefixed, capped at 2.
    assert_eq!(
        review["user"]["groups"],
        serde_json::json!(["ldap:k8s-a", "ldap:k8s-b"])
    );
    assert!(i.audit_log().contains("left out of tokens"));
    // The admin account is never taken over by a directory user of the same name: it is not
    // linked to an entry, but with `jit` a name clash is refused outright.
    let dir2 = idbridge_tests::scratch();
    slapd.add_user("admin", "admin-pw-1").await.unwrap();
    let j = start(dir2.path(), &slapd, &[slapd.url()], "").await;
    let (st, v) = login(&j, "admin", "admin-pw-1").await;
    assert_eq!(st, 400, "{v}");
    assert!(s(&v, "error_description").contains("not linked"), "{v}");
}

#[tokio::test]
async fn a_bad_directory_section_is_refused_at_start_naming_the_field() {
    let slapd = Slapd::start().await.unwrap();
    let dir = idbridge_tests::scratch();
    for (from, to, field) in [
        (
            "bind_password_file: \"",
            "bind_password_file: \"/nonexistent",
            "directory.bind_password_file",
        ),
        (
            "preset: openldap",
            "preset: openldap\n  start_tls: true",
            "directory.urls[0]",
        ),
        (
            "users:\n",
            "users:\n    filter: \"uid=x\"\n",
            "directory.users.filter",
        ),
    ] {
        let yaml = slapd
            .directory_yaml(&[slapd.ldaps_url()], "", "")
            .replacen(from, to, 1);
        let p = dir.path().join("bad.yaml");
        std::fs::write(&p, yaml).unwrap();
        let (code, _, err) =
            idbridge_tests::run_idbridge(&["serve", "--check", "--config", p.to_str().unwrap()])
                .await
                .unwrap();
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(field), "{field}: {err}");
    }
}

#[tokio::test]
async fn concurrent_first_logins_make_one_account() {
    let slapd = Slapd::start().await.unwrap();
    slapd.add_user("jo", "jo-pw-1").await.unwrap();
    let dir = idbridge_tests::scratch();
    let i = std::sync::Arc::new(start(dir.path(), &slapd, &[slapd.url()], "").await);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let i = i.clone();
        tasks.push(tokio::spawn(
            async move { login(&i, "jo", "jo-pw-1").await },
        ));
    }
    let mut uids = std::collections::BTreeSet::new();
    for t in tasks {
        let (st, v) = t.await.unwrap();
        assert_eq!(st, 200, "{v}");
        let review = i.review(&s(&v, "access_token"), &[]).await.unwrap();
        uids.insert(review["user"]["uid"].as_str().unwrap().to_owned());
    }
    assert_eq!(uids.len(), 1, "{uids:?}");
}

#[tokio::test]
async fn the_login_page_password_form_ends_in_a_code_with_directory_groups() {
    use idbridge_tests::oidc::{Browser, cli_authorize_url, query_param};
    let slapd = Slapd::start().await.unwrap();
    let alice = slapd.add_user("alice", "alice-pw-1").await.unwrap();
    slapd.add_group("dev", &[&alice]).await.unwrap();
    let dir = idbridge_tests::scratch();
    let i = start(dir.path(), &slapd, &[slapd.ldaps_url()], "").await;
    let b = Browser::new(&[&i.data_dir.join("ca.crt")]).unwrap();
    let verifier = "v".repeat(43);
    let redirect = "http://127.0.0.1:38112/cb";
    let url = cli_authorize_url(&i.base, redirect, &verifier);
    let page = b.get(&url).await.unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("name=\"password\""),
        "the password form is offered"
    );
    let csrf = page.input("csrf").unwrap();
    let action = page.form_action("/login/password").unwrap();
    // Without the page's CSRF token: refused, and the directory is not asked.
    let binds = slapd.binds();
    let forged = b
        .post_form(
            &action,
            &[
                ("csrf", "x"),
                ("username", "alice"),
                ("password", "alice-pw-1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(forged.status, 403);
    assert_eq!(slapd.binds(), binds);
    // A wrong password shows the page again with the one answer every failure gets.
    let wrong = b
        .post_form(
            &action,
            &[("csrf", &csrf), ("username", "alice"), ("password", "nope")],
        )
        .await
        .unwrap();
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("invalid username or password"),
        "{}",
        wrong.body
    );
    let done = b
        .post_form(
            &action,
            &[
                ("csrf", &csrf),
                ("username", "alice"),
                ("password", "alice-pw-1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(done.status, 303, "{}", done.body);
    let loc = done.headers["location"].to_str().unwrap();
    assert!(loc.starts_with(redirect), "{loc}");
    let code = query_param(loc, "code").unwrap();
    let (st, pair) = i.redeem_code(&code, redirect, &verifier).await.unwrap();
    assert_eq!(st, 200, "{pair}");
    let review = i.review(&s(&pair, "access_token"), &[]).await.unwrap();
    assert_eq!(review["user"]["username"], "alice", "{review}");
    assert_eq!(review["user"]["groups"], serde_json::json!(["dev"]));
    assert_eq!(
        review["user"]["extra"]["idbridge.io/amr"],
        serde_json::json!(["ldap"])
    );
    // The finished login cannot be used again.
    let again = b
        .post_form(
            &action,
            &[
                ("csrf", &csrf),
                ("username", "alice"),
                ("password", "alice-pw-1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(again.status, 400, "{}", again.body);
}
