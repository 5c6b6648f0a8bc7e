//! What the end-to-end benchmarks share: idbridge in process, as `idbridge serve` runs it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use idbridge_bridge::{AppState, Settings, app, ensure_self_signed, server_config};
use idbridge_core::SystemClock;
use idbridge_store::SqliteStore;
use idbridge_tests::load::tls_client;
use idbridge_tokens::{Audit, AuditSink, KeySet, Rotate};

/// idbridge serving `settings` from `dir`: a durable SQLite store, a fresh ES256 key and a file
/// audit log, behind its own TLS stack on a loopback port. Returns its state (to add accounts
/// or tokens), its address, and a client configuration that trusts it.
pub async fn serve_idbridge(
    dir: &Path,
    settings: Settings,
) -> (AppState, SocketAddr, Arc<rustls::ClientConfig>) {
    let (server_tls, ca) = ensure_self_signed(dir, &["localhost".into()]).unwrap();
    let store = Arc::new(SqliteStore::open(&dir.join("b.db")).await.unwrap());
    let (kid, der) = KeySet::generate().unwrap();
    let state = AppState::new(
        store,
        Arc::new(SystemClock),
        KeySet::from_pkcs8(&[(kid, der)]).unwrap(),
        settings,
        Audit::open(&AuditSink::File(dir.join("audit.log"))).unwrap(),
    );
    state.maintain_keys(Rotate::Policy).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(idbridge_bridge::serve(
        listener,
        server_config(&server_tls).unwrap(),
        app(state.clone()),
        std::future::pending(),
    ));
    let tls = tls_client(&std::fs::read(ca).unwrap()).unwrap();
    (state, addr, tls)
}

/// A floor beside idbridge: a server on the same TLS stack, HTTP stack and certificate (from
/// `dir`, as [`serve_idbridge`] made them) that reads each POST's body and answers `answer`
/// with no other work. Returns its address.
#[allow(dead_code)] // the workload benchmark's alone
pub async fn serve_static(dir: &Path, answer: bytes::Bytes) -> SocketAddr {
    let (server_tls, _) = ensure_self_signed(dir, &["localhost".into()]).unwrap();
    let app =
        axum::Router::new().fallback(axum::routing::post(move |body: bytes::Bytes| async move {
            std::hint::black_box(body);
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                answer.clone(),
            )
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(idbridge_bridge::serve(
        listener,
        server_config(&server_tls).unwrap(),
        app,
        std::future::pending(),
    ));
    addr
}
