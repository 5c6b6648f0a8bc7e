//! The SQLite store.
//!
//! Two ways in, chosen for what each costs:
//!
//! - **Writes** run on one writer thread that owns the only writing connection. A write is a
//!   closure handed to that thread once, however many statements it takes, and the thread
//!   group-commits: whatever queued while the previous commit was being fsynced goes into the
//!   next transaction, each write inside its own savepoint (so one failing write does not undo
//!   its neighbours), and every write is answered only after its commit is on disk.
//! - **Reads** are point lookups that SQLite serves from its page cache in microseconds. They run
//!   on the calling thread with a connection from a small pool; in WAL mode a reader never waits
//!   for the writer. Handing each statement to another thread and back (what an async driver
//!   does) cost more than the statement itself.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use idbridge_core::{
    AccountName, AccountStore, AccountUid, ExternalIdentity, GroupName, KeyState, KeyStore,
    LabelKey, Namespace, NewAccount, Pending, PendingStore, RefreshContext, RefreshRecord,
    Revocations, Session, SessionId, SessionStore, Spend, SpendOutcome, StaticToken, StoreError,
    StoredKey, TokenHash, TokenId, UnixTime, UserAccount,
};
use rusqlite::types::FromSql;
use rusqlite::{Connection, OpenFlags, Params, Row, ffi, params};

use crate::OpenError;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_sessions.sql")),
    (3, include_str!("../migrations/0003_logins.sql")),
];

/// How long a statement waits for a lock another process holds (an `--offline` admin command).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Most writes one commit carries.
const WRITE_BATCH: usize = 256;

/// Idle read connections kept open.
const READERS: usize = 8;

/// A [`Store`] in one SQLite file (WAL, `synchronous = FULL`). See the module docs for how reads
/// and writes run.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    writes: mpsc::Sender<Box<dyn WriteJob>>,
    /// Dropped with the store, which stops the checkpointer.
    _checkpoints: mpsc::Sender<()>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn extended_code(e: &rusqlite::Error) -> Option<std::ffi::c_int> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.extended_code),
        _ => None,
    }
}

/// A uniqueness violation becomes `Conflict(what)`; anything else a backend failure.
fn conflict_or_backend(e: rusqlite::Error, what: impl FnOnce() -> String) -> StoreError {
    match extended_code(&e) {
        Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
            StoreError::Conflict(what())
        }
        _ => backend(e),
    }
}

/// As [`conflict_or_backend`], and a missing parent row (the account) becomes `NotFound`.
fn insert_error(
    e: rusqlite::Error,
    account: AccountUid,
    what: impl FnOnce() -> String,
) -> StoreError {
    if extended_code(&e) == Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) {
        StoreError::NotFound(format!("account {account}"))
    } else {
        conflict_or_backend(e, what)
    }
}

/// One column, its decoding failure named.
fn col<T: FromSql>(row: &Row<'_>, name: &str) -> Result<T, StoreError> {
    row.get(name).map_err(|e| corrupt(name, e))
}

/// The first row a statement yields, mapped.
fn query_one<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    map: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let mut rows = stmt.query(params).map_err(backend)?;
    rows.next().map_err(backend)?.map(map).transpose()
}

/// Every row a statement yields, mapped.
fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    mut map: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let mut rows = stmt.query(params).map_err(backend)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// Runs a statement that changes rows and says how many it changed.
fn execute(conn: &Connection, sql: &str, params: impl Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
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

macro_rules! token_columns {
    () => {
        "id, account_uid, description, created_at, expires_at, revoked_at"
    };
}

/// An account row with its identities, read in one statement (so in one snapshot).
macro_rules! account_select {
    ($from_where:literal) => {
        concat!(
            "SELECT a.uid, a.name, a.groups_json, a.labels_json, a.default_namespace, a.disabled, \
             a.created_at, (SELECT json_group_array(json(i.identity_json)) FROM identities i \
             WHERE i.account_uid = a.uid) AS identities_json ",
            $from_where
        )
    };
}

/// A write the writer thread runs inside the batch's transaction, then answers once the batch
/// has committed (or failed).
trait WriteJob: Send {
    /// Runs the write's statements; `false` when it failed (its savepoint is rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: with the write's own result, or with `failed` when the transaction
    /// could not begin or commit.
    fn finish(self: Box<Self>, failed: Option<&rusqlite::Error>);
}

struct Op<T, F> {
    work: Option<F>,
    out: Option<Result<T, StoreError>>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteJob for Op<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        // A bug in one write must not take the writer thread (and every later write) with it.
        let out = catch_unwind(AssertUnwindSafe(|| work(conn)))
            .unwrap_or_else(|_| Err(StoreError::Backend("a store write panicked".into())));
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, failed: Option<&rusqlite::Error>) {
        let answer = match (failed, self.out) {
            (Some(e), _) => Err(StoreError::Backend(
                format!("the store could not commit: {e}").into(),
            )),
            (None, Some(out)) => out,
            (None, None) => Err(StoreError::Backend("the write did not run".into())),
        };
        let _ = self.reply.send(answer);
    }
}

