//! Workload credentials, in one run against a real MIT KDC with kadmind and the testkit's
//! kube-apiserver, idbridge in process behind its own TLS:
//!
//! - the floor: a raw loop of the KDC work a ccache issuance does, `kinit -k` with a keytab of
//!   the same principal into a fresh cache, `BENCH_CONNS` at a time;
//! - ccache issuances (`POST /v1/workload/credentials`: TokenReview at the API server, mapping,
//!   revocation check, `kinit -k` with the cached keys), `BENCH_CONNS` connections; rounds
//!   interleaved with the floor, the median of the per-round ratios reported;
//! - keytab issuances of an existing principal without rotation (no kadmin call: cached keys);
//! - the admission webhook at a steady 100 reviews/s over TLS (open loop), its p99 per round
//!   beside a floor at the same pace: the same TLS and HTTP stacks answering the same bytes with
//!   no other work, rounds interleaved.
//!
//! Run: `cargo bench -p idbridge-tests --bench workload` (BENCH_ISSUES, BENCH_ROUNDS,
//! BENCH_CONNS, BENCH_REVIEWS: reviews per admission round).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    missing_debug_implementations
)] // a benchmark binary

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{serve_idbridge, serve_static};
use idbridge_core::SystemClock;
use idbridge_tests::kdc::Kdc;
use idbridge_tests::kube::{ApiServer, Authn};
use idbridge_tests::ldap::program;
use idbridge_tests::load::FormPoster;
use idbridge_tests::stats::{env_num, median, median_ratio, pct};
use idbridge_workload::ccache::Tickets;
use idbridge_workload::{AgentMode, AgentSettings, Issuer, IssuerParts, Mappings};
use serde_json::{Value, json};

const REALM: &str = "WLBENCH.TEST";

async fn kubectl(api: &ApiServer, kc: &Path, args: &[&str]) -> String {
    let (code, out, err) = api.kubectl(kc, args, &[]).await.unwrap();
    assert_eq!(code, 0, "kubectl {args:?}: {err}");
    out
}

