//! The configuration contract: `stagewise validate` (and `run`, which validates first) accepts a
//! good file, rejects a bad one with exit 2 and `error: FILE:LINE:COL: stage `NAME`: MESSAGE`
//! lines (all of them at once), warns about timing budgets, resolves `${VAR}` and
//! `STAGEWISE_*` overrides, and never damages a checkpoint it cannot read.

mod util;

use util::{keys, locate, Pipeline};

/// A small valid pipeline the bad-input cases are variations of.
const GOOD: &str = r#"
    [pipeline]
    name = "good"

    [[stage]]
    name = "src"
    kind = "generate"
    count = 3

    [[stage]]
    name = "nap"
    kind = "sleep"
    duration = "1ms"

    [[stage]]
    name = "out"
    kind = "jsonl"
    path = "out.jsonl"
"#;

#[test]
fn a_valid_file_passes_without_running_anything() {
    let p = Pipeline::new(GOOD);
    let out = p.validate();
    out.assert_code(0);
    assert!(out.errors().is_empty(), "no error lines expected\n{out}");
    assert!(!p.dir.exists("out.jsonl"), "validate must not run stages");
    assert!(
        !p.dir.exists(".stagewise"),
        "validate must not create a checkpoint store"
    );
}

#[test]
fn a_typo_names_file_line_column_stage_and_suggestion() {
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

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let (line, col) = locate(p.toml(), "duraton");
    let expected = format!(
        "error: pipeline.toml:{line}:{col}: stage `nap`: unknown key `duraton` (did you mean `duration`?)"
    );

    for command in ["validate", "run"] {
        let out = p.cmd(command).output();
        out.assert_code(2);
        assert!(
            out.errors().iter().any(|l| l.starts_with(&expected)),
            "`{command}` should print the line {expected:?}\n{out}"
        );
    }
    assert!(!p.dir.exists("out.jsonl"), "nothing may run on a bad file");
}

#[test]
fn every_error_of_the_file_is_reported_at_once() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "two-typos"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 3

        [[stage]]
        name = "first-nap"
        kind = "sleep"
        duraton = "10ms"

        [[stage]]
        name = "shaky"
        kind = "fault"
        eror_rate = 0.1

        [[stage]]
        name = "out"
        kind = "blackhole"
        "#,
    );
    let out = p.validate();
    out.assert_code(2);
    let errors = out.errors();
    for (stage, typo, suggestion) in [
        ("first-nap", "duraton", "duration"),
        ("shaky", "eror_rate", "error_rate"),
    ] {
        let (line, col) = locate(p.toml(), typo);
        let expected = format!(
            "error: pipeline.toml:{line}:{col}: stage `{stage}`: unknown key `{typo}` (did you mean `{suggestion}`?)"
        );
        assert!(
            errors.iter().any(|l| l.starts_with(&expected)),
            "missing {expected:?}\n{out}"
        );
    }
}

#[test]
fn an_unknown_key_outside_a_stage_omits_the_stage() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "pipeline-typo"
        heartbeet = "1s"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 1

        [[stage]]
        name = "out"
        kind = "blackhole"
        "#,
    );
    let (line, col) = locate(p.toml(), "heartbeet");
    let out = p.validate();
    out.assert_code(2);
    let expected = format!(
        "error: pipeline.toml:{line}:{col}: unknown key `heartbeet` (did you mean `heartbeat`?)"
    );
    assert!(
        out.errors().iter().any(|l| l.starts_with(&expected)),
        "missing {expected:?}\n{out}"
    );
}

#[test]
fn an_unknown_key_inside_an_inline_table_points_at_that_key() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "nested-typo"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 1

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "1ms"
        retry = { attempts = 2, intial = "1ms" }

        [[stage]]
        name = "out"
        kind = "blackhole"
        "#,
    );
    let (line, col) = locate(p.toml(), "intial");
    let out = p.validate();
    out.assert_code(2);
    let prefix = format!("error: pipeline.toml:{line}:{col}: stage `nap`: unknown key `");
    assert!(
        out.errors().iter().any(|l| l.starts_with(&prefix)
            && l.contains("intial`")
            && l.contains("(did you mean `initial`?)")),
        "missing an error starting {prefix:?} about `intial` suggesting `initial`\n{out}"
    );
}

