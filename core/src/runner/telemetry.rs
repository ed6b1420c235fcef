//! What a run tells while it runs and when it ends: heartbeat lines, slow-attempt warnings,
//! and the summary (in the log and as JSON beside the checkpoint store).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::control::Control;
use super::stats::Latency;
use super::{Exit, Shared, StageRt, Totals};
use crate::checkpoint::{CheckpointStore, RunInfo};
use crate::spec::Pipeline;
use crate::telemetry::events;
use crate::text;

/// Log a heartbeat every `every` (and copy the flight record to `store`, if given), warn once about
/// each attempt past half its timeout, and dump the status when a signal asks for it (SIGUSR1,
/// SIGUSR2).
pub(crate) async fn heartbeat(
    shared: Arc<Shared>,
    store: Option<Arc<dyn CheckpointStore>>,
    pipeline: String,
    every: Duration,
    liveness: Duration,
    done: CancellationToken,
    began: Instant,
) {
    let copier = super::blackbox::Copier::default();
    let mut beat = tokio::time::interval(every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    let mut watch = tokio::time::interval(every.min(Duration::from_secs(1)));
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // On a terminal, the live progress stands for the heartbeat lines.
    let live = crate::telemetry::live_progress();
    let mut redraw = tokio::time::interval(PROGRESS_EVERY);
    redraw.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            _ = redraw.tick(), if live => {
                crate::telemetry::progress(Some(progress_lines(&shared, began)));
            }
            _ = beat.tick() => {
                if !live {
                    log_heartbeat(&shared, began);
                }
                if let Some(store) = &store {
                    copier.copy(store, &pipeline, &shared.recorder);
                }
            }
            _ = watch.tick() => {
                warn_slow(&shared);
                abort_frozen(&shared, liveness);
            }
            () = shared.control.dump.notified() => log_status_dump(&shared, began),
        }
    }
}

/// The longest stage name the live progress shows whole.
const PROGRESS_NAME: usize = 20;

/// How often the live progress is drawn again.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// The live progress: a line per stage after the source (done, failed, in flight, rate) and
/// the run's (items ended of all, rate, ETA), as the heartbeat counts them.
fn progress_lines(shared: &Shared, began: Instant) -> Vec<String> {
    let pace = Pace::of(shared, began);
    let stages = &shared.stages[1.min(shared.stages.len())..];
    // Names as shown: a long one shortened, so that the figures fit a terminal's line.
    let name = |s: &StageRt| {
        let shown = text::printable(&s.name).into_owned();
        if shown.chars().count() > PROGRESS_NAME {
            let cut: String = shown.chars().take(PROGRESS_NAME - 1).collect();
            format!("{cut}…")
        } else {
            shown
        }
    };
    let width = stages
        .iter()
        .map(|s| name(s).chars().count())
        .max()
        .unwrap_or(0);
    let mut lines: Vec<String> = stages
        .iter()
        .map(|s| {
            let st = &s.stats;
            format!(
                "  {:<width$}  done {:>6}  failed {:>5}  in flight {:>4}  {:>7.1}/s",
                name(s),
                st.done.get(),
                st.failed.get(),
                st.in_flight_count(),
                st.done.get() as f64 / pace.elapsed,
            )
        })
        .collect();
    let t = &shared.totals;
    let eta = match pace.eta_secs() {
        _ if pace.remaining == 0 => "-".to_owned(),
        Some(secs) => text::duration(Duration::from_secs(secs.ceil().min(1e9) as u64)),
        None => "unknown".to_owned(),
    };
    lines.push(format!(
        "  {} of {} items ended ({} failed, {} skipped)  {:.1} items/s  ETA {eta}",
        t.items.saturating_sub(pace.remaining),
        t.items,
        t.failed.get(),
        t.skipped.get(),
        pace.rate,
    ));
    lines
}

/// Where the run stands, as the heartbeat, `/progress` and the live progress count it.
struct Pace {
    /// Seconds this process has run.
    elapsed: f64,
    /// Items that ended in this process per second: through the last stage, or failed or
    /// skipped anywhere.
    rate: f64,
    /// Items of the run not ended yet.
    remaining: u64,
    /// Attempts in flight, every stage.
    in_flight: usize,
    /// The oldest attempt in flight: its key, age and stage.
    oldest: Option<(Arc<str>, Duration, Arc<str>)>,
}

