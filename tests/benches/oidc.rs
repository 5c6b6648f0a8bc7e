//! Refresh grants: idbridge's `refresh_token` grant (HTTP over TLS, the refresh token spent
//! once in a durable SQLite store, the next one stored, an ES256 access token minted, audit)
//! beside the same grant of a real OpenID provider (the npm package `oidc-provider` under node,
//! over TLS, with its default in-memory adapter) on this machine, in one run, rounds
//! interleaved.
//!
//! idbridge's sessions come from the provider: an ID token the provider issued is exchanged for
//! each of them (`amr=oidc`), with `refresh: false`, so each refresh is idbridge's own work
//! (with `refresh: true` every idbridge refresh also makes one at the provider). The provider's
//! refresh tokens come from logins driven through its own login page. Each client refreshes
//! its own session in a chain, using the refresh token each answer returns.
//!
//! Run: `cargo bench -p idbridge-tests --bench oidc` (BENCH_REFRESHES, BENCH_ROUNDS,
//! BENCH_CONNS).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)] // a benchmark binary

mod common;

use common::serve_idbridge;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idbridge_bridge::{Settings, Upstream, UpstreamConfig};
use idbridge_tests::load::{FormPoster, tls_client};
use idbridge_tests::oidc::OidcProvider;
use idbridge_tests::stats::{env_num, median, median_ratio, pct};
use serde_json::json;

const SECRET: &str = "bench-secret";
const CALLBACK: &str = "https://127.0.0.1/login/oidc/callback";

/// What both servers answer, as far as a client needs it.
#[derive(serde::Deserialize)]
struct Answer {
    access_token: String,
    refresh_token: Option<String>,
}

/// One refresh chain per client, each on its own keep-alive connection: each posts `per`
/// refreshes in turn, each with the refresh token the previous answer returned (or the same one
/// when none came back). The rate, and every request's latency in ms.
async fn chains(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    basic: Option<(&str, &str)>,
    client_id: &str,
    starts: Vec<String>,
    per: usize,
) -> (f64, Vec<f64>, Vec<String>) {
    let mut posters = Vec::new();
    for _ in &starts {
        let mut p = FormPoster::connect(url, tls.clone()).await.unwrap();
        if let Some((id, secret)) = basic {
            p = p.basic_auth(id, secret);
        }
        posters.push(p);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut token, mut poster) in starts.into_iter().zip(posters) {
        let client_id = (basic.is_none()).then(|| client_id.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let s = Instant::now();
                let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", &token)];
                if let Some(id) = &client_id {
                    form.push(("client_id", id));
                }
                let (status, body) = poster.post(&form).await.unwrap();
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                let answer: Answer = serde_json::from_slice(&body).unwrap();
                assert!(!answer.access_token.is_empty());
                if let Some(next) = answer.refresh_token {
                    token = next;
                }
                lat.push(s.elapsed().as_secs_f64() * 1e3);
            }
            (lat, token)
        }));
    }
    let mut all = Vec::new();
    let mut next = Vec::new();
    for t in tasks {
        let (lat, token) = t.await.unwrap();
        all.extend(lat);
        next.push(token);
    }
    (
        all.len() as f64 / started.elapsed().as_secs_f64(),
        all,
        next,
    )
}

