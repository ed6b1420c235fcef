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

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use common::cli;
use common::process::{measure, Stdout};
use common::report::{progress, thousands};
use common::stagewise::{self, SINK};
use common::stats::{Median, Run};

/// Threads of the no-op stage's blocking pool.
const CONCURRENCY: usize = 4;
/// Runs of each variant; the medians are compared.
const DEFAULT_RUNS: usize = 5;
/// The package whose library has the `noop` plugin kind.
const PLUGIN_PACKAGE: &str = "stagewise-fixture-misbehave";

fn main() -> ExitCode {
    let args = cli::args();
    let (runs, items) = if args.bench {
        (DEFAULT_RUNS, 100_000)
    } else {
        (1, 2_000)
    };
    match args.read(runs, |_, _| false) {
        Ok(runs) => cli::exit(compare(items, runs)),
        Err(_) => cli::usage("cargo bench --bench plugin [-- --runs N]"),
    }
}

/// Run both variants `runs` times on `items` items, alternating, and print their medians.
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
        let (fastest, slowest) = m.window_range.unwrap_or_default();
        println!(
            "{name:<52} {runs:>4} {:>7.3} s   {:>7.3} s {:>10}  {:.3}–{:.3} s",
            m.wall.as_secs_f64(),
            processing(m).as_secs_f64(),
            thousands(items as f64 / processing(m).as_secs_f64()),
            fastest.as_secs_f64(),
            slowest.as_secs_f64(),
        );
    }
    let (plugin, native) = (processing(&plugin), processing(&native));
    let extra = (plugin.as_secs_f64() - native.as_secs_f64()) / items as f64;
    println!(
        "plugin / compiled-in: processing time × {:.3}, throughput × {:.3}; {:+.2} µs per item",
        plugin.as_secs_f64() / native.as_secs_f64(),
        native.as_secs_f64() / plugin.as_secs_f64(),
        extra * 1e6
    );
    Ok(())
}

/// The median processing window (from the `run started` event to the `summary` event: the
/// items' work and the last commit, without start-up and the batch); every run has one.
fn processing(m: &Median) -> Duration {
    m.window.unwrap_or_default()
}

/// The compiled-in no-op: a blocking `sleep` of nothing.
fn native_stage() -> String {
    "kind = \"sleep\"\nduration = \"0s\"\nblocking = true".to_owned()
}

/// The plugin no-op: the `noop` kind of the library at `library`.
fn plugin_stage(library: &Path) -> String {
    format!(
        "kind = \"plugin\"\npath = '{}'\nplugin_kind = \"noop\"",
        library.display()
    )
}

/// `generate` → the no-op `stage` → `blackhole`.
fn pipeline(items: u64, stage: &str) -> String {
    stagewise::pipeline(
        "timeout = \"30s\"",
        &stagewise::generate(items),
        &format!(
            r#"[[stage]]
name = "noop"
{stage}
concurrency = {CONCURRENCY}

{SINK}concurrency = 64
"#
        ),
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

/// Run the `stagewise` binary on `pipeline` in a fresh directory; fails unless every item is
/// done and the log has the processing window's events.
fn run(name: &str, pipeline: &str, items: u64) -> Result<Run, String> {
    let dir = stagewise::target_tmp()
        .join("stagewise-bench-plugin")
        .join(format!("{name}-{}", std::process::id()));
    let cmd = stagewise::prepare(&dir, pipeline)?;
    let log = dir.join(stagewise::LOG);
    let measured = measure(cmd, Some(&log), Stdout::Discard)
        .map_err(|e| format!("{name}: cannot run stagewise: {e}"))?;
    let summary = stagewise::all_done(name, &dir, &measured, items, "items")?;
    if measured.window().is_none() {
        return Err(format!(
            "{name}: no `run started` or no `summary` event in the log; see {}",
            log.display()
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Run::new(&measured, items, summary))
}
