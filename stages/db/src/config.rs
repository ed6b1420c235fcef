//! The keys of `db-fetch` and `persist`, and where a database URL points.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use stagewise_core::stage::BuildContext;

/// Connect timeout when the stage does not set one.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `db-fetch`: the source that reads the batch from a query.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchConfig {
    /// `postgres://user:password@host:port/dbname`, a `key=value` connection string
    /// (`host=db user=app password='…' dbname=articles`, as libpq takes it) or `sqlite:PATH`
    /// (relative to the pipeline file); `${DATABASE_URL}` takes it from the environment. A
    /// password is never printed. On PostgreSQL, TLS as libpq's `sslmode` and `sslrootcert`
    /// say: see "PostgreSQL connections and TLS".
    pub url: String,
    /// The query; `$limit` stands for the batch size and is bound as a parameter, never spliced
    /// into the SQL.
    pub query: String,
    /// The column whose value (text or an integer) becomes the record's key.
    pub key: String,
    /// Longest wait for a connection.
    #[schemars(extend("x-default" = "`\"10s\"`"))]
    #[schemars(with = "Option<stagewise_core::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Longest a statement may run on the server (set in each transaction).
    #[schemars(extend("x-default" = "the stage's `timeout`"))]
    #[schemars(with = "Option<stagewise_core::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
    /// SQLite only: a SQL script (relative to the pipeline file) that creates the database when its
    /// file does not exist yet — tables and, say, a fixture's rows. It runs in one transaction into
    /// a temporary file moved into place only on success, so a failed script leaves no database
    /// behind.
    #[schemars(extend("x-default" = "none"))]
    pub init_script: Option<std::path::PathBuf>,
}

/// `persist`: the sink that writes each record with one SQL statement.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PersistConfig {
    /// As for `db-fetch`.
    pub url: String,
    /// The SQL, with named parameters from the record's fields: `:title` is the field `title`,
    /// `:key` the record's key; a name may appear several times. Values are bound with the types
    /// the statement expects (a number field into an `int4` column, an ISO 8601 string into a
    /// `timestamptz`, any JSON into `jsonb`).
    pub statement: String,
    /// Most records per transaction. Above 1 the stage writes one transaction at a time and the
    /// records that arrive meanwhile share the next one (never waiting for company); a record whose
    /// write fails is retried alone, so one bad record never fails the others. It saves commits at
    /// the cost of parallelism: worth it where a commit waits for the disk or the network, not on a
    /// fast local server (see BENCHMARKS.md).
    #[schemars(extend("x-default" = "`1`"))]
    #[serde(default = "one")]
    pub batch_size: NonZeroUsize,
    /// Runs, in a transaction of its own, for every item that ends failed at any stage of the
    /// pipeline (this one included), so that the source can leave it out next time, e.g.
    /// `UPDATE articles SET failed_at = now(), error = :error WHERE id = :key`. Binds `:key`,
    /// `:stage` (where it failed), `:error`, `:attempts` (made at that stage), and any other
    /// name from the record's fields as they were when it failed (null for a field it did not
    /// have yet). Runs before the failure is checkpointed, so it must be idempotent: after a
    /// crash it may run again.
    #[schemars(extend("x-default" = "none"))]
    pub on_failure: Option<String>,
    /// As `on_failure`, for every item that a stage skipped; `:error` is the skip reason and
    /// `:attempts` is 1.
    #[schemars(extend("x-default" = "none"))]
    pub on_skip: Option<String>,
    /// Longest wait for a connection.
    #[schemars(extend("x-default" = "`\"10s\"`"))]
    #[schemars(with = "Option<stagewise_core::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Longest a statement may run on the server.
    #[schemars(extend("x-default" = "the stage's `timeout`"))]
    #[schemars(with = "Option<stagewise_core::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
}

fn one() -> NonZeroUsize {
    NonZeroUsize::MIN
}

/// Where a URL points.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    Postgres(String),
    Sqlite(PathBuf),
}

impl Target {
    /// Parse `postgres://…`, `postgresql://…`, a `key=value` connection string or `sqlite:PATH`.
    pub(crate) fn parse(url: &str, cx: &BuildContext) -> Result<Self, String> {
        if is_postgres(url) {
            Ok(Target::Postgres(url.to_owned()))
        } else if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("`url`: `sqlite:` needs a path, e.g. `sqlite:data/articles.db`".into());
            }
            Ok(Target::Sqlite(cx.resolve(std::path::Path::new(path))))
        } else {
            Err(format!(
                "`url`: `{}` is not a database URL: use `postgres://…`, `host=… dbname=…` or `sqlite:PATH`",
                stagewise_core::text::redact_url(url)
            ))
        }
    }
}

/// Whether `url` names a PostgreSQL database: a `postgres://` or `postgresql://` URL, or a
/// `key=value` connection string (`host=db user=app password=… dbname=articles`), as the
/// PostgreSQL client takes both.
pub(crate) fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || stagewise_core::text::looks_like_conninfo(url)
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
