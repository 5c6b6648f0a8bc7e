//! Signing keys, revoked access tokens, the revocations snapshot, and the purge.

use std::str::FromStr;

use async_trait::async_trait;
use idbridge_core::{KeyState, KeyStore, Revocations, SessionId, StoreError, StoredKey, UnixTime};
use rusqlite::params;

use super::SqliteStore;
use super::sql::{backend, col, conflict_or_backend, corrupt, execute, query_all};

#[async_trait]
impl KeyStore for SqliteStore {
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.read(|c| {
            query_all(
                c,
                "SELECT kid, private_pkcs8, sealed_by, state, created_at, activated_at, retire_after
                 FROM signing_keys ORDER BY created_at, kid",
                [],
                |r| {
                    Ok(StoredKey {
                        kid: col(r, "kid")?,
                        private: col(r, "private_pkcs8")?,
                        sealed_by: col(r, "sealed_by")?,
                        state: KeyState::from_str(&col::<String>(r, "state")?)
                            .map_err(|e| corrupt("key state", e))?,
                        created_at: UnixTime(col(r, "created_at")?),
                        activated_at: col::<Option<i64>>(r, "activated_at")?.map(UnixTime),
                        retire_after: col::<Option<i64>>(r, "retire_after")?.map(UnixTime),
                    })
                },
            )
        })
    }

    async fn replace_signing_keys(&self, keys: &[StoredKey]) -> Result<(), StoreError> {
        let keys = keys.to_vec();
        self.write(move |c| {
            execute(c, "DELETE FROM signing_keys", []).map_err(backend)?;
            for k in &keys {
                execute(
                    c,
                    "INSERT INTO signing_keys
                       (kid, private_pkcs8, sealed_by, state, created_at, activated_at, retire_after)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                    params![
                        k.kid,
                        k.private,
                        k.sealed_by.as_deref(),
                        k.state.to_string(),
                        k.created_at.0,
                        k.activated_at.map(|t| t.0),
                        k.retire_after.map(|t| t.0)
                    ],
                )
                .map_err(|e| conflict_or_backend(e, || format!("signing key {}", k.kid)))?;
            }
            Ok(())
        })
        .await
    }

    async fn revoke_jti(
        &self,
        jti: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let jti = jti.to_owned();
        self.write(move |c| {
            execute(
                c,
                "INSERT INTO revoked_jtis (jti, revoked_at, expires_at) VALUES (?, ?, ?)
                 ON CONFLICT (jti) DO UPDATE SET expires_at = MAX(expires_at, excluded.expires_at)",
                params![jti, now.0, expires_at.0],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn revocations(&self, now: UnixTime) -> Result<Revocations, StoreError> {
        self.read(|c| {
            // One snapshot for both lists.
            let tx = c.unchecked_transaction().map_err(backend)?;
            let sessions = query_all(
                &tx,
                "SELECT id FROM sessions WHERE revoked_at IS NOT NULL AND expires_at > ?",
                [now.0],
                |r| {
                    SessionId::from_str(&col::<String>(r, "id")?)
                        .map_err(|e| corrupt("session id", e))
                },
            )?;
            let jtis = query_all(
                &tx,
                "SELECT jti FROM revoked_jtis WHERE expires_at > ?",
                [now.0],
                |r| col(r, "jti"),
            )?;
            Ok(Revocations { sessions, jtis })
        })
    }

    async fn purge(&self, before: UnixTime) -> Result<u64, StoreError> {
        self.write(move |c| {
            let mut n = 0;
            for sql in [
                "DELETE FROM sessions WHERE expires_at <= ?",
                "DELETE FROM revoked_jtis WHERE expires_at <= ?",
                "DELETE FROM pending WHERE expires_at <= ?",
                // A sealed next pair is needed only during its grace window.
                "UPDATE refresh_tokens SET grace_sealed = NULL
                 WHERE grace_sealed IS NOT NULL AND grace_until <= ?",
            ] {
                n += execute(c, sql, [before.0]).map_err(backend)? as u64;
            }
            Ok(n)
        })
        .await
    }
}
