//! The one typed configuration of `idbridge serve`: defaults, then the YAML file, then
//! environment variables, then command-line flags. Unknown fields are refused; every problem is
//! reported with its field path, and with the file line when it came from the file.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use idbridge_core::{GroupName, HumanDuration};
use serde::Deserialize;

/// Environment variables `IDBRIDGE__SECTION__FIELD=value` override the field `section.field`.
pub const ENV_PREFIX: &str = "IDBRIDGE__";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for the store, keys, certificates and generated files.
    pub data_dir: PathBuf,
    /// Issuer URL; default `https://<listen>`.
    pub issuer: Option<String>,
    pub tls: TlsConfig,
    pub store: StoreConfig,
    pub tokens: TokensConfig,
    pub sessions: SessionsConfig,
    pub keys: KeysConfig,
    /// OAuth clients besides the built-in `idbridge-cli` (an entry with that id replaces it).
    pub clients: Vec<ClientConfig>,
    /// Who may act for whom (RFC 8693 delegation); nobody when empty.
    pub delegation: Vec<DelegationRule>,
    /// Rules for access-token exchanges that apply to every client.
    pub token_exchange: TokenExchangeConfig,
    pub proxy: ProxyConfig,
    /// LDAP / Active Directory for password logins; none by default.
    pub directory: Option<idbridge_directory::DirectoryConfig>,
    /// The sync worker (needs `directory`); off by default.
    pub sync: Option<idbridge_sync::SyncConfig>,
    /// Kerberos single sign-on (a keytab for the HTTP service); none by default.
    pub kerberos: Option<idbridge_kerberos::KerberosConfig>,
    /// Workload credentials (the keytab injector; needs `kubernetes.api`); off by default.
    pub workloads: Option<idbridge_workload::WorkloadsConfig>,
    /// Upstream OpenID providers users may log in through, in the login page's order.
    pub upstreams: Vec<UpstreamConfig>,
    pub kubernetes: KubernetesConfig,
    pub webhooks: WebhooksConfig,
    pub review_cache: ReviewCacheConfig,
    pub admin: AdminConfig,
    pub audit: AuditConfig,
    /// A YAML list of accounts created or updated at start and on reload.
    pub accounts_file: Option<PathBuf>,
    pub limits: LimitsConfig,
    /// Create the `admin` account and `<data_dir>/admin.token` on first start. Default: true
    /// without a config file (the simple profile), false with one.
    pub bootstrap_admin: Option<bool>,
    /// Accept a data dir or store file that group or others can read (not made by idbridge);
    /// warned about at every start.
    pub insecure_store_permissions: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            data_dir: PathBuf::from("idbridge-data"),
            issuer: None,
            tls: TlsConfig::default(),
            store: StoreConfig::default(),
            tokens: TokensConfig::default(),
            sessions: SessionsConfig::default(),
            keys: KeysConfig::default(),
            clients: Vec::new(),
            delegation: Vec::new(),
            token_exchange: TokenExchangeConfig::default(),
            proxy: ProxyConfig::default(),
            directory: None,
            sync: None,
            kerberos: None,
            workloads: None,
            upstreams: Vec::new(),
            kubernetes: KubernetesConfig::default(),
            webhooks: WebhooksConfig::default(),
            review_cache: ReviewCacheConfig::default(),
            admin: AdminConfig::default(),
            audit: AuditConfig::default(),
            accounts_file: None,
            limits: LimitsConfig::default(),
            bootstrap_admin: None,
            insecure_store_permissions: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; with `key_file`. Absent: a local CA and certificate in the data dir.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// CA for client certificates (webhook callers).
    pub client_ca_file: Option<PathBuf>,
    /// Extra names for the generated certificate.
    pub sans: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite file; default `<data_dir>/idbridge.db`.
    pub sqlite: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    pub access_token_ttl: HumanDuration,
    pub clock_skew: HumanDuration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            access_token_ttl: HumanDuration::from_secs(15 * 60),
            clock_skew: HumanDuration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// A session ends this long after its last refresh.
    pub idle_timeout: HumanDuration,
    /// A session ends this long after login, however active.
    pub max_lifetime: HumanDuration,
    /// Concurrent refreshes with one token within this window get the same new pair.
    pub refresh_grace: HumanDuration,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            idle_timeout: HumanDuration::from_secs(8 * 3600),
            max_lifetime: HumanDuration::from_secs(7 * 86_400),
            refresh_grace: HumanDuration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// A signing key signs this long before the next one takes over.
    pub rotate_every: HumanDuration,
    /// A new key is in the JWKS this long before it signs (longer than kube-apiserver's JWKS
    /// refresh).
    pub publish_lead: HumanDuration,
    /// File with a base64 256-bit key that encrypts the signing keys at rest.
    pub encryption_key_file: Option<PathBuf>,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            rotate_every: HumanDuration::from_secs(30 * 86_400),
            publish_lead: HumanDuration::from_secs(86_400),
            encryption_key_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// `client_id`.
    pub id: String,
    /// File holding the secret of a confidential client; absent for a public client.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Grant types it may use (default: all).
    #[serde(default)]
    pub grants: Option<Vec<String>>,
    /// Audiences it may obtain tokens for (default: `kubernetes.audiences`).
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    /// Where `/oauth2/authorize` may send the user back: exact URIs; an `http://127.0.0.1/...`
    /// or `http://[::1]/...` entry matches any port (RFC 8252).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Rules for this client's access-token exchanges, besides the global ones.
    #[serde(default)]
    pub token_exchange: TokenExchangeConfig,
}

