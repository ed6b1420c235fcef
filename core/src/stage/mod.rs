//! Everything a stage author uses, from one path: the stage contract (what a stage is handed,
//! what it may answer, and what each answer means for the item and the run), [`Record`]s, the
//! [`StageKind`] a crate registers, and the services a stage is lent when it is built
//! ([`Meter`], [`ResponseCache`]).
//!
//! ```
//! use stagewise_core::stage::{BlockingStage, Context, Outcome, Record, StageError};
//! ```
//!
//! A pipeline is a list of stages. The first is a [`Source`]: it yields the batch once per run.
//! Every later stage is either an [`AsyncStage`] (runs on the async runtime; must not block) or a
//! [`BlockingStage`] (runs on the stage's own bounded pool of `concurrency` threads). The last stage
//! may be a sink; a sink is an ordinary stage whose output record is not used further.
//!
//! # One attempt
//!
//! The runner calls a stage once per attempt, wrapped in the policies in this order:
//! retry → lane ([`Lane`]) → concurrency → circuit breaker → adaptive concurrency → rate limit →
//! timeout (per attempt) → call (see `docs/running.md`, "Policies"). Between attempts an item holds no
//! place: its backoff holds back no other item. Each call gets a [`Context`]
//! with the item key, the attempt number (1-based), the attempt's deadline and a cancellation
//! flag.
//!
//! The answer decides what happens to the item:
//!
//! | answer | item | run |
//! |---|---|---|
//! | `Ok(Outcome::Continue(record))` | goes to the next stage with `record` (checkpointed) | goes on |
//! | `Ok(Outcome::Skip { reason })` | ends as `skipped` with the reason | goes on |
//! | `Err` [`ErrorClass::Transient`] | retried after a backoff while attempts remain, then `failed` | goes on |
//! | `Err` [`ErrorClass::Permanent`] | `failed` at once, never retried | goes on unless `max_failures` is crossed |
//! | `Err` [`ErrorClass::Fatal`] | back to `pending`, no attempt used | stops: checkpoint saved, exit 3 |
//! | the attempt times out | like a transient error | goes on |
//! | the stage panics | `failed` with the panic message | goes on |
//!
//! A [`StageError::retry_after`] hint replaces the computed backoff for the next attempt.
//!
//! # Cancellation and deadlines
//!
//! An async stage is cancelled by dropping its future: at the deadline, or when the run is shut
//! down. A blocking stage cannot be dropped, so it must honour its deadline itself: give every
//! blocking operation a timeout no later than [`Context::deadline`], and poll
//! [`Context::is_cancelled`] between steps. A blocking call that ignores both is *abandoned* when
//! its attempt times out: the item moves on, but the pool thread stays taken until the call
//! really returns, so a hanging stage cannot multiply threads. When a stage has `max_abandoned`
//! such calls outstanding it is *wedged* and the run stops with exit 3, naming the stuck items.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use async_trait::async_trait;

mod keys;
mod kind;
mod probe;
mod record;
mod services;

pub use keys::{DurationText, SizeText};
pub use kind::{BuildContext, KindDefaults, Role, StageKind};
pub use probe::{Fault, FieldsOut, Finding, Probe, ProbeContext, Read, Reading, Shared};

pub use record::{Fields, Record};
pub use services::{CacheError, Meter, ResponseCache, SharedCache};

/// What a stage answers for one item.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The item goes on to the next stage with this record.
    Continue(Record),
    /// The item is filtered out: it ends as `skipped` with this reason.
    Skip {
        /// Why the item was skipped, for `status` and the logs.
        reason: String,
    },
}

/// How the runner treats a stage error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Worth retrying: a timeout, a dropped connection, a 503.
    Transient,
    /// Retrying cannot help: bad input, a 404, a constraint violation. The item fails.
    Permanent,
    /// Nothing further can succeed: a wrong credential, a missing table. The run stops.
    Fatal,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Fatal => "fatal",
        })
    }
}

