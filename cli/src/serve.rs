//! `idbridge serve`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use idbridge_bridge::{
    AppState, ConnectionLimits, DirectoryLogin, ProxySettings, Settings, ThrottlePolicy, app,
    client_verifier, serve_with,
};
use idbridge_core::{Clock, SystemClock};
use idbridge_tokens::{Audit, AuditSink, Client, MayAct, Rotate, Secret, Who};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{self, Config, Provisioning};
use crate::profile;

/// Flags of `idbridge serve`; each overrides the config file and the environment.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// YAML config file (the enterprise profile). Without it, the simple profile runs: one
    /// `admin` account, its token in <data-dir>/admin.token, everything created on first start.
    #[arg(long, short = 'c', env = "IDBRIDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the store, keys, certificates and generated kube-apiserver files
    /// [default: ./idbridge-data].
    #[arg(long, env = "IDBRIDGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8443]; port 0 picks a free port.
    #[arg(long, env = "IDBRIDGE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Issuer URL written into tokens and discovery [default: https://<listen address>].
    #[arg(long, env = "IDBRIDGE_ISSUER")]
    pub issuer: Option<String>,
    /// Extra DNS name or IP for the generated TLS certificate (repeatable).
    #[arg(long = "tls-san", value_name = "NAME")]
    pub tls_san: Vec<String>,
    /// Check the configuration (and the files it names) and exit without starting or writing
    /// anything.
    #[arg(long)]
    pub check: bool,
}

impl ServeArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = config::load(self.config.as_deref())?;
        if let Some(d) = &self.data_dir {
            cfg.data_dir.clone_from(d);
        }
        if let Some(l) = self.listen {
            cfg.listen = l;
        }
        if let Some(i) = &self.issuer {
            cfg.issuer = Some(i.clone());
        }
        cfg.tls.sans.extend(self.tls_san.iter().cloned());
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Whether the running TLS layer trusts the proxy's CA for client certificates (fixed until a
/// restart, whatever a reload says).
fn proxy_in_tls(cfg: &Config) -> bool {
    cfg.proxy.enabled && cfg.proxy.client_ca_file.is_some()
}

