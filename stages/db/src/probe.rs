//! `db-fetch` and `persist` checked against their database before any item runs: connect,
//! prepare every statement (its syntax, tables and columns; nothing runs), and say which fields
//! the query gives and which the statements read. A SQLite file that is not there yet is
//! checked as it will be: made in memory from the source's `init_script` (shared with a
//! `persist` on the same file), or empty. Nothing is created or written.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use stagewise_core::stage::{BuildContext, Context, Probe, ProbeContext, StageError};
use stagewise_core::text::redact_url;

use crate::config::{FetchConfig, Limits, PersistConfig, Target};
use crate::params::{self, Style};
use crate::postgres::{self as pg, PgPool};
use crate::sqlite;

/// Names `persist`'s marking statements bind besides the record's fields.
const MARK_NAMES: [&str; 4] = ["key", "stage", "error", "attempts"];

/// A database opened for checking.
enum Opened {
    Postgres(Box<PgPool>, Limits),
    /// A file there, and the longest its busy waits may be (`connect_timeout`).
    Sqlite(Connection, Duration),
    /// A file not there yet: checked in the memory database under this name in
    /// [`stagewise_core::stage::Shared`].
    Scratch(String),
}

/// The name a SQLite file's scratch database is shared under: the same for every spelling of
/// the same place (`data.db`, `sub/../data.db`), as far as its folder exists.
fn scratch_name(path: &Path) -> String {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let place = match (folder.canonicalize(), path.file_name()) {
        (Ok(folder), Some(name)) => folder.join(name),
        // A folder not there yet: its spelling, with `.` and `..` worked out.
        _ => lexical(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())),
    };
    format!("sqlite:{}", place.display())
}

