//! Every pipeline we ship must validate: the root `pipeline.toml` (what `stagewise run` runs by
//! default) and every `*.toml` under `examples/` (Vector's `test_generate_config` habit), except
//! the custom runner's, which its own crate tests with its own binary.

mod util;

use std::fs;
use std::path::{Path, PathBuf};

use util::pg::Db;
use util::plugins::{library, DEDUPE};
use util::{workspace_root, Cmd, TestDir};

/// Where `examples/plugin/pipeline.toml` expects the dedupe library, relative to the workspace.
const EXAMPLE_PLUGIN: &str = "target/debug/libstagewise_plugin_dedupe.so";

/// The dedupe library, built; and the override that points the plugin example at it when it is
/// not where the example's `path` says (another target folder or profile).
fn example_plugin_override() -> Option<(&'static str, String)> {
    let built = library(DEDUPE);
    let expected = workspace_root().join(EXAMPLE_PLUGIN);
    let same = std::fs::canonicalize(&expected).ok() == std::fs::canonicalize(&built).ok();
    (!same).then(|| {
        (
            "STAGEWISE_STAGE__DEDUPE__PATH",
            built.to_string_lossy().into_owned(),
        )
    })
}

/// Copy `examples/<name>` (and the shared input it reads) into a fresh folder, without state or
/// output left by earlier runs.
fn example_copy(name: &str) -> (TestDir, PathBuf) {
    let dir = TestDir::new();
    for sub in [name, "jsonl"] {
        dir.copy_from_workspace(&format!("examples/{sub}"));
    }
    let pipeline = dir.path().join("examples").join(name).join("pipeline.toml");
    (dir, pipeline)
}

fn tomls_under(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("read examples/ entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "custom-runner") {
                continue;
            }
            tomls_under(&path, found);
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
}

#[test]
fn shipped_pipelines_validate() {
    let root = workspace_root();
    let main = root.join("pipeline.toml");
    assert!(main.is_file(), "the root pipeline.toml must exist");
    let mut pipelines = vec![main];
    tomls_under(&root.join("examples"), &mut pipelines);
    pipelines.sort();

    // Run from an unrelated directory: relative paths inside a pipeline are relative to its file,
    // and validating must not depend on (or write to) the working directory.
    let cwd = TestDir::new();
    let plugin = example_plugin_override();
    let mut failures = Vec::new();
    for pipeline in &pipelines {
        // Examples that talk to PostgreSQL take its URL from the environment.
        let mut cmd = Cmd::new(cwd.path(), "validate", &pipeline.to_string_lossy()).env(
            "DATABASE_URL",
            "postgres://example:secret@127.0.0.1:5432/example",
        );
        if let Some((var, value)) = &plugin {
            if pipeline.ends_with("examples/plugin/pipeline.toml") {
                cmd = cmd.env(var, value);
            }
        }
        let out = cmd.output();
        if out.code != Some(0) {
            failures.push(out.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} shipped pipelines do not validate:\n\n{}",
        failures.len(),
        pipelines.len(),
        failures.join("\n\n")
    );
    assert!(
        fs::read_dir(cwd.path())
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "validate wrote into the working directory"
    );
}

#[test]
fn the_sqlite_example_runs_and_a_rerun_only_updates() {
    let (dir, pipeline) = example_copy("sqlite-upsert");
    let run = || Cmd::new(dir.path(), "run", &pipeline.to_string_lossy()).output();
    run().assert_code(0);
    run().assert_code(0);
    let db = dir.path().join("examples/sqlite-upsert/out/articles.db");
    let conn = rusqlite::Connection::open(&db).expect("the example's database");
    let (rows, writes): (i64, i64) = conn
        .query_row("SELECT count(*), sum(writes) FROM articles", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("query");
    assert_eq!(rows, 30, "every article once");
    assert_eq!(writes, 60, "the second run upserted each article again");
}

#[test]
fn the_plugin_example_skips_the_duplicates() {
    let (dir, pipeline) = example_copy("plugin");
    // The copy is elsewhere, so the example's relative `path` cannot reach the library.
    let lib = library(DEDUPE);
    let cmd = |subcommand: &str| {
        Cmd::new(dir.path(), subcommand, &pipeline.to_string_lossy())
            .env("STAGEWISE_STAGE__DEDUPE__PATH", &lib.to_string_lossy())
    };
    let out = cmd("run").output();
    out.assert_code(0);
    let sink = util::Sink::read(&dir.path().join("examples/plugin/out/unique.jsonl"));
    let status = cmd("status").output();
    status.assert_code(0);
    // Two stories in several versions: one of each is kept (whichever was processed first),
    // and the others are skipped naming it.
    let mut kept = sink.keys();
    kept.sort();
    for group in [&["1", "3", "8"][..], &["2", "5"][..]] {
        let survivors: Vec<&String> = kept
            .iter()
            .filter(|k| group.contains(&k.as_str()))
            .collect();
        assert_eq!(survivors.len(), 1, "{group:?} in {kept:?}\n{out}");
        for key in group.iter().filter(|k| **k != survivors[0].as_str()) {
            let line = format!("{key} at dedupe: duplicate of {}", survivors[0]);
            assert!(status.stdout.contains(&line), "{line}\n{status}");
        }
    }
    assert_eq!(kept.len(), 5, "{kept:?}");
    for key in ["4", "6", "7"] {
        assert!(kept.contains(&key.to_owned()), "{key} in {kept:?}");
    }
}

#[test]
fn the_postgres_example_runs_against_a_real_server() {
    let Some(mut db) = Db::new() else { return };
    let (dir, pipeline) = example_copy("postgres");
    let schema =
        fs::read_to_string(dir.path().join("examples/postgres/schema.sql")).expect("schema");
    db.client()
        .batch_execute(&schema)
        .expect("apply schema.sql");
    let url = db.url().to_owned();
    let run = || {
        Cmd::new(dir.path(), "run", &pipeline.to_string_lossy())
            .env("DATABASE_URL", &url)
            .output()
    };
    for _ in 0..2 {
        let out = run();
        out.assert_code(0);
        assert!(
            !out.stderr.contains(":stagewise@"),
            "the password must not be printed\n{out}"
        );
    }
    assert_eq!(db.query_i64("SELECT count(*) FROM article_copies"), 200);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM articles WHERE processed_at IS NULL"),
        0
    );
    // Nothing left: a third run takes an empty batch.
    run().assert_code(0);
    assert_eq!(db.query_i64("SELECT count(*) FROM article_copies"), 200);
}
