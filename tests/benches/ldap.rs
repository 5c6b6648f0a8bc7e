//! LDAP logins: the `password` grant end to end (HTTP over TLS, user search, user bind, group
//! search, session start in a durable SQLite store, ES256 signature) beside a floor that does
//! the same LDAP work with raw ldap3 on the same slapd (one service connection and one bind
//! connection per worker: search the user, bind as the user, search the groups), in one run,
//! rounds interleaved. A third case runs idbridge's directory layer alone, in process, on the
//! same slapd: what the LDAP part of a login costs through idbridge's pools, escaping, paging
//! and entry mapping, without HTTP, session or signature; a fourth runs the `password` grant with
//! a directory that answers from memory: what idbridge adds. Then group resolution for a user in
//! 1,000 groups nested 5 deep.
//!
//! Run: `cargo bench -p idbridge-tests --bench ldap` (BENCH_SECS, BENCH_ROUNDS, BENCH_CONNS;
//! BENCH_ONLY=floor, directory, added or login runs one case alone, for a profiler).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)] // a benchmark binary

mod common;

use common::serve_idbridge;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idbridge_bridge::{DirectoryLogin, Settings, ThrottlePolicy};
use idbridge_core::{Directory, DirectoryError, DirectoryUser, LoginCandidate};
use idbridge_directory::{DirectoryConfig, LdapDirectory};
use idbridge_tests::ldap::{SERVICE_DN, SUFFIX, Slapd};
use idbridge_tests::load::FormPoster;
use idbridge_tests::stats::{env_num, median, median_ratio, pct};
use ldap3::{LdapConnAsync, Scope, SearchEntry, ldap_escape};

const GROUPS: usize = 20;

/// One operation of a worker, run again and again.
type Op = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;
/// Makes worker `w`'s operation (connecting first, where the case needs connections).
type Maker = Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = Op> + Send>> + Send + Sync>;

fn maker<F, Fut>(f: F) -> Maker
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Op> + Send + 'static,
{
    Arc::new(move |w| Box::pin(f(w)))
}

fn directory(slapd: &Slapd, groups: &str) -> LdapDirectory {
    let yaml = slapd.directory_yaml(
        &[slapd.url()],
        // Plaintext like the raw ldap3 floor beside it: the comparison is of LDAP work alone.
        "pool_size: 16\ninsecure_plaintext: true",
        groups,
    );
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    let cfg: DirectoryConfig = serde_yaml_ng::from_value(v["directory"].clone()).unwrap();
    LdapDirectory::new(&cfg).unwrap()
}

/// A directory that answers from memory with the user slapd returned once: the password grant
/// through it is everything idbridge adds to the LDAP work (HTTP and TLS at both ends, the
/// account lookup, the durable session start, the signature, the audit line).
#[derive(Debug)]
struct Remembered {
    user: DirectoryUser,
    password: &'static str,
    real: Arc<LdapDirectory>,
}

#[async_trait::async_trait]
impl Directory for Remembered {
    async fn find_login(&self, _: &str) -> Result<LoginCandidate, DirectoryError> {
        Ok(LoginCandidate {
            key: format!("id:{}", self.user.id),
            found: true,
            state: Box::new(()),
        })
    }
    async fn check_password(
        &self,
        _: LoginCandidate,
        password: &str,
    ) -> Result<DirectoryUser, DirectoryError> {
        // A benchmark's stand-in, with a fixed password: no timing to hide here.
        if password == self.password {
            Ok(self.user.clone())
        } else {
            Err(DirectoryError::InvalidCredentials)
        }
    }
    async fn user_by_id(&self, _: &str) -> Result<Option<DirectoryUser>, DirectoryError> {
        Ok(Some(self.user.clone()))
    }
    async fn user_by_principal(&self, _: &str) -> Result<Option<DirectoryUser>, DirectoryError> {
        Ok(Some(self.user.clone()))
    }
    fn token_groups(&self, user: &DirectoryUser, audience: &str) -> (Vec<String>, usize) {
        self.real.token_groups(user, audience)
    }
}