/// What failed, beside how the runner treats it ([`ErrorClass`]): the kinds `retry.on` and
/// `retry.never` name. No error has two: a 429 is [`ErrorKind::Http429`], never
/// [`ErrorKind::Http4xx`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ErrorKind {
    /// The attempt ran out of time: the stage's `timeout`, or a time limit of its own (a read
    /// or statement timeout, a connect timeout).
    Timeout,
    /// No connection could be made: refused, unreachable, a name that does not resolve.
    Connect,
    /// A connection that broke or misbehaved during the exchange: reset, closed early, a
    /// response that is not valid HTTP.
    Network,
    /// An HTTP 429 (too many requests).
    Http429,
    /// An HTTP 5xx.
    Http5xx,
    /// An HTTP 4xx other than 429.
    Http4xx,
    /// An answer that is not what was asked for: not JSON, off the schema, cut short.
    InvalidOutput,
    /// The item's own data: a field missing or of the wrong type, a page that is not an
    /// article, a value the database refuses.
    InvalidInput,
    /// A database's own error: SQL, a lock or serialization failure, a server shutting down,
    /// a login refused.
    Database,
    /// The stage panicked.
    Panic,
    /// Anything else (a plugin's errors).
    #[default]
    Other,
}

impl ErrorKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Timeout,
        ErrorKind::Connect,
        ErrorKind::Network,
        ErrorKind::Http429,
        ErrorKind::Http5xx,
        ErrorKind::Http4xx,
        ErrorKind::InvalidOutput,
        ErrorKind::InvalidInput,
        ErrorKind::Database,
        ErrorKind::Panic,
        ErrorKind::Other,
    ];

    /// The name `pipeline.toml` gives it: `timeout`, `http_429`, …
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::Network => "network",
            ErrorKind::Http429 => "http_429",
            ErrorKind::Http5xx => "http_5xx",
            ErrorKind::Http4xx => "http_4xx",
            ErrorKind::InvalidOutput => "invalid_output",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Database => "database",
            ErrorKind::Panic => "panic",
            ErrorKind::Other => "other",
        }
    }

    /// The kind of an HTTP status that is an error: 429, 5xx, other 4xx (`None` otherwise).
    pub fn of_status(status: u16) -> Option<ErrorKind> {
        match status {
            429 => Some(ErrorKind::Http429),
            400..=499 => Some(ErrorKind::Http4xx),
            500..=599 => Some(ErrorKind::Http5xx),
            _ => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for ErrorKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for ErrorKind {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ErrorKind".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        schemars::json_schema!({ "type": "string", "enum": names })
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ErrorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "`{s}` is not an error kind: use one of {}",
                    names.join(", ")
                )
            })
    }
}

/// A classified stage error. The stage says *what kind* of failure this is; backoff, jitter,
/// caps and attempt counting are the runner's.
#[derive(Debug, Clone, PartialEq)]
pub struct StageError {
    /// How the runner treats it.
    pub class: ErrorClass,
    /// What failed (what `retry.on` and `retry.never` match).
    pub kind: ErrorKind,
    /// What went wrong, lowercase, without a trailing period.
    pub message: String,
    /// Wait at least this long before the next attempt (e.g. from a `Retry-After` header).
    pub retry_after: Option<Duration>,
}

impl StageError {
    /// An error worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, message)
    }

    /// An error that fails the item without retrying.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, message)
    }

    /// An error that stops the whole run.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Fatal, message)
    }

    fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            kind: ErrorKind::Other,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Say what failed (see [`ErrorKind`]).
    #[must_use]
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// Ask the runner to wait `delay` before the next attempt instead of its own backoff.
    #[must_use]
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.class, self.message)
    }
}

impl std::error::Error for StageError {}

/// A flag the runner raises when an attempt should stop: its deadline passed, or the run is
/// shutting down. Blocking stages poll it; cloning shares the flag.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// A new, lowered flag.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raise the flag.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the flag was raised.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What one attempt of one stage on one item is handed.
#[derive(Debug, Clone)]
pub struct Context {
    key: Arc<str>,
    stage: Arc<str>,
    attempt: u32,
    deadline: Instant,
    cancel: CancelFlag,
}

