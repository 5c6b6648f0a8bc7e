//! Token-endpoint grants per second with the server on one core and a durable SQLite store
//! (WAL, `synchronous=FULL`: every acknowledged refresh is fsynced), over loopback TLS with
//! keep-alive, beside a bare axum hello-world on the same one-core server and beside the
//! in-process floor of a refresh (the store's atomic spend plus one ES256 signature, one thread),
//! all in one run so the ratios hold on a noisy machine.
//!
//! Run: `cargo bench -p idbridge-bridge --bench grants` (BENCH_SECS, BENCH_ROUNDS, BENCH_CONNS).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)] // a benchmark binary

mod common;

use common::{connect, env_num, median, ratios, start, tls_pair};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use idbridge_bridge::{AppState, Settings, app};
use idbridge_core::{
    AccountStore, Clock, GroupName, NewAccount, RefreshRecord, Session, SessionId, SessionStore,
    Spend, SystemClock, UnixTime,
};
use idbridge_store::SqliteStore;
use idbridge_tokens::{
    AccessClaims, AdminOps, Audit, AuditSink, KeySet, Rotate, hash_token, new_secret,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hello,
    Refresh,
    Exchange,
}

fn form(pairs: &[(&str, &str)]) -> Bytes {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    Bytes::from(
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// One keep-alive connection per session; each refresh uses the refresh token the previous one
/// returned, as a client would. Returns grants per second.
async fn load(
    addr: SocketAddr,
    kind: Kind,
    sessions: Vec<(String, String)>,
    client: Arc<rustls::ClientConfig>,
    secs: u64,
) -> (f64, Vec<(String, String)>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (mut refresh, access) in sessions {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = connect(addr, client).await;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let (path, body) = match kind {
                    Kind::Hello => ("/hello", Bytes::from_static(b"x=1")),
                    Kind::Refresh => (
                        "/oauth2/token",
                        form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)]),
                    ),
                    Kind::Exchange => (
                        "/oauth2/token",
                        form(&[
                            (
                                "grant_type",
                                "urn:ietf:params:oauth:grant-type:token-exchange",
                            ),
                            ("subject_token", &access),
                            (
                                "subject_token_type",
                                "urn:ietf:params:oauth:token-type:access_token",
                            ),
                            ("audience", "kubernetes"),
                            ("scope", "group:corp-engineering-team-03-developers"),
                        ]),
                    ),
                };
                let req = hyper::Request::post(path)
                    .header("host", "localhost")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Full::new(body))
                    .unwrap();
                let resp = tx.send_request(req).await.unwrap();
                let status = resp.status();
                let b = resp.into_body().collect().await.unwrap().to_bytes();
                assert!(
                    status.is_success(),
                    "{status}: {}",
                    String::from_utf8_lossy(&b)
                );
                if kind == Kind::Refresh {
                    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                    refresh = v["refresh_token"].as_str().unwrap().to_owned();
                }
                n += 1;
            }
            (n, (refresh, access))
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    let mut next = Vec::new();
    for t in tasks {
        let (n, s) = t.await.unwrap();
        total += n;
        next.push(s);
    }
    (total as f64 / started.elapsed().as_secs_f64(), next)
}

