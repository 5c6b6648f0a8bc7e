//! `idbridge user …` and `idbridge token …`: through the running server's admin API, or straight
//! into the store with `--offline` when no server runs.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use idbridge_core::{
    AccountName, GroupName, HumanDuration, KeyState, LabelKey, Namespace, NewAccount, SessionId,
    StaticToken, SystemClock, TokenId, UserAccount,
};
use idbridge_tokens::{
    AdminOps, CreatedToken, KeyInfo, KeyPolicy, Rotate, SessionInfo, UserRevocation,
};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::config;
use crate::profile;

/// The simple profile's data directory, where admin commands look by default.
const DEFAULT_DATA_DIR: &str = "idbridge-data";

/// The simple profile's address, where admin commands go by default.
const DEFAULT_SERVER: &str = "https://127.0.0.1:8443";

/// Where admin commands send their changes.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// URL of the running idbridge [default: the issuer of --config's file, else
    /// https://127.0.0.1:8443].
    #[arg(long, env = "IDBRIDGE_SERVER", global = true)]
    pub server: Option<String>,
    /// File holding an admin token [default: <data-dir>/admin.token].
    #[arg(long, env = "IDBRIDGE_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// CA bundle to trust for the server [default: <data-dir>/ca.crt when it exists, else the
    /// system's roots].
    #[arg(long, env = "IDBRIDGE_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// The server's data directory (for default files, and the store with --offline).
    #[arg(
        long,
        env = "IDBRIDGE_DATA_DIR",
        default_value = DEFAULT_DATA_DIR,
        global = true
    )]
    pub data_dir: PathBuf,
    /// Write the store directly instead of calling the server. Meant for a stopped server: a
    /// running one sees offline disables and revocations only when its caches expire.
    #[arg(long, global = true)]
    pub offline: bool,
    /// The server's config file: to find its store (with --offline), or its address and data
    /// directory (its admin token and CA).
    #[arg(long, short = 'c', env = "IDBRIDGE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `idbridge user`.
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create an account.
    Add {
        /// The unique account name (the Kubernetes username).
        name: AccountName,
        /// A group (repeatable).
        #[arg(long = "group", short = 'g')]
        groups: Vec<GroupName>,
        /// Default namespace.
        #[arg(long)]
        namespace: Option<Namespace>,
        /// A label KEY=VALUE (repeatable).
        #[arg(long = "label", short = 'l', value_parser = parse_label)]
        labels: Vec<(LabelKey, String)>,
    },
    /// List accounts.
    List,
    /// Disable an account: its tokens stop working at the next review.
    Disable {
        /// Account name.
        name: AccountName,
    },
    /// Re-enable a disabled account.
    Enable {
        /// Account name.
        name: AccountName,
    },
    /// Rename an account; its UID (and everything bound to it) stays. Frees the old name, for
    /// example for a directory entry that was deleted and made again.
    Rename {
        /// The account's name now.
        name: AccountName,
        /// Its new name.
        to: AccountName,
    },
}

/// `idbridge token`.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a static token and print it (once; only its hash is stored).
    Create {
        /// The account the token authenticates as.
        #[arg(long)]
        user: AccountName,
        /// Lifetime, e.g. 30d or 12h [default: never expires].
        #[arg(long)]
        ttl: Option<HumanDuration>,
        /// A note to recognise the token by.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List static tokens (ids and state, never the secrets).
    List {
        /// Only this account's tokens.
        #[arg(long)]
        user: Option<AccountName>,
    },
    /// Revoke a static token by id; it fails at the next review.
    Revoke {
        /// The token id from `token list`.
        id: TokenId,
    },
}

/// `idbridge session`.
#[derive(Debug, Subcommand)]
pub enum SessionCmd {
    /// List sessions (logins and their refresh-token families), newest first.
    List {
        /// Only this account's sessions.
        #[arg(long)]
        user: Option<AccountName>,
    },
    /// Revoke a session: its refresh token and every access token minted for it stop working
    /// at once.
    Revoke {
        /// The session id from `session list`.
        id: SessionId,
    },
}

