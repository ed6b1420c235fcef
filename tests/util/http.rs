//! A real HTTP/1.1 server on 127.0.0.1 (or another loopback address) for the `http-download` tests, able to misbehave on
//! purpose: it answers slowly, never, wrongly, or with more than asked for.
//!
//! It is deliberately hand-written on `std::net` (a thread per connection, one request per
//! connection, every response written byte by byte here) because the interesting cases are the
//! ones a proper server library refuses to produce: a response that never comes, headers
//! followed by a byte every 3 s, a 50 MB body the client is expected to stop reading. The
//! server logs every request with the moment it arrived, counts hits per path, and counts the
//! body bytes of the big responses the client really accepted, so a test can assert what the
//! client did, not only what it reported. Dropping the server shuts every socket down and joins
//! every thread.
//!
//! Routes:
//!
//! | path | answer |
//! |---|---|
//! | `/page` | 200 `text/html; charset=utf-8`, [`PAGE`] |
//! | `/redirect/N` | 302 to `/redirect/N-1`; `/redirect/0` → 302 to `/page` |
//! | `/goto?URL` | 302 to `URL`, as it is |
//! | `/loop/a`, `/loop/b` | 302 to each other |
//! | `/missing` | 404 |
//! | `/flaky/ID` | 500 the first time for each ID, then [`PAGE`] |
//! | `/ratelimited/ID` | 429 with `Retry-After: 2` the first time for each ID, then [`PAGE`] |
//! | `/always-429/ID` | 429 with `Retry-After: 300`, every time |
//! | `/slow/ID` | [`PAGE`] after [`SLOW_PAGE`] |
//! | `/silent` | reads the request and never answers |
//! | `/drip` | status line and headers at once, then a body byte every [`DRIP_EVERY`] |
//! | `/drip-head` | the status line at once, then a header byte every [`DRIP_EVERY`] |
//! | `/big` | 200 with a [`BIG`]-byte body and its `Content-Length` |
//! | `/big-undeclared` | the same body, chunked, with no length |
//! | `/gzip` | [`GZIP_TEXT`] with `Content-Encoding: gzip` |
//! | `/latin1` | `text/html` without a charset; ISO-8859-1 bytes and a `<meta charset>` |
//! | `/pdf` | 200 `application/pdf`, binary |
//! | anything else | 404 |

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The article `/page` (and the second answers of `/flaky` and `/ratelimited`) serve.
pub const PAGE: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Pipelines that do not die</title></head>\n<body><article><h1>Pipelines that do not die</h1>\n<p>A batch runner must bound every wait, na\u{ef}vely or not.</p></article></body></html>\n";

/// The text `/gzip` compresses.
pub const GZIP_TEXT: &str = "<html><body><p>compressed greetings from the gzip route, decoded by the client</p></body></html>";

/// Size of the bodies of `/big` and `/big-undeclared`: 50 MB.
pub const BIG: u64 = 50 * 1024 * 1024;

/// How long `/slow/ID` takes to answer.
pub const SLOW_PAGE: Duration = Duration::from_millis(100);

/// How often `/drip` and `/drip-head` send their next byte.
pub const DRIP_EVERY: Duration = Duration::from_secs(3);

/// Longest a request's head may be; anything longer is answered 431.
const MAX_HEAD: usize = 64 * 1024;

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// When its head had been read.
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Body bytes of one big response that the client accepted, and whether the response ended
/// (fully sent, or the client went away).
#[derive(Debug, Clone, Copy, Default)]
struct Written {
    bytes: u64,
    finished: bool,
}

#[derive(Default)]
struct State {
    stop: AtomicBool,
    requests: Mutex<Vec<Request>>,
    written: Mutex<HashMap<String, Written>>,
    /// A clone of every accepted socket, shut down on drop to wake the handlers.
    sockets: Mutex<Vec<TcpStream>>,
    handlers: Mutex<Vec<JoinHandle<()>>>,
}

