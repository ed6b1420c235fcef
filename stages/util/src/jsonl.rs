//! The `jsonl` kind: JSON Lines in and out.
//!
//! As the source it reads one JSON object per line and takes each record's key from one of its
//! fields. A line that is not a record (not JSON, not an object, no usable key, longer than
//! `max_line_bytes`) becomes an item of its own that fails at the source, keyed by its place
//! (`in.jsonl:3`), and the read goes on. A line is read into memory only up to
//! `max_line_bytes`: the rest of a longer one is skipped in bounded chunks, never held. As the
//! sink it appends one line per record, `{"key": …, …fields}`, so a sink file can be read back
//! by a `jsonl` source with the default `key`.
//!
//! The sink hands each whole line to one `write_all` call on an unbuffered file opened for
//! appending: once `process` returns, the line is with the operating system, which is what the
//! runner's checkpoint (written right after) relies on.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bytesize::ByteSize;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use stagewise_core::stage::{
    BlockingStage, BuildContext, Context, Emitted, Ending, EndingKind, Fields, FieldsOut, Marks,
    Outcome, Probe, ProbeContext, Record, Role, Source, StageError, StageImpl, StageKind, Stop,
};

/// How often (in lines) a long read looks at the cancellation flag.
const CANCEL_CHECK_EVERY: u64 = 1024;

/// Most lines, and bytes, of a source file its probe reads for the records' fields.
const PROBE_LINES: usize = 10_000;
/// See [`PROBE_LINES`].
const PROBE_BYTES: u64 = 8 << 20;

/// The probe of a `jsonl` source: the file is there and readable, and the fields of its first
/// lines.
fn probe_source(config: &JsonlConfig, cx: &ProbeContext<'_>) -> Probe {
    use std::io::{BufRead, Read};
    let mut probe = Probe::default();
    let path = cx.resolve(&config.path);
    let shown = path.display();
    let file = match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => std::fs::File::open(&path),
        Ok(_) => {
            probe.config("path", format!("{shown} is not a file"));
            return probe;
        }
        Err(e) => Err(e),
    };
    let file = match file {
        Ok(file) => file,
        Err(e) => {
            probe.config("path", format!("cannot read {shown}: {e}"));
            return probe;
        }
    };
    let mut reader = std::io::BufReader::new(file.take(PROBE_BYTES));
    let mut fields: Vec<String> = Vec::new();
    let (mut lines, mut records, mut complete) = (0usize, 0usize, false);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => {
                // The end of the file, unless the byte budget ended the read.
                complete = reader.into_inner().limit() > 0;
                break;
            }
            Ok(_) if !line.ends_with(b"\n") && reader.get_ref().limit() == 0 => break,
            Ok(_) => {}
            Err(e) => {
                probe.config("path", format!("cannot read {shown}: {e}"));
                return probe;
            }
        }
        lines += 1;
        if let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&line) {
            records += 1;
            for name in object.keys() {
                if !fields.contains(name) {
                    fields.push(name.clone());
                }
            }
        }
        if lines >= PROBE_LINES {
            break;
        }
    }
    if complete && records > 0 && !fields.contains(&config.key) {
        let fields: Vec<String> = fields
            .iter()
            .map(|f| stagewise_core::text::printable(f).into_owned())
            .collect();
        probe.config(
            "key",
            format!(
                "no record of {shown} has the key field `{}` (their fields: {})",
                config.key,
                fields.join(", ")
            ),
        );
    }
    probe.passed(format!(
        "{shown}: {records} record(s) read{}",
        if complete {
            ""
        } else {
            " (the first of the file)"
        }
    ));
    // A file without records (empty, or none read) says nothing of their fields.
    probe.fields = if records == 0 {
        FieldsOut::Unknown
    } else {
        FieldsOut::Exactly { fields, complete }
    };
    probe
}

