//! `idbridge login`: a session from the identity the user already holds, for kubectl and
//! scripts.
//!
//! With `--method kerberos` the user's Kerberos ticket is exchanged at the token endpoint (the
//! `urn:idbridge:params:oauth:grant-type:kerberos` grant) and the server's answer must prove
//! its identity (mutual authentication). With `--method browser` the server's login page is
//! opened (authorization code with PKCE, answered on a loopback port, RFC 8252); with
//! `--method device` a code is shown to type on any browser (RFC 8628). The session is cached
//! per issuer and audience: while
//! the access token is fresh it is printed again, then the refresh token renews it, and only
//! when the session has ended does a new login happen. Everything stays silent, so kubectl can
//! run this as an exec credential plugin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The grant type of a Kerberos login.
const KERBEROS_GRANT: &str = idbridge_core::GrantType::Kerberos.as_str();
/// The device grant's grant type.
const DEVICE_GRANT: &str = idbridge_core::GrantType::DeviceCode.as_str();
/// The built-in first-party client.
const CLI_CLIENT: &str = idbridge_tokens::CLI_CLIENT;
/// A cached access token is used again only while it has at least this long to live.
const MIN_FRESH_SECS: u64 = 60;

/// Flags of `idbridge login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The idbridge server, by its issuer URL.
    #[arg(long, env = "IDBRIDGE_ISSUER")]
    pub issuer: String,
    /// How to log in. `kerberos`: with the ticket you already hold (kinit, or a domain login);
    /// nothing is asked. `browser`: the server's login page in your browser (your identity
    /// provider, directory password or Kerberos). `device`: a code to enter on any browser,
    /// for machines without one.
    #[arg(long, value_enum, default_value = "kerberos")]
    pub method: Method,
    /// With `--method browser`: print the URL instead of opening a browser.
    #[arg(long)]
    pub no_browser: bool,
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
}

/// A login method.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Method {
    /// Kerberos single sign-on (SPNEGO).
    Kerberos,
    /// The login page in a browser, answered on a loopback port.
    Browser,
    /// A code typed into a browser anywhere (the device grant).
    Device,
}

/// What `login` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line naming the user and the token's expiry (the token is cached, not printed).
    Summary,
    /// The access token alone.
    Token,
    /// An ExecCredential (client.authentication.k8s.io/v1) for kubectl.
    ExecCredential,
}

/// A cached session. The file is readable by its owner only.
#[derive(Serialize, Deserialize)]
struct Cached {
    access_token: String,
    /// Unix seconds.
    expires_at: u64,
    refresh_token: Option<String>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub async fn run(args: LoginArgs) -> anyhow::Result<()> {
    let issuer = args.issuer.trim_end_matches('/').to_owned();
    let url = reqwest::Url::parse(&issuer).context("--issuer is not a URL")?;
    let Some(host) = url.host_str().map(str::to_owned) else {
        bail!("--issuer {issuer:?} names no host");
    };
    let http = crate::admin_cmd::http_client(args.ca_file.as_deref())?;
    let token_url = format!("{issuer}/oauth2/token");
    // Whose session: the ticket's principal (so another kinit never reuses it); for the
    // interactive methods, whoever logs in.
    let who = match args.method {
        Method::Kerberos => idbridge_kerberos::default_principal().await?,
        Method::Browser => "browser".to_owned(),
        Method::Device => "device".to_owned(),
    };
    let cache = cache_file(
        args.cache_dir.as_deref(),
        &issuer,
        args.audience.as_deref(),
        &who,
    )?;
    let output = args.output.unwrap_or_else(|| {
        if std::env::var_os("KUBERNETES_EXEC_INFO").is_some() {
            Output::ExecCredential
        } else {
            Output::Summary
        }
    });

    let cached = if args.fresh { None } else { read_cache(&cache) };
    let session = match cached {
        Some(c) if c.expires_at > now() + MIN_FRESH_SECS => c,
        Some(Cached {
            refresh_token: Some(r),
            ..
        }) => match refresh(&http, &token_url, &r).await {
            Ok(c) => c,
            // The session ended (or was revoked): log in again.
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "cached session unusable; logging in");
                login(&http, &issuer, &args, &host).await?
            }
        },
        _ => login(&http, &issuer, &args, &host).await?,
    };
    write_cache(&cache, &session)?;
    print(output, &session)
}

async fn login(
    http: &reqwest::Client,
    issuer: &str,
    args: &LoginArgs,
    host: &str,
) -> anyhow::Result<Cached> {
    let token_url = format!("{issuer}/oauth2/token");
    match args.method {
        Method::Kerberos => kerberos(http, &token_url, args, host).await,
        Method::Browser => browser(http, issuer, args).await,
        Method::Device => device(http, issuer, args).await,
    }
}

