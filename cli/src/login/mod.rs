//! `idbridge login`, `whoami` and `logout`: the client side, for kubectl and scripts.
//!
//! `login` gets a session from the identity the user already holds (a Kerberos ticket), from a
//! login page in a browser, from a device code or from the directory password, caches it per
//! issuer, audience and identity, and prints its access token: while the token is fresh it is
//! printed again, then the refresh token renews it, and only when the session has ended does a
//! new login happen. Under kubectl (`KUBERNETES_EXEC_INFO` set) it answers with an
//! `ExecCredential` in the version kubectl asked for, and never prompts or opens a browser when
//! kubectl says it cannot. One process at a time refreshes or logs in for an entry (see
//! [`cache`]), so parallel kubectl runs share one refresh and one login.

mod cache;
mod exec;
mod flow;
mod terminal;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Args, ValueEnum};
use idbridge_core::HumanDuration;
use serde_json::{Value, json};

use cache::{Entry, Key, Session};
use exec::ExecInfo;

/// The built-in first-party client.
const CLI_CLIENT: &str = idbridge_tokens::CLI_CLIENT;
/// A cached access token is used again only while it has at least this long to live.
const MIN_FRESH_SECS: u64 = 60;
/// The environment variable a password may come from, for automation.
pub(crate) const PASSWORD_ENV: &str = "IDBRIDGE_PASSWORD";

/// Flags of `idbridge login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The idbridge server, by its issuer URL.
    #[arg(long, env = "IDBRIDGE_ISSUER")]
    pub issuer: String,
    /// How to log in. `auto`: Kerberos when you hold a ticket, else the --fallback method.
    /// `kerberos`: with the ticket you already hold (kinit, or a domain login); nothing is
    /// asked. `browser`: the server's login page in your browser (your identity provider,
    /// directory password or Kerberos). `device`: a code to enter on any browser, for machines
    /// without one. `password`: your directory (LDAP / AD) password, asked on the terminal.
    #[arg(long, value_enum, default_value = "auto")]
    pub method: Method,
    /// With `--method auto`, the method used when there is no Kerberos ticket [default: browser].
    #[arg(long, value_enum)]
    pub fallback: Option<Fallback>,
    /// With `--method browser`: print the URL instead of opening a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// With `--method password`: the directory user name [default: asked on the terminal].
    #[arg(long, env = "IDBRIDGE_USERNAME")]
    pub username: Option<String>,
    /// With `--method password`: read the password from this file (its first line), for
    /// automation. Keep the file private: idbridge warns when others may read it. The password
    /// can also come from the environment variable IDBRIDGE_PASSWORD (with a warning); it is
    /// never taken from the command line.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// The Kerberos service to ask a ticket for [default: HTTP@<issuer host>, i.e. the
    /// principal HTTP/<issuer host>@REALM].
    #[arg(long, value_name = "SERVICE@HOST")]
    pub service: Option<String>,
    /// PEM CA bundle that issued the server's certificate (the simple profile's ca.crt)
    /// [default: the system's roots].
    #[arg(long, env = "IDBRIDGE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Audience of the access token [default: the server's first audience].
    #[arg(long)]
    pub audience: Option<String>,
    /// What to print on standard output [default: exec-credential when kubectl runs this
    /// (KUBERNETES_EXEC_INFO is set), else summary].
    #[arg(long, value_enum)]
    pub output: Option<Output>,
    /// Where sessions are cached [default: $XDG_CACHE_HOME/idbridge, else ~/.cache/idbridge].
    #[arg(long, env = "IDBRIDGE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Log in again even when a cached session could be used.
    #[arg(long)]
    pub fresh: bool,
    /// How long to wait for another idbridge login or refresh of the same session (another
    /// kubectl started at the same time) before giving up.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub lock_timeout: HumanDuration,
}

/// A login method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Kerberos when a ticket is there, else the fallback.
    Auto,
    /// Kerberos single sign-on (SPNEGO).
    Kerberos,
    /// The login page in a browser, answered on a loopback port.
    Browser,
    /// A code typed into a browser anywhere (the device grant).
    Device,
    /// The directory password (the password grant).
    Password,
}

/// The method `auto` falls back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fallback {
    /// The login page in a browser.
    Browser,
    /// A device code.
    Device,
    /// The directory password.
    Password,
}

