//! PostgreSQL for the black-box tests: a real server, started by scripts/test or by a test.
//!
//! `./scripts/test` (and so `.ci/run`) starts a throwaway cluster with `scripts/pg` and sets
//! `STAGEWISE_TEST_PG` to `postgres://stagewise:stagewise@127.0.0.1:PORT/stagewise_test` and
//! `STAGEWISE_TEST_PG_BIN` to the directory holding `initdb`, `pg_ctl` and `psql`. Without the
//! URL, a test skips with a loud message; under `CI=true` it fails instead.
//!
//! - [`Db`]: a fresh database of its own on that cluster, dropped afterwards; the usual fixture.
//! - [`PrivateCluster`]: a whole cluster of its own, for tests that stop and start the server
//!   or serve TLS ([`PrivateCluster::ssl`]; [`PrivateCluster::psql`] reaches it whatever its
//!   TCP connections must be).
//! - [`Bouncer`]: PgBouncer in transaction mode in front of either, for the tests of what holds
//!   when every transaction may run on another server session.
//!
//! ```ignore
//! let Some(mut db) = Db::new() else { return };
//! db.execute("CREATE TABLE articles (id bigint PRIMARY KEY, title text)");
//! // … run the binary on a pipeline that names db.url() …
//! assert_eq!(db.query_i64("SELECT count(*) FROM articles"), 1000);
//! ```
//!
//! The `postgres` client is synchronous: call it from the test thread, never inside a runtime.

use std::env;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::{Client, NoTls, SimpleQueryMessage};

/// The URL of the shared test cluster (a role that may create databases, and its database).
pub const URL_VAR: &str = "STAGEWISE_TEST_PG";
/// The PostgreSQL bin directory (`initdb`, `pg_ctl`, `psql`, …).
pub const BIN_VAR: &str = "STAGEWISE_TEST_PG_BIN";

/// How long the harness waits for a connection before failing the test.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared cluster's URL from `STAGEWISE_TEST_PG`. When it is not set: under `CI=true` the
/// test fails; elsewhere it says loudly that it skipped and returns None:
///
/// ```ignore
/// let Some(url) = test_pg() else { return };
/// ```
pub fn test_pg() -> Option<String> {
    match env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            let test = thread::current().name().unwrap_or("this test").to_owned();
            if in_ci() {
                panic!(
                    "{URL_VAR} is not set, and CI=true: the PostgreSQL tests must run in CI. \
                     Run them through ./scripts/test (or .ci/run), which starts PostgreSQL \
                     and sets {URL_VAR}."
                );
            }
            eprintln!(
                "\n\
                 ************************************************************************\n\
                 SKIPPED {test}: {URL_VAR} is not set;\n\
                 run ./scripts/test to start PostgreSQL (scripts/pg) and run it for real.\n\
                 ************************************************************************\n"
            );
            None
        }
    }
}