/// `idbridge keys`.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// List signing keys and their state (never the private keys).
    List,
    /// Rotate the signing key. The next key, already in the JWKS, starts signing once it has been
    /// published for `keys.publish_lead`; the old key stays published until its last token
    /// expires.
    Rotate {
        /// Start signing with the next key at once, however recently it was published (for a
        /// compromised key). Clients that cached the old JWKS refuse new tokens until they
        /// refetch it.
        #[arg(long)]
        now: bool,
    },
}

/// What `idbridge revoke` revokes.
#[derive(Debug, Args)]
#[group(skip)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(false)))]
pub struct RevokeArgs {
    /// Every session of this account and every access token minted for them.
    #[arg(long, group = "what")]
    user: Option<AccountName>,
    /// One access token, by its `jti` claim.
    #[arg(long, group = "what")]
    jti: Option<String>,
    /// With --user: revoke the account's static tokens as well.
    #[arg(long, requires = "user")]
    static_tokens: bool,
    /// A pod, by UID: its further credential requests are refused, its agent removes the
    /// credential at its next renewal.
    #[arg(long, group = "what", value_name = "UID")]
    pod: Option<String>,
    /// Every pod of a serviceaccount.
    #[arg(long, group = "what", value_name = "NAMESPACE/NAME")]
    serviceaccount: Option<String>,
    /// Every workload mapped to a Kerberos principal.
    #[arg(long, group = "what", value_name = "PRINCIPAL")]
    principal: Option<String>,
    /// With --serviceaccount or --principal: also give the principal new random keys, so a
    /// leaked keytab stops working at the KDC (tickets already issued last until they end).
    #[arg(long)]
    rotate: bool,
    /// With a workload: why, recorded and told to the refused agent.
    #[arg(long)]
    reason: Option<String>,
}

impl RevokeArgs {
    fn workload(&self) -> Option<(idbridge_core::WorkloadTarget, String)> {
        use idbridge_core::WorkloadTarget as T;
        match (&self.pod, &self.serviceaccount, &self.principal) {
            (Some(p), _, _) => Some((T::Pod, p.clone())),
            (_, Some(s), _) => Some((T::ServiceAccount, s.clone())),
            (_, _, Some(p)) => Some((T::Principal, p.clone())),
            _ => None,
        }
    }
}

/// Revokes a workload: through the server (which can rotate keys), or offline in the store.
async fn revoke_workload(
    backend: &Backend,
    target: idbridge_core::WorkloadTarget,
    value: String,
    args: &RevokeArgs,
    as_json: bool,
) -> anyhow::Result<()> {
    let reason = args
        .reason
        .clone()
        .unwrap_or_else(|| "revoked by an administrator".into());
    let done: serde_json::Value = match backend {
        Backend::Offline(ops, _) => {
            if args.rotate {
                bail!("--rotate needs the running server (it holds the key source); run without --offline");
            }
            let r = idbridge_core::WorkloadRevocation {
                target,
                value,
                reason,
                by: "offline".into(),
                at: idbridge_core::Clock::now(&idbridge_core::SystemClock),
            };
            ops.store().revoke_workload(&r).await?;
            json!({"revocation": r, "rotated_kvno": null})
        }
        Backend::Remote { .. } => {
            backend
                .call(
                    reqwest::Method::POST,
                    "/workloads/revocations",
                    Some(json!({"target": target, "value": value, "reason": reason, "rotate": args.rotate})),
                )
                .await?
        }
    };
    let what = target.noun();
    eprintln!(
        "revoked {what} {}: further credentials are refused; agents remove theirs at their next renewal",
        done["revocation"]["value"].as_str().unwrap_or_default()
    );
    if let Some(note) = done["note"].as_str() {
        eprintln!("note: {note}");
    }
    if let Some(v) = done["rotated_kvno"].as_u64() {
        eprintln!("new keys: key version {v}; keytabs of older versions no longer work at the KDC");
    }
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&done)?);
    }
    Ok(())
}