/// Access-token exchange rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenExchangeConfig {
    /// The audience changes an exchange may make; none by default, so an exchanged access
    /// token keeps its audience.
    pub audience_changes: Vec<AudienceChangeConfig>,
}

/// An exchange may turn an access token for `from` into one for any of `to`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceChangeConfig {
    pub from: String,
    pub to: Vec<String>,
}

impl TokenExchangeConfig {
    fn validate(&self, at: &str) -> anyhow::Result<()> {
        for (i, r) in self.audience_changes.iter().enumerate() {
            if r.from.is_empty() {
                bail!("field `{at}.audience_changes[{i}].from`: name an audience");
            }
            if r.to.is_empty() || r.to.iter().any(String::is_empty) {
                bail!("field `{at}.audience_changes[{i}].to`: name at least one audience");
            }
        }
        Ok(())
    }

    /// The rules as the token service takes them; `at` is where they are in the file.
    pub fn rules(&self, at: &str) -> anyhow::Result<Vec<idbridge_tokens::AudienceChange>> {
        self.audience_changes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(idbridge_tokens::AudienceChange {
                    from: audience(&r.from, &format!("{at}.audience_changes[{i}].from"))?,
                    to: audiences(&r.to, &format!("{at}.audience_changes[{i}].to"))?,
                })
            })
            .collect()
    }
}

/// An audience as the token service takes it; the error names the field.
pub fn audience(a: &str, field: &str) -> anyhow::Result<idbridge_core::Audience> {
    a.parse()
        .map_err(|e| anyhow::anyhow!("field `{field}`: {e}"))
}

/// A list of audiences as the token service takes them; the error names the field and index.
pub fn audiences(list: &[String], field: &str) -> anyhow::Result<Vec<idbridge_core::Audience>> {
    list.iter()
        .enumerate()
        .map(|(i, a)| audience(a, &format!("{field}[{i}]")))
        .collect()
}

/// An upstream OpenID provider users may log in through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Short name, in URLs and messages: lower-case letters, digits and `-`.
    pub name: String,
    /// What the login page's button says (default: the name).
    #[serde(default)]
    pub display_name: Option<String>,
    /// The provider's issuer URL, exactly as its discovery document states it.
    pub issuer: String,
    /// idbridge's client id at the provider.
    pub client_id: String,
    /// File holding that client's secret; absent for a public client.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// CA bundle (PEM) to trust for this provider instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Scopes asked for besides `openid`.
    #[serde(default = "default_upstream_scopes")]
    pub scopes: Vec<String>,
    /// The ID-token claim naming the account.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// The ID-token claim listing groups; empty for none.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Prefix added to account names from this provider.
    #[serde(default)]
    pub username_prefix: String,
    /// Prefix added to groups from this provider.
    #[serde(default)]
    pub groups_prefix: String,
    /// Refuse logins whose `email_verified` is not true (default: true when the username claim
    /// is `email`).
    #[serde(default)]
    pub require_email_verified: Option<bool>,
    /// Use the provider's refresh grant at every idbridge refresh, so a user disabled there
    /// loses access at the next refresh.
    #[serde(default)]
    pub refresh: bool,
    /// Whether a first login creates the account (default `jit`).
    #[serde(default = "jit")]
    pub provisioning: Provisioning,
    /// With `existing` provisioning, link an unlinked account of the same name at first login.
    #[serde(default)]
    pub link_by_name: bool,
}

