//! What every target shares: how long it runs and on which seed, and what a clear message is.
//!
//! A target runs batches of [`BATCH`] generated cases until its time is up (at least one
//! batch): `STAGEWISE_FUZZ_SECONDS` (seconds per target, default each target's own) ×
//! `STAGEWISE_CAMPAIGN_SCALE`. Batch `n` draws from a ChaCha generator seeded with the
//! target's seed and `n`, so the cases run are the same on every machine; a slower machine runs
//! fewer of them. Nothing is persisted: proptest's regression files are off, and a failure
//! prints the seed and the shrunk input instead.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use crate::util::campaign;

/// Cases per batch, unless a target says otherwise: the time is looked at between batches.
const BATCH: u32 = 8;

/// One fuzz target: its name, its time and its seed.
pub struct Target {
    name: &'static str,
    budget: Duration,
    seed: u64,
    batch: u32,
}

impl Target {
    /// The target `name`, running `default_seconds` (at scale 1) unless
    /// `STAGEWISE_FUZZ_SECONDS` says otherwise, on `fixed_seed` unless `STAGEWISE_CAMPAIGN_SEED`
    /// says otherwise (printed either way).
    pub fn new(name: &'static str, default_seconds: f64, fixed_seed: u64) -> Target {
        let seconds = match std::env::var("STAGEWISE_FUZZ_SECONDS") {
            Err(_) => default_seconds,
            Ok(v) => match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => s,
                _ => panic!("STAGEWISE_FUZZ_SECONDS must be a number of seconds, not {v:?}"),
            },
        };
        Target {
            name,
            budget: Duration::from_secs_f64(seconds * campaign::scale() as f64),
            seed: campaign::seed(&format!("fuzz {name}"), fixed_seed),
            batch: BATCH,
        }
    }

    /// Batches of `cases` cases: fewer for a target whose cases take seconds.
    pub fn batch(mut self, cases: u32) -> Target {
        self.batch = cases;
        self
    }

    /// Run `test` on cases of `strategy` until the time is up. A failing case (an `Err`, or a
    /// panic, which proptest catches) is shrunk, then fails the test with the seed and the
    /// smallest failing input.
    pub fn run<S>(&self, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
    where
        S: Strategy,
        S::Value: Debug,
    {
        let began = Instant::now();
        let mut cases = 0u64;
        for batch in 0u64.. {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&self.seed.to_le_bytes());
            seed[8..16].copy_from_slice(&batch.to_le_bytes());
            let mut config = Config::with_cases(self.batch);
            config.failure_persistence = None;
            let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
            let mut runner = TestRunner::new_with_rng(config, rng);
            match runner.run(&strategy, &test) {
                Ok(()) => {}
                Err(TestError::Fail(reason, input)) => panic!(
                    "fuzz {}: seed {} (STAGEWISE_CAMPAIGN_SEED={}), batch {batch}: {}\nsmallest failing input: {}",
                    self.name,
                    self.seed,
                    self.seed,
                    cut(&reason.to_string()),
                    cut(&format!("{input:?}"))
                ),
                Err(TestError::Abort(reason)) => {
                    panic!("fuzz {}: seed {}: aborted: {reason}", self.name, self.seed)
                }
            }
            cases += u64::from(self.batch);
            if began.elapsed() >= self.budget {
                break;
            }
        }
        eprintln!(
            "fuzz {}: {cases} cases in {:.1} s, seed {}",
            self.name,
            began.elapsed().as_secs_f64(),
            self.seed
        );
    }
}

/// `message` says something: not empty, not only blanks. (Messages are escaped where they
/// are printed, `telemetry::say`; what reaches a terminal is checked by [`printable_output`].)
pub fn stated(what: &str, message: &str) -> Result<(), TestCaseError> {
    if message.trim().is_empty() {
        return Err(TestCaseError::fail(format!("{what}: an empty message")));
    }
    Ok(())
}

/// What the binary printed (`bytes`) holds no character that steers a terminal (a NUL, an
/// escape, a bidirectional override) but its line breaks, nor a panic's report.
pub fn printable_output(what: &str, bytes: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(bytes);
    if text.contains("panicked at") {
        return Err(TestCaseError::fail(format!("{what}: a panic:\n{text}")));
    }
    for line in text.lines() {
        if let Some(c) = line
            .chars()
            .find(|&c| c != '\t' && stagewise_core::text::steers_the_terminal(c))
        {
            return Err(TestCaseError::fail(format!(
                "{what}: a line holds the character {c:?}: {line:?}"
            )));
        }
    }
    Ok(())
}

/// What one run of the binary gave.
#[derive(Debug)]
pub struct Ran {
    /// `None`: killed (by a signal, or by the guard).
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Ran {
    /// Standard error as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Run `stagewise ARGS` in `dir` with no `STAGEWISE_…` variable and no colour; killed after a
/// minute (then `code` is `None`).
pub fn stagewise(dir: &std::path::Path, args: &[&str]) -> Ran {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut command = Command::new(crate::util::bin());
    command.current_dir(dir).args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("STAGEWISE_") {
            command.env_remove(&key);
        }
    }
    command
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn stagewise");
    let pump = |mut from: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = from.read_to_end(&mut bytes);
            bytes
        })
    };
    let out = pump(Box::new(child.stdout.take().expect("piped")));
    let err = pump(Box::new(child.stderr.take().expect("piped")));
    let guard = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for stagewise") {
            break Some(status);
        }
        if Instant::now() >= guard {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ran {
        code: status.and_then(|s| s.code()),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// `text`, at most 4,000 characters of it: a failing input may hold a megabyte.
fn cut(text: &str) -> String {
    match text.char_indices().nth(4000) {
        Some((at, _)) => format!("{}… ({} more bytes)", &text[..at], text.len() - at),
        None => text.to_owned(),
    }
}
