//! The SQLite store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use idbridge_core::{
    AccountName, AccountUid, ExternalIdentity, GroupName, KeyState, LabelKey, Namespace,
    NewAccount, Pending, RefreshRecord, Revocations, Session, SessionId, Spend, SpendOutcome,
    StaticToken, Store, StoreError, StoredKey, TokenHash, TokenId, UnixTime, UserAccount,
};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use crate::OpenError;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_sessions.sql")),
    (3, include_str!("../migrations/0003_logins.sql")),
];

/// A [`Store`] in one SQLite file.
///
/// Reads share a small pool; every write goes through one connection, so writers queue in
/// order inside the process instead of meeting SQLite's busy handler (which sleeps). Refresh
/// spends and session starts, the hot writes, are group-committed by one writer task. A write
/// is acknowledged only after its commit is fsynced.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: SqlitePool,
    writes: tokio::sync::mpsc::Sender<WriteJob>,
}

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

macro_rules! session_columns {
    () => {
        "id, account_uid, client_id, amr_json, audience, scope, login_groups_json, created_at, \
         last_used_at, expires_at, revoked_at, revoked_reason"
    };
}

macro_rules! pending_columns {
    () => {
        "key, alias, kind, data, expires_at, used_at, session_id"
    };
}

/// A write the group-commit writer carries.
#[derive(Debug)]
enum Write {
    /// Spend a refresh token.
    Spend(Box<Spend>),
    /// Start a session with its first refresh token.
    Start(Box<(Session, RefreshRecord)>),
}

/// What a write came to.
#[derive(Debug, Clone, Copy)]
enum Done {
    Spent(SpendOutcome),
    Started,
}

type WriteJob = (
    Write,
    tokio::sync::oneshot::Sender<Result<Done, StoreError>>,
);

/// Most writes one commit carries.
const WRITE_BATCH: usize = 256;

/// Spends refresh tokens and starts sessions (the hot writes: every refresh and every login)
/// with group commit: whatever queued while the previous commit was being fsynced goes into the
/// next transaction, so many share one fsync and none waits for a timer. Each write is still
/// all-or-nothing and answered only after its commit.
async fn write_loop(writer: SqlitePool, mut jobs: tokio::sync::mpsc::Receiver<WriteJob>) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(WRITE_BATCH);
    while jobs.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let writes: Vec<&Write> = batch.iter().map(|j| &j.0).collect();
        match write_batch(&writer, &writes).await {
            Ok(done) => {
                for ((_, reply), d) in batch.drain(..).zip(done) {
                    let _ = reply.send(Ok(d));
                }
            }
            // One bad write must not fail its neighbours: retry each alone.
            Err(_) => {
                for (write, reply) in batch.drain(..) {
                    let r = write_batch(&writer, &[&write]).await.map(|o| o[0]);
                    let _ = reply.send(r);
                }
            }
        }
    }
}

async fn write_batch(writer: &SqlitePool, writes: &[&Write]) -> Result<Vec<Done>, StoreError> {
    let mut tx = writer.begin().await.map_err(backend)?;
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        out.push(match w {
            Write::Spend(spend) => Done::Spent(spend_in(&mut tx, spend).await?),
            Write::Start(start) => {
                insert_session(&mut tx, &start.0, &start.1).await?;
                Done::Started
            }
        });
    }
    tx.commit().await.map_err(backend)?;
    Ok(out)
}

async fn insert_session(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    session: &Session,
    first: &RefreshRecord,
) -> Result<(), StoreError> {
    let id = session.id.to_string();
    sqlx::query(concat!(
        "INSERT INTO sessions (",
        session_columns!(),
        ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&id)
    .bind(session.account.to_string())
    .bind(&session.client_id)
    .bind(serde_json::to_string(&session.amr).map_err(|e| corrupt("amr", e))?)
    .bind(&session.audience)
    .bind(&session.scope)
    .bind(serde_json::to_string(&session.login_groups).map_err(|e| corrupt("groups", e))?)
    .bind(session.created_at.0)
    .bind(session.last_used_at.0)
    .bind(session.expires_at.0)
    .bind(session.revoked_at.map(|t| t.0))
    .bind(session.revoked_reason.as_deref())
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if matches!(&e, sqlx::Error::Database(d) if d.is_foreign_key_violation()) {
            StoreError::NotFound(format!("account {}", session.account))
        } else {
            conflict_or_backend(e, || format!("session {id}"))
        }
    })?;
    insert_refresh(tx, first).await
}

