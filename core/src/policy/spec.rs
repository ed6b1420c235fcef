//! The policy keys of a stage table (and of `[defaults]`) as `pipeline.toml` holds them.

use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, Deserializer};
use serde::Deserialize;

/// The policy keys every stage has; `[defaults]` holds the same keys.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicySpec {
    /// Time limit of one attempt.
    #[schemars(extend("x-default" = "`\"30s\"`"))]
    #[schemars(with = "Option<crate::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// The most time an item may spend in the stage, across its attempts and the waits
    /// between them, counted from its first attempt there (kept with the item across
    /// processes): once it passes, the item fails with a deadline error, attempts left or not.
    #[schemars(extend("x-default" = "none"))]
    #[schemars(with = "Option<crate::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub item_deadline: Option<Duration>,
    /// Retry policy for transient errors and timeouts: the `retry.*` keys below; `[defaults]` and a
    /// stage's own are merged key by key.
    #[schemars(extend("x-default" = "each `retry.*` key's own"))]
    pub retry: Option<RetrySpec>,
    /// Items in the stage at once; for a blocking stage, its number of threads. Lowered while the
    /// service behind the stage answers with retry-after hints (429s), and raised back as calls
    /// succeed (see docs/running.md).
    #[schemars(extend("x-default" = "`4` (a source: 1)"))]
    pub concurrency: Option<NonZeroUsize>,
    /// Attempts started per period, evenly spaced: `"N/s"`, `"N/min"`, `"N/h"`.
    #[schemars(extend("x-default" = "none"))]
    pub rate_limit: Option<RateLimit>,
    /// Blocking calls abandoned after their timeout (thread still busy) at which the stage is
    /// wedged and the run exits 3.
    #[schemars(extend("x-default" = "the stage's `concurrency` (never more)"))]
    pub max_abandoned: Option<NonZeroUsize>,
    /// A circuit breaker: the `breaker.*` keys below (`breaker = {}` for their defaults). Off
    /// unless set; a stage's own table replaces `[defaults]`' whole.
    #[schemars(extend("x-default" = "none: off"))]
    pub breaker: Option<BreakerSpec>,
}

/// `breaker = { … }`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BreakerSpec {
    /// Transient failures (timeouts, 5xx, connections refused…) within `breaker.window` that
    /// open the breaker: the stage then starts no attempt, and its items wait without using
    /// attempts.
    #[schemars(extend("x-default" = "`10`"))]
    pub failures: Option<NonZeroU32>,
    /// The window the failures are counted in.
    #[schemars(extend("x-default" = "`\"30s\"`"))]
    #[schemars(with = "Option<crate::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// How long the breaker stays open; then one attempt, the probe, goes through: it closes
    /// the breaker if it succeeds, opens it for another `cool_down` if it fails.
    #[schemars(extend("x-default" = "`\"20s\"`"))]
    #[schemars(with = "Option<crate::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub cool_down: Option<Duration>,
    /// `"wait"`: items wait for the service to come back; `"abort"`: the breaker's opening ends
    /// the run (exit 3), its progress saved.
    #[schemars(extend("x-default" = "`\"wait\"`"))]
    pub on_open: Option<OnOpenSpec>,
}

/// `breaker.on_open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OnOpenSpec {
    Wait,
    Abort,
}

/// The keys of [`PolicySpec`], which every stage table may hold besides its kind's own.
pub(crate) const POLICY_KEYS: &[&str] = &[
    "timeout",
    "item_deadline",
    "retry",
    "concurrency",
    "rate_limit",
    "max_abandoned",
    "breaker",
];

/// `retry = { … }`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetrySpec {
    /// Attempts in all, the first included; `1` never retries.
    #[schemars(extend("x-default" = "`3`"))]
    pub attempts: Option<NonZeroU32>,
    /// Backoff before the second attempt.
    #[schemars(extend("x-default" = "`\"500ms\"`"))]
    #[schemars(with = "Option<crate::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub initial: Option<Duration>,
    /// Largest backoff (a stage's retry-after hint is honoured up to `retry.max_retry_after`).
    #[schemars(extend("x-default" = "`\"30s\"`"))]
    #[schemars(with = "Option<crate::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub max: Option<Duration>,
    /// Growth of the backoff per attempt.
    #[schemars(extend("x-default" = "`2.0`"))]
    pub multiplier: Option<f64>,
    /// Full jitter: wait a uniform random time up to the backoff.
    #[schemars(extend("x-default" = "`true`"))]
    pub jitter: Option<bool>,
    /// The longest wait a server's retry-after hint (a 429's `Retry-After`) can impose before the
    /// next attempt; a server asking for more gets this. Every such answer is a failed attempt, so
    /// an item a server keeps turning away ends failed once its attempts are used.
    #[schemars(extend("x-default" = "`\"60s\"`"))]
    #[schemars(with = "Option<crate::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub max_retry_after: Option<Duration>,
    /// Retry the errors of these kinds (and only those), whatever the stage calls them — e.g.
    /// `["timeout", "http_5xx", "http_429", "connect"]`; the kinds are listed in
    /// docs/pipeline.md ("Error kinds"). A fatal error is never retried.
    #[schemars(extend("x-default" = "the stage's own: its transient errors"))]
    pub on: Option<Vec<crate::stage::ErrorKind>>,
    /// Never retry the errors of these kinds, e.g. `["http_4xx", "invalid_output"]`; wins over
    /// `retry.on`.
    #[schemars(extend("x-default" = "`[]`"))]
    pub never: Option<Vec<crate::stage::ErrorKind>>,
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

impl schemars::JsonSchema for RateLimit {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RateLimit".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": r"^\s*\+?0*[1-9][0-9]*\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$",
            "examples": ["10/s", "500/min", "1000/h"],
        })
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