/// Bad files other than unknown keys: each is exit 2 from both `validate` and `run`, with an
/// error line that mentions what is wrong (and, where given, on which line).
#[test]
fn bad_files_are_rejected_with_a_clear_error() {
    struct Case {
        what: &'static str,
        toml: &'static str,
        /// Text that must appear on one `error:` line.
        mentions: &'static [&'static str],
        /// A fixture fragment whose line the error must point at.
        at_line_of: Option<&'static str>,
    }
    let cases = [
        Case {
            what: "malformed TOML",
            toml: r#"
                [pipeline]
                name = "malformed"

                [[stage]]
                name = "src"
                kind = "generate"
                count == 3
            "#,
            mentions: &[],
            at_line_of: Some("count =="),
        },
        Case {
            what: "unknown kind",
            toml: r#"
                [pipeline]
                name = "unknown-kind"

                [[stage]]
                name = "src"
                kind = "generate"
                count = 3

                [[stage]]
                name = "warp"
                kind = "teleport"

                [[stage]]
                name = "out"
                kind = "blackhole"
            "#,
            mentions: &["stage `warp`", "teleport"],
            at_line_of: Some("\"teleport\""),
        },
        Case {
            what: "a value of the wrong type",
            toml: r#"
                [pipeline]
                name = "bad-duration"

                [[stage]]
                name = "src"
                kind = "generate"
                count = 3

                [[stage]]
                name = "nap"
                kind = "sleep"
                duration = "1ms"
                timeout = "soon"

                [[stage]]
                name = "out"
                kind = "blackhole"
            "#,
            mentions: &["stage `nap`"],
            at_line_of: Some("\"soon\""),
        },
        Case {
            what: "duplicate stage names",
            toml: r#"
                [pipeline]
                name = "duplicates"

                [[stage]]
                name = "src"
                kind = "generate"
                count = 3

                [[stage]]
                name = "twin"
                kind = "sleep"
                duration = "1ms"

                [[stage]]
                name = "twin"
                kind = "sleep"
                duration = "1ms"

                [[stage]]
                name = "out"
                kind = "blackhole"
            "#,
            mentions: &["twin"],
            at_line_of: None,
        },
        Case {
            what: "a sink that is not last",
            toml: r#"
                [pipeline]
                name = "early-sink"

                [[stage]]
                name = "src"
                kind = "generate"
                count = 3

                [[stage]]
                name = "drain"
                kind = "blackhole"

                [[stage]]
                name = "nap"
                kind = "sleep"
                duration = "1ms"
            "#,
            mentions: &["drain"],
            at_line_of: None,
        },
        Case {
            what: "a first stage that is not a source",
            toml: r#"
                [pipeline]
                name = "no-source"

                [[stage]]
                name = "nap"
                kind = "sleep"
                duration = "1ms"

                [[stage]]
                name = "out"
                kind = "blackhole"
            "#,
            mentions: &["nap"],
            at_line_of: None,
        },
        Case {
            what: "a database URL with an sslmode libpq does not know",
            toml: r#"
                [pipeline]
                name = "bad-sslmode"

                [[stage]]
                name = "rows"
                kind = "db-fetch"
                url = "postgres://reader:Secr3t@db.example/app?sslmode=verify"
                query = "SELECT id FROM t"
                key = "id"

                [[stage]]
                name = "out"
                kind = "blackhole"
            "#,
            mentions: &[
                "stage `rows`",
                "`url`",
                "`sslmode` must be one of disable, prefer, require, verify-ca, verify-full (got `verify`)",
            ],
            at_line_of: Some("url ="),
        },
    ];

    for case in cases {
        let p = Pipeline::new(case.toml);
        for command in ["validate", "run"] {
            let out = p.cmd(command).output();
            assert_eq!(
                out.code,
                Some(2),
                "{}: `{command}` should exit 2\n{out}",
                case.what
            );
            let errors = out.errors();
            let prefix = case
                .at_line_of
                .map(|needle| format!("error: pipeline.toml:{}:", locate(p.toml(), needle).0));
            assert!(
                errors.iter().any(|l| {
                    prefix.as_ref().is_none_or(|p| l.starts_with(p))
                        && case.mentions.iter().all(|m| l.contains(m))
                }),
                "{}: `{command}` should print an error line{} mentioning {:?}\n{out}",
                case.what,
                prefix
                    .map(|p| format!(" starting {p:?}"))
                    .unwrap_or_default(),
                case.mentions,
            );
        }
        assert!(!p.dir.exists("out.jsonl"), "{}: nothing may run", case.what);
        for out in [p.validate(), p.run()] {
            assert!(
                !out.stderr.contains("Secr3t"),
                "{}: password shown\n{out}",
                case.what
            );
        }
    }
}

