//! HTTP plumbing shared by the stages that call servers (`http-download`, `llm`): how a ureq
//! failure maps to a classified [`StageError`], and a `Retry-After` header to a wait.

use std::time::Duration;

use stagewise_core::stage::{ErrorKind, StageError};

/// A failure while reading a body, classified (ureq's own failures as [`classify`] does).
pub fn read_error(e: &std::io::Error) -> StageError {
    // ureq reports its own failures while the body is read (a `read_timeout`, say) as an
    // `io::Error` wrapping a `ureq::Error`: classify those as ureq's.
    if let Some(inner) = e.get_ref().and_then(|x| x.downcast_ref::<ureq::Error>()) {
        return classify(inner);
    }
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            StageError::transient(format!("reading the body timed out: {e}"))
                .with_kind(ErrorKind::Timeout)
        }
        _ => StageError::transient(format!("reading the body failed: {e}"))
            .with_kind(ErrorKind::Network),
    }
}

/// Connection trouble and timeouts are transient; a malformed URL or response is permanent.
/// Each is of its kind: `timeout`, `connect` (no connection made), `network` (one that broke
/// or misbehaved), or `invalid_input` (the URL itself).
pub fn classify(e: &ureq::Error) -> StageError {
    use ureq::Error as E;
    match e {
        E::Timeout(which) => StageError::transient(match which {
            ureq::Timeout::Connect => "connect timed out (`connect_timeout`)".to_owned(),
            ureq::Timeout::PerRead => "the server sent nothing for `read_timeout`".to_owned(),
            ureq::Timeout::Global => "timed out at the attempt's deadline (`timeout`)".to_owned(),
            other => format!("timed out ({other})"),
        })
        .with_kind(ErrorKind::Timeout),
        E::Io(io) => match io.get_ref().and_then(|x| x.downcast_ref::<ureq::Error>()) {
            Some(inner) => classify(inner),
            // Before a response: the connection, not a body.
            None => match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    StageError::transient("connection refused").with_kind(ErrorKind::Connect)
                }
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                    StageError::transient("the connection was reset").with_kind(ErrorKind::Network)
                }
                std::io::ErrorKind::TimedOut => {
                    StageError::transient(format!("timed out: {io}")).with_kind(ErrorKind::Timeout)
                }
                _ => StageError::transient(format!("the connection failed: {io}"))
                    .with_kind(ErrorKind::Network),
            },
        },
        E::HostNotFound => StageError::transient("host not found").with_kind(ErrorKind::Connect),
        E::ConnectionFailed => {
            StageError::transient("connection failed").with_kind(ErrorKind::Connect)
        }
        E::BadUri(uri) => {
            StageError::permanent(format!("invalid URL: {uri}")).with_kind(ErrorKind::InvalidInput)
        }
        E::TooManyRedirects | E::RedirectFailed => {
            StageError::permanent(e.to_string()).with_kind(ErrorKind::Network)
        }
        // A body that does not decode as its `Content-Encoding` says (not gzip at all, a
        // corrupt stream) decodes no better the next time; a connection that broke while it
        // was read is the connection's.
        E::Decompress(_, io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            ) =>
        {
            StageError::permanent(format!("the server's body does not decode: {e}"))
                .with_kind(ErrorKind::Network)
        }
        E::Protocol(_) => {
            StageError::permanent(format!("the server's response is not valid HTTP: {e}"))
                .with_kind(ErrorKind::Network)
        }
        other => StageError::transient(other.to_string()).with_kind(ErrorKind::Network),
    }
}

/// The value of an HTTP `Retry-After` header — seconds, or an HTTP date (a past date is
/// zero) — as a wait; `None` when it is neither.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_does_not_decode_fails_at_once_one_cut_short_is_retried() {
        use stagewise_core::stage::ErrorClass;
        let io = |kind, what| std::io::Error::new(kind, what);
        let corrupt = ureq::Error::Decompress(
            "gzip",
            io(std::io::ErrorKind::InvalidInput, "invalid gzip header"),
        );
        let error = classify(&corrupt);
        assert_eq!(
            (error.class, error.kind),
            (ErrorClass::Permanent, ErrorKind::Network)
        );
        assert!(error.message.contains("invalid gzip header"), "{error}");
        let cut = ureq::Error::Decompress("gzip", io(std::io::ErrorKind::UnexpectedEof, "eof"));
        assert_eq!(classify(&cut).class, ErrorClass::Transient);
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let wait = parse_retry_after(&httpdate::fmt_http_date(later)).expect("a date");
        assert!(
            wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28),
            "{wait:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
