//! Connections: servers tried in order with a back-off for dead ones, and bounded pools that
//! drop a broken connection and open a fresh one (so a restarted server is used again at once).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idbridge_core::DirectoryError;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError};
use tokio::sync::{Semaphore, SemaphorePermit};

/// The servers, in order of preference.
#[derive(Debug)]
pub(crate) struct Servers {
    urls: Vec<String>,
    /// Per URL, until when it is skipped.
    dead_until: Mutex<Vec<Option<Instant>>>,
    retry_dead_after: Duration,
    connect_timeout: Duration,
    start_tls: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// For servers named by an IPv6 literal.
    ip_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Servers {
    pub(crate) fn new(
        urls: Vec<String>,
        retry_dead_after: Duration,
        connect_timeout: Duration,
        start_tls: bool,
        (tls, ip_tls): (
            Option<Arc<rustls::ClientConfig>>,
            Option<Arc<rustls::ClientConfig>>,
        ),
    ) -> Self {
        let n = urls.len();
        Self {
            urls,
            dead_until: Mutex::new(vec![None; n]),
            retry_dead_after,
            connect_timeout,
            start_tls,
            tls,
            ip_tls,
        }
    }

    fn settings(&self) -> LdapConnSettings {
        let mut s = LdapConnSettings::new()
            .set_conn_timeout(self.connect_timeout)
            .set_starttls(self.start_tls);
        if let Some(tls) = &self.tls {
            s = s.set_config(tls.clone());
        }
        s
    }

    /// Opens a connection to `url`. A server named by an IPv6 literal is dialled here and
    /// handed to ldap3 with a stand-in host name (ldap3 would give rustls the host with its
    /// brackets, which no certificate check accepts); [`IpLiteralVerifier`] checks the
    /// certificate for the address itself.
    async fn open(&self, url: &str) -> Result<(LdapConnAsync, Ldap), LdapError> {
        let Some(lit) = ip_literal(url) else {
            return LdapConnAsync::with_settings(self.settings(), url).await;
        };
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((lit.ip, lit.port)),
        )
        .await
        .map_err(|_| {
            LdapError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })??;
        let _ = tcp.set_nodelay(true);
        let mut s = self
            .settings()
            .set_std_stream(ldap3::StdStream::Tcp(tcp.into_std()?));
        if let Some(tls) = &self.ip_tls {
            s = s.set_config(tls.clone());
        }
        LdapConnAsync::with_settings(s, &lit.stand_in_url).await
    }

    /// The URLs in the order to try now: live ones first, then those in their back-off (a dead
    /// server is still better than none).
    fn order(&self) -> Vec<usize> {
        let now = Instant::now();
        let dead = self
            .dead_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (live, resting): (Vec<usize>, Vec<usize>) =
            (0..self.urls.len()).partition(|&i| dead[i].is_none_or(|t| t <= now));
        live.into_iter().chain(resting).collect()
    }

    fn mark(&self, i: usize, dead: bool) {
        let mut d = self
            .dead_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        d[i] = dead.then(|| Instant::now() + self.retry_dead_after);
    }

    /// A new connection to the first server that answers.
    pub(crate) async fn connect(&self) -> Result<Ldap, DirectoryError> {
        let mut failures = Vec::new();
        for i in self.order() {
            let url = &self.urls[i];
            match self.open(url).await {
                Ok((conn, ldap)) => {
                    self.mark(i, false);
                    tokio::spawn(async move {
                        if let Err(e) = conn.drive().await {
                            tracing::debug!(error = %e, "directory connection ended");
                        }
                    });
                    return Ok(ldap);
                }
                Err(e) => {
                    tracing::warn!(url = %url, error = %e, "directory server unreachable; trying the next");
                    self.mark(i, true);
                    failures.push(format!("{url}: {}", describe(&e)));
                }
            }
        }
        Err(DirectoryError::Unavailable(format!(
            "no directory server answered ({})",
            failures.join("; ")
        )))
    }
}

/// An LDAP URL whose host is an IPv6 literal.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct IpLiteral {
    pub ip: std::net::Ipv6Addr,
    pub port: u16,
    /// The same URL with the stand-in host name.
    pub stand_in_url: String,
}

/// The domain of stand-in host names: `<32 hex digits>.ipv6.idbridge.invalid` (`.invalid` is
/// reserved, RFC 6761: no such name can exist).
const STAND_IN: &str = ".ipv6.idbridge.invalid";