#[test]
fn a_missing_pipeline_file_is_a_usage_error() {
    let dir = util::TestDir::new();
    let out = util::Cmd::new(dir.path(), "validate", "nowhere.toml").output();
    out.assert_code(2);
    out.assert_stderr_contains("nowhere.toml");
}

#[test]
fn environment_variables_fill_placeholders_and_a_missing_one_is_named() {
    let toml = r#"
        [pipeline]
        name = "placeholders"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 3

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "${SW_TEST_SINK_PATH}"
    "#;

    let missing = Pipeline::new(toml);
    let out = missing.cmd("run").env_remove("SW_TEST_SINK_PATH").output();
    out.assert_code(2);
    assert!(
        out.errors().iter().any(|l| l.contains("SW_TEST_SINK_PATH")),
        "`run`: the error should name the missing variable\n{out}"
    );
    // `validate` needs no secrets: the variable is named in a warning.
    let out = missing
        .cmd("validate")
        .env_remove("SW_TEST_SINK_PATH")
        .output();
    out.assert_code(0);
    assert!(
        out.warnings()
            .iter()
            .any(|l| l.contains("SW_TEST_SINK_PATH") && l.contains(":12:")),
        "`validate`: a warning at the value should name the missing variable\n{out}"
    );

    let set = Pipeline::new(toml);
    set.cmd("run")
        .env("SW_TEST_SINK_PATH", "from-env.jsonl")
        .output()
        .assert_code(0);
    assert_eq!(set.sink("from-env.jsonl").unique_keys(), keys(3));
}

#[test]
fn an_override_of_an_unknown_key_is_an_error() {
    let p = Pipeline::new(GOOD);
    for (var, key) in [
        ("STAGEWISE_PIPELINE__MAX_RUN_TIEM", "max_run_tiem"),
        ("STAGEWISE_STAGE__NAP__DURATON", "duraton"),
    ] {
        for command in ["validate", "run"] {
            let out = p.cmd(command).env(var, "1m").output();
            out.assert_code(2);
            assert!(
                out.stderr.to_lowercase().contains(key),
                "`{command}` with {var}: the error should name `{key}`\n{out}"
            );
        }
    }
    assert!(!p.dir.exists("out.jsonl"), "nothing may run");
}