/// The writer thread: group commit, each write in its own savepoint.
fn write_loop(conn: &Connection, jobs: &mpsc::Receiver<Box<dyn WriteJob>>) {
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(WRITE_BATCH);
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < WRITE_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "store: cannot begin a write transaction");
            for job in batch.drain(..) {
                job.finish(Some(&e));
            }
            continue;
        }
        let mut failed = None;
        for job in &mut batch {
            let step = execute(conn, "SAVEPOINT w", []).and_then(|_| {
                if !job.run(conn) {
                    execute(conn, "ROLLBACK TO w", [])?;
                }
                execute(conn, "RELEASE w", [])
            });
            if let Err(e) = step {
                failed = Some(e);
                break;
            }
        }
        let failed = failed.or_else(|| conn.execute_batch("COMMIT").err());
        if let Some(e) = &failed {
            tracing::error!(error = %e, "store: a write transaction failed");
            let _ = conn.execute_batch("ROLLBACK");
        }
        for job in batch.drain(..) {
            job.finish(failed.as_ref());
        }
    }
}

fn open_connection(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies committed pages from the WAL into the database file, in the background: a PASSIVE
/// checkpoint never blocks the writer or the readers, and copies each page once however often
/// it changed since the last one. When everything is copied, the writer starts the WAL over.
fn checkpoint_loop(conn: &Connection, stop: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "store: checkpoint failed; retrying");
        }
    }
}

/// Opens the writing connection and brings the schema up to date.
fn open_writer(path: &Path) -> Result<Connection, OpenError> {
    let open = |source| OpenError::Open {
        path: path.display().to_string(),
        source,
    };
    let conn = open_connection(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(open)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode stayed {mode}"
        ))));
    }
    // Checkpoints run on their own thread (`checkpoint_loop`), so a commit never waits for one.
    // The writer's own checkpoint is only a backstop, should that thread fall far behind.
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 100000;",
    )
    .map_err(open)?;
    migrate(&conn)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), OpenError> {
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    let mig = |version| move |source| OpenError::Migrate { version, source };
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY NOT NULL)",
    )
    .map_err(mig(0))?;
    let current: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(mig(0))?;
    if current > known {
        return Err(OpenError::TooNew {
            found: current,
            known,
        });
    }
    for &(version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let tx = conn.unchecked_transaction().map_err(mig(version))?;
        tx.execute_batch(sql).map_err(mig(version))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES (?)",
            [version],
        )
        .map_err(mig(version))?;
        tx.commit().map_err(mig(version))?;
        tracing::info!(version, "store schema upgraded");
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    ///
    /// # Errors
    /// When the file cannot be opened or a migration fails.
    pub async fn open(path: &Path) -> Result<Self, OpenError> {
        Self::open_with(path, false).await
    }

    /// Opens (or creates) the store at `path`, first making its files private (see
    /// [`crate::files`]); `insecure_permissions` lets a store that is not idbridge's own stay
    /// readable by others, with a warning.
    ///
    /// # Errors
    /// As [`SqliteStore::open`], and [`OpenError::Permissions`].
    pub async fn open_with(path: &Path, insecure_permissions: bool) -> Result<Self, OpenError> {
        for w in crate::files::secure(path, insecure_permissions)? {
            tracing::warn!("{w}");
        }
        let (ready, opened) = tokio::sync::oneshot::channel();
        let (writes, jobs) = mpsc::channel::<Box<dyn WriteJob>>();
        let at = path.to_path_buf();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || match open_writer(&at) {
                Ok(conn) => {
                    let _ = ready.send(Ok(()));
                    write_loop(&conn, &jobs);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|e| OpenError::Thread(e.to_string()))?;
        opened
            .await
            .map_err(|_| OpenError::Thread("the store writer stopped while opening".into()))??;
        let checkpointer = open_connection(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| OpenError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let (checkpoints, stop) = mpsc::channel();
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpointer, &stop))
            .map_err(|e| OpenError::Thread(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                readers: Mutex::new(Vec::new()),
                writes,
                _checkpoints: checkpoints,
            }),
        })
    }

    /// Runs a read on the calling thread with a pooled read-only connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(c) => c,
            None => open_connection(
                &self.inner.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(backend)?,
        };
        let out = f(&conn);
        let mut pool = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if pool.len() < READERS {
            pool.push(conn);
        }
        out
    }

    /// Hands a write to the writer thread and waits for its commit.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let stopped = || StoreError::Backend("the store writer has stopped".into());
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Op {
            work: Some(work),
            out: None,
            reply,
        });
        self.inner.writes.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// The one account a query with one text parameter finds.
    fn account_where(&self, sql: &str, key: &str) -> Result<Option<UserAccount>, StoreError> {
        self.read(|c| query_one(c, sql, [key], account_from_row))
    }
}

