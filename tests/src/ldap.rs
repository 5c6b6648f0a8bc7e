//! A real OpenLDAP `slapd` per test: its own config and database in a temp dir, loopback
//! ephemeral ports for `ldap://` (StartTLS-capable) and `ldaps://`, a test CA, the memberOf
//! overlay, and ppolicy locking a user after three failed binds.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// The suffix of every test directory.
pub const SUFFIX: &str = "dc=idbridge,dc=test";
/// The service account idbridge searches with.
pub const SERVICE_DN: &str = "cn=idbridge,ou=services,dc=idbridge,dc=test";
const SERVICE_PASSWORD: &str = "service-secret-1";
const ROOT_DN: &str = "cn=admin,dc=idbridge,dc=test";
const ROOT_PASSWORD: &str = "root-secret-1";

/// A free loopback port (bound, then released for the server to take).
///
/// # Errors
/// If no port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Where a program the tests need is, or an error naming the setup step that installs it.
///
/// # Errors
/// If it is not installed.
pub fn program(name: &str) -> anyhow::Result<PathBuf> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("`{name}` is not installed: run scripts/setup (it installs the test servers)")
}

/// A CA and a server certificate for `localhost`, 127.0.0.1 and ::1, as PEM files in `dir`.
///
/// # Errors
/// If the files cannot be written.
pub fn test_ca(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let cert = params.signed_by(&key, &issuer)?;
    let (ca_p, cert_p, key_p) = (
        dir.join(format!("{name}-ca.crt")),
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&ca_p, ca_cert.pem())?;
    std::fs::write(&cert_p, cert.pem())?;
    std::fs::write(&key_p, key.serialize_pem())?;
    Ok((ca_p, cert_p, key_p))
}

