//! The directory crate against a real slapd: search-then-bind, nested groups with a cycle,
//! ppolicy locks, escaping, failover, LDAPS and StartTLS with a custom CA, a restart mid-run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use idbridge_core::{Directory, DirectoryError, DirectoryStatus};
use idbridge_directory::{DirectoryConfig, LdapDirectory, ReadPhase};
use idbridge_tests::ldap::{Slapd, free_port};

fn directory(slapd: &Slapd, urls: &[String], extra: &str, groups: &str) -> LdapDirectory {
    let yaml = slapd.directory_yaml(urls, extra, groups);
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    let cfg: DirectoryConfig = serde_yaml_ng::from_value(v["directory"].clone()).unwrap();
    LdapDirectory::new(&cfg).unwrap()
}

#[tokio::test]
async fn nested_groups_with_a_cycle_resolve_once_each() {
    let s = Slapd::start().await.unwrap();
    let alice = s.add_user("alice", "alice-pw-1").await.unwrap();
    // alice ∈ dev ∈ eng ∈ staff ∈ eng (a cycle), and ops directly.
    let dev = s.add_group("dev", &[&alice]).await.unwrap();
    s.add_group("ops", &[&alice]).await.unwrap();
    let eng = s.add_group("eng", &[&dev]).await.unwrap();
    let staff = s.add_group("staff", &[&eng]).await.unwrap();
    s.modify(&format!(
        "dn: {eng}\nchangetype: modify\nadd: member\nmember: {staff}\n"
    ))
    .await
    .unwrap();
    let d = directory(&s, &[s.url()], "", "");
    let u = d.authenticate("alice", "alice-pw-1").await.unwrap();
    assert_eq!(u.groups, ["dev", "eng", "ops", "staff"]);
    assert_eq!(u.name, "alice");
    assert_eq!(u.status, DirectoryStatus::Active);
    assert_eq!(u.id.len(), 36, "entryUUID: {}", u.id);
    let again = d.user_by_id(&u.id).await.unwrap().unwrap();
    assert_eq!(again.groups, u.groups);
    assert!(
        d.user_by_id("00000000-0000-0000-0000-000000000000")
            .await
            .unwrap()
            .is_none()
    );
    // The depth bound stops the walk: with 2 levels, only dev, ops and eng.
    let shallow = directory(&s, &[s.url()], "", "max_depth: 2");
    let u = shallow.authenticate("alice", "alice-pw-1").await.unwrap();
    assert_eq!(u.groups, ["dev", "eng", "ops"]);
}

#[tokio::test]
async fn wrong_password_unknown_user_and_injection_look_the_same() {
    let s = Slapd::start().await.unwrap();
    s.add_user("bob", "bob-pw-1").await.unwrap();
    let d = directory(&s, &[s.url()], "", "");
    for (user, pw) in [
        ("bob", "wrong"),
        ("nobody", "bob-pw-1"),
        ("bob", ""),
        ("*", "bob-pw-1"),
        ("bob)(uid=*", "bob-pw-1"),
        ("b*", "bob-pw-1"),
        ("bob\0", "bob-pw-1"),
        ("", "x"),
    ] {
        let e = d.authenticate(user, pw).await.unwrap_err();
        assert_eq!(e, DirectoryError::InvalidCredentials, "{user:?}/{pw:?}");
    }
    assert!(d.authenticate("bob", "bob-pw-1").await.is_ok());
}

#[tokio::test]
async fn ppolicy_locks_and_administrative_locks_are_seen() {
    let s = Slapd::start().await.unwrap();
    let carol = s.add_user("carol", "carol-pw-1").await.unwrap();
    let dave = s.add_user("dave", "dave-pw-1").await.unwrap();
    let d = directory(&s, &[s.url()], "", "");
    let id = d.authenticate("carol", "carol-pw-1").await.unwrap().id;
    // Three failed binds lock carol (the policy's pwdMaxFailure); the right password then
    // fails like a wrong one, and a re-read shows the lock.
    for _ in 0..3 {
        assert!(!s.bind(&carol, "wrong").await.unwrap());
    }
    assert_eq!(
        d.authenticate("carol", "carol-pw-1").await.unwrap_err(),
        DirectoryError::InvalidCredentials
    );
    assert_eq!(
        d.user_by_id(&id).await.unwrap().unwrap().status,
        DirectoryStatus::Locked
    );
    // An administrative lock (ppolicy's 000001010000Z) reads as disabled.
    let id = d.authenticate("dave", "dave-pw-1").await.unwrap().id;
    s.modify(&format!(
        "dn: {dave}\nchangetype: modify\nadd: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n"
    ))
    .await
    .unwrap();
    assert_eq!(
        d.user_by_id(&id).await.unwrap().unwrap().status,
        DirectoryStatus::Disabled
    );
}

