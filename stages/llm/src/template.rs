//! Prompt templates: text with `{{field}}` placeholders, parsed once when the stage is built.

use stagewise_core::stage::Record;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Part>);

/// A rendered prompt, with the fields that had to be cut.
#[derive(Debug, Default)]
pub struct Rendered {
    pub text: String,
    /// `(field, its length in characters)` for every field cut to `max_chars`.
    pub truncated: Vec<(String, usize)>,
    /// Fields the record does not have (rendered as nothing).
    pub missing: Vec<String>,
}

impl Template {
    /// Parse `source`; an unclosed `{{` or an empty or odd name is an error.
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                format!(
                    "`{{{{` at byte {} is never closed by `}}}}`",
                    source.len() - rest.len() + open
                )
            })?;
            let name = after[..close].trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "`{{{{{}}}}}` is not a field name (letters, digits, `_`, `-`)",
                    &after[..close]
                ));
            }
            parts.push(Part::Field(name.to_owned()));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template(parts))
    }

    /// The field names it uses.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Part::Field(name) => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Fill in the record's fields (`key` is the record's key), each cut to `max_chars`.
    pub fn render(&self, record: &Record, max_chars: usize) -> Rendered {
        let mut out = Rendered::default();
        for part in &self.0 {
            match part {
                Part::Text(text) => out.text.push_str(text),
                Part::Field(name) => {
                    if !(name == "key" || record.fields.contains_key(name)) {
                        out.missing.push(name.clone());
                    }
                    let value = field_text(record, name);
                    let chars = value.chars().count();
                    if chars > max_chars {
                        out.text.push_str(cut(&value, max_chars));
                        out.truncated.push((name.clone(), chars));
                    } else {
                        out.text.push_str(&value);
                    }
                }
            }
        }
        out
    }
}

/// A field as prompt text: strings as they are, other values as JSON, missing or null as "".
fn field_text(record: &Record, name: &str) -> String {
    if name == "key" && !record.fields.contains_key("key") {
        return record.key.clone();
    }
    match record.fields.get(name) {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The first `max_chars` characters of `text`, ending at the last sentence end (or else the
/// last space) in their final fifth, so a cut rarely splits a word.
pub fn cut(text: &str, max_chars: usize) -> &str {
    let end = text
        .char_indices()
        .nth(max_chars)
        .map_or(text.len(), |(i, _)| i);
    let head = &text[..end];
    let mut floor = head.len() - head.len() / 5;
    while !head.is_char_boundary(floor) {
        floor += 1;
    }
    let boundary = head[floor..]
        .rfind(['.', '!', '?', '\n'])
        .map(|i| floor + i + 1)
        .or_else(|| head[floor..].rfind(' ').map(|i| floor + i));
    match boundary {
        Some(b) if b > 0 => &head[..b],
        _ => head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: serde_json::Value) -> Record {
        let serde_json::Value::Object(map) = fields else {
            panic!("an object")
        };
        Record {
            key: "k1".into(),
            fields: map,
        }
    }

    #[test]
    fn fills_fields_and_key() {
        let t =
            Template::parse("Title: {{title}} ({{ key }}) n={{n}} {{missing}}.").expect("parses");
        let r = t.render(&record(serde_json::json!({"title": "Budget", "n": 3})), 100);
        assert_eq!(r.text, "Title: Budget (k1) n=3 .");
        assert!(r.truncated.is_empty());
        assert_eq!(
            t.fields().collect::<Vec<_>>(),
            ["title", "key", "n", "missing"]
        );
    }

    #[test]
    fn refuses_broken_templates() {
        assert!(Template::parse("a {{text")
            .expect_err("an error")
            .contains("never closed"));
        assert!(Template::parse("a {{}} b")
            .expect_err("an error")
            .contains("not a field name"));
        assert!(Template::parse("a {{two words}} b").is_err());
        assert!(
            Template::parse("a {{meta.title}} b").is_err(),
            "fields are flat"
        );
        assert_eq!(
            Template::parse("no fields").expect("ok").fields().count(),
            0
        );
    }

    #[test]
    fn cuts_long_fields_at_a_boundary_and_reports_them() {
        let text = "One sentence here. Another sentence there. A third one that goes on and on.";
        let t = Template::parse("{{text}}").expect("parses");
        let r = t.render(&record(serde_json::json!({ "text": text })), 45);
        assert_eq!(r.text, "One sentence here. Another sentence there.");
        assert_eq!(r.truncated, vec![("text".to_owned(), text.chars().count())]);
        // Multi-byte characters are counted as characters, never split.
        let t = Template::parse("{{t}}").expect("parses");
        let r = t.render(&record(serde_json::json!({ "t": "ééééé" })), 3);
        assert_eq!(r.text, "ééé");
    }
}
