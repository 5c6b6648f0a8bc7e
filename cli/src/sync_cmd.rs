//! The sync worker inside `idbridge serve`, and `idbridge sync`.
//!
//! With a `sync` section, `serve` runs [`Worker::run_loop`]: a run shortly after start, then one
//! every `sync.interval`, each through the server's own admin operations (so its changes empty
//! the same caches every admin call does). The worker keeps the store's sync lease for as long
//! as the server runs, so an `--offline` run against the same store is refused meanwhile.
//! `idbridge sync --once` asks the running server for a run through the admin API;
//! `--offline` runs one against the store directly, when no server holds it.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use idbridge_directory::{LdapDirectory, ReadPhase};
use idbridge_sync::kube::Cluster;
use idbridge_sync::{Options, Outcome, Report, Rules, Runner};
use idbridge_tokens::{AdminOps, Audit};
use serde_json::{Value, json};

use crate::admin_cmd::{Backend, Target};
use crate::config::Config;

/// How long after start the first run begins (the server is up and answering by then).
const FIRST_RUN_AFTER: Duration = Duration::from_secs(2);

/// What a run needs from the config: the directory, the rules and the cluster.
pub struct Setup {
    directory: LdapDirectory,
    rules: Rules,
    interval: Duration,
    cluster: Option<Cluster>,
    /// How the cluster is reached: connected again before each run of a server, so that a
    /// kubeconfig whose token was replaced is read again.
    api: Option<idbridge_sync::kube::ApiConfig>,
    /// The instance label and groups prefix, for manifests without a cluster.
    instance: String,
    groups_prefix: String,
}

/// The `app.kubernetes.io/instance` value: `kubernetes.instance`, else the issuer's host.
fn instance(cfg: &Config) -> anyhow::Result<String> {
    if let Some(i) = &cfg.kubernetes.instance {
        if !idbridge_sync::labels::is_label_name(i) {
            bail!(
                "field `kubernetes.instance`: {i:?} is not a valid label value (letters, digits, '-', '_', '.', at most 63)"
            );
        }
        return Ok(i.clone());
    }
    let issuer = cfg.issuer();
    let host = reqwest::Url::parse(&issuer)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let v = idbridge_sync::labels::label_text(&host, 63);
    Ok(if v.is_empty() {
        "idbridge".to_owned()
    } else {
        v
    })
}

/// Checks the `sync` section and what it needs, reading files but connecting to nothing.
///
/// # Errors
/// A message naming the field at fault.
pub fn check(cfg: &Config) -> anyhow::Result<()> {
    let Some(s) = &cfg.sync else {
        return Ok(());
    };
    if cfg.directory.is_none() {
        bail!("field `sync`: needs a `directory` section to read users and groups from");
    }
    s.rules().map_err(anyhow::Error::msg)?;
    instance(cfg)?;
    // Rules match group names as tokens carry them, prefix included: an exact name without
    // the prefix never matches.
    if let Some(prefix) = cfg
        .directory
        .as_ref()
        .map(|d| d.groups.prefix.as_str())
        .filter(|p| !p.is_empty())
    {
        let exact = s
            .labels
            .roles
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("sync.labels.roles[{i}].group"), &r.matches.group))
            .chain(
                s.namespaces
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("sync.namespaces[{i}].group"), &r.matches.group)),
            );
        for (field, group) in exact {
            if let Some(g) = group.as_ref().filter(|g| !g.starts_with(prefix)) {
                tracing::warn!(
                    field,
                    "{g:?} does not start with `directory.groups.prefix` ({prefix:?}): rules match group names as tokens carry them, so it never matches"
                );
            }
        }
    }
    if let Some(api) = &cfg.kubernetes.api {
        idbridge_sync::kube::check(api).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// The `sync` section checked, with its directory and cluster, or `None` without one.
///
/// # Errors
/// A message naming the field at fault.
pub async fn setup(cfg: &Config) -> anyhow::Result<Option<Setup>> {
    check(cfg)?;
    let (Some(s), Some(d)) = (&cfg.sync, &cfg.directory) else {
        return Ok(None);
    };
    let instance = instance(cfg)?;
    let groups_prefix = cfg.kubernetes.groups_prefix.clone();
    let cluster = match &cfg.kubernetes.api {
        Some(api) => Some(
            Cluster::connect(api, instance.clone(), groups_prefix.clone())
                .await
                .map_err(anyhow::Error::msg)?,
        ),
        None => {
            if !s.namespaces.is_empty() {
                tracing::warn!(
                    "sync.namespaces rules are set but `kubernetes.api` is not: no Kubernetes objects are applied (`idbridge sync --dry-run --manifests DIR` writes them out)"
                );
            }
            None
        }
    };
    Ok(Some(Setup {
        // Its own connections: a long read never holds up a login's.
        directory: LdapDirectory::new(d)?,
        rules: s.rules().map_err(anyhow::Error::msg)?,
        interval: s.interval.get(),
        cluster,
        api: cfg.kubernetes.api.clone(),
        instance,
        groups_prefix,
    }))
}

/// This process's name in the lease: `host:pid-namespace:pid:nonce`. The nonce keeps two
/// processes apart that share a host name and a pid (containers); the namespace lets a runner
/// judge only a holder that runs where it can see it.
fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|l| {
            l.display()
                .to_string()
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
        })
        .unwrap_or_default();
    let mut nonce = [0u8; 6];
    let _ = aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut nonce);
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}:{ns}:{}:{nonce}", std::process::id())
}

