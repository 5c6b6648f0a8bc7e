//! MIT kadmin as a key source: service principals created with a random key, their keys
//! extracted without changing them, and new random keys on rotation.
//!
//! Driven as the `kadmin` program (`kadmin -k -t <keytab> -p <principal> -q <query>`), with an
//! admin principal and its keytab. Extracting keys unchanged (`ktadd -norandkey`) needs the
//! `e` privilege in `kadm5.acl`, beside `a` (add), `i` (inquire) and `c` (change a key): for
//! example `idbridge/admin@EXAMPLE.COM aice`. Principal names go into kadmin's query line, so
//! only plain ones are accepted (letters, digits, `.`, `_`, `-`, `/`, one `@`): nothing in a
//! name can become another option or query.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::keytab::{self, KeytabEntry};

/// Why kadmin could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum KadminError {
    /// A principal name idbridge does not pass to kadmin.
    #[error(
        "{0:?} is not a principal name idbridge passes to kadmin (letters, digits, '.', '_', '-', '/' and one '@')"
    )]
    Name(String),
    /// kadmin could not be run.
    #[error("cannot run {program}: {source}")]
    Run {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// kadmin ran and refused or failed.
    #[error("kadmin {query:?} failed: {message}")]
    Failed {
        /// The query.
        query: String,
        /// What kadmin said.
        message: String,
    },
    /// The keytab kadmin wrote does not read.
    #[error("the keys kadmin extracted do not read: {0}")]
    Keytab(#[from] keytab::KeytabError),
}

/// MIT kadmin, reached as an admin principal with its keytab.
#[derive(Debug, Clone)]
pub struct MitKadmin {
    /// The `kadmin` program.
    pub program: PathBuf,
    /// The admin principal.
    pub principal: String,
    /// Its keytab.
    pub keytab: PathBuf,
    /// The admin server (`host[:port]`) [default: krb5.conf's `admin_server`].
    pub server: Option<String>,
    /// Environment for kadmin (`KRB5_CONFIG`, say).
    pub env: Vec<(OsString, OsString)>,
}

/// Whether `p` is a principal name safe on kadmin's query line.
#[must_use]
pub fn plain_principal(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 255
        && !p.starts_with(['-', '/', '@'])
        && p.matches('@').count() <= 1
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '@'))
}

