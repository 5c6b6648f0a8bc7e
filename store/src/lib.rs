//! Implementations of [`idbridge_core::Store`], and the suite every implementation must pass.
//!
//! The store is split by concern in `idbridge-core`: [`AccountStore`] (accounts, identities,
//! static tokens and the atomic batch of account changes), [`SessionStore`] (sessions and refresh
//! tokens), [`PendingStore`] (single-use records of logins in progress) and [`KeyStore`] (signing
//! keys, revocations, the purge) and [`SyncStateStore`] (what the sync worker remembers between
//! runs, and its lease); `Store` is their union.
//!
//! The embedded default, [`SqliteStore`], is one SQLite file in WAL mode with
//! `synchronous = FULL`, so a write the caller saw acknowledged survives `kill -9` and power loss
//! alike. Its code follows the same split, one file per trait, with the writer thread (one
//! group-committing writer, reads on the calling thread) in a file of its own. Schema changes are
//! numbered SQL files applied in order inside one transaction each; the applied version is
//! recorded in the database itself, so an interrupted upgrade is simply retried at the next
//! start.
//!
//! What a store owes its callers is written once, in [`conformance`]: generic checks over a
//! [`conformance::StoreFactory`], run against a store with [`conformance_tests!`], one named test
//! per behaviour. The SQLite store passes it (`tests/conformance.rs`); a later store (PostgreSQL)
//! must pass it unchanged. Only what one implementation alone can show (its files, its schema
//! upgrades, reopening) is tested beside that implementation.
//!
//! [`AccountStore`]: idbridge_core::AccountStore
//! [`SessionStore`]: idbridge_core::SessionStore
//! [`PendingStore`]: idbridge_core::PendingStore
//! [`KeyStore`]: idbridge_core::KeyStore
//! [`SyncStateStore`]: idbridge_core::SyncStateStore

pub mod conformance;
mod files;
mod sqlite;

pub use sqlite::SqliteStore;

/// Errors opening a store (operations report [`idbridge_core::StoreError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The database could not be opened or created.
    #[error("cannot open the SQLite store at {path}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// A migration failed; the store is left at the last version that applied completely.
    #[error("cannot upgrade the store schema to version {version}")]
    Migrate {
        /// The version that failed.
        version: i64,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The store's writer thread could not start or stopped while opening.
    #[error("cannot start the store writer: {0}")]
    Thread(String),
    /// The store's files are readable by others and cannot or may not be made private.
    #[error("store file permissions: {0}")]
    Permissions(String),
    /// The database was written by a newer idbridge.
    #[error("the store has schema version {found}, newer than this idbridge knows ({known})")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Latest version this build knows.
        known: i64,
    },
}
