//! The PostgreSQL test harness itself (tests/util/pg.rs): a database per test, refused
//! credentials, and a private cluster that survives a stop and start. If these fail, every
//! PostgreSQL test after them would fail for reasons that have nothing to do with stagewise.

mod util;

use std::time::{Duration, Instant};

use postgres::error::SqlState;
use util::pg::{self, Bouncer, Db, PrivateCluster};

#[test]
fn a_db_is_a_fresh_database_of_its_own_and_is_dropped_afterwards() {
    let Some(admin_url) = pg::test_pg() else {
        return;
    };
    let mut db = Db::new().expect("test_pg() is set");
    let mut other = Db::new().expect("test_pg() is set");
    assert_ne!(db.name(), other.name());
    assert!(
        db.url().ends_with(&format!("/{}", db.name())),
        "{}",
        db.url()
    );

    db.execute("CREATE TABLE articles (id bigint PRIMARY KEY, title text NOT NULL)");
    let inserted = db.execute("INSERT INTO articles VALUES (1, 'one'), (2, 'two'), (3, 'three')");
    assert_eq!(inserted, 3);
    assert_eq!(db.query_i64("SELECT count(*) FROM articles"), 3);
    assert_eq!(
        db.query_strings("SELECT title FROM articles ORDER BY id"),
        ["one", "two", "three"]
    );
    assert!(db.table_exists("articles"));
    assert!(!other.table_exists("articles"), "databases are not shared");

    // The URL works for anyone (the binary under test connects with it).
    let mut client = pg::connect(db.url());
    let row = client
        .query_one("SELECT count(*) FROM articles WHERE id > $1", &[&1_i64])
        .expect("query through the URL");
    assert_eq!(row.get::<_, i64>(0), 2);
    drop(client);

    let name = db.name().to_owned();
    drop(db);
    let mut admin = pg::connect(&admin_url);
    let left = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .expect("look up pg_database");
    assert_eq!(left.get::<_, i64>(0), 0, "database {name} was not dropped");
}

#[test]
fn a_db_is_dropped_even_with_sessions_left_open() {
    let Some(db) = Db::new() else { return };
    let name = db.name().to_owned();
    // A session the harness does not know about, as a killed binary would leave behind.
    let _left_open = db.connect();
    drop(db);
    let mut admin = pg::connect(&pg::test_pg().expect("set"));
    let left = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .expect("look up pg_database");
    assert_eq!(left.get::<_, i64>(0), 0, "database {name} was not dropped");
}

#[test]
fn a_wrong_password_is_refused() {
    let Some(url) = pg::test_pg() else { return };
    pg::connect(&url); // the right one works
    let wrong = pg::with_password(&url, "not-the-password");
    let err = match pg::try_connect(&wrong) {
        Ok(_) => panic!("connected to {wrong} with a wrong password"),
        Err(e) => e,
    };
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_PASSWORD),
        "{}",
        pg::DbErr(&err)
    );
    assert!(
        pg::DbErr(&err)
            .to_string()
            .contains("password authentication failed"),
        "{}",
        pg::DbErr(&err)
    );
}

#[test]
fn a_private_cluster_can_be_stopped_and_started_again() {
    let Some(cluster) = PrivateCluster::new() else {
        return;
    };
    assert!(cluster.is_up());
    let port = cluster.port();
    let mut db = cluster.db();
    db.execute(
        "CREATE TABLE t (id bigint PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)",
    );

    cluster.stop();
    assert!(!cluster.is_up(), "still accepting connections after stop");
    let err = pg::try_connect(db.url())
        .err()
        .expect("connecting to a stopped server fails");
    assert!(
        err.as_db_error().is_none(),
        "refused by the network, not the server: {}",
        pg::DbErr(&err)
    );
    assert!(
        pg::DbErr(&err).to_string().contains("Connection refused"),
        "{}",
        pg::DbErr(&err)
    );

    let started = Instant::now();
    cluster.start();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "restart took {:?}",
        started.elapsed()
    );
    assert_eq!(cluster.port(), port);
    assert!(cluster.is_up());
    // Same data; the harness's own connection was closed by the stop and reconnects.
    assert_eq!(db.query_i64("SELECT count(*) FROM t"), 100);

    // A crash (no clean shutdown) is survived too: committed rows are still there.
    db.execute("INSERT INTO t VALUES (101)");
    cluster.crash();
    assert!(!cluster.is_up());
    cluster.start();
    assert_eq!(db.query_i64("SELECT max(id) FROM t"), 101);
}

/// The first column of each row of a simple query (no prepared statement of the harness's own).
fn column(client: &mut postgres::Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", pg::DbErr(&e)))
        .iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// A `Bouncer` pools in transaction mode: its clients share two server sessions, a client's
/// transactions move between them (so a session-level `SET` stays behind), it checks the
/// password, and it is gone once dropped.
#[test]
fn a_bouncer_pools_transactions_on_two_server_sessions() {
    let Some(db) = Db::new() else { return };
    let Some(bouncer) = Bouncer::new() else {
        return;
    };
    let url = bouncer.db_url(&db);

    // Two transactions at once take both server sessions.
    let mut a = pg::connect(&url);
    let mut b = pg::connect(&url);
    column(&mut a, "BEGIN");
    column(&mut b, "BEGIN");
    let sessions = [
        column(&mut a, "SELECT pg_backend_pid()").remove(0),
        column(&mut b, "SELECT pg_backend_pid()").remove(0),
    ];
    assert_ne!(sessions[0], sessions[1]);
    column(&mut a, "COMMIT");
    column(&mut b, "COMMIT");

    // Five clients share those two.
    let mut clients: Vec<_> = (0..5).map(|_| pg::connect(&url)).collect();
    for _ in 0..10 {
        for client in &mut clients {
            let pid = column(client, "SELECT pg_backend_pid()").remove(0);
            assert!(sessions.contains(&pid), "{pid} is not one of {sessions:?}");
        }
    }

    // A session's setting stays with the server session it was made on.
    column(&mut a, "SET work_mem = '7MB'");
    let seen: Vec<String> = (0..4)
        .map(|_| column(&mut a, "SHOW work_mem").remove(0))
        .collect();
    assert!(
        seen.iter().any(|w| w != "7MB"),
        "every transaction of the client ran on one server session: {seen:?}"
    );

    assert!(pg::try_connect(&pg::with_password(&url, "not-the-password")).is_err());

    drop((a, b, clients));
    drop(bouncer);
    assert!(
        pg::try_connect(&url).is_err(),
        "still accepting after the drop"
    );
}

#[test]
fn urls_are_rewritten_keeping_the_credentials() {
    let url = "postgres://stagewise:stagewise@127.0.0.1:5432/stagewise_test";
    assert_eq!(
        pg::with_database(url, "test_1"),
        "postgres://stagewise:stagewise@127.0.0.1:5432/test_1"
    );
    assert_eq!(
        pg::with_database("postgres://u:p@h:1/db?sslmode=disable", "x"),
        "postgres://u:p@h:1/x?sslmode=disable"
    );
    assert_eq!(pg::with_database("postgres://u@h", "x"), "postgres://u@h/x");
    assert_eq!(
        pg::with_password(url, "wrong"),
        "postgres://stagewise:wrong@127.0.0.1:5432/stagewise_test"
    );
    assert_eq!(
        pg::with_password("postgres://u@h/db", "pw"),
        "postgres://u:pw@h/db"
    );
}
