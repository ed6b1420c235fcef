//! The security campaign (the issue "Security"; docs/security.md): real runs of the binary with
//! secrets set the ways a user sets them, against real servers on loopback addresses that
//! answer with hostile data, and every output of those runs searched for the secrets.
//!
//! The secrets, drawn from the campaign's seed and given only through the environment:
//!
//! - a PostgreSQL password, `${SEC_PG_PASSWORD}` inside the URLs of `db-fetch`, `persist` and the
//!   checkpoint store (a role of its own on the test cluster has it);
//! - an LLM API key (`api_key_env`), which the test LLM server echoes back in its answers and,
//!   in its 401 errors (upper-cased, then whole) in the runs with a refused key;
//! - two `http-download` header secrets (`Authorization`, `X-Api-Key`), which the public page
//!   server echoes in a 401's body and `WWW-Authenticate` header (its pages and redirects
//!   carry control characters, and redirect to refused addresses);
//! - a Pushgateway password in `[telemetry] push`, which the stand-in gateway echoes (with the
//!   `Authorization` header the client derives from it) in a 401 body.
//!
//! The runs: hostile rows loaded from jsonl into PostgreSQL and into SQLite with `persist`, read
//! back out of SQLite with `db-fetch`; then the digest (`db-fetch` from PostgreSQL →
//! `http-download` of URLs from the rows → `llm` → `persist` into SQLite, failures recorded with
//! `on_failure`, the checkpoint in PostgreSQL) with a text debug log, metrics served (scraped
//! while it runs) and pushed; again `--fresh` with a JSON debug log; with a key the LLM server
//! refuses for calls only (revoked: the run stops, exit 3); and with a key it refuses from the
//! start (exit 2). After them: `plan`, `plan --json`, `validate`, `status`, `status --json` of
//! every pipeline.
//!
//! What is asserted:
//!
//! - **No secret in any output**: stdout and stderr of every command, every file under the
//!   pipeline's folder (state store, WAL, summary, flight record, state files, sinks, SQLite
//!   sinks), the PostgreSQL tables (the store's and the data's), every `/metrics`, `/progress`
//!   and `/healthz` answer scraped during the run, and the body the Pushgateway got. Searched
//!   as raw bytes, percent-encoded, base64 (standard and URL-safe, at every alignment, so a
//!   `Basic` header is found) and for every 8-character piece of each secret, ignoring ASCII
//!   case. The servers' request logs show each secret was really sent, so the search means
//!   something.
//! - **No raw control character** (but the line end, and a tab, which the log's formatter
//!   keeps on purpose) in what the commands print, text or JSON, nor in the summary files.
//! - **Hostile values are bound, never interpolated**: quotes, `'; DROP TABLE items; --`,
//!   backslashes, placeholders (`$1`, `?1`, `:key`), control characters, NUL bytes, a 1 MiB
//!   string, as keys and as values, drawn and combined from the seed: every table is intact
//!   afterwards (row counts, a canary table, `PRAGMA integrity_check`), and every value comes
//!   back byte for byte through the SQLite sink and source and through the PostgreSQL sink and
//!   source. SQLite keeps NUL; PostgreSQL's `text` cannot hold it: such a row fails, alone,
//!   with the server's reason recorded (`status`), never lost silently.
//! - **URLs from data never reach refused addresses**: the only servers are on loopback. The
//!   public page server listens on 127.0.0.2:P (made public for `.test` names by
//!   `STAGEWISE_TEST_RESOLVE`), and traps listen on 127.0.0.1:P and [::1]:P, the same port, so
//!   that any URL naming loopback (`127.0.0.1`, `localhost`, `[::1]`, `0.0.0.0`, `127.1`,
//!   `2130706433`, `[::ffff:127.0.0.1]`, a `.test` name mapped to 127.0.0.1) lands on a trap if
//!   it gets through. Private and metadata addresses (10.x, 169.254.169.254, fd00:ec2::254,
//!   192.168.x) are named only in URLs that the guard must refuse before connecting. Each such
//!   URL, given directly or as a redirect from the public server, ends failed with the reason
//!   (`refused: … (loopback)`, `(private)`, `(cloud metadata)`…) after one attempt; the traps
//!   count 0 connections and no server ever sees a refused URL's path. A name that resolves to
//!   both a refused and the public address is fetched from the public one only.
//!
//! The PostgreSQL parts need `STAGEWISE_TEST_PG` (they fail without it under `CI=true`, and
//! skip loudly otherwise).

mod util;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::campaign::{scale, scaled, seed, Report};
use util::llm::{LlmConfig, LlmServer, Scenario};
use util::pg::{self, Db};
use util::{Rng, TestDir, KILL_GUARD};

// ---------------------------------------------------------------------------------------------
// The secrets and the search for them.

/// A secret, the environment variable that gives it, and how a client may encode it on the
/// wire (`ops:` before it, for HTTP basic authentication).
struct Secret {
    var: &'static str,
    value: String,
    userinfo: Option<&'static str>,
}

/// Letters and digits, `-` and `_` (which percent-encoding changes and a URL needs not), drawn
/// from the seed: no 8-character piece of it appears in anything else.
fn draw_secret(rng: &mut Rng, prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut out = prefix.to_owned();
    for i in 0..24 {
        if i == 8 {
            out.push('-');
        } else if i == 16 {
            out.push('_');
        }
        out.push(char::from(
            ALPHABET[(rng.next_u64() % ALPHABET.len() as u64) as usize],
        ));
    }
    out
}

fn secrets(rng: &mut Rng) -> Vec<Secret> {
    vec![
        Secret {
            var: "SEC_PG_PASSWORD",
            value: draw_secret(rng, "pg"),
            userinfo: None,
        },
        Secret {
            var: "SEC_LLM_KEY",
            value: draw_secret(rng, "sk-proj-"),
            userinfo: None,
        },
        Secret {
            var: "SEC_HTTP_TOKEN",
            value: draw_secret(rng, "tok"),
            userinfo: None,
        },
        Secret {
            var: "SEC_HTTP_KEY",
            value: draw_secret(rng, "hk"),
            userinfo: None,
        },
        Secret {
            var: "SEC_PUSH_PASSWORD",
            value: draw_secret(rng, "pw"),
            userinfo: Some("ops:"),
        },
    ]
}

/// RFC 4648 base64, standard alphabet, with padding (a `Basic` header's form).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One form of a secret to look for; matched ignoring ASCII case.
struct Needle {
    secret: &'static str,
    form: String,
    bytes: Vec<u8>,
}

