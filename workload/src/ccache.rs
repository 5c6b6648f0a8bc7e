//! A ticket-granting ticket obtained with a principal's keys, as the credential cache a pod is
//! handed. `kinit -k` does the Kerberos exchange; the keys reach it through an anonymous
//! in-memory file (`memfd`) that only this process holds open, read by kinit through this
//! process's `/proc/<pid>/fd` entry, so no long-term key is ever written to disk. kinit writes
//! the cache into a private temporary directory, read back and removed at once.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use idbridge_kerberos::keytab::{self, KeytabEntry};

/// Why no ticket could be had.
#[derive(Debug, thiserror::Error)]
pub enum CcacheError {
    /// The keys could not be handed to kinit.
    #[error("cannot hand the keys to kinit: {0}")]
    Keys(String),
    /// kinit could not be run.
    #[error("cannot run {program}: {source}")]
    Run {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The KDC refused, or kinit failed (what it said).
    #[error("kinit for {principal} failed: {message}")]
    Kinit {
        /// The principal.
        principal: String,
        /// kinit's message.
        message: String,
    },
}

/// The `kinit` to run and its environment (`KRB5_CONFIG`).
#[derive(Debug, Clone)]
pub struct Kinit {
    /// The program.
    pub program: std::path::PathBuf,
    /// `KRB5_CONFIG`.
    pub krb5_conf: std::path::PathBuf,
}

impl Kinit {
    /// A credential cache (MIT FILE format) holding a TGT for `principal`, valid for
    /// `lifetime_secs`, obtained with `keys`.
    ///
    /// # Errors
    /// [`CcacheError`].
    pub async fn obtain(
        &self,
        principal: &str,
        keys: &[KeytabEntry],
        lifetime_secs: u64,
    ) -> Result<Vec<u8>, CcacheError> {
        let mut bytes = keytab::to_bytes(keys).map_err(|e| CcacheError::Keys(e.to_string()))?;
        let fd = rustix::fs::memfd_create("idbridge-keys", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| CcacheError::Keys(format!("memfd_create: {e}")));
        let mut file = match fd {
            Ok(fd) => std::fs::File::from(fd),
            Err(e) => {
                zeroize::Zeroize::zeroize(&mut bytes);
                return Err(e);
            }
        };
        let written = file.write_all(&bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        written.map_err(|e| CcacheError::Keys(format!("writing the memfd: {e}")))?;
        let keytab_path = format!("FILE:/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        let dir = tempfile::Builder::new()
            .prefix("idbridge-cc-")
            .tempdir()
            .map_err(|source| CcacheError::Run {
                program: "a private temporary directory".into(),
                source,
            })?;
        let cache = dir.path().join("cc");
        let out = tokio::process::Command::new(&self.program)
            .arg("-k")
            .arg("-t")
            .arg(&keytab_path)
            .arg("-c")
            .arg(format!("FILE:{}", cache.display()))
            .arg("-l")
            .arg(format!("{lifetime_secs}s"))
            .arg(principal)
            .env("KRB5_CONFIG", &self.krb5_conf)
            .env_remove("KRB5CCNAME")
            .env_remove("KRB5_CLIENT_KTNAME")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| CcacheError::Run {
                program: self.program.display().to_string(),
                source,
            })?;
        drop(file);
        if !out.status.success() {
            return Err(CcacheError::Kinit {
                principal: principal.to_owned(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        read_and_remove(&cache)
    }
}

fn read_and_remove(cache: &Path) -> Result<Vec<u8>, CcacheError> {
    let bytes = std::fs::read(cache).map_err(|source| CcacheError::Run {
        program: format!("reading {}", cache.display()),
        source,
    })?;
    let _ = std::fs::remove_file(cache);
    Ok(bytes)
}