/// `ldap://[::1]:389/…` or `ldaps://[…]` → the address, the port and the URL with a stand-in.
pub(crate) fn ip_literal(url: &str) -> Option<IpLiteral> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme {
        "ldap" => 389,
        "ldaps" => 636,
        _ => return None,
    };
    let rest = rest.strip_prefix('[')?;
    let (host, after) = rest.split_once(']')?;
    let ip: std::net::Ipv6Addr = host.split('%').next()?.parse().ok()?;
    let (port, path) = match after.strip_prefix(':') {
        Some(p) => {
            let end = p.find('/').unwrap_or(p.len());
            (p[..end].parse().ok()?, &p[end..])
        }
        None => (default, after),
    };
    let hex: String = ip.octets().iter().map(|b| format!("{b:02x}")).collect();
    Some(IpLiteral {
        ip,
        port,
        stand_in_url: format!("{scheme}://{hex}{STAND_IN}:{port}{path}"),
    })
}

/// The address a stand-in host name stands for.
fn from_stand_in(name: &str) -> Option<std::net::Ipv6Addr> {
    let hex = name.strip_suffix(STAND_IN)?;
    if hex.len() != 32 {
        return None;
    }
    let mut octets = [0u8; 16];
    for (i, o) in octets.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(std::net::Ipv6Addr::from(octets))
}

/// Checks a server certificate as rustls's WebPKI verifier does, for the IPv6 address a
/// stand-in host name stands for (any other name is checked as it is).
#[derive(Debug)]
pub(crate) struct IpLiteralVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl IpLiteralVerifier {
    pub(crate) fn new(inner: Arc<rustls::client::WebPkiServerVerifier>) -> Self {
        Self { inner }
    }
}

impl rustls::client::danger::ServerCertVerifier for IpLiteralVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mapped = match server_name {
            rustls::pki_types::ServerName::DnsName(d) => from_stand_in(d.as_ref()).map(|ip| {
                rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::V6(ip).into())
            }),
            _ => None,
        };
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            mapped.as_ref().unwrap_or(server_name),
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_literals_get_a_stand_in_name_that_maps_back() {
        let l = ip_literal("ldaps://[::1]:13636").unwrap();
        assert_eq!((l.ip, l.port), ("::1".parse().unwrap(), 13636));
        let host = l
            .stand_in_url
            .strip_prefix("ldaps://")
            .unwrap()
            .split(':')
            .next()
            .unwrap();
        assert!(
            rustls::pki_types::ServerName::try_from(host).is_ok(),
            "{host}"
        );
        assert_eq!(from_stand_in(host), Some("::1".parse().unwrap()));
        let l = ip_literal("ldap://[fd00::12:34]/dc=x").unwrap();
        assert_eq!(l.port, 389);
        assert!(l.stand_in_url.ends_with(":389/dc=x"), "{}", l.stand_in_url);
        assert_eq!(ip_literal("ldaps://127.0.0.1:636"), None);
        assert_eq!(ip_literal("ldaps://ldap.example.com"), None);
        assert_eq!(from_stand_in("example.com"), None);
    }
}

/// A short, secret-free description of a connection error.
pub(crate) fn describe(e: &LdapError) -> String {
    match e {
        LdapError::Timeout { .. } => "timed out".to_owned(),
        LdapError::Io { source } => source.to_string(),
        other => other.to_string(),
    }
}

/// Whether an error means the connection is unusable (as opposed to an LDAP result code).
pub(crate) fn broken(e: &LdapError) -> bool {
    !matches!(e, LdapError::LdapResult { .. })
}

/// What a fresh connection needs before use: a bind as the service account, or nothing.
pub(crate) enum Prepare {
    /// Bind as the service account.
    ServiceBind { dn: String, password: String },
    /// Used for user binds only; each bind replaces the last.
    None,
}

// By hand: the service password must never reach a log line.
impl std::fmt::Debug for Prepare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ServiceBind { dn, .. } => f
                .debug_struct("ServiceBind")
                .field("dn", dn)
                .field("password", &"<redacted>")
                .finish(),
            Self::None => f.write_str("None"),
        }
    }
}

/// A bounded pool of connections for one purpose.
#[derive(Debug)]
pub(crate) struct Pool {
    servers: Arc<Servers>,
    prepare: Prepare,
    idle: Mutex<Vec<Ldap>>,
    permits: Semaphore,
    op_timeout: Duration,
}

