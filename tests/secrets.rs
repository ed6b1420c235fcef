//! What the configuration holds in secret is never shown, and what the data holds cannot forge
//! the log.
//!
//! - A PostgreSQL password with `?`, `#`, `/`, `:` and `@` in it, in a URL (as typed or
//!   percent-encoded) or in a `key=value` connection string (quoted with spaces and escapes, or
//!   not), as a `db-fetch`/`persist` `url` and as the checkpoint store, against a real server
//!   (a role of its own with that password), a wrong password and a closed port: no piece of
//!   the password appears in what `validate`, `plan`, `run` and `status` print, nor in the
//!   files beside the pipeline (summary, flight record, SQLite store, sink), nor in a
//!   PostgreSQL store.
//! - A key and an error text holding newlines, carriage returns, ESC, OSC and C1 sequences and
//!   bidirectional overrides: the log and `status` (text and JSON) show them escaped, and no
//!   line of the log is one the data wrote.
//!
//! The PostgreSQL tests skip loudly without `STAGEWISE_TEST_PG` (fail under `CI=true`).

mod util;

use std::net::TcpListener;
use std::path::Path;

use util::pg::{self, Db};
use util::{Output, Pipeline};

/// The pieces of every password below: five runs of letters and digits that appear nowhere
/// else, so finding any of them in any output is a leak, encoded or not.
const PIECES: [&str; 5] = ["Zq7Kx", "Hw9Jb", "Wm4Pt", "Lp2Nv", "Rt8Yc"];

/// Taken by the client as it is in a URL: `?`, `#`, `/` and `:` need no encoding there.
const URL_PASSWORD: &str = "Zq7Kx?Hw9Jb#Wm4Pt/Lp2Nv:Rt8Yc";
/// With an `@`, which a URL must encode (`%40`) for the client to read it whole.
const AT_PASSWORD: &str = "Zq7Kx@Hw9Jb?Wm4Pt#Lp2Nv/Rt8Yc";
/// For a quoted `key=value` value: a space, a quote and a backslash (escaped there).
const QUOTED_PASSWORD: &str = "Zq7Kx Hw9Jb'Wm4Pt\\Lp2Nv=Rt8Yc";

/// A database of the test's own on the shared cluster, and a login role for each password,
/// allowed to use it. Dropped with the test: the database first (fields drop in order), so
/// nothing that depends on the roles is left when they go.
struct Fixture {
    db: Db,
    roles: Roles,
    server: Server,
}

struct Roles {
    names: Vec<String>,
    admin_url: String,
}

impl Fixture {
    fn new(admin_url: &str, passwords: &[&str]) -> Fixture {
        let mut db = Db::create_on(admin_url);
        let mut admin = pg::connect(admin_url);
        let mut roles = Roles {
            names: Vec::new(),
            admin_url: admin_url.to_owned(),
        };
        for (i, password) in passwords.iter().enumerate() {
            let name = format!("{}_role{i}", db.name());
            let quoted = password.replace('\'', "''");
            admin
                .batch_execute(&format!(
                    "CREATE ROLE \"{name}\" LOGIN PASSWORD '{quoted}'; \
                     GRANT ALL ON DATABASE \"{}\" TO \"{name}\"",
                    db.name()
                ))
                .unwrap_or_else(|e| panic!("create role {name}: {e}"));
            roles.names.push(name.clone());
            db.execute(&format!("GRANT ALL ON SCHEMA public TO \"{name}\""));
        }
        let server = Server::of(&db);
        Fixture { db, roles, server }
    }

    /// The role whose password is `passwords[i]`.
    fn role(&self, i: usize) -> &str {
        &self.roles.names[i]
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        for name in &self.names {
            let sql = format!("DROP ROLE IF EXISTS \"{name}\"");
            if let Err(e) = pg::try_connect(&self.admin_url).and_then(|mut c| c.batch_execute(&sql))
            {
                eprintln!("could not drop role {name}: {e}");
            }
        }
    }
}

/// Host, port and database of a test database, for connection strings of other forms.
struct Server {
    host: String,
    port: u16,
    dbname: String,
}