#[tokio::test]
async fn member_of_direct_groups_with_iterative_nesting() {
    let s = Slapd::start().await.unwrap();
    let erin = s.add_user("erin", "erin-pw-1").await.unwrap();
    let a = s.add_group("a", &[&erin]).await.unwrap();
    s.add_group("b", &[&a]).await.unwrap();
    let d = directory(&s, &[s.url()], "", "direct: member_of");
    let u = d.authenticate("erin", "erin-pw-1").await.unwrap();
    assert_eq!(u.groups, ["a", "b"]);
}

#[tokio::test]
async fn failover_tls_and_restart() {
    let mut s = Slapd::start().await.unwrap();
    s.add_user("frank", "frank-pw-1").await.unwrap();
    let dead = format!("ldap://127.0.0.1:{}", free_port().unwrap());
    // The first URL is dead: the second serves.
    let d = directory(&s, &[dead.clone(), s.url()], "", "");
    assert!(d.authenticate("frank", "frank-pw-1").await.is_ok());
    // LDAPS and StartTLS, each with the test CA.
    let d = directory(&s, &[s.ldaps_url()], "", "");
    assert!(d.authenticate("frank", "frank-pw-1").await.is_ok());
    let d = directory(&s, &[s.url()], "start_tls: true", "");
    assert!(d.authenticate("frank", "frank-pw-1").await.is_ok());
    // Bracketed IPv6 literals, with LDAPS and with StartTLS (the certificate names ::1).
    let (ldap6, ldaps6) = s.ipv6_urls();
    let d = directory(&s, &[ldaps6], "", "");
    assert!(d.authenticate("frank", "frank-pw-1").await.is_ok());
    let d = directory(&s, &[ldap6], "start_tls: true", "");
    assert!(d.authenticate("frank", "frank-pw-1").await.is_ok());
    // A CA that did not issue the server's certificate: no connection, a clear error.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = idbridge_tests::ldap::test_ca(other.path(), "other").unwrap();
    let yaml = s.directory_yaml(&[s.ldaps_url()], "", "").replace(
        &s.ca_file.display().to_string(),
        &other_ca.display().to_string(),
    );
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    let bad =
        LdapDirectory::new(&serde_yaml_ng::from_value(v["directory"].clone()).unwrap()).unwrap();
    match bad.authenticate("frank", "frank-pw-1").await.unwrap_err() {
        DirectoryError::Unavailable(m) => assert!(m.contains("no directory server"), "{m}"),
        e => panic!("{e:?}"),
    }
    // The same over IPv6: the address's certificate is checked, not skipped.
    let yaml6 = yaml.replace(&s.ldaps_url(), &s.ipv6_urls().1);
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml6).unwrap();
    let bad6 =
        LdapDirectory::new(&serde_yaml_ng::from_value(v["directory"].clone()).unwrap()).unwrap();
    match bad6.authenticate("frank", "frank-pw-1").await.unwrap_err() {
        DirectoryError::Unavailable(m) => assert!(m.contains("no directory server"), "{m}"),
        e => panic!("{e:?}"),
    }
    // The server goes away: a clear "unavailable", never a wrong answer.
    let d = directory(&s, &[s.url()], "", "");
    assert!(d.authenticate("frank", "frank-pw-1").await.is_ok());
    s.stop().await.unwrap();
    match d.authenticate("frank", "frank-pw-1").await.unwrap_err() {
        DirectoryError::Unavailable(m) => assert!(m.contains(&s.url()), "{m}"),
        e => panic!("{e:?}"),
    }
    // It comes back: the pool drops its dead connections and logs in again.
    s.restart().await.unwrap();
    assert!(d.authenticate("frank", "frank-pw-1").await.is_ok());
    // A restart while connections are pooled and idle.
    s.restart().await.unwrap();
    assert!(d.authenticate("frank", "frank-pw-1").await.is_ok());
}

