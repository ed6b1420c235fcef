//! Bytes to text: the charset from a byte-order mark, then the `Content-Type` header, then the
//! page's own `<meta>` declaration, then a statistical guess.

use encoding_rs::Encoding;

/// How far into a page a `<meta charset>` is looked for (the HTML standard's prescan window).
const PRESCAN: usize = 1024;

/// The `charset` parameter of a `Content-Type` value.
fn header_charset(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"').trim_matches('\''))
    })
}

/// The charset a page declares in a `<meta>` tag near its start.
fn meta_charset(body: &[u8]) -> Option<&'static Encoding> {
    let head = &body[..body.len().min(PRESCAN)];
    let lower: Vec<u8> = head.iter().map(u8::to_ascii_lowercase).collect();
    let mut from = 0;
    while let Some(at) = find(&lower[from..], b"<meta") {
        let start = from + at;
        let end = find(&lower[start..], b">").map_or(lower.len(), |e| start + e);
        let tag = &lower[start..end];
        if let Some(c) = find(tag, b"charset=") {
            let value = &tag[c + b"charset=".len()..];
            let value: Vec<u8> = value
                .iter()
                .copied()
                .skip_while(|b| *b == b'"' || *b == b'\'' || b.is_ascii_whitespace())
                .take_while(|b| {
                    !matches!(b, b'"' | b'\'' | b';' | b'/' | b'>') && !b.is_ascii_whitespace()
                })
                .collect();
            if let Some(enc) = Encoding::for_label(&value) {
                return Some(enc);
            }
        }
        from = end.max(start + 1);
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decode a body; returns the text and the name of the encoding used.
pub(crate) fn decode(body: &[u8], content_type: Option<&str>) -> (String, &'static str) {
    let encoding = Encoding::for_bom(body)
        .map(|(enc, _)| enc)
        .or_else(|| {
            content_type
                .and_then(header_charset)
                .and_then(|l| Encoding::for_label(l.as_bytes()))
        })
        .or_else(|| meta_charset(body))
        .unwrap_or_else(|| {
            // No scripts run on the text, and unlabeled UTF-8 is common outside browsers.
            let mut detector =
                chardetng::EncodingDetector::new(chardetng::Iso2022JpDetection::Deny);
            detector.feed(body, true);
            detector.guess(None, chardetng::Utf8Detection::Allow)
        });
    // `decode` strips a BOM of the encoding it finds; malformed sequences become U+FFFD.
    let (text, used, _) = encoding.decode(body);
    (text.into_owned(), used.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_charset() {
        let latin1 = b"<html><head><meta charset=\"iso-8859-1\"></head><body>caf\xe9</body></html>";
        let cases: [(&[u8], Option<&str>, &str, &str); 6] = [
            (b"plain ascii", Some("text/html; charset=utf-8"), "plain ascii", "UTF-8"),
            (latin1, Some("text/html"), "caf\u{e9}", "windows-1252"),
            (
                b"<meta http-equiv=\"Content-Type\" content=\"text/html; charset=windows-1251\">\xcf\xf0\xe8",
                None,
                "\u{41f}\u{440}\u{438}",
                "windows-1251",
            ),
            (b"caf\xc3\xa9", Some("text/html; charset=\"UTF-8\""), "caf\u{e9}", "UTF-8"),
            (b"\xef\xbb\xbfbom first", Some("text/html; charset=latin1"), "bom first", "UTF-8"),
            ("d\u{e9}j\u{e0} vu, na\u{ef}ve caf\u{e9}".as_bytes(), None, "d\u{e9}j\u{e0}", "UTF-8"),
        ];
        for (body, content_type, want, encoding) in cases {
            let (text, used) = decode(body, content_type);
            assert!(text.contains(want), "{text:?} should contain {want:?}");
            assert_eq!(used, encoding, "{text:?}");
        }
    }

    #[test]
    fn junk_never_fails() {
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        let (text, _) = decode(&junk, None);
        assert!(!text.is_empty());
    }
}
