//! The checkpoint model, written once for every backend: which columns of an item's row each
//! [`Change`] sets, how a new run's manifest is buffered, numbered and cleared of repeated keys,
//! and how counts and status reports are shaped from what the tables hold.
//!
//! A backend only runs SQL for it: [`ManifestRows`] writes a chunk of a manifest, [`StatusRows`]
//! reads what a report needs, and an update writer executes the rows [`fold`] gives. So the
//! SQLite and the PostgreSQL stores cannot drift apart in what a change, a repeated key or a
//! report means.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;

use super::{
    Change, Duplicates, FailedItem, ItemState, ManifestWriter, RunInfo, RunStatus, SkippedItem,
    StatusReport, StoreError, StoredItem, Update,
};

/// Failed and skipped items a status report lists by name, each.
pub(super) const REPORT_LIMIT: i64 = 1000;
/// Manifest rows per write (and transaction) while a batch is taken.
pub(super) const MANIFEST_CHUNK: usize = 1000;
/// Repeated keys reported by name, at most.
pub(super) const SHOWN_DUPLICATES: usize = 5;

/// The time as stored in `started_at`, `updated_at` and `created_at`: RFC 3339, in seconds.
pub(super) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// A run from its row; a status this build does not know means the store is damaged.
pub(super) fn run_info(
    path: &str,
    id: i64,
    status: &str,
    items: i64,
    started_at: String,
) -> Result<RunInfo, StoreError> {
    let status = RunStatus::parse(status).ok_or_else(|| StoreError::Corrupt {
        path: path.to_owned(),
        message: format!("run {id} has an unknown status `{status}`"),
    })?;
    Ok(RunInfo {
        id,
        status,
        items: u64::try_from(items).unwrap_or(0),
        started_at,
    })
}

/// An item to process from its row: no record yet (a manifest row without one) is a record
/// without fields.
pub(super) fn stored_item(
    seq: i64,
    key: String,
    stage: Option<String>,
    record: Option<String>,
) -> StoredItem {
    StoredItem {
        seq,
        key,
        stage,
        record: record.unwrap_or_else(|| "{}".into()),
    }
}

/// What one batch sets in one item's row, every update of the item folded in order. `None`
/// leaves a column as it is; `Some(None)` sets it to NULL.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RowUpdate {
    /// The item's state.
    pub state: ItemState,
    /// The stage the item is at or ended in (NULL once done).
    pub stage: Option<String>,
    /// The record's fields as JSON.
    pub record: Option<Option<String>>,
    /// Attempts made at the item's stage.
    pub attempts: Option<i64>,
    /// The last error of a failed item, or why a skipped one was skipped.
    pub error: Option<Option<String>>,
}

impl RowUpdate {
    /// The row of an item before its first change: every column left as it is (the state and
    /// stage are always set by a change).
    fn untouched() -> Self {
        RowUpdate {
            state: ItemState::Pending,
            stage: None,
            record: None,
            attempts: None,
            error: None,
        }
    }

    /// Apply `change` after what this row already holds, exactly as a second `UPDATE` would.
    fn fold(&mut self, change: &Change) {
        let (state, stage) = match change {
            Change::Started { stage } => (ItemState::InFlight, Some(stage)),
            Change::Interrupted { stage } => (ItemState::Pending, Some(stage)),
            Change::Advanced { stage, record } => {
                self.record = Some(Some(
                    serde_json::to_string(&record.fields).expect("JSON values always serialize"),
                ));
                self.attempts = Some(0);
                self.error = Some(None);
                (ItemState::InFlight, Some(stage))
            }
            Change::Done => {
                self.record = Some(None);
                self.error = Some(None);
                (ItemState::Done, None)
            }
            Change::Skipped { stage, reason } => {
                self.record = Some(None);
                self.error = Some(Some(reason.clone()));
                (ItemState::Skipped, Some(stage))
            }
            Change::Failed {
                stage,
                error,
                attempts,
            } => {
                self.attempts = Some(i64::from(*attempts));
                self.error = Some(Some(error.clone()));
                (ItemState::Failed, Some(stage))
            }
        };
        self.state = state;
        self.stage = stage.cloned();
    }
}

