//! The runner's side of the [flight recorder](crate::flight): it reads what the previous
//! process left, says so first when that process ended without a summary, records this one
//! (locally, and at every heartbeat in the checkpoint store, whose copy outlives a container's
//! disk), and marks the record ended when the run ends with a summary or a logged reason.
//!
//! A record that is not marked ended belongs to a process that died (`kill -9`, out of
//! memory, the watchdog) — unless that process still holds the pipeline's runner lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::CheckpointStore;
use crate::flight::{ProcessRecord, Recorder};
use crate::spec::{Pipeline, StoreLocation};
use crate::text;

/// Most in-flight attempts the "previous process" warning names.
const NAMED: usize = 20;

/// Read what the previous process left, start this process's recorder, and say first what the
/// previous process was doing if it ended without a summary; the attempts it had in flight
/// count against their items (in the store) before this process's record replaces its own.
///
/// With a PostgreSQL store, whose runners share a run, the deaths are counted by the runner
/// that takes the dead one's items over (see the store's leases), not here: the record only
/// says what the process was doing.
pub(crate) fn open(
    pipeline: &Pipeline,
    store: &dyn CheckpointStore,
) -> std::io::Result<(Arc<Recorder>, Option<std::fs::File>)> {
    let (path, slot) = match super::flight_slot(pipeline) {
        Ok(Some((path, lock))) => (Some(path), lock),
        Ok(None) => {
            tracing::warn!("every flight recorder file of this pipeline's folder is in use; keeping this process's record in memory only");
            (None, None)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot take a flight recorder file; keeping this process's record in memory only");
            (None, None)
        }
    };
    let (local, copy) = records(path.as_deref(), pipeline, store);
    let (previous, reported) = if copied(pipeline) {
        dead_runners(pipeline, store, local.into_iter().collect())
    } else {
        (
            newest(local, copy)
                .filter(|r| !r.ended)
                .into_iter()
                .collect(),
            Vec::new(),
        )
    };
    // The new file is prepared beside the old one and takes its place only once it holds the
    // report on the previous process: killed in between, this process leaves the old record to
    // be reported again, never neither. A file that cannot be made leaves the old one too.
    let prepared = path.map(|path| Recorder::prepare(&path, &pipeline.name));
    let recorder = match prepared {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            // A read-only folder, a full disk: the watchdog still has a table to read, and a
            // PostgreSQL store still gets its copies.
            tracing::warn!(error = %e, "cannot keep the flight recorder's file; keeping it in memory only (the previous record stays, and is reported again)");
            Recorder::in_memory(&pipeline.name)?
        }
        None => Recorder::in_memory(&pipeline.name)?,
    };
    let recorder = Arc::new(recorder);
    let sink = recorder.clone();
    crate::telemetry::set_event_sink(Some(Arc::new(move |line: &[u8]| sink.event(line))));
    for previous in &previous {
        log_previous(previous);
        if !copied(pipeline) {
            count_died_attempts(store, previous);
        }
    }
    if !previous.is_empty() {
        let reports: Vec<String> = previous.iter().map(report).collect();
        recorder.set_previous_report(&reports.join(" | "));
    }
    if let Err(e) = recorder.place() {
        tracing::warn!(error = %e, "cannot keep the flight recorder's file; keeping it in memory only (the previous record stays, and is reported again)");
    }
    // Reported, and kept in this process's record: the next process need not say it again.
    if !reported.is_empty() {
        if let Err(e) = store.processes_reported(&reported) {
            tracing::debug!(error = %e, "cannot mark the dead runners reported; the next process reports them again");
        }
    }
    if copied(pipeline) {
        save(store, &pipeline.name, &recorder);
    }
    Ok((recorder, slot))
}

/// The attempts a process that died had in flight count against their items, in the store:
/// an item that kills the process every time it is tried ends failed after `retry.attempts`
/// deaths instead of looping forever. Counting the same deaths again changes nothing. A store
/// that refuses is logged; the run goes on (those attempts are then not counted).
fn count_died_attempts(store: &dyn CheckpointStore, previous: &ProcessRecord) {
    let Some(run) = previous.run else {
        return;
    };
    let died: Vec<(String, String, u32)> = previous
        .in_flight
        .iter()
        .map(|a| (a.key.clone(), a.stage.clone(), a.attempt))
        .collect();
    if died.is_empty() {
        return;
    }
    match store.count_died_attempts(run, &died) {
        Ok(counted) => tracing::info!(
            run,
            counted,
            not_recorded = previous.in_flight_more,
            "the attempts the previous process ended in count against their items' retry.attempts"
        ),
        Err(e) => tracing::warn!(
            run,
            error = %e,
            "cannot count the attempts the previous process ended in; its items will try them again"
        ),
    }
}

