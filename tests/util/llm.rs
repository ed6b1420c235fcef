//! A real HTTP/1.1 server on 127.0.0.1 that plays the OpenAI chat-completions and Anthropic
//! messages APIs for the `llm` stage's tests and benchmark, and misbehaves on purpose: it
//! answers prose instead of JSON, JSON of the wrong shape, 429s with every reset header a
//! provider sends, 5xx, or nothing at all.
//!
//! Like `http.rs` it is hand-written on `std::net` (a thread per connection, every response
//! written here), so each failure is exactly the bytes a provider sends. Unlike `http.rs` it
//! keeps connections alive across requests (the stage's ureq agent pools them, and a benchmark
//! that paid a handshake per request would measure the wrong thing) and reads request bodies
//! by their `Content-Length` as JSON.
//!
//! One server serves every scenario: the path prefix `/s/<scenario>` picks the behaviour, so a
//! stage's `base_url` is [`LlmServer::base_url`] (`http://127.0.0.1:PORT/s/<scenario>/v1`) and
//! the client appends `/chat/completions` or `/messages`.
//!
//! Routes:
//!
//! | path | API |
//! |---|---|
//! | `POST /s/<scenario>/v1/chat/completions` | OpenAI chat completions |
//! | `POST /s/<scenario>/v1/messages` | Anthropic messages |
//! | `GET /s/<scenario>/v1/models` | both APIs' model list: [`LlmConfig::models`], or 401 without a key and in the `unauthorized` scenarios (`unauthorized-echo` quoting the key); counted apart ([`LlmServer::model_lists`]), not in [`LlmServer::requests`] |
//! | anything else | 404 |
//!
//! A request to either route goes through, in order:
//!
//! 1. admission: beyond [`LlmConfig::max_in_flight`] requests being handled, 429 at once with
//!    `Retry-After: 1`;
//! 2. [`LlmConfig::latency`];
//! 3. the checks a real API makes, 401 or 400 with a message naming the problem. OpenAI:
//!    `Authorization: Bearer <key>` (401), `Content-Type: application/json`, a JSON object
//!    with `model` and non-empty `messages`. Anthropic: `x-api-key` (401),
//!    `anthropic-version`, `Content-Type: application/json`, `model`, positive `max_tokens`,
//!    non-empty `messages`;
//! 4. the scenario. "First time" means the first time for this route and this exact request
//!    body, so a retry of the same item succeeds and every item fails once.
//!
//! | scenario | OpenAI | Anthropic |
//! |---|---|---|
//! | `ok` | 200, `content` is the answer as a JSON string | 200, a `tool_use` block whose `input` is the answer when a tool is forced (`tool_choice` `{"type": "tool", "name": X}`), else a `text` block with the answer as a JSON string |
//! | `not-json` | 200, `content` is [`PROSE`] | 200, a `text` block of [`PROSE`], tool or not |
//! | `bad-schema` | 200 as `ok` with [`bad_schema_answer`] | 200 as `ok` with [`bad_schema_answer`] |
//! | `invalid-then-ok` | `bad-schema` the first time, then `ok` | the same |
//! | `rate-limited-once` | 429 the first time, `Retry-After: 2`, `retry-after-ms: 2000`, `x-ratelimit-reset-requests: 2s`; then `ok` | 429 the first time, `Retry-After: 2`, `retry-after-ms: 2000`, `anthropic-ratelimit-requests-reset` (RFC 3339, 2 s ahead); then `ok` |
//! | `error-once` | 500 the first time, then `ok` | the same |
//! | `overloaded` | always 503 | always 529 `overloaded_error` |
//! | `silent` | reads the request and never answers; it holds its in-flight slot until the client hangs up | the same |
//! | `unauthorized` | 401 `invalid_request_error`, "Incorrect API key provided" | 401 `authentication_error`, the same message |
//! | `unauthorized-echo` | 401 as `unauthorized`, the message echoing the key it got upper-cased, then whole from its [`ECHO_AT`]th character (where a client that keeps 300 characters cuts it) | the same |
//! | `answer-echo` | 200 as `ok`, the answer's facts echoing the key it got, as is and upper-cased | the same |
//! | `not-found` | 404 `model_not_found` | 404 `not_found_error` |
//! | `bad-request` | 400 `invalid_request_error` | the same |
//! | `cut` | 200, `content` is [`CUT`], the start of a JSON answer, with `finish_reason` `length` | 200, a `text` block of [`CUT`], `stop_reason` `max_tokens` |
//! | `json-object-only` | as llama-cpp-python's server: a `response_format` of type `json_schema` gets its 500 (a validation error at `('body', 'response_format', 'type')`: "Input should be 'text' or 'json_object'"); otherwise `ok` | `ok` |
//!
//! Errors carry each API's own JSON: `{"error": {"message", "type", "param", "code"}}` for
//! OpenAI, `{"type": "error", "error": {"type", "message"}}` for Anthropic.
//!
//! Every request is logged with its parsed body, its headers (so a test can assert the key the
//! client sent) and the status it got, so a test asserts what the client did, not only what
//! it reported. Dropping the server shuts every socket down (silent ones included) and joins
//! every thread.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

/// What `not-json` answers instead of JSON.
pub const PROSE: &str = "Sure! Here are the facts you asked for: the council approved the budget.";

/// What `cut` answers: the start of a JSON answer, stopped by `max_tokens`.
pub const CUT: &str = "{\"facts\": [\"The council approved the budget\", \"Work starts in";

/// Where `unauthorized-echo` puts the key in its message: 10 characters before the 300th.
pub const ECHO_AT: usize = 290;

/// Longest a request's head may be; anything longer is answered 431.
const MAX_HEAD: usize = 64 * 1024;

