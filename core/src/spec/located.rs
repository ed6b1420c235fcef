//! Where each value of the spec came from: a line and column of the pipeline file, or an
//! environment variable. Also the two ways the environment reaches the spec: `${VAR}` inside
//! string values, and `STAGEWISE_…` overrides of whole keys.

use std::collections::HashMap;
use std::ops::Range;

/// A key path inside the document, e.g. `["stage", "2", "retry", "attempts"]`.
pub(crate) type KeyPath = Vec<String>;

fn join(path: &[String]) -> String {
    path.join("\u{1f}")
}

/// Spans of every key and value of the file, and the keys set from the environment.
#[derive(Debug, Default, Clone)]
pub(crate) struct Origins {
    text: String,
    spans: HashMap<String, (Range<usize>, Range<usize>)>,
    env: HashMap<String, String>,
}

/// Where a problem is, as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A position in the pipeline file (1-based).
    File {
        /// Line, from 1.
        line: usize,
        /// Column in characters, from 1.
        col: usize,
    },
    /// An environment variable override.
    Env(String),
}

impl Origins {
    /// Index the spans of a parsed document.
    pub(crate) fn new(text: &str, doc: &toml::de::DeTable<'_>) -> Self {
        let mut origins = Origins {
            text: text.to_owned(),
            ..Origins::default()
        };
        origins.index_table(doc, &mut Vec::new());
        origins
    }

    fn index_table(&mut self, table: &toml::de::DeTable<'_>, path: &mut KeyPath) {
        for (key, value) in table.iter() {
            path.push(key.get_ref().to_string());
            self.spans.insert(join(path), (key.span(), value.span()));
            self.index_value(value.get_ref(), path);
            path.pop();
        }
    }

    fn index_value(&mut self, value: &toml::de::DeValue<'_>, path: &mut KeyPath) {
        match value {
            toml::de::DeValue::Table(t) => self.index_table(t, path),
            toml::de::DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(i.to_string());
                    self.spans.insert(join(path), (item.span(), item.span()));
                    self.index_value(item.get_ref(), path);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    /// Remember that `path` was set by environment variable `var`.
    pub(crate) fn set_env(&mut self, path: &[String], var: &str) {
        self.env.insert(join(path), var.to_owned());
    }

    /// The place of the key at `path` (`at_key`) or of its value, or of the nearest enclosing
    /// key that has one.
    pub(crate) fn place(&self, path: &[String], at_key: bool) -> Option<Place> {
        // An override replaces the whole value at its path, so whatever lies under it comes
        // from the variable, even where the file had a key of the same name.
        for len in (0..=path.len()).rev() {
            if let Some(var) = self.env.get(&join(&path[..len])) {
                return Some(Place::Env(var.clone()));
            }
        }
        for len in (0..=path.len()).rev() {
            let joined = join(&path[..len]);
            if let Some((key, value)) = self.spans.get(&joined) {
                let offset = if at_key || len < path.len() {
                    key.start
                } else {
                    value.start
                };
                return Some(self.line_col(offset));
            }
        }
        None
    }

    /// The line and column (1-based, column in characters) of a byte offset.
    pub(crate) fn line_col(&self, offset: usize) -> Place {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(&self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        Place::File { line, col }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The values taken from `${VAR}`: each string's path and the variables it names.
pub(crate) type Substitutions = Vec<(KeyPath, Vec<String>)>;

/// What [`substitute_env`] found: the strings that named variables, the references that could
/// not be resolved (a path and a message each), and, when unset variables are allowed, the
/// strings that named one (a path and the variables each).
#[derive(Default)]
pub(crate) struct Found {
    pub(crate) used: Substitutions,
    pub(crate) problems: Vec<(KeyPath, String)>,
    /// `None`: an unset variable is a problem.
    pub(crate) unset: Option<Substitutions>,
}

/// Replace `${VAR}` in every string value from `lookup`; `$${` stands for a literal `${`.
/// An unset variable without a default is a problem, or, where `found.unset` is kept, expands
/// to nothing and is recorded there.
pub(crate) fn substitute_env(
    value: &mut toml::Value,
    path: &mut KeyPath,
    lookup: &dyn Fn(&str) -> Option<String>,
    found: &mut Found,
) {
    match value {
        toml::Value::String(s) if s.contains('$') => {
            let mut vars = Vec::new();
            let mut unset = found.unset.as_ref().map(|_| Vec::new());
            match expand(s, lookup, &mut vars, unset.as_mut()) {
                Ok(expanded) => *s = expanded,
                Err(message) => found.problems.push((path.clone(), message)),
            }
            if !vars.is_empty() {
                found.used.push((path.clone(), vars));
            }
            if let (Some(unset), Some(all)) = (unset.filter(|u| !u.is_empty()), &mut found.unset) {
                all.push((path.clone(), unset));
            }
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                substitute_env(item, path, lookup, found);
                path.pop();
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                path.push(key.clone());
                substitute_env(item, path, lookup, found);
                path.pop();
            }
        }
        _ => {}
    }
}

/// `s` with its `${VAR}`s replaced; the names of the variables it read go to `vars`. An unset
/// variable without a default is an error, or, given `unset`, expands to nothing and goes there.
fn expand(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    vars: &mut Vec<String>,
    mut unset: Option<&mut Vec<String>>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| "unclosed `${` in value (write `$${` for a literal)".to_owned())?;
            // `${VAR:-default}`: the default when VAR is unset or empty, as a shell does.
            let (name, default) = match after[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&after[..end], None),
            };
            if default.is_some_and(|d| d.contains("${")) {
                return Err(format!(
                    "the default of `${{{name}:-…}}` holds `${{`: a default is plain text (references in it are not read)"
                ));
            }
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "invalid environment variable name `{name}` in `${{…}}`"
                ));
            }
            let value = match (lookup(name), default, unset.as_deref_mut()) {
                (Some(value), Some(default), _) if value.is_empty() => default.to_owned(),
                (Some(value), _, _) => value,
                (None, Some(default), _) => default.to_owned(),
                (None, None, Some(unset)) => {
                    unset.push(name.to_owned());
                    String::new()
                }
                (None, None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (`${{{name}:-default}}` gives a default)"
                    ))
                }
            };
            vars.push(name.to_owned());
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The sections an override may address: `STAGEWISE_<SECTION>__…`.
const SECTIONS: &[&str] = &["pipeline", "checkpoint", "telemetry", "defaults", "stage"];

