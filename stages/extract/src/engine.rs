//! The extraction engine: article text and metadata from one HTML page.
//!
//! Chosen by measurement on the development benchmark (`examples/quality.rs`,
//! `benches/extract_quality.sh`). Three extractors: the `trafilatura` crate (its Markdown output
//! made plain; its own plain text glues words on minified HTML), `dom_smoothie` (a Readability
//! port) and `rs-trafilatura`. Each fails on different pages, and when one fails the other two
//! rarely fail the same way, so the text kept is the one that agrees best with the other two
//! (word 4-gram overlap, the benchmark's own measure of similarity): a majority vote between
//! whole extractions, with no rule about any site. Alone they score F1 0.959, 0.956 and 0.959
//! on the 72 pages; the vote of all three 0.974. The two fast ones (6.4 and 2.9 ms a page) run
//! first, and the slow one (13 ms) only when they disagree ([`AGREED`]): F1 0.972 at about
//! 60 % of the full vote's time.
//!
//! Metadata comes from `trafilatura`, gaps filled from the others in the same order.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::thread;

use crate::complexity;

/// Stack of the thread the parse runs on. The engines walk the tree recursively (as deep as the
/// complexity check lets a page nest), and the stages' pool threads have the platform's small
/// default stack.
const PARSE_STACK_BYTES: usize = 256 * 1024 * 1024;

/// Words per shingle when comparing two extractions (as the benchmark does).
const SHINGLE: usize = 4;

/// What was found in a page. `None` means "not found".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Article {
    /// The article's text: paragraphs separated by blank lines; empty if none was found.
    pub text: String,
    /// The page's title.
    pub title: Option<String>,
    /// The author or authors.
    pub author: Option<String>,
    /// The publication date, `YYYY-MM-DD`.
    pub published: Option<String>,
    /// The language the page declares, e.g. `en`.
    pub language: Option<String>,
    /// The site's name.
    pub site_name: Option<String>,
}

/// Why a page gave no article.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtractError {
    /// The page would cost the engines more than its size warrants; permanent ("page too complex: …",
    /// saying which limit); see `src/complexity.rs`.
    TooComplex(String),
    /// The extraction could not run: its thread did not start, or every engine panicked;
    /// permanent, the same page fails the same way again.
    Failed(String),
    /// The stage's attempt ended (deadline or stop) before any engine ran.
    Stopped,
}

impl fmt::Display for ExtractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooComplex(message) | Self::Failed(message) => f.write_str(message),
            Self::Stopped => f.write_str("stopped before extraction"),
        }
    }
}

impl std::error::Error for ExtractError {}

/// Extract the article of `html`, on a thread with a large stack. The page's shape is checked
/// first ([`complexity::check`]): one too deep, too large or too misnested for the engines to
/// finish in about a second is refused with [`ExtractError::TooComplex`].
pub fn extract(html: &str) -> Result<Article, ExtractError> {
    extract_until(html, &|| false)
}

/// [`extract`], giving up between engines once `give_up` says so (the attempt's deadline passed
/// or the run is stopping): the article of the engines that ran, or an error if none did.
pub(crate) fn extract_until(
    html: &str,
    give_up: &(dyn Fn() -> bool + Sync),
) -> Result<Article, ExtractError> {
    thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name("extract-parse".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, || {
                let shape = complexity::check(html, &complexity::LIMITS)
                    .map_err(|too| ExtractError::TooComplex(too.to_string()))?;
                extract_here(html, &shape, give_up)
            })
            .map_err(|e| ExtractError::Failed(format!("cannot start the parsing thread: {e}")))?;
        worker.join().map_err(|panic| {
            ExtractError::Failed(format!(
                "the extraction engine panicked: {}",
                panic_message(&*panic)
            ))
        })?
    })
}

/// One extractor: `None` when it finds nothing.
type Engine = fn(&str) -> Option<Article>;

/// How much sibling work ([`complexity::Shape::sibling_work`], the sum over elements of their
/// children squared) the slow engine is still run on: its cost grows with it (0.4 s of CPU for
/// one element of 20,000 children, 7 s for 150,000, 3 s for fourteen of 10,000, in a release
/// build), where the two fast engines stay linear. Past it, the page is extracted by the two.
/// One element of 10,000 children; real pages stay far below (tens of thousands).
const SLOW_ENGINE_SIBLING_WORK: u64 = 100_000_000;

