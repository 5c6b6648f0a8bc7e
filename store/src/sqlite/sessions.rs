//! Sessions and their refresh tokens.

use std::str::FromStr;

use async_trait::async_trait;
use idbridge_core::{
    AccountUid, RefreshContext, RefreshRecord, Session, SessionId, SessionStore, Spend,
    SpendOutcome, StoreError, TokenHash, UnixTime,
};
use rusqlite::{Connection, Params, Row, params};

use super::SqliteStore;
use super::accounts::{account_from_row, account_select};
use super::sql::{
    backend, col, conflict_or_backend, corrupt, execute, insert_error, query_all, query_one,
};

macro_rules! session_columns {
    () => {
        "id, account_uid, client_id, amr_json, audience, scope, login_groups_json, created_at, \
         last_used_at, expires_at, revoked_at, revoked_reason"
    };
}

fn insert_session(
    conn: &Connection,
    session: &Session,
    first: &RefreshRecord,
) -> Result<(), StoreError> {
    let id = session.id.to_string();
    execute(
        conn,
        concat!(
            "INSERT INTO sessions (",
            session_columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ),
        params![
            id,
            session.account.to_string(),
            session.client_id.as_str(),
            serde_json::to_string(&session.amr).map_err(|e| corrupt("amr", e))?,
            session.audience.as_str(),
            session.scope,
            serde_json::to_string(&session.login_groups).map_err(|e| corrupt("groups", e))?,
            session.created_at.0,
            session.last_used_at.0,
            session.expires_at.0,
            session.revoked_at.map(|t| t.0),
            session.revoked_reason.as_deref(),
        ],
    )
    .map_err(|e| insert_error(e, session.account, || format!("session {id}")))?;
    insert_refresh(conn, first)
}

fn insert_refresh(conn: &Connection, r: &RefreshRecord) -> Result<(), StoreError> {
    execute(
        conn,
        "INSERT INTO refresh_tokens
           (hash, session_id, created_at, spent_at, grace_until, grace_sealed, upstream_sealed)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        params![
            &r.hash.0[..],
            r.session.to_string(),
            r.created_at.0,
            r.spent_at.map(|t| t.0),
            r.grace_until.map(|t| t.0),
            r.grace_sealed.as_deref(),
            r.upstream_sealed.as_deref(),
        ],
    )
    .map_err(|e| conflict_or_backend(e, || "refresh token".to_owned()))?;
    Ok(())
}

fn refresh_in(conn: &Connection, hash: TokenHash) -> Result<Option<RefreshRecord>, StoreError> {
    query_one(
        conn,
        "SELECT session_id, created_at, spent_at, grace_until, grace_sealed, upstream_sealed
         FROM refresh_tokens WHERE hash = ?",
        [&hash.0[..]],
        |r| {
            Ok(RefreshRecord {
                hash,
                session: SessionId::from_str(&col::<String>(r, "session_id")?)
                    .map_err(|e| corrupt("session id", e))?,
                created_at: UnixTime(col(r, "created_at")?),
                spent_at: col::<Option<i64>>(r, "spent_at")?.map(UnixTime),
                grace_until: col::<Option<i64>>(r, "grace_until")?.map(UnixTime),
                grace_sealed: col(r, "grace_sealed")?,
                upstream_sealed: col(r, "upstream_sealed")?,
            })
        },
    )
}

fn spend_in(conn: &Connection, spend: &Spend) -> Result<SpendOutcome, StoreError> {
    // The check ("still unspent, session live") and the spend are one statement inside the
    // writer's transaction; spends later in the same batch see the earlier ones.
    let won = execute(
        conn,
        "UPDATE refresh_tokens SET spent_at = ?, grace_until = ?, grace_sealed = ?
         WHERE hash = ? AND spent_at IS NULL
           AND session_id IN (SELECT id FROM sessions WHERE revoked_at IS NULL)",
        params![
            spend.at.0,
            spend.grace_until.0,
            spend.sealed,
            &spend.old.0[..]
        ],
    )
    .map_err(backend)?
        == 1;
    if !won {
        return Ok(SpendOutcome::Lost);
    }
    insert_refresh(conn, &spend.next)?;
    let session = spend.next.session.to_string();
    execute(
        conn,
        "UPDATE sessions SET last_used_at = ? WHERE id = ?",
        params![spend.at.0, session],
    )
    .map_err(backend)?;
    if let Some(groups) = &spend.login_groups {
        execute(
            conn,
            "UPDATE sessions SET login_groups_json = ? WHERE id = ?",
            params![
                serde_json::to_string(groups).map_err(|e| corrupt("groups", e))?,
                session
            ],
        )
        .map_err(backend)?;
    }
    Ok(SpendOutcome::Spent)
}

