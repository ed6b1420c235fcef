//! Times the stage's engine on pages built to be expensive to parse or extract (deep nesting,
//! stray tags, unclosed formatting elements, huge attribute lists, …), each up to 1 MB, one
//! page per child process so that a slow one can be stopped. The budget is about 1 s of CPU a
//! page, in release.
//!
//!     cargo run --release -p stagewise-stages-extract --example hostile -- \
//!         [SHAPE [ENGINE]] [--limit SECONDS]
//!
//! Without a shape, every shape runs (each in a child killed after `--limit`, default 20 s)
//! and a table of CPU seconds and outcomes is printed. `ENGINE` is `stage` (the default: the
//! whole extraction, the complexity check included) or one of the three extractors alone,
//! without the check: `trafilatura`, `rs-trafilatura`, `dom_smoothie`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A paragraph of article text, so that the pages that are fine have something to extract.
const STORY: &str = "<p>The harbour at Port Ellis reopened on Friday morning after four days of \
repairs to the breakwater damaged in last week's storm, the port authority said. Fishing boats \
were the first to leave, followed by the ferry to the islands.</p>";

/// `unit` repeated as often as fits in `bytes`, between `head` and `tail`.
fn fill(head: &str, unit: &str, tail: &str, bytes: usize) -> String {
    let n = bytes.saturating_sub(head.len() + tail.len()) / unit.len();
    times(head, unit, n, tail)
}

fn times(head: &str, unit: &str, n: usize, tail: &str) -> String {
    let mut page = String::with_capacity(head.len() + unit.len() * n + tail.len());
    page.push_str(head);
    for _ in 0..n {
        page.push_str(unit);
    }
    page.push_str(tail);
    page
}

fn numbered(head: &str, unit: impl Fn(usize) -> String, tail: &str, bytes: usize) -> String {
    let mut page = String::from(head);
    let mut i = 0;
    while page.len() + tail.len() < bytes {
        page.push_str(&unit(i));
        i += 1;
    }
    page.push_str(tail);
    page
}

/// Blocks of `depth` nested `<div>`s around a word, as many as fit in `bytes`.
fn blocks(depth: usize, bytes: usize) -> String {
    let block = format!("{}x{}", "<div>".repeat(depth), "</div>".repeat(depth));
    fill("<html><body>", &block, "</body></html>", bytes)
}

/// Fourteen `<div>`s of 9,999 `unit`s each, after an article and an aside of other text (the
/// two fast engines then disagree, and the slow one would run).
fn runs_beside_an_aside(unit: &str) -> String {
    let comment = format!(
        "<p>Readers comment: {}</p>",
        (0..300).map(|i| format!("word{i} ")).collect::<String>()
    );
    format!(
        "<html><body><aside>{}</aside><main>{}</main>{}</body></html>",
        comment.repeat(3),
        STORY.repeat(3),
        format!("<div>{}</div>", unit.repeat(9_999)).repeat(14)
    )
}

