//! `stagewise plan` shows every setting after resolution with where it came from (a place in
//! the file, an override variable, `[defaults]`, the stage's kind, the built-in default),
//! never shows a secret, fails like `validate` on a bad file, and touches nothing.
//! `stagewise schema` prints a JSON Schema that every shipped pipeline passes and a typo fails.

mod util;

use std::path::{Path, PathBuf};

use serde_json::Value;
use util::{locate, workspace_root, Cmd, Pipeline, TestDir};

/// Settings from every origin: `[defaults]`, the `llm` kind's defaults, the file, built-ins.
const ORIGINS: &str = r#"
    [pipeline]
    name = "origins"
    heartbeat = "5s"

    [defaults]
    retry = { attempts = 4 }

    [[stage]]
    name = "src"
    kind = "generate"
    count = 3

    [[stage]]
    name = "facts"
    kind = "llm"
    provider = "extractive"
    concurrency = 2

    [[stage]]
    name = "nap"
    kind = "sleep"
    duration = "1ms"

    [[stage]]
    name = "out"
    kind = "jsonl"
    path = "out.jsonl"
"#;

/// The line of `key` in the text block whose title contains `block`, e.g. ("facts", "timeout").
fn line<'a>(stdout: &'a str, block: &str, key: &str) -> &'a str {
    let mut inside = false;
    for l in stdout.lines() {
        if !l.starts_with(' ') {
            inside = l.contains(block);
        } else if inside && l.split_whitespace().next() == Some(key) {
            return l;
        }
    }
    panic!("no `{key}` line under `{block}` in\n{stdout}");
}