impl Server {
    fn of(db: &Db) -> Server {
        let config: postgres::Config = db.url().parse().expect("the test URL parses");
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            other => panic!("the test cluster is not on TCP: {other:?}"),
        };
        Server {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            dbname: db.name().to_owned(),
        }
    }

    /// `postgres://role:password@host:port/db`, the password as given (not encoded).
    fn url(&self, role: &str, password: &str) -> String {
        format!(
            "postgres://{role}:{password}@{}:{}/{}",
            self.host, self.port, self.dbname
        )
    }

    /// The same with the password percent-encoded.
    fn encoded_url(&self, role: &str, password: &str) -> String {
        self.url(role, &encoded(password))
    }

    /// `postgresql://role@host:port/db?password=…` (encoded), the password in the query.
    fn query_url(&self, role: &str, password: &str) -> String {
        format!(
            "postgresql://{role}@{}:{}/{}?sslmode=disable&password={}",
            self.host,
            self.port,
            self.dbname,
            encoded(password)
        )
    }

    /// `host=… port=… user=… password = '…' dbname=…`, the password quoted and escaped.
    fn quoted_kv(&self, role: &str, password: &str) -> String {
        let escaped = password.replace('\\', "\\\\").replace('\'', "\\'");
        format!(
            "host={} port={} user={role} password = '{escaped}' dbname={}",
            self.host, self.port, self.dbname
        )
    }

    /// `host=… user=… password=… dbname=…`, the password as it is (no spaces, quotes nor
    /// backslashes in it).
    fn plain_kv(&self, role: &str, password: &str) -> String {
        format!(
            "host={} port={} user={role} password={password} dbname={}",
            self.host, self.port, self.dbname
        )
    }
}

/// `s` with every byte but ASCII letters and digits percent-encoded.
fn encoded(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `s` as a TOML basic string (JSON's escapes are TOML's).
fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Fails the test if any piece of the passwords appears in `text`.
fn assert_hidden(what: &str, text: &str) {
    for piece in PIECES {
        assert!(
            !text.contains(piece),
            "{what} shows a piece of the password ({piece}):\n{text}"
        );
    }
}

fn assert_output_hidden(what: &str, out: &Output) {
    assert_hidden(&format!("{what} (stdout)"), &out.stdout);
    assert_hidden(&format!("{what} (stderr)"), &out.stderr);
}

/// Every file under `dir` but the pipeline file: summary, flight record, SQLite store, sinks.
fn assert_files_hidden(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read the test folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            assert_files_hidden(&path);
        } else if path.file_name().is_some_and(|n| n != "pipeline.toml") {
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert_hidden(
                &path.display().to_string(),
                &String::from_utf8_lossy(&bytes),
            );
        }
    }
}

/// Every row of every table of the `stagewise` schema, as text.
fn store_text(db: &mut Db) -> String {
    let tables = db.query_strings(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'stagewise'",
    );
    assert!(!tables.is_empty(), "the store has no tables");
    let mut text = String::new();
    for table in tables {
        for row in db.query_strings(&format!("SELECT t::text FROM stagewise.\"{table}\" t")) {
            text.push_str(&row);
            text.push('\n');
        }
    }
    text
}

/// `validate`, `plan`, `plan --json`, `run`, `status`, `status --json` on `p`, each checked for
/// the password; returns `run`'s output.
fn every_command(p: &Pipeline) -> Output {
    for (command, json) in [("validate", false), ("plan", false), ("plan", true)] {
        let mut cmd = p.cmd(command);
        if json {
            cmd = cmd.arg("--json");
        }
        let out = cmd.output();
        assert_output_hidden(&format!("{command} json={json}"), &out);
    }
    let run = p.run();
    assert_output_hidden("run", &run);
    for json in [false, true] {
        let mut cmd = p.cmd("status");
        if json {
            cmd = cmd.arg("--json");
        }
        assert_output_hidden(&format!("status json={json}"), &cmd.output());
    }
    assert_files_hidden(p.dir.path());
    run
}

/// `db-fetch` from `items` and `persist` into `results`, both at `url`.
fn db_job(url: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "secret-db"

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = {url}
        query = "SELECT id, title FROM items ORDER BY id LIMIT $limit"
        key = "id"
        retry = {{ attempts = 1 }}

        [[stage]]
        name = "save"
        kind = "persist"
        url = {url}
        statement = "INSERT INTO results (id, title) VALUES (:key::int, :title) ON CONFLICT DO NOTHING"
        retry = {{ attempts = 1 }}
        connect_timeout = "2s"
        "#,
        url = toml_string(url)
    ))
}

