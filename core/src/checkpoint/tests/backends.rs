//! The places the scenarios run in, one per backend: a SQLite file in a temp folder of its
//! own, and a PostgreSQL database of its own on the test server. Each is removed when dropped,
//! a failed scenario's included.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::spec::StoreLocation;

use super::Backend;

/// A store file in a temp folder of its own.
struct SqliteFile {
    /// The folder, deleted with this.
    _dir: tempfile::TempDir,
    /// The store file in it (not there until the store is opened).
    path: PathBuf,
}

/// Run `scenario` on a fresh SQLite store file.
pub(super) fn on_sqlite(scenario: fn(&dyn Backend)) {
    let dir = tempfile::Builder::new()
        .prefix("stagewise-store-")
        .tempdir()
        .expect("temp dir");
    let path = dir.path().join("state.db");
    scenario(&SqliteFile { _dir: dir, path });
}

impl SqliteFile {
    /// Run `sql` on the file, behind the store's back.
    fn execute(&self, sql: &str) {
        let conn = rusqlite::Connection::open(&self.path).expect("open the file");
        conn.execute_batch(sql).expect(sql);
    }
}

impl Backend for SqliteFile {
    fn location(&self) -> StoreLocation {
        StoreLocation::Sqlite(self.path.clone())
    }

    fn set_schema_version(&self, version: i64) {
        self.execute(&format!("PRAGMA user_version = {version}"));
    }

    fn set_since(&self, ms: i64) {
        self.execute(&format!("UPDATE items SET since = {ms}"));
    }

    fn downgrade_to(&self, version: i64) {
        let drop = match version {
            1 => "ALTER TABLE items DROP COLUMN taken; DROP TABLE deaths; DROP TABLE processes; DROP TABLE responses;",
            2 => "ALTER TABLE items DROP COLUMN taken; DROP TABLE deaths; DROP TABLE processes;",
            3 => "ALTER TABLE items DROP COLUMN taken; DROP TABLE deaths;",
            4 => "ALTER TABLE items DROP COLUMN taken;",
            5 => "",
            _ => panic!("no schema version {version} to go back to"),
        };
        // Version 8's history, version 9's `since`.
        let history = "ALTER TABLE items DROP COLUMN since; DROP TABLE history; DROP TABLE checks;";
        self.execute(&format!(
            "{history} {drop} PRAGMA user_version = {version};"
        ));
    }

    fn plant_foreign_table(&self) {
        self.execute("CREATE TABLE customers (id INTEGER)");
    }

    fn holder(&self) -> String {
        format!("pid {}", std::process::id())
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    /// The whole file's write lock, whatever the table.
    fn hold_lock(&self, _table: &str) -> Box<dyn std::any::Any> {
        let conn = rusqlite::Connection::open(&self.path).expect("open the file");
        conn.execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        Box::new(conn)
    }

    fn one_runner_per_store(&self) -> bool {
        true
    }
}

/// The variable naming the test server (a role that may create databases, and its database).
const PG_VAR: &str = "STAGEWISE_TEST_PG";

/// The test server's URL. Unset: under `CI=true` the test fails (no PostgreSQL test may skip
/// there); elsewhere it says loudly that it skipped.
fn test_pg() -> Option<String> {
    match std::env::var(PG_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            let test = std::thread::current()
                .name()
                .unwrap_or("this test")
                .to_owned();
            let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            assert!(
                !ci,
                "{PG_VAR} is not set, and CI=true: the PostgreSQL tests must run in CI. Run them \
                 through ./scripts/test (or .ci/run), which starts PostgreSQL and sets {PG_VAR}."
            );
            eprintln!(
                "\n\
                 ************************************************************************\n\
                 SKIPPED {test}: {PG_VAR} is not set;\n\
                 run ./scripts/test to start PostgreSQL (scripts/pg) and run it for real.\n\
                 ************************************************************************\n"
            );
            None
        }
    }
}

/// A database of its own on the test server, dropped (with whatever sessions are left on it)
/// when this is.
struct PgDatabase {
    /// The database's name.
    name: String,
    /// Its URL, for the store.
    url: String,
    /// The test server's URL, which created it and drops it.
    admin_url: String,
}