/// [`extract`] on the calling thread, the page already checked (`shape`).
fn extract_here(
    html: &str,
    shape: &complexity::Shape,
    give_up: &(dyn Fn() -> bool + Sync),
) -> Result<Article, ExtractError> {
    let mut panics = Vec::new();
    let mut candidates: Vec<Article> = Vec::with_capacity(3);
    // The two fast engines first; the slow one only when they disagree (see [`AGREED`]).
    let engines: [(&str, Engine); 3] = [
        ("trafilatura", trafilatura_article),
        ("dom_smoothie", smoothie_article),
        ("rs-trafilatura", rs_trafilatura_article),
    ];
    for (i, (name, engine)) in engines.iter().enumerate() {
        if give_up() {
            if candidates.is_empty() {
                return Err(ExtractError::Stopped);
            }
            break;
        }
        if i == 2 && shape.sibling_work > SLOW_ENGINE_SIBLING_WORK {
            break;
        }
        if i == 2 && candidates.iter().all(|a| !a.text.is_empty()) {
            let (a, b) = (&candidates[0].text, &candidates[1].text);
            if agreement(a, b) >= AGREED {
                break;
            }
        }
        // One engine's bug on one page must not lose the other two's work.
        match panic::catch_unwind(AssertUnwindSafe(|| engine(html))) {
            Ok(found) => candidates.push(found.unwrap_or_default()),
            Err(panic) => {
                panics.push(format!("{name}: {}", panic_message(&*panic)));
                candidates.push(Article::default());
            }
        }
    }
    if panics.len() == candidates.len() {
        return Err(ExtractError::Failed(format!(
            "every engine panicked ({})",
            panics.join("; ")
        )));
    }
    let texts: Vec<&str> = candidates.iter().map(|a| a.text.as_str()).collect();
    let text = texts[most_agreed(&texts)].to_owned();
    let mut article = Article {
        text,
        ..Article::default()
    };
    for found in candidates {
        article.title = article.title.or(found.title);
        article.author = article.author.or(found.author);
        article.published = article
            .published
            .or(found.published.filter(|d| names_the_day(d, html)));
        article.language = article.language.or(found.language);
        article.site_name = article.site_name.or(found.site_name);
    }
    Ok(article)
}

