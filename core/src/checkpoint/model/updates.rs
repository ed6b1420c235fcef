//! What a [`Change`] sets in an item's row: a batch of updates folds into one [`RowUpdate`]
//! per item, which a backend writes with its SQL through [`UpdateRows`]. Writing the folded
//! rows is the same as applying every update one by one, in order.
//!
//! Each batch is one commit of the writer's [`Deadline`]: the backend bounds its waits by the
//! deadline's cut once one is set.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use super::super::deadline::{Deadline, Interrupt};
use super::super::{Change, ItemState, RunStatus, StoreError, Update, UpdateWriter};
use super::epoch_ms;

/// What one batch sets in one item's row, every update of the item folded in order. `None`
/// leaves a column as it is; `Some(None)` sets it to NULL.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::checkpoint) struct RowUpdate {
    /// The item's state.
    pub state: ItemState,
    /// The stage the item is at or ended in (NULL once done).
    pub stage: Option<super::super::StageName>,
    /// The record's fields as JSON.
    pub record: Option<Option<String>>,
    /// Attempts made at the item's stage.
    pub attempts: Option<i64>,
    /// The last error of a failed item, or why a skipped one was skipped.
    pub error: Option<Option<String>>,
    /// Whether a process has the item taken up ([`Change::TakenUp`] until it leaves).
    pub taken: Option<bool>,
    /// When the item's first attempt at its stage began (`item_deadline` counts from it).
    pub since: Since,
}

/// What a batch sets in an item's `since` column: milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::checkpoint) enum Since {
    /// Left as it is.
    Keep,
    /// Set to this (`None`: NULL, the item has not begun at its stage).
    Set(Option<i64>),
    /// Set to this unless already set to a time before it: an attempt began, maybe not the
    /// first at this stage. (A time after it, written before the clock was set back, is
    /// corrected, so that the deadline does not start over in every process.)
    Mark(i64),
}

impl Since {
    /// `(mode, value)` as the backends' SQL takes them: mode 0 keeps the column, 1 sets it to
    /// the value, 2 sets it to the value where it is NULL.
    pub(in crate::checkpoint) fn sql(self) -> (i16, Option<i64>) {
        match self {
            Since::Keep => (0, None),
            Since::Set(at) => (1, at),
            Since::Mark(at) => (2, Some(at)),
        }
    }

    /// After an attempt began at `now`: a first attempt since the item came to its stage sets
    /// it; a later one keeps what an earlier one set.
    fn begun(self, now: i64) -> Since {
        match self {
            Since::Keep => Since::Mark(now),
            Since::Set(None) => Since::Set(Some(now)),
            set => set,
        }
    }
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
            taken: None,
            since: Since::Keep,
        }
    }

    /// Apply `change`, made at `now` (ms since the epoch), after what this row already holds,
    /// exactly as a second `UPDATE` would.
    fn fold(&mut self, change: &Change, now: i64) {
        let (state, stage) = match change {
            Change::Started { stage } => {
                self.since = self.since.begun(now);
                (ItemState::InFlight, Some(stage))
            }
            Change::TakenUp { stage } => {
                self.taken = Some(true);
                self.since = self.since.begun(now);
                (ItemState::InFlight, Some(stage))
            }
            Change::Clock { stage, at } => {
                self.since = self.since.begun(*at);
                (ItemState::InFlight, Some(stage))
            }
            Change::Interrupted { stage } => {
                self.taken = Some(false);
                (ItemState::Pending, Some(stage))
            }
            Change::Advanced { stage, record } => {
                self.record = Some(Some(
                    serde_json::to_string(&record.fields).expect("JSON values always serialize"),
                ));
                self.attempts = Some(0);
                self.error = Some(None);
                self.since = Since::Set(None);
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
            Change::Attempted {
                stage,
                attempts,
                error,
            }
            | Change::Exhausted {
                stage,
                attempts,
                error,
            }
            | Change::Failed {
                stage,
                error,
                attempts,
            } => {
                self.attempts = Some(i64::from(*attempts));
                self.error = Some(Some(error.clone()));
                match change {
                    Change::Failed { .. } => (ItemState::Failed, Some(stage)),
                    Change::Exhausted { .. } => {
                        // Out of the process's hands, about to be marked.
                        self.taken = Some(false);
                        (ItemState::InFlight, Some(stage))
                    }
                    _ => (ItemState::InFlight, Some(stage)),
                }
            }
        };
        self.state = state;
        self.stage = stage.cloned();
    }
}

/// The updates of a batch as one row per item, in the order the items first appear: writing
/// these rows is applying the updates one by one.
/// Hashes an item's `seq` with one multiplication (Fibonacci hashing): the keys are small
/// integers from this process, not data, so SipHash's protection buys nothing here.
#[derive(Default)]
struct SeqHasher(u64);