/// Settings from a configuration. `tls_trusts_proxy` is [`proxy_in_tls`] of the configuration
/// the TLS layer was built from.
fn settings(
    cfg: &Config,
    issuer: &str,
    webhook_token: String,
    tls_trusts_proxy: bool,
) -> anyhow::Result<Settings> {
    let mut s = Settings::new(issuer.to_owned());
    let kube_audiences = config::audiences(&cfg.kubernetes.audiences, "kubernetes.audiences")?;
    s.tokens.audiences.clone_from(&kube_audiences);
    s.tokens
        .username_prefix
        .clone_from(&cfg.kubernetes.username_prefix);
    s.tokens
        .groups_prefix
        .clone_from(&cfg.kubernetes.groups_prefix);
    s.tokens.access_token_ttl = cfg.tokens.access_token_ttl.get();
    s.tokens.clock_skew = cfg.tokens.clock_skew.get();
    s.tokens.review_cache_ttl = cfg.review_cache.ttl.get();
    s.tokens.review_cache_size = cfg.review_cache.max_entries;
    s.webhook_tokens = vec![Secret::new(webhook_token)];
    s.webhook_client_cert = cfg.webhooks.client_certificates;
    s.tokens.admin_groups.clone_from(&cfg.admin.groups);
    s.max_body_bytes = cfg.limits.max_body_bytes;
    s.tokens.session_idle_timeout = cfg.sessions.idle_timeout.get();
    s.tokens.session_max_lifetime = cfg.sessions.max_lifetime.get();
    s.tokens.refresh_grace = cfg.sessions.refresh_grace.get();
    s.tokens.key_rotate_every = cfg.keys.rotate_every.get();
    s.tokens.key_publish_lead = cfg.keys.publish_lead.get();
    s.tokens.clients = vec![Client::cli(kube_audiences.clone())];
    for (i, c) in cfg.clients.iter().enumerate() {
        let secret = c
            .secret_file
            .as_deref()
            .map(|p| profile::client_secret(p, &format!("clients[{i}].secret_file")))
            .transpose()?
            .map(Secret::new);
        let mut client = Client::cli(match &c.audiences {
            Some(a) => config::audiences(a, &format!("clients[{i}].audiences"))?,
            None => kube_audiences.clone(),
        });
        client.id =
            c.id.parse()
                .map_err(|e| anyhow::anyhow!("field `clients[{i}].id`: {e}"))?;
        client.secret = secret;
        client.redirect_uris.clone_from(&c.redirect_uris);
        client.audience_changes = c
            .token_exchange
            .rules(&format!("clients[{i}].token_exchange"))?;
        match &c.grants {
            // Known grants only: the configuration was validated.
            Some(g) => client.grants = g.iter().filter_map(|g| g.parse().ok()).collect(),
            // Passwords go only to clients named first-party by listing the grant.
            None => client
                .grants
                .retain(|g| *g != idbridge_core::GrantType::Password),
        }
        s.tokens.clients.retain(|o| o.id != client.id);
        s.tokens.clients.push(client);
    }
    s.tokens.audience_changes = cfg.token_exchange.rules("token_exchange")?;
    s.tokens.may_act = cfg
        .delegation
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(MayAct {
                actors: Who {
                    users: r.actors.users.clone(),
                    groups: r.actors.groups.clone(),
                },
                subjects: Who {
                    users: r.subjects.users.clone(),
                    groups: r.subjects.groups.clone(),
                },
                audiences: config::audiences(&r.audiences, &format!("delegation[{i}].audiences"))?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    if cfg.proxy.enabled
        && let Some(ca) = &cfg.proxy.client_ca_file
    {
        if cfg.proxy.allowed_names.is_empty() {
            tracing::warn!(
                "proxy.insecure_any_proxy_name: any certificate from the proxy CA may name any user"
            );
        }
        s.proxy = Some(ProxySettings {
            verifier: client_verifier(ca).context("field `proxy.client_ca_file`")?,
            allowed_names: cfg.proxy.allowed_names.clone(),
            user_header: cfg.proxy.user_header.clone(),
            group_header: cfg.proxy.group_header.clone(),
            jit: cfg.proxy.provisioning == Provisioning::Jit,
        });
    }
    if let Some(d) = &cfg.directory {
        let directory = idbridge_directory::LdapDirectory::new(d)?;
        s.directory = Some(DirectoryLogin {
            directory: std::sync::Arc::new(directory),
            jit: d.provisioning == idbridge_directory::Provisioning::Jit,
            link_by_name: d.link_by_name,
            throttle: ThrottlePolicy {
                per_source: d.throttle.per_source,
                per_user_source: d.throttle.per_user_source,
                window: d.throttle.window.get(),
                per_user: d.throttle.per_user,
                per_user_window: d.throttle.per_user_window.get(),
            },
        });
    }
    if let Some(k) = &cfg.kerberos {
        s.kerberos = Some(profile::kerberos_login(cfg, k)?);
    }
    s.upstreams = profile::upstreams(cfg)?;
    // When the TLS layer also trusts the proxy's CA, webhook callers must still come from the
    // webhook CA: their certificates are checked against it alone.
    if tls_trusts_proxy
        && cfg.webhooks.client_certificates
        && let Some(wca) = &cfg.tls.client_ca_file
    {
        s.webhook_client_verifier =
            Some(client_verifier(wca).context("field `tls.client_ca_file`")?);
    }
    Ok(s)
}

fn config_error(e: &anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(ConfigErrorMarker).context(format!("{e:#}"))
}

/// Where the audit log goes: `audit.file`, `-` for standard output, else `<data_dir>/audit.log`.
pub fn audit_sink(cfg: &Config) -> AuditSink {
    match &cfg.audit.file {
        Some(p) if p.as_os_str() == "-" => AuditSink::Stdout,
        Some(p) => AuditSink::File(p.clone()),
        None => AuditSink::File(cfg.data_dir.join("audit.log")),
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.load().map_err(|e| config_error(&e))?;
    profile::check_files(&cfg).map_err(|e| config_error(&e))?;
    if args.check {
        println!("configuration OK");
        return Ok(());
    }
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("field `listen`: cannot listen on {}", cfg.listen))?;
    let bound = listener.local_addr()?;
    // With port 0 the issuer can only be known once bound.
    let issuer = cfg
        .issuer
        .clone()
        .unwrap_or_else(|| format!("https://{bound}"));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let bootstrap_admin = cfg.bootstrap_admin.unwrap_or(args.config.is_none());
    let boot = profile::bootstrap(&cfg, &issuer, bound, bootstrap_admin, clock.clone()).await?;
    let tls = idbridge_bridge::server_config(&boot.tls)?;
    let audit =
        Audit::open(&audit_sink(&cfg)).context("field `audit.file`: cannot open the audit log")?;
    let state = AppState::new(
        boot.store.clone(),
        clock.clone(),
        boot.keys,
        settings(&cfg, &issuer, boot.webhook_token, proxy_in_tls(&cfg))
            .map_err(|e| config_error(&e))?,
        audit.clone(),
    );
    state.set_kek(boot.kek);
    // The sync worker: built once, its rules replaced on reload.
    let worker = crate::sync_cmd::setup(&cfg)
        .await
        .map_err(|e| config_error(&e))?
        .map(|setup| crate::sync_cmd::Worker::new(setup, state.ops().clone(), audit.clone()));
    if let Some(w) = &worker {
        let mut s = (*state.settings()).clone();
        s.sync = Some(w.clone());
        state.set_settings(s);
    }
    // Workload credentials: rebuilt on reload.
    let generated_ca = boot.ca_file.clone();
    let store: Arc<dyn idbridge_core::Store> = boot.store.clone();
    if let Some(issuer) =
        crate::workload_cmd::setup(&cfg, &issuer, generated_ca.as_deref(), store, clock.clone())
            .await
            .map_err(|e| config_error(&e))?
    {
        tracing::info!(
            mappings = issuer.mappings().len(),
            audience = %issuer.audience(),
            "workload credentials on: POST /v1/workload/credentials, admission at POST /webhooks/mutate-pod"
        );
        let mut s = (*state.settings()).clone();
        s.workloads = Some(issuer);
        state.set_settings(s);
    }
    if cfg.tls.client_ca_file.is_none() && boot.ca_file.is_some() {
        tracing::info!(ca = %boot.ca_file.as_deref().map(|p| p.display().to_string()).unwrap_or_default(), "clients should trust the generated CA");
    }
    tracing::info!(
        listen = %bound,
        issuer = %issuer,
        data_dir = %cfg.data_dir.display(),
        profile = if args.config.is_none() { "simple" } else { "config file" },
        "idbridge is serving"
    );
    // One line on stdout that scripts (and the test kit) can wait for.
    println!("idbridge listening on https://{bound}");

    let maintenance = tokio::spawn(maintain(state.clone(), cfg.keys.publish_lead.get()));
    let sync_loop = worker.clone().map(|w| tokio::spawn(w.run_loop()));
    let workload_keys = tokio::spawn(crate::workload_cmd::maintain(state.clone()));
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let reload_state = state.clone();
    let reload_args = args.clone();
    let reload_cfg = cfg.clone();
    let reload_issuer = issuer.clone();
    let reload_worker = worker.clone();
    let reloader = tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload(
                &reload_args,
                &reload_cfg,
                &reload_issuer,
                &reload_state,
                reload_worker.as_ref(),
                generated_ca.as_deref(),
            )
            .await;
        }
    });
    let stop_state = state.clone();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining connections"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: draining connections"),
        }
        stop_state.set_not_ready();
    };
    let limits = ConnectionLimits {
        header_read_timeout: cfg.limits.header_read_timeout.get(),
        idle_timeout: cfg.limits.idle_timeout.get(),
        max_connections: cfg.limits.max_connections,
        max_connections_per_source: cfg.limits.max_connections_per_source,
    };
    let connections = state.metrics().connections();
    serve_with(
        listener,
        tls,
        app(state.clone()),
        shutdown,
        limits,
        connections,
    )
    .await?;
    reloader.abort();
    maintenance.abort();
    workload_keys.abort();
    if let Some(l) = sync_loop {
        l.abort();
    }
    if let Some(w) = &worker {
        w.release().await;
    }
    drop(state);
    audit.close();
    tracing::info!("stopped");
    Ok(())
}

