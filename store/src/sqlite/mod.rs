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
//! ([`SessionStore`]), `pending` ([`PendingStore`]) and `keys` ([`KeyStore`]).
//!
//! [`AccountStore`]: idbridge_core::AccountStore
//! [`SessionStore`]: idbridge_core::SessionStore
//! [`PendingStore`]: idbridge_core::PendingStore
//! [`KeyStore`]: idbridge_core::KeyStore

mod accounts;
mod keys;
mod pending;
mod sessions;
mod sql;
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
    use idbridge_core::{
        AccountStore, ExternalIdentity, KeyState, KeyStore, NewAccount, Pending, PendingStore,
        RefreshRecord, Session, SessionId, SessionStore, Spend, SpendOutcome, StaticToken,
        StoredKey, TokenHash, TokenId, UnixTime,
    };

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
