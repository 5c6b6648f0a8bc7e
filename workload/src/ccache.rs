//! A ticket-granting ticket obtained with a principal's keys, as the credential cache a pod is
//! handed. The Kerberos exchange runs in this process through libkrb5 (on a blocking thread):
//! the keys go into a MEMORY keytab that is destroyed afterwards, so no long-term key is ever
//! written to disk and no `kinit` process is started per ticket. The library writes the cache
//! into a private temporary directory, read back and removed at once.

use std::path::PathBuf;
use std::sync::Arc;

use idbridge_kerberos::keytab::KeytabEntry;

/// Why no ticket could be had.
#[derive(Debug, thiserror::Error)]
pub enum CcacheError {
    /// The temporary cache could not be made or read.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The KDC refused, or the library failed (what it said).
    #[error("no ticket for {principal}: {message}")]
    Kdc {
        /// The principal.
        principal: String,
        /// The library's message.
        message: String,
    },
}

/// How tickets are obtained: the realm's `krb5.conf`.
#[derive(Debug, Clone)]
pub struct Tickets {
    /// The `krb5.conf` naming the realm's KDCs.
    pub krb5_conf: PathBuf,
}

impl Tickets {
    /// A credential cache (MIT FILE format) holding a TGT for `principal`, valid for
    /// `lifetime_secs`, obtained with `keys`.
    ///
    /// # Errors
    /// [`CcacheError`].
    pub async fn obtain(
        &self,
        principal: &str,
        keys: Arc<Vec<KeytabEntry>>,
        lifetime_secs: u64,
    ) -> Result<Vec<u8>, CcacheError> {
        let dir = tempfile::Builder::new()
            .prefix("idbridge-cc-")
            .tempdir()
            .map_err(|source| CcacheError::Io {
                what: "cannot make a private temporary directory".into(),
                source,
            })?;
        let cache = dir.path().join("cc");
        let (conf, p, c) = (self.krb5_conf.clone(), principal.to_owned(), cache.clone());
        let lifetime = u32::try_from(lifetime_secs).unwrap_or(u32::MAX);
        let done = tokio::task::spawn_blocking(move || {
            idbridge_kerberos::initial_ticket(&conf, &p, &keys, lifetime, &c)
        })
        .await
        .unwrap_or_else(|e| Err(format!("the ticket thread failed: {e}")));
        if let Err(message) = done {
            return Err(CcacheError::Kdc {
                principal: principal.to_owned(),
                message,
            });
        }
        std::fs::read(&cache).map_err(|source| CcacheError::Io {
            what: format!("cannot read {}", cache.display()),
            source,
        })
    }
}