/// Configuration of a `jsonl` stage.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// The JSON Lines file. As the source: read, one JSON object per line (blank lines skipped). As
    /// the sink: one line `{"key": …, …fields}` appended per record; the file and its folders are
    /// created.
    pub path: PathBuf,
    /// As the source: the field holding each record's key (a string, or an integer used as its
    /// decimal text).
    #[schemars(extend("x-default" = "`\"key\"`"))]
    #[serde(default = "default_key_field")]
    pub key: String,
    /// As the source: the longest line read, not counting its line ending. A longer line fails as
    /// an item of its own, keyed `FILE:LINE` like any line that is not a record, and the read goes
    /// on; no more of it than this is ever held in memory.
    #[schemars(extend("x-default" = "`\"16MiB\"`"))]
    #[serde(default = "default_max_line_bytes")]
    #[schemars(with = "stagewise_core::stage::SizeText")]
    pub max_line_bytes: ByteSize,
    /// As the sink: a JSON Lines file that gets a line for every item that ends failed or skipped
    /// at any stage of the pipeline, `{"key": …, "ending": "failed", "stage": …, "error": …,
    /// "attempts": …, "fields": {…}}` (`"reason"` instead of `"error"` for a skip; `fields` as
    /// the record was when it ended). Written before the ending is checkpointed: after a crash an
    /// item may have two lines.
    #[schemars(extend("x-default" = "none"))]
    pub rejects: Option<PathBuf>,
}

fn default_key_field() -> String {
    "key".to_owned()
}

fn default_max_line_bytes() -> ByteSize {
    ByteSize::mib(16)
}

/// The `jsonl` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonlKind;

impl StageKind for JsonlKind {
    type Config = JsonlConfig;

    fn kind(&self) -> &'static str {
        "jsonl"
    }

    fn roles(&self) -> &'static [Role] {
        &[Role::Source, Role::Sink]
    }

    fn check(&self, config: &JsonlConfig, role: Role) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if config.max_line_bytes.as_u64() == 0 {
            problems.push((
                "max_line_bytes".into(),
                "`max_line_bytes` must be more than 0".into(),
            ));
        }
        problems.extend(match &config.rejects {
            Some(_) if role == Role::Source => vec![(
                "rejects".into(),
                "`rejects` is for a `jsonl` sink: a source rejects nothing".into(),
            )],
            Some(rejects) if rejects.as_os_str().is_empty() => vec![(
                "rejects".into(),
                "`rejects` must name a file: leave it out to write no rejects".into(),
            )],
            Some(rejects) if *rejects == config.path => vec![(
                "rejects".into(),
                "`rejects` must be another file than `path`".into(),
            )],
            _ => Vec::new(),
        });
        problems
    }

    /// As the source: the file is there, and its fields are those of its first lines (all of
    /// them for a file of up to [`PROBE_LINES`] lines and [`PROBE_BYTES`] bytes). As the sink:
    /// its records keep their fields.
    fn probe(&self, config: &JsonlConfig, cx: &ProbeContext<'_>) -> Probe {
        match cx.role {
            Role::Source => probe_source(config, cx),
            Role::Sink | Role::Transform => Probe::same(),
        }
    }

    fn build(&self, config: JsonlConfig, cx: &BuildContext) -> Result<StageImpl, StageError> {
        let path = cx.resolve(&config.path);
        match cx.role {
            // The file is opened on each read, not here: a retried read starts from its top.
            Role::Source => Ok(StageImpl::Source(Arc::new(JsonlSource {
                name: path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                path,
                key_field: config.key,
                max_line: config.max_line_bytes,
            }))),
            // Core only builds a kind in the roles it lists; were `jsonl` ever allowed in the
            // middle, appending and passing the record on is what it would do there.
            Role::Sink | Role::Transform => {
                let out = Appender::open(path)?;
                let rejects = match &config.rejects {
                    Some(rejects) => Some(Appender::open(cx.resolve(rejects))?),
                    None => None,
                };
                if let Some(rejects) = &rejects {
                    if rejects.same_file_as(&out) {
                        return Err(StageError::fatal(format!(
                            "`rejects` ({}) is the same file as `path` ({})",
                            rejects.path.display(),
                            out.path.display()
                        )));
                    }
                }
                Ok(StageImpl::Blocking(Arc::new(JsonlSink { out, rejects })))
            }
        }
    }
}