async fn spend_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    spend: &Spend,
) -> Result<SpendOutcome, StoreError> {
    // The first statement writes, so the transaction holds the write lock from the start and
    // the check ("still unspent, session live") and the spend are one atomic step; spends later
    // in the batch see the earlier ones.
    let won = sqlx::query(
        "UPDATE refresh_tokens SET spent_at = ?, grace_until = ?, grace_sealed = ?
         WHERE hash = ? AND spent_at IS NULL
           AND session_id IN (SELECT id FROM sessions WHERE revoked_at IS NULL)",
    )
    .bind(spend.at.0)
    .bind(spend.grace_until.0)
    .bind(&spend.sealed)
    .bind(&spend.old.0[..])
    .execute(&mut **tx)
    .await
    .map_err(backend)?
    .rows_affected()
        == 1;
    if !won {
        return Ok(SpendOutcome::Lost);
    }
    insert_refresh(tx, &spend.next).await?;
    sqlx::query("UPDATE sessions SET last_used_at = ? WHERE id = ?")
        .bind(spend.at.0)
        .bind(spend.next.session.to_string())
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    if let Some(groups) = &spend.login_groups {
        sqlx::query("UPDATE sessions SET login_groups_json = ? WHERE id = ?")
            .bind(serde_json::to_string(groups).map_err(|e| corrupt("groups", e))?)
            .bind(spend.next.session.to_string())
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
    }
    Ok(SpendOutcome::Spent)
}

/// A uniqueness violation becomes `Conflict(what)`; anything else a backend failure.
fn conflict_or_backend(e: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict(what())
    } else {
        backend(e)
    }
}

impl SqliteStore {
    /// The one account a query with one text parameter finds.
    async fn account_where(
        &self,
        sql: &'static str,
        key: String,
    ) -> Result<Option<UserAccount>, StoreError> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        match row {
            Some(r) => Ok(Some(self.load_account(&r).await?)),
            None => Ok(None),
        }
    }

    /// Hands a write to the group-commit writer and waits for its commit.
    async fn write(&self, write: Write) -> Result<Done, StoreError> {
        let stopped = || StoreError::Backend("the store writer has stopped".into());
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writes
            .send((write, reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Opens (creating if needed) the database file and brings its schema up to date.
    ///
    /// # Errors
    /// When the file cannot be opened or a migration fails.
    pub async fn open(path: &Path) -> Result<Self, OpenError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let open = |source| OpenError::Open {
            path: path.display().to_string(),
            source,
        };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(open)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(open)?;
        let (writes, jobs) = tokio::sync::mpsc::channel(4 * WRITE_BATCH);
        tokio::spawn(write_loop(writer.clone(), jobs));
        let store = Self {
            pool,
            writer,
            writes,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), OpenError> {
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        let mig = |version| move |source| OpenError::Migrate { version, source };
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY NOT NULL)",
        )
        .execute(&self.writer)
        .await
        .map_err(mig(0))?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&self.writer)
                .await
                .map_err(mig(0))?;
        if current > known {
            return Err(OpenError::TooNew {
                found: current,
                known,
            });
        }
        for &(version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            let mut tx = self.writer.begin().await.map_err(mig(version))?;
            sqlx::raw_sql(sql)
                .execute(&mut *tx)
                .await
                .map_err(mig(version))?;
            sqlx::query("INSERT INTO schema_migrations (version) VALUES (?)")
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(mig(version))?;
            tx.commit().await.map_err(mig(version))?;
            tracing::info!(version, "store schema upgraded");
        }
        Ok(())
    }

    async fn load_account(&self, row: &SqliteRow) -> Result<UserAccount, StoreError> {
        let uid: String = row.get("uid");
        let identities: Vec<String> =
            sqlx::query_scalar("SELECT identity_json FROM identities WHERE account_uid = ?")
                .bind(&uid)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        let identities = identities
            .iter()
            .map(|j| serde_json::from_str::<ExternalIdentity>(j))
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(|e| corrupt("identity", e))?;
        let groups: BTreeSet<GroupName> = serde_json::from_str(row.get::<&str, _>("groups_json"))
            .map_err(|e| corrupt("groups", e))?;
        let labels: BTreeMap<LabelKey, String> =
            serde_json::from_str(row.get::<&str, _>("labels_json"))
                .map_err(|e| corrupt("labels", e))?;
        let default_namespace = row
            .get::<Option<String>, _>("default_namespace")
            .map(|n| Namespace::from_str(&n))
            .transpose()
            .map_err(|e| corrupt("namespace", e))?;
        Ok(UserAccount {
            uid: uid.parse().map_err(|e| corrupt("uid", e))?,
            name: AccountName::from_str(row.get("name")).map_err(|e| corrupt("name", e))?,
            groups,
            labels,
            default_namespace,
            disabled: row.get::<i64, _>("disabled") != 0,
            identities,
            created_at: UnixTime(row.get("created_at")),
        })
    }

    async fn write_identities(
        tx: &mut sqlx::SqliteConnection,
        uid: &str,
        identities: &BTreeSet<ExternalIdentity>,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM identities WHERE account_uid = ?")
            .bind(uid)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        for id in identities {
            let json = serde_json::to_string(id).map_err(|e| corrupt("identity", e))?;
            sqlx::query(
                "INSERT INTO identities (identity_key, account_uid, identity_json) VALUES (?, ?, ?)",
            )
            .bind(id.key())
            .bind(uid)
            .bind(json)
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict_or_backend(e, || format!("identity {}", id.key())))?;
        }
        Ok(())
    }
}

