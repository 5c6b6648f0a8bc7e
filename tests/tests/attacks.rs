//! One test per attack class, named for it, against the real binary and real servers.
//! docs/security.md maps each control of the threat model to the test here that proves it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use std::time::Duration;

use idbridge_tests::{Idbridge, client_trusting, scratch, text, text as s};
use serde_json::Value;

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const STATIC: &str = "urn:idbridge:params:oauth:token-type:static";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A server with accounts alice (dev, ops) and helm-bot (robots), from an accounts file.
async fn with_accounts(dir: &std::path::Path, extra: &str) -> Idbridge {
    Idbridge::start_with_accounts(
        dir,
        "- name: alice\n  groups: [dev, ops]\n- name: helm-bot\n  groups: [robots]\n",
        extra,
    )
    .await
    .unwrap()
}

async fn authenticated(i: &Idbridge, token: &str, aud: &[&str]) -> bool {
    i.review(token, aud).await.unwrap()["authenticated"] == true
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

/// The server's URL with the host name of its Kerberos service principal.
fn localhost(i: &Idbridge) -> String {
    i.base.replace("127.0.0.1", "localhost")
}

/// An HTTP client trusting the server's CA, to be configured further.
fn client(i: &Idbridge) -> reqwest::ClientBuilder {
    reqwest::Client::builder().add_root_certificate(
        reqwest::Certificate::from_pem(&std::fs::read(i.data_dir.join("ca.crt")).unwrap()).unwrap(),
    )
}

/// A realm with the service `HTTP/localhost` in a keytab, and `user` with `password`.
async fn http_realm(
    realm: &str,
    user: &str,
    password: &str,
) -> (idbridge_tests::kdc::Kdc, std::path::PathBuf) {
    let kdc = idbridge_tests::kdc::Kdc::start(realm).await.unwrap();
    kdc.add_service("HTTP/localhost").await.unwrap();
    let keytab = kdc.dir().join("http.keytab");
    kdc.export_keytab(&keytab, &["HTTP/localhost"])
        .await
        .unwrap();
    kdc.add_user(user, password).await.unwrap();
    (kdc, keytab)
}

/// Posts the password grant from the loopback address `from` (127.0.0.0/8 is all loopback).
async fn password_from(i: &Idbridge, from: &str, user: &str, password: &str) -> (u16, Value) {
    let http = client(i)
        .local_address(Some(from.parse().unwrap()))
        .build()
        .unwrap();
    let r = http
        .post(i.url("/oauth2/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Parallel wrong passwords from several addresses, under every spelling of the name, never
/// make the directory lock the account (its ppolicy locks after 3 failures); the user's password
/// logins are refused for a window, and Kerberos still logs her in.
#[tokio::test]
async fn lockout_through_idbridge() {
    use idbridge_tests::ldap::Slapd;
    const REALM: &str = "IDBRIDGE.TEST";
    let (kdc, keytab) = http_realm(REALM, "dave", "dave-krb-pw").await;
    let slapd = Slapd::start().await.unwrap();
    let dave = slapd.add_user("dave", "dave-ldap-pw").await.unwrap();
    slapd
        .modify(&format!(
            "dn: {dave}\nchangetype: modify\nadd: objectClass\nobjectClass: krbPrincipalAux\n-\nadd: krbPrincipalName\nkrbPrincipalName: dave@{REALM}\n"
        ))
        .await
        .unwrap();
    let dir = scratch();
    let i = Idbridge::start_with(
        dir.path(),
        idbridge_tests::Options {
            config: Some(format!(
                "kerberos:\n  keytab: {}\n  realms: [{REALM}]\n  groups: directory\n{}",
                keytab.display(),
                slapd.directory_yaml(
                    &[slapd.ldaps_url()],
                    "throttle:\n  per_source: 100\n  per_user_source: 100\n  per_user: 2\n  per_user_window: 10m",
                    ""
                )
            )),
            env: kdc.env(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Twelve wrong passwords at once, from four addresses, under four spellings of the name:
    // two reach the directory, the rest wait for them and are refused.
    let mut burst = Vec::new();
    for n in 0..12 {
        let from = format!("127.0.0.{}", 1 + n % 4);
        let name = ["dave", " dave", "dave ", "DAVE"][n % 4];
        let i = &i;
        burst.push(async move { password_from(i, &from, name, "wrong-pw").await });
    }
    let mut statuses: Vec<u16> = join_all(burst).await.iter().map(|a| a.0).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [[400; 2].as_slice(), &[429; 10]].concat());
    let entry = slapd
        .read(&dave, &["pwdAccountLockedTime", "pwdFailureTime"])
        .await
        .unwrap();
    assert!(!entry.contains("pwdAccountLockedTime"), "{entry}");
    assert!(
        entry.matches("pwdFailureTime").count() <= 2,
        "more failed binds than the budget reached the directory: {entry}"
    );
    // Even the right password is refused for the window; the answer is the same for a name
    // nobody has once its budget is spent.
    let (st, _) = password_from(&i, "127.0.0.9", "dave", "dave-ldap-pw").await;
    assert_eq!(st, 429);
    for _ in 0..3 {
        let _ = password_from(&i, "127.0.0.5", "nobody", "wrong-pw").await;
    }
    let (st, nobody) = password_from(&i, "127.0.0.6", "nobody", "wrong-pw").await;
    let (_, known) = password_from(&i, "127.0.0.6", "dave", "wrong-pw").await;
    assert_eq!(st, 429);
    assert_eq!(nobody["error"], known["error"]);
    // Kerberos goes on.
    let cc = kdc.dir().join("dave.cc");
    kdc.kinit(&format!("dave@{REALM}"), "dave-krb-pw", &cc, None)
        .await
        .unwrap();
    let out = tokio::process::Command::new(idbridge_tests::idbridge_bin())
        .args(["login", "--issuer", &localhost(&i), "--ca-file"])
        .arg(i.data_dir.join("ca.crt"))
        .arg("--cache-dir")
        .arg(i.root.join("login-cache"))
        .args(["--output", "token"])
        .envs(kdc.env())
        .env("KRB5CCNAME", format!("FILE:{}", cc.display()))
        .env_remove("KUBERNETES_EXEC_INFO")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        i.review(&token, &[]).await.unwrap()["user"]["username"],
        "dave"
    );
    // No password reached a log line.
    let logs = format!("{}{}", i.log(), i.audit_log());
    assert!(!logs.contains("wrong-pw") && !logs.contains("dave-ldap-pw"));
}

async fn join_all<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.into_iter().map(Box::pin).collect();
    // Poll all at once: each future is driven by one join in a select loop.
    let mut done: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (k, f) in pinned.iter_mut().enumerate() {
            if done[k].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[k] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter()
        .map(|v| v.expect("every future finished"))
        .collect()
}

/// SHA-512-crypt of `password` with `rounds`, by the C library's crypt(3) through perl (part
/// of every Debian system).
async fn slow_hash(password: &str, rounds: u32) -> String {
    let out = tokio::process::Command::new("perl")
        .args([
            "-e",
            &format!("print crypt($ARGV[0], q($6$rounds={rounds}$idbridgesalt$))"),
            password,
        ])
        .output()
        .await
        .expect("perl runs");
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$6$rounds="), "crypt(3) made {hash:?}");
    hash
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Wrong password, unknown user and empty password get one answer, and an unknown user's
/// answer takes as long as a wrong password's on a directory that hashes slowly. The one test
/// allowed to measure time: it fails only past a generous ratio.
#[tokio::test]
async fn user_enumeration_by_body_and_timing() {
    use idbridge_tests::ldap::Slapd;
    let slapd = Slapd::start().await.unwrap();
    let hash = slow_hash("erin-pw-1", 400_000).await;
    let erin = format!("uid=erin,ou=people,{}", idbridge_tests::ldap::SUFFIX);
    // A policy that never locks, so every wrong password costs the hash.
    let policy = format!("cn=nolock,ou=policies,{}", idbridge_tests::ldap::SUFFIX);
    slapd
        .add(&format!(
            "dn: {policy}\nobjectClass: organizationalRole\nobjectClass: pwdPolicy\ncn: nolock\npwdAttribute: userPassword\npwdLockout: FALSE\npwdMaxFailure: 0\n\n\
             dn: {erin}\nobjectClass: inetOrgPerson\nuid: erin\ncn: erin\nsn: erin\nuserPassword: {{CRYPT}}{hash}\npwdPolicySubentry: {policy}\n"
        ))
        .await
        .unwrap();
    assert!(
        slapd.bind(&erin, "erin-pw-1").await.unwrap(),
        "slapd checks the crypt hash"
    );
    let dir = scratch();
    let i = Idbridge::start_config(
        dir.path(),
        slapd.directory_yaml(
            &[slapd.ldaps_url()],
            "throttle:\n  per_source: 1000\n  per_user_source: 1000\n  per_user: 1000",
            "",
        ),
    )
    .await
    .unwrap();
    let attempt = |user: &'static str, password: &'static str| {
        let i = &i;
        async move {
            let started = std::time::Instant::now();
            let (st, body) = i.password_login_json(user, password).await.unwrap();
            (st, body, started.elapsed().as_secs_f64())
        }
    };
    // Bodies: one answer for all three.
    let (st_wrong, wrong, _) = attempt("erin", "nope").await;
    let (st_unknown, unknown, _) = attempt("no-such-user", "nope").await;
    let (st_empty, empty, _) = attempt("erin", "").await;
    assert_eq!((st_wrong, st_unknown, st_empty), (400, 400, 400));
    assert_eq!(wrong, unknown);
    assert_eq!(wrong, empty);
    // Times: interleaved, after a few binds have shown what one costs.
    let (mut t_wrong, mut t_unknown) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        t_wrong.push(attempt("erin", "nope").await.2);
        t_unknown.push(attempt("no-such-user", "nope").await.2);
    }
    let (w, u) = (median(t_wrong), median(t_unknown));
    eprintln!("failed logins, medians: wrong password {w:.3} s, unknown user {u:.3} s");
    assert!(
        w < 3.0 * u && u < 3.0 * w,
        "wrong password {w:.3} s against unknown user {u:.3} s (medians)"
    );
}

/// Guessing device user codes: a handful of wrong codes from one address, then 429.
#[tokio::test]
async fn device_code_guessing() {
    use idbridge_tests::oidc::Browser;
    let dir = scratch();
    let i = Idbridge::start(dir.path()).await.unwrap();
    let (st, start) = i
        .oauth(
            "/oauth2/device_authorization",
            &[("client_id", "idbridge-cli")],
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{start}");
    let b = Browser::new(&[&i.data_dir.join("ca.crt")]).unwrap();
    let mut page = b.get(&i.url("/device")).await.unwrap();
    let mut statuses = Vec::new();
    for n in 0..12 {
        let csrf = page.input("csrf").unwrap_or_default();
        let guess = format!("BBBB-BB{}", ["BB", "BC", "BD", "BF"][n % 4]);
        page = b
            .post_form(&i.url("/device"), &[("csrf", &csrf), ("user_code", &guess)])
            .await
            .unwrap();
        statuses.push(page.status.as_u16());
        if page.status == 429 {
            assert!(page.headers.contains_key("retry-after"));
            // The next guess needs a fresh form.
            page = b.get(&i.url("/device")).await.unwrap();
        }
    }
    assert_eq!(&statuses[..10], &[400; 10], "{statuses:?}");
    assert_eq!(&statuses[10..], &[429; 2], "{statuses:?}");
    // Even the right code waits for the window from this address.
    let csrf = page.input("csrf").unwrap();
    let right = b
        .post_form(
            &i.url("/device"),
            &[("csrf", &csrf), ("user_code", &text(&start, "user_code"))],
        )
        .await
        .unwrap();
    assert_eq!(right.status, 429);
}

#[cfg(unix)]
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file that holds a secret is its owner's alone: the store and its WAL and shared
/// memory, the key-encryption key generated by default, keys, tokens; signing keys are sealed
/// at rest; a store left readable is tightened, a foreign data dir readable by others refused.
#[cfg(unix)]
#[tokio::test]
async fn secret_files_modes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch();
    let i = Idbridge::start(dir.path()).await.unwrap();
    let d = i.data_dir.clone();
    assert_eq!(mode(&d), 0o700);
    for f in [
        "idbridge.db",
        "idbridge.db-wal",
        "idbridge.db-shm",
        "kek",
        "ca.key",
        "tls.key",
        "admin.token",
        "webhook.token",
    ] {
        assert_eq!(mode(&d.join(f)), 0o600, "{f}");
    }
    let keys = i.cli_ok(&["keys", "list", "--json"]).await.unwrap();
    let keys: Value = serde_json::from_str(&keys).unwrap();
    let keys = keys.as_array().unwrap();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k["encrypted"] == true),
        "{keys:?}"
    );
    assert!(
        i.log().contains("back it up apart from the store"),
        "{}",
        i.log()
    );
    i.stop().await.unwrap();

    // An upgrade from a store left readable, or secret files loosened since: tightened, each
    // with a warning.
    for f in ["idbridge.db", "kek", "admin.token", "tls.key", "ca.key"] {
        std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let i = Idbridge::start(dir.path()).await.unwrap();
    for f in ["idbridge.db", "kek", "admin.token", "tls.key", "ca.key"] {
        assert_eq!(mode(&d.join(f)), 0o600, "{f}");
    }
    assert!(i.log().contains("made it 0600"), "{}", i.log());
    i.stop().await.unwrap();

    // A data dir others can read was not made by idbridge: refused as a configuration
    // problem (exit code 2), naming the fix.
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = Idbridge::start(dir.path()).await.unwrap_err().to_string();
    assert!(err.contains("insecure_store_permissions"), "{err}");
    let (code, _, err) = idbridge_tests::run_idbridge(&[
        "serve",
        "--data-dir",
        d.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .await
    .unwrap();
    assert_eq!(code, 2, "{err}");
    let i = Idbridge::start_config(
        dir.path(),
        "bootstrap_admin: true\ninsecure_store_permissions: true\n".into(),
    )
    .await
    .unwrap();
    assert!(
        i.log().contains("insecure_store_permissions"),
        "{}",
        i.log()
    );
    i.stop().await.unwrap();

    // A store whose signing keys were kept in the clear (before they were sealed by default):
    // sealed at the next start.
    use idbridge_core::KeyStore;
    let old = scratch();
    let data = old.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let store = idbridge_store::SqliteStore::open(&data.join("idbridge.db"))
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let policy = idbridge_tokens::KeyPolicy {
        rotate_every: 30 * 86_400,
        publish_lead: 86_400,
        retain: 3600,
    };
    let ring = idbridge_tokens::maintain(
        &[],
        idbridge_core::UnixTime(i64::try_from(now).unwrap()),
        &policy,
        idbridge_tokens::Rotate::Policy,
        None,
    )
    .unwrap()
    .unwrap();
    assert!(
        ring.iter().all(|k| k.sealed_by.is_none()),
        "kept in the clear"
    );
    store.replace_signing_keys(&ring).await.unwrap();
    drop(store);
    let i = Idbridge::start(old.path()).await.unwrap();
    let keys: Value =
        serde_json::from_str(&i.cli_ok(&["keys", "list", "--json"]).await.unwrap()).unwrap();
    let keys = keys.as_array().unwrap();
    assert!(
        keys.len() >= 2 && keys.iter().all(|k| k["encrypted"] == true),
        "{keys:?}"
    );
}

/// `ldap://` without StartTLS would send passwords in clear: refused unless the option that
/// says so is set, and then warned about.
#[tokio::test]
async fn plaintext_ldap() {
    use idbridge_tests::ldap::Slapd;
    let slapd = Slapd::start().await.unwrap();
    slapd.add_user("pat", "pat-pw-1").await.unwrap();
    let dir = scratch();
    let plain = slapd.directory_yaml(&[slapd.url()], "start_tls: false", "");
    let p = dir.path().join("plain.yaml");
    std::fs::write(&p, &plain).unwrap();
    let (code, _, err) =
        idbridge_tests::run_idbridge(&["serve", "--check", "--config", p.to_str().unwrap()])
            .await
            .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("directory.urls[0]") && err.contains("insecure_plaintext"),
        "{err}"
    );
    let i = Idbridge::start_config(
        dir.path(),
        slapd.directory_yaml(&[slapd.url()], "insecure_plaintext: true", ""),
    )
    .await
    .unwrap();
    assert!(i.log().contains("in clear"), "{}", i.log());
    let (st, v) = i.password_login_json("pat", "pat-pw-1").await.unwrap();
    assert_eq!(st, 200, "{v}");
}

/// Half-sent requests and idle connections are closed by the server's timers, and the
/// connection limit holds; `/metrics` counts them.
#[tokio::test]
async fn slowloris() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = scratch();
    let i = Idbridge::start_config(
        dir.path(),
        "bootstrap_admin: true\nlimits:\n  header_read_timeout: 2s\n  idle_timeout: 3s\n  max_connections: 60\n"
            .into(),
    )
    .await
    .unwrap();
    let tls = idbridge_tests::load::tls_client(&std::fs::read(i.data_dir.join("ca.crt")).unwrap())
        .unwrap();
    let port: u16 = i.base.rsplit(':').next().unwrap().parse().unwrap();
    let started = std::time::Instant::now();
    let mut held = Vec::new();
    for n in 0..50 {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        // Half the connections send half a request; the rest send nothing at all.
        if n % 2 == 0 {
            s.write_all(b"POST /oauth2/token HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                .await
                .unwrap();
        }
        held.push(s);
    }
    // Every one of them is closed by the server, well before 45 s.
    for mut s in held {
        let mut buf = [0u8; 512];
        let end = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "a connection stayed open");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // The server still answers, and says what it closed.
    let idle = metric(&i, "idbridge_connections_closed_total{reason=\"idle\"}").await;
    assert!(idle >= 25, "{idle} connections closed as idle");
    let half = metric(
        &i,
        "idbridge_connections_closed_total{reason=\"header_timeout\"}",
    )
    .await;
    assert!(
        half >= 25,
        "{half} half-sent requests closed by the header timeout"
    );
}

/// Every early refusal (401, 403, 413, 415, 429) reaches an HTTP/2 client as its answer
/// (status and body), never as a reset stream; `curl`, as kube-apiserver, speaks HTTP/2.
#[tokio::test]
async fn refusals_over_http2() {
    let dir = scratch();
    let i = Idbridge::start(dir.path()).await.unwrap();
    let ca = i.data_dir.join("ca.crt");
    let big = dir.path().join("big.json");
    let review = format!(
        "{{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\",\"spec\":{{\"token\":\"{}\"}}}}",
        "x".repeat(60_000)
    );
    std::fs::write(&big, &review).unwrap();
    let form = dir.path().join("big.form");
    std::fs::write(&form, format!("token=idb_rt_{}", "x".repeat(60_000))).unwrap();
    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, "x".repeat(300_000)).unwrap();
    i.cli_ok(&["user", "add", "bob"]).await.unwrap();
    let bob = i.create_token("bob", false).await.unwrap();
    // curl arguments: an optional Authorization header, a content type, a body file.
    let post = |auth: Option<&str>, content_type: &str, body: &std::path::Path| {
        let mut v = Vec::new();
        if let Some(a) = auth {
            v.extend(["-H".to_owned(), format!("Authorization: Bearer {a}")]);
        }
        v.extend([
            "-H".to_owned(),
            format!("Content-Type: {content_type}"),
            "--data-binary".to_owned(),
            format!("@{}", body.display()),
        ]);
        v
    };
    let (admin, webhook) = (i.admin_token(), i.webhook_token());
    let json = "application/json";
    let cases: Vec<(&str, Vec<String>, u16)> = vec![
        // No caller credentials; a caller that is no webhook caller.
        ("/webhooks/tokenreview", post(None, json, &big), 401),
        ("/webhooks/tokenreview", post(Some(&admin), json, &big), 401),
        // Authenticated, not an admin.
        ("/admin/v1/accounts", post(Some(&bob), json, &big), 403),
        // Too large; not JSON.
        (
            "/webhooks/tokenreview",
            post(Some(&webhook), json, &huge),
            413,
        ),
        (
            "/webhooks/tokenreview",
            post(Some(&webhook), "text/plain", &big),
            415,
        ),
        // Over a rate limit: revocations from this address, spent below.
        (
            "/oauth2/revoke",
            post(None, "application/x-www-form-urlencoded", &form),
            429,
        ),
    ];
    for _ in 0..60 {
        let _ = i
            .oauth("/oauth2/revoke", &[("token", "idb_rt_spent")])
            .await
            .unwrap();
    }
    for (path, args, want) in &cases {
        for _ in 0..15 {
            let out = tokio::process::Command::new("curl")
                .args([
                    "--http2",
                    "-sS",
                    "-o",
                    "-",
                    "-w",
                    "\n%{http_code} %{http_version}",
                    "--cacert",
                ])
                .arg(&ca)
                .args(args)
                .arg(i.url(path))
                .output()
                .await
                .expect("curl runs");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
            assert!(
                out.status.success(),
                "{path} {want}: curl failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(status, format!("{want} 2"), "{path}: {body}");
            let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{body}"));
            assert!(body["error_description"].is_string(), "{body}");
        }
    }
}

/// The value of the `/metrics` sample whose name and labels are `sample`.
async fn metric(i: &Idbridge, sample: &str) -> u64 {
    let m = i.metrics().await.unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in {m}"))
}

/// The review-cache hit counter.
async fn cache_hits(i: &Idbridge) -> u64 {
    metric(i, "idbridge_review_cache_total{result=\"hit\"}").await
}

/// Anyone may call `/oauth2/revoke`: a revocation drops only what it affects from the review
/// cache (nobody can empty everyone's), and revocations are rate-limited per address.
#[tokio::test]
async fn revocation_flood() {
    let dir = scratch();
    let i = with_accounts(dir.path(), "").await;
    let admin = i.admin_token();
    assert_eq!(i.review(&admin, &[]).await.unwrap()["authenticated"], true);
    let alice = i.create_token("alice", false).await.unwrap();
    let before = cache_hits(&i).await;
    assert_eq!(i.review(&admin, &[]).await.unwrap()["authenticated"], true);
    assert_eq!(
        cache_hits(&i).await,
        before + 1,
        "the admin's review is cached"
    );
    // alice revokes one of her access tokens: it stops at once; the admin's review stays cached.
    let token = i.access_token(&alice).await.unwrap();
    assert_eq!(i.review(&token, &[]).await.unwrap()["authenticated"], true);
    let (st, _) = i
        .oauth("/oauth2/revoke", &[("token", &token)])
        .await
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(i.review(&token, &[]).await.unwrap()["authenticated"], false);
    let hits = cache_hits(&i).await;
    assert_eq!(i.review(&admin, &[]).await.unwrap()["authenticated"], true);
    assert_eq!(
        cache_hits(&i).await,
        hits + 1,
        "the admin's review was not evicted"
    );
    // A flood of revocations from one address is cut off.
    let mut statuses = Vec::new();
    for n in 0..70 {
        let (st, _) = i
            .oauth("/oauth2/revoke", &[("token", &format!("idb_rt_forged{n}"))])
            .await
            .unwrap();
        statuses.push(st);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses[..50].iter().all(|s| *s == 200), "{statuses:?}");
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A server, a good access token of its admin, and hostile tokens made from it by kind: the
/// server's own key (read from its store with its key-encryption key, as an insider could) signs
/// wrong claims, another key signs good ones, headers and bodies are forged.
async fn hostile_jwts(
    dir: &std::path::Path,
) -> (Idbridge, String, Vec<(&'static str, &'static str, String)>) {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use idbridge_tokens::{AccessClaims, KeySet};
    use serde_json::json;
    let s = Idbridge::start(dir).await.unwrap();
    let good = s.access_token(&s.admin_token()).await.unwrap();
    assert_eq!(s.review(&good, &[]).await.unwrap()["authenticated"], true);
    let parts: Vec<&str> = good.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: AccessClaims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_owned();
    let ours = s.own_keys().await.unwrap();
    let now = claims.iat;
    let with = |f: &dyn Fn(&mut AccessClaims)| {
        let mut c = claims.clone();
        f(&mut c);
        c
    };
    let signed = |f: &dyn Fn(&mut AccessClaims)| ours.sign(&with(f)).unwrap();
    let mut cases = vec![
        (
            "time",
            "expired",
            signed(&|c| {
                c.exp = now - 3600;
                c.iat = now - 7200;
                c.nbf = now - 7200;
            }),
        ),
        ("time", "not yet valid", signed(&|c| c.nbf = now + 3600)),
        (
            "audience",
            "wrong audience",
            signed(&|c| c.aud = vec!["vault".parse().unwrap()]),
        ),
        (
            "issuer",
            "wrong issuer",
            signed(&|c| c.iss = "https://evil.example".into()),
        ),
        (
            "forged",
            "unknown subject",
            signed(&|c| c.sub = "00000000-0000-4000-8000-000000000000".into()),
        ),
    ];
    let (other_kid, other_der) = KeySet::generate().unwrap();
    let other = KeySet::from_pkcs8(&[(other_kid, other_der)]).unwrap();
    cases.push(("forged", "unknown kid", other.sign(&claims).unwrap()));
    let foreign = other.sign(&claims).unwrap();
    let fparts: Vec<&str> = foreign.split('.').collect();
    cases.push((
        "forged",
        "foreign key, our kid",
        format!(
            "{}.{}.{}",
            b64(&json!({"alg": "ES256", "typ": "JWT", "kid": kid})),
            fparts[1],
            fparts[2]
        ),
    ));
    cases.push((
        "none",
        "alg none",
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            parts[1]
        ),
    ));
    cases.push((
        "none",
        "alg none with kid",
        format!("{}.{}.", b64(&json!({"alg": "none", "kid": kid})), parts[1]),
    ));
    let jwks: Value = s.get_json("/oauth2/jwks").await.unwrap();
    let input = format!(
        "{}.{}",
        b64(&json!({"alg": "HS256", "typ": "JWT", "kid": kid})),
        parts[1]
    );
    for secret in [
        jwks.to_string(),
        jwks["keys"][0]["x"].as_str().unwrap().to_owned(),
    ] {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        cases.push((
            "hs256",
            "HS256 with the public key",
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag)),
        ));
    }
    let mut sig = parts[2].as_bytes().to_vec();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    cases.push((
        "forged",
        "tampered signature",
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            String::from_utf8(sig).unwrap()
        ),
    ));
    let evil = with(&|c| {
        c.name = "root".into();
        c.groups = vec!["idbridge-admins".into(), "cluster-admins".into()];
    });
    cases.push((
        "forged",
        "tampered claims",
        format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_value(&evil).unwrap()),
            parts[2]
        ),
    ));
    cases.push(("forged", "truncated", good[..good.len() - 5].to_owned()));
    (s, good, cases)
}