impl Context {
    /// A context for one attempt. The runner makes these; tests of stages may too.
    pub fn new(
        key: impl Into<Arc<str>>,
        stage: impl Into<Arc<str>>,
        attempt: u32,
        deadline: Instant,
        cancel: CancelFlag,
    ) -> Self {
        Self {
            key: key.into(),
            stage: stage.into(),
            attempt,
            deadline,
            cancel,
        }
    }

    /// The item's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The name of the stage, as in `pipeline.toml`.
    pub fn stage(&self) -> &str {
        &self.stage
    }

    /// The attempt number, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When this attempt times out. Blocking work must not outlive it.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Whether the attempt should stop now: cancelled by the runner, or past its deadline.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled() || Instant::now() >= self.deadline
    }

    /// The attempt's cancellation flag, to hand to code that polls it.
    pub fn cancel_flag(&self) -> &CancelFlag {
        &self.cancel
    }
}

/// A stage that runs on the async runtime. It must never block the thread: blocking work
/// belongs in a [`BlockingStage`].
///
/// # Cancel safety
///
/// The future is dropped at the attempt's deadline and on shutdown; `process` must leave no
/// half-done side effect that a later attempt would trip over.
#[async_trait]
pub trait AsyncStage: Send + Sync + 'static {
    /// Process one item.
    async fn process(&self, record: Record, cx: &Context) -> Result<Outcome, StageError>;

    /// The item's lane, if the stage has lanes (see [`Lane`]); none by default.
    fn lane(&self, record: &Record) -> Option<Lane> {
        let _ = record;
        None
    }
}

/// A stage whose work blocks: file and database I/O, CPU-bound parsing, synchronous HTTP.
/// It runs on the stage's bounded pool of `concurrency` threads and must honour
/// [`Context::deadline`] and [`Context::is_cancelled`] (see the module docs).
pub trait BlockingStage: Send + Sync + 'static {
    /// Process one item.
    fn process(&self, record: Record, cx: &Context) -> Result<Outcome, StageError>;

    /// The item's lane, if the stage has lanes (see [`Lane`]); none by default. Called on the
    /// runtime before each attempt: it must be quick and must not block.
    fn lane(&self, record: &Record) -> Option<Lane> {
        let _ = record;
        None
    }

    /// Which endings this stage marks (see [`BlockingStage::mark`]); none by default.
    fn marks(&self) -> Marks {
        Marks::default()
    }

    /// Mark an item that ended failed or skipped at some stage of the pipeline (this one or
    /// another), so that the source can leave it out next time: `persist`'s `on_failure` and
    /// `on_skip`, `jsonl`'s `rejects`. Called only for the endings [`BlockingStage::marks`]
    /// names, on this stage's pool, with its timeout and retry policy, before the ending is
    /// checkpointed: an item whose mark did not land (the process died) ends again next run
    /// and is marked then, so a mark must be idempotent. An error is classified as for
    /// `process`; a fatal one stops the run and puts the item back to pending.
    fn mark(&self, ending: &Ending, cx: &Context) -> Result<(), StageError> {
        let _ = (ending, cx);
        Ok(())
    }
}

/// Where an item's attempts go, when a stage's items go to several places that each take only
/// so many at once: `http-download`'s lanes are the URLs' hosts. Besides the stage's
/// `concurrency`, at most `width` attempts of one lane are under way at once, and a retry-after
/// hint from a lane's service slows down that lane only (adaptive concurrency, per lane instead
/// of per stage). An item waits for a place in its lane *before* its attempt: the wait uses
/// neither the attempt's timeout nor a slot of the stage, so items of a busy lane do not hold
/// back those of the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    /// The lane's name (a host name), as it appears in logs.
    pub name: String,
    /// Attempts of the lane under way at once (at least 1).
    pub width: usize,
    /// Whether the lane has a circuit breaker of its own (`http-download`'s
    /// `per_host_breaker`): opened by the lane's failures only, with the stage's `breaker`
    /// settings (or their defaults when it sets none), it holds back that lane's items only,
    /// which wait for it before their lane's place and a slot of the stage. The stage's
    /// own breaker, if it has one, then does not apply to the lane's items.
    pub breaker: bool,
}

/// The endings a stage marks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// Items that failed.
    pub failed: bool,
    /// Items that were skipped.
    pub skipped: bool,
}

