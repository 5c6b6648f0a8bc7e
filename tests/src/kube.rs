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

/// The test binary's etcd, started once; its client URL.
///
/// It runs under a shell that holds the read end of a pipe whose write end this process keeps:
/// when the test binary exits, however it exits, the pipe closes and the shell stops etcd and
/// removes its data.
fn etcd() -> anyhow::Result<&'static str> {
    static ETCD: std::sync::OnceLock<Result<(String, std::process::Child), String>> =
        std::sync::OnceLock::new();
    let started = ETCD.get_or_init(|| start_etcd().map_err(|e| format!("{e:#}")));
    match started {
        Ok((url, _)) => Ok(url),
        Err(e) => bail!("{e}"),
    }
}

fn start_etcd() -> anyhow::Result<(String, std::process::Child)> {
    let etcd = program("etcd")?;
    let dir = std::env::temp_dir().join(format!(
        "idbridge-etcd-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir)?;
    let (client, peer) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::File::create(dir.with_extension("log"))?;
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(
            r#"dir="$1"; shift; "$@" & pid=$!; read -r _; kill "$pid" 2>/dev/null; wait "$pid"; rm -rf "$dir" "$dir.log""#,
        )
        .arg("etcd-under-test")
        .arg(&dir)
        .arg(&etcd)
        .arg("--name=test")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=test={peer_url}"))
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start etcd")?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let health = format!("127.0.0.1:{client}");
    loop {
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
            let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
            bail!("etcd did not become healthy:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((client_url, child))
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
        let port = free_port()?;
        let prefix = format!(
            "/idbridge-test-{}-{}",
            std::process::id(),
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        );
        let log_path = dir.join("kube-apiserver.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--etcd-servers={etcd}"))
            .arg(format!("--etcd-prefix={prefix}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", dir.display()))
            .arg(format!("--tls-cert-file={}", cert.display()))
            .arg(format!("--tls-private-key-file={}", key.display()))
            .arg("--endpoint-reconciler-type=none")
            .arg("--service-cluster-ip-range=10.96.0.0/12")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .arg(format!("--token-auth-file={}", tokens.display()))
            .arg("--authorization-mode=RBAC")
            .arg("--disable-admission-plugins=ServiceAccount");
        if let Some(p) = &authn.webhook_kubeconfig {
            cmd.arg(format!(
                "--authentication-token-webhook-config-file={}",
                p.display()
            ))
            .arg("--authentication-token-webhook-version=v1");
        }
        if let Some(p) = &authn.authentication_config {
            cmd.arg(format!("--authentication-config={}", p.display()));
        }
        cmd.args(&authn.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn().context("cannot start kube-apiserver")?;
        let mut server = Self {
            child,
            url: format!("https://127.0.0.1:{port}"),
            ca,
            admin_token,
            dir,
        };
        server.wait_ready().await?;
        Ok(server)
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
        let out = Command::new(kubectl_bin()?)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output()
            .await
            .context("cannot run kubectl")?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
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