/// The authorization code flow with PKCE: the login page in a browser, the answer on a
/// loopback port.
async fn browser(http: &reqwest::Client, issuer: &str, args: &LoginArgs) -> anyhow::Result<Cached> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on a loopback port for the browser's answer")?;
    let redirect = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr()?.port()
    );
    let verifier = random_text();
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    let state = random_text();
    let mut url = reqwest::Url::parse(&format!("{issuer}/oauth2/authorize"))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLI_CLIENT)
        .append_pair("redirect_uri", &redirect)
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    if let Some(a) = &args.audience {
        url.query_pairs_mut().append_pair("audience", a);
    }
    let opened = !args.no_browser && open_browser(url.as_str());
    if opened {
        eprintln!("Your browser was opened to log in. If it was not, open:\n  {url}");
    } else {
        eprintln!("Open this URL in a browser on this machine to log in:\n  {url}");
    }
    let query = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        wait_for_callback(&listener),
    )
    .await
    .context("no answer from the browser within 5 minutes")??;
    let get = |k: &str| {
        reqwest::Url::parse(&format!("http://x/?{query}"))
            .ok()
            .and_then(|u| {
                u.query_pairs()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.into_owned())
            })
    };
    if let Some(e) = get("error") {
        bail!(
            "the login failed: {e}: {}",
            get("error_description").unwrap_or_default()
        );
    }
    if get("state").as_deref() != Some(state.as_str()) {
        bail!("the browser's answer does not carry this login's state; refusing it");
    }
    let code = get("code").context("the browser's answer has no code")?;
    let form = [
        (
            "grant_type",
            idbridge_core::GrantType::AuthorizationCode.to_string(),
        ),
        ("client_id", CLI_CLIENT.to_owned()),
        ("code", code),
        ("redirect_uri", redirect),
        ("code_verifier", verifier),
    ];
    cached_from(&post(http, &format!("{issuer}/oauth2/token"), &form).await?)
}

/// 256 random bits, base64url: PKCE verifiers and states.
fn random_text() -> String {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 32];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn open_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// Serves the loopback callback once: returns its query string, and tells the browser it may
/// close the tab.
async fn wait_for_callback(listener: &tokio::net::TcpListener) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut conn, _) = listener.accept().await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&buf);
        let target = head
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("GET "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_default()
            .to_owned();
        let Some(query) = target.strip_prefix("/callback?") else {
            let _ = conn
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            continue;
        };
        let page =
            "<!doctype html><title>idbridge</title><p>Login finished: you may close this tab.</p>";
        let _ = conn
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                )
                .as_bytes(),
            )
            .await;
        return Ok(query.to_owned());
    }
}

/// The device grant: a code for the user to enter in any browser, then polling.
async fn device(http: &reqwest::Client, issuer: &str, args: &LoginArgs) -> anyhow::Result<Cached> {
    let mut form = vec![("client_id", CLI_CLIENT.to_owned())];
    if let Some(a) = &args.audience {
        form.push(("audience", a.clone()));
    }
    let start = post(
        http,
        &format!("{issuer}/oauth2/device_authorization"),
        &form,
    )
    .await?;
    let text = |k: &str| start.get(k).and_then(Value::as_str).map(str::to_owned);
    let device_code = text("device_code").context("the server sent no device_code")?;
    let user_code = text("user_code").context("the server sent no user_code")?;
    let uri = text("verification_uri_complete")
        .or_else(|| text("verification_uri"))
        .context("the server sent no verification_uri")?;
    let mut interval = start.get("interval").and_then(Value::as_u64).unwrap_or(5);
    let expires = start
        .get("expires_in")
        .and_then(Value::as_u64)
        .unwrap_or(600);
    eprintln!("To log in, open {uri}\nand check that it shows the code {user_code}.");
    let token_url = format!("{issuer}/oauth2/token");
    let deadline = now() + expires;
    while now() < deadline {
        tokio::time::sleep(std::time::Duration::from_secs(interval)).await;
        let form = [
            ("grant_type", DEVICE_GRANT.to_owned()),
            ("client_id", CLI_CLIENT.to_owned()),
            ("device_code", device_code.clone()),
        ];
        let resp = http
            .post(&token_url)
            .form(&form)
            .send()
            .await
            .with_context(|| format!("cannot reach {token_url}"))?;
        let ok = resp.status().is_success();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if ok {
            return cached_from(&body);
        }
        match body.get("error").and_then(Value::as_str) {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += 5,
            _ => bail!(
                "the login failed: {}",
                body.get("error_description")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            ),
        }
    }
    bail!("the code expired before the login was finished; run the command again")
}

