//! TLS of every PostgreSQL connection, against a real server that serves a certificate signed
//! by a CA made here: the checkpoint store, `db-fetch` and `persist` connect as their URL's
//! `sslmode` and `sslrootcert` say (libpq's meaning), in the URL and the `key=value` form; a
//! certificate the mode refuses, or a server without TLS where the mode requires it, stops the
//! run before it starts (exit 2) with the reason in words; a server that takes TLS only refuses
//! a plain connection with its own reason; and the password is never printed.
//!
//! Each test starts a cluster of its own (`PrivateCluster`, `scripts/pg ssl`). The job records,
//! from `pg_stat_ssl`, whether the sessions that read and wrote each row were encrypted. Without
//! `STAGEWISE_TEST_PG` the tests skip loudly (and fail under `CI=true`).

mod util;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use util::pg::PrivateCluster;
use util::{Output, Pipeline};

/// The test role's password: it appears nowhere else, so finding it in any output is a leak.
const SECRET: &str = "Tls-Password-Never-Printed";
const ROLE: &str = "tls_user";
const DATABASE: &str = "tls_test";
const ARTICLES: i64 = 20;

/// A certificate authority of the test's own.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        Ca {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// Its certificate, PEM: what `sslrootcert` names.
    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (host names or IP addresses) and its key, PEM.
    fn server(&self, names: &[&str]) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("server params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// A cluster of the test's own with a role (password [`SECRET`]) owning a database that holds
/// `articles` and an empty `results`.
struct Server {
    cluster: PrivateCluster,
    /// The CA that signed the certificate the server serves, if it serves one.
    ca: Ca,
}

/// A server that serves a certificate for `names`, signed by a new CA; with `only`, it takes TLS
/// connections only. `None` when the PostgreSQL tests are skipped.
fn tls_server(names: &[&str], only: bool) -> Option<Server> {
    let server = plain_server()?;
    let (cert, key) = server.ca.server(names);
    server.cluster.ssl(&cert, &key, only);
    Some(server)
}

/// A server without TLS (a CA is made all the same, for URLs that name one).
fn plain_server() -> Option<Server> {
    let cluster = PrivateCluster::new()?;
    cluster.psql(
        "postgres",
        &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{SECRET}'"),
    );
    cluster.psql(
        "postgres",
        &format!("CREATE DATABASE {DATABASE} OWNER {ROLE}"),
    );
    cluster.psql(
        DATABASE,
        &format!(
            "SET ROLE {ROLE};
             CREATE TABLE articles (id int PRIMARY KEY);
             INSERT INTO articles SELECT generate_series(1, {ARTICLES});
             CREATE TABLE results (
                 id int PRIMARY KEY,
                 fetched_over_tls bool NOT NULL,
                 saved_over_tls bool NOT NULL
             )"
        ),
    );
    Some(Server {
        cluster,
        ca: Ca::new("stagewise test CA"),
    })
}

impl Server {
    /// `postgres://tls_user:SECRET@HOST:PORT/tls_test`, then `?query` if given.
    fn url(&self, host: &str, query: &str) -> String {
        let url = format!(
            "postgres://{ROLE}:{SECRET}@{host}:{}/{DATABASE}",
            self.cluster.port()
        );
        if query.is_empty() {
            url
        } else {
            format!("{url}?{query}")
        }
    }

    /// The same server as a `key=value` string, then `extra`.
    fn conninfo(&self, host: &str, extra: &str) -> String {
        format!(
            "host={host} port={} user={ROLE} password={SECRET} dbname={DATABASE} {extra}",
            self.cluster.port()
        )
    }

    /// `(rows, rows read over TLS, rows written over TLS)` of `results`.
    fn results(&self) -> (i64, i64, i64) {
        let row = self.cluster.psql(
            DATABASE,
            "SELECT count(*), count(*) FILTER (WHERE fetched_over_tls),
                    count(*) FILTER (WHERE saved_over_tls) FROM results",
        );
        let n: Vec<i64> = row
            .split('|')
            .map(|v| v.parse().unwrap_or_else(|e| panic!("{row:?}: {e}")))
            .collect();
        (n[0], n[1], n[2])
    }

    /// Items in the PostgreSQL store of the database, by pipeline name.
    fn stored_items(&self, pipeline: &str) -> i64 {
        let n = self.cluster.psql(
            DATABASE,
            &format!(
                "SELECT count(*) FROM stagewise.items i JOIN stagewise.runs r ON r.id = i.run_id
                 WHERE r.pipeline = '{pipeline}'"
            ),
        );
        n.parse().unwrap_or_else(|e| panic!("{n:?}: {e}"))
    }
}

/// Where each connection of the job goes.
struct Urls<'a> {
    /// `None`: the default SQLite store beside the pipeline.
    store: Option<&'a str>,
    fetch: &'a str,
    save: &'a str,
}

