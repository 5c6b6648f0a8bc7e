//! The sync worker's state between runs and its lease.

use async_trait::async_trait;
use idbridge_core::{StoreError, SyncLease, SyncState, SyncStateStore, UnixTime};
use rusqlite::params;

use super::SqliteStore;
use super::sql::{backend, col, corrupt, execute, query_one};

#[async_trait]
impl SyncStateStore for SqliteStore {
    async fn sync_state(&self) -> Result<SyncState, StoreError> {
        self.read(|c| {
            let text: Option<String> =
                query_one(c, "SELECT state FROM sync_state WHERE id = 1", [], |r| {
                    col(r, "state")
                })?;
            match text {
                None => Ok(SyncState::default()),
                Some(t) => serde_json::from_str(&t).map_err(|e| corrupt("sync state", e)),
            }
        })
    }

    async fn put_sync_state(&self, state: &SyncState) -> Result<(), StoreError> {
        let text = serde_json::to_string(state).map_err(|e| corrupt("sync state", e))?;
        self.write(move |c| {
            execute(
                c,
                "INSERT INTO sync_state (id, state) VALUES (1, ?)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state",
                [text],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn take_sync_lease(
        &self,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> Result<SyncLease, StoreError> {
        let holder = holder.to_owned();
        self.write(move |c| {
            // One statement: free, ended or already ours → ours.
            execute(
                c,
                "INSERT INTO sync_lease (id, holder, expires_at) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET holder = ?1, expires_at = ?2
                 WHERE sync_lease.holder = ?1 OR sync_lease.expires_at <= ?3",
                params![holder, until.0, now.0],
            )
            .map_err(backend)?;
            query_one(
                c,
                "SELECT holder, expires_at FROM sync_lease WHERE id = 1",
                [],
                |r| {
                    Ok(SyncLease {
                        holder: col(r, "holder")?,
                        expires_at: UnixTime(col(r, "expires_at")?),
                    })
                },
            )?
            .ok_or_else(|| StoreError::Backend("the sync lease row vanished".into()))
        })
        .await
    }

    async fn release_sync_lease(&self, holder: &str) -> Result<(), StoreError> {
        let holder = holder.to_owned();
        self.write(move |c| {
            execute(c, "DELETE FROM sync_lease WHERE holder = ?", [holder]).map_err(backend)?;
            Ok(())
        })
        .await
    }
}