fn session_from_row(row: &Row<'_>) -> Result<Session, StoreError> {
    Ok(Session {
        id: SessionId::from_str(&col::<String>(row, "id")?)
            .map_err(|e| corrupt("session id", e))?,
        account: AccountUid::from_str(&col::<String>(row, "account_uid")?)
            .map_err(|e| corrupt("uid", e))?,
        client_id: col::<String>(row, "client_id")?
            .parse()
            .map_err(|e| corrupt("session client id", e))?,
        amr: serde_json::from_str(&col::<String>(row, "amr_json")?)
            .map_err(|e| corrupt("amr", e))?,
        audience: col::<String>(row, "audience")?
            .parse()
            .map_err(|e| corrupt("session audience", e))?,
        scope: col(row, "scope")?,
        login_groups: serde_json::from_str(&col::<String>(row, "login_groups_json")?)
            .map_err(|e| corrupt("groups", e))?,
        created_at: UnixTime(col(row, "created_at")?),
        last_used_at: UnixTime(col(row, "last_used_at")?),
        expires_at: UnixTime(col(row, "expires_at")?),
        revoked_at: col::<Option<i64>>(row, "revoked_at")?.map(UnixTime),
        revoked_reason: col(row, "revoked_reason")?,
    })
}

fn session_by_id(conn: &Connection, sql: &str, p: impl Params) -> Result<Session, StoreError> {
    query_one(conn, sql, p, session_from_row)?
        .ok_or_else(|| StoreError::NotFound("session".to_owned()))
}

/// Revokes every live session of an account; returns how many.
pub(super) fn revoke_account_sessions_in(
    c: &Connection,
    account: AccountUid,
    reason: &str,
    now: UnixTime,
) -> Result<u64, StoreError> {
    let n = execute(
        c,
        "UPDATE sessions SET revoked_at = ?, revoked_reason = ?
         WHERE account_uid = ? AND revoked_at IS NULL AND expires_at > ?",
        params![now.0, reason, account.to_string(), now.0],
    )
    .map_err(backend)?;
    Ok(n as u64)
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create_session(
        &self,
        session: &Session,
        first: &RefreshRecord,
    ) -> Result<(), StoreError> {
        let (session, first) = (session.clone(), first.clone());
        self.write(move |c| insert_session(c, &session, &first))
            .await
    }

    async fn session(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        self.read(|c| {
            query_one(
                c,
                concat!("SELECT ", session_columns!(), " FROM sessions WHERE id = ?"),
                [id.to_string()],
                session_from_row,
            )
        })
    }

    async fn sessions(&self, account: Option<AccountUid>) -> Result<Vec<Session>, StoreError> {
        self.read(|c| {
            query_all(
                c,
                concat!(
                    "SELECT ",
                    session_columns!(),
                    " FROM sessions WHERE ?1 IS NULL OR account_uid = ?1 ORDER BY created_at DESC, id"
                ),
                [account.map(|uid| uid.to_string())],
                session_from_row,
            )
        })
    }

    async fn refresh_token(&self, hash: TokenHash) -> Result<Option<RefreshRecord>, StoreError> {
        self.read(|c| refresh_in(c, hash))
    }

    async fn refresh_context(&self, hash: TokenHash) -> Result<Option<RefreshContext>, StoreError> {
        self.read(|c| {
            let tx = c.unchecked_transaction().map_err(backend)?;
            let Some(record) = refresh_in(&tx, hash)? else {
                return Ok(None);
            };
            let session = query_one(
                &tx,
                concat!("SELECT ", session_columns!(), " FROM sessions WHERE id = ?"),
                [record.session.to_string()],
                session_from_row,
            )?;
            let account = match &session {
                Some(s) => query_one(
                    &tx,
                    account_select!("FROM accounts a WHERE a.uid = ?"),
                    [s.account.to_string()],
                    account_from_row,
                )?,
                None => None,
            };
            Ok(Some(RefreshContext {
                record,
                session,
                account,
            }))
        })
    }

    async fn spend_refresh(&self, spend: &Spend) -> Result<SpendOutcome, StoreError> {
        let spend = spend.clone();
        self.write(move |c| spend_in(c, &spend)).await
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        reason: &str,
        now: UnixTime,
    ) -> Result<Session, StoreError> {
        let reason = reason.to_owned();
        self.write(move |c| {
            session_by_id(
                c,
                concat!(
                    "UPDATE sessions SET revoked_at = COALESCE(revoked_at, ?),
                         revoked_reason = COALESCE(revoked_reason, ?)
                     WHERE id = ? RETURNING ",
                    session_columns!()
                ),
                params![now.0, reason, id.to_string()],
            )
            .map_err(|_| StoreError::NotFound(format!("session {id}")))
        })
        .await
    }

    async fn revoke_account_sessions(
        &self,
        account: AccountUid,
        reason: &str,
        now: UnixTime,
    ) -> Result<u64, StoreError> {
        let reason = reason.to_owned();
        self.write(move |c| revoke_account_sessions_in(c, account, &reason, now))
            .await
    }
}
