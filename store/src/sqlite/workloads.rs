//! Workload revocations and the key versions of keytab principals.

use async_trait::async_trait;
use idbridge_core::{
    StoreError, UnixTime, WorkloadKeyState, WorkloadRevocation, WorkloadStore, WorkloadTarget,
};
use rusqlite::{Row, params};

use super::SqliteStore;
use super::sql::{backend, col, corrupt, execute, query_all, query_one};

fn revocation(r: &Row<'_>) -> Result<WorkloadRevocation, StoreError> {
    let target: String = col(r, "target")?;
    Ok(WorkloadRevocation {
        target: WorkloadTarget::parse(&target)
            .ok_or_else(|| corrupt("workload revocation", format!("target {target:?}")))?,
        value: col(r, "value")?,
        reason: col(r, "reason")?,
        by: col(r, "by_name")?,
        at: UnixTime(col(r, "at")?),
    })
}

fn key_state(r: &Row<'_>) -> Result<WorkloadKeyState, StoreError> {
    Ok(WorkloadKeyState {
        principal: col(r, "principal")?,
        kvno: col(r, "kvno")?,
        rotated_at: UnixTime(col(r, "rotated_at")?),
        previous_kvno: col(r, "previous_kvno")?,
        previous_until: col::<Option<i64>>(r, "previous_until")?.map(UnixTime),
    })
}

const REVOCATION: &str = "SELECT target, value, reason, by_name, at FROM workload_revocations";
const KEY_STATE: &str =
    "SELECT principal, kvno, rotated_at, previous_kvno, previous_until FROM workload_keys";

#[async_trait]
impl WorkloadStore for SqliteStore {
    async fn revoke_workload(&self, r: &WorkloadRevocation) -> Result<(), StoreError> {
        let r = r.clone();
        self.write(move |c| {
            execute(
                c,
                "INSERT INTO workload_revocations (target, value, reason, by_name, at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (target, value) DO UPDATE
                 SET reason = ?3, by_name = ?4, at = ?5",
                params![r.target.as_str(), r.value, r.reason, r.by, r.at.0],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn lift_workload_revocation(
        &self,
        target: WorkloadTarget,
        value: &str,
    ) -> Result<bool, StoreError> {
        let value = value.to_owned();
        self.write(move |c| {
            let n = execute(
                c,
                "DELETE FROM workload_revocations WHERE target = ? AND value = ?",
                params![target.as_str(), value],
            )
            .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn workload_revocations(&self) -> Result<Vec<WorkloadRevocation>, StoreError> {
        self.read(|c| {
            query_all(
                c,
                &format!("{REVOCATION} ORDER BY at, target, value"),
                [],
                revocation,
            )
        })
    }

    async fn workload_revoked(
        &self,
        pod_uid: &str,
        service_account: &str,
        principal: &str,
    ) -> Result<Option<WorkloadRevocation>, StoreError> {
        self.read(|c| {
            query_one(
                c,
                &format!(
                    "{REVOCATION} WHERE (target = 'pod' AND value = ?1)
                     OR (target = 'service_account' AND value = ?2)
                     OR (target = 'principal' AND value = ?3)
                     ORDER BY at LIMIT 1"
                ),
                params![pod_uid, service_account, principal],
                revocation,
            )
        })
    }

    async fn workload_key_state(
        &self,
        principal: &str,
    ) -> Result<Option<WorkloadKeyState>, StoreError> {
        self.read(|c| {
            query_one(
                c,
                &format!("{KEY_STATE} WHERE principal = ?"),
                [principal],
                key_state,
            )
        })
    }

    async fn workload_key_states(&self) -> Result<Vec<WorkloadKeyState>, StoreError> {
        self.read(|c| query_all(c, &format!("{KEY_STATE} ORDER BY principal"), [], key_state))
    }

    async fn put_workload_key_state(
        &self,
        s: &WorkloadKeyState,
        expected: Option<UnixTime>,
    ) -> Result<bool, StoreError> {
        let s = s.clone();
        self.write(move |c| {
            let n = match expected {
                None => execute(
                    c,
                    "INSERT INTO workload_keys
                     (principal, kvno, rotated_at, previous_kvno, previous_until)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (principal) DO NOTHING",
                    params![
                        s.principal,
                        s.kvno,
                        s.rotated_at.0,
                        s.previous_kvno,
                        s.previous_until.map(|t| t.0)
                    ],
                ),
                Some(at) => execute(
                    c,
                    "UPDATE workload_keys SET kvno = ?2, rotated_at = ?3, previous_kvno = ?4,
                     previous_until = ?5 WHERE principal = ?1 AND rotated_at = ?6",
                    params![
                        s.principal,
                        s.kvno,
                        s.rotated_at.0,
                        s.previous_kvno,
                        s.previous_until.map(|t| t.0),
                        at.0
                    ],
                ),
            }
            .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }
}
