//! `idbridge workload-agent`: the pod side of workload credentials. It presents the pod's
//! projected ServiceAccount token to idbridge, writes the credential cache or keytab it gets
//! (and the `krb5.conf` to use it with) into a memory-backed volume, atomically and readable by
//! the pod's own user and group only, and renews at about half the lifetime, with jitter, and
//! with back-off while idbridge cannot be reached. A refusal (the pod, its serviceaccount or
//! its principal revoked, or its token no longer valid) removes the credential and stops
//! renewing, saying why.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use clap::Args;
use serde::Deserialize;

/// The credential cache's file name.
const CCACHE: &str = "krb5cc";
/// The keytab's file name.
const KEYTAB: &str = "krb5.keytab";
/// The `krb5.conf` file name.
const KRB5_CONF: &str = "krb5.conf";

/// Flags of `idbridge workload-agent`.
#[derive(Debug, Args)]
#[command(
    after_help = "In a pod, the admission webhook (/webhooks/mutate-pod) adds this agent with the right flags.\n\
Run by hand (the token from `kubectl create token SA --audience idbridge --bound-object-kind Pod ...`):\n  \
idbridge workload-agent --server https://idbridge.example.com --token-file token --dir ./cred --once\n  \
export KRB5CCNAME=FILE:./cred/krb5cc KRB5_CONFIG=./cred/krb5.conf\n\n\
Exit codes: 0 fetched (--once) or stopped by a signal; 1 refused, or no credential by --timeout (--once);\n\
with --check, 0 when the credential is in place and 1 when not."
)]
pub struct AgentArgs {
    /// idbridge's URL.
    #[arg(long, env = "IDBRIDGE_SERVER", required_unless_present = "check")]
    server: Option<String>,
    /// The pod's projected ServiceAccount token (audience idbridge), read afresh at each
    /// renewal (the kubelet replaces it).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/run/secrets/idbridge/token"
    )]
    token_file: PathBuf,
    /// Where the credential, and the krb5.conf to use it with, are written (a memory-backed
    /// volume in a pod).
    #[arg(long, value_name = "DIR", default_value = "/var/run/idbridge")]
    dir: PathBuf,
    /// The CA that issued idbridge's certificate (PEM) [default: $IDBRIDGE_CA, a PEM text,
    /// else the system's roots].
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Fetch once and exit (an init container, a Job).
    #[arg(long)]
    once: bool,
    /// With --once: how long to keep trying while the credential cannot be fetched (idbridge
    /// unreachable or failing, the token file not there yet); a refusal ends at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
    /// Exit 0 if the credential is in place, 1 if not (a startup probe).
    #[arg(long)]
    check: bool,
}

/// What idbridge answers.
#[derive(Deserialize)]
struct Answer {
    principal: String,
    form: String,
    credential: String,
    krb5_conf: String,
    expires_at: i64,
    renew_after: i64,
}

/// What idbridge refused with.
#[derive(Deserialize, Default)]
struct Refused {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

enum Outcome {
    /// Written; renew at this Unix time; valid until that.
    Written { renew_at: i64, expires_at: i64 },
    /// idbridge said no: stop.
    Refused(String),
    /// Could not ask or be answered; try again.
    Failed(String),
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A fraction in [0, 1) from the system's random source, for jitter.
fn random_fraction() -> f64 {
    let mut b = [0u8; 4];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// Writes `bytes` to `dir/name` atomically (a reader sees the old file or the new one, never
/// part of one), mode 0440: the pod's user and group (`runAsUser`, `fsGroup`) read it.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o440)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        // The mode is set whatever the umask was.
        f.set_permissions(std::fs::Permissions::from_mode(0o440))?;
        std::fs::rename(&tmp, dir.join(name))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", dir.join(name).display()))
}

/// Removes the credential files; whether there was one.
fn remove_credentials(dir: &Path) -> bool {
    let mut removed = false;
    for name in [CCACHE, KEYTAB] {
        removed |= std::fs::remove_file(dir.join(name)).is_ok();
    }
    removed
}

struct Agent {
    http: reqwest::Client,
    url: String,
    token_file: PathBuf,
    dir: PathBuf,
}

impl Agent {
    async fn fetch(&self) -> Outcome {
        let token = match std::fs::read_to_string(&self.token_file) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
            Ok(_) => return Outcome::Failed(format!("{} is empty", self.token_file.display())),
            Err(e) => {
                return Outcome::Failed(format!(
                    "cannot read the token {}: {e}",
                    self.token_file.display()
                ));
            }
        };
        let resp = match self.http.post(&self.url).bearer_auth(&token).send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed(format!(
                    "{:#}",
                    crate::admin_cmd::unreachable(&self.url, e, None, "")
                ));
            }
        };
        let status = resp.status();
        if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
            let r: Refused = resp.json().await.unwrap_or_default();
            return Outcome::Refused(format!(
                "idbridge refused this pod's credential ({status}{}): {}",
                if r.error.is_empty() {
                    String::new()
                } else {
                    format!(", {}", r.error)
                },
                r.error_description
            ));
        }
        if !status.is_success() {
            let r: Refused = resp.json().await.unwrap_or_default();
            return Outcome::Failed(format!(
                "idbridge answered {status}: {}",
                r.error_description
            ));
        }
        let answer: Answer = match resp.json().await {
            Ok(a) => a,
            Err(e) => return Outcome::Failed(format!("idbridge's answer does not read: {e}")),
        };
        let Ok(mut bytes) =
            base64::engine::general_purpose::STANDARD.decode(answer.credential.as_bytes())
        else {
            return Outcome::Failed("idbridge's credential is not base64".into());
        };
        let (name, vars): (&str, &[&str]) = match answer.form.as_str() {
            "keytab" => (KEYTAB, &["KRB5_CLIENT_KTNAME", "KRB5_KTNAME"]),
            _ => (CCACHE, &["KRB5CCNAME"]),
        };
        let written = write_atomically(&self.dir, KRB5_CONF, answer.krb5_conf.as_bytes())
            .and_then(|()| write_atomically(&self.dir, name, &bytes));
        zeroize::Zeroize::zeroize(&mut bytes);
        if let Err(e) = written {
            return Outcome::Failed(format!("{e:#}"));
        }
        let file = self.dir.join(name);
        let exports: Vec<String> = vars
            .iter()
            .map(|v| format!("{v}=FILE:{}", file.display()))
            .collect();
        tracing::info!(
            principal = %answer.principal,
            form = %answer.form,
            file = %file.display(),
            expires_at = %crate::login::rfc3339(answer.expires_at.unsigned_abs()).unwrap_or_default(),
            "{} KRB5_CONFIG={}",
            exports.join(" "),
            self.dir.join(KRB5_CONF).display()
        );
        Outcome::Written {
            renew_at: answer.renew_after,
            expires_at: answer.expires_at,
        }
    }
}

