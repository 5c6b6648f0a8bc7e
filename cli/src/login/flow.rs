//! The login methods (Kerberos, browser, device code, directory password), the refresh and the
//! revocation, as requests to the server's token endpoints.

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

use super::cache::Session;
use super::{CLI_CLIENT, Login, Method, PASSWORD_ENV, now};

/// The grant type of a Kerberos login.
const KERBEROS_GRANT: &str = idbridge_core::GrantType::Kerberos.as_str();
/// The device grant's grant type.
const DEVICE_GRANT: &str = idbridge_core::GrantType::DeviceCode.as_str();

/// The server refused a token request (an OAuth error answer).
#[derive(Debug)]
pub(crate) struct Refused {
    pub status: u16,
    pub error: String,
    pub description: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server refused ({} {}): {}",
            self.status, self.error, self.description
        )
    }
}

impl std::error::Error for Refused {}

/// Whether a refresh failed because the session is over (the server refused the refresh token,
/// `invalid_grant`, or the client, `invalid_client`), as opposed to the server being
/// unreachable, busy, failing or behind a proxy that answers for it: only then is a new login
/// the answer.
pub(crate) fn ended(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Refused>().is_some_and(|r| {
        (r.status == 400 && r.error == "invalid_grant")
            || (r.status == 401 && r.error == "invalid_client")
    })
}

/// The HTTP client of a login, and the CA bundle it trusts (for its errors).
pub(crate) struct Http {
    pub client: reqwest::Client,
    pub ca: Option<std::path::PathBuf>,
}

impl Http {
    /// A client trusting `ca` (else the system's roots).
    pub(crate) fn new(ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let client = crate::admin_cmd::http_client(ca).map_err(|e| {
            if std::env::var_os("KUBERNETES_EXEC_INFO").is_some() {
                e.context(
                    "the CA bundle your kubeconfig names (--ca-file) cannot be used: if it moved, run `idbridge kubeconfig` again with --issuer-ca-file",
                )
            } else {
                e.context("--ca-file")
            }
        })?;
        Ok(Self {
            client,
            ca: ca.map(std::path::Path::to_owned),
        })
    }

    /// Checks, by the server's discovery document, that the server answers and offers
    /// `grant` (the browser and device flows are not offered where nobody can sign in).
    async fn offers(&self, issuer: &str, grant: idbridge_core::GrantType) -> anyhow::Result<()> {
        let url = format!("{issuer}/.well-known/openid-configuration");
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| self.unreachable(&url, e))?;
        let doc: Value = resp.json().await.unwrap_or(Value::Null);
        let Some(grants) = doc.get("grant_types_supported").and_then(Value::as_array) else {
            return Ok(());
        };
        if grants.iter().any(|g| g.as_str() == Some(grant.as_str())) {
            return Ok(());
        }
        bail!(
            "{issuer} offers no {} login: this idbridge offers people no way to sign in (its configuration has no identity provider, directory or Kerberos); ask its administrator, or use a static token (see docs/kubectl.md)",
            if grant == idbridge_core::GrantType::DeviceCode {
                "device code"
            } else {
                "browser"
            }
        )
    }

    /// No answer from `url`, as an error that says what to do.
    fn unreachable(&self, url: &str, e: reqwest::Error) -> anyhow::Error {
        crate::admin_cmd::unreachable(url, e, self.ca.as_deref(), "")
    }
}

/// Logs in with the method in effect. `why` is the reason a login is needed when it is not the
/// first (the session ended).
pub(crate) async fn login(
    http: &Http,
    l: &Login<'_>,
    why: Option<&str>,
) -> anyhow::Result<Session> {
    let person = match l.method {
        Method::Browser | Method::Device => true,
        Method::Password => l.args.username.is_none() || password_source(l).is_none(),
        Method::Kerberos | Method::Auto => false,
    };
    if person {
        let what = match (why, l.fell_back) {
            (Some(w), _) => w.to_owned(),
            (None, Some(reason)) => format!("{reason} and there is no session"),
            (None, None) => "there is no session".to_owned(),
        };
        l.need_person(&what)?;
    }
    if why.is_some() {
        eprintln!("session ended: logging in again");
    } else if let Some(reason) = l.fell_back {
        eprintln!(
            "{reason}: logging in with --method {} instead (run kinit for single sign-on)",
            l.method.name()
        );
    }
    match l.method {
        Method::Kerberos | Method::Auto => kerberos(http, l).await,
        Method::Browser => browser(http, l).await,
        Method::Device => device(http, l).await,
        Method::Password => password(http, l).await,
    }
}

