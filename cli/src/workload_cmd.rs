//! The keytab injector in the binary: the issuer built from the `workloads` section (checked
//! field by field, its files read), its key rotation timer, and `idbridge workload` (the
//! revocations, listed and lifted).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use idbridge_core::{Clock, Store, WorkloadTarget};
use idbridge_kerberos::kadmin::MitKadmin;
use idbridge_workload::ccache::Tickets;
use idbridge_workload::{AgentSettings, Issuer, IssuerParts, Mappings, WorkloadsConfig};

use crate::config::Config;

/// Checks the `workloads` section without connecting to anything: the mappings, and that the
/// files it names read.
pub fn check(cfg: &Config) -> anyhow::Result<()> {
    let Some(w) = &cfg.workloads else {
        return Ok(());
    };
    Mappings::new(w)?;
    let Some(api) = &cfg.kubernetes.api else {
        bail!(
            "field `kubernetes.api`: workloads need it, to review pods' ServiceAccount tokens (a kubeconfig, or `{{}}` in a pod)"
        );
    };
    idbridge_sync::kube::check(api).map_err(anyhow::Error::msg)?;
    idbridge_kerberos::check_krb5_conf(&w.krb5_conf)
        .map_err(|e| anyhow::anyhow!("field `workloads.krb5_conf`: {e}"))?;
    let keytab = std::fs::read(&w.mit_kadmin.keytab).with_context(|| {
        format!(
            "field `workloads.mit_kadmin.keytab`: cannot read {}",
            w.mit_kadmin.keytab.display()
        )
    })?;
    let entries = idbridge_kerberos::keytab::parse(&keytab).with_context(|| {
        format!(
            "field `workloads.mit_kadmin.keytab`: {} is not a keytab",
            w.mit_kadmin.keytab.display()
        )
    })?;
    if !entries
        .iter()
        .any(|e| e.principal() == w.mit_kadmin.principal)
    {
        let mut held: Vec<String> = entries.iter().map(|e| e.principal()).collect();
        held.sort();
        held.dedup();
        bail!(
            "field `workloads.mit_kadmin.keytab`: {} holds no key of {} (it holds: {}); extract one with `kadmin.local -q \"ktadd -k FILE {}\"`",
            w.mit_kadmin.keytab.display(),
            w.mit_kadmin.principal,
            if held.is_empty() {
                "nothing".to_owned()
            } else {
                held.join(", ")
            },
            w.mit_kadmin.principal
        );
    }
    if let Some(ca) = &w.agent.ca_file {
        std::fs::read_to_string(ca).with_context(|| {
            format!(
                "field `workloads.agent.ca_file`: cannot read {}",
                ca.display()
            )
        })?;
    }
    if w.agent.token_lifetime.as_secs() < 600 {
        bail!("field `workloads.agent.token_lifetime`: at least 10m (the API server's minimum)");
    }
    Ok(())
}

/// Logs what in the `workloads` section works but is likely to fail later (once per reading of
/// the configuration: at start, `serve --check` and each reload).
pub fn warn(cfg: &Config) {
    let Some(w) = &cfg.workloads else {
        return;
    };
    if w.agent.image == idbridge_workload::config::DEFAULT_AGENT_IMAGE {
        tracing::warn!(
            field = "workloads.agent.image",
            "not set: pods get the agent image {:?}, which must be pullable by every node (set it to your registry's idbridge image)",
            idbridge_workload::config::DEFAULT_AGENT_IMAGE
        );
    }
    if w.agent.server.is_none() {
        let issuer = cfg.issuer();
        let host = reqwest::Url::parse(&issuer)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            tracing::warn!(
                field = "workloads.agent.server",
                "not set: pods' agents reach idbridge at the issuer {issuer}, a loopback address no pod can reach (set it to idbridge's address as pods see it)"
            );
        }
    }
    if let Some(api) = &cfg.kubernetes.api {
        for w in idbridge_sync::kube::warnings(api) {
            tracing::warn!(field = "kubernetes.api.kubeconfig", "{w}");
        }
    }
}

