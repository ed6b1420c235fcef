//! Group commit: item updates from every task go through one bounded channel to one writer,
//! which commits them in batches covering at most `commit_max_items` items or
//! `commit_interval`, whichever comes first. Several updates of one item within a batch
//! collapse to what the last one needs, so an item that moves through all its stages within a
//! batch costs one row write, not one per stage.
//!
//! The next batch is collected while the previous one commits, and the channel holds at most
//! `commit_max_items` updates, so at any moment the updates of at most `3 × commit_max_items`
//! items are not yet durable (one batch committing, one collecting, the channel): the bound on
//! redone work after `kill -9`.
//!
//! Once the run is told to stop, [`Checkpointer::set_deadline`] bounds what each commit may
//! wait for the store (see [`super::deadline`]): a store that does not answer fails the commit
//! by then, instead of holding the process for its own timeouts.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::deadline::Deadline;
use super::{Change, CheckpointStore, RunStatus, StoreError, Update, UpdateWriter};

type Ack = oneshot::Sender<Result<(), String>>;

enum Msg {
    Update(Update),
    Flush(Option<RunStatus>, Ack),
    /// An update whose sender waits until it is durable.
    Durable(Update, Ack),
}

/// The runner's handle on the writer. Cloning shares the writer.
#[derive(Clone)]
pub(crate) struct Checkpointer {
    tx: mpsc::Sender<Msg>,
    failure: Arc<OnceLock<String>>,
    deadline: Arc<Deadline>,
    /// Items whose failure (`Change::Failed`) this writer committed.
    failed_committed: Arc<std::sync::atomic::AtomicU64>,
    /// How long each commit that wrote something took.
    commits: Arc<crate::timings::Timings>,
}

/// The writer stopped; the message says why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("checkpoint store failed: {0}")]
pub(crate) struct CheckpointFailed(pub String);

impl Checkpointer {
    /// Start the writer task for `run` on the current runtime.
    pub(crate) fn start(
        store: &dyn CheckpointStore,
        run: i64,
        interval: Duration,
        max_items: usize,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StoreError> {
        let writer = store.update_writer(run)?;
        let deadline = writer.deadline();
        let (tx, rx) = mpsc::channel(max_items.max(1));
        let failure = Arc::new(OnceLock::new());
        let failed_committed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let commits = Arc::new(crate::timings::Timings::default());
        let task = tokio::spawn(write_loop(
            writer,
            rx,
            (interval, max_items.max(1)),
            failure.clone(),
            (failed_committed.clone(), commits.clone()),
        ));
        Ok((
            Checkpointer {
                tx,
                failure,
                deadline,
                failed_committed,
                commits,
            },
            task,
        ))
    }

    /// How many items' failures this writer committed so far.
    pub(crate) fn failed_committed(&self) -> u64 {
        self.failed_committed
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How long the commits that wrote something took, so far (failed ones too).
    pub(crate) fn commit_latencies(&self) -> crate::timings::TimingsSnapshot {
        self.commits.snapshot()
    }

    /// From now on, every commit — the one in progress included — waits for the store at most
    /// until `at` (and at least [`super::deadline::MIN_WAIT`], so that a commit that begins just
    /// after still gets a short chance). A commit the store does not take by then fails, naming
    /// the store; the writer stops, and [`Checkpointer::flush`] returns its error. What was
    /// committed before is kept. Does not block; callable from any thread.
    pub(crate) fn set_deadline(&self, at: std::time::Instant) {
        self.deadline.set(at);
    }

    fn failed(&self) -> CheckpointFailed {
        CheckpointFailed(
            self.failure
                .get()
                .cloned()
                .unwrap_or_else(|| "the writer stopped".into()),
        )
    }

    /// Queue an update; waits while the queue is full.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped, the update was not queued.
    pub(crate) async fn send(&self, seq: i64, change: Change) -> Result<(), CheckpointFailed> {
        self.tx
            .send(Msg::Update(Update { seq, change }))
            .await
            .map_err(|_| self.failed())
    }

    /// Queue an update and return once it (and everything queued before it) is durable. The
    /// writer commits at once, with every update already waiting: senders that wait together
    /// share a commit.
    pub(crate) async fn send_durable(
        &self,
        seq: i64,
        change: Change,
    ) -> Result<(), CheckpointFailed> {
        self.until_durable(|ack| Msg::Durable(Update { seq, change }, ack))
            .await
    }

    /// Commit everything queued so far (and set the run's status, if given); returns once it is
    /// durable.
    pub(crate) async fn flush(&self, status: Option<RunStatus>) -> Result<(), CheckpointFailed> {
        self.until_durable(|ack| Msg::Flush(status, ack)).await
    }

    /// Send the message `with` makes around an acknowledgement, and wait for that.
    async fn until_durable(&self, with: impl FnOnce(Ack) -> Msg) -> Result<(), CheckpointFailed> {
        let (ack, done) = oneshot::channel();
        self.tx.send(with(ack)).await.map_err(|_| self.failed())?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(CheckpointFailed(message)),
            Err(_) => Err(self.failed()),
        }
    }
}

/// The updates of one batch, collapsed per item.
#[derive(Default)]
struct Batch {
    slots: HashMap<i64, Slot>,
    order: Vec<i64>,
}

struct Slot {
    /// The latest record-carrying update, when later updates of the item carry none.
    advanced: Option<Change>,
    /// The latest update that counted attempts, when later updates of the item count none (an
    /// attempt failed, then the item was interrupted in its backoff: the attempt still counts).
    attempted: Option<Change>,
    /// The first attempt's start at the item's stage, when later updates came after it: when
    /// it began is kept (`item_deadline` counts from it).
    started: Option<Change>,
    last: Change,
}

impl Batch {
    fn push(&mut self, u: Update) {
        match self.slots.get_mut(&u.seq) {
            None => {
                self.order.push(u.seq);
                self.slots.insert(
                    u.seq,
                    Slot {
                        advanced: None,
                        attempted: None,
                        started: None,
                        last: u.change,
                    },
                );
            }
            Some(slot) => {
                match &u.change {
                    Change::Advanced { .. } | Change::Done | Change::Skipped { .. } => {
                        slot.advanced = None;
                        slot.attempted = None;
                        slot.started = None;
                    }
                    // These set the attempts themselves.
                    Change::Attempted { .. } | Change::Exhausted { .. } | Change::Failed { .. } => {
                        slot.attempted = None;
                        if matches!(slot.last, Change::Advanced { .. }) {
                            slot.advanced = Some(slot.last.clone());
                        }
                    }
                    _ => match &slot.last {
                        Change::Advanced { .. } => slot.advanced = Some(slot.last.clone()),
                        Change::Attempted { .. } | Change::Exhausted { .. } => {
                            slot.attempted = Some(slot.last.clone());
                        }
                        _ => {}
                    },
                }
                let moved_on = matches!(
                    u.change,
                    Change::Advanced { .. } | Change::Done | Change::Skipped { .. }
                );
                if !moved_on
                    && slot.started.is_none()
                    && matches!(
                        slot.last,
                        Change::Started { .. } | Change::TakenUp { .. } | Change::Clock { .. }
                    )
                {
                    slot.started = Some(slot.last.clone());
                }
                slot.last = u.change;
            }
        }
    }