/// The updates of a batch as one row per item, in the order the items first appear: writing
/// these rows is applying the updates one by one.
pub(super) fn fold(updates: &[Update]) -> Vec<(i64, RowUpdate)> {
    let mut index: HashMap<i64, usize> = HashMap::new();
    let mut rows: Vec<(i64, RowUpdate)> = Vec::new();
    for u in updates {
        let at = *index.entry(u.seq).or_insert_with(|| {
            rows.push((u.seq, RowUpdate::untouched()));
            rows.len() - 1
        });
        rows[at].1.fold(&u.change);
    }
    rows
}

/// How a backend writes a new run's manifest; [`Manifest`] buffers and counts.
pub(super) trait ManifestRows: Send + 'static {
    /// Add `rows` (`(key, record)`, keys distinct) to the manifest of `run` in one transaction,
    /// pending at `first_stage`, numbering the new ones `after_seq + 1`, `after_seq + 2`, …
    /// without gaps in the order given. A key already in the manifest keeps its row; the
    /// positions in `rows` of those keys are returned.
    fn insert(
        &mut self,
        run: i64,
        after_seq: i64,
        first_stage: &str,
        rows: &[(String, String)],
    ) -> Result<Vec<usize>, StoreError>;

    /// Make `run` visible, with `items` items: its status goes from `taking` to `running`.
    fn publish(&mut self, run: i64, items: i64) -> Result<(), StoreError>;

    /// Delete `run` and its rows: it was never published. Best effort: whatever is left stays
    /// hidden under `taking` and goes at the pipeline's next `begin_run`.
    fn discard(&mut self, run: i64);
}

/// A new run's manifest: rows are written in chunks of [`MANIFEST_CHUNK`], each in a short
/// transaction of its own, so that no write lock is held while the source reads (a source stuck
/// past its timeout must not block the next attempt). Nothing is visible until
/// [`ManifestWriter::commit`]; dropped before, the run and its rows are deleted.
pub(super) struct Manifest<R: ManifestRows> {
    rows: R,
    run: i64,
    started: String,
    first_stage: String,
    /// The seq of the last row written.
    next_seq: i64,
    /// `(key, record)` of the rows not yet written.
    buffer: Vec<(String, String)>,
    duplicates: Duplicates,
    committed: bool,
}

impl<R: ManifestRows> Manifest<R> {
    /// The manifest of `run` (already stored as `taking`, started at `started`), written
    /// through `rows`; its items start at `first_stage`.
    pub(super) fn new(rows: R, run: i64, started: String, first_stage: &str) -> Self {
        Manifest {
            rows,
            run,
            started,
            first_stage: first_stage.to_owned(),
            next_seq: 0,
            buffer: Vec::with_capacity(MANIFEST_CHUNK),
            duplicates: Duplicates::default(),
            committed: false,
        }
    }

    fn note_duplicate(&mut self, key: String) {
        self.duplicates.count += 1;
        if self.duplicates.first.len() < SHOWN_DUPLICATES {
            self.duplicates.first.push(key);
        }
    }

    /// Write the buffered rows: keys repeated within the chunk are dropped here, keys already
    /// in the manifest by the backend; the repeats are noted in the order the source gave them.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buffer);
        let mut seen = HashSet::with_capacity(chunk.len());
        // (position in the chunk, key) of every repeat.
        let mut repeats: Vec<(usize, String)> = Vec::new();
        let mut fresh = Vec::with_capacity(chunk.len());
        let mut positions = Vec::with_capacity(chunk.len());
        for (i, (key, record)) in chunk.into_iter().enumerate() {
            if seen.contains(key.as_str()) {
                repeats.push((i, key));
                continue;
            }
            seen.insert(key.clone());
            fresh.push((key, record));
            positions.push(i);
        }
        let existing = self
            .rows
            .insert(self.run, self.next_seq, &self.first_stage, &fresh)?;
        let added = fresh.len() - existing.len();
        self.next_seq += i64::try_from(added).expect("a chunk is small");
        for at in existing {
            repeats.push((positions[at], std::mem::take(&mut fresh[at].0)));
        }
        repeats.sort_by_key(|(i, _)| *i);
        for (_, key) in repeats {
            self.note_duplicate(key);
        }
        Ok(())
    }
}

