//! The log is never a reason to lose the run: with nobody reading stderr any more (a pipe whose
//! reader exited, a full disk), `run` goes on, finishes and exits with its own code.

mod util;

use std::process::{Command, Stdio};
use std::time::Duration;

use util::Pipeline;

const PIPELINE: &str = r#"
    [pipeline]
    name = "closed-stderr"
    heartbeat = "100ms"

    [[stage]]
    name = "src"
    kind = "generate"
    count = 30

    [[stage]]
    name = "nap"
    kind = "sleep"
    duration = "40ms"
    concurrency = 2

    [[stage]]
    name = "out"
    kind = "jsonl"
    path = "out.jsonl"
"#;

#[test]
fn a_run_whose_stderr_reader_is_gone_finishes_and_exits_0() {
    let p = Pipeline::new(PIPELINE);
    let mut child = Command::new(util::bin())
        .args(["run", "pipeline.toml"])
        .current_dir(p.dir.path())
        .env("STAGEWISE_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stagewise");
    // The reader goes away at once: every log event after this is a write to a closed pipe.
    drop(child.stderr.take());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    let status = p.status();
    assert_eq!(status.count("done"), 30, "{:?}", status.counts);
    assert_eq!(p.sink("out.jsonl").keys().len(), 30);
}

/// `validate` with stderr on /dev/full (every write fails): its exit code.
fn validate_into_a_full_stderr(pipeline: &str) -> Option<i32> {
    let p = Pipeline::new(pipeline);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = Command::new(util::bin())
        .args(["validate", "pipeline.toml"])
        .current_dir(p.dir.path())
        .stderr(full)
        .output()
        .expect("run stagewise validate");
    out.status.code()
}

#[test]
fn validate_with_a_full_stderr_still_exits_with_its_code() {
    // Valid: the message saying so cannot be written, and that is no error.
    assert_eq!(
        validate_into_a_full_stderr(&PIPELINE.replace("count = 30", "count = 0")),
        Some(0)
    );
    assert_eq!(
        validate_into_a_full_stderr(&PIPELINE.replace("count = 30", "count = \"x\"")),
        Some(2)
    );
}
