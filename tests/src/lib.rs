//! The testkit: starts real servers for end-to-end tests, each on an ephemeral port in its own
//! temporary directory, and waits until they are ready by polling them (never a fixed sleep).
//!
//! The `idbridge` binary is found through `IDBRIDGE_BIN`, or in the workspace's target directory
//! (`scripts/test` builds it first). A missing binary is a test failure that says how to build it.

pub mod kdc;
pub mod kube;
pub mod ldap;
pub mod load;
pub mod oidc;
pub mod samba;
pub mod stats;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `idbridge` binary under test.
///
/// # Panics
/// When it does not exist, saying how to build it.
#[must_use]
pub fn idbridge_bin() -> PathBuf {
    let p = std::env::var_os("IDBRIDGE_BIN").map_or_else(
        || {
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
                PathBuf::from,
            );
            target.join("debug/idbridge")
        },
        PathBuf::from,
    );
    assert!(
        p.exists(),
        "idbridge binary not found at {}: run scripts/test, or `cargo build -p idbridge`, or set IDBRIDGE_BIN",
        p.display()
    );
    p
}

/// How to start an idbridge.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// YAML config; written to `<dir>/config.yaml` and passed with `--config`. None: simple profile.
    pub config: Option<String>,
    /// An existing config file to pass with `--config` (instead of `config`).
    pub config_file: Option<PathBuf>,
    /// Working directory of the server (default: the test's).
    pub cwd: Option<PathBuf>,
    /// Extra arguments to `serve`.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

/// A running `idbridge serve`.
#[derive(Debug)]
pub struct Idbridge {
    child: Child,
    /// The directory holding the data dir, config and logs.
    pub root: PathBuf,
    /// The data dir.
    pub data_dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub base: String,
    /// An HTTP client trusting the generated CA.
    pub http: reqwest::Client,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    log_changed: tokio::sync::watch::Receiver<usize>,
}

/// A scratch directory that outlives restarts of the server using it.
#[must_use]
pub fn scratch() -> tempfile::TempDir {
    #[allow(clippy::expect_used)]
    tempfile::Builder::new()
        .prefix("idbridge-test-")
        .tempdir()
        .expect("create a temporary directory")
}

impl Idbridge {
    /// Starts the simple profile in `root`.
    ///
    /// # Errors
    /// If it does not become ready.
    pub async fn start(root: &Path) -> anyhow::Result<Self> {
        Self::start_with(root, Options::default()).await
    }

