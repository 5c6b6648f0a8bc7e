CREATE TABLE sessions (
    id                TEXT PRIMARY KEY NOT NULL,
    account_uid       TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    client_id         TEXT NOT NULL,
    amr_json          TEXT NOT NULL,
    audience          TEXT NOT NULL,
    scope             TEXT NOT NULL,
    login_groups_json TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    last_used_at      INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    revoked_at        INTEGER,
    revoked_reason    TEXT
) STRICT;
CREATE INDEX sessions_account ON sessions(account_uid);
CREATE INDEX sessions_revoked ON sessions(expires_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE refresh_tokens (
    hash         BLOB PRIMARY KEY NOT NULL,
    session_id   TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL,
    spent_at     INTEGER,
    grace_until  INTEGER,
    grace_sealed BLOB
) STRICT;
CREATE INDEX refresh_tokens_session ON refresh_tokens(session_id);

CREATE TABLE revoked_jtis (
    jti        TEXT PRIMARY KEY NOT NULL,
    revoked_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

ALTER TABLE signing_keys ADD COLUMN sealed_by TEXT;
ALTER TABLE signing_keys ADD COLUMN state TEXT NOT NULL DEFAULT 'current';
ALTER TABLE signing_keys ADD COLUMN activated_at INTEGER;
ALTER TABLE signing_keys ADD COLUMN retire_after INTEGER;
