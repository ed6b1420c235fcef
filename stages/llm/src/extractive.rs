//! The `extractive` provider: no model, no network, no key. It picks the sentences of a text with
//! the most factual signal — figures, dates, amounts, units, names — and returns them in the
//! answer's schema. It summarises nothing and infers nothing: every sentence it returns is a
//! sentence of the text. It is what the default pipeline runs offline, and a baseline.

use serde_json::{Map, Value};

const MONTHS: [&str; 24] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
];

const UNITS: [&str; 28] = [
    "percent",
    "per",
    "million",
    "billion",
    "thousand",
    "km",
    "kilometres",
    "kilometers",
    "miles",
    "metres",
    "meters",
    "kg",
    "tonnes",
    "tons",
    "hours",
    "minutes",
    "days",
    "weeks",
    "months",
    "years",
    "euros",
    "dollars",
    "pounds",
    "people",
    "residents",
    "votes",
    "seats",
    "grams",
];

/// Abbreviations after which a full stop does not end a sentence.
const ABBREVIATIONS: [&str; 16] = [
    "mr", "mrs", "ms", "dr", "prof", "st", "no", "vs", "etc", "e.g", "i.e", "inc", "ltd", "co",
    "jr", "sr",
];

/// What the schema lets the provider fill: each property that is a string (gets the lead
/// sentence) or a list of strings (gets the picked sentences).
#[derive(Debug, Clone)]
pub struct Shape {
    lists: Vec<String>,
    strings: Vec<String>,
}

impl Shape {
    /// The shape of `schema`, or why the provider cannot answer in it.
    pub fn of(schema: &Value) -> Result<Shape, String> {
        let props = schema
            .get("properties")
            .and_then(Value::as_object)
            .filter(|_| schema.get("type").and_then(Value::as_str) == Some("object"))
            .ok_or("the extractive provider needs a schema of type object with properties")?;
        let mut shape = Shape {
            lists: Vec::new(),
            strings: Vec::new(),
        };
        for (name, prop) in props {
            let ty = prop.get("type").and_then(Value::as_str);
            let items = prop.pointer("/items/type").and_then(Value::as_str);
            match (ty, items) {
                (Some("string"), _) => shape.strings.push(name.clone()),
                (Some("array"), Some("string")) => shape.lists.push(name.clone()),
                _ => {}
            }
        }
        let required = schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str);
        for name in required {
            if !shape.lists.iter().chain(&shape.strings).any(|n| n == name) {
                return Err(format!(
                    "the extractive provider fills only string and list-of-string properties; `{name}` is required and is neither"
                ));
            }
        }
        if shape.lists.is_empty() && shape.strings.is_empty() {
            return Err("the schema has no string or list-of-string property to fill".into());
        }
        Ok(shape)
    }
}

/// The answer for `text`: at most `max_sentences` sentences, in the text's order.
pub fn answer(text: &str, shape: &Shape, max_sentences: usize) -> Value {
    let sentences = split_sentences(text);
    let mut scored: Vec<(usize, f64)> = sentences
        .iter()
        .enumerate()
        .map(|(i, s)| (i, score(s)))
        .filter(|(_, score)| *score > 0.0)
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(max_sentences);
    scored.sort_by_key(|(i, _)| *i);
    let picked: Vec<Value> = scored
        .iter()
        .map(|(i, _)| Value::String(sentences[*i].clone()))
        .collect();
    // The lead: the first sentence long enough to say something.
    let lead = sentences
        .iter()
        .find(|s| s.split_whitespace().count() >= 8)
        .or_else(|| sentences.first())
        .cloned()
        .unwrap_or_default();
    let mut out = Map::new();
    for name in &shape.lists {
        out.insert(name.clone(), Value::Array(picked.clone()));
    }
    for name in &shape.strings {
        out.insert(name.clone(), Value::String(lead.clone()));
    }
    Value::Object(out)
}

/// Sentences of a text: split at line breaks, and at `.`, `!` or `?` followed by a space and a
/// capital, digit or quote, unless the word before is an abbreviation or an initial.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let chars: Vec<char> = line.chars().collect();
        let mut start = 0;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let ends = matches!(c, '.' | '!' | '?')
                && chars.get(i + 1).is_some_and(|n| n.is_whitespace())
                && chars.get(i + 2).is_some_and(|n| {
                    n.is_uppercase() || n.is_ascii_digit() || "\"“'‘(".contains(*n)
                });
            if ends && !(c == '.' && before_is_abbreviation(&chars[start..i])) {
                push_sentence(&mut out, &chars[start..=i]);
                start = i + 1;
            }
            i += 1;
        }
        push_sentence(&mut out, &chars[start.min(chars.len())..]);
    }
    out
}

