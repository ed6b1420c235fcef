//! What each CLI command does, short of printing: the binary parses arguments, calls these,
//! prints, and maps the results to exit codes.

use crate::checkpoint::{StatusReport, StoreError};
use crate::spec::Pipeline;

/// The latest run's status, or `None` when the pipeline has no run yet.
pub fn status(pipeline: &Pipeline) -> Result<Option<StatusReport>, StoreError> {
    let store = crate::checkpoint::open_existing(&pipeline.checkpoint.store)?;
    let Some(store) = store else { return Ok(None) };
    let Some(run) = store.latest_run(&pipeline.name)? else {
        return Ok(None);
    };
    store.status(&run).map(Some)
}

/// `status` as text for a terminal.
pub fn render_status(pipeline: &Pipeline, report: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pipeline {}: run {} ({}), {} items, started {}",
        pipeline.name,
        report.run.id,
        report.run.status.as_str(),
        report.run.items,
        report.run.started_at
    );
    let counts: Vec<String> = report
        .counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(out, "  {}", counts.join(", "));
    for stage in &pipeline.stages {
        if let Some(c) = report.stages.get(&stage.name) {
            let counts: Vec<String> = c.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "  stage {}: {}", stage.name, counts.join(", "));
        }
    }
    if !report.failed.is_empty() {
        let _ = writeln!(out, "failed items:");
        for f in &report.failed {
            let _ = writeln!(
                out,
                "  {} at {} after {} attempt(s): {}",
                f.key, f.stage, f.attempts, f.error
            );
        }
    }
    if !report.skipped.is_empty() {
        let _ = writeln!(out, "skipped items:");
        for s in &report.skipped {
            let _ = writeln!(out, "  {} at {}: {}", s.key, s.stage, s.reason);
        }
    }
    out
}

/// `status --json`: the report with the pipeline's name.
pub fn status_json(pipeline: &Pipeline, report: Option<&StatusReport>) -> serde_json::Value {
    match report {
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
    }
}