/// Every endpoint that takes an access token refuses `token` (`what` says which kind):
/// TokenReview, the admin API, token exchange as subject and as actor, introspection. A token
/// only for another audience is refused where it would act for Kubernetes or idbridge, and an
/// exchange cannot move it to Kubernetes.
async fn refused_everywhere(
    s: &Idbridge,
    good: &str,
    what: &str,
    token: &str,
    audience_only: bool,
) {
    let review = s.review(token, &[]).await.unwrap();
    assert_eq!(
        review["authenticated"], false,
        "{what} passed TokenReview: {review}"
    );
    assert!(review.get("user").is_none(), "{what}: {review}");
    let r = s
        .http
        .get(s.url("/admin/v1/accounts"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "{what} at the admin API");
    let (st, e) = exchange_access(s, token, &[("audience", "kubernetes")]).await;
    let want = if audience_only {
        "invalid_target"
    } else {
        "invalid_grant"
    };
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some(want)),
        "{what} as subject: {e}"
    );
    let (st, e) = exchange_access(
        s,
        good,
        &[("actor_token", token), ("actor_token_type", ACCESS)],
    )
    .await;
    assert_eq!(
        (st, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "{what} as actor: {e}"
    );
    if !audience_only {
        // Introspection by an admin: inactive.
        let r = s
            .http
            .post(s.url("/oauth2/introspect"))
            .bearer_auth(s.admin_token())
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v,
            serde_json::json!({"active": false}),
            "{what} at introspection"
        );
    }
}