/// Longest a request's body may be; anything longer is answered 413.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The answer [`LlmConfig::default`] carries: one fact and a summary.
pub fn default_answer() -> Value {
    json!({
        "facts": ["The council approved a budget of 4.2 million euros on 3 March 2026."],
        "summary": "Budget approved.",
    })
}

/// Valid JSON that a facts schema must refuse: `facts` is not a list and there is an extra key.
pub fn bad_schema_answer() -> Value {
    json!({"facts": "not a list", "unexpected": 1})
}

/// How the server behaves for every scenario.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// Slept before answering each admitted request (after admission, before the checks).
    pub latency: Duration,
    /// Requests handled at once beyond this are answered 429 with `Retry-After: 1` at once.
    /// `None`: no limit.
    pub max_in_flight: Option<usize>,
    /// The structured answer a valid response carries.
    pub answer: Value,
    /// Input and output tokens reported by every 200.
    pub usage: (u64, u64),
    /// The models `GET …/models` lists (none: a list that names none).
    pub models: Vec<String>,
    /// `GET …/models` answers 200 to any key, in any scenario: a key refused only by the
    /// calls (revoked after the run's checks, say).
    pub lists_models_for_any_key: bool,
    /// An outage: every call that arrives this long after the server started is answered 503
    /// (no `Retry-After`), in any scenario; then the scenario answers again.
    pub down_for: Duration,
}

impl Default for LlmConfig {
    fn default() -> LlmConfig {
        LlmConfig {
            latency: Duration::ZERO,
            max_in_flight: None,
            answer: default_answer(),
            usage: (1000, 200),
            models: Vec::new(),
            lists_models_for_any_key: false,
            down_for: Duration::ZERO,
        }
    }
}

/// The behaviour a request asks for with its path prefix `/s/<name>`; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    Ok,
    NotJson,
    BadSchema,
    InvalidThenOk,
    RateLimitedOnce,
    ErrorOnce,
    Overloaded,
    Silent,
    Unauthorized,
    UnauthorizedEcho,
    AnswerEcho,
    NotFound,
    BadRequest,
    JsonObjectOnly,
    Cut,
}

impl Scenario {
    pub const ALL: [Scenario; 15] = [
        Scenario::Ok,
        Scenario::NotJson,
        Scenario::BadSchema,
        Scenario::InvalidThenOk,
        Scenario::RateLimitedOnce,
        Scenario::ErrorOnce,
        Scenario::Overloaded,
        Scenario::Silent,
        Scenario::Unauthorized,
        Scenario::UnauthorizedEcho,
        Scenario::AnswerEcho,
        Scenario::NotFound,
        Scenario::BadRequest,
        Scenario::JsonObjectOnly,
        Scenario::Cut,
    ];

    /// The path segment: `ok`, `not-json`, `rate-limited-once`, …
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Ok => "ok",
            Scenario::NotJson => "not-json",
            Scenario::BadSchema => "bad-schema",
            Scenario::InvalidThenOk => "invalid-then-ok",
            Scenario::RateLimitedOnce => "rate-limited-once",
            Scenario::ErrorOnce => "error-once",
            Scenario::Overloaded => "overloaded",
            Scenario::Silent => "silent",
            Scenario::Unauthorized => "unauthorized",
            Scenario::UnauthorizedEcho => "unauthorized-echo",
            Scenario::AnswerEcho => "answer-echo",
            Scenario::NotFound => "not-found",
            Scenario::BadRequest => "bad-request",
            Scenario::JsonObjectOnly => "json-object-only",
            Scenario::Cut => "cut",
        }
    }

    fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Which of the two APIs a request was addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `POST …/v1/chat/completions`.
    OpenAi,
    /// `POST …/v1/messages`.
    Anthropic,
}

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// `None` (as is `api`) for a path that is not one of the two routes.
    pub scenario: Option<Scenario>,
    pub api: Option<Api>,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON; `None` if it was empty or not JSON.
    pub body: Option<Value>,
    /// The accepted connection it came on, numbered from 0 in order of acceptance.
    pub connection: u64,
    /// When its head had been read.
    pub at: Instant,
    /// The status it was answered with; `None` while it is being handled, or if it never was
    /// (`silent`, or the server stopped during `latency`).
    pub status: Option<u16>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The key the client sent: the bearer token of `Authorization` for OpenAI, `x-api-key`
    /// for Anthropic.
    pub fn api_key(&self) -> Option<&str> {
        match self.api? {
            Api::OpenAi => self.header("authorization")?.strip_prefix("Bearer "),
            Api::Anthropic => self.header("x-api-key"),
        }
    }
}

/// Requests being handled now, and the most there have been at once.
#[derive(Default)]
struct InFlight {
    now: usize,
    max_seen: usize,
}

struct State {
    config: LlmConfig,
    stop: Mutex<bool>,
    /// Notified when `stop` is set, to cut `latency` short.
    stopped: Condvar,
    requests: Mutex<Vec<Request>>,
    /// (path, body) of the requests a first-time-only scenario has already seen.
    seen: Mutex<HashSet<(String, Vec<u8>)>>,
    in_flight: Mutex<InFlight>,
    /// Connections accepted so far; also the next connection's number.
    connections: AtomicU64,
    /// Numbers the ids of the responses.
    answered: AtomicU64,
    /// `GET …/models` requests so far.
    model_lists: AtomicUsize,
    /// When the server started (for [`LlmConfig::down_for`]).
    started: Instant,
    /// A clone of every open connection's socket, shut down on drop to wake its handler.
    /// A handler removes its own when its connection ends: ureq keeps only a few idle
    /// connections per host, so a benchmark opens hundreds, and their descriptors must not
    /// pile up until drop.
    sockets: Mutex<HashMap<u64, TcpStream>>,
    handlers: Mutex<Vec<JoinHandle<()>>>,
}