fn parse_label(s: &str) -> Result<(LabelKey, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} must be KEY=VALUE"))?;
    Ok((k.parse().map_err(|e| format!("{e}"))?, v.to_owned()))
}

pub(crate) enum Backend {
    Remote {
        http: reqwest::Client,
        base: String,
        token: String,
        ca: Option<PathBuf>,
    },
    Offline(AdminOps, Box<config::Config>),
}

impl Backend {
    pub(crate) async fn new(t: &Target) -> anyhow::Result<Self> {
        if t.offline {
            let mut cfg = config::load(t.config.as_deref())?;
            if t.config.is_none() {
                cfg.data_dir.clone_from(&t.data_dir);
            }
            let store = profile::open_store(&cfg).await?;
            return Ok(Self::Offline(
                AdminOps::new(store, Arc::new(SystemClock)),
                Box::new(cfg),
            ));
        }
        // The data dir of --config's file, unless --data-dir names another.
        let from_config = match &t.config {
            Some(c) if t.data_dir == std::path::Path::new(DEFAULT_DATA_DIR) => {
                Some(config::load(Some(c))?)
            }
            _ => None,
        };
        let data_dir = from_config
            .as_ref()
            .map_or_else(|| t.data_dir.clone(), |c| c.data_dir.clone());
        let token_file = t
            .token_file
            .clone()
            .unwrap_or_else(|| data_dir.join("admin.token"));
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| {
                format!(
                    "cannot read the admin token from {} (set --token-file; a server started with a config file makes none unless `bootstrap_admin: true`: create one with `idbridge token create --offline --config FILE --user <an account in admin.groups>`; or use --offline when no server runs)",
                    token_file.display()
                )
            })?
            .trim()
            .to_owned();
        let ca = t.ca_file.clone().or_else(|| {
            let p = data_dir.join("ca.crt");
            p.exists().then_some(p)
        });
        // The server: --server (or IDBRIDGE_SERVER), else the issuer of the config named,
        // else the simple profile's address.
        let server = match (&t.server, &t.config) {
            (Some(s), _) => s.clone(),
            (None, Some(c)) => match &from_config {
                Some(cfg) => cfg.issuer(),
                None => config::load(Some(c))?.issuer(),
            },
            (None, None) => DEFAULT_SERVER.to_owned(),
        };
        Ok(Self::Remote {
            http: http_client(ca.as_deref())?,
            base: format!("{}/admin/v1", server.trim_end_matches('/')),
            token,
            ca,
        })
    }

    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let Self::Remote {
            http,
            base,
            token,
            ca,
        } = self
        else {
            bail!("internal: remote call on an offline backend");
        };
        let mut req = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            unreachable(
                base,
                e,
                ca.as_deref(),
                " (is `idbridge serve` running there? --config FILE or --server URL names another; --offline works on the store when none runs)",
            )
        })?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or(text);
            bail!("server refused ({status}): {msg}");
        }
        Ok(resp.json().await?)
    }
}