/// What `/metrics` shows of sync.
#[derive(Debug, Default)]
struct Stats {
    runs: std::collections::BTreeMap<&'static str, u64>,
    changes: std::collections::BTreeMap<&'static str, u64>,
    guard_trips: u64,
    last_success_unix: Option<i64>,
    last_seconds: f64,
    last_users: usize,
    last_groups: usize,
    last: Option<Report>,
}

/// The sync worker of a running server.
pub struct Worker {
    setup: RwLock<Arc<Setup>>,
    ops: AdminOps,
    audit: Audit,
    holder: String,
    /// One run at a time, whoever asks.
    gate: tokio::sync::Mutex<()>,
    stats: Mutex<Stats>,
}

impl Worker {
    /// A worker over the server's admin operations and audit log.
    #[must_use]
    pub fn new(setup: Setup, ops: AdminOps, audit: Audit) -> Arc<Self> {
        Arc::new(Self {
            setup: RwLock::new(Arc::new(setup)),
            ops,
            audit,
            holder: holder(),
            gate: tokio::sync::Mutex::new(()),
            stats: Mutex::new(Stats::default()),
        })
    }

    /// New rules and directory settings from a reloaded config, for the next run.
    pub fn reconfigure(&self, setup: Setup) {
        *self.setup.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(setup);
    }

    fn current(&self) -> Arc<Setup> {
        self.setup
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// One run now (after the one in progress).
    pub async fn run_once(&self, opts: Options) -> Report {
        let _one = self.gate.lock().await;
        let setup = self.current();
        // The kubeconfig read again (its token may have been replaced since the last run).
        let fresh = match &setup.api {
            Some(api) => {
                match Cluster::connect(api, setup.instance.clone(), setup.groups_prefix.clone())
                    .await
                {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read `kubernetes.api` again; using the one read before");
                        None
                    }
                }
            }
            None => None,
        };
        let runner = Runner {
            directory: &setup.directory,
            ops: &self.ops,
            audit: Some(&self.audit),
            rules: &setup.rules,
            cluster: fresh.as_ref().or(setup.cluster.as_ref()),
            offline_objects: (opts.manifests && setup.cluster.is_none())
                .then_some((setup.instance.as_str(), setup.groups_prefix.as_str())),
            holder: &self.holder,
            // Held across the pause between runs, so that the lease stays this server's.
            lease_secs: setup.interval.as_secs() + 120,
        };
        let report = runner.run(opts, &|_, _| {}).await;
        // Renewed as the run ends too: a run longer than the margin leaves no gap before the
        // next one.
        if !opts.dry_run {
            let now = self.ops.now();
            let _ = self
                .ops
                .store()
                .take_sync_lease(&self.holder, now, now.plus_secs(runner.lease_secs))
                .await;
        }
        // A run that did not apply is logged (as a warning) by the runner itself.
        if matches!(report.outcome, Outcome::Applied | Outcome::DryRun) {
            tracing::info!(outcome = report.outcome.as_str(), "{}", report.summary());
        }
        if !opts.dry_run {
            self.count(&report);
        }
        report
    }

