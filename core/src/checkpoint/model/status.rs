//! Counts and status reports, shaped from the rows a backend reads through [`StatusRows`].

use std::collections::BTreeMap;

use super::super::{FailedItem, ItemState, RunInfo, SkippedItem, StatusReport, StoreError};

/// A failed or skipped item as its row holds it.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::checkpoint) struct EndedRow {
    /// Item key.
    pub key: String,
    /// The stage it ended in.
    pub stage: Option<String>,
    /// Its last error (failed) or why it was skipped.
    pub error: Option<String>,
    /// Attempts made in that stage.
    pub attempts: i64,
}

/// What a backend reads for counts and status reports, with its SQL; [`counts`] and [`status`]
/// shape it.
pub(in crate::checkpoint) trait StatusRows {
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
pub(super) fn status(
    rows: &impl StatusRows,
    run: &RunInfo,
    limit: u64,
) -> Result<StatusReport, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
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
    let failed: Vec<FailedItem> = rows
        .ended(run.id, ItemState::Failed, limit)?
        .into_iter()
        .map(|r| FailedItem {
            key: r.key,
            stage: r.stage.unwrap_or_default(),
            error: r.error.unwrap_or_default(),
            attempts: u32::try_from(r.attempts.max(0)).unwrap_or(u32::MAX),
        })
        .collect();
    let skipped: Vec<SkippedItem> = rows
        .ended(run.id, ItemState::Skipped, limit)?
        .into_iter()
        .map(|r| SkippedItem {
            key: r.key,
            stage: r.stage.unwrap_or_default(),
            reason: r.error.unwrap_or_default(),
        })
        .collect();
    let more = |state: ItemState, listed: usize| {
        counts
            .get(state.as_str())
            .copied()
            .unwrap_or(0)
            .saturating_sub(listed as u64)
    };
    Ok(StatusReport {
        run: run.clone(),
        failed_more: more(ItemState::Failed, failed.len()),
        skipped_more: more(ItemState::Skipped, skipped.len()),
        counts,
        stages,
        failed,
        skipped,
        runners: Vec::new(),
    })
}
