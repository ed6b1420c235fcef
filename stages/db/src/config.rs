//! The keys of `db-fetch` and `persist`, and where a database URL points.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use stagewise_core::stage::BuildContext;

/// Connect timeout when the stage does not set one.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `db-fetch`: the source that reads the batch from a query.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchConfig {
    /// The database: `postgres://user:password@host:port/dbname` (a password is never printed)
    /// or `sqlite:PATH` (relative to the pipeline file). Use `${VAR}` to take it from the
    /// environment.
    pub url: String,
    /// The query that selects the batch. `$limit` stands for the batch size and is bound as a
    /// parameter, never spliced into the SQL. Every selected column becomes a field of the record.
    pub query: String,
    /// The column whose value becomes each record's key (text or an integer).
    pub key: String,
    /// Longest wait for a connection (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Longest a statement may run on the server, set for each session (default: the stage's
    /// `timeout`). A query still running at the attempt's deadline is cancelled on the server
    /// either way.
    #[serde(default, with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
    /// SQLite only: a SQL script (relative to the pipeline file) that creates the database when
    /// its file does not exist yet — the tables and, say, a fixture's rows. It runs in one
    /// transaction; if it fails, no file is left behind.
    pub init_script: Option<std::path::PathBuf>,
}

/// `persist`: the sink that writes each record with one SQL statement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistConfig {
    /// The database, as for `db-fetch`.
    pub url: String,
    /// The statement run for each record, with named parameters taken from the record's fields:
    /// `:title` is the field `title`, `:key` the record's key; a name may appear several times.
    /// It must be idempotent — an upsert such as `INSERT … ON CONFLICT (id) DO UPDATE SET …` —
    /// because a record is written again when its run resumes after a crash.
    pub statement: String,
    /// Most records per transaction (default 1). Above 1, the stage writes one transaction at
    /// a time and the records that arrive meanwhile share the next; a record whose write fails
    /// is retried in a transaction of its own, so one bad record never fails the others. It
    /// saves commits at the cost of parallelism: worth it where commits are slow.
    #[serde(default = "one")]
    pub batch_size: usize,
    /// Longest wait for a connection (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Longest a statement may run on the server (default: the stage's `timeout`).
    #[serde(default, with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
}

fn one() -> usize {
    1
}

/// Where a URL points.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    Postgres(String),
    Sqlite(PathBuf),
}

impl Target {
    /// Parse `postgres://…`, `postgresql://…` or `sqlite:PATH`.
    pub(crate) fn parse(url: &str, cx: &BuildContext) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Target::Postgres(url.to_owned()))
        } else if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("`url`: `sqlite:` needs a path, e.g. `sqlite:data/articles.db`".into());
            }
            Ok(Target::Sqlite(cx.resolve(std::path::Path::new(path))))
        } else {
            Err(format!(
                "`url`: `{}` is not a database URL: use `postgres://…` or `sqlite:PATH`",
                stagewise_core::text::redact_url(url)
            ))
        }
    }
}

/// Time limits of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
}

impl Limits {
    pub(crate) fn new(
        connect: Option<Duration>,
        statement: Option<Duration>,
        cx: &BuildContext,
    ) -> Self {
        Limits {
            connect_timeout: connect.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            statement_timeout: statement.unwrap_or(cx.timeout),
        }
    }
}