/// Overrides change behaviour, not just parse: a too-short timeout makes every item fail; the
/// same file with the timeout overridden (at stage level, with the `-` → `_` name rule, or in
/// `[defaults]`) succeeds.
#[test]
fn a_timeout_override_takes_effect() {
    let stage_level = r#"
        [pipeline]
        name = "override-timeout"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 4

        [[stage]]
        name = "slow-nap"
        kind = "sleep"
        duration = "300ms"
        timeout = "50ms"
        concurrency = 4
        retry = { attempts = 1 }

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
    "#;
    let defaults_level = r#"
        [pipeline]
        name = "override-default-timeout"

        [defaults]
        timeout = "50ms"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 4

        [[stage]]
        name = "slow-nap"
        kind = "sleep"
        duration = "300ms"
        concurrency = 4
        retry = { attempts = 1 }

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
    "#;
    for (toml, var) in [
        (stage_level, "STAGEWISE_STAGE__SLOW_NAP__TIMEOUT"),
        (defaults_level, "STAGEWISE_DEFAULTS__TIMEOUT"),
    ] {
        let baseline = Pipeline::new(toml);
        let out = baseline.run();
        out.assert_code(1);
        assert_eq!(baseline.status().count("failed"), 4, "baseline\n{out}");

        let fixed = Pipeline::new(toml);
        let out = fixed.cmd("run").env(var, "10s").output();
        out.assert_code(0);
        assert_eq!(fixed.sink("out.jsonl").unique_keys(), keys(4), "{var}");
    }
}

#[test]
fn a_max_failures_override_takes_effect() {
    let toml = r#"
        [pipeline]
        name = "override-max-failures"
        max_failures = 2

        [[stage]]
        name = "src"
        kind = "generate"
        count = 40

        [[stage]]
        name = "breaker"
        kind = "fault"
        permanent_rate = 0.5
        seed = 7

        [[stage]]
        name = "out"
        kind = "blackhole"
    "#;
    Pipeline::new(toml).run().assert_code(3);

    let fixed = Pipeline::new(toml);
    fixed
        .cmd("run")
        .env("STAGEWISE_PIPELINE__MAX_FAILURES", "1000")
        .output()
        .assert_code(1);
    let status = fixed.status();
    assert!(status.count("failed") > 2, "{:?}", status.counts);
    assert_eq!(status.count("done") + status.count("failed"), 40);
}

#[test]
fn a_checkpoint_override_moves_the_store() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "override-store"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 3

        [[stage]]
        name = "out"
        kind = "blackhole"
        "#,
    );
    p.cmd("run")
        .env("STAGEWISE_CHECKPOINT__STORE", "sqlite:custom.db")
        .output()
        .assert_code(0);
    assert!(p.dir.exists("custom.db"), "the overridden store is used");
    assert!(
        !p.dir.exists(".stagewise/override-store.db"),
        "the default store is not used"
    );
}

/// The timing-budget check: worst case attempts × timeout + backoff over `max_run_time`, or a
/// `shutdown_grace` shorter than a timeout, is a warning naming the stage, not an error.
#[test]
fn timing_budget_problems_are_warnings_naming_the_stage() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "budget"
        max_run_time = "10s"
        shutdown_grace = "2s"

        [defaults]
        timeout = "1s"
        retry = { attempts = 2, initial = "10ms", max = "10ms" }

        [[stage]]
        name = "src"
        kind = "generate"
        count = 3

        # 4 attempts x 4s = 16s > 10s, and 4s > 2s of grace.
        [[stage]]
        name = "budget-buster"
        kind = "sleep"
        duration = "1ms"
        timeout = "4s"
        retry = { attempts = 4 }

        # Fits in 10s, but 3s > 2s of grace.
        [[stage]]
        name = "grace-breaker"
        kind = "sleep"
        duration = "1ms"
        timeout = "3s"
        retry = { attempts = 1 }

        # 2 x 1s + 10ms fits; 1s <= 2s of grace.
        [[stage]]
        name = "well-within"
        kind = "sleep"
        duration = "1ms"

        [[stage]]
        name = "out"
        kind = "blackhole"
        "#,
    );
    let out = p.validate();
    out.assert_code(0);
    let warnings = out.warnings();
    for stage in ["budget-buster", "grace-breaker"] {
        assert!(
            warnings.iter().any(|w| w.contains(stage)),
            "expected a warning naming `{stage}`\n{out}"
        );
    }
    assert!(
        !warnings.iter().any(|w| w.contains("well-within")),
        "`well-within` fits its budget and must not be warned about\n{out}"
    );
    assert!(out.errors().is_empty(), "warnings only\n{out}");
}