impl Pace {
    fn of(shared: &Shared, began: Instant) -> Self {
        let elapsed = began.elapsed().as_secs_f64().max(1e-3);
        let ended: u64 = shared.stages.last().map_or(0, |s| s.stats.done.get())
            + shared
                .stages
                .iter()
                .map(|s| s.stats.failed.get() + s.stats.skipped.get())
                .sum::<u64>();
        Pace {
            elapsed,
            rate: ended as f64 / elapsed,
            remaining: shared.totals.remaining(),
            in_flight: shared
                .stages
                .iter()
                .map(|s| s.stats.in_flight_count())
                .sum(),
            oldest: shared
                .stages
                .iter()
                .filter_map(|s| s.stats.oldest().map(|(k, age)| (k, age, s.name.clone())))
                .max_by_key(|(_, age, _)| *age),
        }
    }

    /// Seconds until the remaining items end at this rate, if it is one.
    fn eta_secs(&self) -> Option<f64> {
        (self.rate > 0.0).then(|| self.remaining as f64 / self.rate)
    }
}

fn log_heartbeat(shared: &Shared, began: Instant) {
    if crate::telemetry::json() {
        if tracing::enabled!(tracing::Level::INFO) {
            crate::telemetry::json_event(false, events::HEARTBEAT, heartbeat_fields(shared, began));
        }
        return;
    }
    let t = &shared.totals;
    let pace = Pace::of(shared, began);
    let eta = pace.eta_secs().map_or_else(
        || "unknown".to_owned(),
        |secs| text::duration(Duration::from_secs_f64(secs)),
    );
    let oldest = pace.oldest.as_ref().map_or_else(
        || "none".to_owned(),
        |(key, age, stage)| format!("{key} in {stage} for {}", text::duration(*age)),
    );
    let stages: Vec<String> = shared.stages.iter().skip(1).map(stage_line).collect();
    tracing::info!(
        done = t.done.get(),
        failed = t.failed.get(),
        skipped = t.skipped.get(),
        remaining = pace.remaining,
        in_flight = pace.in_flight,
        items_per_sec = format!("{:.1}", pace.rate),
        eta = %eta,
        oldest = %oldest,
        stages = %stages.join(" | "),
        "{}",
        events::HEARTBEAT
    );
}

/// The heartbeat's figures, every one a number (or null): the JSON heartbeat's fields and
/// `/progress`.
pub(crate) fn heartbeat_fields(
    shared: &Shared,
    began: Instant,
) -> serde_json::Map<String, serde_json::Value> {
    let t = &shared.totals;
    let pace = Pace::of(shared, began);
    let oldest = pace.oldest.as_ref().map(|(key, age, stage)| {
        serde_json::json!({ "key": &**key, "stage": &**stage, "age_secs": age.as_secs_f64() })
    });
    let fields = serde_json::json!({
        "done": t.done.get(),
        "failed": t.failed.get(),
        "skipped": t.skipped.get(),
        "remaining": pace.remaining,
        "in_flight": pace.in_flight,
        "items_per_sec": pace.rate,
        "eta_secs": pace.eta_secs(),
        "elapsed_secs": pace.elapsed,
        "oldest": oldest,
        "stages": shared.stages.iter().skip(1).map(stage_fields).collect::<Vec<_>>(),
    });
    match fields {
        serde_json::Value::Object(fields) => fields,
        _ => unreachable!("built as an object"),
    }
}

/// Most attempts a status dump names per stage.
const DUMP_LIMIT: usize = 50;

/// What SIGUSR1 asks for: a heartbeat now, and every attempt in flight, stage by stage, oldest
/// first (up to [`DUMP_LIMIT`] a stage).
fn log_status_dump(shared: &Shared, began: Instant) {
    tracing::info!("status requested by signal: a heartbeat and the attempts in flight follow");
    log_heartbeat(shared, began);
    for s in &shared.stages {
        let attempts = s.stats.in_flight();
        if attempts.is_empty() {
            continue;
        }
        let mut listed: Vec<String> = attempts
            .iter()
            .take(DUMP_LIMIT)
            .map(|(key, age)| format!("{key} ({})", text::duration(*age)))
            .collect();
        if attempts.len() > DUMP_LIMIT {
            listed.push(format!("and {} more", attempts.len() - DUMP_LIMIT));
        }
        tracing::info!(
            stage = %s.name,
            in_flight = attempts.len(),
            attempts = %listed.join(", "),
            "in flight"
        );
    }
}