/// Locks a mutex even if a handler panicked while holding it: the data (logs, counters) stays
/// meaningful, and a second panic would hide the first.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    fn stopping(&self) -> bool {
        *lock(&self.stop)
    }

    /// Sleeps for `duration`, or less if the server stops meanwhile; true if it stopped.
    fn pause(&self, duration: Duration) -> bool {
        let stop = lock(&self.stop);
        let (stop, _) = self
            .stopped
            .wait_timeout_while(stop, duration, |stop| !*stop)
            .unwrap_or_else(PoisonError::into_inner);
        *stop
    }

    /// A slot among `max_in_flight`, or `None` if all are taken.
    fn admit(&self) -> Option<Slot<'_>> {
        let mut in_flight = lock(&self.in_flight);
        if self
            .config
            .max_in_flight
            .is_some_and(|max| in_flight.now >= max)
        {
            return None;
        }
        in_flight.now += 1;
        in_flight.max_seen = in_flight.max_seen.max(in_flight.now);
        Some(Slot(self))
    }

    /// Whether this is the first time a first-time-only scenario sees this body on this path.
    fn first_time(&self, path: &str, body: &[u8]) -> bool {
        lock(&self.seen).insert((path.to_owned(), body.to_vec()))
    }

    /// Logs `request`; returns its index, to record its status later.
    fn log(&self, request: Request) -> usize {
        let mut requests = lock(&self.requests);
        requests.push(request);
        requests.len() - 1
    }

    fn set_status(&self, index: usize, status: u16) {
        if let Some(request) = lock(&self.requests).get_mut(index) {
            request.status = Some(status);
        }
    }
}

/// A request counted in flight until the slot drops (after its response is written).
struct Slot<'a>(&'a State);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock(&self.0.in_flight).now -= 1;
    }
}

/// The server; stopped when dropped.
pub struct LlmServer {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl LlmServer {
    /// Starts listening on an ephemeral port of 127.0.0.1.
    pub fn start(config: LlmConfig) -> LlmServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("listener address");
        let state = Arc::new(State {
            config,
            stop: Mutex::new(false),
            stopped: Condvar::new(),
            requests: Mutex::default(),
            seen: Mutex::default(),
            in_flight: Mutex::default(),
            connections: AtomicU64::new(0),
            model_lists: AtomicUsize::new(0),
            started: Instant::now(),
            answered: AtomicU64::new(0),
            sockets: Mutex::default(),
            handlers: Mutex::default(),
        });
        let shared = Arc::clone(&state);
        let acceptor = thread::Builder::new()
            .name("llm-test-accept".into())
            .spawn(move || accept(&listener, &shared))
            .expect("spawn the accept thread");
        LlmServer {
            addr,
            state,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The `base_url` a stage needs for `scenario`: `http://127.0.0.1:PORT/s/<scenario>/v1`.
    pub fn base_url(&self, scenario: Scenario) -> String {
        self.url(&format!("/s/{}/v1", scenario.name()))
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state.requests).clone()
    }

    /// How many model lists were asked for (`GET …/models`).
    pub fn model_lists(&self) -> usize {
        self.state.model_lists.load(Ordering::SeqCst)
    }

    /// How many requests arrived, whatever they got (unanswered `silent` ones included).
    pub fn calls(&self) -> usize {
        lock(&self.state.requests).len()
    }

    /// How many requests were answered with `status`.
    pub fn calls_with_status(&self, status: u16) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| r.status == Some(status))
            .count()
    }

    /// How many requests were answered 200 (whatever the scenario put in the answer).
    pub fn answered_ok(&self) -> usize {
        self.calls_with_status(200)
    }

    /// How many requests were answered 429 (`max_in_flight` and `rate-limited-once`).
    pub fn count_429(&self) -> usize {
        self.calls_with_status(429)
    }

    /// The most requests admitted at once (those 429'd at admission not counted).
    pub fn max_in_flight_seen(&self) -> usize {
        lock(&self.state.in_flight).max_seen
    }

    /// How many connections the server accepted.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The JSON body of the latest request, if it had one.
    pub fn last_body(&self) -> Option<Value> {
        lock(&self.state.requests)
            .last()
            .and_then(|r| r.body.clone())
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        shut_down(&self.state, self.addr, self.acceptor.take());
    }
}

/// Stops a server listening on `addr`: its accept loop, then every handler.
fn shut_down(state: &State, addr: SocketAddr, acceptor: Option<JoinHandle<()>>) {
    *lock(&state.stop) = true;
    state.stopped.notify_all();
    // Wake the blocking accept with a connection of our own; the loop sees `stop` and ends.
    let _ = TcpStream::connect(addr);
    if let Some(acceptor) = acceptor {
        let _ = acceptor.join();
    }
    // Wakes handlers blocked reading (idle keep-alive connections, `silent`).
    for (_, socket) in lock(&state.sockets).drain() {
        let _ = socket.shutdown(Shutdown::Both);
    }
    let handlers: Vec<_> = lock(&state.handlers).drain(..).collect();
    for handler in handlers {
        let _ = handler.join();
    }
}

fn accept(listener: &TcpListener, state: &Arc<State>) {
    for stream in listener.incoming() {
        if state.stopping() {
            break;
        }
        let Ok(stream) = stream else { continue };
        let id = state.connections.fetch_add(1, Ordering::SeqCst);
        // Responses go out in one write; waiting for more to coalesce would only add latency.
        let _ = stream.set_nodelay(true);
        if let Ok(clone) = stream.try_clone() {
            lock(&state.sockets).insert(id, clone);
        }
        let shared = Arc::clone(state);
        let handler = thread::Builder::new()
            .name("llm-test-conn".into())
            .spawn(move || {
                // A client that hangs up mid-response just ends the connection.
                let _ = serve(stream, id, &shared);
                lock(&shared.sockets).remove(&id);
            })
            .expect("spawn a connection thread");
        let mut handlers = lock(&state.handlers);
        // Join the connections that ended, so a long benchmark holds only live threads.
        let (ended, live): (Vec<_>, Vec<_>) = handlers.drain(..).partition(|h| h.is_finished());
        for h in ended {
            let _ = h.join();
        }
        *handlers = live;
        handlers.push(handler);
    }
}