fn print_accounts(accounts: &[UserAccount], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        outln!("{}", serde_json::to_string_pretty(accounts)?);
        return Ok(());
    }
    outln!(
        "{:<24} {:<36} {:<9} {:<16} GROUPS",
        "NAME",
        "UID",
        "DISABLED",
        "NAMESPACE"
    );
    for a in accounts {
        outln!(
            "{:<24} {:<36} {:<9} {:<16} {}",
            a.name,
            a.uid,
            a.disabled,
            a.default_namespace.as_ref().map_or("-", Namespace::as_str),
            a.groups
                .iter()
                .map(GroupName::as_str)
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    Ok(())
}

pub(crate) fn fmt_time(t: Option<i64>) -> String {
    t.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".to_owned())
}

fn print_tokens(tokens: &[StaticToken], as_json: bool) -> anyhow::Result<()> {
    // Metadata only: a StaticToken holds no secret (the store keeps just the hash, which is
    // not part of this type).
    if as_json {
        outln!("{}", serde_json::to_string_pretty(tokens)?);
        return Ok(());
    }
    outln!(
        "{:<36} {:<36} {:<20} {:<20} {:<20} DESCRIPTION",
        "ID",
        "ACCOUNT UID",
        "CREATED",
        "EXPIRES",
        "REVOKED"
    );
    for t in tokens {
        outln!(
            "{:<36} {:<36} {:<20} {:<20} {:<20} {}",
            t.id,
            t.account,
            fmt_time(Some(t.created_at.0)),
            fmt_time(t.expires_at.map(|e| e.0)),
            fmt_time(t.revoked_at.map(|e| e.0)),
            t.description
        );
    }
    Ok(())
}

pub async fn user(cmd: UserCmd, target: &Target) -> anyhow::Result<()> {
    let backend = Backend::new(target).await?;
    use reqwest::Method as M;
    match cmd {
        UserCmd::Add {
            name,
            groups,
            namespace,
            labels,
        } => {
            let mut new = NewAccount::named(name);
            new.groups = groups.into_iter().collect();
            new.default_namespace = namespace;
            new.labels = labels.into_iter().collect();
            let a: UserAccount = match &backend {
                Backend::Offline(ops, _) => ops.add_account(new).await?,
                Backend::Remote { .. } => {
                    backend
                        .call(M::POST, "/accounts", Some(serde_json::to_value(&new)?))
                        .await?
                }
            };
            eprintln!("created account {} (uid {})", a.name, a.uid);
            print_accounts(&[a], target.json)
        }
        UserCmd::List => {
            let all: Vec<UserAccount> = match &backend {
                Backend::Offline(ops, _) => ops.accounts().await?,
                Backend::Remote { .. } => backend.call(M::GET, "/accounts", None).await?,
            };
            print_accounts(&all, target.json)
        }
        UserCmd::Disable { name } => set_disabled(&backend, &name, true, target.json).await,
        UserCmd::Enable { name } => set_disabled(&backend, &name, false, target.json).await,
        UserCmd::Rename { name, to } => {
            let a: UserAccount = match &backend {
                Backend::Offline(ops, _) => ops.rename(&name, to).await?,
                Backend::Remote { .. } => {
                    let path = format!("/accounts/{}/rename", urlencode(name.as_str()));
                    backend
                        .call(M::POST, &path, Some(json!({"name": to.as_str()})))
                        .await?
                }
            };
            eprintln!("renamed account {name} to {} (uid {})", a.name, a.uid);
            print_accounts(&[a], target.json)
        }
    }
}

async fn set_disabled(
    backend: &Backend,
    name: &AccountName,
    disabled: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let verb = if disabled { "disable" } else { "enable" };
    let a: UserAccount = match backend {
        Backend::Offline(ops, _) => ops.set_disabled(name, disabled).await?,
        Backend::Remote { .. } => {
            let path = format!("/accounts/{}/{verb}", urlencode(name.as_str()));
            backend.call(reqwest::Method::POST, &path, None).await?
        }
    };
    eprintln!("{verb}d account {} (uid {})", a.name, a.uid);
    print_accounts(&[a], as_json)
}

/// An HTTP client for idbridge's API, trusting `ca` (a PEM bundle) or else the system's roots.
pub(crate) fn http_client(ca: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    match ca {
        Some(ca) => {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            http_client_pem(Some(&pem), &ca.display().to_string())
        }
        None => http_client_pem(None, ""),
    }
}

/// [`http_client`] trusting the PEM bundle `pem` (named `source` in errors).
pub(crate) fn http_client_pem(pem: Option<&[u8]>, source: &str) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        // Idle connections are dropped before the server's `limits.idle_timeout` (60 s by
        // default) closes them, so a request is never sent on one being closed.
        .pool_idle_timeout(std::time::Duration::from_secs(20))
        .user_agent(concat!("idbridge/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .with_context(|| format!("{source}: not a PEM certificate bundle"))?;
        b = b.tls_certs_only(certs);
    }
    Ok(b.build()?)
}

/// A request to `url` that got no answer, as an error that says why in a few words: an
/// untrusted certificate with what to pass (`ca` is the CA bundle trusted, if one was given),
/// else the innermost cause (connection refused, a timeout, an unknown host), then `hint`.
pub(crate) fn unreachable(
    url: &str,
    e: reqwest::Error,
    ca: Option<&std::path::Path>,
    hint: &str,
) -> anyhow::Error {
    // The TLS error sits inside I/O errors, which hide their inner error from `source()`.
    fn inner<'e>(
        c: &'e (dyn std::error::Error + 'static),
    ) -> &'e (dyn std::error::Error + 'static) {
        let mut c = c;
        while let Some(i) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            c = i;
        }
        c
    }
    tracing::debug!(error = ?e, url, "request failed");
    let mut last: &(dyn std::error::Error + 'static) = &e;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        let c = inner(c);
        if let Some(rustls::Error::InvalidCertificate(why)) = c.downcast_ref::<rustls::Error>() {
            let why = certificate_problem(why);
            let fix = match ca {
                Some(f) => format!(
                    "the CA bundle in --ca-file {} did not issue it: pass the one that did (for the simple profile, <data-dir>/ca.crt)",
                    f.display()
                ),
                None => CA_FILE_FIX.to_owned(),
            };
            return anyhow::anyhow!("cannot reach {url}: its TLS certificate {why}: {fix}");
        }
        last = c;
        cause = c.source();
    }
    let why = match last
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind)
    {
        Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
        Some(std::io::ErrorKind::TimedOut) => "no answer in time".to_owned(),
        _ if e.is_timeout() => "no answer in time".to_owned(),
        _ => last.to_string(),
    };
    anyhow::anyhow!("cannot reach {url}: {why}{hint}")
}