/// Where the password comes from when it is not asked on the terminal.
enum PasswordSource {
    File(std::path::PathBuf),
    Env,
}

fn password_source(l: &Login<'_>) -> Option<PasswordSource> {
    if let Some(f) = &l.args.password_file {
        return Some(PasswordSource::File(f.clone()));
    }
    std::env::var_os(PASSWORD_ENV).map(|_| PasswordSource::Env)
}

/// The directory password grant. The password is read from the terminal with echo off, or for
/// automation from `--password-file` or `IDBRIDGE_PASSWORD`, never from the command line.
async fn password(http: &Http, l: &Login<'_>) -> anyhow::Result<Session> {
    let username = match &l.args.username {
        Some(u) => u.clone(),
        None => super::terminal::ask(&format!("Username for {}: ", l.issuer)).await?,
    };
    if username.trim().is_empty() {
        bail!("no username given: pass --username or type one");
    }
    let password = match password_source(l) {
        Some(PasswordSource::File(f)) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&f)
                    .with_context(|| format!("--password-file {}", f.display()))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    eprintln!(
                        "warning: --password-file {} can be read by others (mode {:o}): make it private with chmod 600",
                        f.display(),
                        mode & 0o777
                    );
                }
            }
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read --password-file {}", f.display()))?;
            text.lines().next().unwrap_or("").to_owned()
        }
        Some(PasswordSource::Env) => {
            eprintln!(
                "warning: the password comes from {PASSWORD_ENV}; the environment is easy to leak (child processes, crash reports): prefer the terminal, or a private --password-file"
            );
            std::env::var(PASSWORD_ENV)
                .with_context(|| format!("{PASSWORD_ENV} is not valid UTF-8"))?
        }
        None => super::terminal::ask_secret(&format!("Password for {username}: ")).await?,
    };
    if password.is_empty() {
        bail!("the password is empty: an empty password is never sent");
    }
    let mut form = vec![
        ("grant_type", "password".to_owned()),
        ("client_id", CLI_CLIENT.to_owned()),
        ("username", username),
        ("password", password),
    ];
    if let Some(a) = &l.args.audience {
        form.push(("audience", a.clone()));
    }
    session_from(&post(http, &format!("{}/oauth2/token", l.issuer), &form).await?)
}

/// The authorization code flow with PKCE: the login page in a browser, the answer on a
/// loopback port.
async fn browser(http: &Http, l: &Login<'_>) -> anyhow::Result<Session> {
    let (issuer, args) = (l.issuer.as_str(), l.args);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on a loopback port for the browser's answer")?;
    let redirect = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr()?.port()
    );
    let verifier = random_text()?;
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    let state = random_text()?;
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
    // Reach the server before sending anyone to it: an untrusted certificate, a server that is
    // down or one where nobody can sign in is said here, not after a login in the browser.
    http.offers(issuer, idbridge_core::GrantType::AuthorizationCode)
        .await?;
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
    let same_state = get("state").is_some_and(|got| {
        aws_lc_rs::constant_time::verify_slices_are_equal(got.as_bytes(), state.as_bytes()).is_ok()
    });
    if !same_state {
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
    session_from(&post(http, &format!("{issuer}/oauth2/token"), &form).await?)
}