/// `(value, origin)` of a setting in `plan --json`; `stage` None for `[pipeline]`.
fn setting(json: &Value, stage: Option<&str>, key: &str) -> (Value, String) {
    let table = match stage {
        None => &json["pipeline"],
        Some(name) => {
            let stages = json["stages"].as_array().expect("`stages` is a list");
            let stage = stages
                .iter()
                .find(|s| s["name"] == name)
                .unwrap_or_else(|| panic!("no stage `{name}` in {json:#}"));
            &stage["settings"]
        }
    };
    let s = &table[key];
    let origin = s["origin"]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` has no origin in {json:#}"));
    (s["value"].clone(), origin.to_owned())
}

fn at(p: &Pipeline, needle: &str) -> String {
    let (line, col) = locate(p.toml(), needle);
    format!("pipeline.toml:{line}:{col}")
}

#[test]
fn plan_names_where_each_value_came_from() {
    let p = Pipeline::new(ORIGINS);
    let run = |json: bool| {
        let cmd = p
            .cmd("plan")
            .env("STAGEWISE_STAGE__NAP__TIMEOUT", "3s")
            .env("STAGEWISE_PIPELINE__BATCH_SIZE", "2");
        let out = if json { cmd.arg("--json") } else { cmd }.output();
        out.assert_code(0);
        out
    };
    let heartbeat = at(&p, "heartbeat");
    let attempts = format!("[defaults] {}", at(&p, "attempts"));
    let concurrency = at(&p, "concurrency");
    // (stage, key, value as text, value as JSON, origin)
    let cases: Vec<(Option<&str>, &str, &str, Value, String)> = vec![
        (None, "heartbeat", "\"5s\"", "5s".into(), heartbeat),
        (
            None,
            "batch_size",
            "2",
            2.into(),
            "env STAGEWISE_PIPELINE__BATCH_SIZE".into(),
        ),
        (
            None,
            "shutdown_grace",
            "\"30s\"",
            "30s".into(),
            "built-in default".into(),
        ),
        (
            Some("nap"),
            "timeout",
            "\"3s\"",
            "3s".into(),
            "env STAGEWISE_STAGE__NAP__TIMEOUT".into(),
        ),
        (
            Some("nap"),
            "retry.attempts",
            "4",
            4.into(),
            attempts.clone(),
        ),
        (
            Some("nap"),
            "retry.initial",
            "\"500ms\"",
            "500ms".into(),
            "built-in default".into(),
        ),
        (Some("facts"), "retry.attempts", "4", 4.into(), attempts),
        (
            Some("facts"),
            "timeout",
            "\"2m\"",
            "2m".into(),
            "kind default".into(),
        ),
        (
            Some("facts"),
            "retry.max",
            "\"1m\"",
            "1m".into(),
            "kind default".into(),
        ),
        (Some("facts"), "concurrency", "2", 2.into(), concurrency),
        (
            Some("facts"),
            "provider",
            "\"extractive\"",
            "extractive".into(),
            at(&p, "provider"),
        ),
        (
            Some("src"),
            "concurrency",
            "1",
            1.into(),
            "position in the pipeline".into(),
        ),
        (
            Some("out"),
            "role",
            "\"sink\"",
            "sink".into(),
            "position in the pipeline".into(),
        ),
        (
            Some("out"),
            "rate_limit",
            "none",
            Value::Null,
            "built-in default".into(),
        ),
    ];

    let text = run(false);
    for (stage, key, shown, _, origin) in &cases {
        let l = line(&text.stdout, stage.unwrap_or("[pipeline]"), key);
        let fields: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(fields.get(1), Some(shown), "{key} in {l:?}\n{text}");
        assert!(
            l.trim_end().ends_with(origin.as_str()),
            "{key}: {l:?} should end with {origin:?}"
        );
    }

    let out = run(true);
    let json: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("plan --json is not JSON ({e})\n{out}"));
    assert_eq!(json["file"], "pipeline.toml");
    assert_eq!(json["stages"].as_array().map(Vec::len), Some(4));
    for (stage, key, _, value, origin) in cases {
        let (got, got_origin) = setting(&json, stage, key);
        assert_eq!(got, value, "{stage:?} {key}");
        assert_eq!(got_origin, origin, "{stage:?} {key}");
    }
}

#[test]
fn plan_never_shows_a_secret() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "secrets"

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "${DATABASE_URL}"
        query = "SELECT id FROM t LIMIT $limit"
        key = "id"

        [[stage]]
        name = "download"
        kind = "http-download"
        headers = { Accept-Language = "en", X-Api-Token = "${API_TOKEN}", Authorization = "Basic in-file-credential", Cookie = "session=cookie-value", apikey = "apikey-value" }

        [[stage]]
        name = "facts"
        kind = "llm"
        provider = "openai"
        model = "m"
        api_key_env = "MY_LLM_KEY"
        base_url = "https://llm-user:written-password@llm.example/v1"
        max_tokens = 100

        [[stage]]
        name = "save"
        kind = "persist"
        url = "postgres://writer:file-password@db.example/x?password=query-password&sslmode=disable"
        statement = "INSERT INTO t (id) VALUES (:key) ON CONFLICT DO NOTHING"
        "#,
    );
    let secrets = [
        "env-password",
        "token-value",
        "in-file-credential",
        "written-password",
        "file-password",
        "query-password",
        "cookie-value",
        "apikey-value",
    ];
    for json in [false, true] {
        let cmd = p
            .cmd("plan")
            .env(
                "DATABASE_URL",
                "postgres://reader:env-password@db.example:5432/articles",
            )
            .env("API_TOKEN", "token-value")
            .env("MY_LLM_KEY", "sk-never-read");
        let out = if json { cmd.arg("--json") } else { cmd }.output();
        out.assert_code(0);
        for secret in secrets {
            assert!(
                !out.stdout.contains(secret) && !out.stderr.contains(secret),
                "`{secret}` must not appear\n{out}"
            );
        }
        let url = "postgres://reader:***@db.example:5432/articles";
        let from = format!("{}, from ${{DATABASE_URL}}", at(&p, "url"));
        if json {
            let json: Value = serde_json::from_str(&out.stdout).expect("plan --json is JSON");
            assert_eq!(setting(&json, Some("fetch"), "url"), (url.into(), from));
            let (headers, origin) = setting(&json, Some("download"), "headers");
            assert_eq!(
                headers,
                serde_json::json!({"Accept-Language": "en", "X-Api-Token": "***", "Authorization": "***", "Cookie": "***", "apikey": "***"})
            );
            assert!(origin.ends_with("from ${API_TOKEN}"), "{origin}");
            assert_eq!(
                setting(&json, Some("facts"), "api_key_env").0,
                "MY_LLM_KEY",
                "a variable's name is no secret"
            );
            assert_eq!(setting(&json, Some("facts"), "max_tokens").0, 100);
            assert_eq!(
                setting(&json, Some("save"), "url").0,
                "postgres://writer:***@db.example/x?password=***&sslmode=disable"
            );
        } else {
            let l = line(&out.stdout, "fetch", "url");
            assert!(l.contains(url) && l.ends_with(&from), "{l}");
        }
    }
}

/// Each PostgreSQL connection string is followed by the `sslmode` it connects with: as written
/// (where the string was written, with its variables), implied by `sslrootcert=system`, or
/// libpq's default, `prefer`.
#[test]
fn plan_shows_the_sslmode_of_each_postgres_connection() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "tls"

        [checkpoint]
        store = "${DATABASE_URL}"

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "host=db.example user=reader password=file-password sslmode=verify-ca sslrootcert='/etc/my certs/ca.pem'"
        query = "SELECT id FROM t"
        key = "id"

        [[stage]]
        name = "cloud"
        kind = "persist"
        url = "postgres://writer:file-password@db.example/x?sslrootcert=system"
        statement = "INSERT INTO t (id) VALUES (:key) ON CONFLICT DO NOTHING"
        "#,
    );
    let mut other = Pipeline::new(
        r#"
        [pipeline]
        name = "plain"

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "postgres://reader:file-password@db.example/x"
        query = "SELECT id FROM t"
        key = "id"

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let store = "postgres://w:env-password@db.example/x?sslmode=verify-full&sslrootcert=/ca.pem";
    let plan = |p: &Pipeline, json: bool| {
        let cmd = p.cmd("plan").env("DATABASE_URL", store);
        let out = if json { cmd.arg("--json") } else { cmd }.output();
        out.assert_code(0);
        assert!(!out.stdout.contains("password=file") && !out.stdout.contains("env-password"));
        out.stdout
    };
    let json: Value = serde_json::from_str(&plan(&p, true)).expect("plan --json is JSON");
    let store_sslmode = &json["checkpoint"]["store.sslmode"];
    assert_eq!(store_sslmode["value"], "verify-full", "{json:#}");
    assert_eq!(
        store_sslmode["origin"],
        format!("{}, from ${{DATABASE_URL}}", at(&p, "store")),
    );
    assert_eq!(
        setting(&json, Some("fetch"), "url.sslmode"),
        ("verify-ca".into(), at(&p, "url ="))
    );
    let cloud_url = at(&p, "url = \"postgres");
    assert_eq!(
        setting(&json, Some("cloud"), "url.sslmode"),
        ("verify-full".into(), cloud_url)
    );
    let text = plan(&p, false);
    let l = line(&text, "[checkpoint]", "store.sslmode");
    assert!(l.contains("\"verify-full\""), "{l}");
    // Nothing said about TLS: the default, after the URL it belongs to.
    let text = plan(&other, false);
    let l = line(&text, "fetch", "url.sslmode");
    assert!(
        l.contains("\"prefer\"") && l.ends_with("built-in default"),
        "{l}"
    );
    let keys: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let url = keys.iter().position(|k| *k == "url").expect("a url line");
    assert_eq!(keys[url + 1], "url.sslmode", "{text}");
    assert!(
        !text.contains("store.sslmode"),
        "a SQLite store has no sslmode\n{text}"
    );
    other = Pipeline::new(&other.toml().replace("/x\"", "/x?sslmode=disable\""));
    let text = plan(&other, false);
    let l = line(&text, "fetch", "url.sslmode");
    assert!(l.contains("\"disable\""), "{l}");
}

#[test]
fn plan_of_an_invalid_file_exits_2_like_validate() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "typo"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 3

        [[stage]]
        name = "nap"
        kind = "sleep"
        duraton = "10ms"
        "#,
    );
    let (line, col) = locate(p.toml(), "duraton");
    let expected = format!(
        "error: pipeline.toml:{line}:{col}: stage `nap`: unknown key `duraton` (did you mean `duration`?)"
    );
    for json in [false, true] {
        let cmd = p.cmd("plan");
        let out = if json { cmd.arg("--json") } else { cmd }.output();
        out.assert_code(2);
        assert!(out.errors().contains(&expected.as_str()), "{out}");
        assert!(out.stdout.is_empty(), "nothing on stdout\n{out}");
    }
}

#[test]
fn plan_creates_nothing() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "untouched"

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "sqlite:data/source.db"
        init_script = "schema.sql"
        query = "SELECT id FROM t LIMIT $limit"
        key = "id"

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out/items.jsonl"
        "#,
    );
    p.dir.write(
        "schema.sql",
        "CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);",
    );
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(p.dir.path())
            .expect("test dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing();
    for json in [false, true] {
        let cmd = p.cmd("plan");
        let out = if json { cmd.arg("--json") } else { cmd }.output();
        out.assert_code(0);
        assert!(out.stdout.contains("init_script"), "{out}");
    }
    assert_eq!(listing(), before, "plan must not create files");
    assert!(!p.dir.exists(".stagewise") && !p.dir.exists("data/source.db"));
}

/// `stagewise schema`, parsed; it must be a valid draft 2020-12 schema.
fn schema() -> Value {
    let dir = TestDir::new();
    let out = Cmd::bare(dir.path(), "schema").output();
    out.assert_code(0);
    let schema: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("`stagewise schema` is not JSON ({e})\n{out}"));
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "{out}"
    );
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("not a valid JSON Schema: {e} at {}", e.instance_path());
    }
    schema
}

/// The problems of a TOML file against the schema, as `(instance path, message)`.
fn problems(schema: &Value, toml_text: &str) -> Vec<(String, String)> {
    let table: toml::Table = toml::from_str(toml_text).expect("valid TOML");
    let instance = serde_json::to_value(table).expect("TOML converts to JSON");
    let validator = jsonschema::validator_for(schema).expect("the schema compiles");
    validator
        .iter_errors(&instance)
        .map(|e| (e.instance_path().to_string(), e.to_string()))
        .collect()
}

#[test]
fn schema_lists_every_key_of_every_kind() {
    let schema = schema();
    let defs = &schema["$defs"];
    let resolve = |v: &Value| -> Value {
        match v["$ref"].as_str() {
            Some(r) => {
                let name = r.strip_prefix("#/$defs/").expect("a local reference");
                defs[name].clone()
            }
            None => v.clone(),
        }
    };
    let root = &schema["properties"];
    let mut missing = Vec::new();
    let mut undescribed = Vec::new();
    for (table, keys) in stagewise_core::spec::section_keys() {
        let section = resolve(&root[table]);
        for key in keys {
            let mut at = &section;
            for part in key.split('.') {
                at = &at["properties"][part];
            }
            if at.is_null() {
                missing.push(format!("[{table}] {key}"));
            } else if !at["description"].is_string() {
                undescribed.push(format!("[{table}] {key}"));
            }
        }
    }
    let registry = stagewise::builtin_registry();
    let stage = resolve(&root["stage"]["items"]);
    let kinds: Vec<&str> = registry.kinds().collect();
    assert_eq!(
        stage["properties"]["kind"]["enum"],
        serde_json::json!(kinds)
    );
    let branches = stage["allOf"].as_array().expect("one branch per kind");
    for kind in &kinds {
        let branch = branches
            .iter()
            .find(|b| b["if"]["properties"]["kind"]["const"] == *kind)
            .unwrap_or_else(|| panic!("no branch for kind `{kind}`"));
        let own = resolve(&branch["then"]);
        let (keys, _) = registry.describe(kind).expect("registered");
        for key in keys {
            if own["properties"][key].is_null() {
                missing.push(format!("{kind}: {key}"));
            } else if !own["properties"][key]["description"].is_string() {
                // What an editor shows on hover, from docs/pipeline.md.
                undescribed.push(format!("{kind}: {key}"));
            }
        }
        // Unknown keys are errors everywhere but in a plugin's table (the plugin's own keys).
        let strict = own["additionalProperties"] == false;
        assert_eq!(strict, *kind != "plugin", "{kind}: {own:#}");
    }
    assert!(
        missing.is_empty(),
        "keys missing from the schema: {missing:?}"
    );
    assert!(
        undescribed.is_empty(),
        "keys without a description in the schema: {undescribed:?}"
    );
    assert!(
        defs["kind-extract"]["properties"]["min_chars"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("no article text") && d.contains("(default: 200)")),
        "{:#}",
        defs["kind-extract"]["properties"]["min_chars"]
    );
    // An enum whose variants are documented is a `oneOf` of `const`s, each with its description.
    let provider = &defs["kind-llm"]["properties"]["provider"];
    let allowed: Vec<&str> = match provider["enum"].as_array() {
        Some(values) => values.iter().filter_map(|v| v.as_str()).collect(),
        None => provider["oneOf"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["const"].as_str())
            .collect(),
    };
    assert_eq!(
        allowed,
        ["openai", "anthropic", "extractive"],
        "{provider:#}"
    );
    assert_eq!(
        defs["kind-generate"]["required"],
        serde_json::json!(["count"])
    );
}

fn pipelines_under(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read examples/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            pipelines_under(&path, found);
        } else if path.file_name().is_some_and(|n| n == "pipeline.toml") {
            found.push(path);
        }
    }
}

#[test]
fn shipped_pipelines_pass_the_schema() {
    let schema = schema();
    let root = workspace_root();
    let mut pipelines = vec![root.join("pipeline.toml")];
    pipelines_under(&root.join("examples"), &mut pipelines);
    assert!(pipelines.len() >= 5, "{pipelines:?}");
    for path in pipelines {
        let text = std::fs::read_to_string(&path).expect("read pipeline");
        let found = problems(&schema, &text);
        if path.ends_with("examples/custom-runner/pipeline.toml") {
            // Its `word-count` kind is compiled into that runner, not into `stagewise`.
            assert!(
                !found.is_empty() && found.iter().all(|(at, _)| at == "/stage/1/kind"),
                "{}: {found:?}",
                path.display()
            );
        } else {
            assert!(found.is_empty(), "{}: {found:?}", path.display());
        }
    }
}

#[test]
fn the_schema_rejects_what_validate_rejects_by_key_or_type() {
    let schema = schema();
    let good = util::dedent(
        r#"
        [pipeline]
        name = "good"

        [defaults]
        retry = { attempts = 2 }

        [[stage]]
        name = "src"
        kind = "generate"
        count = 3

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "1ms"
        timeout = "1s"

        [[stage]]
        name = "plug"
        kind = "plugin"
        path = "libx.so"
        anything = { the = "plugin's" }
        "#,
    );
    assert_eq!(problems(&schema, &good), vec![], "the base case passes");
    let cases = [
        ("duration = \"1ms\"", "duraton = \"1ms\"", "/stage/1"),
        ("name = \"good\"", "name = \"good\"\nbatch = 5", "/pipeline"),
        ("attempts = 2", "atempts = 2", "/defaults/retry"),
        ("count = 3", "count = \"three\"", "/stage/0/count"),
        ("kind = \"sleep\"", "kind = \"slep\"", "/stage/1/kind"),
        ("path = \"libx.so\"\n", "", "/stage/2"),
        ("[defaults]", "[default]", ""),
    ];
    for (from, to, at) in cases {
        assert!(good.contains(from), "{from}");
        let bad = good.replacen(from, to, 1);
        let found = problems(&schema, &bad);
        assert!(
            found.iter().any(|(path, _)| path == at),
            "`{to}` should fail at `{at}`: {found:?}"
        );
    }
}