impl std::hash::Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_i64(&mut self, v: i64) {
        self.0 = (v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(in crate::checkpoint) fn fold(updates: &[Update], now: i64) -> Vec<(i64, RowUpdate)> {
    let mut index: HashMap<i64, usize, BuildHasherDefault<SeqHasher>> =
        HashMap::with_capacity_and_hasher(updates.len(), BuildHasherDefault::default());
    let mut rows: Vec<(i64, RowUpdate)> = Vec::new();
    for u in updates {
        let at = *index.entry(u.seq).or_insert_with(|| {
            rows.push((u.seq, RowUpdate::untouched()));
            rows.len() - 1
        });
        rows[at].1.fold(&u.change, now);
    }
    rows
}

/// How a backend writes item updates, on a connection of its own, for one run.
pub(in crate::checkpoint) trait UpdateRows: Send + 'static {
    /// In one transaction: write `rows` (`(seq, what to set)`, one per item) to the run's items,
    /// then set the run's status, if given. Once `deadline` has a cut, no wait for the store
    /// lasts past it, and one that would fails with [`StoreError::Unanswered`]; before, the
    /// store's usual timeouts apply, and nothing is added to the commit.
    fn write(
        &mut self,
        rows: &[(i64, RowUpdate)],
        status: Option<RunStatus>,
        deadline: &Deadline,
    ) -> Result<(), StoreError>;

    /// What cuts short, from another thread, a statement this writer's commit is waiting on;
    /// `None` when its waits read [`Deadline::cut`] again often enough by themselves.
    fn interrupt(&self) -> Option<Interrupt>;
}

/// The update writer of every backend: folds each batch, then has the backend write it within
/// the writer's deadline.
pub(super) struct Updates<W: UpdateRows> {
    rows: W,
    deadline: Arc<Deadline>,
}

impl<W: UpdateRows> Updates<W> {
    /// The writer of `rows`, without a deadline.
    pub(super) fn new(rows: W) -> Self {
        let deadline = Deadline::new(rows.interrupt());
        Updates { rows, deadline }
    }
}

impl<W: UpdateRows> UpdateWriter for Updates<W> {
    fn apply(&mut self, updates: &[Update], status: Option<RunStatus>) -> Result<(), StoreError> {
        let rows = fold(updates, epoch_ms(std::time::SystemTime::now()));
        let _commit = self.deadline.begin();
        self.rows.write(&rows, status, &self.deadline)
    }

    fn deadline(&self) -> Arc<Deadline> {
        self.deadline.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s<T: for<'a> From<&'a str>>(x: &str) -> T {
        T::from(x)
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn folding_a_batch_is_applying_its_updates_in_order() {
        let record = std::sync::Arc::new(crate::stage::Record::with_fields(
            "a",
            serde_json::json!({"x": 1})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ));
        let record2 = record.clone();
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
                    taken: Some(false),
                    since: Since::Set(None),
                },
            ),
            (
                vec![Change::TakenUp { stage: s("one") }],
                RowUpdate {
                    state: ItemState::InFlight,
                    stage: Some(s("one")),
                    record: None,
                    attempts: None,
                    error: None,
                    taken: Some(true),
                    since: Since::Mark(NOW),
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
                    taken: None,
                    error: Some(Some(s("boom"))),
                    since: Since::Mark(NOW),
                },
            ),
            (
                vec![
                    Change::TakenUp { stage: s("one") },
                    Change::Exhausted {
                        stage: s("one"),
                        attempts: 3,
                        error: s("boom"),
                    },
                ],
                RowUpdate {
                    state: ItemState::InFlight,
                    stage: Some(s("one")),
                    record: None,
                    attempts: Some(3),
                    taken: Some(false),
                    error: Some(Some(s("boom"))),
                    since: Since::Mark(NOW),
                },
            ),
            (
                vec![Change::Started { stage: s("one") }, Change::Done],
                RowUpdate {
                    state: ItemState::Done,
                    stage: None,
                    record: Some(None),
                    attempts: None,
                    taken: None,
                    error: Some(None),
                    since: Since::Mark(NOW),
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
                    taken: None,
                    error: Some(Some(s("empty"))),
                    since: Since::Keep,
                },
            ),
            (
                // Its first attempt at the next stage: counted from now, whatever was before.
                vec![
                    Change::Advanced {
                        stage: s("two"),
                        record: record2,
                    },
                    Change::Started { stage: s("two") },
                ],
                RowUpdate {
                    state: ItemState::InFlight,
                    stage: Some(s("two")),
                    record: Some(Some(s(r#"{"x":1}"#))),
                    attempts: Some(0),
                    taken: None,
                    error: Some(None),
                    since: Since::Set(Some(NOW)),
                },
            ),
        ];
        for (changes, want) in cases {
            let updates: Vec<Update> = changes
                .into_iter()
                .map(|change| Update { seq: 7, change })
                .collect();
            assert_eq!(fold(&updates, NOW), vec![(7, want)]);
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
        let rows = fold(&updates, NOW);
        assert_eq!(
            rows.iter()
                .map(|(seq, r)| (*seq, r.state))
                .collect::<Vec<_>>(),
            [(9, ItemState::Pending), (2, ItemState::Done)]
        );
    }
}