impl From<Fallback> for Method {
    fn from(f: Fallback) -> Self {
        match f {
            Fallback::Browser => Self::Browser,
            Fallback::Device => Self::Device,
            Fallback::Password => Self::Password,
        }
    }
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Kerberos => "kerberos",
            Self::Browser => "browser",
            Self::Device => "device",
            Self::Password => "password",
        }
    }
}

/// The methods a login with `method` may use.
fn reachable(method: Method, fallback: Option<Fallback>) -> Vec<Method> {
    match method {
        Method::Auto => vec![
            Method::Kerberos,
            Method::from(fallback.unwrap_or(Fallback::Browser)),
        ],
        m => vec![m],
    }
}

/// Refuses a flag that the chosen method would ignore: `flags` are (flag, given, the method that
/// uses it).
pub(crate) fn check_method_flags(
    method: Method,
    fallback: Option<Fallback>,
    flags: &[(&str, bool, Method)],
) -> anyhow::Result<()> {
    if fallback.is_some() && method != Method::Auto {
        bail!(
            "--fallback is used only with --method auto (here --method {}): drop it",
            method.name()
        );
    }
    let reach = reachable(method, fallback);
    for &(flag, given, needs) in flags {
        if given && !reach.contains(&needs) {
            let here = match method {
                Method::Auto => format!("--method auto, which falls back to {}", reach[1].name()),
                m => format!("--method {}", m.name()),
            };
            let other = if needs == Method::Kerberos {
                format!("--method {}", needs.name())
            } else {
                format!(
                    "--method {0}, or --method auto --fallback {0}",
                    needs.name()
                )
            };
            bail!("{flag} is used only by {other} (here {here}): drop it, or choose that method");
        }
    }
    Ok(())
}

/// What `login` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line naming the user and the token's expiry (the token is cached, not printed).
    Summary,
    /// The access token alone.
    Token,
    /// An ExecCredential for kubectl (client.authentication.k8s.io/v1, or the version kubectl
    /// asks for).
    ExecCredential,
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The issuer without a trailing slash, and its host.
fn issuer_and_host(issuer: &str) -> anyhow::Result<(String, String)> {
    let issuer = issuer.trim_end_matches('/').to_owned();
    let url = reqwest::Url::parse(&issuer)
        .with_context(|| {
            format!("--issuer {issuer:?} is not a URL: give the server's https:// URL, such as https://idbridge.example.com")
        })?;
    let Some(host) = url.host_str().map(str::to_owned) else {
        bail!("--issuer {issuer:?} names no host");
    };
    if url.scheme() != "https" {
        bail!(
            "--issuer {issuer}: idbridge is reached over https only (passwords and tokens go there)"
        );
    }
    Ok((issuer, host))
}

/// `s` as one word for a POSIX shell: as it is when it is plain, else single-quoted.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Where the login happens, and what it needs.
pub(crate) struct Login<'a> {
    pub args: &'a LoginArgs,
    pub issuer: String,
    pub host: String,
    /// The method in effect (`auto` resolved).
    pub method: Method,
    /// Why `auto` did not use Kerberos, told when a login happens.
    pub fell_back: Option<&'static str>,
    /// Whether a person can be asked (a prompt, a browser, a code to type).
    pub interactive: bool,
}

impl Login<'_> {
    /// The command a person runs to log in by hand, when this run cannot ask them.
    fn by_hand(&self) -> String {
        let mut cmd = format!(
            "{} login --issuer {} --method {}",
            crate::program(),
            shell_word(&self.issuer),
            self.method.name()
        );
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                cmd.push_str(&format!(" {name} {}", shell_word(&v)));
            }
        };
        let a = self.args;
        flag(
            "--ca-file",
            a.ca_file.as_ref().map(|p| p.display().to_string()),
        );
        flag("--audience", a.audience.clone());
        // Only the flags of the method named: a flag of another method is refused.
        flag(
            "--username",
            a.username
                .clone()
                .filter(|_| self.method == Method::Password),
        );
        flag(
            "--service",
            a.service
                .clone()
                .filter(|_| self.method == Method::Kerberos),
        );
        flag(
            "--cache-dir",
            a.cache_dir.as_ref().map(|p| p.display().to_string()),
        );
        cmd
    }

    /// Fails, saying what to run instead, when a person would have to be asked and cannot be.
    fn need_person(&self, what: &str) -> anyhow::Result<()> {
        if self.interactive {
            return Ok(());
        }
        bail!(
            "{what}, but kubectl runs idbridge without a terminal (its exec interactiveMode is Never, or kubectl's standard input is not a terminal), so it cannot ask you: run `{}` in a terminal, then run kubectl again",
            self.by_hand()
        )
    }
}