fn account_from_row(row: &Row<'_>) -> Result<UserAccount, StoreError> {
    let identities: Vec<ExternalIdentity> =
        serde_json::from_str(&col::<String>(row, "identities_json")?)
            .map_err(|e| corrupt("identity", e))?;
    let groups: BTreeSet<GroupName> = serde_json::from_str(&col::<String>(row, "groups_json")?)
        .map_err(|e| corrupt("groups", e))?;
    let labels: BTreeMap<LabelKey, String> =
        serde_json::from_str(&col::<String>(row, "labels_json")?)
            .map_err(|e| corrupt("labels", e))?;
    let default_namespace = col::<Option<String>>(row, "default_namespace")?
        .map(|n| Namespace::from_str(&n))
        .transpose()
        .map_err(|e| corrupt("namespace", e))?;
    Ok(UserAccount {
        uid: col::<String>(row, "uid")?
            .parse()
            .map_err(|e| corrupt("uid", e))?,
        name: AccountName::from_str(&col::<String>(row, "name")?)
            .map_err(|e| corrupt("name", e))?,
        groups,
        labels,
        default_namespace,
        disabled: col::<i64>(row, "disabled")? != 0,
        identities: identities.into_iter().collect(),
        created_at: UnixTime(col(row, "created_at")?),
    })
}

