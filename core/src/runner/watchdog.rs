//! The watchdog: a plain OS thread beside the runtime, so that nothing the runtime's threads are
//! stuck on — a stage blocking them, a store that does not answer, a log pipe nobody reads — can
//! keep the process from hearing a signal or from ending.
//!
//! It receives SIGTERM, SIGINT, SIGHUP (stop requests) and SIGUSR1, SIGUSR2 (status dumps) and
//! hands them to [`Control`], which needs no runtime thread to act on them; it asks for the stop
//! at `max_run_time` too. Then it ends the process, exit 3, in two cases:
//! - a stop was asked for and the run has not finished draining `shutdown_grace` +
//!   [`MARGIN`] later;
//! - the runtime has not answered for `[pipeline] watchdog` (a task ticks [`Control::alive`]
//!   every [`TICK`]).
//!
//! Before it exits it writes what was in flight to the flight recorder and to the log (through
//! the log queue, which it waits for only briefly). The items it leaves behind were in flight in
//! the checkpoint: the next run resumes them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};

use super::control::{Control, Interrupt};
use crate::flight::Recorder;
use crate::text;

/// How long after `shutdown_grace` a draining run may take before the watchdog ends it.
pub(crate) const MARGIN: Duration = Duration::from_secs(2);
/// How often the runtime shows it is alive.
pub(crate) const TICK: Duration = Duration::from_millis(250);
/// How often the watchdog looks at signals and the clocks.
const POLL: Duration = Duration::from_millis(50);
/// A gap between two looks longer than this means the process as a whole was paused.
const PAUSED: Duration = Duration::from_millis(250);
/// How long the last words may take to reach stderr before the process exits anyway.
const LAST_WORDS: Duration = Duration::from_millis(500);
/// Most keys named per stage in the watchdog's message.
const NAMED: usize = 10;

/// The signals the watchdog receives.
const SIGNALS: [i32; 5] = [SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2];

/// Signals taken over before the run's watchdog exists (see [`hold_signals`]).
static EARLY: std::sync::Mutex<Option<signal_hook::iterator::Signals>> =
    std::sync::Mutex::new(None);

/// The first stop signal that came before the run's watchdog existed, for it to act on.
static EARLY_STOP: std::sync::Mutex<Option<&'static str>> = std::sync::Mutex::new(None);

fn stop_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "SIGHUP",
    }
}

/// Take over the watchdog's signals now, at the start of the process, until the run's watchdog
/// exists: a stop signal that arrives while the pipeline is loaded or the store opened is kept
/// for the run (which then stops before taking a batch) instead of ending the process without
/// a word, and a second one ends the process at once (exit 75: nothing was run). A status
/// request before the run has nothing to show, and says so.
pub fn hold_signals() {
    let Ok(signals) = signal_hook::iterator::Signals::new(SIGNALS) else {
        return;
    };
    *EARLY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(signals);
    let _ = std::thread::Builder::new()
        .name("stagewise-signals".into())
        .spawn(|| loop {
            {
                let mut held = EARLY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                // The run's watchdog took them over.
                let Some(signals) = held.as_mut() else { return };
                for signal in signals.pending() {
                    if signal == SIGUSR1 || signal == SIGUSR2 {
                        tracing::info!("status requested by signal before the run started: nothing runs yet");
                        continue;
                    }
                    let name = stop_name(signal);
                    let mut first = EARLY_STOP
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if first.is_none() {
                        *first = Some(name);
                        tracing::warn!(
                            signal = name,
                            "stop requested while the run starts: it stops before taking a batch; another stop signal ends it now"
                        );
                    } else {
                        tracing::warn!(
                            signal = name,
                            "second stop request before the run started: exiting now; nothing was run"
                        );
                        crate::telemetry::flush(LAST_WORDS);
                        std::process::exit(75);
                    }
                }
            }
            std::thread::sleep(POLL);
        });
}

/// Whether a stop signal came while the run was starting (see [`hold_signals`]): what is still
/// to do before the batch (the checks of the pipeline) is cut short.
pub fn stop_requested_early() -> bool {
    EARLY_STOP
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_some()
}

