//! The `kerberos` config section.

use std::path::PathBuf;

use idbridge_core::Provisioning;
use serde::Deserialize;

/// Kerberos single sign-on: the service's keytab, who may log in, and how principals become
/// accounts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KerberosConfig {
    /// Keytab with the keys of the service principals clients ask tickets for
    /// (`HTTP/idbridge.example.com@EXAMPLE.COM`, several behind a load balancer). It is read at
    /// every login: a keytab replaced on disk takes effect at once.
    pub keytab: PathBuf,
    /// Realms whose principals may log in.
    pub realms: Vec<String>,
    /// `alice@EXAMPLE.COM` becomes the account `alice` (default). Off: the account is named by
    /// the whole principal.
    #[serde(default = "yes")]
    pub strip_realm: bool,
    /// `auth_to_local`-style rules, tried in order before the default mapping: the first whose
    /// `match` (a regular expression over the whole principal) matches names the account by
    /// `name` (`$1` for its first group).
    #[serde(default)]
    pub rules: Vec<MappingRule>,
    /// Replay cache file (default `<data_dir>/krb5.rcache`). Every authenticator accepted is
    /// recorded here until it expires, so none is accepted twice.
    #[serde(default)]
    pub replay_cache: Option<PathBuf>,
    /// `jit` (default) creates an account at a principal's first login; `existing` admits
    /// only principals linked to an account.
    #[serde(default = "jit")]
    pub provisioning: Provisioning,
    /// With `existing`, also link an account of the mapped name that has no Kerberos principal
    /// yet (at its first login). Off by default.
    #[serde(default)]
    pub link_by_name: bool,
    /// Where the session's groups come from: `accounts` (the account's own, default) or
    /// `directory` (the user's directory entry found by principal, as for LDAP logins; needs the
    /// `directory` section).
    #[serde(default)]
    pub groups: GroupSource,
}

/// One mapping rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingRule {
    /// Regular expression over the whole principal, e.g. `([^/@]+)/admin@EXAMPLE\.COM`.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The account name, with `$1`… for the pattern's groups.
    pub name: String,
}

/// Where a Kerberos session's groups come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupSource {
    /// The account's own groups (accounts file, admin API, sync).
    #[default]
    Accounts,
    /// The directory entry whose principal attribute (`krbPrincipalName`,
    /// `userPrincipalName`) names the user; re-read at every refresh.
    Directory,
}

fn yes() -> bool {
    true
}

fn jit() -> Provisioning {
    Provisioning::Jit
}