fn main() {
    let rounds = env_num("BENCH_ROUNDS", 5);
    let conns = env_num("BENCH_CONNS", 32) as usize;
    let total = env_num("BENCH_REFRESHES", 12000) as usize;
    let per = total / conns;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let provider = rt
        .block_on(OidcProvider::start(
            dir.path(),
            json!([{"client_id": "idbridge", "client_secret": SECRET, "redirect_uris": [CALLBACK]}]),
            json!({"alice": {"password": "alice-pw", "email": "alice@example.test", "groups": ["dev"]}}),
            None,
        ))
        .unwrap();

    // idbridge in process, behind its own TLS stack, with the provider as its upstream.
    let mut settings = Settings::new("https://idbridge.bench".into());
    let upstream_http = reqwest::Client::builder()
        .tls_certs_only(
            reqwest::Certificate::from_pem_bundle(&std::fs::read(&provider.ca_file).unwrap())
                .unwrap(),
        )
        .build()
        .unwrap();
    settings.upstreams = vec![Arc::new(Upstream::new(
        UpstreamConfig {
            name: "corp".into(),
            display_name: "Corp".into(),
            issuer: provider.issuer.clone(),
            client_id: "idbridge".into(),
            client_secret: Some(idbridge_tokens::Secret::new(SECRET.into())),
            scopes: vec!["email".into()],
            username_claim: "email".into(),
            groups_claim: "groups".into(),
            username_prefix: String::new(),
            groups_prefix: String::new(),
            require_email_verified: true,
            refresh: false,
            jit: true,
            link_by_name: false,
        },
        upstream_http,
    ))];
    let (_, addr, tls) = rt.block_on(serve_idbridge(dir.path(), settings));
    // The timed requests: HTTP/1.1 keep-alive to both (the provider's server speaks nothing
    // else), from the same light client.
    let provider_tls = tls_client(&std::fs::read(&provider.ca_file).unwrap()).unwrap();
    let url = format!("https://localhost:{}/oauth2/token", addr.port());
    let provider_url = format!("{}/token", provider.issuer);

    // One session per client on each side, made before anything is timed.
    let (mut ours, mut theirs) = rt.block_on(async {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..conns {
            let t = provider
                .tokens("idbridge", SECRET, CALLBACK, "alice", "alice-pw")
                .await
                .unwrap();
            theirs.push(
                t["refresh_token"]
                    .as_str()
                    .expect("a refresh token")
                    .to_owned(),
            );
            let (status, body) = FormPoster::connect(&url, tls.clone())
                .await
                .unwrap()
                .post(&[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("subject_token", t["id_token"].as_str().unwrap()),
                    (
                        "subject_token_type",
                        "urn:ietf:params:oauth:token-type:id_token",
                    ),
                ])
                .await
                .unwrap();
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            ours.push(v["refresh_token"].as_str().expect("a session").to_owned());
        }
        (ours, theirs)
    });

    println!(
        "# Refresh benchmark: {rounds} rounds x {} refreshes, {conns} concurrent refresh chains, both over TLS on loopback",
        per * conns
    );
    let (mut rate, mut prate, mut p50, mut p99, mut pp50, mut pp99) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    // Round 0 is an untimed warm-up on each side: node's JIT and both sides' caches.
    for r in 0..=rounds {
        let (a, mut al, next) = rt.block_on(chains(&url, &tls, None, "idbridge-cli", ours, per));
        ours = next;
        let (b, mut bl, next) = rt.block_on(chains(
            &provider_url,
            &provider_tls,
            Some(("idbridge", SECRET)),
            "idbridge",
            theirs,
            per,
        ));
        theirs = next;
        if r == 0 {
            continue;
        }
        let (a50, a99, b50, b99) = (
            pct(&mut al, 0.5),
            pct(&mut al, 0.99),
            pct(&mut bl, 0.5),
            pct(&mut bl, 0.99),
        );
        eprintln!(
            "round {r}: idbridge {a:>7.0}/s p50 {a50:.2} ms p99 {a99:.2} ms | oidc-provider {b:>7.0}/s p50 {b50:.2} ms p99 {b99:.2} ms"
        );
        rate.push(a);
        prate.push(b);
        p50.push(a50);
        p99.push(a99);
        pp50.push(b50);
        pp99.push(b99);
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\n| case | refreshes/s (median) | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| idbridge refresh_token grant (rotate, durable SQLite, ES256, audit) | {:.0} | {:.2} | {:.2} |",
        median(rate.clone()),
        median(p50),
        median(p99)
    );
    println!(
        "| oidc-provider refresh_token grant (node, in-memory adapter) | {:.0} | {:.2} | {:.2} |",
        median(prate.clone()),
        median(pp50),
        median(pp99)
    );
    println!(
        "\nidbridge serves {:.2}x the provider's refreshes per second (median of per-round ratios).",
        median_ratio(&rate, &prate)
    );
}
