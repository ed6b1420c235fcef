//! The response cache of a PostgreSQL store (schema version 2's `stagewise.responses`).

use std::sync::Mutex;

use crate::stage::{CacheError, ResponseCache};

use super::super::model::now;
use super::super::unpoisoned;
use super::conn::{db, off_runtime, Conn};

/// The response cache of a PostgreSQL store, on a connection of its own so that stage threads
/// never wait for the checkpoint writer's connection.
pub(super) struct PgCache {
    conn: Mutex<Conn>,
}

impl std::fmt::Debug for PgCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgCache")
    }
}

impl PgCache {
    /// The cache on `conn`, a session no one else uses.
    pub(super) fn new(conn: Conn) -> Self {
        PgCache {
            conn: Mutex::new(conn),
        }
    }
}

impl ResponseCache for PgCache {
    fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        let mut conn = unpoisoned(&self.conn);
        let client = conn.client();
        off_runtime(|| {
            client.query_opt(
                "SELECT value FROM stagewise.responses WHERE key = $1",
                &[&key],
            )
        })
        .map(|r| r.map(|r| r.get(0)))
        .map_err(|e| CacheError::from(db(e)))
    }

    fn put(&self, key: &str, stage: &str, value: &str) -> Result<(), CacheError> {
        let mut conn = unpoisoned(&self.conn);
        let client = conn.client();
        off_runtime(|| {
            client.execute(
                "INSERT INTO stagewise.responses (key, stage, value, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO UPDATE SET stage = excluded.stage, value = excluded.value, created_at = excluded.created_at",
                &[&key, &stage, &value, &now()],
            )
        })
        .map(drop)
        .map_err(|e| CacheError::from(db(e)))
    }
}