/// A certificate problem in words.
fn certificate_problem(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => "is not trusted (an unknown issuer)".to_owned(),
        C::Expired | C::ExpiredContext { .. } => "has expired".to_owned(),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "is not valid yet (check the clock)".to_owned()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "does not name this host (check the URL, or the server's certificate names)".to_owned()
        }
        C::Revoked => "is revoked".to_owned(),
        C::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => {
            "is a CA certificate, not a server's (is the URL the right server?)".to_owned()
        }
        other => format!("is not trusted ({other})"),
    }
}

/// What to do about a certificate that is not trusted, for commands with `--ca-file`.
pub(crate) const CA_FILE_FIX: &str = "pass --ca-file with the PEM bundle of the CA that issued it (for the simple profile, <data-dir>/ca.crt)";

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub async fn token(cmd: TokenCmd, target: &Target) -> anyhow::Result<()> {
    let backend = Backend::new(target).await?;
    use reqwest::Method as M;
    match cmd {
        TokenCmd::Create {
            user,
            ttl,
            description,
        } => {
            let created: CreatedToken = match &backend {
                Backend::Offline(ops, _) => ops.create_token(&user, ttl, description).await?,
                Backend::Remote { .. } => {
                    let body = json!({"user": user, "ttl": ttl, "description": description});
                    backend.call(M::POST, "/tokens", Some(body)).await?
                }
            };
            eprintln!(
                "created token {} for {} (expires {}); it is shown only now:",
                created.token.id,
                created.account_name,
                fmt_time(created.token.expires_at.map(|e| e.0))
            );
            // Printing the secret is this command's purpose: only its hash is stored, so this is
            // the one time it can be seen. It goes to stdout alone (notes go to stderr) so that
            // `idbridge token create … > file` captures just the token.
            if target.json {
                outln!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                outln!("{}", created.secret);
            }
            Ok(())
        }
        TokenCmd::List { user } => {
            let tokens: Vec<StaticToken> = match &backend {
                Backend::Offline(ops, _) => ops.tokens(user.as_ref()).await?,
                Backend::Remote { .. } => {
                    let path = match &user {
                        Some(u) => format!("/tokens?user={}", urlencode(u.as_str())),
                        None => "/tokens".to_owned(),
                    };
                    backend.call(M::GET, &path, None).await?
                }
            };
            print_tokens(&tokens, target.json)
        }
        TokenCmd::Revoke { id } => {
            let t: StaticToken = match &backend {
                Backend::Offline(ops, _) => ops.revoke_token(id).await?,
                Backend::Remote { .. } => {
                    backend
                        .call(M::POST, &format!("/tokens/{id}/revoke"), None)
                        .await?
                }
            };
            eprintln!("revoked token {} (account uid {})", t.id, t.account);
            Ok(())
        }
    }
}

