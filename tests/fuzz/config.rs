//! `pipeline.toml` reading and validation: real pipeline files (the root one, every example,
//! and one that sets every section), mutated line by line — lines dropped, doubled, swapped,
//! values replaced by hostile ones (huge numbers, deep nesting, NULs, escapes, bad durations),
//! hostile lines inserted, bytes that are not UTF-8 — then loaded with `spec::load_with` and
//! planned with `spec::plan_with`, the functions behind `validate`, `run` and `plan`; and the
//! `STAGEWISE_…` overrides given hostile values.
//!
//! Asserted: nothing panics; a refusal has at least one error, and every diagnostic names the
//! file and has a message; a line number it gives is one of the file's (or the line after the
//! last); an accepted pipeline has a name and a source first, and plans too. One case in eight
//! also goes through `stagewise validate`: it exits 0 or 2, and what it prints holds no
//! character that steers a terminal (diagnostics quote the file's values, escaped when printed).

use std::path::Path;

use proptest::prelude::*;
use stagewise_core::spec::{self, ConfigError, Place, Severity};
use stagewise_core::stage::Role;

use crate::budget::{printable_output, stagewise, stated, Target};
use crate::util::{workspace_root, TestDir};

/// A file that sets every section, beside the shipped ones.
const FULL: &str = r#"
[pipeline]
name = "full"
batch_size = 100
max_run_time = "4m"
shutdown_grace = "20s"
max_failures = "10%"
heartbeat = "10s"
watchdog = "1m"
interrupted_exit_code = 75
timeouts_outlast_grace = false

[checkpoint]
store = "sqlite:.stagewise/state.db"
commit_interval = "200ms"
commit_max_items = 500
lease_ttl = "1m"

[telemetry]
listen = "127.0.0.1:0"
push = "http://127.0.0.1:9091"
push_timeout = "5s"

[defaults]
timeout = "30s"
retry = { attempts = 3, initial = "500ms", max = "30s", multiplier = 2.0, jitter = true }

[[stage]]
name = "items"
kind = "jsonl"
path = "in.jsonl"
key = "id"
max_line_bytes = "1MiB"

[[stage]]
name = "wait"
kind = "sleep"
duration = "10ms"
jitter = "5ms"
concurrency = 4
item_deadline = "1m"
rate_limit = "60/min"
breaker = { failures = 5, window = "30s", cool_down = "10s", on_open = "wait" }

[[stage]]
name = "chaos"
kind = "fault"
error_rate = 0.1
seed = 7
retry = { attempts = 5, on = ["timeout"], max_retry_after = "1m" }

[[stage]]
name = "out"
kind = "jsonl"
path = "out.jsonl"
rejects = "rejects.jsonl"
"#;

/// Values a key may be given instead of its own: TOML text.
fn hostile_value() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "\"\"",
        "\"0\"",
        "0",
        "-1",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551616",
        "1e309",
        "-0.0",
        "nan",
        "inf",
        "-inf",
        "true",
        "1979-05-27T07:32:00Z",
        "07:32:00",
        "\"99999999999999999999h\"",
        "\"18446744073709551615s\"",
        "\"584542046091y\"",
        "\"1ns\"",
        "\"-5s\"",
        "\"5 MB\"",
        "\"18446744073709551615B\"",
        "\"99999999999999999999MiB\"",
        "\"0%\"",
        "\"150%\"",
        "\"-1%\"",
        "\"nan%\"",
        "\"1e308%\"",
        "\"0/min\"",
        "\"1/0s\"",
        "\"4294967296/s\"",
        "\"\\u0000\"",
        "\"a\\u0000b\"",
        "\"\\u001b[31mred\\u001b[0m\"",
        "\"line\\nbreak\"",
        "\"\\r\"",
        "\"\\u202e\"",
        "\"${NOPE}\"",
        "\"${\"",
        "\"${}\"",
        "\"$${DATABASE_URL}\"",
        "\"${DATABASE_URL}${DATABASE_URL}\"",
        "\"${HOSTILE}\"",
        "\"sqlite:\"",
        "\"sqlite:/\"",
        "\"postgres://\"",
        "\"postgres://u:secret@[::1\"",
        "\"plugin\"",
        "\"generate\"",
        "\"jsonl\"",
        "\"blackhole\"",
        "[]",
        "[1, \"a\"]",
        "{}",
        "{ attempts = 0 }",
        "{ attempts = 4294967296 }",
        "{ multiplier = -1.0 }",
        "{ on = [\"nope\"] }",
        "{ failures = 0 }",
        "'''multi\nline'''",
        "\"\\x\"",
        "\"unterminated",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        6 => fixed,
        1 => (1usize..200_000).prop_map(|n| format!("\"{}\"", "a".repeat(n))),
        1 => (1usize..5_000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        1 => (1usize..5_000).prop_map(|n| format!("{}1{}", "{ a = ".repeat(n), " }".repeat(n))),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| format!("{f:?}")),
        1 => "[a-z0-9 _./:%${}-]{0,40}".prop_map(|s| format!("{s:?}")),
    ]
}

