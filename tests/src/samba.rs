//! A real Active Directory domain controller (Samba AD) for the `active-directory` preset.
//!
//! The one fixed-port exception of the testkit: AD's LDAP ports cannot be moved, so the domain is
//! provisioned once per test run in a temp dir and serves LDAPS on 127.0.0.1:636 only, under a
//! file lock so two runs on one machine never share it. Tests that use it run one at a time.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::ldap::{program, test_ca};

/// The domain's base DN.
pub const BASE: &str = "DC=idb,DC=test";
/// The service account idbridge searches with.
pub const SERVICE_USER: &str = "idbridge-svc";
const ADMIN_PASSWORD: &str = "Adm1n-Passw0rd!";
const SERVICE_PASSWORD: &str = "Svc-Passw0rd-1!";
/// The fixed LDAPS port.
pub const LDAPS_PORT: u16 = 636;

/// A running Samba AD DC.
#[derive(Debug)]
pub struct SambaAd {
    dir: tempfile::TempDir,
    child: Child,
    _lock: std::fs::File,
    /// The test CA (PEM) that issued the DC's certificate.
    pub ca_file: PathBuf,
    /// A file holding the service account's password.
    pub password_file: PathBuf,
}

impl SambaAd {
    /// Provisions the domain `IDB.TEST`, starts the DC's LDAP service and creates the service
    /// account.
    ///
    /// # Errors
    /// If Samba is missing (the message names scripts/setup), the fixed port is taken, or the
    /// DC does not start.
    pub async fn start() -> anyhow::Result<Self> {
        let samba = program("samba")?;
        program("samba-tool")?;
        let lock_path = std::env::temp_dir().join("idbridge-samba-ad.lock");
        let lock = std::fs::File::create(&lock_path)?;
        lock.lock()
            .with_context(|| format!("lock {}", lock_path.display()))?;
        if std::net::TcpListener::bind(("127.0.0.1", LDAPS_PORT)).is_err() {
            bail!("port {LDAPS_PORT} on 127.0.0.1 is taken; the Samba AD tests need it");
        }
        let dir = crate::scratch();
        let d = dir.path();
        let (ca_file, cert, key) = test_ca(d, "samba")?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        }
        let target = d.join("dc");
        let out = Command::new("samba-tool")
            .args([
                "domain",
                "provision",
                "--realm=IDB.TEST",
                "--domain=IDB",
                "--server-role=dc",
                "--dns-backend=NONE",
                "--host-name=idbdc",
                &format!("--adminpass={ADMIN_PASSWORD}"),
                &format!("--targetdir={}", target.display()),
                "--option=netbios name = IDBDC",
                "--option=interfaces = 127.0.0.1",
                "--option=bind interfaces only = yes",
                "--option=server services = ldap",
                &format!("--option=log file = {}", d.join("samba.log").display()),
                &format!("--option=pid directory = {}", target.display()),
                "--option=tls enabled = yes",
                &format!("--option=tls keyfile = {}", key.display()),
                &format!("--option=tls certfile = {}", cert.display()),
                &format!("--option=tls cafile = {}", ca_file.display()),
            ])
            .output()
            .await
            .context("cannot run samba-tool")?;
        if !out.status.success() {
            bail!(
                "samba-tool domain provision failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let conf = target.join("etc/smb.conf");
        let log = d.join("samba.out");
        let mut child = Command::new(samba)
            .args(["-i", "-M", "single", "-s"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::from(std::fs::File::create(d.join("samba.err"))?))
            .kill_on_drop(true)
            .spawn()
            .context("cannot start samba")?;
        let mut up = false;
        for _ in 0..600 {
            if tokio::net::TcpStream::connect(("127.0.0.1", LDAPS_PORT))
                .await
                .is_ok()
            {
                up = true;
                break;
            }
            if let Some(st) = child.try_wait()? {
                bail!(
                    "samba exited ({st}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if !up {
            bail!("samba did not listen on port {LDAPS_PORT} within 30 s");
        }
        let password_file = d.join("service.password");
        std::fs::write(&password_file, format!("{SERVICE_PASSWORD}\n"))?;
        let s = Self {
            dir,
            child,
            _lock: lock,
            ca_file,
            password_file,
        };
        s.tool(&["user", "create", SERVICE_USER, SERVICE_PASSWORD])
            .await?;
        Ok(s)
    }

    fn target(&self) -> PathBuf {
        self.dir.path().join("dc")
    }

    /// Runs `samba-tool ARGS` against the domain's database.
    ///
    /// # Errors
    /// If it fails; the error holds its output.
    pub async fn tool(&self, args: &[&str]) -> anyhow::Result<String> {
        let t = self.target();
        let out = Command::new("samba-tool")
            .args(args)
            .arg("-s")
            .arg(t.join("etc/smb.conf"))
            .arg("-H")
            .arg(format!("tdb://{}", t.join("private/sam.ldb").display()))
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "samba-tool {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A raw simple bind over LDAPS (not through idbridge): true on success.
    ///
    /// # Errors
    /// If ldapwhoami cannot run.
    pub async fn bind(&self, user: &str, password: &str) -> anyhow::Result<bool> {
        let out = Command::new(program("ldapwhoami")?)
            .args([
                "-x",
                "-H",
                &format!("ldaps://127.0.0.1:{LDAPS_PORT}"),
                "-D",
                &format!("{user}@idb.test"),
                "-w",
                password,
            ])
            .env("LDAPTLS_CACERT", &self.ca_file)
            .output()
            .await?;
        // Samba does not implement the Who-am-I operation: a bind that succeeded fails there.
        let text = String::from_utf8_lossy(&out.stderr);
        Ok(out.status.success() || !text.contains("ldap_bind"))
    }

    /// A `directory:` config section for the DC (active-directory preset); `extra` goes inside
    /// the section, `groups` inside its `groups:`.
    #[must_use]
    pub fn directory_yaml(&self, extra: &str, groups: &str) -> String {
        let mut y = format!(
            "directory:\n  preset: active-directory\n  urls: [\"ldaps://127.0.0.1:{LDAPS_PORT}\"]\n  ca_file: {ca:?}\n  bind_dn: \"CN={SERVICE_USER},CN=Users,{BASE}\"\n  bind_password_file: {pw:?}\n  connect_timeout: 5s\n  timeout: 10s\n  users:\n    base: \"CN=Users,{BASE}\"\n  groups:\n    base: \"{BASE}\"\n",
            ca = self.ca_file.display().to_string(),
            pw = self.password_file.display().to_string(),
        );
        crate::indent_into(&mut y, groups, "    ");
        crate::indent_into(&mut y, extra, "  ");
        y
    }

    /// The DC's data dir (for diagnostics).
    #[must_use]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