/// Locks a mutex even if a handler panicked while holding it: the data (logs, counters) stays
/// meaningful, and a second panic would hide the first.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The server; stopped when dropped.
pub struct Server {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts listening on an ephemeral port of 127.0.0.1.
    pub fn start() -> Server {
        Server::start_at("127.0.0.1:0").expect("bind 127.0.0.1:0")
    }

    /// Starts listening on `addr` (a loopback address and a port, 0 for any); an error if it
    /// cannot be bound (the port is taken).
    pub fn start_at(addr: &str) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let acceptor = thread::Builder::new()
            .name("http-test-accept".into())
            .spawn(move || accept(&listener, &shared))
            .expect("spawn the accept thread");
        Ok(Server {
            addr,
            state,
            acceptor: Some(acceptor),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://ADDRESS:PORT{path}` (`http://127.0.0.1:PORT{path}` for [`Server::start`]).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state.requests).clone()
    }

    /// The requests for exactly `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// How many requests asked for exactly `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.requests_to(path).len()
    }

    /// Body bytes of the big response at `path` that the client accepted before it went away,
    /// once that response has ended. Panics if it was never requested or is still being
    /// written after `within` (the client neither read it nor closed the connection).
    pub fn body_bytes_written(&self, path: &str, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let written = lock(&self.state.written).get(path).copied();
            match written {
                Some(w) if w.finished => return w.bytes,
                _ if Instant::now() >= deadline => {
                    panic!("the response to {path} has not ended after {within:?}: {written:?}")
                }
                _ => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own; the loop sees `stop` and ends.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Wakes handlers blocked reading or writing (`/silent`, a full `/big`).
        for socket in lock(&self.state.sockets).drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        let handlers: Vec<_> = lock(&self.state.handlers).drain(..).collect();
        for handler in handlers {
            let _ = handler.join();
        }
    }
}

fn accept(listener: &TcpListener, state: &Arc<State>) {
    for stream in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        if let Ok(clone) = stream.try_clone() {
            lock(&state.sockets).push(clone);
        }
        let shared = Arc::clone(state);
        let handler = thread::Builder::new()
            .name("http-test-conn".into())
            .spawn(move || {
                // A client that hangs up mid-response is one of the cases under test: the
                // handler just ends.
                let _ = serve(stream, &shared);
            })
            .expect("spawn a connection thread");
        lock(&state.handlers).push(handler);
    }
}

/// Reads the request head (up to the blank line); `None` if the client went away first.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Ok(Some(head));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(Some(head))
}

fn parse(head: &[u8]) -> Request {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Request {
        method,
        path,
        headers,
        at: Instant::now(),
    }
}

