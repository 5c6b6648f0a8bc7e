//! The `directory` section of the config, with the `openldap` and `active-directory` presets
//! filling in whatever it leaves out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use idbridge_core::HumanDuration;
use serde::Deserialize;

/// A preset: attribute names and group strategy of a directory product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// OpenLDAP (or another RFC 4519 directory): `uid`, `entryUUID`, `groupOfNames`, ppolicy.
    Openldap,
    /// Active Directory (or Samba AD): `sAMAccountName`/`userPrincipalName`, `objectGUID`,
    /// `userAccountControl`, nested groups by the in-chain matching rule.
    ActiveDirectory,
}

/// Where a user's direct groups come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectGroups {
    /// Search for groups whose member attribute names the user.
    Member,
    /// The user entry's `memberOf` attribute.
    MemberOf,
}

/// How nested groups are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NestedGroups {
    /// Direct groups only.
    None,
    /// Search level by level for groups that contain the groups found so far, with cycle
    /// detection and `groups.max_depth` (any directory).
    Iterative,
    /// AD's `LDAP_MATCHING_RULE_IN_CHAIN` (1.2.840.113556.1.4.1941): one search.
    InChain,
    /// AD's constructed `tokenGroups` attribute of the user (SIDs), then one search for names.
    TokenGroups,
}

/// The `directory` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// `openldap` or `active-directory`.
    pub preset: Preset,
    /// Servers, tried in order; a dead one is skipped for `retry_dead_after`.
    pub urls: Vec<String>,
    /// Upgrade `ldap://` connections with StartTLS.
    #[serde(default)]
    pub start_tls: bool,
    /// Allow `ldap://` without StartTLS: passwords then cross the network in clear. Warned
    /// about at every start.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// PEM CA bundle that issued the servers' certificates (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The service account idbridge searches with.
    pub bind_dn: String,
    /// File holding the service account's password.
    pub bind_password_file: PathBuf,
    /// TCP connect plus TLS handshake, per server.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Each LDAP operation.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Connections kept per purpose (searches, user binds).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// A server that failed to connect is tried again only after this long (unless every
    /// server has failed).
    #[serde(default = "default_retry_dead_after")]
    pub retry_dead_after: HumanDuration,
    /// Users.
    pub users: UsersConfig,
    /// Groups.
    #[serde(default)]
    pub groups: GroupsConfig,
    /// `jit` creates an account at a user's first login; `existing` admits only users with an
    /// account already linked to their entry.
    #[serde(default = "jit")]
    pub provisioning: Provisioning,
    /// With `existing`, also link an account of the same name that is not yet linked to any
    /// directory entry (at its first login). Off by default: a directory user named like a
    /// local account would otherwise take it over.
    #[serde(default)]
    pub link_by_name: bool,
    /// Failed-login throttling.
    #[serde(default)]
    pub throttle: ThrottleConfig,
}

pub use idbridge_core::Provisioning;

fn jit() -> Provisioning {
    Provisioning::Jit
}

/// Users: where they are and which attributes mean what.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersConfig {
    /// Search base.
    pub base: String,
    /// Extra filter every user entry must match (preset default).
    #[serde(default)]
    pub filter: Option<String>,
    /// Attributes a login name is matched against (preset default).
    #[serde(default)]
    pub login_attributes: Option<Vec<String>>,
    /// The attribute that becomes the account name (preset default).
    #[serde(default)]
    pub name_attribute: Option<String>,
    /// The entry's stable id (preset default: `entryUUID` or `objectGUID`).
    #[serde(default)]
    pub id_attribute: Option<String>,
    /// The attribute holding the user's Kerberos principal, for Kerberos logins that take
    /// their groups from the directory (preset default: `krbPrincipalName` or
    /// `userPrincipalName`).
    #[serde(default)]
    pub principal_attribute: Option<String>,
}

