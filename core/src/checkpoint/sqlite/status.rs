//! The SQLite store's reads for counts and status reports; the model shapes them.

use rusqlite::params;

use super::super::model::{EndedRow, StatusRows};
use super::super::{ItemState, StoreError};
use super::{db, SqliteStore};

impl StatusRows for SqliteStore {
    fn state_counts(&self, run: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT state, count(*) FROM items WHERE run_id = ?1 GROUP BY state")
            .map_err(db)?;
        let rows = stmt
            .query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn stage_counts(&self, run: i64) -> Result<Vec<(String, String, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT stage, state, count(*) FROM items WHERE run_id = ?1 AND stage IS NOT NULL GROUP BY stage, state",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn ended(&self, run: i64, state: ItemState, limit: i64) -> Result<Vec<EndedRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT key, stage, error, attempts FROM items WHERE run_id = ?1 AND state = ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![run, state.as_str(), limit], |r| {
                Ok(EndedRow {
                    key: r.get(0)?,
                    stage: r.get(1)?,
                    error: r.get(2)?,
                    attempts: r.get(3)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }
}
