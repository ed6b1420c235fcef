//! The PostgreSQL client: connections pooled per stage, transactions with their own time limit,
//! a canceller that stops a query on the server when its attempt's deadline passes, column and
//! parameter types, and the classification of server errors.
//!
//! Everything here works through a pooler in transaction mode (PgBouncer's `pool_mode =
//! transaction`), where each transaction may run on another server session, so nothing may
//! outlive the transaction it was made in: every statement runs inside an explicit transaction
//! that sets its own `statement_timeout` (`SET LOCAL`), and no named prepared statement is left
//! behind. A statement's parameter and column types are learnt once per pool by preparing it in
//! a transaction and closing it before the commit ([`PgConn::shapes`]); each call then sends its
//! SQL with those types as an unnamed statement (`query_typed`, `execute_typed`: one round trip,
//! as a prepared statement's execution is; a transaction's statements are sent together).
//!
//! A [`Session`] is synchronous and runs its own runtime per connection: every call, and every
//! drop, happens on the stage's blocking threads (or, for the pool's leftovers and a read's
//! commit aside, on a thread of its own), never on the async runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

// `tokio-postgres` is the client the `postgres` crate wraps, and its types (`Config`, `Error`,
// `Row`, `types`) are the ones that crate re-exports: under that name they read as they always
// have. The calls go through a `Session` (see session.rs for why).
use tokio_postgres as postgres;

use postgres::error::SqlState;
use postgres::types::{ToSql, Type};
use postgres::{Row, Statement};
use serde_json::Value;
use stagewise_core::pg::{PgTarget, Tls};
use stagewise_core::stage::{CancelFlag, Context, ErrorKind, Fields, StageError};

use crate::config::Limits;
use crate::params::Script;
use crate::session::{self, Call, CancelToken, Param, Session};

/// How often the canceller looks at the queries in flight.
const CANCEL_TICK: Duration = Duration::from_millis(20);

/// How long the canceller waits for a cancelled call to return before it sends the cancel
/// request again. A request that arrives while no query runs is lost: through a pooler whose
/// server sessions are all busy, the call is still queued for one (PgBouncer drops the request
/// then), and its query would start later with nothing to stop it. Short enough that such a
/// call is usually stopped within the grace the runner gives a timed-out call.
const CANCEL_AGAIN: Duration = Duration::from_millis(200);

/// Names the `postgres` crate gives its prepared statements (`s0`, `s1`, …, counted per
/// process), as `pg_prepared_statements` lists them. A pooler that manages prepared statements
/// itself (PgBouncer's `max_prepared_statements`) renames them on the server, and they are its
/// business.
const CLIENT_STATEMENT_NAMES: &str = "^s[0-9]+$";

/// What a statement takes and gives, as the server described it when it was prepared.
pub(crate) struct Shape {
    params: Vec<Type>,
    columns: Vec<(String, Type)>,
}

/// The shapes learnt so far, by SQL text; shared by the connections of a pool.
type Shapes = Mutex<HashMap<String, Arc<Shape>>>;

/// A pooled connection.
pub(crate) struct PgConn {
    client: Session,
    shapes: Arc<Shapes>,
    /// `BEGIN` and the transaction's `statement_timeout`, sent together.
    begin: String,
    /// False once the session's state is in doubt (a transaction that did not end cleanly, type
    /// lookups whose statements were closed behind the client's back): it is not pooled again.
    reusable: bool,
    /// A read that stopped before the end of its query's rows: the query goes on to its end,
    /// and its transaction is committed aside (see [`PgPool::put`]).
    unfinished: bool,
}

/// The connections of one stage.
pub(crate) struct PgPool {
    /// The server, the session settings and the TLS of every connection.
    config: PgTarget,
    limits: Limits,
    idle: Mutex<Vec<PgConn>>,
    shapes: Arc<Shapes>,
    watches: Arc<Mutex<Vec<Watch>>>,
}

struct Watch {
    id: u64,
    token: CancelToken,
    /// The TLS the cancel request goes over: the session's.
    tls: Tls,
    deadline: Instant,
    flag: CancelFlag,
    fired: Arc<std::sync::atomic::AtomicBool>,
    /// Once fired: when to send the cancel request again if the call is still running.
    again: Option<Instant>,
    /// A cancel request of this watch is on its way (a server that does not answer gets one at
    /// a time).
    sending: Arc<std::sync::atomic::AtomicBool>,
}

