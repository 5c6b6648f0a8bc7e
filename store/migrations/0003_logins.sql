ALTER TABLE refresh_tokens ADD COLUMN upstream_sealed BLOB;

CREATE TABLE pending (
    key        BLOB PRIMARY KEY NOT NULL,
    alias      TEXT UNIQUE,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    session_id TEXT
) STRICT;
CREATE INDEX pending_expires ON pending(expires_at);
