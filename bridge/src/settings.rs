//! What the bridge needs from configuration, already validated by the binary: the token
//! service's [`Policy`], and what only the HTTP side uses (webhook callers, body limit, the
//! login methods' adapters).

use idbridge_tokens::{Policy, Secret};

/// Why the browser and device flows are refused on a server with no sign-in method.
pub const NO_SIGN_IN: &str = "this idbridge offers people no way to sign in: its configuration needs an identity provider (`upstreams`), a `directory` or `kerberos`; static tokens (`idbridge token create`) work without one";

/// Runtime settings of the bridge; replaced as a whole on reload.
#[derive(Clone)]
pub struct Settings {
    /// The token service's policy.
    pub tokens: Policy,
    /// Bearer tokens that webhook callers (kube-apiserver) may present.
    pub webhook_tokens: Vec<Secret>,
    /// Whether a verified client certificate is enough to call the webhooks.
    pub webhook_client_cert: bool,
    /// When the TLS layer trusts more than the webhook CA (the proxy's CA too), the webhook CA's
    /// own verifier, checked per request.
    pub webhook_client_verifier:
        Option<std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The trusted authenticating proxy, when enabled.
    pub proxy: Option<ProxySettings>,
    /// LDAP / AD password logins, when a directory is configured.
    pub directory: Option<DirectoryLogin>,
    /// Kerberos single sign-on, when a keytab is configured.
    pub kerberos: Option<KerberosLogin>,
    /// Upstream OpenID providers, in the order the login page shows them.
    pub upstreams: Vec<std::sync::Arc<crate::login::upstream::Upstream>>,
    /// The sync worker, when a `sync` section is configured.
    pub sync: Option<std::sync::Arc<dyn SyncControl>>,
    /// Workload credentials and pod admission, when a `workloads` section is configured.
    pub workloads: Option<std::sync::Arc<idbridge_workload::Issuer>>,
}

/// The sync worker as the admin API and `/metrics` see it. The binary builds it over the sync
/// crate and runs its loop; the bridge only asks it to run and to report.
#[async_trait::async_trait]
pub trait SyncControl: Send + Sync {
    /// Runs once now (after the run in progress, if one is) and returns its report; with
    /// `manifests`, the Kubernetes objects whole in it.
    async fn run(&self, dry_run: bool, force: bool, manifests: bool) -> serde_json::Value;
    /// The last runs' state: last success, last error, the last report's summary.
    async fn status(&self) -> serde_json::Value;
    /// The sync metrics, as Prometheus text lines.
    fn metrics(&self) -> String;
}

/// LDAP / AD password logins.
#[derive(Clone, Debug)]
pub struct DirectoryLogin {
    /// The directory.
    pub directory: std::sync::Arc<dyn idbridge_core::Directory>,
    /// Create an account at a user's first login.
    pub jit: bool,
    /// With `existing` provisioning, link an unlinked account of the same name.
    pub link_by_name: bool,
    /// Failed-login limits.
    pub throttle: crate::login::throttle::ThrottlePolicy,
}

/// Kerberos logins: the acceptor, and how principals become accounts.
#[derive(Debug, Clone)]
pub struct KerberosLogin {
    /// Checks SPNEGO tokens against the keytab.
    pub acceptor: std::sync::Arc<idbridge_kerberos::Acceptor>,
    /// Allowed realms and mapping rules.
    pub mapper: idbridge_kerberos::Mapper,
    /// Create an account at a principal's first login.
    pub jit: bool,
    /// With `existing` provisioning, link an unlinked account of the same name.
    pub link_by_name: bool,
    /// Take the user and groups from the directory entry that holds the principal.
    pub groups_from_directory: bool,
}

/// The trusted authenticating proxy.
#[derive(Clone)]
pub struct ProxySettings {
    /// Verifies the proxy's client certificate against the configured CA.
    pub verifier: std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// Names (CN or DNS SAN) the certificate must carry; any when empty.
    pub allowed_names: Vec<String>,
    /// The header naming the user.
    pub user_header: String,
    /// The header (repeatable) naming groups.
    pub group_header: String,
    /// Create an account on first sight.
    pub jit: bool,
}

impl std::fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySettings")
            .field("allowed_names", &self.allowed_names)
            .field("user_header", &self.user_header)
            .field("group_header", &self.group_header)
            .field("jit", &self.jit)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("tokens", &self.tokens)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Defaults for an issuer; the binary overrides from config.
    #[must_use]
    pub fn new(issuer: String) -> Self {
        Self {
            tokens: Policy::new(issuer),
            webhook_tokens: Vec::new(),
            webhook_client_cert: false,
            webhook_client_verifier: None,
            max_body_bytes: 64 * 1024,
            proxy: None,
            directory: None,
            kerberos: None,
            upstreams: Vec::new(),
            sync: None,
            workloads: None,
        }
    }

    /// Whether a person can sign in here at all (an upstream provider, a directory or
    /// Kerberos): the browser and device flows need one.
    #[must_use]
    pub fn has_sign_in(&self) -> bool {
        !self.upstreams.is_empty() || self.kerberos.is_some() || self.directory.is_some()
    }

    /// The upstream named `name`.
    #[must_use]
    pub fn upstream(
        &self,
        name: &str,
    ) -> Option<&std::sync::Arc<crate::login::upstream::Upstream>> {
        self.upstreams.iter().find(|u| u.config.name == name)
    }
}