/// `idbridge workload-agent`.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    if args.check {
        let ok = [CCACHE, KEYTAB]
            .iter()
            .any(|n| std::fs::metadata(args.dir.join(n)).is_ok_and(|m| m.len() > 0));
        if !ok {
            // A probe: the exit code is the answer.
            std::process::exit(1);
        }
        return Ok(());
    }
    let server = args.server.clone().unwrap_or_default();
    let ca_pem = match (&args.ca_file, std::env::var("IDBRIDGE_CA")) {
        (Some(f), _) => Some(
            std::fs::read(f).with_context(|| format!("--ca-file: cannot read {}", f.display()))?,
        ),
        (None, Ok(pem)) if !pem.trim().is_empty() => Some(pem.into_bytes()),
        _ => None,
    };
    let http = crate::admin_cmd::http_client_pem(ca_pem.as_deref(), "--ca-file / IDBRIDGE_CA")?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("--dir: cannot create {}", args.dir.display()))?;
    let agent = Agent {
        http,
        url: format!("{}/v1/workload/credentials", server.trim_end_matches('/')),
        token_file: args.token_file.clone(),
        dir: args.dir.clone(),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let started = std::time::Instant::now();
    let deadline = now() + i64::try_from(args.timeout).unwrap_or(i64::MAX);
    let mut backoff = Duration::from_secs(1);
    let mut valid_until: Option<i64> = None;
    loop {
        let wait = match agent.fetch().await {
            Outcome::Written {
                renew_at,
                expires_at,
            } => {
                if args.once {
                    return Ok(());
                }
                backoff = Duration::from_secs(1);
                valid_until = Some(expires_at);
                // Back a little later, by up to a tenth of the wait: replicas started together
                // do not come back together (and never before a rotation idbridge awaits).
                let left = (renew_at - now()).max(1);
                #[allow(
                    clippy::cast_precision_loss,
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss
                )]
                let secs = (left as f64 * (1.0 + 0.1 * random_fraction())).max(1.0) as u64;
                tracing::info!(in_seconds = secs, "next renewal");
                Duration::from_secs(secs)
            }
            Outcome::Refused(why) => {
                let removed = remove_credentials(&args.dir);
                if args.once {
                    if removed {
                        tracing::warn!("the credential held before was removed");
                    }
                    bail!("{why}");
                }
                if removed {
                    tracing::error!(reason = %why, "credential removed; not renewing");
                } else {
                    tracing::error!(reason = %why, "refused; not asking again (restart the pod once the cause is fixed)");
                }
                // Stay up (a sidecar that exits is restarted, and would only be refused
                // again) until the pod stops.
                term.recv().await;
                return Ok(());
            }
            Outcome::Failed(why) => {
                if args.once && now() >= deadline {
                    bail!(
                        "{why} (gave up after {}s, --timeout {}s)",
                        started.elapsed().as_secs(),
                        args.timeout
                    );
                }
                if valid_until.is_some_and(|t| now() >= t) {
                    remove_credentials(&args.dir);
                    valid_until = None;
                    tracing::error!("the credential has expired and could not be renewed: removed");
                }
                let mut w = backoff;
                if args.once {
                    // Never sleep past --timeout: the last try is made at it.
                    let left = u64::try_from((deadline - now()).max(0)).unwrap_or(0);
                    w = w.min(Duration::from_secs(left.max(1)));
                }
                let what = if valid_until.is_some() {
                    "cannot renew; will retry"
                } else {
                    "cannot fetch the credential; will retry"
                };
                tracing::warn!(error = %why, retry_in_seconds = w.as_secs(), "{what}");
                backoff = (backoff * 2).min(Duration::from_secs(60));
                w
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = term.recv() => return Ok(()),
        }
    }
}