    fn count(&self, r: &Report) {
        let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        *s.runs.entry(r.outcome.as_str()).or_insert(0) += 1;
        if r.outcome == Outcome::Refused {
            s.guard_trips += 1;
        }
        if r.outcome == Outcome::Applied {
            for (k, n) in r.plan.counts() {
                *s.changes.entry(k.as_str()).or_insert(0) += n as u64;
            }
            s.last_success_unix = Some(self.ops.now().0);
        }
        s.last_seconds = r.seconds;
        s.last_users = r.read.users;
        s.last_groups = r.read.groups;
        s.last = Some(r.clone());
    }

    /// Runs now and every `sync.interval` after, until the server stops.
    pub async fn run_loop(self: Arc<Self>) {
        tokio::time::sleep(FIRST_RUN_AFTER).await;
        loop {
            self.run_once(Options::default()).await;
            tokio::time::sleep(self.current().interval).await;
        }
    }

    /// Gives the lease up (the server is stopping).
    pub async fn release(&self) {
        let _ = self.ops.store().release_sync_lease(&self.holder).await;
    }
}

#[async_trait::async_trait]
impl idbridge_bridge::SyncControl for Worker {
    async fn run(&self, dry_run: bool, force: bool, manifests: bool) -> Value {
        self.run_once(Options {
            dry_run,
            force,
            manifests,
        })
        .await
        .to_json()
    }

    async fn status(&self) -> Value {
        let state = self.ops.store().sync_state().await.ok();
        let s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        json!({
            "configured": true,
            "interval_seconds": self.current().interval.as_secs(),
            "last_success": state.as_ref().and_then(|s| s.last_success).map(|t| t.0),
            "last_run": state.as_ref().and_then(|s| s.last_run).map(|t| t.0),
            "last_error": state.as_ref().and_then(|s| s.last_error.clone()),
            "last_summary": s.last.as_ref().map(Report::summary),
        })
    }

    fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::from(
            "# HELP idbridge_sync_runs_total Sync runs by outcome.\n# TYPE idbridge_sync_runs_total counter\n",
        );
        for o in ["applied", "refused", "busy", "failed"] {
            let _ = writeln!(
                out,
                "idbridge_sync_runs_total{{outcome=\"{o}\"}} {}",
                s.runs.get(o).copied().unwrap_or(0)
            );
        }
        out.push_str(
            "# HELP idbridge_sync_changes_total Account changes applied by sync, by kind.\n# TYPE idbridge_sync_changes_total counter\n",
        );
        for k in ["create", "rename", "update", "enable", "disable"] {
            let _ = writeln!(
                out,
                "idbridge_sync_changes_total{{kind=\"{k}\"}} {}",
                s.changes.get(k).copied().unwrap_or(0)
            );
        }
        let _ = write!(
            out,
            "# HELP idbridge_sync_guard_trips_total Runs the guards refused.\n\
             # TYPE idbridge_sync_guard_trips_total counter\n\
             idbridge_sync_guard_trips_total {}\n\
             # HELP idbridge_sync_last_success_timestamp_seconds When a run last applied (0: never, since start).\n\
             # TYPE idbridge_sync_last_success_timestamp_seconds gauge\n\
             idbridge_sync_last_success_timestamp_seconds {}\n\
             # HELP idbridge_sync_last_duration_seconds How long the last run took.\n\
             # TYPE idbridge_sync_last_duration_seconds gauge\n\
             idbridge_sync_last_duration_seconds {:.3}\n\
             # HELP idbridge_sync_entries_read Entries the last run read, by kind.\n\
             # TYPE idbridge_sync_entries_read gauge\n\
             idbridge_sync_entries_read{{kind=\"user\"}} {}\n\
             idbridge_sync_entries_read{{kind=\"group\"}} {}\n",
            s.guard_trips,
            s.last_success_unix.unwrap_or(0),
            s.last_seconds,
            s.last_users,
            s.last_groups,
        );
        out
    }
}

/// Flags of `idbridge sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Run once now [default: show how the last runs went].
    #[arg(long)]
    pub once: bool,
    /// Plan only: show what a run would change, and write nothing (implies --once).
    #[arg(long)]
    pub dry_run: bool,
    /// Apply a plan its guards refuse (many disables, no users read, another directory than
    /// last time). Look at `--dry-run` first.
    #[arg(long)]
    pub force: bool,
    /// Write the Kubernetes objects the namespace rules ask for as YAML files into DIR (`-`:
    /// standard output), e.g. with --dry-run to review them or apply them another way
    /// (implies --once).
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub target: Target,
}