struct JsonlSource {
    path: PathBuf,
    /// The file's name, for the keys of its unreadable lines.
    name: String,
    key_field: String,
    /// `max_line_bytes`.
    max_line: ByteSize,
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line (its `\n` included, when it had one) is in the buffer.
    Read,
    /// The file ended: nothing was read.
    End,
    /// The line is longer than the limit: the buffer holds its first bytes only, and the
    /// reader stands somewhere inside it (see [`skip_line`]).
    TooLong,
}

/// The reader's next bytes (none at the end), an interrupted read tried again.
fn fill(reader: &mut impl BufRead) -> io::Result<&[u8]> {
    while let Err(e) = reader.fill_buf() {
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
    reader.fill_buf()
}

/// Read one line into `line` (cleared first), holding at most `max` bytes of it besides its
/// `\n`: unlike `read_until`, a line without end in sight does not grow the buffer without end.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    line.clear();
    loop {
        let available = fill(reader)?;
        if available.is_empty() {
            return Ok(if line.is_empty() {
                Line::End
            } else {
                Line::Read
            });
        }
        let (taken, ended) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        // The line's ending, `\n` or `\r\n`, does not count (its `\r` may have come with the
        // read before).
        let crlf = ended
            && if taken >= 2 {
                available[taken - 2] == b'\r'
            } else {
                line.last() == Some(&b'\r')
            };
        let length = line.len() + taken - usize::from(ended) - usize::from(crlf);
        // A `\r` last in what is read so far may begin the ending: taken, to see what follows.
        let maybe_ending = !ended && available[taken - 1] == b'\r' && length - 1 <= max;
        if length > max && !maybe_ending {
            let room = max.saturating_sub(line.len());
            line.extend_from_slice(&available[..room]);
            reader.consume(room);
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(&available[..taken]);
        reader.consume(taken);
        if ended {
            return Ok(Line::Read);
        }
    }
}

/// Skip the rest of the current line, its `\n` included, a buffer at a time; `stop` is asked
/// between buffers (a line of gigabytes takes a while to skip). Returns whether the line ended
/// (`false`: stopped first).
fn skip_line(reader: &mut impl BufRead, stop: &dyn Fn() -> bool) -> io::Result<bool> {
    loop {
        let available = fill(reader)?;
        if available.is_empty() {
            return Ok(true);
        }
        if let Some(at) = available.iter().position(|&b| b == b'\n') {
            reader.consume(at + 1);
            return Ok(true);
        }
        let n = available.len();
        reader.consume(n);
        if stop() {
            return Ok(false);
        }
    }
}

impl JsonlSource {
    /// The record of one non-blank line, or why the line is not one (and its fields, when it is
    /// an object without a usable key).
    fn parse_line(&self, line: &[u8]) -> Result<Record, (String, Fields)> {
        let value: Value = serde_json::from_slice(line)
            .map_err(|e| (format!("invalid JSON: {e}"), Fields::new()))?;
        let Value::Object(fields) = value else {
            return Err(("expected a JSON object".to_owned(), Fields::new()));
        };
        let key = match fields.get(&self.key_field) {
            Some(Value::String(key)) => key.clone(),
            Some(Value::Number(key)) if key.is_i64() || key.is_u64() => key.to_string(),
            Some(_) => {
                let why = format!(
                    "key field `{}` must be a string or an integer",
                    self.key_field
                );
                return Err((why, fields));
            }
            None => return Err((format!("missing key field `{}`", self.key_field), fields)),
        };
        Ok(Record::with_fields(key, fields))
    }
}

impl Source for JsonlSource {
    fn read(
        &self,
        limit: Option<u64>,
        cx: &Context,
        emit: &mut dyn FnMut(Emitted) -> Result<(), Stop>,
    ) -> Result<(), StageError> {
        let path = self.path.display();
        let file = File::open(&self.path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => StageError::permanent(format!("{path}: no such file")),
            _ => StageError::permanent(format!("{path}: cannot open: {e}")),
        })?;
        let mut reader = BufReader::new(file);
        // Beyond the address space it is no limit at all.
        let max_line = usize::try_from(self.max_line.as_u64()).unwrap_or(usize::MAX);
        let mut line = Vec::new();
        let mut emitted = 0u64;
        let mut line_no = 0u64;
        loop {
            if limit.is_some_and(|limit| emitted >= limit) {
                return Ok(());
            }
            // A cancelled read's records are discarded by the runner, so stopping quietly is
            // enough.
            if line_no.is_multiple_of(CANCEL_CHECK_EVERY) && cx.is_cancelled() {
                return Ok(());
            }
            // Bytes, not `lines()`: invalid UTF-8 is then a bad line with its number, reported
            // by the JSON parser, rather than an I/O error.
            let read = read_line(&mut reader, &mut line, max_line).map_err(|e| {
                StageError::transient(format!("{path}:{}: cannot read: {e}", line_no + 1))
            })?;
            line_no += 1;
            // A line that is not a record is an item that fails (see the module docs).
            let record = match read {
                Line::End => return Ok(()),
                Line::TooLong => {
                    let ended = skip_line(&mut reader, &|| cx.is_cancelled()).map_err(|e| {
                        StageError::transient(format!("{path}:{line_no}: cannot read: {e}"))
                    })?;
                    if !ended {
                        return Ok(());
                    }
                    Err((
                        format!(
                            "line longer than `max_line_bytes` ({}); not read",
                            self.max_line
                        ),
                        Fields::new(),
                    ))
                }
                Line::Read if line.iter().all(u8::is_ascii_whitespace) => continue,
                Line::Read => self.parse_line(&line),
            };
            let emitted_item = match record {
                Ok(record) => Emitted::Record(record),
                Err((error, fields)) => Emitted::Unreadable {
                    key: format!("{}:{line_no}", self.name),
                    error,
                    fields,
                },
            };
            if emit(emitted_item).is_err() {
                return Ok(());
            }
            emitted += 1;
        }
    }
}

