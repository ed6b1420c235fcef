//! The two forms of a PostgreSQL connection string, read the way the `postgres` client reads
//! them (`tokio-postgres`, `config.rs`: its `UrlParser` and `Parser`, both modelled on libpq),
//! to take out the two keys the client cannot take — `sslmode` (it knows three of libpq's five
//! values) and `sslrootcert` (it knows none) — and leave everything else where the client will
//! find it. Reading exactly as the client does matters: a string it reads differently (a
//! password holding `?`, a parameter name holding `&`) must not lose or keep other keys than
//! the client would see.
//!
//! Where the client would refuse the string, the rest is left as it is, for the client to
//! refuse with its own message.

use std::borrow::Cow;

/// The TLS keys of a connection string, as written (decoded, unquoted); the last of each wins,
/// as in libpq.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct TlsKeys {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
}

impl TlsKeys {
    fn take(&mut self, key: &str, value: String) -> bool {
        match key {
            "sslmode" => self.sslmode = Some(value),
            "sslrootcert" => self.sslrootcert = Some(value),
            _ => return false,
        }
        true
    }
}

/// `s` without its TLS keys, and their values. A URL keeps its other query parameters as
/// written; a `key=value` string has each TLS entry blanked out with spaces, so that the
/// client's messages (which name byte offsets) point where they would in `s`.
pub(super) fn take_tls_keys(s: &str) -> (String, TlsKeys) {
    match ["postgres://", "postgresql://"]
        .iter()
        .find(|prefix| s.starts_with(*prefix))
    {
        Some(prefix) => url(s, prefix.len()),
        None => conninfo(s),
    }
}

/// A URL: the client takes the userinfo up to the first `@` of the whole string, then the host
/// up to `/` or `?`, the path up to `?`, and the rest as `name=value` pairs separated by `&`
/// (a name runs to the next `=`, a value to the next `&`), both percent-decoded.
fn url(s: &str, rest: usize) -> (String, TlsKeys) {
    let after_userinfo = s[rest..].find('@').map_or(rest, |i| rest + i + 1);
    let Some(question) = s[after_userinfo..].find('?').map(|i| after_userinfo + i) else {
        return (s.to_owned(), TlsKeys::default());
    };
    let mut keys = TlsKeys::default();
    let mut kept: Vec<&str> = Vec::new();
    let mut query = &s[question + 1..];
    while !query.is_empty() {
        let Some(eq) = query.find('=') else {
            // "unterminated parameter": the client's to say.
            kept.push(query);
            break;
        };
        let end = query[eq + 1..]
            .find('&')
            .map_or(query.len(), |i| eq + 1 + i);
        let pair = &query[..end];
        let taken = match (decode(&query[..eq]), decode(&query[eq + 1..end])) {
            (Some(name), Some(value)) => keys.take(&name, value.into_owned()),
            // Not UTF-8 once decoded: the client refuses it, with its message.
            _ => false,
        };
        if !taken {
            kept.push(pair);
        }
        query = query.get(end + 1..).unwrap_or("");
    }
    let mut out = s[..question].to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    (out, keys)
}

/// Percent-decoded as the client decodes URL parts; `None` when that is not UTF-8.
fn decode(s: &str) -> Option<Cow<'_, str>> {
    percent_encoding::percent_decode_str(s).decode_utf8().ok()
}

/// A `key=value` string: a keyword runs to whitespace or `=`; whitespace may surround `=`; a
/// value is `'quoted'` or runs to whitespace, and `\` takes the next character as it is, in
/// both.
fn conninfo(s: &str) -> (String, TlsKeys) {
    let mut out = s.to_owned();
    let mut keys = TlsKeys::default();
    let mut r = Reader { s, at: 0 };
    loop {
        r.skip_whitespace();
        let start = r.at;
        let keyword = r.keyword();
        if keyword.is_empty() {
            break;
        }
        r.skip_whitespace();
        if !r.eat('=') {
            break;
        }
        r.skip_whitespace();
        let Some(value) = r.value() else { break };
        if keys.take(keyword, value) {
            out.replace_range(start..r.at, &" ".repeat(r.at - start));
        }
    }
    (out, keys)
}