impl<R: ManifestRows> ManifestWriter for Manifest<R> {
    fn add(&mut self, key: &str, record: &str) -> Result<(), StoreError> {
        self.buffer.push((key.to_owned(), record.to_owned()));
        if self.buffer.len() >= MANIFEST_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<(RunInfo, Duplicates), StoreError> {
        self.flush()?;
        self.rows.publish(self.run, self.next_seq)?;
        self.committed = true;
        let run = RunInfo {
            id: self.run,
            status: RunStatus::Running,
            items: u64::try_from(self.next_seq).unwrap_or(0),
            started_at: self.started.clone(),
        };
        Ok((run, std::mem::take(&mut self.duplicates)))
    }
}

impl<R: ManifestRows> Drop for Manifest<R> {
    fn drop(&mut self) {
        if !self.committed {
            // Not committed: the run and its manifest vanish together (or at the next take).
            self.rows.discard(self.run);
        }
    }
}

/// A failed or skipped item as its row holds it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct EndedRow {
    /// Item key.
    pub key: String,
    /// The stage it ended in.
    pub stage: Option<String>,
    /// Its last error (failed) or why it was skipped.
    pub error: Option<String>,
    /// Attempts made in that stage.
    pub attempts: i64,
}

/// What a backend reads for counts and status reports; [`counts`] and [`status`] shape it.
pub(super) trait StatusRows {
    /// `(state, items)` of `run`, one row per state present.
    fn state_counts(&self, run: i64) -> Result<Vec<(String, i64)>, StoreError>;
    /// `(stage, state, items)` of `run`'s items that have a stage, one row per pair present.
    fn stage_counts(&self, run: i64) -> Result<Vec<(String, String, i64)>, StoreError>;
    /// The first `limit` items of `run` in `state`, in manifest order.
    fn ended(&self, run: i64, state: ItemState, limit: i64) -> Result<Vec<EndedRow>, StoreError>;
}

/// A stored count as a count (a negative one cannot happen, and counts nothing).
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Items per state from `(state, items)` rows: every state present, unknown states left out.
pub(super) fn counts(rows: Vec<(String, i64)>) -> BTreeMap<&'static str, u64> {
    let mut counts: BTreeMap<&'static str, u64> =
        ItemState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for (state, n) in rows {
        if let Some(state) = ItemState::parse(&state) {
            *counts.entry(state.as_str()).or_default() += count(n);
        }
    }
    counts
}

