//! Single-use records of logins in progress.

use std::str::FromStr;

use async_trait::async_trait;
use idbridge_core::{Pending, PendingStore, SessionId, StoreError, TokenHash, UnixTime};
use rusqlite::{Row, params};

use super::SqliteStore;
use super::sql::{backend, col, conflict_or_backend, corrupt, execute, query_one};

macro_rules! pending_columns {
    () => {
        "key, alias, kind, data, expires_at, used_at, session_id"
    };
}

fn pending_from_row(row: &Row<'_>) -> Result<Pending, StoreError> {
    let key: Vec<u8> = col(row, "key")?;
    Ok(Pending {
        key: TokenHash(
            key.try_into()
                .map_err(|_| corrupt("pending key", "not 32 bytes"))?,
        ),
        alias: col(row, "alias")?,
        kind: col::<String>(row, "kind")?
            .parse()
            .map_err(|e| corrupt("pending kind", e))?,
        data: col(row, "data")?,
        expires_at: UnixTime(col(row, "expires_at")?),
        used_at: col::<Option<i64>>(row, "used_at")?.map(UnixTime),
        session: col::<Option<String>>(row, "session_id")?
            .map(|s| SessionId::from_str(&s))
            .transpose()
            .map_err(|e| corrupt("session id", e))?,
    })
}

#[async_trait]
impl PendingStore for SqliteStore {
    async fn put_pending(&self, p: &Pending) -> Result<(), StoreError> {
        let p = p.clone();
        self.write(move |c| {
            execute(
                c,
                "INSERT INTO pending (key, alias, kind, data, expires_at, used_at, session_id)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                params![
                    &p.key.0[..],
                    p.alias.as_deref(),
                    p.kind.as_str(),
                    p.data,
                    p.expires_at.0,
                    p.used_at.map(|t| t.0),
                    p.session.map(|s| s.to_string())
                ],
            )
            .map_err(|e| conflict_or_backend(e, || format!("pending {}", p.kind)))?;
            Ok(())
        })
        .await
    }

    async fn pending(&self, key: TokenHash, now: UnixTime) -> Result<Option<Pending>, StoreError> {
        self.read(|c| {
            query_one(
                c,
                concat!(
                    "SELECT ",
                    pending_columns!(),
                    " FROM pending WHERE key = ? AND expires_at > ?"
                ),
                params![&key.0[..], now.0],
                pending_from_row,
            )
        })
    }

    async fn pending_by_alias(
        &self,
        alias: &str,
        now: UnixTime,
    ) -> Result<Option<Pending>, StoreError> {
        self.read(|c| {
            query_one(
                c,
                concat!(
                    "SELECT ",
                    pending_columns!(),
                    " FROM pending WHERE alias = ? AND expires_at > ?"
                ),
                params![alias, now.0],
                pending_from_row,
            )
        })
    }

    async fn update_pending(
        &self,
        key: TokenHash,
        data: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let data = data.to_owned();
        self.write(move |c| {
            let n = execute(
                c,
                "UPDATE pending SET data = ? WHERE key = ? AND used_at IS NULL AND expires_at > ?",
                params![data, &key.0[..], now.0],
            )
            .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn use_pending(
        &self,
        key: TokenHash,
        now: UnixTime,
    ) -> Result<Option<(Pending, bool)>, StoreError> {
        self.write(move |c| {
            let first = execute(
                c,
                "UPDATE pending SET used_at = ? WHERE key = ? AND used_at IS NULL AND expires_at > ?",
                params![now.0, &key.0[..], now.0],
            )
            .map_err(backend)?
                == 1;
            // A used record stays findable until it expires, so a second use can be traced to
            // the session the first one started.
            let found = query_one(
                c,
                concat!("SELECT ", pending_columns!(), " FROM pending WHERE key = ?"),
                [&key.0[..]],
                pending_from_row,
            )?;
            Ok(match found {
                Some(p) if first || p.used_at.is_some() => Some((p, first)),
                _ => None,
            })
        })
        .await
    }

    async fn set_pending_session(
        &self,
        key: TokenHash,
        session: SessionId,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            execute(
                c,
                "UPDATE pending SET session_id = ? WHERE key = ?",
                params![session.to_string(), &key.0[..]],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }
}