/// Every form of every secret: each 8-byte piece (which covers the secret whole, upper-cased
/// too), percent-encoded, and base64 at the three alignments (the part of the encoding that
/// depends on the secret's bytes only), standard and URL-safe, and its basic-auth header.
fn needles(secrets: &[Secret]) -> Vec<Needle> {
    let mut out = Vec::new();
    for s in secrets {
        let value = s.value.as_bytes();
        for (i, w) in value.windows(8).enumerate() {
            out.push(Needle {
                secret: s.var,
                form: format!("the piece at {i}"),
                bytes: w.to_vec(),
            });
        }
        let encoded =
            percent_encoding::percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string();
        out.push(Needle {
            secret: s.var,
            form: "percent-encoded".into(),
            bytes: encoded.into_bytes(),
        });
        let mut plain: Vec<(String, Vec<u8>)> = vec![("".into(), value.to_vec())];
        if let Some(user) = s.userinfo {
            plain.push((format!("`{user}` and "), [user.as_bytes(), value].concat()));
        }
        for (what, bytes) in plain {
            for pad in 0..3 {
                let padded = [vec![b'x'; pad], bytes.clone()].concat();
                let enc = base64(&padded);
                let start = if pad == 0 { 0 } else { 4 };
                let inner = &enc[start..enc.len() - 4];
                for (alphabet, text) in [
                    ("base64", inner.to_owned()),
                    ("base64url", inner.replace('+', "-").replace('/', "_")),
                ] {
                    out.push(Needle {
                        secret: s.var,
                        form: format!("{what}{alphabet} at alignment {pad}"),
                        bytes: text.into_bytes(),
                    });
                }
            }
        }
    }
    out
}

/// What the search found: where, which secret, in which form, and the text around it.
#[derive(Debug)]
struct Finding {
    output: String,
    secret: &'static str,
    form: String,
    context: String,
}

/// Every output of the campaign, searched at the end in one pass per output: each 8-byte window
/// of it (lower-cased) is looked up among the needles' first 8 bytes.
struct Outputs {
    needles: Vec<Needle>,
    by_prefix: HashMap<u64, Vec<usize>>,
    bitmap: Vec<u64>,
    findings: Vec<Finding>,
    searched: u64,
    bytes: u64,
}

/// A key's bit in [`Outputs`]' bitmap.
fn bit(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 44) as usize
}

fn window_key(w: &[u8]) -> u64 {
    w.iter()
        .take(8)
        .fold(0u64, |k, b| (k << 8) | u64::from(b.to_ascii_lowercase()))
}

impl Outputs {
    fn new(secrets: &[Secret]) -> Outputs {
        let needles = needles(secrets);
        let mut by_prefix: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut bitmap = vec![0u64; (1 << 20) / 64];
        for (i, n) in needles.iter().enumerate() {
            assert!(n.bytes.len() >= 8, "{} {}", n.secret, n.form);
            let key = window_key(&n.bytes);
            by_prefix.entry(key).or_default().push(i);
            bitmap[bit(key) / 64] |= 1 << (bit(key) % 64);
        }
        Outputs {
            needles,
            by_prefix,
            bitmap,
            findings: Vec::new(),
            searched: 0,
            bytes: 0,
        }
    }

    /// Search `bytes`, an output called `what`: a rolling key of the last 8 bytes, lower-cased,
    /// looked up in a bitmap of the needles' first 8 bytes before the map (the tests run
    /// unoptimised, over megabytes).
    fn search(&mut self, what: &str, bytes: &[u8]) {
        self.searched += 1;
        self.bytes += bytes.len() as u64;
        let mut reported = HashSet::new();
        let mut key = 0u64;
        for (i, b) in bytes.iter().enumerate() {
            key = (key << 8) | u64::from(b.to_ascii_lowercase());
            if i < 7 || self.bitmap[bit(key) / 64] & (1 << (bit(key) % 64)) == 0 {
                continue;
            }
            let start = i - 7;
            let Some(hits) = self.by_prefix.get(&key) else {
                continue;
            };
            for &n in hits {
                let n = &self.needles[n];
                let end = start + n.bytes.len();
                if end <= bytes.len()
                    && bytes[start..end].eq_ignore_ascii_case(&n.bytes)
                    && reported.insert((n.secret, n.form.clone()))
                {
                    let from = start.saturating_sub(60);
                    let to = (end + 60).min(bytes.len());
                    self.findings.push(Finding {
                        output: what.to_owned(),
                        secret: n.secret,
                        form: n.form.clone(),
                        context: String::from_utf8_lossy(&bytes[from..to])
                            .escape_debug()
                            .to_string(),
                    });
                }
            }
        }
    }

    /// Every file under `dir`, recursively.
    fn search_files(&mut self, dir: &Path) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read a folder of the test") {
                let path = entry.expect("a folder entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let bytes = std::fs::read(&path)
                        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                    self.search(&path.display().to_string(), &bytes);
                }
            }
        }
    }
}

/// The first character of `text` that steers a terminal, with its place. The line end is the
/// output's own, and a tab is kept on purpose (the log's formatter says why): neither can start
/// a line nor send an escape sequence.
fn raw_control(text: &[u8]) -> Option<(usize, char)> {
    String::from_utf8_lossy(text)
        .char_indices()
        .find(|&(_, c)| c != '\n' && c != '\t' && stagewise_core::text::steers_the_terminal(c))
}

// ---------------------------------------------------------------------------------------------
// Servers: every one on a loopback address.

/// A request as a server read it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// How a [`Server`] answers.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// The public page server (127.0.0.2): `/page/N`, `/to?URL` (a 302 to `URL`), `/deny` (401
    /// echoing the request's credentials), `/ctl` (a 302 whose location holds control
    /// characters), anything else 404 echoing the request.
    Public,
    /// A listener that nothing may reach: counts connections, answers a page.
    Trap,
    /// A Pushgateway behind a proxy that refuses with a 401 quoting the request's head.
    Gateway,
}

struct Shared {
    role: Behaviour,
    stop: AtomicBool,
    connections: AtomicUsize,
    requests: Mutex<Vec<Seen>>,
    handlers: Mutex<Vec<JoinHandle<()>>>,
}

/// A small HTTP/1.1 server on `std::net`: one request per connection, a thread each.
struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    fn start(addr: &str, role: Behaviour) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            role,
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            handlers: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        let acceptor = thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        s.connections.fetch_add(1, Ordering::SeqCst);
                        let s2 = Arc::clone(&s);
                        let h = thread::spawn(move || {
                            let _ = serve(stream, &s2);
                        });
                        s.handlers.lock().expect("handlers").push(h);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Server {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<Seen> {
        self.shared.requests.lock().expect("requests").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let handlers: Vec<_> = self
            .shared
            .handlers
            .lock()
            .expect("handlers")
            .drain(..)
            .collect();
        for h in handlers {
            let _ = h.join();
        }
    }
}

