//! idbridge's keytab code against MIT Kerberos: a keytab `kadmin ktadd` wrote is read entry by
//! entry, the same entries written back by idbridge list the same in `klist -kteK`, and the KDC
//! takes their keys (`kinit -k`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // end-to-end tests fail loudly by design

use idbridge_kerberos::keytab::{self, KeytabEntry};
use idbridge_tests::kdc::Kdc;
use idbridge_tests::ldap::program;

async fn run(kdc: &Kdc, tool: &str, args: &[&str]) -> (bool, String) {
    kdc.client(tool, args).await
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

#[tokio::test]
async fn mit_kadmin_creates_extracts_unchanged_and_rotates_keeping_the_old_version() {
    let mut kdc = Kdc::start("KADMIN.TEST").await.unwrap();
    let admin = kdc.start_admin().await.unwrap();
    let k = idbridge_kerberos::kadmin::MitKadmin {
        program: program("kadmin").unwrap(),
        principal: admin.principal.clone(),
        keytab: admin.keytab.clone(),
        server: Some(admin.server.clone()),
        env: kdc
            .env()
            .into_iter()
            .map(|(a, b)| (a.into(), b.into()))
            .collect(),
    };
    let svc = "web/pod.kadmin.test";
    assert!(k.ensure_principal(svc).await.unwrap(), "created");
    assert!(!k.ensure_principal(svc).await.unwrap(), "exists already");
    let first = k.keys(svc).await.unwrap();
    assert!(
        !first.is_empty() && first.iter().all(|e| e.kvno == 1),
        "{first:?}"
    );
    // Extracting does not change the keys.
    let again = k.keys(svc).await.unwrap();
    assert_eq!(
        first.iter().map(KeytabEntry::key).collect::<Vec<_>>(),
        again.iter().map(KeytabEntry::key).collect::<Vec<_>>()
    );
    // Rotation: a new version, the old one kept beside it.
    assert_eq!(k.rotate(svc, true).await.unwrap(), 2);
    let both = k.keys(svc).await.unwrap();
    let versions: std::collections::BTreeSet<u32> = both.iter().map(|e| e.kvno).collect();
    assert_eq!(versions, [1, 2].into());
    // The keys of the new version get a ticket from the KDC.
    let file = kdc.dir().join("pod.keytab");
    let new: Vec<KeytabEntry> = both.iter().filter(|e| e.kvno == 2).cloned().collect();
    std::fs::write(&file, keytab::to_bytes(&new).unwrap()).unwrap();
    let cc = format!("FILE:{}", kdc.dir().join("pod.cc").display());
    let principal = format!("{svc}@KADMIN.TEST");
    let (ok, out) = run(
        &kdc,
        "kinit",
        &["-k", "-t", file.to_str().unwrap(), "-c", &cc, &principal],
    )
    .await;
    assert!(ok, "{out}");
    // Names that could be more than a name never reach kadmin.
    for bad in ["x -pw y", "a;b", "-randkey"] {
        assert!(
            matches!(
                k.ensure_principal(bad).await,
                Err(idbridge_kerberos::kadmin::KadminError::Name(_))
            ),
            "{bad}"
        );
    }
}