/// A Kerberos login: the SPNEGO token out, tokens and the mutual token back.
async fn kerberos(
    http: &reqwest::Client,
    token_url: &str,
    args: &LoginArgs,
    host: &str,
) -> anyhow::Result<Cached> {
    let service = args
        .service
        .clone()
        .unwrap_or_else(|| idbridge_kerberos::http_service(host));
    let (initiator, token) = idbridge_kerberos::Initiator::start(&service).await?;
    let mut form = vec![
        ("grant_type", KERBEROS_GRANT.to_owned()),
        ("client_id", CLI_CLIENT.to_owned()),
        ("kerberos_token", STANDARD.encode(token)),
    ];
    if let Some(a) = &args.audience {
        form.push(("audience", a.clone()));
    }
    let body = post(http, token_url, &form).await?;
    let mutual = body
        .get("kerberos_mutual_token")
        .and_then(Value::as_str)
        .context("the server sent no kerberos_mutual_token, so it did not prove its identity; refusing its tokens")?;
    let mutual = STANDARD
        .decode(mutual)
        .context("kerberos_mutual_token is not base64")?;
    initiator.finish(mutual).await?;
    cached_from(&body)
}

async fn refresh(
    http: &reqwest::Client,
    token_url: &str,
    refresh_token: &str,
) -> anyhow::Result<Cached> {
    let form = [
        (
            "grant_type",
            idbridge_core::GrantType::RefreshToken.to_string(),
        ),
        ("client_id", CLI_CLIENT.to_owned()),
        ("refresh_token", refresh_token.to_owned()),
    ];
    cached_from(&post(http, token_url, &form).await?)
}

/// POSTs a token request; an OAuth error becomes an error carrying its description.
async fn post(http: &reqwest::Client, url: &str, form: &[(&str, String)]) -> anyhow::Result<Value> {
    let resp = http
        .post(url)
        .form(form)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let why = body
            .get("error_description")
            .or_else(|| body.get("message"))
            .and_then(Value::as_str)
            .unwrap_or(&text);
        bail!("the server refused the login ({status}): {why}");
    }
    Ok(body)
}

fn cached_from(body: &Value) -> anyhow::Result<Cached> {
    let access_token = body
        .get("access_token")
        .and_then(Value::as_str)
        .context("the token response has no access_token")?
        .to_owned();
    let expires_in = body.get("expires_in").and_then(Value::as_u64).unwrap_or(0);
    Ok(Cached {
        access_token,
        expires_at: now() + expires_in,
        refresh_token: body
            .get("refresh_token")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// The cache file of one issuer, audience and user.
fn cache_file(
    dir: Option<&Path>,
    issuer: &str,
    audience: Option<&str>,
    user: &str,
) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(d) => d.to_owned(),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .context("no cache directory: set --cache-dir, XDG_CACHE_HOME or HOME")?
            .join("idbridge"),
    };
    let key: String = format!("{user} {issuer} {}", audience.unwrap_or(""))
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(dir.join(format!("session-{key}.json")))
}

fn read_cache(path: &Path) -> Option<Cached> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Creates the cache directory readable by its owner only (the file names show the user and
/// the issuer), and makes an existing one so.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot make {} private", dir.display()))?;
        }
    }
    Ok(())
}

/// Writes the cache atomically, readable by its owner only.
fn write_cache(path: &Path, session: &Cached) -> anyhow::Result<()> {
    let dir = path.parent().context("cache path has no directory")?;
    private_dir(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(session)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print(output: Output, s: &Cached) -> anyhow::Result<()> {
    let expiry = time::OffsetDateTime::from_unix_timestamp(i64::try_from(s.expires_at)?)?
        .format(&time::format_description::well_known::Rfc3339)?;
    // Printing the access token is what `--output token` and kubectl's exec protocol ask for;
    // the refresh token stays in the cache file and is never printed.
    match output {
        Output::Token => println!("{}", s.access_token),
        Output::ExecCredential => println!(
            "{}",
            json!({
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": {"token": s.access_token, "expirationTimestamp": expiry},
            })
        ),
        Output::Summary => {
            let claims = s
                .access_token
                .split('.')
                .nth(1)
                .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .unwrap_or(Value::Null);
            let name = claims.get("name").and_then(Value::as_str).unwrap_or("?");
            println!("logged in as {name}; access token valid until {expiry}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_cache_dir_is_private_new_or_old() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/idbridge");
        private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let old = root.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&old).unwrap();
        assert_eq!(mode(&old), 0o700);
    }
}
