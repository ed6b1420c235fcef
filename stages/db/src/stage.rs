//! The two stages: `db-fetch` reads the batch, `persist` writes each record; both on either
//! backend, and `persist` optionally sharing transactions between records that arrive together.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;
use stagewise_core::stage::{
    BlockingStage, Context, Emitted, Ending, EndingKind, ErrorKind, Fields, Marks, Outcome, Record,
    Source, StageError, Stop,
};

use crate::params::Script;
use crate::postgres::{self as pg, PgPool};
use crate::sqlite::{self, SqlitePool};

/// A database a stage talks to.
pub(crate) enum Backend {
    Postgres(Box<PgPool>),
    Sqlite(SqlitePool),
}

/// `db-fetch`.
pub(crate) struct DbFetch {
    pub backend: Backend,
    /// The query with `$limit` rewritten to the backend's first placeholder.
    pub sql: String,
    /// Whether the query takes the batch size.
    pub takes_limit: bool,
    pub key: String,
}

/// An error of no kind yet is the database's.
fn database(e: StageError) -> StageError {
    match e.kind {
        ErrorKind::Other => e.with_kind(ErrorKind::Database),
        _ => e,
    }
}

/// An error of a record's own values.
fn invalid(message: String) -> StageError {
    StageError::permanent(message).with_kind(ErrorKind::InvalidInput)
}

fn key_of(fields: &Fields, column: &str, row: u64) -> Result<String, StageError> {
    match fields.get(column) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Some(Value::Null) => Err(invalid(format!(
            "row {row}: the key column `{column}` is null"
        ))),
        Some(other) => Err(invalid(format!(
            "row {row}: the key column `{column}` holds {other}, neither text nor an integer"
        ))),
        None => {
            let columns: Vec<&str> = fields.keys().map(String::as_str).collect();
            Err(StageError::permanent(format!(
                "the query has no column `{column}` for the key (its columns: {})",
                columns.join(", ")
            )))
        }
    }
}

impl Source for DbFetch {
    fn read(
        &self,
        limit: Option<u64>,
        cx: &Context,
        emit: &mut dyn FnMut(Emitted) -> Result<(), Stop>,
    ) -> Result<(), StageError> {
        let bound = self
            .takes_limit
            .then(|| limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX)));
        let mut rows = 0u64;
        let mut failure = None;
        let mut on_row = |row: Row| -> bool {
            rows += 1;
            let fields = match row {
                Ok(fields) => fields,
                // A value that does not read: the row fails alone, keyed as well as it can be.
                Err((error, fields)) => {
                    return emit(Emitted::Unreadable {
                        key: key_of(&fields, &self.key, rows)
                            .unwrap_or_else(|_| format!("row {rows}")),
                        error: format!("row {rows}: {error}"),
                        fields,
                    })
                    .is_ok()
                }
            };
            match key_of(&fields, &self.key, rows) {
                Ok(key) => emit(Record::with_fields(key, fields).into()).is_ok(),
                // No key column: the query's fault, not a row's.
                Err(e) if !fields.contains_key(&self.key) => {
                    failure = Some(e);
                    false
                }
                // A row's own key is unusable: that row fails, the others run.
                Err(e) => emit(Emitted::Unreadable {
                    key: format!("row {rows}"),
                    error: e.message,
                    fields,
                })
                .is_ok(),
            }
        };
        match &self.backend {
            Backend::Postgres(pool) => {
                pg::with_conn(pool, cx, |c| c.fetch(&self.sql, bound, &mut on_row))
            }
            Backend::Sqlite(pool) => {
                pool.with_conn(cx, |c| sqlite::fetch(c, &self.sql, bound, &mut on_row))
            }
        }
        .map_err(database)?;
        failure.map_or(Ok(()), |e| Err(database(e)))
    }
}

/// A row of `db-fetch`'s query: its fields, or why one of its values does not read (and the
/// fields that did).
pub(crate) type Row = Result<Fields, (String, Fields)>;

/// `persist`.
pub(crate) struct Persist {
    pub backend: Backend,
    /// The statements and the names they use.
    pub script: Script,
    /// Shares transactions when `batch_size` > 1.
    pub batcher: Option<Batcher>,
    /// Marks an item that failed, at any stage (`on_failure`).
    pub on_failure: Option<Script>,
    /// Marks an item that was skipped, at any stage (`on_skip`).
    pub on_skip: Option<Script>,
}

