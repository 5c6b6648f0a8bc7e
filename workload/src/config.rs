//! The `workloads` section: the key source, the lifetimes, and which (namespace,
//! serviceaccount) may obtain which principal in which form.

use std::path::PathBuf;

use idbridge_core::HumanDuration;
use serde::Deserialize;

/// `workloads` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadsConfig {
    /// The audience the pod's projected ServiceAccount token must carry [default: `idbridge`].
    #[serde(default = "default_audience")]
    pub audience: String,
    /// The `krb5.conf` idbridge gets tickets and runs `kadmin` with, and hands to pods.
    pub krb5_conf: PathBuf,
    /// Where the principals' keys come from.
    pub mit_kadmin: MitKadminConfig,
    /// Longest lifetime of a handed-out ticket cache [default: 1h]; never past the
    /// ServiceAccount token's expiry.
    #[serde(default = "default_ccache_lifetime")]
    pub ccache_lifetime: HumanDuration,
    /// Key rotation of the principals handed out as keytabs.
    #[serde(default)]
    pub keytab: KeytabPolicy,
    /// What the admission webhook injects.
    #[serde(default)]
    pub agent: AgentConfig,
    /// Who may obtain which principal; the first entry that matches decides.
    pub mappings: Vec<MappingConfig>,
}

fn default_audience() -> String {
    "idbridge".to_owned()
}

fn default_ccache_lifetime() -> HumanDuration {
    HumanDuration::from_secs(3600)
}

/// MIT kadmin, as an admin principal with its keytab.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MitKadminConfig {
    /// The admin principal (`idbridge/admin@EXAMPLE.COM`); kadm5.acl must give it `aice`.
    pub principal: String,
    /// Its keytab.
    pub keytab: PathBuf,
    /// The admin server, `host[:port]` [default: krb5.conf's `admin_server`].
    #[serde(default)]
    pub server: Option<String>,
    /// The `kadmin` program [default: `kadmin` on `PATH`].
    #[serde(default = "default_kadmin")]
    pub program: PathBuf,
}

fn default_kadmin() -> PathBuf {
    PathBuf::from("kadmin")
}

/// How keytab principals' keys are rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeytabPolicy {
    /// New random keys this often [default: 24h].
    pub rotate_every: HumanDuration,
    /// How long after a rotation handed-out keytabs keep the previous key version, and the KDC
    /// keeps its keys [default: 1h].
    pub overlap: HumanDuration,
}

impl Default for KeytabPolicy {
    fn default() -> Self {
        Self {
            rotate_every: HumanDuration::from_secs(24 * 3600),
            overlap: HumanDuration::from_secs(3600),
        }
    }
}

/// The agent image when `workloads.agent.image` is not set.
pub const DEFAULT_AGENT_IMAGE: &str = "idbridge:latest";

/// What the admission webhook puts in a pod.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The image of the agent container (one with the `idbridge` binary) [default:
    /// `idbridge:latest`, with a warning: name your registry's].
    pub image: String,
    /// The URL pods reach idbridge at [default: the issuer].
    pub server: Option<String>,
    /// The CA (PEM) that issued idbridge's serving certificate, handed to the agent [default:
    /// the data dir's generated CA, when idbridge made its own certificate].
    pub ca_file: Option<PathBuf>,
    /// How the agent runs when the pod does not say (`idbridge.io/agent` annotation):
    /// `sidecar` (a native sidecar, Kubernetes ≥ 1.29), `init` or `classic`.
    pub mode: AgentMode,
    /// Lifetime of the projected token the agent presents [default: 1h].
    pub token_lifetime: HumanDuration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            image: DEFAULT_AGENT_IMAGE.to_owned(),
            server: None,
            ca_file: None,
            mode: AgentMode::Sidecar,
            token_lifetime: HumanDuration::from_secs(3600),
        }
    }
}

/// How the agent runs in a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMode {
    /// A native sidecar: an init container with `restartPolicy: Always`, started before the
    /// others and kept running; it renews.
    Sidecar,
    /// An init container that fetches once and exits; the pod never renews.
    Init,
    /// A classic sidecar: one more container beside the pod's own; it renews, but the pod's
    /// containers may start before the first credential is there.
    Classic,
}

impl AgentMode {
    /// The annotation value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sidecar => "sidecar",
            Self::Init => "init",
            Self::Classic => "classic",
        }
    }
}

/// One mapping entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// The namespace, or `*` for any.
    pub namespace: String,
    /// The serviceaccount, or `*` for any.
    pub serviceaccount: String,
    /// The principal, literal or a template with `{sa}` and `{namespace}`:
    /// `{sa}.{namespace}@EXAMPLE.COM`, `HTTP/{sa}.{namespace}.svc@EXAMPLE.COM`.
    pub principal: String,
    /// `ccache` (a ticket cache; the key never leaves idbridge) or `keytab` [default: ccache].
    #[serde(default)]
    pub form: Form,
    /// This mapping's ticket cache lifetime [default: `ccache_lifetime`], at most that.
    #[serde(default)]
    pub lifetime: Option<HumanDuration>,
}

/// What a workload is handed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// A credential cache holding a ticket-granting ticket.
    #[default]
    Ccache,
    /// A keytab with the principal's keys.
    Keytab,
}

impl Form {
    /// As in configuration.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ccache => "ccache",
            Self::Keytab => "keytab",
        }
    }
}