/// What one read from a connection produced.
enum Incoming {
    /// The client closed the connection (between requests, or in the middle of one).
    Closed,
    Request(Request, Vec<u8>),
    /// Framing this server does not accept; answered with this status, then closed.
    Refused(Option<Request>, u16, &'static str),
}

/// A connection and the bytes read from it but not yet consumed (a pipelined request).
struct Conn {
    stream: TcpStream,
    id: u64,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more bytes into `buf`; false if the client closed.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next request: its head up to the blank line, then exactly `Content-Length` bytes.
    fn next(&mut self) -> io::Result<Incoming> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_HEAD {
                return Ok(Incoming::Refused(None, 431, "request head too large"));
            }
            if !self.fill()? {
                return Ok(Incoming::Closed);
            }
        };
        let request = parse(&self.buf[..head_end], self.id);
        // ureq sends a serialized JSON body with its length; chunked bodies are not needed.
        if request.header("transfer-encoding").is_some() {
            return Ok(Incoming::Refused(
                Some(request),
                411,
                "send the body with a Content-Length",
            ));
        }
        let len = match request.header("content-length").map(str::parse::<usize>) {
            None => 0,
            Some(Ok(len)) if len <= MAX_BODY => len,
            Some(Ok(_)) => return Ok(Incoming::Refused(Some(request), 413, "body too large")),
            Some(Err(_)) => return Ok(Incoming::Refused(Some(request), 400, "bad Content-Length")),
        };
        while self.buf.len() < head_end + len {
            if !self.fill()? {
                return Ok(Incoming::Closed);
            }
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Ok(Incoming::Request(request, body))
    }
}

fn parse(head: &[u8], connection: u64) -> Request {
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
        scenario: None,
        api: None,
        headers,
        body: None,
        connection,
        at: Instant::now(),
        status: None,
    }
}

/// `GET /s/<scenario>/v1/models`.
fn models_route(method: &str, path: &str) -> Option<Scenario> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["s", scenario, "v1", "models"]) => Scenario::from_name(scenario),
        _ => None,
    }
}

/// `POST /s/<scenario>/v1/chat/completions` or `POST /s/<scenario>/v1/messages`.
fn route(method: &str, path: &str) -> Option<(Scenario, Api)> {
    if method != "POST" {
        return None;
    }
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["s", scenario, "v1", "chat", "completions"] => {
            Some((Scenario::from_name(scenario)?, Api::OpenAi))
        }
        ["s", scenario, "v1", "messages"] => Some((Scenario::from_name(scenario)?, Api::Anthropic)),
        _ => None,
    }
}

/// Serves requests on one connection until the client closes it, asks to close it, or the
/// server stops.
fn serve(stream: TcpStream, id: u64, state: &State) -> io::Result<()> {
    let mut conn = Conn {
        stream,
        id,
        buf: Vec::new(),
    };
    loop {
        match conn.next()? {
            Incoming::Closed => return Ok(()),
            Incoming::Refused(request, status, message) => {
                if let Some(mut request) = request {
                    request.status = Some(status);
                    state.log(request);
                }
                return write(&mut conn.stream, &Reply::text(status, message), true);
            }
            Incoming::Request(request, body) => {
                if !handle(&mut conn.stream, request, &body, state)? {
                    return Ok(());
                }
            }
        }
    }
}

/// Answers one request; false if the connection must close after it.
fn handle(
    stream: &mut TcpStream,
    mut request: Request,
    raw: &[u8],
    state: &State,
) -> io::Result<bool> {
    if let Some(scenario) = models_route(&request.method, &request.path) {
        state.model_lists.fetch_add(1, Ordering::SeqCst);
        let close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let unauthorized = !state.config.lists_models_for_any_key
            && (matches!(
                scenario,
                Scenario::Unauthorized | Scenario::UnauthorizedEcho
            ) || request
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .or(request.header("x-api-key"))
                .is_none_or(|key| key.trim().is_empty()));
        let answer = if unauthorized && scenario == Scenario::UnauthorizedEcho {
            let key = request
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            let message = format!("Incorrect API key provided: {key}.");
            error(Api::OpenAi, 401, &message)
        } else if unauthorized {
            error(Api::OpenAi, 401, "invalid API key")
        } else {
            let data: Vec<Value> = state
                .config
                .models
                .iter()
                .map(|id| json!({"id": id, "object": "model"}))
                .collect();
            Reply::json(200, &json!({"object": "list", "data": data}))
        };
        write(stream, &answer, close)?;
        return Ok(!close);
    }
    let route = route(&request.method, &request.path);
    request.scenario = route.map(|(scenario, _)| scenario);
    request.api = route.map(|(_, api)| api);
    request.body = serde_json::from_slice(raw).ok();
    let close = request
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let index = state.log(request.clone());
    let Some((scenario, api)) = route else {
        let message = format!("no route for {} {}", request.method, request.path);
        return reply(
            stream,
            state,
            index,
            &Reply::json(404, &json!({"error": {"message": message}})),
            close,
        );
    };
    if state.started.elapsed() < state.config.down_for {
        let down = error(api, 503, "the service is down for maintenance");
        return reply(stream, state, index, &down, close);
    }
    let Some(_slot) = state.admit() else {
        let reply_429 = error(api, 429, "too many requests in flight; retry after 1 s")
            .header("retry-after", "1");
        return reply(stream, state, index, &reply_429, close);
    };
    if state.pause(state.config.latency) {
        return Ok(false);
    }
    let answer = match check(api, &request) {
        Err(refusal) => refusal,
        Ok(()) => match scenario_reply(state, scenario, api, &request, raw) {
            Some(answer) => answer,
            None => {
                silent(stream);
                return Ok(false);
            }
        },
    };
    reply(stream, state, index, &answer, close)
}

