//! A writer's shutdown deadline: once a run is told to stop, every wait of a commit for the
//! store (a lock another connection holds, a statement the server does not finish) ends by it,
//! so that a store that does not answer cannot hold the process past its grace. A commit that
//! does not make it fails; what was committed before stays.
//!
//! The deadline is set from any thread, at any time, and holds for the commit in progress too.
//! A backend bounds its waits by [`Deadline::cut`]: read before each wait, with the store's own
//! timeouts (SQLite's busy timeout, PostgreSQL's `statement_timeout` and `lock_timeout`). A
//! statement already waiting cannot see a deadline set after it began; a backend whose waits are
//! short steps that read the cut again (SQLite) needs nothing more, one whose statement waits on
//! the server gives an [`Interrupt`], which a watcher thread calls at the cut if that commit is
//! still running (PostgreSQL: a cancel request).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::unpoisoned;

/// The least time a commit gets, even one that begins after the deadline: a store that answers
/// at once still takes the last updates.
pub(crate) const MIN_WAIT: Duration = Duration::from_millis(100);

/// Cuts short, from another thread, what the commit in progress is waiting for.
pub(crate) type Interrupt = Box<dyn Fn() + Send + Sync>;

/// The shutdown deadline of one update writer, shared between the writer and whoever sets it.
pub(crate) struct Deadline {
    state: Mutex<State>,
    /// The backend's way of cutting a waiting statement short, if its waits need one.
    interrupt: Option<Interrupt>,
}

#[derive(Default)]
struct State {
    /// The deadline, once set.
    at: Option<Instant>,
    /// The commit in progress: its number and when it began.
    commit: Option<(u64, Instant)>,
    /// Commits begun so far.
    commits: u64,
}

impl Deadline {
    /// No deadline yet; `interrupt` cuts a waiting statement short (see the module's docs).
    pub(crate) fn new(interrupt: Option<Interrupt>) -> Arc<Self> {
        Arc::new(Deadline {
            state: Mutex::new(State::default()),
            interrupt,
        })
    }

    /// From now on, every commit waits for the store at most until `at`, or [`MIN_WAIT`] after
    /// it began if that is later; the commit in progress included. The earliest deadline set
    /// holds. Does not block.
    pub(crate) fn set(self: &Arc<Self>, at: Instant) {
        let mut state = unpoisoned(&self.state);
        let at = state.at.map_or(at, |old| old.min(at));
        state.at = Some(at);
        let (Some((commit, began)), Some(_)) = (state.commit, &self.interrupt) else {
            return;
        };
        drop(state);
        let cut = at.max(began + MIN_WAIT);
        let me = Arc::clone(self);
        let watcher = std::thread::Builder::new()
            .name("checkpoint-deadline".into())
            .spawn(move || {
                std::thread::sleep(cut.saturating_duration_since(Instant::now()));
                let running = unpoisoned(&me.state)
                    .commit
                    .is_some_and(|(c, _)| c == commit);
                // A commit that ends meanwhile may still get the interrupt; it is past its cut
                // by then, so at worst it fails a moment early.
                if let (true, Some(interrupt)) = (running, &me.interrupt) {
                    interrupt();
                }
            });
        if let Err(e) = watcher {
            tracing::warn!(error = %e, "cannot watch the checkpoint commit in progress: it keeps the store's own timeouts");
        }
    }

    /// A commit begins; it ends when what returns drops.
    pub(crate) fn begin(&self) -> Committing<'_> {
        let mut state = unpoisoned(&self.state);
        state.commits += 1;
        state.commit = Some((state.commits, Instant::now()));
        Committing(self)
    }

    /// When the commit in progress must stop waiting for the store: the deadline, or
    /// [`MIN_WAIT`] after the commit began if that is later. `None` while no deadline is set.
    pub(crate) fn cut(&self) -> Option<Instant> {
        let state = unpoisoned(&self.state);
        let at = state.at?;
        Some(match state.commit {
            Some((_, began)) => at.max(began + MIN_WAIT),
            None => at.max(Instant::now() + MIN_WAIT),
        })
    }
}

/// A commit in progress; see [`Deadline::begin`].
pub(crate) struct Committing<'a>(&'a Deadline);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        unpoisoned(&self.0.state).commit = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_commit_gets_at_least_the_minimum_wait() {
        let deadline = Deadline::new(None);
        assert_eq!(deadline.cut(), None, "no deadline, no cut");
        let past = Instant::now();
        deadline.set(past);
        let commit = deadline.begin();
        let cut = deadline.cut().expect("a cut");
        assert!(cut >= past + MIN_WAIT, "{:?}", cut - past);
        drop(commit);
        let later = Instant::now() + Duration::from_secs(60);
        deadline.set(later);
        let _commit = deadline.begin();
        assert!(
            deadline.cut().expect("a cut") < later,
            "the earliest deadline holds"
        );
    }

    #[test]
    fn the_commit_in_progress_is_interrupted_at_its_cut_and_no_other() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let deadline = Deadline::new(Some(Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        })));
        // Set between commits: nothing to interrupt.
        deadline.set(Instant::now() + Duration::from_secs(60));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        let commit = deadline.begin();
        let started = Instant::now();
        deadline.set(started + Duration::from_millis(50));
        while calls.load(Ordering::SeqCst) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "never interrupted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(commit);
        // A watcher for a commit that ended does not touch the next one.
        let commit = deadline.begin();
        deadline.set(Instant::now());
        drop(commit);
        let _next = deadline.begin();
        std::thread::sleep(MIN_WAIT + Duration::from_millis(100));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