/// Keeps a query under watch; says afterwards whether the canceller fired on it.
pub(crate) struct Watched {
    watches: Arc<Mutex<Vec<Watch>>>,
    id: u64,
    fired: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        lock(&self.watches).retain(|w| w.id != self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for PgPool {
    fn drop(&mut self) {
        // Dropping a client inside the async runtime panics; the pool may be dropped there.
        let idle = std::mem::take(&mut *lock(&self.idle));
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("stagewise-pg-close".into())
                .spawn(move || drop(idle));
        }
    }
}

impl PgPool {
    /// A pool for `url`, named `stagewise/<stage>` on the server, with the TLS its `sslmode`
    /// and `sslrootcert` ask for (the CA file is read here). Nothing connects yet.
    pub(crate) fn new(url: &str, stage: &str, limits: Limits) -> Result<Self, String> {
        let mut config = PgTarget::new(url).map_err(|e| format!("`url`: {e}"))?;
        config
            .application_name(format!("stagewise/{stage}"))
            .connect_timeout(limits.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        let watches = Arc::new(Mutex::new(Vec::new()));
        spawn_canceller(Arc::downgrade(&watches));
        Ok(PgPool {
            config,
            limits,
            idle: Mutex::new(Vec::new()),
            shapes: Arc::default(),
            watches,
        })
    }

    /// With `sslmode=require` or stronger, connect once before the run: a certificate the mode
    /// refuses, or a server without TLS, is the configuration's fault and would fail every
    /// attempt alike, so it is found now and stops the run before it starts (the reason in
    /// words), as an invalid URL does. Anything else (the server unreachable or silent, a
    /// password refused) is left to the attempts, as it always was.
    pub(crate) fn check_tls(&self) -> Result<(), String> {
        if !self.config.requires_tls() {
            return Ok(());
        }
        let budget = self.limits.connect_timeout;
        let mut config = self.config.clone();
        config.connect_timeout(budget);
        // On a thread of its own, as the client must be (never on an async runtime's), and
        // bounded as a whole: the client's timeout bounds only the TCP connect, and a server
        // that stalls the handshake is left to the attempts too.
        let (sent, answer) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("stagewise-pg-tls-check".into())
            .spawn(move || {
                let failure = match probe(&config, budget) {
                    Err(_) => None,
                    Ok(()) => match config.connect() {
                        Ok(_session) => None,
                        Err(e) => config.tls_failure(&e),
                    },
                };
                let _ = sent.send(failure);
            });
        if spawned.is_err() {
            return Ok(());
        }
        match answer.recv_timeout(budget.saturating_mul(2)) {
            Ok(Some(why)) => Err(why),
            _ => Ok(()),
        }
    }

    /// A connection: an idle one, or a new one within the connect timeout and the attempt's
    /// deadline.
    pub(crate) fn get(&self, cx: &Context) -> Result<PgConn, StageError> {
        if let Some(conn) = lock(&self.idle).pop() {
            if !conn.client.is_closed() {
                return Ok(conn);
            }
        }
        let mut config = self.config.clone();
        let budget = self.limits.connect_timeout.min(cx.remaining());
        if budget.is_zero() {
            return Err(StageError::transient(
                "no time left to connect before the attempt's deadline",
            )
            .with_kind(ErrorKind::Timeout));
        }
        probe(&self.config, budget)?;
        // What the probe left of the attempt's time, for the session's own connect.
        let budget = budget.min(cx.remaining());
        if budget.is_zero() {
            return Err(StageError::transient(
                "no time left to connect before the attempt's deadline",
            )
            .with_kind(ErrorKind::Timeout));
        }
        config.connect_timeout(budget);
        let runtime = session::runtime().map_err(|e| {
            StageError::transient(format!("could not start the client's runtime: {e}"))
        })?;
        let client = Session::connect(runtime, &config, config.tls()).map_err(|e| {
            match config.tls_failure(&e) {
                // The same on every attempt and every item: the run stops.
                Some(why) => StageError::fatal(why),
                None => connect_error(&e, budget),
            }
        })?;
        // Per transaction, not per session: through a pooler in transaction mode a session's
        // settings stay with the server session, which the next transaction may not get.
        let ms = self.limits.statement_timeout.as_millis().max(1);
        Ok(PgConn {
            client,
            shapes: self.shapes.clone(),
            begin: format!("BEGIN; SET LOCAL statement_timeout = {ms}"),
            reusable: true,
            unfinished: false,
        })
    }

    /// Give a connection back; a broken one, one whose state is in doubt, or one the canceller
    /// fired on (its cancel request may still be on its way), is dropped. One whose read stopped
    /// early commits aside, on a thread of its own, once its query has ended (bounded by the
    /// `statement_timeout`), and is dropped then: the read does not wait for rows it will not
    /// take.
    pub(crate) fn put(&self, conn: PgConn, fired: bool) {
        if conn.client.is_closed() || fired || !conn.reusable {
            return;
        }
        if conn.unfinished {
            let mut client = conn.client;
            let _ = std::thread::Builder::new()
                .name("stagewise-pg-finish".into())
                .spawn(move || {
                    if let Err(e) = client.batch_execute("COMMIT") {
                        tracing::warn!(error = %describe(&e), "could not commit a read that stopped early");
                    }
                });
            return;
        }
        lock(&self.idle).push(conn);
    }

    /// Watch the connection's next query: cancel it on the server at the attempt's deadline or
    /// when the attempt is cancelled.
    pub(crate) fn watch(&self, conn: &PgConn, cx: &Context) -> Watched {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        lock(&self.watches).push(Watch {
            id,
            token: conn.client.cancel_token(self.limits.connect_timeout),
            tls: self.config.tls(),
            deadline: cx.deadline(),
            flag: cx.cancel_flag().clone(),
            fired: fired.clone(),
            again: None,
            sending: Arc::default(),
        });
        Watched {
            watches: self.watches.clone(),
            id,
            fired,
        }
    }
}

/// Make sure the server answers before connecting: the client's `connect_timeout` bounds only
/// opening the TCP connection, not the startup exchange, so a server that accepts and then says
/// nothing would hold the attempt until its deadline. The probe sends PostgreSQL's 8-byte
/// SSLRequest, which every server answers at once with one byte, and waits at most `budget`.
fn probe(config: &postgres::Config, budget: Duration) -> Result<(), StageError> {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    let Some(postgres::config::Host::Tcp(host)) = config.get_hosts().first() else {
        return Ok(());
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let unreachable = |e: std::io::Error| {
        StageError::transient(format!("could not connect to {host}:{port}: {e}"))
            .with_kind(ErrorKind::Connect)
    };
    // With `hostaddr`, the client connects there and keeps `host` for TLS: so does the probe.
    let addrs: Vec<std::net::SocketAddr> = match config.get_hostaddrs().first() {
        Some(ip) => vec![std::net::SocketAddr::new(*ip, port)],
        None => (host.as_str(), port)
            .to_socket_addrs()
            .map_err(unreachable)?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(
            StageError::transient(format!("`{host}` has no address")).with_kind(ErrorKind::Connect)
        );
    }
    let silent = || {
        StageError::transient(format!(
            "{host}:{port} accepted the connection but did not answer within {} (`connect_timeout`)",
            stagewise_core::text::duration(budget)
        ))
        .with_kind(ErrorKind::Timeout)
    };
    // Like the client, try each address; the first that answers will do.
    let mut last = None;
    for addr in addrs {
        let mut stream = match TcpStream::connect_timeout(&addr, budget) {
            Ok(s) => s,
            Err(e) => {
                last = Some(unreachable(e));
                continue;
            }
        };
        let answered = stream.set_read_timeout(Some(budget)).is_ok()
            && stream.set_write_timeout(Some(budget)).is_ok()
            && stream
                .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
                .is_ok()
            && stream.read_exact(&mut [0u8; 1]).is_ok();
        if answered {
            return Ok(());
        }
        last = Some(silent());
    }
    Err(last.unwrap_or_else(silent))
}

/// A cancel request to send.
struct Cancel {
    token: CancelToken,
    tls: Tls,
    sending: Arc<std::sync::atomic::AtomicBool>,
    /// The watch's first: a failure is reported once, not at every try.
    first: bool,
}

/// One thread per pool: cancels watched queries whose attempt is over, and again every
/// [`CANCEL_AGAIN`] while their call has not returned. It ends with the pool.
fn spawn_canceller(watches: Weak<Mutex<Vec<Watch>>>) {
    use std::sync::atomic::Ordering;
    let _ = std::thread::Builder::new()
        .name("stagewise-pg-cancel".into())
        .spawn(move || loop {
            std::thread::sleep(CANCEL_TICK);
            let Some(watches) = watches.upgrade() else {
                return;
            };
            let now = Instant::now();
            let mut due = Vec::new();
            for w in lock(&watches).iter_mut() {
                let first = w.again.is_none();
                let due_now = match w.again {
                    None => now >= w.deadline || w.flag.is_cancelled(),
                    Some(again) => now >= again,
                };
                if !due_now || w.sending.load(Ordering::Acquire) {
                    continue;
                }
                // Marked under the lock: once a `Watched` is dropped (which takes the lock and
                // ends the watch), its `fired` flag is final.
                w.fired.store(true, Ordering::Release);
                w.again = Some(now + CANCEL_AGAIN);
                w.sending.store(true, Ordering::Release);
                due.push(Cancel {
                    token: w.token.clone(),
                    tls: w.tls.clone(),
                    sending: w.sending.clone(),
                    first,
                });
            }
            drop(watches);
            for w in due {
                let sending = w.sending.clone();
                // Cancelling opens a connection of its own: do it aside, so that an unreachable
                // server delays no other cancellation.
                let spawned = std::thread::Builder::new()
                    .name("stagewise-pg-cancel-query".into())
                    .spawn(move || {
                        if let Err(e) = w.token.cancel_query(w.tls) {
                            if w.first {
                                tracing::warn!(error = %e, "could not cancel a query on the server");
                            }
                        }
                        w.sending.store(false, Ordering::Release);
                    });
                if spawned.is_err() {
                    sending.store(false, Ordering::Release);
                }
            }
        });
}

impl PgConn {
    /// Run `f` in a transaction of its own, whose statements time out after the stage's
    /// `statement_timeout`; commit if it succeeds (unless it left its read
    /// [`unfinished`](Self::unfinished)), roll back if it fails. `BEGIN` and the timeout take one
    /// round trip together.
    fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, StageError>,
    ) -> Result<T, StageError> {
        let result = match self.client.batch_execute(&self.begin) {
            Ok(()) => f(self),
            Err(e) => Err(classify(&e)),
        };
        match result {
            Ok(_) if self.unfinished => result,
            Ok(value) => match self.client.batch_execute("COMMIT") {
                Ok(()) => Ok(value),
                Err(e) => {
                    // Whatever the server did with the transaction, this session's state is
                    // not worth finding out.
                    self.reusable = false;
                    Err(classify(&e))
                }
            },
            Err(e) => {
                if self.client.batch_execute("ROLLBACK").is_err() {
                    self.reusable = false;
                }
                Err(e)
            }
        }
    }

    /// The shapes of `sqls`, in order; those not known yet are learnt first, in one transaction
    /// of their own: each statement is prepared and closed again before the commit (the client
    /// sends the close as the statement drops, ahead of anything sent after it), so that no
    /// prepared statement outlives the transaction, whatever server session a pooler gave it.
    ///
    /// Describing a type that is not built in makes the client prepare statements of its own
    /// to look it up, and keep them for the session. Those are closed here too, before the
    /// transaction ends, and the connection, which would still count on them, is not pooled
    /// again. So that this clean-up runs even when a statement fails to prepare, the statements
    /// are prepared after a savepoint.
    fn shapes(&mut self, sqls: &[&str]) -> Result<Vec<Arc<Shape>>, StageError> {
        let missing: Vec<&str> = {
            let known = lock(&self.shapes);
            sqls.iter()
                .copied()
                .filter(|sql| !known.contains_key(*sql))
                .collect()
        };
        if !missing.is_empty() {
            let learnt = self.transaction(|conn| {
                conn.client
                    .batch_execute("SAVEPOINT stagewise_learn")
                    .map_err(|e| classify(&e))?;
                let mut learnt = Vec::with_capacity(missing.len());
                let mut failure = None;
                for sql in &missing {
                    match conn.client.prepare(sql) {
                        Ok(statement) => {
                            learnt.push((sql.to_string(), Arc::new(shape(&statement))))
                        }
                        Err(e) => {
                            failure = Some(classify(&e));
                            break;
                        }
                    }
                }
                if let Some(failure) = failure {
                    // A failed statement may have looked a type up before it failed, unseen:
                    // back to before it, and clean up whatever the client left.
                    let cleaned = conn
                        .client
                        .batch_execute("ROLLBACK TO SAVEPOINT stagewise_learn")
                        .map_err(|e| classify(&e))
                        .and_then(|()| conn.close_client_statements());
                    if cleaned.is_err() {
                        conn.reusable = false;
                    }
                    return Err(failure);
                }
                if learnt.iter().any(|(_, shape)| shape.has_custom_types()) {
                    conn.close_client_statements()?;
                }
                Ok(learnt)
            })?;
            lock(&self.shapes).extend(learnt);
        }
        let known = lock(&self.shapes);
        Ok(sqls
            .iter()
            .map(|sql| known.get(*sql).cloned().expect("learnt above"))
            .collect())
    }

    /// Close the client's own prepared statements on this server session (its type lookups'),
    /// inside the transaction; if there were any, the connection is not pooled again, since the
    /// client would use them on its next lookup.
    fn close_client_statements(&mut self) -> Result<(), StageError> {
        let listed = self
            .client
            .simple_query(&format!(
                "SELECT name FROM pg_prepared_statements WHERE name ~ '{CLIENT_STATEMENT_NAMES}'"
            ))
            .map_err(|e| classify(&e))?;
        let deallocate: String = listed
            .iter()
            .filter_map(|message| match message {
                postgres::SimpleQueryMessage::Row(row) => row.get(0),
                _ => None,
            })
            .map(|name| format!("DEALLOCATE \"{name}\";"))
            .collect();
        if !deallocate.is_empty() {
            self.reusable = false;
            self.client
                .batch_execute(&deallocate)
                .map_err(|e| classify(&e))?;
        }
        Ok(())
    }

    /// Prepare `sql` (nothing runs) and describe its columns: each one's name, its type's, and
    /// whether `db-fetch` reads that type.
    pub(crate) fn describe(
        &mut self,
        sql: &str,
    ) -> Result<Vec<(String, String, bool)>, StageError> {
        let shape = self.shapes(&[sql])?.remove(0);
        Ok(shape
            .columns
            .iter()
            .map(|(name, ty)| (name.clone(), ty.to_string(), readable(ty)))
            .collect())
    }

    /// Run a `db-fetch` query, streaming each row to `emit` as fields (see
    /// [`crate::stage::Row`]).
    pub(crate) fn fetch(
        &mut self,
        sql: &str,
        limit: Option<i64>,
        emit: &mut dyn FnMut(crate::stage::Row) -> bool,
    ) -> Result<(), StageError> {
        let shape = self.shapes(&[sql])?.remove(0);
        for (name, ty) in &shape.columns {
            if !readable(ty) {
                return Err(StageError::permanent(format!(
                    "column `{name}` has type `{ty}`, which db-fetch cannot read: cast it in the query (e.g. `{name}::text` or `{name}::float8`)"
                )));
            }
        }
        let values: Vec<&(dyn ToSql + Sync)> = match &limit {
            Some(l) => vec![l],
            None => Vec::new(),
        };
        let params = shape.typed(&values)?;
        self.transaction(|conn| {
            let mut rows = conn
                .client
                .query_typed_raw(sql, params)
                .map_err(|e| classify(&e))?;
            while let Some(row) = rows.next().map_err(|e| classify(&e))? {
                let mut fields = Fields::new();
                // A column's type is checked above: a value that does not read is the row's
                // trouble.
                let mut unreadable = None;
                for (i, (name, ty)) in shape.columns.iter().enumerate() {
                    match read(&row, i, ty) {
                        Ok(value) => {
                            fields.insert(name.clone(), value);
                        }
                        Err(e) => {
                            unreadable
                                .get_or_insert_with(|| format!("column `{name}` ({ty}): {e}"));
                        }
                    }
                }
                let row = match unreadable {
                    None => Ok(fields),
                    Some(error) => Err((error, fields)),
                };
                if !emit(row) {
                    // The rest of the rows are the query's to finish sending, not the read's to
                    // wait for.
                    conn.unfinished = true;
                    break;
                }
            }
            Ok(())
        })
    }

    /// Run the script once per record's values, all in one transaction. Every value is
    /// converted before the transaction starts: a bad one writes nothing.
    pub(crate) fn persist(
        &mut self,
        script: &Script,
        batch: &[&[Value]],
    ) -> Result<(), StageError> {
        let sqls: Vec<&str> = script.parts.iter().map(|part| part.sql.as_str()).collect();
        let shapes = self.shapes(&sqls)?;
        let mut bound: Vec<Vec<Box<dyn ToSql + Sync>>> =
            Vec::with_capacity(batch.len() * shapes.len());
        for values in batch {
            for (part, shape) in script.parts.iter().zip(&shapes) {
                let mut one = Vec::with_capacity(part.args.len());
                for (&arg, ty) in part.args.iter().zip(&shape.params) {
                    let name = &script.names[arg];
                    one.push(bind(&values[arg], ty).map_err(|e| {
                        StageError::permanent(format!("`:{name}`: {e}"))
                            .with_kind(ErrorKind::InvalidInput)
                    })?);
                }
                bound.push(one);
            }
        }
        let typed = bound
            .iter()
            .enumerate()
            .map(|(i, one)| {
                let values: Vec<&(dyn ToSql + Sync)> = one.iter().map(|b| &**b).collect();
                shapes[i % shapes.len()].typed(&values)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let calls: Vec<Call<'_>> = typed
            .iter()
            .enumerate()
            .map(|(i, params)| (sqls[i % sqls.len()], params.as_slice()))
            .collect();
        // The statements go out together; the commit only once they have all succeeded.
        self.transaction(|conn| conn.client.execute_all(&calls).map_err(|e| classify(&e)))
    }
}

impl Shape {
    /// Whether a parameter or column has a type that is not built in (an enum, a domain, an
    /// extension's type), which the client looked up when the statement was prepared.
    fn has_custom_types(&self) -> bool {
        self.params
            .iter()
            .chain(self.columns.iter().map(|(_, ty)| ty))
            .any(|ty| Type::from_oid(ty.oid()).is_none())
    }

    /// `values` with the statement's parameter types, as an unnamed statement takes them.
    fn typed<'a>(&self, values: &[&'a (dyn ToSql + Sync)]) -> Result<Vec<Param<'a>>, StageError> {
        if values.len() != self.params.len() {
            // The client's own message, as a prepared statement's execution gave it.
            return Err(StageError::permanent(format!(
                "expected {} parameters but got {}",
                self.params.len(),
                values.len()
            )));
        }
        Ok(values
            .iter()
            .copied()
            .zip(self.params.iter().cloned())
            .collect())
    }
}

fn shape(statement: &Statement) -> Shape {
    Shape {
        params: statement.params().to_vec(),
        columns: statement
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_().clone()))
            .collect(),
    }
}