/// A stage's figures in a heartbeat, for JSON logs: every one, as a number.
fn stage_fields(s: &StageRt) -> serde_json::Value {
    let st = &s.stats;
    let slowed = s.lanes.slowed();
    serde_json::json!({
        "name": &*s.name,
        "in_flight": st.in_flight_count(),
        "done": st.done.get(),
        "failed": st.failed.get(),
        "skipped": st.skipped.get(),
        "retries": st.retries.get(),
        "timeouts": st.timeouts.get(),
        "backing_off": st.backing_off.get(),
        "concurrency": s.adaptive.limit(),
        "concurrency_max": s.adaptive.max(),
        "slowed_lanes": slowed.len(),
        "abandoned": st.abandoned_now(),
        "abandoned_total": st.abandoned_total.get(),
        "breaker": breaker_state(s),
        "lane_breakers_open": s.lanes.open_breakers().len(),
    })
}

/// The circuit breakers holding attempts back, in a line (empty: none): each stage whose
/// breaker is open, and each stage's lanes whose breakers are (the first few by name).
pub(crate) fn open_breakers(stages: &[StageRt]) -> String {
    const NAMED: usize = 3;
    let mut parts = Vec::new();
    for s in stages {
        if breaker_state(s) == Some("open") {
            parts.push(format!("`{}`", s.name));
        }
        let lanes = s.lanes.open_breakers();
        if !lanes.is_empty() {
            let named: Vec<String> = lanes
                .iter()
                .take(NAMED)
                .map(|l| crate::text::printable(l).into_owned())
                .collect();
            let more = lanes.len().saturating_sub(NAMED);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            parts.push(format!("`{}` for {}{more}", s.name, named.join(", ")));
        }
    }
    parts.join("; ")
}

/// `"open"` (or half-open: held back either way), `"closed"`, or null without a breaker.
fn breaker_state(s: &StageRt) -> Option<&'static str> {
    s.breaker
        .as_ref()
        .map(|b| if b.is_open() { "open" } else { "closed" })
}

fn stage_line(s: &StageRt) -> String {
    let st = &s.stats;
    let mut line = format!(
        "{}: in_flight={} done={} failed={}",
        s.name,
        st.in_flight_count(),
        st.done.get(),
        st.failed.get()
    );
    if st.retries.get() > 0 {
        line.push_str(&format!(" retries={}", st.retries.get()));
    }
    if st.timeouts.get() > 0 {
        line.push_str(&format!(" timeouts={}", st.timeouts.get()));
    }
    if st.backing_off.get() > 0 {
        line.push_str(&format!(" backing_off={}", st.backing_off.get()));
    }
    if breaker_state(s) == Some("open") {
        line.push_str(" breaker=open");
    }
    let open = s.lanes.open_breakers();
    if let Some(first) = open.first() {
        // By name: a lane's name is a host's.
        line.push_str(&format!(
            " lane_breakers_open={} (first: {})",
            open.len(),
            crate::text::printable(first)
        ));
    }
    let limit = s.adaptive.limit();
    if limit < s.adaptive.max() {
        line.push_str(&format!(" concurrency={limit}/{}", s.adaptive.max()));
    }
    let slowed = s.lanes.slowed();
    if let Some((name, limit, width)) = slowed.first() {
        // The narrowest lane, by name: a lane's name is a host's.
        line.push_str(&format!(
            " slowed_lanes={} (narrowest: {} {limit}/{width})",
            slowed.len(),
            crate::text::printable(name)
        ));
    }
    if st.abandoned_total.get() > 0 {
        line.push_str(&format!(
            " abandoned={}/{}",
            st.abandoned_now(),
            s.policy.max_abandoned
        ));
    }
    line
}

/// An async attempt far past its timeout holds a runtime thread (its timeout fires on that
/// thread): with other threads still free, the runtime answers and the watchdog would not see
/// it, so the run ends here, naming the attempts, once they are `[pipeline] watchdog` past
/// their timeout.
fn abort_frozen(shared: &Shared, liveness: Duration) {
    for s in &shared.stages {
        if !matches!(s.imp, crate::stage::StageImpl::Async(_)) {
            continue;
        }
        let stuck = s.stats.overdue(liveness);
        if !stuck.is_empty() {
            shared.control.abort(super::control::AbortReason::Frozen {
                stage: s.name.to_string(),
                stuck: stuck
                    .into_iter()
                    .take(10)
                    .map(|(key, age)| (key.to_string(), age))
                    .collect(),
                timeout: s.policy.timeout,
            });
        }
    }
}

