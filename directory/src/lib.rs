//! LDAP and Active Directory for idbridge.
//!
//! [`LdapDirectory`] implements [`idbridge_core::Directory`]: search for the user with a service
//! account, bind as the user on a separate connection, then resolve the user's groups, nested
//! ones included. Servers are tried in order with a back-off for a dead one; connections are
//! pooled and replaced when they break. Every user-supplied value put into a filter is escaped
//! (RFC 4515); every search that can be large is paged (RFC 2696). Active Directory's quirks
//! (binary `objectGUID` and SIDs, `userAccountControl`, `accountExpires`) live in `ad`; how a
//! user's groups become a token's (filters, mapping, the cap per audience) in `shape`.

mod ad;
mod config;
mod pool;
mod shape;
mod snapshot;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idbridge_core::{
    AccountProblem, Directory, DirectoryError, DirectoryStatus, DirectoryUser, LoginCandidate,
    normalised_login,
};
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{Ldap, LdapError, Scope, SearchEntry, SearchOptions, ldap_escape};

use config::Resolved;
pub use config::{
    DirectGroups, DirectoryConfig, GroupsConfig, NestedGroups, Preset, Provisioning,
    ThrottleConfig, UsersConfig,
};
use pool::{Pool, Prepare, Servers};
use shape::Shaping;
pub use snapshot::{
    DirectoryIdentity, Progress, ReadPhase, Snapshot, SnapshotGroup, SnapshotUser,
    members_per_group,
};

/// How many DNs one group search names in its `(|(member=…)…)` filter.
const DNS_PER_SEARCH: usize = 50;
/// A DN no entry has, bound to when the user does not exist, so an unknown user costs what a
/// wrong password does.
const NO_SUCH_USER_RDN: &str = "cn=idbridge-no-such-user";

/// An LDAP or AD directory.
#[derive(Debug)]
pub struct LdapDirectory {
    cfg: Resolved,
    shaping: Shaping,
    /// Service-account connections for searches.
    search: Pool,
    /// Connections for user binds only, never for searches.
    binds: Pool,
    op_timeout: Duration,
    /// How long existing users' binds take, for the unknown-user path to match.
    bind_time: BindTime,
    /// The configured server URLs and service account, for the directory's identity.
    urls: Vec<String>,
    bind_dn: String,
}

/// The recent durations of binds as existing entries: their median is what an unknown user's
/// failed login waits for, so that a directory's slow password hash is no oracle.
#[derive(Debug, Default)]
struct BindTime {
    recent: std::sync::Mutex<std::collections::VecDeque<Duration>>,
}

/// How many recent binds the median is taken over.
const BIND_TIMES_KEPT: usize = 15;

impl BindTime {
    fn observe(&self, d: Duration) {
        let mut r = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.len() == BIND_TIMES_KEPT {
            r.pop_front();
        }
        r.push_back(d);
    }

    /// The median of the recent binds; `None` before the first.
    fn typical(&self) -> Option<Duration> {
        let mut v: Vec<Duration> = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }
}

/// A problem with the `directory` section, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn rustls_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, ConfigError> {
    let roots = ca_roots(ca_file)?;
    client_config(roots)
}

fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, ConfigError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("field `directory.ca_file`: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The TLS configuration for servers named by an IPv6 literal (see [`pool::ip_literal`]):
/// the CA bundle's roots, or the system's, and a verifier that checks the certificate for the
/// address.
fn ip_literal_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, ConfigError> {
    let roots = match ca_file {
        Some(f) => ca_roots(f)?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots.clone()),
        provider,
    )
    .build()
    .map_err(|e| ConfigError(format!("field `directory.ca_file`: {e}")))?;
    let mut config = client_config(roots)?;
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(pool::IpLiteralVerifier::new(inner)));
    // The stand-in host name is no name to send.
    config.enable_sni = false;
    Ok(config)
}

