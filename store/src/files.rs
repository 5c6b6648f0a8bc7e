//! The store's files hold signing keys and token hashes: they are created readable by their
//! owner alone, and looser ones are tightened or refused before SQLite opens them.

use std::path::{Path, PathBuf};

use crate::OpenError;

/// The SQLite file and the WAL and shared-memory files beside it.
fn store_files(db: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [db.to_path_buf(), with("-wal"), with("-shm")]
}

/// Whether the file at `db` is an idbridge store: its schema table is there, so idbridge made
/// it (or a copy of one idbridge made).
fn is_idbridge_store(db: &Path) -> bool {
    rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|c| {
        c.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
            [],
            |r| r.get::<_, i64>(0),
        )
    })
    .is_ok_and(|n| n > 0)
}

/// Makes the store's files private before SQLite opens them, and returns a warning for each
/// change. A missing database file is created mode 0600 (SQLite gives its WAL and shared-memory
/// files the database file's mode). An existing idbridge store readable by group or others is
/// tightened to 0600; any other file that is, is refused unless `insecure` (then warned about).
///
/// # Errors
/// [`OpenError::Permissions`] naming the file and the fix.
#[cfg(unix)]
pub(crate) fn secure(db: &Path, insecure: bool) -> Result<Vec<String>, OpenError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |what: String| OpenError::Permissions(what);
    if !db.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(db)
            .map_err(|e| fail(format!("cannot create {}: {e}", db.display())))?;
        return Ok(Vec::new());
    }
    let ours = is_idbridge_store(db);
    let mut warnings = Vec::new();
    for f in store_files(db) {
        let Ok(meta) = std::fs::metadata(&f) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 == 0 {
            continue;
        }
        if ours {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| fail(format!("cannot make {} private: {e}", f.display())))?;
            warnings.push(format!(
                "{} was readable by others (mode {mode:o}): made it 0600",
                f.display()
            ));
        } else if insecure {
            warnings.push(format!(
                "insecure_store_permissions: {} is readable by others (mode {mode:o})",
                f.display()
            ));
        } else {
            return Err(fail(format!(
                "{} is readable by group or others (mode {mode:o}) and is not an idbridge store \
                 idbridge made: run `chmod 600 {}`, or set `insecure_store_permissions: true`",
                f.display(),
                f.display()
            )));
        }
    }
    Ok(warnings)
}

#[cfg(not(unix))]
pub(crate) fn secure(_db: &Path, _insecure: bool) -> Result<Vec<String>, OpenError> {
    Ok(Vec::new())
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_store_is_private_and_a_loose_one_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        assert!(secure(&db, false).unwrap().is_empty());
        assert_eq!(mode(&db), 0o600);
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE schema_migrations (version INTEGER)")
            .unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = secure(&db, false).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(mode(&db), 0o600);
    }

    #[test]
    fn a_loose_foreign_file_is_refused_unless_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        std::fs::write(&db, b"").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = secure(&db, false).unwrap_err().to_string();
        assert!(e.contains("insecure_store_permissions"), "{e}");
        assert_eq!(secure(&db, true).unwrap().len(), 1);
        assert_eq!(mode(&db), 0o640, "insecure leaves the mode alone");
    }
}