fn jit() -> Provisioning {
    Provisioning::Jit
}

fn default_upstream_scopes() -> Vec<String> {
    vec!["email".into(), "profile".into()]
}

fn default_username_claim() -> String {
    "email".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

impl UpstreamConfig {
    fn validate(&self, at: &str) -> anyhow::Result<()> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!(
                "field `{at}.name`: 1-64 lower-case letters, digits and `-`, got {:?}",
                self.name
            );
        }
        if self.name == "callback" {
            bail!("field `{at}.name`: `callback` is reserved");
        }
        let ok = reqwest::Url::parse(&self.issuer)
            .is_ok_and(|u| u.scheme() == "https" && u.query().is_none() && u.fragment().is_none());
        if !ok {
            bail!(
                "field `{at}.issuer`: must be an https:// URL without query or fragment, got {:?}",
                self.issuer
            );
        }
        if self.client_id.is_empty() {
            bail!("field `{at}.client_id`: must not be empty");
        }
        if self.username_claim.is_empty() {
            bail!("field `{at}.username_claim`: must not be empty");
        }
        for (field, p) in [
            ("username_prefix", &self.username_prefix),
            ("groups_prefix", &self.groups_prefix),
        ] {
            if idbridge_core::is_reserved(p) {
                bail!("field `{at}.{field}`: must not produce names starting with `system:`");
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhoConfig {
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationRule {
    /// Who may act.
    pub actors: WhoConfig,
    /// For whom.
    pub subjects: WhoConfig,
    /// Audiences the delegated token may carry.
    pub audiences: Vec<String>,
}

pub use idbridge_core::Provisioning;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Honour `X-Remote-User`/`X-Remote-Group` at `/login/proxy` (off by default).
    pub enabled: bool,
    /// CA that issued the proxy's client certificate.
    pub client_ca_file: Option<PathBuf>,
    /// DNS names the proxy's certificate must be valid for; required when the proxy is
    /// enabled, unless `insecure_any_proxy_name`.
    pub allowed_names: Vec<String>,
    /// Let any certificate from `client_ca_file` act as the proxy, whatever it names; warned
    /// about at every start.
    pub insecure_any_proxy_name: bool,
    pub user_header: String,
    pub group_header: String,
    pub provisioning: Provisioning,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            client_ca_file: None,
            allowed_names: Vec::new(),
            insecure_any_proxy_name: false,
            user_header: "X-Remote-User".to_owned(),
            group_header: "X-Remote-Group".to_owned(),
            provisioning: Provisioning::Existing,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    pub audiences: Vec<String>,
    pub username_prefix: String,
    pub groups_prefix: String,
    /// How idbridge reaches the Kubernetes API (the sync worker's objects): a kubeconfig, or
    /// in-cluster; none by default.
    pub api: Option<idbridge_sync::kube::ApiConfig>,
    /// The `app.kubernetes.io/instance` label on the objects idbridge owns [default: the
    /// issuer's host].
    pub instance: Option<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            audiences: vec!["kubernetes".to_owned()],
            username_prefix: String::new(),
            groups_prefix: String::new(),
            api: None,
            instance: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// File holding the bearer token kube-apiserver presents; default `<data_dir>/webhook.token`
    /// (generated when absent).
    pub bearer_token_file: Option<PathBuf>,
    /// Accept callers with a client certificate from `tls.client_ca_file`.
    pub client_certificates: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewCacheConfig {
    /// How long a review result is reused; `0s` turns the cache off.
    pub ttl: HumanDuration,
    pub max_entries: usize,
}

impl Default for ReviewCacheConfig {
    fn default() -> Self {
        Self {
            ttl: HumanDuration::from_secs(10),
            max_entries: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Members of these groups may use the admin API.
    pub groups: BTreeSet<GroupName>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            groups: BTreeSet::from([admin_group()]),
        }
    }
}

/// The group the simple profile's `admin` account is in.
pub fn admin_group() -> GroupName {
    #[allow(clippy::expect_used)] // invariant: a literal that satisfies GroupName's rules
    "idbridge-admins".parse().expect("valid group name")
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `-` for standard output; default `<data_dir>/audit.log`.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    /// An HTTP/1.1 request's headers must arrive within this (at most 30 s).
    pub header_read_timeout: HumanDuration,
    /// A connection on which nothing moves for this long is closed.
    pub idle_timeout: HumanDuration,
    /// Client connections open at once.
    pub max_connections: usize,
    /// Client connections open at once from one address.
    pub max_connections_per_source: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            header_read_timeout: HumanDuration::from_secs(10),
            idle_timeout: HumanDuration::from_secs(60),
            max_connections: 1024,
            max_connections_per_source: 128,
        }
    }
}

/// Parses YAML into `T`, naming the field path and the line of the first problem.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> anyhow::Result<T> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| located(origin, &e))
}

/// A deserialization error with where it is: the origin, then the field (once: the YAML
/// library may name the path in its own message too).
fn located<E: std::fmt::Display>(origin: &str, e: &serde_path_to_error::Error<E>) -> anyhow::Error {
    let path = e.path().to_string();
    let inner = e.inner().to_string();
    if path == "." || path.is_empty() {
        return anyhow::anyhow!("{origin}: {inner}");
    }
    let inner = inner
        .strip_prefix(&format!("{path}: "))
        .map_or(inner.clone(), str::to_owned);
    anyhow::anyhow!("{origin}: field `{path}`: {inner}")
}

fn env_overrides() -> Vec<(String, String)> {
    std::env::vars()
        .filter_map(|(k, v)| {
            k.strip_prefix(ENV_PREFIX)
                .map(|rest| (rest.to_ascii_lowercase(), v))
        })
        .collect()
}

fn apply_env(
    root: &mut serde_yaml_ng::Value,
    overrides: &[(String, String)],
) -> anyhow::Result<()> {
    use serde_yaml_ng::Value;
    for (key, raw) in overrides {
        let parts: Vec<&str> = key.split("__").collect();
        let mut node = &mut *root;
        for (i, p) in parts.iter().enumerate() {
            if node.is_null() {
                *node = Value::Mapping(serde_yaml_ng::Mapping::new());
            }
            let Value::Mapping(m) = node else {
                bail!(
                    "{ENV_PREFIX}{}: `{}` is not a section",
                    key.to_ascii_uppercase(),
                    parts[..i].join(".")
                );
            };
            node = m
                .entry(Value::String((*p).to_owned()))
                .or_insert(Value::Null);
        }
        *node = env_value(raw).with_context(|| {
            format!(
                "{ENV_PREFIX}{}: not a valid YAML value",
                key.to_ascii_uppercase()
            )
        })?;
    }
    Ok(())
}

/// Lists and maps are written in YAML flow style (`[a, b]`); numbers and booleans are taken as
/// such; anything else is a plain string, so `idb:` stays a string.
fn env_value(raw: &str) -> anyhow::Result<serde_yaml_ng::Value> {
    use serde_yaml_ng::Value;
    let t = raw.trim_start();
    if t.starts_with('[') || t.starts_with('{') {
        return Ok(serde_yaml_ng::from_str(raw)?);
    }
    Ok(match serde_yaml_ng::from_str::<Value>(raw) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
        _ => Value::String(raw.to_owned()),
    })
}

