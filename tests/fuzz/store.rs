//! The checkpoint reader: a real SQLite store (and the flight record and summary beside it),
//! written by two runs of the binary over items with hostile keys and failures, then damaged
//! in a copy — cut short, bits flipped, pages overwritten, the header changed, a WAL file of
//! garbage put beside it — or rewritten through SQL as no stagewise would write it (unknown
//! states, negative attempts, records that are not JSON, control characters in keys and
//! errors, tables dropped, the schema version changed).
//!
//! Each copy is read by `commands::status` and `commands::runs` (what `stagewise status` and
//! `stagewise runs` do), rendered as text and JSON; one copy in eight is also given to the
//! binary's `status` and `run`. Asserted: nothing panics; a refusal says what is wrong and
//! names the store's file; what is shown holds no character that steers a terminal; the
//! binary ends with a documented exit code, by itself, saying `error:` when it fails.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use stagewise_core::commands;
use stagewise_core::spec;

use crate::budget::{printable_output, stagewise, stated, Target};
use crate::util::TestDir;

const PIPELINE: &str = r#"
[pipeline]
name = "fuzzed"

[checkpoint]
store = "sqlite:state/state.db"
commit_max_items = 4

[[stage]]
name = "src"
kind = "jsonl"
path = "in.jsonl"

[[stage]]
name = "chaos"
kind = "fault"
permanent_rate = 0.3
seed = 11

[[stage]]
name = "out"
kind = "blackhole"
"#;

/// Items with keys and fields a terminal must not see raw, and a line that is not a record.
fn items() -> String {
    let mut lines = Vec::new();
    for i in 0..40 {
        let key = match i % 4 {
            0 => format!("k{i}"),
            1 => format!("k{i}\u{1b}[31m"),
            2 => format!("k{i}\u{202e}"),
            _ => format!("k{i}\n\u{0}"),
        };
        lines.push(
            serde_json::json!({"key": key, "n": i, "text": "x\u{1b}]0;title\u{7}"}).to_string(),
        );
    }
    lines.push("{\"key\": \"cut".to_owned());
    lines.join("\n") + "\n"
}

/// A folder with the pipeline, its input and the state two runs left.
fn pristine(dir: &TestDir) -> PathBuf {
    let base = dir.join("pristine");
    std::fs::create_dir_all(&base).expect("create the folder");
    std::fs::write(base.join("pipeline.toml"), PIPELINE).expect("write the pipeline");
    std::fs::write(base.join("in.jsonl"), items()).expect("write the input");
    for args in [
        &["run", "pipeline.toml"][..],
        &["run", "--fresh", "pipeline.toml"],
    ] {
        let ran = stagewise(&base, args);
        assert_eq!(
            ran.code,
            Some(1),
            "a run with failures exits 1:\n{}",
            ran.stderr()
        );
    }
    assert!(
        base.join("state/state.db").is_file(),
        "the runs made no store"
    );
    base
}

