//! What the exec plugin costs kubectl. idbridge runs on every kubectl command, so a cached token
//! must cost next to nothing. In one run, rounds interleaved:
//!
//! - `kubectl get --raw /version` against a real kube-apiserver with the plugin (a fresh cached
//!   token, method kerberos, so the ticket's principal is looked up as on every real run) against
//!   the same command with the same token written as a static `token:` in the kubeconfig;
//! - the plugin alone (`idbridge login`, cached token, an ExecCredential to standard output, as
//!   kubectl runs it) against `idbridge --version` (the same binary started, and nothing done).
//!
//! The plugin is the release binary: `cargo build --release -p idbridge` first (or name one with
//! IDBRIDGE_PLUGIN_BIN). Run: `cargo bench -p idbridge-tests --bench kubectl` (BENCH_ROUNDS,
//! BENCH_RUNS: runs of each command per round).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)] // a benchmark binary

use std::path::{Path, PathBuf};
use std::time::Instant;

use idbridge_tests::kube::{ApiServer, Authn, kubectl_bin};
use idbridge_tests::stats::{env_num, median, median_ratio};

/// The release binary beside the debug one.
fn plugin_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("IDBRIDGE_PLUGIN_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let p = target.join("release/idbridge");
    assert!(
        p.exists(),
        "no release idbridge at {}: run `cargo build --release -p idbridge` first, or set IDBRIDGE_PLUGIN_BIN",
        p.display()
    );
    p
}

/// Runs `program args` with `env` to completion, failing loudly; its time in ms.
fn timed(program: &Path, args: &[&str], env: &[(String, String)]) -> f64 {
    let start = Instant::now();
    let out = std::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    ms
}

#[tokio::main]
async fn main() {
    let rounds = usize::try_from(env_num("BENCH_ROUNDS", 9)).unwrap();
    let runs = usize::try_from(env_num("BENCH_RUNS", 20)).unwrap();
    let plugin = plugin_bin();
    let dir = idbridge_tests::scratch();
    let sso = idbridge_tests::kdc::sso(
        dir.path(),
        "BENCH.TEST",
        "alice",
        "alice-pw",
        "groups: [dev]",
    )
    .await
    .unwrap();
    let i = &sso.idbridge;
    let api = ApiServer::start(dir.path(), Authn::webhook(&i.data_dir))
        .await
        .unwrap();
    let ca = i.data_dir.join("ca.crt");
    let cache = dir.path().join("cache");
    let login: Vec<String> = [
        "login",
        "--issuer",
        &sso.issuer,
        "--method",
        "kerberos",
        "--ca-file",
        ca.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec();
    let login_ref: Vec<&str> = login.iter().map(String::as_str).collect();
    // The session, cached; its access token for the static kubeconfig.
    let out = std::process::Command::new(&plugin)
        .args(&login_ref)
        .args(["--output", "token"])
        .envs(sso.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let args_yaml: String = login.iter().map(|a| format!("        - {a}\n")).collect();
    let with_plugin = api
        .kubeconfig(
            "kubeconfig-plugin",
            &format!(
                "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      args:\n{args_yaml}      interactiveMode: Never\n",
                plugin.display()
            ),
        )
        .unwrap();
    let with_token = api.token_kubeconfig(&token).unwrap();
    let kubectl = kubectl_bin().unwrap();
    let get = |cfg: &Path| {
        vec![
            "--kubeconfig".to_owned(),
            cfg.display().to_string(),
            "get".to_owned(),
            "--raw".to_owned(),
            "/version".to_owned(),
        ]
    };
    let (plugin_get, token_get) = (get(&with_plugin), get(&with_token));
    let plugin_get: Vec<&str> = plugin_get.iter().map(String::as_str).collect();
    let token_get: Vec<&str> = token_get.iter().map(String::as_str).collect();
    let mut exec_env = sso.env.clone();
    exec_env.push((
        "KUBERNETES_EXEC_INFO".into(),
        r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":false}}"#.into(),
    ));
    // Warm: the API server's webhook cache holds the review, the page cache the binaries.
    for _ in 0..3 {
        timed(&kubectl, &plugin_get, &sso.env);
        timed(&kubectl, &token_get, &sso.env);
    }
    let (mut kp, mut kt, mut pa, mut ve) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    println!(
        "{rounds} rounds of {runs} runs each (medians in ms): kubectl+plugin, kubectl+token, plugin alone, --version"
    );
    for r in 0..rounds {
        let (mut a, mut b, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            a.push(timed(&kubectl, &plugin_get, &sso.env));
            b.push(timed(&kubectl, &token_get, &sso.env));
            c.push(timed(&plugin, &login_ref, &exec_env));
            d.push(timed(&plugin, &["--version"], &exec_env));
        }
        let (a, b, c, d) = (median(a), median(b), median(c), median(d));
        println!(
            "round {r}: {a:.2} {b:.2} {c:.2} {d:.2}  ratios {:.3} {:.3}",
            a / b,
            c / d
        );
        kp.push(a);
        kt.push(b);
        pa.push(c);
        ve.push(d);
    }
    println!(
        "kubectl get --raw /version with the plugin: {:.2} ms, with a static token {:.2} ms: {:.3}x (target <= 1.15)",
        median(kp.clone()),
        median(kt.clone()),
        median_ratio(&kp, &kt)
    );
    println!(
        "the plugin alone: {:.2} ms, idbridge --version {:.2} ms: {:.3}x (target <= 1.5)",
        median(pa.clone()),
        median(ve.clone()),
        median_ratio(&pa, &ve)
    );
}