/// `path` with its `.` and `..` parts worked out by the text alone.
fn lexical(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(part);
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Open a SQLite file for reading only. A database in WAL mode without its `-wal` file (closed
/// cleanly, so no writer is at work) is opened immutable, so that the check leaves no `-wal` and
/// `-shm` behind; any other is opened as any reader does.
fn read_only(path: &Path) -> rusqlite::Result<Connection> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // Bytes 18 and 19 of the header are 2 in WAL mode; in the other modes readers leave no
    // files, and must see a writer's locks.
    let mut header = [0u8; 20];
    let in_wal_mode = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
        .is_ok()
        && header[18] == 2
        && header[19] == 2;
    if !in_wal_mode || std::path::Path::new(&wal).exists() {
        return Connection::open_with_flags(path, flags);
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut uri = String::from("file:");
    for c in absolute.to_string_lossy().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)
}

/// Bound a SQLite connection of the checks: a busy database waits at most until the stage's
/// checks must end, and a statement (an `init_script`'s) is interrupted then, or when the
/// process is asked to stop.
fn bounded(conn: &Connection, cx: &ProbeContext<'_>) -> rusqlite::Result<()> {
    conn.busy_timeout(cx.remaining().max(Duration::from_millis(1)))?;
    let (deadline, cancel) = (cx.deadline, cx.cancel.clone());
    conn.progress_handler(
        1000,
        Some(move || cancel.is_cancelled() || Instant::now() >= deadline),
    );
    Ok(())
}

/// A database in memory for an `init_script`, which can reach no file: no other database can
/// be attached (`ATTACH`, `VACUUM INTO`), and no extension loaded.
fn scratch(cx: &ProbeContext<'_>) -> rusqlite::Result<Connection> {
    let conn = Connection::open_in_memory()?;
    conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    bounded(&conn, cx)?;
    Ok(conn)
}

fn build_context(cx: &ProbeContext<'_>) -> BuildContext {
    BuildContext::new(cx.stage, cx.role, cx.base_dir, 1, cx.timeout)
}

/// The stage's time limits, none longer than the probe may wait.
fn limits(connect: Option<Duration>, statement: Option<Duration>, cx: &ProbeContext<'_>) -> Limits {
    let limits = Limits::new(connect, statement, &build_context(cx));
    Limits {
        connect_timeout: limits.connect_timeout.min(cx.timeout),
        statement_timeout: limits.statement_timeout.min(cx.timeout),
    }
}

/// A context for one check: its deadline leaves time to connect and for the statement.
fn context(cx: &ProbeContext<'_>, limits: Limits) -> Context {
    Context::new(
        "",
        cx.stage,
        1,
        (Instant::now() + limits.connect_timeout + limits.statement_timeout).min(cx.deadline),
        cx.cancel.clone(),
    )
}

/// Open the database `url` names, or say in `probe` why it cannot be; `init_script` (the
/// source's) makes a file that is not there yet.
fn open(
    url: &str,
    limits: Limits,
    init_script: Option<&Path>,
    cx: &ProbeContext<'_>,
    probe: &mut Probe,
) -> Option<Opened> {
    let bcx = build_context(cx);
    let target = match Target::parse(url, &bcx) {
        Ok(t) => t,
        Err(e) => {
            probe.config("url", e);
            return None;
        }
    };
    match target {
        Target::Postgres(url) => {
            let shown = redact_url(&url);
            let pool = match PgPool::new(&url, cx.stage, limits) {
                Ok(pool) => pool,
                Err(e) => {
                    probe.config("url", e);
                    return None;
                }
            };
            match pg::with_conn(&pool, &context(cx, limits), |_| Ok(())) {
                Ok(()) => probe.passed(format!("connected to {shown}")),
                Err(e) => {
                    probe.failed(
                        "url",
                        &StageError {
                            message: format!("cannot connect to {shown}: {}", e.message),
                            ..e
                        },
                    );
                    return None;
                }
            }
            Some(Opened::Postgres(Box::new(pool), limits))
        }
        Target::Sqlite(path) => open_sqlite(&path, limits, init_script, cx, probe),
    }
}

fn open_sqlite(
    path: &Path,
    limits: Limits,
    init_script: Option<&Path>,
    cx: &ProbeContext<'_>,
    probe: &mut Probe,
) -> Option<Opened> {
    let shown = path.display();
    let name = scratch_name(path);
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {
            let opened = read_only(path).and_then(|c| {
                bounded(&c, cx)?;
                c.busy_timeout(
                    limits
                        .connect_timeout
                        .min(cx.remaining())
                        .max(Duration::from_millis(1)),
                )?;
                Ok(c)
            });
            match opened {
                Ok(conn) => {
                    probe.passed(format!("opened {shown}"));
                    Some(Opened::Sqlite(conn, limits.connect_timeout))
                }
                Err(e) => {
                    probe.failed(
                        "url",
                        &StageError {
                            message: format!(
                                "cannot open {shown}: {}",
                                sqlite::classify(&e).message
                            ),
                            ..sqlite::classify(&e)
                        },
                    );
                    None
                }
            }
        }
        Ok(_) => {
            probe.config("url", format!("{shown} is not a file"));
            None
        }
        Err(_) => match (cx.role, init_script) {
            (stagewise_core::stage::Role::Source, Some(script)) => {
                // Until the script is tried and works, a sink on the same file has nothing to
                // be checked against.
                cx.shared.put(name.clone(), NotMade);
                let script_path = cx.resolve(script);
                let sql = match std::fs::read_to_string(&script_path) {
                    Ok(sql) => sql,
                    Err(e) => {
                        probe.config(
                            "init_script",
                            format!(
                                "{shown} does not exist, and its `init_script` {} cannot be read: {e}",
                                script_path.display()
                            ),
                        );
                        return None;
                    }
                };
                let made = scratch(cx).and_then(|c| {
                    c.execute_batch(&format!("BEGIN;\n{sql}\nCOMMIT;"))
                        .map(|()| c)
                });
                match made {
                    Ok(conn) => {
                        probe.passed(format!(
                            "{shown} does not exist yet: its `init_script` {} makes it (tried in memory)",
                            script_path.display()
                        ));
                        cx.shared.put(name.clone(), conn);
                        Some(Opened::Scratch(name))
                    }
                    // A script that reaches another database (`ATTACH`): the checks, which
                    // reach none, cannot run it.
                    Err(e) if e.to_string().contains("too many attached databases") => {
                        probe.doubt(
                            "init_script",
                            format!(
                                "the `init_script` {} attaches another database, which the checks do not: the statements are checked by the first run",
                                script_path.display()
                            ),
                        );
                        None
                    }
                    Err(e) if cx.out_of_time() => {
                        probe.outage(
                            "init_script",
                            format!(
                                "the `init_script` {} did not finish within the checks' time ({e})",
                                script_path.display()
                            ),
                        );
                        None
                    }
                    Err(e) => {
                        probe.config(
                            "init_script",
                            format!("the `init_script` {} fails: {e}", script_path.display()),
                        );
                        None
                    }
                }
            }
            (stagewise_core::stage::Role::Source, None) => {
                probe.config(
                    "url",
                    format!("database {shown} does not exist (an `init_script` can create it)"),
                );
                None
            }
            // A sink creates the file: its statements meet the database the source made, or
            // an empty one.
            _ => {
                if cx.shared.with(&name, |_: &mut NotMade| ()).is_some() {
                    probe.passed(format!(
                        "{shown} does not exist yet, and the source's `init_script` that makes it could not be tried: not checked"
                    ));
                    return None;
                }
                if cx.shared.with(&name, |_: &mut Connection| ()).is_none() {
                    match scratch(cx) {
                        Ok(conn) => cx.shared.put(name.clone(), conn),
                        Err(e) => {
                            probe.outage("url", format!("cannot open a database in memory: {e}"));
                            return None;
                        }
                    }
                    probe.passed(format!(
                        "{shown} does not exist yet: the first write creates it, empty"
                    ));
                }
                Some(Opened::Scratch(name))
            }
        },
    }
}