#[tokio::test]
async fn a_snapshot_reads_everyone_paged_with_the_groups_a_login_sees_or_fails_whole() {
    let mut s = Slapd::start().await.unwrap();
    let mut people = Vec::new();
    for n in 0..7 {
        people.push(s.add_user(&format!("user{n}"), "pw-pw-pw-1").await.unwrap());
    }
    // user0 ∈ dev ∈ eng ∈ staff ∈ eng (a cycle); user1 ∈ ops; user2 ∈ dev and ops.
    let dev = s.add_group("dev", &[&people[0], &people[2]]).await.unwrap();
    s.add_group("ops", &[&people[1], &people[2]]).await.unwrap();
    let eng = s.add_group("eng", &[&dev]).await.unwrap();
    let staff = s.add_group("staff", &[&eng]).await.unwrap();
    s.modify(&format!(
        "dn: {eng}\nchangetype: modify\nadd: member\nmember: {staff}\n"
    ))
    .await
    .unwrap();
    // user3 is locked by an administrator: no groups, status disabled.
    s.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n",
        people[3]
    ))
    .await
    .unwrap();
    // Pages of 2 entries: every search runs over several pages.
    let d = directory(&s, &[s.url()], "", "page_size: 2");
    let seen = std::sync::Mutex::new(Vec::new());
    let snap = d
        .snapshot(&|phase, n| seen.lock().unwrap().push((phase, n)))
        .await
        .unwrap();
    assert_eq!(snap.users.len(), 7, "{:?}", snap.skipped);
    assert_eq!(snap.groups.len(), 4);
    assert!(snap.skipped.is_empty(), "{:?}", snap.skipped);
    assert!(snap.identity.base_id.is_some());
    // Nesting comes from the group entries read once: no search per user or per level.
    assert_eq!(snap.searches, 3, "groups, users and the base entry");
    assert!(seen.lock().unwrap().contains(&(ReadPhase::Users, 7)));
    // Each user's groups are what a login resolves.
    for u in &snap.users {
        let live = d.user_by_id(&u.id).await.unwrap().unwrap();
        let mut mine: Vec<&str> = snap.group_names(u).collect();
        mine.sort_unstable();
        assert_eq!(mine, live.groups, "{}", u.name);
        assert_eq!(u.status, live.status, "{}", u.name);
    }
    let by_name = |n: &str| snap.users.iter().find(|u| u.name == n).unwrap();
    assert_eq!(by_name("user3").status, DirectoryStatus::Disabled);
    assert_eq!(
        snap.group_names(by_name("user2")).count(),
        4,
        "dev, ops, eng, staff"
    );

    // The directory stops in the middle of the read: the snapshot is an error, not a short one.
    let pid = s.pid().unwrap();
    let killed = std::sync::atomic::AtomicBool::new(false);
    let err = d
        .snapshot(&|phase, _| {
            if phase == ReadPhase::Groups && !killed.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()
                    .unwrap();
            }
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DirectoryError::Unavailable(_)
                | DirectoryError::NoAnswer(_)
                | DirectoryError::Failed(_)
        ),
        "{err:?}"
    );
    s.restart().await.unwrap();
    assert_eq!(d.snapshot(&|_, _| {}).await.unwrap().users.len(), 7);

    // Part of the tree held by another server (a referral): the read is short, so it fails.
    s.add_referral(
        &format!("ou=elsewhere,ou=people,{}", idbridge_tests::ldap::SUFFIX),
        "ldap://ldap.elsewhere.example/ou=people,dc=elsewhere",
    )
    .await
    .unwrap();
    let err = d.snapshot(&|_, _| {}).await.unwrap_err();
    assert!(err.to_string().contains("referral"), "{err}");
}
