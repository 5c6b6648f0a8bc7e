//! A real kube-apiserver (v1.33) for the Kubernetes contracts, and the `kubectl` that talks to it.
//!
//! One etcd per test binary, started on first use and stopped when the binary exits; one
//! kube-apiserver per test, with its own `--etcd-prefix`, its own CA and serving certificate, an
//! admin token in `system:masters`, and whatever authenticator files the test gives it (the ones
//! the test's idbridge generated, unchanged). Without a controller manager there are no `default`
//! ServiceAccounts, the aggregated `view`/`edit`/`admin` roles have no rules and a deleted
//! namespace stays `Terminating`: tests create what they use and take fresh names.
//!
//! The binaries: `KUBE_APISERVER_BIN`, else the copy `scripts/setup` unpacks into
//! `${XDG_CACHE_HOME:-~/.cache}/idbridge-test/`; `KUBECTL`, else the plain kubectl setup links
//! there; etcd from Debian's `etcd-server`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::ldap::{free_port, program, test_ca};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where `scripts/setup` puts the test binaries.
fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("idbridge-test")
}

/// The kube-apiserver binary.
///
/// # Errors
/// When there is none, naming both ways to provide it.
pub fn apiserver_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("KUBE_APISERVER_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("KUBE_APISERVER_BIN={} does not exist", p.display());
    }
    let p = cache_dir().join("kube-apiserver");
    if p.is_file() {
        return Ok(p);
    }
    bail!(
        "no kube-apiserver: run scripts/setup (it unpacks ../shared/bin/kube-apiserver.xz, or \
         downloads the v1.33 release, into {}), or set KUBE_APISERVER_BIN to a kube-apiserver v1.33",
        cache_dir().display()
    )
}

/// The kubectl the tests run: a plain one, never a dispatcher that re-runs exec plugins.
///
/// # Errors
/// When there is none, naming both ways to provide it.
pub fn kubectl_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("KUBECTL") {
        return Ok(PathBuf::from(p));
    }
    let p = cache_dir().join("kubectl");
    if p.exists() {
        return Ok(p);
    }
    bail!(
        "no kubectl for the tests: run scripts/setup (it links a plain kubectl into {}), or set \
         KUBECTL to one",
        cache_dir().display()
    )
}

/// Runs a server under a shell that stops it when a pipe from this process closes: when the
/// handle is dropped, or when the test process exits however it exits (SIGKILL included). The
/// shell ignores SIGINT and SIGTERM, so a Ctrl-C reaches the server through the pipe and the
/// clean-up still runs; it exits when the server does, so a server that dies is seen at once.
/// `cleanup` is removed afterwards. The server's output goes to `log`.
fn guarded(program: &Path, args: &[String], cleanup: &Path, log: &Path) -> anyhow::Result<Command> {
    let log = std::fs::File::create(log)?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(
            r#"trap '' INT TERM
dir="$1"; shift
exec 3<&0
"$@" </dev/null 3<&- & pid=$!
{ read -r _ <&3; kill -KILL "$pid" 2>/dev/null; } &
reader=$!
exec 3<&-
wait "$pid"
kill "$reader" 2>/dev/null
[ -n "$dir" ] && rm -rf "$dir""#,
        )
        .arg("guarded-server")
        .arg(cleanup)
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log);
    Ok(cmd)
}