/// Lines that may be inserted anywhere.
fn hostile_line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "[[stage]]",
            "[stage]",
            "[pipeline]",
            "[checkpoint]",
            "[telemetry]",
            "[defaults]",
            "[defaults.retry]",
            "[[pipeline]]",
            "[unknown]",
            "stage = 1",
            "pipeline = \"x\"",
            "name = \"dup\"",
            "kind = \"generate\"",
            "count = 5",
            "x.y.z = 1",
            "retry.attempts = 2",
            "\"\\u0000\" = 1",
            "\"\" = 1",
            "[\"\\u001b[2J\"]",
            "concurrency = 0",
            "timeout = \"0s\"",
            "=",
            "[",
            "[[",
            "a = ",
            "\u{feff}",
            "\\",
        ])
        .prop_map(str::to_owned),
        1 => ("[a-z_]{1,12}", hostile_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => (1usize..100_000).prop_map(|n| format!("{} = 1", "k".repeat(n))),
        1 => (1usize..3_000).prop_map(|n| format!("{} = 1", vec!["a"; n].join("."))),
    ]
}

/// One change to a file's lines (indices are taken modulo the number of lines).
#[derive(Debug, Clone)]
enum Mutation {
    Drop(usize),
    Double(usize),
    Swap(usize, usize),
    Value(usize, String),
    Insert(usize, String),
    TableToArray(usize),
    Truncate(usize),
    Bytes(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        2 => at.prop_map(Mutation::Drop),
        2 => at.prop_map(Mutation::Double),
        1 => (at, at).prop_map(|(a, b)| Mutation::Swap(a, b)),
        6 => (at, hostile_value()).prop_map(|(a, v)| Mutation::Value(a, v)),
        3 => (at, hostile_line()).prop_map(|(a, l)| Mutation::Insert(a, l)),
        1 => at.prop_map(Mutation::TableToArray),
        1 => at.prop_map(Mutation::Truncate),
        1 => (at, prop::collection::vec(
            prop_oneof![Just(0u8), Just(0xff), Just(0xc3), Just(0xed), Just(b'\r'), Just(0x1b), any::<u8>()],
            1..8,
        )).prop_map(|(a, b)| Mutation::Bytes(a, b)),
    ]
}