/// A cursor over a `key=value` string, at a byte offset that is always a char boundary.
struct Reader<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.at..].chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        let ate = self.peek() == Some(c);
        if ate {
            self.at += c.len_utf8();
        }
        ate
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.next();
        }
    }

    fn keyword(&mut self) -> &'a str {
        let start = self.at;
        while self.peek().is_some_and(|c| !c.is_whitespace() && c != '=') {
            self.next();
        }
        &self.s[start..self.at]
    }

    /// The value, unquoted and unescaped; `None` where the client fails (an unterminated
    /// quote, an empty unquoted value).
    fn value(&mut self) -> Option<String> {
        let mut value = String::new();
        if self.eat('\'') {
            loop {
                match self.next()? {
                    '\'' => return Some(value),
                    '\\' => value.extend(self.next()),
                    c => value.push(c),
                }
            }
        }
        while let Some(c) = self.peek().filter(|c| !c.is_whitespace()) {
            self.next();
            if c == '\\' {
                value.extend(self.next());
            } else {
                value.push(c);
            }
        }
        (!value.is_empty()).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(sslmode: Option<&str>, sslrootcert: Option<&str>) -> TlsKeys {
        TlsKeys {
            sslmode: sslmode.map(str::to_owned),
            sslrootcert: sslrootcert.map(str::to_owned),
        }
    }

    #[test]
    fn urls_lose_their_tls_parameters_and_keep_the_others_as_written() {
        // (given, what the client gets, the keys taken)
        let cases = [
            (
                "postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
                "postgres://u:p@h:5432/db",
                keys(Some("verify-full"), Some("/etc/ca.pem")),
            ),
            (
                "postgresql://h/db?application_name=a%20b&sslmode=require&connect_timeout=5",
                "postgresql://h/db?application_name=a%20b&connect_timeout=5",
                keys(Some("require"), None),
            ),
            (
                // Encoded names and values are decoded, as the client decodes them.
                "postgres://h/db?ssl%6Dode=verify-ca&sslrootcert=%2Ftmp%2Fmy%20ca.pem",
                "postgres://h/db",
                keys(Some("verify-ca"), Some("/tmp/my ca.pem")),
            ),
            (
                // The last one wins.
                "postgres://h/db?sslmode=disable&options=-c%20x%3Dy&sslmode=prefer",
                "postgres://h/db?options=-c%20x%3Dy",
                keys(Some("prefer"), None),
            ),
            (
                // The client takes the userinfo up to the first `@`: a `?` in a password is
                // no query.
                "postgres://u:pa?ss@h/db?sslmode=require",
                "postgres://u:pa?ss@h/db",
                keys(Some("require"), None),
            ),
            (
                // A name runs to the next `=`: `b&sslmode` is one (unknown) name to the client.
                "postgres://u@h/db?password=a&b&sslmode=x",
                "postgres://u@h/db?password=a&b&sslmode=x",
                keys(None, None),
            ),
            (
                "postgres://h/db?sslmode=require&dangling",
                "postgres://h/db?dangling",
                keys(Some("require"), None),
            ),
            (
                // Not UTF-8 once decoded: left for the client to refuse.
                "postgres://h/db?sslmode=%FF",
                "postgres://h/db?sslmode=%FF",
                keys(None, None),
            ),
            ("postgres://h/db", "postgres://h/db", keys(None, None)),
            (
                "postgres://h/db?sslrootcert=system",
                "postgres://h/db",
                keys(None, Some("system")),
            ),
        ];
        for (given, want, want_keys) in cases {
            let (got, got_keys) = take_tls_keys(given);
            assert_eq!(got, want, "{given}");
            assert_eq!(got_keys, want_keys, "{given}");
        }
    }

    #[test]
    fn key_value_strings_lose_their_tls_entries_in_place() {
        let cases = [
            (
                "host=h sslmode=verify-full user=u sslrootcert=/etc/ca.pem",
                "host=h                     user=u                        ",
                keys(Some("verify-full"), Some("/etc/ca.pem")),
            ),
            (
                // Quoted, with an escaped quote and backslash inside.
                r"sslrootcert = '/a b/it\'s\\ca.pem' dbname=x",
                r"                                   dbname=x",
                keys(None, Some(r"/a b/it's\ca.pem")),
            ),
            (
                // Unquoted, a backslash takes the next character, a space included.
                r"sslrootcert=/a\ b.pem sslmode=require",
                "                                     ",
                keys(Some("require"), Some("/a b.pem")),
            ),
            (
                // `password` is no TLS key, whatever its value says.
                "password='sslmode=disable' host=h",
                "password='sslmode=disable' host=h",
                keys(None, None),
            ),
            (
                // What the client refuses is left for it, TLS keys before it are taken.
                "sslmode=require host",
                "                host",
                keys(Some("require"), None),
            ),
            (
                "host=h sslmode='unterminated",
                "host=h sslmode='unterminated",
                keys(None, None),
            ),
            ("SSLMODE=require", "SSLMODE=require", keys(None, None)),
        ];
        for (given, want, want_keys) in cases {
            let (got, got_keys) = take_tls_keys(given);
            assert_eq!(got, want, "{given}");
            assert_eq!(got.len(), given.len(), "offsets are kept: {given}");
            assert_eq!(got_keys, want_keys, "{given}");
        }
    }

    #[test]
    fn the_client_reads_what_is_left_as_it_read_the_rest_of_the_original() {
        let given = r"host=db.example port=6543 sslmode=verify-full user='app user' sslrootcert='/c a.pem' dbname=x\ y";
        let (left, _) = take_tls_keys(given);
        let config: postgres::Config = left.parse().expect("the client reads it");
        assert_eq!(
            config.get_hosts(),
            [postgres::config::Host::Tcp("db.example".into())]
        );
        assert_eq!(config.get_ports(), [6543]);
        assert_eq!(config.get_user(), Some("app user"));
        assert_eq!(config.get_dbname(), Some("x y"));
        // An error after a blanked entry names the offset it has in the original.
        let given = "sslmode=require host=h port 5";
        let (left, _) = take_tls_keys(given);
        let e = left.parse::<postgres::Config>().expect_err("refused");
        let text = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
        assert!(text.contains("at byte 28"), "{text}");
    }
}