/// 256 random bits, base64url: PKCE verifiers and states.
fn random_text() -> anyhow::Result<String> {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("the system's random number generator failed"))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
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
async fn device(http: &Http, l: &Login<'_>) -> anyhow::Result<Session> {
    let (issuer, args) = (l.issuer.as_str(), l.args);
    http.offers(issuer, idbridge_core::GrantType::DeviceCode)
        .await?;
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
            .client
            .post(&token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| http.unreachable(&token_url, e))?;
        let ok = resp.status().is_success();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if ok {
            return session_from(&body);
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
async fn kerberos(http: &Http, l: &Login<'_>) -> anyhow::Result<Session> {
    let (args, host) = (l.args, l.host.as_str());
    let token_url = format!("{}/oauth2/token", l.issuer);
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
    let body = post(http, &token_url, &form).await?;
    let mutual = body
        .get("kerberos_mutual_token")
        .and_then(Value::as_str)
        .context("the server sent no kerberos_mutual_token, so it did not prove its identity; refusing its tokens")?;
    let mutual = STANDARD
        .decode(mutual)
        .context("kerberos_mutual_token is not base64")?;
    initiator.finish(mutual).await?;
    session_from(&body)
}

pub(crate) async fn refresh(
    http: &Http,
    l: &Login<'_>,
    refresh_token: &str,
) -> anyhow::Result<Session> {
    let form = [
        (
            "grant_type",
            idbridge_core::GrantType::RefreshToken.to_string(),
        ),
        ("client_id", CLI_CLIENT.to_owned()),
        ("refresh_token", refresh_token.to_owned()),
    ];
    session_from(&post(http, &format!("{}/oauth2/token", l.issuer), &form).await?)
}

/// Revokes a session at the server (RFC 7009) by its refresh token.
pub(crate) async fn revoke(http: &Http, issuer: &str, token: &str) -> anyhow::Result<()> {
    let form = [
        ("client_id", CLI_CLIENT.to_owned()),
        ("token", token.to_owned()),
    ];
    post(http, &format!("{issuer}/oauth2/revoke"), &form)
        .await
        .map(|_| ())
}

/// POSTs a token request; an OAuth error becomes a [`Refused`] carrying its description.
async fn post(http: &Http, url: &str, form: &[(&str, String)]) -> anyhow::Result<Value> {
    let resp = http
        .client
        .post(url)
        .form(form)
        .send()
        .await
        .map_err(|e| http.unreachable(url, e))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let why = body
            .get("error_description")
            .or_else(|| body.get("message"))
            .and_then(Value::as_str)
            .unwrap_or(&text);
        return Err(Refused {
            status: status.as_u16(),
            error: body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            description: why.to_owned(),
        }
        .into());
    }
    Ok(body)
}

fn session_from(body: &Value) -> anyhow::Result<Session> {
    let access_token = body
        .get("access_token")
        .and_then(Value::as_str)
        .context("the token response has no access_token")?
        .to_owned();
    let expires_in = body.get("expires_in").and_then(Value::as_u64).unwrap_or(0);
    Ok(Session {
        access_token,
        expires_at: now() + expires_in,
        refresh_token: body
            .get("refresh_token")
            .and_then(Value::as_str)
            .map(str::to_owned),
        issuer: String::new(),
        audience: None,
        identity: String::new(),
        ca_file: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16) -> anyhow::Error {
        Refused {
            status,
            error: if status == 401 {
                "invalid_client"
            } else {
                "invalid_grant"
            }
            .into(),
            description: "x".into(),
        }
        .into()
    }

    #[test]
    fn only_a_refused_refresh_token_ends_the_session() {
        assert!(ended(&refused(400)));
        assert!(ended(&refused(401)));
        // Busy or failing servers, and unreachable ones, keep the cached session.
        assert!(!ended(&refused(429)));
        assert!(!ended(&refused(503)));
        // A 400 that is not the server refusing the grant (a proxy, a malformed request).
        let proxy: anyhow::Error = Refused {
            status: 400,
            error: String::new(),
            description: "<html>".into(),
        }
        .into();
        assert!(!ended(&proxy));
        assert!(!ended(&anyhow::anyhow!(
            "cannot reach https://x/oauth2/token"
        )));
        // Context added on the way up does not hide the refusal.
        assert!(ended(&refused(400).context("refreshing")));
    }
}
