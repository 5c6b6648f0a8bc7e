//! An MIT Kerberos realm for tests: `kdb5_util create` in a temporary directory, principals and
//! keytabs through `kadmin.local`, and `krb5kdc` on an ephemeral loopback port. Its own
//! `krb5.conf` and `kdc.conf`: nothing of the machine's Kerberos set-up is read or changed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::ldap::{free_port, program};

/// The KDC database's master password (test only).
const MASTER_PASSWORD: &str = "kdc-master-password";

/// A running realm.
#[derive(Debug)]
pub struct Kdc {
    dir: tempfile::TempDir,
    /// The realm name.
    pub realm: String,
    /// The KDC's TCP and UDP port on 127.0.0.1.
    pub port: u16,
    /// kadmind's port on 127.0.0.1 (it runs once [`Kdc::start_admin`] started it).
    pub admin_port: u16,
    kpasswd_port: u16,
    child: Option<Child>,
    admin: Option<Child>,
}

/// An admin principal of a running kadmind, with its keytab.
#[derive(Debug, Clone)]
pub struct KdcAdmin {
    /// `idbridge/admin@REALM`.
    pub principal: String,
    /// Its keytab.
    pub keytab: PathBuf,
    /// `127.0.0.1:<port>`, the admin server.
    pub server: String,
}

impl Kdc {
    /// Creates the realm `realm` and starts its KDC.
    ///
    /// # Errors
    /// If the MIT tools are missing (the message names scripts/setup) or the KDC does not start.
    pub async fn start(realm: &str) -> anyhow::Result<Self> {
        let krb5kdc = program("krb5kdc")?;
        let kdb5_util = program("kdb5_util")?;
        program("kadmin.local")?;
        program("kinit")?;
        let dir = crate::scratch();
        let port = free_port()?;
        let mut kdc = Self {
            dir,
            realm: realm.to_owned(),
            port,
            admin_port: free_port()?,
            kpasswd_port: free_port()?,
            child: None,
            admin: None,
        };
        kdc.write_config(port)?;
        let out = kdc
            .command(&kdb5_util)
            .args(["create", "-s", "-r", realm, "-P", MASTER_PASSWORD])
            .output()
            .await
            .context("cannot run kdb5_util")?;
        if !out.status.success() {
            bail!(
                "kdb5_util create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let log = kdc.dir.path().join("krb5kdc.stderr");
        let mut child = kdc
            .command(&krb5kdc)
            .args(["-n", "-r", realm])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start krb5kdc")?;
        crate::ldap::wait_port(port, &mut child, "krb5kdc", &log).await?;
        kdc.child = Some(child);
        Ok(kdc)
    }

    fn write_config(&self, port: u16) -> anyhow::Result<()> {
        let d = self.dir.path().display();
        let realm = &self.realm;
        let (admin, kpasswd) = (self.admin_port, self.kpasswd_port);
        std::fs::write(
            self.kdc_conf(),
            format!(
                r"[kdcdefaults]
    kdc_listen = 127.0.0.1:{port}
    kdc_tcp_listen = 127.0.0.1:{port}

[realms]
    {realm} = {{
        database_name = {d}/principal
        key_stash_file = {d}/stash
        acl_file = {d}/kadm5.acl
        kadmind_listen = 127.0.0.1:{admin}
        kpasswd_listen = 127.0.0.1:{kpasswd}
        max_life = 10h
        max_renewable_life = 1d
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }}

[logging]
    kdc = FILE:{d}/kdc.log
    admin_server = FILE:{d}/kadmin.log
"
            ),
        )?;
        std::fs::write(
            self.krb5_conf(),
            format!(
                r"[libdefaults]
    default_realm = {realm}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
    default_ccache_name = FILE:{d}/no-default-ccache

[realms]
    {realm} = {{
        kdc = 127.0.0.1:{port}
        admin_server = 127.0.0.1:{admin}
    }}

[domain_realm]
    localhost = {realm}
    127.0.0.1 = {realm}
    .test = {realm}
"
            ),
        )?;
        std::fs::write(self.dir.path().join("kadm5.acl"), "")?;
        Ok(())
    }

    /// Starts kadmind with an admin principal `idbridge/admin` that may add, inquire, change,
    /// extract keys and modify (purge old keys): `aicem`, and writes its keytab.
    ///
    /// # Errors
    /// If kadmind is missing or does not start.
    pub async fn start_admin(&mut self) -> anyhow::Result<KdcAdmin> {
        let kadmind = program("kadmind")?;
        let principal = format!("idbridge/admin@{}", self.realm);
        std::fs::write(
            self.dir.path().join("kadm5.acl"),
            format!("{principal} aicem\n"),
        )?;
        self.kadmin("addprinc -randkey idbridge/admin").await?;
        let keytab = self.dir.path().join("admin.keytab");
        self.kadmin(&format!("ktadd -k {} idbridge/admin", keytab.display()))
            .await?;
        let log = self.dir.path().join("kadmind.stderr");
        let mut child = self
            .command(&kadmind)
            .args(["-nofork", "-r", &self.realm, "-P"])
            .arg(self.dir.path().join("kadmind.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start kadmind")?;
        crate::ldap::wait_port(self.admin_port, &mut child, "kadmind", &log).await?;
        self.admin = Some(child);
        Ok(KdcAdmin {
            principal,
            keytab,
            server: format!("127.0.0.1:{}", self.admin_port),
        })
    }

    /// The realm's `krb5.conf`: point `KRB5_CONFIG` at it.
    #[must_use]
    pub fn krb5_conf(&self) -> PathBuf {
        self.dir.path().join("krb5.conf")
    }

    fn kdc_conf(&self) -> PathBuf {
        self.dir.path().join("kdc.conf")
    }

    /// The temporary directory of the realm (for keytabs and ticket caches).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Environment that makes Kerberos clients and servers use this realm.
    #[must_use]
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("KRB5_CONFIG".into(), self.krb5_conf().display().to_string()),
            (
                "KRB5_KDC_PROFILE".into(),
                self.kdc_conf().display().to_string(),
            ),
            // Replay caches of clients and of anything else started with this environment stay
            // in the realm's directory.
            (
                "KRB5RCACHEDIR".into(),
                self.dir.path().display().to_string(),
            ),
        ]
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env());
        c
    }