struct JsonlSink {
    out: Appender,
    /// Where failed and skipped items are marked (`rejects`).
    rejects: Option<Appender>,
}

/// A file lines are appended to.
struct Appender {
    path: PathBuf,
    /// Unbuffered on purpose (see the module docs); the lock keeps concurrent lines whole.
    file: Mutex<File>,
}

impl Appender {
    fn open(path: PathBuf) -> Result<Self, StageError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StageError::fatal(format!("{}: cannot create folder: {e}", parent.display()))
            })?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| StageError::fatal(format!("{}: cannot open: {e}", path.display())))?;
        Ok(Self {
            path,
            file: Mutex::new(file),
        })
    }
}

/// The line for `record`: `{"key":…` first, then its fields but a `key` field, then `}\n`.
///
/// Written by hand because `Fields` keeps its entries sorted by name (or in insertion order,
/// should serde_json's `preserve_order` be on), neither of which puts `key` first.
fn encode_line(record: &Record) -> Vec<u8> {
    const WHY: &str = "JSON strings and values always serialize to memory";
    let mut line = Vec::with_capacity(64);
    line.extend_from_slice(b"{\"key\":");
    serde_json::to_writer(&mut line, &record.key).expect(WHY);
    for (name, value) in record.fields.iter().filter(|(name, _)| *name != "key") {
        line.push(b',');
        serde_json::to_writer(&mut line, name).expect(WHY);
        line.push(b':');
        serde_json::to_writer(&mut line, value).expect(WHY);
    }
    line.extend_from_slice(b"}\n");
    line
}

