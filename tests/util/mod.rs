//! The harness every black-box test uses: write a `pipeline.toml` into a fresh directory, run
//! the real `stagewise` binary on it, and look at what a user would see (exit code, stdout,
//! stderr, the sink file, `status --json`).
//!
//! Tests read like a spec because all process plumbing lives here: every child runs under a
//! kill guard (a hung binary fails the test with its output instead of hanging the suite),
//! inherits no `STAGEWISE_*` or `RUST_LOG` from the developer's shell, and always gets the
//! pipeline path explicitly, relative to its working directory, so messages say
//! `pipeline.toml:LINE:COL` exactly as a user would see them.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

/// The fault campaigns' size and report (`STAGEWISE_CAMPAIGN_SCALE`, `…_REPORT`).
pub mod campaign;
pub mod disk; // A small filesystem for the state folder, to fill up or make read-only.
/// A local HTTP server that misbehaves on purpose, for the `http-download` tests.
pub mod http;
/// A local stand-in for the OpenAI and Anthropic APIs, for the `llm` stage's tests.
pub mod llm;
/// PostgreSQL: the shared test cluster, a database per test, private clusters.
pub mod pg;
/// The plugin libraries, built on first use.
pub mod plugins;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How long any single invocation may take before the harness kills it and fails the test.
pub const KILL_GUARD: Duration = Duration::from_secs(60);

/// The binary under test.
/// Polls `done` every 20 ms; false if `within` passes first.
pub fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stagewise")
}

