//! Accounts, their identities and their static tokens.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use async_trait::async_trait;
use idbridge_core::{
    AccountChange, AccountChangeOutcome, AccountName, AccountStore, AccountUid, ExternalIdentity,
    GroupName, LabelKey, Namespace, NewAccount, StaticToken, StoreError, TokenHash, TokenId,
    UnixTime, UserAccount,
};
use rusqlite::{Connection, Row, params};

use super::SqliteStore;
use super::sessions::revoke_account_sessions_in;
use super::sql::{
    backend, col, conflict_or_backend, corrupt, execute, insert_error, query_all, query_one,
};

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
pub(super) use account_select;

pub(super) fn account_from_row(row: &Row<'_>) -> Result<UserAccount, StoreError> {
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

/// An account with its groups and labels serialised, before the write is handed to the writer.
struct AccountRow {
    account: UserAccount,
    groups: String,
    labels: String,
}

impl AccountRow {
    fn of(account: UserAccount) -> Result<Self, StoreError> {
        let groups = serde_json::to_string(&account.groups).map_err(|e| corrupt("groups", e))?;
        let labels = serde_json::to_string(&account.labels).map_err(|e| corrupt("labels", e))?;
        Ok(Self {
            account,
            groups,
            labels,
        })
    }
}

fn insert_account(c: &Connection, row: &AccountRow) -> Result<(), StoreError> {
    let (a, groups, labels) = (&row.account, &row.groups, &row.labels);
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
            a.created_at.0
        ],
    )
    .map_err(|e| conflict_or_backend(e, || format!("account {}", a.name)))?;
    write_identities(c, &uid, &a.identities)
}

fn update_account_in(c: &Connection, row: &AccountRow) -> Result<(), StoreError> {
    let (a, groups, labels) = (&row.account, &row.groups, &row.labels);
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
}

/// Marks an account disabled and revokes its live sessions; returns how many.
fn disable_account_in(
    c: &Connection,
    uid: AccountUid,
    reason: &str,
    now: UnixTime,
) -> Result<u64, StoreError> {
    let changed = execute(
        c,
        "UPDATE accounts SET disabled = 1 WHERE uid = ?",
        [uid.to_string()],
    )
    .map_err(backend)?;
    if changed == 0 {
        return Err(StoreError::NotFound(format!("account {uid}")));
    }
    revoke_account_sessions_in(c, uid, reason, now)
}

/// One change of a batch, its serialising done before the write is handed to the writer.
enum Step {
    Create(AccountRow),
    Update(AccountRow),
    Disable { uid: AccountUid, reason: String },
}

impl Step {
    fn of(change: &AccountChange, now: UnixTime) -> Result<Self, StoreError> {
        Ok(match change {
            AccountChange::Create(new) => {
                Self::Create(AccountRow::of(new_account(new.clone(), now))?)
            }
            AccountChange::Update(account) => Self::Update(AccountRow::of(account.clone())?),
            AccountChange::Disable { uid, reason } => Self::Disable {
                uid: *uid,
                reason: reason.clone(),
            },
        })
    }

    fn apply(self, c: &Connection, now: UnixTime) -> Result<AccountChangeOutcome, StoreError> {
        Ok(match self {
            Self::Create(row) => {
                insert_account(c, &row)?;
                AccountChangeOutcome::Created(row.account)
            }
            Self::Update(row) => {
                update_account_in(c, &row)?;
                AccountChangeOutcome::Updated
            }
            Self::Disable { uid, reason } => AccountChangeOutcome::Disabled {
                revoked_sessions: disable_account_in(c, uid, &reason, now)?,
            },
        })
    }
}

/// Names the failed change of a batch.
fn in_batch(index: usize) -> impl Fn(StoreError) -> StoreError {
    move |e| StoreError::InBatch {
        index,
        error: Box::new(e),
    }
}

/// A new account as stored: a fresh UID, created `now`.
fn new_account(new: NewAccount, now: UnixTime) -> UserAccount {
    UserAccount {
        uid: AccountUid::random(),
        name: new.name,
        groups: new.groups,
        labels: new.labels,
        default_namespace: new.default_namespace,
        disabled: new.disabled,
        identities: new.identities,
        created_at: now,
    }
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

impl SqliteStore {
    /// The one account a query with one text parameter finds.
    fn account_where(&self, sql: &str, key: &str) -> Result<Option<UserAccount>, StoreError> {
        self.read(|c| query_one(c, sql, [key], account_from_row))
    }
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(
        &self,
        new: NewAccount,
        now: UnixTime,
    ) -> Result<UserAccount, StoreError> {
        let account = new_account(new, now);
        let row = AccountRow::of(account.clone())?;
        self.write(move |c| insert_account(c, &row)).await?;
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
        let row = AccountRow::of(account.clone())?;
        self.write(move |c| update_account_in(c, &row)).await
    }

    async fn apply_account_changes(
        &self,
        changes: &[AccountChange],
        now: UnixTime,
    ) -> Result<Vec<AccountChangeOutcome>, StoreError> {
        let steps = changes
            .iter()
            .enumerate()
            .map(|(i, change)| Step::of(change, now).map_err(in_batch(i)))
            .collect::<Result<Vec<_>, _>>()?;
        // One write, so one savepoint: a change that fails rolls back the changes before it.
        self.write(move |c| {
            steps
                .into_iter()
                .enumerate()
                .map(|(i, step)| step.apply(c, now).map_err(in_batch(i)))
                .collect()
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
