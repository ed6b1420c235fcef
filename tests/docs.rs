//! docs/pipeline.md documents every key the code accepts: the keys are read from the config
//! types themselves, so a key added without documentation fails here.

use std::collections::BTreeMap;

/// The reference split by heading: heading text → the text under it.
fn sections(doc: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut heading = String::new();
    for line in doc.lines() {
        if let Some(h) = line
            .strip_prefix("### ")
            .or_else(|| line.strip_prefix("## "))
        {
            heading = h.trim().to_owned();
        } else {
            out.entry(heading.clone())
                .or_insert_with(String::new)
                .push_str(line);
            out.entry(heading.clone())
                .or_insert_with(String::new)
                .push('\n');
        }
    }
    out
}

fn find<'a>(sections: &'a BTreeMap<String, String>, wanted: &str) -> &'a str {
    sections
        .iter()
        .find(|(h, _)| h.contains(&format!("`{wanted}`")))
        .map(|(_, text)| text.as_str())
        .unwrap_or_else(|| panic!("docs/pipeline.md has no section for `{wanted}`"))
}

#[test]
fn the_reference_documents_every_key() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/pipeline.md"))
        .expect("docs/pipeline.md exists");
    let sections = sections(&doc);
    let mut missing = Vec::new();
    for (table, keys) in stagewise_core::spec::section_keys() {
        let text = find(&sections, &format!("[{table}]"));
        for key in keys {
            if !text.contains(&format!("| `{key}` |")) {
                missing.push(format!("[{table}] {key}"));
            }
        }
    }
    let registry = stagewise::builtin_registry();
    let kinds: Vec<&str> = registry.kinds().collect();
    assert!(kinds.len() >= 8, "{kinds:?}");
    for kind in kinds {
        let (keys, _) = registry.describe(kind).expect("registered");
        let text = find(&sections, kind);
        for key in keys {
            if !text.contains(&format!("| `{key}` |")) {
                missing.push(format!("{kind}: {key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "undocumented keys in docs/pipeline.md: {missing:?}"
    );
}