#[test]
fn a_corrupt_checkpoint_is_refused_and_left_untouched() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "corrupt"

        [checkpoint]
        store = "sqlite:.stagewise/state.db"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 3

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let mut garbage = b"this is not a checkpoint store\n".repeat(64);
    garbage.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    p.dir.write(".stagewise/state.db", &garbage);

    let out = p.run();
    out.assert_code(2);
    let stderr = out.stderr.to_lowercase();
    assert!(
        stderr.contains("state.db") || stderr.contains("checkpoint"),
        "the error should say which store it cannot use\n{out}"
    );
    assert_eq!(
        p.dir.read(".stagewise/state.db"),
        garbage,
        "the corrupt store must be left byte-identical"
    );
    assert!(
        !p.dir.exists("out.jsonl"),
        "no stage may be opened before the store is"
    );
}

#[test]
fn a_checkpoint_from_a_newer_version_is_refused_and_left_untouched() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "newer"

        [checkpoint]
        store = "sqlite:state.db"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 3

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    p.run().assert_code(0);
    // A later stagewise would have raised the schema version.
    let conn = rusqlite::Connection::open(p.dir.join("state.db")).expect("open the store");
    conn.pragma_update(None, "user_version", 42)
        .expect("set the version");
    drop(conn);
    let before = p.dir.read("state.db");

    let out = p.run();
    out.assert_code(2)
        .assert_stderr_contains("schema version 42, newer than this build reads");
    assert_eq!(
        p.dir.read("state.db"),
        before,
        "the newer store must be left as it was"
    );
    assert_eq!(p.sink("out.jsonl").len(), 3, "nothing ran the second time");
    let status = p.cmd("status").output();
    status
        .assert_code(2)
        .assert_stderr_contains("newer than this build reads");
}

#[test]
fn a_variable_in_an_override_is_expanded() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "override-var"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 3

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "first.jsonl"
        "#,
    );
    p.cmd("run")
        .env("STAGEWISE_STAGE__OUT__PATH", "${SINK_FILE}")
        .env("SINK_FILE", "chosen.jsonl")
        .output()
        .assert_code(0);
    assert_eq!(
        p.sink("chosen.jsonl").len(),
        3,
        "the override's `${{SINK_FILE}}` was expanded"
    );
    assert!(!p.dir.exists("first.jsonl"));
}

/// `[checkpoint] store` takes `sqlite:PATH`, `postgres://…` and `postgresql://…` (checked without
/// connecting); anything else is refused naming the forms, and a password is never echoed.
#[test]
fn checkpoint_store_urls() {
    let cases = [
        ("postgres://u:Secr3t@127.0.0.1:5432/db", None),
        ("postgresql://u:Secr3t@db.internal/db?connect_timeout=5", None),
        (
            "mysql://u:Secr3t@127.0.0.1/db",
            Some("unsupported checkpoint store `mysql://u:***@127.0.0.1/db`: use `sqlite:PATH`, `postgres://"),
        ),
        (
            "postgres://u:Secr3t@127.0.0.1:notaport/db",
            Some("invalid PostgreSQL URL `postgres://u:***@127.0.0.1:notaport/db`: invalid connection string: invalid value for option `port`"),
        ),
        // libpq's TLS keys, which the client itself does not take; the CA file is only read
        // when the store is opened.
        ("postgres://u:Secr3t@db/x?sslmode=verify-full&sslrootcert=/no/such/ca.pem", None),
        ("postgres://u:Secr3t@db/x?sslmode=verify-ca&sslrootcert=system", Some("`sslrootcert=system` needs `sslmode=verify-full` (got `verify-ca`)")),
        ("host=db user=u password=Secr3t sslmode=require sslrootcert='/my certs/ca.pem'", None),
        ("postgresql://db/x?sslmode=disable", None),
        ("postgresql://db/x?sslmode=prefer", None),
        ("postgresql://db/x?sslrootcert=system", None),
        (
            "postgres://u:Secr3t@db/x?sslmode=verify_full",
            Some("invalid PostgreSQL URL `postgres://u:***@db/x?sslmode=verify_full`: `sslmode` must be one of disable, prefer, require, verify-ca, verify-full (got `verify_full`)"),
        ),
        (
            "host=db password=Secr3t sslmode=allow",
            Some("`sslmode` must be one of disable, prefer, require, verify-ca, verify-full (got `allow`)"),
        ),
    ];
    for (store, want) in cases {
        let p = Pipeline::new(&format!(
            r#"
            [pipeline]
            name = "stores"

            [checkpoint]
            store = "{store}"

            [[stage]]
            name = "src"
            kind = "generate"
            count = 3

            [[stage]]
            name = "out"
            kind = "jsonl"
            path = "out.jsonl"
            "#
        ));
        let out = p.validate();
        match want {
            None => {
                out.assert_code(0);
            }
            Some(message) => {
                out.assert_code(2).assert_stderr_contains(message);
            }
        }
        assert!(
            !out.stderr.contains("Secr3t"),
            "{store}: password shown\n{out}"
        );
        assert!(
            !out.stdout.contains("Secr3t"),
            "{store}: password shown\n{out}"
        );
    }
}

