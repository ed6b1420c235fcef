//! Typed deserialization that reports every problem of a table, not just the first.
//!
//! serde stops at the first error. To report all of them at once, a failed key is removed from
//! a copy of the table and deserialization is tried again, until it succeeds or an error cannot
//! be pinned to a key (a missing field). Each round removes one key, so it ends.

use serde::de::DeserializeOwned;

use super::{KeyProblem, KeyProblemKind};

/// Deserialize `table` as `T`, or return every problem found, each with its key path.
pub(crate) fn deserialize_all<T: DeserializeOwned>(
    table: &toml::Table,
) -> Result<T, Vec<KeyProblem>> {
    let mut table = table.clone();
    let mut problems: Vec<KeyProblem> = Vec::new();
    let mut removed: Vec<Vec<String>> = Vec::new();
    loop {
        let err = match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table.clone()))
        {
            Ok(value) if problems.is_empty() => return Ok(value),
            Ok(_) => return Err(problems),
            Err(err) => err,
        };
        let mut path: Vec<String> = err
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let message = err.into_inner().message().to_owned();
        let kind = match parse_unknown_field(&message) {
            Some((key, expected)) => {
                if path.last() != Some(&key) {
                    path.push(key.clone());
                }
                KeyProblemKind::Unknown { key, expected }
            }
            None => {
                // A field missing only because an earlier round removed it is not news.
                if let Some(field) = parse_missing_field(&message) {
                    let mut full = path.clone();
                    full.push(field);
                    if removed.contains(&full) {
                        return Err(problems);
                    }
                }
                KeyProblemKind::Invalid(plain_message(message))
            }
        };
        let removable = remove_path(&mut table, &path);
        problems.push(KeyProblem {
            path: path.clone(),
            kind,
        });
        if !removable {
            return Err(problems);
        }
        removed.push(path);
    }
}

/// serde's words for a broken invariant of a key's type, in the words of the file: a count that
/// must be at least 1 is a `NonZero*` field, whose zero serde calls "invalid value: integer `0`,
/// expected a nonzero usize". Other problems of such a field (a string, a float, a number too
/// large) keep serde's words, which name what was found.
///
/// And serde names Rust's types (`expected u64`, `expected a nonzero usize`): those are said as
/// what the file can write, with an example, and so is a duration.
fn plain_message(message: String) -> String {
    if message.starts_with("invalid value: integer `0`, expected a nonzero") {
        return "must be at least 1".to_owned();
    }
    const AT_LEAST_1: &str = "expected a whole number of at least 1, such as 10";
    const NATURAL: &str = "expected a whole number, 0 or more, such as 10";
    const INTEGER: &str = "expected a whole number, such as 10";
    const WORDS: [(&str, &str); 16] = [
        ("expected a nonzero u64", AT_LEAST_1),
        ("expected a nonzero usize", AT_LEAST_1),
        ("expected a nonzero u32", AT_LEAST_1),
        ("expected u64", NATURAL),
        ("expected usize", NATURAL),
        ("expected u32", NATURAL),
        ("expected u16", NATURAL),
        ("expected u8", NATURAL),
        ("expected i64", INTEGER),
        ("expected i32", INTEGER),
        ("expected f64", "expected a number, such as 0.5"),
        ("expected f32", "expected a number, such as 0.5"),
        ("expected a boolean", "expected true or false"),
        ("expected a string", "expected a string in quotes"),
        (
            "expected a duration",
            "expected a duration such as \"20s\", \"1m30s\" or \"500ms\"",
        ),
        (
            "expected a map",
            "expected a table, such as { key = \"value\" }",
        ),
    ];
    for (rust, words) in WORDS {
        if let Some(head) = message.strip_suffix(rust) {
            return format!("{head}{words}");
        }
    }
    message
}

/// serde's message for `deny_unknown_fields`: "unknown field `x`, expected one of `a`, `b`"
/// (or "expected `a`", or "there are no fields").
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((key.to_owned(), expected))
}

fn parse_missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split_once('`').map(|(field, _)| field.to_owned())
}

fn remove_path(table: &mut toml::Table, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut value: &mut toml::Table = table;
    for seg in parents {
        value = match value.get_mut(seg) {
            Some(toml::Value::Table(t)) => t,
            _ => return false,
        };
    }
    value.remove(last).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        attempts: Option<u32>,
        initial: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        count: u64,
        retry: Option<Inner>,
        label: Option<String>,
    }

    fn problems(src: &str) -> Vec<KeyProblem> {
        let table: toml::Table = toml::from_str(src).expect("valid toml");
        deserialize_all::<Outer>(&table).expect_err("should fail")
    }

    #[test]
    fn reports_every_unknown_key_with_its_path() {
        let got = problems("count = 1\ncuont = 2\nretry = { atempts = 3 }\n");
        let paths: Vec<Vec<String>> = got.iter().map(|p| p.path.clone()).collect();
        assert_eq!(paths.len(), 2, "{got:?}");
        assert!(paths.contains(&vec!["cuont".to_owned()]));
        assert!(paths.contains(&vec!["retry".to_owned(), "atempts".to_owned()]));
        for p in &got {
            let KeyProblemKind::Unknown { expected, .. } = &p.kind else {
                panic!("expected unknown-key problems, got {p:?}");
            };
            assert!(!expected.is_empty());
        }
    }

    #[test]
    fn reports_type_errors_after_unknown_keys() {
        let got = problems("count = \"many\"\nlabl = 1\nretry = { attempts = -1 }\n");
        assert_eq!(got.len(), 3, "{got:?}");
    }

    #[test]
    fn a_missing_field_is_reported_once() {
        let got = problems("label = \"x\"\n");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            matches!(&got[0].kind, KeyProblemKind::Invalid(m) if m.contains("missing field `count`"))
        );
    }

    #[test]
    fn accepts_a_valid_table() {
        let table: toml::Table =
            toml::from_str("count = 3\nretry = { attempts = 2 }").expect("toml");
        let outer = deserialize_all::<Outer>(&table).expect("valid");
        assert_eq!(outer.count, 3);
    }

    #[test]
    fn a_zero_count_must_be_at_least_one() {
        #[derive(Debug, serde::Deserialize)]
        struct Counts {
            #[allow(dead_code)]
            workers: std::num::NonZeroUsize,
        }
        let table: toml::Table = toml::from_str("workers = 0").expect("toml");
        let problems = deserialize_all::<Counts>(&table).expect_err("zero is refused");
        assert_eq!(
            problems,
            [KeyProblem {
                path: vec!["workers".to_owned()],
                kind: KeyProblemKind::Invalid("must be at least 1".to_owned()),
            }]
        );
        // A wrong type is not a zero: serde's own words name what was found.
        let table: toml::Table = toml::from_str("workers = \"4\"").expect("toml");
        let problems = deserialize_all::<Counts>(&table).expect_err("a string is refused");
        assert!(
            matches!(&problems[0].kind, KeyProblemKind::Invalid(m) if m.contains("invalid type: string")),
            "{problems:?}"
        );
    }
}