/// Serves idbridge in process with `directory` for password logins, and returns what makes a
/// worker's login: each worker posts on its own keep-alive HTTP/1.1 connection with the light
/// client.
fn password_grant(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    directory: Arc<dyn Directory>,
) -> Maker {
    let mut settings = Settings::new("https://idbridge.bench".into());
    settings.directory = Some(DirectoryLogin {
        directory,
        jit: true,
        link_by_name: false,
        throttle: ThrottlePolicy {
            per_source: 1000,
            per_user_source: 1000,
            window: Duration::from_secs(60),
            per_user: 1_000_000,
            per_user_window: Duration::from_secs(60),
        },
    });
    let (_, addr, tls) = rt.block_on(serve_idbridge(dir, settings));
    let url = format!("https://localhost:{}/oauth2/token", addr.port());
    maker(move |_w: usize| {
        let (url, tls) = (url.clone(), tls.clone());
        async move {
            let poster = Arc::new(tokio::sync::Mutex::new(
                FormPoster::connect(&url, tls).await.unwrap(),
            ));
            Box::new(move || {
                let poster = poster.clone();
                Box::pin(async move {
                    let (status, body) = poster
                        .lock()
                        .await
                        .post(&[
                            ("grant_type", "password"),
                            ("username", "bench"),
                            ("password", "bench-pw-1"),
                        ])
                        .await
                        .unwrap();
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert!(v["access_token"].is_string());
                }) as Pin<Box<dyn Future<Output = ()> + Send>>
            }) as Op
        }
    })
}