/// Whether this is a CI run (`CI=true`, as CI services set it), where nothing may skip.
pub fn in_ci() -> bool {
    env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// `scripts/pg`, which starts, stops and finds PostgreSQL.
pub fn script() -> PathBuf {
    super::workspace_root().join("scripts").join("pg")
}

/// The PostgreSQL bin directory: `STAGEWISE_TEST_PG_BIN`, else what `scripts/pg bin` finds
/// (which installs PostgreSQL if it is missing).
pub fn pg_bin() -> PathBuf {
    match env::var(BIN_VAR) {
        Ok(dir) if !dir.trim().is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(run_script(&["bin"])),
    }
}

/// Runs `scripts/pg ARGS`, failing the test with its stderr if it fails; returns its stdout.
fn run_script(args: &[&str]) -> String {
    let out = Command::new(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script().display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/pg {} failed ({})\n{stderr}",
        args.join(" "),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Connects to `url`, failing the test if that does not work within [`CONNECT_TIMEOUT`].
pub fn connect(url: &str) -> Client {
    try_connect(url).unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Connects to `url`, returning the error (for tests of refused connections).
pub fn try_connect(url: &str) -> Result<Client, postgres::Error> {
    let mut config: postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("not a PostgreSQL URL: {url}: {e}"));
    config.connect_timeout(CONNECT_TIMEOUT);
    config.connect(NoTls)
}

/// `url` with its database replaced by `database` (user, password, host, port and any
/// `?options` kept).
pub fn with_database(url: &str, database: &str) -> String {
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

/// `url` with its password replaced (for "wrong password" tests).
pub fn with_password(url: &str, password: &str) -> String {
    let authority_at = url.find("://").map_or(0, |i| i + 3);
    let at = url[authority_at..]
        .find('@')
        .map(|i| authority_at + i)
        .unwrap_or_else(|| panic!("no user in {url}"));
    let user_end = url[authority_at..at]
        .find(':')
        .map_or(at, |i| authority_at + i);
    format!("{}:{password}{}", &url[..user_end], &url[at..])
}

/// The port of a `postgres://user:password@host:PORT/…` URL.
pub fn port_of(url: &str) -> u16 {
    let after_colon = url.rsplit_once(':').map_or("", |(_, rest)| rest);
    let port = after_colon.split('/').next().unwrap_or("");
    port.parse()
        .unwrap_or_else(|e| panic!("no port in {url}: {e}"))
}

/// A name no other test (in this or a concurrent test process) uses.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database of its own for one test, created on the cluster at the given URL and dropped
/// (`WITH (FORCE)`, so sessions the binary left behind do not keep it) when this goes out of
/// scope. Same role and password as the cluster URL.
///
/// The helpers reconnect and retry once when the connection turns out to be gone (after a
/// server restart), so a test can keep using the same `Db` across [`PrivateCluster::stop`].
pub struct Db {
    name: String,
    url: String,
    admin_url: String,
    client: Option<Client>,
}

impl Db {
    /// A fresh database on the shared cluster; None when the PostgreSQL tests are skipped.
    pub fn new() -> Option<Db> {
        test_pg().map(|url| Db::create_on(&url))
    }

    /// A fresh database on the cluster at `admin_url` (a URL whose role may create databases).
    pub fn create_on(admin_url: &str) -> Db {
        let name = unique_name("test");
        let mut admin = connect(admin_url);
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin_url}: {e}"));
        let url = with_database(admin_url, &name);
        let client = connect(&url);
        Db {
            name,
            url,
            admin_url: admin_url.to_owned(),
            client: Some(client),
        }
    }

    /// The database's name (`test_…`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL, for the pipeline under test: `postgres://stagewise:stagewise@127.0.0.1:PORT/test_…`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The harness's own connection (reopened if it was closed).
    pub fn client(&mut self) -> &mut Client {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(connect(&self.url));
        }
        self.client.as_mut().expect("just connected")
    }

    /// Another connection of its own (e.g. to hold a lock while the binary runs).
    pub fn connect(&self) -> Client {
        connect(&self.url)
    }

    /// Runs `sql` (any number of `;`-separated statements, no parameters); returns the row count
    /// of the last statement (rows inserted, updated, deleted, …; 0 for DDL).
    pub fn execute(&mut self, sql: &str) -> u64 {
        let messages = self.simple_query(sql);
        messages
            .iter()
            .rev()
            .find_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// Runs a statement with parameters (`$1`, `$2`, …); returns the number of rows it touched.
    pub fn execute_params(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> u64 {
        let result = match self.client().execute(sql, params) {
            Err(e) if self.connection_lost(&e) => self.reconnect().execute(sql, params),
            other => other,
        };
        result.unwrap_or_else(|e| panic!("{sql}\n  on {}: {}", self.name, DbErr(&e)))
    }

    /// Every row of `sql`'s result, every value as PostgreSQL prints it (None for NULL).
    pub fn query_rows(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        self.simple_query(sql)
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    /// The first column of every row as text; NULL fails the test.
    pub fn query_strings(&mut self, sql: &str) -> Vec<String> {
        self.query_rows(sql)
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .next()
                    .flatten()
                    .unwrap_or_else(|| panic!("{sql}: NULL or no column in a row"))
            })
            .collect()
    }

    /// The single value of a query returning one row and one integer column (`count(*)`, …).
    /// Sessions of stagewise in this database that are running a statement (or sitting in a
    /// transaction), as `application_name | state | query`.
    pub fn busy_sessions(&mut self) -> Vec<String> {
        self.query_strings(
            "SELECT application_name || ' | ' || coalesce(state, '?') || ' | ' || coalesce(query, '')
             FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE 'stagewise/%'
               AND state IS DISTINCT FROM 'idle'",
        )
    }

    pub fn query_i64(&mut self, sql: &str) -> i64 {
        let rows = self.query_rows(sql);
        assert_eq!(rows.len(), 1, "{sql}: expected one row, got {rows:?}");
        let text = rows[0]
            .first()
            .cloned()
            .flatten()
            .unwrap_or_else(|| panic!("{sql}: NULL or no column"));
        text.parse()
            .unwrap_or_else(|e| panic!("{sql}: {text:?} is not an integer: {e}"))
    }

    /// Whether a table (or view) of that name exists in the `public` schema.
    pub fn table_exists(&mut self, table: &str) -> bool {
        let table = table.replace('\'', "''");
        self.query_i64(&format!(
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_name = '{table}'"
        )) > 0
    }

    /// Whether `e` means the connection is gone rather than the statement failed: closed, or
    /// ended by a server shutdown (57P01 and friends, which a restarted server's first reply
    /// on an old connection is).
    fn connection_lost(&self, e: &postgres::Error) -> bool {
        e.is_closed()
            || self.client.as_ref().is_none_or(Client::is_closed)
            || e.code().is_some_and(|c| c.code().starts_with("57P"))
    }

    fn reconnect(&mut self) -> &mut Client {
        self.client = None;
        self.client()
    }

    fn simple_query(&mut self, sql: &str) -> Vec<SimpleQueryMessage> {
        let result = match self.client().simple_query(sql) {
            Err(e) if self.connection_lost(&e) => self.reconnect().simple_query(sql),
            other => other,
        };
        result.unwrap_or_else(|e| panic!("{sql}\n  on {}: {}", self.name, DbErr(&e)))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // Close ours first; FORCE ends whatever else is still connected.
        self.client = None;
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        match try_connect(&self.admin_url).and_then(|mut admin| admin.batch_execute(&sql)) {
            Ok(()) => {}
            // A private cluster the test stopped, or already gone: nothing to clean.
            Err(e) => eprintln!(
                "pg harness: could not drop database {}: {}",
                self.name,
                DbErr(&e)
            ),
        }
    }
}

/// A `postgres::Error` with the server's message, detail and hint, or its chain of causes: its
/// own `Display` says just "db error" or "error connecting to server".
pub struct DbErr<'a>(pub &'a postgres::Error);

impl fmt::Display for DbErr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_db_error() {
            Some(db) => {
                write!(
                    f,
                    "{}: {} ({})",
                    db.severity(),
                    db.message(),
                    db.code().code()
                )?;
                if let Some(detail) = db.detail() {
                    write!(f, "; detail: {detail}")?;
                }
                if let Some(hint) = db.hint() {
                    write!(f, "; hint: {hint}")?;
                }
                Ok(())
            }
            None => {
                write!(f, "{}", self.0)?;
                let mut source = std::error::Error::source(self.0);
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
        }
    }
}

/// A PostgreSQL cluster of the test's own (about a second to start), for tests that stop,
/// crash and restart the server. Same role, password and database as the shared cluster; its
/// data directory lives in the system temp dir (the `postgres` user must reach it when the
/// tests run as root). Dropping it stops the server and deletes everything.
pub struct PrivateCluster {
    dir: PathBuf,
    url: String,
    bin: PathBuf,
}

impl PrivateCluster {
    /// Starts one; None when the PostgreSQL tests are skipped (same rule as [`test_pg`]).
    pub fn new() -> Option<PrivateCluster> {
        test_pg()?;
        let bin = pg_bin();
        let dir = env::temp_dir().join(unique_name("stagewise-pg"));
        let mut cluster = PrivateCluster {
            dir,
            url: String::new(),
            bin,
        };
        cluster.url = cluster.pg(&["start"]);
        Some(cluster)
    }

    /// `postgres://stagewise:stagewise@127.0.0.1:PORT/stagewise_test`; the port survives
    /// [`stop`](Self::stop) and [`start`](Self::start).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        port_of(&self.url)
    }

    /// A fresh database on this cluster.
    pub fn db(&self) -> Db {
        Db::create_on(&self.url)
    }

    /// The cluster's data and log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Stops the server (fast shutdown: sessions are ended, the data stays).
    pub fn stop(&self) {
        self.pg(&["stop", "--keep"]);
    }

    /// Stops the server without a clean shutdown, as a crash would (recovery on the next start).
    pub fn crash(&self) {
        self.pg(&["stop", "--keep", "--immediate"]);
    }

    /// Starts it again: same port, same data. Returns once it accepts connections.
    pub fn start(&self) {
        let url = self.pg(&["start"]);
        assert_eq!(url, self.url, "the cluster came back with another URL");
    }

    /// Freezes the server (SIGSTOP to the postmaster and every process it started): it keeps
    /// its sockets open and answers nothing, as a hung host would. [`thaw`](Self::thaw) undoes it.
    pub fn freeze(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    /// Lets a [`freeze`](Self::freeze)d server run again.
    pub fn thaw(&self) {
        self.signal_all(libc::SIGCONT);
    }

    /// Sends `signal` to the postmaster and its children (found through /proc).
    #[allow(unsafe_code)]
    fn signal_all(&self, signal: i32) {
        let pidfile = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .unwrap_or_else(|e| panic!("read postmaster.pid: {e}"));
        let postmaster: i32 = pidfile
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a pid on the first line of postmaster.pid");
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`; comm may hold spaces, so read after the last `)`.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid read from the cluster's own files and /proc.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Serves TLS with `cert` and `key` (PEM) from now on (`scripts/pg ssl`, a reload: sessions
    /// stay); with `only`, TCP takes TLS connections only (`hostssl`), and a plain one is
    /// refused, the harness's own included: use [`psql`](Self::psql) then.
    pub fn ssl(&self, cert: &str, key: &str, only: bool) {
        let files = tempfile::tempdir().expect("a temp dir for the certificate");
        let (cert_file, key_file) = (
            files.path().join("server.crt"),
            files.path().join("server.key"),
        );
        std::fs::write(&cert_file, cert).expect("write the certificate");
        std::fs::write(&key_file, key).expect("write the key");
        let (cert_file, key_file) = (cert_file.to_string_lossy(), key_file.to_string_lossy());
        let mut args = vec!["ssl", &cert_file, &key_file];
        if only {
            args.push("--only");
        }
        self.pg(&args);
    }

    /// Runs `sql` in `database` as the `postgres` superuser, through the cluster's Unix socket
    /// (whatever pg_hba.conf says of TCP); the rows, one per line, values separated by `|`.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.join("sock"))
            .args([
                "-p",
                &self.port().to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-c", sql])
            .output()
            .unwrap_or_else(|e| panic!("run psql: {e}"));
        assert!(
            out.status.success(),
            "psql {sql}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Whether it accepts connections right now.
    pub fn is_up(&self) -> bool {
        try_connect(&self.url).is_ok()
    }

    fn pg(&self, args: &[&str]) -> String {
        let dir = self.dir.to_string_lossy();
        let mut full = vec![args[0], &dir];
        full.extend_from_slice(&args[1..]);
        let out = Command::new(script())
            .args(&full)
            .env(BIN_VAR, &self.bin)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script().display()));
        assert!(
            out.status.success(),
            "scripts/pg {} failed ({})\n{}",
            full.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- private cluster's server log (last lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        let out = Command::new(script())
            .arg("stop")
            .arg(&self.dir)
            .env(BIN_VAR, &self.bin)
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "pg harness: scripts/pg stop {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("pg harness: run scripts/pg: {e}"),
        }
    }
}

/// PgBouncer in front of a cluster on 127.0.0.1 (`scripts/pg bouncer`), pooling in transaction
/// mode with 2 server sessions per database and user: a client's transactions may each run on
/// another server session, and clients take turns on the few there are. Same role, password
/// and databases as the cluster, on a port of its own. Dropping it stops it and deletes its
/// folder (config, log, pid file).
///
/// ```ignore
/// let Some(mut db) = Db::new() else { return };
/// let Some(bouncer) = Bouncer::new() else { return };
/// // … a pipeline whose stages connect to bouncer.db_url(&db) …
/// ```
pub struct Bouncer {
    dir: PathBuf,
    url: String,
}

impl Bouncer {
    /// One in front of the shared cluster. None when the PostgreSQL tests are skipped, or when
    /// PgBouncer cannot start outside CI (both said loudly); under `CI=true` that fails the test.
    pub fn new() -> Option<Bouncer> {
        let url = test_pg()?;
        Bouncer::in_front_of(&url)
    }

    /// One in front of the cluster at `cluster_url` (the shared one, or a [`PrivateCluster`]'s),
    /// which must listen on 127.0.0.1. None, failing or skipping, as for [`new`](Self::new).
    pub fn in_front_of(cluster_url: &str) -> Option<Bouncer> {
        let host = cluster_url
            .rsplit_once('@')
            .map_or(cluster_url, |(_, rest)| rest)
            .split(':')
            .next()
            .unwrap_or("");
        assert!(
            host == "127.0.0.1" || host == "localhost",
            "PgBouncer is started in front of a cluster on 127.0.0.1 only, not {host}: {cluster_url}"
        );
        let dir = env::temp_dir().join(unique_name("stagewise-pgbouncer"));
        let port = port_of(cluster_url).to_string();
        let dir_text = dir.to_string_lossy().into_owned();
        let out = Command::new(script())
            .args(["bouncer", &dir_text, &port])
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script().display()));
        if out.status.success() {
            let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            return Some(Bouncer { dir, url });
        }
        let why = String::from_utf8_lossy(&out.stderr).into_owned();
        // Whatever a failed start left.
        let _ = Command::new(script()).args(["stop", &dir_text]).output();
        let test = thread::current().name().unwrap_or("this test").to_owned();
        if in_ci() {
            panic!(
                "PgBouncer did not start, and CI=true: the PgBouncer tests must run in CI\n{why}"
            );
        }
        eprintln!(
            "\n\
             ************************************************************************\n\
             SKIPPED {test}: PgBouncer did not start (scripts/pg bouncer):\n\
             {why}\
             install pgbouncer (apt-get install pgbouncer) to run it for real.\n\
             ************************************************************************\n"
        );
        None
    }

    /// `postgres://stagewise:stagewise@127.0.0.1:PORT/stagewise_test`, through PgBouncer.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of `db` through PgBouncer.
    pub fn db_url(&self, db: &Db) -> String {
        with_database(&self.url, db.name())
    }

    /// PgBouncer's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- PgBouncer's log (last lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        match Command::new(script()).arg("stop").arg(&self.dir).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "pg harness: scripts/pg stop {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("pg harness: run scripts/pg: {e}"),
        }
    }
}

