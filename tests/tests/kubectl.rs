//! kubectl with idbridge as its exec credential plugin, against a real kube-apiserver wired to
//! a real idbridge: the kubeconfig `idbridge kubeconfig` writes; Kerberos single sign-on; the
//! directory password typed into a pseudo-terminal; the device code with the scripted browser;
//! an expired access token refreshed silently; ten parallel kubectl runs sharing one refresh and
//! one login; `whoami`, `logout`; `interactive: false`; `kubectl idbridge`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use idbridge_tests::Idbridge;
use idbridge_tests::kube::{ApiServer, Authn, kubectl_bin};
use idbridge_tests::ldap::Slapd;
use idbridge_tests::oidc::{Browser, Step};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const REALM: &str = "IDBRIDGE.TEST";
const ALICE_KRB_PW: &str = "alice-kerberos-pw";
const ALICE_LDAP_PW: &str = "alice-ldap-pw-1";

/// One user's machine: a home for the kubeconfig and the session cache.
#[derive(Clone)]
struct Desk {
    home: PathBuf,
    env: Vec<(String, String)>,
}

impl Desk {
    fn new(root: &Path, name: &str, extra_env: Vec<(String, String)>) -> Self {
        let home = root.join(name);
        std::fs::create_dir_all(&home).unwrap();
        let mut env = extra_env;
        env.push(("HOME".into(), home.display().to_string()));
        env.push((
            "XDG_CACHE_HOME".into(),
            home.join(".cache").display().to_string(),
        ));
        env.push((
            "KUBECONFIG".into(),
            home.join(".kube/config").display().to_string(),
        ));
        Self { home, env }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.home.join(".kube/config")
    }

    fn cache(&self) -> PathBuf {
        self.home.join(".cache/idbridge")
    }

    /// `idbridge ARGS` as this user.
    async fn idbridge(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(idbridge_tests::idbridge_bin())
            .args(args)
            .env_remove("KUBERNETES_EXEC_INFO")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `idbridge kubeconfig` for `api` and `i`, with `extra` flags.
    async fn configure(&self, api: &ApiServer, i: &Idbridge, issuer: &str, extra: &[&str]) {
        let ca = i.data_dir.join("ca.crt");
        let mut args = vec![
            "kubeconfig",
            "--server",
            &api.url,
            "--cluster-ca-file",
            api.ca.to_str().unwrap(),
            "--issuer",
            issuer,
            "--issuer-ca-file",
            ca.to_str().unwrap(),
            "--context",
            "test",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = self.idbridge(&args).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("current context is now test"), "{out}");
    }

    /// kubectl as this user, without a terminal.
    async fn kubectl(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(kubectl_bin().unwrap());
        // kubectl takes no flag before a plugin's name.
        if args.first() != Some(&"idbridge") {
            cmd.arg("--request-timeout=30s");
        }
        let run = cmd
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .expect("kubectl did not finish in 2 minutes")
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// kubectl as this user on a pseudo-terminal (util-linux `script`), so it hands the terminal
    /// to the plugin (`interactive: true`). Its output (the terminal's) is piped.
    fn kubectl_on_a_terminal(&self, args: &[&str]) -> tokio::process::Child {
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let mut line = quote(kubectl_bin().unwrap().to_str().unwrap());
        line.push_str(" --request-timeout=30s");
        for a in args {
            line.push(' ');
            line.push_str(&quote(a));
        }
        Command::new("script")
            .args(["-q", "-e", "-f", "-c", &line, "/dev/null"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// `kubectl auth whoami` as this user: the user kube-apiserver sees.
    async fn whoami(&self) -> Value {
        let (code, out, err) = self.kubectl(&["auth", "whoami", "-o", "json"]).await;
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()["status"]["userInfo"].clone()
    }

    /// The one cached session's file.
    fn session_file(&self) -> PathBuf {
        std::fs::read_dir(self.cache())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "json"))
            .expect("a cached session")
    }

    /// The one cached session.
    fn session(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.session_file()).unwrap()).unwrap()
    }

    /// Makes every cached access token look expired to the plugin.
    fn expire_tokens(&self) {
        let mut n = 0;
        for e in std::fs::read_dir(self.cache()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                v["expires_at"] = 1.into();
                std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
                n += 1;
            }
        }
        assert_eq!(n, 1, "one cached session");
    }
}