/// One round: `conns` workers doing `op` back to back for `secs`; per-op latencies in ms.
async fn drive<F, Fut>(conns: u64, secs: u64, op: F) -> (f64, Vec<f64>)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Op> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conns as usize {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut once = op(w).await;
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                once().await;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
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

fn main() {
    let secs = env_num("BENCH_SECS", 3);
    let rounds = env_num("BENCH_ROUNDS", 5);
    let conns = env_num("BENCH_CONNS", 8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let slapd = rt.block_on(Slapd::start()).unwrap();
    let user_dn = rt.block_on(slapd.add_user("bench", "bench-pw-1")).unwrap();
    for g in 0..GROUPS {
        rt.block_on(slapd.add_group(&format!("team-{g:02}"), &[&user_dn]))
            .unwrap();
    }

    // idbridge in process, behind its own TLS stack; a second one whose directory answers from
    // memory, for what idbridge adds to the LDAP work.
    let ldap_dir = Arc::new(directory(&slapd, "nested: none"));
    let user = rt
        .block_on(ldap_dir.authenticate("bench", "bench-pw-1"))
        .unwrap();
    let login = password_grant(&rt, dir.path(), ldap_dir.clone());
    let remembered = tempfile::tempdir().unwrap();
    let added = password_grant(
        &rt,
        remembered.path(),
        Arc::new(Remembered {
            user,
            password: "bench-pw-1",
            real: ldap_dir,
        }),
    );
    let ldap_url = slapd.url();
    let service_pw = std::fs::read_to_string(&slapd.password_file)
        .unwrap()
        .trim()
        .to_owned();

    let floor = {
        let ldap_url = ldap_url.clone();
        move |_w: usize| {
            let ldap_url = ldap_url.clone();
            let service_pw = service_pw.clone();
            async move {
                let (c1, mut svc) = LdapConnAsync::new(&ldap_url).await.unwrap();
                ldap3::drive!(c1);
                let (c2, binder) = LdapConnAsync::new(&ldap_url).await.unwrap();
                ldap3::drive!(c2);
                svc.simple_bind(SERVICE_DN, &service_pw)
                    .await
                    .unwrap()
                    .success()
                    .unwrap();
                Box::new(move || {
                    let mut svc = svc.clone();
                    let mut binder = binder.clone();
                    Box::pin(async move {
                        let (rs, _) = svc
                            .search(
                                &format!("ou=people,{SUFFIX}"),
                                Scope::Subtree,
                                &format!(
                                    "(&(objectClass=inetOrgPerson)(uid={}))",
                                    ldap_escape("bench")
                                ),
                                vec!["uid", "entryUUID", "pwdAccountLockedTime"],
                            )
                            .await
                            .unwrap()
                            .success()
                            .unwrap();
                        let e = SearchEntry::construct(rs.into_iter().next().unwrap());
                        binder
                            .simple_bind(&e.dn, "bench-pw-1")
                            .await
                            .unwrap()
                            .success()
                            .unwrap();
                        let (gs, _) = svc
                            .search(
                                &format!("ou=groups,{SUFFIX}"),
                                Scope::Subtree,
                                &format!(
                                    "(&(objectClass=groupOfNames)(member={}))",
                                    ldap_escape(e.dn.as_str())
                                ),
                                vec!["cn"],
                            )
                            .await
                            .unwrap()
                            .success()
                            .unwrap();
                        assert_eq!(gs.len(), GROUPS);
                    }) as Pin<Box<dyn Future<Output = ()> + Send>>
                }) as Op
            }
        }
    };

    // idbridge's directory layer alone, in process: the same LDAP work through its pools, with
    // its escaping, paging and entry mapping, but no HTTP, session or signature.
    let layer = {
        let d = Arc::new(directory(&slapd, "nested: none"));
        move |_w: usize| {
            let d = d.clone();
            async move {
                Box::new(move || {
                    let d = d.clone();
                    Box::pin(async move {
                        let u = d.authenticate("bench", "bench-pw-1").await.unwrap();
                        assert_eq!(u.groups.len(), GROUPS);
                    }) as Pin<Box<dyn Future<Output = ()> + Send>>
                }) as Op
            }
        }
    };

    println!(
        "# LDAP login benchmark: {rounds} rounds x {secs}s, {conns} concurrent clients, slapd on loopback, user in {GROUPS} groups"
    );
    // The floor first: every ratio is to it. BENCH_ONLY=floor, directory, added or login runs
    // that case alone, for a profiler.
    let cases: [(&str, &str, Maker); 4] = [
        (
            "floor",
            "floor: raw ldap3 search + bind + group search",
            maker(floor),
        ),
        (
            "directory",
            "idbridge's directory layer alone, in process (the same LDAP work)",
            maker(layer),
        ),
        (
            "added",
            "idbridge `password` grant with a directory answering from memory (HTTP+TLS, session, ES256)",
            added,
        ),
        (
            "login",
            "idbridge `password` grant (HTTP+TLS, LDAP, session, ES256)",
            login,
        ),
    ];
    let only = std::env::var("BENCH_ONLY").ok();
    if let Some(o) = &only {
        assert!(
            cases.iter().any(|c| c.0 == o),
            "BENCH_ONLY: `floor`, `directory`, `added` or `login`, not {o:?}"
        );
    }
    // Per case: logins/s, p50 and p99 of each round. Round 0 is an untimed warm-up of one
    // second per case, so that no case pays for cold caches.
    let mut seen: Vec<[Vec<f64>; 3]> = vec![Default::default(); cases.len()];
    for r in 0..=rounds {
        for (i, (name, _, m)) in cases.iter().enumerate() {
            if only.as_ref().is_some_and(|o| o != name) {
                continue;
            }
            let m = m.clone();
            let (rate, mut lat) =
                rt.block_on(drive(conns, if r == 0 { 1 } else { secs }, move |w| m(w)));
            if r == 0 {
                continue;
            }
            let (a, b) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
            eprintln!("round {r}: {name:>9} {rate:>7.0}/s p50 {a:.2} ms p99 {b:.2} ms");
            for (v, x) in seen[i].iter_mut().zip([rate, a, b]) {
                v.push(x);
            }
        }
    }
    if only.is_some() {
        return;
    }
    println!("\n| case | logins/s (median) | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: |");
    for (i, (_, label, _)) in cases.iter().enumerate().rev() {
        let [rate, p50, p99] = &seen[i];
        println!(
            "| {label} | {:.0} | {:.2} | {:.2} |",
            median(rate.clone()),
            median(p50.clone()),
            median(p99.clone())
        );
    }
    let [frate, fp50, fp99] = &seen[0];
    for (i, (_, label, _)) in cases.iter().enumerate().skip(1) {
        let [rate, p50, p99] = &seen[i];
        println!(
            "\n{label}: latency p50 {:.2}x, p99 {:.2}x the floor; throughput {:.2} of the floor (medians of per-round ratios).",
            median_ratio(p50, fp50),
            median_ratio(p99, fp99),
            median_ratio(rate, frate)
        );
    }

    // Nested groups: a user in 200 groups, each the start of a chain 5 deep: 1,000 groups.
    let nested = rt.block_on(async {
        let u = slapd.add_user("deep", "deep-pw-1").await.unwrap();
        let mut ldif = String::new();
        for level in 0..5 {
            for i in 0..200 {
                let member = if level == 0 {
                    u.clone()
                } else {
                    format!("cn=n{}-{i},ou=groups,{SUFFIX}", level - 1)
                };
                ldif.push_str(&format!(
                    "dn: cn=n{level}-{i},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: n{level}-{i}\nmember: {member}\n\n"
                ));
            }
        }
        slapd.add(&ldif).await.unwrap();
        let d = directory(&slapd, "max: 2000");
        let id = d.authenticate("deep", "deep-pw-1").await.unwrap().id;
        let mut times = Vec::new();
        for _ in 0..15 {
            let t = Instant::now();
            let user = d.user_by_id(&id).await.unwrap().unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(user.groups.len(), 1000);
        }
        times
    });
    let mut n = nested.clone();
    println!(
        "\nNested groups: 1,000 groups 5 deep resolved in median {:.1} ms (p90 {:.1} ms, {} runs; target ≤ 50 ms).",
        median(nested),
        pct(&mut n, 0.9),
        n.len()
    );
}
