//! Where principals' keys come from: a [`KeySource`] (MIT kadmin today; Active Directory and a
//! keytab store later), and the cache that spares kadmin a call per issuance. Cached keys live
//! in this process's memory only (zeroed when dropped), never at rest: a restarted idbridge
//! reads each principal's keys once again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use idbridge_kerberos::kadmin::MitKadmin;
use idbridge_kerberos::keytab::KeytabEntry;

/// A key source failed; what it said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct KeySourceError(pub String);

/// A source of principals' keys.
#[async_trait]
pub trait KeySource: Send + Sync + std::fmt::Debug {
    /// Creates `principal` with random keys if it does not exist; whether it was created.
    async fn ensure(&self, principal: &str) -> Result<bool, KeySourceError>;
    /// Whether `principal` exists.
    async fn exists(&self, principal: &str) -> Result<bool, KeySourceError>;
    /// Every key `principal` has, unchanged.
    async fn keys(&self, principal: &str) -> Result<Vec<KeytabEntry>, KeySourceError>;
    /// New random keys (a new version); with `keep_old`, the old keys stay valid until purged.
    /// The new version.
    async fn rotate(&self, principal: &str, keep_old: bool) -> Result<u32, KeySourceError>;
    /// Deletes the keys older than version `keep`.
    async fn purge_before(&self, principal: &str, keep: u32) -> Result<(), KeySourceError>;
}

fn source_error(e: impl std::fmt::Display) -> KeySourceError {
    KeySourceError(e.to_string())
}

#[async_trait]
impl KeySource for MitKadmin {
    async fn ensure(&self, principal: &str) -> Result<bool, KeySourceError> {
        self.ensure_principal(principal).await.map_err(source_error)
    }

    async fn exists(&self, principal: &str) -> Result<bool, KeySourceError> {
        MitKadmin::exists(self, principal)
            .await
            .map_err(source_error)
    }

    async fn keys(&self, principal: &str) -> Result<Vec<KeytabEntry>, KeySourceError> {
        MitKadmin::keys(self, principal).await.map_err(source_error)
    }

    async fn rotate(&self, principal: &str, keep_old: bool) -> Result<u32, KeySourceError> {
        MitKadmin::rotate(self, principal, keep_old)
            .await
            .map_err(source_error)
    }

    async fn purge_before(&self, principal: &str, keep: u32) -> Result<(), KeySourceError> {
        MitKadmin::purge_before(self, principal, keep)
            .await
            .map_err(source_error)
    }
}

/// The keys of each principal read so far, by principal.
#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    by_principal: Mutex<HashMap<String, Arc<Vec<KeytabEntry>>>>,
    // One read from the key source at a time: many pods of a new principal starting at once
    // make one kadmin call, not one each.
    fetching: tokio::sync::Mutex<()>,
}

/// The highest key version among `keys`.
pub(crate) fn newest(keys: &[KeytabEntry]) -> Option<u32> {
    keys.iter().map(|k| k.kvno).max()
}

impl KeyCache {
    fn cached(&self, principal: &str) -> Option<Arc<Vec<KeytabEntry>>> {
        self.by_principal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(principal)
            .cloned()
    }

    /// The keys of `principal`: cached, unless the cache has none or only versions older than
    /// `at_least`; otherwise read (the principal created first if it does not exist).
    pub(crate) async fn get(
        &self,
        source: &dyn KeySource,
        principal: &str,
        at_least: Option<u32>,
    ) -> Result<Arc<Vec<KeytabEntry>>, KeySourceError> {
        let fresh_enough =
            |k: &Arc<Vec<KeytabEntry>>| at_least.is_none_or(|v| newest(k).is_some_and(|n| n >= v));
        if let Some(k) = self.cached(principal).filter(fresh_enough) {
            return Ok(k);
        }
        let _one = self.fetching.lock().await;
        if let Some(k) = self.cached(principal).filter(fresh_enough) {
            return Ok(k);
        }
        source.ensure(principal).await?;
        let keys = Arc::new(source.keys(principal).await?);
        if keys.is_empty() {
            return Err(KeySourceError(format!("{principal} has no keys")));
        }
        self.by_principal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(principal.to_owned(), keys.clone());
        Ok(keys)
    }

    /// Forgets `principal`'s keys (they changed).
    pub(crate) fn forget(&self, principal: &str) {
        self.by_principal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(principal);
    }
}