/// Run `f` on a pooled connection with its query watched; the connection goes back unless it
/// broke or was cancelled.
pub(crate) fn with_conn<T>(
    pool: &PgPool,
    cx: &Context,
    f: impl FnOnce(&mut PgConn) -> Result<T, StageError>,
) -> Result<T, StageError> {
    let mut conn = pool.get(cx)?;
    // Connecting may have taken the attempt's time (a slow server, a probe and a handshake):
    // a query that would start after the deadline does not start, since nothing would wait
    // for its answer.
    if cx.is_cancelled() {
        pool.put(conn, false);
        return Err(StageError::transient(
            "no time left for the query before the attempt's deadline (connecting took it)",
        )
        .with_kind(ErrorKind::Timeout));
    }
    let watched = pool.watch(&conn, cx);
    let result = f(&mut conn);
    let fired = watched.fired.clone();
    drop(watched);
    let fired = fired.load(std::sync::atomic::Ordering::Acquire);
    pool.put(conn, fired);
    match result {
        Err(e) if fired => Err(StageError::transient(format!(
            "the query was cancelled on the server at the attempt's deadline ({})",
            e.message
        ))
        .with_kind(ErrorKind::Timeout)),
        other => other,
    }
}

fn readable(ty: &Type) -> bool {
    [
        Type::BOOL,
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::OID,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
        Type::JSON,
        Type::JSONB,
        Type::TIMESTAMP,
        Type::TIMESTAMPTZ,
        Type::DATE,
    ]
    .contains(ty)
}

