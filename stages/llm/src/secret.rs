//! The API key kept out of everything the stage says. A server or proxy may echo the key back
//! in an error body — whole, upper-cased, or cut where the stage cuts the body for a message —
//! and that message goes to the log, `status --json` and the store. So any piece of the key at
//! least [`MIN_PIECE`] characters long, in any ASCII case, is replaced by [`MARKER`].
//!
//! A piece of eight or more characters is found through its eight-byte windows: every window
//! of the text that is, ignoring ASCII case, a window of the key is covered, and each run of
//! covered bytes becomes one marker. That is one set lookup per byte of the text (the set is
//! built once, one entry per byte of the key), so the work is linear in the text and the key
//! whatever they hold. A run made of windows of the key taken from different places is covered
//! too: more is hidden, never less.

use std::collections::HashSet;

/// What a piece of the key is replaced by.
pub(crate) const MARKER: &str = "***";

/// The shortest piece of the key that is hidden wherever it appears.
const MIN_PIECE: usize = 8;

/// The shortest key hidden at all: a shorter one would turn common words into markers (and
/// guarding it is hopeless anyway).
const MIN_KEY: usize = 4;

/// The key's windows, ready to scrub texts with.
pub(crate) struct Scrubber {
    /// The key, lower-cased; kept whole for a key shorter than [`MIN_PIECE`].
    short: Option<Vec<u8>>,
    /// The key's [`MIN_PIECE`]-byte windows, lower-cased.
    windows: HashSet<[u8; MIN_PIECE]>,
}

impl Scrubber {
    /// `None` for a key too short to hide.
    pub(crate) fn new(key: &str) -> Option<Scrubber> {
        let key = key.as_bytes().to_ascii_lowercase();
        if key.len() < MIN_KEY {
            return None;
        }
        let windows = key
            .windows(MIN_PIECE)
            .map(|w| w.try_into().expect("windows are MIN_PIECE long"))
            .collect();
        Some(Scrubber {
            short: (key.len() < MIN_PIECE).then_some(key),
            windows,
        })
    }

    /// `text` with every piece of the key replaced by [`MARKER`].
    pub(crate) fn scrub(&self, text: &str) -> String {
        let bytes = text.as_bytes();
        let width = self.short.as_ref().map_or(MIN_PIECE, Vec::len);
        let mut covered: Vec<(usize, usize)> = Vec::new();
        for start in 0..(bytes.len() + 1).saturating_sub(width) {
            let window = &bytes[start..start + width];
            let hit = match &self.short {
                Some(key) => window.eq_ignore_ascii_case(key),
                None => {
                    let mut lower = [0u8; MIN_PIECE];
                    for (l, b) in lower.iter_mut().zip(window) {
                        *l = b.to_ascii_lowercase();
                    }
                    self.windows.contains(&lower)
                }
            };
            if hit {
                match covered.last_mut() {
                    Some(last) if last.1 >= start => last.1 = start + width,
                    _ => covered.push((start, start + width)),
                }
            }
        }
        if covered.is_empty() {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut done = 0;
        for (mut start, mut end) in covered {
            // A key with non-ASCII characters may match from inside one: widen to whole ones.
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            while !text.is_char_boundary(end) {
                end += 1;
            }
            if end <= done {
                continue;
            }
            if start >= done {
                out.push_str(&text[done..start]);
                out.push_str(MARKER);
            }
            done = end;
        }
        out.push_str(&text[done..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-proj-Q7f3a9cZ1x8LmN2pR5tV0wY4bD6eH9jK";

    fn scrub(key: &str, text: &str) -> String {
        Scrubber::new(key).expect("long enough").scrub(text)
    }

    #[test]
    fn every_piece_of_the_key_in_any_case_is_hidden() {
        let cut = format!("{{\"error\": \"bad key {}", &KEY[..12]);
        let cases = [
            // A 401 body cut at 300 characters, the key's first 12 left at the end.
            (cut.as_str(), "{\"error\": \"bad key ***".to_owned()),
            (
                &*format!("Incorrect API key provided: {}.", KEY.to_uppercase()),
                "Incorrect API key provided: ***.".to_owned(),
            ),
            (
                &*format!("{{\"error\":{{\"message\":\"key={KEY}\",\"code\":401}}}}"),
                "{\"error\":{\"message\":\"key=***\",\"code\":401}}".to_owned(),
            ),
            // A piece from the middle, in mixed case, and a piece of exactly eight.
            (
                &*format!("a {} b {} c", "3A9cz1X8lM", &KEY[20..28]),
                "a *** b *** c".to_owned(),
            ),
            // Seven characters of it are not enough to name it.
            (&*format!("x {} y", &KEY[..7]), format!("x {} y", &KEY[..7])),
            ("nothing to see", "nothing to see".to_owned()),
            ("", String::new()),
            ("é", "é".to_owned()),
        ];
        for (text, want) in cases {
            assert_eq!(scrub(KEY, text), want, "{text:?}");
        }
    }

    #[test]
    fn a_short_key_is_hidden_where_it_appears_whole() {
        assert_eq!(scrub("abc123", "key abc123 or ABC123"), "key *** or ***");
        assert_eq!(scrub("abc123", "only abc12 here"), "only abc12 here");
        assert_eq!(scrub("abc1", "abc1abc1"), "***");
        assert!(Scrubber::new("abc").is_none());
    }

    #[test]
    fn non_ascii_around_and_in_the_key_stays_valid_text() {
        assert_eq!(scrub(KEY, &format!("«{KEY}»")), "«***»");
        let key = "clé-secrète-numéro-un";
        assert_eq!(scrub(key, "la clé-secrète-numé…"), "la ***…");
        assert_eq!(scrub(key, "CLé-SECRèTE"), "***");
    }

    #[test]
    fn long_texts_take_linear_work() {
        let text = format!("{}{KEY}", "sk-proj-".repeat(100_000));
        let started = std::time::Instant::now();
        let out = scrub(KEY, &text);
        assert!(!out.contains(&KEY[8..]), "the key is hidden");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