/// Waits until something accepts TCP connections on `port`.
pub(crate) async fn wait_port(
    port: u16,
    child: &mut Child,
    what: &str,
    log: &Path,
) -> anyhow::Result<()> {
    for _ in 0..200 {
        // A connect to a loopback port nobody listens on yet can meet itself (TCP
        // simultaneous open, when the kernel picks that very port as the source): not a server.
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
            && s.local_addr().ok() != s.peer_addr().ok()
        {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!(
                "{what} exited ({st}) before listening: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("{what} did not listen on port {port} within 5 s")
}

/// A running slapd.
#[derive(Debug)]
pub struct Slapd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The `ldap://` port.
    pub port: u16,
    /// The `ldaps://` port.
    pub ldaps_port: u16,
    /// The test CA (PEM) that issued slapd's certificate.
    pub ca_file: PathBuf,
    /// A file holding the service account's password.
    pub password_file: PathBuf,
}

impl Slapd {
    /// Starts slapd with the base tree (people, groups, services, policies) loaded.
    ///
    /// # Errors
    /// If slapd is missing (the message names scripts/setup) or does not start.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_loaded(None).await
    }

    /// Starts slapd with the base tree and the entries of the LDIF file `bulk` loaded by
    /// `slapadd` before it starts: fast for hundreds of thousands of entries, which over the
    /// protocol take minutes (overlays do not run, so no memberOf is kept).
    ///
    /// # Errors
    /// As [`Slapd::start`], and when slapadd fails.
    pub async fn start_bulk(bulk: &Path) -> anyhow::Result<Self> {
        Self::start_loaded(Some(bulk)).await
    }

    async fn start_loaded(bulk: Option<&Path>) -> anyhow::Result<Self> {
        let slapd = program("slapd")?;
        program("ldapadd")?;
        let dir = crate::scratch();
        let d = dir.path();
        std::fs::create_dir_all(d.join("db"))?;
        let (ca_file, cert, key) = test_ca(d, "slapd")?;
        let password_file = d.join("service.password");
        std::fs::write(&password_file, format!("{SERVICE_PASSWORD}\n"))?;
        let conf = format!(
            r#"include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
# The Kerberos principal attribute of MIT's kerberos.schema, for Kerberos logins that look
# their users up in the directory.
attributetype ( 2.16.840.1.113719.1.301.4.1.1 NAME 'krbPrincipalName'
  EQUALITY caseExactIA5Match SUBSTR caseExactSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{{256}} )
objectclass ( 2.16.840.1.113719.1.301.6.8.1 NAME 'krbPrincipalAux' SUP top AUXILIARY
  MAY ( krbPrincipalName ) )
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
moduleload ppolicy
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
TLSCACertificateFile {ca}
sizelimit unlimited
database mdb
maxsize 268435456
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PASSWORD}
directory {d}/db
index objectClass eq
index uid,cn eq
index member eq
index entryUUID eq
index krbPrincipalName eq
overlay memberof
memberof-refint TRUE
overlay ppolicy
ppolicy_default "cn=default,ou=policies,{SUFFIX}"
ppolicy_use_lockout
access to attrs=userPassword
  by self write
  by anonymous auth
  by * none
access to *
  by dn.exact="{SERVICE_DN}" read
  by self read
  by * none
"#,
            d = d.display(),
            cert = cert.display(),
            key = key.display(),
            ca = ca_file.display(),
        );
        std::fs::write(d.join("slapd.conf"), conf)?;
        let mut s = Self {
            port: free_port()?,
            ldaps_port: free_port()?,
            dir,
            child: None,
            ca_file,
            password_file,
        };
        let base = format!(
            r"dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: idbridge test
dc: idbridge

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{SUFFIX}
objectClass: organizationalUnit
ou: groups

dn: ou=services,{SUFFIX}
objectClass: organizationalUnit
ou: services

dn: ou=policies,{SUFFIX}
objectClass: organizationalUnit
ou: policies

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: idbridge
userPassword: {SERVICE_PASSWORD}

dn: cn=default,ou=policies,{SUFFIX}
objectClass: organizationalRole
objectClass: pwdPolicy
cn: default
pwdAttribute: userPassword
pwdMaxFailure: 3
pwdLockout: TRUE
pwdLockoutDuration: 0
pwdFailureCountInterval: 0
"
        );
        match bulk {
            None => {
                s.run_on_free_ports(&slapd).await?;
                s.add(&base).await?;
            }
            Some(file) => {
                let d = s.dir.path().to_owned();
                std::fs::write(d.join("base.ldif"), &base)?;
                for ldif in [d.join("base.ldif"), file.to_owned()] {
                    let out = Command::new(program("slapadd")?)
                        .arg("-q")
                        .arg("-f")
                        .arg(d.join("slapd.conf"))
                        .arg("-l")
                        .arg(&ldif)
                        .output()
                        .await?;
                    if !out.status.success() {
                        bail!(
                            "slapadd {} failed: {}",
                            ldif.display(),
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                }
                s.run_on_free_ports(&slapd).await?;
            }
        }
        Ok(s)
    }

    /// Starts slapd, on new ports when the ones picked were taken meanwhile: a port is free
    /// when picked, and another server of a test running beside this one may bind it before
    /// slapd does (slapd then exits, and the port answers for that other server).
    async fn run_on_free_ports(&mut self, slapd: &Path) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..5 {
            match self.run(slapd).await {
                Ok(()) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let exited = match self.child.as_mut() {
                        Some(c) => c.try_wait()?.is_some(),
                        None => true,
                    };
                    if !exited {
                        return Ok(());
                    }
                    last = Some(anyhow::anyhow!(
                        "slapd exited right after starting: {}",
                        self.log()
                    ));
                }
                Err(e) => last = Some(e),
            }
            self.child = None;
            self.port = free_port()?;
            self.ldaps_port = free_port()?;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("slapd did not start")))
    }

    async fn run(&mut self, slapd: &Path) -> anyhow::Result<()> {
        let d = self.dir.path();
        let log = d.join("slapd.log");
        let mut child = Command::new(slapd)
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .arg("-h")
            // The same ports on ::1 too, for IPv6 URLs, where the machine has IPv6 loopback (a
            // test of IPv6 URLs then fails saying so).
            .arg(if std::net::TcpListener::bind("[::1]:0").is_ok() {
                format!(
                    "ldap://127.0.0.1:{p}/ ldaps://127.0.0.1:{s}/ ldap://[::1]:{p}/ ldaps://[::1]:{s}/",
                    p = self.port,
                    s = self.ldaps_port
                )
            } else {
                format!(
                    "ldap://127.0.0.1:{p}/ ldaps://127.0.0.1:{s}/",
                    p = self.port,
                    s = self.ldaps_port
                )
            })
            // Foreground, logging operations (stats) to slapd.log.
            .arg("-d")
            .arg("stats")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)?,
            )
            .kill_on_drop(true)
            .spawn()
            .context("cannot start slapd")?;
        wait_port(self.port, &mut child, "slapd", &log).await?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops slapd (SIGKILL, as a crash would); its data stays.
    ///
    /// # Errors
    /// If it cannot be killed.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    /// The running slapd's process id.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Starts slapd again on the same ports with the same data.
    ///
    /// # Errors
    /// If it does not start.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.run(&program("slapd")?).await
    }

    /// How many binds slapd has answered so far (from its operation log).
    #[must_use]
    pub fn binds(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("slapd.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" BIND dn="))
            .count()
    }

    /// slapd's operation log.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// `ldap://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// The same servers on IPv6 loopback: `ldap://[::1]:PORT` and `ldaps://[::1]:PORT`.
    ///
    /// # Panics
    /// When this machine has no IPv6 loopback (`::1`), saying so.
    #[must_use]
    pub fn ipv6_urls(&self) -> (String, String) {
        assert!(
            std::net::TcpListener::bind("[::1]:0").is_ok(),
            "this machine has no IPv6 loopback (::1): the IPv6 directory tests need it"
        );
        (
            format!("ldap://[::1]:{}", self.port),
            format!("ldaps://[::1]:{}", self.ldaps_port),
        )
    }

    /// `ldaps://localhost:PORT` (the certificate names localhost and 127.0.0.1).
    #[must_use]
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    async fn ldap_tool(&self, tool: &str, args: &[&str], ldif: &str) -> anyhow::Result<String> {
        use tokio::io::AsyncWriteExt;
        let mut child = Command::new(program(tool)?)
            .args(["-x", "-H", &self.url(), "-D", ROOT_DN, "-w", ROOT_PASSWORD])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(ldif.as_bytes()).await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Adds entries (LDIF) as the root DN, so overlays (memberOf) see them.
    ///
    /// # Errors
    /// If ldapadd fails.
    pub async fn add(&self, ldif: &str) -> anyhow::Result<()> {
        self.ldap_tool("ldapadd", &[], ldif).await.map(drop)
    }

    /// Adds a referral entry `dn` pointing at `url` (with the ManageDsaIT control, as a
    /// referral object needs).
    ///
    /// # Errors
    /// If ldapadd fails.
    pub async fn add_referral(&self, dn: &str, url: &str) -> anyhow::Result<()> {
        let rdn = dn.split(',').next().unwrap_or_default();
        let (attr, value) = rdn.split_once('=').unwrap_or(("ou", "referral"));
        self.ldap_tool(
            "ldapadd",
            &["-M"],
            &format!(
                "dn: {dn}\nobjectClass: referral\nobjectClass: extensibleObject\n{attr}: {value}\nref: {url}\n"
            ),
        )
        .await
        .map(drop)
    }

    /// Applies an LDIF of changes as the root DN.
    ///
    /// # Errors
    /// If ldapmodify fails.
    pub async fn modify(&self, ldif: &str) -> anyhow::Result<()> {
        self.ldap_tool("ldapmodify", &[], ldif).await.map(drop)
    }

    /// The attributes `attrs` of the entry `dn` (operational ones included), as LDIF.
    ///
    /// # Errors
    /// If ldapsearch fails.
    pub async fn read(&self, dn: &str, attrs: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["-LLL", "-b", dn, "-s", "base", "(objectClass=*)"];
        args.extend_from_slice(attrs);
        self.ldap_tool("ldapsearch", &args, "").await
    }

    /// Binds as `dn` with `password` (a raw bind, not through idbridge): true on success.
    ///
    /// # Errors
    /// If ldapwhoami cannot run.
    pub async fn bind(&self, dn: &str, password: &str) -> anyhow::Result<bool> {
        let out = Command::new(program("ldapwhoami")?)
            .args(["-x", "-H", &self.url(), "-D", dn, "-w", password])
            .output()
            .await?;
        Ok(out.status.success())
    }

    /// Adds a person under ou=people with a password.
    ///
    /// # Errors
    /// If ldapadd fails.
    pub async fn add_user(&self, uid: &str, password: &str) -> anyhow::Result<String> {
        let dn = format!("uid={uid},ou=people,{SUFFIX}");
        self.add(&format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {password}\n"
        ))
        .await?;
        Ok(dn)
    }

    /// Adds a group under ou=groups with these member DNs.
    ///
    /// # Errors
    /// If ldapadd fails.
    pub async fn add_group(&self, cn: &str, members: &[&str]) -> anyhow::Result<String> {
        let dn = format!("cn={cn},ou=groups,{SUFFIX}");
        let mut ldif = format!("dn: {dn}\nobjectClass: groupOfNames\ncn: {cn}\n");
        for m in members {
            ldif.push_str(&format!("member: {m}\n"));
        }
        self.add(&ldif).await?;
        Ok(dn)
    }

    /// A `directory:` config section for idbridge pointing at this slapd (OpenLDAP preset);
    /// `extra` is appended inside the section, `groups` inside its `groups:`.
    #[must_use]
    pub fn directory_yaml(&self, urls: &[String], extra: &str, groups: &str) -> String {
        let urls = urls
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut y = format!(
            "directory:\n  preset: openldap\n  urls: [{urls}]\n  ca_file: {ca:?}\n  bind_dn: {SERVICE_DN:?}\n  bind_password_file: {pw:?}\n  connect_timeout: 2s\n  timeout: 5s\n  retry_dead_after: 30s\n  users:\n    base: \"ou=people,{SUFFIX}\"\n  groups:\n    base: \"ou=groups,{SUFFIX}\"\n",
            ca = self.ca_file.display().to_string(),
            pw = self.password_file.display().to_string(),
        );
        crate::indent_into(&mut y, groups, "    ");
        // Plain ldap:// URLs go through StartTLS, unless the test is about plaintext.
        if urls.contains("ldap://")
            && !extra.contains("insecure_plaintext")
            && !extra.contains("start_tls")
        {
            crate::indent_into(&mut y, "start_tls: true", "  ");
        }
        crate::indent_into(&mut y, extra, "  ");
        y
    }
}