/// The line for an item that ended failed or skipped (see `rejects`).
fn encode_rejected(ending: &Ending) -> Vec<u8> {
    let message = match ending.kind {
        EndingKind::Failed => "error",
        EndingKind::Skipped => "reason",
    };
    let mut line = serde_json::to_vec(&serde_json::json!({
        "key": ending.record.key,
        "ending": ending.kind.as_str(),
        "stage": ending.stage,
        message: ending.message,
        "attempts": ending.attempts,
        "fields": ending.record.fields,
    }))
    .expect("JSON values always serialize to memory");
    line.push(b'\n');
    line
}

impl Appender {
    /// Whether both are the same file, whatever the paths say (`out.jsonl`, `./out.jsonl`, a
    /// link).
    fn same_file_as(&self, other: &Appender) -> bool {
        use std::os::unix::fs::MetadataExt;
        let meta = |a: &Appender| {
            a.file
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .metadata()
                .map(|m| (m.dev(), m.ino()))
        };
        matches!((meta(self), meta(other)), (Ok(a), Ok(b)) if a == b)
    }

    fn append(&self, line: &[u8], cx: &Context) -> Result<(), StageError> {
        // A panic while the lock was held cannot have left the file itself broken.
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        // An attempt that timed out while waiting for the lock will be retried: writing its line
        // now would write it twice.
        if cx.is_cancelled() {
            return Err(StageError::transient("cancelled"));
        }
        // One call with the whole line: with `O_APPEND` the line lands after every earlier one.
        // Should the disk fail half-way, the retry appends a whole line after the torn one.
        file.write_all(line).map_err(|e| {
            StageError::transient(format!("{}: cannot write: {e}", self.path.display()))
        })
    }
}

impl BlockingStage for JsonlSink {
    fn process(&self, record: Record, cx: &Context) -> Result<Outcome, StageError> {
        self.out.append(&encode_line(&record), cx)?;
        Ok(Outcome::Continue(record))
    }

    fn marks(&self) -> Marks {
        let on = self.rejects.is_some();
        Marks {
            failed: on,
            skipped: on,
        }
    }

