//! How values are written for people: durations as they are typed ("4m31.5s"), URLs and
//! connection strings with their passwords hidden, panic payloads as messages, untrusted text
//! with whatever steers a terminal escaped.

use std::time::Duration;

/// A duration in seconds, to the microsecond: how log events give durations (`delay_secs`).
pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e6
}

/// A duration as people write it: "0s", "350µs", "500ms", "2.017s", "4m31.5s", "1h2m".
/// Shown to the millisecond from one second up; components that are zero are left out.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return match d.as_micros() {
            0 => "0s".to_owned(),
            us => format!("{us}µs"),
        };
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let hours = ms / 3_600_000;
    let minutes = ms / 60_000 % 60;
    let seconds_ms = ms % 60_000;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if seconds_ms > 0 {
        let (whole, frac) = (seconds_ms / 1000, seconds_ms % 1000);
        if frac == 0 {
            out.push_str(&format!("{whole}s"));
        } else {
            let frac = format!("{frac:03}");
            out.push_str(&format!("{whole}.{}s", frac.trim_end_matches('0')));
        }
    }
    out
}

/// What a hidden secret shows as.
const HIDDEN: &str = "***";

/// A URL or a PostgreSQL connection string with its passwords replaced by `***`, for every
/// message, `plan`, `status`, the summary and the store: the one function that shows a
/// connection string from the configuration. It reads a string the way the PostgreSQL client
/// (the `postgres` crate, like libpq) does, and where the client would read it differently or
/// not at all, it hides more:
///
/// - `postgres://` and `postgresql://` URLs: the client takes the userinfo up to the first `@`
///   and the password after its first `:`, unencoded `?`, `#`, `/` and `:` included; hidden is
///   everything from there to the last `@` of the string, so a password holding `@` is hidden
///   whole (and a host after such an `@` with it).
/// - Other URLs (`https://…`): the userinfo of the authority, as there; an authority that ends
///   before the last `@` with something other than a port (`u:pa/ss@host`) counts as userinfo
///   too.
/// - In any URL, the value of every query parameter whose name (percent-decoded) holds
///   `password`, `secret`, `token`, `key`, `signature` or `credential`, up to the next `&` that
///   starts another parameter.
/// - `key=value` connection strings (`host=db user=app password='it\'s secret'`): the value of
///   every keyword ending in `password`, quoted (with `\'` and `\\`) or not; a value followed by
///   anything but a known keyword and `=` is hidden to the end of that, and a string the client
///   cannot parse is hidden from its first password on.
///
/// A `sqlite:PATH` is shown as it is.
pub fn redact_url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for range in secret_ranges(s) {
        out.push_str(&s[at..range.start]);
        out.push_str(HIDDEN);
        at = range.end;
    }
    out.push_str(&s[at..]);
    out
}

