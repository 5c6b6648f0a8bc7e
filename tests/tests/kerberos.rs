//! Kerberos single sign-on against the real binary and a real MIT KDC: `kinit`, then
//! `idbridge login` (or `curl --negotiate` on `/login`), then TokenReview; tickets that are
//! missing, expired, for an unlisted realm or for a key the keytab lacks; a keytab rotated on
//! disk; groups from the directory. Garbage, NTLM and replayed tokens are in attacks.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use idbridge_tests::Idbridge;
use idbridge_tests::kdc::{Kdc, curl_negotiate_token};
use idbridge_tests::kube::{ApiServer, Authn};
use serde_json::Value;
use tokio::process::Command;

const REALM: &str = "IDBRIDGE.TEST";
const ALICE_PW: &str = "alice-kerberos-pw";

/// A realm with the services `HTTP/localhost` and `HTTP/idbridge.test` (one server, two names)
/// in one keytab, and the user alice.
struct Realm {
    kdc: Kdc,
    keytab: PathBuf,
}

async fn realm() -> Realm {
    let kdc = Kdc::start(REALM).await.unwrap();
    kdc.add_service("HTTP/localhost").await.unwrap();
    kdc.add_service("HTTP/idbridge.test").await.unwrap();
    let keytab = kdc.dir().join("http.keytab");
    kdc.export_keytab(&keytab, &["HTTP/localhost", "HTTP/idbridge.test"])
        .await
        .unwrap();
    kdc.add_user("alice", ALICE_PW).await.unwrap();
    Realm { kdc, keytab }
}

impl Realm {
    /// alice's ticket cache, freshly kinit'ed.
    async fn alice(&self) -> PathBuf {
        self.kinit("alice", ALICE_PW).await
    }

    /// A fresh ticket cache of `who@REALM`.
    async fn kinit(&self, who: &str, password: &str) -> PathBuf {
        let cc = self.kdc.dir().join(format!("{}.cc", who.replace('/', "-")));
        self.kdc
            .kinit(&format!("{who}@{REALM}"), password, &cc, None)
            .await
            .unwrap();
        cc
    }

    fn yaml(&self, extra: &str) -> String {
        format!(
            "bootstrap_admin: true\nsessions:\n  refresh_grace: 0s\nkerberos:\n  keytab: {}\n  realms: [{REALM}]\n{extra}",
            self.keytab.display()
        )
    }

    /// Serves with an accounts file holding alice, linked to her principal, in `groups`.
    async fn serve_alice_in(&self, dir: &Path, groups: &str) -> Idbridge {
        let accounts = dir.join("accounts.yaml");
        std::fs::write(
            &accounts,
            format!(
                "- name: alice\n  groups: [{groups}]\n  identities: [{{kind: kerberos, principal: alice@{REALM}}}]\n"
            ),
        )
        .unwrap();
        self.serve(dir, &format!("accounts_file: {}\n", accounts.display()))
            .await
    }

