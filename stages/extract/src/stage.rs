//! One item through `extract`: checks the input, runs the engine, applies `min_chars` and
//! writes the text and metadata.

use stagewise_core::stage::{BlockingStage, Context, Outcome, Record, StageError};

use std::time::Instant;

use crate::config::ExtractConfig;
use crate::engine::{self, ExtractError};

/// The reason an item without enough article text is skipped with.
pub(crate) const NO_ARTICLE_TEXT: &str = "no article text";

/// The reason a body that is not text at all is skipped with.
pub(crate) const BINARY: &str = "not HTML: binary content";

/// Share of control or undecodable characters above which a body is taken for binary data.
const BINARY_SHARE: f64 = 0.1;

/// `extract`.
/// The fields a record gains besides `output`, each null when the page does not say.
pub(crate) const METADATA: [&str; 5] = ["title", "author", "published", "language", "site_name"];

pub(crate) struct Extract {
    input: String,
    output: String,
    min_chars: usize,
    max_html_bytes: u64,
}

impl Extract {
    pub(crate) fn new(config: ExtractConfig) -> Self {
        Self {
            input: config.input,
            output: config.output,
            min_chars: config.min_chars,
            max_html_bytes: config.max_html_bytes.as_u64(),
        }
    }
}

impl BlockingStage for Extract {
    /// Errors are the page's (`invalid_input`), or the deadline's (`timeout`).
    fn process(&self, record: Record, cx: &Context) -> Result<Outcome, StageError> {
        self.extract(record, cx).map_err(|e| {
            let kind = match e.class {
                stagewise_core::stage::ErrorClass::Transient => {
                    stagewise_core::stage::ErrorKind::Timeout
                }
                _ => stagewise_core::stage::ErrorKind::InvalidInput,
            };
            e.with_kind(kind)
        })
    }
}

impl Extract {
    fn extract(&self, mut record: Record, cx: &Context) -> Result<Outcome, StageError> {
        let html = record.get_str(&self.input).ok_or_else(|| {
            StageError::permanent(format!(
                "the record has no text field `{}` with the page's HTML",
                self.input
            ))
        })?;
        if html.len() as u64 > self.max_html_bytes {
            return Err(StageError::permanent(format!(
                "the page is {} bytes, more than `max_html_bytes` ({})",
                html.len(),
                self.max_html_bytes
            )));
        }
        if cx.is_cancelled() {
            return Err(StageError::transient("cancelled before extraction"));
        }
        // A page without a `<` has no markup to find an article in (empty bodies, binary junk
        // that is not HTML); the engines would only echo it back as text.
        if !html.contains('<') {
            return Ok(skip());
        }
        if looks_binary(html) {
            return Ok(Outcome::Skip {
                reason: BINARY.into(),
            });
        }
        // Past the attempt's deadline the runner has let the call go; the engines still to run
        // would only hold the pool's thread.
        let give_up = || cx.is_cancelled() || Instant::now() >= cx.deadline();
        let article = engine::extract_until(html, &give_up).map_err(|e| match e {
            ExtractError::Stopped => StageError::transient(e.to_string()),
            ExtractError::TooComplex(_) | ExtractError::Failed(_) => {
                StageError::permanent(e.to_string())
            }
        })?;
        let text = clean(&article.text);
        if text.chars().count() < self.min_chars {
            return Ok(skip());
        }
        let fields = &mut record.fields;
        fields.insert(self.output.clone(), text.into());
        let metadata = METADATA.into_iter().zip([
            article.title,
            article.author,
            article.published,
            article.language,
            article.site_name,
        ]);
        // Every field is set, null when the page has none, so later stages (a `persist`
        // statement naming `:author`, say) see the same shape for every page.
        for (name, value) in metadata {
            let value = value.map(|v| clean(&v)).filter(|v| !v.is_empty());
            fields.insert(
                name.into(),
                value.map_or(serde_json::Value::Null, Into::into),
            );
        }
        Ok(Outcome::Continue(record))
    }
}

/// Whether the start of `html` is mostly control characters or replacement characters (bytes
/// that were not text in any encoding): an image or archive served as a page.
fn looks_binary(html: &str) -> bool {
    let (mut seen, mut odd) = (0usize, 0usize);
    for c in html.chars().take(65_536) {
        seen += 1;
        if c == '\u{fffd}' || (c.is_control() && !c.is_whitespace()) {
            odd += 1;
        }
    }
    seen > 0 && odd as f64 / seen as f64 > BINARY_SHARE
}

