//! Record decoding: the `jsonl` source on hostile files, and a record read from JSON bytes the
//! way the plugin host reads a plugin's answer (`serde_json::from_slice::<Record>`, in
//! `core/src/plugin/ffi.rs`) and the checkpoint store reads a saved one.
//!
//! The `jsonl` source is built by its kind (`JsonlKind::build`) and read through the `Source`
//! trait, on files of generated lines: records (some with huge fields, deep nesting, strange
//! keys), and lines that are not (invalid UTF-8, NULs, cut JSON, nesting past the parser's
//! limit, lines past `max_line_bytes`, blank lines, `\r\n`). Asserted: the read never fails
//! nor panics; each non-blank line is one item, in order; a record line gives exactly its
//! record; any other gives an unreadable item keyed `FILE:LINE` with its line number and a
//! message saying why.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use stagewise_core::stage::{
    BuildContext, CancelFlag, Context, Emitted, Record, Role, Source, StageImpl, StageKind,
};
use stagewise_stages_util::{JsonlConfig, JsonlKind};

use crate::budget::{stated, Target};
use crate::util::TestDir;

/// A JSON value: scalars, strings with what a text may hold, and some nesting.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[\\x00-\\x1f\"\\\\\u{7f}\u{202e}\u{fffd}]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value nested `depth` arrays (or objects) deep.
pub fn nested(depth: usize, objects: bool) -> Value {
    let mut v = json!("bottom");
    for _ in 0..depth {
        v = if objects {
            json!({ "a": v })
        } else {
            json!([v])
        };
    }
    v
}

/// Fields of a record: generated, one of them sometimes huge or deeply nested.
pub fn fields() -> impl Strategy<Value = Map<String, Value>> {
    let big = prop_oneof![
        4 => Just(None),
        1 => (1usize..(1 << 20)).prop_map(|n| Some(Value::String("x".repeat(n)))),
        1 => (1usize..120, any::<bool>()).prop_map(|(d, o)| Some(nested(d, o))),
        1 => (1usize..20_000).prop_map(|n| Some(Value::Array(vec![Value::from(n); n]))),
    ];
    (
        prop::collection::btree_map(any::<String>(), json_value(), 0..6),
        big,
    )
        .prop_map(|(fields, big)| {
            let mut fields: Map<String, Value> = fields.into_iter().collect();
            if let Some(big) = big {
                fields.insert("big".into(), big);
            }
            fields
        })
}

/// One line of a generated file.
#[derive(Debug, Clone)]
enum Line {
    /// A record: its key and fields (`\r\n`-ended when the flag is set).
    Record(String, Map<String, Value>, bool),
    /// A record whose key is a number.
    NumberKey(i64),
    /// Bytes that are not a record (no `\n` inside).
    Bad(Vec<u8>),
    /// Spaces and tabs only.
    Blank(String),
}

fn bad_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>().prop_filter("one line", |b| *b != b'\n'), 1..200)
            .prop_filter("not blank", |b| !b.iter().all(u8::is_ascii_whitespace)),
        Just(b"{\"key\": \"a\xff\"}".to_vec()),
        Just(b"{\"key\": \"nul\0\"}".to_vec()),
        Just(b"\xef\xbb\xbf{\"key\": \"bom\"}".to_vec()),
        Just(b"{\"key\": \"cut".to_vec()),
        Just(b"{\"key\": \"\\ud800\"}".to_vec()),
        Just(b"[\"key\"]".to_vec()),
        Just(b"{\"key\": null}".to_vec()),
        Just(b"{\"key\": 1.5}".to_vec()),
        Just(b"{\"key\": 18446744073709551616}".to_vec()),
        Just(b"{\"key\": 1e99999}".to_vec()),
        Just(b"{\"nokey\": 1}".to_vec()),
        Just(b"{\"key\": \"a\"} {\"key\": \"b\"}".to_vec()),
        (129usize..100_000).prop_map(|d| format!(
            "{{\"key\": \"deep\", \"x\": {}{}}}",
            "[".repeat(d),
            "]".repeat(d)
        )
        .into_bytes()),
        (129usize..100_000).prop_map(|d| "[".repeat(d).into_bytes()),
        (1usize..100_000).prop_map(|d| format!("{}1", "{\"a\":".repeat(d)).into_bytes()),
    ]
}

