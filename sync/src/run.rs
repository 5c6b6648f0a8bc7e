//! One sync run: lease, read, plan, guards, apply, remember.
//!
//! 1. **Lease**: the run takes the store's sync lease (or finds it already its own); another
//!    holder means another runner is at work, and this run does nothing. `idbridge serve` keeps
//!    the lease for as long as it runs with a `sync` section, so an `--offline` run is refused
//!    while a server holds the store.
//! 2. **Read** the whole directory ([`LdapDirectory::snapshot`]). A read that fails or is cut
//!    short fails the run: nothing is applied.
//! 3. **Compare** the directory's identity with the last applied run's: a different directory
//!    (another base entry, bind DN or bases, no server in common, an AD DC restored from a
//!    backup) is a guard trip.
//! 4. **Plan** ([`crate::plan`]) and check the guards; a plan that trips them is refused unless
//!    forced.
//! 5. **Apply** the plan's account changes in one store transaction through the admin
//!    operations (which empty the verification caches), audit each change, and remember the
//!    directory's identity and the time.
//!
//! A dry run stops after the plan and writes nothing, lease included.

use std::time::Instant;

use idbridge_core::{StoreError, SyncState, UnixTime};
use idbridge_directory::{DirectoryIdentity, LdapDirectory, Progress, Snapshot};
use idbridge_tokens::{AdminOps, Audit, Origin};
use serde::Serialize;

use crate::config::Rules;
use crate::kube::{Applied, Cluster};
use crate::objects::{self, Existing, Object, ObjectKind};
use crate::plan::{Entry, Input, Plan, plan};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The plan was applied (maybe an empty one).
    Applied,
    /// A dry run: planned, nothing written.
    DryRun,
    /// The guards refused the plan; nothing applied.
    Refused,
    /// Another runner holds the lease; nothing done.
    Busy,
    /// The read, the store or the apply failed; nothing applied.
    Failed,
}

impl Outcome {
    /// Its name, as in reports and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::DryRun => "dry_run",
            Self::Refused => "refused",
            Self::Busy => "busy",
            Self::Failed => "failed",
        }
    }
}

/// What a run read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReadStats {
    /// Users read.
    pub users: usize,
    /// Groups read.
    pub groups: usize,
    /// Searches it took.
    pub searches: u64,
    /// Seconds the read took.
    pub seconds: f64,
    /// The directory read (servers, bases, the base entry's id, the AD DC that answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<DirectoryIdentity>,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed, was refused or found the lease taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What it read.
    pub read: ReadStats,
    /// The plan (empty when the run ended before planning).
    pub plan: Plan,
    /// The Kubernetes objects, when `kubernetes.api` is set (or manifests were asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeReport>,
    /// Whether `--force` was given and the plan tripped a guard it overrode.
    pub forced: bool,
    /// Seconds the whole run took.
    pub seconds: f64,
    /// Seconds by phase (`read`, `accounts`, `plan`, `apply`, `kubernetes`), for a run that got
    /// that far.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<(&'static str, f64)>,
}

impl Report {
    fn ended(outcome: Outcome, error: impl Into<String>, started: Instant) -> Self {
        Self {
            outcome,
            error: Some(error.into()),
            read: ReadStats::default(),
            plan: Plan::default(),
            kubernetes: None,
            forced: false,
            seconds: started.elapsed().as_secs_f64(),
            phases: Vec::new(),
        }
    }