/// A duration of the run further off than any deadline is refused at validation, not met as an
/// overflow when the run stops; a watchdog shorter than a second is refused too.
#[test]
fn run_durations_are_bounded() {
    for (line, message) in [
        (
            r#"shutdown_grace = "18446744073709551615s""#,
            "`shutdown_grace` must be at most 720h",
        ),
        (
            r#"max_run_time = "100000000h""#,
            "`max_run_time` must be at most 720h",
        ),
        (
            r#"heartbeat = "31days""#,
            "`heartbeat` must be at most 720h",
        ),
        (r#"watchdog = "999ms""#, "`watchdog` must be at least 1s"),
        (
            "[checkpoint]\n    commit_max_items = 2305843009213693952",
            "`commit_max_items` must be at most 1000000",
        ),
    ] {
        let p = Pipeline::new(
            &GOOD.replace("name = \"good\"", &format!("name = \"good\"\n    {line}")),
        );
        let out = p.validate();
        out.assert_code(2);
        out.assert_stderr_contains(message);
    }
}

/// A value of the wrong type is said in the file's words, with an example: no Rust type names.
#[test]
fn wrong_types_are_said_without_rust_type_names() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "words"
        batch_size = -3
        max_run_time = 5

        [[stage]]
        name = "src"
        kind = "generate"
        count = "many"

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "1x"
        jitter = true
        "#,
    );
    let out = p.validate();
    out.assert_code(2);
    for rust in ["u64", "usize", "u32", "u8", "i64", "f64", "nonzero"] {
        assert!(!out.stderr.contains(rust), "`{rust}` in\n{out}");
    }
    out.assert_stderr_contains(
        ":3:14: invalid value: integer `-3`, expected a whole number of at least 1, such as 10",
    );
    out.assert_stderr_contains(
        r#":4:16: invalid type: integer `5`, expected a duration such as "20s", "1m30s" or "500ms""#,
    );
    out.assert_stderr_contains("expected a whole number, 0 or more, such as 10");
    out.assert_stderr_contains(r#"invalid value: string "1x", expected a duration such as "20s""#);
}