/// `text` with `mutations` applied, as bytes (some mutations leave UTF-8).
fn mutate(text: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut tail: Option<(usize, Vec<u8>)> = None;
    for m in mutations {
        let n = lines.len().max(1);
        match m {
            Mutation::Drop(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Mutation::Double(i) if !lines.is_empty() => {
                let line = lines[i % n].clone();
                lines.insert(i % n, line);
            }
            Mutation::Swap(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
            Mutation::Value(i, value) => {
                // The `n`th line that sets a key.
                let setting: Vec<usize> = (0..lines.len())
                    .filter(|&j| {
                        let l = lines[j].trim_start();
                        !l.starts_with('[') && !l.starts_with('#') && l.contains('=')
                    })
                    .collect();
                if let Some(&j) = setting.get(i % setting.len().max(1)) {
                    let key = lines[j].split('=').next().unwrap_or("x").to_owned();
                    lines[j] = format!("{key}= {value}");
                }
            }
            Mutation::Insert(i, line) => lines.insert(i % (lines.len() + 1), line.clone()),
            Mutation::TableToArray(i) => {
                let tables: Vec<usize> = (0..lines.len())
                    .filter(|&j| lines[j].starts_with('['))
                    .collect();
                if let Some(&j) = tables.get(i % tables.len().max(1)) {
                    lines[j] = if lines[j].starts_with("[[") {
                        lines[j].replace("[[", "[").replace("]]", "]")
                    } else {
                        lines[j].replace('[', "[[").replace(']', "]]")
                    };
                }
            }
            Mutation::Truncate(at) | Mutation::Bytes(at, _) => {
                let bytes = match m {
                    Mutation::Bytes(_, b) => b.clone(),
                    _ => Vec::new(),
                };
                tail = Some((*at, bytes));
            }
            _ => {}
        }
    }
    let mut out = lines.join("\n").into_bytes();
    out.push(b'\n');
    match tail {
        Some((at, bytes)) if bytes.is_empty() => out.truncate(at % (out.len() + 1)),
        Some((at, bytes)) => {
            let at = at % (out.len() + 1);
            out.splice(at..at, bytes);
        }
        None => {}
    }
    out
}

/// What `${VAR}` reads in these tests: some variables set, one hostile, the rest unset.
fn lookup(name: &str) -> Option<String> {
    match name {
        "DATABASE_URL" | "STAGEWISE_TEST_PG" => {
            Some("postgres://app:secret@127.0.0.1:5432/app".into())
        }
        "OPENAI_API_KEY" | "ANTHROPIC_API_KEY" | "LLM_API_KEY" => Some("sk-test".into()),
        "HOSTILE" => Some("a\u{0}b\u{1b}[2J\nc${HOSTILE}".into()),
        _ => None,
    }
}

/// The shipped pipeline files, and [`FULL`].
fn corpus() -> Vec<(String, String)> {
    let root = workspace_root();
    let mut files = vec![("full".to_owned(), FULL.to_owned())];
    let mut paths = vec![root.join("pipeline.toml")];
    for entry in std::fs::read_dir(root.join("examples")).expect("read examples/") {
        let path = entry.expect("examples/ entry").path().join("pipeline.toml");
        if path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        files.push((path.display().to_string(), text));
    }
    files
}

/// The diagnostics of a refused file are clear.
fn check_refusal(path: &Path, text: &[u8], e: &ConfigError) -> Result<(), TestCaseError> {
    prop_assert!(
        e.diagnostics.iter().any(|d| d.severity == Severity::Error),
        "refused without an error: {:?}",
        e.diagnostics
    );
    let shown = path.display().to_string();
    let lines = text.split(|&b| b == b'\n').count() as u64;
    for d in &e.diagnostics {
        prop_assert_eq!(&d.file, &shown);
        stated("diagnostic", &d.message)?;
        if let Some(Place::File { line, col }) = &d.place {
            prop_assert!(
                (1..=lines + 1).contains(&(*line as u64)) && *col >= 1,
                "{d}: line {line} col {col} is not in a file of {lines} lines"
            );
        }
    }
    Ok(())
}

#[test]
fn mutated_pipeline_files_load_or_are_refused_clearly() {
    let target = Target::new("pipeline.toml", 6.0, 0x7069_7065);
    let registry = stagewise::builtin_registry();
    let corpus = corpus();
    let dir = TestDir::new();
    let strategy = (0..corpus.len(), prop::collection::vec(mutation(), 1..5));
    target.run(strategy, |(file, mutations)| {
        let (origin, text) = &corpus[file];
        let bytes = mutate(text, &mutations);
        let case = tempfile::Builder::new()
            .tempdir_in(dir.path())
            .expect("case folder");
        let path = case.path().join("pipeline.toml");
        std::fs::write(&path, &bytes).expect("write the pipeline file");
        // Plugin libraries are loaded only where no mutation can point a stage at a file
        // that is one: the shipped plugin example names its library.
        let loads_plugins = !origin.contains("plugin");
        let loaded = if loads_plugins {
            Some(spec::load_with(&path, &registry, &lookup, &[]))
        } else {
            None
        };
        let planned = spec::plan_with(&path, &registry, &lookup, &[]);
        if let Some(loaded) = loaded {
            match loaded {
                Ok(loaded) => {
                    let p = &loaded.pipeline;
                    prop_assert!(!p.name.is_empty(), "a pipeline without a name loaded");
                    prop_assert!(!p.stages.is_empty(), "a pipeline without stages loaded");
                    prop_assert_eq!(p.stages[0].role, Role::Source);
                    for w in &loaded.warnings {
                        stated("warning", &w.message)?;
                    }
                    prop_assert!(
                        planned.is_ok(),
                        "loads but does not plan: {:?}",
                        planned.err()
                    );
                }
                Err(e) => check_refusal(&path, &bytes, &e)?,
            }
        }
        if let Err(e) = &planned {
            check_refusal(&path, &bytes, e)?;
        }
        // What a user sees: one case in eight also through `stagewise validate`.
        if bytes.len().is_multiple_of(8) {
            let ran = stagewise(case.path(), &["validate", "pipeline.toml"]);
            prop_assert!(
                matches!(ran.code, Some(0 | 2)),
                "validate exited {:?}:\n{}",
                ran.code,
                ran.stderr()
            );
            printable_output("validate's stderr", &ran.stderr)?;
            printable_output("validate's stdout", &ran.stdout)?;
        }
        Ok(())
    });
}

#[test]
fn hostile_overrides_are_refused_clearly() {
    let target = Target::new("overrides", 2.0, 0x6f76_6572);
    let registry = stagewise::builtin_registry();
    let dir = TestDir::new();
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, FULL).expect("write the pipeline file");
    let names = prop::sample::select(vec![
        "STAGEWISE_PIPELINE__MAX_RUN_TIME",
        "STAGEWISE_PIPELINE__BATCH_SIZE",
        "STAGEWISE_PIPELINE__NAME",
        "STAGEWISE_PIPELINE__MAX_FAILURES",
        "STAGEWISE_CHECKPOINT__STORE",
        "STAGEWISE_CHECKPOINT__COMMIT_MAX_ITEMS",
        "STAGEWISE_STAGE__WAIT__TIMEOUT",
        "STAGEWISE_STAGE__WAIT__CONCURRENCY",
        "STAGEWISE_STAGE__CHAOS__ERROR_RATE",
        "STAGEWISE_STAGE__NOPE__TIMEOUT",
        "STAGEWISE_STAGE____TIMEOUT",
        "STAGEWISE_STAGE__WAIT__",
        "STAGEWISE_PIPELINE__",
        "STAGEWISE_",
        "STAGEWISE_TELEMETRY__LISTEN",
        "STAGEWISE_DEFAULTS__RETRY",
    ]);
    let value = prop_oneof![
        hostile_value(),
        "\\PC{0,30}",
        prop::collection::vec(any::<char>(), 0..20).prop_map(|c| c.into_iter().collect()),
    ];
    target.run(prop::collection::vec((names, value), 1..4), |overrides| {
        let overrides: Vec<(String, String)> = overrides
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        match spec::load_with(&path, &registry, &lookup, &overrides) {
            Ok(loaded) => prop_assert!(!loaded.pipeline.stages.is_empty()),
            Err(e) => {
                prop_assert!(!e.diagnostics.is_empty());
                for d in &e.diagnostics {
                    stated("diagnostic", &d.message)?;
                }
            }
        }
        Ok(())
    });
}