    /// Starts with options in `root` (a data dir `root/data` is used, or reused).
    ///
    /// # Errors
    /// If it exits or does not become ready; the error holds its standard error.
    pub async fn start_with(root: &Path, opts: Options) -> anyhow::Result<Self> {
        let data_dir = root.join("data");
        let mut cmd = Command::new(idbridge_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir);
        if let Some(cfg) = &opts.config {
            let p = root.join("config.yaml");
            std::fs::write(&p, cfg)?;
            cmd.arg("--config").arg(p);
        }
        if let Some(p) = &opts.config_file {
            cmd.arg("--config").arg(p);
        }
        if let Some(d) = &opts.cwd {
            cmd.current_dir(d);
        }
        // `info` unless the test asks for another level.
        cmd.args(&opts.args)
            .env("IDBRIDGE_LOG", "info")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("cannot start idbridge")?;
        // The server's log is collected as it comes, so tests can wait for a line without polling.
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, log_changed) = tokio::sync::watch::channel(0usize);
        let mut err_lines = BufReader::new(child.stderr.take().context("no stderr")?).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok(Some(line)) = err_lines.next_line().await {
                {
                    let mut l = sink
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    l.push_str(&line);
                    l.push('\n');
                }
                n += 1;
                let _ = tx.send(n);
            }
        });
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut seen_stdout = String::new();
        let addr = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("idbridge listening on ") {
                    return anyhow::Ok(Some(url.to_owned()));
                }
                seen_stdout.push_str(&line);
                seen_stdout.push('\n');
            }
            Ok(None)
        })
        .await;
        let log_now = || {
            log.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        };
        let base = match addr {
            Ok(Ok(Some(url))) => url,
            Ok(Ok(None)) => {
                let status = child.wait().await?;
                let mut rx = log_changed.clone();
                // Let the log reader reach the end of the exited process's output.
                while rx.changed().await.is_ok() {}
                bail!(
                    "idbridge exited ({status}) before listening:\n{}",
                    log_now()
                );
            }
            Ok(Err(e)) => bail!("reading idbridge's output failed: {e}\n{}", log_now()),
            Err(_) => bail!(
                "idbridge did not start within {START_TIMEOUT:?}:\n{}",
                log_now()
            ),
        };
        // Keep reading stdout (kept for tests) so the server never blocks on a full pipe.
        let stdout_seen = std::sync::Arc::new(std::sync::Mutex::new(seen_stdout));
        let sink = stdout_seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.push_str(&line);
                s.push('\n');
            }
        });
        let http = client_trusting(&data_dir.join("ca.crt"))?;
        let me = Self {
            child,
            root: root.to_owned(),
            data_dir,
            base,
            http,
            log,
            stdout: stdout_seen,
            log_changed,
        };
        let ready = me
            .http
            .get(me.url("/readyz"))
            .send()
            .await
            .context("GET /readyz")?;
        if !ready.status().is_success() {
            bail!("/readyz answered {}", ready.status());
        }
        Ok(me)
    }

    /// An absolute URL on this server.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's standard error so far.
    #[must_use]
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// What the server printed on standard output (not a terminal here).
    #[must_use]
    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until the server's log holds `needle` at least `count` times.
    ///
    /// # Errors
    /// If that does not happen within 30 s, or the server's log ends first.
    pub async fn wait_for_log(&self, needle: &str, count: usize) -> anyhow::Result<()> {
        let mut rx = self.log_changed.clone();
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if self.log().matches(needle).count() >= count {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return self.log().matches(needle).count() >= count;
                }
            }
        })
        .await;
        match found {
            Ok(true) => Ok(()),
            _ => bail!("{needle:?} did not appear in the log:\n{}", self.log()),
        }
    }

    /// The generated admin token.
    ///
    /// # Panics
    /// When the simple profile did not write it.
    #[must_use]
    pub fn admin_token(&self) -> String {
        read_trimmed(&self.data_dir.join("admin.token"))
    }

    /// The generated webhook caller token.
    ///
    /// # Panics
    /// When it was not written.
    #[must_use]
    pub fn webhook_token(&self) -> String {
        read_trimmed(&self.data_dir.join("webhook.token"))
    }

    /// The server's own signing keys, read from its store and unsealed with its `kek`: for
    /// tests that sign tokens it must judge (expired, for another audience, tampered claims).
    ///
    /// # Errors
    /// If the store or the key file cannot be read.
    pub async fn own_keys(&self) -> anyhow::Result<idbridge_tokens::KeySet> {
        use idbridge_core::KeyStore;
        let store = idbridge_store::SqliteStore::open(&self.data_dir.join("idbridge.db")).await?;
        let kek = idbridge_tokens::Kek::from_file(&self.data_dir.join("kek"))?;
        Ok(idbridge_tokens::KeySet::from_stored(
            &store.signing_keys().await?,
            Some(&kek),
        )?)
    }

    /// Its `/metrics` page.
    ///
    /// # Errors
    /// If the request fails.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(self.url("/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// The audit log so far. Lines of acknowledged changes are always there; review lines are
    /// written moments later, so to see every line use [`Idbridge::stop_and_read_audit`].
    #[must_use]
    pub fn audit_log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("audit.log")).unwrap_or_default()
    }

    /// Stops the server gracefully (which drains the audit queue) and returns the whole audit log.
    ///
    /// # Errors
    /// If the server does not stop cleanly.
    pub async fn stop_and_read_audit(self) -> anyhow::Result<String> {
        let path = self.data_dir.join("audit.log");
        let code = self.stop().await?;
        if code != Some(0) {
            bail!("idbridge exited with {code:?}");
        }
        Ok(std::fs::read_to_string(path)?)
    }

    /// Redeems an authorization code of the built-in CLI client at the token endpoint.
    ///
    /// # Errors
    /// If the HTTP call fails.
    pub async fn redeem_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> anyhow::Result<(u16, Value)> {
        self.oauth(
            "/oauth2/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "idbridge-cli"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
            ],
        )
        .await
    }

    /// Posts a v1 TokenReview as kube-apiserver does and returns the answer's `status`.
    ///
    /// # Errors
    /// If the HTTP call fails or the answer is not a TokenReview.
    pub async fn review(&self, token: &str, audiences: &[&str]) -> anyhow::Result<Value> {
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        });
        let resp = self
            .http
            .post(self.url("/webhooks/tokenreview?timeout=30s"))
            .bearer_auth(self.webhook_token())
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if !status.is_success() || v["kind"] != "TokenReview" {
            bail!("unexpected TokenReview answer {status}: {v}");
        }
        Ok(v["status"].clone())
    }

    /// Runs `idbridge <args>` against this server (admin commands get `--server` and
    /// `--data-dir`), returning exit status, stdout and stderr.
    ///
    /// # Errors
    /// If the process cannot run.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let out = Command::new(idbridge_bin())
            .args(args)
            .arg("--server")
            .arg(&self.base)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .await?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Like [`Idbridge::cli`], failing unless the command succeeds; returns stdout.
    ///
    /// # Errors
    /// If the command fails.
    pub async fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let (code, out, err) = self.cli(args).await?;
        if code != 0 {
            bail!("idbridge {args:?} exited {code}: {err}");
        }
        Ok(out)
    }

    /// Starts with a YAML configuration in `root`.
    ///
    /// # Errors
    /// As [`Idbridge::start_with`].
    pub async fn start_config(root: &Path, yaml: String) -> anyhow::Result<Self> {
        Self::start_with(
            root,
            Options {
                config: Some(yaml),
                ..Options::default()
            },
        )
        .await
    }

    /// Starts with the `admin` account, the accounts listed in `accounts` (YAML, written to
    /// `root/accounts.yaml`) and the configuration `extra`.
    ///
    /// # Errors
    /// As [`Idbridge::start_with`].
    pub async fn start_with_accounts(
        root: &Path,
        accounts: &str,
        extra: &str,
    ) -> anyhow::Result<Self> {
        let file = root.join("accounts.yaml");
        std::fs::write(&file, accounts)?;
        Self::start_config(
            root,
            format!(
                "bootstrap_admin: true\naccounts_file: {}\n{extra}",
                file.display()
            ),
        )
        .await
    }

    /// GETs a path and parses the JSON answer.
    ///
    /// # Errors
    /// If the call fails or the answer is not JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.http.get(self.url(path)).send().await?.json().await?)
    }

    /// Creates a static token for `user` with the CLI (through the admin API, or `--offline`)
    /// and returns it.
    ///
    /// # Errors
    /// If the command fails.
    pub async fn create_token(&self, user: &str, offline: bool) -> anyhow::Result<String> {
        let mut args = vec!["token", "create", "--user", user];
        if offline {
            args.push("--offline");
        }
        Ok(self.cli_ok(&args).await?.trim().to_owned())
    }

    /// The UID of the account `name`, read with `idbridge user list`.
    ///
    /// # Errors
    /// If the command fails or there is no such account.
    pub async fn account_uid(&self, name: &str, offline: bool) -> anyhow::Result<String> {
        let mut args = vec!["user", "list", "--json"];
        if offline {
            args.push("--offline");
        }
        let all: Vec<Value> = serde_json::from_str(&self.cli_ok(&args).await?)?;
        all.iter()
            .find(|a| a["name"] == name)
            .and_then(|a| a["uid"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("no account {name}"))
    }

    /// Posts the RFC 8693 exchange of a static token for an access token.
    ///
    /// # Errors
    /// If the HTTP call fails.
    pub async fn exchange(
        &self,
        static_token: &str,
        audience: Option<&str>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut form = vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", static_token),
            (
                "subject_token_type",
                "urn:idbridge:params:oauth:token-type:static",
            ),
        ];
        if let Some(a) = audience {
            form.push(("audience", a));
        }
        Ok(self
            .http
            .post(self.url("/oauth2/token"))
            .form(&form)
            .send()
            .await?)
    }

    /// Posts a form to an OAuth endpoint (`/oauth2/token`, `/oauth2/revoke`, ...) and returns the
    /// status and the JSON answer.
    ///
    /// # Errors
    /// If the HTTP call fails or the answer is not JSON.
    pub async fn oauth(&self, path: &str, form: &[(&str, &str)]) -> anyhow::Result<(u16, Value)> {
        let r = self.http.post(self.url(path)).form(form).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await?))
    }

    /// Starts a session with a static token; returns the token endpoint's answer (access and
    /// refresh token).
    ///
    /// # Errors
    /// If the exchange is refused.
    pub async fn login_static(&self, static_token: &str) -> anyhow::Result<Value> {
        let r = self.exchange(static_token, None).await?;
        if !r.status().is_success() {
            bail!("exchange refused: {}", r.text().await?);
        }
        Ok(r.json().await?)
    }

    /// The `password` grant (an LDAP / AD login) for the built-in client.
    ///
    /// # Errors
    /// If the HTTP call fails.
    pub async fn password_login(
        &self,
        username: &str,
        password: &str,
    ) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(self.url("/oauth2/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", username),
                ("password", password),
            ])
            .send()
            .await?)
    }

    /// The `password` grant; the status and the JSON answer.
    ///
    /// # Errors
    /// If the HTTP call fails or the answer is not JSON.
    pub async fn password_login_json(
        &self,
        username: &str,
        password: &str,
    ) -> anyhow::Result<(u16, Value)> {
        let r = self.password_login(username, password).await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await?))
    }

    /// The `refresh_token` grant for the built-in client.
    ///
    /// # Errors
    /// If the HTTP call fails.
    pub async fn refresh(&self, refresh_token: &str) -> anyhow::Result<(u16, Value)> {
        self.oauth(
            "/oauth2/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    /// Exchanges a static token for an access token and returns the access token.
    ///
    /// # Errors
    /// If the exchange is refused.
    pub async fn access_token(&self, static_token: &str) -> anyhow::Result<String> {
        let r = self.exchange(static_token, None).await?;
        if !r.status().is_success() {
            bail!("exchange refused: {}", r.text().await?);
        }
        let v: Value = r.json().await?;
        v["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("no access_token in the answer")
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `HUP`, `KILL`).
    ///
    /// # Errors
    /// If `kill` fails.
    pub async fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("already exited")?;
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .await?;
        if !st.success() {
            bail!("kill -{sig} {pid} failed");
        }
        Ok(())
    }

    /// Stops with SIGTERM and waits; returns the exit code.
    ///
    /// # Errors
    /// If it cannot be signalled.
    pub async fn stop(mut self) -> anyhow::Result<Option<i32>> {
        self.signal("TERM").await?;
        Ok(self.child.wait().await?.code())
    }

    /// Kills with SIGKILL and waits.
    ///
    /// # Errors
    /// If it cannot be killed.
    pub async fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

fn read_trimmed(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
        .trim()
        .to_owned()
}

/// An HTTP client that trusts only the CA in `ca_pem`.
///
/// # Errors
/// If the file is not a PEM bundle.
pub fn client_trusting(ca_pem: &Path) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read(ca_pem).with_context(|| format!("read {}", ca_pem.display()))?;
    Ok(reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem)?)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// The text field `key` of a JSON answer.
///
/// # Panics
/// If there is none: the message shows the whole answer.
#[must_use]
pub fn text(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .to_owned()
}

/// Appends `lines` to a YAML document, each indented by `indent`.
pub fn indent_into(yaml: &mut String, lines: &str, indent: &str) {
    for line in lines.lines() {
        yaml.push_str(indent);
        yaml.push_str(line);
        yaml.push('\n');
    }
}

/// The repository root (where `examples/` lives).
#[must_use]
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs the binary with arguments, returning exit code, stdout and stderr.
///
/// # Errors
/// If it cannot run.
pub async fn run_idbridge(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(idbridge_bin()).args(args).output().await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
