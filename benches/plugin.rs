//! The per-item cost of a plugin stage: the same no-op as a dynamic plugin (the `noop` kind of
//! `plugins/fixtures/misbehave`, called through the C ABI with the record as JSON both ways)
//! and compiled in (the builtin `sleep` with `duration = "0s"` and `blocking = true`: a blocking
//! stage that hands the record back). Both run as generate N → the no-op (blocking pool of
//! `CONCURRENCY`) → blackhole, with checkpointing, in the real release `stagewise run`
//! process; the runs alternate so that drift hits both alike, and the medians are compared.
//!
//! `cargo bench --bench plugin` (`-- --runs N` to change the number of runs); the plugin library
//! is built first with the same cargo, profile and target folder. Without cargo's `--bench`
//! flag (`cargo test --benches`) it smoke-tests itself on a small batch, once.

// The child's resource usage comes from `libc::wait4` (see `common`), an FFI call.
#![allow(unsafe_code)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use common::{progress, thousands, wait4};
use serde_json::Value;

const CONCURRENCY: usize = 4;
const DEFAULT_RUNS: usize = 5;
const PLUGIN_PACKAGE: &str = "stagewise-fixture-misbehave";

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let bench = raw.iter().any(|a| a == "--bench");
    let (mut runs, items) = if bench {
        (DEFAULT_RUNS, 100_000)
    } else {
        (1, 2_000)
    };
    let mut args = raw.iter().filter(|a| *a != "--bench");
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().and_then(|n| n.parse().ok())) {
            ("--runs", Some(n)) if n > 0 => runs = n,
            _ => {
                eprintln!("usage: cargo bench --bench plugin [-- --runs N]");
                return ExitCode::from(2);
            }
        }
    }
    match compare(items, runs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn compare(items: u64, runs: usize) -> Result<(), String> {
    let library = build_plugin()?;
    let mut native = Vec::new();
    let mut plugin = Vec::new();
    for i in 0..runs {
        // Alternate which goes first, so that neither always runs on a warmer machine.
        for variant in if i % 2 == 0 { [0, 1] } else { [1, 0] } {
            let (name, stage, into) = if variant == 0 {
                ("compiled-in", native_stage(), &mut native)
            } else {
                ("plugin", plugin_stage(&library), &mut plugin)
            };
            progress(&format!("run {}/{runs}: {name}, {items} items", i + 1));
            into.push(run(
                &format!("{name}-{i}"),
                &pipeline(items, &stage),
                items,
            )?);
        }
    }
    let native = Median::of(&native);
    let plugin = Median::of(&plugin);
    let n = thousands(items as f64);
    println!("variant (generate {n} → no-op, concurrency {CONCURRENCY} → blackhole)   runs      wall  processing    items/s  processing range");
    for (name, m) in [
        ("compiled-in blocking no-op (`sleep` 0s)", &native),
        ("plugin no-op (`noop` via the C ABI)", &plugin),
    ] {
        println!(
            "{name:<52} {runs:>4} {:>7.3} s   {:>7.3} s {:>10}  {:.3}–{:.3} s",
            m.wall.as_secs_f64(),
            m.processing.as_secs_f64(),
            thousands(items as f64 / m.processing.as_secs_f64()),
            m.fastest.as_secs_f64(),
            m.slowest.as_secs_f64(),
        );
    }
    let extra = (plugin.processing.as_secs_f64() - native.processing.as_secs_f64()) / items as f64;
    println!(
        "plugin / compiled-in: processing time × {:.3}, throughput × {:.3}; {:+.2} µs per item",
        plugin.processing.as_secs_f64() / native.processing.as_secs_f64(),
        native.processing.as_secs_f64() / plugin.processing.as_secs_f64(),
        extra * 1e6
    );
    Ok(())
}

fn native_stage() -> String {
    "kind = \"sleep\"\nduration = \"0s\"\nblocking = true".to_owned()
}

fn plugin_stage(library: &Path) -> String {
    format!(
        "kind = \"plugin\"\npath = '{}'\nplugin_kind = \"noop\"",
        library.display()
    )
}

fn pipeline(items: u64, stage: &str) -> String {
    format!(
        r#"[pipeline]
name = "bench"
heartbeat = "60s"

[checkpoint]
store = "sqlite:state.db"

[defaults]
timeout = "30s"

[[stage]]
name = "src"
kind = "generate"
count = {items}
timeout = "5m"

[[stage]]
name = "noop"
{stage}
concurrency = {CONCURRENCY}

[[stage]]
name = "sink"
kind = "blackhole"
concurrency = 64
"#
    )
}

/// Build the no-op plugin with the profile and target folder of the binary under test.
fn build_plugin() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_BIN_EXE_stagewise"))
        .parent()
        .ok_or("the binary has no folder")?;
    let target = dir.parent().ok_or("the profile folder has no parent")?;
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    progress(&format!("building {PLUGIN_PACKAGE} ({profile})"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let status = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target)
        .args([
            "build",
            "--quiet",
            "--profile",
            profile,
            "-p",
            PLUGIN_PACKAGE,
        ])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building {PLUGIN_PACKAGE} failed: {status}"));
    }
    let file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        PLUGIN_PACKAGE.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    Ok(dir.join(file))
}

/// One run's times: spawn to exit, and the processing window (from the `run started` event to
/// the `summary` event: the items' work and the last commit, without start-up and the batch).
struct Timed {
    wall: Duration,
    processing: Duration,
}

fn run(name: &str, pipeline: &str, items: u64) -> Result<Timed, String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("stagewise-bench-plugin")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(dir.join("pipeline.toml"), pipeline)
        .map_err(|e| format!("cannot write the pipeline: {e}"))?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagewise"));
    cmd.args(["run", "pipeline.toml", "--log-format", "json"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("STAGEWISE_") {
            cmd.env_remove(key);
        }
    }
    let began = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run stagewise: {e}"))?;
    let stderr = child.stderr.take().ok_or("stderr is piped")?;
    let reader = std::thread::spawn(move || {
        let (mut started, mut summarized, mut lines) = (None, None, Vec::new());
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let at = began.elapsed();
            let message = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned));
            match message.as_deref() {
                Some("run started") => started = Some(at),
                Some("summary") => summarized = Some(at),
                _ => {}
            }
            lines.push(line);
        }
        (started, summarized, lines)
    });
    let (status, _usage) = wait4(child.id()).map_err(|e| format!("wait4: {e}"))?;
    let wall = began.elapsed();
    let (started, summarized, lines) = reader.join().map_err(|_| "the log reader panicked")?;
    let summary = std::fs::read_to_string(dir.join("bench.summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok());
    let done = summary.as_ref().and_then(|s| s["done"].as_u64());
    let processing = match (started, summarized) {
        (Some(a), Some(b)) if status.code() == Some(0) && done == Some(items) => b - a,
        _ => {
            return Err(format!(
                "{name}: stagewise exited with {status} and {done:?} of {items} items done:\n{}",
                lines.join("\n")
            ))
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Timed { wall, processing })
}

/// Medians of each figure over the runs, and the range of the processing window.
struct Median {
    wall: Duration,
    processing: Duration,
    fastest: Duration,
    slowest: Duration,
}

impl Median {
    fn of(runs: &[Timed]) -> Median {
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let processing = runs.iter().map(|r| r.processing);
        Median {
            wall: median(runs.iter().map(|r| r.wall).collect()),
            processing: median(processing.clone().collect()),
            fastest: processing.clone().min().unwrap_or_default(),
            slowest: processing.max().unwrap_or_default(),
        }
    }
}