/// Groups: where, which attributes, how nested, and how they are shaped for tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsConfig {
    /// Search base (default: `users.base`).
    #[serde(default)]
    pub base: Option<String>,
    /// Filter every group entry must match (preset default).
    #[serde(default)]
    pub filter: Option<String>,
    /// Attribute listing a group's members (default `member`).
    #[serde(default)]
    pub member_attribute: Option<String>,
    /// Attribute holding a group's name (default `cn`).
    #[serde(default)]
    pub name_attribute: Option<String>,
    /// Where direct groups come from (preset default).
    #[serde(default)]
    pub direct: Option<DirectGroups>,
    /// How nested groups are resolved (preset default).
    #[serde(default)]
    pub nested: Option<NestedGroups>,
    /// Nesting levels followed by `iterative`.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Page size of group searches (RFC 2696).
    #[serde(default = "default_page_size")]
    pub page_size: i32,
    /// Keep only groups matching one of these patterns (`*` and `?` wildcards); all when empty.
    #[serde(default)]
    pub include: Vec<String>,
    /// Drop groups matching one of these patterns.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Prefix added to every group name in tokens, e.g. `ad:`.
    #[serde(default)]
    pub prefix: String,
    /// Most groups a token carries.
    #[serde(default = "default_max_groups")]
    pub max: usize,
    /// Per-audience caps overriding `max`.
    #[serde(default)]
    pub max_per_audience: BTreeMap<String, usize>,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            base: None,
            filter: None,
            member_attribute: None,
            name_attribute: None,
            direct: None,
            nested: None,
            max_depth: default_max_depth(),
            page_size: default_page_size(),
            include: Vec::new(),
            exclude: Vec::new(),
            prefix: String::new(),
            max: default_max_groups(),
            max_per_audience: BTreeMap::new(),
        }
    }
}

/// Failed-login throttling: per source address, and per username and source (never per
/// username alone, so nobody can lock a user out). Keep `per_user_source.failures` below the
/// directory's own lockout threshold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Failures allowed from one address within `window`.
    #[serde(default = "default_source_failures")]
    pub per_source: u32,
    /// Failures allowed for one username from one address within `window`.
    #[serde(default = "default_user_source_failures")]
    pub per_user_source: u32,
    /// The counting window; a throttled caller waits until it ends.
    #[serde(default = "default_window")]
    pub window: HumanDuration,
    /// Failed binds allowed for one user from all addresses together within
    /// `per_user_window`; then password logins of that user are refused (429) until the window
    /// ends, while other login methods go on. Set it below the directory's lockout threshold.
    #[serde(default = "default_user_failures")]
    pub per_user: u32,
    #[serde(default = "default_user_window")]
    pub per_user_window: HumanDuration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            per_source: default_source_failures(),
            per_user_source: default_user_source_failures(),
            window: default_window(),
            per_user: default_user_failures(),
            per_user_window: default_user_window(),
        }
    }
}

fn secs(s: u64) -> HumanDuration {
    HumanDuration::from_secs(s)
}
fn default_connect_timeout() -> HumanDuration {
    secs(5)
}
fn default_timeout() -> HumanDuration {
    secs(10)
}
fn default_pool_size() -> usize {
    8
}
fn default_retry_dead_after() -> HumanDuration {
    secs(10)
}
fn default_max_depth() -> usize {
    10
}
fn default_page_size() -> i32 {
    500
}
fn default_max_groups() -> usize {
    200
}
fn default_source_failures() -> u32 {
    30
}
fn default_user_source_failures() -> u32 {
    5
}
fn default_window() -> HumanDuration {
    secs(300)
}
fn default_user_failures() -> u32 {
    8
}
fn default_user_window() -> HumanDuration {
    secs(900)
}

/// The config with every preset default filled in and checked.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub preset: Preset,
    pub user_base: String,
    pub user_filter: String,
    pub login_attributes: Vec<String>,
    pub name_attribute: String,
    pub id_attribute: String,
    pub principal_attribute: String,
    pub group_base: String,
    pub group_filter: String,
    pub member_attribute: String,
    pub group_name_attribute: String,
    pub direct: DirectGroups,
    pub nested: NestedGroups,
    pub max_depth: usize,
    pub page_size: i32,
}

fn attr_ok(a: &str) -> bool {
    !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ';')
}

fn filter_ok(f: &str) -> bool {
    // Balanced parentheses, wrapped in one pair.
    let mut depth = 0i32;
    for (i, c) in f.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 || (depth == 0 && i + 1 != f.len()) {
                    return false;
                }
            }
            _ if depth == 0 => return false,
            _ => {}
        }
    }
    depth == 0 && f.starts_with('(')
}

