//! Logging: `tracing` events, each formatted in the thread that emits it, then queued (see
//! [`queue`]) for one writer thread that owns standard error. Nothing that runs the pipeline
//! waits on the log: a stuck reader blocks only the writer thread, a vanished one only loses
//! lines, and both are counted (`log_events_dropped` in the summary). Each event is also handed
//! to the flight recorder as it is emitted, so the recorder is current even when stderr is not.

mod json;
mod progress;
mod queue;

use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Names of the events operators and tests look for. One place, so they cannot drift.
pub mod events {
    /// The periodic progress line.
    pub const HEARTBEAT: &str = "heartbeat";
    /// An attempt passed half its timeout.
    pub const SLOW_ATTEMPT: &str = "slow attempt";
    /// The end-of-run summary: the last event of every run.
    pub const SUMMARY: &str = "summary";
    /// The first event of a run after a process that ended without a summary: what it was
    /// doing (from the flight recorder).
    pub const PREVIOUS_PROCESS: &str = "the previous process ended without a summary";
    /// A blocking call answered after its attempt's deadline, before its item was retried,
    /// failed or interrupted: the answer is the result.
    pub const LATE_ANSWER: &str =
        "a blocking call answered after its deadline, before its item was settled; the answer is taken";
    /// A stage could not mark an item that ended failed or skipped (`on_failure`, `on_skip`,
    /// `rejects`): the item ends anyway, the failed mark noted in its error or reason.
    pub const MARK_FAILED: &str =
        "could not mark the item; it ends unmarked, and its source may take it again";
    /// `[telemetry] listen`: the address `/metrics`, `/healthz` and `/progress` are served on.
    pub const METRICS_SERVED: &str = "serving /metrics, /healthz and /progress";
    /// `[telemetry] push`: the final metrics reached the Pushgateway.
    pub const METRICS_PUSHED: &str = "final metrics pushed";
    /// `[telemetry] push`: the final metrics could not be pushed; the exit code is unchanged.
    pub const METRICS_NOT_PUSHED: &str =
        "could not push the final metrics; the exit code is unchanged";
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Whether log lines and messages are coloured: `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Color {
    /// When standard error is a terminal, `NO_COLOR` is unset or empty, and `TERM` is not
    /// `dumb`.
    #[default]
    Auto,
    /// Always (`NO_COLOR` too: the flag is the later word).
    Always,
    /// Never.
    Never,
}

/// Whether lines are coloured (see [`set_color`]).
static COLOR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Colour what this process writes to standard error from now on, as `color` asks: the level
/// of each text log line, and the `error:` or `warning:` of a message. JSON lines never are.
pub fn set_color(color: Color) {
    use std::io::IsTerminal;
    let on = match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => {
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
        }
    };
    COLOR.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// `line` (one event or message, already made safe by [`defuse`]) with its level or its
/// `error:`/`warning:` coloured, when colour is on. The escape codes are added after the line
/// was made safe: they are ours, never the data's.
fn coloured(line: &mut Vec<u8>, event: bool) {
    if !COLOR.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    const LEVELS: [(&[u8], &str); 5] = [
        (b"ERROR", "31"),
        (b" WARN", "33"),
        (b" INFO", "32"),
        (b"DEBUG", "34"),
        (b"TRACE", "35"),
    ];
    const WORDS: [(&[u8], &str); 2] = [(b"error:", "1;31"), (b"warning:", "1;33")];
    // An event starts with its timestamp, then its level right-aligned in five places; a
    // message with its word.
    let (at, marks): (usize, &[(&[u8], &str)]) = if event {
        match line.iter().position(|b| *b == b' ') {
            Some(space) => (space + 1, &LEVELS),
            None => return,
        }
    } else {
        (0, &WORDS)
    };
    let rest = &line[at..];
    let Some((mark, code)) = marks.iter().find(|(m, _)| rest.starts_with(m)) else {
        return;
    };
    let painted = [
        format!("\u{1b}[{code}m").as_bytes(),
        mark,
        b"\x1b[0m".as_slice(),
    ]
    .concat();
    line.splice(at..at + mark.len(), painted);
}

/// The default filter: `info`, except for libraries the stages use, whose own `info` events
/// (an extractor narrating its steps, say) say nothing about the run.
const DEFAULT_FILTER: &str = "info,trafilatura=warn,rs_trafilatura=warn,dom_smoothie=warn,html5ever=warn,markup5ever=warn,selectors=warn,ureq=warn,ureq_proto=warn,rustls=warn,postgres=warn,tokio_postgres=warn,libloading=warn";

/// The target of the summary event: queued as important as a warning.
pub const SUMMARY_TARGET: &str = "stagewise_core::summary";

/// The process's log queue, once [`init`] started its writer thread.
static QUEUE: OnceLock<Arc<queue::LogQueue>> = OnceLock::new();

/// Where every event is copied as it is emitted (the flight recorder), if anywhere.
type Sink = Arc<dyn Fn(&[u8]) + Send + Sync>;
static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// Copy every event from now on to `sink` (the flight recorder), or stop with `None`.
pub fn set_event_sink(sink: Option<Sink>) {
    *SINK.write().unwrap_or_else(PoisonError::into_inner) = sink;
}

/// Events not written so far: dropped (a full queue, a write to standard error that failed) or
/// still waiting for a reader that stopped reading.
pub fn events_not_written() -> u64 {
    QUEUE.get().map_or(0, |q| q.dropped() + q.pending())
}

/// Wait until the queued events are written, at most `within`; true if they all were. A reader
/// that stopped reading makes this give up, not hang.
pub fn flush(within: Duration) -> bool {
    QUEUE.get().is_none_or(|q| q.flush(within))
}

/// A line for the user on standard error (the command line's messages). Once logging is
/// installed it goes through the log queue, behind the events before it and as important as a
/// warning; before that, it is written directly. A closed stderr loses it, never more.
pub fn say(args: std::fmt::Arguments<'_>) {
    let text = args.to_string();
    let line = if json() {
        // One JSON event like the others: `error: …` an error, `warning: …` a warning.
        let (level, message) = match (text.strip_prefix("error: "), text.strip_prefix("warning: "))
        {
            (Some(m), _) => ("ERROR", m),
            (_, Some(m)) => ("WARN", m),
            _ => ("INFO", text.as_str()),
        };
        let mut line = event_line(level, message, serde_json::Map::new());
        defuse(&mut line, true);
        line
    } else {
        let mut line = crate::text::printable(&text).into_owned();
        line.push('\n');
        let mut line = line.into_bytes();
        coloured(&mut line, false);
        line
    };
    match QUEUE.get() {
        Some(q) => q.push(queue::Rank::Important, line),
        None => {
            use std::io::Write;
            let _ = std::io::stderr().write_all(&line);
        }
    }
}

/// Whether a run shows its live progress on standard error, a terminal (see
/// [`set_terminal`]).
static PROGRESS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Whether standard error is a terminal that gets text lines: the summary is a table there.
static TERMINAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// `--quiet`: warnings, errors and the summary only, unless a filter says otherwise.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Say, before [`init`] and after [`set_color`], that standard error is a terminal that gets
/// text lines (the summary is then a table), and whether a run may show its live progress
/// there (not with `--quiet`). The progress is redrawn with escape codes, so it is shown only
/// where colour is on: not with `NO_COLOR`, `--color never` or `TERM=dumb`.
pub fn set_terminal(terminal: bool, progress: bool) {
    let colour = COLOR.load(std::sync::atomic::Ordering::Relaxed);
    TERMINAL.store(terminal, std::sync::atomic::Ordering::Relaxed);
    PROGRESS.store(
        terminal && progress && colour,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// `--quiet` (before [`filter`]): the default filter lets warnings, errors and the summary
/// through, nothing else.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the run shows its live progress ([`progress`]) instead of heartbeat lines.
pub fn live_progress() -> bool {
    PROGRESS.load(std::sync::atomic::Ordering::Relaxed) && QUEUE.get().is_some()
}

/// Whether the summary is a table for a terminal ([`block`]).
pub fn terminal() -> bool {
    TERMINAL.load(std::sync::atomic::Ordering::Relaxed) && !json()
}

/// Show `lines` as the run's live progress, in place of what was shown (see
/// [`live_progress`]); `None` clears it for good, before the summary.
pub fn progress(lines: Option<Vec<String>>) {
    if let Some(q) = QUEUE.get() {
        q.progress(lines);
    }
}

/// Lines for the user (a table), as one block behind the events before it, as important as a
/// warning; each line made printable.
pub fn block(lines: &[String]) {
    let mut text = String::new();
    for line in lines {
        text.push_str(&crate::text::printable(line));
        text.push('\n');
    }
    match QUEUE.get() {
        Some(q) => q.push(queue::Rank::Important, text.into_bytes()),
        None => {
            use std::io::Write;
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
}

/// Whether log events are JSON lines (`--log-format json`).
pub fn json() -> bool {
    JSON.load(std::sync::atomic::Ordering::Relaxed)
}

/// Make the command's messages ([`say`]) JSON events from now on, before logging is installed
/// (a filter that is not one is said as JSON too); [`init`] sets it as well.
pub fn set_json(json: bool) {
    JSON.store(json, std::sync::atomic::Ordering::Relaxed);
}

/// One JSON event line: `timestamp`, `level` and `message` first, as the formatter writes
/// them, then `fields`.
fn event_line(
    level: &str,
    message: &str,
    fields: serde_json::Map<String, serde_json::Value>,
) -> Vec<u8> {
    let head = serde_json::json!({
        "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
    });
    let mut line = head.to_string();
    line.pop();
    line.push_str(&format!(
        ",\"level\":{},\"message\":{}",
        serde_json::Value::from(level),
        serde_json::Value::from(message)
    ));
    for (key, value) in fields {
        if matches!(key.as_str(), "timestamp" | "level" | "message") {
            continue;
        }
        line.push_str(&format!(",{}:{value}", serde_json::Value::from(key)));
    }
    line.push_str("}\n");
    line.into_bytes()
}

/// Log one event whose `fields` are typed (numbers as numbers, lists and objects nested), as a
/// JSON line shaped as the others (`timestamp`, `level`, `message`, then the fields), as
/// important as a warning if `important`. For JSON logs only ([`json`]); the caller checks that
/// its level is enabled (`tracing::enabled!`).
pub fn json_event(
    important: bool,
    message: &str,
    fields: serde_json::Map<String, serde_json::Value>,
) {
    let line = event_line("INFO", message, fields);
    let writer = EventWriter {
        rank: if important {
            queue::Rank::Important
        } else {
            queue::Rank::Info
        },
        line,
    };
    drop(writer);
}

/// Whether events are JSON lines (see [`defuse`]).
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Make one formatted event safe to print: one line, and nothing in it that steers a terminal
/// (see [`crate::text::steers_the_terminal`]) — keys, errors and titles come from untrusted
/// data. In a text line such characters are escaped as Rust does (`\u{1b}`, `\n`); in a JSON
/// line, whose encoder already escapes C0, as JSON does (`\u009b`). Tabs and the final newline
/// stay.
fn defuse(line: &mut Vec<u8>, json: bool) {
    // Most lines are plain ASCII: nothing to do. (Every character that steers a terminal is
    // below 0x20, 0x7f, or starts with one of these bytes in UTF-8.)
    let suspect = |b: &u8| (*b < 0x20 && *b != b'\t') || matches!(*b, 0x7f | 0xc2 | 0xd8 | 0xe2);
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    if !body.iter().any(suspect) {
        return;
    }
    let text = String::from_utf8_lossy(line).into_owned();
    let (body, newline) = match text.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (text.as_str(), ""),
    };
    let safe = if json {
        crate::text::json_printable(body).into_owned()
    } else {
        body.split('\t')
            .map(crate::text::printable)
            .collect::<Vec<_>>()
            .join("\t")
    };
    *line = format!("{safe}{newline}").into_bytes();
}

/// Hands each formatted event to the queue (and the recorder) as one line.
struct Queued;

/// One event being formatted; queued whole when the formatter is done with it.
pub struct EventWriter {
    rank: queue::Rank,
    line: Vec<u8>,
}

impl std::io::Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let json = JSON.load(std::sync::atomic::Ordering::Relaxed);
        defuse(&mut self.line, json);
        let sink = SINK.read().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(sink) = sink {
            sink(&self.line);
        }
        if !json {
            coloured(&mut self.line, true);
        }
        match QUEUE.get() {
            Some(q) => q.push(self.rank, std::mem::take(&mut self.line)),
            None => {
                use std::io::Write;
                let _ = std::io::stderr().write_all(&self.line);
            }
        }
    }
}

impl<'a> MakeWriter<'a> for Queued {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            rank: queue::Rank::Info,
            line: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> EventWriter {
        let rank = if *meta.level() <= tracing::Level::WARN || meta.target() == SUMMARY_TARGET {
            queue::Rank::Important
        } else if *meta.level() == tracing::Level::INFO {
            queue::Rank::Info
        } else {
            queue::Rank::Detail
        };
        EventWriter {
            rank,
            line: Vec::with_capacity(256),
        }
    }
}

/// Start the writer thread that owns standard error (once per process). Without it (no thread
/// could be started), events are written by the threads that emit them, as before.
fn start_queue() {
    if QUEUE.get().is_some() {
        return;
    }
    let q = Arc::new(queue::LogQueue::new());
    let writer = q.clone();
    let live = PROGRESS.load(std::sync::atomic::Ordering::Relaxed);
    let started = std::thread::Builder::new()
        .name("stagewise-log".into())
        .spawn(move || {
            let mut screen: Box<dyn queue::Screen> = if live {
                Box::new(progress::Bars::new())
            } else {
                Box::new(queue::Plain)
            };
            writer.drain_forever(&mut std::io::stderr().lock(), &mut *screen)
        });
    if started.is_ok() {
        let _ = QUEUE.set(q);
    }
}

/// The log filter: `STAGEWISE_LOG` (e.g. `debug`, `stagewise_core=debug,info`), else
/// `RUST_LOG`, else [`DEFAULT_FILTER`] (`warn` with `--quiet`); an empty variable is unset. One that is not a filter is
/// an error, naming it.
pub fn filter() -> Result<EnvFilter, String> {
    for var in ["STAGEWISE_LOG", "RUST_LOG"] {
        let value = match std::env::var(var) {
            Ok(v) if v.trim().is_empty() => continue,
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => continue,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(format!("`{var}` is not valid UTF-8"))
            }
        };
        let value = value.trim();
        let bad = |why: String| {
            format!(
                "`{var}` is not a log filter ({}: {why}): write a level (`{var}=debug`) or targets with levels (`{var}=info,stagewise_core=debug`)",
                crate::text::printable(value)
            )
        };
        // A word alone must be a level: `warning` or `debgu` would read as a target's name and
        // turn every other line off, the errors and the summary included.
        for directive in value.split(',').map(str::trim) {
            if !directive.is_empty()
                && !directive.contains('=')
                && !directive.contains('[')
                && directive
                    .parse::<tracing_subscriber::filter::LevelFilter>()
                    .is_err()
            {
                return Err(bad(format!(
                    "`{directive}` is not a level: trace, debug, info, warn, error or off"
                )));
            }
        }
        let filter = EnvFilter::builder()
            .parse(value)
            .map_err(|e| bad(e.to_string()))?;
        return Ok(with_summary(filter));
    }
    if QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(with_summary(EnvFilter::new("warn")));
    }
    Ok(with_summary(EnvFilter::new(DEFAULT_FILTER)))
}

/// `filter`, letting the summary through whatever it says (a run always ends with one), and
/// never the HTTP client's protocol layer, whatever it says: its trace lines dump the bytes
/// sent, an API key's header among them.
fn with_summary(filter: EnvFilter) -> EnvFilter {
    [
        format!("{SUMMARY_TARGET}=info"),
        "ureq_proto=off".to_owned(),
    ]
    .iter()
    .filter_map(|d| d.parse().ok())
    .fold(filter, EnvFilter::add_directive)
}

/// Install the global subscriber and a panic hook that reports through it, logging `format`
/// lines through `filter` (see [`filter`]). Colour is set apart ([`set_color`]).
pub fn init(format: LogFormat, filter: EnvFilter) {
    start_queue();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Queued)
        .with_target(false);
    // No colours from the formatter: an event is escaped whole (see [`defuse`]), so a colour's
    // escape code would be shown as text; the level is coloured after ([`coloured`]).
    JSON.store(
        format == LogFormat::Json,
        std::sync::atomic::Ordering::Relaxed,
    );
    let _ = match format {
        LogFormat::Pretty => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::JsonLine)
            .try_init(),
    };
    std::panic::set_hook(Box::new(|info| {
        let message = crate::text::panic_message(info.payload());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            location = %location,
            error = %message,
            "panic"
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::defuse;

    fn defused(line: &str, json: bool) -> String {
        let mut bytes = line.as_bytes().to_vec();
        defuse(&mut bytes, json);
        String::from_utf8(bytes).expect("UTF-8")
    }

    #[test]
    fn an_event_is_one_line_with_nothing_that_steers_a_terminal() {
        assert_eq!(
            defused("INFO plain key=a\tb\n", false),
            "INFO plain key=a\tb\n"
        );
        assert_eq!(
            defused("WARN item failed key=nl\nFAKE LINE esc\u{1b}[31m\n", false),
            "WARN item failed key=nl\\nFAKE LINE esc\\u{1b}[31m\n"
        );
        assert_eq!(
            defused(
                "key=c1\u{9b}31m bidi\u{202e}x cr\r bel\u{7} del\u{7f} é\n",
                false
            ),
            "key=c1\\u{9b}31m bidi\\u{202e}x cr\\r bel\\u{7} del\\u{7f} é\n"
        );
        // JSON: the encoder escaped C0 already; what it lets through is escaped as JSON does.
        let json = defused("{\"key\":\"c1\u{9b}x\u{202e}\\u001b\"}\n", true);
        assert_eq!(json, "{\"key\":\"c1\\u009bx\\u202e\\u001b\"}\n");
        let parsed: serde_json::Value = serde_json::from_str(json.trim()).expect("still JSON");
        assert_eq!(parsed["key"], "c1\u{9b}x\u{202e}\u{1b}");
    }
}