fn serve(mut stream: TcpStream, state: &State) -> io::Result<()> {
    let Some(head) = read_head(&mut stream)? else {
        return Ok(());
    };
    if head.len() > MAX_HEAD {
        return respond(
            &mut stream,
            431,
            "text/plain",
            &[],
            b"request head too large",
        );
    }
    let request = parse(&head);
    let path = request.path.clone();
    // Hits for this path before this one: decides the first-time-only routes.
    let earlier = {
        let mut requests = lock(&state.requests);
        let earlier = requests.iter().filter(|r| r.path == path).count();
        requests.push(request);
        earlier
    };
    let html = "text/html; charset=utf-8";
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        _ if path.starts_with("/goto?") => redirect(&mut stream, &path["/goto?".len()..]),
        ["page"] => respond(&mut stream, 200, html, &[], PAGE.as_bytes()),
        ["redirect", n] => match n.parse::<u32>() {
            Ok(0) => redirect(&mut stream, "/page"),
            Ok(n) => redirect(&mut stream, &format!("/redirect/{}", n - 1)),
            Err(_) => respond(&mut stream, 400, "text/plain", &[], b"bad redirect count"),
        },
        ["loop", "a"] => redirect(&mut stream, "/loop/b"),
        ["loop", "b"] => redirect(&mut stream, "/loop/a"),
        ["flaky", _] if earlier == 0 => {
            respond(&mut stream, 500, "text/plain", &[], b"try again")
        }
        ["ratelimited", _] if earlier == 0 => respond(
            &mut stream,
            429,
            "text/plain",
            &[("Retry-After", "2")],
            b"slow down",
        ),
        ["flaky" | "ratelimited", _] => respond(&mut stream, 200, html, &[], PAGE.as_bytes()),
        ["always-429", _] => respond(
            &mut stream,
            429,
            "text/plain",
            &[("Retry-After", "300")],
            b"go away",
        ),
        ["slow", _] => {
            thread::sleep(SLOW_PAGE);
            respond(&mut stream, 200, html, &[], PAGE.as_bytes())
        }
        ["silent"] => silent(&mut stream, state),
        ["drip"] => {
            stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n",
            )?;
            drip(&mut stream, state, b'x')
        }
        ["drip-head"] => {
            stream.write_all(b"HTTP/1.1 200 OK\r\n")?;
            drip(&mut stream, state, b'X')
        }
        ["big"] => big(&mut stream, state, &path, true),
        ["big-undeclared"] => big(&mut stream, state, &path, false),
        ["gzip"] => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(GZIP_TEXT.as_bytes())?;
            let body = encoder.finish()?;
            respond(
                &mut stream,
                200,
                html,
                &[("Content-Encoding", "gzip")],
                &body,
            )
        }
        ["latin1"] => respond(
            &mut stream,
            200,
            "text/html",
            &[],
            b"<html><head><meta charset=\"iso-8859-1\"><title>Caf\xe9</title></head><body><p>Caf\xe9 M\xfcller serves cr\xe8me br\xfbl\xe9e</p></body></html>",
        ),
        ["pdf"] => respond(
            &mut stream,
            200,
            "application/pdf",
            &[],
            b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n\x00\x01\x02\xff%%EOF\n",
        ),
        _ => respond(&mut stream, 404, "text/plain", &[], b"no such page"),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Whatever",
    }
}

/// A complete response with a `Content-Length`, on a connection that closes after it.
fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn redirect(stream: &mut TcpStream, to: &str) -> io::Result<()> {
    respond(
        stream,
        302,
        "text/plain",
        &[("Location", to)],
        b"moved along",
    )
}

