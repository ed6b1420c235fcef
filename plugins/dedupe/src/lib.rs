//! `dedupe`: a stagewise plugin that skips an item whose text is the same as, or nearly the same
//! as, the text of an item already seen by this stage in this process, with the reason
//! "duplicate of KEY".
//!
//! The text is normalized (lowercase, words of letters and digits, everything else dropped) and
//! cut into shingles of `shingle` consecutive words. Two texts are as similar as the Jaccard
//! index of their shingle sets, estimated with a MinHash signature of 32 hashes; candidates are
//! found through 8 bands of 4 hashes (locality-sensitive hashing), so each item costs the same
//! whatever the batch size. An item is a duplicate when its estimated similarity to an earlier
//! item reaches `similarity`. With `similarity = 1.0` only texts with the same shingles
//! (the same words, whatever the case, spacing and punctuation) are duplicates.
//!
//! Of two duplicates, the one processed first passes. With `concurrency` above 1 (or even at 1,
//! as items are scheduled on several threads) that is not necessarily the one first in the input.
//!
//! Memory: about 300 bytes per distinct item, kept for the life of the process. What was seen
//! is not checkpointed: a resumed run only compares the items it processes itself.

use std::collections::HashMap;
use std::sync::Mutex;

use stagewise_plugin::serde_json::{json, Value};
use stagewise_plugin::{export, Context, Error, Outcome, Record, Stage};

/// MinHash signature length.
const HASHES: usize = 32;
/// Rows per LSH band: 8 bands of 4 rows find pairs from a similarity of about 0.6 up.
const ROWS: usize = 4;
const BANDS: usize = HASHES / ROWS;

/// What to do with an item whose `field` is missing or not a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum OnMissing {
    Pass,
    Skip,
    Fail,
}

#[derive(Debug, serde::Deserialize)]
struct Config {
    #[serde(default = "default_field")]
    field: String,
    #[serde(default = "default_shingle")]
    shingle: usize,
    #[serde(default = "default_similarity")]
    similarity: f64,
    #[serde(default = "default_on_missing")]
    on_missing: OnMissing,
}

fn default_field() -> String {
    "text".to_owned()
}
fn default_shingle() -> usize {
    3
}
fn default_similarity() -> f64 {
    0.9
}
fn default_on_missing() -> OnMissing {
    OnMissing::Pass
}

/// Items seen so far: their signatures and, per band, which items share each band hash.
#[derive(Default)]
struct Seen {
    keys: Vec<String>,
    signatures: Vec<[u64; HASHES]>,
    bands: Vec<HashMap<u64, Vec<usize>>>,
}

struct Dedupe {
    config: Config,
    seen: Mutex<Seen>,
}

impl Stage for Dedupe {
    const KIND: &'static str = "dedupe";
    const DESCRIPTION: &'static str =
        "skip items whose text nearly repeats an earlier item's (MinHash over word shingles)";
    type Config = Config;

    fn config_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "field": {
                    "type": "string", "minLength": 1, "default": "text",
                    "description": "the field holding the text to compare"
                },
                "shingle": {
                    "type": "integer", "minimum": 1, "maximum": 16, "default": 3,
                    "description": "words per shingle: larger values make reordered text less similar"
                },
                "similarity": {
                    "type": "number", "minimum": 0.6, "maximum": 1, "default": 0.9,
                    "description": "estimated Jaccard similarity of the shingle sets from which an item is a duplicate"
                },
                "on_missing": {
                    "enum": ["pass", "skip", "fail"], "default": "pass",
                    "description": "what to do with an item whose field is missing or not a string"
                }
            },
            "additionalProperties": false
        })
    }

    fn new(config: Config) -> Result<Self, Error> {
        Ok(Dedupe {
            config,
            seen: Mutex::new(Seen {
                bands: vec![HashMap::new(); BANDS],
                ..Seen::default()
            }),
        })
    }

    fn process(&self, record: Record, cx: &Context) -> Result<Outcome, Error> {
        let Some(text) = record.get_str(&self.config.field) else {
            let field = &self.config.field;
            return match self.config.on_missing {
                OnMissing::Pass => Ok(Outcome::Continue(record)),
                OnMissing::Skip => Ok(Outcome::skip(format!("no text in `{field}`"))),
                OnMissing::Fail => Err(Error::permanent(format!("no text in `{field}`"))),
            };
        };
        let signature = signature(text, self.config.shingle);
        // Checking and adding under one lock: of two concurrent duplicates, exactly one passes.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((other, similarity)) = seen.closest(&signature, &record.key) {
            if similarity >= self.config.similarity {
                let other = seen.keys[other].clone();
                cx.debug(&format!(
                    "duplicate of {other} (similarity {similarity:.2})"
                ));
                return Ok(Outcome::skip(format!("duplicate of {other}")));
            }
        }
        seen.add(record.key.clone(), signature);
        Ok(Outcome::Continue(record))
    }
}