/// A message about `source` (a connection string) with whatever it quotes of the source's
/// passwords hidden: each `` `quoted` `` piece that is part of a password (the PostgreSQL
/// client's parse errors name the character they did not expect, or a keyword that was the
/// rest of an unquoted password), or not a plain name, and any password that appears whole.
pub fn redact_message(source: &str, message: &str) -> String {
    let secrets: Vec<&str> = secret_ranges(source)
        .into_iter()
        .map(|r| &source[r])
        .filter(|s| !s.is_empty())
        .collect();
    if secrets.is_empty() {
        return message.to_owned();
    }
    let mut message = message.to_owned();
    for secret in &secrets {
        if secret.chars().count() >= 3 {
            message = message.replace(secret, HIDDEN);
        }
    }
    // A name, or the `=` and `'` the client's parser expected.
    let plain = |t: &str| {
        t == "="
            || t == "'"
            || !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    };
    let mut out = String::with_capacity(message.len());
    let mut rest = message.as_str();
    while let Some(open) = rest.find('`') {
        let Some(close) = rest[open + 1..].find('`') else {
            break;
        };
        let token = &rest[open + 1..open + 1 + close];
        out.push_str(&rest[..=open]);
        if !plain(token) || secrets.iter().any(|s| s.contains(token)) {
            out.push_str(HIDDEN);
        } else {
            out.push_str(token);
        }
        out.push('`');
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    out
}

/// Why the PostgreSQL client refused the connection string `source`: the error and its causes
/// (`invalid connection string: unknown option `…``), through [`redact_message`].
pub fn connection_string_error(source: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    redact_message(source, &text)
}

/// Whether `s` reads as a `key=value` connection string: its first word is a keyword the
/// PostgreSQL client knows, followed by `=`.
pub fn looks_like_conninfo(s: &str) -> bool {
    let s = s.trim_start();
    let word_end = s
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(s.len());
    CONNINFO_KEYWORDS.contains(&s[..word_end].to_ascii_lowercase().as_str())
        && s[word_end..].trim_start().starts_with('=')
}

/// The keywords of libpq's connection strings (the `postgres` crate takes most of them).
const CONNINFO_KEYWORDS: &[&str] = &[
    "application_name",
    "channel_binding",
    "client_encoding",
    "connect_timeout",
    "dbname",
    "fallback_application_name",
    "gssdelegation",
    "gssencmode",
    "gsslib",
    "host",
    "hostaddr",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "krbsrvname",
    "load_balance_hosts",
    "options",
    "passfile",
    "password",
    "port",
    "replication",
    "require_auth",
    "requirepeer",
    "requiressl",
    "service",
    "sslcert",
    "sslcompression",
    "sslcrl",
    "sslcrldir",
    "sslkey",
    "sslmode",
    "sslnegotiation",
    "sslpassword",
    "sslrootcert",
    "sslsni",
    "ssl_max_protocol_version",
    "ssl_min_protocol_version",
    "target_session_attrs",
    "tcp_user_timeout",
    "user",
];

/// The byte ranges of `s` that [`redact_url`] hides: sorted, not overlapping.
fn secret_ranges(s: &str) -> Vec<std::ops::Range<usize>> {
    if s.starts_with("sqlite:") {
        return Vec::new();
    }
    let mut ranges = match url_rest(s) {
        Some((scheme, rest)) => {
            let mut ranges = userinfo_secret(s, rest, scheme)
                .into_iter()
                .collect::<Vec<_>>();
            ranges.extend(query_secrets(s, rest));
            ranges
        }
        None => conninfo_secrets(s),
    };
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<std::ops::Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// `scheme://` at the start of `s`: the scheme (lowercase) and where what follows it starts.
fn url_rest(s: &str) -> Option<(String, usize)> {
    let (scheme, _) = s.split_once("://")?;
    let ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    ok.then(|| (scheme.to_ascii_lowercase(), scheme.len() + 3))
}

/// The password of a URL's userinfo: from after the `:` of `user:` to the last `@`.
fn userinfo_secret(s: &str, rest: usize, scheme: String) -> Option<std::ops::Range<usize>> {
    let tail = &s[rest..];
    let postgres = matches!(scheme.as_str(), "postgres" | "postgresql");
    let Some(first_at) = tail.find('@') else {
        // No `@`: the client reads `user:password…` as `host:port`, and its error quotes that
        // "port". A port that is not digits is hidden: most likely a password whose `@` was
        // forgotten.
        if !postgres {
            return None;
        }
        let authority_end = tail.find(['/', '?']).unwrap_or(tail.len());
        let colon = tail[..authority_end].find(':')?;
        let port = &tail[colon + 1..authority_end];
        return (!port.chars().all(|c| c.is_ascii_digit()))
            .then(|| rest + colon + 1..rest + authority_end);
    };
    let last_at = tail.rfind('@')?;
    let Some(colon) = tail[..first_at].find(':') else {
        // A user and no password: a PostgreSQL user's name; elsewhere (`https://TOKEN@…`)
        // a token, which clients send as the password.
        let authority_end = tail.find(['/', '?', '#']).unwrap_or(tail.len());
        return (!postgres && first_at < authority_end).then(|| rest..rest + first_at);
    };
    if !postgres {
        // As URL parsers read it, the authority ends at the first `/`, `?` or `#`: an `@`
        // after that is userinfo only if the `:` before it is no port's.
        let authority_end = tail.find(['/', '?', '#']).unwrap_or(tail.len());
        if first_at > authority_end {
            let after = &tail[colon + 1..authority_end];
            if colon > authority_end || after.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
        }
    }
    Some(rest + colon + 1..rest + last_at)
}

/// The values of a URL's secret query parameters.
fn query_secrets(s: &str, rest: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    for (i, c) in s[rest..].char_indices() {
        if c != '?' && c != '&' {
            continue;
        }
        let start = rest + i + 1;
        let Some(eq) = s[start..].find(['=', '&', '?']) else {
            continue;
        };
        if s.as_bytes()[start + eq] != b'=' {
            continue;
        }
        if !secret_parameter(&percent_decoded(&s[start..start + eq])) {
            continue;
        }
        let value = start + eq + 1;
        let end = next_parameter(s, value).unwrap_or(s.len());
        ranges.push(value..end);
    }
    ranges
}

/// The next `&` at or after `from` that starts a parameter (`&name=`).
fn next_parameter(s: &str, from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(i) = s[at..].find('&') {
        let amp = at + i;
        let name_len = s[amp + 1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_-.%".contains(c)))
            .unwrap_or(s.len() - amp - 1);
        if name_len > 0 && s[amp + 1 + name_len..].starts_with('=') {
            return Some(amp);
        }
        at = amp + 1;
    }
    None
}

/// Whether a query parameter's name says its value is a secret.
fn secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "key",
        "signature",
        "credential",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// `s` with its `%XX` escapes decoded (invalid ones kept), lossily as UTF-8.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The password values of a `key=value` connection string, read as the PostgreSQL client
/// reads it (`postgres` crate, `config.rs`, `Parser`): a keyword runs to whitespace or `=`;
/// whitespace may surround `=`; a value is `'quoted'` or runs to whitespace, and `\` escapes
/// the next character in both.
fn conninfo_secrets(s: &str) -> Vec<std::ops::Range<usize>> {
    let b = s.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < b.len() && s[i..].starts_with(char::is_whitespace) {
            i += s[i..].chars().next().map_or(1, char::len_utf8);
        }
        i
    };
    let mut ranges = Vec::new();
    let mut i = skip_ws(0);
    while i < b.len() {
        let keyword_start = i;
        while i < b.len() && b[i] != b'=' && !s[i..].starts_with(char::is_whitespace) {
            i += s[i..].chars().next().map_or(1, char::len_utf8);
        }
        let keyword = &s[keyword_start..i];
        i = skip_ws(i);
        if keyword.is_empty() || b.get(i) != Some(&b'=') {
            // Not what the client reads: hide from the first password keyword on
            // (`password secret` included).
            if keyword.to_ascii_lowercase().ends_with("password") && i < b.len() {
                ranges.push(i..s.len());
            } else {
                ranges.extend(unparsed_secrets(s, keyword_start));
            }
            return ranges;
        }
        let value_start = skip_ws(i + 1);
        let value_end = conninfo_value_end(s, value_start);
        let secret = secret_parameter(keyword) || keyword.to_ascii_lowercase().contains("pass");
        match value_end {
            Some(end) if secret => {
                let end = where_the_next_keyword_starts(s, end);
                ranges.push(value_start..end);
                i = skip_ws(end);
            }
            Some(end) => {
                // `host= password=x` gives the host `password=x`: hidden all the same.
                ranges.extend(password_keyword_value(&s[..end], value_start));
                i = skip_ws(end);
            }
            None if secret => {
                ranges.push(value_start..s.len());
                return ranges;
            }
            None => {
                ranges.extend(unparsed_secrets(s, value_start));
                return ranges;
            }
        }
    }
    ranges
}

/// Where the value starting at `start` ends, as the client reads it; `None` for an empty one or
/// an unterminated quote.
fn conninfo_value_end(s: &str, start: usize) -> Option<usize> {
    let b = s.as_bytes();
    let quoted = b.get(start) == Some(&b'\'');
    let mut i = start + usize::from(quoted);
    while i < b.len() {
        let c = s[i..].chars().next()?;
        if quoted && c == '\'' {
            return Some(i + 1);
        }
        if !quoted && c.is_whitespace() {
            break;
        }
        i += c.len_utf8();
        if c == '\\' {
            i += s[i..].chars().next().map_or(0, char::len_utf8);
        }
    }
    (!quoted && i > start).then_some(i)
}

/// `end` if the text after it is the end or whitespace and a known keyword with `=`; else where
/// the next such keyword starts, or the end: a password that runs into text the client would
/// refuse (`password=two words`) is hidden with that text.
fn where_the_next_keyword_starts(s: &str, end: usize) -> usize {
    let starts_a_keyword =
        |i: usize| s[i..].starts_with(char::is_whitespace) && looks_like_conninfo(&s[i..]);
    if s[end..].trim().is_empty() || starts_a_keyword(end) {
        return end;
    }
    s[end..]
        .char_indices()
        .map(|(i, _)| end + i)
        .find(|&i| starts_a_keyword(i))
        .unwrap_or(s.len())
}

/// For text the client cannot parse from `from` on: everything after the first keyword ending
/// in `password` (any case) and `=`, or, in a URL-like string without `://`
/// (`postgres:/user:pass@host`), from its first `:` to its last `@`.
fn unparsed_secrets(s: &str, from: usize) -> Option<std::ops::Range<usize>> {
    password_keyword_value(s, from).or_else(|| {
        let last_at = from + s[from..].rfind('@')?;
        let colon = from + s[from..last_at].find(':')?;
        Some(colon + 1..last_at)
    })
}

/// From the value after the first `password=` (any case, spaces around `=`) at or after
/// `from` to the end of `s`.
fn password_keyword_value(s: &str, from: usize) -> Option<std::ops::Range<usize>> {
    let lower = s.to_ascii_lowercase();
    let mut at = from;
    while let Some(i) = lower[at..].find("password") {
        let after = at + i + "password".len();
        if let Some(value) = s[after..].trim_start().strip_prefix('=') {
            let start = s.len() - value.trim_start().len();
            return Some(start..s.len());
        }
        at = after;
    }
    None
}

/// The message of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// The longest error or reason the runner keeps for an item, in bytes: an error that quotes
/// data (a 3 MB URL, a server's page of HTML) is cut there, in the log, the store and the marks.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// `message` cut to at most [`MAX_MESSAGE_BYTES`] (at a character boundary), saying how much was
/// cut; unchanged when it fits.
pub fn bounded(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let total = message.len();
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(&format!("… ({} more bytes)", total - end));
    message
}

/// `s` with its control characters escaped (`\n`, `\u{1b}`), so that untrusted text (an item's
/// key, a page's title) cannot drive the terminal it is printed on.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(steers_the_terminal) {
        std::borrow::Cow::Owned(
            s.chars()
                .map(|c| {
                    if steers_the_terminal(c) {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect(),
        )
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Whether `c` can change how a terminal shows what follows: control characters (C0, DEL, C1)
/// and the bidirectional overrides and isolates, which reorder the text after them.
pub fn steers_the_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{61c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// JSON text with every character that steers a terminal escaped as JSON does (`\u009b`):
/// JSON encoders escape C0 only, so C1 codes, DEL and bidirectional overrides in untrusted
/// strings would reach the terminal raw. Valid JSON in, the same value out.
pub fn json_printable(json: &str) -> std::borrow::Cow<'_, str> {
    if !json.chars().any(steers_the_terminal) {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if steers_the_terminal(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(350), "350µs"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1000), "1s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(2017), "2.017s"),
            (Duration::from_millis(2170), "2.17s"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_millis(271_500), "4m31.5s"),
            (Duration::from_millis(90_250), "1m30.25s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(3723), "1h2m3s"),
            (Duration::from_secs(7200 + 60), "2h1m"),
            (Duration::from_secs(26 * 3600), "26h"),
            (Duration::from_nanos(1_999_999_999), "1.999s"),
        ];
        for (d, want) in cases {
            assert_eq!(duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = bounded(long.clone());
        assert!(cut.len() < MAX_MESSAGE_BYTES + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!(
            "… ({} more bytes)",
            long.len() - MAX_MESSAGE_BYTES
        )));
        assert!(long.starts_with(cut.split('…').next().expect("a head")));
    }

    #[test]
    fn redacts_passwords() {
        let cases = [
            // URLs: userinfo.
            (
                "postgres://app:s3cret@db:5432/x",
                "postgres://app:***@db:5432/x",
            ),
            ("postgres://app@db/x", "postgres://app@db/x"),
            // Elsewhere a user alone is a token, sent as the password.
            (
                "http://ghp_S3CRETtoken@127.0.0.1:1/x",
                "http://***@127.0.0.1:1/x",
            ),
            ("http://host/a@b", "http://host/a@b"),
            // A connection string's keyword that names a password, spelled as it may be.
            ("host=h user=u passwd=S3CRETpw", "host=h user=u passwd=***"),
            ("postgresql://:pw@db/x", "postgresql://:***@db/x"),
            // No `@`: a port that is not one is hidden (a forgotten `@`), a real one is not.
            (
                "postgres://sec:Zq9%40x127.0.0.1:19103/db",
                "postgres://sec:***/db",
            ),
            ("postgres://db:5432/x", "postgres://db:5432/x"),
            ("postgres://u:ab cdSECRET@h:1/db", "postgres://u:***@h:1/db"),
            ("postgres://u:p?w#x/y:z@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p@ss@h:5432/db", "postgres://u:***@h:5432/db"),
            (
                "postgres://u:a/b@c?d#e@h/db?sslmode=disable",
                "postgres://u:***@h/db?sslmode=disable",
            ),
            ("postgres://u:p%40ss%2Fw@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u:p@[::1]:5432/db",
                "postgres://u:***@[::1]:5432/db",
            ),
            // The client reads `h` as the user and the rest up to the `@` as the password.
            ("postgres://h:5432/db?options=a@b", "postgres://h:***@b"),
            (
                "postgres://u@h/db?application_name=a@b",
                "postgres://u@h/db?application_name=a@b",
            ),
            // URLs: the query.
            (
                "postgres://u@h:x/db?password=Hunter2&sslmode=disable",
                "postgres://u@h:x/db?password=***&sslmode=disable",
            ),
            (
                "postgress://u@h/db?sslpassword=s&PASSWORD=t",
                "postgress://***@h/db?sslpassword=***&PASSWORD=***",
            ),
            (
                "postgres://u@h/db?pass%77ord=x",
                "postgres://u@h/db?pass%77ord=***",
            ),
            (
                "postgres://u@h/db?password=a&b&sslmode=x",
                "postgres://u@h/db?password=***&sslmode=x",
            ),
            (
                "postgres://u@h/db?password=a?b#c",
                "postgres://u@h/db?password=***",
            ),
            (
                "postgres://u:p@h/db?application_name=x",
                "postgres://u:***@h/db?application_name=x",
            ),
            // Other URLs.
            ("https://u:p@h/a", "https://u:***@h/a"),
            ("https://u:p@h/a@b", "https://u:***@b"),
            ("https://u:pa/ss@h/x", "https://u:***@h/x"),
            (
                "https://example.com:8080/@user/x",
                "https://example.com:8080/@user/x",
            ),
            ("https://h/x?api_key=k&q=1", "https://h/x?api_key=***&q=1"),
            ("https://h/x?q=password", "https://h/x?q=password"),
            // Not secret.
            ("sqlite:state.db", "sqlite:state.db"),
            (
                "sqlite:/data/password=x@y:z.db",
                "sqlite:/data/password=x@y:z.db",
            ),
            // key=value.
            (
                "host=db user=app password=s3cret dbname=x",
                "host=db user=app password=*** dbname=x",
            ),
            ("password=s3cret", "password=***"),
            (
                "host=db password = 's3 c\\'r\\\\et' port=5",
                "host=db password = *** port=5",
            ),
            ("host=db password='a b'", "host=db password=***"),
            (
                "host=db password=a\\ b user=u",
                "host=db password=*** user=u",
            ),
            (
                "host=db PASSWORD=x sslpassword=y",
                "host=db PASSWORD=*** sslpassword=***",
            ),
            // Past what the client reads: a password in two words, an unterminated quote,
            // a value that swallowed the keyword.
            (
                "host=db password=two words user=u",
                "host=db password=*** user=u",
            ),
            ("host=db password=two words", "host=db password=***"),
            ("host=db password='a b' c", "host=db password=***"),
            (
                "host=db password='unterminated user=u",
                "host=db password=***",
            ),
            ("host='db password=x", "host='db password=***"),
            ("host= password=x", "host= password=***"),
            ("host=db junk password=x", "host=db junk password=***"),
            ("host=db user=u", "host=db user=u"),
            ("postgres:/u:p@h/db", "postgres:***@h/db"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "{input}");
        }
    }

    /// Every password the PostgreSQL client reads out of a string is gone from its redaction.
    #[test]
    fn what_the_client_reads_as_the_password_is_hidden() {
        let passwords = [
            "plain",
            "q?mark",
            "h#ash",
            "sl/ash",
            "co:lon",
            "a&b",
            "all?#/:",
            "sp ace",
            "qu'ote",
            "back\\slash",
            "pa=ss",
            "ünï",
        ];
        for password in passwords {
            let quoted = password.replace('\\', "\\\\").replace('\'', "\\'");
            let mut forms = vec![
                format!("host=127.0.0.1 user=app password='{quoted}' dbname=x"),
                format!("host=127.0.0.1 password = '{quoted}'"),
                format!("postgres://app@h/db?password={}", encoded(password)),
                format!("postgres://app:{}@h/db", encoded(password)),
            ];
            if !password.contains([' ', '\'', '\\']) {
                forms.push(format!("user=app password={password} host=h"));
            }
            if !password.contains([' ', '@']) {
                forms.push(format!("postgres://app:{password}@h:5432/db"));
                forms.push(format!("postgresql://app:{password}@h/db?sslmode=disable"));
            }
            for form in forms {
                let config: postgres::Config = form.parse().expect(&form);
                assert_eq!(config.get_password(), Some(password.as_bytes()), "{form}");
                let shown = redact_url(&form);
                assert!(!shown.contains(password), "{form} shows as {shown}");
                assert!(shown.contains(HIDDEN), "{form} shows as {shown}");
            }
        }
    }

    /// `s` with every byte but ASCII letters and digits percent-encoded.
    fn encoded(s: &str) -> String {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    #[test]
    fn messages_about_a_connection_string_lose_its_password() {
        for (source, message, want) in [
            (
                "host=h password secret",
                "invalid connection string: unexpected character at byte 16: expected `=` but got `s`",
                "invalid connection string: unexpected character at byte 16: expected `=` but got `***`",
            ),
            (
                "host=h password=sec ret=x",
                "unknown option `ret`",
                "unknown option `***`",
            ),
            (
                "postgres://u@h/db?password=a&b&sslmode=x",
                "unknown option `b&sslmode`",
                "unknown option `***`",
            ),
            ("host=h password=x", "unknown option `sslmod`", "unknown option `sslmod`"),
            ("host=h password=hunter2", "said hunter2", "said ***"),
            ("host=h", "unknown option `a b`", "unknown option `a b`"),
        ] {
            assert_eq!(redact_message(source, message), want, "{source}");
        }
    }

    #[test]
    fn connection_strings_are_told_from_other_text() {
        assert!(looks_like_conninfo("host=db password=x"));
        assert!(looks_like_conninfo("  dbname = x"));
        assert!(!looks_like_conninfo("SELECT 1 WHERE password = $1"));
        assert!(!looks_like_conninfo("summary = the text"));
        assert!(!looks_like_conninfo("postgres://u:p@h/db"));
    }

    #[test]
    fn panic_payloads_become_messages() {
        let caught = std::panic::catch_unwind(|| panic!("boom {}", 7)).expect_err("panics");
        assert_eq!(panic_message(caught.as_ref()), "boom 7");
        let caught = std::panic::catch_unwind(|| std::panic::panic_any(5_u8)).expect_err("panics");
        assert_eq!(
            panic_message(caught.as_ref()),
            "a panic with a non-string payload"
        );
    }

    #[test]
    fn control_characters_are_escaped_for_printing() {
        assert_eq!(printable("plain key"), "plain key");
        assert_eq!(printable("a\nb\u{1b}[31mred"), "a\\nb\\u{1b}[31mred");
        assert!(matches!(printable("ok"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(printable("bidi\u{202e}evil"), "bidi\\u{202e}evil");
        assert_eq!(printable("c1\u{9b}31m"), "c1\\u{9b}31m");
        assert_eq!(printable("ls\u{2028}x"), "ls\\u{2028}x");
        let json = json_printable("{\"k\":\"c1\u{9b}\u{202e}\u{2028}\"}");
        assert_eq!(json, "{\"k\":\"c1\\u009b\\u202e\\u2028\"}");
        let back: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(back["k"], "c1\u{9b}\u{202e}\u{2028}");
    }
}