impl DirectoryConfig {
    /// Fills in the preset's defaults and checks every field; the error names the field.
    pub(crate) fn resolve(&self) -> Result<Resolved, String> {
        if self.urls.is_empty() {
            return Err("field `directory.urls`: name at least one server".into());
        }
        for (i, u) in self.urls.iter().enumerate() {
            let ok = u.starts_with("ldap://") || u.starts_with("ldaps://");
            if !ok {
                return Err(format!(
                    "field `directory.urls[{i}]`: {u:?} must start with ldap:// or ldaps://"
                ));
            }
            if u.starts_with("ldap://") && !self.start_tls && !self.insecure_plaintext {
                return Err(format!(
                    "field `directory.urls[{i}]`: {u:?} would send passwords in clear; use \
                     ldaps://, or set `directory.start_tls: true` (or, only on a network nobody \
                     else can read, `directory.insecure_plaintext: true`)"
                ));
            }
            if self.start_tls && u.starts_with("ldaps://") {
                return Err(format!(
                    "field `directory.urls[{i}]`: StartTLS (`directory.start_tls`) applies to ldap:// URLs only"
                ));
            }
        }
        if self.bind_dn.trim().is_empty() {
            return Err("field `directory.bind_dn`: must not be empty".into());
        }
        if self.pool_size == 0 || self.pool_size > 256 {
            return Err("field `directory.pool_size`: must be 1 to 256".into());
        }
        if self.users.base.trim().is_empty() {
            return Err("field `directory.users.base`: must not be empty".into());
        }
        let ad = self.preset == Preset::ActiveDirectory;
        let g = &self.groups;
        let r = Resolved {
            preset: self.preset,
            user_base: self.users.base.clone(),
            user_filter: self.users.filter.clone().unwrap_or_else(|| {
                if ad {
                    "(&(objectCategory=person)(objectClass=user))".into()
                } else {
                    "(objectClass=inetOrgPerson)".into()
                }
            }),
            login_attributes: self.users.login_attributes.clone().unwrap_or_else(|| {
                if ad {
                    vec!["sAMAccountName".into(), "userPrincipalName".into()]
                } else {
                    vec!["uid".into()]
                }
            }),
            name_attribute: self
                .users
                .name_attribute
                .clone()
                .unwrap_or_else(|| if ad { "sAMAccountName" } else { "uid" }.into()),
            id_attribute: self
                .users
                .id_attribute
                .clone()
                .unwrap_or_else(|| if ad { "objectGUID" } else { "entryUUID" }.into()),
            principal_attribute: self.users.principal_attribute.clone().unwrap_or_else(|| {
                if ad {
                    "userPrincipalName"
                } else {
                    "krbPrincipalName"
                }
                .into()
            }),
            group_base: g.base.clone().unwrap_or_else(|| self.users.base.clone()),
            group_filter: g.filter.clone().unwrap_or_else(|| {
                if ad {
                    "(objectClass=group)".into()
                } else {
                    "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))".into()
                }
            }),
            member_attribute: g
                .member_attribute
                .clone()
                .unwrap_or_else(|| "member".into()),
            group_name_attribute: g.name_attribute.clone().unwrap_or_else(|| "cn".into()),
            direct: g.direct.unwrap_or(if ad {
                DirectGroups::MemberOf
            } else {
                DirectGroups::Member
            }),
            nested: g.nested.unwrap_or(if ad {
                NestedGroups::InChain
            } else {
                NestedGroups::Iterative
            }),
            max_depth: g.max_depth,
            page_size: g.page_size,
        };
        for (field, f) in [
            ("users.filter", &r.user_filter),
            ("groups.filter", &r.group_filter),
        ] {
            if !filter_ok(f) {
                return Err(format!(
                    "field `directory.{field}`: {f:?} is not one parenthesised LDAP filter"
                ));
            }
        }
        if r.login_attributes.is_empty() {
            return Err("field `directory.users.login_attributes`: name at least one".into());
        }
        for (field, a) in r
            .login_attributes
            .iter()
            .map(|a| ("users.login_attributes", a))
            .chain([
                ("users.name_attribute", &r.name_attribute),
                ("users.id_attribute", &r.id_attribute),
                ("users.principal_attribute", &r.principal_attribute),
                ("groups.member_attribute", &r.member_attribute),
                ("groups.name_attribute", &r.group_name_attribute),
            ])
        {
            if !attr_ok(a) {
                return Err(format!(
                    "field `directory.{field}`: {a:?} is not an attribute name"
                ));
            }
        }
        if !ad && matches!(r.nested, NestedGroups::InChain | NestedGroups::TokenGroups) {
            return Err(
                "field `directory.groups.nested`: in_chain and token_groups need Active Directory; use iterative"
                    .into(),
            );
        }
        if r.max_depth == 0 || r.max_depth > 64 {
            return Err("field `directory.groups.max_depth`: must be 1 to 64".into());
        }
        if !(1..=10_000).contains(&r.page_size) {
            return Err("field `directory.groups.page_size`: must be 1 to 10000".into());
        }
        if g.max == 0 {
            return Err("field `directory.groups.max`: must be at least 1".into());
        }
        if let Some((a, _)) = g.max_per_audience.iter().find(|(_, n)| **n == 0) {
            return Err(format!(
                "field `directory.groups.max_per_audience.{a}`: must be at least 1"
            ));
        }
        if self.throttle.per_source == 0
            || self.throttle.per_user_source == 0
            || self.throttle.per_user == 0
        {
            return Err("field `directory.throttle`: failure limits must be at least 1".into());
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> DirectoryConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const BASE: &str = "preset: openldap\nurls: [ldap://127.0.0.1:389]\nstart_tls: true\nbind_dn: cn=svc\nbind_password_file: /p\nusers: {base: 'dc=example'}\n";

    #[test]
    fn presets_fill_the_attributes() {
        let r = cfg(BASE).resolve().unwrap();
        assert_eq!(r.login_attributes, ["uid"]);
        assert_eq!(r.id_attribute, "entryUUID");
        assert_eq!(r.nested, NestedGroups::Iterative);
        let ad = cfg(&BASE.replace("openldap", "active-directory"))
            .resolve()
            .unwrap();
        assert_eq!(ad.login_attributes, ["sAMAccountName", "userPrincipalName"]);
        assert_eq!(ad.id_attribute, "objectGUID");
        assert_eq!(ad.nested, NestedGroups::InChain);
        assert_eq!(ad.direct, DirectGroups::MemberOf);
    }

    #[test]
    fn errors_name_the_field() {
        let e = cfg(&BASE.replace("ldap://", "http://"))
            .resolve()
            .unwrap_err();
        assert!(e.contains("directory.urls[0]"), "{e}");
        let e = cfg(&format!("{BASE}groups: {{nested: in_chain}}\n"))
            .resolve()
            .unwrap_err();
        assert!(e.contains("directory.groups.nested"), "{e}");
        let e = cfg(&BASE.replace(
            "users: {base: 'dc=example'}",
            "users: {base: 'dc=example', filter: 'objectClass=x'}",
        ))
        .resolve()
        .unwrap_err();
        assert!(e.contains("directory.users.filter"), "{e}");
        let e = cfg(&BASE.replace("ldap://", "ldaps://"))
            .resolve()
            .unwrap_err();
        assert!(e.contains("StartTLS"), "{e}");
        assert!(serde_yaml_ng::from_str::<DirectoryConfig>(&format!("{BASE}bogus: 1\n")).is_err());
    }

    #[test]
    fn plaintext_ldap_needs_the_insecure_option() {
        let plain = BASE.replace("start_tls: true\n", "");
        let e = cfg(&plain).resolve().unwrap_err();
        assert!(
            e.contains("directory.urls[0]") && e.contains("insecure_plaintext"),
            "{e}"
        );
        assert!(
            cfg(&format!("{plain}insecure_plaintext: true\n"))
                .resolve()
                .is_ok()
        );
        assert!(cfg(&plain.replace("ldap://", "ldaps://")).resolve().is_ok());
    }

    #[test]
    fn filters_must_be_one_parenthesised_expression() {
        assert!(filter_ok("(objectClass=x)"));
        assert!(filter_ok("(&(a=b)(c=d))"));
        assert!(!filter_ok("(a=b)(c=d)"));
        assert!(!filter_ok("a=b"));
        assert!(!filter_ok("(a=b"));
    }
}