fn write_identities(
    conn: &Connection,
    uid: &str,
    identities: &BTreeSet<ExternalIdentity>,
) -> Result<(), StoreError> {
    execute(conn, "DELETE FROM identities WHERE account_uid = ?", [uid]).map_err(backend)?;
    for id in identities {
        let json = serde_json::to_string(id).map_err(|e| corrupt("identity", e))?;
        execute(
            conn,
            "INSERT INTO identities (identity_key, account_uid, identity_json) VALUES (?, ?, ?)",
            params![id.key(), uid, json],
        )
        .map_err(|e| conflict_or_backend(e, || format!("identity {}", id.key())))?;
    }
    Ok(())
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
            session.client_id,
            serde_json::to_string(&session.amr).map_err(|e| corrupt("amr", e))?,
            session.audience,
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

fn token_from_row(row: &Row<'_>) -> Result<StaticToken, StoreError> {
    Ok(StaticToken {
        id: TokenId::from_str(&col::<String>(row, "id")?).map_err(|e| corrupt("token id", e))?,
        account: AccountUid::from_str(&col::<String>(row, "account_uid")?)
            .map_err(|e| corrupt("uid", e))?,
        description: col(row, "description")?,
        created_at: UnixTime(col(row, "created_at")?),
        expires_at: col::<Option<i64>>(row, "expires_at")?.map(UnixTime),
        revoked_at: col::<Option<i64>>(row, "revoked_at")?.map(UnixTime),
    })
}

fn session_from_row(row: &Row<'_>) -> Result<Session, StoreError> {
    Ok(Session {
        id: SessionId::from_str(&col::<String>(row, "id")?)
            .map_err(|e| corrupt("session id", e))?,
        account: AccountUid::from_str(&col::<String>(row, "account_uid")?)
            .map_err(|e| corrupt("uid", e))?,
        client_id: col(row, "client_id")?,
        amr: serde_json::from_str(&col::<String>(row, "amr_json")?)
            .map_err(|e| corrupt("amr", e))?,
        audience: col(row, "audience")?,
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

fn pending_from_row(row: &Row<'_>) -> Result<Pending, StoreError> {
    let key: Vec<u8> = col(row, "key")?;
    Ok(Pending {
        key: TokenHash(
            key.try_into()
                .map_err(|_| corrupt("pending key", "not 32 bytes"))?,
        ),
        alias: col(row, "alias")?,
        kind: col(row, "kind")?,
        data: col(row, "data")?,
        expires_at: UnixTime(col(row, "expires_at")?),
        used_at: col::<Option<i64>>(row, "used_at")?.map(UnixTime),
        session: col::<Option<String>>(row, "session_id")?
            .map(|s| SessionId::from_str(&s))
            .transpose()
            .map_err(|e| corrupt("session id", e))?,
    })
}

fn session_by_id(conn: &Connection, sql: &str, p: impl Params) -> Result<Session, StoreError> {
    query_one(conn, sql, p, session_from_row)?
        .ok_or_else(|| StoreError::NotFound("session".to_owned()))
}

#[async_trait]
impl AccountStore for SqliteStore {
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
        let groups = serde_json::to_string(&account.groups).map_err(|e| corrupt("groups", e))?;
        let labels = serde_json::to_string(&account.labels).map_err(|e| corrupt("labels", e))?;
        let a = account.clone();
        self.write(move |c| {
            let uid = a.uid.to_string();
            execute(
                c,
                "INSERT INTO accounts (uid, name, groups_json, labels_json, default_namespace, disabled, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                params![
                    uid,
                    a.name.as_str(),
                    groups,
                    labels,
                    a.default_namespace.as_ref().map(Namespace::as_str),
                    i64::from(a.disabled),
                    now.0
                ],
            )
            .map_err(|e| conflict_or_backend(e, || format!("account {}", a.name)))?;
            write_identities(c, &uid, &a.identities)
        })
        .await?;
        Ok(account)
    }

    async fn account(&self, uid: AccountUid) -> Result<Option<UserAccount>, StoreError> {
        self.account_where(
            account_select!("FROM accounts a WHERE a.uid = ?"),
            &uid.to_string(),
        )
    }

    async fn account_by_name(&self, name: &AccountName) -> Result<Option<UserAccount>, StoreError> {
        self.account_where(
            account_select!("FROM accounts a WHERE a.name = ?"),
            name.as_str(),
        )
    }

    async fn account_by_identity(
        &self,
        identity: &ExternalIdentity,
    ) -> Result<Option<UserAccount>, StoreError> {
        // A scalar subquery, not a join: SQLite re-prepared the join form at every new binding
        // of the key (seen in profiles), which cost more than the lookup itself.
        self.account_where(
            account_select!(
                "FROM accounts a \
                 WHERE a.uid = (SELECT account_uid FROM identities WHERE identity_key = ?)"
            ),
            &identity.key(),
        )
    }

    async fn accounts(&self) -> Result<Vec<UserAccount>, StoreError> {
        self.read(|c| {
            query_all(
                c,
                account_select!("FROM accounts a ORDER BY a.name"),
                [],
                account_from_row,
            )
        })
    }

    async fn update_account(&self, account: &UserAccount) -> Result<(), StoreError> {
        let groups = serde_json::to_string(&account.groups).map_err(|e| corrupt("groups", e))?;
        let labels = serde_json::to_string(&account.labels).map_err(|e| corrupt("labels", e))?;
        let a = account.clone();
        self.write(move |c| {
            let uid = a.uid.to_string();
            let changed = execute(
                c,
                "UPDATE accounts SET name = ?, groups_json = ?, labels_json = ?, default_namespace = ?, disabled = ?
                 WHERE uid = ?",
                params![
                    a.name.as_str(),
                    groups,
                    labels,
                    a.default_namespace.as_ref().map(Namespace::as_str),
                    i64::from(a.disabled),
                    uid
                ],
            )
            .map_err(|e| conflict_or_backend(e, || format!("account {}", a.name)))?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("account {uid}")));
            }
            write_identities(c, &uid, &a.identities)
        })
        .await
    }

    async fn create_static_token(
        &self,
        token: &StaticToken,
        hash: TokenHash,
    ) -> Result<(), StoreError> {
        let t = token.clone();
        self.write(move |c| {
            execute(
                c,
                "INSERT INTO static_tokens (id, hash, account_uid, description, created_at, expires_at, revoked_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                params![
                    t.id.to_string(),
                    &hash.0[..],
                    t.account.to_string(),
                    t.description,
                    t.created_at.0,
                    t.expires_at.map(|x| x.0),
                    t.revoked_at.map(|x| x.0)
                ],
            )
            .map_err(|e| insert_error(e, t.account, || format!("token {}", t.id)))?;
            Ok(())
        })
        .await
    }

    async fn static_token_by_hash(
        &self,
        hash: TokenHash,
    ) -> Result<Option<StaticToken>, StoreError> {
        self.read(|c| {
            query_one(
                c,
                concat!(
                    "SELECT ",
                    token_columns!(),
                    " FROM static_tokens WHERE hash = ?"
                ),
                [&hash.0[..]],
                token_from_row,
            )
        })
    }

    async fn static_tokens(
        &self,
        account: Option<AccountUid>,
    ) -> Result<Vec<StaticToken>, StoreError> {
        // One statement for both: `?1 IS NULL` keeps every account when none is named.
        self.read(|c| {
            query_all(
                c,
                concat!(
                    "SELECT ",
                    token_columns!(),
                    " FROM static_tokens WHERE ?1 IS NULL OR account_uid = ?1 ORDER BY created_at DESC, id"
                ),
                [account.map(|uid| uid.to_string())],
                token_from_row,
            )
        })
    }

    async fn revoke_static_token(
        &self,
        id: TokenId,
        now: UnixTime,
    ) -> Result<StaticToken, StoreError> {
        self.write(move |c| {
            query_one(
                c,
                concat!(
                    "UPDATE static_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? RETURNING ",
                    token_columns!()
                ),
                params![now.0, id.to_string()],
                token_from_row,
            )?
            .ok_or_else(|| StoreError::NotFound(format!("token {id}")))
        })
        .await
    }
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
        self.write(move |c| {
            let n = execute(
                c,
                "UPDATE sessions SET revoked_at = ?, revoked_reason = ?
                 WHERE account_uid = ? AND revoked_at IS NULL AND expires_at > ?",
                params![now.0, reason, account.to_string(), now.0],
            )
            .map_err(backend)?;
            Ok(n as u64)
        })
        .await
    }
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
                    p.kind,
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
    async fn a_failing_write_does_not_undo_the_others_committed_with_it() {
        let (_d, s) = store().await;
        // Queued together, these share one transaction; the duplicate fails inside it.
        let mut dup = NewAccount::named("dup".parse().unwrap());
        dup.identities
            .insert(ExternalIdentity::Directory { id: "d1".into() });
        s.create_account(dup.clone(), UnixTime(1)).await.unwrap();
        // A new name, so its account row is written, then its identity collides.
        let mut again = dup.clone();
        again.name = "dup2".parse().unwrap();
        let tries: Vec<_> = (0..10)
            .map(|i| {
                let s = s.clone();
                let new = if i == 5 {
                    again.clone()
                } else {
                    NewAccount::named(format!("user{i}").parse().unwrap())
                };
                tokio::spawn(async move { s.create_account(new, UnixTime(2)).await })
            })
            .collect();
        let mut conflicts = 0;
        for t in tries {
            match t.await.unwrap() {
                Ok(_) => {}
                Err(StoreError::Conflict(_)) => conflicts += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(conflicts, 1);
        assert_eq!(s.accounts().await.unwrap().len(), 10);
        // The refused account's row was rolled back with its identity.
        let dup2 = "dup2".parse().unwrap();
        assert_eq!(s.account_by_name(&dup2).await.unwrap(), None);
        let d1 = ExternalIdentity::Directory { id: "d1".into() };
        let found = s.account_by_identity(&d1).await.unwrap().unwrap();
        assert_eq!(found.name.as_str(), "dup");
    }

    #[tokio::test]
    async fn committed_pages_reach_the_database_file_in_the_background() {
        let (dir, s) = store().await;
        let db = dir.path().join("t.db");
        let before = std::fs::metadata(&db).unwrap().len();
        // About 2 MB through the WAL; no connection closes, so only the checkpointer copies it.
        for i in 0..200u8 {
            let p = Pending {
                key: TokenHash([i; 32]),
                alias: None,
                kind: "bulk".into(),
                data: "x".repeat(10_000),
                expires_at: UnixTime(100),
                used_at: None,
                session: None,
            };
            s.put_pending(&p).await.unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&db).unwrap().len() < before + 1_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            s.pending(TokenHash([7; 32]), UnixTime(1))
                .await
                .unwrap()
                .unwrap()
                .data
                .len(),
            10_000
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
            let c = Connection::open(&p).unwrap();
            c.execute_batch(MIGRATIONS[0].1).unwrap();
            c.execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY NOT NULL);
                 INSERT INTO schema_migrations VALUES (1);
                 INSERT INTO signing_keys (kid, private_pkcs8, created_at) VALUES ('k0', x'00', 7);",
            )
            .unwrap();
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
