//! The policy keys of a stage table (and of `[defaults]`) as `pipeline.toml` holds them.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// The policy keys every stage has; `[defaults]` holds the same keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicySpec {
    /// Time limit of one attempt (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Retry policy for transient errors and timeouts; merged key by key with `[defaults]`.
    pub retry: Option<RetrySpec>,
    /// Items in the stage at once; for a blocking stage, the size of its thread pool (default 4).
    pub concurrency: Option<usize>,
    /// Most attempts started per time unit: `"N/s"`, `"N/min"` or `"N/h"`.
    pub rate_limit: Option<RateLimit>,
    /// Abandoned blocking calls (timed out, thread still busy) after which the stage counts as
    /// wedged and the run stops with exit 3 (default: the stage's concurrency).
    pub max_abandoned: Option<usize>,
}

/// The keys of [`PolicySpec`], which every stage table may hold besides its kind's own.
pub(crate) const POLICY_KEYS: &[&str] = &[
    "timeout",
    "retry",
    "concurrency",
    "rate_limit",
    "max_abandoned",
];

/// `retry = { … }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetrySpec {
    /// Attempts in all, the first included (default 3). `1` never retries.
    pub attempts: Option<u32>,
    /// Backoff before the second attempt (default 500ms).
    #[serde(default, with = "humantime_serde")]
    pub initial: Option<Duration>,
    /// Largest backoff (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub max: Option<Duration>,
    /// Growth of the backoff per attempt (default 2.0).
    pub multiplier: Option<f64>,
    /// Full jitter: wait a uniform random time up to the backoff (default true).
    pub jitter: Option<bool>,
}

/// `rate_limit = "N/s" | "N/min" | "N/h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Attempts per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid rate {s:?}: expected \"N/s\", \"N/min\" or \"N/h\"");
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err("a rate must allow at least 1 attempt".to_owned());
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(RateLimit { count, per })
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse() {
        let cases = [
            ("60/min", Some((60, 60))),
            ("5/s", Some((5, 1))),
            ("100/h", Some((100, 3600))),
            ("0/s", None),
            ("5", None),
            ("5/week", None),
        ];
        for (text, want) in cases {
            let got = text
                .parse::<RateLimit>()
                .ok()
                .map(|r| (r.count, r.per.as_secs()));
            assert_eq!(got, want, "{text}");
        }
    }
}