/// Rotates signing keys when due and purges ended sessions, on a timer.
async fn maintain(state: AppState, publish_lead: std::time::Duration) {
    // Often enough that a rotation is never late by more than a small part of the lead.
    let every = (publish_lead / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = state.maintain_keys(Rotate::Policy).await {
            tracing::error!(error = %e, "key maintenance failed; will retry");
        }
        let now = state.clock().now();
        match state.store().purge(now).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "purged ended sessions and revocations"),
            Err(e) => tracing::warn!(error = %e, "purge failed; will retry"),
        }
    }
}

async fn reload(
    args: &ServeArgs,
    running: &Config,
    issuer: &str,
    state: &AppState,
    worker: Option<&Arc<crate::sync_cmd::Worker>>,
    generated_ca: Option<&Path>,
) {
    let result = async {
        let cfg = args.load()?;
        for (field, changed) in [
            ("listen", cfg.listen != running.listen),
            ("data_dir", cfg.data_dir != running.data_dir),
            ("store", cfg.sqlite_path() != running.sqlite_path()),
            ("tls", cfg.tls != running.tls),
            ("issuer", cfg.issuer != running.issuer),
            ("audit", cfg.audit.file != running.audit.file),
            (
                "limits",
                cfg.limits.max_body_bytes != running.limits.max_body_bytes
                    || cfg.limits.header_read_timeout != running.limits.header_read_timeout
                    || cfg.limits.idle_timeout != running.limits.idle_timeout
                    || cfg.limits.max_connections != running.limits.max_connections
                    || cfg.limits.max_connections_per_source
                        != running.limits.max_connections_per_source,
            ),
            (
                "proxy.enabled/proxy.client_ca_file",
                cfg.proxy.enabled != running.proxy.enabled
                    || cfg.proxy.client_ca_file != running.proxy.client_ca_file,
            ),
            (
                "keys.encryption_key_file",
                cfg.keys.encryption_key_file != running.keys.encryption_key_file,
            ),
        ] {
            if changed {
                tracing::warn!(field, "this setting changes only on restart");
            }
        }
        let token = profile::webhook_token(&cfg)?;
        if let Some(file) = &cfg.accounts_file {
            profile::sync_accounts_file(file, state.ops(), &**state.store()).await?;
        }
        let mut new = settings(&cfg, issuer, token, proxy_in_tls(running))?;
        match (crate::sync_cmd::setup(&cfg).await?, worker) {
            (Some(setup), Some(w)) => {
                w.reconfigure(setup);
                new.sync = Some(w.clone());
            }
            (Some(_), None) => {
                tracing::warn!(field = "sync", "the sync worker starts only on restart");
            }
            (None, Some(w)) => {
                tracing::warn!(
                    field = "sync",
                    "the sync section was removed: the worker stops only on restart"
                );
                new.sync = Some(w.clone());
            }
            (None, None) => {}
        }
        new.workloads = crate::workload_cmd::setup(
            &cfg,
            issuer,
            generated_ca,
            state.store().clone(),
            Arc::new(SystemClock),
        )
        .await?;
        crate::workload_cmd::warn(&cfg);
        let mappings = new.workloads.as_ref().map(|w| w.mappings().len());
        state.set_settings(new);
        anyhow::Ok(mappings)
    }
    .await;
    match result {
        Ok(Some(mappings)) => {
            tracing::info!(workload_mappings = mappings, "configuration reloaded")
        }
        Ok(None) => tracing::info!("configuration reloaded"),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reload failed; keeping the running configuration")
        }
    }
}

/// Marks an error as a configuration error (exit code 2).
#[derive(Debug)]
pub struct ConfigErrorMarker;

impl std::fmt::Display for ConfigErrorMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid configuration")
    }
}

impl std::error::Error for ConfigErrorMarker {}
