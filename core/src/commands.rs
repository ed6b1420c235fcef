//! What each CLI command does, short of printing: the binary parses arguments, calls these,
//! prints, and maps the results to exit codes.

use crate::checkpoint::{StatusReport, StoreError};
use crate::flight::ProcessRecord;
use crate::spec::Pipeline;
use crate::text::printable;

/// What `status` shows.
#[derive(Debug)]
pub struct Status {
    /// The latest run that had items, if there is one.
    pub report: Option<StatusReport>,
    /// When the source was last read and had nothing new, if that was after the latest run
    /// began (RFC 3339).
    pub last_checked: Option<String>,
    /// The last process that ran the pipeline, when it ended without a summary (killed, or
    /// ended by the watchdog) and no process runs it now: what it was doing. With a
    /// PostgreSQL store, the newest runner whose lease ran out without an orderly stop and
    /// that no later runner reported yet, whether or not others run now.
    pub previous_process: Option<ProcessRecord>,
    /// Why the flight record of the last process cannot be read, if it cannot.
    pub unreadable_record: Option<String>,
    /// Whether a process runs the pipeline now (`alive`), the last one ended without a summary
    /// (`died`: killed, out of memory), or it ended with one (`exited`); `None` with no run.
    pub process: Option<&'static str>,
    /// How the last process to end with a summary ended, when that summary is of the latest
    /// run and no process runs it now: its exit code, outcome and reason.
    pub last_exit: Option<LastExit>,
    /// The circuit breakers that hold the running process's attempts back, as its flight
    /// record says (`None`: none, or no process runs).
    pub breakers: Option<String>,
}

/// How a process ended, from its summary file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastExit {
    /// Its exit code.
    pub exit_code: i64,
    /// `finished`, `aborted`, `interrupted`, …
    pub outcome: String,
    /// Why it stopped early, if it did.
    pub reason: Option<String>,
}