/// Records the status, then writes: a client that has its response finds it in the log.
fn reply(
    stream: &mut TcpStream,
    state: &State,
    index: usize,
    reply: &Reply,
    close: bool,
) -> io::Result<bool> {
    state.set_status(index, reply.status);
    write(stream, reply, close)?;
    Ok(!close)
}

/// Keeps the connection open without a word until the client hangs up or the server stops
/// (drop shuts the socket down, which ends the read).
fn silent(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

/// The checks the real API makes before it looks at the request's content.
fn check(api: Api, request: &Request) -> Result<(), Reply> {
    let refuse = |status: u16, message: &str| Err(error(api, status, message));
    match api {
        Api::OpenAi => {
            if request.api_key().is_none_or(|key| key.trim().is_empty()) {
                return refuse(401, "missing API key: send `Authorization: Bearer <key>`");
            }
        }
        Api::Anthropic => {
            if request.api_key().is_none_or(|key| key.trim().is_empty()) {
                return refuse(401, "missing API key: send the `x-api-key` header");
            }
            if request.header("anthropic-version").is_none() {
                return refuse(400, "missing `anthropic-version` header");
            }
        }
    }
    let content_type = request.header("content-type").unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return refuse(
            400,
            &format!("`Content-Type` must be `application/json`, not {content_type:?}"),
        );
    }
    let Some(body) = &request.body else {
        return refuse(400, "the body is not JSON");
    };
    if !body.is_object() {
        return refuse(400, "the body is not a JSON object");
    }
    if body["model"].as_str().is_none_or(str::is_empty) {
        return refuse(400, "`model` is required");
    }
    if api == Api::Anthropic && body["max_tokens"].as_u64().is_none_or(|n| n == 0) {
        return refuse(
            400,
            "`max_tokens` is required and must be a positive integer",
        );
    }
    if body["messages"].as_array().is_none_or(Vec::is_empty) {
        return refuse(400, "`messages` must be a non-empty array");
    }
    Ok(())
}

/// The scenario's answer to a request that passed [`check`]; `None` for `silent`.
fn scenario_reply(
    state: &State,
    scenario: Scenario,
    api: Api,
    request: &Request,
    raw: &[u8],
) -> Option<Reply> {
    let answer = Content::Answer(&state.config.answer);
    let bad_schema = bad_schema_answer();
    let bad_schema = Content::Answer(&bad_schema);
    let first_time = || state.first_time(&request.path, raw);
    let reply = match scenario {
        Scenario::Ok => completion(state, api, request, answer),
        Scenario::NotJson => completion(state, api, request, Content::Prose),
        Scenario::BadSchema => completion(state, api, request, bad_schema),
        Scenario::InvalidThenOk if first_time() => completion(state, api, request, bad_schema),
        Scenario::RateLimitedOnce if first_time() => rate_limited(api),
        Scenario::ErrorOnce if first_time() => error(
            api,
            500,
            "the server had an error while processing your request",
        ),
        Scenario::InvalidThenOk | Scenario::RateLimitedOnce | Scenario::ErrorOnce => {
            completion(state, api, request, answer)
        }
        Scenario::Overloaded => match api {
            Api::OpenAi => error(
                api,
                503,
                "the engine is currently overloaded, please try again later",
            ),
            Api::Anthropic => error(api, 529, "Overloaded"),
        },
        Scenario::Silent => return None,
        Scenario::Unauthorized => error(api, 401, "Incorrect API key provided"),
        Scenario::AnswerEcho => {
            let key = request.api_key().unwrap_or("");
            let echoed = json!({
                "facts": [format!("the key is {key}"), format!("and loudly {}", key.to_uppercase())],
                "summary": "echoed",
            });
            completion(state, api, request, Content::Answer(&echoed))
        }
        Scenario::UnauthorizedEcho => {
            let key = request.api_key().unwrap_or("");
            let mut message = format!(
                "Incorrect API key provided: {}. Find your keys in your account's settings",
                key.to_uppercase()
            );
            while message.chars().count() < ECHO_AT {
                message.push('.');
            }
            message.push_str(key);
            error(api, 401, &message)
        }
        Scenario::NotFound => {
            let model = request
                .body
                .as_ref()
                .and_then(|b| b["model"].as_str())
                .unwrap_or("");
            error(
                api,
                404,
                &format!("the model `{model}` does not exist or you do not have access to it"),
            )
        }
        Scenario::BadRequest => error(
            api,
            400,
            "this request is refused on purpose (scenario `bad-request`)",
        ),
        Scenario::JsonObjectOnly
            if api == Api::OpenAi
                && request.body.as_ref().and_then(|b| b["response_format"]["type"].as_str())
                    == Some("json_schema") =>
        {
            error(
                api,
                500,
                "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': {'expected': \"'text' or 'json_object'\"}}]",
            )
        }
        Scenario::JsonObjectOnly => completion(state, api, request, answer),
        Scenario::Cut => completion(state, api, request, Content::Cut),
    };
    Some(reply)
}

/// What a 200 carries.
#[derive(Clone, Copy)]
enum Content<'a> {
    /// Structured: a tool input for a forced Anthropic tool, JSON text otherwise.
    Answer(&'a Value),
    /// [`PROSE`], always as text.
    Prose,
    /// [`CUT`], as text, stopped for its length (`max_tokens`).
    Cut,
}