async fn hostile_kind(kind: &str) {
    let dir = scratch();
    let (s, good, cases) = hostile_jwts(dir.path()).await;
    let mut seen = 0;
    for (k, what, token) in &cases {
        if *k == kind || (kind == "claims" && ["time", "audience", "issuer"].contains(k)) {
            refused_everywhere(&s, &good, what, token, *k == "audience").await;
            seen += 1;
        }
    }
    assert!(seen > 0, "no case of kind {kind}");
    // The good token still works, and the server is well.
    assert_eq!(s.review(&good, &[]).await.unwrap()["authenticated"], true);
}

/// `alg: none`, with and without our key id.
#[tokio::test]
async fn alg_none() {
    hostile_kind("none").await;
}

/// HS256 keyed with the published public key (algorithm confusion).
#[tokio::test]
async fn hs256_keyed_with_the_public_key() {
    hostile_kind("hs256").await;
}

/// Tokens signed with the server's own key but expired, not yet valid, for another audience or
/// from another issuer, at every endpoint that takes a token.
#[tokio::test]
async fn expired_not_yet_valid_wrong_audience_wrong_issuer() {
    hostile_kind("claims").await;
}

/// Someone else's key, our key id on someone else's signature, tampered signatures and claims,
/// truncated tokens, an unknown subject.
#[tokio::test]
async fn forged_and_tampered_tokens() {
    hostile_kind("forged").await;
}

