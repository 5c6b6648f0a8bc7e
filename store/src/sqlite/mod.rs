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
//!
//! This file opens the store (migrations, the writer and checkpoint threads, the read pool);
//! `writer` is the writer thread and the checkpointer; `sql` runs statements and decodes rows
//! for the rest. Each store trait has its file: `accounts` ([`AccountStore`]), `sessions`
//! ([`SessionStore`]), `pending` ([`PendingStore`]), `keys` ([`KeyStore`]) and `sync`
//! ([`SyncStateStore`]) and `workloads` ([`WorkloadStore`]).
//!
//! [`AccountStore`]: idbridge_core::AccountStore
//! [`SessionStore`]: idbridge_core::SessionStore
//! [`PendingStore`]: idbridge_core::PendingStore
//! [`KeyStore`]: idbridge_core::KeyStore
//! [`SyncStateStore`]: idbridge_core::SyncStateStore
//! [`WorkloadStore`]: idbridge_core::WorkloadStore

mod accounts;
mod keys;
mod pending;
mod sessions;
mod sql;
mod sync;
mod workloads;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use idbridge_core::StoreError;
use rusqlite::{Connection, OpenFlags};

use self::sql::backend;
use self::writer::{WriteJob, checkpoint_loop, write_loop};
use crate::OpenError;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (2, include_str!("../../migrations/0002_sessions.sql")),
    (3, include_str!("../../migrations/0003_logins.sql")),
    (4, include_str!("../../migrations/0004_sync.sql")),
    (5, include_str!("../../migrations/0005_workloads.sql")),
];

/// How long a statement waits for a lock another process holds (an `--offline` admin command).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle read connections kept open.
const READERS: usize = 8;

/// A [`Store`](idbridge_core::Store) in one SQLite file (WAL, `synchronous = FULL`). See the module docs for how reads
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

fn open_connection(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
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
}

#[cfg(test)]
mod tests {
    //! What only the SQLite store can show: its files, its schema upgrades, reopening. The
    //! behaviour every store owes is in the conformance suite (`store/tests/conformance.rs`).

    use idbridge_core::{
        KeyState, KeyStore, Pending, PendingStore, SessionStore, StoredKey, TokenHash, UnixTime,
    };

    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        (dir, s)
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
                kind: idbridge_core::PendingKind::Login,
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
}
