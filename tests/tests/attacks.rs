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

/// The server's URL with the host name of its Kerberos service principal.
fn localhost(i: &Idbridge) -> String {
    i.base.replace("127.0.0.1", "localhost")
}

/// Posts the password grant from the loopback address `from` (127.0.0.0/8 is all loopback).
async fn password_from(i: &Idbridge, from: &str, user: &str, password: &str) -> (u16, Value) {
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(i.data_dir.join("ca.crt")).unwrap())
                .unwrap(),
        )
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
    use idbridge_tests::kdc::Kdc;
    use idbridge_tests::ldap::Slapd;
    const REALM: &str = "IDBRIDGE.TEST";
    let kdc = Kdc::start(REALM).await.unwrap();
    kdc.add_service("HTTP/localhost").await.unwrap();
    let keytab = kdc.dir().join("http.keytab");
    kdc.export_keytab(&keytab, &["HTTP/localhost"])
        .await
        .unwrap();
    kdc.add_user("dave", "dave-krb-pw").await.unwrap();
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

    // An upgrade from a store left readable: tightened, with a warning.
    std::fs::set_permissions(
        d.join("idbridge.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let i = Idbridge::start(dir.path()).await.unwrap();
    assert_eq!(mode(&d.join("idbridge.db")), 0o600);
    assert!(i.log().contains("made it 0600"), "{}", i.log());
    i.stop().await.unwrap();

    // A data dir others can read was not made by idbridge: refused, naming the fix.
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = Idbridge::start(dir.path()).await.unwrap_err().to_string();
    assert!(err.contains("insecure_store_permissions"), "{err}");
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
    let metrics = i
        .http
        .get(i.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let idle: u64 = metrics
        .lines()
        .find(|l| l.starts_with("idbridge_connections_closed_total{reason=\"idle\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(idle >= 25, "{metrics}");
}

/// Every early refusal reaches an HTTP/2 client as its answer (status and body), never as a
/// reset stream; `curl`, as kube-apiserver, speaks HTTP/2.
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
    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, "x".repeat(300_000)).unwrap();
    let admin = format!("Authorization: Bearer {}", i.admin_token());
    i.cli_ok(&["user", "add", "bob"]).await.unwrap();
    let bob = format!(
        "Authorization: Bearer {}",
        i.create_token("bob", false).await.unwrap()
    );
    let cases: Vec<(&str, Vec<String>, u16)> = vec![
        // No caller credentials.
        (
            "/webhooks/tokenreview",
            vec![
                "-H".into(),
                "Content-Type: application/json".into(),
                "--data-binary".into(),
                format!("@{}", big.display()),
            ],
            401,
        ),
        // A caller that is no webhook caller.
        (
            "/webhooks/tokenreview",
            vec![
                "-H".into(),
                admin.clone(),
                "-H".into(),
                "Content-Type: application/json".into(),
                "--data-binary".into(),
                format!("@{}", big.display()),
            ],
            401,
        ),
        // Authenticated, not an admin.
        (
            "/admin/v1/accounts",
            vec![
                "-H".into(),
                bob.clone(),
                "-H".into(),
                "Content-Type: application/json".into(),
                "--data-binary".into(),
                format!("@{}", big.display()),
            ],
            403,
        ),
        // Too large.
        (
            "/webhooks/tokenreview",
            vec![
                "-H".into(),
                format!("Authorization: Bearer {}", i.webhook_token()),
                "-H".into(),
                "Content-Type: application/json".into(),
                "--data-binary".into(),
                format!("@{}", huge.display()),
            ],
            413,
        ),
        // Not JSON.
        (
            "/webhooks/tokenreview",
            vec![
                "-H".into(),
                format!("Authorization: Bearer {}", i.webhook_token()),
                "-H".into(),
                "Content-Type: text/plain".into(),
                "--data-binary".into(),
                format!("@{}", big.display()),
            ],
            415,
        ),
    ];
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

/// The review-cache hit counter on `/metrics`.
async fn cache_hits(i: &Idbridge) -> u64 {
    let m = i
        .http
        .get(i.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    m.lines()
        .find(|l| l.starts_with("idbridge_review_cache_total{result=\"hit\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{m}"))
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