/// Every shape: its name and its page.
fn shapes() -> Vec<(&'static str, String)> {
    // `HOSTILE_BYTES` changes the size of the "-1mb" pages, to see how a cost grows.
    let mb: usize = std::env::var("HOSTILE_BYTES")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1_000_000);
    let body = "<html><body>";
    let end = "</body></html>";
    let deep_block = format!("{}{STORY}{}", "<div>".repeat(1_999), "</div>".repeat(1_999));
    vec![
        ("div-self-closing-5k", times(body, "<div/>", 5_000, STORY)),
        ("div-self-closing-20k", times(body, "<div/>", 20_000, STORY)),
        ("div-stray-end-20k", times(body, "<div></x>", 20_000, STORY)),
        ("deep-blocks-40x1999", times(body, &deep_block, 40, end)),
        ("blocks-depth-100-1mb", blocks(100, mb)),
        ("blocks-depth-300-1mb", blocks(300, mb)),
        ("blocks-depth-500-1mb", blocks(500, mb)),
        (
            "deep-then-wide-1mb",
            fill(
                &format!("{body}{}", "<div>".repeat(500)),
                "<p>x</p>",
                end,
                mb,
            ),
        ),
        ("div-self-closing-1mb", fill(body, "<div/>", STORY, mb)),
        ("div-open-1mb", fill(body, "<div>", STORY, mb)),
        ("b-unclosed-50k", times(body, "<b>", 50_000, STORY)),
        ("b-unclosed-1mb", fill(body, "<b>", STORY, mb)),
        (
            "formatting-distinct-1mb",
            numbered(body, |i| format!("<b id={i}>"), STORY, mb),
        ),
        (
            "formatting-popped-1mb",
            numbered(
                body,
                |i| format!("<div><b id={i}><i id={i}><u id={i}></div>x"),
                end,
                mb,
            ),
        ),
        ("a-nested-1mb", fill(body, "<a href=x>", STORY, mb)),
        (
            "siblings-h2-text-74k",
            times("<html><body><div>", "<h2></h2>w", 74_253, end),
        ),
        (
            "siblings-li-74k",
            times("<html><body><div>", "<li>w</li>", 74_253, end),
        ),
        (
            "siblings-h2-p-37k",
            times("<html><body><div>", "<h2>h</h2><p>w</p>", 37_236, end),
        ),
        // Fourteen runs of 9,999 siblings, beside text the fast engines disagree on.
        ("siblings-br-14x9999-aside", runs_beside_an_aside("<br>")),
        ("siblings-a-14x9999-aside", runs_beside_an_aside("<a></a>")),
        ("a-misnested-1mb", fill(body, "<a><p>x", end, mb)),
        ("misnested-bi-1mb", fill(body, "<b><i>x</b>y</i>", end, mb)),
        ("table-deep-1mb", fill(body, "<table><tr><td>", STORY, mb)),
        (
            "table-foster-1mb",
            fill("<html><body><table>", "<div>x", end, mb),
        ),
        (
            "table-foster-text-1mb",
            fill("<html><body><table><tr>", "x<b>y</b>", end, mb),
        ),
        (
            "table-rows-1mb",
            fill("<html><body><table>", "<tr><td>x</td></tr>", "</table>", mb),
        ),
        ("list-deep-1mb", fill(body, "<ul><li>", STORY, mb)),
        (
            "list-items-1mb",
            fill("<html><body><ul>", "<li>item text", end, mb),
        ),
        ("siblings-div-1mb", fill(body, "<div>x</div>", end, mb)),
        ("siblings-span-1mb", fill(body, "<span>a</span> ", end, mb)),
        (
            "p-in-one-div-1mb",
            fill("<html><body><div>", "<p>word word", end, mb),
        ),
        (
            "p-closed-in-one-div-1mb",
            fill("<html><body><div>", &format!("{STORY}\n"), end, mb),
        ),
        (
            "attributes-one-tag-1mb",
            numbered(
                "<html><body><div ",
                |i| format!("a{i}=1 "),
                &format!(">{STORY}{end}"),
                mb,
            ),
        ),
        (
            "attributes-html-tags-1mb",
            numbered(
                body,
                |i| format!("<html a{i}=1>"),
                &format!("{STORY}{end}"),
                mb,
            ),
        ),
        (
            "attributes-duplicate-1mb",
            fill("<html><body><div ", "a=1 ", &format!(">{STORY}{end}"), mb),
        ),
        ("text-words-1mb", fill("<html><body><p>", "word ", end, mb)),
        ("text-one-word-1mb", fill("<html><body><p>", "a", end, mb)),
        ("text-brackets-1mb", fill("<html><body><p>", "[", end, mb)),
        (
            "text-link-brackets-1mb",
            fill("<html><body><p>", "[x](", end, mb),
        ),
        (
            "text-entities-1mb",
            fill("<html><body><p>", "&amp;", end, mb),
        ),
        ("comments-1mb", fill(body, "<!--x-->", STORY, mb)),
        ("comment-open-1mb", fill("<html><body><!--", "x", "", mb)),
        ("template-deep-1mb", fill(body, "<template>", STORY, mb)),
        (
            "template-siblings-1mb",
            fill(body, "<template>x</template>", STORY, mb),
        ),
        (
            "select-options-1mb",
            fill("<html><body><select>", "<option>x", end, mb),
        ),
        ("svg-deep-1mb", fill(body, "<svg>", STORY, mb)),
        (
            "svg-self-closing-1mb",
            fill("<html><body><svg>", "<g/>", end, mb),
        ),
        ("script-1mb", fill("<html><body><script>", "<div>", end, mb)),
        ("headings-1mb", fill(body, "<h1>x<h2>y", end, mb)),
        ("br-1mb", fill("<html><body><p>", "x<br>", end, mb)),
        (
            "normal-article-1mb",
            fill(
                "<html><head><title>t</title></head><body><article>",
                STORY,
                "</article></body></html>",
                mb,
            ),
        ),
    ]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut limit = Duration::from_secs(20);
    if let Some(i) = args.iter().position(|a| a == "--limit") {
        let secs: f64 = args.get(i + 1).ok_or("--limit needs seconds")?.parse()?;
        limit = Duration::from_secs_f64(secs);
        args.drain(i..i + 2);
    }
    match args.as_slice() {
        [] => run_all(limit),
        [shape] => run_one(shape, "stage"),
        [shape, engine] => run_one(shape, engine),
        _ => Err("usage: hostile [SHAPE [ENGINE]] [--limit SECONDS]".into()),
    }
}

