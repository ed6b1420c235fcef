//! The response cache of a PostgreSQL store (schema version 2's `stagewise.responses`).

use std::sync::Mutex;

use crate::stage::{CacheError, ResponseCache};

use super::super::model::now;
use super::super::unpoisoned;
use super::conn::{in_transaction, Conn};

/// The response cache of a PostgreSQL store, on a connection of its own so that stage threads
/// never wait for the checkpoint writer's connection.
pub(super) struct PgCache {
    conn: Mutex<Conn>,
    /// Its session's settings, to connect again after the server ended it.
    config: crate::pg::PgTarget,
    /// The store as messages name it.
    shown: String,
}

impl std::fmt::Debug for PgCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgCache")
    }
}

impl PgCache {
    /// The cache on `conn`, a session no one else uses, made with `config`.
    pub(super) fn new(conn: Conn, config: crate::pg::PgTarget, shown: String) -> Self {
        PgCache {
            conn: Mutex::new(conn),
            config,
            shown,
        }
    }

    /// Run `f` in a transaction of its own on the cache's session (opened again if the server
    /// ended it), off the runtime.
    fn with_tx<R: Send>(
        &self,
        f: impl Fn(&mut postgres::Transaction<'_>) -> Result<R, postgres::Error> + Send + Sync,
    ) -> Result<R, CacheError> {
        let mut conn = unpoisoned(&self.conn);
        in_transaction(&mut conn, (&self.config, &self.shown), f).map_err(CacheError::from)
    }
}

impl ResponseCache for PgCache {
    fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        self.with_tx(|tx| {
            tx.query_opt(
                "SELECT value FROM stagewise.responses WHERE key = $1",
                &[&key],
            )
            .map(|r| r.map(|r| r.get(0)))
        })
    }

    fn put(&self, key: &str, stage: &str, value: &str) -> Result<(), CacheError> {
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO stagewise.responses (key, stage, value, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO UPDATE SET stage = excluded.stage, value = excluded.value, created_at = excluded.created_at",
                &[&key, &stage, &value, &now()],
            )
            .map(drop)
        })
    }
}
