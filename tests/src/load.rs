//! A light load client for the benchmarks: one HTTP/1.1 keep-alive TLS connection per worker,
//! straight on hyper and rustls (no pool, retries, redirects or URL handling per request), so
//! that the load generator, which shares the machine with the servers it measures, takes as
//! little of it as it can. Every server measured is driven by this same client.

use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// A rustls client configuration that trusts the PEM certificates in `ca_pem`.
///
/// # Errors
/// When the PEM holds no usable certificate.
pub fn tls_client(ca_pem: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.context("a CA certificate")?)?;
    }
    if roots.is_empty() {
        bail!("no CA certificate in the PEM");
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ))
}

/// One keep-alive connection to a form-posting endpoint.
#[derive(Debug)]
pub struct FormPoster {
    tx: SendRequest<Full<Bytes>>,
    host: String,
    path: String,
    authorization: Option<String>,
}

impl FormPoster {
    /// Connects to `url` (`https://host:port/path`) over TLS with `tls`.
    ///
    /// # Errors
    /// When the URL is not `https`, or the connection or handshake fails.
    pub async fn connect(url: &str, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Self> {
        let u = reqwest::Url::parse(url).with_context(|| format!("the URL {url}"))?;
        if u.scheme() != "https" {
            bail!("{url}: only https is supported");
        }
        let host = u.host_str().context("a host")?.to_owned();
        let port = u.port_or_known_default().context("a port")?;
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(host.clone())?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await?;
        let (tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self {
            tx,
            host: format!("{host}:{port}"),
            path: u.path().to_owned(),
            authorization: None,
        })
    }

    /// Sends HTTP Basic client credentials with every request.
    #[must_use]
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.authorization = Some(format!("Basic {b64}"));
        self
    }

    /// Sends `token` as a bearer token with every request.
    #[must_use]
    pub fn bearer(mut self, token: &str) -> Self {
        self.authorization = Some(format!("Bearer {token}"));
        self
    }

    /// Posts `form` (URL-encoded) and returns the status and the body.
    ///
    /// # Errors
    /// When the request cannot be sent or the answer read.
    pub async fn post(&mut self, form: &[(&str, &str)]) -> anyhow::Result<(u16, Bytes)> {
        self.post_body("application/x-www-form-urlencoded", encode_form(form))
            .await
    }

    /// Posts `body` as `content_type` and returns the status and the body.
    ///
    /// # Errors
    /// When the request cannot be sent or the answer read.
    pub async fn post_body(
        &mut self,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        let mut req = hyper::Request::post(self.path.as_str())
            .header("host", self.host.as_str())
            .header("content-type", content_type);
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a.as_str());
        }
        let req = req.body(Full::new(body))?;
        self.tx.ready().await?;
        let resp = self.tx.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// `application/x-www-form-urlencoded`.
#[must_use]
pub fn encode_form(pairs: &[(&str, &str)]) -> Bytes {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        for (j, s) in [k, v].into_iter().enumerate() {
            if j == 1 {
                out.push('=');
            }
            for b in s.bytes() {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_percent_encoded() {
        assert_eq!(
            encode_form(&[("grant_type", "refresh_token"), ("t", "a+b/c=d e")]),
            Bytes::from_static(b"grant_type=refresh_token&t=a%2Bb%2Fc%3Dd%20e")
        );
    }
}