impl Seen {
    /// The most similar earlier item sharing a band with `signature`, other than `key` itself
    /// (a retried attempt of the same item).
    fn closest(&self, signature: &[u64; HASHES], key: &str) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for (band, hash) in band_hashes(signature).into_iter().enumerate() {
            for &i in self.bands[band].get(&hash).into_iter().flatten() {
                if self.keys[i] == key {
                    continue;
                }
                let same = self.signatures[i]
                    .iter()
                    .zip(signature)
                    .filter(|(a, b)| a == b)
                    .count();
                let similarity = same as f64 / HASHES as f64;
                if best.is_none_or(|(_, s)| similarity > s) {
                    best = Some((i, similarity));
                }
            }
        }
        best
    }

    fn add(&mut self, key: String, signature: [u64; HASHES]) {
        let i = self.keys.len();
        for (band, hash) in band_hashes(&signature).into_iter().enumerate() {
            self.bands[band].entry(hash).or_default().push(i);
        }
        self.keys.push(key);
        self.signatures.push(signature);
    }
}

fn band_hashes(signature: &[u64; HASHES]) -> [u64; BANDS] {
    let mut out = [0; BANDS];
    for (band, rows) in signature.chunks(ROWS).enumerate() {
        out[band] = rows.iter().fold(band as u64, |h, r| mix(h ^ r));
    }
    out
}

/// The MinHash signature of a text's word shingles.
fn signature(text: &str, shingle: usize) -> [u64; HASHES] {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let width = shingle.clamp(1, words.len().max(1));
    let shingles: Vec<u64> = if words.is_empty() {
        vec![fnv1a(b"")]
    } else {
        words
            .windows(width)
            .map(|w| fnv1a(w.join(" ").as_bytes()))
            .collect()
    };
    let mut signature = [u64::MAX; HASHES];
    for s in shingles {
        for (i, slot) in signature.iter_mut().enumerate() {
            *slot = (*slot).min(mix(s ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        }
    }
    signature
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The SplitMix64 finalizer: spreads a 64-bit value over all bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

export!(Dedupe);

#[cfg(test)]
mod tests {
    use super::*;
    use stagewise_plugin::testing;

    fn text(key: &str, text: &str) -> Record {
        Record::new(key).with("text", text)
    }

    const ARTICLE: &str = "The council approved the new budget on Tuesday after a long debate \
        about school funding, road repairs and the future of the public library in the old town.";

    #[test]
    fn skips_exact_and_near_duplicates_but_not_other_texts() {
        let stage: Dedupe = testing::new(json!({})).expect("defaults are valid");
        let cases = [
            ("1", ARTICLE.to_owned(), None),
            // Case, spacing and punctuation do not matter.
            (
                "2",
                ARTICLE.to_uppercase().replace(',', " ;"),
                Some("duplicate of 1"),
            ),
            // The same story with a word added at the end.
            ("3", format!("{ARTICLE} Updated."), Some("duplicate of 1")),
            (
                "4",
                "A completely different story about the weather and the harvest this year."
                    .to_owned(),
                None,
            ),
        ];
        for (key, body, want) in cases {
            let out = testing::call(&stage, text(key, &body)).expect("no error");
            match want {
                None => assert!(matches!(out, Outcome::Continue(_)), "{key}: {out:?}"),
                Some(reason) => assert_eq!(out, Outcome::skip(reason), "{key}"),
            }
        }
    }

    #[test]
    fn a_retried_item_is_not_its_own_duplicate() {
        let stage: Dedupe = testing::new(json!({})).expect("valid");
        for _ in 0..2 {
            let out = testing::call(&stage, text("7", ARTICLE)).expect("no error");
            assert!(matches!(out, Outcome::Continue(_)), "{out:?}");
        }
    }

    #[test]
    fn similarity_one_only_skips_the_same_words() {
        let stage: Dedupe = testing::new(json!({"similarity": 1.0})).expect("valid");
        let first = testing::call(&stage, text("1", ARTICLE)).expect("ok");
        assert!(matches!(first, Outcome::Continue(_)));
        let near = testing::call(&stage, text("2", &ARTICLE.replace("Tuesday", "Friday")));
        assert!(matches!(near, Ok(Outcome::Continue(_))), "{near:?}");
        let same = testing::call(&stage, text("3", &format!("  {ARTICLE}!! ")));
        assert_eq!(same, Ok(Outcome::skip("duplicate of 1")));
    }

    #[test]
    fn a_missing_field_is_handled_as_configured() {
        let cases = [
            ("pass", Ok(true)),
            ("skip", Ok(false)),
            ("fail", Err("no text in `body`")),
        ];
        for (mode, want) in cases {
            let config = json!({"field": "body", "on_missing": mode});
            let out = testing::process::<Dedupe>(config, Record::new("1"));
            match (out, want) {
                (Ok(Outcome::Continue(_)), Ok(true)) | (Ok(Outcome::Skip(_)), Ok(false)) => {}
                (Err(e), Err(m)) => assert_eq!(e.message, m),
                (other, _) => panic!("{mode}: {other:?}"),
            }
        }
    }
}