fn token_from_row(row: &SqliteRow) -> Result<StaticToken, StoreError> {
    Ok(StaticToken {
        id: TokenId::from_str(row.get("id")).map_err(|e| corrupt("token id", e))?,
        account: AccountUid::from_str(row.get("account_uid")).map_err(|e| corrupt("uid", e))?,
        description: row.get("description"),
        created_at: UnixTime(row.get("created_at")),
        expires_at: row.get::<Option<i64>, _>("expires_at").map(UnixTime),
        revoked_at: row.get::<Option<i64>, _>("revoked_at").map(UnixTime),
    })
}

macro_rules! token_columns {
    () => {
        "id, account_uid, description, created_at, expires_at, revoked_at"
    };
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_account(
        &self,
        new: NewAccount,
        now: UnixTime,
    ) -> Result<UserAccount, StoreError> {
        let account = UserAccount {
            uid: AccountUid::random(),
            name: new.name,
            groups: new.groups,
            labels: new.labels,
            default_namespace: new.default_namespace,
            disabled: new.disabled,
            identities: new.identities,
            created_at: now,
        };
        let uid = account.uid.to_string();
        let mut tx = self.writer.begin().await.map_err(backend)?;
        sqlx::query(
            "INSERT INTO accounts (uid, name, groups_json, labels_json, default_namespace, disabled, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&uid)
        .bind(account.name.as_str())
        .bind(serde_json::to_string(&account.groups).map_err(|e| corrupt("groups", e))?)
        .bind(serde_json::to_string(&account.labels).map_err(|e| corrupt("labels", e))?)
        .bind(account.default_namespace.as_ref().map(Namespace::as_str))
        .bind(i64::from(account.disabled))
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_or_backend(e, || format!("account {}", account.name)))?;
        Self::write_identities(&mut tx, &uid, &account.identities).await?;
        tx.commit().await.map_err(backend)?;
        Ok(account)
    }

    async fn account(&self, uid: AccountUid) -> Result<Option<UserAccount>, StoreError> {
        self.account_where("SELECT * FROM accounts WHERE uid = ?", uid.to_string())
            .await
    }

    async fn account_by_name(&self, name: &AccountName) -> Result<Option<UserAccount>, StoreError> {
        self.account_where(
            "SELECT * FROM accounts WHERE name = ?",
            name.as_str().to_owned(),
        )
        .await
    }

    async fn account_by_identity(
        &self,
        identity: &ExternalIdentity,
    ) -> Result<Option<UserAccount>, StoreError> {
        self.account_where(
            "SELECT a.* FROM accounts a JOIN identities i ON i.account_uid = a.uid \
             WHERE i.identity_key = ?",
            identity.key(),
        )
        .await
    }

    async fn accounts(&self) -> Result<Vec<UserAccount>, StoreError> {
        let rows = sqlx::query("SELECT * FROM accounts ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.load_account(r).await?);
        }
        Ok(out)
    }

    async fn update_account(&self, account: &UserAccount) -> Result<(), StoreError> {
        let uid = account.uid.to_string();
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let done = sqlx::query(
            "UPDATE accounts SET name = ?, groups_json = ?, labels_json = ?, default_namespace = ?, disabled = ?
             WHERE uid = ?",
        )
        .bind(account.name.as_str())
        .bind(serde_json::to_string(&account.groups).map_err(|e| corrupt("groups", e))?)
        .bind(serde_json::to_string(&account.labels).map_err(|e| corrupt("labels", e))?)
        .bind(account.default_namespace.as_ref().map(Namespace::as_str))
        .bind(i64::from(account.disabled))
        .bind(&uid)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_or_backend(e, || format!("account {}", account.name)))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("account {uid}")));
        }
        Self::write_identities(&mut tx, &uid, &account.identities).await?;
        tx.commit().await.map_err(backend)
    }

    async fn create_static_token(
        &self,
        token: &StaticToken,
        hash: TokenHash,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO static_tokens (id, hash, account_uid, description, created_at, expires_at, revoked_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(token.id.to_string())
        .bind(&hash.0[..])
        .bind(token.account.to_string())
        .bind(&token.description)
        .bind(token.created_at.0)
        .bind(token.expires_at.map(|t| t.0))
        .bind(token.revoked_at.map(|t| t.0))
        .execute(&self.writer)
        .await
        .map_err(|e| {
            if matches!(&e, sqlx::Error::Database(d) if d.is_foreign_key_violation()) {
                StoreError::NotFound(format!("account {}", token.account))
            } else {
                conflict_or_backend(e, || format!("token {}", token.id))
            }
        })?;
        Ok(())
    }

    async fn static_token_by_hash(
        &self,
        hash: TokenHash,
    ) -> Result<Option<StaticToken>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM static_tokens WHERE hash = ?"
        ))
        .bind(&hash.0[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn static_tokens(
        &self,
        account: Option<AccountUid>,
    ) -> Result<Vec<StaticToken>, StoreError> {
        // One statement for both: `?1 IS NULL` keeps every account when none is named.
        let rows = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM static_tokens WHERE ?1 IS NULL OR account_uid = ?1 ORDER BY created_at DESC, id"
        ))
        .bind(account.map(|uid| uid.to_string()))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_static_token(
        &self,
        id: TokenId,
        now: UnixTime,
    ) -> Result<StaticToken, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE static_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? RETURNING ",
            token_columns!(),
            ""
        ))
        .bind(now.0)
        .bind(id.to_string())
        .fetch_optional(&self.writer)
        .await
        .map_err(backend)?;
        match row {
            Some(r) => token_from_row(&r),
            None => Err(StoreError::NotFound(format!("token {id}"))),
        }
    }

    async fn create_session(
        &self,
        session: &Session,
        first: &RefreshRecord,
    ) -> Result<(), StoreError> {
        self.write(Write::Start(Box::new((session.clone(), first.clone()))))
            .await
            .map(drop)
    }

    async fn session(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn sessions(&self, account: Option<AccountUid>) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE ?1 IS NULL OR account_uid = ?1 ORDER BY created_at DESC, id"
        ))
        .bind(account.map(|uid| uid.to_string()))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(session_from_row).collect()
    }

    async fn refresh_token(&self, hash: TokenHash) -> Result<Option<RefreshRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT hash, session_id, created_at, spent_at, grace_until, grace_sealed, upstream_sealed
             FROM refresh_tokens WHERE hash = ?",
        )
        .bind(&hash.0[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| {
            Ok(RefreshRecord {
                hash,
                session: SessionId::from_str(r.get("session_id"))
                    .map_err(|e| corrupt("session id", e))?,
                created_at: UnixTime(r.get("created_at")),
                spent_at: r.get::<Option<i64>, _>("spent_at").map(UnixTime),
                grace_until: r.get::<Option<i64>, _>("grace_until").map(UnixTime),
                grace_sealed: r.get("grace_sealed"),
                upstream_sealed: r.get("upstream_sealed"),
            })
        })
        .transpose()
    }

    async fn spend_refresh(&self, spend: &Spend) -> Result<SpendOutcome, StoreError> {
        match self.write(Write::Spend(Box::new(spend.clone()))).await? {
            Done::Spent(outcome) => Ok(outcome),
            Done::Started => Err(StoreError::Backend(
                "the writer answered out of turn".into(),
            )),
        }
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        reason: &str,
        now: UnixTime,
    ) -> Result<Session, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE sessions SET revoked_at = COALESCE(revoked_at, ?),
                 revoked_reason = COALESCE(revoked_reason, ?)
             WHERE id = ? RETURNING ",
            session_columns!()
        ))
        .bind(now.0)
        .bind(reason)
        .bind(id.to_string())
        .fetch_optional(&self.writer)
        .await
        .map_err(backend)?;
        match row {
            Some(r) => session_from_row(&r),
            None => Err(StoreError::NotFound(format!("session {id}"))),
        }
    }

    async fn revoke_account_sessions(
        &self,
        account: AccountUid,
        reason: &str,
        now: UnixTime,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = ?, revoked_reason = ?
             WHERE account_uid = ? AND revoked_at IS NULL AND expires_at > ?",
        )
        .bind(now.0)
        .bind(reason)
        .bind(account.to_string())
        .bind(now.0)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn revoke_jti(
        &self,
        jti: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO revoked_jtis (jti, revoked_at, expires_at) VALUES (?, ?, ?)
             ON CONFLICT (jti) DO UPDATE SET expires_at = MAX(expires_at, excluded.expires_at)",
        )
        .bind(jti)
        .bind(now.0)
        .bind(expires_at.0)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn revocations(&self, now: UnixTime) -> Result<Revocations, StoreError> {
        let sessions: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM sessions WHERE revoked_at IS NOT NULL AND expires_at > ?",
        )
        .bind(now.0)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let jtis: Vec<String> =
            sqlx::query_scalar("SELECT jti FROM revoked_jtis WHERE expires_at > ?")
                .bind(now.0)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        Ok(Revocations {
            sessions: sessions
                .iter()
                .map(|s| SessionId::from_str(s).map_err(|e| corrupt("session id", e)))
                .collect::<Result<_, _>>()?,
            jtis,
        })
    }

    async fn purge(&self, before: UnixTime) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let mut n = 0;
        for sql in [
            "DELETE FROM sessions WHERE expires_at <= ?",
            "DELETE FROM revoked_jtis WHERE expires_at <= ?",
            "DELETE FROM pending WHERE expires_at <= ?",
            // A sealed next pair is needed only during its grace window.
            "UPDATE refresh_tokens SET grace_sealed = NULL
             WHERE grace_sealed IS NOT NULL AND grace_until <= ?",
        ] {
            n += sqlx::query(sql)
                .bind(before.0)
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected();
        }
        tx.commit().await.map_err(backend)?;
        Ok(n)
    }

    async fn put_pending(&self, p: &Pending) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pending (key, alias, kind, data, expires_at, used_at, session_id)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&p.key.0[..])
        .bind(p.alias.as_deref())
        .bind(&p.kind)
        .bind(&p.data)
        .bind(p.expires_at.0)
        .bind(p.used_at.map(|t| t.0))
        .bind(p.session.map(|s| s.to_string()))
        .execute(&self.writer)
        .await
        .map_err(|e| conflict_or_backend(e, || format!("pending {}", p.kind)))?;
        Ok(())
    }

    async fn pending(&self, key: TokenHash, now: UnixTime) -> Result<Option<Pending>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            pending_columns!(),
            " FROM pending WHERE key = ? AND expires_at > ?"
        ))
        .bind(&key.0[..])
        .bind(now.0)
        .fetch_optional(&self.writer)
        .await
        .map_err(backend)?;
        row.as_ref().map(pending_from_row).transpose()
    }

    async fn pending_by_alias(
        &self,
        alias: &str,
        now: UnixTime,
    ) -> Result<Option<Pending>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            pending_columns!(),
            " FROM pending WHERE alias = ? AND expires_at > ?"
        ))
        .bind(alias)
        .bind(now.0)
        .fetch_optional(&self.writer)
        .await
        .map_err(backend)?;
        row.as_ref().map(pending_from_row).transpose()
    }

    async fn update_pending(
        &self,
        key: TokenHash,
        data: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE pending SET data = ? WHERE key = ? AND used_at IS NULL AND expires_at > ?",
        )
        .bind(data)
        .bind(&key.0[..])
        .bind(now.0)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn use_pending(
        &self,
        key: TokenHash,
        now: UnixTime,
    ) -> Result<Option<(Pending, bool)>, StoreError> {
        let first = sqlx::query(
            "UPDATE pending SET used_at = ? WHERE key = ? AND used_at IS NULL AND expires_at > ?",
        )
        .bind(now.0)
        .bind(&key.0[..])
        .bind(now.0)
        .execute(&self.writer)
        .await
        .map_err(backend)?
        .rows_affected()
            == 1;
        // A used record stays findable until it expires, so a second use can be traced to the
        // session the first one started.
        let row = sqlx::query(concat!(
            "SELECT ",
            pending_columns!(),
            " FROM pending WHERE key = ?"
        ))
        .bind(&key.0[..])
        .fetch_optional(&self.writer)
        .await
        .map_err(backend)?;
        match row.as_ref().map(pending_from_row).transpose()? {
            Some(p) if first || p.used_at.is_some() => Ok(Some((p, first))),
            _ => Ok(None),
        }
    }

    async fn set_pending_session(
        &self,
        key: TokenHash,
        session: SessionId,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE pending SET session_id = ? WHERE key = ?")
            .bind(session.to_string())
            .bind(&key.0[..])
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, private_pkcs8, sealed_by, state, created_at, activated_at, retire_after
             FROM signing_keys ORDER BY created_at, kid",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(StoredKey {
                    kid: r.get("kid"),
                    private: r.get("private_pkcs8"),
                    sealed_by: r.get("sealed_by"),
                    state: KeyState::from_str(r.get("state"))
                        .map_err(|e| corrupt("key state", e))?,
                    created_at: UnixTime(r.get("created_at")),
                    activated_at: r.get::<Option<i64>, _>("activated_at").map(UnixTime),
                    retire_after: r.get::<Option<i64>, _>("retire_after").map(UnixTime),
                })
            })
            .collect()
    }

    async fn replace_signing_keys(&self, keys: &[StoredKey]) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        sqlx::query("DELETE FROM signing_keys")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        for k in keys {
            sqlx::query(
                "INSERT INTO signing_keys
                   (kid, private_pkcs8, sealed_by, state, created_at, activated_at, retire_after)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&k.kid)
            .bind(&k.private)
            .bind(k.sealed_by.as_deref())
            .bind(k.state.to_string())
            .bind(k.created_at.0)
            .bind(k.activated_at.map(|t| t.0))
            .bind(k.retire_after.map(|t| t.0))
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict_or_backend(e, || format!("signing key {}", k.kid)))?;
        }
        tx.commit().await.map_err(backend)
    }
}

