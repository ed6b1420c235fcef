//! The JSON boundary of the plugin ABI, from both sides.
//!
//! - The plugin side: a stage exported from this test binary with the SDK's `export!` (the
//!   code every plugin library carries), its table's `create` and `process` called as the host
//!   calls them, with configurations and records that are not what the host sends: invalid
//!   JSON and UTF-8, deep nesting, wrong shapes, unknown keys, huge values. Asserted: no panic
//!   crosses (`REPLY_PANIC` never comes back), bad input is a permanent error whose message
//!   says what was wrong, good input is answered with a record that reads back.
//! - The host side: records with huge fields, deep nesting and every kind of text, sent through
//!   a real plugin library (`noop`, which hands each record back) by the binary: every record
//!   must come out of the sink exactly as it went in.
//!
//! (The host's reading of an answer, `serde_json::from_slice::<Record>` in
//! `core/src/plugin/ffi.rs`, is fed malformed bytes by `records.rs`: the SDK always answers
//! with well-formed JSON, so no real library can send those.)

// The test calls the plugin table's functions as the host does: through raw pointers.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::path::Path;

use proptest::prelude::*;
use serde_json::{json, Value};
use stagewise_plugin::abi::{self, Buffer, CallContext, PluginTable, Reply, Slice};
use stagewise_plugin::{export, Context, Error, Outcome, Record, Stage};

use crate::budget::{stagewise, stated, Ran, Target};
use crate::records::{fields, nested};
use crate::util::{plugins, TestDir};

/// A stage that adds a field to each record: `{"field": NAME, "times": N}`.
struct Tag(TagConfig);

#[derive(Debug)]
struct TagConfig {
    field: String,
    times: u32,
}

/// A configuration read as `Tag` reads it; `None` if it is not one.
fn tag_config(config: &Value) -> Option<TagConfig> {
    let object = config.as_object()?;
    if object.keys().any(|k| k != "field" && k != "times") {
        return None;
    }
    let field = object.get("field")?.as_str()?.to_owned();
    let times = match object.get("times") {
        None => 0,
        Some(t) => u32::try_from(t.as_u64()?).ok()?,
    };
    Some(TagConfig { field, times })
}

impl Stage for Tag {
    const KIND: &'static str = "tag";
    type Config = Value;

    fn config_schema() -> Value {
        json!({"type": "object", "required": ["field"]})
    }

    fn new(config: Value) -> Result<Self, Error> {
        tag_config(&config)
            .map(Tag)
            .ok_or_else(|| Error::permanent("not a `tag` configuration"))
    }

    fn process(&self, mut record: Record, _cx: &Context) -> Result<Outcome, Error> {
        record
            .fields
            .insert(self.0.field.clone(), Value::from(self.0.times));
        Ok(Outcome::Continue(record))
    }
}

export!(Tag);

/// The table this binary exports, as the host gets it.
fn table() -> &'static PluginTable {
    let table = stagewise_plugin_entry();
    assert!(!table.is_null(), "the entry point returned no table");
    // SAFETY: a non-null table lives in a static of the SDK for the life of the process.
    unsafe { &*table }
}

/// A buffer the plugin allocated, copied and given back.
fn take(table: &PluginTable, buffer: Buffer) -> Vec<u8> {
    // SAFETY: the buffer came from this table's functions and is freed once, here.
    let bytes = unsafe { buffer.as_bytes() }.to_vec();
    if !buffer.ptr.is_null() {
        // SAFETY: as above.
        unsafe { table.free_buffer.expect("free_buffer")(buffer) };
    }
    bytes
}

/// Bytes derived from a JSON value: as written, or damaged.
fn damaged(base: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
    let hostile = prop::sample::select(vec![
        &b"\xff"[..],
        b"\xc3",
        b"\0",
        b"\\ud800",
        b"1e99999",
        b"]",
        b"}",
        b"{",
        b"\"",
        b",",
    ])
    .prop_map(<[u8]>::to_vec);
    let edit = prop_oneof![
        (any::<usize>(), hostile).prop_map(|(at, b)| (at, b, false)),
        (
            any::<usize>(),
            (129usize..30_000).prop_map(|d| "[".repeat(d).into_bytes())
        )
            .prop_map(|(at, b)| (at, b, false)),
        any::<usize>().prop_map(|at| (at, Vec::new(), true)),
    ];
    (base, prop::collection::vec(edit, 0..3)).prop_map(|(value, edits)| {
        let mut bytes = serde_json::to_vec(&value).expect("JSON");
        for (at, insert, cut) in edits {
            let at = at % (bytes.len() + 1);
            if cut {
                bytes.truncate(at);
            } else {
                bytes.splice(at..at, insert);
            }
        }
        bytes
    })
}