/// The summary file's word on how `last`, the last process (its flight record), ended, if that
/// summary is its own and about `run`. Only a regular file is read (a FIFO at the path would
/// hold `status`), at most 1 MiB of it: a summary is a few kilobytes.
fn last_exit(pipeline: &Pipeline, run: i64, last: &ProcessRecord) -> Option<LastExit> {
    let path = crate::runner::summary_path(pipeline);
    if !std::fs::symlink_metadata(&path).ok()?.is_file() {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    let summary: serde_json::Value =
        serde_json::from_reader(std::io::BufReader::new(std::io::Read::take(file, 1 << 20)))
            .ok()?;
    let own = summary["pid"].as_u64() == Some(u64::from(last.pid))
        && summary["process_started_at"].as_str() == Some(last.started_at.as_str());
    if !own || summary["run"].as_i64() != Some(run) {
        return None;
    }
    Some(LastExit {
        exit_code: summary["exit_code"].as_i64()?,
        outcome: summary["outcome"].as_str()?.to_owned(),
        reason: summary["reason"].as_str().map(str::to_owned),
    })
}

/// The latest run's status (or run `run`'s), and the previous process's record when it died.
pub fn status(pipeline: &Pipeline, limit: u64, run: Option<i64>) -> Result<Status, StoreError> {
    status_unnamed(pipeline, limit, run).map_err(|e| naming_store(pipeline, e))
}

/// `e`, naming the store when the database's own words do not: a row it cannot read (a
/// damaged or hand-edited store) says only "Invalid column type Blob at index: 2".
fn naming_store(pipeline: &Pipeline, e: StoreError) -> StoreError {
    match e {
        StoreError::Db(message) => {
            StoreError::Db(format!("{}: {message}", pipeline.checkpoint.store.shown()))
        }
        other => other,
    }
}

/// [`status`], its database errors not yet naming the store.
fn status_unnamed(pipeline: &Pipeline, limit: u64, run: Option<i64>) -> Result<Status, StoreError> {
    let store = crate::checkpoint::open_existing(&pipeline.checkpoint.store)?;
    let Some(store) = store else {
        return Ok(Status {
            report: None,
            last_checked: None,
            previous_process: None,
            unreadable_record: crate::runner::unreadable_record(pipeline),
            process: None,
            last_exit: None,
            breakers: None,
        });
    };
    let latest = store.latest_run(&pipeline.name)?;
    let asked = match run {
        Some(n) => Some(store.run_numbered(&pipeline.name, n)?.ok_or_else(|| {
            StoreError::Db(format!(
                "pipeline `{}` has no run {n} with items (`stagewise status` shows the latest)",
                printable(&pipeline.name)
            ))
        })?),
        None => latest.clone(),
    };
    let report = match &asked {
        Some(run) => Some(store.status(run, limit)?),
        None => None,
    };
    // What runs the pipeline now, and how the last process ended, is news of the latest run.
    let is_latest = asked.as_ref().map(|r| r.id) == latest.as_ref().map(|r| r.id);
    let previous_process = crate::runner::previous_process(pipeline, &*store);
    // The last process of this pipeline on this machine, as its flight record says.
    let last = crate::flight::Recorder::read(&crate::runner::flight_path(pipeline))
        .ok()
        .flatten()
        .filter(|r| r.pipeline == pipeline.name);
    let alive = store.runner_active(&pipeline.name).unwrap_or(false)
        && match &pipeline.checkpoint.store {
            // A SQLite store's lock may be another pipeline's on the same store.
            crate::spec::StoreLocation::Sqlite(_) => last.as_ref().is_some_and(|r| !r.ended),
            crate::spec::StoreLocation::Postgres(_) => true,
        };
    let process = report.as_ref().filter(|_| is_latest).map(|_| {
        if alive {
            "alive"
        } else if previous_process.is_some() {
            "died"
        } else {
            "exited"
        }
    });
    let last_exit = match (&report, process, &last) {
        (Some(r), Some("exited"), Some(last)) => last_exit(pipeline, r.run.id, last),
        _ => None,
    };
    let breakers = last
        .filter(|_| process == Some("alive"))
        .and_then(|last| last.breakers);
    Ok(Status {
        report,
        last_checked: store.last_checked(&pipeline.name)?,
        previous_process,
        unreadable_record: crate::runner::unreadable_record(pipeline),
        process,
        last_exit,
        breakers,
    })
}

/// `runs`: the pipeline's history in its checkpoint store, the last `limit` process ends first
/// (an empty history for a store not made yet).
pub fn runs(pipeline: &Pipeline, limit: u64) -> Result<crate::checkpoint::History, StoreError> {
    match crate::checkpoint::open_existing(&pipeline.checkpoint.store) {
        Ok(Some(store)) => store.history(&pipeline.name, i64::try_from(limit).unwrap_or(i64::MAX)),
        Ok(None) => Ok(crate::checkpoint::History::default()),
        Err(e) => Err(e),
    }
    .map_err(|e| naming_store(pipeline, e))
}

/// `runs` as text for a terminal: a row per process end, newest first, and the checks.
pub fn render_runs(pipeline: &Pipeline, history: &crate::checkpoint::History) -> String {
    let mut out = String::new();
    if history.ends.is_empty() {
        out.push_str(&format!(
            "pipeline {}: no run with items has ended yet\n",
            printable(&pipeline.name)
        ));
    } else {
        let header = [
            "run", "started", "ended", "outcome", "exit", "items", "done", "failed", "skipped",
            "reason",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
        for e in &history.ends {
            rows.push(vec![
                e.id.to_string(),
                printable(&e.started).into_owned(),
                printable(&e.ended).into_owned(),
                printable(&e.outcome).into_owned(),
                e.exit_code.to_string(),
                e.items.to_string(),
                e.done.to_string(),
                e.failed.to_string(),
                e.skipped.to_string(),
                e.reason
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |r| printable(r).into_owned()),
            ]);
        }
        let widths: Vec<usize> = (0..header.len() - 1)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for row in rows {
            let mut line: Vec<String> = row[..header.len() - 1]
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            line.push(row[header.len() - 1].clone());
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
    }
    if let Some(at) = &history.last_checked {
        out.push_str(&format!(
            "last checked: {} ({} check(s) found nothing new)\n",
            printable(at),
            history.checks
        ));
    }
    out
}

/// `status` as text for a terminal.
pub fn render_status(pipeline: &Pipeline, status: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(e) = &status.unreadable_record {
        let _ = writeln!(
            out,
            "the last process's flight record cannot be read, so a death it recorded cannot be reported: {}",
            printable(e)
        );
    }
    if let Some(p) = &status.previous_process {
        let _ = writeln!(
            out,
            "the previous process (pid {} on {}) ended without a summary; started {}, last seen {}, last logged {}",
            p.pid,
            printable(&p.host),
            p.started_at,
            p.last_seen_at,
            p.last_event_at.as_deref().unwrap_or("never")
        );
        if let Some(ending) = &p.ending {
            let _ = writeln!(out, "  {}", printable(ending));
        }
        let in_flight = crate::runner::describe_in_flight(p);
        if in_flight.is_empty() {
            let _ = writeln!(out, "  nothing was in flight");
        } else {
            let _ = writeln!(out, "  in flight when it ended:");
            for line in in_flight {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    let nothing_new = status
        .last_checked
        .as_ref()
        .map(|at| format!("  last checked: {at}, nothing new"));
    let Some(report) = &status.report else {
        let _ = writeln!(out, "pipeline {}: no run yet", printable(&pipeline.name));
        if let Some(line) = nothing_new {
            let _ = writeln!(out, "{line}");
        }
        return out;
    };
    let _ = writeln!(
        out,
        "pipeline {}: run {} ({}), {} items, started {}",
        printable(&pipeline.name),
        report.run.id,
        report.run.status.as_str(),
        report.run.items,
        report.run.started_at
    );
    match (status.process, &status.last_exit) {
        (Some("alive"), _) => {
            let _ = writeln!(out, "  process: alive (it runs now)");
            if let Some(open) = &status.breakers {
                let _ = writeln!(out, "  circuit breakers open: {}", printable(open));
            }
        }
        (Some("died"), _) => {
            // It may have died taking a new batch, after this run ended.
            let this_run = status
                .previous_process
                .as_ref()
                .is_some_and(|p| p.run == Some(report.run.id));
            let _ = writeln!(
                out,
                "  process: {}",
                if this_run {
                    "died without a summary (what it was doing is above); `run` resumes"
                } else {
                    "the last one died without a summary while taking a new batch (what it was doing is above); `run` takes one again"
                }
            );
        }
        (Some(_), Some(e)) => {
            let reason = e
                .reason
                .as_deref()
                .map(|r| format!(": {}", printable(r)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  process: exited {} ({}){reason}",
                e.exit_code,
                printable(&e.outcome)
            );
        }
        _ => {}
    }
    if let Some(line) = nothing_new {
        let _ = writeln!(out, "{line}");
    }
    let counts: Vec<String> = report
        .counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(out, "  {}", counts.join(", "));
    for stage in &pipeline.stages {
        if let Some(c) = report.stages.get(&stage.name) {
            let counts: Vec<String> = c.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(
                out,
                "  stage {}: {}",
                printable(&stage.name),
                counts.join(", ")
            );
        }
    }
    if !report.runners.is_empty() {
        let _ = writeln!(out, "runners:");
        for r in &report.runners {
            let _ = writeln!(
                out,
                "  {} pid {} on {}: {}, {} item(s) held, started {}, last renewal {}",
                r.id,
                r.pid,
                printable(&r.host),
                r.state,
                r.items_held,
                r.started_at,
                r.renewed_at
            );
        }
    }
    if !report.failed.is_empty() {
        let _ = writeln!(out, "failed items:");
        for f in &report.failed {
            let _ = writeln!(
                out,
                "  {} at {} after {} attempt(s): {}",
                printable(&f.key),
                printable(&f.stage),
                f.attempts,
                printable(&f.error)
            );
        }
    }
    if report.failed_more > 0 {
        let _ = writeln!(
            out,
            "  and {} more failed item(s) (`status --limit N` lists more)",
            report.failed_more
        );
    }
    if !report.skipped.is_empty() {
        let _ = writeln!(out, "skipped items:");
        for s in &report.skipped {
            let _ = writeln!(
                out,
                "  {} at {}: {}",
                printable(&s.key),
                printable(&s.stage),
                printable(&s.reason)
            );
        }
    }
    if report.skipped_more > 0 {
        let _ = writeln!(
            out,
            "  and {} more skipped item(s) (`status --limit N` lists more)",
            report.skipped_more
        );
    }
    out
}

/// `status --json`: the report with the pipeline's name, `last_checked` when the source was
/// last read and had nothing new, `previous_process` when there is one to report, and
/// `unreadable_flight_record` when the last process's record cannot be read.
pub fn status_json(pipeline: &Pipeline, status: &Status) -> serde_json::Value {
    let mut v = match &status.report {
        None => serde_json::json!({
            "pipeline": pipeline.name,
            "run": null,
            "counts": crate::checkpoint::ItemState::ALL.iter().map(|s| (s.as_str(), 0)).collect::<std::collections::BTreeMap<_, _>>(),
            "stages": {},
            "failed": [],
            "skipped": [],
        }),
        Some(r) => {
            let mut v = serde_json::to_value(r).expect("the report always serializes");
            v["pipeline"] = serde_json::Value::String(pipeline.name.clone());
            v
        }
    };
    if let (Some(process), true) = (status.process, v["run"].is_object()) {
        v["run"]["process"] = process.into();
        let e = status.last_exit.as_ref();
        v["run"]["exit_code"] = e.map(|e| e.exit_code).into();
        v["run"]["outcome"] = e.map(|e| e.outcome.clone()).into();
        v["run"]["reason"] = e.and_then(|e| e.reason.clone()).into();
        v["run"]["breakers_open"] = status.breakers.clone().into();
    }
    if let Some(at) = &status.last_checked {
        v["last_checked"] = serde_json::Value::String(at.clone());
    }
    if let Some(p) = &status.previous_process {
        v["previous_process"] = serde_json::to_value(p).expect("a record always serializes");
    }
    if let Some(e) = &status.unreadable_record {
        v["unreadable_flight_record"] = serde_json::Value::String(e.clone());
    }
    v
}