/// The workspace root (where the root `pipeline.toml` and `examples/` live).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory under the system temp dir (`TMPDIR`, which `scripts/test` points at a
/// folder of the run's own). Removed when the test passes; kept (and its path printed) when it
/// fails, so the pipeline, sink and checkpoint can be inspected.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name: String = thread::current()
            .name()
            .unwrap_or("test")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "stagewise-test-{name}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) {
        let path = self.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent dir");
        }
        fs::write(&path, contents).expect("write file in test dir");
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.join(rel).exists()
    }

    /// Copy the workspace's `rel` (a file or a folder, recursively) to the same place in this
    /// directory, as a clean checkout has it: without state, output or databases that earlier
    /// runs left (hidden entries, `out/` folders, `*.db` files).
    pub fn copy_from_workspace(&self, rel: &str) {
        fn copy(from: &Path, to: &Path) {
            if from.is_dir() {
                fs::create_dir_all(to).expect("create folder");
                for entry in fs::read_dir(from).expect("read folder") {
                    let entry = entry.expect("folder entry");
                    let name = entry.file_name();
                    let left_by_a_run = name.to_string_lossy().starts_with('.')
                        || name == "out"
                        || entry.path().extension().is_some_and(|e| e == "db");
                    if !left_by_a_run {
                        copy(&entry.path(), &to.join(name));
                    }
                }
            } else {
                fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
            }
        }
        let to = self.join(rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).expect("create parent dir");
        }
        copy(&workspace_root().join(rel), &to);
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test dir kept for inspection: {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A pipeline file in its own [`TestDir`], written as `pipeline.toml`.
pub struct Pipeline {
    pub dir: TestDir,
    toml: String,
}

impl Pipeline {
    /// Writes `toml` (common indentation removed, so fixtures can be indented in the test).
    pub fn new(toml: &str) -> Pipeline {
        let dir = TestDir::new();
        let toml = dedent(toml);
        dir.write("pipeline.toml", &toml);
        Pipeline { dir, toml }
    }

    /// `generate` `count` items → `middle` (stage tables) → a `jsonl` sink `out.jsonl`, with
    /// `settings` (more `[pipeline]` keys, or whole sections) after the pipeline's name.
    pub fn through(name: &str, count: usize, middle: &str, settings: &str) -> Pipeline {
        Pipeline::new(&format!(
            "[pipeline]\nname = \"{name}\"\n{settings}\n\n\
             [[stage]]\nname = \"src\"\nkind = \"generate\"\ncount = {count}\n\n\
             {}\n\n\
             [[stage]]\nname = \"out\"\nkind = \"jsonl\"\npath = \"out.jsonl\"\n",
            dedent(middle)
        ))
    }

    /// Runs the pipeline again and again until a run exits 1 (it finished, some items failed),
    /// at most `most` times; every run before must end with `before` (`None`: killed by a
    /// signal). Panics if no run exits 1.
    pub fn run_until_finished_with_failures(&self, most: usize, before: Option<i32>) {
        let mut codes = Vec::new();
        for _ in 0..most {
            let out = self.run();
            codes.push(out.code);
            if out.code == Some(1) {
                return;
            }
            assert_eq!(out.code, before, "runs so far ended with {codes:?}\n{out}");
        }
        panic!("no run of {most} finished: they ended with {codes:?}");
    }

    /// The summary file a run of pipeline `name` wrote beside its store.
    pub fn summary(&self, name: &str) -> Value {
        let path = self.dir.join(&format!(".stagewise/{name}.summary.json"));
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no summary at {}: {e}", path.display()));
        serde_json::from_str(&text).expect("the summary is JSON")
    }

    /// The summary file's object for `stage`.
    pub fn stage_summary(&self, name: &str, stage: &str) -> Value {
        let summary = self.summary(name);
        summary["stages"]
            .as_array()
            .and_then(|stages| stages.iter().find(|s| s["name"] == stage))
            .cloned()
            .unwrap_or_else(|| panic!("no stage `{stage}` in the summary: {summary}"))
    }

    /// The text exactly as written to `pipeline.toml`.
    pub fn toml(&self) -> &str {
        &self.toml
    }

    /// `stagewise <subcommand> pipeline.toml`, run in the pipeline's directory.
    pub fn cmd(&self, subcommand: &str) -> Cmd {
        Cmd::new(self.dir.path(), subcommand, "pipeline.toml")
    }

    pub fn run(&self) -> Output {
        self.cmd("run").output()
    }

    pub fn validate(&self) -> Output {
        self.cmd("validate").output()
    }

    /// `status --json`, which must succeed and print one JSON object.
    pub fn status(&self) -> Status {
        let out = self.cmd("status").arg("--json").output();
        out.assert_code(0);
        Status::parse(&out)
    }

    /// The jsonl sink at `rel` (relative to the pipeline file); every line must be a JSON object
    /// with a string `key`.
    pub fn sink(&self, rel: &str) -> Sink {
        Sink::read(&self.dir.join(rel))
    }
}

/// One invocation of the binary, built up like `std::process::Command`.
pub struct Cmd {
    command: Command,
    timeout: Duration,
    line: String,
}

impl Cmd {
    pub fn new(dir: &Path, subcommand: &str, pipeline: &str) -> Cmd {
        Cmd::bare(dir, subcommand).arg(pipeline)
    }

    /// `stagewise <subcommand>` without a pipeline argument (`schema`).
    pub fn bare(dir: &Path, subcommand: &str) -> Cmd {
        let mut command = Command::new(bin());
        command.current_dir(dir).arg(subcommand);
        // The developer's shell must not leak overrides or filters into the run under test.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("STAGEWISE_") {
                command.env_remove(&key);
            }
        }
        command.env_remove("RUST_LOG").env("NO_COLOR", "1");
        Cmd {
            command,
            timeout: KILL_GUARD,
            line: format!("stagewise {subcommand}"),
        }
    }

    pub fn arg(mut self, arg: &str) -> Cmd {
        self.command.arg(arg);
        self.line.push(' ');
        self.line.push_str(arg);
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Cmd {
        self.command.env(key, value);
        self.line = format!("{key}={value} {}", self.line);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Cmd {
        self.command.env_remove(key);
        self
    }

    /// The command in a process id namespace of its own (`unshare`, as root): to another
    /// process of this machine it looks like one on another machine, whose process ids it
    /// cannot see. Killing the returned process kills the command with it.
    pub fn in_own_pid_namespace(self) -> Cmd {
        let line = format!("unshare --pid --fork … {}", self.line);
        self.wrapped(
            "unshare",
            &["--pid", "--fork", "--kill-child", "--mount-proc"],
            line,
        )
    }

    /// Runs `prelude` in a shell that then `exec`s the binary: the prelude runs in the very
    /// process the binary becomes (its `$$` is the binary's pid).
    pub fn after_shell(self, prelude: &str) -> Cmd {
        let line = format!("sh -c '{prelude}; exec …' {}", self.line);
        let script = format!("{prelude}\nexec \"$0\" \"$@\"");
        self.wrapped("sh", &["-c", &script], line)
    }

    /// The command run by `program` with `args` before it, in its folder, with its environment.
    fn wrapped(self, program: &str, args: &[&str], line: String) -> Cmd {
        let mut command = Command::new(program);
        command
            .args(args)
            .arg(self.command.get_program())
            .args(self.command.get_args());
        self.same_place_and_env(&mut command);
        Cmd {
            command,
            timeout: self.timeout,
            line,
        }
    }

    /// Runs the binary through a wrapper script of the deployment examples, as `sh <wrapper>
    /// <leading…> <subcommand> <args…>`: the wrapper finds `stagewise` on `PATH`, which starts
    /// with the binary's folder. The process is the wrapper's shell, so a signal sent to it
    /// tests what the wrapper passes on.
    pub fn through(self, wrapper: &Path, leading: &[&str]) -> Cmd {
        let mut command = Command::new("sh");
        command
            .arg(wrapper)
            .args(leading)
            .args(self.command.get_args());
        self.same_place_and_env(&mut command);
        let folder = Path::new(bin())
            .parent()
            .expect("the binary is in a folder");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(
            std::iter::once(folder.to_path_buf()).chain(std::env::split_paths(&path)),
        )
        .expect("PATH joins");
        command.env("PATH", path);
        Cmd {
            command,
            timeout: self.timeout,
            line: format!(
                "sh {} {} {}",
                wrapper.display(),
                leading.join(" "),
                self.line
            ),
        }
    }

    /// Gives `command` this one's working directory and environment.
    fn same_place_and_env(&self, command: &mut Command) {
        if let Some(dir) = self.command.get_current_dir() {
            command.current_dir(dir);
        }
        for (key, value) in self.command.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
    }

    pub fn timeout(mut self, timeout: Duration) -> Cmd {
        self.timeout = timeout;
        self
    }

    /// Starts the binary in the background (for signals, kill -9, thread counts).
    pub fn spawn(mut self) -> Running {
        self.command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self
            .command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            pump(child.stdout.take().expect("stdout is piped"), &stdout),
            pump(child.stderr.take().expect("stderr is piped"), &stderr),
        ];
        Running {
            pid: child.id(),
            child,
            stdout,
            stderr,
            readers,
            started: Instant::now(),
            timeout: self.timeout,
            line: self.line,
        }
    }

    /// Runs to completion under the kill guard.
    pub fn output(self) -> Output {
        self.spawn().wait()
    }
}

