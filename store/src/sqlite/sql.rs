//! Running statements and decoding rows, shared by every part of the store: a uniqueness
//! violation becomes `Conflict`, a missing parent row `NotFound`, an undecodable column `Corrupt`
//! naming the column, anything else a backend failure.

use idbridge_core::{AccountUid, StoreError};
use rusqlite::types::FromSql;
use rusqlite::{Connection, Params, Row, ffi};

pub(super) fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn extended_code(e: &rusqlite::Error) -> Option<std::ffi::c_int> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.extended_code),
        _ => None,
    }
}

/// A uniqueness violation becomes `Conflict(what)`; anything else a backend failure.
pub(super) fn conflict_or_backend(e: rusqlite::Error, what: impl FnOnce() -> String) -> StoreError {
    match extended_code(&e) {
        Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
            StoreError::Conflict(what())
        }
        _ => backend(e),
    }
}

/// As [`conflict_or_backend`], and a missing parent row (the account) becomes `NotFound`.
pub(super) fn insert_error(
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
pub(super) fn col<T: FromSql>(row: &Row<'_>, name: &str) -> Result<T, StoreError> {
    row.get(name).map_err(|e| corrupt(name, e))
}

/// The first row a statement yields, mapped.
pub(super) fn query_one<T>(
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
pub(super) fn query_all<T>(
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
pub(super) fn execute(
    conn: &Connection,
    sql: &str,
    params: impl Params,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}