fn serve(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 || raw.len() > 64 * 1024 {
            return Ok(());
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
    let mut seen = Seen {
        path,
        head,
        body: Vec::new(),
    };
    let length: usize = seen
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while raw.len() < head_end + length {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    seen.body = raw[head_end..].to_vec();
    shared.requests.lock().expect("requests").push(seen.clone());
    let echo = |seen: &Seen| {
        format!(
            "denied \u{1b}[31m{}\u{7} authorization={:?} x-api-key={:?}\r\nINFO summary outcome=finished\n",
            seen.head,
            seen.header("authorization").unwrap_or(""),
            seen.header("x-api-key").unwrap_or(""),
        )
    };
    let answer: Vec<u8> = match shared.role {
        Behaviour::Trap => respond(200, "text/html", &[], b"<html><body>trap</body></html>"),
        Behaviour::Gateway => respond(401, "text/plain", &[], echo(&seen).as_bytes()),
        Behaviour::Public => {
            let p = seen.path.clone();
            if let Some(to) = p.strip_prefix("/to?") {
                respond(302, "text/plain", &[("Location", to)], b"moved")
            } else if p.starts_with("/page/") {
                let body = format!(
                    "<!doctype html><html><head><meta charset=\"utf-8\"><title>Page {p}</title></head>\
                     <body><article><h1>Page {p}</h1><p>The council met on 3 March 2026 and \
                     approved the budget.\u{1b}]52;c;ZXZpbA==\u{7} \u{202e}desrever \u{9b}2J \
                     \r\nINFO summary outcome=finished</p></article></body></html>"
                );
                let auth = seen.header("authorization").unwrap_or("").to_owned();
                respond(
                    200,
                    "text/html; charset=utf-8",
                    &[("X-Echo", &auth)],
                    body.as_bytes(),
                )
            } else if p == "/deny" {
                let auth = seen.header("authorization").unwrap_or("").to_owned();
                let bearer = format!("Bearer realm=\"{auth}\"");
                respond(
                    401,
                    "text/plain",
                    &[("WWW-Authenticate", &bearer)],
                    echo(&seen).as_bytes(),
                )
            } else if p == "/ctl" {
                let mut out = b"HTTP/1.1 302 Found\r\nLocation: /page/ctl\x1b[2J\x07\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec();
                out.shrink_to_fit();
                out
            } else {
                respond(404, "text/plain", &[], echo(&seen).as_bytes())
            }
        }
    };
    stream.write_all(&answer)?;
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Both);
    Ok(())
}

fn respond(status: u16, content_type: &str, extra: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} Whatever\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    [head.into_bytes(), body.to_vec()].concat()
}

/// The public server on 127.0.0.2:P and the traps on 127.0.0.1:P and [::1]:P (if this host
/// has IPv6 loopback), on one port that all three could bind.
struct Net {
    public: Server,
    traps: Vec<Server>,
    port: u16,
}

impl Net {
    fn start() -> Net {
        for _ in 0..50 {
            let public = Server::start("127.0.0.2:0", Behaviour::Public).expect("bind 127.0.0.2");
            let port = public.addr.port();
            let Ok(v4) = Server::start(&format!("127.0.0.1:{port}"), Behaviour::Trap) else {
                continue;
            };
            let mut traps = vec![v4];
            match Server::start(&format!("[::1]:{port}"), Behaviour::Trap) {
                Ok(v6) => traps.push(v6),
                // The port is taken on ::1: try another. No IPv6 at all: ::1 cannot be reached
                // either, so there is nothing to trap.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(_) => {}
            }
            return Net {
                public,
                traps,
                port,
            };
        }
        panic!("no port free on 127.0.0.1, 127.0.0.2 and ::1 at once");
    }

