//! The PostgreSQL store's reads for counts and status reports; the model shapes them.

use super::super::model::{EndedRow, StatusRows};
use super::super::{ItemState, StoreError};
use super::PgStore;

impl StatusRows for PgStore {
    fn state_counts(&self, run: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.rows(
            "SELECT state, count(*) FROM stagewise.items WHERE run_id = $1 GROUP BY state",
            &[&run],
            |r| (r.get(0), r.get(1)),
        )
    }

    fn stage_counts(&self, run: i64) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.rows(
            "SELECT stage, state, count(*) FROM stagewise.items
                 WHERE run_id = $1 AND stage IS NOT NULL GROUP BY stage, state",
            &[&run],
            |r| (r.get(0), r.get(1), r.get(2)),
        )
    }

    fn ended(&self, run: i64, state: ItemState, limit: i64) -> Result<Vec<EndedRow>, StoreError> {
        self.rows(
            "SELECT key, stage, error, attempts FROM stagewise.items
                 WHERE run_id = $1 AND state = $2 ORDER BY seq LIMIT $3",
            &[&run, &state.as_str(), &limit],
            |r| EndedRow {
                key: r.get(0),
                stage: r.get(1),
                error: r.get(2),
                attempts: r.get(3),
            },
        )
    }
}