/// A refresh token used twice revokes its whole session, down to its newest access token;
/// garbage and foreign tokens are refused.
#[tokio::test]
async fn refresh_reuse() {
    let dir = scratch();
    let i = Idbridge::start_config(
        dir.path(),
        "bootstrap_admin: true\nsessions:\n  refresh_grace: 0s\n".into(),
    )
    .await
    .unwrap();
    let first = i.login_static(&i.admin_token()).await.unwrap();
    assert!(s(&first, "refresh_token").starts_with("idb_rt_"));
    let (st, second) = i.refresh(&s(&first, "refresh_token")).await.unwrap();
    assert_eq!(st, 200, "{second}");
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert!(second.get("issued_token_type").is_none());
    let (st, third) = i.refresh(&s(&second, "refresh_token")).await.unwrap();
    assert_eq!(st, 200, "{third}");
    assert!(authenticated(&i, &s(&third, "access_token"), &[]).await);

    // The first token again: reuse. The family is revoked, down to the newest access token.
    let (st, err) = i.refresh(&s(&first, "refresh_token")).await.unwrap();
    assert_eq!((st, err["error"].as_str()), (400, Some("invalid_grant")));
    assert!(s(&err, "error_description").contains("already used"));
    let (st, _) = i.refresh(&s(&third, "refresh_token")).await.unwrap();
    assert_eq!(st, 400);
    assert!(!authenticated(&i, &s(&third, "access_token"), &[]).await);
    // Garbage and foreign tokens are refused without a panic.
    for bad in ["", "idb_rt_", "idb_rt_nope", "x.y.z", &i.admin_token()] {
        let (st, _) = i.refresh(bad).await.unwrap();
        assert_eq!(st, 400, "{bad:?}");
    }
    let audit = i.stop_and_read_audit().await.unwrap();
    for ev in ["\"session.start\"", "\"token.refresh\"", "\"token.reuse\""] {
        assert!(audit.contains(ev), "{ev} missing from the audit log");
    }
    assert!(
        !audit.contains("idb_rt_"),
        "a refresh token reached the audit log"
    );
}

