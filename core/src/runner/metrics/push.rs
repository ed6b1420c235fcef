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
    // Read past the part kept, so that credentials the body quotes across its cut are whole
    // when they are hidden.
    let mut raw = Vec::new();
    let _ = response
        .into_body()
        .into_reader()
        .take(ERROR_BODY + CREDENTIALS_SPAN)
        .read_to_end(&mut raw);
    let text = hide_credentials(url, &String::from_utf8_lossy(&raw));
    let kept: String = text.chars().take(ERROR_BODY as usize).collect();
    Err(format!(
        "the Pushgateway answered {status}: {}",
        crate::text::printable(kept.trim())
    ))
}

/// Longest run of credentials [`hide_credentials`] finds across the cut of an error body.
const CREDENTIALS_SPAN: u64 = 1024;

/// `text` (an error body) without the credentials of `url`: a gateway, or the proxy in front
/// of it, may quote the request, whose `Authorization: Basic` header the client made of the
/// URL's user and password. The password (as written and decoded) and that header's value
/// (standard and URL-safe base64) are replaced by `***`.
fn hide_credentials(url: &str, text: &str) -> String {
    let Some(userinfo) = url
        .parse::<ureq::http::Uri>()
        .ok()
        .and_then(|uri| Some(uri.authority()?.as_str().rsplit_once('@')?.0.to_owned()))
    else {
        return text.to_owned();
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((&userinfo, ""));
    let basic = format!("{}:{}", decode(user), decode(password));
    let mut secrets = [
        password.to_owned(),
        decode(password),
        base64(basic.as_bytes(), STANDARD),
        base64(basic.as_bytes(), URL_SAFE),
    ];
    // The longest first, so that a password inside the header's value does not split it.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| s.chars().count() >= 3) {
        text = text.replace(secret.as_str(), "***");
    }
    text
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
    base64(bytes, URL_SAFE)
}

/// RFC 4648's base64 alphabets.
const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// RFC 4648's base64 in `alphabet`, with padding.
fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(alphabet[(n >> (18 - 6 * i) & 63) as usize]));
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
    fn an_error_body_quoting_the_credentials_hides_them() {
        // `ops:s3cr>t?` as the client sends it: `Basic b3BzOnMzY3I+dD8=`.
        let url = "http://ops:s3cr%3Et%3F@gw:9091";
        let cases = [
            (
                "authorization: Basic b3BzOnMzY3I+dD8=",
                "authorization: Basic ***",
            ),
            ("basic b3BzOnMzY3I-dD8= (url-safe)", "basic *** (url-safe)"),
            (
                "user ops, password s3cr>t? refused",
                "user ops, password *** refused",
            ),
            ("the URL held s3cr%3Et%3F", "the URL held ***"),
            ("nothing of it", "nothing of it"),
        ];
        for (body, shown) in cases {
            assert_eq!(hide_credentials(url, body), shown, "{body}");
        }
        let plain = "http://gw:9091";
        assert_eq!(
            hide_credentials(plain, "Basic b3BzOnMzY3I+dD8="),
            "Basic b3BzOnMzY3I+dD8="
        );
    }
}