async fn insert_refresh(
    tx: &mut sqlx::SqliteConnection,
    r: &RefreshRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refresh_tokens
           (hash, session_id, created_at, spent_at, grace_until, grace_sealed, upstream_sealed)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&r.hash.0[..])
    .bind(r.session.to_string())
    .bind(r.created_at.0)
    .bind(r.spent_at.map(|t| t.0))
    .bind(r.grace_until.map(|t| t.0))
    .bind(r.grace_sealed.as_deref())
    .bind(r.upstream_sealed.as_deref())
    .execute(&mut *tx)
    .await
    .map_err(|e| conflict_or_backend(e, || "refresh token".to_owned()))?;
    Ok(())
}

fn pending_from_row(row: &SqliteRow) -> Result<Pending, StoreError> {
    let key: Vec<u8> = row.get("key");
    Ok(Pending {
        key: TokenHash(
            key.try_into()
                .map_err(|_| corrupt("pending key", "not 32 bytes"))?,
        ),
        alias: row.get("alias"),
        kind: row.get("kind"),
        data: row.get("data"),
        expires_at: UnixTime(row.get("expires_at")),
        used_at: row.get::<Option<i64>, _>("used_at").map(UnixTime),
        session: row
            .get::<Option<&str>, _>("session_id")
            .map(SessionId::from_str)
            .transpose()
            .map_err(|e| corrupt("session id", e))?,
    })
}

