//! The PostgreSQL store's reads for counts and status reports; the model shapes them.

use super::super::model::{EndedRow, StatusRows};
use super::super::{ItemState, StoreError};
use super::PgStore;

impl StatusRows for PgStore {
    fn state_counts(&self, run: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self.with_conn(|c| {
            c.query(
                "SELECT state, count(*) FROM stagewise.items WHERE run_id = $1 GROUP BY state",
                &[&run],
            )
        })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn stage_counts(&self, run: i64) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = self.with_conn(|c| {
            c.query(
                "SELECT stage, state, count(*) FROM stagewise.items
                 WHERE run_id = $1 AND stage IS NOT NULL GROUP BY stage, state",
                &[&run],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn ended(&self, run: i64, state: ItemState, limit: i64) -> Result<Vec<EndedRow>, StoreError> {
        let rows = self.with_conn(|c| {
            c.query(
                "SELECT key, stage, error, attempts FROM stagewise.items
                 WHERE run_id = $1 AND state = $2 ORDER BY seq LIMIT $3",
                &[&run, &state.as_str(), &limit],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| EndedRow {
                key: r.get(0),
                stage: r.get(1),
                error: r.get(2),
                attempts: r.get(3),
            })
            .collect())
    }
}
