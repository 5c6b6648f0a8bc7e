//! The sync worker at scale: 100,000 users and 5,000 groups nested three levels deep, bulk
//! loaded into slapd with `slapadd`, then, in one run:
//!
//! - the floor: a raw paged search of the same entries and attributes with ldap3, on one
//!   connection, in this process (what any sync must read);
//! - the first full sync (`idbridge sync --offline --once`, the real binary: 100,000 accounts
//!   created in one store transaction), its wall time and peak RSS;
//! - steady-state runs with no change, interleaved with the floor, round by round: wall time,
//!   peak RSS, and the median of the per-round ratios to the floor; beside it a second floor,
//!   the directory read plus reading the store's accounts (what a sync must also read to know
//!   what to change), in this process;
//! - the Kubernetes objects of 500 mapped groups (500 namespaces and 500 RoleBindings) applied
//!   to the testkit's kube-apiserver by server-side apply, then again with no change.
//!
//! Run: `cargo build --release -p idbridge && cargo bench -p idbridge-tests --bench sync`
//! (BENCH_USERS, BENCH_GROUPS, BENCH_ROUNDS; BENCH_NO_KUBE=1 skips the API server part;
//! BENCH_BIN names another idbridge binary).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)] // a benchmark binary

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use idbridge_tests::kube::{ApiServer, Authn};
use idbridge_tests::ldap::{SERVICE_DN, SUFFIX, Slapd};
use idbridge_tests::stats::{env_num, median};
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{LdapConnAsync, Scope, SearchEntry};
use serde_json::Value;

/// Groups are `g<i>`; the first 500 (`k8s-team<i>-devs`) are the parents the namespace rule maps.
const MAPPED: usize = 500;

fn group_name(i: usize) -> String {
    if i < MAPPED {
        format!("k8s-team{i}-devs")
    } else {
        format!("g{i}")
    }
}

/// The LDIF of `users` people and `groups` groups: each user directly in two leaf groups, each
/// leaf group in one of the mapped parents, each parent beyond the first 50 in one of those:
/// three levels.
fn ldif(users: usize, groups: usize) -> String {
    let leaves = groups - MAPPED;
    let mut members: Vec<Vec<String>> = vec![Vec::new(); groups];
    for u in 0..users {
        let dn = format!("uid=u{u},ou=people,{SUFFIX}");
        members[MAPPED + u % leaves].push(dn.clone());
        members[MAPPED + (u * 7 + 3) % leaves].push(dn);
    }
    for leaf in MAPPED..groups {
        members[leaf % MAPPED].push(format!("cn={},ou=groups,{SUFFIX}", group_name(leaf)));
    }
    for parent in 50..MAPPED {
        members[parent % 50].push(format!("cn={},ou=groups,{SUFFIX}", group_name(parent)));
    }
    let mut out = String::with_capacity(users * 200 + groups * 100);
    for u in 0..users {
        let _ = write!(
            out,
            "dn: uid=u{u},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: u{u}\ncn: User {u}\nsn: {u}\n\n"
        );
    }
    for (i, m) in members.iter().enumerate() {
        let _ = writeln!(
            out,
            "dn: cn={n},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {n}",
            n = group_name(i)
        );
        for dn in m {
            let _ = writeln!(out, "member: {dn}");
        }
        out.push('\n');
    }
    out
}

/// The floor: every group (name, members) and every user (the attributes sync reads), paged.
async fn raw_read(slapd: &Slapd, password: &str) -> (usize, Duration) {
    let started = Instant::now();
    let (conn, mut ldap) = LdapConnAsync::new(&slapd.url()).await.unwrap();
    ldap3::drive!(conn);
    ldap.simple_bind(SERVICE_DN, password)
        .await
        .unwrap()
        .success()
        .unwrap();
    let mut n = 0;
    for (base, filter, attrs) in [
        (
            format!("ou=groups,{SUFFIX}"),
            "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))",
            vec!["cn", "member"],
        ),
        (
            format!("ou=people,{SUFFIX}"),
            "(objectClass=inetOrgPerson)",
            vec!["uid", "entryUUID", "pwdAccountLockedTime"],
        ),
    ] {
        let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(500)),
        ];
        let mut stream = ldap
            .streaming_search_with(adapters, &base, Scope::Subtree, filter, attrs)
            .await
            .unwrap();
        while let Some(e) = stream.next().await.unwrap() {
            let e = SearchEntry::construct(e);
            std::hint::black_box(&e);
            n += 1;
        }
        stream.finish().await.success().unwrap();
    }
    ldap.unbind().await.unwrap();
    (n, started.elapsed())
}