/// The files of `from`, recursively, copied into `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a folder");
    for entry in std::fs::read_dir(from).expect("read a folder") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("its type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// Statements no stagewise would run on its store.
const REWRITES: &[&str] = &[
    "UPDATE items SET state = 'bogus' WHERE seq % 3 = 0",
    "UPDATE items SET state = NULL WHERE seq % 2 = 0",
    "UPDATE items SET attempts = -1",
    "UPDATE items SET attempts = 9223372036854775807",
    "UPDATE items SET attempts = 'many'",
    "UPDATE items SET record = 'not json'",
    "UPDATE items SET record = X'FF00FE'",
    "UPDATE items SET record = NULL",
    "UPDATE items SET record = printf('%.*c', 200000, '[')",
    "UPDATE items SET key = char(27) || '[2J' || key || char(0)",
    "UPDATE items SET key = X'FFFE'",
    "UPDATE items SET error = char(0) || char(27) || '[31m' || printf('%.*c', 100000, 'x')",
    "UPDATE items SET error = X'C3'",
    "UPDATE items SET state = 'failed', error = NULL",
    "UPDATE items SET stage = 'nope'",
    "UPDATE items SET stage = NULL",
    "UPDATE items SET taken = 7, since = -1",
    "UPDATE items SET since = 9223372036854775807",
    "UPDATE items SET seq = seq + 1000000000",
    "UPDATE runs SET status = 'weird'",
    "UPDATE runs SET status = 'running'",
    "UPDATE runs SET items = -5",
    "UPDATE runs SET started_at = 'yesterday', updated_at = NULL",
    "UPDATE runs SET pipeline = char(27) || 'x'",
    "UPDATE runs SET status = 'running'; UPDATE items SET state = 'pending', record = '{\"key\": 1}'",
    "UPDATE runs SET status = 'running'; UPDATE items SET state = 'in_flight', record = 'not json'",
    "UPDATE runs SET status = 'running'; UPDATE items SET state = 'pending', stage = 'gone'",
    "UPDATE runs SET status = 'running'; UPDATE items SET state = 'bogus' WHERE seq % 2 = 0",
    "DELETE FROM runs",
    "DELETE FROM items",
    "DROP TABLE items",
    "DROP TABLE processes",
    "DROP TABLE history",
    "DROP TABLE deaths",
    "UPDATE processes SET record = 'garbage'",
    "UPDATE processes SET record = printf('%.*c', 100000, '{')",
    "UPDATE history SET outcome = char(7), exit_code = 999999, pid = -1, reason = char(27)",
    "UPDATE history SET started_at = 'x', items = -1",
    "INSERT INTO deaths VALUES (1, 'k1', 'chaos', -3, char(27))",
    "INSERT INTO checks VALUES ('fuzzed', -1, 'never')",
    "CREATE TABLE extra (x)",
    "PRAGMA user_version = 99",
    "PRAGMA user_version = 3",
    "PRAGMA user_version = 0",
    "PRAGMA user_version = -1",
];

/// One change to the copied state.
#[derive(Debug, Clone)]
enum Damage {
    /// Cut the store to this share of its length (per mille).
    Truncate(u32),
    /// Flip these bits (offsets modulo the length).
    Flip(Vec<usize>),
    /// Flip bits of the 100-byte header.
    Header(Vec<(u8, u8)>),
    /// Overwrite page `n` (modulo the count) with zeros, random bytes, or another page.
    Page(usize, PageWith),
    /// Put a WAL file of garbage beside the store.
    Wal(Vec<u8>),
    /// Rewrite through SQL.
    Sql(Vec<usize>),
    /// Damage the flight record: cut it, or flip bits.
    Flight(u32, Vec<usize>),
    /// Replace the summary file with these bytes.
    Summary(Vec<u8>),
}

#[derive(Debug, Clone)]
enum PageWith {
    Zeros,
    Bytes(u64),
    Page(usize),
}

fn damage() -> impl Strategy<Value = Vec<Damage>> {
    let bits = prop::collection::vec(any::<usize>(), 1..16);
    let one = prop_oneof![
        2 => (0u32..1000).prop_map(Damage::Truncate),
        3 => bits.clone().prop_map(Damage::Flip),
        2 => prop::collection::vec((0u8..100, 0u8..8), 1..4).prop_map(Damage::Header),
        3 => (any::<usize>(), prop_oneof![
            Just(PageWith::Zeros),
            any::<u64>().prop_map(PageWith::Bytes),
            any::<usize>().prop_map(PageWith::Page),
        ]).prop_map(|(n, w)| Damage::Page(n, w)),
        1 => prop::collection::vec(any::<u8>(), 0..5000).prop_map(Damage::Wal),
        5 => prop::collection::vec(0..REWRITES.len(), 1..4).prop_map(Damage::Sql),
        2 => (0u32..1001, prop::collection::vec(any::<usize>(), 0..16)).prop_map(|(c, b)| Damage::Flight(c, b)),
        1 => prop_oneof![
            Just(b"{\"pid\": \"x\", \"run\": -1}".to_vec()),
            Just(b"\xff\xfe".to_vec()),
            (1usize..100_000).prop_map(|d| "[".repeat(d).into_bytes()),
        ].prop_map(Damage::Summary),
    ];
    prop::collection::vec(one, 1..3)
}

/// The only file of `dir` whose name ends with `suffix`.
fn file_ending(dir: &Path, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(suffix))
}