fn session_from_row(row: &SqliteRow) -> Result<Session, StoreError> {
    Ok(Session {
        id: SessionId::from_str(row.get("id")).map_err(|e| corrupt("session id", e))?,
        account: AccountUid::from_str(row.get("account_uid")).map_err(|e| corrupt("uid", e))?,
        client_id: row.get("client_id"),
        amr: serde_json::from_str(row.get::<&str, _>("amr_json")).map_err(|e| corrupt("amr", e))?,
        audience: row.get("audience"),
        scope: row.get("scope"),
        login_groups: serde_json::from_str(row.get::<&str, _>("login_groups_json"))
            .map_err(|e| corrupt("groups", e))?,
        created_at: UnixTime(row.get("created_at")),
        last_used_at: UnixTime(row.get("last_used_at")),
        expires_at: UnixTime(row.get("expires_at")),
        revoked_at: row.get::<Option<i64>, _>("revoked_at").map(UnixTime),
        revoked_reason: row.get("revoked_reason"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn pending_records_are_used_once_and_expire() {
        let (_d, s) = store().await;
        let p = Pending {
            key: TokenHash([7; 32]),
            alias: Some("ABCD-EFGH".into()),
            kind: "device".into(),
            data: "{}".into(),
            expires_at: UnixTime(200),
            used_at: None,
            session: None,
        };
        s.put_pending(&p).await.unwrap();
        assert!(s.put_pending(&p).await.is_err(), "keys are unique");
        assert_eq!(
            s.pending_by_alias("ABCD-EFGH", UnixTime(100))
                .await
                .unwrap(),
            Some(p.clone())
        );
        assert!(
            s.update_pending(p.key, r#"{"ok":1}"#, UnixTime(100))
                .await
                .unwrap()
        );
        let (used, first) = s.use_pending(p.key, UnixTime(101)).await.unwrap().unwrap();
        assert!(first);
        assert_eq!(used.used_at, Some(UnixTime(101)));
        assert_eq!(used.data, r#"{"ok":1}"#);
        assert!(
            !s.update_pending(p.key, "{}", UnixTime(102)).await.unwrap(),
            "used: frozen"
        );
        let sid = SessionId::random();
        s.set_pending_session(p.key, sid).await.unwrap();
        let (again, first) = s.use_pending(p.key, UnixTime(102)).await.unwrap().unwrap();
        assert!(!first, "a second use is told apart");
        assert_eq!(again.session, Some(sid));
        // Expired: gone for every reader, and purged.
        assert_eq!(s.pending(p.key, UnixTime(200)).await.unwrap(), None);
        let q = Pending {
            key: TokenHash([8; 32]),
            alias: None,
            ..p.clone()
        };
        s.put_pending(&q).await.unwrap();
        assert_eq!(s.use_pending(q.key, UnixTime(300)).await.unwrap(), None);
        assert!(s.purge(UnixTime(300)).await.unwrap() >= 2);
        assert_eq!(
            s.use_pending(TokenHash([9; 32]), UnixTime(1))
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn accounts_round_trip_and_names_are_unique() {
        let (_d, s) = store().await;
        let mut new = NewAccount::named("alice".parse().unwrap());
        new.groups.insert("dev".parse().unwrap());
        new.identities
            .insert(ExternalIdentity::Directory { id: "g1".into() });
        let a = s.create_account(new.clone(), UnixTime(10)).await.unwrap();
        assert_eq!(s.account(a.uid).await.unwrap().unwrap(), a);
        assert!(matches!(
            s.create_account(NewAccount::named("alice".parse().unwrap()), UnixTime(11))
                .await,
            Err(StoreError::Conflict(_))
        ));
        let mut other = NewAccount::named("bob".parse().unwrap());
        other.identities = new.identities.clone();
        assert!(matches!(
            s.create_account(other, UnixTime(11)).await,
            Err(StoreError::Conflict(_))
        ));
        // the failed insert left nothing behind
        assert_eq!(s.accounts().await.unwrap().len(), 1);
        let mut renamed = a.clone();
        renamed.name = "alice2".parse().unwrap();
        renamed.disabled = true;
        s.update_account(&renamed).await.unwrap();
        let got = s
            .account_by_name(&"alice2".parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.uid, a.uid);
        assert!(got.disabled);
    }

    #[tokio::test]
    async fn static_tokens_are_found_by_hash_and_revoked_once() {
        let (_d, s) = store().await;
        let a = s
            .create_account(NewAccount::named("robot".parse().unwrap()), UnixTime(1))
            .await
            .unwrap();
        let t = StaticToken {
            id: TokenId::random(),
            account: a.uid,
            description: "ci".into(),
            created_at: UnixTime(1),
            expires_at: None,
            revoked_at: None,
        };
        s.create_static_token(&t, TokenHash([7; 32])).await.unwrap();
        assert_eq!(
            s.static_token_by_hash(TokenHash([7; 32])).await.unwrap(),
            Some(t.clone())
        );
        assert_eq!(
            s.static_token_by_hash(TokenHash([8; 32])).await.unwrap(),
            None
        );
        let r = s.revoke_static_token(t.id, UnixTime(5)).await.unwrap();
        assert_eq!(r.revoked_at, Some(UnixTime(5)));
        let r = s.revoke_static_token(t.id, UnixTime(9)).await.unwrap();
        assert_eq!(r.revoked_at, Some(UnixTime(5)));
        assert!(matches!(
            s.revoke_static_token(TokenId::random(), UnixTime(9)).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_does_not_remigrate() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.db");
        let key = StoredKey {
            kid: "k1".into(),
            private: b"der".to_vec(),
            sealed_by: None,
            state: KeyState::Current,
            created_at: UnixTime(3),
            activated_at: Some(UnixTime(3)),
            retire_after: None,
        };
        {
            let s = SqliteStore::open(&p).await.unwrap();
            s.replace_signing_keys(std::slice::from_ref(&key))
                .await
                .unwrap();
        }
        let s = SqliteStore::open(&p).await.unwrap();
        assert_eq!(s.signing_keys().await.unwrap(), vec![key]);
    }

    #[tokio::test]
    async fn a_store_from_before_sessions_is_upgraded_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.db");
        {
            // The schema and the key exactly as the first release wrote them.
            let opts = SqliteConnectOptions::new()
                .filename(&p)
                .create_if_missing(true);
            let pool = SqlitePoolOptions::new().connect_with(opts).await.unwrap();
            sqlx::raw_sql(MIGRATIONS[0].1).execute(&pool).await.unwrap();
            sqlx::raw_sql(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY NOT NULL);
                 INSERT INTO schema_migrations VALUES (1);
                 INSERT INTO signing_keys (kid, private_pkcs8, created_at) VALUES ('k0', x'00', 7);",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let s = SqliteStore::open(&p).await.unwrap();
        let keys = s.signing_keys().await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            (
                keys[0].kid.as_str(),
                keys[0].state,
                keys[0].sealed_by.as_ref()
            ),
            ("k0", KeyState::Current, None)
        );
        assert!(s.sessions(None).await.unwrap().is_empty());
    }

    fn record(session: SessionId, byte: u8) -> RefreshRecord {
        RefreshRecord::fresh(TokenHash([byte; 32]), session, UnixTime(10))
    }

    async fn session_fixture(s: &SqliteStore) -> Session {
        let a = s
            .create_account(NewAccount::named("alice".parse().unwrap()), UnixTime(1))
            .await
            .unwrap();
        let session = Session {
            id: SessionId::random(),
            account: a.uid,
            client_id: "idbridge-cli".into(),
            amr: vec!["static".into()],
            audience: "kubernetes".into(),
            scope: String::new(),
            login_groups: vec!["proxied".into()],
            created_at: UnixTime(10),
            last_used_at: UnixTime(10),
            expires_at: UnixTime(1000),
            revoked_at: None,
            revoked_reason: None,
        };
        s.create_session(&session, &record(session.id, 1))
            .await
            .unwrap();
        session
    }

    fn spend(session: SessionId, old: u8, next: u8) -> Spend {
        Spend {
            old: TokenHash([old; 32]),
            at: UnixTime(20),
            grace_until: UnixTime(25),
            sealed: vec![next],
            login_groups: None,
            next: record(session, next),
        }
    }

    #[tokio::test]
    async fn a_refresh_token_is_spent_once_however_many_try_at_once() {
        let (_d, s) = store().await;
        let session = session_fixture(&s).await;
        assert_eq!(s.session(session.id).await.unwrap(), Some(session.clone()));
        let tries: Vec<_> = (0..20u8)
            .map(|i| {
                let s = s.clone();
                let sp = spend(session.id, 1, 100 + i);
                tokio::spawn(async move { s.spend_refresh(&sp).await.unwrap() })
            })
            .collect();
        let mut won = 0;
        for t in tries {
            if t.await.unwrap() == SpendOutcome::Spent {
                won += 1;
            }
        }
        assert_eq!(won, 1);
        let old = s.refresh_token(TokenHash([1; 32])).await.unwrap().unwrap();
        assert_eq!(old.spent_at, Some(UnixTime(20)));
        assert_eq!(old.grace_until, Some(UnixTime(25)));
        let winner = old.grace_sealed.unwrap()[0];
        assert!(
            s.refresh_token(TokenHash([winner; 32]))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            s.session(session.id).await.unwrap().unwrap().last_used_at,
            UnixTime(20)
        );
        // The grace pair is purged once the window is over; the spend itself is remembered.
        s.purge(UnixTime(25)).await.unwrap();
        let old = s.refresh_token(TokenHash([1; 32])).await.unwrap().unwrap();
        assert!(old.grace_sealed.is_none() && old.spent_at.is_some());
    }

    #[tokio::test]
    async fn revoked_sessions_cannot_be_refreshed_and_are_listed_until_they_end() {
        let (_d, s) = store().await;
        let session = session_fixture(&s).await;
        let r = s
            .revoke_session(session.id, "test", UnixTime(15))
            .await
            .unwrap();
        assert_eq!(r.revoked_at, Some(UnixTime(15)));
        let again = s
            .revoke_session(session.id, "later", UnixTime(16))
            .await
            .unwrap();
        assert_eq!(again.revoked_reason.as_deref(), Some("test"));
        assert_eq!(
            s.spend_refresh(&spend(session.id, 1, 2)).await.unwrap(),
            SpendOutcome::Lost
        );
        s.revoke_jti("j1", UnixTime(500), UnixTime(15))
            .await
            .unwrap();
        let list = s.revocations(UnixTime(100)).await.unwrap();
        assert_eq!(list.sessions, vec![session.id]);
        assert_eq!(list.jtis, vec!["j1".to_owned()]);
        let later = s.revocations(UnixTime(1000)).await.unwrap();
        assert!(later.sessions.is_empty() && later.jtis.is_empty());
        assert!(s.purge(UnixTime(1000)).await.unwrap() >= 2);
        assert_eq!(s.session(session.id).await.unwrap(), None);
        assert!(s.refresh_token(TokenHash([1; 32])).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn revoking_a_user_revokes_only_their_live_sessions() {
        let (_d, s) = store().await;
        let session = session_fixture(&s).await;
        assert_eq!(
            s.revoke_account_sessions(session.account, "r", UnixTime(30))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            s.revoke_account_sessions(session.account, "r", UnixTime(31))
                .await
                .unwrap(),
            0
        );
        assert_eq!(s.sessions(Some(session.account)).await.unwrap().len(), 1);
    }
}
