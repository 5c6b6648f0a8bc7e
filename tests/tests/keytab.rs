//! idbridge's keytab code against MIT Kerberos: a keytab `kadmin ktadd` wrote is read entry by
//! entry, the same entries written back by idbridge list the same in `klist -kteK`, and the KDC
//! takes their keys (`kinit -k`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use idbridge_kerberos::keytab;
use idbridge_tests::kdc::Kdc;
use idbridge_tests::ldap::program;
use tokio::process::Command;

async fn run(kdc: &Kdc, tool: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program(tool).unwrap())
        .args(args)
        .envs(kdc.env())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `klist -kteK` without its first line (which names the file).
async fn listing(kdc: &Kdc, file: &std::path::Path) -> String {
    let (ok, out) = run(kdc, "klist", &["-kteK", file.to_str().unwrap()]).await;
    assert!(ok, "{out}");
    out.lines().skip(1).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn keytabs_round_trip_with_mit_kerberos_and_the_kdc_takes_their_keys() {
    let kdc = Kdc::start("KEYTAB.TEST").await.unwrap();
    let svc = kdc.add_service("svc/app.keytab.test").await.unwrap();
    // A second key version, so the file holds a kvno other than 1.
    kdc.rotate_key("svc/app.keytab.test").await.unwrap();
    let mit = kdc.dir().join("mit.keytab");
    kdc.export_keytab(&mit, &["svc/app.keytab.test"])
        .await
        .unwrap();

    let entries = keytab::parse(&std::fs::read(&mit).unwrap()).unwrap();
    assert!(!entries.is_empty());
    for e in &entries {
        assert_eq!(e.principal(), svc);
        assert_eq!(e.kvno, 2, "{e:?}");
        assert!(!e.key().is_empty());
    }
    assert!(
        entries.iter().any(|e| e.enctype == 18),
        "aes256-cts-hmac-sha1-96 among {entries:?}"
    );

    // Written back by idbridge: MIT lists the very same entries and keys.
    let ours = kdc.dir().join("ours.keytab");
    std::fs::write(&ours, keytab::to_bytes(&entries).unwrap()).unwrap();
    assert_eq!(listing(&kdc, &ours).await, listing(&kdc, &mit).await);

    // And the KDC takes the keys of idbridge's file.
    let cc = kdc.dir().join("svc.cc");
    let (ok, out) = run(
        &kdc,
        "kinit",
        &[
            "-k",
            "-t",
            ours.to_str().unwrap(),
            "-c",
            &format!("FILE:{}", cc.display()),
            &svc,
        ],
    )
    .await;
    assert!(ok, "kinit -k with idbridge's keytab: {out}");
    let (ok, out) = run(&kdc, "klist", &["-c", &format!("FILE:{}", cc.display())]).await;
    assert!(ok && out.contains(&svc), "{out}");
}