fn warn_slow(shared: &Shared) {
    for s in &shared.stages {
        for ((key, attempt), age, timeout) in s.stats.newly_slow() {
            tracing::warn!(
                run = shared.run,
                stage = %s.name,
                key = %key,
                attempt,
                elapsed_secs = text::secs(age),
                timeout_secs = text::secs(timeout),
                "{}",
                events::SLOW_ATTEMPT
            );
        }
    }
}

/// One stage's figures in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct StageSummary {
    /// Stage name.
    pub name: String,
    /// Stage kind.
    pub kind: String,
    /// Items it passed on.
    pub done: u64,
    /// Items that failed in it.
    pub failed: u64,
    /// Items it skipped.
    pub skipped: u64,
    /// Retries (attempts after the first).
    pub retries: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
    /// Attempts that panicked.
    pub panics: u64,
    /// Blocking calls abandoned after their timeout.
    pub abandoned: u64,
    /// Attempt latency.
    pub latency: Option<Latency>,
    /// The lowest its concurrency went when the service behind it asked it to slow down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lowest_concurrency: Option<usize>,
    /// The stage's own figures (an LLM stage's calls, cache hits, tokens, cost).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub figures: std::collections::BTreeMap<String, f64>,
}

/// The end-of-run summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Pipeline name.
    pub pipeline: String,
    /// Run id, when a batch was taken.
    pub run: Option<i64>,
    /// How it ended.
    pub outcome: &'static str,
    /// The process exit code.
    pub exit_code: i32,
    /// Why it stopped early, if it did.
    pub reason: Option<String>,
    /// Seconds this process ran.
    pub elapsed_secs: f64,
    /// Items in the run.
    pub items: u64,
    /// Items done (this run, all processes).
    pub done: u64,
    /// Items failed.
    pub failed: u64,
    /// Items skipped.
    pub skipped: u64,
    /// Items not yet ended.
    pub remaining: u64,
    /// Per stage.
    pub stages: Vec<StageSummary>,
    /// Log events before the summary that did not reach stderr: dropped by a full log queue
    /// (stderr not read fast enough), failed to write (stderr closed, its reader gone), or still
    /// queued behind a reader that stopped reading.
    pub log_events_dropped: u64,
    #[serde(skip)]
    exit: Option<Exit>,
}

impl Summary {
    /// How the run ended.
    pub fn exit(&self) -> Exit {
        self.exit.unwrap_or(Exit::Aborted)
    }
}

pub(crate) fn summarize(
    pipeline: &Pipeline,
    run: Option<&RunInfo>,
    stages: &[StageRt],
    totals: Option<&Totals>,
    exit: Exit,
    control: &Control,
    began: Instant,
) -> Summary {
    let failed = totals.map_or(0, |t| t.failed.get());
    let reason = control
        .abort_reason()
        .map(|r| r.at_the_end(failed).to_string())
        // A runner fenced after its last commit went through ended as that commit says.
        .or_else(|| {
            let interrupted = exit == Exit::Interrupted;
            control
                .interrupt_reason()
                .filter(|_| interrupted)
                .map(|r| r.to_string())
        })
        .or_else(|| {
            let totals = totals.filter(|_| exit == Exit::NoProgress)?;
            Some(no_progress(stages, totals))
        });
    let stage_summaries = stages
        .iter()
        .zip(&pipeline.stages)
        .map(|(s, spec)| StageSummary {
            name: s.name.to_string(),
            kind: spec.kind.clone(),
            done: s.stats.done.get(),
            failed: s.stats.failed.get(),
            skipped: s.stats.skipped.get(),
            retries: s.stats.retries.get(),
            timeouts: s.stats.timeouts.get(),
            panics: s.stats.panics.get(),
            abandoned: s.stats.abandoned_total.get(),
            latency: s.stats.latency(),
            lowest_concurrency: s.adaptive.lowest(),
            figures: s.meter.snapshot(),
        })
        .collect();
    Summary {
        pipeline: pipeline.name.clone(),
        run: run.map(|r| r.id),
        outcome: match exit {
            Exit::Finished => "finished",
            Exit::FinishedWithFailures => "finished_with_failures",
            Exit::NoProgress => "no_progress",
            Exit::Aborted => "aborted",
            Exit::Interrupted => "interrupted",
        },
        exit_code: match exit {
            Exit::Interrupted => i32::from(pipeline.interrupted_exit_code),
            other => other.code(),
        },
        reason,
        elapsed_secs: began.elapsed().as_secs_f64(),
        items: totals.map_or(0, |t| t.items),
        done: totals.map_or(0, |t| t.done.get()),
        failed,
        skipped: totals.map_or(0, |t| t.skipped.get()),
        remaining: totals.map_or(0, Totals::remaining),
        stages: stage_summaries,
        log_events_dropped: {
            // What is queued now gets a moment to be written, so the count is of lost events,
            // not of late ones; a reader that stopped reading cannot hold the run here.
            crate::telemetry::flush(LOG_SETTLE);
            crate::telemetry::events_not_written()
        },
        exit: Some(exit),
    }
}