    /// The report as JSON, with its [`summary`](Self::summary) line in `summary`.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_else(
            |e| serde_json::json!({"outcome": "failed", "error": format!("the report: {e}")}),
        );
        v["summary"] = self.summary().into();
        v
    }

    /// One line for a person: the outcome, the counts and the time.
    #[must_use]
    pub fn summary(&self) -> String {
        let counts = self.plan.counts();
        let changes = if counts.is_empty() {
            "no change".to_owned()
        } else {
            counts
                .iter()
                .map(|(k, n)| format!("{n} {}", k.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let head = match self.outcome {
            Outcome::Applied => "sync applied",
            Outcome::DryRun => "sync dry run",
            Outcome::Refused => "sync refused by its guards",
            Outcome::Busy => "sync not run",
            Outcome::Failed => "sync failed",
        };
        let kube = match &self.kubernetes {
            Some(k) => match &k.applied {
                Some(a) => format!(
                    ", Kubernetes: {} objects applied ({} new or changed), {} deleted",
                    a.applied, a.changed, a.pruned
                ),
                None => format!(
                    ", Kubernetes: {} objects wanted, {} to delete",
                    k.objects.len(),
                    k.prune.len()
                ),
            },
            None => String::new(),
        };
        if self.read.users == 0 && self.read.groups == 0 && self.plan.changes.is_empty() {
            // Ended before anything was read: only why.
            return match &self.error {
                Some(e) => format!("{head}: {e}"),
                None => format!("{head}: the directory returned no users and no groups"),
            };
        }
        let mut line = format!(
            "{head}: {} users and {} groups read, {changes}{kube}, {} skipped, {:.1}s",
            self.read.users,
            self.read.groups,
            self.plan.skipped.len(),
            self.seconds
        );
        if let Some(e) = &self.error {
            line.push_str(&format!(": {e}"));
        }
        line
    }
}

/// The Kubernetes part of a report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KubeReport {
    /// The objects the rules ask for, each with its reason.
    pub objects: Vec<Object>,
    /// Owned objects no longer wanted, deleted by the run.
    pub prune: Vec<Existing>,
    /// What applying did (none for a dry run, or a run that stopped before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
    /// The objects whole, when manifests were asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Vec<serde_json::Value>>,
}

/// What a run may do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Plan only.
    pub dry_run: bool,
    /// Apply a plan that trips the guards.
    pub force: bool,
    /// Put the Kubernetes objects whole in the report.
    pub manifests: bool,
}

/// Everything a run needs.
#[derive(Debug)]
pub struct Runner<'a> {
    /// The directory.
    pub directory: &'a LdapDirectory,
    /// The admin operations over the store (inside the server, they empty its caches).
    pub ops: &'a AdminOps,
    /// The audit log, when there is one.
    pub audit: Option<&'a Audit>,
    /// The rules.
    pub rules: &'a Rules,
    /// The cluster, when `kubernetes.api` is set.
    pub cluster: Option<&'a Cluster>,
    /// The instance name and groups prefix for manifests without a cluster.
    pub offline_objects: Option<(&'a str, &'a str)>,
    /// This runner's name in the lease (`host:pid`).
    pub holder: &'a str,
    /// How long the lease is taken for.
    pub lease_secs: u64,
}