/// `articles` → `results`: each row read by `db-fetch` and written by `persist`, both noting
/// whether their session is encrypted.
fn job(name: &str, store: bool) -> Pipeline {
    let checkpoint = if store {
        "[checkpoint]\nstore = \"${STORE_URL}\""
    } else {
        ""
    };
    Pipeline::new(&format!(
        r#"
[pipeline]
name = "{name}"

{checkpoint}

[[stage]]
name = "fetch"
kind = "db-fetch"
url = "${{FETCH_URL}}"
query = "SELECT id, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS fetched_over_tls FROM articles ORDER BY id"
key = "id"

[[stage]]
name = "save"
kind = "persist"
url = "${{SAVE_URL}}"
statement = "INSERT INTO results (id, fetched_over_tls, saved_over_tls) VALUES (:id, :fetched_over_tls, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())) ON CONFLICT (id) DO NOTHING"
"#
    ))
}

/// Runs `p` with `urls`; neither its output nor the files it leaves may hold the password.
fn run(p: &Pipeline, urls: &Urls<'_>) -> Output {
    let mut cmd = p
        .cmd("run")
        .env("FETCH_URL", urls.fetch)
        .env("SAVE_URL", urls.save);
    if let Some(store) = urls.store {
        cmd = cmd.env("STORE_URL", store);
    }
    let out = cmd.output();
    assert!(
        !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
        "the password was printed\n{out}"
    );
    if let Ok(entries) = std::fs::read_dir(p.dir.join(".stagewise")) {
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "the password is stored in {}",
                entry.path().display()
            );
        }
    }
    out
}

/// Runs `p` with every connection to `url`, store included.
fn run_all(p: &Pipeline, url: &str) -> Output {
    run(
        p,
        &Urls {
            store: Some(url),
            fetch: url,
            save: url,
        },
    )
}

/// `run` ended before any stage ran (exit 2, "nothing was run"), on an error line naming each
/// of `needles`.
fn assert_refused(out: &Output, needles: &[&str]) {
    out.assert_code(2);
    out.assert_stderr_contains("nothing was run");
    assert!(
        out.stderr_lines()
            .any(|l| (l.contains("ERROR") || l.starts_with("error:"))
                && needles.iter().all(|n| l.contains(n))),
        "expected an error line with {needles:?}\n{out}"
    );
}

/// Writes `ca`'s certificate to `rel` in the pipeline's folder; its absolute path.
fn ca_file(p: &Pipeline, rel: &str, ca: &Ca) -> PathBuf {
    p.dir.write(rel, ca.pem());
    p.dir.join(rel)
}