fn main() {
    let secs = env_num("BENCH_SECS", 3);
    let rounds = env_num("BENCH_ROUNDS", 5);
    let conns = env_num("BENCH_CONNS", 16);
    let dir = tempfile::tempdir().unwrap();
    // The server gets one worker thread: "grants per second on one core".
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("server")
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    let (tls, client) = tls_pair(dir.path());

    let (hello, server, sessions, store) = server_rt.block_on(async {
        let store = Arc::new(SqliteStore::open(&dir.path().join("b.db")).await.unwrap());
        let mut new = NewAccount::named("alice.example".parse().unwrap());
        for i in 0..20 {
            new.groups.insert(
                format!("corp-engineering-team-{i:02}-developers")
                    .parse::<GroupName>()
                    .unwrap(),
            );
        }
        store.create_account(new, UnixTime(0)).await.unwrap();
        let (kid, der) = KeySet::generate().unwrap();
        let state = AppState::new(
            store.clone(),
            Arc::new(SystemClock),
            KeySet::from_pkcs8(&[(kid, der)]).unwrap(),
            Settings::new("https://idbridge.bench".into()),
            Audit::open(&AuditSink::File(dir.path().join("audit.log"))).unwrap(),
        );
        state.maintain_keys(Rotate::Policy).await.unwrap();
        let ops = AdminOps::new(store.clone(), Arc::new(SystemClock));
        let st = ops
            .create_token(&"alice.example".parse().unwrap(), None, String::new())
            .await
            .unwrap()
            .secret;
        let hello = start(
            Router::new().route("/hello", post(|| async { "Hello, World!" })),
            tls.clone(),
        )
        .await;
        let server = start(app(state), tls.clone()).await;
        (hello, server, st, store)
    });
    // Sessions started over HTTP, as a client would.
    let http = reqwest::Client::builder()
        .tls_certs_only(
            reqwest::Certificate::from_pem_bundle(
                &std::fs::read(dir.path().join("ca.crt")).unwrap(),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let mut live: Vec<(String, String)> = client_rt.block_on(async {
        let mut out = Vec::new();
        for _ in 0..conns {
            let v: serde_json::Value = http
                .post(format!("https://localhost:{}/oauth2/token", server.port()))
                .form(&[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("subject_token", sessions.as_str()),
                    (
                        "subject_token_type",
                        "urn:idbridge:params:oauth:token-type:static",
                    ),
                ])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            out.push((
                v["refresh_token"].as_str().unwrap().to_owned(),
                v["access_token"].as_str().unwrap().to_owned(),
            ));
        }
        out
    });

    // The floor: a refresh's irreducible work in process, one after another on one thread:
    // the store's durable atomic spend and one ES256 signature.
    let floor_keys = KeySet::from_pkcs8(&[KeySet::generate().unwrap()]).unwrap();
    let floor_round = || {
        server_rt.block_on(async {
            let now = SystemClock.now();
            let account = store.accounts().await.unwrap()[0].uid;
            let session = Session {
                id: SessionId::random(),
                account,
                client_id: "floor".parse().unwrap(),
                amr: vec![idbridge_core::Amr::Static],
                audience: idbridge_core::Audience::kubernetes(),
                scope: String::new(),
                login_groups: Vec::new(),
                created_at: now,
                last_used_at: now,
                expires_at: now.plus_secs(86_400),
                revoked_at: None,
                revoked_reason: None,
            };
            let rec = |t: &str| RefreshRecord::fresh(hash_token(t), session.id, now);
            let mut token = new_secret("idb_rt_");
            store.create_session(&session, &rec(&token)).await.unwrap();
            let claims = |jti: u64| AccessClaims {
                iss: "https://idbridge.bench".into(),
                sub: account.to_string(),
                aud: vec![idbridge_core::Audience::kubernetes()],
                exp: now.0 + 900,
                iat: now.0,
                nbf: now.0,
                jti: jti.to_string(),
                name: "alice.example".into(),
                groups: (0..20)
                    .map(|i| format!("corp-engineering-team-{i:02}-developers"))
                    .collect(),
                namespace: None,
                amr: vec![idbridge_core::Amr::Static],
                scope: String::new(),
                sid: session.id.to_string(),
                client_id: Some(session.client_id.clone()),
                act: None,
            };
            let deadline = Instant::now() + Duration::from_secs(secs);
            let mut n = 0u64;
            while Instant::now() < deadline {
                let next = new_secret("idb_rt_");
                std::hint::black_box(floor_keys.sign(&claims(n)).unwrap());
                let spend = Spend {
                    old: hash_token(&token),
                    at: now,
                    grace_until: now.plus_secs(5),
                    sealed: vec![0; 64],
                    next: rec(&next),
                    login_groups: None,
                };
                store.spend_refresh(&spend).await.unwrap();
                token = next;
                n += 1;
            }
            n as f64 / secs as f64
        })
    };

    println!(
        "# Grants benchmark: server on 1 worker thread, durable SQLite, {rounds} rounds x {secs}s, {conns} keep-alive TLS connections"
    );
    let cases = [
        (
            "hello-world (axum, same TLS stack, 1 core)",
            Kind::Hello,
            hello,
        ),
        ("refresh_token grant", Kind::Refresh, server),
        (
            "token exchange (access token → narrower)",
            Kind::Exchange,
            server,
        ),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut floor = Vec::new();
    // BENCH_ONLY=1 (say) runs only that case, for profiling.
    let only: Option<usize> = std::env::var("BENCH_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    for r in 0..rounds {
        for (i, (name, kind, addr)) in cases.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let (rps, next) =
                client_rt.block_on(load(*addr, *kind, live.clone(), client.clone(), secs));
            live = next;
            eprintln!("round {r}: {name:<44} {rps:>8.0} grants/s");
            samples[i].push(rps);
        }
        if only.is_some() {
            continue;
        }
        let f = floor_round();
        eprintln!(
            "round {r}: {:<44} {f:>8.0} /s (one thread)",
            "floor: durable spend + sign"
        );
        floor.push(f);
    }
    if only.is_some() {
        return;
    }
    println!("\n| case | grants/s (median) | ratio (median of rounds, range) |");
    println!("| --- | ---: | --- |");
    for (i, (name, _, _)) in cases.iter().enumerate() {
        let (h, hl, hh) = ratios(&samples[i], &samples[0]);
        let extra = if i == 1 {
            let (f, fl, fh) = ratios(&samples[i], &floor);
            format!("; {f:.2} of the floor ({fl:.2}–{fh:.2})")
        } else {
            String::new()
        };
        println!(
            "| {name} | {:.0} | {h:.3} of hello-world ({hl:.3}–{hh:.3}){extra} |",
            median(samples[i].clone())
        );
    }
    println!(
        "| floor: durable spend + sign (1 thread) | {:.0} | |",
        median(floor)
    );
}