    fn mark(&self, ending: &Ending, cx: &Context) -> Result<(), StageError> {
        match &self.rejects {
            Some(rejects) => rejects.append(&encode_rejected(ending), cx),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{build_cx, config, cx, temp_dir};
    use serde_json::json;
    use stagewise_core::stage::{ErrorClass, Fields};
    use std::path::Path;

    fn build(toml_text: &str, role: Role, dir: &Path) -> StageImpl {
        let config: JsonlConfig = config(toml_text).expect("valid config");
        JsonlKind
            .build(config, &build_cx(role, dir))
            .expect("builds")
    }

    fn source(toml_text: &str, dir: &Path) -> Arc<dyn Source> {
        match build(toml_text, Role::Source, dir) {
            StageImpl::Source(source) => source,
            other => panic!("expected a source, got {other:?}"),
        }
    }

    fn sink(toml_text: &str, dir: &Path) -> Arc<dyn BlockingStage> {
        match build(toml_text, Role::Sink, dir) {
            StageImpl::Blocking(sink) => sink,
            other => panic!("expected a blocking sink, got {other:?}"),
        }
    }

    /// The records `source` emits; an unreadable item is a panic.
    fn read_all(source: &dyn Source, limit: Option<u64>) -> Result<Vec<Record>, StageError> {
        Ok(read_emitted(source, limit)?
            .into_iter()
            .map(|emitted| match emitted {
                Emitted::Record(record) => record,
                other => panic!("an unreadable item: {other:?}"),
            })
            .collect())
    }

    /// Everything `source` emits.
    fn read_emitted(source: &dyn Source, limit: Option<u64>) -> Result<Vec<Emitted>, StageError> {
        let mut out = Vec::new();
        source.read(limit, &cx("", 1), &mut |emitted| {
            out.push(emitted);
            Ok(())
        })?;
        Ok(out)
    }

    /// The key and error of an unreadable item.
    fn unreadable(emitted: &Emitted) -> (&str, &str) {
        match emitted {
            Emitted::Unreadable { key, error, .. } => (key, error),
            Emitted::Record(record) => panic!("a record, not an unreadable item: {record:?}"),
        }
    }

    fn fields(value: Value) -> Fields {
        match value {
            Value::Object(fields) => fields,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn source_reads_string_and_integer_keys() {
        let dir = temp_dir("jsonl-keys");
        std::fs::write(
            dir.path().join("in.jsonl"),
            "{\"id\": \"a\", \"x\": 1}\n\n   \n{\"id\": 42}\r\n{\"id\": -7, \"y\": [true]}",
        )
        .expect("write input");
        let source = source("path = \"in.jsonl\"\nkey = \"id\"", dir.path());
        let records = read_all(&*source, None).expect("reads");
        let expected = [
            ("a", json!({"id": "a", "x": 1})),
            ("42", json!({"id": 42})),
            ("-7", json!({"id": -7, "y": [true]})),
        ];
        assert_eq!(records.len(), expected.len());
        for (record, (key, value)) in records.iter().zip(expected) {
            assert_eq!(record.key, key);
            assert_eq!(
                record.fields,
                fields(value),
                "the key field stays in the fields"
            );
        }

        let limited = read_all(&*source, Some(2)).expect("reads");
        assert_eq!(
            limited.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["a", "42"]
        );
    }

    #[test]
    fn a_bad_line_is_an_item_that_fails_named_by_its_file_and_line_and_the_read_goes_on() {
        let dir = temp_dir("jsonl-bad");
        // (input, the bad line's key, the start of its error)
        let cases: [(&[u8], &str, &str); 6] = [
            (b"{\"key\": 1}\n\n{nope}\n", ":3", "invalid JSON: "),
            (b"{\"key\": 1}\n[1, 2]\n", ":2", "expected a JSON object"),
            (
                b"{\"key\": 1}\n{\"key\": 2}\n{\"id\": 3}\n",
                ":3",
                "missing key field `key`",
            ),
            (
                b"{\"key\": 1.5}\n",
                ":1",
                "key field `key` must be a string or an integer",
            ),
            (
                b"{\"key\": null}\n",
                ":1",
                "key field `key` must be a string or an integer",
            ),
            (
                b"{\"key\": \"a\"}\n{\"key\": \"\xff\"}\n",
                ":2",
                "invalid JSON: ",
            ),
        ];
        for (i, (input, at, expected)) in cases.into_iter().enumerate() {
            let name = format!("bad{i}.jsonl");
            // A good line after the bad one: the read goes on.
            let mut input = input.to_vec();
            input.extend_from_slice(b"{\"key\": \"after\"}\n");
            std::fs::write(dir.path().join(&name), &input).expect("write input");
            let source = source(&format!("path = \"{name}\""), dir.path());
            let text = String::from_utf8_lossy(&input);
            let emitted = read_emitted(&*source, None).expect(&text);
            let bad: Vec<_> = emitted
                .iter()
                .filter(|e| matches!(e, Emitted::Unreadable { .. }))
                .collect();
            assert_eq!(bad.len(), 1, "{text:?}: {emitted:?}");
            let (key, error) = unreadable(bad[0]);
            assert_eq!(key, format!("{name}{at}"), "{text:?}");
            assert!(error.starts_with(expected), "{text:?}: {error:?}");
            assert!(
                matches!(emitted.last(), Some(Emitted::Record(r)) if r.key == "after"),
                "{text:?}: {emitted:?}"
            );
        }
    }

    #[test]
    fn read_line_holds_at_most_the_limit() {
        // (input, limit, what each call finds with the line's bytes); a 3-byte read buffer,
        // so that lines span several fills.
        type Case = (&'static [u8], usize, &'static [(Line, &'static [u8])]);
        let cases: [Case; 8] = [
            (
                b"ab\ncd",
                2,
                &[(Line::Read, b"ab\n"), (Line::Read, b"cd"), (Line::End, b"")],
            ),
            (b"abc\n", 3, &[(Line::Read, b"abc\n"), (Line::End, b"")]),
            (b"ab\r\n", 2, &[(Line::Read, b"ab\r\n"), (Line::End, b"")]),
            (b"ab\rx\n", 2, &[(Line::TooLong, b"ab\r")]),
            (b"abcd\nx\n", 3, &[(Line::TooLong, b"abc")]),
            (b"abcdefgh", 5, &[(Line::TooLong, b"abcde")]),
            (
                b"\n\n",
                1,
                &[(Line::Read, b"\n"), (Line::Read, b"\n"), (Line::End, b"")],
            ),
            (b"", 1, &[(Line::End, b"")]),
        ];
        for (input, max, expected) in cases {
            let mut reader = BufReader::with_capacity(3, input);
            let mut line = b"left over".to_vec();
            for (want, bytes) in expected {
                let found = read_line(&mut reader, &mut line, max).expect("reads");
                assert_eq!((&found, line.as_slice()), (want, *bytes), "{input:?}");
            }
        }
    }

    #[test]
    fn a_line_longer_than_max_line_bytes_fails_alone_and_is_skipped_through() {
        let dir = temp_dir("jsonl-long");
        let fits = format!("{{\"key\": \"{}\"}}", "x".repeat(20));
        assert_eq!(fits.len(), 31);
        std::fs::write(
            dir.path().join("in.jsonl"),
            format!(
                "{{\"key\": 1}}\n{fits}\n{{\"key\": \"{}\"}}\n{{\"key\": \"next\"}}\n",
                "y".repeat(20_000)
            ),
        )
        .expect("write input");
        let source = source("path = \"in.jsonl\"\nmax_line_bytes = 31", dir.path());
        let emitted = read_emitted(&*source, None).expect("reads");
        assert_eq!(emitted.len(), 4, "{emitted:?}");
        let (key, error) = unreadable(&emitted[2]);
        assert_eq!(key, "in.jsonl:3");
        assert_eq!(
            error, "line longer than `max_line_bytes` (31 B); not read",
            "the line's bytes are not in the error"
        );
        assert!(
            matches!(&emitted[3], Emitted::Record(r) if r.key == "next"),
            "the line after it is read whole: {:?}",
            emitted[3]
        );
        let records = read_all(&*source, Some(2)).expect("the lines before it read");
        assert_eq!(records[1].key, "x".repeat(20));

        let config: JsonlConfig = config("path = \"a\"\nmax_line_bytes = 0").expect("valid");
        assert_eq!(
            JsonlKind.check(&config, Role::Source),
            [(
                "max_line_bytes".to_owned(),
                "`max_line_bytes` must be more than 0".to_owned()
            )]
        );
    }

    #[test]
    fn source_reports_a_missing_file_as_permanent() {
        let dir = temp_dir("jsonl-missing");
        let source = source("path = \"nope.jsonl\"", dir.path());
        let err = read_all(&*source, None).expect_err("missing file");
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(err.message.contains("nope.jsonl"), "{}", err.message);
    }

    #[test]
    fn sink_appends_one_line_per_record_key_first() {
        let dir = temp_dir("jsonl-sink");
        let records = [
            Record::with_fields("1", fields(json!({"b": 2, "a": "x\ny"}))),
            Record::with_fields("2", fields(json!({"key": "ignored", "z": null}))),
            Record::new("3"),
        ];
        // Two instances on the same file, as two runs (or a resumed run) would have.
        for _ in 0..2 {
            let sink = sink("path = \"out/deeper/out.jsonl\"", dir.path());
            for record in &records {
                let out = sink
                    .process(record.clone(), &cx(&record.key, 1))
                    .expect("writes");
                assert_eq!(out, Outcome::Continue(record.clone()));
            }
        }
        let text = std::fs::read_to_string(dir.path().join("out/deeper/out.jsonl")).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        let once = [
            r#"{"key":"1","a":"x\ny","b":2}"#,
            r#"{"key":"2","z":null}"#,
            r#"{"key":"3"}"#,
        ];
        assert_eq!(lines[..3], once);
        assert_eq!(lines[3..], once);

        // What the sink writes, the source reads back.
        let source = source("path = \"out/deeper/out.jsonl\"", dir.path());
        let back = read_all(&*source, Some(3)).expect("reads back");
        assert_eq!(
            back.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["1", "2", "3"]
        );
        assert_eq!(
            back[0].fields,
            fields(json!({"key": "1", "a": "x\ny", "b": 2}))
        );
    }

    #[test]
    fn sink_keeps_concurrent_lines_whole() {
        let dir = temp_dir("jsonl-concurrent");
        let sink = sink("path = \"out.jsonl\"", dir.path());
        let long = "x".repeat(10_000);
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (sink, long) = (&sink, &long);
                scope.spawn(move || {
                    for i in 0..100 {
                        let key = format!("{t}-{i}");
                        let record = Record::with_fields(&key, fields(json!({"pad": long})));
                        sink.process(record, &cx(&key, 1)).expect("writes");
                    }
                });
            }
        });
        let text = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("read");
        let mut keys: Vec<String> = text
            .lines()
            .map(|line| {
                let value: Value = serde_json::from_str(line).expect("a whole JSON line");
                value["key"].as_str().expect("string key").to_owned()
            })
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 400);
    }

    #[test]
    fn sink_does_not_write_for_a_cancelled_attempt() {
        let dir = temp_dir("jsonl-cancel");
        let sink = sink("path = \"out.jsonl\"", dir.path());
        let cancel = stagewise_core::stage::CancelFlag::new();
        cancel.cancel();
        let cx = crate::testing::cx_with("1", 1, cancel);
        let err = sink.process(Record::new("1"), &cx).expect_err("cancelled");
        assert_eq!(err.class, ErrorClass::Transient);
        let text = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("read");
        assert_eq!(text, "");
    }

    #[test]
    fn rejects_must_be_another_file_than_the_sink() {
        let dir = temp_dir("jsonl-rejects-same");
        for rejects in ["./out.jsonl", "sub/../out.jsonl"] {
            std::fs::create_dir_all(dir.path().join("sub")).expect("mkdir");
            let config: JsonlConfig =
                config(&format!("path = \"out.jsonl\"\nrejects = \"{rejects}\"")).expect("valid");
            assert!(JsonlKind.check(&config, Role::Sink).is_empty(), "{rejects}");
            let err = JsonlKind
                .build(config, &build_cx(Role::Sink, dir.path()))
                .expect_err("the same file is refused");
            assert!(
                err.message.contains("is the same file as `path`"),
                "{}",
                err.message
            );
        }
        for (toml_text, expected) in [
            ("path = \"out.jsonl\"\nrejects = \"\"", "must name a file"),
            (
                "path = \"out.jsonl\"\nrejects = \"out.jsonl\"",
                "another file than `path`",
            ),
        ] {
            let config: JsonlConfig = config(toml_text).expect("valid");
            let problems = JsonlKind.check(&config, Role::Sink);
            assert!(
                problems
                    .iter()
                    .any(|(key, message)| key == "rejects" && message.contains(expected)),
                "{toml_text}: {problems:?}"
            );
        }
    }

    #[test]
    fn config_defaults_and_unknown_keys() {
        let config: JsonlConfig = config("path = \"a.jsonl\"").expect("valid");
        assert_eq!(config.key, "key");
        assert_eq!(config.path, PathBuf::from("a.jsonl"));
        assert_eq!(config.max_line_bytes, ByteSize::mib(16));
        let config: JsonlConfig =
            crate::testing::config("path = \"a\"\nmax_line_bytes = \"1KiB\"").expect("valid");
        assert_eq!(config.max_line_bytes, ByteSize::kib(1));
        assert!(crate::testing::config::<JsonlConfig>("key = \"id\"").is_err());
        assert!(crate::testing::config::<JsonlConfig>("path = \"a\"\nkeys = \"id\"").is_err());
    }
}
