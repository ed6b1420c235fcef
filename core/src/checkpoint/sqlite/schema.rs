//! The SQLite store's schema and its migrations.
//!
//! The version lives in `PRAGMA user_version`. Opening a store upgrades an older schema in
//! place, one version at a time, each step in a transaction of its own (version 2 added the
//! response cache, version 3 the process records, version 4 the attempts processes died in,
//! version 5 the mark of items taken up, version 8 the history of processes and checks, version 9 when an item's
//! first attempt at its stage began;
//! versions 6 and 7 are the PostgreSQL store's runners, which this store has no use for);
//! a newer schema, or a database holding tables
//! of something else, is refused before anything is written.

use rusqlite::Connection;

use super::super::StoreError;

/// The schema this build writes.
pub(super) const SCHEMA_VERSION: i64 = 9;

/// Version 1: runs and their items.
const SCHEMA_V1: &str = "
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    status TEXT NOT NULL,
    items INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX runs_by_pipeline ON runs (pipeline, id);
CREATE TABLE items (
    run_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT,
    record TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    PRIMARY KEY (run_id, seq),
    UNIQUE (run_id, key)
) WITHOUT ROWID;
";

/// Version 2: answers kept across runs (see [`ResponseCache`]).
const SCHEMA_V2: &str = "
CREATE TABLE responses (
    key TEXT PRIMARY KEY,
    stage TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at TEXT NOT NULL
) WITHOUT ROWID;
";

/// Version 3: the last flight record of each pipeline's process (see
/// [`CheckpointStore::save_process`](super::super::CheckpointStore::save_process)).
const SCHEMA_V3: &str = "
CREATE TABLE processes (
    pipeline TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;
";

/// Version 4: the attempts a process died in, per item and stage (the item's row may still be
/// at an earlier stage, its move not committed when the process died).
const SCHEMA_V4: &str = "
CREATE TABLE deaths (
    run_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    stage TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    PRIMARY KEY (run_id, key, stage)
) WITHOUT ROWID;
";

/// Version 5: items taken up by a process, marked until they leave it (see
/// [`Change::TakenUp`](super::super::Change::TakenUp)).
const SCHEMA_V5: &str = "
ALTER TABLE items ADD COLUMN taken INTEGER NOT NULL DEFAULT 0;
";

/// Version 8: each process's end (`history`, for `stagewise runs`), and the checks that found
/// nothing new, counted rather than listed (`checks`).
const SCHEMA_V8: &str = "
CREATE TABLE history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT NOT NULL,
    outcome TEXT NOT NULL,
    exit_code INTEGER NOT NULL,
    reason TEXT,
    items INTEGER NOT NULL,
    done INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    skipped INTEGER NOT NULL
);
CREATE INDEX history_by_pipeline ON history (pipeline, id);
CREATE TABLE checks (
    pipeline TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    last_at TEXT NOT NULL
);
";

/// Version 9: when each item's first attempt at its stage began, in milliseconds since the
/// Unix epoch (`item_deadline` counts from it; NULL until one began).
const SCHEMA_V9: &str = "
ALTER TABLE items ADD COLUMN since INTEGER;
";

/// Bring the schema of the store shown as `shown` to [`SCHEMA_VERSION`], or refuse it.
pub(super) fn migrate(conn: &Connection, shown: &str) -> Result<(), StoreError> {
    let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
        path: shown.to_owned(),
        message: e.to_string(),
    };
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(corrupt)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: shown.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == 0 {
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(corrupt)?;
        if tables > 0 {
            return Err(StoreError::Corrupt {
                path: shown.to_owned(),
                message: "a SQLite database that is not a stagewise checkpoint store; it was not modified".into(),
            });
        }
    }
    // Each step only where needed: a current store is opened without taking the write lock.
    for (to, sql) in [
        (1, SCHEMA_V1),
        (2, SCHEMA_V2),
        (3, SCHEMA_V3),
        (4, SCHEMA_V4),
        (5, SCHEMA_V5),
        (8, SCHEMA_V8),
        (9, SCHEMA_V9),
    ] {
        if version < to {
            step(conn, to, sql).map_err(corrupt)?;
        }
    }
    // Later versions add their steps here: `(10, SCHEMA_V10)`.
    Ok(())
}

/// Bring the schema to version `to` with `sql`, unless it is there already. The version is read
/// again inside a write transaction, so two processes opening an old store at once upgrade it
/// once, one after the other.
fn step(conn: &Connection, to: i64, sql: &str) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let applied = (|| {
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version < to {
            conn.execute_batch(sql)?;
            conn.pragma_update(None, "user_version", to)?;
        }
        conn.execute_batch("COMMIT")
    })();
    if applied.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    applied
}