/// What differs between the identity of the last applied run and this one's, if it matters.
#[must_use]
pub fn identity_change(before: &DirectoryIdentity, now: &DirectoryIdentity) -> Option<String> {
    let mut why = Vec::new();
    // The base entry's id says something only of the same base.
    if before.base_id.is_some()
        && before.base_id != now.base_id
        && before.user_base.eq_ignore_ascii_case(&now.user_base)
    {
        why.push(format!(
            "the entry {} has a new id (the directory was rebuilt or replaced)",
            now.user_base
        ));
    }
    for (what, a, b) in [
        ("bind DN", &before.bind_dn, &now.bind_dn),
        ("user base", &before.user_base, &now.user_base),
        ("group base", &before.group_base, &now.group_base),
    ] {
        if !a.eq_ignore_ascii_case(b) {
            why.push(format!("the {what} changed from {a} to {b}"));
        }
    }
    if !before.urls.is_empty() && !before.urls.iter().any(|u| now.urls.contains(u)) {
        why.push(format!(
            "no server in common with the last run ({} then, {} now)",
            before.urls.join(" "),
            now.urls.join(" ")
        ));
    }
    if let (Some((dc_a, id_a)), Some((dc_b, id_b))) = (&before.invocation, &now.invocation)
        && dc_a.eq_ignore_ascii_case(dc_b)
        && id_a != id_b
    {
        why.push(format!(
            "the domain controller {dc_b} has a new invocationID (it was restored from a backup)"
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Each group's names, worked out once per group, not once per member: as tokens carry them
/// (rules match these) and as labels show them; none for a group tokens leave out.
#[must_use]
pub fn group_names(directory: &LdapDirectory, snap: &Snapshot) -> Vec<Option<(String, String)>> {
    snap.groups
        .iter()
        .map(|g| {
            let token = directory.token_group_names([g.name.as_str()]).pop()?;
            let kept = directory.kept_group_names([g.name.as_str()]).pop()?;
            Some((token, kept))
        })
        .collect()
}

/// The plan's entries, borrowed from the snapshot and its [`group_names`].
#[must_use]
pub fn entries<'a>(snap: &'a Snapshot, names: &'a [Option<(String, String)>]) -> Vec<Entry<'a>> {
    snap.users
        .iter()
        .map(|u| {
            let mine = || u.groups.iter().filter_map(|&g| names[g as usize].as_ref());
            Entry {
                id: &u.id,
                name: &u.name,
                status: u.status,
                groups: mine().map(|(t, _)| t.as_str()).collect(),
                labelled: mine().map(|(_, k)| k.as_str()).collect(),
            }
        })
        .collect()
}

impl Runner<'_> {
    /// Runs once (see the module docs). Never panics on bad input; every failure is in the
    /// report.
    pub async fn run(&self, opts: Options, progress: Progress<'_>) -> Report {
        use tracing::Instrument as _;
        let span = tracing::info_span!("sync", dry_run = opts.dry_run, force = opts.force);
        self.run_in_span(opts, progress).instrument(span).await
    }

    async fn run_in_span(&self, opts: Options, progress: Progress<'_>) -> Report {
        let started = Instant::now();
        let store = self.ops.store();
        let now = self.ops.now();
        if !opts.dry_run {
            let until = now.plus_secs(self.lease_secs);
            let mut taken = store.take_sync_lease(self.holder, now, until).await;
            // A holder on this host whose process is gone (a server killed outright) holds
            // nothing: its lease is given up for it.
            if let Ok(l) = &taken
                && l.holder != self.holder
                && dead_here(&l.holder, self.holder)
            {
                tracing::warn!(holder = %l.holder, "the sync lease's holder has ended; taking the lease over");
                let _ = store.release_sync_lease(&l.holder).await;
                taken = store.take_sync_lease(self.holder, now, until).await;
            }
            match taken {
                Ok(l) if l.holder == self.holder => {}
                Ok(l) => {
                    return Report::ended(
                        Outcome::Busy,
                        format!(
                            "another runner ({}) holds the sync lease until {} (a server with a `sync` section keeps it while it runs): ask that server with `idbridge sync --once`, or wait for it to stop",
                            l.holder,
                            fmt_time(l.expires_at)
                        ),
                        started,
                    );
                }
                Err(e) => return Report::ended(Outcome::Failed, store_error(&e), started),
            }
        }
        let state = match store.sync_state().await {
            Ok(s) => s,
            Err(e) => {
                return self
                    .failed(
                        Report::ended(Outcome::Failed, store_error(&e), started),
                        opts,
                    )
                    .await;
            }
        };
        let read_started = Instant::now();
        // The store's accounts are read while the directory streams in: the store reads on its
        // caller's thread, so on a blocking one of its own.
        let accounts_read = {
            let ops = self.ops.clone();
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                (
                    handle.block_on(ops.accounts()),
                    started.elapsed().as_secs_f64(),
                )
            })
        };
        let snap = match self.directory.snapshot(progress).await {
            Ok(s) => s,
            Err(e) => {
                let r = Report::ended(
                    Outcome::Failed,
                    format!("reading the directory failed, so nothing was applied: {e}"),
                    started,
                );
                return self.failed(r, opts).await;
            }
        };
        let read = ReadStats {
            users: snap.users.len(),
            groups: snap.groups.len(),
            searches: snap.searches,
            seconds: read_started.elapsed().as_secs_f64(),
            identity: Some(snap.identity.clone()),
        };
        let mut phases = vec![("read", read_started.elapsed().as_secs_f64())];
        let mut lap = Instant::now();
        let mut mark = |name: &'static str, phases: &mut Vec<(&'static str, f64)>| {
            phases.push((name, lap.elapsed().as_secs_f64()));
            lap = Instant::now();
        };
        let accounts = match accounts_read.await {
            Ok((Ok(a), took)) => {
                // How long the store read took, beside the directory's.
                phases.push(("accounts_read", took));
                a
            }
            Ok((Err(e), _)) => {
                let r = Report::ended(Outcome::Failed, format!("the store: {e}"), started);
                return self.failed(r, opts).await;
            }
            Err(e) => {
                let r = Report::ended(Outcome::Failed, format!("the store: {e}"), started);
                return self.failed(r, opts).await;
            }
        };
        // A stored identity that does not read is no identity check passed: it trips the guard.
        let change = match state.identity.as_deref() {
            None => None,
            Some(t) => match serde_json::from_str::<DirectoryIdentity>(t) {
                Ok(b) => identity_change(&b, &snap.identity),
                Err(_) => Some("the identity recorded by the last run cannot be read".to_owned()),
            },
        };
        mark("accounts", &mut phases);
        let names = group_names(self.directory, &snap);
        let entries = entries(&snap, &names);
        mark("entries", &mut phases);
        let mut plan = plan(
            Input {
                entries: &entries,
                unusable_ids: &snap.unusable_ids,
                unidentified: snap.users_without_id,
                accounts: &accounts,
                identity_change: change.as_deref(),
            },
            self.rules,
        );
        plan.skipped.extend(snap.skipped.iter().cloned());
        mark("plan", &mut phases);
        // The Kubernetes objects: what exists is read before anything is applied, so that a
        // prune that trips the guard stops the whole run.
        // Every group's name as tokens carry it, from the names worked out for the entries.
        let groups: std::collections::BTreeSet<String> = names
            .iter()
            .flatten()
            .map(|(token, _)| token.clone())
            .collect();
        let mut kube_state = None;
        let mut kubernetes = None;
        let mut kube_error: Option<String> = None;
        let target = self
            .cluster
            .map(|c| (c.instance.as_str(), c.groups_prefix.as_str()))
            .or(self.offline_objects);
        if let Some((instance, prefix)) = target {
            let mut desired = objects::desired(self.rules, &groups, instance, prefix);
            let listed = match self.cluster {
                Some(c) => {
                    let roles: std::collections::BTreeSet<String> = desired
                        .objects
                        .iter()
                        .filter_map(|o| {
                            o.body.pointer("/roleRef/name")?.as_str().map(str::to_owned)
                        })
                        .collect();
                    match c.existing().await {
                        Ok(b) => c
                            .existing_roles(roles.iter().map(String::as_str))
                            .await
                            .map(|r| (b, r)),
                        Err(e) => Err(e),
                    }
                }
                None => Ok((Vec::new(), std::collections::BTreeSet::new())),
            };
            let (before, roles) = match listed {
                Ok(l) => l,
                Err(e) => {
                    // The cluster's trouble must not hold back the accounts (a departed user is
                    // still disabled): the Kubernetes part is left out of this run, and the run
                    // ends failed, saying so.
                    kube_error = Some(format!(
                        "reading what sync owns in the cluster failed, so no Kubernetes object was applied or deleted: {}",
                        crate::kube::explain(&e)
                    ));
                    (Vec::new(), std::collections::BTreeSet::new())
                }
            };
            // A binding to a ClusterRole that does not exist grants nothing: reported, not made.
            if self.cluster.is_some() {
                let missing = objects::drop_missing_roles(&mut desired, &roles);
                desired.broken += missing;
            }
            let existing: Vec<Existing> = before.iter().map(|(e, _)| e.clone()).collect();
            let gone = if self.cluster.is_some() && desired.broken == 0 {
                objects::prune(&desired, &existing)
            } else {
                Vec::new()
            };
            if desired.broken > 0 && self.cluster.is_some() {
                desired.skipped.push(format!(
                    "no Kubernetes object is deleted this run: {} of the rules' results could not be followed (above), and what such a rule made before is kept until it is fixed",
                    desired.broken
                ));
            }
            if self.cluster.is_some() {
                for o in &mut desired.objects {
                    o.exists = existing.iter().any(|e| {
                        e.kind == o.kind
                            && e.name == o.name
                            && o.namespace.as_deref().unwrap_or("") == e.namespace
                    });
                }
            }
            let owned = existing
                .iter()
                .filter(|e| e.kind != ObjectKind::Namespace)
                .count();
            let g = &self.rules.guards;
            #[allow(clippy::cast_precision_loss)] // counts far below 2^52
            let share = if owned == 0 {
                0.0
            } else {
                gone.len() as f64 * 100.0 / owned as f64
            };
            if gone.len() > g.max_disable_count
                || (!gone.is_empty() && share > g.max_disable_percent)
            {
                plan.trips.push(format!(
                    "{} of the {owned} Kubernetes objects sync owns would be deleted ({share:.1} %), more than `sync.guards.max_disable_percent` ({} %) or `max_disable_count` ({}) allow",
                    gone.len(),
                    g.max_disable_percent,
                    g.max_disable_count
                ));
            }
            plan.skipped.extend(desired.skipped.iter().cloned());
            kubernetes = Some(KubeReport {
                objects: desired.objects.clone(),
                prune: gone.clone(),
                applied: None,
                manifests: opts
                    .manifests
                    .then(|| desired.objects.iter().map(|o| o.body.clone()).collect()),
            });
            if kube_error.is_none() {
                kube_state = Some((desired, before, gone));
            } else {
                kubernetes = None;
            }
            mark("kubernetes_plan", &mut phases);
        }
        let mut report = Report {
            outcome: Outcome::DryRun,
            error: kube_error.clone(),
            read,
            plan,
            kubernetes,
            forced: false,
            seconds: 0.0,
            phases: Vec::new(),
        };
        if opts.dry_run {
            report.seconds = started.elapsed().as_secs_f64();
            report.phases = phases;
            return report;
        }
        if !report.plan.trips.is_empty() {
            if !opts.force {
                report.outcome = Outcome::Refused;
                report.error = Some(format!(
                    "{}; nothing was applied (see the plan with `idbridge sync --dry-run`; if it is intended, apply it once with `idbridge sync --once --force`)",
                    report.plan.trips.join("; ")
                ));
                report.seconds = started.elapsed().as_secs_f64();
                if let Some(a) = self.audit {
                    let mut ev = Origin::local().event("sync.guard", "denied");
                    ev.reason = report.error.as_deref();
                    a.record_durable(&ev).await;
                }
                return self.failed(report, opts).await;
            }
            report.forced = true;
        }
        // Still this runner's lease, right before writing (a long read may have outlived it).
        match store
            .take_sync_lease(
                self.holder,
                self.ops.now(),
                self.ops.now().plus_secs(self.lease_secs),
            )
            .await
        {
            Ok(l) if l.holder == self.holder => {}
            Ok(l) => {
                report.outcome = Outcome::Busy;
                report.error = Some(format!(
                    "the sync lease passed to {} during the run, so nothing was applied",
                    l.holder
                ));
                return report;
            }
            Err(e) => {
                report.outcome = Outcome::Failed;
                report.error = Some(store_error(&e));
                return self.failed(report, opts).await;
            }
        }
        // What changed in the store while the directory was read is not overwritten.
        if !report.plan.changes.is_empty() {
            match self.ops.accounts().await {
                Ok(now) => report.plan.keep_current(&now),
                Err(e) => {
                    report.outcome = Outcome::Failed;
                    report.error = Some(format!("the store: {e}"));
                    return self.failed(report, opts).await;
                }
            }
        }
        if let Err(e) = self
            .ops
            .apply_account_changes(&report.plan.account_changes())
            .await
        {
            report.outcome = Outcome::Failed;
            report.error = Some(format!(
                "the store refused the changes, so none was applied: {e}"
            ));
            report.seconds = started.elapsed().as_secs_f64();
            return self.failed(report, opts).await;
        }
        // The account changes are committed: their audit events now, whatever comes next.
        if let Some(a) = self.audit {
            for c in &report.plan.changes {
                let mut ev = Origin::local().event("account.sync", "ok");
                ev.account = Some(&c.account);
                ev.uid = c.uid.map(|u| u.to_string());
                let reason = format!("{}: {}", c.kind.as_str(), c.reason);
                ev.reason = Some(&reason);
                a.record(&ev);
            }
        }
        mark("apply", &mut phases);
        report.outcome = Outcome::Applied;
        let mut last_success = Some(self.ops.now());
        if let (Some(c), Some((desired, before, gone))) = (self.cluster, &kube_state) {
            let result = c.apply(desired, before, gone).await;
            let (done, failure) = match result {
                Ok(done) => (done, None),
                Err((done, e)) => (done, Some(e)),
            };
            if let Some(a) = self.audit {
                for object in &done.deleted {
                    let mut ev = Origin::local().event("kubernetes.prune", "ok");
                    ev.object = Some(object.clone());
                    a.record(&ev);
                }
            }
            if let Some(e) = failure {
                report.outcome = Outcome::Failed;
                report.error = Some(format!(
                    "the account changes were applied, and {} Kubernetes objects, but {e}; the next run tries again",
                    done.applied
                ));
                last_success = state.last_success;
            }
            if let Some(k) = &mut report.kubernetes {
                k.applied = Some(done);
            }
        }
        if let Some(a) = self.audit {
            let outcome = if report.outcome == Outcome::Applied {
                "ok"
            } else {
                "error"
            };
            let mut ev = Origin::local().event("sync.run", outcome);
            let summary = report.summary();
            ev.reason = Some(&summary);
            a.record_durable(&ev).await;
        }
        if kube_state.is_some() {
            mark("kubernetes", &mut phases);
        }
        if let Some(e) = kube_error {
            report.outcome = Outcome::Failed;
            report.error = Some(format!("the account changes were applied, but {e}"));
            last_success = state.last_success;
        }
        report.phases = phases;
        report.seconds = started.elapsed().as_secs_f64();
        let state = SyncState {
            identity: serde_json::to_string(&snap.identity).ok(),
            last_success,
            last_run: Some(self.ops.now()),
            last_error: report.error.clone(),
        };
        if let Err(e) = store.put_sync_state(&state).await {
            report.error = Some(format!(
                "the changes were applied, but the run could not be recorded: {}",
                store_error(&e)
            ));
        }
        report
    }

    /// Records a run that did not apply (not a dry run), and returns its report.
    async fn failed(&self, report: Report, opts: Options) -> Report {
        if opts.dry_run {
            return report;
        }
        let store = self.ops.store();
        if let Ok(mut state) = store.sync_state().await {
            state.last_run = Some(self.ops.now());
            state.last_error.clone_from(&report.error);
            let _ = store.put_sync_state(&state).await;
        }
        if report.outcome == Outcome::Failed
            && let Some(a) = self.audit
        {
            let mut ev = Origin::local().event("sync.run", "error");
            ev.reason = report.error.as_deref();
            a.record_durable(&ev).await;
        }
        tracing::warn!(outcome = report.outcome.as_str(), "{}", report.summary());
        report
    }
}