/// Run `scenario` on a fresh PostgreSQL database, unless the PostgreSQL tests are skipped.
pub(super) fn on_postgres(scenario: fn(&dyn Backend)) {
    let Some(admin_url) = test_pg() else { return };
    scenario(&PgDatabase::create(&admin_url));
}

/// A session on `url`, or why not.
fn try_pg_connect(url: &str) -> Result<postgres::Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(10));
    config.connect(postgres::NoTls)
}

/// A session on `url`, which must work.
fn pg_connect(url: &str) -> postgres::Client {
    try_pg_connect(url)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", crate::text::redact_url(url)))
}

/// `url` with its database replaced by `database` (`?options` kept).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_at = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_at..].find('/') {
        Some(slash) => &base[..authority_at + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

impl PgDatabase {
    /// A database of a name no other scenario (in this or another test process) uses.
    fn create(admin_url: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "store_{}_{}_{nanos:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        pg_connect(admin_url)
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        PgDatabase {
            url: with_database(admin_url, &name),
            name,
            admin_url: admin_url.to_owned(),
        }
    }

    /// Run `sql` on the database, behind the store's back.
    fn execute(&self, sql: &str) {
        pg_connect(&self.url)
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Never panics: this also runs while a failed scenario unwinds.
        if let Err(e) = try_pg_connect(&self.admin_url).and_then(|mut c| c.batch_execute(&sql)) {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}

impl Backend for PgDatabase {
    fn location(&self) -> StoreLocation {
        StoreLocation::Postgres(self.url.clone())
    }

    fn set_schema_version(&self, version: i64) {
        self.execute(&format!("UPDATE stagewise.meta SET version = {version}"));
    }

    fn set_since(&self, ms: i64) {
        self.execute(&format!("UPDATE stagewise.items SET since = {ms}"));
    }

    fn downgrade_to(&self, version: i64) {
        let drop = match version {
            1 => "ALTER TABLE stagewise.items DROP COLUMN taken; DROP TABLE stagewise.deaths; DROP TABLE stagewise.processes; DROP TABLE stagewise.responses;",
            2 => "ALTER TABLE stagewise.items DROP COLUMN taken; DROP TABLE stagewise.deaths; DROP TABLE stagewise.processes;",
            3 => "ALTER TABLE stagewise.items DROP COLUMN taken; DROP TABLE stagewise.deaths;",
            4 => "ALTER TABLE stagewise.items DROP COLUMN taken;",
            5 => "",
            _ => panic!("no schema version {version} to go back to"),
        };
        // Versions 6 and 7's runners and leases, which only this store has.
        let leases = "DROP TABLE stagewise.runners; DROP INDEX stagewise.items_unfinished; DROP INDEX stagewise.items_failed;
            ALTER TABLE stagewise.items DROP COLUMN owner, DROP COLUMN claim; ALTER TABLE stagewise.runs DROP COLUMN taker;";
        // Version 8's history, version 9's `since`.
        let history = "ALTER TABLE stagewise.items DROP COLUMN since; DROP TABLE stagewise.history; DROP TABLE stagewise.checks;";
        self.execute(&format!(
            "{history} {leases} {drop} UPDATE stagewise.meta SET version = {version};"
        ));
    }

    fn plant_foreign_table(&self) {
        self.execute("CREATE SCHEMA stagewise; CREATE TABLE stagewise.customers (id integer);");
    }

    fn holder(&self) -> String {
        // The lock's session, named by its application name.
        "`stagewise/checkpoint`".to_owned()
    }

    fn shown(&self) -> String {
        crate::text::redact_url(&self.url)
    }

    /// The table's lock in `EXCLUSIVE` mode (reads go on, writes wait), in a transaction left
    /// open.
    fn hold_lock(&self, table: &str) -> Box<dyn std::any::Any> {
        let mut client = pg_connect(&self.url);
        let sql = format!("BEGIN; LOCK TABLE stagewise.{table} IN EXCLUSIVE MODE");
        client
            .batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        Box::new(client)
    }

    fn one_runner_per_store(&self) -> bool {
        false
    }
}