/// A 200 in the request's API: the content, the request's model, the configured usage.
fn completion(state: &State, api: Api, request: &Request, content: Content<'_>) -> Reply {
    let body = request.body.as_ref().expect("checked before the scenario");
    let model = &body["model"];
    let n = state.answered.fetch_add(1, Ordering::SeqCst) + 1;
    let (input, output) = state.config.usage;
    let text = match content {
        Content::Answer(answer) => answer.to_string(),
        Content::Prose => PROSE.to_owned(),
        Content::Cut => CUT.to_owned(),
    };
    let cut = matches!(content, Content::Cut);
    let response = match api {
        Api::OpenAi => json!({
            "id": format!("chatcmpl-{n}"),
            "object": "chat.completion",
            "created": SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": if cut { "length" } else { "stop" },
            }],
            "usage": {
                "prompt_tokens": input,
                "completion_tokens": output,
                "total_tokens": input + output,
            },
        }),
        Api::Anthropic => {
            let (block, stop_reason) = match (content, forced_tool(body)) {
                (Content::Answer(answer), Some(name)) => (
                    json!({"type": "tool_use", "id": "toolu_1", "name": name, "input": answer}),
                    "tool_use",
                ),
                _ if cut => (json!({"type": "text", "text": text}), "max_tokens"),
                _ => (json!({"type": "text", "text": text}), "end_turn"),
            };
            json!({
                "id": format!("msg_{n}"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [block],
                "stop_reason": stop_reason,
                "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": output},
            })
        }
    };
    Reply::json(200, &response)
}

/// The tool an Anthropic request forces: `tools` given and `tool_choice` `{"type": "tool",
/// "name": X}`.
fn forced_tool(body: &Value) -> Option<&str> {
    let has_tools = body["tools"].as_array().is_some_and(|t| !t.is_empty());
    let choice = &body["tool_choice"];
    (has_tools && choice["type"] == "tool")
        .then(|| choice["name"].as_str())
        .flatten()
}

/// `rate-limited-once`'s 429, with every header that tells a client how long to wait.
fn rate_limited(api: Api) -> Reply {
    let reply = error(api, 429, "rate limit reached for requests; retry after 2 s")
        .header("retry-after", "2")
        .header("retry-after-ms", "2000");
    match api {
        Api::OpenAi => reply.header("x-ratelimit-reset-requests", "2s"),
        Api::Anthropic => {
            let reset =
                chrono::DateTime::<chrono::Utc>::from(SystemTime::now() + Duration::from_secs(2))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            reply.header("anthropic-ratelimit-requests-reset", &reset)
        }
    }
}

/// An error in the API's own shape; the status decides its type (and OpenAI's code).
fn error(api: Api, status: u16, message: &str) -> Reply {
    let body = match api {
        Api::OpenAi => {
            let (kind, code) = match status {
                400 => ("invalid_request_error", None),
                401 => ("invalid_request_error", Some("invalid_api_key")),
                404 => ("invalid_request_error", Some("model_not_found")),
                429 => ("requests", Some("rate_limit_exceeded")),
                _ => ("server_error", None),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        Api::Anthropic => {
            let kind = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    };
    Reply::json(status, &body)
}

/// A complete response, written in one piece.
struct Reply {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
        }
    }

    fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        529 => "Overloaded",
        _ => "Whatever",
    }
}

/// Head and body in a single write: two small writes on a kept-alive connection can wait on
/// the client's delayed ACK.
fn write(stream: &mut TcpStream, reply: &Reply, close: bool) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    if close {
        head.push_str("Connection: close\r\n");
    }
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&reply.body);
    stream.write_all(&bytes)?;
    stream.flush()
}

// ---------------------------------------------------------------------------------------------
// The fault campaign's server (tests/campaign_fault.rs)
//
// [`FaultLlmServer`] speaks the OpenAI chat-completions API like [`LlmServer`], but each item
// picks its own behaviour: the request's system prompt names it (`behaviour: NAME`, one of
// [`LlmFault`]) and the item (`item KEY`), so a stage's `system` template such as
// `"item {{key}}; behaviour: {{llm}}"` hands every record's choice to the server. On top of
// that, [`Outage`]s answer every call within a window of time, whatever its item asks: a 503
// outage, a 429 storm. Windows are counted from the first call the server gets, so that they
// fall among the calls whatever the run's start-up took. Every call is logged with its item and
// how it was answered ([`FaultCall`]).

/// What the campaign's LLM server does with an item's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LlmFault {
    /// A valid answer.
    Ok,
    /// Reads the call and never answers.
    Silent,
    /// 429 with `Retry-After: 1`, every time.
    RateLimited,
    /// 429 with `Retry-After: 1` the first time, then a valid answer.
    RateLimitedOnce,
    /// 503 without `Retry-After`, every time.
    Unavailable,
    /// 500 the first time, then a valid answer.
    ErrorOnce,
    /// 200, the answer prose instead of JSON.
    NotJson,
    /// 200, the answer JSON off the schema, with raw control characters in its strings (a
    /// terminal escape, a carriage return): quoted by the error, they must not reach a log raw.
    OffSchema,
    /// An answer off the schema the first time, then a valid one.
    InvalidOnce,
    /// 200 whose body is not JSON at all (cut short), every time.
    Garbled,
    /// 200, the answer cut at `max_tokens`.
    Cut,
    /// 400, every time.
    BadRequest,
}