/// A connection taken from a pool; it goes back on drop unless marked broken.
pub(crate) struct Conn<'a> {
    pub(crate) ldap: Ldap,
    pool: &'a Pool,
    broken: bool,
    _permit: SemaphorePermit<'a>,
}

impl std::fmt::Debug for Conn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("broken", &self.broken)
            .finish()
    }
}

impl Conn<'_> {
    /// Drops the connection instead of returning it.
    pub(crate) fn discard(&mut self) {
        self.broken = true;
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if !self.broken && !self.ldap.is_closed() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(self.ldap.clone());
        }
    }
}

impl Pool {
    pub(crate) fn new(
        servers: Arc<Servers>,
        prepare: Prepare,
        size: usize,
        op_timeout: Duration,
    ) -> Self {
        Self {
            servers,
            prepare,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size),
            op_timeout,
        }
    }

    /// A connection: an idle one that is still open, or a new one.
    pub(crate) async fn get(&self) -> Result<Conn<'_>, DirectoryError> {
        let permit = tokio::time::timeout(self.op_timeout, self.permits.acquire())
            .await
            .map_err(|_| {
                DirectoryError::Unavailable(
                    "every directory connection is busy (field `directory.pool_size`)".into(),
                )
            })?
            .map_err(|_| DirectoryError::Unavailable("the directory pool is closed".into()))?;
        loop {
            let next = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let Some(mut ldap) = next else { break };
            // A connection the server closed while idle is dropped here.
            if !ldap.is_closed() {
                return Ok(Conn {
                    ldap,
                    pool: self,
                    broken: false,
                    _permit: permit,
                });
            }
        }
        let mut ldap = self.servers.connect().await?;
        if let Prepare::ServiceBind { dn, password } = &self.prepare {
            let res = ldap
                .with_timeout(self.op_timeout)
                .simple_bind(dn, password)
                .await
                .map_err(|e| {
                    DirectoryError::Unavailable(format!("service bind: {}", describe(&e)))
                })?;
            if res.rc != 0 {
                return Err(DirectoryError::Failed(format!(
                    "the directory refused the service account (fields `directory.bind_dn`, `directory.bind_password_file`): result {} {}",
                    res.rc, res.text
                )));
            }
        }
        Ok(Conn {
            ldap,
            pool: self,
            broken: false,
            _permit: permit,
        })
    }

    /// Runs `op` on a pooled connection; when the connection turns out broken (the server
    /// restarted, the socket died), runs it once more on a fresh one, which may fail over.
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, DirectoryError>
    where
        F: FnMut(Ldap) -> Fut,
        Fut: std::future::Future<Output = Result<T, LdapError>>,
    {
        self.run_with(op, false).await
    }

    /// [`Pool::run`] for password binds: an operation that timed out is not sent again (the
    /// directory may have counted it) and is [`DirectoryError::NoAnswer`]; a broken socket,
    /// where the bind did not get through, is retried once.
    pub(crate) async fn run_bind<T, F, Fut>(&self, op: F) -> Result<T, DirectoryError>
    where
        F: FnMut(Ldap) -> Fut,
        Fut: std::future::Future<Output = Result<T, LdapError>>,
    {
        self.run_with(op, true).await
    }

    async fn run_with<T, F, Fut>(&self, mut op: F, bind: bool) -> Result<T, DirectoryError>
    where
        F: FnMut(Ldap) -> Fut,
        Fut: std::future::Future<Output = Result<T, LdapError>>,
    {
        let mut last = None;
        for _ in 0..2 {
            let mut conn = self.get().await?;
            match op(conn.ldap.clone()).await {
                Ok(v) => return Ok(v),
                Err(e @ LdapError::Timeout { .. }) if bind => {
                    conn.discard();
                    return Err(DirectoryError::NoAnswer(describe(&e)));
                }
                Err(e) if broken(&e) => {
                    conn.discard();
                    // A broken connection usually means the server went away: its siblings
                    // are as stale, so the retry opens a fresh one.
                    self.idle
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clear();
                    tracing::debug!(error = %e, "directory connection broken; retrying on a new one");
                    last = Some(e);
                }
                Err(e) => {
                    return Err(DirectoryError::Failed(describe(&e)));
                }
            }
        }
        Err(DirectoryError::Unavailable(format!(
            "the directory stopped answering: {}",
            last.map_or_else(String::new, |e| describe(&e))
        )))
    }
}
