//! `[telemetry] push`: the final metrics sent to a Prometheus Pushgateway, as its convention
//! has it: `PUT {push}/metrics/job/stagewise/pipeline/<name>`, the text format as the body (a
//! `PUT` replaces the group's metrics: the last run's figures, not a mix of runs). One try,
//! bounded as a whole by its timeout.

use std::io::Read;
use std::time::Duration;

/// The most of an error answer's body kept for the warning.
const ERROR_BODY: u64 = 512;

/// Push `body` for pipeline `name` to the Pushgateway at `url` within `timeout`; why not, if
/// it could not. The message never holds the URL (its caller shows it, redacted).
pub(super) fn push(url: &str, name: &str, body: String, timeout: Duration) -> Result<(), String> {
    let target = format!("{url}/metrics/job/stagewise/{}", grouping("pipeline", name));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("stagewise/", env!("CARGO_PKG_VERSION")))
        .timeout_global(Some(timeout))
        .build()
        .into();
    let response = agent
        .put(&target)
        .header("content-type", prometheus::TEXT_FORMAT)
        .send(body.as_bytes())
        .map_err(|e| match e {
            ureq::Error::Timeout(_) => format!(
                "no answer within `push_timeout` ({})",
                crate::text::duration(timeout)
            ),
            other => other.to_string(),
        })?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let mut raw = Vec::new();
    let _ = response
        .into_body()
        .into_reader()
        .take(ERROR_BODY)
        .read_to_end(&mut raw);
    Err(format!(
        "the Pushgateway answered {status}: {}",
        shown_answer(url, &String::from_utf8_lossy(&raw))
    ))
}

/// What a push warning shows of the gateway's error `body`: nothing when the push URL holds
/// credentials, since a gateway, or a proxy in front of it, may quote the request, whose
/// `Authorization: Basic` header the client made of them, in any encoding and cut anywhere.
fn shown_answer(url: &str, body: &str) -> String {
    let credentials = url
        .parse::<ureq::http::Uri>()
        .ok()
        .and_then(|uri| Some(uri.authority()?.as_str().contains('@')))
        // A URL the client could not read was not sent with credentials either; but say
        // nothing of an answer that cannot be told safe.
        .unwrap_or(true);
    if credentials {
        return "(its answer is not shown: the push URL holds credentials, which it may quote)"
            .to_owned();
    }
    crate::text::printable(body.trim()).into_owned()
}

/// A grouping label in the path: `label/value`, or `label@base64/…` (URL-safe) when the value
/// has anything but letters, digits, `.`, `_` and `-`, as the Pushgateway reads it.
fn grouping(label: &str, value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        format!("{label}/{value}")
    } else {
        format!("{label}@base64/{}", base64_url(value.as_bytes()))
    }
}

/// RFC 4648's URL-safe base64, with padding.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_labels_as_the_pushgateway_reads_them() {
        assert_eq!(grouping("pipeline", "nightly-2.x"), "pipeline/nightly-2.x");
        // RFC 4648's test vectors, URL-safe.
        for (value, encoded) in [
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64_url(value.as_bytes()), encoded);
        }
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8=");
        assert_eq!(grouping("pipeline", "a b"), "pipeline@base64/YSBi");
        assert_eq!(grouping("pipeline", ""), "pipeline@base64/");
    }

    #[test]
    fn an_error_answer_is_not_shown_when_the_push_url_holds_credentials() {
        let body = "authorization: Basic b3BzOnMzY3I+dD8= refused";
        for url in [
            "http://ops:s3cr%3Et%3F@gw:9091",
            "http://ops@gw:9091",
            "http://u:Zq@gw:9091/path",
            "not a URL",
        ] {
            let shown = shown_answer(url, body);
            assert!(
                !shown.contains("b3Bz") && shown.contains("not shown"),
                "{url}: {shown}"
            );
        }
        assert_eq!(
            shown_answer("http://gw:9091", " no such job\u{1b}[2J "),
            "no such job\\u{1b}[2J"
        );
    }
}