    async fn serve(&self, dir: &Path, extra: &str) -> Idbridge {
        Idbridge::start_with(
            dir,
            idbridge_tests::Options {
                config: Some(self.yaml(extra)),
                env: self.kdc.env(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
    }
}

/// The server's URL with the host name its service principal has.
fn localhost(i: &Idbridge) -> String {
    i.base.replace("127.0.0.1", "localhost")
}

/// Runs `idbridge login` as a user with the ticket cache `ccache`.
async fn login(
    realm: &Realm,
    i: &Idbridge,
    ccache: &Path,
    extra: &[&str],
) -> (i32, String, String) {
    let out = Command::new(idbridge_tests::idbridge_bin())
        .args([
            "login",
            "--method",
            "kerberos",
            "--issuer",
            &localhost(i),
            "--ca-file",
        ])
        .arg(i.data_dir.join("ca.crt"))
        .arg("--cache-dir")
        .arg(i.root.join("login-cache"))
        .args(extra)
        .envs(realm.kdc.env())
        .env("KRB5CCNAME", format!("FILE:{}", ccache.display()))
        .env_remove("KUBERNETES_EXEC_INFO")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

use idbridge_tests::text as s;

#[tokio::test]
async fn kinit_then_login_gives_a_token_that_tokenreview_accepts() {
    let realm = realm().await;
    let dir = idbridge_tests::scratch();
    let i = realm.serve_alice_in(dir.path(), "dev, ops").await;
    let discovery = i
        .get_json("/.well-known/openid-configuration")
        .await
        .unwrap();
    assert!(
        discovery["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&"urn:idbridge:params:oauth:grant-type:kerberos".into()),
        "{discovery}"
    );
    let cc = realm.alice().await;
    let (code, out, err) = login(&realm, &i, &cc, &["--output", "token"]).await;
    assert_eq!(code, 0, "{err}");
    let token = out.trim();
    let review = i.review(token, &[]).await.unwrap();
    assert_eq!(review["authenticated"], true, "{review}");
    assert_eq!(review["user"]["username"], "alice");
    assert_eq!(review["user"]["groups"], serde_json::json!(["dev", "ops"]));
    assert_eq!(
        review["user"]["extra"]["idbridge.io/amr"],
        serde_json::json!(["krb5"])
    );
    assert_eq!(
        review["user"]["uid"],
        i.account_uid("alice", false).await.unwrap().as_str()
    );
    // The server's other name, as behind a load balancer: its key is in the same keytab.
    let (code, out, err) = login(
        &realm,
        &i,
        &cc,
        &[
            "--service",
            "HTTP@idbridge.test",
            "--fresh",
            "--output",
            "token",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let review = i.review(out.trim(), &[]).await.unwrap();
    assert_eq!(review["user"]["username"], "alice", "{review}");
    let klist = Command::new("klist")
        .arg("-c")
        .arg(&cc)
        .envs(realm.kdc.env())
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&klist.stdout).contains("HTTP/idbridge.test@"),
        "the ticket was for the other name"
    );
}

/// `curl --negotiate` on `/login` with the ticket cache `ccache`: status, headers and body.
async fn curl_login(realm: &Realm, i: &Idbridge, ccache: &Path) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "--negotiate", "-u", ":", "-D", "-", "--cacert"])
        .arg(i.data_dir.join("ca.crt"))
        .arg(format!("{}/login", localhost(i)))
        .envs(realm.kdc.env())
        .env("KRB5CCNAME", format!("FILE:{}", ccache.display()))
        .output()
        .await
        .expect("curl is installed by scripts/setup");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // With --negotiate curl prints the 401 challenge's headers too: keep the last response.
    let last = text.rfind("HTTP/").map_or(text.as_str(), |n| &text[n..]);
    let (head, body) = last.split_once("\r\n\r\n").unwrap_or((last, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// How many sessions `user` has.
async fn sessions(i: &Idbridge, user: &str) -> usize {
    let out = i
        .cli_ok(&["session", "list", "--user", user, "--json"])
        .await
        .unwrap();
    serde_json::from_str::<Vec<Value>>(&out).unwrap().len()
}

/// A DER item, for hand-made tokens.
#[tokio::test]
async fn the_session_is_cached_refreshed_and_used_by_kubectl() {
    let realm = realm().await;
    let dir = idbridge_tests::scratch();
    let i = realm.serve_alice_in(dir.path(), "idbridge-admins").await;
    let cc = realm.alice().await;
    let (code, out, err) = login(&realm, &i, &cc, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("logged in as alice;"), "{out}");
    // Again: the cached access token, no new session.
    let (code, _, err) = login(&realm, &i, &cc, &["--output", "token"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(sessions(&i, "alice").await, 1);
    let (code, _, err) = login(&realm, &i, &cc, &["--fresh"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(sessions(&i, "alice").await, 2);

    // kubectl runs `idbridge login` as its exec credential plugin and sends the token to a real
    // kube-apiserver wired to this idbridge by its generated webhook.kubeconfig.
    let mut env = realm.kdc.env();
    env.push(("KRB5CCNAME".into(), format!("FILE:{}", cc.display())));
    let user = format!(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {bin}\n      args: [login, --issuer, {issuer}, --ca-file, {ca}, --cache-dir, {cache}]\n      interactiveMode: Never\n",
        issuer = localhost(&i),
        ca = i.data_dir.join("ca.crt").display(),
        bin = idbridge_tests::idbridge_bin().display(),
        cache = dir.path().join("kubectl-cache").display(),
    );
    let api = ApiServer::start(dir.path(), Authn::webhook(&i.data_dir))
        .await
        .unwrap();
    let kubeconfig = api.kubeconfig("kubeconfig-exec", &user).unwrap();
    let who = api.whoami_with(&kubeconfig, &env).await.unwrap();
    assert_eq!(who["username"], "alice", "{who}");
    assert_eq!(sessions(&i, "alice").await, 3);
}

#[tokio::test]
async fn missing_expired_and_unknown_tickets_say_what_to_do() {
    let realm = realm().await;
    let dir = idbridge_tests::scratch();
    let i = realm.serve(dir.path(), "").await;
    let none = realm.kdc.dir().join("no-such.cc");
    let (code, _, err) = login(&realm, &i, &none, &[]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("no Kerberos ticket") && err.contains("run kinit"),
        "{err}"
    );

    let cc = realm.alice().await;
    let (code, _, err) = login(&realm, &i, &cc, &["--service", "HTTP@nosuch.example"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("knows no service principal for HTTP@nosuch.example"),
        "{err}"
    );

    let short = realm.kdc.dir().join("short.cc");
    realm
        .kdc
        .kinit(&format!("alice@{REALM}"), ALICE_PW, &short, Some("2s"))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (code, _, err) = login(&realm, &i, &short, &[]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("expired") && err.contains("run kinit"),
        "{err}"
    );
    // No session was started by any of these.
    let audit = i.audit_log();
    assert!(!audit.contains("\"session.start\""), "{audit}");
}

#[tokio::test]
async fn unlisted_realms_and_unmapped_principals_are_refused() {
    let realm = realm().await;
    realm.kdc.add_user("bob/admin", "bob-pw").await.unwrap();
    realm.kdc.add_user("carol/root", "carol-pw").await.unwrap();
    let dir = idbridge_tests::scratch();
    let i = realm
        .serve(
            dir.path(),
            "  rules:\n    - match: '([^/@]+)/admin@IDBRIDGE\\.TEST'\n      name: '$1-admin'\n",
        )
        .await;
    let bob = realm.kinit("bob/admin", "bob-pw").await;
    let (code, out, err) = login(&realm, &i, &bob, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("logged in as bob-admin;"), "{out}");
    // A jit account, linked to the principal.
    let users = i.cli_ok(&["user", "list", "--json"]).await.unwrap();
    assert!(users.contains(&format!("bob/admin@{REALM}")), "{users}");
    let carol = realm.kinit("carol/root", "carol-pw").await;
    let (code, _, err) = login(&realm, &i, &carol, &[]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no mapping rule"), "{err}");

    // The same realm, not listed: refused before any account is looked at.
    let dir2 = idbridge_tests::scratch();
    let other = Idbridge::start_with(
        dir2.path(),
        idbridge_tests::Options {
            config: Some(
                realm
                    .yaml("")
                    .replace(&format!("realms: [{REALM}]"), "realms: [OTHER.TEST]"),
            ),
            env: realm.kdc.env(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let cc = realm.alice().await;
    let (code, _, err) = login(&realm, &other, &cc, &[]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("realm \"IDBRIDGE.TEST\" may not log in here"),
        "{err}"
    );
    let users = other.cli_ok(&["user", "list", "--json"]).await.unwrap();
    assert!(!users.contains("alice"), "{users}");
}

#[tokio::test]
async fn negotiate_on_login_and_a_keytab_rotated_on_disk() {
    let realm = realm().await;
    let dir = idbridge_tests::scratch();
    let i = realm.serve(dir.path(), "").await;
    let r = i.http.get(i.url("/login")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Negotiate");

    let cc = realm.alice().await;
    let (st, head, body) = curl_login(&realm, &i, &cc).await;
    assert_eq!(st, 200, "{head}{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: negotiate "),
        "no mutual token: {head}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    let review = i.review(&s(&v, "access_token"), &[]).await.unwrap();
    assert_eq!(review["user"]["username"], "alice", "{review}");

    // The service gets a new key; the server's keytab still has the old one: 401.
    realm.kdc.rotate_key("HTTP/localhost").await.unwrap();
    let cc2 = realm.kdc.dir().join("alice-2.cc");
    realm
        .kdc
        .kinit(&format!("alice@{REALM}"), ALICE_PW, &cc2, None)
        .await
        .unwrap();
    let (st, head, body) = curl_login(&realm, &i, &cc2).await;
    assert_eq!(st, 401, "{head}{body}");
    assert!(body.contains("no key for the service ticket"), "{body}");
    let (code, _, err) = login(&realm, &i, &cc2, &[]).await;
    assert_ne!(code, 0);
    assert!(err.contains("update the keytab"), "{err}");

    // The new keytab replaces the old on disk (as a deployment would): accepted, no restart.
    let fresh = realm.kdc.dir().join("http.keytab.new");
    realm
        .kdc
        .export_keytab(&fresh, &["HTTP/localhost"])
        .await
        .unwrap();
    std::fs::rename(&fresh, &realm.keytab).unwrap();
    let (st, head, body) = curl_login(&realm, &i, &cc2).await;
    assert_eq!(st, 200, "{head}{body}");
    let (code, _, err) = login(&realm, &i, &cc2, &["--fresh"]).await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn bad_kerberos_settings_name_the_field() {
    let realm = realm().await;
    let dir = idbridge_tests::scratch();
    let empty = dir.path().join("empty.keytab");
    std::fs::write(&empty, b"").unwrap();
    for (yaml, field) in [
        (
            "kerberos:\n  keytab: /nonexistent/http.keytab\n  realms: [A.TEST]\n".to_owned(),
            "kerberos.keytab",
        ),
        (
            format!(
                "kerberos:\n  keytab: {}\n  realms: [A.TEST]\n",
                empty.display()
            ),
            "kerberos.keytab",
        ),
        (realm.yaml("  groups: directory\n"), "kerberos.groups"),
        (
            realm.yaml("  rules: [{match: '(unclosed', name: x}]\n"),
            "kerberos.rules[0].match",
        ),
        (
            realm.yaml("").replace(&format!("[{REALM}]"), "[]"),
            "kerberos.realms",
        ),
    ] {
        let cfg = dir.path().join("bad.yaml");
        std::fs::write(&cfg, &yaml).unwrap();
        let out = Command::new(idbridge_tests::idbridge_bin())
            .args(["serve", "--check", "--config"])
            .arg(&cfg)
            .envs(realm.kdc.env())
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{yaml}: {err}");
        assert!(err.contains(field), "{yaml}: {err}");
    }
}

#[tokio::test]
async fn groups_from_the_directory_and_refresh_rechecks_it() {
    use idbridge_tests::ldap::Slapd;
    let realm = realm().await;
    let slapd = Slapd::start().await.unwrap();
    let alice = slapd.add_user("alice", "alice-ldap-pw").await.unwrap();
    slapd
        .modify(&format!(
            "dn: {alice}\nchangetype: modify\nadd: objectClass\nobjectClass: krbPrincipalAux\n-\nadd: krbPrincipalName\nkrbPrincipalName: alice@{REALM}\n"
        ))
        .await
        .unwrap();
    let dev = slapd.add_group("dev", &[&alice]).await.unwrap();
    slapd.add_group("eng", &[&dev]).await.unwrap();
    let dir = idbridge_tests::scratch();
    let i = realm
        .serve(
            dir.path(),
            &format!(
                "  groups: directory\n{}",
                slapd.directory_yaml(&[slapd.url()], "", "")
            ),
        )
        .await;
    let cc = realm.alice().await;
    let (code, out, err) = login(&realm, &i, &cc, &["--output", "token"]).await;
    assert_eq!(code, 0, "{err}");
    let review = i.review(out.trim(), &[]).await.unwrap();
    assert_eq!(review["user"]["username"], "alice", "{review}");
    assert_eq!(review["user"]["groups"], serde_json::json!(["dev", "eng"]));
    // One account whichever way alice logs in: the password login finds the same UID.
    let (st, pair) = i
        .password_login_json("alice", "alice-ldap-pw")
        .await
        .unwrap();
    assert_eq!(st, 200, "{pair}");
    let by_password = i.review(&s(&pair, "access_token"), &[]).await.unwrap();
    assert_eq!(by_password["user"]["uid"], review["user"]["uid"]);
    let users = i.cli_ok(&["user", "list", "--json"]).await.unwrap();
    assert!(users.contains(&format!("alice@{REALM}")), "{users}");

    // The Kerberos session's refresh asks the directory again: a new group shows, a lock ends it.
    let cached = std::fs::read_dir(i.root.join("login-cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    let cached: Value = serde_json::from_slice(&std::fs::read(cached).unwrap()).unwrap();
    slapd.add_group("ops", &[&alice]).await.unwrap();
    let (st, next) = i.refresh(&s(&cached, "refresh_token")).await.unwrap();
    assert_eq!(st, 200, "{next}");
    let review = i.review(&s(&next, "access_token"), &[]).await.unwrap();
    assert_eq!(
        review["user"]["groups"],
        serde_json::json!(["dev", "eng", "ops"])
    );
    slapd
        .modify(&format!(
            "dn: {alice}\nchangetype: modify\nadd: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n"
        ))
        .await
        .unwrap();
    let (st, v) = i.refresh(&s(&next, "refresh_token")).await.unwrap();
    assert_eq!(st, 400, "{v}");
    assert!(s(&v, "error_description").contains("revoked"), "{v}");
    // And a new Kerberos login is refused while the entry is locked.
    let (code, _, err) = login(&realm, &i, &cc, &["--fresh"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("the directory account is"), "{err}");
}

#[tokio::test]
async fn the_login_page_offers_kerberos_and_negotiate_ends_in_a_code() {
    use idbridge_tests::oidc::{Browser, cli_authorize_url, query_param};
    let realm = realm().await;
    let dir = idbridge_tests::scratch();
    let i = realm.serve_alice_in(dir.path(), "dev").await;
    let b = Browser::new(&[&i.data_dir.join("ca.crt")]).unwrap();
    let verifier = "k".repeat(43);
    let redirect = "http://127.0.0.1:38113/cb";
    let page = b
        .get(&cli_authorize_url(&i.base, redirect, &verifier))
        .await
        .unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    // The only method offered is a link carrying the page's CSRF token.
    assert!(
        page.input("csrf").is_none(),
        "no form without upstreams or a directory"
    );
    let at = page
        .body
        .find("/login/kerberos?csrf=")
        .expect("a Kerberos link");
    let href = &page.body[at..at + page.body[at..].find('"').unwrap()];
    let link = i.url(href);
    // The browser is challenged first, as RFC 4559 has it.
    let challenged = b.get(&link).await.unwrap();
    assert_eq!(challenged.status, 401);
    assert_eq!(challenged.headers["www-authenticate"], "Negotiate");
    // A forged link (no CSRF token of this page) is refused before any ticket is looked at.
    let forged = b.get(&i.url("/login/kerberos?csrf=x")).await.unwrap();
    assert_eq!(forged.status, 403);
    let cc = realm.alice().await;
    let token = curl_negotiate_token(&realm.kdc.env(), &cc, "localhost")
        .await
        .unwrap();
    let auth = format!("Negotiate {}", STANDARD.encode(token));
    let done = b
        .get_with(&link, &[("authorization", &auth)])
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
    assert_eq!(
        review["user"]["extra"]["idbridge.io/amr"],
        serde_json::json!(["krb5"])
    );
}
