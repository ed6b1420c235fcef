//! What the bench harnesses share: reaping a child process with its resource usage, timing the
//! JSON log events a `stagewise run` writes, reading its summary, and the small formatting
//! helpers of their reports. Each harness includes it with `mod common;` and uses a part of it.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

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

/// `1234567.8` → `"1,234,568"`.
pub fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A progress line on stderr, so the report on stdout stays clean.
pub fn progress(message: &str) {
    eprintln!("[bench] {message}");
}

/// A `timeval` (CPU time from `wait4`) as a duration.
pub fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
}

/// Read a child's stderr (`--log-format json`) to its end on a thread of its own, copying every
/// line to `log`, and note when each of the log events named in `events` (by their `message`)
/// arrived, as time since `began`; the thread returns the times in the order of `events`.
pub fn event_times<const N: usize>(
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

/// A stage's attempt latency in a run's summary JSON: "p50 … ms, p95 … ms, max … ms".
pub fn stage_latency(summary: Option<&Value>, stage: &str) -> Option<String> {
    let stages = summary?["stages"].as_array()?;
    let l = &stages.iter().find(|s| s["name"] == stage)?["latency"];
    Some(format!(
        "p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        l["p50_ms"].as_f64()?,
        l["p95_ms"].as_f64()?,
        l["max_ms"].as_f64()?
    ))
}