pub async fn run(args: LoginArgs) -> anyhow::Result<()> {
    // A user name from the environment is a default for whichever command needs one, not a
    // flag given to this one.
    let username_flag =
        args.username.is_some() && std::env::var("IDBRIDGE_USERNAME").ok() != args.username;
    check_method_flags(
        args.method,
        args.fallback,
        &[
            ("--username", username_flag, Method::Password),
            (
                "--password-file",
                args.password_file.is_some(),
                Method::Password,
            ),
            ("--no-browser", args.no_browser, Method::Browser),
            ("--service", args.service.is_some(), Method::Kerberos),
        ],
    )?;
    let fallback = Method::from(args.fallback.unwrap_or(Fallback::Browser));
    let exec = ExecInfo::from_env()?;
    let interactive = exec.as_ref().is_none_or(|e| e.interactive);
    let output = args.output.unwrap_or(if exec.is_some() {
        Output::ExecCredential
    } else {
        Output::Summary
    });
    let (issuer, host) = issuer_and_host(&args.issuer)?;
    let dir = cache::dir(args.cache_dir.as_deref())?;
    cache::prepare(&dir, args.cache_dir.is_some())?;
    let entry_of = |identity: &str| {
        Entry::new(
            &dir,
            &Key {
                issuer: &issuer,
                audience: args.audience.as_deref(),
                identity,
            },
        )
    };
    // Whose session: the ticket's principal (so another kinit never reuses it); for the
    // password, the user named; for a browser, whoever logs in there.
    let (method, principal, fell_back) = match args.method {
        Method::Auto => match idbridge_kerberos::cached_ticket().await {
            Ok(t) if !t.expired => (Method::Kerberos, Some(t.principal), None),
            // An expired ticket still names whose session to refresh, if one is cached.
            Ok(t)
                if entry_of(&format!("krb5:{}", t.principal))
                    .read()
                    .is_some_and(|s| s.refresh_token.is_some()) =>
            {
                (Method::Kerberos, Some(t.principal), None)
            }
            Ok(_) => (fallback, None, Some("your Kerberos ticket has expired")),
            Err(e) => {
                tracing::debug!(error = %e, "no Kerberos ticket");
                (fallback, None, Some("no Kerberos ticket"))
            }
        },
        Method::Kerberos => (
            Method::Kerberos,
            Some(idbridge_kerberos::cached_ticket().await?.principal),
            None,
        ),
        m => (m, None, None),
    };
    let identity = match (method, &principal) {
        (Method::Kerberos, Some(p)) => format!("krb5:{p}"),
        (Method::Password, _) => format!("password:{}", args.username.as_deref().unwrap_or("")),
        _ => "web".to_owned(),
    };
    let entry = entry_of(&identity);
    let exec = exec.unwrap_or_else(ExecInfo::v1);
    // A fresh token needs no lock: the file is only ever replaced whole.
    if !args.fresh
        && let Some(s) = entry.read()
        && fresh(&s)
    {
        return print(output, &exec, &s);
    }
    // A Ctrl-C from here on removes the lock it may hold (and restores the terminal).
    terminal::clean_exit_on_signals()?;
    let held = entry.lock(args.lock_timeout.get()).await?;
    // Again under the lock: whoever held it may have just refreshed or logged in.
    let cached = if args.fresh { None } else { entry.read() };
    if let Some(s) = &cached
        && fresh(s)
    {
        return print(output, &exec, s);
    }
    let login = Login {
        args: &args,
        issuer,
        host,
        method,
        fell_back,
        interactive,
    };
    let http = flow::Http::new(args.ca_file.as_deref())?;
    let (session, refreshed) = match cached.and_then(|c| c.refresh_token) {
        Some(r) => match flow::refresh(&http, &login, &r).await {
            Ok(s) => (s, true),
            Err(e) if flow::ended(&e) => (
                flow::login(&http, &login, Some("your session ended")).await?,
                false,
            ),
            Err(e) => return Err(e.context("cannot refresh the cached session")),
        },
        None => (flow::login(&http, &login, None).await?, false),
    };
    let session = Session {
        issuer: login.issuer.clone(),
        audience: args.audience.clone(),
        identity,
        ca_file: args
            .ca_file
            .as_ref()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        ..session
    };
    if let Err(e) = entry.write(&held, &session) {
        if refreshed {
            return Err(e.context(
                "the session was refreshed but cannot be saved, and its old refresh token is now spent: fix the cache directory, then log in again",
            ));
        }
        return Err(e);
    }
    drop(held);
    print(output, &exec, &session)
}

