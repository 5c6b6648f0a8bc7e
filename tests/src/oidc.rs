//! A real OpenID provider for tests: the npm package `oidc-provider`, run with node from
//! `tests/oidc/provider.mjs` over HTTPS on an ephemeral loopback port, with its own test CA.
//! And [`Browser`], an HTTP client that keeps cookies and follows redirects one at a time, to
//! drive login pages as a person's browser would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::ldap::{program, test_ca};

/// A running provider.
#[derive(Debug)]
pub struct OidcProvider {
    /// Its issuer, `https://127.0.0.1:PORT`.
    pub issuer: String,
    /// The CA its certificate chains to.
    pub ca_file: PathBuf,
    /// The JSON config it was started with.
    pub config: PathBuf,
    child: Option<Child>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

/// The folder holding `provider.mjs` and its `node_modules`.
fn provider_dir() -> PathBuf {
    crate::repo_root().join("tests/oidc")
}

impl OidcProvider {
    /// Starts a provider in `dir` with these clients (`client_id`, `client_secret`,
    /// `redirect_uris`) and users (`{"alice": {"password", "email", "groups"}}`). With
    /// `signing_key`, the key is read from (or written to) that file, so two providers can
    /// share it.
    ///
    /// # Errors
    /// If node or the npm packages are missing (the message names scripts/setup), or the
    /// provider does not start.
    pub async fn start(
        dir: &Path,
        clients: Value,
        users: Value,
        signing_key: Option<&Path>,
    ) -> anyhow::Result<Self> {
        Self::start_at(dir, clients, users, signing_key, None).await
    }

