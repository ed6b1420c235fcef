//! The SQLite client, for `sqlite:` URLs: the embedded default that needs no server. A
//! connection per pool thread, a busy timeout, and a progress handler that interrupts a
//! statement still running at its attempt's deadline.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::types::{Value as Sql, ValueRef};
use rusqlite::{Connection, ErrorCode};
use serde_json::Value;
use stagewise_core::stage::{Context, ErrorKind, Fields, StageError};

use crate::config::Limits;
use crate::params::Script;

/// The connections of one stage.
pub(crate) struct SqlitePool {
    path: PathBuf,
    limits: Limits,
    /// A sink creates the file and its folder; a source needs them to exist.
    create: bool,
    idle: Mutex<Vec<Connection>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SqlitePool {
    pub(crate) fn new(path: PathBuf, limits: Limits, create: bool) -> Self {
        SqlitePool {
            path,
            limits,
            create,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Run `f` on a connection whose statements are interrupted at the attempt's deadline.
    pub(crate) fn with_conn<T>(
        &self,
        cx: &Context,
        f: impl FnOnce(&mut Connection) -> Result<T, StageError>,
    ) -> Result<T, StageError> {
        let mut conn = match lock(&self.idle).pop() {
            Some(c) => c,
            None => self.connect()?,
        };
        // A busy database waits at most until the attempt's deadline: SQLite's busy wait does not
        // run the progress handler.
        let wait = self
            .limits
            .connect_timeout
            .min(cx.remaining())
            .max(Duration::from_millis(1));
        conn.busy_timeout(wait).map_err(|e| classify(&e))?;
        let deadline = cx
            .deadline()
            .min(std::time::Instant::now() + self.limits.statement_timeout);
        let flag = cx.cancel_flag().clone();
        // Called every 1,000 virtual machine steps; a true answer interrupts the statement.
        conn.progress_handler(
            1000,
            Some(move || flag.is_cancelled() || std::time::Instant::now() >= deadline),
        );
        let result = f(&mut conn);
        conn.progress_handler(0, None::<fn() -> bool>);
        if conn.is_autocommit() {
            lock(&self.idle).push(conn);
        }
        result
    }

    fn connect(&self) -> Result<Connection, StageError> {
        let shown = self.path.display();
        if !self.create && !self.path.is_file() {
            return Err(StageError::permanent(format!(
                "database {shown} does not exist"
            )));
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StageError::permanent(format!("cannot create folder {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open(&self.path)
            .map_err(|e| StageError::permanent(format!("cannot open {shown}: {e}")))?;
        conn.busy_timeout(self.limits.connect_timeout.max(Duration::from_millis(100)))
            .map_err(|e| classify(&e))?;
        Ok(conn)
    }
}

/// Run a `db-fetch` query, streaming each row to `emit` as fields (see [`crate::stage::Row`]).
pub(crate) fn fetch(
    conn: &mut Connection,
    sql: &str,
    limit: Option<i64>,
    emit: &mut dyn FnMut(crate::stage::Row) -> bool,
) -> Result<(), StageError> {
    let mut stmt = conn.prepare(sql).map_err(|e| classify(&e))?;
    let names: Vec<String> = stmt
        .column_names()
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut rows = match limit {
        Some(l) => stmt.query([l]),
        None => stmt.query([]),
    }
    .map_err(|e| classify(&e))?;
    while let Some(row) = rows.next().map_err(|e| classify(&e))? {
        let mut fields = Fields::new();
        // SQLite types each value, not each column: a value db-fetch cannot read is the row's
        // trouble, not the query's.
        let mut unreadable = None;
        for (i, name) in names.iter().enumerate() {
            let value = match row.get_ref(i).map_err(|e| classify(&e))? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) => Value::from(n),
                ValueRef::Real(x) => serde_json::Number::from_f64(x)
                    .map_or_else(|| Value::String(x.to_string()), Value::Number),
                ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(_) => {
                    unreadable.get_or_insert_with(|| format!(
                        "column `{name}` holds a blob, which db-fetch cannot read: select it as text or hex (e.g. `hex({name})`)"
                    ));
                    continue;
                }
            };
            fields.insert(name.clone(), value);
        }
        let row = match unreadable {
            None => Ok(fields),
            Some(error) => Err((error, fields)),
        };
        if !emit(row) {
            break;
        }
    }
    Ok(())
}

/// Run the script once per record's values, all in one transaction.
pub(crate) fn persist(
    conn: &mut Connection,
    script: &Script,
    batch: &[&[Value]],
) -> Result<(), StageError> {
    let tx = conn.transaction().map_err(|e| classify(&e))?;
    for values in batch {
        for part in &script.parts {
            let mut stmt = tx.prepare_cached(&part.sql).map_err(|e| classify(&e))?;
            let params: Vec<Sql> = part.args.iter().map(|&i| to_sql(&values[i])).collect();
            stmt.execute(rusqlite::params_from_iter(params))
                .map_err(|e| classify(&e))?;
        }
    }
    tx.commit().map_err(|e| classify(&e))
}

/// SQLite is dynamically typed: numbers, text and null go as they are, booleans as 0/1, and
/// arrays and objects as their JSON text.
fn to_sql(value: &Value) -> Sql {
    match value {
        Value::Null => Sql::Null,
        Value::Bool(b) => Sql::Integer(i64::from(*b)),
        Value::Number(n) => n
            .as_i64()
            .map(Sql::Integer)
            .or_else(|| n.as_f64().map(Sql::Real))
            .unwrap_or_else(|| Sql::Text(n.to_string())),
        Value::String(s) => Sql::Text(s.clone()),
        other => Sql::Text(other.to_string()),
    }
}

/// Busy and locked databases are transient; an interrupted statement is a timeout; the rest
/// (syntax, missing tables, constraints) is permanent with SQLite's message.
pub(crate) fn classify(e: &rusqlite::Error) -> StageError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StageError::transient(format!("database busy: {e}")).with_kind(ErrorKind::Database)
        }
        Some(ErrorCode::OperationInterrupted) => StageError::transient(format!(
            "statement interrupted at the attempt's deadline: {e}"
        ))
        .with_kind(ErrorKind::Timeout),
        Some(ErrorCode::CannotOpen | ErrorCode::SystemIoFailure) => {
            StageError::transient(e.to_string()).with_kind(ErrorKind::Database)
        }
        Some(ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch) => {
            StageError::permanent(e.to_string()).with_kind(ErrorKind::InvalidInput)
        }
        _ => StageError::permanent(e.to_string()).with_kind(ErrorKind::Database),
    }
}
/// Create the database at `path` from the SQL script `script`, if the file does not exist yet.
/// The script runs in one transaction in a temporary file that is renamed into place only when
/// it succeeded, so a failed script (or a crash) never leaves a half-made database behind.
pub(crate) fn create_from_script(
    path: &std::path::Path,
    script: &std::path::Path,
) -> Result<(), StageError> {
    if path.exists() {
        return Ok(());
    }
    let sql = std::fs::read_to_string(script).map_err(|e| {
        StageError::fatal(format!(
            "`init_script`: cannot read {}: {e}",
            script.display()
        ))
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StageError::fatal(format!("cannot create folder {}: {e}", dir.display()))
        })?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".init");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let made = Connection::open(&tmp).and_then(|conn| {
        conn.execute_batch(&format!("BEGIN;\n{sql}\nCOMMIT;"))?;
        conn.close().map_err(|(_, e)| e)
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(StageError::fatal(format!(
            "`init_script` {} failed, so {} was not created: {e}",
            script.display(),
            path.display()
        )));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        StageError::fatal(format!(
            "cannot move the new database into {}: {e}",
            path.display()
        ))
    })?;
    tracing::info!(database = %path.display(), script = %script.display(), "database created from its init script");
    Ok(())
}