/// How a cached session was made, in words, from its identity.
fn via(identity: &str) -> String {
    match identity.split_once(':') {
        Some(("krb5", p)) => format!("Kerberos, {p}"),
        Some(("password", "")) => "password".to_owned(),
        Some(("password", u)) => format!("password, --username {u}"),
        _ if identity == "web" => "browser or device code".to_owned(),
        _ => identity.to_owned(),
    }
}

fn fresh(s: &Session) -> bool {
    s.expires_at > now() + MIN_FRESH_SECS
}

/// The claims of one of our access tokens, read without checking its signature: only to show
/// the user what the cache holds (the server checks every token it is given).
fn claims(token: &str) -> Value {
    token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or(Value::Null)
}

pub(crate) fn rfc3339(unix: u64) -> anyhow::Result<String> {
    Ok(
        time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix)?)?
            .format(&time::format_description::well_known::Rfc3339)?,
    )
}

fn print(output: Output, exec: &ExecInfo, s: &Session) -> anyhow::Result<()> {
    let expiry = rfc3339(s.expires_at)?;
    // Printing the access token is what `--output token` and kubectl's exec protocol ask for;
    // the refresh token stays in the cache file and is never printed.
    match output {
        Output::Token => outln!("{}", s.access_token),
        Output::ExecCredential => outln!("{}", exec.credential(&s.access_token, &expiry)),
        Output::Summary => {
            let c = claims(&s.access_token);
            let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
            outln!("logged in as {name}; access token valid until {expiry}");
        }
    }
    Ok(())
}