/// What the source leaves in [`stagewise_core::stage::Shared`] for a file its `init_script`
/// would make but that could not be made in memory.
struct NotMade;

/// How a statement prepared: its columns (name, type, readable by `db-fetch`).
type Described = Result<Vec<(String, String, bool)>, StageError>;

impl Opened {
    /// Prepare `sql` (nothing runs) and describe its columns.
    fn describe(&self, sql: &str, cx: &ProbeContext<'_>) -> Described {
        match self {
            Opened::Postgres(pool, limits) => {
                pg::with_conn(pool, &context(cx, *limits), |conn| conn.describe(sql))
            }
            Opened::Sqlite(conn, wait) => {
                // Each statement waits for a busy database at most what is left of the checks'
                // time.
                let wait = (*wait).min(cx.remaining()).max(Duration::from_millis(1));
                conn.busy_timeout(wait)
                    .map_err(|e| sqlite::classify(&e))
                    .and_then(|()| describe_sqlite(conn, sql))
            }
            Opened::Scratch(name) => cx
                .shared
                .with(name, |conn: &mut Connection| describe_sqlite(conn, sql))
                .unwrap_or_else(|| Err(StageError::transient("the database in memory is gone"))),
        }
    }
}

fn describe_sqlite(conn: &Connection, sql: &str) -> Described {
    let stmt = conn.prepare(sql).map_err(|e| match e.sqlite_error_code() {
        // A journal left by a crash, or a WAL file to recover: a read-only connection cannot,
        // the run's own does.
        Some(rusqlite::ErrorCode::ReadOnly) => StageError::transient(format!(
            "the database needs a recovery (a journal left by a crash?) that a read-only check cannot make; the run makes it: {e}"
        )),
        _ => sqlite::classify(&e),
    })?;
    Ok(stmt
        .column_names()
        .iter()
        .map(|name| ((*name).to_owned(), String::new(), true))
        .collect())
}

/// The probe of `db-fetch`: the query prepares, has the key column, and its columns are the
/// records' fields.
pub(crate) fn fetch(config: &FetchConfig, cx: &ProbeContext<'_>) -> Probe {
    let mut probe = Probe::default();
    let limits = limits(config.connect_timeout, config.statement_timeout, cx);
    let Some(db) = open(
        &config.url,
        limits,
        config.init_script.as_deref(),
        cx,
        &mut probe,
    ) else {
        return probe;
    };
    let style = style_of(&db);
    let (sql, _) = params::rewrite_limit(&config.query, style);
    if cx.out_of_time() {
        probe.outage(
            "query",
            "not prepared: the checks ran out of time or were stopped",
        );
        return probe;
    }
    match db.describe(&sql, cx) {
        Ok(columns) => {
            for (name, ty, readable) in &columns {
                if !readable {
                    probe.config(
                        "query",
                        format!("column `{name}` has type `{ty}`, which db-fetch cannot read: cast it in the query (e.g. `{name}::text` or `{name}::float8`)"),
                    );
                }
            }
            let names: Vec<String> = columns.into_iter().map(|(name, _, _)| name).collect();
            if !names.contains(&config.key) {
                probe.config(
                    "key",
                    format!(
                        "the query has no column `{}` for the key (its columns: {})",
                        config.key,
                        names.join(", ")
                    ),
                );
            }
            probe.passed(format!(
                "the query prepared (columns: {})",
                names.join(", ")
            ));
            probe.fields = stagewise_core::stage::FieldsOut::Exactly {
                fields: names,
                complete: true,
            };
        }
        Err(e) => probe.failed("query", &prepared_error("query", &e)),
    }
    probe
}