#[test]
fn require_encrypts_the_store_and_both_stages_where_the_server_takes_tls_only() {
    let Some(server) = tls_server(&["localhost", "127.0.0.1"], true) else {
        return;
    };
    let require = server.url("127.0.0.1", "sslmode=require");
    let p = job("tls-require", true);
    run_all(&p, &require).assert_code(0);
    // The store's sessions could only have been encrypted: the server refuses plain ones.
    assert_eq!(server.stored_items("tls-require"), ARTICLES);
    assert_eq!(server.results(), (ARTICLES, ARTICLES, ARTICLES));

    // `sslmode=disable`: the server's refusal, with its reason, for the store and for a stage.
    let disable = server.url("127.0.0.1", "sslmode=disable");
    let out = run(
        &job("tls-disable-store", true),
        &Urls {
            store: Some(&disable),
            fetch: &require,
            save: &require,
        },
    );
    assert_refused(
        &out,
        &["checkpoint store", "no pg_hba.conf entry", "no encryption"],
    );
    let out = run(
        &job("tls-disable-stage", false),
        &Urls {
            store: None,
            fetch: &disable,
            save: &require,
        },
    );
    // Refused when the run checks the stage's connection, before it takes a batch.
    assert_refused(
        &out,
        &["stage `fetch`", "no pg_hba.conf entry", "no encryption"],
    );

    // The default, `prefer`, takes the TLS the server offers.
    let prefer = Pipeline::new(
        r#"
        [pipeline]
        name = "tls-prefer"

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "${FETCH_URL}"
        query = "SELECT id, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS fetched_over_tls FROM articles ORDER BY id"
        key = "id"

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let url = server.url("127.0.0.1", "");
    let out = prefer.cmd("run").env("FETCH_URL", &url).output();
    out.assert_code(0);
    assert!(!out.stderr.contains(SECRET), "{out}");
    let rows = prefer.sink("out.jsonl");
    assert_eq!(rows.len(), ARTICLES as usize);
    assert!(
        rows.records.iter().all(|r| r["fetched_over_tls"] == true),
        "{:?}",
        rows.records
    );
}

#[test]
fn verify_full_checks_the_ca_and_the_host_name() {
    let Some(server) = tls_server(&["localhost", "127.0.0.1"], false) else {
        return;
    };
    let p = job("tls-verify-full", true);
    let ca = ca_file(&p, "ca.pem", &server.ca);
    let other = ca_file(&p, "other.pem", &Ca::new("another CA"));
    let verify = |host: &str, ca: &PathBuf| {
        server.url(
            host,
            &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
        )
    };
    // A name and an address the certificate holds.
    let by_name = verify("localhost", &ca);
    let by_address = verify("127.0.0.1", &ca);
    let out = run(
        &p,
        &Urls {
            store: Some(&by_name),
            fetch: &by_address,
            save: &by_name,
        },
    );
    out.assert_code(0);
    assert_eq!(server.results(), (ARTICLES, ARTICLES, ARTICLES));
    assert_eq!(server.stored_items("tls-verify-full"), ARTICLES);
    for command in ["validate", "plan", "status"] {
        let out = p
            .cmd(command)
            .env("STORE_URL", &by_name)
            .env("FETCH_URL", &by_address)
            .env("SAVE_URL", &by_name)
            .output();
        out.assert_code(0);
        assert!(
            !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
            "`{command}` printed the password\n{out}"
        );
        if command == "plan" {
            assert_eq!(
                out.stdout.matches("\"verify-full\"").count(),
                3,
                "the store's and both stages' sslmode\n{out}"
            );
        }
    }

    // Another CA: not trusted, wherever the URL is; nothing runs.
    let wrong = verify("localhost", &other);
    let other_shown = other.display().to_string();
    let out = run(
        &job("tls-wrong-ca-store", true),
        &Urls {
            store: Some(&wrong),
            fetch: &by_name,
            save: &by_name,
        },
    );
    assert_refused(
        &out,
        &["checkpoint store", "certificate not trusted", &other_shown],
    );
    let out = run(
        &job("tls-wrong-ca-fetch", false),
        &Urls {
            store: None,
            fetch: &wrong,
            save: &by_name,
        },
    );
    assert_refused(
        &out,
        &["stage `fetch`", "certificate not trusted", &other_shown],
    );
    // `validate --connect` finds it too, at the key (here an environment variable's value),
    // and the store's.
    let p = job("tls-wrong-ca-validate", true);
    for (store, fetch, needle) in [
        (&by_name, &wrong, "stage `fetch`"),
        (&wrong, &by_name, "checkpoint store"),
    ] {
        let out = p
            .cmd("validate")
            .arg("--connect")
            .env("STORE_URL", store)
            .env("FETCH_URL", fetch)
            .env("SAVE_URL", &by_name)
            .output();
        out.assert_code(2);
        assert!(
            out.stderr_lines()
                .any(|l| l.starts_with("error: pipeline.toml:")
                    && l.contains(needle)
                    && l.contains("certificate not trusted")),
            "{needle}\n{out}"
        );
        assert!(!out.stderr.contains(SECRET), "{out}");
    }
    let out = p
        .cmd("validate")
        .arg("--connect")
        .env("STORE_URL", &by_name)
        .env("FETCH_URL", &by_address)
        .env("SAVE_URL", &by_name)
        .output();
    out.assert_code(0);
    out.assert_stderr_contains("checked: stage `fetch`: connected to");
    out.assert_stderr_contains("checked: checkpoint store:");
    // `require` with `sslrootcert` checks the chain too, as libpq does.
    let require_other = server.url(
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={other_shown}"),
    );
    let p = job("tls-wrong-ca-save", false);
    let out = run(
        &p,
        &Urls {
            store: None,
            fetch: &by_name,
            save: &require_other,
        },
    );
    assert_refused(
        &out,
        &["stage `save`", "certificate not trusted", "sslmode=require"],
    );
    assert!(
        !p.dir.exists(".stagewise/tls-wrong-ca-save.summary.json"),
        "nothing ran"
    );
}

#[test]
fn a_certificate_for_another_host_fails_verify_full_and_passes_verify_ca() {
    let Some(server) = tls_server(&["db.example"], false) else {
        return;
    };
    let p = job("tls-verify-ca", true);
    let ca = ca_file(&p, "ca.pem", &server.ca);
    let url = |mode: &str| {
        server.url(
            "127.0.0.1",
            &format!("sslmode={mode}&sslrootcert={}", ca.display()),
        )
    };
    let full = url("verify-full");
    let mismatch =
        "host name mismatch: the certificate is not valid for 127.0.0.1 (it is for db.example)";
    let out = run_all(&job("tls-mismatch-store", true), &full);
    assert_refused(&out, &["stage `fetch`", mismatch]);
    let out = run(
        &job("tls-mismatch-save", false),
        &Urls {
            store: None,
            fetch: &url("verify-ca"),
            save: &full,
        },
    );
    assert_refused(&out, &["stage `save`", mismatch]);

    // `verify-ca` checks the chain only.
    run_all(&p, &url("verify-ca")).assert_code(0);
    assert_eq!(server.results(), (ARTICLES, ARTICLES, ARTICLES));
    assert_eq!(server.stored_items("tls-verify-ca"), ARTICLES);
    // … and still refuses another CA.
    let other = ca_file(&p, "other.pem", &Ca::new("another CA"));
    let wrong = server.url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", other.display()),
    );
    let out = run_all(&job("tls-verify-ca-wrong", true), &wrong);
    assert_refused(&out, &["certificate not trusted", "sslmode=verify-ca"]);
}