/// Exit code of a run that the guards refused.
pub const EXIT_REFUSED: u8 = 3;
/// Exit code of a run not started because another runner holds the lease.
pub const EXIT_BUSY: u8 = 4;

/// A run's outcome that is not a success, for `main` to give its exit code.
#[derive(Debug)]
pub struct NotApplied(pub Outcome);

impl std::fmt::Display for NotApplied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sync {}", self.0.as_str())
    }
}

impl std::error::Error for NotApplied {}

/// `idbridge sync`.
pub async fn run(args: SyncArgs) -> anyhow::Result<()> {
    let t = &args.target;
    if args.force && !args.once && !args.dry_run {
        bail!("--force applies to a run: add --once");
    }
    let once = args.once || args.dry_run || args.manifests.is_some();
    let backend = Backend::new(t).await?;
    let report: Value = match (&backend, once) {
        (Backend::Remote { .. }, false) => {
            let status: Value = backend.call(reqwest::Method::GET, "/sync", None).await?;
            return print_status(&status, t.json);
        }
        (Backend::Remote { .. }, true) => {
            if std::io::stderr().is_terminal() {
                eprintln!(
                    "asking the server to run sync{}…",
                    if args.dry_run { " (dry run)" } else { "" }
                );
            }
            backend
                .call(
                    reqwest::Method::POST,
                    "/sync",
                    Some(json!({
                        "dry_run": args.dry_run,
                        "force": args.force,
                        "manifests": args.manifests.is_some(),
                    })),
                )
                .await?
        }
        (Backend::Offline(ops, cfg), _) => {
            if !once {
                let state = ops.store().sync_state().await?;
                return print_status(
                    &json!({
                        "configured": cfg.sync.is_some(),
                        "last_success": state.last_success.map(|t| t.0),
                        "last_run": state.last_run.map(|t| t.0),
                        "last_error": state.last_error,
                    }),
                    t.json,
                );
            }
            let Some(setup) = setup(cfg).await? else {
                bail!(
                    "the configuration has no `sync` section: add one (see docs/sync.md), or pass --config"
                );
            };
            let audit = Audit::open(&crate::serve::audit_sink(cfg))
                .context("field `audit.file`: cannot open the audit log")?;
            let holder = holder();
            let runner = Runner {
                directory: &setup.directory,
                ops,
                audit: Some(&audit),
                rules: &setup.rules,
                cluster: setup.cluster.as_ref(),
                offline_objects: (args.manifests.is_some() && setup.cluster.is_none())
                    .then_some((setup.instance.as_str(), setup.groups_prefix.as_str())),
                holder: &holder,
                lease_secs: 600,
            };
            let show = std::io::stderr().is_terminal();
            let began = std::time::Instant::now();
            let progress = move |phase: ReadPhase, n: u64| {
                if show {
                    let what = match phase {
                        ReadPhase::Groups => "groups",
                        ReadPhase::Users => "users",
                    };
                    #[allow(clippy::cast_precision_loss)] // a rate to show
                    let rate = n as f64 / began.elapsed().as_secs_f64().max(0.001);
                    eprint!("\rreading the directory: {n} {what} ({rate:.0} entries/s)…   ");
                }
            };
            let report = runner
                .run(
                    Options {
                        dry_run: args.dry_run,
                        force: args.force,
                        manifests: args.manifests.is_some(),
                    },
                    &progress,
                )
                .await;
            if show {
                eprint!("\r\x1b[K");
            }
            if !args.dry_run {
                let _ = ops.store().release_sync_lease(&holder).await;
            }
            audit.close();
            report.to_json()
        }
    };
    if let Some(dir) = &args.manifests {
        write_manifests(&report, dir)?;
    }
    print_report(&report, t.json)
}