    fn take(&mut self) -> Vec<Update> {
        let mut out = Vec::with_capacity(self.order.len());
        for seq in self.order.drain(..) {
            if let Some(slot) = self.slots.remove(&seq) {
                for change in [slot.advanced, slot.started, slot.attempted]
                    .into_iter()
                    .flatten()
                {
                    out.push(Update { seq, change });
                }
                out.push(Update {
                    seq,
                    change: slot.last,
                });
            }
        }
        out
    }
}

type Committing = tokio::task::JoinHandle<(Box<dyn UpdateWriter>, Result<(), StoreError>)>;

/// Why a commit failed, and whether the store refused it because the runner was fenced (see
/// [`StoreError::Fenced`]): a fenced runner's writes are refused by design, and it says so once,
/// as it stops.
struct Failed {
    message: String,
    fenced: bool,
}

/// Wait for the commit in progress, if any; give the writer back, or the error.
async fn settle(
    committing: &mut Option<Committing>,
) -> Result<Option<Box<dyn UpdateWriter>>, Failed> {
    let Some(handle) = committing.take() else {
        return Ok(None);
    };
    match handle.await {
        Ok((w, Ok(()))) => Ok(Some(w)),
        Ok((_, Err(e))) => Err(Failed {
            fenced: matches!(e, StoreError::Fenced(_)),
            message: e.to_string(),
        }),
        Err(e) => Err(Failed {
            message: format!("the checkpoint writer panicked: {e}"),
            fenced: false,
        }),
    }
}

/// Collects the next batch while the previous one commits on a blocking thread, so that a
/// commit never stalls the items; one commit at a time, on one connection.
async fn write_loop(
    writer: Box<dyn UpdateWriter>,
    mut rx: mpsc::Receiver<Msg>,
    (interval, max_items): (Duration, usize),
    failure: Arc<OnceLock<String>>,
    (failed_committed, commits): (
        Arc<std::sync::atomic::AtomicU64>,
        Arc<crate::timings::Timings>,
    ),
) {
    let mut idle = Some(writer);
    let mut committing: Option<Committing> = None;
    let mut batch = Batch::default();
    let fail = |failed: Failed| {
        if failed.fenced {
            tracing::debug!(error = %failed.message, "the store refused this runner's commit");
        } else {
            tracing::error!(error = %failed.message, "checkpoint commit failed; stopping the run");
        }
        let _ = failure.set(failed.message);
    };
    while let Some(first) = rx.recv().await {
        let mut flush = None;
        // Senders waiting for this batch to be durable.
        let mut waiting: Vec<Ack> = Vec::new();
        match first {
            Msg::Update(u) => batch.push(u),
            Msg::Flush(status, ack) => flush = Some((status, ack)),
            Msg::Durable(u, ack) => {
                batch.push(u);
                waiting.push(ack);
            }
        }
        if flush.is_none() && waiting.is_empty() {
            let deadline = Instant::now() + interval;
            while batch.order.len() < max_items {
                tokio::select! {
                    biased;
                    msg = rx.recv() => match msg {
                        Some(Msg::Update(u)) => batch.push(u),
                        Some(Msg::Flush(status, ack)) => {
                            flush = Some((status, ack));
                            break;
                        }
                        Some(Msg::Durable(u, ack)) => {
                            batch.push(u);
                            waiting.push(ack);
                            break;
                        }
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        if flush.is_none() && !waiting.is_empty() {
            // Someone waits: commit now, with whatever else is already queued.
            while batch.order.len() < max_items {
                match rx.try_recv() {
                    Ok(Msg::Update(u)) => batch.push(u),
                    Ok(Msg::Durable(u, ack)) => {
                        batch.push(u);
                        waiting.push(ack);
                    }
                    Ok(Msg::Flush(status, ack)) => {
                        flush = Some((status, ack));
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        // A flush waits like a durable update, and may set the run's status.
        let status = flush.and_then(|(status, ack)| {
            waiting.push(ack);
            status
        });
        match settle(&mut committing).await {
            Ok(Some(w)) => idle = Some(w),
            Ok(None) => {}
            Err(failed) => {
                for ack in waiting {
                    let _ = ack.send(Err(failed.message.clone()));
                }
                return fail(failed);
            }
        }
        let updates = batch.take();
        let Some(mut w) = idle.take() else { return };
        let counted = failed_committed.clone();
        let timed = commits.clone();
        committing = Some(tokio::task::spawn_blocking(move || {
            let result = if updates.is_empty() && status.is_none() {
                Ok(())
            } else {
                let began = std::time::Instant::now();
                let result = w.apply(&updates, status);
                timed.record(began.elapsed());
                result
            };
            if result.is_ok() {
                let failed = updates
                    .iter()
                    .filter(|u| matches!(u.change, Change::Failed { .. }))
                    .count();
                counted.fetch_add(failed as u64, std::sync::atomic::Ordering::SeqCst);
            }
            (w, result)
        }));
        if !waiting.is_empty() {
            // Each waiter returns only once everything before it is durable.
            match settle(&mut committing).await {
                Ok(w) => {
                    idle = w;
                    for ack in waiting {
                        let _ = ack.send(Ok(()));
                    }
                }
                Err(failed) => {
                    for ack in waiting {
                        let _ = ack.send(Err(failed.message.clone()));
                    }
                    return fail(failed);
                }
            }
        }
    }
    if let Err(message) = settle(&mut committing).await {
        fail(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s<T: for<'a> From<&'a str>>(x: &str) -> T {
        T::from(x)
    }

    #[test]
    fn a_batch_keeps_the_attempts_of_an_item_interrupted_in_its_backoff() {
        let mut b = Batch::default();
        let attempted = Change::Attempted {
            stage: s("a"),
            attempts: 1,
            error: "timed out after 1s".into(),
        };
        for change in [
            Change::Started { stage: s("a") },
            attempted.clone(),
            Change::Interrupted { stage: s("a") },
        ] {
            b.push(Update { seq: 1, change });
        }
        let rows = crate::checkpoint::model::fold(&b.take(), 7);
        assert_eq!(rows.len(), 1);
        let (_, row) = &rows[0];
        assert_eq!(row.attempts, Some(1), "the failed attempt still counts");
        assert_eq!(
            row.since,
            crate::checkpoint::model::Since::Mark(7),
            "and when the first began"
        );
        assert_eq!(row.state, crate::checkpoint::ItemState::Pending);
        // A later change that counts attempts itself wins.
        for change in [
            attempted,
            Change::Failed {
                stage: s("a"),
                error: "gone".into(),
                attempts: 2,
            },
        ] {
            b.push(Update { seq: 2, change });
        }
        let updates = b.take();
        assert_eq!(updates.len(), 1, "{updates:?}");
    }

    #[test]
    fn a_batch_keeps_the_record_of_an_item_that_moved_on() {
        let r1 = std::sync::Arc::new(crate::stage::Record::new("1"));
        let mut b = Batch::default();
        b.push(Update {
            seq: 1,
            change: Change::Started { stage: s("a") },
        });
        b.push(Update {
            seq: 1,
            change: Change::Advanced {
                stage: s("b"),
                record: r1.clone(),
            },
        });
        b.push(Update {
            seq: 1,
            change: Change::Started { stage: s("b") },
        });
        b.push(Update {
            seq: 2,
            change: Change::Started { stage: s("a") },
        });
        b.push(Update {
            seq: 2,
            change: Change::Done,
        });
        let out = b.take();
        assert_eq!(
            out,
            vec![
                Update {
                    seq: 1,
                    change: Change::Advanced {
                        stage: s("b"),
                        record: r1.clone()
                    }
                },
                Update {
                    seq: 1,
                    change: Change::Started { stage: s("b") }
                },
                Update {
                    seq: 2,
                    change: Change::Done
                },
            ]
        );
        assert!(b.take().is_empty());
    }
}
