//! The database stages of stagewise: `db-fetch` (source) reads the batch with a query,
//! `persist` (sink) writes each record with an idempotent statement — on PostgreSQL (`postgres://`)
//! or SQLite (`sqlite:PATH`).
//!
//! No query outlives its attempt: each PostgreSQL transaction sets its `statement_timeout`, and a
//! query still running at its attempt's deadline (or when the run is cancelled) is cancelled on
//! the server with the connection's cancel token; SQLite statements are interrupted the same way.
//! On PostgreSQL nothing outlives its transaction (no session setting, no named prepared
//! statement), so the stages work through a pooler in transaction mode (PgBouncer).
//! Connections are pooled per stage (never more than its `concurrency` threads use), and a
//! broken or cancelled connection is dropped, not reused. Connection trouble, serialization
//! failures and timeouts are transient; syntax errors, missing tables or columns, constraint
//! violations and bad values are permanent with the server's message; a refused password is
//! fatal. A password in a URL is never printed.
//!
//! PostgreSQL connections (and their cancel requests) use TLS as the URL's `sslmode` and
//! `sslrootcert` say, with libpq's meaning ([`stagewise_core::pg`]). With `sslmode=require` or
//! stronger, a stage connects once when it is built: a certificate its mode refuses, or a
//! server without TLS, stops the run before it starts.

mod config;
mod params;
mod postgres;
mod probe;
mod session;
mod sqlite;
mod stage;

use std::sync::Arc;

use stagewise_core::stage::{
    BuildContext, Probe, ProbeContext, Role, StageError, StageImpl, StageKind,
};
use stagewise_core::Registry;

pub use config::{FetchConfig, PersistConfig};
use config::{Limits, Target};
use params::Style;
use stage::{Backend, Batcher, DbFetch, Persist};

/// Register `db-fetch` and `persist`.
pub fn register(registry: &mut Registry) {
    registry.register(DbFetchKind).register(PersistKind);
}

fn backend(url: &str, cx: &BuildContext, limits: Limits) -> Result<(Backend, Style), StageError> {
    let create = cx.role != Role::Source;
    match Target::parse(url, cx).map_err(StageError::fatal)? {
        Target::Postgres(url) => {
            let pool = postgres::PgPool::new(&url, &cx.stage, limits).map_err(StageError::fatal)?;
            pool.check_tls().map_err(|why| {
                StageError::fatal(format!(
                    "cannot connect to {}: {why}",
                    stagewise_core::text::redact_url(&url)
                ))
            })?;
            Ok((Backend::Postgres(Box::new(pool)), Style::Dollar))
        }
        Target::Sqlite(path) => Ok((
            Backend::Sqlite(sqlite::SqlitePool::new(path, limits, create)),
            Style::Question,
        )),
    }
}

fn check_url(url: &str) -> Vec<(String, String)> {
    // An unresolved `${VAR}` is reported as such already.
    if url.contains("${") || url.starts_with("sqlite:") {
        return Vec::new();
    }
    if config::is_postgres(url) {
        // Read as it will be connected to, `sslmode` and `sslrootcert` included (the CA file
        // itself is read when the stage is built).
        return match stagewise_core::pg::ConnString::parse(url) {
            Ok(_) => Vec::new(),
            Err(e) => vec![("url".into(), format!("`url`: {e}"))],
        };
    }
    vec![(
        "url".into(),
        format!(
            "`url` must be a `postgres://` URL, a `key=value` connection string (`host=… dbname=…`) or `sqlite:PATH` (got `{}`)",
            stagewise_core::text::redact_url(url)
        ),
    )]
}

/// The `db-fetch` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct DbFetchKind;

impl StageKind for DbFetchKind {
    type Config = FetchConfig;

    fn kind(&self) -> &'static str {
        "db-fetch"
    }

    fn roles(&self) -> &'static [Role] {
        &[Role::Source]
    }

    fn check(&self, config: &FetchConfig, _role: Role) -> Vec<(String, String)> {
        let mut problems = check_url(&config.url);
        if config.query.trim().is_empty() {
            problems.push(("query".into(), "`query` must not be empty".into()));
        }
        if config.key.trim().is_empty() {
            problems.push(("key".into(), "`key` must name a column".into()));
        }
        if config.init_script.is_some() && config::is_postgres(&config.url) {
            problems.push((
                "init_script".into(),
                "`init_script` is for `sqlite:` databases only: create a PostgreSQL database with its own tools (`psql -f`)".into(),
            ));
        }
        problems
    }

    fn probe(&self, config: &FetchConfig, cx: &ProbeContext<'_>) -> Probe {
        probe::fetch(config, cx)
    }

    fn build(&self, config: FetchConfig, cx: &BuildContext) -> Result<StageImpl, StageError> {
        let limits = Limits::new(config.connect_timeout, config.statement_timeout, cx);
        if let Some(script) = &config.init_script {
            match Target::parse(&config.url, cx).map_err(StageError::fatal)? {
                Target::Sqlite(path) => sqlite::create_from_script(&path, &cx.resolve(script))?,
                Target::Postgres(_) => {
                    return Err(StageError::fatal(
                        "`init_script` is for `sqlite:` databases only: create a PostgreSQL database with its own tools (`psql -f`)",
                    ))
                }
            }
        }
        let (backend, style) = backend(&config.url, cx, limits)?;
        let (sql, takes_limit) = params::rewrite_limit(&config.query, style);
        Ok(StageImpl::Source(Arc::new(DbFetch {
            backend,
            sql,
            takes_limit,
            key: config.key,
        })))
    }
}

/// The `persist` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct PersistKind;

impl StageKind for PersistKind {
    type Config = PersistConfig;

    fn kind(&self) -> &'static str {
        "persist"
    }

    fn roles(&self) -> &'static [Role] {
        &[Role::Sink]
    }

    fn check(&self, config: &PersistConfig, _role: Role) -> Vec<(String, String)> {
        let mut problems = check_url(&config.url);
        if params::split(&config.statement).is_empty() {
            problems.push((
                "statement".into(),
                "`statement` must hold an SQL statement (it is empty, or comments only)".into(),
            ));
        }
        for (key, statement) in [
            ("on_failure", &config.on_failure),
            ("on_skip", &config.on_skip),
        ] {
            if statement
                .as_ref()
                .is_some_and(|s| params::split(s).is_empty())
            {
                problems.push((
                    key.into(),
                    format!("`{key}` must hold an SQL statement (it is empty, or comments only): leave it out to mark nothing"),
                ));
            }
        }
        problems
    }

    fn probe(&self, config: &PersistConfig, cx: &ProbeContext<'_>) -> Probe {
        probe::persist(config, cx)
    }

    fn build(&self, config: PersistConfig, cx: &BuildContext) -> Result<StageImpl, StageError> {
        let limits = Limits::new(config.connect_timeout, config.statement_timeout, cx);
        let (backend, style) = backend(&config.url, cx, limits)?;
        Ok(StageImpl::Blocking(Arc::new(Persist {
            backend,
            script: params::script(&config.statement, style),
            batcher: (config.batch_size.get() > 1 && cx.concurrency > 1)
                .then(|| Batcher::new(config.batch_size.get(), cx.concurrency)),
            on_failure: config.on_failure.map(|s| params::script(&s, style)),
            on_skip: config.on_skip.map(|s| params::script(&s, style)),
        })))
    }
}
