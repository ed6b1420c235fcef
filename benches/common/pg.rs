//! A throwaway PostgreSQL cluster for the benches that need one (`scripts/pg start`, stopped
//! and deleted when dropped), and the CPU time its processes used, from `/proc`.

// `/proc` counts CPU time in clock ticks, which `libc::sysconf` gives: an FFI call, hence
// unsafe, and nothing else.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::report::progress;

/// A throwaway cluster from `scripts/pg`, stopped and deleted when dropped.
pub struct Cluster {
    dir: PathBuf,
    /// Its URL (role `stagewise`, database `stagewise_test`).
    pub url: String,
    /// Its `psql`.
    pub psql: PathBuf,
    /// The postmaster's pid, if its pid file could be read.
    pub postmaster: Option<u32>,
}

impl Cluster {
    /// Start one in a folder of the temp dir named after `name` and this process.
    pub fn start(name: &str) -> Result<Cluster, String> {
        // Under /tmp: as root, the server runs as `postgres`, which must reach the directory.
        let dir =
            std::env::temp_dir().join(format!("stagewise-bench-{name}-{}", std::process::id()));
        let dir_arg = dir.to_string_lossy().into_owned();
        let url = match pg_script(&["start", &dir_arg]) {
            Ok(url) => url,
            Err(e) => {
                // A half-made cluster (initdb done, start failed) is removed too.
                let _ = pg_script(&["stop", &dir_arg]);
                return Err(e);
            }
        };
        let mut cluster = Cluster {
            dir,
            url,
            psql: PathBuf::new(),
            postmaster: None,
        };
        cluster.psql = PathBuf::from(pg_script(&["bin"])?).join("psql");
        // The first line of postmaster.pid; without it the server's CPU time is not reported.
        cluster.postmaster = std::fs::read_to_string(cluster.dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()));
        Ok(cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = pg_script(&["stop", &self.dir.to_string_lossy()]) {
            eprintln!(
                "warning: could not stop the cluster in {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// Run `scripts/pg ARGS`: its stdout, or its stderr as the error.
pub fn pg_script(args: &[&str]) -> Result<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg");
    let out = Command::new(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "scripts/pg {} failed ({}): {}",
            args.join(" "),
            out.status,
            stderr.trim()
        ));
    }
    for line in stderr.lines() {
        progress(line);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// From `/proc/PID/stat`: the parent, the process's own CPU ticks and its reaped children's.
fn proc_stat(pid: u32) -> Option<(u32, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces): state, ppid, …, utime (the 12th),
    // stime, cutime, cstime.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .collect();
    let n = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((u32::try_from(n(1)?).ok()?, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// CPU time the cluster has used so far: the postmaster's, its ended children's (backends of
/// closed sessions, which it has reaped) and its live children's; and the live children.
pub fn server_cpu(postmaster: u32) -> Option<(Duration, HashSet<u32>)> {
    let (_, own, reaped) = proc_stat(postmaster)?;
    let mut ticks = own + reaped;
    let mut children = HashSet::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some((parent, own, reaped)) = proc_stat(pid) {
            if parent == postmaster {
                ticks += own + reaped;
                children.insert(pid);
            }
        }
    }
    // SAFETY: sysconf only reads a configuration value.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_sec = u64::try_from(per_sec).ok().filter(|&t| t > 0)?;
    Some((
        Duration::from_secs_f64(ticks as f64 / per_sec as f64),
        children,
    ))
}

/// Wait until the backends a run opened have ended and been reaped (a closed session's backend
/// exits just after its client), then read the server's CPU time; None after 10 s.
pub fn wait_for_sessions(postmaster: u32, before: &HashSet<u32>) -> Option<Duration> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let (cpu, children) = server_cpu(postmaster)?;
        if children.is_subset(before) {
            return Some(cpu);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}