/// Twenty refreshes at once with one token get one new pair; past the grace window the old
/// token is reuse, which revokes the session.
#[tokio::test]
async fn concurrent_refresh() {
    let dir = scratch();
    let i = Idbridge::start_config(
        dir.path(),
        "bootstrap_admin: true\nsessions:\n  refresh_grace: 2s\n".into(),
    )
    .await
    .unwrap();
    let first = i.login_static(&i.admin_token()).await.unwrap();
    let rt = s(&first, "refresh_token");
    // Twenty clients at once, each on its own connection.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let http = client_trusting(&i.data_dir.join("ca.crt")).unwrap();
        let (url, rt, barrier) = (i.url("/oauth2/token"), rt.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = http
                .post(url)
                .form(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let (st0, pair) = &answers[0];
    assert_eq!(*st0, 200, "{pair}");
    for (st, a) in &answers {
        assert_eq!(*st, 200, "{a}");
        assert_eq!(a["access_token"], pair["access_token"]);
        assert_eq!(a["refresh_token"], pair["refresh_token"]);
    }
    assert!(authenticated(&i, &s(pair, "access_token"), &[]).await);
    // Past the grace window the old token is reuse.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (st, _) = i.refresh(&rt).await.unwrap();
    assert_eq!(st, 400);
    let (st, _) = i.refresh(&s(pair, "refresh_token")).await.unwrap();
    assert_eq!(st, 400, "the family is revoked");
}

/// A Kerberos grant token with one DER length byte per element.
fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag, u8::try_from(value.len()).unwrap()];
    out.extend_from_slice(value);
    out
}