/// Stage timeouts longer than `shutdown_grace` are said once, naming the stages, and not at all
/// once the pipeline says that is intended.
#[test]
fn timeouts_longer_than_the_grace_are_one_warning_and_can_be_intended() {
    let toml = |intended: &str| {
        format!(
            r#"
            [pipeline]
            name = "grace"
            shutdown_grace = "10s"
            {intended}

            [defaults]
            timeout = "30s"

            [[stage]]
            name = "src"
            kind = "generate"
            count = 1

            [[stage]]
            name = "a"
            kind = "sleep"
            duration = "1ms"

            [[stage]]
            name = "b"
            kind = "sleep"
            duration = "1ms"
            timeout = "5s"

            [[stage]]
            name = "c"
            kind = "sleep"
            duration = "1ms"
            "#
        )
    };
    let out = Pipeline::new(&toml("")).validate();
    out.assert_code(0);
    let warnings: Vec<&str> = out
        .stderr_lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(
        warnings[0].contains(":3:1: `shutdown_grace` (10s) is shorter than the `timeout` of stage(s) `a` (30s), `c` (30s)"),
        "{out}"
    );
    assert!(
        warnings[0].contains("timeouts_outlast_grace = true"),
        "{out}"
    );
    let p = Pipeline::new(&toml("timeouts_outlast_grace = true"));
    let out = p.validate();
    out.assert_code(0);
    assert!(!out.stderr.contains("warning:"), "{out}");
    let plan = p.cmd("plan").output();
    assert!(plan.stdout.contains("timeouts_outlast_grace"), "{plan}");
}

/// `${VAR:-default}`: the default when the variable is unset or empty, the variable otherwise.
#[test]
fn a_variable_can_have_a_default() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "${NAME:-defaulted}"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 1
        "#,
    );
    let out = p.validate();
    out.assert_code(0);
    out.assert_stderr_contains("pipeline `defaulted`");
    let out = p.cmd("validate").env("NAME", "").output();
    out.assert_stderr_contains("pipeline `defaulted`");
    let out = p.cmd("validate").env("NAME", "given").output();
    out.assert_stderr_contains("pipeline `given`");
    let bare = Pipeline::new("[pipeline]\nname = \"${NAME}\"\n[[stage]]\nname = \"src\"\nkind = \"generate\"\ncount = 1\n");
    let out = bare.cmd("plan").output();
    out.assert_code(2);
    out.assert_stderr_contains("`${NAME:-default}` gives a default");
    let out = bare.validate();
    out.assert_code(0);
    out.assert_stderr_contains("or a default, `${NAME:-default}`");
}

