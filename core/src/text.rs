//! How values are written for people: durations as they are typed ("4m31.5s"), URLs with their
//! secrets hidden, panic payloads as messages.

use std::time::Duration;

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

/// A URL with its passwords replaced by `***`, for logs, errors and `plan`: the one in
/// `user:password@` and any `password=` (or `sslpassword=`) query parameter.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let head = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, tail) = match rest.find(['/', '#']) {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                    let hidden = if userinfo.contains(':') {
                        format!("{user}:***")
                    } else {
                        user.to_owned()
                    };
                    format!("{scheme}://{hidden}@{host}{tail}")
                }
                None => head.to_owned(),
            }
        }
        None => head.to_owned(),
    };
    let Some(query) = query else { return head };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.to_ascii_lowercase().ends_with("password") => format!("{k}=***"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{head}?{}", params.join("&"))
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
    fn redacts_passwords() {
        let cases = [
            (
                "postgres://app:s3cret@db:5432/x",
                "postgres://app:***@db:5432/x",
            ),
            ("postgres://app@db/x", "postgres://app@db/x"),
            ("sqlite:state.db", "sqlite:state.db"),
            ("https://u:p@h/a@b", "https://u:***@h/a@b"),
            (
                "postgres://u@h:x/db?password=Hunter2&sslmode=disable",
                "postgres://u@h:x/db?password=***&sslmode=disable",
            ),
            (
                "postgress://u@h/db?sslpassword=s&PASSWORD=t",
                "postgress://u@h/db?sslpassword=***&PASSWORD=***",
            ),
            (
                "postgres://u:p@h/db?application_name=x",
                "postgres://u:***@h/db?application_name=x",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want);
        }
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