/// Flags of `idbridge whoami`.
#[derive(Debug, Args)]
pub struct WhoamiArgs {
    /// Only the sessions of this idbridge server [default: every cached session].
    #[arg(long, env = "IDBRIDGE_ISSUER")]
    pub issuer: Option<String>,
    /// Where sessions are cached [default: $XDG_CACHE_HOME/idbridge, else ~/.cache/idbridge].
    #[arg(long, env = "IDBRIDGE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print JSON (an array, one object per session; `[]` when there is none) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The cached sessions of `issuer` (all of them without one).
fn sessions_of(
    cache_dir: Option<&std::path::Path>,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> anyhow::Result<Vec<(Entry, Session)>> {
    let issuer = issuer.map(issuer_and_host).transpose()?.map(|(i, _)| i);
    Ok(cache::entries(&cache::dir(cache_dir)?)
        .into_iter()
        .filter(|(_, s)| issuer.as_deref().is_none_or(|i| s.issuer == i))
        .filter(|(_, s)| audience.is_none_or(|a| s.audience.as_deref() == Some(a)))
        .collect())
}

pub async fn whoami(args: WhoamiArgs) -> anyhow::Result<()> {
    let found = sessions_of(args.cache_dir.as_deref(), args.issuer.as_deref(), None)?;
    if found.is_empty() && !args.json {
        let me = crate::program();
        match &args.issuer {
            Some(i) => bail!(
                "no cached session for {i}: run `{me} login --issuer {}`",
                shell_word(i)
            ),
            None => {
                bail!("no cached session: run `{me} login --issuer https://<your idbridge server>`")
            }
        }
    }
    let now = now();
    let views: Vec<Value> = found
        .iter()
        .map(|(_, s)| {
            let c = claims(&s.access_token);
            json!({
                "issuer": s.issuer,
                "audience": c.get("aud").cloned().unwrap_or(Value::Null),
                "user": c.get("name").cloned().unwrap_or(Value::Null),
                "uid": c.get("sub").cloned().unwrap_or(Value::Null),
                "groups": c.get("groups").cloned().unwrap_or_else(|| json!([])),
                "namespace": c.get("namespace").cloned().unwrap_or(Value::Null),
                "amr": c.get("amr").cloned().unwrap_or_else(|| json!([])),
                "expires": rfc3339(s.expires_at).unwrap_or_default(),
                "expired": s.expires_at <= now,
                "refreshable": s.refresh_token.is_some(),
                "via": via(&s.identity),
                "identity": s.identity,
            })
        })
        .collect();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    for (n, v) in views.iter().enumerate() {
        if n > 0 {
            outln!();
        }
        let text = |k: &str| v[k].as_str().unwrap_or("?").to_owned();
        let list = |k: &str| {
            let items: Vec<&str> = v[k]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if items.is_empty() {
                "(none)".to_owned()
            } else {
                items.join(", ")
            }
        };
        outln!("{} at {} ({})", text("user"), text("issuer"), text("via"));
        outln!("  uid:       {}", text("uid"));
        outln!("  groups:    {}", list("groups"));
        outln!(
            "  namespace: {}",
            v["namespace"].as_str().unwrap_or("(none)")
        );
        outln!("  signed in: {}", list("amr"));
        let state = match (v["expired"].as_bool(), v["refreshable"].as_bool()) {
            (Some(false), _) => "valid",
            (_, Some(true)) => "expired; the next login or kubectl run refreshes it",
            _ => "expired; the next login or kubectl run logs in again",
        };
        outln!("  token:     until {} ({state})", text("expires"));
    }
    Ok(())
}

/// Flags of `idbridge logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Log out of this idbridge server [default: every cached session].
    #[arg(long, env = "IDBRIDGE_ISSUER")]
    pub issuer: Option<String>,
    /// Only the session for this audience.
    #[arg(long)]
    pub audience: Option<String>,
    /// PEM CA bundle for the server [default: the one the login used].
    #[arg(long, env = "IDBRIDGE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Where sessions are cached [default: $XDG_CACHE_HOME/idbridge, else ~/.cache/idbridge].
    #[arg(long, env = "IDBRIDGE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

pub async fn logout(args: LogoutArgs) -> anyhow::Result<()> {
    let found = sessions_of(
        args.cache_dir.as_deref(),
        args.issuer.as_deref(),
        args.audience.as_deref(),
    )?;
    if found.is_empty() {
        eprintln!("no cached session to log out of");
        return Ok(());
    }
    let mut failed = Vec::new();
    for (entry, s) in found {
        let held = match entry.lock(std::time::Duration::from_secs(60)).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("left the session at {} alone: {e:#}", s.issuer);
                failed.push(("?".to_owned(), entry.path.clone()));
                continue;
            }
        };
        // Read again under the lock: a refresh may have just rotated it.
        let Some(s) = entry.read() else { continue };
        let token = s.refresh_token.as_deref().unwrap_or(&s.access_token);
        let ca = args.ca_file.as_deref().or(s.ca_file.as_deref());
        let revoked = match flow::Http::new(ca) {
            Ok(http) => flow::revoke(&http, &s.issuer, token).await,
            Err(e) => Err(e),
        };
        let user = claims(&s.access_token)
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let via = via(&s.identity);
        match revoked {
            Ok(()) => {
                entry.remove(&held)?;
                eprintln!("logged out {user} ({via}) at {}", s.issuer);
            }
            // Kept: forgetting a session the server still honours would only hide it, and
            // the next logout can revoke it once the server answers.
            Err(e) => {
                eprintln!(
                    "could not revoke the session of {user} ({via}) at {}: {e:#}",
                    s.issuer
                );
                failed.push((user, entry.path.clone()));
            }
        }
    }
    if !failed.is_empty() {
        let users: Vec<&str> = failed.iter().map(|(u, _)| u.as_str()).collect();
        bail!(
            "{} session(s) are still valid at the server, and kept in the cache so that `{me} logout` can revoke them once the server answers; an administrator can end them now with `idbridge revoke --user {}`; to forget them here without revoking, delete {}",
            failed.len(),
            users.join(" / "),
            failed
                .iter()
                .map(|(_, p)| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
            me = crate::program(),
        );
    }
    Ok(())
}
