//! A PostgreSQL session for the stages' blocking threads: `tokio-postgres`'s client, driven on a
//! runtime of its own by each call (as the `postgres` crate drives it), and a cancel request
//! that a pooler passes on.
//!
//! Why not the `postgres` crate: its cancel request closes its connection as soon as the request
//! is written. PostgreSQL acts on it at once, but PgBouncer first opens a connection of its own
//! to the server to pass it on, and drops a request whose client has gone by then: behind
//! PgBouncer no statement was ever cancelled. Here the request's connection stays open until the
//! other side closes it, as libpq's does. That takes the client's own cancel token, which the
//! `postgres` crate keeps to itself.
//!
//! Every method blocks: call them on a blocking thread, and drop a session there too (dropping a
//! runtime inside another one panics).

use std::future::{poll_fn, Future};
use std::io::{self, Read};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{BorrowToSql, ToSql, Type};
use tokio_postgres::{
    Client, Config, Error, Row, RowStream, SimpleQueryMessage, Socket, Statement,
};

/// Longest a session's goodbye (`Terminate`, then closing) may take when it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The runtime a session runs on: one thread, the caller's, driving its I/O only while a call
/// waits.
///
/// # Errors
///
/// When the operating system refuses its I/O driver (out of file descriptors).
pub(crate) fn runtime() -> io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// A statement's parameter: its value, and the type the statement takes it as.
pub(crate) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// A statement to run and its parameters.
pub(crate) type Call<'a> = (&'a str, &'a [Param<'a>]);

/// A connected session.
pub(crate) struct Session {
    /// None only while it is dropped.
    client: Option<Client>,
    /// The task that reads and writes the socket; it ends when the client is dropped.
    connection: JoinHandle<()>,
    runtime: Runtime,
    cancel: CancelTarget,
}

