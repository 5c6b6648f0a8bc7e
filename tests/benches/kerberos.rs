//! Kerberos logins: the Kerberos grant end to end (HTTP over TLS, SPNEGO accept against the
//! keytab with the replay cache, account lookup, session start in a durable SQLite store, ES256
//! signature) beside a floor that is a raw `gss_accept_sec_context` loop on the same keytab, fed
//! fresh authenticators made from the same service ticket, in one run, rounds interleaved.
//!
//! The authenticators are made before each timed part (by this binary re-run with the realm's
//! environment, so the measuring process never changes its own environment); neither side pays
//! for them.
//!
//! Run: `cargo bench -p idbridge-tests --bench kerberos` (BENCH_LOGINS, BENCH_ROUNDS,
//! BENCH_CONNS).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)] // a benchmark binary

mod common;

use common::serve_idbridge;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use idbridge_bridge::{KerberosLogin, Settings};
use idbridge_tests::kdc::Kdc;
use idbridge_tests::load::FormPoster;
use idbridge_tests::stats::{env_num, median, median_ratio, pct};
use libgssapi::context::{ClientCtx, CtxFlags, SecurityContext, ServerCtx};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::name::Name;
use libgssapi::oid::{GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE};

const REALM: &str = "BENCH.TEST";
/// Set in the re-run child: what it should do.
const CHILD: &str = "IDBRIDGE_KRB_BENCH_CHILD";

const KERBEROS_GRANT: &str = "urn:idbridge:params:oauth:grant-type:kerberos";
const EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const STATIC_TYPE: &str = "urn:idbridge:params:oauth:token-type:static";

/// Posts every form in `forms` to the token endpoint from `conns` concurrent workers, each on
/// its own keep-alive connection; the rate, and each request's latency in ms.
async fn drive(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    conns: usize,
    forms: Vec<Vec<(&'static str, String)>>,
) -> (f64, Vec<f64>) {
    let queue = Arc::new(std::sync::Mutex::new(forms));
    let mut posters = Vec::new();
    for _ in 0..conns {
        posters.push(FormPoster::connect(url, tls.clone()).await.unwrap());
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut poster in posters {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let Some(form) = queue.lock().unwrap().pop() else {
                    break;
                };
                let s = Instant::now();
                let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let (status, body) = poster.post(&pairs).await.unwrap();
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert!(v["access_token"].is_string());
                lat.push(s.elapsed().as_secs_f64() * 1e3);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all.len() as f64 / started.elapsed().as_secs_f64(), all)
}

/// `n` fresh SPNEGO tokens for HTTP@localhost from the default ticket cache.
fn make_tokens(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let name = Name::new(b"HTTP@localhost", Some(GSS_NT_HOSTBASED_SERVICE)).unwrap();
            let mut ctx = ClientCtx::new(
                None,
                name,
                CtxFlags::GSS_C_MUTUAL_FLAG,
                Some(GSS_MECH_SPNEGO),
            );
            ctx.step(None, None).unwrap().unwrap().to_vec()
        })
        .collect()
}