    /// As [`OidcProvider::start`], on `port` when given (a provider restarted on the same
    /// port keeps its issuer).
    ///
    /// # Errors
    /// As [`OidcProvider::start`].
    pub async fn start_at(
        dir: &Path,
        clients: Value,
        users: Value,
        signing_key: Option<&Path>,
        port: Option<u16>,
    ) -> anyhow::Result<Self> {
        let node = program("node")?;
        if !provider_dir().join("node_modules/oidc-provider").is_dir() {
            bail!(
                "the npm package oidc-provider is not installed in tests/oidc: run scripts/setup (it runs `npm ci` there)"
            );
        }
        // On a fixed port the certificate is kept across restarts, as a real provider keeps it.
        let name = port.map_or_else(|| format!("oidc-{}", uuid_ish()), |p| format!("oidc-{p}"));
        let (ca_file, cert, key) = if dir.join(format!("{name}.crt")).exists() {
            (
                dir.join(format!("{name}-ca.crt")),
                dir.join(format!("{name}.crt")),
                dir.join(format!("{name}.key")),
            )
        } else {
            test_ca(dir, &name)?
        };
        let config = dir.join(format!("{name}.json"));
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&json!({
                "port": port,
                "cert": cert,
                "key": key,
                "signing_key": signing_key,
                "clients": clients,
                "users": users,
            }))?,
        )?;
        let mut child = Command::new(node)
            .arg(provider_dir().join("provider.mjs"))
            .arg(&config)
            .current_dir(provider_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start node")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        let mut err = BufReader::new(child.stderr.take().context("no stderr")?).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                let mut l = sink
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut out = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), out.next_line()).await;
        let issuer = match first {
            Ok(Ok(Some(line))) => {
                let v: Value = serde_json::from_str(&line)
                    .with_context(|| format!("unexpected first line from the provider: {line}"))?;
                v["issuer"].as_str().context("no issuer")?.to_owned()
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bail!(
                    "the OpenID provider did not start:\n{}",
                    log.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                );
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
        Ok(Self {
            issuer,
            ca_file,
            config,
            child: Some(child),
            log,
        })
    }

    /// What it wrote to standard error.
    #[must_use]
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Stops it (the port then refuses connections).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// The user no longer exists for the provider: logins and refreshes fail.
    ///
    /// # Errors
    /// If the provider does not answer.
    pub async fn disable(&self, user: &str) -> anyhow::Result<()> {
        let b = Browser::new(&[&self.ca_file])?;
        let r = b
            .post_form(&format!("{}/test/users/{user}/disable", self.issuer), &[])
            .await?;
        if !r.status.is_success() {
            bail!("disable {user}: {}", r.status);
        }
        Ok(())
    }

    /// Logs `user` in at the provider as the client `client_id` and returns the ID token it
    /// issues: the whole code flow with PKCE, driven over HTTP.
    ///
    /// # Errors
    /// If any step fails.
    pub async fn id_token(
        &self,
        client_id: &str,
        client_secret: &str,
        redirect_uri: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<String> {
        let v = self
            .tokens(client_id, client_secret, redirect_uri, user, password)
            .await?;
        v["id_token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no id_token: {v}"))
    }

    /// As [`OidcProvider::id_token`], the provider's whole token response (with its refresh
    /// token).
    ///
    /// # Errors
    /// If any step fails.
    pub async fn tokens(
        &self,
        client_id: &str,
        client_secret: &str,
        redirect_uri: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Value> {
        let b = Browser::new(&[&self.ca_file])?;
        let verifier = "v".repeat(50);
        let challenge = pkce_challenge(&verifier);
        let mut url = reqwest::Url::parse(&format!("{}/auth", self.issuer))?;
        url.query_pairs_mut()
            .append_pair("client_id", client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", "openid email profile groups")
            .append_pair("state", "s")
            .append_pair("nonce", "n")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let page = b.get(url.as_str()).await?;
        let page = b.follow(page, redirect_uri).await?;
        let page = match page {
            Step::Page(p) => p,
            Step::Left(l) => bail!("the provider left at once for {l}"),
        };
        let left = b
            .login_at_provider(&page, user, password, redirect_uri)
            .await?;
        let code = query_param(&left, "code").context("no code in the redirect")?;
        let resp = b
            .http
            .post(format!("{}/token", self.issuer))
            .basic_auth(client_id, Some(client_secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", &verifier),
            ])
            .send()
            .await?;
        Ok(resp.json().await?)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

fn uuid_ish() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The PKCE S256 challenge of `verifier`.
#[must_use]
pub fn pkce_challenge(verifier: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// idbridge's `/oauth2/authorize` URL for the built-in CLI client, PKCE S256 with `verifier`,
/// state `client-state-1`.
#[must_use]
pub fn cli_authorize_url(base: &str, redirect: &str, verifier: &str) -> String {
    let mut u = reqwest::Url::parse(&format!("{base}/oauth2/authorize")).unwrap_or_else(|_| {
        reqwest::Url::parse("https://invalid.invalid/").unwrap_or_else(|_| unreachable!())
    });
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "idbridge-cli")
        .append_pair("redirect_uri", redirect)
        .append_pair("state", "client-state-1")
        .append_pair("code_challenge", &pkce_challenge(verifier))
        .append_pair("code_challenge_method", "S256");
    u.into()
}

/// The value of `key` in a URL's query.
#[must_use]
pub fn query_param(url: &str, key: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// A page a browser shows.
#[derive(Debug, Clone)]
pub struct Page {
    /// Its URL.
    pub url: String,
    /// Status.
    pub status: reqwest::StatusCode,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body text.
    pub body: String,
}

impl Page {
    /// The `value` of the first input named `name`.
    #[must_use]
    pub fn input(&self, name: &str) -> Option<String> {
        let at = self.body.find(&format!("name=\"{name}\""))?;
        let tag_start = self.body[..at].rfind('<')?;
        let tag_end = at + self.body[at..].find('>')?;
        let tag = &self.body[tag_start..tag_end];
        let v = tag.find("value=\"")? + 7;
        let end = tag[v..].find('"')?;
        Some(unescape(&tag[v..v + end]))
    }

    /// The `action` of the first form whose action contains `part`, as an absolute URL.
    #[must_use]
    pub fn form_action(&self, part: &str) -> Option<String> {
        let mut rest = self.body.as_str();
        while let Some(i) = rest.find("action=\"") {
            let s = &rest[i + 8..];
            let end = s.find('"')?;
            let action = unescape(&s[..end]);
            if action.contains(part) {
                return reqwest::Url::parse(&self.url)
                    .ok()?
                    .join(&action)
                    .ok()
                    .map(Into::into);
            }
            rest = &s[end..];
        }
        None
    }
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Where following redirects ended.
#[derive(Debug)]
pub enum Step {
    /// On a page.
    Page(Page),
    /// At a redirect to the given prefix (a client's redirect URI), not followed.
    Left(String),
}

/// An HTTP client with a cookie jar, following redirects by hand.
#[derive(Debug)]
pub struct Browser {
    /// The client (no automatic redirects, no cookies of its own).
    pub http: reqwest::Client,
    jar: std::sync::Mutex<HashMap<String, Vec<(String, String)>>>,
}

fn origin(url: &reqwest::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(0)
    )
}

impl Browser {
    /// A browser trusting these CAs.
    ///
    /// # Errors
    /// If a CA file cannot be read.
    pub fn new(cas: &[&Path]) -> anyhow::Result<Self> {
        let mut certs = Vec::new();
        for ca in cas {
            certs.extend(reqwest::Certificate::from_pem_bundle(&std::fs::read(ca)?)?);
        }
        Ok(Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .tls_certs_only(certs)
                .timeout(Duration::from_secs(30))
                .build()?,
            jar: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The cookies held for a URL's origin.
    #[must_use]
    pub fn cookies(&self, url: &str) -> Vec<(String, String)> {
        let Ok(u) = reqwest::Url::parse(url) else {
            return Vec::new();
        };
        self.jar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&origin(&u))
            .cloned()
            .unwrap_or_default()
    }

    /// Replaces the cookies held for a URL's origin (to play another browser).
    pub fn set_cookies(&self, url: &str, cookies: Vec<(String, String)>) {
        if let Ok(u) = reqwest::Url::parse(url) {
            self.jar
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(origin(&u), cookies);
        }
    }

    fn cookie_header(&self, url: &reqwest::Url) -> Option<String> {
        let jar = self
            .jar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = jar.get(&origin(url))?;
        (!c.is_empty()).then(|| {
            c.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn keep_cookies(&self, url: &reqwest::Url, headers: &reqwest::header::HeaderMap) {
        let mut jar = self
            .jar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = jar.entry(origin(url)).or_default();
        for v in headers.get_all(reqwest::header::SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let mut parts = v.split(';');
            let Some((name, value)) = parts.next().and_then(|kv| kv.trim().split_once('=')) else {
                continue;
            };
            let gone = parts.any(|a| {
                let a = a.trim().to_ascii_lowercase();
                a == "max-age=0" || a.starts_with("expires=thu, 01 jan 1970")
            });
            list.retain(|(k, _)| k != name);
            if !gone && !value.is_empty() {
                list.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> anyhow::Result<Page> {
        let u = reqwest::Url::parse(url)?;
        let req = match self.cookie_header(&u) {
            Some(c) => req.header(reqwest::header::COOKIE, c),
            None => req,
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("request to {url}"))?;
        self.keep_cookies(&u, resp.headers());
        Ok(Page {
            url: url.to_owned(),
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap_or_default(),
        })
    }

    /// GET, keeping cookies.
    ///
    /// # Errors
    /// If the request fails.
    pub async fn get(&self, url: &str) -> anyhow::Result<Page> {
        self.send(self.http.get(url), url).await
    }

    /// GET with extra headers.
    ///
    /// # Errors
    /// If the request fails.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Page> {
        let mut r = self.http.get(url);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        self.send(r, url).await
    }

    /// POST a form, keeping cookies.
    ///
    /// # Errors
    /// If the request fails.
    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> anyhow::Result<Page> {
        self.send(self.http.post(url).form(form), url).await
    }

    /// Follows redirects from `page` until a page that is not one, or a redirect to a URL
    /// starting with `stop` (returned unfollowed).
    ///
    /// # Errors
    /// If a request fails or there are too many redirects.
    pub async fn follow(&self, mut page: Page, stop: &str) -> anyhow::Result<Step> {
        for _ in 0..20 {
            if !page.status.is_redirection() {
                return Ok(Step::Page(page));
            }
            let loc = page
                .headers
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .context("redirect without Location")?;
            let next: String = reqwest::Url::parse(&page.url)?.join(loc)?.into();
            if next.starts_with(stop) {
                return Ok(Step::Left(next));
            }
            page = self.get(&next).await?;
        }
        bail!("too many redirects")
    }

    /// On the provider's login page: signs in and follows redirects until the browser leaves
    /// for `stop`; returns that URL.
    ///
    /// # Errors
    /// If the login fails.
    pub async fn login_at_provider(
        &self,
        page: &Page,
        user: &str,
        password: &str,
        stop: &str,
    ) -> anyhow::Result<String> {
        let action = page
            .form_action("/interaction/")
            .with_context(|| format!("no provider login form on {}: {}", page.url, page.body))?;
        let after = self
            .post_form(&action, &[("login", user), ("password", password)])
            .await?;
        match self.follow(after, stop).await? {
            Step::Left(u) => Ok(u),
            Step::Page(p) => bail!("stayed at {} ({}): {}", p.url, p.status, p.body),
        }
    }
}
