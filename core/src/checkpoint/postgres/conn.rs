//! Sessions of a PostgreSQL store: their settings, and the one way to call the synchronous
//! client from anywhere, async runtime or not.
//!
//! The `postgres` client runs a runtime of its own: calling it (or dropping it) on an async
//! runtime's thread panics. Every call goes through [`off_runtime`], and every client is
//! wrapped in [`Conn`], whose drop does the same.

use std::time::Duration;

use postgres::Client;

use super::super::StoreError;
use crate::pg::{Canceller, PgTarget};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest statement of the store: far above a chunk of the manifest or a batch of updates.
const STATEMENT_TIMEOUT: &str = "SET statement_timeout = '60s'";

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
    StoreError::Db(describe(&e))
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

/// A session of the store: connected with `config`, statements bounded by
/// [`STATEMENT_TIMEOUT`]; `shown` is the redacted URL for messages.
pub(super) fn connect(config: &PgTarget, shown: &str) -> Result<Conn, StoreError> {
    // The client's messages never carry the password; the URL is shown redacted. A certificate
    // refused or a server without TLS is said in words (the client's are terse).
    let failed = |e: postgres::Error| {
        let why = config.tls_failure(&e).unwrap_or_else(|| describe(&e));
        StoreError::Db(format!("cannot connect to {shown}: {why}"))
    };
    let mut client = match bounded(config) {
        Some(connected) => connected.map_err(failed)?,
        None => {
            return Err(StoreError::Db(format!(
                "cannot connect to {shown}: the server did not answer within {}",
                crate::text::duration(CONNECT_TIMEOUT)
            )))
        }
    };
    // A statement stuck behind a lock or a hung server fails the run (progress saved up to the
    // last commit) instead of holding it past every deadline.
    off_runtime(|| client.batch_execute(STATEMENT_TIMEOUT)).map_err(failed)?;
    let canceller = config.canceller(&client);
    Ok(Conn(Some(client), canceller))
}