    /// Runs a Kerberos client tool (`klist`, `kvno`, `kinit`, …) in this realm, with no
    /// credential cache from the environment: whether it succeeded, and its standard output
    /// and error.
    ///
    /// # Panics
    /// If the tool is not installed or cannot be started (`scripts/setup` installs it).
    pub async fn client(&self, tool: &str, args: &[&str]) -> (bool, String) {
        let out = self
            .command(&program(tool).expect("a Kerberos client tool (run scripts/setup)"))
            .args(args)
            .env_remove("KRB5CCNAME")
            .output()
            .await
            .expect("run a Kerberos client tool");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Runs one `kadmin.local` query.
    ///
    /// # Errors
    /// If it fails; the error holds its output.
    pub async fn kadmin(&self, query: &str) -> anyhow::Result<String> {
        let out = self
            .command(&program("kadmin.local")?)
            .args(["-r", &self.realm, "-q", query])
            .output()
            .await
            .context("cannot run kadmin.local")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // kadmin.local exits 0 even when the query failed; it says so on standard error, where
        // otherwise only the "no policy" notice appears.
        let failed = stderr
            .lines()
            .any(|l| !l.trim().is_empty() && !l.starts_with("No policy specified"));
        if !out.status.success() || failed {
            bail!("kadmin.local -q {query:?} failed: {stderr}");
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Adds a user principal with a password; returns `name@REALM`.
    ///
    /// # Errors
    /// If kadmin fails.
    pub async fn add_user(&self, name: &str, password: &str) -> anyhow::Result<String> {
        self.kadmin(&format!("addprinc -pw {password} {name}"))
            .await?;
        Ok(format!("{name}@{}", self.realm))
    }

    /// Adds a service principal with a random key; returns `name@REALM`.
    ///
    /// # Errors
    /// If kadmin fails.
    pub async fn add_service(&self, name: &str) -> anyhow::Result<String> {
        self.kadmin(&format!("addprinc -randkey {name}")).await?;
        Ok(format!("{name}@{}", self.realm))
    }

    /// Writes the current keys of `principals` to the keytab `path` (appending to it), without
    /// changing them.
    ///
    /// # Errors
    /// If kadmin fails.
    pub async fn export_keytab(&self, path: &Path, principals: &[&str]) -> anyhow::Result<()> {
        for p in principals {
            self.kadmin(&format!("ktadd -norandkey -k {} {p}", path.display()))
                .await?;
        }
        Ok(())
    }

    /// Gives `principal` a new random key (a new kvno) in the database only.
    ///
    /// # Errors
    /// If kadmin fails.
    pub async fn rotate_key(&self, principal: &str) -> anyhow::Result<()> {
        self.kadmin(&format!("cpw -randkey {principal}"))
            .await
            .map(drop)
    }

    /// `kinit` into the ticket cache `ccache` (a file path), with `lifetime` if given.
    ///
    /// # Errors
    /// If kinit fails; the error holds its output.
    pub async fn kinit(
        &self,
        principal: &str,
        password: &str,
        ccache: &Path,
        lifetime: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut cmd = self.command(&program("kinit")?);
        cmd.arg("-c").arg(format!("FILE:{}", ccache.display()));
        if let Some(l) = lifetime {
            cmd.args(["-l", l]);
        }
        let mut child = cmd
            .arg(principal)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run kinit")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(format!("{password}\n").as_bytes()).await?;
        }
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .context("kinit did not finish")??;
        if !out.status.success() {
            bail!(
                "kinit {principal} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The KDC's log (requests and their outcomes).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kdc.log")).unwrap_or_default()
    }
}

/// A real client's Negotiate token for `HTTP@<host>`: `curl --negotiate` is pointed at a
/// one-shot listener on 127.0.0.1 (reached as `host:port`, so `host` must resolve there) that
/// answers the challenge and keeps the `Authorization` header curl sends back.
///
/// # Errors
/// If curl is missing, fails, or sends no Negotiate token.
pub async fn curl_negotiate_token(
    env: &[(String, String)],
    ccache: &Path,
    host: &str,
) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    use tokio::io::{AsyncBufReadExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let mut curl = Command::new(program("curl")?)
        .args(["-s", "-o", "/dev/null", "--negotiate", "-u", ":"])
        .arg(format!("http://{host}:{port}/"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("KRB5CCNAME", format!("FILE:{}", ccache.display()))
        .kill_on_drop(true)
        .spawn()
        .context("cannot run curl")?;
    let serve = async {
        loop {
            let (stream, _) = listener.accept().await?;
            let mut stream = BufReader::new(stream);
            loop {
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    if stream.read_line(&mut line).await? == 0 {
                        break;
                    }
                    let line = line.trim_end().to_owned();
                    if line.is_empty() {
                        break;
                    }
                    headers.push(line);
                }
                if headers.is_empty() {
                    break;
                }
                let token = headers.iter().find_map(|h| {
                    let (name, value) = h.split_once(':')?;
                    let value = value.trim();
                    (name.eq_ignore_ascii_case("authorization")
                        && value.len() > 10
                        && value[..10].eq_ignore_ascii_case("negotiate "))
                    .then(|| value[10..].trim().to_owned())
                });
                if let Some(t) = token {
                    stream
                        .get_mut()
                        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                        .await?;
                    return Ok::<_, anyhow::Error>(
                        base64::engine::general_purpose::STANDARD.decode(t)?,
                    );
                }
                stream
                    .get_mut()
                    .write_all(
                        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Negotiate\r\nContent-Length: 0\r\n\r\n",
                    )
                    .await?;
            }
        }
    };
    let token = tokio::time::timeout(Duration::from_secs(30), serve)
        .await
        .context("curl sent no Negotiate token within 30 s")??;
    let _ = curl.wait().await;
    Ok(token)
}

/// A realm for single sign-on to an idbridge: the realm, the idbridge serving it, and the
/// environment of a user who has run `kinit`.
#[derive(Debug)]
pub struct Sso {
    /// The realm.
    pub kdc: Kdc,
    /// idbridge with the keytab of `HTTP/localhost` and the user's account.
    pub idbridge: crate::Idbridge,
    /// The user's environment: the realm's, and `KRB5CCNAME` naming their fresh ticket cache.
    pub env: Vec<(String, String)>,
    /// The issuer by the name its service principal has (`https://localhost:PORT`).
    pub issuer: String,
}

/// Starts the realm `realm` with the service `HTTP/localhost` and `user` (password
/// `password`), an idbridge in `dir` whose accounts file maps `user@realm` to the account `user`
/// (with `account_yaml`, e.g. `"groups: [dev]"`), and runs `kinit` for the user.
///
/// # Errors
/// If a server does not start or kinit fails.
pub async fn sso(
    dir: &Path,
    realm: &str,
    user: &str,
    password: &str,
    account_yaml: &str,
) -> anyhow::Result<Sso> {
    let kdc = Kdc::start(realm).await?;
    kdc.add_service("HTTP/localhost").await?;
    let keytab = kdc.dir().join("http.keytab");
    kdc.export_keytab(&keytab, &["HTTP/localhost"]).await?;
    kdc.add_user(user, password).await?;
    let accounts = dir.join("accounts.yaml");
    std::fs::write(
        &accounts,
        format!(
            "- name: {user}\n  {account_yaml}\n  identities: [{{kind: kerberos, principal: {user}@{realm}}}]\n"
        ),
    )?;
    let idbridge = crate::Idbridge::start_with(
        dir,
        crate::Options {
            config: Some(format!(
                "bootstrap_admin: true\nsessions:\n  refresh_grace: 0s\naccounts_file: {}\nkerberos:\n  keytab: {}\n  realms: [{realm}]\n",
                accounts.display(),
                keytab.display()
            )),
            env: kdc.env(),
            ..Default::default()
        },
    )
    .await?;
    let cc = kdc.dir().join(format!("{user}.cc"));
    kdc.kinit(&format!("{user}@{realm}"), password, &cc, None)
        .await?;
    let mut env = kdc.env();
    env.push(("KRB5CCNAME".into(), format!("FILE:{}", cc.display())));
    let issuer = idbridge.base.replace("127.0.0.1", "localhost");
    Ok(Sso {
        kdc,
        idbridge,
        env,
        issuer,
    })
}