/// Whether a found date is one the page gives. The trafilatura ports fall back to a bare year
/// (from a copyright line, say) and report it as 1 January: such a date is kept only when the
/// page names that day in a common form.
fn names_the_day(date: &str, html: &str) -> bool {
    let Some(year) = date.strip_suffix("-01-01") else {
        return true;
    };
    [
        format!("{year}-01-01"),
        format!("{year}/01/01"),
        format!("01/01/{year}"),
        format!("01.01.{year}"),
        format!("1 January {year}"),
        format!("January 1, {year}"),
        format!("Jan 1, {year}"),
        format!("1 Jan {year}"),
        format!("{year}0101"),
    ]
    .iter()
    .any(|form| html.contains(form.as_str()))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// When the two fast engines' texts agree this well (F1 of their 4-word shingles), the third,
/// slowest engine is not run: a vote it joined would pick one of two near-identical texts.
const AGREED: f64 = 0.95;

/// F1 of two texts' 4-word shingles (the scorer's measure): 1 for the same text.
fn agreement(a: &str, b: &str) -> f64 {
    let (a, b) = (shingles(a), shingles(b));
    let sizes: u32 = a.values().sum::<u32>() + b.values().sum::<u32>();
    if sizes == 0 {
        return 0.0;
    }
    let common: u32 = a
        .iter()
        .map(|(k, &n)| n.min(b.get(k).copied().unwrap_or(0)))
        .sum();
    2.0 * f64::from(common) / f64::from(sizes)
}

/// The index of the text whose shingles agree best (summed F1) with all the others'; the
/// first on a tie, so the order of the candidates is their priority.
pub(crate) fn most_agreed(texts: &[&str]) -> usize {
    let shingles: Vec<HashMap<u64, u32>> = texts.iter().map(|t| shingles(t)).collect();
    let sizes: Vec<u32> = shingles.iter().map(|s| s.values().sum()).collect();
    let mut best = (0, f64::MIN);
    for (i, mine) in shingles.iter().enumerate() {
        // An empty extraction never wins over a non-empty one.
        let mut score = if sizes[i] == 0 { -1.0 } else { 0.0 };
        for (j, theirs) in shingles.iter().enumerate() {
            if i == j || sizes[i] + sizes[j] == 0 {
                continue;
            }
            let common: u32 = mine
                .iter()
                .map(|(k, &n)| n.min(theirs.get(k).copied().unwrap_or(0)))
                .sum();
            score += 2.0 * f64::from(common) / f64::from(sizes[i] + sizes[j]);
        }
        if score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

/// The multiset of word 4-grams of `text`, hashed.
fn shingles(text: &str) -> HashMap<u64, u32> {
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    let mut set = HashMap::new();
    if words.is_empty() {
        return set;
    }
    for window in words.windows(SHINGLE.min(words.len())) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        window.hash(&mut h);
        *set.entry(h.finish()).or_insert(0) += 1;
    }
    set
}

fn trafilatura_article(html: &str) -> Option<Article> {
    let result = trafilatura::extract(html, &trafilatura::Options::default()).ok()?;
    let m = &result.metadata;
    Some(Article {
        text: markdown_to_text(&result.content_markdown()),
        title: non_empty(&m.title),
        author: non_empty(&m.author),
        published: m.date.map(|d| d.format("%Y-%m-%d").to_string()),
        language: non_empty(&m.language),
        site_name: non_empty(&m.sitename),
    })
}

fn rs_trafilatura_article(html: &str) -> Option<Article> {
    let result = rs_trafilatura::extract(html).ok()?;
    let m = result.metadata;
    let opt = |s: Option<String>| s.as_deref().and_then(non_empty);
    Some(Article {
        text: result.content_text,
        title: opt(m.title),
        author: opt(m.author),
        published: m.date.map(|d| d.format("%Y-%m-%d").to_string()),
        language: opt(m.language),
        site_name: opt(m.sitename),
    })
}

fn smoothie_article(html: &str) -> Option<Article> {
    let config = dom_smoothie::Config {
        text_mode: dom_smoothie::TextMode::Markdown,
        ..Default::default()
    };
    let mut readability = dom_smoothie::Readability::new(html, None, Some(config)).ok()?;
    let article = readability.parse().ok()?;
    Some(Article {
        text: markdown_to_text(&article.text_content),
        title: non_empty(&article.title),
        author: article.byline.as_deref().and_then(non_empty),
        // Readability's dates are whatever the page wrote; only ISO dates are taken.
        published: article.published_time.as_deref().and_then(iso_date),
        language: article.lang.as_deref().and_then(non_empty),
        site_name: article.site_name.as_deref().and_then(non_empty),
    })
}

/// The `YYYY-MM-DD` a timestamp starts with, if it does.
fn iso_date(s: &str) -> Option<String> {
    let d = s.trim().get(..10)?;
    let b = d.as_bytes();
    let ok = b.iter().enumerate().all(|(i, c)| match i {
        4 | 7 => *c == b'-',
        _ => c.is_ascii_digit(),
    });
    ok.then(|| d.to_owned())
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// Markdown to plain text: headings, list and quote markers, emphasis, link targets, images and
/// table rules removed; paragraphs kept, separated by one blank line.
pub fn markdown_to_text(md: &str) -> String {
    let mut out = String::with_capacity(md.len());
    let mut blank = true;
    let mut in_fence = false;
    for line in md.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        let text = if in_fence {
            trimmed.to_owned()
        } else {
            inline_to_text(strip_block_markers(trimmed))
        };
        let text = text.trim();
        if text.is_empty() || is_rule(text) {
            if !blank {
                out.push_str("\n\n");
                blank = true;
            }
            continue;
        }
        if !blank {
            out.push('\n');
        }
        out.push_str(text);
        blank = false;
    }
    out.trim_end().to_owned()
}

/// `# `, `> `, `- `, `* `, `+ `, `1. ` at the start of a line.
fn strip_block_markers(mut line: &str) -> &str {
    loop {
        let before = line;
        line = line.trim_start();
        if let Some(rest) = line.strip_prefix('>') {
            line = rest;
        } else if line.starts_with('#') {
            let rest = line.trim_start_matches('#');
            if rest.is_empty() || rest.starts_with(' ') {
                line = rest;
            }
        } else if let Some(rest) = ["- ", "* ", "+ "].iter().find_map(|m| line.strip_prefix(m)) {
            line = rest;
        } else {
            let digits = line.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && digits < 10 {
                if let Some(rest) = line[digits..]
                    .strip_prefix(". ")
                    .or_else(|| line[digits..].strip_prefix(") "))
                {
                    line = rest;
                }
            }
        }
        if line == before {
            return line;
        }
    }
}

/// A thematic break or a table's separator row: nothing but `-`, `*`, `_`, `=`, `|`, `:` and
/// spaces.
fn is_rule(line: &str) -> bool {
    line.len() >= 3
        && line
            .chars()
            .all(|c| matches!(c, '-' | '*' | '_' | '=' | '|' | ':' | ' '))
}

/// Inline Markdown to text: `![alt](src)` dropped, `[text](url)` → `text`, emphasis and code
/// marks and backslash escapes removed, table pipes → spaces.
fn inline_to_text(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() && chars[i + 1].is_ascii_punctuation() => {
                out.push(chars[i + 1]);
                i += 2;
            }
            '!' if chars.get(i + 1) == Some(&'[') => match link_end(&chars, i + 1) {
                Some((_, end)) => i = end,
                None => {
                    out.push(c);
                    i += 1;
                }
            },
            '[' => match link_end(&chars, i) {
                Some((label_end, end)) => {
                    let label: String = chars[i + 1..label_end].iter().collect();
                    out.push_str(&inline_to_text(&label));
                    i = end;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            },
            '*' | '`' => i += 1,
            '_' if is_emphasis_underscore(&chars, i) => i += 1,
            '|' => {
                out.push(' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// `_` that opens or closes emphasis, not one inside a word like `snake_case`.
fn is_emphasis_underscore(chars: &[char], i: usize) -> bool {
    let before = i.checked_sub(1).map(|j| chars[j]);
    let after = chars.get(i + 1).copied();
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    !(word(before) && word(after))
}

/// For `[label](target)` starting at `open`: the index of `]` and the index after `)`.
fn link_end(chars: &[char], open: usize) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    let mut close = None;
    for (j, &c) in chars.iter().enumerate().skip(open) {
        match c {
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(j);
                    break;
                }
            }
            _ => {}
        }
    }
    let close = close?;
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let mut depth = 0usize;
    for (j, &c) in chars.iter().enumerate().skip(close + 1) {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some((close, j + 1));
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_plain_text() {
        let cases = [
            (
                "# Title\n\nSome *bold* and _em_ text.",
                "Title\n\nSome bold and em text.",
            ),
            ("A [link](http://x.example/a_(b)) here", "A link here"),
            ("![a photo](img.png)\nCaption", "Caption"),
            ("- one\n- two\n1. three", "one\ntwo\nthree"),
            ("> quoted", "quoted"),
            ("| a | b |\n|---|---|\n| c | d |", "a   b\n\nc   d"),
            ("snake_case stays, 3\\*4", "snake_case stays, 3*4"),
            ("para one\n\n\n\npara two\n---\n", "para one\n\npara two"),
        ];
        for (md, want) in cases {
            assert_eq!(markdown_to_text(md), want, "{md:?}");
        }
    }

    #[test]
    fn the_vote_picks_the_extraction_the_others_agree_with() {
        let article = "the quick brown fox jumps over the lazy dog again and again today";
        let with_noise = format!("{article} subscribe now to our newsletter for more offers");
        let texts = [with_noise.as_str(), article, article];
        assert_eq!(most_agreed(&texts), 1);
        let texts = ["", article, "completely different words in this one here"];
        assert_eq!(most_agreed(&texts), 1);
        // A tie goes to the first.
        assert_eq!(most_agreed(&[article, article, ""]), 0);
    }

    #[test]
    fn agreement_is_the_f1_of_shingles() {
        let text = "the harbour reopened on friday after four days of repairs to the breakwater";
        assert!((agreement(text, text) - 1.0).abs() < 1e-9);
        assert_eq!(
            agreement(
                text,
                "completely different words with nothing at all shared here"
            ),
            0.0
        );
        assert_eq!(agreement("", ""), 0.0);
        let longer = format!("{text} and the ferry sailed again at noon on saturday");
        let partial = agreement(text, &longer);
        assert!(partial > 0.5 && partial < AGREED, "{partial}");
    }

    #[test]
    fn a_bare_year_is_not_a_publication_date() {
        let body = "<article><h1>Rhubarb cake</h1><p>".to_owned()
            + &"Rhubarb and almonds make a soft, sharp cake that keeps for days. ".repeat(12)
            + "</p></article>";
        let page = format!("<html><head><title>Rhubarb cake</title></head><body>{body}<footer>© 2026 Saltmarsh Kitchen</footer></body></html>");
        let article = extract(&page).expect("extracts");
        assert_ne!(article.published.as_deref(), Some("2026-01-01"));
        assert!(names_the_day(
            "2026-01-01",
            "<time datetime=\"2026-01-01T09:00\">"
        ));
        assert!(names_the_day("2026-03-04", "no day named at all"));
        assert!(!names_the_day("2026-01-01", "© 2026"));
    }

    #[test]
    fn iso_dates_only() {
        assert_eq!(
            iso_date("2024-03-15T08:30:00Z").as_deref(),
            Some("2024-03-15")
        );
        assert_eq!(iso_date("March 15, 2024"), None);
        assert_eq!(iso_date("2024"), None);
    }
}