fn float(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or_else(|| Value::String(x.to_string()), Value::Number)
}

fn read(row: &Row, i: usize, ty: &Type) -> Result<Value, postgres::Error> {
    Ok(match *ty {
        Type::BOOL => row.try_get::<_, Option<bool>>(i)?.map(Value::from),
        Type::INT2 => row.try_get::<_, Option<i16>>(i)?.map(Value::from),
        Type::INT4 => row.try_get::<_, Option<i32>>(i)?.map(Value::from),
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::from),
        Type::OID => row.try_get::<_, Option<u32>>(i)?.map(Value::from),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)?
            .map(|x| float(f64::from(x))),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(float),
        Type::JSON | Type::JSONB => row.try_get::<_, Option<Value>>(i)?,
        Type::TIMESTAMP => row
            .try_get::<_, Option<chrono::NaiveDateTime>>(i)?
            .map(|t| Value::String(t.format("%Y-%m-%dT%H:%M:%S%.f").to_string())),
        Type::TIMESTAMPTZ => row
            .try_get::<_, Option<chrono::DateTime<chrono::Utc>>>(i)?
            .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))),
        Type::DATE => row
            .try_get::<_, Option<chrono::NaiveDate>>(i)?
            .map(|d| Value::String(d.format("%Y-%m-%d").to_string())),
        _ => row.try_get::<_, Option<String>>(i)?.map(Value::String),
    }
    .unwrap_or(Value::Null))
}