/// Keeps the connection open without a word until the client hangs up or the server stops.
fn silent(stream: &mut TcpStream, state: &State) -> io::Result<()> {
    // A short read timeout only to look at `stop` now and then; the client sees nothing.
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = [0u8; 1024];
    while !state.stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `byte` every [`DRIP_EVERY`] until the client hangs up or the server stops.
fn drip(stream: &mut TcpStream, state: &State, byte: u8) -> io::Result<()> {
    loop {
        let next = Instant::now() + DRIP_EVERY;
        while Instant::now() < next {
            if state.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        stream.write_all(&[byte])?;
        stream.flush()?;
    }
}

/// [`BIG`] bytes of text in 64 KiB writes, counting what the client accepted.
fn big(stream: &mut TcpStream, state: &State, path: &str, declared: bool) -> io::Result<()> {
    lock(&state.written).insert(path.to_owned(), Written::default());
    let result = big_body(stream, state, path, declared);
    if let Some(w) = lock(&state.written).get_mut(path) {
        w.finished = true;
    }
    result
}

fn big_body(stream: &mut TcpStream, state: &State, path: &str, declared: bool) -> io::Result<()> {
    let framing = if declared {
        format!("Content-Length: {BIG}")
    } else {
        "Transfer-Encoding: chunked".to_owned()
    };
    stream.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n{framing}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0u64;
    while sent < BIG {
        if state.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let n = chunk
            .len()
            .min(usize::try_from(BIG - sent).unwrap_or(usize::MAX));
        if declared {
            stream.write_all(&chunk[..n])?;
        } else {
            stream.write_all(format!("{n:x}\r\n").as_bytes())?;
            stream.write_all(&chunk[..n])?;
            stream.write_all(b"\r\n")?;
        }
        sent += n as u64;
        if let Some(w) = lock(&state.written).get_mut(path) {
            w.bytes = sent;
        }
    }
    if !declared {
        stream.write_all(b"0\r\n\r\n")?;
    }
    stream.flush()
}

// ---------------------------------------------------------------------------------------------
// The fault campaign's routes (tests/campaign_fault.rs)
//
// [`Server::start_campaign`] serves every route above, plus these, each keyed by an item's
// `ID` so that a test can tell its items' requests apart:
//
// | path | answer |
// |---|---|
// | `/article/ID` | 200 `text/html; charset=utf-8`, [`article`]`(ID)` |
// | `/once-500/ID` | 500 the first time for each ID, then the article |
// | `/once-429/ID` | 429 with `Retry-After: 1` the first time for each ID, then the article |
// | `/always-503/ID` | 503 without `Retry-After`, every time |
// | `/trickle/ID` | status line and headers at once, then a body byte every [`TRICKLE_EVERY`]: never a pause long enough for a read timeout, never the end |
// | `/reset/ID` | the request is left unread and the connection closed: the client gets a reset |
// | `/reset-body/ID` | status line, headers and part of the body, then a reset |
// | `/enc/bad-utf8/ID` | the article, declared UTF-8, with invalid UTF-8 byte sequences in its text |
// | `/enc/latin1-bare/ID` | the article in ISO-8859-1, with no charset in the header nor the page |
// | `/enc/unknown-charset/ID` | the article, the header naming a charset that does not exist |
// | `/enc/bad-gzip/ID` | `Content-Encoding: gzip` on a body that is not gzip |
// | `/enc/{deflate,br,x-unknown}/ID` | the article, the header naming an encoding it is not in |

/// How often `/trickle/ID` sends its next byte.
pub const TRICKLE_EVERY: Duration = Duration::from_millis(100);

/// The article the campaign's routes serve for item `id`: a page with a title, a byline and
/// enough text for `extract` (well over its 200 characters), naming the item.
pub fn article(id: &str) -> String {
    article_with(id, "Caf\u{e9} owners")
}

fn article_with(id: &str, who: &str) -> String {
    let paragraphs: String = (1..=4)
        .map(|n| {
            format!(
                "<p>Paragraph {n} of item {id}: the council of the town approved a budget of {n}.2 \
                 million euros on 3 March 2026, by 7 votes to 2. {who} and residents spoke before \
                 the vote; work on the bridge starts in May and ends next year.</p>\n"
            )
        })
        .collect();
    format!(
        "<!doctype html>\n<html><head><title>Budget vote {id}</title></head>\n<body><article>\
         <h1>Budget vote {id}</h1>\n<p class=\"byline\">By A. Reporter</p>\n{paragraphs}\
         </article></body></html>\n"
    )
}

impl Server {
    /// Starts listening on an ephemeral port of 127.0.0.1, serving the campaign's routes (see
    /// the table above) besides every other.
    pub fn start_campaign() -> Server {
        Server::start_campaign_at("127.0.0.1:0")
    }

    /// As [`Server::start_campaign`], on `addr` (a loopback address and a port, 0 for any).
    pub fn start_campaign_at(addr: &str) -> Server {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().expect("listener address");
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let acceptor = thread::Builder::new()
            .name("http-test-accept".into())
            .spawn(move || accept_campaign(&listener, &shared))
            .expect("spawn the accept thread");
        Server {
            addr,
            state,
            acceptor: Some(acceptor),
        }
    }
}

fn accept_campaign(listener: &TcpListener, state: &Arc<State>) {
    for stream in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(state);
        let handler = thread::Builder::new()
            .name("http-test-conn".into())
            .spawn(move || {
                let _ = serve_campaign(stream, &shared);
            })
            .expect("spawn a connection thread");
        lock(&state.handlers).push(handler);
    }
}

/// The request's first line, peeked (left unread): `None` if the client sent none in time.
fn peek_first_line(stream: &TcpStream) -> io::Result<Option<String>> {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    loop {
        let n = stream.peek(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(end) = buf[..n].windows(2).position(|w| w == b"\r\n") {
            stream.set_read_timeout(None)?;
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
        if n == buf.len() || Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// One connection of [`Server::start_campaign`]: a campaign route, or any other as [`serve`]
/// answers it.
fn serve_campaign(mut stream: TcpStream, state: &State) -> io::Result<()> {
    let Some(first) = peek_first_line(&stream)? else {
        return Ok(());
    };
    let path = first.split(' ').nth(1).unwrap_or("").to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let resets = matches!(segments.as_slice(), ["reset" | "reset-body", _]);
    if !resets {
        // Registered so that dropping the server wakes a handler blocked on this socket.
        if let Ok(clone) = stream.try_clone() {
            lock(&state.sockets).push(clone);
        }
    }
    let campaign = matches!(
        segments.as_slice(),
        [
            "article" | "once-500" | "once-429" | "always-503" | "trickle" | "reset" | "reset-body",
            _
        ] | ["enc", _, _]
    );
    if !campaign {
        return serve(stream, state);
    }
    let earlier = {
        let mut requests = lock(&state.requests);
        let earlier = requests.iter().filter(|r| r.path == path).count();
        requests.push(Request {
            method: first.split(' ').next().unwrap_or("").to_owned(),
            path: path.clone(),
            headers: Vec::new(),
            at: Instant::now(),
        });
        earlier
    };
    if resets {
        // The request stays unread: closing a socket with unread data sends a reset, not a FIN.
        if segments[0] == "reset-body" {
            stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n<html><body><p>the start of a page that",
            )?;
            stream.flush()?;
            thread::sleep(Duration::from_millis(20));
        }
        drop(stream);
        return Ok(());
    }
    // The head, consumed now that the route is known.
    if read_head(&mut stream)?.is_none() {
        return Ok(());
    }
    let html = "text/html; charset=utf-8";
    match segments.as_slice() {
        ["article", id] => respond(&mut stream, 200, html, &[], article(id).as_bytes()),
        ["once-500", _] if earlier == 0 => {
            respond(&mut stream, 500, "text/plain", &[], b"try again")
        }
        ["once-429", _] if earlier == 0 => respond(
            &mut stream,
            429,
            "text/plain",
            &[("Retry-After", "1")],
            b"slow down",
        ),
        ["once-500" | "once-429", id] => {
            respond(&mut stream, 200, html, &[], article(id).as_bytes())
        }
        ["always-503", _] => respond(&mut stream, 503, "text/plain", &[], b"down for now"),
        ["trickle", _] => {
            stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n",
            )?;
            loop {
                for _ in 0..5 {
                    if state.stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    thread::sleep(TRICKLE_EVERY / 5);
                }
                stream.write_all(b"<")?;
                stream.flush()?;
            }
        }
        ["enc", "bad-utf8", id] => {
            // A lone continuation byte, a cut sequence and an overlong form amid valid UTF-8.
            let page = article(id).replacen("residents", "resi\u{1}dents", 1);
            let page = page.as_bytes();
            let at = page
                .iter()
                .position(|&b| b == 1)
                .expect("the marker is in the article");
            let mut bytes = page[..at].to_vec();
            bytes.extend_from_slice(b"\x80 \xc3 \xc0\xaf ");
            bytes.extend_from_slice(&page[at + 1..]);
            respond(&mut stream, 200, html, &[], &bytes)
        }
        ["enc", "latin1-bare", id] => {
            let page: Vec<u8> =
                article_with(id, "Caf\u{e9} M\u{fc}ller's cr\u{e8}me br\u{fb}l\u{e9}e")
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                    .collect();
            respond(&mut stream, 200, "text/html", &[], &page)
        }
        ["enc", "unknown-charset", id] => respond(
            &mut stream,
            200,
            "text/html; charset=x-no-such-charset",
            &[],
            article(id).as_bytes(),
        ),
        ["enc", coding @ ("deflate" | "br" | "x-unknown"), id] => respond(
            &mut stream,
            200,
            html,
            &[("Content-Encoding", coding)],
            article(id).as_bytes(),
        ),
        ["enc", "bad-gzip", id] => respond(
            &mut stream,
            200,
            html,
            &[("Content-Encoding", "gzip")],
            article(id).as_bytes(),
        ),
        _ => respond(&mut stream, 404, "text/plain", &[], b"no such page"),
    }
}
