//! The SQLite store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use idbridge_core::{
    AccountName, AccountUid, ExternalIdentity, GroupName, LabelKey, Namespace, NewAccount,
    StaticToken, Store, StoreError, TokenHash, TokenId, UnixTime, UserAccount,
};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use crate::OpenError;

const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/0001_init.sql"))];

/// A [`Store`] in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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

/// A uniqueness violation becomes `Conflict(what)`; anything else a backend failure.
fn conflict_or_backend(e: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict(what())
    } else {
        backend(e)
    }
}

impl SqliteStore {
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
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|source| OpenError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), OpenError> {
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        let mig = |version| move |source| OpenError::Migrate { version, source };
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(mig(0))?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&self.pool)
                .await
                .map_err(mig(0))?;
        if current > known {
            return Err(OpenError::TooNew {
                found: current,
                known,
            });
        }
        for &(version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            let mut tx = self.pool.begin().await.map_err(mig(version))?;
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
        let mut tx = self.pool.begin().await.map_err(backend)?;
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
        let row = sqlx::query("SELECT * FROM accounts WHERE uid = ?")
            .bind(uid.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        match row {
            Some(r) => Ok(Some(self.load_account(&r).await?)),
            None => Ok(None),
        }
    }

    async fn account_by_name(&self, name: &AccountName) -> Result<Option<UserAccount>, StoreError> {
        let row = sqlx::query("SELECT * FROM accounts WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        match row {
            Some(r) => Ok(Some(self.load_account(&r).await?)),
            None => Ok(None),
        }
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
        let mut tx = self.pool.begin().await.map_err(backend)?;
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
        .execute(&self.pool)
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
        let rows = match account {
            Some(uid) => {
                sqlx::query(concat!(
                    "SELECT ",
                    token_columns!(),
                    " FROM static_tokens WHERE account_uid = ? ORDER BY created_at DESC, id"
                ))
                .bind(uid.to_string())
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    token_columns!(),
                    " FROM static_tokens ORDER BY created_at DESC, id"
                ))
                .fetch_all(&self.pool)
                .await
            }
        }
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
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        match row {
            Some(r) => token_from_row(&r),
            None => Err(StoreError::NotFound(format!("token {id}"))),
        }
    }

    async fn signing_keys(&self) -> Result<Vec<(String, Vec<u8>, UnixTime)>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, private_pkcs8, created_at FROM signing_keys ORDER BY created_at, kid",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get("kid"),
                    r.get("private_pkcs8"),
                    UnixTime(r.get("created_at")),
                )
            })
            .collect())
    }

    async fn add_signing_key(
        &self,
        kid: &str,
        pkcs8_der: &[u8],
        now: UnixTime,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO signing_keys (kid, private_pkcs8, created_at) VALUES (?, ?, ?)")
            .bind(kid)
            .bind(pkcs8_der)
            .bind(now.0)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
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
        {
            let s = SqliteStore::open(&p).await.unwrap();
            s.add_signing_key("k1", b"der", UnixTime(3)).await.unwrap();
        }
        let s = SqliteStore::open(&p).await.unwrap();
        assert_eq!(
            s.signing_keys().await.unwrap(),
            vec![("k1".into(), b"der".to_vec(), UnixTime(3))]
        );
    }
}