    fn trapped(&self) -> usize {
        self.traps.iter().map(Server::connections).sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Running the binary, its output kept byte for byte.

struct Raw {
    what: String,
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Raw {
    fn text(&self) -> String {
        format!(
            "{}: exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.code,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }

    fn stdout_json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("not one JSON value ({e})\n{}", self.text()))
    }
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

/// The environment every command of the campaign gets: the secrets, the test resolver, and
/// the LLM server's base URL (its scenario).
struct Env {
    vars: Vec<(String, String)>,
}

/// `stagewise ARGS pipeline.toml` in `dir` with `env`, its outputs kept as bytes. Killed, and
/// the test failed, past the kill guard.
fn stagewise(dir: &Path, args: &[&str], env: &Env) -> Raw {
    stagewise_watched(dir, args, env, &Arc::default())
}

/// [`stagewise`], its stderr copied into `stderr` as it comes, for a thread to watch.
fn stagewise_watched(dir: &Path, args: &[&str], env: &Env, stderr: &Arc<Mutex<Vec<u8>>>) -> Raw {
    let mut cmd = Command::new(util::bin());
    cmd.current_dir(dir).args(args).arg("pipeline.toml");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("STAGEWISE_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
    for (k, v) in &env.vars {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stagewise");
    let pump = |mut from: Box<dyn Read + Send>, into: Arc<Mutex<Vec<u8>>>| {
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                into.lock().expect("output").extend_from_slice(&buf[..n]);
            }
        })
    };
    let stdout: Arc<Mutex<Vec<u8>>> = Arc::default();
    let out = pump(
        Box::new(child.stdout.take().expect("piped")),
        Arc::clone(&stdout),
    );
    let err = pump(
        Box::new(child.stderr.take().expect("piped")),
        Arc::clone(stderr),
    );
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if began.elapsed() > KILL_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kill guard: stagewise {args:?} ran past {KILL_GUARD:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    out.join().expect("stdout reader");
    err.join().expect("stderr reader");
    let stdout = std::mem::take(&mut *stdout.lock().expect("stdout"));
    let stderr = std::mem::take(&mut *stderr.lock().expect("stderr"));
    let folder = dir.file_name().unwrap_or_default().to_string_lossy();
    Raw {
        what: format!("stagewise {} pipeline.toml (in {folder})", args.join(" ")),
        code: status.code(),
        stdout,
        stderr,
    }
}

/// `GET path` of the runner's metrics server; the body of a 200, else None.
fn scrape(at: SocketAddr, path: &str) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&at, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    raw.starts_with(b"HTTP/1.1 200")
        .then(|| raw[at + 4..].to_vec())
}

/// Where the runner serves its metrics, once its log has said it (`listen=ADDRESS`).
fn served_at(stderr: &Mutex<Vec<u8>>) -> Option<SocketAddr> {
    let text = String::from_utf8_lossy(&stderr.lock().expect("stderr")).into_owned();
    let line = text.lines().find(|l| l.contains("serving /metrics"))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))?
        .trim_matches('"')
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Hostile values.

/// The values every campaign tries, before the seeded combinations of them.
fn base_values() -> Vec<String> {
    let mut v: Vec<String> = [
        "'; DROP TABLE items; --",
        "Robert'); DROP TABLE items;--",
        "\"; DROP TABLE items; --",
        "' OR '1'='1",
        "''''",
        "\\'; DROP TABLE items; --",
        "\\",
        "\\\\\\",
        "C:\\path\\to\\file\\",
        "$1",
        "?1 ?2 ?",
        ":key :title ::text",
        "$$; DROP TABLE items; $$",
        "$limit",
        "%s %d %n {{key}} ${SEC_PG_PASSWORD}",
        "*/ DROP TABLE items; /*",
        "-- comment\n; DROP TABLE items",
        "line one\nline two\r\nthree\ttabbed",
        "\u{1b}[31mred\u{1b}]52;c;ZXZpbA==\u{7}\u{9b}2J\u{202e}desrever\u{2028}",
        "na\u{ef}ve caf\u{e9} \u{1f600} \u{fffd} \u{feff}",
        "",
        " ",
        "a\0b",
        "\0",
        "\0'; DROP TABLE items; --\0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // A huge one: 1 MiB of the worst of them.
    let piece = "'; DROP TABLE items; -- \\ \" $1 :key ";
    v.push(piece.repeat((1 << 20) / piece.len() + 1)[..1 << 20].to_owned());
    v
}

/// `base` and `extra` seeded combinations of two or three of its short values.
fn hostile_values(rng: &mut Rng, extra: u64) -> Vec<String> {
    let base = base_values();
    let short: Vec<&String> = base.iter().filter(|v| v.len() < 1000).collect();
    let mut out = base.clone();
    for _ in 0..extra {
        let n = rng.range(2, 3);
        let mut v = String::new();
        for _ in 0..n {
            v.push_str(short[rng.range(0, short.len() as u64 - 1) as usize]);
        }
        out.push(v);
    }
    out
}

/// One row of the hostile input: its key, title and body (a value each, the key sometimes one
/// too) and its URL.
#[derive(Debug, Clone)]
struct Row {
    key: String,
    title: String,
    body: String,
    url: String,
}

impl Row {
    fn has_nul(&self) -> bool {
        [&self.key, &self.title, &self.body, &self.url]
            .iter()
            .any(|s| s.contains('\0'))
    }
}

/// A URL from data that must be refused, and the reason its error must give.
struct Refused {
    url: String,
    reason: &'static str,
}

// ---------------------------------------------------------------------------------------------
// The pipelines.

fn write_pipeline(dir: &TestDir, name: &str, body: &str) {
    let text = format!(
        "[pipeline]\nname = \"{name}\"\nbatch_size = 100000\nheartbeat = \"200ms\"\n\n{}",
        util::dedent(body)
    );
    std::fs::create_dir_all(dir.join(name)).expect("a folder per pipeline");
    dir.write(&format!("{name}/pipeline.toml"), text);
}

/// The PostgreSQL URL of the campaign's role, its password from the environment.
fn pg_url(server: &(String, u16, String), role: &str) -> String {
    format!(
        "postgres://{role}:${{SEC_PG_PASSWORD}}@{}:{}/{}",
        server.0, server.1, server.2
    )
}

/// A role of the campaign's own with the PostgreSQL secret as its password; dropped with it
/// (after the database, which is declared after it and so dropped first).
struct PgRole {
    name: String,
    admin: String,
}

impl Drop for PgRole {
    fn drop(&mut self) {
        let sql = format!("DROP ROLE IF EXISTS \"{}\"", self.name);
        if let Err(e) = pg::try_connect(&self.admin).and_then(|mut c| c.batch_execute(&sql)) {
            eprintln!("could not drop role {}: {e}", self.name);
        }
    }
}

#[test]
fn no_secret_leaks_no_value_is_interpolated_no_refused_address_is_reached() {
    let Some(admin) = pg::test_pg() else { return };
    let mut rng = Rng::new(seed("security", 0x5ec_0021));
    let mut report = Report::new("security");
    let secrets = secrets(&mut rng);
    let secret = |var: &str| {
        secrets
            .iter()
            .find(|s| s.var == var)
            .map(|s| s.value.clone())
            .expect("a secret of the campaign")
    };

    // PostgreSQL: a database, and a role whose password is the secret.
    let role_name = format!("sec_{}_{}", std::process::id(), rng.range(0, 1 << 30));
    let role = PgRole {
        name: role_name.clone(),
        admin: admin.clone(),
    };
    let mut db = Db::create_on(&admin);
    pg::connect(&admin)
        .batch_execute(&format!(
            "CREATE ROLE \"{role_name}\" LOGIN PASSWORD '{}'; GRANT ALL ON DATABASE \"{}\" TO \"{role_name}\"",
            secret("SEC_PG_PASSWORD"),
            db.name()
        ))
        .expect("create the campaign's role");
    db.execute(&format!(
        "GRANT ALL ON SCHEMA public TO \"{role_name}\";
         CREATE TABLE items (id text PRIMARY KEY, title text NOT NULL, body text NOT NULL, url text NOT NULL);
         CREATE TABLE canary (id int PRIMARY KEY, note text NOT NULL);
         INSERT INTO canary VALUES (1, 'still here');
         GRANT ALL ON items, canary TO \"{role_name}\""
    ));
    let server = {
        let config: postgres::Config = db.url().parse().expect("the test URL parses");
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            other => panic!("the test cluster is not on TCP: {other:?}"),
        };
        (host, config.get_ports()[0], db.name().to_owned())
    };

    // The servers.
    let net = Net::start();
    let port = net.port;
    let llm = LlmServer::start(LlmConfig {
        latency: Duration::from_millis(20),
        ..LlmConfig::default()
    });
    // The same API for a key revoked after the run's check: models listed, calls refused.
    let revoked = LlmServer::start(LlmConfig {
        lists_models_for_any_key: true,
        ..LlmConfig::default()
    });
    let gateway = Server::start("127.0.0.1:0", Behaviour::Gateway).expect("bind the gateway");

    // The rows: hostile values as titles, bodies and some keys, each with a public URL; then
    // rows whose URL must be refused, and a few public ones that go through redirects.
    let values = hostile_values(&mut rng, scaled(20));
    let public = |path: &str| format!("http://pub.test:{port}{path}");
    let mut rows = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let other = &values[rng.range(0, values.len() as u64 - 1) as usize];
        let key = if i % 4 == 1 && v.len() < 200 {
            format!("{v}#{i}")
        } else {
            format!("h{i}")
        };
        rows.push(Row {
            key,
            title: v.clone(),
            body: other.clone(),
            url: public(&format!("/page/{i}")),
        });
    }
    let hostile_rows = rows.len();
    let trap = |host: &str, i: usize| format!("http://{host}:{port}/refused/{i}");
    let mut refused: Vec<Refused> = Vec::new();
    let direct: Vec<(String, &'static str)> = vec![
        (trap("127.0.0.1", 0), "(loopback)"),
        (trap("localhost", 1), "(loopback)"),
        (trap("[::1]", 2), "(loopback)"),
        (trap("0.0.0.0", 3), "(\"this network\")"),
        (trap("127.1", 4), "(loopback)"),
        (trap("2130706433", 5), "(loopback)"),
        (trap("0x7f.0.0.1", 6), "(loopback)"),
        (trap("[::ffff:127.0.0.1]", 7), "(loopback)"),
        (trap("127.0.0.2", 8), "(loopback)"),
        (trap("lo.test", 9), "(loopback)"),
        (trap("rebind.test", 10), "(loopback)"),
        (trap("10.0.0.1", 11), "(private)"),
        (trap("192.168.1.1", 12), "(private)"),
        (
            "http://169.254.169.254/latest/meta-data/refused/13".into(),
            "(cloud metadata)",
        ),
        (
            "http://[fd00:ec2::254]/latest/refused/14".into(),
            "(cloud metadata (AWS))",
        ),
        (trap("meta.test", 15), "(cloud metadata)"),
        (trap("[::ffff:10.0.0.1]", 16), "(private)"),
        (
            "file:///etc/passwd".into(),
            "refused: file:///etc/passwd is a local file",
        ),
    ];
    for (url, reason) in direct {
        refused.push(Refused { url, reason });
    }
    // The same places as redirects from the public server.
    let targets: Vec<(String, &'static str)> = vec![
        (trap("127.0.0.1", 100), "(loopback)"),
        (trap("localhost", 101), "(loopback)"),
        (trap("[::1]", 102), "(loopback)"),
        (trap("0.0.0.0", 103), "(\"this network\")"),
        (trap("lo.test", 104), "(loopback)"),
        (trap("127.0.0.2", 105), "(loopback)"),
        (
            "http://169.254.169.254/latest/meta-data/refused/106".into(),
            "(cloud metadata)",
        ),
        (trap("10.0.0.1", 107), "(private)"),
        (trap("[::ffff:127.0.0.1]", 108), "(loopback)"),
    ];
    for (target, reason) in targets {
        refused.push(Refused {
            url: public(&format!("/to?{target}")),
            reason,
        });
    }
    for (i, r) in refused.iter().enumerate() {
        rows.push(Row {
            key: format!("r{i}"),
            title: format!("refused {i}"),
            body: "nothing".into(),
            url: r.url.clone(),
        });
    }
    // Public ones that must be fetched: through a redirect to another public name (which must
    // not get the headers), through a name that also resolves to loopback, and two that fail
    // otherwise (a 401 that echoes the credentials, a location with control characters).
    let fetched_extra = [
        (
            "p0",
            public("/to?http://pub2.test:PORT/page/other").replace("PORT", &port.to_string()),
        ),
        ("p1", format!("http://mixed.test:{port}/page/mixed")),
    ];
    for (key, url) in &fetched_extra {
        rows.push(Row {
            key: (*key).into(),
            title: "public".into(),
            body: "public".into(),
            url: url.clone(),
        });
    }
    let failing_public = [("f0", public("/deny")), ("f1", public("/ctl"))];
    for (key, url) in &failing_public {
        rows.push(Row {
            key: (*key).into(),
            title: "public".into(),
            body: "public".into(),
            url: url.clone(),
        });
    }

    let llm_base = |scenario: Scenario| llm.base_url(scenario);
    let mut env = Env {
        vars: secrets
            .iter()
            .map(|s| (s.var.to_owned(), s.value.clone()))
            .collect(),
    };
    env.vars.push((
        "STAGEWISE_TEST_RESOLVE".into(),
        "pub.test=127.0.0.2;pub2.test=127.0.0.2;lo.test=127.0.0.1;rebind.test=127.0.0.1,::1;\
         meta.test=169.254.169.254;mixed.test=127.0.0.1,127.0.0.2"
            .into(),
    ));
    env.vars
        .push(("SEC_LLM_BASE".into(), llm_base(Scenario::AnswerEcho)));

    let dir = TestDir::new();
    let jsonl: String = rows
        .iter()
        .map(|r| {
            json!({"key": r.key, "title": r.title, "body": r.body, "url": r.url}).to_string() + "\n"
        })
        .collect();
    let mut runs: Vec<Raw> = Vec::new();

    // 1. Into PostgreSQL.
    let store_url = pg_url(&server, &role_name);
    write_pipeline(
        &dir,
        "load-pg",
        &format!(
            r#"
            [[stage]]
            name = "src"
            kind = "jsonl"
            path = "in.jsonl"

            [[stage]]
            name = "save"
            kind = "persist"
            url = "{store_url}"
            statement = "INSERT INTO items (id, title, body, url) VALUES (:key, :title, :body, :url) ON CONFLICT (id) DO UPDATE SET title = excluded.title, body = excluded.body, url = excluded.url"
            retry = {{ attempts = 2, initial = "10ms" }}
            "#
        ),
    );
    dir.write("load-pg/in.jsonl", &jsonl);
    let load_pg = stagewise(&dir.join("load-pg"), &["run"], &env);
    let nul_rows: Vec<&Row> = rows.iter().filter(|r| r.has_nul()).collect();
    assert!(!nul_rows.is_empty(), "the campaign has NUL values");
    assert_eq!(
        load_pg.code,
        Some(1),
        "NUL rows fail, the others are written\n{}",
        load_pg.text()
    );
    runs.push(load_pg);

    // What PostgreSQL holds: exactly the rows without NUL, byte for byte; the canary intact.
    let held: BTreeMap<String, (String, String, String)> = {
        let mut client = db.connect();
        client
            .query("SELECT id, title, body, url FROM items", &[])
            .expect("read items")
            .into_iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
            .collect()
    };
    let expected_pg: BTreeMap<String, (String, String, String)> = rows
        .iter()
        .filter(|r| !r.has_nul())
        .map(|r| {
            (
                r.key.clone(),
                (r.title.clone(), r.body.clone(), r.url.clone()),
            )
        })
        .collect();
    assert_eq!(held.len(), expected_pg.len(), "rows in PostgreSQL");
    for (key, want) in &expected_pg {
        let got = held
            .get(key)
            .unwrap_or_else(|| panic!("{key:?} not in PostgreSQL"));
        assert!(got == want, "{key:?} changed on its way into PostgreSQL");
    }
    assert_eq!(
        db.query_strings("SELECT note FROM canary"),
        ["still here"],
        "the canary table"
    );
    // Each NUL row failed with PostgreSQL's reason.
    let status = stagewise(&dir.join("load-pg"), &["status", "--json"], &env);
    let failed = failed_items(&status);
    for r in &nul_rows {
        let error = failed
            .get(&r.key)
            .unwrap_or_else(|| panic!("{:?} (with NUL) did not fail\n{}", r.key, status.text()));
        assert!(
            error.contains("0x00") || error.to_lowercase().contains("nul"),
            "{:?}: the reason should name the NUL byte: {error}",
            r.key
        );
    }
    assert_eq!(
        failed.len(),
        nul_rows.len(),
        "only the NUL rows fail\n{}",
        status.text()
    );
    runs.push(status);

    // 2. Into SQLite, and 3. back out of it.
    let sqlite_items = dir.join("load-sqlite/items.db");
    std::fs::create_dir_all(dir.join("load-sqlite")).expect("folder");
    {
        let c = rusqlite::Connection::open(&sqlite_items).expect("create items.db");
        c.execute_batch(
            "CREATE TABLE items (id TEXT PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL, url TEXT NOT NULL);
             CREATE TABLE canary (id INTEGER PRIMARY KEY, note TEXT NOT NULL);
             INSERT INTO canary VALUES (1, 'still here');",
        )
        .expect("create the SQLite tables");
    }
    write_pipeline(
        &dir,
        "load-sqlite",
        r#"
        [[stage]]
        name = "src"
        kind = "jsonl"
        path = "in.jsonl"

        [[stage]]
        name = "save"
        kind = "persist"
        url = "sqlite:items.db"
        statement = "INSERT INTO items (id, title, body, url) VALUES (:key, :title, :body, :url) ON CONFLICT (id) DO UPDATE SET title = excluded.title, body = excluded.body, url = excluded.url"
        "#,
    );
    dir.write("load-sqlite/in.jsonl", &jsonl);
    let load_sqlite = stagewise(&dir.join("load-sqlite"), &["run"], &env);
    // SQLite's text holds NUL: every row is written, NUL and all.
    assert_eq!(load_sqlite.code, Some(0), "{}", load_sqlite.text());
    let sqlite_status = stagewise(&dir.join("load-sqlite"), &["status", "--json"], &env);
    assert_eq!(sqlite_status.code, Some(0), "{}", sqlite_status.text());
    {
        let c = rusqlite::Connection::open(&sqlite_items).expect("open items.db");
        let integrity: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(integrity, "ok");
        let note: String = c
            .query_row("SELECT note FROM canary", [], |r| r.get(0))
            .expect("the canary table");
        assert_eq!(note, "still here");
        let mut stmt = c
            .prepare("SELECT id, title, body, url FROM items")
            .expect("select");
        let got: BTreeMap<String, (String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
            .expect("query")
            .map(|r| r.expect("a row"))
            .collect();
        for r in &rows {
            let have = got
                .get(&r.key)
                .unwrap_or_else(|| panic!("{:?} not in SQLite", r.key));
            assert!(
                *have == (r.title.clone(), r.body.clone(), r.url.clone()),
                "{:?} changed on its way into SQLite",
                r.key
            );
        }
        assert_eq!(got.len(), rows.len(), "rows in SQLite");
    }
    runs.push(load_sqlite);
    runs.push(sqlite_status);

    write_pipeline(
        &dir,
        "unload-sqlite",
        r#"
        [[stage]]
        name = "src"
        kind = "db-fetch"
        url = "sqlite:../load-sqlite/items.db"
        query = "SELECT id, title, body, url FROM items ORDER BY id LIMIT $limit"
        key = "id"

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let unload = stagewise(&dir.join("unload-sqlite"), &["run"], &env);
    assert_eq!(unload.code, Some(0), "{}", unload.text());
    {
        let text = std::fs::read_to_string(dir.join("unload-sqlite/out.jsonl")).expect("the sink");
        let by_key: HashMap<&str, &Row> = rows.iter().map(|r| (r.key.as_str(), r)).collect();
        let mut n = 0;
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("a JSON line");
            let key = v["key"].as_str().expect("a key");
            let r = by_key
                .get(key)
                .unwrap_or_else(|| panic!("{key:?}: not a row"));
            for (field, want) in [("title", &r.title), ("body", &r.body), ("url", &r.url)] {
                assert!(
                    v[field].as_str() == Some(want.as_str()),
                    "{key:?}: `{field}` changed on its way out of SQLite"
                );
            }
            n += 1;
        }
        assert_eq!(n, rows.len(), "every row read back");
    }
    runs.push(unload);

    // 4. The digest: from PostgreSQL, pages from the rows' URLs, the LLM, into SQLite; a text
    // log at debug; metrics served (scraped meanwhile) and pushed.
    let digest = dir.join("digest");
    std::fs::create_dir_all(&digest).expect("folder");
    {
        let c = rusqlite::Connection::open(digest.join("results.db")).expect("create results.db");
        c.execute_batch(
            "CREATE TABLE results (id TEXT PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL, html TEXT, facts TEXT);
             CREATE TABLE failures (id TEXT PRIMARY KEY, stage TEXT NOT NULL, error TEXT NOT NULL);
             CREATE TABLE canary (id INTEGER PRIMARY KEY, note TEXT NOT NULL);
             INSERT INTO canary VALUES (1, 'still here');",
        )
        .expect("create the results tables");
    }
    let fetch_url = pg_url(&server, &role_name);
    write_pipeline(
        &dir,
        "digest",
        &format!(
            r#"
            [checkpoint]
            store = "{fetch_url}"

            [telemetry]
            listen = "127.0.0.1:0"
            push = "http://ops:${{SEC_PUSH_PASSWORD}}@127.0.0.1:{gw}"
            push_timeout = "2s"

            [[stage]]
            name = "fetch"
            kind = "db-fetch"
            url = "{fetch_url}"
            query = "SELECT id, title, body, url FROM items ORDER BY id LIMIT $limit"
            key = "id"

            [[stage]]
            name = "download"
            kind = "http-download"
            headers = {{ Authorization = "Bearer ${{SEC_HTTP_TOKEN}}", X-Api-Key = "${{SEC_HTTP_KEY}}" }}
            timeout = "5s"
            connect_timeout = "1s"
            retry = {{ attempts = 2, initial = "10ms", max = "20ms" }}

            [[stage]]
            name = "facts"
            kind = "llm"
            provider = "openai"
            base_url = "${{SEC_LLM_BASE}}"
            model = "gpt-test"
            api_key_env = "SEC_LLM_KEY"
            prompt = "Facts of {{{{title}}}}: {{{{html}}}}"
            max_input_chars = 2000
            timeout = "10s"
            retry = {{ attempts = 2, initial = "10ms" }}

            [[stage]]
            name = "save"
            kind = "persist"
            url = "sqlite:results.db"
            statement = "INSERT INTO results (id, title, body, html, facts) VALUES (:key, :title, :body, :html, :facts) ON CONFLICT (id) DO UPDATE SET title = excluded.title, body = excluded.body, html = excluded.html, facts = excluded.facts"
            on_failure = "INSERT INTO failures (id, stage, error) VALUES (:key, :stage, :error) ON CONFLICT (id) DO UPDATE SET stage = excluded.stage, error = excluded.error"
            "#,
            gw = gateway.addr.port()
        ),
    );
    let scraped: Mutex<Vec<(String, Vec<u8>)>> = Mutex::new(Vec::new());
    let scrape_until = AtomicBool::new(false);
    let live_stderr: Arc<Mutex<Vec<u8>>> = Arc::default();
    let scraper = || {
        let began = Instant::now();
        while !scrape_until.load(Ordering::SeqCst) && began.elapsed() < KILL_GUARD {
            if let Some(at) = served_at(&live_stderr) {
                for path in ["/metrics", "/progress", "/healthz"] {
                    if let Some(body) = scrape(at, path) {
                        scraped
                            .lock()
                            .expect("scraped")
                            .push((path.to_owned(), body));
                    }
                }
            }
            thread::sleep(Duration::from_millis(30));
        }
    };
    let mut text_env = Env {
        vars: env.vars.clone(),
    };
    text_env.vars.push(("STAGEWISE_LOG".into(), "debug".into()));
    let digest_run = thread::scope(|scope| {
        let scraping = scope.spawn(scraper);
        let run = stagewise_watched(&digest, &["run"], &text_env, &live_stderr);
        scrape_until.store(true, Ordering::SeqCst);
        scraping.join().expect("the scraper");
        run
    });
    assert_eq!(
        digest_run.code,
        Some(1),
        "refused URLs fail, the rest is done\n{}",
        digest_run.text()
    );
    let scraped = scraped.into_inner().expect("scraped");
    let metrics_scrapes = scraped.iter().filter(|(p, _)| p == "/metrics").count();
    assert!(
        metrics_scrapes >= 1,
        "/metrics was never scraped during the run\n{}",
        digest_run.text()
    );

    // Who got what: the secrets were really used.
    let public_requests = net.public.requests();
    let token = format!("Bearer {}", secret("SEC_HTTP_TOKEN"));
    let page_requests: Vec<&Seen> = public_requests
        .iter()
        .filter(|r| {
            r.path
                .strip_prefix("/page/")
                .is_some_and(|i| i.parse::<usize>().is_ok_and(|i| i < hostile_rows))
        })
        .collect();
    assert!(
        page_requests.len() >= hostile_rows - nul_rows.len()
            && page_requests
                .iter()
                .all(|r| r.header("authorization") == Some(token.as_str())),
        "the pages were fetched with the header secret"
    );
    let other = public_requests
        .iter()
        .find(|r| r.path == "/page/other")
        .expect("the redirect to pub2.test was followed");
    assert_eq!(
        other.header("host"),
        Some(format!("pub2.test:{port}").as_str())
    );
    assert_eq!(
        other.header("authorization"),
        None,
        "the headers followed a redirect to another origin"
    );
    assert_eq!(
        other.header("x-api-key"),
        None,
        "the headers followed a redirect to another origin"
    );
    assert!(
        llm.requests()
            .iter()
            .any(|r| r.api_key() == Some(secret("SEC_LLM_KEY").as_str())),
        "the LLM got the key"
    );
    let pushes = gateway.requests();
    assert_eq!(
        pushes.len(),
        1,
        "one push at the end\n{}",
        digest_run.text()
    );
    assert!(
        String::from_utf8_lossy(&pushes[0].body).contains("stagewise_run_items"),
        "the push held the metrics"
    );

    // Refused addresses: failed after one attempt with the reason, and never reached.
    let status = stagewise(&digest, &["status", "--json"], &env);
    let failed = failed_items_full(&status);
    for (i, r) in refused.iter().enumerate() {
        let key = format!("r{i}");
        let f = failed
            .get(&key)
            .unwrap_or_else(|| panic!("{} was not refused\n{}", r.url, status.text()));
        assert_eq!(f["stage"], "download", "{}: {f}", r.url);
        assert_eq!(f["attempts"], 1, "{}: a refusal is not retried: {f}", r.url);
        let error = f["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("refused") && error.contains(r.reason),
            "{}: the error should say refused {}: {error}",
            r.url,
            r.reason
        );
    }
    report.set("refused_urls", refused.len() as u64);
    let trapped = net.trapped();
    report.set("connections_to_refused", trapped as u64);
    report.set("traps", net.traps.len() as u64);
    assert_eq!(trapped, 0, "a refused URL reached a loopback listener");
    for s in std::iter::once(&net.public).chain(&net.traps) {
        let leaked: Vec<String> = s
            .requests()
            .into_iter()
            // The public server's own redirects name them in their query.
            .filter(|r| r.path.contains("/refused/") && !r.path.starts_with("/to?"))
            .map(|r| r.path)
            .collect();
        assert!(leaked.is_empty(), "refused URLs were requested: {leaked:?}");
    }
    for (key, _) in &fetched_extra {
        assert!(!failed.contains_key(*key), "{key}: {:?}", failed.get(*key));
    }
    for (key, _) in &failing_public {
        assert!(
            failed.contains_key(*key),
            "{key} should fail\n{}",
            status.text()
        );
    }
    assert!(
        public_requests.iter().any(|r| r.path == "/page/mixed"),
        "a name that also resolves to loopback is fetched from its public address"
    );

    // Hostile values through PostgreSQL's source and SQLite's sink, byte for byte; the failures
    // recorded with their reasons.
    {
        let c = rusqlite::Connection::open(digest.join("results.db")).expect("open results.db");
        let integrity: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(integrity, "ok");
        let note: String = c
            .query_row("SELECT note FROM canary", [], |r| r.get(0))
            .expect("the canary table");
        assert_eq!(note, "still here");
        let mut stmt = c
            .prepare("SELECT id, title, body FROM results")
            .expect("select");
        let got: BTreeMap<String, (String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
            .expect("query")
            .map(|r| r.expect("a row"))
            .collect();
        for r in rows[..hostile_rows].iter().filter(|r| !r.has_nul()) {
            let have = got.get(&r.key).unwrap_or_else(|| {
                panic!("{:?} not in the results: {:?}", r.key, failed.get(&r.key))
            });
            assert!(
                *have == (r.title.clone(), r.body.clone()),
                "{:?} changed on its way through PostgreSQL and SQLite",
                r.key
            );
        }
        let recorded: i64 = c
            .query_row("SELECT count(*) FROM failures WHERE error <> ''", [], |r| {
                r.get(0)
            })
            .expect("count failures");
        assert_eq!(
            recorded as usize,
            failed.len(),
            "every failure recorded by `on_failure`"
        );
    }
    assert_eq!(
        db.query_strings("SELECT note FROM canary"),
        ["still here"],
        "the canary table"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM items") as usize,
        expected_pg.len()
    );
    report.set("hostile_values", values.len() as u64);
    report.set("rows", rows.len() as u64);
    report.set("metrics_scrapes", metrics_scrapes as u64);
    runs.push(digest_run);
    runs.push(status);

    // 5. Again, fresh, with a JSON log at debug; 6. with a key that the LLM server lists its
    // models for but refuses for calls, echoing it (revoked mid-run: the run stops); 7. with
    // a key refused from the start, which the run's check of the endpoint finds.
    let with_base = |base: String, log: bool| {
        let mut vars = env.vars.clone();
        vars.retain(|(k, _)| k != "SEC_LLM_BASE");
        vars.push(("SEC_LLM_BASE".into(), base));
        if log {
            vars.push(("STAGEWISE_LOG".into(), "debug".into()));
        }
        Env { vars }
    };
    let json = ["run", "--fresh", "--log-format", "json"];
    let json_run = stagewise(
        &digest,
        &json,
        &with_base(llm_base(Scenario::AnswerEcho), true),
    );
    assert_eq!(json_run.code, Some(1), "{}", json_run.text());
    let revoked_run = stagewise(
        &digest,
        &["run", "--fresh"],
        &with_base(revoked.base_url(Scenario::UnauthorizedEcho), false),
    );
    assert_eq!(
        revoked_run.code,
        Some(3),
        "a revoked key stops the run\n{}",
        revoked_run.text()
    );
    let refused_run = stagewise(
        &digest,
        &json,
        &with_base(llm_base(Scenario::UnauthorizedEcho), false),
    );
    assert_eq!(
        refused_run.code,
        Some(2),
        "a refused key stops the run at its start\n{}",
        refused_run.text()
    );
    for run in [&revoked_run, &refused_run] {
        let text = String::from_utf8_lossy(&run.stderr);
        assert!(
            text.contains("401") && text.contains("Incorrect API key provided: ***"),
            "the server's 401, its echo of the key hidden\n{}",
            run.text()
        );
    }
    assert!(
        revoked.calls_with_status(401) >= 1,
        "the revoked key's calls were refused"
    );
    for run in [&json_run, &refused_run] {
        for line in String::from_utf8_lossy(&run.stderr).lines() {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("a JSON log line that is not JSON ({e}): {line}"));
        }
    }
    runs.extend([json_run, revoked_run, refused_run]);
    let pushes = gateway.requests();
    let json_env = with_base(llm_base(Scenario::UnauthorizedEcho), false);

    // 8. Every reading command of every pipeline.
    for name in ["load-pg", "load-sqlite", "unload-sqlite", "digest"] {
        for args in [
            &["plan"][..],
            &["plan", "--json"],
            &["validate"],
            &["status"],
            &["status", "--json"],
        ] {
            let out = stagewise(&dir.join(name), args, &json_env);
            assert!(matches!(out.code, Some(0 | 1)), "{name}: {}", out.text());
            runs.push(out);
        }
    }

    // The search.
    let searching = Instant::now();
    let mut outputs = Outputs::new(&secrets);
    for run in &runs {
        outputs.search(&format!("{} (stdout)", run.what), &run.stdout);
        outputs.search(&format!("{} (stderr)", run.what), &run.stderr);
        for (what, bytes) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
            if let Some((at, c)) = raw_control(bytes) {
                panic!(
                    "{} ({what}) holds a raw control character {c:?} at byte {at}\n{}",
                    run.what,
                    run.text()
                );
            }
        }
    }
    for (path, body) in &scraped {
        outputs.search(&format!("GET {path} during the run"), body);
    }
    for (i, push) in pushes.iter().enumerate() {
        outputs.search(&format!("the push {i}'s body"), &push.body);
    }
    outputs.search_files(dir.path());
    for name in ["load-pg", "load-sqlite", "unload-sqlite", "digest"] {
        let summary = dir.join(&format!("{name}/.stagewise/{name}.summary.json"));
        if let Ok(bytes) = std::fs::read(&summary) {
            if let Some((at, c)) = raw_control(&bytes) {
                panic!(
                    "{} holds a raw control character {c:?} at byte {at}",
                    summary.display()
                );
            }
        }
    }
    // PostgreSQL: the store's tables and the data's.
    let mut schemas = db.query_rows(
        "SELECT table_schema, table_name FROM information_schema.tables \
         WHERE table_schema IN ('public', 'stagewise')",
    );
    schemas.sort();
    assert!(
        schemas.iter().any(|r| r[0].as_deref() == Some("stagewise")),
        "the digest's store is in PostgreSQL"
    );
    for row in schemas {
        let (schema, table) = (
            row[0].clone().unwrap_or_default(),
            row[1].clone().unwrap_or_default(),
        );
        let mut text = String::new();
        for line in db.query_strings(&format!("SELECT t::text FROM \"{schema}\".\"{table}\" t")) {
            text.push_str(&line);
            text.push('\n');
        }
        outputs.search(
            &format!("PostgreSQL table {schema}.{table}"),
            text.as_bytes(),
        );
    }
    eprintln!(
        "campaign security: {} outputs, {} bytes searched in {:.1?}",
        outputs.searched,
        outputs.bytes,
        searching.elapsed()
    );
    report.set("runs", runs.len() as u64);
    report.set("outputs_searched", outputs.searched);
    report.set("bytes_searched", outputs.bytes);
    report.set("secrets_found", outputs.findings.len() as u64);
    assert!(
        outputs.findings.is_empty(),
        "secrets found in the outputs:\n{}",
        outputs
            .findings
            .iter()
            .map(|f| format!(
                "- {} in {}, {}: …{}…",
                f.secret, f.output, f.form, f.context
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    report.set("scale", scale());
    report.finish();
    drop(db);
    drop(role);
}

/// `status --json`'s failed items: key → error.
fn failed_items(out: &Raw) -> BTreeMap<String, String> {
    failed_items_full(out)
        .into_iter()
        .map(|(k, v)| (k, v["error"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// `status --json`'s failed items: key → the item as listed.
fn failed_items_full(out: &Raw) -> BTreeMap<String, Value> {
    assert_eq!(out.code, Some(0), "{}", out.text());
    let status = out.stdout_json();
    status["failed"]
        .as_array()
        .unwrap_or_else(|| panic!("no `failed` list\n{}", out.text()))
        .iter()
        .map(|f| (f["key"].as_str().unwrap_or_default().to_owned(), f.clone()))
        .collect()
}

/// The search finds what it claims to: every form of a secret, in any case, at any alignment;
/// and nothing shorter than a piece.
#[test]
fn the_search_finds_every_form_of_a_secret() {
    let secrets = secrets(&mut Rng::new(7));
    let value = |var: &str| {
        secrets
            .iter()
            .find(|s| s.var == var)
            .map(|s| s.value.clone())
            .expect("a secret")
    };
    let (key, push) = (value("SEC_LLM_KEY"), value("SEC_PUSH_PASSWORD"));
    let encoded =
        percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC).to_string();
    let found = [
        format!("a piece {} in the middle", &key[5..13]),
        format!("upper-cased {}", key.to_uppercase()),
        format!("encoded {encoded}"),
        format!(
            "authorization: Basic {}",
            base64(format!("ops:{push}").as_bytes())
        ),
        format!("at alignment 2: {}", base64(format!("xy{key}").as_bytes())),
        format!(
            "url-safe: {}",
            base64(format!("z{push}").as_bytes())
                .replace('+', "-")
                .replace('/', "_")
        ),
    ];
    for text in &found {
        let mut outputs = Outputs::new(&secrets);
        outputs.search("text", text.as_bytes());
        assert!(!outputs.findings.is_empty(), "not found in {text:?}");
    }
    let mut outputs = Outputs::new(&secrets);
    outputs.search("text", format!("seven {} only", &key[3..10]).as_bytes());
    assert!(outputs.findings.is_empty(), "{:?}", outputs.findings);
}