fn apply(state: &Path, damage: &Damage) {
    let db = state.join("state.db");
    let mut bytes = std::fs::read(&db).unwrap_or_default();
    let page = 4096;
    match damage {
        Damage::Truncate(share) => bytes.truncate(bytes.len() * *share as usize / 1000),
        Damage::Flip(bits) => {
            for bit in bits {
                if !bytes.is_empty() {
                    let at = (bit / 8) % bytes.len();
                    bytes[at] ^= 1 << (bit % 8);
                }
            }
        }
        Damage::Header(flips) => {
            for (at, bit) in flips {
                if let Some(b) = bytes.get_mut(usize::from(*at)) {
                    *b ^= 1 << bit;
                }
            }
        }
        Damage::Page(n, with) => {
            let pages = bytes.len() / page;
            if pages > 0 {
                let at = (n % pages) * page;
                let new: Vec<u8> = match with {
                    PageWith::Zeros => vec![0; page],
                    PageWith::Bytes(seed) => {
                        let mut x = *seed | 1;
                        (0..page)
                            .map(|_| {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                x as u8
                            })
                            .collect()
                    }
                    PageWith::Page(other) => {
                        let from = (other % pages) * page;
                        bytes[from..from + page].to_vec()
                    }
                };
                bytes[at..at + page].copy_from_slice(&new);
            }
        }
        Damage::Wal(garbage) => {
            std::fs::write(state.join("state.db-wal"), garbage).expect("write a WAL");
            return;
        }
        Damage::Sql(statements) => {
            if let Ok(conn) = rusqlite::Connection::open(&db) {
                for &i in statements {
                    // A statement that no longer applies (its table dropped) is skipped.
                    let _ = conn.execute_batch(REWRITES[i]);
                }
            }
            return;
        }
        Damage::Flight(cut, bits) => {
            if let Some(flight) = file_ending(state, ".flight") {
                let mut f = std::fs::read(&flight).expect("read the flight record");
                for bit in bits {
                    if !f.is_empty() {
                        let at = (bit / 8) % f.len();
                        f[at] ^= 1 << (bit % 8);
                    }
                }
                f.truncate(f.len() * *cut as usize / 1000);
                std::fs::write(&flight, f).expect("write the flight record");
            }
            return;
        }
        Damage::Summary(text) => {
            if let Some(summary) = file_ending(state, ".summary.json") {
                std::fs::write(summary, text).expect("write the summary");
            }
            return;
        }
    }
    std::fs::write(&db, bytes).expect("write the store");
}