/// `generate` → `jsonl`, checkpointed in the PostgreSQL store at `store`.
fn store_job(store: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "secret-store"

        [checkpoint]
        store = {store}

        [[stage]]
        name = "src"
        kind = "generate"
        count = 5

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
        store = toml_string(store)
    ))
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// The passwords of the fixture's roles, in order.
const PASSWORDS: [&str; 3] = [URL_PASSWORD, AT_PASSWORD, QUOTED_PASSWORD];

/// The forms of connection strings that the client reads with a role's password.
fn working_forms(f: &Fixture) -> Vec<(&'static str, String)> {
    let s = &f.server;
    vec![
        ("url as typed", s.url(f.role(0), URL_PASSWORD)),
        ("url encoded", s.encoded_url(f.role(1), AT_PASSWORD)),
        ("password in the query", s.query_url(f.role(1), AT_PASSWORD)),
        ("key=value quoted", s.quoted_kv(f.role(2), QUOTED_PASSWORD)),
        ("key=value plain", s.plain_kv(f.role(0), URL_PASSWORD)),
        // Spaces, a quote and a backslash as typed, which the client takes.
        ("url with a space", s.url(f.role(2), QUOTED_PASSWORD)),
    ]
}

/// Forms that cannot connect: a role with a wrong password, a closed port, and an `@` left
/// unencoded (which the client reads as the end of the password).
fn failing_forms(f: &Fixture) -> Vec<(&'static str, String)> {
    let s = &f.server;
    let closed = Server {
        host: s.host.clone(),
        port: closed_port(),
        dbname: s.dbname.clone(),
    };
    vec![
        ("wrong password url", s.url(f.role(1), URL_PASSWORD)),
        (
            "wrong password key=value",
            s.quoted_kv(f.role(0), QUOTED_PASSWORD),
        ),
        ("closed port url", closed.url(f.role(0), URL_PASSWORD)),
        (
            "closed port key=value",
            closed.plain_kv(f.role(0), URL_PASSWORD),
        ),
        ("unencoded @", s.url(f.role(1), AT_PASSWORD)),
        // An `@` forgotten, which makes the password a host and port.
        (
            "url without its @",
            format!(
                "postgres://{}:{}{}:{}/{}",
                f.role(0),
                encoded(URL_PASSWORD),
                s.host,
                s.port,
                s.dbname
            ),
        ),
    ]
}

#[test]
fn database_passwords_are_never_shown_by_the_db_stages() {
    let Some(admin) = pg::test_pg() else { return };
    let mut f = Fixture::new(&admin, &PASSWORDS);
    f.db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL);
         CREATE TABLE results (id int PRIMARY KEY, title text NOT NULL);
         INSERT INTO items SELECT g, 'title ' || g FROM generate_series(1, 4) AS g",
    );
    for name in &f.roles.names.clone() {
        f.db.execute(&format!("GRANT ALL ON items, results TO \"{name}\""));
    }
    for (form, url) in working_forms(&f) {
        f.db.execute("DELETE FROM results");
        let run = every_command(&db_job(&url));
        assert_eq!(run.code, Some(0), "{form}\n{run}");
        assert_eq!(
            f.db.query_i64("SELECT count(*) FROM results"),
            4,
            "{form}: the pipeline wrote with that password\n{run}"
        );
    }
    for (form, url) in failing_forms(&f) {
        let run = every_command(&db_job(&url));
        assert_ne!(run.code, Some(0), "{form}: connected\n{run}");
        assert!(
            run.stderr.to_lowercase().contains("error"),
            "{form}: no error printed\n{run}"
        );
    }
}

#[test]
fn store_passwords_are_never_shown() {
    let Some(admin) = pg::test_pg() else { return };
    let mut f = Fixture::new(&admin, &PASSWORDS);
    for (form, url) in working_forms(&f) {
        let run = every_command(&store_job(&url));
        assert_eq!(run.code, Some(0), "{form}\n{run}");
        assert_hidden(&format!("{form}: the store"), &store_text(&mut f.db));
        // The next form's role starts a store of its own.
        f.db.execute("DROP SCHEMA stagewise CASCADE");
    }
    for (form, url) in failing_forms(&f) {
        let run = every_command(&store_job(&url));
        assert_ne!(run.code, Some(0), "{form}: connected\n{run}");
        assert!(
            run.stderr.to_lowercase().contains("error"),
            "{form}: no error printed\n{run}"
        );
    }
}