/// The issuer, when a `workloads` section is configured.
pub async fn setup(
    cfg: &Config,
    issuer_url: &str,
    generated_ca: Option<&Path>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Option<Arc<Issuer>>> {
    check(cfg)?;
    let (Some(w), Some(api)) = (&cfg.workloads, &cfg.kubernetes.api) else {
        return Ok(None);
    };
    let client = idbridge_sync::kube::client(api)
        .await
        .map_err(anyhow::Error::msg)?;
    let ca_file = w.agent.ca_file.as_deref().or(generated_ca);
    let ca_pem = ca_file
        .map(|p| {
            std::fs::read_to_string(p).with_context(|| {
                format!(
                    "field `workloads.agent.ca_file`: cannot read {}",
                    p.display()
                )
            })
        })
        .transpose()?;
    Ok(Some(Arc::new(Issuer::new(parts(
        w, client, issuer_url, ca_pem, store, clock,
    )?))))
}

fn parts(
    w: &WorkloadsConfig,
    client: kube::Client,
    issuer_url: &str,
    ca_pem: Option<String>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<IssuerParts> {
    let krb5_conf = std::fs::read_to_string(&w.krb5_conf).with_context(|| {
        format!(
            "field `workloads.krb5_conf`: cannot read {}",
            w.krb5_conf.display()
        )
    })?;
    let kadmin = MitKadmin {
        program: w.mit_kadmin.program.clone(),
        principal: w.mit_kadmin.principal.clone(),
        keytab: w.mit_kadmin.keytab.clone(),
        server: w.mit_kadmin.server.clone(),
        env: vec![("KRB5_CONFIG".into(), w.krb5_conf.clone().into())],
    };
    Ok(IssuerParts {
        client,
        audience: w.audience.clone(),
        mappings: Mappings::new(w)?,
        keys: Arc::new(kadmin),
        tickets: Tickets {
            krb5_conf: w.krb5_conf.clone(),
        },
        krb5_conf,
        keytab: w.keytab,
        store,
        clock,
        agent: AgentSettings {
            image: w.agent.image.clone(),
            server: w
                .agent
                .server
                .clone()
                .unwrap_or_else(|| issuer_url.to_owned()),
            ca_pem,
            mode: w.agent.mode,
            token_lifetime_secs: w.agent.token_lifetime.as_secs(),
            audience: w.audience.clone(),
        },
    })
}

/// Rotates keytab principals' keys when due and purges old keys after their overlap, on a
/// timer; reads the issuer in force at each tick (a reload replaces it).
pub async fn maintain(state: idbridge_bridge::AppState) {
    loop {
        let issuer = state.settings().workloads.clone();
        let every = issuer
            .as_ref()
            .map_or(std::time::Duration::from_secs(60), |i| i.maintain_every());
        tokio::time::sleep(every).await;
        let Some(issuer) = issuer else {
            continue;
        };
        for line in issuer.maintain().await {
            if line.contains("cannot") {
                tracing::warn!(what = %line, "workload key maintenance; will retry");
            } else {
                tracing::info!(what = %line, "workload keys");
            }
        }
    }
}

/// `idbridge workload`: workload revocations.
#[derive(Debug, Subcommand)]
pub enum WorkloadCmd {
    /// List the revocations in force (pods, serviceaccounts, principals refused credentials).
    Revocations,
    /// Lift a revocation: the workload may fetch credentials again.
    Lift {
        #[command(flatten)]
        what: WorkloadWhat,
    },
}

/// One of `--pod`, `--serviceaccount`, `--principal`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct WorkloadWhat {
    /// A pod, by its UID (`kubectl get pod P -o jsonpath='{.metadata.uid}'`).
    #[arg(long, value_name = "UID")]
    pub pod: Option<String>,
    /// Every pod of a serviceaccount.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub serviceaccount: Option<String>,
    /// Every workload mapped to a principal.
    #[arg(long, value_name = "PRINCIPAL")]
    pub principal: Option<String>,
}

impl WorkloadWhat {
    /// The target and its value.
    fn target(&self) -> Option<(WorkloadTarget, &str)> {
        match (&self.pod, &self.serviceaccount, &self.principal) {
            (Some(p), _, _) => Some((WorkloadTarget::Pod, p)),
            (_, Some(s), _) => Some((WorkloadTarget::ServiceAccount, s)),
            (_, _, Some(p)) => Some((WorkloadTarget::Principal, p)),
            _ => None,
        }
    }
}

/// `idbridge workload ...`.
pub async fn run(cmd: WorkloadCmd, target: &crate::admin_cmd::Target) -> anyhow::Result<()> {
    use crate::admin_cmd::Backend;
    let backend = Backend::new(target).await?;
    match cmd {
        WorkloadCmd::Revocations => {
            let list: Vec<idbridge_core::WorkloadRevocation> = match &backend {
                Backend::Offline(ops, _) => ops.store().workload_revocations().await?,
                Backend::Remote { .. } => {
                    backend
                        .call(reqwest::Method::GET, "/workloads/revocations", None)
                        .await?
                }
            };
            if target.json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            if list.is_empty() {
                eprintln!("no workload revocations");
                return Ok(());
            }
            outln!(
                "{:<16} {:<40} {:<20} {:<12} REASON",
                "TARGET",
                "VALUE",
                "SINCE",
                "BY"
            );
            for r in &list {
                outln!(
                    "{:<16} {:<40} {:<20} {:<12} {}",
                    r.target.noun(),
                    r.value,
                    crate::admin_cmd::fmt_time(Some(r.at.0)),
                    r.by,
                    r.reason
                );
            }
            Ok(())
        }
        WorkloadCmd::Lift { what } => {
            let Some((t, value)) = what.target() else {
                bail!("give --pod, --serviceaccount or --principal");
            };
            match &backend {
                Backend::Offline(ops, _) => {
                    if !ops.store().lift_workload_revocation(t, value).await? {
                        bail!("no revocation of {} {value}", t.noun());
                    }
                }
                Backend::Remote { .. } => {
                    let _: serde_json::Value = backend
                        .call(
                            reqwest::Method::POST,
                            "/workloads/revocations/lift",
                            Some(serde_json::json!({"target": t, "value": value})),
                        )
                        .await?;
                }
            }
            eprintln!("lifted the revocation of {} {value}", t.noun());
            Ok(())
        }
    }
}