/// Refresh grants the server has answered, as its audit log says.
fn refreshes(i: &Idbridge) -> usize {
    i.audit_log()
        .lines()
        .filter(|l| l.contains("\"token.refresh\"") && l.contains("\"ok\""))
        .count()
}

/// Sessions the server started, as its audit log says.
fn session_starts(i: &Idbridge) -> usize {
    i.audit_log()
        .lines()
        .filter(|l| l.contains("\"session.start\""))
        .count()
}

/// Requests the server answered on `route`, as its metrics say.
async fn requests(i: &Idbridge, route: &str) -> u64 {
    let text = i.metrics().await.unwrap();
    let prefix = format!("idbridge_http_request_duration_seconds_count{{route=\"{route}\",");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A slapd with alice in `dev`, and an idbridge that logs in against it.
async fn directory_setup(dir: &Path) -> (Slapd, Idbridge) {
    let slapd = Slapd::start().await.unwrap();
    let alice = slapd.add_user("alice", ALICE_LDAP_PW).await.unwrap();
    slapd.add_group("dev", &[&alice]).await.unwrap();
    let yaml = format!(
        "bootstrap_admin: true\nsessions:\n  refresh_grace: 0s\n{}",
        slapd.directory_yaml(&[slapd.ldaps_url()], "", "")
    );
    let i = Idbridge::start_config(dir, yaml).await.unwrap();
    (slapd, i)
}

#[tokio::test]
async fn kerberos_sso_through_kubectl_refreshes_once_for_ten_parallel_runs() {
    let dir = idbridge_tests::scratch();
    let sso = idbridge_tests::kdc::sso(
        dir.path(),
        REALM,
        "alice",
        ALICE_KRB_PW,
        "groups: [dev]\n  default_namespace: team-a",
    )
    .await
    .unwrap();
    let i = &sso.idbridge;
    let desk = Desk::new(dir.path(), "alice", sso.env.clone());
    let api = ApiServer::start(dir.path(), Authn::webhook(&i.data_dir))
        .await
        .unwrap();
    api.let_group_list_namespaces("dev").await.unwrap();
    let issuer = sso.issuer.clone();
    desk.configure(&api, i, &issuer, &[]).await;

    // The first kubectl run logs in with the ticket (method auto): nothing is asked.
    let who = desk.whoami().await;
    assert_eq!(who["username"], "alice", "{who}");
    assert_eq!(who["groups"][0], "dev", "{who}");
    assert_eq!(session_starts(i), 1);
    // The session is the ticket's principal's, as GSS-API names it (read from the FILE cache).
    assert_eq!(desk.session()["identity"], format!("krb5:alice@{REALM}"));
    let (code, out, err) = desk.idbridge(&["whoami"]).await;
    assert_eq!(code, 0, "{err}");
    for want in [
        "alice at https://localhost:",
        "groups:    dev",
        "namespace: team-a",
        "krb5",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }

    // An expired access token is refreshed silently.
    desk.expire_tokens();
    let who = desk.whoami().await;
    assert_eq!(who["username"], "alice", "{who}");
    assert_eq!(refreshes(i), 1);

    // Ten kubectl runs at once with an expired token: one refresh, ten successes.
    desk.expire_tokens();
    let runs: Vec<_> = (0..10)
        .map(|_| {
            let desk = desk.clone();
            tokio::spawn(async move { desk.kubectl(&["get", "ns", "-o", "name"]).await })
        })
        .collect();
    for run in runs {
        let (code, out, err) = run.await.unwrap();
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("namespace/default"), "{out}");
    }
    assert_eq!(refreshes(i), 2, "{}", i.audit_log());
    assert_eq!(session_starts(i), 1);

    // kubectl v1beta1 is answered in v1beta1.
    let text = std::fs::read_to_string(desk.kubeconfig()).unwrap();
    std::fs::write(
        desk.kubeconfig(),
        text.replace(
            "client.authentication.k8s.io/v1\n",
            "client.authentication.k8s.io/v1beta1\n",
        ),
    )
    .unwrap();
    assert_eq!(desk.whoami().await["username"], "alice");

    // A refresh whose result cannot be saved is an error, not a silently lost rotation.
    desk.expire_tokens();
    let stale = desk.session_file();
    std::fs::create_dir_all(stale.with_extension("json.tmp").join("x")).unwrap();
    let (code, _, err) = desk.kubectl(&["get", "ns"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("refreshed but cannot be saved") && err.contains("cannot save the session"),
        "{err}"
    );
    std::fs::remove_dir_all(stale.with_extension("json.tmp")).unwrap();
    // The cache still holds the spent refresh token: the server refuses it, so the next run
    // logs in again (with the ticket, silently), as the error said.
    assert_eq!(desk.whoami().await["username"], "alice");
    assert_eq!(session_starts(i), 2);

    // `kubectl idbridge`: the binary under the plugin's name.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(idbridge_tests::idbridge_bin(), bin.join("kubectl-idbridge"))
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut env = desk.env.clone();
    env.push(("PATH".into(), path));
    let plugin = Desk {
        env,
        ..desk.clone()
    };
    let (code, out, err) = plugin.kubectl(&["idbridge", "login", "--help"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Usage: kubectl idbridge login"), "{out}");
    let ca = i.data_dir.join("ca.crt");
    let (code, token, err) = plugin
        .kubectl(&[
            "idbridge",
            "login",
            "--issuer",
            &issuer,
            "--ca-file",
            ca.to_str().unwrap(),
            "--output",
            "token",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let review = i.review(token.trim(), &[]).await.unwrap();
    assert_eq!(review["user"]["username"], "alice", "{review}");
    // The token came from the cache: no new session.
    assert_eq!(session_starts(i), 2);

    // An expired ticket still names whose session it is: the session is refreshed, no kinit
    // needed until the session itself ends.
    let short = sso.kdc.dir().join("short.cc");
    sso.kdc
        .kinit(&format!("alice@{REALM}"), ALICE_KRB_PW, &short, Some("2s"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut expired = desk.clone();
    expired.env.retain(|(k, _)| k != "KRB5CCNAME");
    expired
        .env
        .push(("KRB5CCNAME".into(), format!("FILE:{}", short.display())));
    expired.expire_tokens();
    let before = refreshes(i);
    assert_eq!(expired.whoami().await["username"], "alice");
    assert_eq!(refreshes(i), before + 1);
    assert_eq!(session_starts(i), 2);

    // No ticket and no session, and kubectl gives no terminal: auto asks nothing and says
    // what to run.
    let out = Command::new(idbridge_tests::idbridge_bin())
        .args(["login", "--issuer", &issuer, "--cache-dir"])
        .arg(dir.path().join("empty-cache"))
        .env("KRB5CCNAME", format!("FILE:{}", dir.path().join("none.cc").display()))
        .env(
            "KUBERNETES_EXEC_INFO",
            r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":false}}"#,
        )
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no Kerberos ticket and there is no session")
            && err.contains("--method browser"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// Reads a child's output into a shared string as it comes (a prompt ends in no newline),
/// until it closes.
fn collect(
    mut out: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: std::sync::Arc<std::sync::Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf).await {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

/// Waits, bounded, until one of `outputs` holds `needle`; returns that output.
async fn wait_for(outputs: &[std::sync::Arc<std::sync::Mutex<String>>], needle: &str) -> String {
    for _ in 0..600 {
        for o in outputs {
            let s = o.lock().unwrap().clone();
            if s.contains(needle) {
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all: Vec<String> = outputs.iter().map(|o| o.lock().unwrap().clone()).collect();
    panic!("no {needle:?} in a minute: {all:#?}");
}

#[tokio::test]
async fn the_directory_password_is_typed_on_a_terminal_without_echo() {
    let dir = idbridge_tests::scratch();
    let (_slapd, i) = directory_setup(dir.path()).await;
    let desk = Desk::new(dir.path(), "alice", Vec::new());
    let api = ApiServer::start(dir.path(), Authn::webhook(&i.data_dir))
        .await
        .unwrap();
    desk.configure(&api, &i, &i.base, &["--method", "password"])
        .await;

    // Without a terminal, nothing is asked: the error says what to run.
    let (code, _, err) = desk.kubectl(&["auth", "whoami"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("without a terminal") && err.contains("idbridge login --issuer"),
        "{err}"
    );
    assert_eq!(session_starts(&i), 0);

    // On a terminal: the user name, then the password, typed without echo.
    let mut child = desk.kubectl_on_a_terminal(&["auth", "whoami", "-o", "json"]);
    let mut stdin = child.stdin.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = collect(child.stdout.take().unwrap(), seen.clone());
    wait_for(std::slice::from_ref(&seen), "Username for").await;
    stdin.write_all(b"alice\n").await.unwrap();
    wait_for(std::slice::from_ref(&seen), "Password for alice:").await;
    stdin
        .write_all(format!("{ALICE_LDAP_PW}\n").as_bytes())
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    reader.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(status.success(), "{seen}");
    assert!(
        !seen.contains(ALICE_LDAP_PW),
        "the password was echoed: {seen}"
    );
    assert!(seen.contains("\"username\": \"alice\""), "{seen}");
    assert_eq!(session_starts(&i), 1);

    // For automation: a private password file, and the environment with a warning.
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{ALICE_LDAP_PW}\n")).unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let ca = i.data_dir.join("ca.crt");
    let base = [
        "login",
        "--issuer",
        &i.base,
        "--ca-file",
        ca.to_str().unwrap(),
        "--method",
        "password",
        "--username",
        "alice",
        "--output",
        "token",
        "--fresh",
    ];
    let mut args = base.to_vec();
    args.extend(["--password-file", pw.to_str().unwrap()]);
    let (code, token, err) = desk.idbridge(&args).await;
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(
        i.review(token.trim(), &[]).await.unwrap()["user"]["groups"][0],
        "dev"
    );
    let mut env_desk = desk.clone();
    env_desk
        .env
        .push(("IDBRIDGE_PASSWORD".into(), ALICE_LDAP_PW.into()));
    let (code, _, err) = env_desk.idbridge(&base).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: the password comes from IDBRIDGE_PASSWORD"),
        "{err}"
    );
    // A wrong password is the server's one answer, and the cached session is left as it was.
    let cached = desk.session();
    env_desk.env.pop();
    env_desk
        .env
        .push(("IDBRIDGE_PASSWORD".into(), "wrong".into()));
    let (code, _, err) = env_desk.idbridge(&base).await;
    assert_ne!(code, 0);
    assert!(err.contains("invalid username or password"), "{err}");
    assert_eq!(desk.session(), cached);

    // logout while the server is down keeps the session (it is still valid there) and says
    // who can end it now.
    i.stop().await.unwrap();
    let (code, _, err) = desk.idbridge(&["logout"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("connection refused")
            && err.contains("kept in the cache")
            && err.contains("idbridge revoke --user alice"),
        "{err}"
    );
    assert_eq!(desk.session(), cached);
}

#[tokio::test]
async fn a_server_nobody_can_sign_in_to_says_so_at_once() {
    let dir = idbridge_tests::scratch();
    // The simple profile: no identity provider, no directory, no Kerberos.
    let i = Idbridge::start(dir.path()).await.unwrap();
    let desk = Desk::new(dir.path(), "erin", Vec::new());
    let ca = i.data_dir.join("ca.crt");
    for method in [
        &["--method", "device"][..],
        &["--method", "browser", "--no-browser"],
    ] {
        let mut args = vec![
            "login",
            "--issuer",
            &i.base,
            "--ca-file",
            ca.to_str().unwrap(),
        ];
        args.extend_from_slice(method);
        let started = std::time::Instant::now();
        let (code, _, err) = desk.idbridge(&args).await;
        assert_ne!(code, 0);
        assert!(
            err.contains("offers people no way to sign in"),
            "{method:?}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{method:?} waited"
        );
    }
    // The server's discovery does not offer those grants.
    let doc = i
        .get_json("/.well-known/openid-configuration")
        .await
        .unwrap();
    let grants = doc["grant_types_supported"].to_string();
    assert!(
        !grants.contains("device_code") && !grants.contains("authorization_code"),
        "{grants}"
    );
    // A CA that did not issue the server's certificate is named as the one given.
    let (other_ca, _, _) = idbridge_tests::ldap::test_ca(dir.path(), "other").unwrap();
    let (code, _, err) = desk
        .idbridge(&[
            "login",
            "--issuer",
            &i.base,
            "--ca-file",
            other_ca.to_str().unwrap(),
            "--method",
            "device",
        ])
        .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("not trusted (an unknown issuer)") && err.contains("did not issue it"),
        "{err}"
    );
}

/// The device login for `url` in the scripted browser, with the directory password.
async fn finish_device_login(i: &Idbridge, url: &str) {
    let b = Browser::new(&[&i.data_dir.join("ca.crt")]).unwrap();
    let form = b.get(url).await.unwrap();
    assert_eq!(form.status, 200, "{}", form.body);
    let csrf = form.input("csrf").unwrap();
    let user_code = form.input("user_code").unwrap();
    let login = b
        .post_form(
            &i.url("/device"),
            &[("csrf", &csrf), ("user_code", &user_code)],
        )
        .await
        .unwrap();
    let login = match b.follow(login, "http://nowhere").await.unwrap() {
        Step::Page(p) => p,
        Step::Left(l) => panic!("left for {l}"),
    };
    let csrf = login.input("csrf").unwrap();
    let action = login.form_action("/login/password").unwrap();
    let done = b
        .post_form(
            &action,
            &[
                ("csrf", &csrf),
                ("username", "alice"),
                ("password", ALICE_LDAP_PW),
            ],
        )
        .await
        .unwrap();
    match b.follow(done, "http://nowhere").await.unwrap() {
        Step::Page(p) => assert_eq!(p.status, 200, "{}", p.body),
        Step::Left(l) => panic!("left for {l}"),
    }
}

#[tokio::test]
async fn ten_parallel_kubectl_without_a_session_make_one_device_login() {
    let dir = idbridge_tests::scratch();
    let (_slapd, i) = directory_setup(dir.path()).await;
    let desk = Desk::new(dir.path(), "alice", Vec::new());
    let api = ApiServer::start(dir.path(), Authn::webhook(&i.data_dir))
        .await
        .unwrap();
    api.let_group_list_namespaces("dev").await.unwrap();
    // Without the CA of the server's certificate: one clear error naming the flag, and no TLS
    // library log line before it.
    let (code, _, err) = desk
        .idbridge(&["login", "--issuer", &i.base, "--method", "device"])
        .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("TLS certificate is not trusted")
            && err.contains("--ca-file")
            && err.lines().count() == 1,
        "{err}"
    );
    // A flag of another method is refused before anything is asked.
    let (code, _, err) = desk
        .idbridge(&[
            "login",
            "--issuer",
            &i.base,
            "--method",
            "device",
            "--username",
            "alice",
        ])
        .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("--username is used only by --method password"),
        "{err}"
    );
    desk.configure(&api, &i, &i.base, &["--method", "device"])
        .await;

    let mut children = Vec::new();
    let mut outputs = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..10 {
        let mut c = desk.kubectl_on_a_terminal(&["get", "ns", "-o", "name"]);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        readers.push(collect(c.stdout.take().unwrap(), seen.clone()));
        outputs.push(seen);
        children.push(c);
    }
    let shown = wait_for(&outputs, "/device?user_code=").await;
    let url = shown
        .split_whitespace()
        .find(|w| w.contains("/device?user_code="))
        .unwrap()
        .to_owned();
    // The others wait for the one login, and say so.
    wait_for(&outputs, "waiting for another idbridge login (pid ").await;
    finish_device_login(&i, &url).await;
    for (mut c, seen) in children.into_iter().zip(&outputs) {
        let status = tokio::time::timeout(Duration::from_secs(90), c.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{}", seen.lock().unwrap());
    }
    for r in readers {
        r.await.unwrap();
    }
    for seen in &outputs {
        assert!(
            seen.lock().unwrap().contains("namespace/default"),
            "{}",
            seen.lock().unwrap()
        );
    }
    let shown_urls = outputs
        .iter()
        .filter(|o| o.lock().unwrap().contains("/device?user_code="))
        .count();
    assert_eq!(shown_urls, 1, "one code shown");
    assert_eq!(requests(&i, "/oauth2/device_authorization").await, 1);
    assert_eq!(session_starts(&i), 1);

    // whoami names the user and her directory groups.
    let (code, out, err) = desk.idbridge(&["whoami", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["user"], "alice", "{v}");
    assert_eq!(v[0]["groups"][0], "dev", "{v}");

    // A reader that goes away (`idbridge whoami | head -0`) ends it quietly, with no panic.
    {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(idbridge_tests::idbridge_bin())
            .arg("whoami")
            .envs(desk.env.iter().map(|(k, v)| (k, v)))
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.is_empty(),
            "{:?}: {err}",
            out.status
        );
    }
    // Nobody holds a lock now, and no lock file is left behind.
    let locks: Vec<_> = std::fs::read_dir(desk.cache())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".lock"))
        .map(|e| e.file_name())
        .collect();
    assert!(locks.is_empty(), "{locks:?}");

    // logout: the session is revoked at the server and the cache cleared; the next kubectl run
    // needs a login, and without a terminal it asks nothing and says what to run.
    let session = desk.session_file();
    let old = desk.session();
    let (code, _, err) = desk.idbridge(&["logout"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("logged out alice"), "{err}");
    assert!(!session.exists());
    let (status, _) = i
        .refresh(old["refresh_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(status, 400, "the refresh token is revoked");
    let review = i
        .review(old["access_token"].as_str().unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(review["authenticated"], false, "{review}");
    let (code, _, err) = desk.kubectl(&["get", "ns"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("without a terminal")
            && err.contains(&format!(
                "idbridge login --issuer {} --method device",
                i.base
            )),
        "{err}"
    );
    assert_eq!(requests(&i, "/oauth2/device_authorization").await, 1);
}

#[tokio::test]
async fn kubeconfig_merges_into_a_kubectl_written_file_keeping_other_entries() {
    let dir = idbridge_tests::scratch();
    let desk = Desk::new(dir.path(), "bob", Vec::new());
    // A kubeconfig kubectl wrote, with an unrelated cluster, user and context.
    for args in [
        &[
            "config",
            "set-cluster",
            "other",
            "--server=https://other.example.com:6443",
        ][..],
        &["config", "set-credentials", "other-admin", "--token=abc"],
        &[
            "config",
            "set-context",
            "other",
            "--cluster=other",
            "--user=other-admin",
        ],
        &["config", "use-context", "other"],
    ] {
        let (code, _, err) = desk.kubectl(args).await;
        assert_eq!(code, 0, "{err}");
    }
    let before = std::fs::read_to_string(desk.kubeconfig()).unwrap();
    let view = |d: &Desk| {
        let d = d.clone();
        async move {
            let (code, out, err) = d.kubectl(&["config", "view", "--raw", "-o", "json"]).await;
            assert_eq!(code, 0, "{err}");
            serde_json::from_str::<Value>(&out).unwrap()
        }
    };
    let other = |v: &Value, section: &str, name: &str| {
        v[section]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap()
    };
    let v0 = view(&desk).await;
    let (ca_pem, _, _) = idbridge_tests::ldap::test_ca(dir.path(), "k8s").unwrap();
    for round in 0..2 {
        // A second run updates the entries in place.
        let server = format!("https://k8s{round}.example.com:6443");
        let (code, out, err) = desk
            .idbridge(&[
                "kubeconfig",
                "--server",
                &server,
                "--issuer",
                "https://idbridge.example.com",
                "--cluster-ca-file",
                ca_pem.to_str().unwrap(),
                "--context",
                "prod",
            ])
            .await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(desk.kubeconfig().to_str().unwrap()), "{out}");
        let after = std::fs::read_to_string(desk.kubeconfig()).unwrap();
        // kubectl's lines are all there, in their order, none twice (but the current context).
        let mut rest = after.lines();
        for line in before.lines().filter(|l| !l.starts_with("current-context")) {
            assert!(rest.any(|l| l == line), "{line:?} lost or moved:\n{after}");
        }
        for line in before
            .lines()
            .filter(|l| l.contains("other") && !l.starts_with("current-context"))
        {
            let count = |t: &str| t.lines().filter(|l| *l == line).count();
            assert_eq!(count(&after), count(&before), "{line:?}");
        }
        let v = view(&desk).await;
        for (section, name) in [
            ("clusters", "other"),
            ("users", "other-admin"),
            ("contexts", "other"),
        ] {
            assert_eq!(other(&v, section, name), other(&v0, section, name));
        }
        assert_eq!(v["current-context"], "prod");
        assert_eq!(other(&v, "clusters", "prod")["cluster"]["server"], server);
        assert_eq!(v["clusters"].as_array().unwrap().len(), 2, "{v}");
        let exec = &other(&v, "users", "idbridge-prod")["user"]["exec"];
        assert_eq!(
            exec["command"],
            std::path::absolute(idbridge_tests::idbridge_bin())
                .unwrap()
                .to_str()
                .unwrap()
        );
        assert_eq!(exec["interactiveMode"], "IfAvailable");
    }
    // kubectl reads the result: the context is usable as written.
    let (code, out, err) = desk
        .kubectl(&["config", "get-contexts", "-o", "name"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "other\nprod\n");
    // A namespace set with kubectl on our context survives another run.
    let (code, _, err) = desk
        .kubectl(&["config", "set-context", "prod", "--namespace=team-a"])
        .await;
    assert_eq!(code, 0, "{err}");
    let rerun = |context: &'static str| {
        let desk = desk.clone();
        async move {
            desk.idbridge(&[
                "kubeconfig",
                "--server",
                "https://k8s.example.com:6443",
                "--issuer",
                "https://idbridge.example.com",
                "--context",
                context,
            ])
            .await
        }
    };
    let (code, _, err) = rerun("prod").await;
    assert_eq!(code, 0, "{err}");
    let v = view(&desk).await;
    assert_eq!(
        other(&v, "contexts", "prod")["context"]["namespace"],
        "team-a"
    );
    assert_eq!(
        other(&v, "clusters", "prod")["cluster"]["server"],
        "https://k8s.example.com:6443"
    );
    // The cluster's CA from before is kept when none is given.
    assert!(other(&v, "clusters", "prod")["cluster"]["certificate-authority-data"].is_string());
    // Entries idbridge did not write are never overwritten by name.
    let before_other = std::fs::read(desk.kubeconfig()).unwrap();
    let (code, _, err) = rerun("other").await;
    assert_ne!(code, 0);
    assert!(
        err.contains("named other that idbridge did not write") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(desk.kubeconfig()).unwrap(), before_other);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(desk.kubeconfig())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