fn print_sessions(sessions: &[SessionInfo], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        outln!("{}", serde_json::to_string_pretty(sessions)?);
        return Ok(());
    }
    outln!(
        "{:<36} {:<20} {:<12} {:<8} {:<20} {:<20} {:<20} CLIENT",
        "ID",
        "ACCOUNT",
        "STATE",
        "AMR",
        "STARTED",
        "LAST REFRESH",
        "ENDS"
    );
    for s in sessions {
        outln!(
            "{:<36} {:<20} {:<12} {:<8} {:<20} {:<20} {:<20} {}",
            s.session.id,
            s.account_name,
            s.state.to_string(),
            s.session
                .amr
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(","),
            fmt_time(Some(s.session.created_at.0)),
            fmt_time(Some(s.session.last_used_at.0)),
            fmt_time(Some(s.session.expires_at.0)),
            s.session.client_id
        );
    }
    Ok(())
}

pub async fn session(cmd: SessionCmd, target: &Target) -> anyhow::Result<()> {
    let backend = Backend::new(target).await?;
    use reqwest::Method as M;
    match cmd {
        SessionCmd::List { user } => {
            let sessions: Vec<SessionInfo> = match &backend {
                Backend::Offline(ops, cfg) => {
                    ops.sessions(user.as_ref(), cfg.sessions.idle_timeout.as_secs())
                        .await?
                }
                Backend::Remote { .. } => {
                    let path = match &user {
                        Some(u) => format!("/sessions?user={}", urlencode(u.as_str())),
                        None => "/sessions".to_owned(),
                    };
                    backend.call(M::GET, &path, None).await?
                }
            };
            print_sessions(&sessions, target.json)
        }
        SessionCmd::Revoke { id } => {
            let s: idbridge_core::Session = match &backend {
                Backend::Offline(ops, _) => ops.revoke_session(id).await?,
                Backend::Remote { .. } => {
                    backend
                        .call(M::POST, &format!("/sessions/{id}/revoke"), None)
                        .await?
                }
            };
            eprintln!("revoked session {} (account uid {})", s.id, s.account);
            Ok(())
        }
    }
}

