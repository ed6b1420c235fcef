//! `[telemetry]`: the run as Prometheus sees it. [`Exposed`] is what the run shows: its stages'
//! and items' counters (the heartbeat's and the summary's own, read at each request), whether
//! the runtime answers, and its end. [`server`] serves it from a plain thread beside the
//! runtime (so that a frozen runtime still gets its 503); [`push`] sends the final metrics to a
//! Pushgateway as the run ends.

mod families;
mod push;
mod server;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::control::Control;
use super::telemetry::heartbeat_fields;
use super::{RunError, Shared, Summary};
use crate::spec::Pipeline;
use crate::telemetry::events;
use crate::text;

pub(crate) use server::Server;

/// The longest the runtime may go without answering before `/healthz` says 503 (or
/// `[pipeline] watchdog`, if shorter: the watchdog ends the process then).
const STALLED_AFTER: Duration = Duration::from_secs(2);

/// How the run ended, once it has.
pub(crate) struct Ended {
    pub exit_code: i32,
    pub elapsed_secs: f64,
}

/// What the run shows on `/metrics`, `/healthz` and `/progress`, and pushes at its end. Filled in
/// as the run gets going: its control (the runtime's sign of life), then its items.
pub(crate) struct Exposed {
    /// The runtime is stalled once it has not answered for this long.
    stalled_after: Duration,
    control: OnceLock<Arc<Control>>,
    /// The run's shared state once it has a batch, and when this process began it.
    run: Mutex<Option<(Arc<Shared>, Instant)>>,
    ended: OnceLock<Ended>,
}

impl Exposed {
    fn new(pipeline: &Pipeline) -> Self {
        Exposed {
            stalled_after: STALLED_AFTER.min(pipeline.watchdog),
            control: OnceLock::new(),
            run: Mutex::new(None),
            ended: OnceLock::new(),
        }
    }

    /// The run's control: from now on `/healthz` follows the runtime's sign of life.
    pub(crate) fn controlled_by(&self, control: &Arc<Control>) {
        let _ = self.control.set(control.clone());
    }

    /// The run has its items: from now on they are counted.
    pub(crate) fn running(&self, shared: &Arc<Shared>, began: Instant) {
        *self.lock_run() = Some((shared.clone(), began));
    }

    fn lock_run(&self) -> std::sync::MutexGuard<'_, Option<(Arc<Shared>, Instant)>> {
        self.run
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn shared(&self) -> Option<(Arc<Shared>, Instant)> {
        self.lock_run().clone()
    }

    /// `/metrics`: every family, in the Prometheus text format.
    pub(crate) fn metrics_text(&self) -> String {
        let run = self.shared();
        let families = families::gather(run.as_ref().map(|(s, _)| &**s), self.ended.get());
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# the metrics could not be written: {e}\n"))
    }

    /// `/progress`: the heartbeat's figures as JSON (zeros and nulls before the run has items).
    pub(crate) fn progress_json(&self) -> String {
        let fields = match self.shared() {
            Some((shared, began)) => {
                let mut fields = heartbeat_fields(&shared, began);
                fields.insert("run".into(), shared.run.into());
                fields.insert("items".into(), shared.totals.items.into());
                serde_json::Value::Object(fields)
            }
            None => serde_json::json!({
                "run": null,
                "items": 0,
                "done": 0,
                "failed": 0,
                "skipped": 0,
                "remaining": null,
                "in_flight": 0,
                "items_per_sec": 0.0,
                "eta_secs": null,
                "stages": [],
            }),
        };
        let mut fields = fields;
        fields["ended"] = self.ended.get().is_some().into();
        fields.to_string()
    }

    /// `/healthz`: the status code and a line saying why.
    pub(crate) fn health(&self) -> (u16, String) {
        if self.ended.get().is_some() {
            return (200, "ended\n".to_owned());
        }
        let Some(control) = self.control.get() else {
            return (200, "starting\n".to_owned());
        };
        let silent = control.silent_for();
        if silent > self.stalled_after {
            (
                503,
                format!(
                    "stalled: the runtime has not answered for {}\n",
                    text::duration(silent)
                ),
            )
        } else {
            (200, "ok\n".to_owned())
        }
    }

    /// The run ended as `summary` says: the final values are those from now on; pushed, if
    /// `[telemetry] push` says where, within `push_timeout` and the time the watchdog leaves a
    /// stopping run (so that a push never turns an exit into the watchdog's exit 3). Blocks
    /// the calling thread for the push: call it off the runtime's worker threads.
    pub(crate) fn end(&self, pipeline: &Pipeline, summary: &Summary, control: &Control) {
        let _ = self.ended.set(Ended {
            exit_code: summary.exit_code,
            elapsed_secs: summary.elapsed_secs,
        });
        let Some(url) = &pipeline.telemetry.push else {
            return;
        };
        let shown = text::redact_url(url);
        let mut budget = pipeline.telemetry.push_timeout;
        if let Some(since) = control.stop_requested() {
            let left = control
                .grace()
                .saturating_add(super::watchdog::MARGIN)
                .saturating_sub(since)
                .saturating_sub(PUSH_SPARE);
            budget = budget.min(left);
        }
        if budget.is_zero() {
            tracing::warn!(
                push = %shown,
                reason = "the stop's `shutdown_grace` has run out",
                "{}",
                events::METRICS_NOT_PUSHED
            );
            return;
        }
        let body = self.metrics_text();
        match push::push(url, &pipeline.name, body, budget) {
            Ok(()) => tracing::info!(push = %shown, "{}", events::METRICS_PUSHED),
            Err(e) => tracing::warn!(
                push = %shown,
                error = %e,
                timeout_secs = text::secs(budget),
                "{}",
                events::METRICS_NOT_PUSHED
            ),
        }
    }
}

/// What a stopping run keeps for itself after the push, before the watchdog's deadline: the
/// summary, the checkpoint's last words.
const PUSH_SPARE: Duration = Duration::from_millis(500);

/// Start what `[telemetry]` asks for: the state the run fills in and, with `listen`, its server
/// (bound now: an address that cannot be bound stops the run before it starts).
pub(crate) fn start(pipeline: &Pipeline) -> Result<(Arc<Exposed>, Option<Server>), RunError> {
    let exposed = Arc::new(Exposed::new(pipeline));
    let Some(listen) = pipeline.telemetry.listen else {
        return Ok((exposed, None));
    };
    let server = Server::start(listen, exposed.clone())
        .map_err(|e| RunError::Telemetry { listen, error: e })?;
    tracing::info!(
        listen = %server.address(),
        "{}",
        events::METRICS_SERVED
    );
    Ok((exposed, Some(server)))
}