impl Persist {
    fn values(&self, record: &Record) -> Result<Vec<Value>, StageError> {
        self.script
            .names
            .iter()
            .map(|name| {
                if name == "key" {
                    return Ok(Value::String(record.key.clone()));
                }
                record.fields.get(name).cloned().ok_or_else(|| {
                    let fields: Vec<&str> = record.fields.keys().map(String::as_str).collect();
                    invalid(format!(
                        "the statement names `:{name}`, but the record has no field `{name}` (its fields: {})",
                        fields.join(", ")
                    ))
                })
            })
            .collect()
    }

    fn write(&self, cx: &Context, batch: &[&[Value]]) -> Result<(), StageError> {
        self.run(&self.script, cx, batch)
    }

    /// Run `script` once per row of `batch`, all in one transaction.
    fn run(&self, script: &Script, cx: &Context, batch: &[&[Value]]) -> Result<(), StageError> {
        match &self.backend {
            Backend::Postgres(pool) => pg::with_conn(pool, cx, |c| c.persist(script, batch)),
            Backend::Sqlite(pool) => pool.with_conn(cx, |c| sqlite::persist(c, script, batch)),
        }
    }
}

/// The values of a marking statement's names: `:key`, `:stage`, `:error` (the error, or the
/// skip reason) and `:attempts` from the ending; any other name from the record's fields as
/// they were when it ended, null for a field it did not have by then.
fn mark_values(script: &Script, ending: &Ending) -> Vec<Value> {
    script
        .names
        .iter()
        .map(|name| match name.as_str() {
            "key" => Value::String(ending.record.key.clone()),
            "stage" => Value::String(ending.stage.clone()),
            "error" => Value::String(ending.message.clone()),
            "attempts" => Value::from(ending.attempts),
            field => ending
                .record
                .fields
                .get(field)
                .cloned()
                .unwrap_or(Value::Null),
        })
        .collect()
}

impl BlockingStage for Persist {
    fn process(&self, record: Record, cx: &Context) -> Result<Outcome, StageError> {
        // Every parameter is resolved before anything is written: no partial writes.
        let values = self.values(&record)?;
        match &self.batcher {
            None => self.write(cx, &[&values]),
            Some(b) => b.submit(values, cx, |batch| self.write(cx, batch)),
        }
        .map_err(database)?;
        Ok(Outcome::Continue(record))
    }

    fn marks(&self) -> Marks {
        Marks {
            failed: self.on_failure.is_some(),
            skipped: self.on_skip.is_some(),
        }
    }

    fn mark(&self, ending: &Ending, cx: &Context) -> Result<(), StageError> {
        let script = match ending.kind {
            EndingKind::Failed => &self.on_failure,
            EndingKind::Skipped => &self.on_skip,
        };
        let Some(script) = script else {
            return Ok(());
        };
        // Its own transaction, never shared with records being written.
        self.run(script, cx, &[&mark_values(script, ending)])
    }
}

/// Group commit for `persist`: one group is written at a time; records that arrive meanwhile
/// queue, and when the write ends the first caller still queued takes the queue (up to `max`
/// records) and writes it in one transaction, handing each caller its result. Nobody waits for
/// company: under light load a group is one record, under heavy load groups grow by themselves.
/// If the shared transaction fails for a reason tied to the data, each record is written again
/// on its own, so that only the bad one fails.
pub(crate) struct Batcher {
    max: usize,
    state: Mutex<BatchState>,
    wake: Condvar,
}

#[derive(Default)]
struct BatchState {
    next: u64,
    queue: VecDeque<(u64, Vec<Value>)>,
    results: HashMap<u64, Result<(), StageError>>,
    /// Callers that gave up (deadline) after their record was taken: drop their results.
    gone: HashSet<u64>,
    /// A group is being written.
    writing: bool,
}