/// The store's second floor: every account read from the store the runs wrote.
async fn store_read(db: &Path) -> (usize, Duration) {
    use idbridge_core::AccountStore as _;
    let store = idbridge_store::SqliteStore::open(db).await.unwrap();
    let started = Instant::now();
    let n = store.accounts().await.unwrap().len();
    (n, started.elapsed())
}

/// A run of the release binary; its wall time, peak RSS (MB) and JSON report.
async fn sync_run(bin: &Path, config: &Path) -> (Duration, f64, Value) {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .args(["sync", "--offline", "--once", "--json", "--config"])
        .arg(config)
        .env("IDBRIDGE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut s = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut err, &mut s)
            .await
            .unwrap();
        s
    });
    let reader = tokio::spawn(async move {
        let mut s = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut out, &mut s)
            .await
            .unwrap();
        s
    });
    // VmHWM is the peak resident set so far: the last sample before exit is the run's peak.
    let mut peak_kb = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(status) = child.try_wait().unwrap() {
            let text = reader.await.unwrap();
            let report: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let errors = errors.await.unwrap();
            assert!(
                status.code().is_some_and(|c| c == 0),
                "sync exited {status}: {text}{errors}"
            );
            #[allow(clippy::cast_precision_loss)]
            return (started.elapsed(), peak_kb as f64 / 1024.0, report);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn release_bin() -> PathBuf {
    let p = std::env::var_os("BENCH_BIN").map_or_else(
        || idbridge_tests::repo_root().join("target/release/idbridge"),
        PathBuf::from,
    );
    assert!(
        p.exists(),
        "{} missing: run `cargo build --release -p idbridge` first",
        p.display()
    );
    p
}

fn config(dir: &Path, slapd: &Slapd, kubeconfig: Option<&Path>) -> PathBuf {
    let kube = kubeconfig.map_or_else(String::new, |k| {
        format!(
            "kubernetes:\n  instance: bench\n  api:\n    kubeconfig: {:?}\n",
            k.display().to_string()
        )
    });
    let yaml = format!(
        "data_dir: {data:?}\n{kube}{dir}sync:\n  interval: 1h\n  namespaces:\n    - regex: 'k8s-(.+)-devs'\n      namespace: '$1'\n      role: view\n      create: true\n",
        data = dir.join("data").display().to_string(),
        dir = slapd.directory_yaml(
            &[slapd.url()],
            // Plaintext like the ldap3 floor: the comparison is of the work, not of TLS.
            "insecure_plaintext: true",
            "page_size: 500",
        ),
    );
    let p = dir.join(if kubeconfig.is_some() {
        "kube.yaml"
    } else {
        "config.yaml"
    });
    std::fs::write(&p, yaml).unwrap();
    p
}

#[tokio::main]
async fn main() {
    let users = usize::try_from(env_num("BENCH_USERS", 100_000)).unwrap();
    let groups = usize::try_from(env_num("BENCH_GROUPS", 5_000)).unwrap();
    let rounds = env_num("BENCH_ROUNDS", 5);
    let bin = release_bin();
    let dir = idbridge_tests::scratch();
    let file = dir.path().join("bulk.ldif");
    std::fs::write(&file, ldif(users, groups)).unwrap();
    let load = Instant::now();
    let slapd = Slapd::start_bulk(&file).await.unwrap();
    println!(
        "slapadd: {users} users and {groups} groups in {:.1}s",
        load.elapsed().as_secs_f64()
    );
    let password = std::fs::read_to_string(&slapd.password_file).unwrap();
    let password = password.trim();
    let cfg = config(dir.path(), &slapd, None);

    let (entries, floor) = raw_read(&slapd, password).await;
    assert_eq!(entries, users + groups);
    println!(
        "raw paged read: {entries} entries in {:.2}s",
        floor.as_secs_f64()
    );
    let (first, first_rss, report) = sync_run(&bin, &cfg).await;
    assert_eq!(report["outcome"], "applied", "{report}");
    assert_eq!(report["read"]["users"], users);
    println!(
        "first sync: {:.2}s ({:.2}x the raw read), peak RSS {first_rss:.0} MB: {}",
        first.as_secs_f64(),
        first.as_secs_f64() / floor.as_secs_f64(),
        report["summary"].as_str().unwrap_or("")
    );
    let mut ratios = Vec::new();
    let mut both_ratios = Vec::new();
    let mut walls = Vec::new();
    let mut rss = Vec::new();
    let db = dir.path().join("data/idbridge.db");
    for r in 0..rounds {
        let (_, floor) = raw_read(&slapd, password).await;
        let (n, store) = store_read(&db).await;
        assert_eq!(n, users);
        let (wall, peak, report) = sync_run(&bin, &cfg).await;
        assert_eq!(
            report["plan"]["changes"].as_array().map(Vec::len),
            Some(0),
            "a second run changes nothing: {report}"
        );
        let ratio = wall.as_secs_f64() / floor.as_secs_f64();
        let both = wall.as_secs_f64() / (floor + store).as_secs_f64();
        println!(
            "round {r}: no-change sync {:.2}s, raw read {:.2}s, ratio {ratio:.2}; store read {:.2}s, ratio to both {both:.2}; peak RSS {peak:.0} MB (read {:.2}s of it)",
            wall.as_secs_f64(),
            floor.as_secs_f64(),
            store.as_secs_f64(),
            report["read"]["seconds"].as_f64().unwrap_or(0.0)
        );
        both_ratios.push(both);
        println!(
            "  phases: {}; run total {:.2}s",
            report["phases"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!(
                    "{} {:.2}s",
                    p[0].as_str().unwrap_or("?"),
                    p[1].as_f64().unwrap_or(0.0)
                ))
                .collect::<Vec<_>>()
                .join(", "),
            report["seconds"].as_f64().unwrap_or(0.0)
        );
        ratios.push(ratio);
        walls.push(wall.as_secs_f64());
        rss.push(peak);
    }
    println!(
        "no-change sync: median {:.2}s, median ratio to the raw read {:.2} (target <= 1.5), to the raw read plus the store read {:.2}, median peak RSS {:.0} MB (target < 300)",
        median(walls),
        median(ratios),
        median(both_ratios),
        median(rss)
    );

    if std::env::var_os("BENCH_NO_KUBE").is_some() {
        return;
    }
    let api = ApiServer::start(dir.path(), Authn::default())
        .await
        .unwrap();
    let admin = api.token_kubeconfig(&api.admin_token).unwrap();
    let kcfg = config(dir.path(), &slapd, Some(&admin));
    for what in ["first apply", "no-change apply"] {
        let (wall, _, report) = sync_run(&bin, &kcfg).await;
        let k = &report["kubernetes"]["applied"];
        if k["applied"].as_u64().unwrap_or(0) == 0 {
            println!(
                "  (nothing applied: {})",
                serde_json::to_string(&report["plan"]["skipped"])
                    .unwrap_or_default()
                    .chars()
                    .take(600)
                    .collect::<String>()
            );
            println!(
                "  wanted: {}",
                report["kubernetes"]["objects"]
                    .as_array()
                    .map_or(0, Vec::len)
            );
        }
        println!(
            "kubernetes, {what}: {} objects applied ({} new or changed) in {:.2}s of a {:.2}s run (target < 10 s)",
            k["applied"],
            k["changed"],
            k["seconds"].as_f64().unwrap_or(f64::NAN),
            wall.as_secs_f64()
        );
    }
}