/// CI can check a pipeline without its secrets: unset `${VAR}`s are warnings for `validate`
/// (the values they go into unchecked), errors for `run`; every other problem of the file is
/// still an error, an unknown key holding a variable among them.
#[test]
fn validate_needs_no_secrets_but_still_finds_every_other_error() {
    let secrets = ["SW_TEST_STORE_URL", "SW_TEST_LLM_URL", "SW_TEST_LLM_KEY"];
    let file = |extra: &str| {
        format!(
            r#"
            [pipeline]
            name = "secrets"

            [checkpoint]
            store = "${{SW_TEST_STORE_URL}}"

            [[stage]]
            name = "src"
            kind = "generate"
            count = 3

            [[stage]]
            name = "ask"
            kind = "llm"
            provider = "openai"
            base_url = "${{SW_TEST_LLM_URL}}"
            api_key_env = "${{SW_TEST_LLM_KEY:-OPENAI_API_KEY}}"
            model = "m"
            prompt = "Facts of: {{{{text}}}}"
            {extra}
        "#
        )
    };
    let without = |p: &Pipeline, command: &str| {
        let mut cmd = p.cmd(command);
        for var in secrets {
            cmd = cmd.env_remove(var);
        }
        cmd.output()
    };
    let p = Pipeline::new(&file(""));
    let out = without(&p, "validate");
    out.assert_code(0);
    out.assert_stderr_contains("is valid");
    for var in ["SW_TEST_STORE_URL", "SW_TEST_LLM_URL"] {
        assert!(
            out.warnings()
                .iter()
                .any(|l| l.contains(var) && l.contains("not checked")),
            "{var} named in a warning\n{out}"
        );
    }
    assert!(
        !out.stderr.contains("SW_TEST_LLM_KEY"),
        "a variable with a default is no warning\n{out}"
    );
    let run = without(&p, "run");
    run.assert_code(2);
    assert_eq!(
        run.errors().len(),
        3,
        "two unset variables, and the summary line\n{run}"
    );

    for (extra, wanted) in [
        (r#"temperature = "hot""#, "temperature"),
        (r#"headerz = "${SW_TEST_LLM_KEY}""#, "unknown key `headerz`"),
        // A string where a number is wanted is wrong whatever the variable holds.
        (
            r#"concurrency = "${SW_TEST_LLM_KEY}""#,
            "invalid type: string",
        ),
    ] {
        let p = Pipeline::new(&file(extra));
        let out = without(&p, "validate");
        out.assert_code(2);
        assert!(
            out.errors().iter().any(|l| l.contains(wanted)),
            "`{extra}`: an error naming {wanted}\n{out}"
        );
    }
}

/// Under its `file:line:col` line, an error shows the line of the file with a caret under the
/// key or value, as cargo does; quoted values the message does not quote are masked (a file
/// may hold secrets).
#[test]
fn an_error_shows_its_line_with_a_caret_and_other_values_masked() {
    let p = Pipeline::new(
        "[pipeline]\nname = \"caret\"\n\n[[stage]]\nname = \"src\"\nkind = \"generate\"\ncount = \"three\"\n\n[[stage]]\nname = \"out\"\nkind = \"jsonl\"\npath = \"out.jsonl\"\nheaderz = \"x\"\n",
    );
    let out = p.validate();
    out.assert_code(2);
    let lines: Vec<&str> = out.stderr.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.starts_with("error: ") && l.contains(needle))
            .unwrap_or_else(|| panic!("an error naming {needle}\n{out}"))
    };
    let count = at("pipeline.toml:7:9:");
    assert_eq!(lines[count + 2], "7 | count = \"three\"", "{out}");
    assert_eq!(lines[count + 3], "  |         ^^^^^^^", "{out}");
    let key = at("pipeline.toml:13:1:");
    assert_eq!(
        lines[key + 2],
        "13 | headerz = \"…\"",
        "values masked: {out}"
    );
    assert_eq!(lines[key + 3], "   | ^^^^^^^", "{out}");

    let secret = Pipeline::new(
        "[pipeline]\nname = \"secret\"\n\n[checkpoint]\nstore = \"postgres://u:Secr3t@127.0.0.1:1/db\"\ncommit_interval = \"soon\"\n\n[[stage]]\nname = \"src\"\nkind = \"generate\"\ncount = 1\npasword = \"Secr3t\"\n",
    );
    let out = secret.validate();
    out.assert_code(2);
    assert!(!out.stderr.contains("Secr3t"), "{out}");
    assert!(
        out.stderr.contains("6 | commit_interval = \"soon\""),
        "the value the message quotes\n{out}"
    );
    assert!(
        out.stderr.contains("12 | pasword = \"…\""),
        "any other value masked\n{out}"
    );

    // Inside a multi-line string, a bare value, a quote inside a value, a comment: masked.
    for text in [
        "[pipeline]\nname = \"m\"\n[checkpoint]\nstore = \"\"\"\npostgres://u:Secr3t@db/x\\q\n\"\"\"\n",
        "[pipeline]\nname = \"m\"\n[checkpoint]\nstore = postgres://u:Secr3t@db/x\n",
        "[pipeline]\nname = \"m\"\n[telemetry]\npush = \"http://u:Sec\"r3t@gw:9091\"\n",
        "[pipeline]\nname = \"m\"\n[[stage]]\nname = \"src\"\nkind = \"generate\"\ncount = \"x\" # Secr3t\n",
    ] {
        let out = Pipeline::new(text).validate();
        out.assert_code(2);
        assert!(out.stderr.contains(" | "), "a snippet: {out}");
        assert!(
            !out.stderr.contains("Secr3t") && !out.stderr.contains("r3t"),
            "{out}"
        );
    }
}
