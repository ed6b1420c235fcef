//! The `[telemetry] listen` server: one plain thread, one connection at a time, so that it needs
//! nothing from the runtime (a frozen runtime still gets its 503) and takes nothing from the
//! pipeline but a look at its counters. Every connection is bounded: its request must arrive
//! within [`REQUEST_TIME`] and fit in [`HEAD_LIMIT`] bytes, its answer is written within
//! [`WRITE_TIME`], and it is closed after one answer. `GET` (and `HEAD`) of `/metrics`,
//! `/healthz` and `/progress`; anything else is a 404 or a 405.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Exposed;

/// How long a client may take to send its request.
const REQUEST_TIME: Duration = Duration::from_secs(2);
/// How long the answer may take to be written.
const WRITE_TIME: Duration = Duration::from_secs(2);
/// The largest request head read.
const HEAD_LIMIT: usize = 8 * 1024;
/// How often the thread looks for a connection (and whether it should end).
const POLL: Duration = Duration::from_millis(25);

/// The running server; dropping it ends its thread.
pub(crate) struct Server {
    address: SocketAddr,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Bind `listen` and serve `exposed` from a thread of its own.
    pub(crate) fn start(listen: SocketAddr, exposed: Arc<Exposed>) -> std::io::Result<Server> {
        let listener = TcpListener::bind(listen)?;
        let address = listener.local_addr()?;
        // Not blocking: the thread looks for connections and for its end in turn.
        listener.set_nonblocking(true)?;
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let thread = std::thread::Builder::new()
            .name("stagewise-metrics".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Err(e) = answer(stream, &exposed) {
                                tracing::debug!(error = %e, "a metrics request was not answered");
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::park_timeout(POLL);
                        }
                        Err(e) => {
                            // Out of file descriptors, say: wait, and try again.
                            tracing::debug!(error = %e, "cannot accept a metrics connection");
                            std::thread::park_timeout(POLL);
                        }
                    }
                }
            })?;
        Ok(Server {
            address,
            done,
            thread: Some(thread),
        })
    }

    /// The address served (the port the system chose, for `:0`).
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Read one request from `stream` and answer it.
fn answer(mut stream: TcpStream, exposed: &Exposed) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIME))?;
    let Some(head) = read_head(&mut stream)? else {
        return respond(&mut stream, 400, "text/plain", "bad request\n", false);
    };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split_ascii_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(&mut stream, 405, "text/plain", "only GET and HEAD\n", false);
    }
    match path {
        "/metrics" => {
            let body = exposed.metrics_text();
            respond(&mut stream, 200, prometheus::TEXT_FORMAT, &body, head_only)
        }
        "/healthz" => {
            let (status, body) = exposed.health();
            respond(&mut stream, status, "text/plain", &body, head_only)
        }
        "/progress" => {
            let body = exposed.progress_json();
            respond(&mut stream, 200, "application/json", &body, head_only)
        }
        _ => respond(
            &mut stream,
            404,
            "text/plain",
            "not found: /metrics, /healthz or /progress\n",
            head_only,
        ),
    }
}

/// The request's head (up to its blank line), read within [`REQUEST_TIME`] whatever pace the
/// client sends at; `None` if it is not one (too long, not text, cut short).
fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let deadline = Instant::now() + REQUEST_TIME;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(String::from_utf8(head).ok());
        }
        if head.len() > HEAD_LIMIT {
            return Ok(None);
        }
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&out)?;
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}