fn pump(mut from: impl Read + Send + 'static, into: &Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    let into = Arc::clone(into);
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into
                    .lock()
                    .expect("output buffer")
                    .extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// A binary running in the background. Dropping it SIGKILLs and reaps the process if it is
/// still alive, so a failing test never leaves a stray runner behind.
pub struct Running {
    pid: u32,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    timeout: Duration,
    line: String,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sends a signal (`libc::SIGTERM`, `libc::SIGINT`, `libc::SIGKILL`, …).
    pub fn signal(&self, signal: i32) {
        send_signal(self.pid, signal);
    }

    /// Stderr so far, with any ANSI colour codes removed.
    pub fn stderr_so_far(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &self.stderr.lock().expect("stderr buffer"),
        ))
    }

    /// Whether the process has exited (without reaping its output).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Polls stderr until `needle` shows up; false if the process exits or `within` passes first.
    pub fn wait_for_stderr(&mut self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.stderr_so_far().contains(needle) {
                return true;
            }
            if self.has_exited() {
                // Let the reader threads drain what the process wrote last.
                thread::sleep(Duration::from_millis(50));
                return self.stderr_so_far().contains(needle);
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The process's current thread count, from `/proc/PID/task` (None once it is gone).
    pub fn threads(&self) -> Option<usize> {
        thread_count(self.pid)
    }

    /// Waits for exit under the kill guard.
    pub fn wait(self) -> Output {
        self.wait_sampling(Duration::from_secs(3600), |_| {})
    }

    /// Waits for exit under the kill guard, sampling the thread count every `every` meanwhile;
    /// returns the output and the largest thread count seen.
    pub fn wait_sampling_threads(self, every: Duration) -> (Output, usize) {
        let mut max = 0;
        let out = self.wait_sampling(every, |threads| max = max.max(threads));
        (out, max)
    }

    /// Waits for exit under the kill guard; the output, and the process's peak resident set
    /// size in bytes, as `wait4` reports it for this one child (its whole life, to the last
    /// page: nothing is missed between samples).
    // `wait4` has no safe wrapper in std, which reaps without the child's resource usage.
    #[allow(unsafe_code)]
    pub fn wait_peak_rss(mut self) -> (Output, u64) {
        let deadline = self.started + self.timeout;
        let pid = libc::pid_t::try_from(self.pid).expect("pid fits in pid_t");
        loop {
            let mut status = 0;
            // SAFETY: `rusage` is plain integers, for which all zeros is a value.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4(2) writes only to the two locals it is given.
            let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            assert!(reaped >= 0, "wait4: {}", std::io::Error::last_os_error());
            if reaped == pid {
                // Reaped here, so `Drop` finds nothing left to kill.
                let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
                // Kilobytes, on Linux.
                let peak = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
                return (self.collect(code), peak);
            }
            if Instant::now() >= deadline {
                self.kill_past_the_guard();
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The kill guard's end: the process is still running past its time, killed, and the test
    /// fails with its output.
    fn kill_past_the_guard(&mut self) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let out = self.collect(None);
        panic!(
            "kill guard: `{}` still running after {:?}, killed\n{out}",
            self.line, self.timeout
        );
    }

    fn wait_sampling(mut self, every: Duration, mut sample: impl FnMut(usize)) -> Output {
        let deadline = self.started + self.timeout;
        let mut next_sample = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= next_sample {
                if let Some(threads) = thread_count(self.pid) {
                    sample(threads);
                }
                next_sample = Instant::now() + every;
            }
            if Instant::now() >= deadline {
                self.kill_past_the_guard();
            }
            thread::sleep(Duration::from_millis(10));
        };
        self.collect(status.code())
    }

    fn collect(&mut self, code: Option<i32>) -> Output {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Output {
            line: self.line.clone(),
            code,
            stdout: String::from_utf8_lossy(&self.stdout.lock().expect("stdout buffer"))
                .into_owned(),
            stderr: self.stderr_so_far(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// Sending a signal to a child we spawned is the one place the tests need `unsafe`: libc::kill
// has no safe wrapper in std, and shelling out to kill(1) would hide errors.
#[allow(unsafe_code)]
pub fn send_signal(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).expect("pid fits in pid_t");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// Threads of a process, from `/proc/PID/task`.
pub fn thread_count(pid: u32) -> Option<usize> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .ok()
        .map(|entries| entries.count())
        .filter(|&n| n > 0)
}

/// What one finished invocation produced.
pub struct Output {
    pub line: String,
    /// None when the process was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    /// ANSI colour codes removed.
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    /// Asserts the exit code, showing everything the binary printed when it is wrong.
    pub fn assert_code(&self, code: i32) -> &Output {
        assert_eq!(self.code, Some(code), "unexpected exit code\n{self}");
        self
    }

    pub fn assert_stderr_contains(&self, needle: &str) -> &Output {
        assert!(
            self.stderr.contains(needle),
            "stderr should contain {needle:?}\n{self}"
        );
        self
    }

    pub fn stderr_lines(&self) -> std::str::Lines<'_> {
        self.stderr.lines()
    }

    /// Lines of stderr starting with `error:`.
    pub fn errors(&self) -> Vec<&str> {
        self.stderr_lines()
            .filter(|l| l.starts_with("error:"))
            .collect()
    }

    /// Lines of stderr starting with `warning:`.
    pub fn warnings(&self) -> Vec<&str> {
        self.stderr_lines()
            .filter(|l| l.starts_with("warning:"))
            .collect()
    }

    /// Number of stderr lines that are heartbeat events.
    pub fn heartbeats(&self) -> usize {
        self.stderr_lines()
            .filter(|l| l.contains("heartbeat"))
            .count()
    }

    /// The run summary must be the last log event: it is printed, and nothing that looks like
    /// another event (a heartbeat) follows it.
    pub fn assert_summary_last(&self) -> &Output {
        let at = self
            .stderr
            .rfind("summary")
            .unwrap_or_else(|| panic!("no `summary` event in stderr\n{self}"));
        assert!(
            !self.stderr[at..].contains("heartbeat"),
            "a heartbeat was logged after the summary\n{self}"
        );
        self
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.line)?;
        writeln!(f, "exit: {:?} after {:?}", self.code, self.elapsed)?;
        writeln!(f, "--- stdout ---\n{}", tail(&self.stdout, 200))?;
        write!(f, "--- stderr ---\n{}", tail(&self.stderr, 200))
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The last `n` lines of `text` (long runs log a lot; a failure message needs the end).
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("[… {skip} earlier lines …]\n"));
    }
    out.push_str(&lines[skip..].join("\n"));
    out
}

/// A failed item as `status --json` lists it.
#[derive(Debug, Clone)]
pub struct Failed {
    pub key: String,
    pub stage: String,
    pub error: String,
    pub attempts: u64,
}

/// `status --json`, parsed.
#[derive(Debug)]
pub struct Status {
    pub raw: Value,
    pub counts: BTreeMap<String, u64>,
    pub failed: Vec<Failed>,
}

impl Status {
    pub fn parse(out: &Output) -> Status {
        let raw: Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("status --json is not one JSON object ({e})\n{out}"));
        assert!(raw["pipeline"].is_string(), "`pipeline` missing\n{out}");
        assert!(raw["run"]["id"].is_u64(), "`run.id` missing\n{out}");
        assert!(
            raw["run"]["status"].is_string(),
            "`run.status` missing\n{out}"
        );
        assert!(raw["stages"].is_object(), "`stages` missing\n{out}");
        let counts_obj = raw["counts"]
            .as_object()
            .unwrap_or_else(|| panic!("status --json has no `counts` object\n{out}"));
        let mut counts = BTreeMap::new();
        for state in ["pending", "in_flight", "done", "skipped", "failed"] {
            let n = counts_obj
                .get(state)
                .and_then(Value::as_u64)
                .unwrap_or_else(|| panic!("`counts.{state}` missing or not a number\n{out}"));
            counts.insert(state.to_owned(), n);
        }
        let failed = raw["failed"]
            .as_array()
            .unwrap_or_else(|| panic!("status --json has no `failed` list\n{out}"))
            .iter()
            .map(|f| {
                let text = |field: &str| {
                    f[field]
                        .as_str()
                        .unwrap_or_else(|| panic!("failed item without string `{field}`: {f}"))
                        .to_owned()
                };
                Failed {
                    key: text("key"),
                    stage: text("stage"),
                    error: text("error"),
                    attempts: f["attempts"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("failed item without numeric `attempts`: {f}")),
                }
            })
            .collect();
        Status {
            raw,
            counts,
            failed,
        }
    }

    pub fn count(&self, state: &str) -> u64 {
        self.counts[state]
    }

    /// Exactly the items `keys` failed, all at `stage` after `attempts` attempts, each with an
    /// error containing `error`.
    pub fn assert_failed(&self, keys: &[&str], stage: &str, attempts: u64, error: &str) {
        let mut failed: Vec<&str> = self.failed.iter().map(|f| f.key.as_str()).collect();
        failed.sort_by_key(|k| k.parse::<i64>().unwrap_or(0));
        assert_eq!(failed, keys, "{:?}", self.failed);
        for f in &self.failed {
            assert_eq!(f.stage, stage, "{f:?}");
            assert_eq!(f.attempts, attempts, "{f:?}");
            assert!(f.error.contains(error), "{f:?} should mention {error:?}");
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// A jsonl sink file, parsed line by line.
pub struct Sink {
    pub records: Vec<serde_json::Map<String, Value>>,
}

impl Sink {
    /// Reads the file; a missing file is an empty sink. Panics on any line that is not a JSON
    /// object with a string `key` (a torn or interleaved write).
    pub fn read(path: &Path) -> Sink {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => panic!("read sink {}: {e}", path.display()),
        };
        let records = text
            .lines()
            .enumerate()
            .map(|(i, line)| {
                let value: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!("{}:{}: malformed line {line:?}: {e}", path.display(), i + 1)
                });
                let obj = value.as_object().cloned().unwrap_or_else(|| {
                    panic!("{}:{}: not an object: {line}", path.display(), i + 1)
                });
                assert!(
                    obj.get("key").is_some_and(Value::is_string),
                    "{}:{}: no string `key`: {line}",
                    path.display(),
                    i + 1
                );
                obj
            })
            .collect();
        Sink { records }
    }

    /// Keys in file order, duplicates included.
    pub fn keys(&self) -> Vec<String> {
        self.records
            .iter()
            .map(|r| r["key"].as_str().expect("checked in read").to_owned())
            .collect()
    }

    pub fn unique_keys(&self) -> BTreeSet<String> {
        self.keys().into_iter().collect()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }
}

/// The keys a `generate` source with `count = n` produces: "0".."n-1".
pub fn keys(n: usize) -> BTreeSet<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// 1-based (line, column) of the first occurrence of `needle` in `text`.
pub fn locate(text: &str, needle: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        if let Some(col) = line.find(needle) {
            return (i + 1, col + 1);
        }
    }
    panic!("{needle:?} not in fixture");
}

/// Removes a leading blank line and the indentation common to all non-blank lines.
pub fn dedent(text: &str) -> String {
    let text = text.strip_prefix('\n').unwrap_or(text);
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line.get(indent..).unwrap_or("").trim_end());
        out.push('\n');
    }
    out
}

/// Removes ANSI escape sequences (`ESC [ … letter`), in case the logger colours its output.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Upper bound on the threads a healthy runner needs: the runtime's workers (one per CPU by
/// default), the stages' blocking pools, and a fixed allowance for main, the checkpoint writer,
/// the logger and short-lived helpers. On this repository's 2-CPU machine with a pool of 2 it is
/// 24; what it rules out is threads growing with the number of items.
pub fn thread_bound(blocking_pools: usize) -> usize {
    let cpus = thread::available_parallelism().map_or(2, |n| n.get());
    cpus + blocking_pools + 20
}

/// A tiny deterministic PRNG (xorshift64*), so "random" kill moments are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}