/// How long the summary waits for the events queued before it to be written.
const LOG_SETTLE: Duration = Duration::from_millis(250);

/// Why a run that finished made no progress, and what to do about it: the advice depends on
/// whether the pipeline marks already the endings the batch had, and whether the marks landed.
pub(crate) fn no_progress(stages: &[StageRt], totals: &Totals) -> String {
    use crate::stage::EndingKind;
    const WHAT: &str = "no progress: every item of this batch had already failed or been skipped in an earlier run, and none got further this time; the source takes the same keys again every run, so nothing will move.";
    let marking = |kind: EndingKind| {
        stages
            .iter()
            .filter(move |s| s.marks.takes(kind))
            .map(|s| &*s.name)
    };
    let (failed, skipped) = (totals.failed.get(), totals.skipped.get());
    let unmarked = (failed > 0 && marking(EndingKind::Failed).next().is_none())
        || (skipped > 0 && marking(EndingKind::Skipped).next().is_none());
    let not_landed = totals.unmarked.get();
    if not_landed > 0 {
        format!("{WHAT} {not_landed} of its items could not be marked (`could not mark the item` above): fix the marking statement or file, and leave marked rows out of the source's query, or fix the cause and run `stagewise retry-failed`")
    } else if unmarked {
        format!("{WHAT} Mark the rows that fail or are skipped where the source reads (`persist`'s `on_failure` and `on_skip`, or a `jsonl` sink's `rejects`) and leave marked rows out of its query, or fix the cause and run `stagewise retry-failed`")
    } else {
        let mut names: Vec<&str> = marking(EndingKind::Failed)
            .chain(marking(EndingKind::Skipped))
            .collect();
        names.dedup();
        format!("{WHAT} Stage(s) `{}` mark them, but the source still takes them: make it leave marked rows out (its query, or its input file), or fix the cause and run `stagewise retry-failed`", names.join("`, `"))
    }
}

/// A figure as a whole number when it is one, else with up to 6 decimals (costs).
fn fmt_figure(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        let s = format!("{value:.6}");
        s.trim_end_matches('0').to_owned()
    }
}