impl MitKadmin {
    /// Runs one query; its standard output.
    async fn query(&self, query: &str) -> Result<String, KadminError> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.arg("-k")
            .arg("-t")
            .arg(&self.keytab)
            .arg("-p")
            .arg(&self.principal);
        if let Some(s) = &self.server {
            cmd.arg("-s").arg(s);
        }
        let out = cmd
            .arg("-q")
            .arg(query)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| KadminError::Run {
                program: self.program.display().to_string(),
                source,
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // kadmin exits 0 when a query fails: it says so on standard error, where otherwise only
        // its notices are.
        let problems: Vec<&str> = stderr
            .lines()
            .filter(|l| {
                let l = l.trim();
                !l.is_empty()
                    && !l.starts_with("Authenticating as principal")
                    && !l.starts_with("No policy specified")
                    && !l.starts_with("WARNING: no policy specified")
            })
            .collect();
        if !out.status.success() || !problems.is_empty() {
            return Err(KadminError::Failed {
                query: query.to_owned(),
                message: problems.join("; "),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn checked(p: &str) -> Result<&str, KadminError> {
        if plain_principal(p) {
            Ok(p)
        } else {
            Err(KadminError::Name(p.to_owned()))
        }
    }

    /// Creates `principal` with a random key if it does not exist; whether it was created.
    ///
    /// # Errors
    /// [`KadminError`].
    pub async fn ensure_principal(&self, principal: &str) -> Result<bool, KadminError> {
        if self.exists(principal).await? {
            return Ok(false);
        }
        let p = Self::checked(principal)?;
        self.query(&format!("addprinc -randkey {p}")).await?;
        Ok(true)
    }

    /// Whether `principal` is in the database.
    ///
    /// # Errors
    /// [`KadminError`].
    pub async fn exists(&self, principal: &str) -> Result<bool, KadminError> {
        let p = Self::checked(principal)?;
        match self.query(&format!("getprinc {p}")).await {
            Ok(_) => Ok(true),
            Err(KadminError::Failed { message, .. })
                if message.contains("Principal does not exist") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Every key `principal` has in the database, unchanged (`ktadd -norandkey`).
    ///
    /// # Errors
    /// [`KadminError`].
    pub async fn keys(&self, principal: &str) -> Result<Vec<KeytabEntry>, KadminError> {
        let p = Self::checked(principal)?;
        // A private directory of its own for the moment the keys are on disk.
        let dir = tempfile::Builder::new()
            .prefix("idbridge-keys-")
            .tempdir()
            .map_err(|source| KadminError::Run {
                program: "a private temporary directory".into(),
                source,
            })?;
        let file = dir.path().join("keys.keytab");
        // Errors name the query without the private file's path.
        self.query(&format!("ktadd -norandkey -k {} {p}", file.display()))
            .await
            .map_err(|e| match e {
                KadminError::Failed { message, .. } => KadminError::Failed {
                    query: format!("ktadd -norandkey {p}"),
                    message: message.replace(&file.display().to_string(), "<keytab>"),
                },
                e => e,
            })?;
        let bytes = std::fs::read(&file).map_err(|source| KadminError::Run {
            program: "reading the keys kadmin extracted".into(),
            source,
        })?;
        let entries = keytab::parse(&bytes)?;
        let mut bytes = bytes;
        zeroize::Zeroize::zeroize(&mut bytes);
        let _ = std::fs::write(&file, vec![0u8; bytes.len()]);
        Ok(entries)
    }

    /// Gives `principal` new random keys (a new key version); with `keep_old`, the database
    /// keeps the old keys too, so tickets and keytabs of the previous version still work until
    /// they are purged. Returns the new key version.
    ///
    /// # Errors
    /// [`KadminError`].
    pub async fn rotate(&self, principal: &str, keep_old: bool) -> Result<u32, KadminError> {
        let p = Self::checked(principal)?;
        let keep = if keep_old { "-keepold " } else { "" };
        self.query(&format!("cpw -randkey {keep}{p}")).await?;
        let info = self.query(&format!("getprinc {p}")).await?;
        // One line per key, `Key: vno N, <enctype>`; old keys kept have lower versions.
        info.lines()
            .filter_map(|l| l.trim().strip_prefix("Key: vno "))
            .filter_map(|v| v.split([',', ' ']).next()?.parse::<u32>().ok())
            .max()
            .map_or_else(
                || {
                    Err(KadminError::Failed {
                        query: format!("getprinc {p}"),
                        message: "no key version in its answer".into(),
                    })
                },
                Ok,
            )
    }
}

impl MitKadmin {
    /// Deletes the keys of `principal` older than version `keep` (`purgekeys -keepkvno`), once
    /// nothing handed out needs them.
    ///
    /// # Errors
    /// [`KadminError`].
    pub async fn purge_before(&self, principal: &str, keep: u32) -> Result<(), KadminError> {
        let p = Self::checked(principal)?;
        self.query(&format!("purgekeys -keepkvno {keep} {p}"))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_principal_names_reach_kadmin() {
        for ok in ["svc/app.example.com@EXAMPLE.COM", "web", "a_b-c.d/e"] {
            assert!(plain_principal(ok), "{ok}");
        }
        for bad in [
            "",
            "-pw x",
            "a b",
            "a\"b",
            "a;delprinc b",
            "a@b@c",
            "/x",
            "x\ny",
            &"a".repeat(300),
        ] {
            assert!(!plain_principal(bad), "{bad:?}");
        }
    }
}