fn config() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => ("\\PC{0,10}", any::<u32>()).prop_map(|(f, t)| json!({"field": f, "times": t})),
        1 => Just(json!({})),
        1 => Just(json!({"field": 1})),
        1 => Just(json!({"field": "f", "times": -1})),
        1 => Just(json!({"field": "f", "times": 4294967296u64})),
        1 => Just(json!({"field": "f", "extra": true})),
        1 => Just(json!([])),
        1 => Just(json!(null)),
        1 => (1usize..200).prop_map(|d| json!({"field": "f", "times": nested(d, true)})),
    ]
}

fn record() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => ("\\PC{0,10}", fields()).prop_map(|(k, f)| json!({"key": k, "fields": f})),
        1 => Just(json!({"key": 1, "fields": {}})),
        1 => Just(json!({"fields": {}})),
        1 => Just(json!({"key": "a", "fields": []})),
        1 => Just(json!({"key": "a", "fields": {}, "extra": 1})),
        1 => Just(json!("not a record")),
    ]
}

#[test]
fn the_plugin_side_answers_bad_configurations_and_records_without_panicking() {
    let target = Target::new("plugin abi", 3.0, 0x706c_7567);
    let table = table();
    let (create, process, destroy) = (
        table.create.expect("create"),
        table.process.expect("process"),
        table.destroy.expect("destroy"),
    );
    let kind = prop_oneof![
        4 => Just(b"tag".to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..8),
    ];
    target.run(
        (kind, damaged(config()), damaged(record())),
        |(kind, config, record)| {
            let mut instance: *mut c_void = std::ptr::null_mut();
            let mut error = Buffer::EMPTY;
            // SAFETY: the slices outlive the call; the out-pointers point to writable locals.
            let code = unsafe {
                create(
                    Slice::new(&kind),
                    Slice::new(&config),
                    &mut instance,
                    &mut error,
                )
            };
            let message = String::from_utf8(take(table, error));
            prop_assert!(message.is_ok(), "create's message is not UTF-8");
            let message = message.unwrap_or_default();
            let json: Option<Value> = serde_json::from_slice(&config).ok();
            let wanted = json.as_ref().and_then(tag_config);
            if code != abi::CREATE_OK {
                prop_assert_eq!(
                    code,
                    abi::REPLY_PERMANENT,
                    "create answered {}: {}",
                    code,
                    message
                );
                prop_assert!(instance.is_null(), "an instance with an error");
                stated("create", &message)?;
                let why = if json.is_none() {
                    "invalid configuration: "
                } else {
                    "not a `tag` configuration"
                };
                prop_assert!(
                    kind != b"tag" || message.starts_with(why),
                    "create: {}",
                    message
                );
                prop_assert!(
                    kind != b"tag" || wanted.is_none(),
                    "a good configuration refused: {}",
                    message
                );
                return Ok(());
            }
            prop_assert!(!instance.is_null(), "created no instance");
            let wanted = wanted.expect("created from a configuration that reads");
            let cx = CallContext {
                key: Slice::new(b"k"),
                stage: Slice::new(b"tag"),
                attempt: 1,
                remaining_ms: 30_000,
                host: std::ptr::null(),
                is_cancelled: None,
                log: None,
            };
            let mut reply = Reply {
                code: u32::MAX,
                retry_after_ms: abi::NO_RETRY_AFTER,
                body: Buffer::EMPTY,
            };
            // SAFETY: the instance is live; the record, context and reply outlive the call.
            unsafe { process(instance, Slice::new(&record), &cx, &mut reply) };
            let code = reply.code;
            let body = take(table, reply.body);
            // SAFETY: the instance came from `create` and no call is running.
            unsafe { destroy(instance) };
            let sent: Option<Record> = serde_json::from_slice(&record).ok();
            match code {
                abi::REPLY_CONTINUE => {
                    let got: Record =
                        serde_json::from_slice(&body).expect("the answer is a record");
                    let mut want = sent.expect("answered a record that does not read");
                    want.fields
                        .insert(wanted.field.clone(), Value::from(wanted.times));
                    prop_assert_eq!(got, want);
                }
                abi::REPLY_PERMANENT => {
                    let text = String::from_utf8_lossy(&body);
                    prop_assert!(
                        text.starts_with("the host sent a record that is not valid JSON: "),
                        "process: {}",
                        text
                    );
                    prop_assert!(sent.is_none(), "a good record refused: {}", text);
                }
                other => prop_assert!(
                    false,
                    "process answered {}: {}",
                    other,
                    String::from_utf8_lossy(&body)
                ),
            }
            Ok(())
        },
    );
}

