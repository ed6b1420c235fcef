//! Group commit: item updates from every task go through one bounded channel to one writer,
//! which commits them in batches of at most `commit_max_items` updates or `commit_interval`,
//! whichever comes first. Several updates of one item within a batch collapse to what the last
//! one needs, so a fast item costs one row write per batch, not one per stage.
//!
//! The channel holds at most `commit_max_items` updates while a batch is being committed, so
//! at any moment at most two batches of updates are not yet durable: the bound on redone work
//! after `kill -9`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Change, CheckpointStore, RunStatus, StoreError, Update, UpdateWriter};

enum Msg {
    Update(Update),
    Flush(Option<RunStatus>, oneshot::Sender<Result<(), String>>),
}

/// The runner's handle on the writer. Cloning shares the writer.
#[derive(Clone)]
pub(crate) struct Checkpointer {
    tx: mpsc::Sender<Msg>,
    failure: Arc<OnceLock<String>>,
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
        let (tx, rx) = mpsc::channel(max_items.max(1));
        let failure = Arc::new(OnceLock::new());
        let task = tokio::spawn(write_loop(
            writer,
            rx,
            interval,
            max_items.max(1),
            failure.clone(),
        ));
        Ok((Checkpointer { tx, failure }, task))
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

    /// Commit everything queued so far (and set the run's status, if given); returns once it is
    /// durable.
    pub(crate) async fn flush(&self, status: Option<RunStatus>) -> Result<(), CheckpointFailed> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Flush(status, ack))
            .await
            .map_err(|_| self.failed())?;
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
    received: usize,
}

struct Slot {
    /// The latest record-carrying update, when later updates of the item carry none.
    advanced: Option<Change>,
    last: Change,
}

impl Batch {
    fn push(&mut self, u: Update) {
        self.received += 1;
        match self.slots.get_mut(&u.seq) {
            None => {
                self.order.push(u.seq);
                self.slots.insert(
                    u.seq,
                    Slot {
                        advanced: None,
                        last: u.change,
                    },
                );
            }
            Some(slot) => {
                match &u.change {
                    Change::Advanced { .. } | Change::Done | Change::Skipped { .. } => {
                        slot.advanced = None
                    }
                    _ => {
                        if matches!(slot.last, Change::Advanced { .. }) {
                            slot.advanced = Some(slot.last.clone());
                        }
                    }
                }
                slot.last = u.change;
            }
        }
    }

    fn take(&mut self) -> Vec<Update> {
        let mut out = Vec::with_capacity(self.order.len());
        for seq in self.order.drain(..) {
            if let Some(slot) = self.slots.remove(&seq) {
                if let Some(change) = slot.advanced {
                    out.push(Update { seq, change });
                }
                out.push(Update {
                    seq,
                    change: slot.last,
                });
            }
        }
        self.received = 0;
        out
    }
}

async fn write_loop(
    writer: Box<dyn UpdateWriter>,
    mut rx: mpsc::Receiver<Msg>,
    interval: Duration,
    max_items: usize,
    failure: Arc<OnceLock<String>>,
) {
    let mut writer = Some(writer);
    let mut batch = Batch::default();
    while let Some(first) = rx.recv().await {
        let mut flush = None;
        match first {
            Msg::Update(u) => batch.push(u),
            Msg::Flush(status, ack) => flush = Some((status, ack)),
        }
        if flush.is_none() {
            let deadline = Instant::now() + interval;
            while batch.received < max_items {
                tokio::select! {
                    biased;
                    msg = rx.recv() => match msg {
                        Some(Msg::Update(u)) => batch.push(u),
                        Some(Msg::Flush(status, ack)) => {
                            flush = Some((status, ack));
                            break;
                        }
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        let updates = batch.take();
        let status = flush.as_ref().and_then(|(s, _)| *s);
        let Some(mut w) = writer.take() else { break };
        let joined = tokio::task::spawn_blocking(move || {
            let result = if updates.is_empty() && status.is_none() {
                Ok(())
            } else {
                w.apply(&updates, status)
            };
            (w, result)
        })
        .await;
        let result = match joined {
            Ok((w, result)) => {
                writer = Some(w);
                result.map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("the checkpoint writer panicked: {e}")),
        };
        if let Some((_, ack)) = flush {
            let _ = ack.send(result.clone());
        }
        if let Err(message) = result {
            tracing::error!(error = %message, "checkpoint commit failed; stopping the run");
            let _ = failure.set(message);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> String {
        x.to_owned()
    }

    #[test]
    fn a_batch_keeps_the_record_of_an_item_that_moved_on() {
        let mut b = Batch::default();
        b.push(Update {
            seq: 1,
            change: Change::Started { stage: s("a") },
        });
        b.push(Update {
            seq: 1,
            change: Change::Advanced {
                stage: s("b"),
                record: s("r1"),
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
                        record: s("r1")
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