/// A key that tries everything: a new line that reads as the run's summary, a carriage return,
/// an OSC 52 sequence (sets the terminal's clipboard), a colour, a C1 CSI and a bidi override.
const FORGING_KEY: &str = "k1\nINFO summary outcome=\"finished\" exit_code=0\r\u{1b}]52;c;ZXZpbA==\u{7}\u{1b}[31mred\u{9b}2J\u{202e}desrever";

/// What the binary wrote, byte for byte (the harness's `Output` removes colour codes).
struct Raw {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn raw(dir: &Path, args: &[&str]) -> Raw {
    let out = std::process::Command::new(util::bin())
        .args(args)
        .current_dir(dir)
        .env_remove("STAGEWISE_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run stagewise");
    Raw {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Nothing in `text` steers a terminal but its own line ends, and no line of it is the forged
/// summary.
fn assert_unforged(what: &str, text: &str) {
    let steering = text
        .chars()
        .find(|&c| c != '\n' && stagewise_core::text::steers_the_terminal(c));
    assert_eq!(
        steering, None,
        "{what} holds a raw control character:\n{text}"
    );
    for line in text.lines() {
        assert!(
            !line.trim_start().starts_with("INFO summary"),
            "{what} has a line the data wrote: {line:?}\n{text}"
        );
    }
}

#[test]
fn a_key_cannot_forge_the_log_nor_steer_the_terminal() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "forge"

        [[stage]]
        name = "src"
        kind = "jsonl"
        path = "in.jsonl"

        [[stage]]
        name = "broken"
        kind = "fault"
        permanent_rate = 1.0

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let line = serde_json::json!({ "key": FORGING_KEY }).to_string();
    p.dir.write("in.jsonl", format!("{line}\n"));
    let run = raw(p.dir.path(), &["run", "pipeline.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_unforged("the log", &run.stderr);
    // The key is there, escaped, on the line of its event; and the real summary once.
    let failed: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("item failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{}", run.stderr);
    assert!(
        failed[0].contains("k1\\nINFO summary") && failed[0].contains("\\u{1b}]52;c;"),
        "{}",
        failed[0]
    );
    let summaries = run
        .stderr
        .lines()
        .filter(|l| l.contains(" INFO summary outcome=\"finished_with_failures\""))
        .count();
    assert_eq!(summaries, 1, "{}", run.stderr);

    let status = raw(p.dir.path(), &["status", "pipeline.toml"]);
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    assert_unforged("status", &status.stdout);
    assert!(
        status.stdout.contains("k1\\nINFO summary"),
        "{}",
        status.stdout
    );

    let json = raw(p.dir.path(), &["status", "--json", "pipeline.toml"]);
    assert_eq!(json.code, Some(0), "{}", json.stderr);
    assert_unforged("status --json", &json.stdout);
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(
        parsed["failed"][0]["key"], FORGING_KEY,
        "the key itself, unchanged"
    );
}

/// A server's error text that quotes the data (PostgreSQL's "invalid input syntax … \"k1\n…\"").
#[test]
fn an_error_text_cannot_forge_the_log_nor_steer_the_terminal() {
    let Some(admin) = pg::test_pg() else { return };
    let db = Db::create_on(&admin);
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "forge-error"

        [[stage]]
        name = "src"
        kind = "jsonl"
        path = "in.jsonl"

        [[stage]]
        name = "save"
        kind = "persist"
        url = {url}
        statement = "SELECT CAST(CAST(:key AS text) AS int)"
        "#,
        url = toml_string(db.url())
    ));
    let line = serde_json::json!({ "key": FORGING_KEY }).to_string();
    p.dir.write("in.jsonl", format!("{line}\n"));
    let run = raw(p.dir.path(), &["run", "pipeline.toml"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_unforged("the log", &run.stderr);
    assert!(
        run.stderr.contains("invalid input syntax") && run.stderr.contains("\\u{1b}]52;c;"),
        "the error, escaped: {}",
        run.stderr
    );
    let status = raw(p.dir.path(), &["status", "pipeline.toml"]);
    assert_unforged("status", &status.stdout);
    assert!(
        status.stdout.contains("invalid input syntax"),
        "{}",
        status.stdout
    );
    let json = raw(p.dir.path(), &["status", "--json", "pipeline.toml"]);
    assert_unforged("status --json", &json.stdout);
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    let error = parsed["failed"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(FORGING_KEY),
        "the error itself, unchanged: {error:?}"
    );
}