/// A pipeline `jsonl` → the plugin `noop` → `jsonl` in `dir`, on `lines`.
fn through_noop(dir: &Path, library: &Path, lines: &str) -> Ran {
    std::fs::write(dir.join("in.jsonl"), lines).expect("write the input");
    std::fs::write(
        dir.join("pipeline.toml"),
        format!(
            "[pipeline]\nname = \"across\"\n\n[[stage]]\nname = \"src\"\nkind = \"jsonl\"\npath = \"in.jsonl\"\n\n\
             [[stage]]\nname = \"noop\"\nkind = \"plugin\"\npath = {:?}\nplugin_kind = \"noop\"\n\n\
             [[stage]]\nname = \"out\"\nkind = \"jsonl\"\npath = \"out.jsonl\"\n",
            library.display().to_string()
        ),
    )
    .expect("write the pipeline");
    stagewise(dir, &["run", "pipeline.toml"])
}

/// Found by `hostile_records_cross_a_real_plugin_unchanged`: a float came back from a plugin
/// one unit in its last place off (serde_json read it without `float_roundtrip`).
#[test]
fn a_float_crosses_a_plugin_exactly() {
    let library = plugins::library(plugins::MISBEHAVE);
    let dir = TestDir::new();
    let ran = through_noop(
        dir.path(),
        &library,
        "{\"key\":\"a\",\"x\":2.5355012630309815e-17}\n",
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr());
    let out = std::fs::read_to_string(dir.join("out.jsonl")).expect("the sink");
    assert_eq!(out, "{\"key\":\"a\",\"x\":2.5355012630309815e-17}\n");
}

#[test]
fn hostile_records_cross_a_real_plugin_unchanged() {
    let target = Target::new("plugin host", 4.0, 0x686f_7374).batch(2);
    let library = plugins::library(plugins::MISBEHAVE);
    let dir = TestDir::new();
    let batch = prop::collection::vec(fields(), 1..12);
    target.run(batch, |batch| {
        let case = tempfile::Builder::new()
            .tempdir_in(dir.path())
            .expect("case folder");
        let mut lines = String::new();
        let mut sent = BTreeMap::new();
        for (i, mut fields) in batch.into_iter().enumerate() {
            let key = format!("r{i}");
            fields.insert("key".into(), Value::String(key.clone()));
            lines.push_str(&Value::Object(fields.clone()).to_string());
            lines.push('\n');
            sent.insert(key, Value::Object(fields));
        }
        let ran = through_noop(case.path(), &library, &lines);
        prop_assert_eq!(ran.code, Some(0), "{}", ran.stderr());
        let out = std::fs::read_to_string(case.path().join("out.jsonl")).expect("the sink");
        let mut got = BTreeMap::new();
        for line in out.lines() {
            let value: Value = serde_json::from_str(line).expect("a sink line is JSON");
            let key = value["key"].as_str().expect("a key").to_owned();
            got.insert(key, value);
        }
        let differences = differences(&sent, &got);
        prop_assert!(
            differences.is_empty(),
            "changed across the plugin: {}",
            differences
        );
        Ok(())
    });
}

/// How `got` differs from `sent`, key by key and field by field, values cut short.
fn differences(sent: &BTreeMap<String, Value>, got: &BTreeMap<String, Value>) -> String {
    let short = |v: Option<&Value>| -> String { format!("{v:?}").chars().take(300).collect() };
    let mut out = Vec::new();
    for (key, want) in sent {
        let Some(have) = got.get(key) else {
            out.push(format!("{key}: missing"));
            continue;
        };
        let (Some(want), Some(have)) = (want.as_object(), have.as_object()) else {
            continue;
        };
        for field in want.keys().chain(have.keys()) {
            if want.get(field) != have.get(field) {
                out.push(format!(
                    "{key}.{field:?}: sent {}, got {}",
                    short(want.get(field)),
                    short(have.get(field))
                ));
            }
        }
    }
    out.extend(
        got.keys()
            .filter(|k| !sent.contains_key(*k))
            .map(|k| format!("{k}: extra")),
    );
    out.join("; ")
}