impl LlmFault {
    pub const ALL: [LlmFault; 12] = [
        LlmFault::Ok,
        LlmFault::Silent,
        LlmFault::RateLimited,
        LlmFault::RateLimitedOnce,
        LlmFault::Unavailable,
        LlmFault::ErrorOnce,
        LlmFault::NotJson,
        LlmFault::OffSchema,
        LlmFault::InvalidOnce,
        LlmFault::Garbled,
        LlmFault::Cut,
        LlmFault::BadRequest,
    ];

    /// The name a system prompt gives it: `ok`, `silent`, `rate-limited`, …
    pub fn name(self) -> &'static str {
        match self {
            LlmFault::Ok => "ok",
            LlmFault::Silent => "silent",
            LlmFault::RateLimited => "rate-limited",
            LlmFault::RateLimitedOnce => "rate-limited-once",
            LlmFault::Unavailable => "unavailable",
            LlmFault::ErrorOnce => "error-once",
            LlmFault::NotJson => "not-json",
            LlmFault::OffSchema => "off-schema",
            LlmFault::InvalidOnce => "invalid-once",
            LlmFault::Garbled => "garbled",
            LlmFault::Cut => "cut",
            LlmFault::BadRequest => "bad-request",
        }
    }

    pub fn from_name(name: &str) -> Option<LlmFault> {
        LlmFault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The answer [`LlmFault::OffSchema`] gives, as the model's text: JSON whose strings hold raw
/// control characters (which the stage reads, as it must from some local servers).
pub const HOSTILE_ANSWER: &str =
    "{\"facts\": \"\u{1b}[31mnot a list\r\u{1b}]0;title\u{7}\", \"unexpected\": 1}";

/// The message of an [`Outage`]'s errors, with raw control characters that the client must
/// not let into a log raw.
pub const OUTAGE_MESSAGE: &str = "the service is down \u{1b}[2J\r for a while";

/// A window of time, counted from the first call the server gets, in which every call is
/// answered `status` (503 or 429) whatever its item asks, with `Retry-After` if set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub from: Duration,
    pub to: Duration,
    pub status: u16,
    /// Seconds.
    pub retry_after: Option<u64>,
}

/// How one call was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// By its item's behaviour: the status (`None`: never, [`LlmFault::Silent`]) and whether
    /// the answer was one the stage must take as valid.
    Item { status: Option<u16>, valid: bool },
    /// By the outage of this index.
    Outage(usize),
}

/// One call the campaign's server got.
#[derive(Debug, Clone)]
pub struct FaultCall {
    /// The item, from the system prompt (empty if it named none).
    pub key: String,
    /// Its behaviour (`None` if the prompt named none the server knows: answered 400).
    pub fault: Option<LlmFault>,
    /// When its head had been read.
    pub at: Instant,
    pub answered: Answered,
}

struct FaultState {
    outages: Vec<Outage>,
    /// The first call's arrival: the outages' zero.
    first: Mutex<Option<Instant>>,
    calls: Mutex<Vec<FaultCall>>,
}

/// The campaign's LLM server; stopped when dropped.
pub struct FaultLlmServer {
    addr: SocketAddr,
    state: Arc<State>,
    faults: Arc<FaultState>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultLlmServer {
    /// Starts listening on an ephemeral port of 127.0.0.1, with these outages.
    pub fn start(outages: Vec<Outage>) -> FaultLlmServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("listener address");
        let state = Arc::new(State {
            config: LlmConfig::default(),
            stop: Mutex::new(false),
            stopped: Condvar::new(),
            requests: Mutex::default(),
            seen: Mutex::default(),
            in_flight: Mutex::default(),
            connections: AtomicU64::new(0),
            model_lists: AtomicUsize::new(0),
            started: Instant::now(),
            answered: AtomicU64::new(0),
            sockets: Mutex::default(),
            handlers: Mutex::default(),
        });
        let faults = Arc::new(FaultState {
            outages,
            first: Mutex::new(None),
            calls: Mutex::default(),
        });
        let (shared, shared_faults) = (Arc::clone(&state), Arc::clone(&faults));
        let acceptor = thread::Builder::new()
            .name("llm-test-accept".into())
            .spawn(move || accept_faults(&listener, &shared, &shared_faults))
            .expect("spawn the accept thread");
        FaultLlmServer {
            addr,
            state,
            faults,
            acceptor: Some(acceptor),
        }
    }

    /// The `base_url` for the stage: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<FaultCall> {
        lock(&self.faults.calls).clone()
    }

    /// The outages it was started with.
    pub fn outages(&self) -> &[Outage] {
        &self.faults.outages
    }

    /// When the first call came (the outages' zero), if one did.
    pub fn first_call(&self) -> Option<Instant> {
        *lock(&self.faults.first)
    }
}

impl Drop for FaultLlmServer {
    fn drop(&mut self) {
        shut_down(&self.state, self.addr, self.acceptor.take());
    }
}

fn accept_faults(listener: &TcpListener, state: &Arc<State>, faults: &Arc<FaultState>) {
    for stream in listener.incoming() {
        if state.stopping() {
            break;
        }
        let Ok(stream) = stream else { continue };
        let id = state.connections.fetch_add(1, Ordering::SeqCst);
        let _ = stream.set_nodelay(true);
        if let Ok(clone) = stream.try_clone() {
            lock(&state.sockets).insert(id, clone);
        }
        let (shared, shared_faults) = (Arc::clone(state), Arc::clone(faults));
        let handler = thread::Builder::new()
            .name("llm-test-conn".into())
            .spawn(move || {
                let _ = serve_faults(stream, id, &shared, &shared_faults);
                lock(&shared.sockets).remove(&id);
            })
            .expect("spawn a connection thread");
        let mut handlers = lock(&state.handlers);
        let (ended, live): (Vec<_>, Vec<_>) = handlers.drain(..).partition(|h| h.is_finished());
        for h in ended {
            let _ = h.join();
        }
        *handlers = live;
        handlers.push(handler);
    }
}

