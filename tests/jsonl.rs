//! The `jsonl` source on input it must not trust: a line far longer than `max_line_bytes` fails
//! the read by its line number without the process ever holding it.

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

#[test]
fn a_giant_line_fails_the_read_by_its_number_in_bounded_memory() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "giant"

        [[stage]]
        name = "in"
        kind = "jsonl"
        path = "in.jsonl"

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    write_input(&p.dir);
    let (out, peak) = p.cmd("run").spawn().wait_peak_rss();
    std::fs::remove_file(p.dir.join("in.jsonl")).expect("remove the giant input");
    // Like any line that is not a record, it aborts the run before an item is taken.
    out.assert_code(3);
    eprintln!("peak RSS: {} KiB", peak / 1024);
    out.assert_stderr_contains(
        "in.jsonl:3: line longer than `max_line_bytes` (16.0 MiB): raise `max_line_bytes` or fix the file",
    );
    assert!(
        peak < PEAK_RSS,
        "peak RSS {} MiB, more than {} MiB\n{out}",
        peak / 1024 / 1024,
        PEAK_RSS / 1024 / 1024
    );
    assert!(
        p.sink("out.jsonl").keys().is_empty(),
        "no item was processed\n{out}"
    );

    // Without that line the same file is a batch like any other.
    p.dir.write(
        "in.jsonl",
        "{\"key\": \"a\"}\n{\"key\": \"b\"}\n{\"key\": \"c\"}\n{\"key\": \"d\"}\n",
    );
    p.run().assert_code(0);
    assert_eq!(p.sink("out.jsonl").keys(), ["a", "b", "c", "d"]);
}
