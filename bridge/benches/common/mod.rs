//! What the benchmarks share: knobs, medians, a server behind idbridge's TLS stack, and a client
//! that trusts it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use idbridge_bridge::{ensure_self_signed, server_config};
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;

/// A numeric knob from the environment.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median (upper middle for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The median of per-round ratios `num[i] / den[i]`, with their range.
pub fn ratios(num: &[f64], den: &[f64]) -> (f64, f64, f64) {
    let r: Vec<f64> = num.iter().zip(den).map(|(n, d)| n / d).collect();
    let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = r.iter().copied().fold(0.0, f64::max);
    (median(r), lo, hi)
}

/// Serves `app` with idbridge's own TLS accept loop on a free loopback port.
pub async fn start(app: Router, tls: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(idbridge_bridge::serve(
        listener,
        tls,
        app,
        std::future::pending(),
    ));
    addr
}

/// One keep-alive HTTP/1.1 connection over TLS to `addr` (as `localhost`).
pub async fn connect(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

/// A server TLS configuration made in `dir` for `localhost`, and a client configuration that
/// trusts it.
pub fn tls_pair(dir: &std::path::Path) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let (server_tls, ca) = ensure_self_signed(dir, &["localhost".into()]).unwrap();
    let tls = server_config(&server_tls).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&std::fs::read(ca).unwrap()) {
        roots.add(c.unwrap()).unwrap();
    }
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    (tls, client)
}