fn line() -> impl Strategy<Value = Line> {
    prop_oneof![
        6 => ("[a-z0-9]{1,6}", fields(), any::<bool>()).prop_map(|(k, f, crlf)| Line::Record(k, f, crlf)),
        1 => any::<i64>().prop_map(Line::NumberKey),
        4 => bad_line().prop_map(Line::Bad),
        1 => "[ \t]{0,4}".prop_map(Line::Blank),
    ]
}

/// What the source must emit for a line.
enum Expected {
    /// This record.
    Record(Record),
    /// An unreadable item whose error says this.
    Unreadable(&'static str),
    /// Generated bytes that are a record after all: either.
    Either,
}

#[test]
fn the_jsonl_source_reads_hostile_files_line_by_line() {
    let target = Target::new("jsonl source", 5.0, 0x6a73_6f6e);
    let dir = TestDir::new();
    let max_line = prop_oneof![Just(None), (16u64..(1 << 16)).prop_map(Some)];
    let strategy = (
        prop::collection::vec(line(), 0..24),
        max_line,
        any::<bool>(),
    );
    target.run(strategy, |(lines, max_line, last_ended)| {
        let case = tempfile::Builder::new()
            .tempdir_in(dir.path())
            .expect("case folder");
        let mut file = Vec::new();
        let mut expected: Vec<(u64, Expected)> = Vec::new();
        // Keys are made unique per file: the source does not check, the runner does.
        for (i, line) in lines.iter().enumerate() {
            let number = i as u64 + 1;
            let start = file.len();
            let (bytes, want, crlf) = match line {
                Line::Record(key, fields, crlf) => {
                    let key = format!("{key}-{i}");
                    let mut object = fields.clone();
                    object.insert("key".into(), Value::String(key.clone()));
                    let bytes = serde_json::to_vec(&Value::Object(object.clone())).expect("JSON");
                    (
                        bytes,
                        Some(Expected::Record(Record::with_fields(key, object))),
                        *crlf,
                    )
                }
                Line::NumberKey(n) => {
                    let object = json!({"key": n, "n": i});
                    let Value::Object(map) = object.clone() else {
                        unreachable!()
                    };
                    (
                        object.to_string().into_bytes(),
                        Some(Expected::Record(Record::with_fields(n.to_string(), map))),
                        false,
                    )
                }
                Line::Bad(bytes) => (bytes.clone(), Some(Expected::Unreadable("")), false),
                Line::Blank(blank) => (blank.clone().into_bytes(), None, false),
            };
            file.extend_from_slice(&bytes);
            if crlf {
                file.push(b'\r');
            }
            let ended = i + 1 < lines.len() || last_ended;
            if ended {
                file.push(b'\n');
            }
            // The line as the source measures it: its `\n` or `\r\n` ending not counted.
            let mut content = &file[start..file.len() - usize::from(ended)];
            if ended && content.last() == Some(&b'\r') {
                content = &content[..content.len() - 1];
            }
            let want = match want {
                _ if content.iter().all(u8::is_ascii_whitespace) => None,
                Some(_) if max_line.is_some_and(|m| content.len() as u64 > m) => {
                    Some(Expected::Unreadable("longer than `max_line_bytes`"))
                }
                // Bytes drawn at random may happen to be a record.
                Some(Expected::Unreadable(_)) => match serde_json::from_slice::<Value>(content) {
                    Ok(Value::Object(o))
                        if o.get("key")
                            .is_some_and(|k| k.is_string() || k.is_i64() || k.is_u64()) =>
                    {
                        Some(Expected::Either)
                    }
                    _ => Some(Expected::Unreadable("")),
                },
                other => other,
            };
            if let Some(want) = want {
                expected.push((number, want));
            }
        }
        let path = case.path().join("in.jsonl");
        std::fs::write(&path, &file).expect("write the file");
        let config: JsonlConfig = toml::from_str(&match max_line {
            Some(max) => format!("path = \"in.jsonl\"\nmax_line_bytes = \"{max}B\""),
            None => "path = \"in.jsonl\"".to_owned(),
        })
        .expect("config");
        let cx = BuildContext::new(
            "src",
            Role::Source,
            case.path(),
            1,
            std::time::Duration::from_secs(30),
        );
        let source: Arc<dyn Source> = match JsonlKind.build(config, &cx) {
            Ok(StageImpl::Source(source)) => source,
            Ok(_) => panic!("the jsonl source builds a source"),
            Err(e) => panic!("the jsonl source does not build: {}", e.message),
        };
        let mut emitted = Vec::new();
        let attempt = Context::new(
            "",
            "src",
            1,
            std::time::Instant::now() + std::time::Duration::from_secs(3600),
            CancelFlag::new(),
        );
        let read = source.read(None, &attempt, &mut |e| {
            emitted.push(e);
            Ok(())
        });
        prop_assert!(
            read.is_ok(),
            "the read failed: {:?}",
            read.err().map(|e| e.message)
        );
        prop_assert_eq!(
            emitted.len(),
            expected.len(),
            "items emitted for {} lines",
            lines.len()
        );
        for (got, (number, want)) in emitted.iter().zip(&expected) {
            match (got, want) {
                (Emitted::Record(got), Expected::Record(want)) => prop_assert_eq!(got, want),
                (Emitted::Unreadable { key, error, .. }, Expected::Unreadable(why)) => {
                    prop_assert_eq!(key, &format!("in.jsonl:{number}"));
                    stated("unreadable line", error)?;
                    prop_assert!(error.contains(why), "line {}: {:?}", number, error);
                }
                (Emitted::Unreadable { key, error, .. }, Expected::Either) => {
                    prop_assert_eq!(key, &format!("in.jsonl:{number}"));
                    stated("unreadable line", error)?;
                }
                (Emitted::Record(_), Expected::Either) => {}
                (got, _) => prop_assert!(false, "line {}: emitted {:?}", number, short(got)),
            }
        }
        Ok(())
    });
}

/// An emitted item, its fields cut short for a failure message.
fn short(e: &Emitted) -> String {
    let text = format!("{e:?}");
    text.chars().take(400).collect()
}

/// A record's JSON (`{"key": …, "fields": {…}}`), mutated: cut, bytes changed, nesting and
/// strange numbers put in.
#[derive(Debug, Clone)]
enum Mutation {
    Cut(usize),
    Byte(usize, u8),
    Insert(usize, Vec<u8>),
}

fn record_bytes() -> impl Strategy<Value = (Vec<u8>, Vec<Mutation>)> {
    let base = ("\\PC{0,12}", fields()).prop_map(|(key, fields)| {
        serde_json::to_vec(&Record::with_fields(key, fields)).expect("a record serializes")
    });
    let hostile = prop::sample::select(vec![
        &b"\xff"[..],
        b"\0",
        b"\\ud800",
        b"\"\\ud800\"",
        b"1e99999",
        b"-0",
        b"18446744073709551616",
        b"\"key\":\"dup\",",
        b"\"fields\":[],",
        b"\"fields\":null,",
        b"\"extra\":1,",
        b"}",
        b"{",
        b"[",
        b"\"",
        b"\\",
    ])
    .prop_map(<[u8]>::to_vec);
    let deep = (1usize..50_000).prop_map(|d| "[".repeat(d).into_bytes());
    let mutation = prop_oneof![
        1 => any::<usize>().prop_map(Mutation::Cut),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Byte(a, b)),
        3 => (any::<usize>(), hostile).prop_map(|(a, b)| Mutation::Insert(a, b)),
        1 => (any::<usize>(), deep).prop_map(|(a, b)| Mutation::Insert(a, b)),
    ];
    (base, prop::collection::vec(mutation, 0..4))
}