impl Session {
    /// Connect to the server `config` names, on `runtime`.
    ///
    /// # Errors
    ///
    /// The client's, as `config.connect` gives them.
    pub(crate) fn connect<T>(runtime: Runtime, config: &Config, tls: T) -> Result<Session, Error>
    where
        T: MakeTlsConnect<Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = runtime.block_on(config.connect(tls))?;
        let connection = runtime.spawn(async move {
            // The client sees the connection's end (`is_closed`) and its calls fail with why.
            let _ = connection.await;
        });
        Ok(Session {
            client: Some(client),
            connection,
            runtime,
            cancel: CancelTarget::of(config),
        })
    }

    fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the client is taken only when the session drops")
    }

    pub(crate) fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        self.runtime.block_on(self.client().batch_execute(sql))
    }

    pub(crate) fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        self.runtime.block_on(self.client().simple_query(sql))
    }

    /// A named prepared statement; dropping it closes it on the server, after whatever was sent
    /// before and ahead of whatever is sent after.
    pub(crate) fn prepare(&mut self, sql: &str) -> Result<Statement, Error> {
        self.runtime.block_on(self.client().prepare(sql))
    }

    /// Run each call's SQL as an unnamed statement with its parameters (one round trip for a
    /// prepared statement's execution), all sent together without waiting for each other's
    /// answers (pipelined: one round trip for them all). Each is sent whatever the answers
    /// before it; the server skips those after a failed one when they share a transaction. The
    /// first error, in order.
    pub(crate) fn execute_all(&mut self, calls: &[Call<'_>]) -> Result<(), Error> {
        let client = self.client();
        let mut calls: Vec<_> = calls
            .iter()
            .map(|(sql, params)| Box::pin(client.execute_typed(sql, params)))
            .collect();
        let mut results: Vec<Option<Result<u64, Error>>> = calls.iter().map(|_| None).collect();
        // Polled in order: each call's request is sent at its first poll, so they go out in
        // the order given.
        self.runtime.block_on(poll_fn(|cx| {
            let mut pending = false;
            for (call, result) in calls.iter_mut().zip(results.iter_mut()) {
                if result.is_none() {
                    match call.as_mut().poll(cx) {
                        Poll::Ready(r) => *result = Some(r),
                        Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        }));
        results
            .into_iter()
            .flatten()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Run `sql` as an unnamed statement with parameters of the given types; its rows, read as
    /// they arrive. Dropping them before the end leaves the rest to arrive and be discarded.
    pub(crate) fn query_typed_raw<P, I>(&mut self, sql: &str, params: I) -> Result<Rows<'_>, Error>
    where
        P: BorrowToSql,
        I: IntoIterator<Item = (P, Type)>,
    {
        let stream = self
            .runtime
            .block_on(self.client().query_typed_raw(sql, params))?;
        Ok(Rows {
            runtime: &self.runtime,
            stream: Box::pin(stream),
        })
    }

    /// Whether the connection has ended (noticed at a call).
    pub(crate) fn is_closed(&self) -> bool {
        self.client().is_closed()
    }

    /// What another thread needs to cancel this session's running statement; its request
    /// waits at most `timeout` to connect, and as long again to be taken.
    pub(crate) fn cancel_token(&self, timeout: Duration) -> CancelToken {
        CancelToken {
            token: self.client().cancel_token(),
            target: self.cancel.clone(),
            timeout,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Without its client the connection says goodbye to the server and ends: give it a
        // moment to, rather than drop the socket under it.
        drop(self.client.take());
        let connection = &mut self.connection;
        let _ = self
            .runtime
            .block_on(async { tokio::time::timeout(CLOSE_TIMEOUT, connection).await });
    }
}

/// A statement's rows, read one at a time.
pub(crate) struct Rows<'a> {
    runtime: &'a Runtime,
    stream: Pin<Box<RowStream>>,
}

impl Rows<'_> {
    /// The next row; None after the last.
    pub(crate) fn next(&mut self) -> Result<Option<Row>, Error> {
        let stream = &mut self.stream;
        self.runtime
            .block_on(poll_fn(|cx| stream.as_mut().poll_next(cx)))
            .transpose()
    }
}

/// Where a session's cancel request goes: where the session connected, the first host of its
/// configuration (the one the connection probe checks).
#[derive(Clone)]
enum CancelTarget {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl CancelTarget {
    fn of(config: &Config) -> CancelTarget {
        let port = config.get_ports().first().copied().unwrap_or(5432);
        if let Some(addr) = config.get_hostaddrs().first() {
            return CancelTarget::Tcp {
                host: addr.to_string(),
                port,
            };
        }
        match config.get_hosts().first() {
            Some(Host::Unix(dir)) => CancelTarget::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            Some(Host::Tcp(host)) => CancelTarget::Tcp {
                host: host.clone(),
                port,
            },
            None => CancelTarget::Tcp {
                host: "localhost".into(),
                port,
            },
        }
    }
}

/// The capability to cancel a session's running statement, from another thread.
#[derive(Clone)]
pub(crate) struct CancelToken {
    token: tokio_postgres::CancelToken,
    target: CancelTarget,
    timeout: Duration,
}

impl CancelToken {
    /// Ask the server to cancel the session's running statement, if any; wait at most the
    /// token's timeout to connect, and as long again for the other side to close the
    /// connection, which it does once it has acted on the request (or passed it on). As with
    /// any cancel request, nothing says whether a statement was cancelled.
    ///
    /// # Errors
    ///
    /// When the request could not be sent (no connection, a failed TLS handshake).
    pub(crate) fn cancel_query<T>(&self, mut tls: T) -> Result<(), CancelError>
    where
        T: MakeTlsConnect<Lingering>,
    {
        let timeout = self.timeout;
        // A second handle on the socket keeps it open after the client has written its
        // request and dropped its own: closing first would make a pooler drop the request.
        let (socket, mut kept, domain) = match &self.target {
            CancelTarget::Tcp { host, port } => {
                let socket = connect_tcp(host, *port, timeout)?;
                let kept = socket.try_clone()?;
                kept.set_read_timeout(Some(timeout))?;
                (Opened::Tcp(socket), Kept::Tcp(kept), host.as_str())
            }
            CancelTarget::Unix(path) => {
                let socket = std::os::unix::net::UnixStream::connect(path)?;
                let kept = socket.try_clone()?;
                kept.set_read_timeout(Some(timeout))?;
                (Opened::Unix(socket), Kept::Unix(kept), "")
            }
        };
        let tls = tls
            .make_tls_connect(domain)
            .map_err(|e| CancelError::Tls(e.into()))?;
        let runtime = runtime()?;
        runtime.block_on(async {
            let stream = match socket {
                Opened::Tcp(s) => {
                    s.set_nonblocking(true)?;
                    Lingering::Tcp(tokio::net::TcpStream::from_std(s)?)
                }
                Opened::Unix(s) => {
                    s.set_nonblocking(true)?;
                    Lingering::Unix(tokio::net::UnixStream::from_std(s)?)
                }
            };
            self.token
                .cancel_query_raw(stream, tls)
                .await
                .map_err(CancelError::Client)
        })?;
        // The other side closes the connection once it has acted on the request. (Blocking
        // again: the two handles share the socket's flags, and the runtime's was non-blocking.)
        let mut rest = Vec::new();
        let _ = match &mut kept {
            Kept::Tcp(s) => s
                .set_nonblocking(false)
                .and_then(|()| s.read_to_end(&mut rest)),
            Kept::Unix(s) => s
                .set_nonblocking(false)
                .and_then(|()| s.read_to_end(&mut rest)),
        };
        Ok(())
    }
}

/// Connect to `host:port` within `timeout`, trying each of its addresses in turn.
fn connect_tcp(host: &str, port: u16, timeout: Duration) -> io::Result<std::net::TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("`{host}` has no address"));
    for addr in (host, port).to_socket_addrs()? {
        match std::net::TcpStream::connect_timeout(&addr, timeout) {
            Ok(socket) => return Ok(socket),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A cancel request's socket before the runtime takes it.
enum Opened {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// The second handle on a cancel request's socket.
enum Kept {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// Why a cancel request could not be sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CancelError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("TLS: {0}")]
    Tls(Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    Client(Error),
}

/// The connection of a cancel request: it does not close when the client says it is done
/// writing (`shutdown`), only when it is dropped.
pub(crate) enum Lingering {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Lingering::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Lingering::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Lingering::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Lingering::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Lingering::Tcp(s) => Pin::new(s).poll_flush(cx),
            Lingering::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