/// The run ended with a summary or a logged reason: mark the record so, in the file at once and
/// in the store if it answers within [`LAST_COPY`] (a store that does not answer already made
/// the run say so; it cannot hold the exit too).
pub(crate) fn ended(
    pipeline: &Pipeline,
    store: &Arc<dyn CheckpointStore>,
    recorder: &Arc<Recorder>,
) {
    recorder.mark_ended();
    crate::telemetry::set_event_sink(None);
    if !copied(pipeline) {
        return;
    }
    let (store, recorder, name) = (store.clone(), recorder.clone(), pipeline.name.clone());
    let (saved, wait) = std::sync::mpsc::channel();
    let copying = std::thread::Builder::new()
        .name("stagewise-record".into())
        .spawn(move || {
            save(&*store, &name, &recorder);
            let _ = saved.send(());
        });
    if copying.is_ok() {
        let _ = wait.recv_timeout(LAST_COPY);
    }
}

/// How long the last copy of the record may take at exit.
const LAST_COPY: Duration = Duration::from_millis(500);

/// Whether the record is copied to the store: for a PostgreSQL store, whose users often have a
/// disk that dies with the container. A SQLite store's record is the file beside it.
pub(crate) fn copied(pipeline: &Pipeline) -> bool {
    matches!(pipeline.checkpoint.store, StoreLocation::Postgres(_))
}

/// Keep a copy of the record in the store; a store that fails is logged at debug level (the
/// run's own commits report a broken store).
pub(crate) fn save(store: &dyn CheckpointStore, pipeline: &str, recorder: &Recorder) {
    let record = recorder.snapshot();
    let json = serde_json::to_string(&record).expect("a record always serializes");
    if let Err(e) = store.save_process(pipeline, &json) {
        tracing::debug!(error = %e, "cannot copy the flight record to the checkpoint store");
    }
}

/// Copies the record to the store at each heartbeat, on a thread, one at a time: a slow store
/// skips copies rather than piling them up.
#[derive(Default)]
pub(crate) struct Copier {
    busy: Arc<AtomicBool>,
}

impl Copier {
    pub(crate) fn copy(
        &self,
        store: &Arc<dyn CheckpointStore>,
        pipeline: &str,
        recorder: &Arc<Recorder>,
    ) {
        if self.busy.swap(true, Ordering::SeqCst) {
            return;
        }
        let (busy, store, recorder, pipeline) = (
            self.busy.clone(),
            store.clone(),
            recorder.clone(),
            pipeline.to_owned(),
        );
        // A thread of its own, not the runtime's blocking pool: a copy stuck on a locked store
        // must not hold the runtime's shutdown.
        let started = std::thread::Builder::new()
            .name("stagewise-record".into())
            .spawn(move || {
                save(&*store, &pipeline, &recorder);
                busy.store(false, Ordering::SeqCst);
            });
        if started.is_err() {
            self.busy.store(false, Ordering::SeqCst);
        }
    }
}

/// The runners of a PostgreSQL store's pipeline that died (their lease ran out, their record
/// not ended) and were not reported yet, newest first, each with the local file's record
/// instead of the store's copy where that file is the same process's and newer; and their ids,
/// to mark them reported. A store that cannot say leaves the local record alone to report.
fn dead_runners(
    pipeline: &Pipeline,
    store: &dyn CheckpointStore,
    locals: Vec<ProcessRecord>,
) -> (Vec<ProcessRecord>, Vec<i64>) {
    let dead = match store.dead_processes(&pipeline.name) {
        Ok(dead) => dead,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the records of the pipeline's dead runners");
            return (
                locals.into_iter().filter(|r| !r.ended).collect(),
                Vec::new(),
            );
        }
    };
    let mut ids = Vec::new();
    let mut records = Vec::new();
    for (id, json) in dead {
        let Ok(copy) = serde_json::from_str::<ProcessRecord>(&json) else {
            continue;
        };
        let same = |r: &&ProcessRecord| {
            r.pid == copy.pid && r.host == copy.host && r.started_at == copy.started_at
        };
        let record = match locals.iter().find(same) {
            Some(l) => newest(Some(l.clone()), Some(copy)),
            None => Some(copy),
        };
        if let Some(record) = record.filter(|r| !r.ended) {
            ids.push(id);
            records.push(record);
        }
    }
    (records, ids)
}

/// The newest of the local file's record and the store's copy, if any.
fn last_record(pipeline: &Pipeline, store: &dyn CheckpointStore) -> Option<ProcessRecord> {
    let (local, copy) = records(Some(&super::flight_path(pipeline)), pipeline, store);
    newest(local, copy)
}

