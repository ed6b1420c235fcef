//! What the runner lends a stage when it is built, beyond its configuration: a [`Meter`] for
//! the stage's own figures (calls, cache hits, tokens, cost…), shown in the run's summary, and
//! the [`ResponseCache`] of the run's checkpoint store, where a stage keeps answers it must never
//! pay for twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A response cache that could not be read or written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("response cache: {0}")]
pub struct CacheError(pub String);

/// Named figures a stage adds to as it works; the summary shows them beside the runner's own.
/// Cheap to clone: clones share the figures.
#[derive(Debug, Clone, Default)]
pub struct Meter(Arc<Mutex<BTreeMap<&'static str, f64>>>);

impl Meter {
    fn figures(&self) -> MutexGuard<'_, BTreeMap<&'static str, f64>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Add `amount` to the figure `name` (created at zero).
    pub fn add(&self, name: &'static str, amount: f64) {
        *self.figures().entry(name).or_insert(0.0) += amount;
    }

    /// Make sure `name` is shown, even while it is zero.
    pub fn declare(&self, name: &'static str) {
        self.figures().entry(name).or_insert(0.0);
    }

    /// The figure `name` (zero if never added to).
    pub fn get(&self, name: &str) -> f64 {
        self.figures().get(name).copied().unwrap_or(0.0)
    }

    /// Every figure, by name.
    pub fn snapshot(&self) -> BTreeMap<String, f64> {
        self.figures()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect()
    }
}

/// Answers kept by key in the checkpoint store, across runs, resumes and `--fresh`.
///
/// Keys should be hashes of everything that determines the answer. Calls block (a local
/// database read or write): call them from a blocking stage, not from async code.
pub trait ResponseCache: Send + Sync + std::fmt::Debug {
    /// The answer stored under `key`, if any.
    fn get(&self, key: &str) -> Result<Option<String>, CacheError>;
    /// Store `value` under `key` (replacing an older one), durably before returning.
    fn put(&self, key: &str, stage: &str, value: &str) -> Result<(), CacheError>;
}

/// A shared handle to a [`ResponseCache`].
pub type SharedCache = Arc<dyn ResponseCache>;
