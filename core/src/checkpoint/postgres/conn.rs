//! Sessions of a PostgreSQL store: their settings, and the one way to call the synchronous
//! client from anywhere, async runtime or not.
//!
//! The `postgres` client runs a runtime of its own: calling it (or dropping it) on an async
//! runtime's thread panics. Every call goes through [`off_runtime`], and every client is
//! wrapped in [`Conn`], whose drop does the same.

use std::time::{Duration, Instant};

use postgres::Client;

use super::super::StoreError;
use crate::pg::{Canceller, PgTarget};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest statement of the store: far above a chunk of the manifest or a batch of updates.
/// Set in each transaction ([`begin`]): a session setting does not survive a pooler that
/// hands each transaction to another server session (PgBouncer in transaction mode).
const STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '60s'";

/// Run `f` where the synchronous client may block: directly off any runtime (a plain or a
/// blocking-pool thread), through `block_in_place` on a multi-threaded runtime's worker, and on
/// a thread of its own on a single-threaded runtime.
pub(super) fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Err(_) => f(),
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| {
            s.spawn(f)
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        }),
    }
}

/// A client that is closed off the async runtime when dropped, and what cancels its statements
/// over the TLS it connected with.
pub(super) struct Conn(Option<Client>, Canceller);

impl Conn {
    /// The client (there until drop).
    pub(super) fn client(&mut self) -> &mut Client {
        self.0.as_mut().expect("the client is only taken by drop")
    }

    /// Let go of a session the server ended: the next call connects again.
    fn close(&mut self) {
        if let Some(client) = self.0.take() {
            off_runtime(move || drop(client));
        }
    }

    /// Whether the server ended the session.
    pub(super) fn is_closed(&self) -> bool {
        self.0.as_ref().is_none_or(Client::is_closed)
    }

    /// What cancels the session's statement in progress, from any thread.
    pub(super) fn cancel_token(&self) -> Canceller {
        self.1.clone()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            off_runtime(move || drop(client));
        }
    }
}

/// The text of a client error: the server's message, or the client's with its causes.
pub(super) fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A client error as a store error.
pub(super) fn db(e: postgres::Error) -> StoreError {
    if session_ended(&e) {
        StoreError::Lost(describe(&e))
    } else {
        StoreError::Db(describe(&e))
    }
}

/// The connection settings of every session of the store, TLS included (`sslmode`,
/// `sslrootcert`; see [`crate::pg`]).
pub(super) fn config(url: &str) -> Result<PgTarget, StoreError> {
    let mut config = PgTarget::new(url).map_err(|e| match e {
        crate::pg::PgError::Invalid { .. } => StoreError::Db(e.to_string()),
        crate::pg::PgError::RootCert(_) => StoreError::Db(format!(
            "cannot connect to {}: {e}",
            crate::text::redact_url(url)
        )),
    })?;
    config
        .application_name("stagewise/checkpoint")
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    Ok(config)
}

/// Connect with `config`, waiting at most [`CONNECT_TIMEOUT`] for the whole of it: the client's
/// own timeout bounds only the TCP connect, and a server that takes the connection and never
/// answers would hold the caller for ever. `None` when it did not answer in time; the attempt
/// is left to its thread, which ends when the server answers or the process does.
fn bounded(config: &PgTarget) -> Option<Result<Client, postgres::Error>> {
    let config = config.clone();
    let (sent, answer) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("stagewise-connect".into())
        .spawn(move || {
            let _ = sent.send(config.connect());
        })
        .ok()?;
    answer.recv_timeout(CONNECT_TIMEOUT).ok()
}

