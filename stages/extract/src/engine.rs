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
use std::hash::{Hash, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::thread;

/// Stack of the thread the parse runs on. The engines walk the tree recursively, and the
/// stages' pool threads have the platform's small default stack.
const PARSE_STACK_BYTES: usize = 256 * 1024 * 1024;

/// Open tags kept before deeper ones are dropped: a page nested deeper is broken or hostile,
/// and no article needs it. Bounds the engines' recursion whatever their own limits.
pub(crate) const MAX_NESTING: usize = 2_000;

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

/// Extract the article of `html`, on a thread with a large stack so that no page, however
/// nested, can overflow it. `Err` only if that thread could not be started or every engine
/// panicked (the message says which).
pub fn extract(html: &str) -> Result<Article, String> {
    let html = cap_nesting(html, MAX_NESTING);
    thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name("extract-parse".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, || extract_here(&html))
            .map_err(|e| format!("cannot start the parsing thread: {e}"))?;
        worker.join().map_err(|panic| {
            format!("the extraction engine panicked: {}", panic_message(&*panic))
        })?
    })
}

/// One extractor: `None` when it finds nothing.
type Engine = fn(&str) -> Option<Article>;

/// [`extract`] on the calling thread.
fn extract_here(html: &str) -> Result<Article, String> {
    let mut panics = Vec::new();
    let mut candidates: Vec<Article> = Vec::with_capacity(3);
    // The two fast engines first; the slow one only when they disagree (see [`AGREED`]).
    let engines: [(&str, Engine); 3] = [
        ("trafilatura", trafilatura_article),
        ("dom_smoothie", smoothie_article),
        ("rs-trafilatura", rs_trafilatura_article),
    ];
    for (i, (name, engine)) in engines.iter().enumerate() {
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
        return Err(format!("every engine panicked ({})", panics.join("; ")));
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

/// `html` with every start tag past `max` open elements removed (their text is kept). A cheap
/// scan, not a parser: it counts start and end tags of non-void elements, which is enough to
/// bound the depth the engines see; well-formed pages are returned as they are.
pub(crate) fn cap_nesting(html: &str, max: usize) -> std::borrow::Cow<'_, str> {
    let bytes = html.as_bytes();
    let mut depth = 0usize;
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while let Some(off) = memchr(b'<', &bytes[i..]) {
        let start = i + off;
        let Some(len) = memchr(b'>', &bytes[start..]) else {
            break;
        };
        let end = start + len + 1;
        let tag = &bytes[start + 1..end - 1];
        match tag.first() {
            Some(b'/') => depth = depth.saturating_sub(1),
            Some(c) if c.is_ascii_alphabetic() => {
                let name_len = tag.iter().take_while(|b| b.is_ascii_alphanumeric()).count();
                let name = &tag[..name_len];
                let self_closing = tag.last() == Some(&b'/');
                if is_raw_text(name) {
                    // Skip a script's or style's body: its `<` are not tags.
                    let close = find_close(&bytes[end..], name);
                    i = close.map_or(bytes.len(), |c| end + c);
                    continue;
                }
                if !self_closing && !is_void(name) && !closes_implicitly(name) {
                    depth += 1;
                    if depth > max {
                        cuts.push((start, end));
                    }
                }
            }
            _ => {}
        }
        i = end;
    }
    if cuts.is_empty() {
        return std::borrow::Cow::Borrowed(html);
    }
    let mut out = String::with_capacity(html.len());
    let mut last = 0;
    for (start, end) in cuts {
        // Tags start and end on ASCII bytes, so these are char boundaries.
        out.push_str(&html[last..start]);
        last = end;
    }
    out.push_str(&html[last..]);
    std::borrow::Cow::Owned(out)
}

fn is_void(name: &[u8]) -> bool {
    const VOID: [&[u8]; 14] = [
        b"area", b"base", b"br", b"col", b"embed", b"hr", b"img", b"input", b"link", b"meta",
        b"param", b"source", b"track", b"wbr",
    ];
    VOID.iter().any(|v| v.eq_ignore_ascii_case(name))
}

/// Elements whose end tag may be left out (`<p>`, `<li>`, …): a page full of them is not deep,
/// so they are not counted.
fn closes_implicitly(name: &[u8]) -> bool {
    const IMPLIED: [&[u8]; 16] = [
        b"p",
        b"li",
        b"dt",
        b"dd",
        b"option",
        b"optgroup",
        b"tr",
        b"td",
        b"th",
        b"thead",
        b"tbody",
        b"tfoot",
        b"colgroup",
        b"rb",
        b"rt",
        b"rp",
    ];
    IMPLIED.iter().any(|v| v.eq_ignore_ascii_case(name))
}

fn is_raw_text(name: &[u8]) -> bool {
    [b"script".as_slice(), b"style", b"textarea", b"title"]
        .iter()
        .any(|v| v.eq_ignore_ascii_case(name))
}

/// Offset of `</name` in `rest`, ASCII case-insensitive.
fn find_close(rest: &[u8], name: &[u8]) -> Option<usize> {
    let n = name.len() + 2;
    rest.windows(n)
        .position(|w| w[0] == b'<' && w[1] == b'/' && w[2..].eq_ignore_ascii_case(name))
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
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
    fn nesting_is_capped_and_shallow_pages_are_untouched() {
        let page = "<html><body><div><p>one<p>two<br><img src=x></div></body></html>";
        assert!(matches!(
            cap_nesting(page, 3),
            std::borrow::Cow::Borrowed(_)
        ));
        let deep = format!("{}text{}", "<div>".repeat(10), "</div>".repeat(10));
        let capped = cap_nesting(&deep, 4);
        assert_eq!(capped.matches("<div>").count(), 4);
        assert!(capped.contains("text"));
        // A script's `<` are not tags.
        let script = format!("<script>{}</script><div>x</div>", "<b>".repeat(10));
        assert_eq!(cap_nesting(&script, 2), script.as_str());
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
