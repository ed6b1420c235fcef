//! The `extract` stage end to end: pages in a JSON Lines file → extract → JSON Lines, through
//! the binary, with the article kept, boilerplate dropped and a page without an article skipped;
//! and pages built to be costly to parse failing alone, fast, as "page too complex".

mod util;

use std::time::{Duration, Instant};

use util::Pipeline;

const ARTICLE: &str = r#"<!doctype html><html lang="en"><head><title>Harbour reopens after storm | Coastal Times</title>
<meta property="og:site_name" content="Coastal Times"><meta name="author" content="Ana Ruiz">
<meta property="article:published_time" content="2026-11-28T09:30:00Z"></head><body>
<nav><a href="/">Home</a> <a href="/news">News</a> <a href="/sport">Sport</a></nav>
<div class="cookie-banner">We use cookies to improve your experience. Accept all cookies</div>
<article><h1>Harbour reopens after storm</h1>
<p>The harbour at Port Ellis reopened on Friday morning after four days of repairs to the breakwater damaged in last week's storm, the port authority said.</p>
<p>Fishing boats were the first to leave, followed by the ferry to the islands, which had been cancelled since Monday. Engineers replaced 120 metres of the outer wall.</p>
<p>The authority estimates the cost of the repairs at 2.4 million euros and says a permanent reinforcement will be planned next spring.</p>
</article>
<aside><h3>Related</h3><ul><li><a href="/a">Storm closes schools</a></li><li><a href="/b">Ferry timetable</a></li></ul></aside>
<footer>© 2026 Coastal Times · Privacy · Terms · Contact us</footer></body></html>"#;

const NAV_ONLY: &str = r#"<html><body><nav><a href="/">Home</a> <a href="/news">News</a></nav><footer>© 2026</footer></body></html>"#;

#[test]
fn pages_become_article_text() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "extract-e2e"

        [[stage]]
        name = "pages"
        kind = "jsonl"
        path = "pages.jsonl"
        key = "id"

        [[stage]]
        name = "extract"
        kind = "extract"
        concurrency = 2

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let lines = [("story", ARTICLE), ("menu", NAV_ONLY), ("empty", "")]
        .iter()
        .map(|(id, html)| serde_json::json!({"id": id, "html": html}).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    p.dir.write("pages.jsonl", lines + "\n");

    p.run().assert_code(0);
    let status = p.status();
    assert_eq!(status.count("done"), 1, "{:?}", status.counts);
    assert_eq!(status.count("skipped"), 2, "{:?}", status.counts);
    let skipped = status.raw["skipped"]
        .as_array()
        .expect("skipped list")
        .clone();
    for s in &skipped {
        assert!(
            s["reason"]
                .as_str()
                .unwrap_or("")
                .contains("no article text"),
            "{s}"
        );
    }

    let sink = p.sink("out.jsonl");
    assert_eq!(sink.keys(), ["story"]);
    let record = &sink.records[0];
    let text = record["text"].as_str().expect("text");
    for kept in [
        "harbour at Port Ellis reopened",
        "120 metres",
        "2.4 million euros",
    ] {
        assert!(text.contains(kept), "{kept:?} missing from {text:?}");
    }
    for dropped in ["cookies", "Ferry timetable", "Privacy", "Sport"] {
        assert!(!text.contains(dropped), "{dropped:?} kept in {text:?}");
    }
    assert_eq!(record["author"], "Ana Ruiz");
    assert_eq!(record["published"], "2026-11-28");
    assert_eq!(record["site_name"], "Coastal Times");
}

/// Pages whose shape would cost the engines from seconds to minutes each: every one fails alone
/// with "page too complex", quickly, and the honest page beside them is extracted.
#[test]
fn hostile_pages_fail_alone_and_the_run_finishes() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "extract-hostile"

        [[stage]]
        name = "pages"
        kind = "jsonl"
        path = "pages.jsonl"
        key = "id"

        [[stage]]
        name = "download"
        kind = "http-download"
        base_url = "site"

        [[stage]]
        name = "extract"
        kind = "extract"
        concurrency = 2
        timeout = "5s"

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let deep_block = format!("{}x{}", "<div>".repeat(1_999), "</div>".repeat(1_999));
    let story = "<p>The lighthouse keeper logged the storm's arrival at dawn.</p>";
    let hostile = [
        // HTML ignores the slash of `<div/>`: each opens a div inside the last.
        ("self-closing-5k", "<div/>".repeat(5_000)),
        ("self-closing-20k", "<div/>".repeat(20_000)),
        // A stray end tag closes nothing.
        ("stray-end-20k", "<div></x>".repeat(20_000)),
        ("deep-blocks", deep_block.repeat(40)),
        // Formatting elements left open, and a table nested in its own cells.
        ("unclosed-b", "<b>".repeat(50_000)),
        ("deep-table", "<table><tr><td>".repeat(5_000)),
    ];
    let mut lines = vec![serde_json::json!({"id": "story", "url": "story.html"}).to_string()];
    p.dir.write("site/story.html", ARTICLE);
    for (id, shape) in &hostile {
        p.dir.write(
            &format!("site/{id}.html"),
            format!("<html><body>{shape}{story}</body></html>"),
        );
        lines.push(serde_json::json!({"id": id, "url": format!("{id}.html")}).to_string());
    }
    p.dir.write("pages.jsonl", lines.join("\n") + "\n");

    let started = Instant::now();
    let out = p.cmd("run").timeout(Duration::from_secs(120)).output();
    out.assert_code(1);
    // A generous bound: before the check, these pages held the stage's threads for minutes.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the run took {:?}",
        started.elapsed()
    );

    let status = p.status();
    assert_eq!(status.count("done"), 1, "{:?}", status.counts);
    assert_eq!(
        status.count("failed"),
        hostile.len() as u64,
        "{:?}",
        status.counts
    );
    assert_eq!(status.count("pending"), 0, "{:?}", status.counts);
    let mut failed: Vec<&str> = status.failed.iter().map(|f| f.key.as_str()).collect();
    failed.sort_unstable();
    let mut want: Vec<&str> = hostile.iter().map(|(id, _)| *id).collect();
    want.sort_unstable();
    assert_eq!(failed, want);
    for f in &status.failed {
        assert_eq!(f.stage, "extract", "{f:?}");
        assert_eq!(f.attempts, 1, "a permanent error is not retried: {f:?}");
        assert!(f.error.contains("page too complex: "), "{f:?}");
    }

    let sink = p.sink("out.jsonl");
    assert_eq!(sink.keys(), ["story"]);
    let text = sink.records[0]["text"].as_str().expect("text");
    assert!(text.contains("harbour at Port Ellis reopened"), "{text}");
}