/// The test binary's etcd, started once; its client URL. A start that fails is tried again,
/// with other ports, by the next test that asks.
fn etcd() -> anyhow::Result<String> {
    static ETCD: std::sync::Mutex<Option<(String, Child)>> = std::sync::Mutex::new(None);
    let mut etcd = ETCD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((url, child)) = etcd.as_mut()
        && child.try_wait()?.is_none()
    {
        return Ok(url.clone());
    }
    let mut last = None;
    for _ in 0..3 {
        match start_etcd() {
            Ok(started) => {
                let url = started.0.clone();
                *etcd = Some(started);
                return Ok(url);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
}

fn start_etcd() -> anyhow::Result<(String, Child)> {
    let etcd = program("etcd")?;
    let dir = std::env::temp_dir().join(format!(
        "idbridge-etcd-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir)?;
    let client = free_port()?;
    let peer = std::iter::repeat_with(free_port)
        .take(5)
        .find(|p| p.as_ref().is_ok_and(|p| *p != client))
        .context("no second free port")??;
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = dir.with_extension("log");
    let args = vec![
        "--name=test".to_owned(),
        format!("--data-dir={}", dir.join("data").display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=test={peer_url}"),
    ];
    // Spawned from a runtime of its own: etcd outlives the test that started it, and a child
    // spawned on a test's runtime would be left without its reaper when that test ends.
    let mut child = {
        let _guard = reaper().enter();
        guarded(&etcd, &args, &dir, &log)?
            .spawn()
            .context("cannot start etcd")?
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    let health = format!("127.0.0.1:{client}");
    let failed = |why: &str| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        anyhow::anyhow!("etcd {why}:\n{text}")
    };
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(failed(&format!("exited ({status})")));
        }
        if let Ok(mut s) = std::net::TcpStream::connect(&health) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
            let mut answer = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut answer);
            if answer.contains("\"health\":\"true\"") {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(failed("did not become healthy"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // etcd keeps writing to the log it has open; the name goes now, the data dir at its end.
    let _ = std::fs::remove_file(&log);
    Ok((client_url, child))
}

/// The runtime that reaps etcd: it lives as long as the test binary.
fn reaper() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        #[allow(clippy::expect_used)]
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for etcd")
    })
}

/// What a test's kube-apiserver authenticates with, beside its admin token.
#[derive(Debug, Default, Clone)]
pub struct Authn {
    /// `--authentication-token-webhook-config-file`: idbridge's `webhook.kubeconfig`.
    pub webhook_kubeconfig: Option<PathBuf>,
    /// `--authentication-config`: idbridge's `authentication-config.yaml`.
    pub authentication_config: Option<PathBuf>,
    /// More flags.
    pub args: Vec<String>,
}

impl Authn {
    /// Webhook only: the `webhook.kubeconfig` an idbridge generated in `data_dir`.
    #[must_use]
    pub fn webhook(data_dir: &Path) -> Self {
        Self {
            webhook_kubeconfig: Some(data_dir.join("webhook.kubeconfig")),
            ..Self::default()
        }
    }

    /// The JWT authenticator only: the `authentication-config.yaml` in `data_dir`.
    #[must_use]
    pub fn jwt(data_dir: &Path) -> Self {
        Self {
            authentication_config: Some(data_dir.join("authentication-config.yaml")),
            ..Self::default()
        }
    }

    /// JWT + webhook: both files from `data_dir`.
    #[must_use]
    pub fn both(data_dir: &Path) -> Self {
        Self {
            authentication_config: Self::jwt(data_dir).authentication_config,
            ..Self::webhook(data_dir)
        }
    }

    /// With `flag` added.
    #[must_use]
    pub fn arg(mut self, flag: &str) -> Self {
        self.args.push(flag.to_owned());
        self
    }
}

/// A running kube-apiserver.
#[derive(Debug)]
pub struct ApiServer {
    child: Child,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA its serving certificate chains to.
    pub ca: PathBuf,
    /// A bearer token of a user in `system:masters`.
    pub admin_token: String,
    dir: PathBuf,
}

impl ApiServer {
    /// Starts a kube-apiserver in `dir` with `authn`, and waits until `/readyz` answers.
    ///
    /// # Errors
    /// If a binary is missing, or it exits or is not ready in time (the error holds its log).
    pub async fn start(dir: &Path, authn: Authn) -> anyhow::Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let bin = apiserver_bin()?;
        let etcd = etcd()?;
        let dir = dir.join(format!("apiserver-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir)?;
        let (ca, cert, key) = test_ca(&dir, "apiserver")?;
        let (sa_key, sa_pub) = (dir.join("sa.key"), dir.join("sa.pub"));
        let sa = rcgen::KeyPair::generate()?;
        std::fs::write(&sa_key, sa.serialize_pem())?;
        std::fs::write(&sa_pub, sa.public_key_pem())?;
        let admin_token = format!("admin-{:x}", rand_u64());
        let tokens = dir.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!("{admin_token},test-admin,test-admin-uid,system:masters\n"),
        )?;
        let prefix = format!(
            "/idbridge-test-{}-{}",
            std::process::id(),
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        );
        let mut args = vec![
            format!("--etcd-servers={etcd}"),
            format!("--etcd-prefix={prefix}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--cert-dir={}", dir.display()),
            format!("--tls-cert-file={}", cert.display()),
            format!("--tls-private-key-file={}", key.display()),
            "--endpoint-reconciler-type=none".to_owned(),
            "--service-cluster-ip-range=10.96.0.0/12".to_owned(),
            format!("--service-account-issuer={}", Self::SERVICE_ACCOUNT_ISSUER),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            format!("--token-auth-file={}", tokens.display()),
            "--authorization-mode=RBAC".to_owned(),
            "--disable-admission-plugins=ServiceAccount".to_owned(),
        ];
        if let Some(p) = &authn.webhook_kubeconfig {
            args.push(format!(
                "--authentication-token-webhook-config-file={}",
                p.display()
            ));
            args.push("--authentication-token-webhook-version=v1".to_owned());
        }
        if let Some(p) = &authn.authentication_config {
            args.push(format!("--authentication-config={}", p.display()));
        }
        args.extend(authn.args.iter().cloned());
        // The port is free when picked and may be taken before kube-apiserver binds it: then
        // it is tried again on another.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let mut with_port = args.clone();
            with_port.push(format!("--secure-port={port}"));
            let log = dir.join("kube-apiserver.log");
            let child = guarded(&bin, &with_port, Path::new(""), &log)?
                .spawn()
                .context("cannot start kube-apiserver")?;
            let mut server = Self {
                child,
                url: format!("https://127.0.0.1:{port}"),
                ca: ca.clone(),
                admin_token: admin_token.clone(),
                dir: dir.clone(),
            };
            match server.wait_ready().await {
                Ok(()) => return Ok(server),
                Err(e) if attempt < 3 && server.log_tail().contains("address already in use") => {
                    drop(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = crate::client_trusting(&self.ca)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("kube-apiserver exited ({status}):\n{}", self.log_tail());
            }
            let ready = http
                .get(format!("{}/readyz", self.url))
                .bearer_auth(&self.admin_token)
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("kube-apiserver not ready in time:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The key it signs ServiceAccount tokens with (PKCS#8 PEM, ECDSA P-256), for tests that
    /// need a token the TokenRequest API does not make (one already expired).
    #[must_use]
    pub fn service_account_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }

    /// The issuer of its ServiceAccount tokens.
    pub const SERVICE_ACCOUNT_ISSUER: &'static str = "https://kubernetes.default.svc.cluster.local";

    /// The last lines of its log.
    #[must_use]
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// A kubeconfig for this API server whose user is `user_yaml` (the body of its `user:`
    /// entry, indented by 4 spaces), written into the server's directory as `name`.
    ///
    /// # Errors
    /// If it cannot be written.
    pub fn kubeconfig(&self, name: &str, user_yaml: &str) -> anyhow::Result<PathBuf> {
        let p = self.dir.join(name);
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: k8s\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n{user_yaml}contexts:\n- name: user\n  context: {{cluster: k8s, user: user}}\ncurrent-context: user\n",
                self.url,
                self.ca.display()
            ),
        )?;
        Ok(p)
    }

    /// Applies `examples/workload-rbac.yaml` as the admin (idbridge's ServiceAccount, allowed
    /// to create TokenReviews) and returns a kubeconfig naming a file with a two-hour token of
    /// that ServiceAccount (`tokenFile`): idbridge's identity for workload credentials.
    ///
    /// # Errors
    /// If kubectl fails.
    pub async fn workload_identity_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        let admin = self.token_kubeconfig(&self.admin_token)?;
        let rbac = crate::repo_root().join("examples/workload-rbac.yaml");
        let rbac = rbac.to_string_lossy().into_owned();
        let mut token = String::new();
        for args in [
            &["apply", "-f", rbac.as_str()][..],
            &[
                "create",
                "token",
                "idbridge",
                "-n",
                "idbridge",
                "--duration=2h",
            ][..],
        ] {
            let (code, out, err) = self.kubectl(&admin, args, &[]).await?;
            if code != 0 {
                anyhow::bail!("kubectl {args:?}: {err}");
            }
            token = out;
        }
        // As the example says: the token in a file of its own, without a newline.
        let file = self.dir.join(format!("idbridge-{:x}.token", rand_u64()));
        std::fs::write(&file, token.trim())?;
        self.kubeconfig(
            &format!("kubeconfig-{:x}", rand_u64()),
            &format!("    tokenFile: {}\n", file.display()),
        )
    }

    /// A kubeconfig that presents `token`.
    ///
    /// # Errors
    /// If it cannot be written.
    pub fn token_kubeconfig(&self, token: &str) -> anyhow::Result<PathBuf> {
        let name = format!("kubeconfig-{:x}", rand_u64());
        self.kubeconfig(&name, &format!("    token: {token}\n"))
    }

    /// Runs kubectl against this server with `kubeconfig`: exit code, stdout, stderr.
    ///
    /// # Errors
    /// If kubectl cannot be run.
    pub async fn kubectl(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<(i32, String, String)> {
        // A request, or an exec plugin, that hangs fails the test instead of holding it.
        let run = Command::new(kubectl_bin()?)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--request-timeout=30s")
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .with_context(|| format!("kubectl {args:?} did not finish in 2 minutes"))?
            .context("cannot run kubectl")?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Lets members of `group` get and list namespaces (a ClusterRole and its binding, made as
    /// the admin), and waits, bounded, until the authorizer says so.
    ///
    /// # Errors
    /// If kubectl fails, or RBAC has not caught up after 30 s.
    pub async fn let_group_list_namespaces(&self, group: &str) -> anyhow::Result<()> {
        let admin = self.token_kubeconfig(&self.admin_token)?;
        let role = format!("{group}-reads-namespaces");
        let (role_flag, group_flag) = (format!("--clusterrole={role}"), format!("--group={group}"));
        for args in [
            &[
                "create",
                "clusterrole",
                &role,
                "--verb=get,list",
                "--resource=namespaces",
            ][..],
            &[
                "create",
                "clusterrolebinding",
                &role,
                &role_flag,
                &group_flag,
            ],
        ] {
            let (code, _, err) = self.kubectl(&admin, args, &[]).await?;
            if code != 0 {
                bail!("kubectl {args:?}: {err}");
            }
        }
        let as_group = format!("--as-group={group}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let (_, out, _) = self
                .kubectl(
                    &admin,
                    &[
                        "auth",
                        "can-i",
                        "list",
                        "namespaces",
                        "--as=someone",
                        &as_group,
                    ],
                    &[],
                )
                .await?;
            if out.trim() == "yes" {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("RBAC does not let {group} list namespaces after 30 s")
    }

    /// `kubectl auth whoami -o json` as `token`: the user kube-apiserver sees, or the error.
    ///
    /// # Errors
    /// If kubectl fails (an Unauthorized token included); the error holds its output.
    pub async fn whoami(&self, token: &str) -> anyhow::Result<Value> {
        let kubeconfig = self.token_kubeconfig(token)?;
        self.whoami_with(&kubeconfig, &[]).await
    }

    /// `kubectl auth whoami -o json` with `kubeconfig` and `env`.
    ///
    /// # Errors
    /// If kubectl fails; the error holds its output.
    pub async fn whoami_with(
        &self,
        kubeconfig: &Path,
        env: &[(String, String)],
    ) -> anyhow::Result<Value> {
        let (code, out, err) = self
            .kubectl(kubeconfig, &["auth", "whoami", "-o", "json"], env)
            .await?;
        if code != 0 {
            bail!("kubectl auth whoami failed ({code}): {err}");
        }
        let v: Value = serde_json::from_str(&out).context("kubectl auth whoami output")?;
        Ok(v["status"]["userInfo"].clone())
    }

    /// Waits, bounded, until `token` is authenticated: kube-apiserver is ready before its JWT
    /// authenticator has fetched the issuer's keys, and retries that fetch every few seconds.
    ///
    /// # Errors
    /// The last refusal, if it is still refused after a minute.
    pub async fn wait_authenticated(&self, token: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.whoami(token).await {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "still refused after {}s; kube-apiserver log:\n{}",
                        READY_TIMEOUT.as_secs(),
                        self.log_tail()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).unwrap_or_default();
    u64::from_le_bytes(b)
}