/// The child: print tokens, or time the raw accept loop on `threads` threads.
fn child(mode: &str) {
    let n = env_num("BENCH_LOGINS", 3000) as usize;
    match mode {
        "tokens" => {
            for t in make_tokens(n) {
                println!("{}", STANDARD.encode(t));
            }
        }
        "floor" => {
            let threads = env_num("BENCH_FLOOR_THREADS", 2) as usize;
            let per = n / threads;
            let batches: Vec<Vec<Vec<u8>>> = (0..threads).map(|_| make_tokens(per)).collect();
            // The keytab comes from KRB5_KTNAME, the replay cache from KRB5RCACHEDIR.
            let cred = Cred::acquire(None, None, CredUsage::Accept, None).unwrap();
            let started = Instant::now();
            let handles: Vec<_> = batches
                .into_iter()
                .map(|batch| {
                    let cred = cred.clone();
                    std::thread::spawn(move || {
                        let mut lat = Vec::with_capacity(batch.len());
                        for t in batch {
                            let s = Instant::now();
                            let mut ctx = ServerCtx::new(Some(cred.clone()));
                            let out = ctx.step(&t, None).unwrap();
                            assert!(ctx.is_complete() && out.is_some());
                            let _ = ctx.source_name().unwrap();
                            lat.push(s.elapsed().as_secs_f64() * 1e3);
                        }
                        lat
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in handles {
                all.extend(h.join().unwrap());
            }
            let rate = all.len() as f64 / started.elapsed().as_secs_f64();
            let (p50, p99) = (pct(&mut all, 0.5), pct(&mut all, 0.99));
            println!("{rate} {p50} {p99}");
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Runs this binary as a child in the realm's environment.
fn run_child(mode: &str, kdc: &Kdc, ccache: &Path, keytab: &Path, rcache_dir: &Path) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD, mode)
        .envs(kdc.env())
        .env("KRB5CCNAME", format!("FILE:{}", ccache.display()))
        .env("KRB5_KTNAME", format!("FILE:{}", keytab.display()))
        .env("KRB5RCACHEDIR", rcache_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD) {
        return child(&mode);
    }
    let rounds = env_num("BENCH_ROUNDS", 5);
    let conns = env_num("BENCH_CONNS", 8) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kdc = rt.block_on(Kdc::start(REALM)).unwrap();
    let keytab = dir.path().join("http.keytab");
    let ccache = dir.path().join("bench.cc");
    rt.block_on(async {
        kdc.add_service("HTTP/localhost").await.unwrap();
        kdc.export_keytab(&keytab, &["HTTP/localhost"])
            .await
            .unwrap();
        kdc.add_user("bench", "bench-pw-1").await.unwrap();
        kdc.kinit(&format!("bench@{REALM}"), "bench-pw-1", &ccache, None)
            .await
            .unwrap();
    });

    // idbridge in process, behind its own TLS stack.
    let mut settings = Settings::new("https://idbridge.bench".into());
    let cfg: idbridge_kerberos::KerberosConfig = serde_yaml_ng::from_str(&format!(
        "keytab: {}\nrealms: [{REALM}]\n",
        keytab.display()
    ))
    .unwrap();
    settings.kerberos = Some(KerberosLogin {
        acceptor: Arc::new(
            idbridge_kerberos::Acceptor::new(
                &keytab,
                Some(&dir.path().join("krb5.rcache")),
                "kerberos.keytab",
            )
            .unwrap(),
        ),
        mapper: idbridge_kerberos::Mapper::new(&cfg).unwrap(),
        jit: true,
        link_by_name: false,
        groups_from_directory: false,
    });
    let (addr, static_token, tls) = rt.block_on(async {
        let (state, addr, tls) = serve_idbridge(dir.path(), settings).await;
        let robot: idbridge_core::AccountName = "robot".parse().unwrap();
        state
            .ops()
            .add_account(idbridge_core::NewAccount::named(robot.clone()))
            .await
            .unwrap();
        let static_token = state
            .ops()
            .create_token(&robot, None, "bench".into())
            .await
            .unwrap()
            .secret;
        (addr, static_token, tls)
    });
    let url = format!("https://localhost:{}/oauth2/token", addr.port());
    let logins = env_num("BENCH_LOGINS", 3000);
    println!(
        "# Kerberos login benchmark: {rounds} rounds x {logins} logins, {conns} concurrent clients (floor: 2 threads), AES-256 tickets, KDC on loopback"
    );
    let (mut rate, mut frate, mut p50, mut p99, mut fp50, mut fp99, mut mint) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        let rc = tempfile::tempdir().unwrap();
        let floor = run_child("floor", &kdc, &ccache, &keytab, rc.path());
        let f: Vec<f64> = floor
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let tokens: Vec<String> = run_child("tokens", &kdc, &ccache, &keytab, rc.path())
            .lines()
            .map(str::to_owned)
            .collect();
        let kerberos: Vec<Vec<(&str, String)>> = tokens
            .into_iter()
            .map(|t| {
                vec![
                    ("grant_type", KERBEROS_GRANT.to_owned()),
                    ("client_id", "idbridge-cli".to_owned()),
                    ("kerberos_token", t),
                ]
            })
            .collect();
        let (l, mut ll) = rt.block_on(drive(&url, &tls, conns, kerberos));
        let exchange: Vec<Vec<(&str, String)>> = (0..logins)
            .map(|_| {
                vec![
                    ("grant_type", EXCHANGE_GRANT.to_owned()),
                    ("client_id", "idbridge-cli".to_owned()),
                    ("subject_token", static_token.clone()),
                    ("subject_token_type", STATIC_TYPE.to_owned()),
                ]
            })
            .collect();
        let (m, _) = rt.block_on(drive(&url, &tls, conns, exchange));
        mint.push(m);
        let (a, b) = (pct(&mut ll, 0.5), pct(&mut ll, 0.99));
        eprintln!(
            "round {r}: idbridge {l:>7.0} logins/s p50 {a:.2} ms p99 {b:.2} ms | floor {:>7.0}/s p50 {:.3} ms p99 {:.3} ms | static-token sessions {m:>7.0}/s",
            f[0], f[1], f[2]
        );
        rate.push(l);
        frate.push(f[0]);
        p50.push(a);
        p99.push(b);
        fp50.push(f[1]);
        fp99.push(f[2]);
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\n| case | logins/s (median) | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| idbridge Kerberos grant (HTTP+TLS, accept, session, ES256) | {:.0} | {:.2} | {:.2} |",
        median(rate.clone()),
        median(p50.clone()),
        median(p99.clone())
    );
    println!(
        "| floor: raw gss_accept_sec_context, 2 threads | {:.0} | {:.3} | {:.3} |",
        median(frate.clone()),
        median(fp50.clone()),
        median(fp99.clone())
    );
    println!(
        "| session start without Kerberos (static token exchanged, same minting) | {:.0} | | |",
        median(mint.clone())
    );
    println!(
        "\nPer-login cost: {:.2}x the floor's (floor logins/s over idbridge logins/s, median of per-round ratios); Kerberos logins/s are {:.2} of session starts without Kerberos.",
        median_ratio(&frate, &rate),
        median_ratio(&rate, &mint)
    );
}
