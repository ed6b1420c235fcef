//! Spawning a child process and measuring it: wall time from spawn to exit, its peak RSS and CPU
//! time from the kernel's rusage, and when the JSON log events of a `stagewise run` arrived.
//!
//! A child's rusage is only available by reaping it with `libc::wait4`, which `std::process`
//! does not expose, and this process's own CPU time comes from `libc::getrusage`: two FFI
//! calls, hence unsafe, and nothing else in this module.
#![allow(unsafe_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The log events whose arrival `measure` notes, by their `message`: the source starts taking
/// the batch, the batch is taken and processing starts, the last commit is done.
const EVENTS: [&str; 3] = ["taking a new batch", "run started", "summary"];

/// What becomes of a measured child's stdout.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stdout {
    /// Sent to `/dev/null`.
    Discard,
    /// Read to its end and kept in [`Measured::stdout`].
    Keep,
}

/// What `measure` saw of one child process.
pub struct Measured {
    pub status: ExitStatus,
    /// When the child was spawned.
    pub began: Instant,
    /// From spawn to the moment the child was reaped.
    pub wall: Duration,
    /// `ru_maxrss`, in KiB on Linux.
    pub peak_rss_kib: u64,
    /// The child's user plus system CPU time.
    pub cpu: Duration,
    /// The child's stdout, with [`Stdout::Keep`]; empty otherwise.
    pub stdout: String,
    /// When the `taking a new batch` JSON log event arrived on its stderr, since spawn
    /// (stagewise only).
    pub taking: Option<Duration>,
    /// When the `run started` event arrived, since spawn.
    pub started: Option<Duration>,
    /// When the `summary` event arrived, since spawn.
    pub summarized: Option<Duration>,
}

impl Measured {
    /// The processing window: from the `run started` event to the `summary` event.
    pub fn window(&self) -> Option<Duration> {
        self.summarized?.checked_sub(self.started?)
    }
}

/// Spawn `cmd` with no stdin, timestamp the JSON log events it writes to stderr (copying
/// stderr to `log`), and reap it with `wait4` for its peak RSS and CPU time.
pub fn measure(cmd: Command, log: Option<&Path>, stdout: Stdout) -> io::Result<Measured> {
    measure_with(cmd, log, stdout, || ()).map(|(measured, ())| measured)
}

/// [`measure`], calling `at_exit` the moment the child is reaped, before its output is read
/// to the end: for figures of this process that must stop with the child (its CPU time).
pub fn measure_with<T>(
    mut cmd: Command,
    log: Option<&Path>,
    stdout: Stdout,
    at_exit: impl FnOnce() -> T,
) -> io::Result<(Measured, T)> {
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    match stdout {
        Stdout::Discard => cmd.stdout(Stdio::null()),
        Stdout::Keep => cmd.stdout(Stdio::piped()),
    };
    let log = log.map(std::fs::File::create).transpose()?;
    let began = Instant::now();
    let mut child = cmd.spawn()?;
    let out_reader = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        })
    });
    let stderr = child.stderr.take().expect("stderr is piped");
    let err_reader = event_times(stderr, began, log, EVENTS);
    // Once reaped, `child` is never waited on again: dropping a `Child` does not wait.
    let (status, usage) = wait4(child.id())?;
    let wall = began.elapsed();
    let at_exit = at_exit();
    let stdout = out_reader
        .map(|r| r.join().unwrap_or_default())
        .unwrap_or_default();
    let [taking, started, summarized] = err_reader.join().unwrap_or([None; 3]);
    let measured = Measured {
        status,
        began,
        wall,
        peak_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        stdout,
        taking,
        started,
        summarized,
    };
    Ok((measured, at_exit))
}

/// Wait for child `pid` and return its exit status and resource usage (`ru_maxrss` is its peak
/// RSS in KiB; `ru_utime` and `ru_stime` its CPU time). `std` reaps without the usage, hence
/// libc.
pub fn wait4(pid: u32) -> io::Result<(ExitStatus, libc::rusage)> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    let mut status: libc::c_int = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    loop {
        // SAFETY: `status` and `usage` are valid, writable and outlive the call; `pid` is a
        // child of this process that nothing else reaps.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
        if reaped == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // SAFETY: zero is a valid `rusage` (plain integers), and wait4 has filled it in.
    let usage = unsafe { usage.assume_init() };
    Ok((ExitStatus::from_raw(status), usage))
}

/// This process's CPU time so far, all threads (in a bench that serves its child, almost all
/// of it the server's).
pub fn own_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is valid and writable for the call.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    // SAFETY: zero is a valid `rusage` (plain integers), and getrusage has filled it in.
    let usage = unsafe { usage.assume_init() };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

/// A `timeval` (CPU time from `wait4`) as a duration.
pub fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
}

/// Read a child's stderr (`--log-format json`) to its end on a thread of its own, copying every
/// line to `log`, and note when each of the log events named in `events` (by their `message`)
/// arrived, as time since `began`; the thread returns the times in the order of `events`.
fn event_times<const N: usize>(
    stderr: impl Read + Send + 'static,
    began: Instant,
    mut log: Option<std::fs::File>,
    events: [&'static str; N],
) -> JoinHandle<[Option<Duration>; N]> {
    std::thread::spawn(move || {
        let mut at = [None; N];
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let now = began.elapsed();
            if let Some(log) = log.as_mut() {
                let _ = writeln!(log, "{line}");
            }
            let message = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned));
            if let Some(i) = events.iter().position(|e| Some(*e) == message.as_deref()) {
                at[i] = Some(now);
            }
        }
        at
    })
}
