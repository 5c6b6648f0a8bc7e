-- What the sync worker remembers between runs (one row, as JSON), and its lease (one row).
CREATE TABLE sync_state (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    state TEXT NOT NULL
);

CREATE TABLE sync_lease (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