macro_rules! null_of {
    ($ty:expr, $($t:ty => $($pg:ident)|+),+ $(,)?) => {
        match *$ty {
            $($(Type::$pg)|+ => Box::new(None::<$t>) as Box<dyn ToSql + Sync>,)+
            _ => Box::new(None::<String>),
        }
    };
}

fn integer(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| format!("{n} is not an integer")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an integer")),
        Value::Bool(b) => Ok(i64::from(*b)),
        other => Err(format!("{} is not an integer", kind(other))),
    }
}

fn number(value: &Value) -> Result<f64, String> {
    match value {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a number")),
        other => Err(format!("{} is not a number", kind(other))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A field's value as the statement's parameter type wants it.
fn bind(value: &Value, ty: &Type) -> Result<Box<dyn ToSql + Sync>, String> {
    if value.is_null() && !matches!(*ty, Type::JSON | Type::JSONB) {
        return Ok(null_of!(ty,
            bool => BOOL,
            i16 => INT2,
            i32 => INT4,
            i64 => INT8,
            f32 => FLOAT4,
            f64 => FLOAT8,
            chrono::NaiveDateTime => TIMESTAMP,
            chrono::DateTime<chrono::Utc> => TIMESTAMPTZ,
            chrono::NaiveDate => DATE,
        ));
    }
    let out_of_range = |t: &str| format!("{value} does not fit in a `{t}` column");
    Ok(match *ty {
        Type::BOOL => match value {
            Value::Bool(b) => Box::new(*b),
            Value::String(s) if s == "true" || s == "false" => Box::new(s == "true"),
            other => return Err(format!("{} is not a boolean", kind(other))),
        },
        Type::INT2 => Box::new(i16::try_from(integer(value)?).map_err(|_| out_of_range("int2"))?),
        Type::INT4 => Box::new(i32::try_from(integer(value)?).map_err(|_| out_of_range("int4"))?),
        Type::INT8 => Box::new(integer(value)?),
        Type::FLOAT4 => Box::new(number(value)? as f32),
        Type::FLOAT8 => Box::new(number(value)?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => Box::new(text(value)),
        Type::JSON | Type::JSONB => Box::new(postgres::types::Json(value.clone())),
        Type::TIMESTAMPTZ => {
            let s = text(value);
            let t = chrono::DateTime::parse_from_rfc3339(&s)
                .map_err(|_| format!("{s:?} is not an RFC 3339 timestamp"))?;
            Box::new(t.with_timezone(&chrono::Utc))
        }
        Type::TIMESTAMP => {
            let s = text(value);
            let t = chrono::NaiveDateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f"))
                .map_err(|_| format!("{s:?} is not a timestamp (YYYY-MM-DDTHH:MM:SS)"))?;
            Box::new(t)
        }
        Type::DATE => {
            let s = text(value);
            let d = chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                .map_err(|_| format!("{s:?} is not a date (YYYY-MM-DD)"))?;
            Box::new(d)
        }
        _ => {
            return Err(format!(
                "its column has type `{ty}`, which persist cannot write: cast the parameter in the statement (e.g. `:name::text::{ty}`)"
            ))
        }
    })
}

/// An error's message with its causes: the `postgres` crate's own text is terse ("error
/// connecting to server"); the cause says what happened ("Name or service not known").
fn describe(e: &postgres::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn has_io_cause(e: &postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

fn connect_error(e: &postgres::Error, budget: Duration) -> StageError {
    if let Some(db) = e.as_db_error() {
        return classify_db(db.code(), db.message());
    }
    let message = describe(e);
    let lower = message.to_lowercase();
    if lower.contains("timed out") || lower.contains("timeout") {
        StageError::transient(format!(
            "could not connect within {}: {message}",
            stagewise_core::text::duration(budget)
        ))
        .with_kind(ErrorKind::Timeout)
    } else {
        StageError::transient(format!("could not connect: {message}")).with_kind(ErrorKind::Connect)
    }
}

/// Transient: the connection or the server's state; permanent: the statement or the data;
/// fatal: the credentials (every item would fail alike). Kinds: `timeout` (cancelled at the
/// deadline), `network` (the connection), `invalid_input` (a value the server or the client
/// refuses), `database` (the rest).
pub(crate) fn classify(e: &postgres::Error) -> StageError {
    match e.as_db_error() {
        Some(db) => classify_db(db.code(), db.message()),
        None if e.is_closed() => StageError::transient(format!("connection lost: {}", describe(e)))
            .with_kind(ErrorKind::Network),
        // I/O trouble is the connection's; anything else the client library refuses (a value it
        // cannot encode, a wrong number of parameters) will not change on a retry.
        None if has_io_cause(e) => StageError::transient(describe(e)).with_kind(ErrorKind::Network),
        None => StageError::permanent(describe(e)).with_kind(ErrorKind::InvalidInput),
    }
}

fn classify_db(code: &SqlState, message: &str) -> StageError {
    let text = format!("{message} (SQLSTATE {})", code.code());
    let class = &code.code()[..2];
    if *code == SqlState::QUERY_CANCELED {
        StageError::transient(format!("statement cancelled or timed out: {text}"))
            .with_kind(ErrorKind::Timeout)
    } else if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
    {
        StageError::transient(text).with_kind(ErrorKind::Database)
    } else if class == "08" {
        // Connection exceptions.
        StageError::transient(text).with_kind(ErrorKind::Network)
    } else if matches!(class, "53" | "57" | "58") {
        // Insufficient resources, operator intervention, system errors.
        StageError::transient(text).with_kind(ErrorKind::Database)
    } else if class == "28" {
        StageError::fatal(format!("authentication failed: {text}")).with_kind(ErrorKind::Database)
    } else if matches!(class, "22" | "23") {
        // Data exceptions, integrity constraints: the record's values.
        StageError::permanent(text).with_kind(ErrorKind::InvalidInput)
    } else {
        StageError::permanent(text).with_kind(ErrorKind::Database)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn binds_values_into_the_parameter_types() {
        let ok = [
            (json!(42), Type::INT4),
            (json!("42"), Type::INT4),
            (json!(42.0), Type::INT8),
            (json!(true), Type::BOOL),
            (json!("false"), Type::BOOL),
            (json!(1.5), Type::FLOAT8),
            (json!("1.5"), Type::FLOAT4),
            (json!({"a": [1, 2]}), Type::JSONB),
            (json!(null), Type::JSONB),
            (json!(7), Type::TEXT),
            (json!("2026-12-01T03:20:00Z"), Type::TIMESTAMPTZ),
            (json!("2026-12-01T03:20:00.5"), Type::TIMESTAMP),
            (json!("2026-12-01"), Type::DATE),
            (json!(null), Type::INT4),
        ];
        for (value, ty) in ok {
            assert!(bind(&value, &ty).is_ok(), "{value} into {ty}");
        }
        let bad = [
            (json!(70000), Type::INT2, "does not fit"),
            (json!(1.5), Type::INT4, "not an integer"),
            (json!("x"), Type::INT8, "not an integer"),
            (json!([1]), Type::BOOL, "not a boolean"),
            (json!("yesterday"), Type::TIMESTAMPTZ, "RFC 3339"),
            (json!("1.0"), Type::NUMERIC, "cannot write"),
        ];
        for (value, ty, want) in bad {
            let err = bind(&value, &ty).err().unwrap_or_default();
            assert!(err.contains(want), "{value} into {ty}: {err}");
        }
    }

    #[test]
    fn a_shape_types_the_values_and_knows_its_custom_types() {
        let mood = Type::new(
            "mood".into(),
            90_001,
            postgres::types::Kind::Enum(vec!["calm".into()]),
            "public".into(),
        );
        let cases = [
            (vec![Type::INT8], vec![], false),
            (vec![Type::TEXT], vec![("at", Type::TIMESTAMPTZ)], false),
            (vec![mood.clone()], vec![], true),
            (vec![], vec![("mood", mood.clone())], true),
        ];
        for (params, columns, custom) in cases {
            let shape = Shape {
                params,
                columns: columns.into_iter().map(|(n, t)| (n.into(), t)).collect(),
            };
            assert_eq!(shape.has_custom_types(), custom, "{:?}", shape.params);
        }

        let shape = Shape {
            params: vec![Type::INT8, Type::TEXT],
            columns: Vec::new(),
        };
        let (n, t) = (7_i64, "seven".to_owned());
        let typed = shape
            .typed(&[&n, &t])
            .expect("as many values as parameters");
        let types: Vec<&Type> = typed.iter().map(|(_, ty)| ty).collect();
        assert_eq!(types, [&Type::INT8, &Type::TEXT]);
        let short = shape.typed(&[&n]).err().map(|e| e.message);
        assert_eq!(short.as_deref(), Some("expected 2 parameters but got 1"));
    }

    #[test]
    fn classifies_server_errors() {
        use stagewise_core::stage::ErrorClass::{Fatal, Permanent, Transient};
        let cases = [
            (SqlState::QUERY_CANCELED, Transient),
            (SqlState::T_R_SERIALIZATION_FAILURE, Transient),
            (SqlState::T_R_DEADLOCK_DETECTED, Transient),
            (SqlState::ADMIN_SHUTDOWN, Transient),
            (SqlState::CONNECTION_FAILURE, Transient),
            (SqlState::TOO_MANY_CONNECTIONS, Transient),
            (SqlState::INVALID_PASSWORD, Fatal),
            (SqlState::UNDEFINED_TABLE, Permanent),
            (SqlState::UNDEFINED_COLUMN, Permanent),
            (SqlState::SYNTAX_ERROR, Permanent),
            (SqlState::UNIQUE_VIOLATION, Permanent),
            (SqlState::NOT_NULL_VIOLATION, Permanent),
        ];
        for (code, class) in cases {
            let e = classify_db(&code, "server says no");
            assert_eq!(e.class, class, "{}", code.code());
            assert!(e.message.contains("server says no") && e.message.contains(code.code()));
        }
    }
}