#[test]
fn damaged_stores_are_read_or_refused_clearly() {
    let target = Target::new("checkpoint store", 8.0, 0x7374_6f72);
    let registry = stagewise::builtin_registry();
    let dir = TestDir::new();
    let pristine = pristine(&dir);
    target.run(damage(), |damages| {
        let case = tempfile::Builder::new()
            .tempdir_in(dir.path())
            .expect("case folder");
        copy_tree(&pristine, case.path());
        for d in &damages {
            apply(&case.path().join("state"), d);
        }
        let path = case.path().join("pipeline.toml");
        let loaded = spec::load_without_plugins(&path, &registry).expect("the pipeline loads");
        let p = &loaded.pipeline;
        match commands::status(p, 20, None) {
            Ok(status) => {
                let text = commands::render_status(p, &status);
                printable_output("status", text.as_bytes())?;
                let json = commands::status_json(p, &status).to_string();
                serde_json::from_str::<serde_json::Value>(&json).expect("status JSON reads back");
            }
            Err(e) => {
                let message = e.to_string();
                stated("status", &message)?;
                prop_assert!(
                    message.contains("state.db"),
                    "status: the store is not named: {}",
                    message
                );
            }
        }
        match commands::runs(p, 20) {
            Ok(history) => {
                printable_output("runs", commands::render_runs(p, &history).as_bytes())?;
            }
            Err(e) => {
                let message = e.to_string();
                stated("runs", &message)?;
                prop_assert!(
                    message.contains("state.db"),
                    "runs: the store is not named: {}",
                    message
                );
            }
        }
        // What a user sees, one case in eight: `status`, then `run` on what is left.
        let digest = damages
            .iter()
            .map(|d| format!("{d:?}").len())
            .sum::<usize>();
        if digest.is_multiple_of(8) {
            for args in [&["status", "pipeline.toml"][..], &["run", "pipeline.toml"]] {
                let ran = stagewise(case.path(), args);
                let what = args[0];
                prop_assert!(
                    matches!(ran.code, Some(0 | 1 | 2 | 3 | 75)),
                    "{} exited {:?}:\n{}",
                    what,
                    ran.code,
                    ran.stderr()
                );
                printable_output(what, &ran.stderr)?;
                printable_output(what, &ran.stdout)?;
                if matches!(ran.code, Some(2 | 3)) {
                    // `error:` said, or an `ERROR` event logged.
                    prop_assert!(
                        ran.stderr().to_lowercase().contains("error"),
                        "{} failed without an error:\n{}",
                        what,
                        ran.stderr()
                    );
                }
            }
        }
        Ok(())
    });
}

/// Found by `damaged_stores_are_read_or_refused_clearly`: a row the store could not read
/// failed `status` with "checkpoint store: Invalid column type Blob at index: 2, name: error",
/// naming no store.
#[test]
fn a_row_the_store_cannot_read_is_refused_naming_the_store() {
    let dir = TestDir::new();
    let base = pristine(&dir);
    let db = base.join("state/state.db");
    let conn = rusqlite::Connection::open(&db).expect("open the store");
    conn.execute_batch("UPDATE items SET error = X'C3'")
        .expect("rewrite a row");
    drop(conn);
    let registry = stagewise::builtin_registry();
    let loaded = spec::load_without_plugins(&base.join("pipeline.toml"), &registry).expect("loads");
    let e = commands::status(&loaded.pipeline, 20, None).expect_err("an unreadable row");
    assert!(e.to_string().contains(&db.display().to_string()), "{e}");
    let ran = stagewise(&base, &["status", "pipeline.toml"]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr());
    assert!(ran.stderr().contains("state/state.db"), "{}", ran.stderr());
}

/// An unfinished run whose items are in a state this build does not know (a damaged or
/// hand-edited store) was "interrupted, run again" (exit 75) on every run, forever, saying
/// nothing: its items were never taken up and never ended.
#[test]
fn items_in_an_unknown_state_are_refused_not_resumed_forever() {
    let dir = TestDir::new();
    let base = pristine(&dir);
    let conn = rusqlite::Connection::open(base.join("state/state.db")).expect("open the store");
    conn.execute_batch("UPDATE runs SET status = 'running'; UPDATE items SET state = 'bogus'")
        .expect("rewrite the rows");
    drop(conn);
    let ran = stagewise(&base, &["run", "pipeline.toml"]);
    assert!(
        matches!(ran.code, Some(2 | 3)),
        "{:?}\n{}",
        ran.code,
        ran.stderr()
    );
    let stderr = ran.stderr();
    assert!(stderr.contains("unknown state `bogus`"), "{stderr}");
    assert!(stderr.contains("state/state.db"), "{stderr}");
}