#[test]
fn the_key_value_form_takes_sslmode_and_a_quoted_sslrootcert() {
    let Some(server) = tls_server(&["localhost", "127.0.0.1"], false) else {
        return;
    };
    let p = job("tls-conninfo", true);
    let ca = ca_file(&p, "my certs/ca.pem", &server.ca);
    let conninfo = server.conninfo(
        "localhost",
        &format!("sslmode=verify-full sslrootcert='{}'", ca.display()),
    );
    run_all(&p, &conninfo).assert_code(0);
    assert_eq!(server.results(), (ARTICLES, ARTICLES, ARTICLES));
    assert_eq!(server.stored_items("tls-conninfo"), ARTICLES);

    let other = ca_file(&p, "other certs/ca.pem", &Ca::new("another CA"));
    let wrong = server.conninfo(
        "localhost",
        &format!("sslmode=verify-full sslrootcert='{}'", other.display()),
    );
    let out = run_all(&job("tls-conninfo-wrong", true), &wrong);
    assert_refused(
        &out,
        &["certificate not trusted", &other.display().to_string()],
    );
    // A CA file that is not there is named.
    let missing = server.conninfo(
        "localhost",
        "sslmode=verify-ca sslrootcert=/nonexistent/ca.pem",
    );
    let out = run_all(&job("tls-conninfo-missing", true), &missing);
    assert_refused(&out, &["/nonexistent/ca.pem", "cannot read"]);
}