/// `n` runs of `kinit -k`, `conns` at a time: the rate.
async fn floor(
    kdc: &Kdc,
    keytab: &Path,
    principal: &str,
    dir: &Path,
    n: usize,
    conns: usize,
) -> f64 {
    let kinit = program("kinit").unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conns {
        let (kinit, next, env) = (kinit.clone(), next.clone(), kdc.env());
        let (keytab, principal) = (keytab.to_owned(), principal.to_owned());
        let cc = dir.join(format!("floor-{w}.cc"));
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let out = tokio::process::Command::new(&kinit)
                    .arg("-k")
                    .arg("-t")
                    .arg(&keytab)
                    .arg("-c")
                    .arg(format!("FILE:{}", cc.display()))
                    .arg("-l")
                    .arg("3600s")
                    .arg(&principal)
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .output()
                    .await
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let _ = std::fs::remove_file(&cc);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// `n` TokenReviews of `token` at the API server through `client`, `conns` at a time (the
/// attestation every issuance must do): the rate.
async fn review_loop(client: &kube::Client, token: &str, n: usize, conns: usize) -> f64 {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (client, token, next) = (client.clone(), token.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                idbridge_workload::review::review(&client, &token, "idbridge")
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// `n` issuances with `token` from `conns` connections: the rate and latencies (ms).
async fn issue(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    token: &str,
    n: usize,
    conns: usize,
    form: &str,
) -> (f64, Vec<f64>) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut posters = Vec::new();
    for _ in 0..conns {
        posters.push(
            FormPoster::connect(url, tls.clone())
                .await
                .unwrap()
                .bearer(token),
        );
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut p in posters {
        let next = next.clone();
        let form = form.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let s = Instant::now();
                let (status, body) = p.post_body("application/json", Bytes::new()).await.unwrap();
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["form"], form.as_str());
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

/// Reviews posted at a steady `rate` per second for `n` reviews (open loop, spread over a few
/// connections): each one's latency in ms, measured from its scheduled send time.
async fn admission_load(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    hook_token: &str,
    review: Bytes,
    n: usize,
    rate: f64,
) -> Vec<f64> {
    let conns = 4;
    let mut txs = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let mut p = FormPoster::connect(url, tls.clone())
            .await
            .unwrap()
            .bearer(hook_token);
        let review = review.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while let Some(due) = rx.recv().await {
                let (status, body) = p
                    .post_body("application/json", review.clone())
                    .await
                    .unwrap();
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                lat.push(due.elapsed().as_secs_f64() * 1e3);
            }
            lat
        }));
        txs.push(tx);
    }
    let every = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    for i in 0..n {
        let due = start + every * u32::try_from(i).unwrap();
        tokio::time::sleep_until(due.into()).await;
        txs[i % conns].send(due).unwrap();
    }
    drop(txs);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::main]
async fn main() {
    let n = env_num("BENCH_ISSUES", 300) as usize;
    let rounds = env_num("BENCH_ROUNDS", 5) as usize;
    let conns = env_num("BENCH_CONNS", 2) as usize;
    let reviews = env_num("BENCH_REVIEWS", 1000) as usize;
    let dir = idbridge_tests::scratch();
    let mut kdc = Kdc::start(REALM).await.unwrap();
    let kadmin = kdc.start_admin().await.unwrap();
    let api = ApiServer::start(dir.path(), Authn::default())
        .await
        .unwrap();
    let admin_kc = api.token_kubeconfig(&api.admin_token).unwrap();
    let idb_kc = api.workload_identity_kubeconfig().await.unwrap();
    kubectl(&api, &admin_kc, &["create", "namespace", "pay"]).await;
    let mut tokens = Vec::new();
    for sa in ["api", "web"] {
        kubectl(
            &api,
            &admin_kc,
            &["create", "serviceaccount", sa, "-n", "pay"],
        )
        .await;
        let pod = format!("{sa}-1");
        kubectl(
            &api,
            &admin_kc,
            &[
                "run",
                &pod,
                "-n",
                "pay",
                "--image=registry.invalid/app:1",
                &format!("--overrides={{\"spec\":{{\"serviceAccountName\":\"{sa}\"}}}}"),
            ],
        )
        .await;
        let uid = kubectl(
            &api,
            &admin_kc,
            &[
                "get",
                "pod",
                &pod,
                "-n",
                "pay",
                "-o",
                "jsonpath={.metadata.uid}",
            ],
        )
        .await;
        tokens.push(
            kubectl(
                &api,
                &admin_kc,
                &[
                    "create",
                    "token",
                    sa,
                    "-n",
                    "pay",
                    "--audience",
                    "idbridge",
                    "--bound-object-kind",
                    "Pod",
                    "--bound-object-name",
                    &pod,
                    "--bound-object-uid",
                    &uid,
                    "--duration=2h",
                ],
            )
            .await
            .trim()
            .to_owned(),
        );
    }
    let principal = format!("api.pay@{REALM}");
    let config: idbridge_workload::WorkloadsConfig = serde_yaml_ng::from_str(&format!(
        "krb5_conf: {krb5:?}\nmit_kadmin: {{principal: {admin}, keytab: {keytab:?}, server: {server:?}}}\nmappings:\n  - {{namespace: pay, serviceaccount: api, principal: '{principal}'}}\n  - {{namespace: pay, serviceaccount: web, principal: 'HTTP/web.pay.svc@{REALM}', form: keytab}}\n",
        krb5 = kdc.krb5_conf().display().to_string(),
        admin = kadmin.principal,
        keytab = kadmin.keytab.display().to_string(),
        server = kadmin.server,
    ))
    .unwrap();
    let hook_token = "bench-hook-token-0123456789";
    let mut settings = idbridge_bridge::Settings::new("https://localhost".into());
    settings.webhook_tokens = vec![idbridge_tokens::Secret::new(hook_token.into())];
    let (state, addr, tls) = serve_idbridge(dir.path(), settings.clone()).await;
    let client = idbridge_sync::kube::client(&idbridge_sync::kube::ApiConfig {
        kubeconfig: Some(idb_kc),
        context: None,
    })
    .await
    .unwrap();
    let issuer = Issuer::new(IssuerParts {
        client: client.clone(),
        audience: config.audience.clone(),
        mappings: Mappings::new(&config).unwrap(),
        keys: Arc::new(idbridge_kerberos::kadmin::MitKadmin {
            program: program("kadmin").unwrap(),
            principal: kadmin.principal.clone(),
            keytab: kadmin.keytab.clone(),
            server: Some(kadmin.server.clone()),
            env: vec![("KRB5_CONFIG".into(), kdc.krb5_conf().into())],
        }),
        tickets: Tickets {
            krb5_conf: kdc.krb5_conf(),
        },
        krb5_conf: std::fs::read_to_string(kdc.krb5_conf()).unwrap(),
        keytab: config.keytab,
        store: state.store().clone(),
        clock: Arc::new(SystemClock),
        agent: AgentSettings {
            image: "idbridge:bench".into(),
            server: format!("https://localhost:{}", addr.port()),
            ca_pem: None,
            mode: AgentMode::Sidecar,
            token_lifetime_secs: 3600,
            audience: "idbridge".into(),
        },
    });
    settings.workloads = Some(Arc::new(issuer));
    state.set_settings(settings);
    let base = format!("https://localhost:{}", addr.port());
    let url = format!("{base}/v1/workload/credentials");

    // Warm: the principals exist and their keys are cached; the floor's keytab holds the same
    // keys (extracted unchanged).
    issue(&url, &tls, &tokens[0], 3, 1, "ccache").await;
    issue(&url, &tls, &tokens[1], 3, 1, "keytab").await;
    let keytab = dir.path().join("floor.keytab");
    kdc.export_keytab(&keytab, &[&principal]).await.unwrap();
    floor(&kdc, &keytab, &principal, dir.path(), 3, 1).await;

    let (mut floors, mut ours, mut lat) = (Vec::new(), Vec::new(), Vec::new());
    let (mut review_rates, mut both) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let f = floor(&kdc, &keytab, &principal, dir.path(), n, conns).await;
        let rv = review_loop(&client, &tokens[0], n, conns).await;
        let (o, l) = issue(&url, &tls, &tokens[0], n, conns, "ccache").await;
        // The two parts every issuance must do, one after the other.
        let serial = 1.0 / (1.0 / f + 1.0 / rv);
        println!(
            "round {r}: kinit -k {f:.0}/s, TokenReview {rv:.0}/s, both in series {serial:.0}/s; ccache issuance {o:.0}/s ({:.2}x of kinit, {:.2}x of both)",
            o / f,
            o / serial
        );
        floors.push(f);
        review_rates.push(rv);
        both.push(serial);
        ours.push(o);
        lat.extend(l);
    }
    let (kt_rate, mut kt_lat) = issue(&url, &tls, &tokens[1], n * 3, conns, "keytab").await;

    // The admission webhook: a pod of a mapped serviceaccount, patched every time.
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "pay",
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "api-2", "namespace": "pay"},
                "spec": {"serviceAccountName": "api", "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    });
    let body = Bytes::from(serde_json::to_vec(&review).unwrap());
    let hook_url = format!("{base}/webhooks/mutate-pod");
    // The floor at the same pace: the same TLS and HTTP stacks answering idbridge's own answer
    // to this review, with no other work.
    let mut poster = FormPoster::connect(&hook_url, tls.clone())
        .await
        .unwrap()
        .bearer(hook_token);
    let (status, answer) = poster
        .post_body("application/json", body.clone())
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    drop(poster);
    let floor_addr = serve_static(dir.path(), answer).await;
    let floor_url = format!(
        "https://localhost:{}/webhooks/mutate-pod",
        floor_addr.port()
    );
    admission_load(&hook_url, &tls, hook_token, body.clone(), 100, 100.0).await;
    admission_load(&floor_url, &tls, hook_token, body.clone(), 100, 100.0).await;
    let (mut adm, mut adm_p99, mut floor_p99) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let mut f =
            admission_load(&floor_url, &tls, hook_token, body.clone(), reviews, 100.0).await;
        let mut o = admission_load(&hook_url, &tls, hook_token, body.clone(), reviews, 100.0).await;
        let (fp, op) = (pct(&mut f, 0.99), pct(&mut o, 0.99));
        println!(
            "round {r}: admission at 100/s p99 {op:.2} ms (p50 {:.2} ms) | floor p99 {fp:.2} ms (p50 {:.2} ms)",
            pct(&mut o, 0.5),
            pct(&mut f, 0.5),
        );
        adm_p99.push(op);
        floor_p99.push(fp);
        adm.extend(o);
    }

    println!();
    println!(
        "ccache issuance: median {:.0}/s against kinit -k {:.0}/s: {:.2}x of the floor (median of {rounds} rounds; target >= 0.70x); latency p50 {:.1} ms, p99 {:.1} ms",
        median(ours.clone()),
        median(floors.clone()),
        median_ratio(&ours, &floors),
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
    );
    println!(
        "the parts: TokenReview alone median {:.0}/s; kinit -k and TokenReview in series {:.0}/s; ccache issuance {:.2}x of that (median of per-round ratios)",
        median(review_rates.clone()),
        median(both.clone()),
        median_ratio(&ours, &both),
    );
    println!(
        "keytab issuance (existing principal, cached keys): {kt_rate:.0}/s; latency p50 {:.1} ms, p99 {:.1} ms",
        pct(&mut kt_lat, 0.5),
        pct(&mut kt_lat, 0.99),
    );
    println!(
        "admission webhook at 100 reviews/s over TLS ({rounds} rounds of {reviews} reviews): p99 median {:.2} ms (target <= 5 ms), {:.2}x the floor's p99 {:.2} ms (median of per-round ratios); all reviews p50 {:.2} ms, max {:.2} ms",
        median(adm_p99.clone()),
        median_ratio(&adm_p99, &floor_p99),
        median(floor_p99.clone()),
        pct(&mut adm, 0.5),
        pct(&mut adm, 1.0),
    );
}
