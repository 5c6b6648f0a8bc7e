//! The store conformance suite against the SQLite store: every case its own test, each store in
//! a file of its own in one scratch directory.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use idbridge_core::Store;
use idbridge_store::SqliteStore;
use idbridge_store::conformance::StoreFactory;

#[derive(Debug)]
struct Sqlite {
    dir: tempfile::TempDir,
    made: AtomicUsize,
}

impl Sqlite {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            made: AtomicUsize::new(0),
        }
    }
}

#[async_trait::async_trait]
impl StoreFactory for Sqlite {
    async fn fresh(&self) -> Arc<dyn Store> {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("store-{n}.db"));
        Arc::new(SqliteStore::open(&path).await.unwrap())
    }
}

idbridge_store::conformance_tests!(Sqlite::new());