/// The record of the local file at `path` and the store's copy, each if there is one.
fn records(
    path: Option<&std::path::Path>,
    pipeline: &Pipeline,
    store: &dyn CheckpointStore,
) -> (Option<ProcessRecord>, Option<ProcessRecord>) {
    let local = match path.map(Recorder::read).transpose() {
        Ok(r) => r.flatten(),
        Err(e) => {
            tracing::warn!(error = %e, "the previous process's flight record cannot be read");
            None
        }
    };
    let local = local.filter(|r| r.pipeline == pipeline.name);
    let copy = match store.load_process(&pipeline.name) {
        Ok(json) => json.and_then(|j| serde_json::from_str::<ProcessRecord>(&j).ok()),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the flight record kept in the store");
            None
        }
    };
    (local, copy)
}

fn newest(local: Option<ProcessRecord>, copy: Option<ProcessRecord>) -> Option<ProcessRecord> {
    // RFC 3339 in UTC with milliseconds: the later text is the later time.
    match (local, copy) {
        (Some(a), Some(b)) => Some(if a.last_seen_at >= b.last_seen_at {
            a
        } else {
            b
        }),
        (a, b) => a.or(b),
    }
}

/// Why the local flight record cannot be read, if it cannot (damaged, of another format
/// version, not a file): `status` says so, since it has no log.
pub(crate) fn unreadable_record(pipeline: &Pipeline) -> Option<String> {
    Recorder::read(&super::flight_path(pipeline))
        .err()
        .map(|e| text::printable(&e.to_string()).into_owned())
}

/// What `status` reports as the previous process: a record not marked ended, of a process that
/// no longer holds the pipeline's runner lock.
pub(crate) fn previous_process(
    pipeline: &Pipeline,
    store: &dyn CheckpointStore,
) -> Option<ProcessRecord> {
    if copied(pipeline) {
        // The store says which runners are gone: their leases ran out. Each runner here kept
        // its record in a file of its slot, fresher than the store's copy.
        let locals = super::flight_paths(pipeline)
            .iter()
            .filter_map(|path| Recorder::read(path).ok().flatten())
            .collect();
        return dead_runners(pipeline, store, locals).0.into_iter().next();
    }
    let record = last_record(pipeline, store).filter(|r| !r.ended)?;
    if !matches!(store.runner_active(&pipeline.name), Ok(false)) {
        return None;
    }
    // A run that ended between the read and the lock check marked its record ended first:
    // read again, and report only a record that is still the same and still not ended.
    last_record(pipeline, store).filter(|again| {
        !again.ended && again.pid == record.pid && again.started_at == record.started_at
    })
}

/// One line per attempt a dead process had in flight, for a person.
pub(crate) fn describe_in_flight(record: &ProcessRecord) -> Vec<String> {
    let mut lines: Vec<String> = record
        .in_flight
        .iter()
        .take(NAMED)
        .map(|a| {
            format!(
                "`{}` in stage `{}`, attempt {}, for {}",
                text::printable(&a.key),
                text::printable(&a.stage),
                a.attempt,
                text::duration(Duration::from_secs_f64(a.age_secs.max(0.0)))
            )
        })
        .collect();
    let more = record.in_flight.len().saturating_sub(NAMED) as u64 + record.in_flight_more;
    if more > 0 {
        lines.push(format!("and {more} more"));
    }
    lines
}

/// The report on a process that ended without a summary, as one line: what the log line says.
fn report(previous: &ProcessRecord) -> String {
    let in_flight = describe_in_flight(previous);
    format!(
        "pid={} host={} started_at={} last_event_at={} last_seen_at={} ending={} in_flight={}",
        previous.pid,
        text::printable(&previous.host),
        previous.started_at,
        previous.last_event_at.as_deref().unwrap_or("never"),
        previous.last_seen_at,
        previous
            .ending
            .as_deref()
            .map(text::printable)
            .unwrap_or_default(),
        if in_flight.is_empty() {
            "nothing".to_owned()
        } else {
            in_flight.join("; ")
        }
    )
}

fn log_previous(previous: &ProcessRecord) {
    let in_flight = describe_in_flight(previous);
    tracing::warn!(
        pid = previous.pid,
        host = %text::printable(&previous.host),
        started_at = %previous.started_at,
        last_event_at = previous.last_event_at.as_deref().unwrap_or("never"),
        last_seen_at = %previous.last_seen_at,
        ending = %previous.ending.as_deref().map(text::printable).unwrap_or_default(),
        in_flight = %if in_flight.is_empty() { "nothing".to_owned() } else { in_flight.join("; ") },
        "{}",
        crate::telemetry::events::PREVIOUS_PROCESS
    );
}