/// The probe of `persist`: its statements prepare, and the names they bind are fields.
pub(crate) fn persist(config: &PersistConfig, cx: &ProbeContext<'_>) -> Probe {
    let mut probe = Probe::same();
    let statements: Vec<(&str, &str)> = [("statement", Some(&config.statement))]
        .into_iter()
        .chain([
            ("on_failure", config.on_failure.as_ref()),
            ("on_skip", config.on_skip.as_ref()),
        ])
        .filter_map(|(key, sql)| sql.map(|s| (key, s.as_str())))
        .collect();
    for (key, sql) in &statements {
        for name in params::script(sql, Style::Dollar).names {
            match *key {
                "statement" => probe.reads(key, name),
                _ if MARK_NAMES.contains(&name.as_str()) => {}
                _ => probe.reads_anywhere(key, name),
            }
        }
    }
    let limits = limits(config.connect_timeout, config.statement_timeout, cx);
    let Some(db) = open(&config.url, limits, None, cx, &mut probe) else {
        return probe;
    };
    let style = style_of(&db);
    for (key, sql) in statements {
        let script = params::script(sql, style);
        let mut prepared = 0;
        for part in &script.parts {
            if cx.out_of_time() {
                probe.outage(
                    key,
                    "not prepared: the checks ran out of time or were stopped",
                );
                break;
            }
            match db.describe(&part.sql, cx) {
                Ok(_) => prepared += 1,
                Err(e) => {
                    probe.failed(key, &prepared_error(key, &e));
                    break;
                }
            }
            // What a statement creates, the next ones may need: they are not prepared before
            // it has run.
            if makes_schema(&part.sql) {
                break;
            }
        }
        if prepared == script.parts.len() {
            probe.passed(format!("`{key}` prepared"));
        } else if prepared > 0 && !probe.has_config_fault() {
            probe.passed(format!(
                "`{key}`: {prepared} of its {} statements prepared (those after one that changes the schema cannot be before it runs)",
                script.parts.len()
            ));
        }
    }
    probe
}

fn style_of(db: &Opened) -> Style {
    match db {
        Opened::Postgres(..) => Style::Dollar,
        Opened::Sqlite(..) | Opened::Scratch(_) => Style::Question,
    }
}

/// Whether a statement changes what the next ones see: the schema (`CREATE`, `ALTER`, `DROP`)
/// or the session (`SET search_path`, `PRAGMA`, `ATTACH`, …).
fn makes_schema(sql: &str) -> bool {
    let mut rest = sql.trim_start();
    // Leading comments, of both forms.
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            break;
        }
    }
    let first = rest
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect::<String>()
        .to_ascii_uppercase();
    matches!(
        first.as_str(),
        "CREATE" | "ALTER" | "DROP" | "SET" | "PRAGMA" | "ATTACH" | "DETACH" | "RESET"
    )
}

/// A statement that did not prepare, said with the key it came from.
fn prepared_error(key: &str, e: &StageError) -> StageError {
    StageError {
        message: format!("`{key}` does not prepare: {}", e.message),
        ..e.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_changes_are_recognised() {
        assert!(makes_schema("create table t (x int)"));
        assert!(makes_schema("-- make it\n  ALTER TABLE t ADD y int"));
        assert!(!makes_schema("INSERT INTO t VALUES (1)"));
        assert!(!makes_schema("-- CREATE\nUPDATE t SET x = 1"));
        assert!(makes_schema(
            "/* make it */ CREATE TABLE IF NOT EXISTS n(x)"
        ));
        assert!(makes_schema("SET search_path TO other"));
        assert!(!makes_schema("/* SET */ INSERT INTO t VALUES (1)"));
    }
}