impl Marks {
    /// Whether this set takes an ending of this kind.
    pub fn takes(self, kind: EndingKind) -> bool {
        match kind {
            EndingKind::Failed => self.failed,
            EndingKind::Skipped => self.skipped,
        }
    }
}

/// How an item ended without reaching the end of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndingKind {
    /// It failed: a permanent error, or its attempts used up.
    Failed,
    /// A stage skipped it.
    Skipped,
}

impl EndingKind {
    /// `"failed"` or `"skipped"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndingKind::Failed => "failed",
            EndingKind::Skipped => "skipped",
        }
    }
}

/// An item that ended failed or skipped, as a marking stage is told it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    /// Failed or skipped.
    pub kind: EndingKind,
    /// The stage it ended at.
    pub stage: String,
    /// The error (failed) or the reason (skipped).
    pub message: String,
    /// The attempts it made at that stage (1 for a skip).
    pub attempts: u32,
    /// The record as it entered that stage: its key, and the fields it had by then.
    pub record: Record,
}

/// Returned by a source's `emit` callback when the read must stop (the attempt was
/// cancelled or timed out). A source returns it as it is, or simply stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop;

/// The first stage of a pipeline: yields the batch. Runs once per run, on a blocking thread,
/// with the stage's timeout and retry policy around the whole read. Records emitted by a failed
/// or cancelled attempt are discarded, so a retried read starts from scratch.
///
/// `emit` answers [`Stop`] when the batch is full or the attempt was cancelled; the source then
/// returns (with `Ok(())` or its error: the runner knows which case it was, and a cancelled
/// read is discarded whatever it returns).
///
/// A piece of input that is not a record (a line that is not JSON, one too long to read) is
/// emitted as [`Emitted::Unreadable`]: it becomes an item of the batch that fails at the source
/// with that error, marked and listed like any other failure, while the read goes on. One bad
/// row must not keep the rest of the batch from running; an error of `read` is for the input as
/// a whole (a missing file, a refused query).
pub trait Source: Send + Sync + 'static {
    /// Emit up to `limit` items (`None`: no limit). Keys must be unique within a batch; a
    /// repeated key is reported and dropped by the runner.
    fn read(
        &self,
        limit: Option<u64>,
        cx: &Context,
        emit: &mut dyn FnMut(Emitted) -> Result<(), Stop>,
    ) -> Result<(), StageError>;
}

/// What a source emits: a record, or a piece of input that could not be read as one.
#[derive(Debug, Clone, PartialEq)]
pub enum Emitted {
    /// An item of the batch.
    Record(Record),
    /// An item that fails at the source with `error`, keyed by where it was (`in.jsonl:3`,
    /// `row 3`).
    Unreadable {
        /// The item's key.
        key: String,
        /// Why it is not a record, lowercase, without a trailing period.
        error: String,
        /// What could be read of it (a row's columns, a line's object without a usable key;
        /// empty when nothing could): the fields a marking stage (`on_failure`, `rejects`) is
        /// given, so that it can mark the row where the source will see the mark.
        fields: Fields,
    },
}

impl From<Record> for Emitted {
    fn from(record: Record) -> Self {
        Emitted::Record(record)
    }
}

/// A built stage, ready to run.
#[derive(Clone)]
pub enum StageImpl {
    /// The pipeline's first stage.
    Source(Arc<dyn Source>),
    /// Runs on the async runtime.
    Async(Arc<dyn AsyncStage>),
    /// Runs on the stage's blocking pool.
    Blocking(Arc<dyn BlockingStage>),
}

impl StageImpl {
    /// The item's lane at this stage (see [`Lane`]).
    pub fn lane(&self, record: &Record) -> Option<Lane> {
        match self {
            StageImpl::Async(s) => s.lane(record),
            StageImpl::Blocking(s) => s.lane(record),
            StageImpl::Source(_) => None,
        }
    }
}

impl fmt::Debug for StageImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StageImpl::Source(_) => "Source",
            StageImpl::Async(_) => "Async",
            StageImpl::Blocking(_) => "Blocking",
        })
    }
}
