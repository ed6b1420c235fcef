//! The response cache of a SQLite store (schema version 2's `responses` table).

use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::stage::{CacheError, ResponseCache};

use super::super::model::now;
use super::super::unpoisoned;
use super::db;

/// The response cache of a SQLite store, on a connection of its own so that stage threads
/// never wait for the checkpoint writer's connection.
pub(super) struct SqliteCache {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteCache")
    }
}

impl SqliteCache {
    /// The cache on `conn`, a connection no one else uses.
    pub(super) fn new(conn: Connection) -> Self {
        SqliteCache {
            conn: Mutex::new(conn),
        }
    }

    /// The cache's connection.
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        unpoisoned(&self.conn)
    }
}

impl ResponseCache for SqliteCache {
    fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        self.conn()
            .query_row(
                "SELECT value FROM responses WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| CacheError::from(db(e)))
    }

    fn put(&self, key: &str, stage: &str, value: &str) -> Result<(), CacheError> {
        self.conn()
            .execute(
                "INSERT INTO responses (key, stage, value, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET stage = excluded.stage, value = excluded.value, created_at = excluded.created_at",
                params![key, stage, value, now()],
            )
            .map(drop)
            .map_err(|e| CacheError::from(db(e)))
    }
}