/// Writes the report's objects as YAML: one file per object in `dir`, or all to standard
/// output as one multi-document stream for `-`.
fn write_manifests(report: &Value, dir: &std::path::Path) -> anyhow::Result<()> {
    let Some(objects) = report["kubernetes"]["manifests"].as_array() else {
        eprintln!(
            "no manifests: the run ended before it planned the Kubernetes objects, or the config has no `sync.namespaces` rules"
        );
        return Ok(());
    };
    let yaml = |o: &Value| serde_yaml_ng::to_string(o);
    if dir.as_os_str() == "-" {
        for o in objects {
            outln!("---\n{}", yaml(o)?.trim_end());
        }
        return Ok(());
    }
    crate::files::create_dir(dir)?;
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or("object").to_lowercase();
        let name = o["metadata"]["name"].as_str().unwrap_or("unnamed");
        let file = match o["metadata"]["namespace"].as_str() {
            Some(ns) => format!("{ns}.{kind}.{name}.yaml"),
            None => format!("{kind}.{name}.yaml"),
        };
        let path = dir.join(file);
        std::fs::write(&path, yaml(o)?)
            .with_context(|| format!("--manifests: cannot write {}", path.display()))?;
    }
    eprintln!("{} manifests written to {}", objects.len(), dir.display());
    Ok(())
}

fn print_status(status: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(status)?);
        return Ok(());
    }
    let time = |k: &str| {
        status[k]
            .as_u64()
            .and_then(|t| crate::login::rfc3339(t).ok())
            .unwrap_or_else(|| "never".to_owned())
    };
    outln!("last success: {}", time("last_success"));
    outln!("last run:     {}", time("last_run"));
    if let Some(e) = status["last_error"].as_str() {
        outln!("last error:   {e}");
    }
    if let Some(s) = status["last_summary"].as_str() {
        outln!("{s}");
    }
    Ok(())
}

fn print_report(report: &Value, json: bool) -> anyhow::Result<()> {
    let outcome: Outcome =
        serde_json::from_value(report["outcome"].clone()).unwrap_or(Outcome::Failed);
    if json {
        outln!("{}", serde_json::to_string_pretty(report)?);
    } else {
        // One line per change: accounts, then Kubernetes objects made or deleted.
        let mut rows: Vec<(String, String, String)> = Vec::new();
        for c in report["plan"]["changes"].as_array().into_iter().flatten() {
            let account = match c["from"].as_str() {
                Some(from) => format!("{from} → {}", c["account"].as_str().unwrap_or("?")),
                None => c["account"].as_str().unwrap_or("?").to_owned(),
            };
            rows.push((
                c["kind"].as_str().unwrap_or("?").to_owned(),
                account,
                c["reason"].as_str().unwrap_or("").to_owned(),
            ));
        }
        let k = &report["kubernetes"];
        let object = |o: &Value| {
            let (kind, name) = (
                o["kind"].as_str().unwrap_or("?"),
                o["name"].as_str().unwrap_or("?"),
            );
            match o["namespace"].as_str() {
                Some(ns) if !ns.is_empty() => format!("{kind} {ns}/{name}"),
                _ => format!("{kind} {name}"),
            }
        };
        for o in k["objects"].as_array().into_iter().flatten() {
            if o["exists"] == false {
                let why = o["reason"].as_str().unwrap_or("").to_owned();
                rows.push(("make".into(), object(o), why));
            }
        }
        for o in k["prune"].as_array().into_iter().flatten() {
            rows.push((
                "delete".into(),
                object(o),
                "no rule asks for it any more".into(),
            ));
        }
        if !rows.is_empty() {
            let width = rows
                .iter()
                .map(|r| r.1.chars().count())
                .max()
                .unwrap_or(7)
                .max(7);
            outln!("{:<8} {:<width$} REASON", "CHANGE", "WHAT");
            for (kind, what, why) in &rows {
                outln!("{kind:<8} {what:<width$} {why}");
            }
        }
        for s in report["plan"]["skipped"].as_array().into_iter().flatten() {
            eprintln!("skipped: {}", s.as_str().unwrap_or(""));
        }
        for t in report["plan"]["trips"].as_array().into_iter().flatten() {
            eprintln!("guard: {}", t.as_str().unwrap_or(""));
        }
        eprintln!(
            "{}",
            report["summary"]
                .as_str()
                .unwrap_or("the server sent a sync report without a summary")
        );
    }
    let tripped = report["plan"]["trips"]
        .as_array()
        .is_some_and(|t| !t.is_empty());
    match outcome {
        // A dry run whose plan the guards would refuse says so by its exit code too.
        Outcome::DryRun if tripped => Err(NotApplied(Outcome::Refused).into()),
        Outcome::Applied | Outcome::DryRun => Ok(()),
        o => Err(NotApplied(o).into()),
    }
}
