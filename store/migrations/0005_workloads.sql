-- Workload revocations (pods, serviceaccounts, principals refused credentials) and the key
-- versions of the principals whose keytabs are handed out.
CREATE TABLE workload_revocations (
    target TEXT NOT NULL,
    value TEXT NOT NULL,
    reason TEXT NOT NULL,
    by_name TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (target, value)
);

CREATE TABLE workload_keys (
    principal TEXT PRIMARY KEY NOT NULL,
    kvno INTEGER NOT NULL,
    rotated_at INTEGER NOT NULL,
    previous_kvno INTEGER,
    previous_until INTEGER
);