/// The running watchdog; dropping it stops the thread (and the signal handling with it).
pub(crate) struct Watchdog {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            // Wake it from its pause, so that the run's end does not wait for it.
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Start the watchdog for a run controlled by `control`; it also asks the run to stop at
/// `max_run_time`, a clock a frozen runtime cannot hold back.
pub(crate) fn start(
    control: Arc<Control>,
    liveness: Duration,
    max_run_time: Option<Duration>,
    recorder: Arc<Recorder>,
) -> std::io::Result<Watchdog> {
    let early = EARLY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let mut signals = match early {
        Some(signals) => signals,
        None => signal_hook::iterator::Signals::new(SIGNALS)?,
    };
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let thread = std::thread::Builder::new()
        .name("stagewise-watchdog".into())
        .spawn(move || {
            control.alive();
            let early = EARLY_STOP
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(name) = early {
                control.request_stop(Interrupt::Signal(name));
            }
            let began = Instant::now();
            let mut last_look = began;
            // Time the whole process spent paused: not held against a drain.
            let mut paused = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                // A look far later than planned means the whole process was paused (SIGSTOP, a
                // suspended VM, heavy swapping), not the runtime alone: it gets a fresh window.
                let gap = last_look.elapsed();
                if gap > PAUSED {
                    control.alive();
                    if control.stop_requested().is_some() {
                        paused += gap.saturating_sub(POLL);
                    }
                }
                last_look = Instant::now();
                for signal in signals.pending() {
                    if signal == SIGUSR1 || signal == SIGUSR2 {
                        control.dump.notify_one();
                        continue;
                    }
                    control.request_stop(Interrupt::Signal(stop_name(signal)));
                }
                if max_run_time.is_some_and(|limit| began.elapsed() >= limit)
                    && control.stop_requested().is_none()
                {
                    control.request_stop(Interrupt::MaxRunTime);
                }
                if let Some(since) = control.stop_requested() {
                    if since.saturating_sub(paused) > control.grace().saturating_add(MARGIN) {
                        let waiting = control
                            .waits_for()
                            .map(|w| format!(", waiting for {w}"))
                            .unwrap_or_default();
                        end(
                            &recorder,
                            format!(
                                "the run did not stop within `shutdown_grace` ({}) and {} after it was asked to{waiting}",
                                text::duration(control.grace()),
                                text::duration(MARGIN)
                            ),
                        );
                    }
                } else if control.silent_for() > liveness {
                    end(
                        &recorder,
                        format!(
                            "the runtime has not answered for {} (`[pipeline] watchdog` = {}): a stage is blocking its threads",
                            text::duration(control.silent_for()),
                            text::duration(liveness)
                        ),
                    );
                }
                std::thread::park_timeout(POLL);
            }
            signals.handle().close();
        })?;
    Ok(Watchdog {
        done,
        thread: Some(thread),
    })
}

/// Say why and what was in flight, in the recorder and the log, and exit 3.
fn end(recorder: &Recorder, why: String) -> ! {
    // The process is alive until it exits: the attempts' ages are counted to now, not to the
    // runtime's last tick.
    recorder.touch();
    let record = recorder.snapshot();
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    for a in &record.in_flight {
        let named = format!(
            "`{}` ({})",
            text::printable(&a.key),
            text::duration(Duration::from_secs_f64(a.age_secs.max(0.0)))
        );
        match stages.iter_mut().find(|(s, _)| *s == a.stage) {
            Some((_, keys)) => keys.push(named),
            None => stages.push((a.stage.clone(), vec![named])),
        }
    }
    let in_flight = if stages.is_empty() {
        "nothing".to_owned()
    } else {
        stages
            .iter()
            .map(|(stage, keys)| {
                let mut listed = keys.iter().take(NAMED).cloned().collect::<Vec<_>>();
                if keys.len() > NAMED {
                    listed.push(format!("and {} more", keys.len() - NAMED));
                }
                format!(
                    "stage `{}`: {} {}attempt(s): {}",
                    text::printable(stage),
                    keys.len(),
                    if record.in_flight_more > 0 {
                        "recorded "
                    } else {
                        ""
                    },
                    listed.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let more = if record.in_flight_more > 0 {
        format!(" (and {} more not recorded)", record.in_flight_more)
    } else {
        String::new()
    };
    let message = format!(
        "watchdog: {why}; in flight: {in_flight}{more}; exiting with 3 — the next run resumes these items"
    );
    recorder.set_ending(&message);
    tracing::error!("{message}");
    crate::telemetry::flush(LAST_WORDS);
    std::process::exit(3);
}