fn ca_roots(ca_file: &std::path::Path) -> Result<rustls::RootCertStore, ConfigError> {
    let field = "field `directory.ca_file`";
    let pem = std::fs::read(ca_file)
        .map_err(|e| ConfigError(format!("{field}: cannot read {}: {e}", ca_file.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: rustls::pki_types::CertificateDer<'static> =
            cert.map_err(|e| ConfigError(format!("{field}: not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ConfigError(format!("{field}: unusable certificate: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(ConfigError(format!(
            "{field}: {} holds no certificate",
            ca_file.display()
        )));
    }
    Ok(roots)
}

fn first(e: &SearchEntry, attr: &str) -> Option<String> {
    e.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(attr))
        .and_then(|(_, v)| v.first().cloned())
}

fn all(e: &SearchEntry, attr: &str) -> Vec<String> {
    e.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(attr))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Values of a binary attribute (ldap3 files a value that happens to be valid UTF-8 as text).
fn binary(e: &SearchEntry, attr: &str) -> Vec<Vec<u8>> {
    let bin = e
        .bin_attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(attr))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let text = all(e, attr).into_iter().map(String::into_bytes);
    bin.into_iter().chain(text).collect()
}

/// The value of the first RDN of `dn` when its attribute is `attr` (`cn=Dev,ou=…` → `Dev`).
fn rdn_value(dn: &str, attr: &str) -> Option<String> {
    let (a, rest) = dn.split_once('=')?;
    if !a.trim().eq_ignore_ascii_case(attr) {
        return None;
    }
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            ',' | '+' => break,
            '\\' => {
                let n = chars.next()?;
                if n.is_ascii_hexdigit() {
                    // A hex pair: collect the UTF-8 bytes.
                    let m = chars.next()?;
                    let b = u8::from_str_radix(&format!("{n}{m}"), 16).ok()?;
                    let mut bytes = vec![b];
                    // Multi-byte sequences arrive as several pairs.
                    while std::str::from_utf8(&bytes).is_err() && bytes.len() < 4 {
                        let (Some('\\'), Some(h), Some(l)) =
                            (chars.next(), chars.next(), chars.next())
                        else {
                            return None;
                        };
                        bytes.push(u8::from_str_radix(&format!("{h}{l}"), 16).ok()?);
                    }
                    out.push_str(std::str::from_utf8(&bytes).ok()?);
                } else {
                    out.push(n);
                }
            }
            c => out.push(c),
        }
    }
    Some(out.trim().to_owned())
}

impl LdapDirectory {
    /// Builds the directory from its config; reads the service password and CA files. No
    /// connection is opened until the first login.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field at fault.
    pub fn new(cfg: &DirectoryConfig) -> Result<Self, ConfigError> {
        let resolved = cfg.resolve().map_err(ConfigError)?;
        // Once per process: the login directory, the sync worker's and `--check` are built
        // from one config.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if cfg.insecure_plaintext
            && cfg.urls.iter().any(|u| u.starts_with("ldap://"))
            && !cfg.start_tls
            && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "directory.insecure_plaintext: passwords go to the directory in clear over ldap://"
            );
        }
        if idbridge_core::is_reserved(&cfg.groups.prefix) {
            return Err(ConfigError(
                "field `directory.groups.prefix`: `system:` names are reserved".into(),
            ));
        }
        let password = std::fs::read_to_string(&cfg.bind_password_file).map_err(|e| {
            ConfigError(format!(
                "field `directory.bind_password_file`: cannot read {}: {e}",
                cfg.bind_password_file.display()
            ))
        })?;
        let password = password.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() {
            return Err(ConfigError(format!(
                "field `directory.bind_password_file`: {} is empty (an empty password would be an anonymous bind)",
                cfg.bind_password_file.display()
            )));
        }
        let tls = cfg
            .ca_file
            .as_deref()
            .map(rustls_config)
            .transpose()?
            .map(Arc::new);
        let ip_tls = if cfg.urls.iter().any(|u| pool::ip_literal(u).is_some()) {
            Some(Arc::new(ip_literal_config(cfg.ca_file.as_deref())?))
        } else {
            None
        };
        let op_timeout = cfg.timeout.get();
        let servers = Arc::new(Servers::new(
            cfg.urls.clone(),
            cfg.retry_dead_after.get(),
            cfg.connect_timeout.get(),
            cfg.start_tls,
            (tls, ip_tls),
        ));
        Ok(Self {
            shaping: Shaping {
                include: cfg.groups.include.clone(),
                exclude: cfg.groups.exclude.clone(),
                prefix: cfg.groups.prefix.clone(),
                max: cfg.groups.max,
                max_per_audience: cfg.groups.max_per_audience.clone(),
            },
            search: Pool::new(
                servers.clone(),
                Prepare::ServiceBind {
                    dn: cfg.bind_dn.clone(),
                    password,
                },
                cfg.pool_size,
                op_timeout,
            ),
            binds: Pool::new(servers, Prepare::None, cfg.pool_size, op_timeout),
            cfg: resolved,
            op_timeout,
            bind_time: BindTime::default(),
            urls: cfg.urls.clone(),
            bind_dn: cfg.bind_dn.clone(),
        })
    }

    fn user_attrs(&self) -> Vec<String> {
        let mut a = vec![
            self.cfg.name_attribute.clone(),
            self.cfg.id_attribute.clone(),
        ];
        if self.cfg.direct == DirectGroups::MemberOf {
            a.push("memberOf".into());
        }
        match self.cfg.preset {
            Preset::ActiveDirectory => a.extend(
                [
                    "userAccountControl",
                    "msDS-User-Account-Control-Computed",
                    "accountExpires",
                    "lockoutTime",
                ]
                .map(String::from),
            ),
            Preset::Openldap => a.push("pwdAccountLockedTime".into()),
        }
        a
    }

    /// The one entry matching `filter` under the user base; `None` for none or several.
    async fn find_user(&self, filter: String) -> Result<Option<SearchEntry>, DirectoryError> {
        let filter = format!("(&{}{filter})", self.cfg.user_filter);
        let attrs = &self.user_attrs();
        let (base, filter) = (&self.cfg.user_base, &filter);
        let t = self.op_timeout;
        let entries = self
            .search
            .run(|mut ldap: Ldap| async move {
                let res = ldap
                    .with_timeout(t)
                    .with_search_options(SearchOptions::new().sizelimit(2))
                    .search(base, Scope::Subtree, filter, attrs)
                    .await?;
                // sizeLimitExceeded still delivers the entries found: more than one.
                if res.1.rc != 0 && res.1.rc != 4 && res.1.rc != 32 {
                    return Err(LdapError::LdapResult { result: res.1 });
                }
                Ok(res
                    .0
                    .into_iter()
                    .filter(|e| !e.is_ref())
                    .map(SearchEntry::construct)
                    .collect::<Vec<_>>())
            })
            .await?;
        if entries.len() > 1 {
            tracing::warn!(
                "a login name matched several directory entries; refused (check `directory.users.filter` and `login_attributes`)"
            );
            return Ok(None);
        }
        Ok(entries.into_iter().next())
    }

    fn stable_id(&self, e: &SearchEntry) -> Option<String> {
        if self.cfg.preset == Preset::ActiveDirectory
            && self.cfg.id_attribute.eq_ignore_ascii_case("objectGUID")
        {
            binary(e, "objectGUID")
                .first()
                .and_then(|b| ad::guid_to_string(b))
        } else {
            first(e, &self.cfg.id_attribute)
        }
    }

    fn id_filter(&self, id: &str) -> Option<String> {
        if self.cfg.preset == Preset::ActiveDirectory
            && self.cfg.id_attribute.eq_ignore_ascii_case("objectGUID")
        {
            let raw = ad::guid_from_string(id)?;
            Some(format!("(objectGUID={})", ad::escape_bytes(&raw)))
        } else {
            Some(format!("({}={})", self.cfg.id_attribute, ldap_escape(id)))
        }
    }

    fn status(&self, e: &SearchEntry) -> DirectoryStatus {
        let num = |a: &str| first(e, a).and_then(|v| v.trim().parse::<i64>().ok());
        match self.cfg.preset {
            Preset::ActiveDirectory => {
                let uac = num("userAccountControl").unwrap_or(0);
                if uac as u64 & ad::UAC_DISABLED != 0 {
                    return DirectoryStatus::Disabled;
                }
                let locked = match num("msDS-User-Account-Control-Computed") {
                    Some(c) => c as u64 & ad::UACC_LOCKOUT != 0,
                    None => num("lockoutTime").is_some_and(|t| t > 0),
                };
                if locked {
                    return DirectoryStatus::Locked;
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                if first(e, "accountExpires").is_some_and(|v| ad::account_expired(&v, now)) {
                    return DirectoryStatus::Expired;
                }
                DirectoryStatus::Active
            }
            Preset::Openldap => match first(e, "pwdAccountLockedTime") {
                // ppolicy: this value is an administrative lock with no end.
                Some(t) if t.starts_with("000001010000") => DirectoryStatus::Disabled,
                Some(_) => DirectoryStatus::Locked,
                None => DirectoryStatus::Active,
            },
        }
    }

    /// A paged search for groups matching `filter`; their DNs and names.
    async fn group_search(&self, filter: &str) -> Result<Vec<(String, String)>, DirectoryError> {
        let filter = &format!("(&{}{filter})", self.cfg.group_filter);
        let (base, name) = (&self.cfg.group_base, &self.cfg.group_name_attribute);
        let page = self.cfg.page_size;
        let t = self.op_timeout;
        self.search
            .run(|mut ldap: Ldap| async move {
                let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![
                    Box::new(EntriesOnly::new()),
                    Box::new(PagedResults::new(page)),
                ];
                let mut stream = ldap
                    .with_timeout(t)
                    .streaming_search_with(adapters, base, Scope::Subtree, filter, vec![name])
                    .await?;
                let mut out = Vec::new();
                while let Some(entry) = stream.next().await? {
                    let e = SearchEntry::construct(entry);
                    let n = first(&e, name).unwrap_or_default();
                    out.push((e.dn, n));
                }
                stream.finish().await.success()?;
                Ok(out)
            })
            .await
    }

    /// Groups containing any of `dns` directly, searched in batches.
    async fn parents(&self, dns: &[String]) -> Result<Vec<(String, String)>, DirectoryError> {
        let mut out = Vec::new();
        for chunk in dns.chunks(DNS_PER_SEARCH) {
            let mut f = String::from("(|");
            for dn in chunk {
                f.push_str(&format!(
                    "({}={})",
                    self.cfg.member_attribute,
                    ldap_escape(dn.as_str())
                ));
            }
            f.push(')');
            out.extend(self.group_search(&f).await?);
        }
        Ok(out)
    }

    /// Names of the groups with these DNs: from the RDN when it is the name attribute, else by
    /// reading each entry.
    async fn names_of(&self, dns: &[String]) -> Result<Vec<(String, String)>, DirectoryError> {
        let mut out = Vec::new();
        for dn in dns {
            if let Some(n) = rdn_value(dn, &self.cfg.group_name_attribute) {
                out.push((dn.clone(), n));
                continue;
            }
            let name = &self.cfg.group_name_attribute;
            let t = self.op_timeout;
            let found = self
                .search
                .run(|mut ldap: Ldap| async move {
                    let r = ldap
                        .with_timeout(t)
                        .search(dn, Scope::Base, "(objectClass=*)", vec![name])
                        .await?;
                    Ok(r.0
                        .into_iter()
                        .filter(|e| !e.is_ref())
                        .map(SearchEntry::construct)
                        .next())
                })
                .await?;
            if let Some(e) = found
                && let Some(n) = first(&e, name)
            {
                out.push((dn.clone(), n));
            }
        }
        Ok(out)
    }

    /// Every group of the user, nested ones included.
    async fn groups(&self, entry: &SearchEntry) -> Result<Vec<String>, DirectoryError> {
        let user_dn = entry.dn.as_str();
        let direct = || async {
            match self.cfg.direct {
                DirectGroups::Member => {
                    self.group_search(&format!(
                        "({}={})",
                        self.cfg.member_attribute,
                        ldap_escape(user_dn)
                    ))
                    .await
                }
                DirectGroups::MemberOf => self.names_of(&all(entry, "memberOf")).await,
            }
        };
        let found: Vec<(String, String)> = match self.cfg.nested {
            NestedGroups::None => direct().await?,
            NestedGroups::InChain => {
                self.group_search(&format!(
                    "({}:1.2.840.113556.1.4.1941:={})",
                    self.cfg.member_attribute,
                    ldap_escape(user_dn)
                ))
                .await?
            }
            NestedGroups::TokenGroups => self.token_groups_of(user_dn).await?,
            NestedGroups::Iterative => {
                let mut seen: HashSet<String> = HashSet::new();
                let mut all_groups = Vec::new();
                let mut frontier = Vec::new();
                for (dn, name) in direct().await? {
                    if seen.insert(dn.to_lowercase()) {
                        frontier.push(dn.clone());
                        all_groups.push((dn, name));
                    }
                }
                let mut depth = 1;
                while !frontier.is_empty() {
                    if depth >= self.cfg.max_depth {
                        tracing::warn!(
                            user = %user_dn,
                            max_depth = self.cfg.max_depth,
                            "group nesting goes deeper than `directory.groups.max_depth`; deeper groups ignored"
                        );
                        break;
                    }
                    let mut next = Vec::new();
                    for (dn, name) in self.parents(&frontier).await? {
                        // A cycle (or a diamond) leads back to a group already seen.
                        if seen.insert(dn.to_lowercase()) {
                            next.push(dn.clone());
                            all_groups.push((dn, name));
                        }
                    }
                    frontier = next;
                    depth += 1;
                }
                all_groups
            }
        };
        let mut names: Vec<String> = found
            .into_iter()
            .map(|(_, n)| n)
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// AD's `tokenGroups`: the SIDs of every group, nested included, then their names.
    async fn token_groups_of(
        &self,
        user_dn: &str,
    ) -> Result<Vec<(String, String)>, DirectoryError> {
        let t = self.op_timeout;
        let sids = self
            .search
            .run(|mut ldap: Ldap| async move {
                let r = ldap
                    .with_timeout(t)
                    .search(user_dn, Scope::Base, "(objectClass=*)", vec!["tokenGroups"])
                    .await?
                    .success()?;
                Ok(r.0
                    .into_iter()
                    .filter(|e| !e.is_ref())
                    .map(SearchEntry::construct)
                    .next()
                    .map(|e| binary(&e, "tokenGroups"))
                    .unwrap_or_default())
            })
            .await?;
        let mut out = Vec::new();
        for chunk in sids.chunks(DNS_PER_SEARCH) {
            let mut f = String::from("(|");
            for sid in chunk {
                f.push_str(&format!("(objectSid={})", ad::escape_bytes(sid)));
            }
            f.push(')');
            out.extend(self.group_search(&f).await?);
        }
        Ok(out)
    }

    async fn to_user(&self, entry: &SearchEntry) -> Result<DirectoryUser, DirectoryError> {
        let id = self.stable_id(entry).ok_or_else(|| {
            DirectoryError::Failed(format!(
                "entry {} has no `{}` (field `directory.users.id_attribute`)",
                entry.dn, self.cfg.id_attribute
            ))
        })?;
        let name = first(entry, &self.cfg.name_attribute).ok_or_else(|| {
            DirectoryError::Failed(format!(
                "entry {} has no `{}` (field `directory.users.name_attribute`)",
                entry.dn, self.cfg.name_attribute
            ))
        })?;
        let status = self.status(entry);
        // An entry that may not log in is refused whatever its groups: skip resolving them.
        let groups = if status == DirectoryStatus::Active {
            self.groups(entry).await?
        } else {
            Vec::new()
        };
        Ok(DirectoryUser {
            id,
            name,
            dn: entry.dn.clone(),
            groups,
            status,
        })
    }

    /// Binds as `dn` on a bind connection: `Ok(None)` on success, `Ok(Some(diagnostic))` when
    /// the directory refused the credentials.
    async fn bind(&self, dn: &str, password: &str) -> Result<Option<String>, DirectoryError> {
        let t = self.op_timeout;
        let res = self
            .binds
            .run_bind(|mut ldap: Ldap| async move {
                ldap.with_timeout(t).simple_bind(dn, password).await
            })
            .await?;
        match res.rc {
            0 => Ok(None),
            // invalidCredentials, and what some servers answer for locked or disabled entries.
            49 | 50 | 53 => Ok(Some(res.text)),
            rc => Err(DirectoryError::Failed(format!(
                "user bind answered result {rc} {}",
                res.text
            ))),
        }
    }
}

#[async_trait]
impl Directory for LdapDirectory {
    async fn find_login(&self, username: &str) -> Result<LoginCandidate, DirectoryError> {
        let unknown = || LoginCandidate {
            key: format!("name:{}", normalised_login(username)),
            found: false,
            state: Box::new(None::<SearchEntry>),
        };
        if username.is_empty() || username.len() > 256 {
            return Ok(unknown());
        }
        let login = ldap_escape(username);
        let mut f = String::from("(|");
        for a in &self.cfg.login_attributes {
            f.push_str(&format!("({a}={login})"));
        }
        f.push(')');
        Ok(match self.find_user(f).await? {
            Some(entry) => LoginCandidate {
                // Every name that finds the entry (uid, mail, sAMAccountName, UPN, any case)
                // counts against the one entry.
                key: format!(
                    "id:{}",
                    self.stable_id(&entry)
                        .unwrap_or_else(|| entry.dn.to_lowercase())
                ),
                found: true,
                state: Box::new(Some(entry)),
            },
            None => unknown(),
        })
    }

    async fn check_password(
        &self,
        candidate: LoginCandidate,
        password: &str,
    ) -> Result<DirectoryUser, DirectoryError> {
        let entry = *candidate
            .state
            .downcast::<Option<SearchEntry>>()
            .map_err(|_| DirectoryError::Failed("a login looked up by another directory".into()))?;
        // An empty password would be an anonymous bind, which "succeeds": never send one.
        if password.is_empty() {
            return Err(DirectoryError::InvalidCredentials);
        }
        let Some(entry) = entry else {
            // Bind to a DN no entry has, then wait as long as a real user's bind takes: a
            // directory that hashes slowly spends that time on every existing user's bind and
            // none on this one, so the answer time would tell who exists.
            let started = std::time::Instant::now();
            let dn = format!("{NO_SUCH_USER_RDN},{}", self.cfg.user_base);
            let _ = self.bind(&dn, password).await?;
            if let Some(typical) = self.bind_time.typical() {
                tokio::time::sleep(typical.saturating_sub(started.elapsed())).await;
            }
            return Err(DirectoryError::InvalidCredentials);
        };
        let started = std::time::Instant::now();
        let diagnostic = self.bind(&entry.dn, password).await?;
        self.bind_time.observe(started.elapsed());
        if let Some(diagnostic) = diagnostic {
            // Sub-codes only AD gives, and only when the password was right.
            return Err(match ad::bind_problem(&diagnostic) {
                Some(p) if self.cfg.preset == Preset::ActiveDirectory => DirectoryError::Refused(p),
                _ => DirectoryError::InvalidCredentials,
            });
        }
        let user = self.to_user(&entry).await?;
        // The password was right; the entry's own state may still forbid the login.
        match user.status {
            DirectoryStatus::Active => Ok(user),
            DirectoryStatus::Disabled => Err(DirectoryError::Refused(AccountProblem::Disabled)),
            DirectoryStatus::Locked => Err(DirectoryError::Refused(AccountProblem::Locked)),
            DirectoryStatus::Expired => {
                Err(DirectoryError::Refused(AccountProblem::AccountExpired))
            }
        }
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<DirectoryUser>, DirectoryError> {
        let Some(filter) = self.id_filter(id) else {
            return Ok(None);
        };
        match self.find_user(filter).await? {
            Some(e) => Ok(Some(self.to_user(&e).await?)),
            None => Ok(None),
        }
    }

    async fn user_by_principal(
        &self,
        principal: &str,
    ) -> Result<Option<DirectoryUser>, DirectoryError> {
        if principal.is_empty() {
            return Ok(None);
        }
        let filter = format!(
            "({}={})",
            self.cfg.principal_attribute,
            ldap_escape(principal)
        );
        match self.find_user(filter).await? {
            Some(e) => Ok(Some(self.to_user(&e).await?)),
            None => Ok(None),
        }
    }

    fn token_groups(&self, user: &DirectoryUser, audience: &str) -> (Vec<String>, usize) {
        self.shaping.apply(&user.groups, audience)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_service_password() {
        let dir = std::env::temp_dir().join(format!("idb-dir-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "s3rvice-secret\n").unwrap();
        let yaml = format!(
            "preset: openldap\nurls: [ldap://127.0.0.1:1]\nstart_tls: true\nbind_dn: cn=svc\nbind_password_file: {}\nusers: {{base: 'dc=x'}}\n",
            pw.display()
        );
        let cfg: DirectoryConfig = serde_yaml_ng::from_str(&yaml).unwrap();
        let d = LdapDirectory::new(&cfg).unwrap();
        let shown = format!("{d:?}");
        assert!(
            shown.contains("cn=svc") && !shown.contains("s3rvice-secret"),
            "{shown}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rdn_values_are_unescaped() {
        assert_eq!(rdn_value("cn=Dev,ou=g,dc=x", "cn").as_deref(), Some("Dev"));
        assert_eq!(
            rdn_value("CN=Domain Users,CN=Users,DC=x", "cn").as_deref(),
            Some("Domain Users")
        );
        assert_eq!(rdn_value("cn=a\\,b,dc=x", "cn").as_deref(), Some("a,b"));
        assert_eq!(
            rdn_value("cn=caf\\c3\\a9,dc=x", "cn").as_deref(),
            Some("café")
        );
        assert_eq!(rdn_value("ou=x,dc=y", "cn"), None);
    }

    #[test]
    fn user_input_is_escaped_for_filters_and_dns() {
        // RFC 4515: the characters that change a filter's meaning.
        assert_eq!(ldap_escape("*"), "\\2a");
        assert_eq!(ldap_escape(")("), "\\29\\28");
        assert_eq!(ldap_escape("a\0b"), "a\\00b");
        assert_eq!(ldap_escape("\\"), "\\5c");
        // RFC 4514 for DNs.
        assert_eq!(ldap3::dn_escape("a,b+c"), "a\\2cb\\2bc");
        assert_eq!(ldap3::dn_escape(" lead"), "\\20lead");
    }
}