fn push_sentence(out: &mut Vec<String>, chars: &[char]) {
    let s: String = chars.iter().collect();
    // Runs of spaces (table cells, layout) become one.
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if !s.is_empty() {
        out.push(s);
    }
}

fn before_is_abbreviation(before: &[char]) -> bool {
    let word: String = before
        .iter()
        .rev()
        .take_while(|c| !c.is_whitespace())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let word = word.trim_start_matches(['(', '"', '“']).to_lowercase();
    (word.chars().count() == 1 && word.chars().all(char::is_alphabetic))
        || ABBREVIATIONS.contains(&word.as_str())
}

/// Factual signal of a sentence; 0 for sentences not worth returning.
fn score(sentence: &str) -> f64 {
    let words: Vec<&str> = sentence.split_whitespace().collect();
    // A fact is a sentence: headings, table rows and list items without a full stop are not.
    let ends_a_sentence = sentence
        .trim_end_matches(['"', '\'', '”', '’', ')', '»'])
        .ends_with(['.', '!']);
    if words.len() < 5 || words.len() > 60 || !ends_a_sentence {
        return 0.0;
    }
    let mut score = 0.0;
    let mut names = 0;
    for (i, raw) in words.iter().enumerate() {
        let word = raw.trim_matches(|c: char| !c.is_alphanumeric());
        let lower = word.to_lowercase();
        if word.chars().any(|c| c.is_ascii_digit()) {
            score += if (1900..2100).contains(&word.parse::<u32>().unwrap_or(0)) {
                1.5
            } else {
                2.0
            };
        }
        if raw.contains(['%', '€', '$', '£']) {
            score += 1.0;
        }
        if MONTHS.contains(&lower.as_str()) && i > 0 {
            score += 1.5;
        }
        if UNITS.contains(&lower.as_str()) {
            score += 0.5;
        }
        if i > 0 && word.chars().next().is_some_and(char::is_uppercase) && names < 4 {
            names += 1;
            score += 0.75;
        }
    }
    // Long sentences collect signal by length alone: compare density, not totals.
    score / (words.len() as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_schema;

    #[test]
    fn splits_sentences_but_not_abbreviations_or_decimals() {
        let s = split_sentences(
            "Dr. Okafor said the budget grew 4.2 percent. It passed 7 to 2! Was it fair? \"Yes,\" she said.\nA   new line.",
        );
        assert_eq!(
            s,
            [
                "Dr. Okafor said the budget grew 4.2 percent.",
                "It passed 7 to 2!",
                "Was it fair?",
                "\"Yes,\" she said.",
                "A new line."
            ]
        );
    }

    #[test]
    fn prefers_sentences_with_figures_dates_and_names() {
        let text = "The weather was pleasant and everyone seemed to enjoy the afternoon. \
                    The council approved a budget of 4.2 million euros on 3 March 2026 by 7 votes to 2. \
                    Many people said that they liked it very much indeed.";
        let shape = Shape::of(&default_schema()).expect("the default schema fits");
        let v = answer(text, &shape, 1);
        assert_eq!(
            v["facts"],
            serde_json::json!(["The council approved a budget of 4.2 million euros on 3 March 2026 by 7 votes to 2."])
        );
        assert_eq!(
            v["summary"],
            "The weather was pleasant and everyone seemed to enjoy the afternoon."
        );
    }

    #[test]
    fn table_rows_and_headings_are_not_facts() {
        let text = "Results 2026 by category\n1   8.5 km / 520 m   Nadia Holm   52:18   9th\nThe relay drew 412 runners from 37 clubs on 4 October.";
        let shape = Shape::of(&default_schema()).expect("the default schema fits");
        let v = answer(text, &shape, 5);
        assert_eq!(
            v["facts"],
            serde_json::json!(["The relay drew 412 runners from 37 clubs on 4 October."])
        );
    }

    #[test]
    fn refuses_schemas_it_cannot_fill() {
        let schema = serde_json::json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
        assert!(Shape::of(&schema).expect_err("an error").contains("`n`"));
        assert!(Shape::of(&serde_json::json!({"type": "array"})).is_err());
    }
}