#[test]
fn records_decode_from_hostile_json_or_are_refused() {
    let target = Target::new("record decoding", 3.0, 0x7265_636f);
    target.run(record_bytes(), |(mut bytes, mutations)| {
        for m in &mutations {
            let n = bytes.len() + 1;
            match m {
                Mutation::Cut(at) => bytes.truncate(at % n),
                Mutation::Byte(at, b) if !bytes.is_empty() => {
                    let at = at % bytes.len();
                    bytes[at] = *b;
                }
                Mutation::Insert(at, more) => {
                    let at = at % n;
                    bytes.splice(at..at, more.iter().copied());
                }
                Mutation::Byte(..) => {}
            }
        }
        // The host's reading of a plugin's answer, and the SDK's of the host's record.
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(record) => {
                // What was read writes and reads back the same.
                let again = serde_json::to_vec(&record).expect("a record serializes");
                let back: Record = serde_json::from_slice(&again).expect("reads back");
                prop_assert_eq!(&back, &record);
            }
            Err(e) => stated("record decoding", &e.to_string())?,
        }
        match serde_json::from_slice::<stagewise_plugin::Record>(&bytes) {
            Ok(record) => {
                let again = serde_json::to_vec(&record).expect("a record serializes");
                let back: stagewise_plugin::Record =
                    serde_json::from_slice(&again).expect("reads back");
                prop_assert_eq!(&back, &record);
            }
            Err(e) => stated("record decoding (plugin side)", &e.to_string())?,
        }
        Ok(())
    });
}
