//! The writer thread and the checkpointer beside it.
//!
//! One thread owns the only writing connection. A write is a closure handed to it once, however
//! many statements it takes, and the thread group-commits: whatever queued while the previous
//! commit was being fsynced goes into the next transaction, each write inside its own savepoint
//! (so one failing write does not undo its neighbours, and a write that fails undoes all of its
//! own statements), and every write is answered only after its commit is on disk.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Duration;

use idbridge_core::StoreError;
use rusqlite::Connection;

use super::SqliteStore;
use super::sql::execute;

/// Most writes one commit carries.
const WRITE_BATCH: usize = 256;

/// A write the writer thread runs inside the batch's transaction, then answers once the batch
/// has committed (or failed).
pub(super) trait WriteJob: Send {
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
pub(super) fn write_loop(conn: &Connection, jobs: &mpsc::Receiver<Box<dyn WriteJob>>) {
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

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies committed pages from the WAL into the database file, in the background: a PASSIVE
/// checkpoint never blocks the writer or the readers, and copies each page once however often
/// it changed since the last one. When everything is copied, the writer starts the WAL over.
pub(super) fn checkpoint_loop(conn: &Connection, stop: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "store: checkpoint failed; retrying");
        }
    }
}

impl SqliteStore {
    /// Hands a write to the writer thread and waits for its commit.
    pub(super) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
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
}