/// Whether `holder` (`host:pid-namespace:pid:nonce`) names a process on this runner's host and
/// in its pid namespace (`me`, named alike) that no longer runs.
fn dead_here(holder: &str, me: &str) -> bool {
    let parts = |h: &str| -> Option<(String, String, u32)> {
        let mut it = h.rsplitn(4, ':');
        let _nonce = it.next()?;
        let pid = it.next()?.parse().ok()?;
        let ns = it.next()?.to_owned();
        let host = it.next()?.to_owned();
        Some((host, ns, pid))
    };
    let (Some((host, ns, pid)), Some((my_host, my_ns, _))) = (parts(holder), parts(me)) else {
        return false;
    };
    host == my_host
        && ns == my_ns
        && !ns.is_empty()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::path::Path::new("/proc/self").exists()
}

fn store_error(e: &StoreError) -> String {
    format!("the store: {e}")
}

fn fmt_time(t: UnixTime) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.0)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.0.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> DirectoryIdentity {
        DirectoryIdentity {
            urls: vec!["ldaps://a".into(), "ldaps://b".into()],
            bind_dn: "cn=svc".into(),
            user_base: "ou=people".into(),
            group_base: "ou=groups".into(),
            base_id: Some("u1".into()),
            invocation: Some(("CN=NTDS Settings,CN=DC1".into(), "i1".into())),
        }
    }

    #[test]
    fn a_lease_holder_is_dead_only_when_it_is_on_this_host_and_gone() {
        let me = format!("h1:7:{}:ab", std::process::id());
        assert!(!dead_here(&me, &me), "this process runs");
        assert!(dead_here("h1:7:4000000000:cd", &me));
        assert!(
            !dead_here("h2:7:4000000000:cd", &me),
            "another host's process is not ours to judge"
        );
        assert!(
            !dead_here("h1:8:4000000000:cd", &me),
            "nor one in another pid namespace"
        );
        assert!(!dead_here("h1:7:x:cd", &me));
    }

    #[test]
    fn identity_changes_that_matter_are_named_and_a_failover_is_not_one() {
        assert_eq!(identity_change(&id(), &id()), None);
        let mut failover = id();
        failover.urls = vec!["ldaps://b".into(), "ldaps://c".into()];
        failover.invocation = Some(("CN=NTDS Settings,CN=DC2".into(), "i2".into()));
        assert_eq!(identity_change(&id(), &failover), None);
        let mut rebuilt = id();
        rebuilt.base_id = Some("u2".into());
        assert!(identity_change(&id(), &rebuilt).unwrap().contains("new id"));
        let mut restored = id();
        restored.invocation = Some(("cn=ntds settings,cn=dc1".into(), "i9".into()));
        assert!(
            identity_change(&id(), &restored)
                .unwrap()
                .contains("restored")
        );
        let mut moved = id();
        moved.urls = vec!["ldaps://z".into()];
        moved.bind_dn = "cn=other".into();
        let why = identity_change(&id(), &moved).unwrap();
        assert!(
            why.contains("bind DN") && why.contains("no server in common"),
            "{why}"
        );
    }
}