/// Posts the Kerberos grant with a raw (base64) token.
async fn grant(i: &Idbridge, token: &str) -> (u16, Value) {
    i.oauth(
        "/oauth2/token",
        &[
            (
                "grant_type",
                "urn:idbridge:params:oauth:grant-type:kerberos",
            ),
            ("client_id", "idbridge-cli"),
            ("kerberos_token", token),
        ],
    )
    .await
    .unwrap()
}

/// Garbage, truncated and altered SPNEGO tokens, NTLM (raw and inside SPNEGO) and a replayed
/// authenticator are refused at the Kerberos grant and on `/login`; the real token logs in once.
#[tokio::test]
async fn replayed_kerberos_authenticator_and_ntlm() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use idbridge_tests::kdc::curl_negotiate_token;
    const REALM: &str = "IDBRIDGE.TEST";
    let (kdc, keytab) = http_realm(REALM, "alice", "alice-kerberos-pw").await;
    let dir = scratch();
    let accounts = dir.path().join("accounts.yaml");
    std::fs::write(
        &accounts,
        format!("- name: alice\n  identities: [{{kind: kerberos, principal: alice@{REALM}}}]\n"),
    )
    .unwrap();
    let i = Idbridge::start_with(
        dir.path(),
        idbridge_tests::Options {
            config: Some(format!(
                "accounts_file: {}\nkerberos:\n  keytab: {}\n  realms: [{REALM}]\n",
                accounts.display(),
                keytab.display()
            )),
            env: kdc.env(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let cc = kdc.dir().join("alice.cc");
    kdc.kinit(&format!("alice@{REALM}"), "alice-kerberos-pw", &cc, None)
        .await
        .unwrap();
    let token = curl_negotiate_token(&kdc.env(), &cc, "localhost")
        .await
        .unwrap();

    let (st, v) = grant(&i, "%%% not base64").await;
    assert_eq!(
        (st, s(&v, "error").as_str()),
        (400, "invalid_request"),
        "{v}"
    );
    let (st, v) = grant(&i, &STANDARD.encode("hello, world")).await;
    assert_eq!(st, 400, "{v}");
    assert!(s(&v, "error_description").contains("not a Kerberos"), "{v}");

    let ntlm = b"NTLMSSP\0\x01\0\0\0\x07\x82\x08\xa2".to_vec();
    let spnego_ntlm = {
        let mechs = tlv(
            0xa0,
            &tlv(
                0x30,
                &tlv(0x06, &[0x2b, 6, 1, 4, 1, 0x82, 0x37, 2, 2, 0x0a]),
            ),
        );
        let mut fields = mechs;
        fields.extend(tlv(0xa2, &tlv(0x04, &ntlm)));
        let mut body = tlv(0x06, &[0x2b, 6, 1, 5, 5, 2]);
        body.extend(tlv(0xa0, &tlv(0x30, &fields)));
        tlv(0x60, &body)
    };
    for t in [&ntlm, &spnego_ntlm] {
        let (st, v) = grant(&i, &STANDARD.encode(t)).await;
        assert_eq!(st, 400, "{v}");
        assert!(
            s(&v, "error_description").contains("NTLM is not accepted, Kerberos is required"),
            "{v}"
        );
    }
    // Browsers get the same on /login, with a fresh challenge.
    let r = i
        .http
        .get(i.url("/login"))
        .header(
            "authorization",
            format!("Negotiate {}", STANDARD.encode(&spnego_ntlm)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Negotiate");
    assert!(r.text().await.unwrap().contains("Kerberos is required"));

    // Cut anywhere, or with a flipped byte, a real token is refused with a 400, never a 5xx.
    for cut in [1, 2, 10, 40, token.len() / 2, token.len() - 1] {
        let (st, v) = grant(&i, &STANDARD.encode(&token[..cut])).await;
        assert_eq!(st, 400, "cut at {cut}: {v}");
    }
    let mut flipped = token.clone();
    let mid = flipped.len() - 20;
    flipped[mid] ^= 0x5a;
    let (st, v) = grant(&i, &STANDARD.encode(&flipped)).await;
    assert_eq!(st, 400, "{v}");

    // The real token logs in once; replayed, it is refused.
    let (st, v) = grant(&i, &STANDARD.encode(&token)).await;
    assert_eq!(st, 200, "{v}");
    assert!(!s(&v, "kerberos_mutual_token").is_empty());
    let review = i.review(&s(&v, "access_token"), &[]).await.unwrap();
    assert_eq!(review["user"]["username"], "alice", "{review}");
    let (st, v) = grant(&i, &STANDARD.encode(&token)).await;
    assert_eq!(st, 400, "{v}");
    assert!(s(&v, "error_description").contains("already used"), "{v}");
    // The server is still well: a fresh token logs in.
    let fresh = curl_negotiate_token(&kdc.env(), &cc, "localhost")
        .await
        .unwrap();
    let (st, v) = grant(&i, &STANDARD.encode(&fresh)).await;
    assert_eq!(st, 200, "{v}");
}

/// A server with bob in a slapd directory, over LDAPS.
async fn with_directory(
    dir: &std::path::Path,
    extra: &str,
) -> (idbridge_tests::ldap::Slapd, Idbridge) {
    use idbridge_tests::ldap::Slapd;
    let slapd = Slapd::start().await.unwrap();
    slapd.add_user("bob", "bob-pw-1").await.unwrap();
    let i = Idbridge::start_with(
        dir,
        idbridge_tests::Options {
            config: Some(format!(
                "bootstrap_admin: true\n{extra}{}",
                slapd.directory_yaml(&[slapd.ldaps_url()], "", "")
            )),
            env: vec![("IDBRIDGE_LOG".into(), "debug".into())],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    (slapd, i)
}

/// An empty password is a failed login, never an anonymous bind: no bind reaches the
/// directory, and the answer is a wrong password's.
#[tokio::test]
async fn empty_ldap_password() {
    let dir = scratch();
    let (slapd, i) = with_directory(dir.path(), "").await;
    let (_, wrong) = i.password_login_json("bob", "nope").await.unwrap();
    let binds = slapd.binds();
    for (user, pw) in [("bob", ""), ("", ""), ("nobody", "")] {
        let (st, v) = i.password_login_json(user, pw).await.unwrap();
        assert_eq!(st, 400, "{user:?}: {v}");
        assert_eq!(v, wrong, "{user:?}");
    }
    assert_eq!(slapd.binds(), binds, "a bind reached the directory");
    let (st, _) = i.password_login_json("bob", "bob-pw-1").await.unwrap();
    assert_eq!(st, 200);
}

/// Names that would change an LDAP filter's or DN's meaning find nobody, with bob's right
/// password too, and get the one answer every failure gets.
#[tokio::test]
async fn ldap_filter_and_dn_injection() {
    let dir = scratch();
    let (_slapd, i) = with_directory(dir.path(), "").await;
    let (_, wrong) = i.password_login_json("bob", "nope").await.unwrap();
    for name in [
        "*",
        "b*",
        "bob)(uid=*",
        "*)(|(uid=*",
        "bob)(|(objectClass=*)",
        "bob\\2a",
        "bob\0",
        "uid=bob,ou=people,dc=idbridge,dc=test",
        "bob,ou=people",
        "(uid=bob)",
    ] {
        let (st, v) = i.password_login_json(name, "bob-pw-1").await.unwrap();
        assert_eq!(st, 400, "{name:?}: {v}");
        assert_eq!(v, wrong, "{name:?}");
    }
    let (st, v) = i.password_login_json("bob", "bob-pw-1").await.unwrap();
    assert_eq!(st, 200, "{v}");
}

/// Starts `/oauth2/authorize` for the built-in client and logs bob in with the password form:
/// the redirect the browser is sent to.
async fn code_login(i: &Idbridge, redirect: &str, verifier: &str) -> String {
    use idbridge_tests::oidc::{Browser, cli_authorize_url};
    let b = Browser::new(&[&i.data_dir.join("ca.crt")]).unwrap();
    let page = b
        .get(&cli_authorize_url(&i.base, redirect, verifier))
        .await
        .unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = page.input("csrf").unwrap();
    let action = page.form_action("/login/password").unwrap();
    let done = b
        .post_form(
            &action,
            &[
                ("csrf", &csrf),
                ("username", "bob"),
                ("password", "bob-pw-1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(done.status, 303, "{}", done.body);
    done.headers["location"].to_str().unwrap().to_owned()
}

/// PKCE is S256 only and required; a code needs its verifier and works once, and a replayed
/// code revokes what it produced.
#[tokio::test]
async fn pkce_downgrade_and_code_replay() {
    use idbridge_tests::oidc::{pkce_challenge, query_param};
    let dir = scratch();
    let (_slapd, i) = with_directory(dir.path(), "").await;
    let redirect = "http://127.0.0.1:38113/cb";
    let verifier = "v".repeat(43);
    // The plain method, or no challenge at all: refused at the client's redirect.
    let http = client(&i)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (method, challenge) in [
        ("plain", verifier.clone()),
        ("plain", pkce_challenge(&verifier)),
        ("", String::new()),
    ] {
        let mut u = reqwest::Url::parse(&i.url("/oauth2/authorize")).unwrap();
        u.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", "idbridge-cli")
            .append_pair("redirect_uri", redirect)
            .append_pair("state", "s1")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", method);
        let r = http.get(u).send().await.unwrap();
        assert_eq!(r.status(), 303, "{method}");
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        assert_eq!(
            query_param(&loc, "error").as_deref(),
            Some("invalid_request"),
            "{loc}"
        );
        assert!(query_param(&loc, "code").is_none(), "{loc}");
    }
    // A code with a wrong verifier, or with the challenge itself as verifier (a plain
    // downgrade at the token endpoint): refused.
    let loc = code_login(&i, redirect, &verifier).await;
    let code = query_param(&loc, "code").unwrap();
    for bad in ["w".repeat(43), pkce_challenge(&verifier), String::new()] {
        let (st, v) = i.redeem_code(&code, redirect, &bad).await.unwrap();
        assert_eq!(
            (st, v["error"].as_str()),
            (400, Some("invalid_grant")),
            "{v}"
        );
    }
    // Another code: redeemed once; replayed, refused, and its session revoked.
    let loc = code_login(&i, redirect, &verifier).await;
    let code = query_param(&loc, "code").unwrap();
    let (st, pair) = i.redeem_code(&code, redirect, &verifier).await.unwrap();
    assert_eq!(st, 200, "{pair}");
    let access = s(&pair, "access_token");
    assert!(authenticated(&i, &access, &[]).await);
    let (st, v) = i.redeem_code(&code, redirect, &verifier).await.unwrap();
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
    assert!(
        !authenticated(&i, &access, &[]).await,
        "the replay revoked the session"
    );
    // Another redirect than the one the code was issued for.
    let loc = code_login(&i, redirect, &verifier).await;
    let code = query_param(&loc, "code").unwrap();
    let (st, _) = i
        .redeem_code(&code, "http://127.0.0.1:38114/cb", &verifier)
        .await
        .unwrap();
    assert_eq!(st, 400);
}

/// Redirect URIs are matched exactly (a loopback URI's port excepted): userinfo, suffixes,
/// fragments, other schemes and look-alike hosts are refused with an error page, never
/// followed.
#[tokio::test]
async fn open_redirect() {
    use idbridge_tests::oidc::pkce_challenge;
    let dir = scratch();
    let i = Idbridge::start_config(
        dir.path(),
        "bootstrap_admin: true\nclients:\n  - id: web\n    redirect_uris: [\"https://app.example/cb\", \"http://127.0.0.1/cb\"]\n"
            .into(),
    )
    .await
    .unwrap();
    let http = client(&i)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let challenge = pkce_challenge(&"v".repeat(43));
    let ask = |client: &'static str, redirect: &'static str| {
        let mut u = reqwest::Url::parse(&i.url("/oauth2/authorize")).unwrap();
        u.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", client)
            .append_pair("redirect_uri", redirect)
            .append_pair("state", "s1")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        http.get(u).send()
    };
    for (client, evil) in [
        ("web", "https://app.example/cb.evil.example"),
        ("web", "https://app.example/cbx"),
        ("web", "https://app.example/cb/../evil"),
        ("web", "https://app.example.evil.example/cb"),
        ("web", "https://app.example@evil.example/cb"),
        ("web", "https://evil.example@app.example/cb"),
        ("web", "https://app.example/cb#@evil.example"),
        ("web", "https://app.example\\@evil.example/cb"),
        ("web", "http://app.example/cb"),
        ("web", "javascript:alert(1)//app.example/cb"),
        ("web", "https://evil.example/cb?https://app.example/cb"),
        ("web", "http://127.0.0.1.evil.example/cb"),
        ("web", "http://127.0.0.1/cb/../../evil"),
        ("idbridge-cli", "http://localhost@evil.example/cb"),
        ("idbridge-cli", "http://127.0.0.1@evil.example/cb"),
        ("idbridge-cli", "http://evil.example/cb"),
        ("idbridge-cli", "https://127.0.0.1:1/cb"),
        ("idbridge-cli", "http://127.0.0.1:1/cb#frag"),
    ] {
        let r = ask(client, evil).await.unwrap();
        assert_eq!(r.status(), 400, "{client} {evil}");
        assert!(
            r.headers().get("location").is_none(),
            "{client} {evil} was followed"
        );
    }
    // The registered ones work: to the client, with a login page in between.
    for (client, good) in [
        ("web", "https://app.example/cb"),
        ("web", "http://127.0.0.1:45678/cb"),
        ("idbridge-cli", "http://[::1]:45678/cb"),
    ] {
        let r = ask(client, good).await.unwrap();
        assert_eq!(r.status(), 200, "{client} {good}");
    }
}

/// The login and device forms need the CSRF token of the page this site served, with its
/// cookie: a forged post, or the token without the cookie, is refused before any directory
/// bind.
#[tokio::test]
async fn csrf_on_the_login_forms() {
    use idbridge_tests::oidc::{Browser, cli_authorize_url};
    let dir = scratch();
    let (slapd, i) = with_directory(dir.path(), "").await;
    let ca = i.data_dir.join("ca.crt");
    let b = Browser::new(&[&ca]).unwrap();
    let page = b
        .get(&cli_authorize_url(
            &i.base,
            "http://127.0.0.1:38115/cb",
            &"v".repeat(43),
        ))
        .await
        .unwrap();
    let csrf = page.input("csrf").unwrap();
    let action = page.form_action("/login/password").unwrap();
    let binds = slapd.binds();
    let form = |token: String| {
        vec![
            ("csrf", token),
            ("username", "bob".to_owned()),
            ("password", "bob-pw-1".to_owned()),
        ]
    };
    let forged = b
        .post_form(&action, &as_pairs(&form("forged".into())))
        .await
        .unwrap();
    assert_eq!(forged.status, 403);
    // The right token from another browser, without the login's cookie: no such sign-in here.
    let other = Browser::new(&[&ca]).unwrap();
    let stolen = other
        .post_form(&action, &as_pairs(&form(csrf.clone())))
        .await
        .unwrap();
    assert_eq!(stolen.status, 400, "{}", stolen.body);
    assert!(stolen.headers.get("location").is_none());
    assert_eq!(slapd.binds(), binds, "a refused form reached the directory");
    // The device form.
    let device = b.get(&i.url("/device")).await.unwrap();
    let forged = b
        .post_form(
            &i.url("/device"),
            &[("csrf", "forged"), ("user_code", "BBBB-BBBB")],
        )
        .await
        .unwrap();
    assert_eq!(forged.status, 403);
    let token = device.input("csrf").unwrap();
    let stolen = other
        .post_form(
            &i.url("/device"),
            &[("csrf", &token), ("user_code", "BBBB-BBBB")],
        )
        .await
        .unwrap();
    assert_eq!(stolen.status, 403);
    // The page's own post works.
    let done = b.post_form(&action, &as_pairs(&form(csrf))).await.unwrap();
    assert_eq!(done.status, 303, "{}", done.body);
}

fn as_pairs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, x)| (*k, x.as_str())).collect()
}

/// After logins of every kind the server offers here, with debug logging on, no password,
/// token or key appears in its log or its audit log. (`Debug` output is proved by the
/// `debug_output_*` unit tests in bridge, core and directory.)
#[tokio::test]
async fn secrets_absent_from_logs_audit_and_debug() {
    let dir = scratch();
    let (_slapd, i) = with_directory(dir.path(), "").await;
    let mut secrets = vec![
        "bob-pw-1".to_owned(),
        "wrong-pw-2".to_owned(),
        i.admin_token(),
        i.webhook_token(),
        std::fs::read_to_string(i.data_dir.join("kek"))
            .unwrap()
            .trim()
            .to_owned(),
    ];
    let (st, pair) = i.password_login_json("bob", "bob-pw-1").await.unwrap();
    assert_eq!(st, 200);
    let _ = i.password_login_json("bob", "wrong-pw-2").await.unwrap();
    let (st, next) = i.refresh(&s(&pair, "refresh_token")).await.unwrap();
    assert_eq!(st, 200);
    let (_, reused) = i.refresh(&s(&pair, "refresh_token")).await.unwrap();
    let _ = reused;
    let stat = i.login_static(&i.admin_token()).await.unwrap();
    let bob = i.create_token("bob", false).await.unwrap();
    let (st, _) = i
        .oauth("/oauth2/revoke", &[("token", &s(&stat, "refresh_token"))])
        .await
        .unwrap();
    assert_eq!(st, 200);
    let _ = i.review(&s(&next, "access_token"), &[]).await.unwrap();
    let _ = i.review("idb_st_not-a-real-token", &[]).await.unwrap();
    secrets.extend([
        s(&pair, "access_token"),
        s(&pair, "refresh_token"),
        s(&next, "access_token"),
        s(&next, "refresh_token"),
        s(&stat, "access_token"),
        s(&stat, "refresh_token"),
        bob,
        "idb_st_not-a-real-token".to_owned(),
    ]);
    let log = i.log();
    let audit = i.audit_log();
    assert!(log.contains("DEBUG"), "debug logging is on");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log written to a pipe"
    );
    for secret in &secrets {
        // Tokens are long; any 16 characters of one would do harm.
        let probe = &secret[secret.len().saturating_sub(16)..];
        assert!(
            !log.contains(probe),
            "a secret ending {probe:?} is in the log"
        );
        assert!(
            !audit.contains(probe),
            "a secret ending {probe:?} is in the audit log"
        );
    }
}