/// Loads the configuration: the file if given (or nothing), with environment overrides.
pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    let overrides = env_overrides();
    let (text, origin) = match path {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (String::new(), "configuration".to_owned()),
    };
    if overrides.is_empty() {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        return parse_yaml(&text, &origin);
    }
    let mut value: serde_yaml_ng::Value = if text.trim().is_empty() {
        serde_yaml_ng::Value::Null
    } else {
        parse_yaml(&text, &origin)?
    };
    apply_env(&mut value, &overrides)?;
    let origin = format!("{origin} with {ENV_PREFIX}* overrides");
    serde_path_to_error::deserialize(value).map_err(|e| located(&origin, &e))
}

impl Config {
    /// The issuer URL, explicit or derived from the listen address.
    pub fn issuer(&self) -> String {
        self.issuer
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.listen))
    }

    /// Checks rules that span fields; each error names its field.
    pub fn validate(&self) -> anyhow::Result<()> {
        let issuer = self.issuer();
        if !issuer.starts_with("https://") || issuer.len() <= "https://".len() {
            bail!("field `issuer`: must be an https:// URL, got {issuer:?}");
        }
        if issuer.contains(['?', '#']) || issuer.ends_with('/') {
            bail!("field `issuer`: must have no query, fragment or trailing slash, got {issuer:?}");
        }
        if self.kubernetes.audiences.is_empty() {
            bail!("field `kubernetes.audiences`: must name at least one audience");
        }
        if let Some(i) = self.kubernetes.audiences.iter().position(String::is_empty) {
            bail!("field `kubernetes.audiences[{i}]`: must not be empty");
        }
        for (field, v) in [
            (
                "kubernetes.username_prefix",
                &self.kubernetes.username_prefix,
            ),
            ("kubernetes.groups_prefix", &self.kubernetes.groups_prefix),
        ] {
            if idbridge_core::is_reserved(v)
                || idbridge_core::RESERVED_PREFIX.starts_with(v.as_str()) && !v.is_empty()
            {
                bail!("field `{field}`: must not produce names starting with `system:`");
            }
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            bail!("field `tls.cert_file`/`tls.key_file`: give both or neither");
        }
        if self.webhooks.client_certificates && self.tls.client_ca_file.is_none() {
            bail!("field `webhooks.client_certificates`: needs `tls.client_ca_file`");
        }
        if self.review_cache.max_entries > 10_000_000 {
            bail!("field `review_cache.max_entries`: at most 10000000");
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.limits.max_body_bytes) {
            bail!("field `limits.max_body_bytes`: must be between 1024 and 16777216");
        }
        if self.tokens.access_token_ttl.as_secs() < 60 {
            bail!("field `tokens.access_token_ttl`: must be at least 1m");
        }
        let (idle, max, grace) = (
            self.sessions.idle_timeout.as_secs(),
            self.sessions.max_lifetime.as_secs(),
            self.sessions.refresh_grace.as_secs(),
        );
        if idle < 60 || idle > max {
            bail!(
                "field `sessions.idle_timeout`: must be at least 1m and at most `sessions.max_lifetime`"
            );
        }
        if grace > 60 {
            bail!("field `sessions.refresh_grace`: at most 60s");
        }
        if self.keys.publish_lead.as_secs() >= self.keys.rotate_every.as_secs() {
            bail!("field `keys.publish_lead`: must be shorter than `keys.rotate_every`");
        }
        let grants: Vec<&str> = idbridge_core::GrantType::ALL
            .iter()
            .map(|g| g.as_str())
            .collect();
        for (i, c) in self.clients.iter().enumerate() {
            if c.id.is_empty() || c.id.len() > 128 || c.id.chars().any(char::is_control) {
                bail!("field `clients[{i}].id`: must be 1-128 printable characters");
            }
            if self.clients[..i].iter().any(|o| o.id == c.id) {
                bail!("field `clients[{i}].id`: {:?} is declared twice", c.id);
            }
            if c.id == "idbridge-cli" && c.secret_file.is_some() {
                bail!("field `clients[{i}].secret_file`: idbridge-cli is a public client");
            }
            for g in c.grants.iter().flatten() {
                if !grants.contains(&g.as_str()) {
                    bail!("field `clients[{i}].grants`: unknown grant {g:?}; known: {grants:?}");
                }
            }
            if c.audiences.as_ref().is_some_and(Vec::is_empty) {
                bail!("field `clients[{i}].audiences`: name at least one audience");
            }
            c.token_exchange
                .validate(&format!("clients[{i}].token_exchange"))?;
            for (j, u) in c.redirect_uris.iter().enumerate() {
                let ok = reqwest::Url::parse(u).is_ok_and(|p| {
                    p.fragment().is_none()
                        && (p.scheme() == "https"
                            || p.scheme() == "http"
                                && matches!(p.host_str(), Some("127.0.0.1" | "[::1]")))
                });
                if !ok {
                    bail!(
                        "field `clients[{i}].redirect_uris[{j}]`: must be an https:// URL, or http:// on 127.0.0.1 or [::1], without a fragment; got {u:?}"
                    );
                }
            }
        }
        let mut names = BTreeSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            u.validate(&format!("upstreams[{i}]"))?;
            if !names.insert(u.name.as_str()) {
                bail!(
                    "field `upstreams[{i}].name`: {:?} is declared twice",
                    u.name
                );
            }
        }
        self.token_exchange.validate("token_exchange")?;
        for (i, r) in self.delegation.iter().enumerate() {
            if r.audiences.is_empty() {
                bail!("field `delegation[{i}].audiences`: name at least one audience");
            }
            for (what, w) in [("actors", &r.actors), ("subjects", &r.subjects)] {
                if w.users.is_empty() && w.groups.is_empty() {
                    bail!("field `delegation[{i}].{what}`: name users or groups");
                }
            }
        }
        if self.proxy.enabled && self.proxy.client_ca_file.is_none() {
            bail!("field `proxy.client_ca_file`: required when `proxy.enabled` is true");
        }
        if self.proxy.enabled
            && self.proxy.allowed_names.is_empty()
            && !self.proxy.insecure_any_proxy_name
        {
            bail!(
                "field `proxy.allowed_names`: name the DNS names of the proxy's certificate; \
                 without them any certificate from `proxy.client_ca_file` could name any user \
                 (or set `proxy.insecure_any_proxy_name: true`)"
            );
        }
        let hrt = self.limits.header_read_timeout.get();
        if hrt.is_zero() || hrt > std::time::Duration::from_secs(30) {
            bail!("field `limits.header_read_timeout`: must be more than 0s and at most 30s");
        }
        if self.limits.idle_timeout.get().is_zero() {
            bail!("field `limits.idle_timeout`: must be more than 0s");
        }
        if self.limits.max_connections == 0 {
            bail!("field `limits.max_connections`: must be at least 1");
        }
        if self.limits.max_connections_per_source == 0 {
            bail!("field `limits.max_connections_per_source`: must be at least 1");
        }
        if self.admin.groups.is_empty() {
            bail!("field `admin.groups`: name at least one group, or nobody can administer");
        }
        Ok(())
    }

    /// The SQLite file.
    pub fn sqlite_path(&self) -> PathBuf {
        self.store
            .sqlite
            .clone()
            .unwrap_or_else(|| self.data_dir.join("idbridge.db"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_with_path_and_line() {
        let err = parse_yaml::<Config>(
            "listen: 127.0.0.1:9000\nkubernetes:\n  audience: [x]\n",
            "c.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("c.yaml"), "{err}");
        assert!(err.contains("kubernetes"), "{err}");
        assert!(err.contains("audience"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let err = parse_yaml::<Config>("tokens:\n  access_token_ttl: 15 minutes\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokens.access_token_ttl"), "{err}");
        // The field is named once, though the YAML library names it too.
        let err = parse_yaml::<Config>(
            "workloads:\n  krb5_conf: /k\n  mit_kadmin: {principal: a@R, keytab: /k}\n  mappings:\n    - {namespace: a, serviceaccount: b, principal: c@R, form: kt}\n",
            "c.yaml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err.matches("mappings[0].form").count(), 1, "{err}");
        assert!(err.contains("unknown variant"), "{err}");
        let err = parse_yaml::<Config>("admin:\n  groups: [\"system:masters\"]\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.groups"), "{err}");
    }

    #[test]
    fn validation_names_fields() {
        let mut c = Config::default();
        c.validate().unwrap();
        c.issuer = Some("http://x".into());
        assert!(c.validate().unwrap_err().to_string().contains("`issuer`"));
        let mut c = Config::default();
        c.kubernetes.username_prefix = "system:".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("username_prefix")
        );
        let mut c = Config::default();
        c.kubernetes.groups_prefix = "sys".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("groups_prefix")
        );
    }

    #[test]
    fn env_overrides_reach_nested_fields() {
        let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str("listen: 127.0.0.1:1\n").unwrap();
        apply_env(
            &mut v,
            &[
                ("kubernetes__username_prefix".into(), "idb:".into()),
                ("kubernetes__audiences".into(), "[a, b]".into()),
            ],
        )
        .unwrap();
        let c: Config = serde_yaml_ng::from_value(v).unwrap();
        assert_eq!(c.kubernetes.username_prefix, "idb:");
        assert_eq!(c.kubernetes.audiences, vec!["a", "b"]);
    }
}