fn run_all(limit: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let me = std::env::current_exe()?;
    println!("{:<28} {:>8} {:>9}  outcome", "shape", "KB", "CPU s");
    for (name, page) in shapes() {
        let mut child = Command::new(&me)
            .arg(name)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if started.elapsed() > limit {
                child.kill()?;
                child.wait()?;
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let line = match status {
            Some(_) => {
                let mut out = String::new();
                std::io::Read::read_to_string(child.stdout.as_mut().ok_or("no stdout")?, &mut out)?;
                out.trim().to_owned()
            }
            None => format!("{:>9}  stopped after {} s", "-", limit.as_secs_f64()),
        };
        println!("{name:<28} {:>8} {line}", page.len() / 1000);
    }
    Ok(())
}

fn run_one(shape: &str, engine: &str) -> Result<(), Box<dyn std::error::Error>> {
    let page = shapes()
        .into_iter()
        .find(|(name, _)| *name == shape)
        .map(|(_, page)| page)
        .ok_or_else(|| format!("unknown shape `{shape}`"))?;
    let before = cpu_seconds();
    let outcome = match engine {
        "stage" => match stagewise_stages_extract::extract(&page) {
            Ok(article) => format!("{} chars of text", article.text.chars().count()),
            Err(e) => format!("error: {e}"),
        },
        "trafilatura" => trafilatura::extract(&page, &trafilatura::Options::default())
            .map(|r| format!("{} chars", r.content_markdown().len()))
            .unwrap_or_else(|e| format!("error: {e}")),
        "rs-trafilatura" => rs_trafilatura::extract(&page)
            .map(|r| format!("{} chars", r.content_text.len()))
            .unwrap_or_else(|e| format!("error: {e}")),
        "dom_smoothie" => {
            let config = dom_smoothie::Config {
                text_mode: dom_smoothie::TextMode::Markdown,
                ..Default::default()
            };
            dom_smoothie::Readability::new(page.as_str(), None, Some(config))
                .and_then(|mut r| r.parse())
                .map(|a| format!("{} chars", a.text_content.len()))
                .unwrap_or_else(|e| format!("error: {e}"))
        }
        other => return Err(format!("unknown engine `{other}`").into()),
    };
    let spent = cpu_seconds() - before;
    let outcome: String = outcome.chars().take(110).collect();
    println!("{spent:>9.3}  {outcome}");
    Ok(())
}

/// CPU time of this process so far (user and system), from `/proc/self/stat`; 0 elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; the
    // kernel counts them in USER_HZ, 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}