/// A session of the store, connected with `config`; `shown` is the redacted URL for messages.
pub(super) fn connect(config: &PgTarget, shown: &str) -> Result<Conn, StoreError> {
    // The client's messages never carry the password; the URL is shown redacted. A certificate
    // refused or a server without TLS is said in words (the client's are terse).
    let failed = |e: postgres::Error| {
        if let Some(why) = config.tls_failure(&e) {
            return StoreError::Db(format!("cannot connect to {shown}: {why}"));
        }
        let why = format!("cannot connect to {shown}: {}", describe(&e));
        if outage(e.as_db_error().map(|d| d.code().code())) {
            StoreError::Lost(why)
        } else {
            StoreError::Db(why)
        }
    };
    let client = match bounded(config) {
        Some(connected) => connected.map_err(failed)?,
        None => {
            return Err(StoreError::Lost(format!(
                "cannot connect to {shown}: the server did not answer within {}",
                crate::text::duration(CONNECT_TIMEOUT)
            )))
        }
    };
    let canceller = config.canceller(&client);
    Ok(Conn(Some(client), canceller))
}

/// Begin a transaction whose statements are bounded by [`STATEMENT_TIMEOUT`]: a statement stuck
/// behind a lock or a hung server fails (progress saved up to the last commit) instead of
/// holding the run past every deadline.
///
/// Every statement of the store runs in one: under a transaction-mode pooler, a statement the
/// client prepares and then runs is only sure to find its server session within a transaction,
/// and only `SET LOCAL` reaches the statements it is meant for. (Call it off the runtime.)
pub(in crate::checkpoint) fn begin(
    client: &mut Client,
) -> Result<postgres::Transaction<'_>, postgres::Error> {
    let mut tx = client.transaction()?;
    let idle = IDLE_IN_TRANSACTION_MS.load(std::sync::atomic::Ordering::Relaxed);
    tx.batch_execute(&format!(
        "{STATEMENT_TIMEOUT}; SET LOCAL idle_in_transaction_session_timeout = {idle}"
    ))?;
    Ok(tx)
}

/// How long a transaction of the store may sit idle, waiting for its client's next statement,
/// before the server ends its session (rolling it back): its statements follow one another at
/// once, so only a client stopped (SIGSTOP, a frozen VM) or cut off sits there, holding the
/// rows it locked — items other runners must take over once its lease ends. Half the lease of
/// this process's runner ([`set_idle_limit`]); a minute before it registers.
static IDLE_IN_TRANSACTION_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(60_000);