/// The status report of `run` from what `rows` reads.
pub(super) fn status(rows: &impl StatusRows, run: &RunInfo) -> Result<StatusReport, StoreError> {
    let counts = counts(rows.state_counts(run.id)?);
    let mut stages: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for (stage, state, n) in rows.stage_counts(run.id)? {
        if let Some(state) = ItemState::parse(&state) {
            *stages
                .entry(stage)
                .or_default()
                .entry(state.as_str())
                .or_default() += count(n);
        }
    }
    let failed = rows
        .ended(run.id, ItemState::Failed, REPORT_LIMIT)?
        .into_iter()
        .map(|r| FailedItem {
            key: r.key,
            stage: r.stage.unwrap_or_default(),
            error: r.error.unwrap_or_default(),
            attempts: u32::try_from(r.attempts.max(0)).unwrap_or(u32::MAX),
        })
        .collect();
    let skipped = rows
        .ended(run.id, ItemState::Skipped, REPORT_LIMIT)?
        .into_iter()
        .map(|r| SkippedItem {
            key: r.key,
            stage: r.stage.unwrap_or_default(),
            reason: r.error.unwrap_or_default(),
        })
        .collect();
    Ok(StatusReport {
        run: run.clone(),
        counts,
        stages,
        failed,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> String {
        x.to_owned()
    }

    #[test]
    fn folding_a_batch_is_applying_its_updates_in_order() {
        let record = std::sync::Arc::new(crate::stage::Record::with_fields(
            "a",
            serde_json::json!({"x": 1})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ));
        let cases: Vec<(Vec<Change>, RowUpdate)> = vec![
            (
                vec![
                    Change::Advanced {
                        stage: s("two"),
                        record,
                    },
                    Change::Interrupted { stage: s("two") },
                ],
                RowUpdate {
                    state: ItemState::Pending,
                    stage: Some(s("two")),
                    record: Some(Some(s(r#"{"x":1}"#))),
                    attempts: Some(0),
                    error: Some(None),
                },
            ),
            (
                vec![
                    Change::Started { stage: s("one") },
                    Change::Failed {
                        stage: s("one"),
                        error: s("boom"),
                        attempts: 3,
                    },
                ],
                RowUpdate {
                    state: ItemState::Failed,
                    stage: Some(s("one")),
                    record: None,
                    attempts: Some(3),
                    error: Some(Some(s("boom"))),
                },
            ),
            (
                vec![Change::Started { stage: s("one") }, Change::Done],
                RowUpdate {
                    state: ItemState::Done,
                    stage: None,
                    record: Some(None),
                    attempts: None,
                    error: Some(None),
                },
            ),
            (
                vec![Change::Skipped {
                    stage: s("one"),
                    reason: s("empty"),
                }],
                RowUpdate {
                    state: ItemState::Skipped,
                    stage: Some(s("one")),
                    record: Some(None),
                    attempts: None,
                    error: Some(Some(s("empty"))),
                },
            ),
        ];
        for (changes, want) in cases {
            let updates: Vec<Update> = changes
                .into_iter()
                .map(|change| Update { seq: 7, change })
                .collect();
            assert_eq!(fold(&updates), vec![(7, want)]);
        }
    }

    #[test]
    fn folding_keeps_items_apart_in_first_appearance_order() {
        let updates = [
            Update {
                seq: 9,
                change: Change::Started { stage: s("one") },
            },
            Update {
                seq: 2,
                change: Change::Done,
            },
            Update {
                seq: 9,
                change: Change::Interrupted { stage: s("one") },
            },
        ];
        let rows = fold(&updates);
        assert_eq!(
            rows.iter()
                .map(|(seq, r)| (*seq, r.state))
                .collect::<Vec<_>>(),
            [(9, ItemState::Pending), (2, ItemState::Done)]
        );
    }

    /// A backend of memory: keys already present are those of earlier chunks.
    #[derive(Default)]
    struct Rows {
        stored: HashSet<String>,
    }

    impl ManifestRows for Rows {
        fn insert(
            &mut self,
            _run: i64,
            after_seq: i64,
            _first_stage: &str,
            rows: &[(String, String)],
        ) -> Result<Vec<usize>, StoreError> {
            assert_eq!(after_seq, self.stored.len() as i64, "numbered without gaps");
            let mut existing = Vec::new();
            for (i, (key, _)) in rows.iter().enumerate() {
                if !self.stored.insert(key.clone()) {
                    existing.push(i);
                }
            }
            Ok(existing)
        }

        fn publish(&mut self, _run: i64, items: i64) -> Result<(), StoreError> {
            assert_eq!(items, self.stored.len() as i64);
            Ok(())
        }

        fn discard(&mut self, _run: i64) {}
    }

    #[test]
    fn repeated_keys_are_counted_in_source_order_across_chunks() {
        let mut m = Box::new(Manifest::new(Rows::default(), 1, s("now"), "one"));
        // Keys 0..1500 with key 0 again at line 3 (same chunk) and 0..999 again from line 1501
        // (later chunks).
        for line in 0..2500usize {
            let id = match line {
                3 => 0,
                l if l < 3 => l,
                l if l < 1501 => l - 1,
                l => l - 1501,
            };
            m.add(&id.to_string(), "{}").expect("add");
        }
        let (run, duplicates) = m.commit().expect("commit");
        assert_eq!(run.items, 1500);
        assert_eq!(duplicates.count, 1000);
        assert_eq!(duplicates.first, ["0", "0", "1", "2", "3"]);
    }
}