/// Write the summary beside the store, mark the flight record ended, and log the summary: the
/// run's last log event.
pub(crate) fn finish(pipeline: &Pipeline, summary: &Summary, recorder: &crate::flight::Recorder) {
    let path = super::summary_path(pipeline);
    // Which process wrote it, so that `status` reports it only as that process's end.
    let mut value = serde_json::to_value(summary).expect("the summary always serializes");
    let record = recorder.snapshot();
    value["pid"] = record.pid.into();
    value["process_started_at"] = record.started_at.into();
    let json = serde_json::to_string_pretty(&value).expect("the summary always serializes");
    // Keys and reasons come from data: a C1 code or a bidirectional override in them reaches
    // whoever `cat`s the file raw unless escaped. Line by line: the only raw newlines of
    // pretty JSON are between its values.
    let json: Vec<_> = json.lines().map(crate::text::json_printable).collect();
    let json = json.join("\n");
    // A new private file, renamed into place: whatever was at the temporary name (a symlink, a
    // FIFO) is never written through or waited on.
    if let Err(e) = crate::state_file::replace(&path, ".tmp", json.as_bytes()) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the summary file");
    }
    // Ended with a summary from here on: a kill after this line is not a death without one.
    recorder.mark_ended();
    if crate::telemetry::terminal() {
        crate::telemetry::progress(None);
        crate::telemetry::block(&summary_table(summary, &path));
        return;
    }
    if crate::telemetry::json() {
        if tracing::enabled!(target: crate::telemetry::SUMMARY_TARGET, tracing::Level::INFO) {
            let mut fields = match serde_json::to_value(summary) {
                Ok(serde_json::Value::Object(fields)) => fields,
                _ => serde_json::Map::new(),
            };
            fields.insert("file".into(), path.display().to_string().into());
            crate::telemetry::json_event(true, events::SUMMARY, fields);
        }
        return;
    }
    let stages: Vec<String> = summary
        .stages
        .iter()
        .skip(1)
        .map(|s| {
            let latency = s.latency.map_or_else(String::new, |l| {
                let ms = |v: f64| text::duration(Duration::from_secs_f64(v.max(0.0) / 1000.0));
                format!(
                    " p50={} p95={} max={}",
                    ms(l.p50_ms),
                    ms(l.p95_ms),
                    ms(l.max_ms)
                )
            });
            let mut figures: String = s
                .figures
                .iter()
                .map(|(name, value)| format!(" {name}={}", fmt_figure(*value)))
                .collect();
            if let Some(lowest) = s.lowest_concurrency {
                figures.push_str(&format!(" lowest_concurrency={lowest}"));
            }
            format!(
                "{}: done={} failed={} skipped={} retries={} timeouts={} abandoned={}{latency}{figures}",
                s.name, s.done, s.failed, s.skipped, s.retries, s.timeouts, s.abandoned
            )
        })
        .collect();
    tracing::info!(
        target: crate::telemetry::SUMMARY_TARGET,
        outcome = summary.outcome,
        exit_code = summary.exit_code,
        reason = summary.reason.as_deref().unwrap_or("-"),
        items = summary.items,
        done = summary.done,
        failed = summary.failed,
        skipped = summary.skipped,
        remaining = summary.remaining,
        elapsed = %text::duration(Duration::from_secs_f64(summary.elapsed_secs)),
        stages = %stages.join(" | "),
        log_events_dropped = summary.log_events_dropped,
        file = %path.display(),
        "{}",
        events::SUMMARY
    );
}

/// The summary for a terminal: what the run came to, a row per stage, and where the summary
/// file is.
fn summary_table(summary: &Summary, path: &std::path::Path) -> Vec<String> {
    let ms = |v: f64| text::duration(Duration::from_secs_f64(v.max(0.0) / 1000.0));
    let run = summary
        .run
        .map_or_else(String::new, |r| format!("run {r} "));
    let mut out = vec![format!(
        "{run}{} (exit {}) after {}: {} items, {} done, {} failed, {} skipped, {} remaining",
        summary.outcome.replace('_', " "),
        summary.exit_code,
        text::duration(Duration::from_secs_f64(summary.elapsed_secs)),
        summary.items,
        summary.done,
        summary.failed,
        summary.skipped,
        summary.remaining,
    )];
    if let Some(reason) = &summary.reason {
        out.push(format!("reason: {reason}"));
    }
    let header = [
        "stage", "kind", "done", "failed", "skipped", "retries", "timeouts", "p50", "p95",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for s in summary.stages.iter().skip(1) {
        let (p50, p95) = s.latency.map_or(("-".to_owned(), "-".to_owned()), |l| {
            (ms(l.p50_ms), ms(l.p95_ms))
        });
        rows.push(vec![
            text::printable(&s.name).into_owned(),
            text::printable(&s.kind).into_owned(),
            s.done.to_string(),
            s.failed.to_string(),
            s.skipped.to_string(),
            s.retries.to_string(),
            s.timeouts.to_string(),
            p50,
            p95,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                // Names left, figures right.
                if c < 2 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out.push(format!("  {}", cells.join("  ").trim_end()));
    }
    for s in summary.stages.iter().skip(1) {
        let mut figures: Vec<String> = s
            .figures
            .iter()
            .map(|(name, value)| format!("{name}={}", fmt_figure(*value)))
            .collect();
        if s.abandoned > 0 {
            figures.push(format!("abandoned={}", s.abandoned));
        }
        if let Some(lowest) = s.lowest_concurrency {
            figures.push(format!("lowest_concurrency={lowest}"));
        }
        if !figures.is_empty() {
            out.push(format!(
                "  {}: {}",
                text::printable(&s.name),
                figures.join(" ")
            ));
        }
    }
    if summary.log_events_dropped > 0 {
        out.push(format!(
            "log events dropped: {}",
            summary.log_events_dropped
        ));
    }
    out.push(format!("summary: {}", path.display()));
    out
}
