//! The key tables of docs/pipeline.md are made from the configuration types (their doc comments
//! and defaults): each table stands between `<!-- keys: SECTION … -->` and `<!-- /keys -->`,
//! and must be exactly what the types make. A key added, renamed or documented differently in
//! the code fails here until the page is remade:
//!
//! ```sh
//! STAGEWISE_UPDATE_DOCS=1 cargo test --test docs
//! ```

const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/pipeline.md");
const OPEN: &str = "<!-- keys: ";
const CLOSE: &str = "<!-- /keys -->";

/// The page with every key table replaced by what the types make; the sections whose table
/// differed; the sections the page has no table for.
fn remade(page: &str) -> (String, Vec<String>, Vec<String>) {
    let tables = stagewise_spec_tables();
    let mut out = String::new();
    let mut differs = Vec::new();
    let mut seen = Vec::new();
    let mut rest = page;
    while let Some(at) = rest.find(OPEN) {
        let header_end = at + rest[at..].find("-->").expect("a key-table marker ends") + 3;
        let header = &rest[at..header_end];
        let section = header[OPEN.len()..]
            .split(" (")
            .next()
            .expect("a section")
            .trim_end_matches(" -->")
            .to_owned();
        let close = header_end + rest[header_end..].find(CLOSE).expect("a /keys marker");
        let committed = rest[header_end..close].trim_start_matches('\n');
        let made = tables
            .iter()
            .find(|t| t.section == section)
            .unwrap_or_else(|| {
                panic!("docs/pipeline.md has a table for `{section}`, which no type documents")
            });
        if committed != made.markdown {
            differs.push(section.clone());
        }
        seen.push(section);
        out.push_str(&rest[..header_end]);
        out.push('\n');
        out.push_str(&made.markdown);
        out.push_str(CLOSE);
        rest = &rest[close + CLOSE.len()..];
    }
    out.push_str(rest);
    let missing = tables
        .iter()
        .filter(|t| !seen.contains(&t.section))
        .map(|t| t.section.clone())
        .collect();
    (out, differs, missing)
}

fn stagewise_spec_tables() -> Vec<stagewise_core::spec::KeyTable> {
    stagewise_core::spec::key_tables(&stagewise::builtin_registry())
}

#[test]
fn the_reference_tables_are_the_types_own_documentation() {
    let page = std::fs::read_to_string(PAGE).expect("docs/pipeline.md exists");
    let (made, differs, missing) = remade(&page);
    if std::env::var_os("STAGEWISE_UPDATE_DOCS").is_some() {
        std::fs::write(PAGE, &made).expect("rewrite docs/pipeline.md");
        return;
    }
    assert!(
        missing.is_empty(),
        "docs/pipeline.md has no key table for {missing:?}: add `<!-- keys: SECTION -->` and \
         `<!-- /keys -->` where it belongs, then run STAGEWISE_UPDATE_DOCS=1 cargo test --test docs"
    );
    assert!(
        differs.is_empty(),
        "the key tables of {differs:?} in docs/pipeline.md differ from the types' doc comments: \
         run STAGEWISE_UPDATE_DOCS=1 cargo test --test docs"
    );
}

/// Every row documents its key: no key of any type goes without a description.
#[test]
fn every_key_has_a_description() {
    for table in stagewise_spec_tables() {
        for row in table.markdown.lines().skip(2) {
            let cells: Vec<&str> = row.split(" | ").collect();
            assert!(
                cells.len() >= 3 && cells[2].trim_end_matches(" |").len() > 3,
                "`{}`: a key without a description: {row}",
                table.section
            );
        }
    }
}