#[test]
fn a_mode_that_requires_tls_says_when_the_server_has_none() {
    let Some(server) = plain_server() else { return };
    let p = job("tls-none", true);
    let ca = ca_file(&p, "ca.pem", &server.ca);
    for mode in ["require", "verify-full"] {
        let url = server.url(
            "localhost",
            &format!("sslmode={mode}&sslrootcert={}", ca.display()),
        );
        let said = format!("the server does not support TLS (sslmode={mode})");
        let out = run_all(&job(&format!("tls-none-store-{mode}"), true), &url);
        assert_refused(&out, &["stage `fetch`", &said]);
        let out = run(
            &job(&format!("tls-none-fetch-{mode}"), false),
            &Urls {
                store: None,
                fetch: &url,
                save: &url,
            },
        );
        assert_refused(&out, &["stage `fetch`", &said]);
    }
    // `prefer`, the default, goes on without TLS.
    run_all(&p, &server.url("localhost", "")).assert_code(0);
    assert_eq!(server.results(), (ARTICLES, 0, 0));
}

/// A query still running at its attempt's deadline is cancelled on the server by a request of
/// its own, over the same TLS as the session (the server takes TLS only, the URL checks the
/// certificate and the host): a query left behind would sleep on for most of 30 s.
#[test]
fn a_query_past_its_deadline_is_cancelled_over_tls() {
    let Some(server) = tls_server(&["localhost"], true) else {
        return;
    };
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "tls-cancel"

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "${FETCH_URL}"
        query = "SELECT id, pg_sleep(30)::text AS s FROM articles"
        key = "id"
        timeout = "2s"
        statement_timeout = "60s"
        retry = { attempts = 1 }

        [[stage]]
        name = "out"
        kind = "blackhole"
        "#,
    );
    let ca = ca_file(&p, "ca.pem", &server.ca);
    let url = server.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let busy = || {
        server.cluster.psql(
            DATABASE,
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'stagewise/fetch'
               AND state = 'active' AND query LIKE '%pg_sleep%'",
        ) != "0"
    };
    let mut running = p.cmd("run").env("FETCH_URL", &url).spawn();
    // The query must reach the server, or the rest proves nothing.
    let mut seen = false;
    let until = Instant::now() + Duration::from_secs(10);
    while !seen && !running.has_exited() && Instant::now() < until {
        seen = busy();
        thread::sleep(Duration::from_millis(20));
    }
    let out = running.wait();
    assert!(seen, "the query never showed in pg_stat_activity\n{out}");
    out.assert_code(3);
    out.assert_stderr_contains("timed out after 2s");
    assert!(!out.stderr.contains(SECRET), "{out}");
    let until = Instant::now() + Duration::from_secs(2);
    let mut left = busy();
    while left && Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
        left = busy();
    }
    assert!(
        !left,
        "the query outlived the run: its cancel request did not arrive\n{out}"
    );
}