impl PrivateCluster {
    /// One for a test that needs PostgreSQL's programs but not the shared cluster: it runs when
    /// `STAGEWISE_TEST_PG_BIN` (or `STAGEWISE_TEST_PG`, which `./scripts/test` sets with it) is
    /// set. Otherwise it says loudly that it skipped and returns None; under `CI=true` it fails.
    pub fn own() -> Option<PrivateCluster> {
        let set = |var: &str| env::var(var).is_ok_and(|v| !v.trim().is_empty());
        if !set(BIN_VAR) && !set(URL_VAR) {
            let test = thread::current().name().unwrap_or("this test").to_owned();
            if in_ci() {
                panic!(
                    "neither {BIN_VAR} nor {URL_VAR} is set, and CI=true: the PostgreSQL tests \
                     must run in CI. Run them through ./scripts/test (or .ci/run), or set \
                     {BIN_VAR}=$(./scripts/pg bin)."
                );
            }
            eprintln!(
                "\n\
                 ************************************************************************\n\
                 SKIPPED {test}: neither {BIN_VAR} nor {URL_VAR} is set;\n\
                 run ./scripts/test, or set {BIN_VAR}=$(./scripts/pg bin), to run it for real.\n\
                 ************************************************************************\n"
            );
            return None;
        }
        let mut cluster = PrivateCluster {
            dir: env::temp_dir().join(unique_name("stagewise-pg")),
            url: String::new(),
            bin: pg_bin(),
        };
        cluster.url = cluster.pg(&["start"]);
        Some(cluster)
    }
}