impl Batcher {
    /// Groups of at most `max` records; never more than the stage's threads, which are all
    /// that can ever be waiting to join a group.
    pub(crate) fn new(max: usize, concurrency: usize) -> Self {
        Batcher {
            max: max.min(concurrency).max(1),
            state: Mutex::new(BatchState::default()),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BatchState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn submit(
        &self,
        values: Vec<Value>,
        cx: &Context,
        write: impl Fn(&[&[Value]]) -> Result<(), StageError>,
    ) -> Result<(), StageError> {
        let mut st = self.lock();
        let id = st.next;
        st.next += 1;
        st.queue.push_back((id, values));
        self.wake.notify_all();
        loop {
            if let Some(result) = st.results.remove(&id) {
                return result;
            }
            if !st.writing && st.queue.iter().any(|(i, _)| *i == id) {
                st.writing = true;
                let n = st.queue.len().min(self.max);
                let taken: Vec<(u64, Vec<Value>)> = st.queue.drain(..n).collect();
                drop(st);
                let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    write_batch(&taken, &write)
                }))
                .unwrap_or_else(|_| {
                    let error = StageError::permanent("panicked while writing the batch");
                    taken
                        .iter()
                        .map(|(i, _)| (*i, Err(error.clone())))
                        .collect()
                });
                st = self.lock();
                for (i, r) in results {
                    if !st.gone.remove(&i) {
                        st.results.insert(i, r);
                    }
                }
                st.writing = false;
                self.wake.notify_all();
                continue;
            }
            if cx.is_cancelled() {
                let queued = st.queue.iter().position(|(i, _)| *i == id);
                match queued {
                    Some(p) => {
                        st.queue.remove(p);
                    }
                    None => {
                        st.gone.insert(id);
                    }
                }
                return Err(StageError::transient(
                    "timed out waiting for a batch to be written",
                ));
            }
            let wait = cx
                .remaining()
                .min(Duration::from_millis(50))
                .max(Duration::from_millis(1));
            st = self
                .wake
                .wait_timeout(st, wait)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

fn write_batch(
    taken: &[(u64, Vec<Value>)],
    write: &impl Fn(&[&[Value]]) -> Result<(), StageError>,
) -> Vec<(u64, Result<(), StageError>)> {
    let all: Vec<&[Value]> = taken.iter().map(|(_, v)| v.as_slice()).collect();
    match write(&all) {
        Ok(()) => taken.iter().map(|(i, _)| (*i, Ok(()))).collect(),
        // One record's data (a constraint, a type) spoilt the transaction: find which.
        Err(e) if taken.len() > 1 && e.class == stagewise_core::stage::ErrorClass::Permanent => {
            taken
                .iter()
                .map(|(i, v)| (*i, write(&[v.as_slice()])))
                .collect()
        }
        Err(e) => taken.iter().map(|(i, _)| (*i, Err(e.clone()))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagewise_core::stage::CancelFlag;
    use std::sync::Arc;
    use std::time::Instant;

    fn cx(timeout: Duration) -> Context {
        Context::new("k", "save", 1, Instant::now() + timeout, CancelFlag::new())
    }

    #[test]
    fn batches_share_transactions_and_isolate_a_bad_record() {
        let batcher = Arc::new(Batcher::new(8, 8));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let together = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (batcher, sizes, together) = (batcher.clone(), sizes.clone(), together.clone());
                std::thread::spawn(move || {
                    together.wait();
                    let write = |batch: &[&[Value]]| {
                        sizes.lock().expect("lock").push(batch.len());
                        // A write takes a while, so that records queue behind it.
                        std::thread::sleep(Duration::from_millis(20));
                        if batch.iter().any(|v| v[0] == 3) {
                            Err(StageError::permanent("record 3 violates a constraint"))
                        } else {
                            Ok(())
                        }
                    };
                    batcher.submit(vec![Value::from(i)], &cx(Duration::from_secs(5)), write)
                })
            })
            .collect();
        let results: Vec<Result<(), StageError>> = threads
            .into_iter()
            .map(|t| t.join().expect("no panic"))
            .collect();
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.is_err(), i == 3, "record {i}: {r:?}");
        }
        let sizes = sizes.lock().expect("lock").clone();
        assert!(
            sizes.iter().any(|&n| n > 1),
            "some records shared a transaction: {sizes:?}"
        );
    }

    #[test]
    fn a_transient_failure_is_not_retried_record_by_record() {
        let batcher = Batcher::new(4, 4);
        let calls = Mutex::new(0);
        let result = batcher.submit(vec![Value::from(1)], &cx(Duration::from_secs(5)), |_| {
            *calls.lock().expect("lock") += 1;
            Err(StageError::transient("connection lost"))
        });
        assert!(result.is_err());
        assert_eq!(*calls.lock().expect("lock"), 1);
    }

    #[test]
    fn a_caller_past_its_deadline_gives_up() {
        // The first caller's write is slow; the second caller queues behind it and must not
        // wait for it past its own deadline.
        let batcher = Arc::new(Batcher::new(2, 2));
        let slow = {
            let batcher = batcher.clone();
            std::thread::spawn(move || {
                batcher.submit(vec![Value::from(1)], &cx(Duration::from_secs(5)), |_| {
                    std::thread::sleep(Duration::from_millis(600));
                    Ok(())
                })
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        let result = batcher.submit(
            vec![Value::from(2)],
            &cx(Duration::from_millis(100)),
            |_| Ok(()),
        );
        assert!(result.is_err(), "timed out");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert!(slow.join().expect("no panic").is_ok());
    }
}
