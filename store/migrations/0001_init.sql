CREATE TABLE accounts (
    uid               TEXT PRIMARY KEY NOT NULL,
    name              TEXT NOT NULL UNIQUE,
    groups_json       TEXT NOT NULL,
    labels_json       TEXT NOT NULL,
    default_namespace TEXT,
    disabled          INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL
) STRICT;

CREATE TABLE identities (
    identity_key  TEXT PRIMARY KEY NOT NULL,
    account_uid   TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    identity_json TEXT NOT NULL
) STRICT;
CREATE INDEX identities_account ON identities(account_uid);

CREATE TABLE static_tokens (
    id          TEXT PRIMARY KEY NOT NULL,
    hash        BLOB NOT NULL UNIQUE,
    account_uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    description TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
) STRICT;
CREATE INDEX static_tokens_account ON static_tokens(account_uid);

CREATE TABLE signing_keys (
    kid           TEXT PRIMARY KEY NOT NULL,
    private_pkcs8 BLOB NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT;
