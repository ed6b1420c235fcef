//! The `jsonl` source on input it must not trust: a line far longer than `max_line_bytes`, or one
//! that is not a record, fails as an item of its own, keyed by its line, without the process
//! ever holding it; the other lines run.

mod util;

use std::fs::File;
use std::io::{BufWriter, Write};

use util::{Pipeline, TestDir};

/// The giant line: well past the default `max_line_bytes` (16 MiB) and the memory bound below.
const GIANT: usize = 200 * 1024 * 1024;

/// Most the process may hold at its peak while refusing the line: the limit, the binary and its
/// runtime, with room to spare, and far below the line itself.
const PEAK_RSS: u64 = 100 * 1024 * 1024;

/// `in.jsonl`: two normal lines, a `GIANT`-byte one, two normal ones; written in chunks, never
/// whole in this process's memory either.
fn write_input(dir: &TestDir) {
    let file = File::create(dir.join("in.jsonl")).expect("create in.jsonl");
    let mut out = BufWriter::new(file);
    out.write_all(b"{\"key\": \"a\"}\n{\"key\": \"b\"}\n{\"key\": \"giant\", \"pad\": \"")
        .expect("write");
    let chunk = vec![b'x'; 1024 * 1024];
    for _ in 0..GIANT / chunk.len() {
        out.write_all(&chunk).expect("write");
    }
    out.write_all(b"\"}\n{\"key\": \"c\"}\n{\"key\": \"d\"}\n")
        .expect("write");
    out.flush().expect("flush");
}

/// `in.jsonl` (a `jsonl` source with `source_keys`) → `out.jsonl`, marking failures in
/// `rejects.jsonl`; `tables` go after `[pipeline]` (e.g. `[defaults]`).
fn pipeline(name: &str, source_keys: &str, tables: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"

        {tables}

        [[stage]]
        name = "in"
        kind = "jsonl"
        path = "in.jsonl"
        {source_keys}

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        rejects = "rejects.jsonl"
        "#
    ))
}

/// `stagewise run`, asserting its peak RSS stays under [`PEAK_RSS`].
fn run_in_bounded_memory(p: &Pipeline) -> util::Output {
    let (out, peak) = p.cmd("run").spawn().wait_peak_rss();
    eprintln!("peak RSS: {} KiB", peak / 1024);
    assert!(
        peak < PEAK_RSS,
        "peak RSS {} MiB, more than {} MiB\n{}",
        peak / 1024 / 1024,
        PEAK_RSS / 1024 / 1024,
        out.stderr.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    out
}

#[test]
fn a_giant_line_fails_alone_in_bounded_memory_and_the_others_run() {
    let p = pipeline("giant", "", "");
    write_input(&p.dir);
    let out = run_in_bounded_memory(&p);
    std::fs::remove_file(p.dir.join("in.jsonl")).expect("remove the giant input");
    out.assert_code(1);
    assert_eq!(
        p.sink("out.jsonl").unique_keys(),
        ["a", "b", "c", "d"].map(String::from).into(),
        "{out}"
    );
    assert_eq!(p.sink("out.jsonl").len(), 4);
    let status = p.status();
    assert_eq!(status.count("failed"), 1, "{:#}", status.raw);
    let failed = &status.failed[0];
    assert_eq!(
        (failed.key.as_str(), failed.stage.as_str()),
        ("in.jsonl:3", "in")
    );
    assert_eq!(
        failed.error,
        "line longer than `max_line_bytes` (16.0 MiB); not read"
    );
    // Marked like any other failure.
    assert_eq!(p.sink("rejects.jsonl").keys(), ["in.jsonl:3"]);
}

#[test]
fn a_line_that_is_not_a_record_fails_alone() {
    let p = pipeline("broken-lines", "", "");
    p.dir.write(
        "in.jsonl",
        "{\"key\": \"a\"}\n{not json\n[1]\n{\"key\": null}\n{\"key\": \"b\"}\n",
    );
    let out = p.run();
    out.assert_code(1);
    assert_eq!(
        p.sink("out.jsonl").unique_keys(),
        ["a", "b"].map(String::from).into(),
        "{out}"
    );
    let status = p.status();
    let mut failed: Vec<(String, String)> = status
        .failed
        .iter()
        .map(|f| (f.key.clone(), f.error.clone()))
        .collect();
    failed.sort();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert_eq!(failed[0].0, "in.jsonl:2");
    assert!(failed[0].1.starts_with("invalid JSON"), "{failed:?}");
    assert_eq!(
        failed[1],
        ("in.jsonl:3".into(), "expected a JSON object".into())
    );
    assert_eq!(
        failed[2],
        (
            "in.jsonl:4".into(),
            "key field `key` must be a string or an integer".into()
        )
    );
}

#[test]
fn a_flood_of_broken_lines_is_marked_in_bounded_memory_and_holds_back_no_good_record() {
    // 100,000 lines that are not records, then 20 that are: each broken line is an item that
    // fails and is marked, a window of them at a time, and the good ones are not starved.
    const BROKEN: usize = 100_000;
    let p = pipeline("flood", "", "[defaults]\nretry = { attempts = 1 }");
    {
        let file = File::create(p.dir.join("in.jsonl")).expect("create in.jsonl");
        let mut out = BufWriter::new(file);
        for i in 0..BROKEN {
            writeln!(out, "broken line {i}").expect("write");
        }
        for i in 0..20 {
            writeln!(out, "{{\"key\": \"good-{i}\"}}").expect("write");
        }
        out.flush().expect("flush");
    }
    let out = run_in_bounded_memory(&p);
    out.assert_code(1);
    assert_eq!(
        p.sink("out.jsonl").unique_keys().len(),
        20,
        "every good record"
    );
    let rejects = std::fs::read_to_string(p.dir.join("rejects.jsonl")).expect("rejects");
    assert_eq!(
        rejects.lines().count(),
        BROKEN,
        "every broken line marked once"
    );
    assert_eq!(p.status().count("failed"), BROKEN as u64);
}

#[test]
fn a_read_stopped_by_its_deadline_is_never_taken_as_the_batch() {
    // 50 lines, then a line of 40 GiB (a hole in a sparse file: free to make, slow to skip),
    // then 50 more: the read cannot finish within its timeout, and what it read by then must not
    // become the run's batch.
    use std::io::{Seek, SeekFrom};
    let p = pipeline(
        "cut-short",
        "timeout = \"1s\"\nretry = { attempts = 1 }",
        "",
    );
    {
        let mut file = File::create(p.dir.join("in.jsonl")).expect("create in.jsonl");
        for i in 0..50 {
            writeln!(file, "{{\"key\": \"a{i}\"}}").expect("write");
        }
        write!(file, "{{\"key\": \"huge\", \"pad\": \"").expect("write");
        file.seek(SeekFrom::Current(40 << 30))
            .expect("seek past a hole");
        writeln!(file, "\"}}").expect("write");
        for i in 0..50 {
            writeln!(file, "{{\"key\": \"b{i}\"}}").expect("write");
        }
    }
    let out = p.run();
    std::fs::remove_file(p.dir.join("in.jsonl")).expect("remove the sparse input");
    out.assert_code(3);
    out.assert_stderr_contains("timed out");
    assert!(
        !p.dir.join("out.jsonl").exists() || p.sink("out.jsonl").len() == 0,
        "nothing of a cut-short batch ran\n{out}"
    );
}