pub async fn revoke(args: RevokeArgs, target: &Target) -> anyhow::Result<()> {
    if args.rotate && args.serviceaccount.is_none() && args.principal.is_none() {
        bail!(
            "--rotate goes with --serviceaccount or --principal (a pod's principal: revoke the pod, then `--principal P --rotate`)"
        );
    }
    let backend = Backend::new(target).await?;
    if let Some((what, value)) = args.workload() {
        return revoke_workload(&backend, what, value, &args, target.json).await;
    }
    if let Some(user) = args.user {
        let done: UserRevocation = match &backend {
            Backend::Offline(ops, _) => ops.revoke_user(&user, args.static_tokens).await?,
            Backend::Remote { .. } => {
                let body = json!({"user": user, "static_tokens": args.static_tokens});
                backend
                    .call(reqwest::Method::POST, "/revoke", Some(body))
                    .await?
            }
        };
        eprintln!(
            "revoked {} session(s) and {} static token(s) of {} (uid {})",
            done.sessions, done.static_tokens, done.account, done.uid
        );
        if target.json {
            outln!("{}", serde_json::to_string_pretty(&done)?);
        }
        return Ok(());
    }
    let Some(jti) = args.jti else {
        bail!("give --user NAME or --jti JTI");
    };
    match &backend {
        Backend::Offline(ops, cfg) => {
            let max = cfg.tokens.access_token_ttl.as_secs() + cfg.tokens.clock_skew.as_secs();
            ops.revoke_jti(&jti, max).await?;
        }
        Backend::Remote { .. } => {
            let _: serde_json::Value = backend
                .call(
                    reqwest::Method::POST,
                    "/revoke",
                    Some(json!({ "jti": jti })),
                )
                .await?;
        }
    }
    // The `jti` is the token's public id (a claim anyone holding the token can read), not the token.
    eprintln!("revoked access token {jti}");
    Ok(())
}

fn print_keys(keys: &[KeyInfo], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        outln!("{}", serde_json::to_string_pretty(keys)?);
        return Ok(());
    }
    outln!(
        "{:<44} {:<8} {:<20} {:<20} {:<20} ENCRYPTED",
        "KID",
        "STATE",
        "PUBLISHED",
        "SIGNS FROM",
        "LEAVES JWKS"
    );
    for k in keys {
        outln!(
            "{:<44} {:<8} {:<20} {:<20} {:<20} {}",
            k.kid,
            k.state.to_string(),
            fmt_time(Some(k.created_at.0)),
            fmt_time(k.activated_at.map(|t| t.0)),
            fmt_time(k.retire_after.map(|t| t.0)),
            k.encrypted
        );
    }
    Ok(())
}

pub async fn keys(cmd: KeysCmd, target: &Target) -> anyhow::Result<()> {
    let backend = Backend::new(target).await?;
    use reqwest::Method as M;
    let rotating = matches!(cmd, KeysCmd::Rotate { .. });
    let keys: Vec<KeyInfo> = match (&backend, cmd) {
        (Backend::Offline(ops, _), KeysCmd::List) => ops.keys().await?,
        (Backend::Remote { .. }, KeysCmd::List) => backend.call(M::GET, "/keys", None).await?,
        (Backend::Offline(ops, cfg), KeysCmd::Rotate { now }) => {
            let policy = KeyPolicy {
                rotate_every: cfg.keys.rotate_every.as_secs(),
                publish_lead: cfg.keys.publish_lead.as_secs(),
                retain: cfg.tokens.access_token_ttl.as_secs() + cfg.tokens.clock_skew.as_secs(),
            };
            let rotate = if now { Rotate::Now } else { Rotate::Soon };
            ops.maintain_keys(&policy, rotate, profile::ensure_kek(cfg)?.as_ref())
                .await?;
            ops.keys().await?
        }
        (Backend::Remote { .. }, KeysCmd::Rotate { now }) => {
            backend
                .call(M::POST, "/keys/rotate", Some(json!({ "now": now })))
                .await?
        }
    };
    if rotating {
        let state = |s| keys.iter().find(|k| k.state == s);
        if let Some(next) = state(KeyState::Next).filter(|k| k.activated_at.is_some()) {
            eprintln!(
                "key {} signs from {} (once it has been published for keys.publish_lead)",
                next.kid,
                fmt_time(next.activated_at.map(|t| t.0))
            );
        } else if let Some(cur) = state(KeyState::Current) {
            eprintln!(
                "key {} signs now; the previous key stays published until its tokens expire",
                cur.kid
            );
        }
    }
    print_keys(&keys, target.json)
}