/// The name of a stage as it appears in an environment variable.
pub(crate) fn env_stage_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// Apply `STAGEWISE_PIPELINE__KEY=value`, `STAGEWISE_STAGE__<NAME>__KEY=value` and the like.
///
/// Overrides are applied to the parsed document itself rather than layered with figment, so
/// that every later error can still say where its value came from (a line of the file, or the
/// variable), and so that stages are addressed by name although they are a list.
/// Values are read as TOML values when they parse as one (`5`, `true`, `[1, 2]`) and as strings
/// otherwise (`2m`). Other `STAGEWISE_` variables are not overrides and are left alone.
pub(crate) fn apply_overrides(
    doc: &mut toml::Table,
    vars: &[(String, String)],
    origins: &mut Origins,
    problems: &mut Vec<(Option<KeyPath>, String)>,
) {
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix("STAGEWISE_") else {
            continue;
        };
        let segs: Vec<&str> = rest.split("__").collect();
        let section = segs[0].to_ascii_lowercase();
        if !SECTIONS.contains(&section.as_str()) {
            continue;
        }
        let keys: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
        let path: KeyPath = if section == "stage" {
            let Some(wanted) = segs.get(1) else {
                problems.push((
                    None,
                    format!("`{var}`: expected STAGEWISE_STAGE__<NAME>__<KEY>"),
                ));
                continue;
            };
            let stages = doc.get("stage").and_then(toml::Value::as_array);
            let index = stages.and_then(|stages| {
                stages.iter().position(|s| {
                    s.get("name")
                        .and_then(toml::Value::as_str)
                        .is_some_and(|n| env_stage_name(n) == wanted.to_ascii_uppercase())
                })
            });
            let Some(index) = index else {
                problems.push((
                    None,
                    format!("`{var}`: there is no stage named like `{wanted}`"),
                ));
                continue;
            };
            let mut path = vec!["stage".to_owned(), index.to_string()];
            path.extend(keys[2..].iter().cloned());
            path
        } else {
            keys
        };
        if path.len() < 2 || path.iter().any(String::is_empty) {
            problems.push((None, format!("`{var}`: expected a key after the section")));
            continue;
        }
        if let Err(message) = set_path(doc, &path, parse_env_value(raw)) {
            problems.push((None, format!("`{var}`: {message}")));
            continue;
        }
        origins.set_env(&path, var);
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(doc: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut table = doc;
    let mut segs = parents.iter();
    while let Some(seg) = segs.next() {
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            // `[[stage]]`: the next segment is the index found by name.
            toml::Value::Array(items) => {
                let index: usize = segs
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("`{seg}` is a list"))?;
                match items.get_mut(index) {
                    Some(toml::Value::Table(t)) => t,
                    _ => return Err(format!("`{seg}` is not a table")),
                }
            }
            _ => return Err(format!("`{seg}` is not a table")),
        };
    }
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables() {
        let lookup = |name: &str| match name {
            "HOST" => Some("db.local".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let cases = [
            ("postgres://${HOST}/x", Ok("postgres://db.local/x")),
            ("cost $5", Ok("cost $5")),
            ("$${HOST}", Ok("${HOST}")),
            ("${MISSING:-fallback}", Ok("fallback")),
            ("${HOST:-fallback}", Ok("db.local")),
            ("${EMPTY:-fallback}", Ok("fallback")),
            ("${MISSING:-}", Ok("")),
            ("${MISSING:-a:-b}", Ok("a:-b")),
            ("${1X:-y}", Err("invalid")),
            ("${A:-${B:-x}}", Err("a default is plain text")),
            ("${A:-$${B}}", Err("a default is plain text")),
            ("${MISSING}", Err("`MISSING` is not set")),
            ("${HOST", Err("unclosed")),
            ("${1X}", Err("invalid")),
        ];
        for (input, want) in cases {
            match (expand(input, &lookup, &mut Vec::new(), None), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{input}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{input}: {got}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn overrides_address_stages_by_name() {
        let text = "[pipeline]\nname = \"p\"\n[[stage]]\nname = \"http-get\"\nkind = \"x\"\n";
        let mut doc: toml::Table = toml::from_str(text).expect("toml");
        let parsed = toml::de::DeTable::parse(text).expect("toml");
        let mut origins = Origins::new(text, parsed.get_ref());
        let vars = vec![
            (
                "STAGEWISE_STAGE__HTTP_GET__TIMEOUT".to_owned(),
                "60s".to_owned(),
            ),
            (
                "STAGEWISE_STAGE__HTTP_GET__RETRY__ATTEMPTS".to_owned(),
                "5".to_owned(),
            ),
            ("STAGEWISE_PIPELINE__BATCH_SIZE".to_owned(), "10".to_owned()),
            ("STAGEWISE_TEST_PG".to_owned(), "ignored".to_owned()),
            ("STAGEWISE_STAGE__NOPE__TIMEOUT".to_owned(), "1s".to_owned()),
        ];
        let mut problems = Vec::new();
        apply_overrides(&mut doc, &vars, &mut origins, &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains("NOPE"));
        let stage = &doc["stage"][0];
        assert_eq!(stage["timeout"].as_str(), Some("60s"));
        assert_eq!(stage["retry"]["attempts"].as_integer(), Some(5));
        assert_eq!(doc["pipeline"]["batch_size"].as_integer(), Some(10));
        let path: Vec<String> = ["stage", "0", "timeout"].map(String::from).to_vec();
        assert_eq!(
            origins.place(&path, true),
            Some(Place::Env("STAGEWISE_STAGE__HTTP_GET__TIMEOUT".to_owned()))
        );
        let name: Vec<String> = ["stage", "0", "name"].map(String::from).to_vec();
        assert_eq!(
            origins.place(&name, true),
            Some(Place::File { line: 4, col: 1 })
        );
    }

    #[test]
    fn an_override_of_a_table_hides_the_keys_the_file_had_in_it() {
        let text = "[defaults]\nretry = { attempts = 2 }\n";
        let mut doc: toml::Table = toml::from_str(text).expect("toml");
        let parsed = toml::de::DeTable::parse(text).expect("toml");
        let mut origins = Origins::new(text, parsed.get_ref());
        let var = "STAGEWISE_DEFAULTS__RETRY".to_owned();
        let vars = vec![(var.clone(), "{ attempts = 5 }".to_owned())];
        apply_overrides(&mut doc, &vars, &mut origins, &mut Vec::new());
        let path: Vec<String> = ["defaults", "retry", "attempts"].map(String::from).to_vec();
        assert_eq!(origins.place(&path, true), Some(Place::Env(var)));
    }

    #[test]
    fn substitutions_name_their_variables() {
        let mut value = toml::Value::Table(
            toml::from_str("a = \"${X}-${Y}\"\nb = [\"$${X}\", \"${X}\"]\nc = \"plain\"")
                .expect("toml"),
        );
        let lookup = |_: &str| Some("v".to_owned());
        let mut found = Found::default();
        substitute_env(&mut value, &mut Vec::new(), &lookup, &mut found);
        let Found { used, problems, .. } = found;
        assert!(problems.is_empty(), "{problems:?}");
        let path = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect::<KeyPath>();
        assert_eq!(
            used,
            vec![
                (path(&["a"]), vec!["X".to_owned(), "Y".to_owned()]),
                (path(&["b", "1"]), vec!["X".to_owned()]),
            ]
        );
        assert_eq!(value["b"][0].as_str(), Some("${X}"));
    }
}