fn skip() -> Outcome {
    Outcome::Skip {
        reason: NO_ARTICLE_TEXT.into(),
    }
}

/// Control characters other than newlines and tabs removed (junk in the page), ends trimmed.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|&c| !c.is_control() || c == '\n' || c == '\t')
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use stagewise_core::stage::{CancelFlag, ErrorClass};

    use super::*;

    /// A news page with every kind of boilerplate around a three-paragraph article.
    const NEWS_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en"><head>
<meta charset="utf-8">
<title>Harbour bridge reopens after repairs | The Coastal Times</title>
<meta property="og:title" content="Harbour bridge reopens after repairs">
<meta property="og:site_name" content="The Coastal Times">
<meta name="author" content="Maria Lindqvist">
<meta property="article:published_time" content="2024-03-15T08:30:00Z">
</head><body>
<div id="cookie-banner" class="cookie-consent">We use cookies to improve your experience.
Accept all cookies or manage your cookie preferences.</div>
<header><nav class="main-nav"><ul>
<li><a href="/">Home</a></li><li><a href="/world">World news section</a></li>
<li><a href="/sport">Sport section</a></li><li><a href="/weather">Weather section</a></li>
</ul></nav></header>
<main><article>
<h1>Harbour bridge reopens after repairs</h1>
<p class="byline">By Maria Lindqvist</p>
<p>The old harbour bridge reopened to traffic on Friday morning after eleven months of
repairs to its corroded steel girders, the city's transport department said.</p>
<p>Engineers replaced more than four hundred rivets and repainted the whole span in the
original green, a colour chosen by the bridge's designer in 1921. Commuters who had faced
a forty-minute detour through the industrial estate welcomed the news.</p>
<p>The repairs cost twelve million euros, slightly less than the budget approved by the
council last spring, and the department expects the bridge to need no major work for
another thirty years.</p>
</article>
<aside class="related"><h3>Related stories</h3><ul>
<li><a href="/a">Ferry timetable changes announced for the summer season</a></li>
<li><a href="/b">New cycle lanes planned along the waterfront promenade</a></li>
<li><a href="/c">Council approves budget for the old town square renovation</a></li>
</ul></aside>
<section id="comments" class="comments"><h3>Comments</h3>
<div class="comment"><p>Finally! My commute has been a nightmare since last year, glad it is over.</p></div>
<div class="comment"><p>Twelve million for some paint and rivets seems like a lot of money to me.</p></div>
</section></main>
<footer class="site-footer"><p>Copyright 2024 The Coastal Times. All rights reserved.
Privacy policy. Terms of use. Contact the newsroom.</p></footer>
</body></html>"#;

    fn stage() -> Extract {
        Extract::new(ExtractConfig::default())
    }

    fn cx() -> Context {
        Context::new(
            "k",
            "extract",
            1,
            Instant::now() + Duration::from_secs(60),
            CancelFlag::new(),
        )
    }

    fn record(html: &str) -> Record {
        let mut r = Record::new("k");
        r.fields.insert("html".into(), html.into());
        r
    }

    fn run(stage: &Extract, html: &str) -> Result<Outcome, StageError> {
        stage.process(record(html), &cx())
    }

    fn kept(outcome: Result<Outcome, StageError>) -> Record {
        match outcome {
            Ok(Outcome::Continue(r)) => r,
            Ok(Outcome::Skip { reason }) => panic!("skipped: {reason}"),
            Err(e) => panic!("failed: {e:?}"),
        }
    }

    fn assert_skipped(outcome: Result<Outcome, StageError>) {
        match outcome {
            Ok(Outcome::Skip { reason }) => assert_eq!(reason, NO_ARTICLE_TEXT),
            Ok(Outcome::Continue(r)) => panic!(
                "expected a skip, got text {:?}",
                r.get_str("text")
                    .map(|t| t.chars().take(200).collect::<String>())
            ),
            Err(e) => panic!("expected a skip, got {e:?}"),
        }
    }

    #[test]
    fn keeps_the_article_and_drops_the_boilerplate() {
        let r = kept(run(&stage(), NEWS_PAGE));
        let text = r.get_str("text").expect("text is written");
        for kept in [
            "reopened to traffic on Friday morning",
            "replaced more than four hundred rivets",
            "no major work for\nanother thirty years",
        ] {
            let kept = kept.replace('\n', " ");
            assert!(
                text.replace('\n', " ").contains(&kept),
                "lost {kept:?}: {text}"
            );
        }
        for dropped in [
            "cookies",
            "World news section",
            "Ferry timetable",
            "Related stories",
            "commute has been a nightmare",
            "seems like a lot of money",
            "All rights reserved",
            "Privacy policy",
        ] {
            assert!(!text.contains(dropped), "kept {dropped:?}: {text}");
        }
    }

    #[test]
    fn writes_the_metadata() {
        let r = kept(run(&stage(), NEWS_PAGE));
        assert_eq!(
            r.get_str("title"),
            Some("Harbour bridge reopens after repairs")
        );
        assert_eq!(r.get_str("author"), Some("Maria Lindqvist"));
        assert_eq!(r.get_str("published"), Some("2024-03-15"));
        assert_eq!(r.get_str("language"), Some("en"));
        assert_eq!(r.get_str("site_name"), Some("The Coastal Times"));
    }

    #[test]
    fn paragraphs_are_separated_and_words_not_glued() {
        // Minified: no whitespace between the tags.
        let minified: String = NEWS_PAGE.lines().map(str::trim).collect();
        let r = kept(run(&stage(), &minified));
        let text = r.get_str("text").expect("text is written");
        assert!(text.contains("welcomed the news.\n\nThe repairs"), "{text}");
    }

    #[test]
    fn honours_input_output_and_min_chars() {
        let stage = Extract::new(ExtractConfig {
            input: "page".into(),
            output: "body".into(),
            min_chars: 10_000,
            ..ExtractConfig::default()
        });
        let mut r = Record::new("k");
        r.fields.insert("page".into(), NEWS_PAGE.into());
        assert_skipped(stage.process(r, &cx()));

        let stage = Extract::new(ExtractConfig {
            input: "page".into(),
            output: "body".into(),
            ..ExtractConfig::default()
        });
        let mut r = Record::new("k");
        r.fields.insert("page".into(), NEWS_PAGE.into());
        let r = kept(stage.process(r, &cx()));
        assert!(r.get_str("body").is_some_and(|t| t.contains("rivets")));
        assert!(r.get_str("text").is_none());
    }

    #[test]
    fn a_page_without_an_article_is_skipped() {
        let nav_only = r#"<html><body><nav><a href="/">Home</a> <a href="/x">News</a></nav>
            <footer>Copyright 2024</footer></body></html>"#;
        for html in [
            "",
            "   \n",
            "plain text without any markup at all",
            nav_only,
        ] {
            assert_skipped(run(&stage(), html));
        }
    }

    #[test]
    fn binary_junk_is_skipped_not_crashed() {
        // Deterministic pseudo-random bytes, read as text the way a download decodes them.
        let mut x: u32 = 0x9e37_79b9;
        let bytes: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_le_bytes()[0]
            })
            .collect();
        let junk = String::from_utf8_lossy(&bytes);
        assert!(junk.contains('<') && junk.contains('\0'));
        match run(&stage(), &junk) {
            Ok(Outcome::Skip { reason }) => assert_eq!(reason, BINARY),
            other => panic!("expected a skip, got {:?}", other.map(|_| "text")),
        }
        // A few control characters inside a real page are dropped, not taken for binary.
        let dirty = NEWS_PAGE.replace("Friday morning", "Friday\u{1}\u{7} morning\0");
        let r = kept(run(&stage(), &dirty));
        let text = r.get_str("text").expect("text is written");
        assert!(text.contains("rivets") && !text.contains(['\0', '\u{1}', '\u{7}']));
    }

    #[test]
    fn broken_markup_and_mixed_encodings_still_give_the_article() {
        // Unclosed tags, a stray `</div>`, an attribute without a closing quote, mojibake and
        // replacement characters next to proper UTF-8.
        let broken = NEWS_PAGE
            .replace("</p>", "")
            .replace("<article>", "<article></div><span class=\"x>")
            .replace("Friday", "Fr\u{fffd}day Ã©tÃ© été");
        let r = kept(run(&stage(), &broken));
        let text = r.get_str("text").expect("text is written");
        assert!(text.contains("rivets"), "{text}");
        assert!(!text.contains('\0'));
    }

    #[test]
    fn a_page_over_max_html_bytes_is_a_permanent_error() {
        let big = format!(
            "<html><body><p>{}</p></body></html>",
            "a".repeat(50 * 1024 * 1024)
        );
        let err = run(&stage(), &big).expect_err("over 20MB");
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(err.message.contains("`max_html_bytes`"), "{}", err.message);

        let small = Extract::new(ExtractConfig {
            max_html_bytes: bytesize::ByteSize::kb(1),
            ..ExtractConfig::default()
        });
        let err = run(&small, NEWS_PAGE).expect_err("over 1KB");
        assert_eq!(err.class, ErrorClass::Permanent);
    }

    #[test]
    fn a_missing_or_non_text_input_is_a_permanent_error() {
        let err = stage()
            .process(Record::new("k"), &cx())
            .expect_err("no field");
        assert_eq!(err.class, ErrorClass::Permanent);
        let mut r = Record::new("k");
        r.fields.insert("html".into(), 42.into());
        let err = stage().process(r, &cx()).expect_err("not text");
        assert_eq!(err.class, ErrorClass::Permanent);
    }

    /// `outcome` is the permanent "page too complex" error.
    fn assert_too_complex(outcome: Result<Outcome, StageError>) {
        match outcome {
            Err(e) => {
                assert_eq!(e.class, ErrorClass::Permanent, "{e:?}");
                assert!(e.message.starts_with("page too complex: "), "{}", e.message);
            }
            Ok(_) => panic!("expected a page too complex"),
        }
    }

    #[test]
    fn deep_nesting_is_too_complex_and_does_not_overflow_the_stack() {
        let depth = 100_000;
        let nested = format!(
            "<html><body>{}{NEWS_PAGE}{}</body></html>",
            "<div>".repeat(depth),
            "</div>".repeat(depth)
        );
        // On a thread with a small stack, like a pool's, so an overflow would abort the test.
        let outcome = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || run(&stage(), &nested))
            .expect("spawn")
            .join()
            .expect("no panic");
        assert_too_complex(outcome);
        // Unclosed nesting too.
        let unclosed = format!("<html><body>{}<p>x", "<span><div>".repeat(depth));
        assert_too_complex(run(&stage(), &unclosed));
    }

    #[test]
    fn a_hostile_page_fails_fast_and_a_normal_one_is_kept() {
        // Each would take the engines from seconds to minutes; the check refuses it at once.
        let deep_block = format!("{}x{}", "<div>".repeat(1_999), "</div>".repeat(1_999));
        let hostile = [
            "<div/>".repeat(5_000),
            "<div/>".repeat(20_000),
            "<div></x>".repeat(20_000),
            deep_block.repeat(40),
            "<b>".repeat(50_000),
            "<table><tr><td>".repeat(5_000),
            format!(
                "<div {}>",
                (0..20_000).map(|i| format!("a{i}=1 ")).collect::<String>()
            ),
        ];
        for shape in hostile {
            let html = format!("<html><body>{shape}{NEWS_PAGE}</body></html>");
            let started = Instant::now();
            assert_too_complex(run(&stage(), &html));
            // A generous bound (debug builds): the engines never ran.
            assert!(started.elapsed() < Duration::from_secs(20));
        }
        // Many comments and a long run of text are fine: the article is kept.
        let comments = NEWS_PAGE.replace("<main>", &format!("<main>{}", "<!--x-->".repeat(5_000)));
        let r = kept(run(&stage(), &comments));
        assert!(r.get_str("text").is_some_and(|t| t.contains("rivets")));
    }

    #[test]
    fn an_attempt_past_its_deadline_stops_before_the_engines() {
        let cx = Context::new(
            "k",
            "extract",
            1,
            Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now),
            CancelFlag::new(),
        );
        let err = stage()
            .process(record(NEWS_PAGE), &cx)
            .expect_err("past the deadline");
        assert_eq!(err.class, ErrorClass::Transient);
    }

    #[test]
    fn the_config_parses_with_defaults_and_refuses_unknown_keys() {
        let c: ExtractConfig = toml::from_str("").expect("defaults");
        assert_eq!(
            (c.input.as_str(), c.output.as_str(), c.min_chars),
            ("html", "text", 200)
        );
        assert_eq!(c.max_html_bytes, bytesize::ByteSize::mb(20));
        let c: ExtractConfig =
            toml::from_str("max_html_bytes = \"5MB\"\nmin_chars = 50").expect("valid");
        assert_eq!(c.max_html_bytes, bytesize::ByteSize::mb(5));
        assert_eq!(c.min_chars, 50);
        assert!(toml::from_str::<ExtractConfig>("min_char = 5").is_err());
    }
}
