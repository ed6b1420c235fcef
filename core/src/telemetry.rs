//! Logging: `tracing` to stderr, one write per event (the fmt layer formats each event into a
//! buffer and writes it with one `write_all` on unbuffered stderr, so a SIGKILL can cut the log
//! only between events). No queue, no background writer: nothing important lives only in memory.

use tracing_subscriber::EnvFilter;

/// Names of the events operators and tests look for. One place, so they cannot drift.
pub mod events {
    /// The periodic progress line.
    pub const HEARTBEAT: &str = "heartbeat";
    /// An attempt passed half its timeout.
    pub const SLOW_ATTEMPT: &str = "slow attempt";
    /// The end-of-run summary: the last event of every run.
    pub const SUMMARY: &str = "summary";
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

/// The default filter: `info`, except for libraries the stages use, whose own `info` events
/// (an extractor narrating its steps, say) say nothing about the run.
const DEFAULT_FILTER: &str = "info,trafilatura=warn,rs_trafilatura=warn,dom_smoothie=warn,html5ever=warn,markup5ever=warn,selectors=warn,ureq=warn,ureq_proto=warn,rustls=warn,postgres=warn,tokio_postgres=warn,libloading=warn";

/// Standard error for log events, where a failed write is not an error: with the reader gone
/// (`stagewise run 2>&1 | head`, a log collector that died) the event is lost, and the run goes
/// on and finishes as it would have. Any other outcome — a panic, an abort — would lose the run
/// for the sake of its log.
pub struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // One event is one `write_all`; a short or failed write is dropped, not retried.
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Install the global subscriber and a panic hook that reports through it. The level comes
/// from `STAGEWISE_LOG` (e.g. `debug`, `stagewise_core=debug`), default [`DEFAULT_FILTER`].
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("STAGEWISE_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Pretty => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
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
            message = %message,
            "panic (a panic inside a stage fails only its item)"
        );
    }));
}