fn serve_faults(stream: TcpStream, id: u64, state: &State, faults: &FaultState) -> io::Result<()> {
    let mut conn = Conn {
        stream,
        id,
        buf: Vec::new(),
    };
    loop {
        match conn.next()? {
            Incoming::Closed => return Ok(()),
            Incoming::Refused(_, status, message) => {
                return write(&mut conn.stream, &Reply::text(status, message), true);
            }
            Incoming::Request(mut request, body) => {
                request.body = serde_json::from_slice(&body).ok();
                request.api = Some(Api::OpenAi);
                let close = request
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                let Some(reply) = fault_reply(state, faults, &request, &body) else {
                    silent(&mut conn.stream);
                    return Ok(());
                };
                write(&mut conn.stream, &reply, close)?;
                if close {
                    return Ok(());
                }
            }
        }
    }
}

/// The item and behaviour a system prompt names: `item KEY; behaviour: NAME`.
fn item_of(body: &Value) -> (String, Option<LlmFault>) {
    let system = body["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "system"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let key = system
        .split("item ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or("")
        .trim()
        .to_owned();
    let fault = system
        .split("behaviour: ")
        .nth(1)
        .map(str::trim)
        .and_then(LlmFault::from_name);
    (key, fault)
}

/// A 200 whose answer is `text` as the model wrote it, stopped for `finish_reason`.
fn text_completion(state: &State, request: &Request, text: &str, finish_reason: &str) -> Reply {
    let n = state.answered.fetch_add(1, Ordering::SeqCst) + 1;
    let model = request
        .body
        .as_ref()
        .map_or(Value::Null, |b| b["model"].clone());
    Reply::json(
        200,
        &json!({
            "id": format!("chatcmpl-{n}"),
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200},
        }),
    )
}

/// The answer to one call; `None`: none ever ([`LlmFault::Silent`]).
fn fault_reply(state: &State, faults: &FaultState, request: &Request, raw: &[u8]) -> Option<Reply> {
    if models_route(&request.method, &request.path).is_some()
        || (request.method == "GET" && request.path.ends_with("/v1/models"))
    {
        return Some(Reply::json(200, &json!({"object": "list", "data": []})));
    }
    if request.method != "POST" || !request.path.ends_with("/v1/chat/completions") {
        let message = format!("no route for {} {}", request.method, request.path);
        return Some(Reply::json(404, &json!({"error": {"message": message}})));
    }
    let now = Instant::now();
    let since = now.duration_since(*lock(&faults.first).get_or_insert(now));
    let body = request.body.clone().unwrap_or(Value::Null);
    let (key, fault) = item_of(&body);
    let log = |answered: Answered| {
        lock(&faults.calls).push(FaultCall {
            key: key.clone(),
            fault,
            at: request.at,
            answered,
        });
    };
    if let Some(i) = faults
        .outages
        .iter()
        .position(|o| o.from <= since && since < o.to)
    {
        log(Answered::Outage(i));
        let outage = faults.outages[i];
        let reply = error(Api::OpenAi, outage.status, OUTAGE_MESSAGE);
        return Some(match outage.retry_after {
            Some(secs) => reply.header("retry-after", &secs.to_string()),
            None => reply,
        });
    }
    if let Err(refusal) = check(Api::OpenAi, request) {
        log(Answered::Item {
            status: Some(refusal.status),
            valid: false,
        });
        return Some(refusal);
    }
    let first_time = || state.first_time(&request.path, raw);
    let answer = |state: &State| {
        completion(
            state,
            Api::OpenAi,
            request,
            Content::Answer(&state.config.answer),
        )
    };
    let (reply, valid) = match fault {
        None | Some(LlmFault::BadRequest) => (
            error(
                Api::OpenAi,
                400,
                "this request is refused on purpose (`bad-request`)",
            ),
            false,
        ),
        Some(LlmFault::Ok) => (answer(state), true),
        Some(LlmFault::Silent) => {
            log(Answered::Item {
                status: None,
                valid: false,
            });
            return None;
        }
        Some(LlmFault::RateLimited) => (
            error(Api::OpenAi, 429, "rate limit reached for requests").header("retry-after", "1"),
            false,
        ),
        Some(LlmFault::RateLimitedOnce) if first_time() => (
            error(Api::OpenAi, 429, "rate limit reached for requests").header("retry-after", "1"),
            false,
        ),
        Some(LlmFault::Unavailable) => (
            error(Api::OpenAi, 503, "the engine is currently overloaded"),
            false,
        ),
        Some(LlmFault::ErrorOnce) if first_time() => {
            (error(Api::OpenAi, 500, "the server had an error"), false)
        }
        Some(LlmFault::NotJson) => (text_completion(state, request, PROSE, "stop"), false),
        Some(LlmFault::OffSchema) => (
            text_completion(state, request, HOSTILE_ANSWER, "stop"),
            false,
        ),
        Some(LlmFault::InvalidOnce) if first_time() => (
            text_completion(state, request, HOSTILE_ANSWER, "stop"),
            false,
        ),
        Some(LlmFault::Garbled) => (
            Reply {
                status: 200,
                content_type: "application/json",
                headers: Vec::new(),
                body:
                    b"{\"id\": \"chatcmpl-1\", \"choices\": [{\"message\": {\"content\": \"{\\\"fa"
                        .to_vec(),
            },
            false,
        ),
        Some(LlmFault::Cut) => (text_completion(state, request, CUT, "length"), false),
        Some(LlmFault::RateLimitedOnce | LlmFault::ErrorOnce | LlmFault::InvalidOnce) => {
            (answer(state), true)
        }
    };
    log(Answered::Item {
        status: Some(reply.status),
        valid,
    });
    Some(reply)
}