/// Bound every transaction's idle wait by half of `ttl`, this process's runner's lease (see
/// [`begin`]).
pub(in crate::checkpoint) fn set_idle_limit(ttl: Duration) {
    let ms = u64::try_from((ttl / 2).as_millis())
        .unwrap_or(u64::MAX)
        .max(100);
    IDLE_IN_TRANSACTION_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// Whether a connection refused with SQLSTATE `code` (`None`: no answer from a server at all:
/// refused, reset) is an outage, which may end: the server shutting down or starting up
/// (class 57), or out of a resource (class 53: its connection slots all taken, say). A password
/// refused or a database missing is not.
fn outage(code: Option<&str>) -> bool {
    code.is_none_or(|code| code.starts_with("57") || code.starts_with("53"))
}

/// [`connect`], trying again for [`RECONNECTING`] while the server is out of reach (restarting,
/// failing over): for the sessions a run opens once it has begun, when the store is known to be
/// there.
pub(super) fn connect_again(config: &PgTarget, shown: &str) -> Result<Conn, StoreError> {
    let until = Instant::now() + RECONNECTING;
    let mut pause = Duration::from_millis(100);
    loop {
        match connect(config, shown) {
            Err(StoreError::Lost(why)) if Instant::now() + pause < until => {
                tracing::debug!(store = %shown, error = %why, "cannot connect to the checkpoint store; trying again");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// How long a call keeps reconnecting to a server that ended its session (a restart, a
/// failover, a pooler's restart) before it fails.
pub(crate) const RECONNECTING: Duration = Duration::from_secs(10);

/// What a call on a session of the store came to, when not its result.
pub(super) enum Failed {
    /// The server's answer (or the client's error) to the statements themselves.
    Statement(postgres::Error),
    /// No session could be had again within [`RECONNECTING`], or by `until`.
    Session(StoreError),
}

impl From<Failed> for StoreError {
    fn from(failed: Failed) -> Self {
        match failed {
            Failed::Statement(e) => db(e),
            Failed::Session(e) => e,
        }
    }
}

/// Run `f` on `conn`'s client, off the runtime. A session the server ended (a restart,
/// `pg_terminate_backend`, an idle timeout, a pooler's restart) is opened again — before `f`,
/// or after `f` failed on it — and `f` run again, with pauses from 100 ms to 2 s, for at most
/// [`RECONNECTING`] and never past `until`: the store's sessions hold no state of their own,
/// and a transaction cut off with its session was rolled back, so `f` must only be safe to run
/// again after a rollback (a claim, for one, finds the items an earlier try of it committed).
pub(super) fn on_session<R: Send>(
    conn: &mut Conn,
    (config, shown): (&PgTarget, &str),
    until: Option<Instant>,
    f: impl Fn(&mut Client) -> Result<R, postgres::Error> + Send + Sync,
) -> Result<R, Failed> {
    let until = until.map_or(Instant::now() + RECONNECTING, |u| {
        u.min(Instant::now() + RECONNECTING)
    });
    let mut pause = Duration::from_millis(100);
    loop {
        let error = match conn.reopen_if_closed(config, shown) {
            Err(e) => Failed::Session(e),
            Ok(()) => {
                let client = conn.client();
                match off_runtime(|| f(client)) {
                    Ok(r) => return Ok(r),
                    Err(e) if session_ended(&e) => {
                        conn.close();
                        Failed::Statement(e)
                    }
                    Err(e) => return Err(Failed::Statement(e)),
                }
            }
        };
        if Instant::now() + pause >= until {
            return Err(error);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Run `f` in a transaction of its own ([`begin`]) on `conn` and commit it (see
/// [`on_session`]).
pub(super) fn in_transaction<R: Send>(
    conn: &mut Conn,
    target: (&PgTarget, &str),
    f: impl Fn(&mut postgres::Transaction<'_>) -> Result<R, postgres::Error> + Send + Sync,
) -> Result<R, StoreError> {
    on_session(conn, target, None, |client| {
        let mut tx = begin(client)?;
        let r = f(&mut tx)?;
        tx.commit()?;
        Ok(r)
    })
    .map_err(StoreError::from)
}

/// Whether `e` says the session is gone, its transaction rolled back: closed, cut off (an
/// error that is not the server's answer to a statement: a reset, a broken pipe), or ended by
/// the server (`FATAL`, such as "terminating connection due to administrator command").
pub(super) fn session_ended(e: &postgres::Error) -> bool {
    match e.as_db_error() {
        Some(d) => d.severity() == "FATAL",
        None => e.code().is_none(),
    }
}

impl Conn {
    /// Connect again if the server ended the session (a restart, `pg_terminate_backend`, an
    /// idle timeout, a pooler's restart): the store's sessions hold no state of their own.
    pub(super) fn reopen_if_closed(
        &mut self,
        config: &PgTarget,
        shown: &str,
    ) -> Result<(), StoreError> {
        if self.is_closed() {
            *self = connect(config, shown)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::outage;

    #[test]
    fn a_server_out_of_reach_or_of_slots_is_an_outage_a_refusal_is_not() {
        // No server's answer (refused, reset); shutting down, starting up; too many clients,
        // out of memory or disk.
        for code in [
            None,
            Some("57P01"),
            Some("57P03"),
            Some("53300"),
            Some("53200"),
        ] {
            assert!(outage(code), "{code:?}");
        }
        // A password refused, a database or role missing, a bad parameter.
        for code in ["28P01", "3D000", "28000", "22023"] {
            assert!(!outage(Some(code)), "{code}");
        }
    }
}
