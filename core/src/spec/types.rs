//! The raw spec: serde types 1:1 with the tables of `pipeline.toml`. Every field's `///` text is
//! the user's documentation of that key.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

pub(crate) use crate::policy::{PolicySpec, RetrySpec, POLICY_KEYS};

/// `[pipeline]`: the run as a whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PipelineSpec {
    /// The pipeline's name: names the run in the checkpoint store and the logs.
    pub name: String,
    /// Items taken from the source per run (default: all it yields).
    pub batch_size: Option<u64>,
    /// Stop taking new work after this long, drain, save and exit 75 (resume next run).
    #[serde(default, with = "humantime_serde")]
    pub max_run_time: Option<Duration>,
    /// After SIGTERM/SIGINT (or `max_run_time`), in-flight items may finish for this long
    /// before they are cancelled (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub shutdown_grace: Option<Duration>,
    /// Permanently failed items allowed before the run aborts: a count (`10`) or a share of
    /// the batch (`"10%"`). Default: no limit.
    pub max_failures: Option<MaxFailures>,
    /// How often a heartbeat line is logged (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub heartbeat: Option<Duration>,
}

/// `[checkpoint]`: where progress is saved.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointSpec {
    /// `sqlite:PATH` (relative to the pipeline file). Default `sqlite:.stagewise/<name>.db`.
    pub store: Option<String>,
    /// Longest time an item update waits before it is committed (default 200ms).
    #[serde(default, with = "humantime_serde")]
    pub commit_interval: Option<Duration>,
    /// Most items in one commit (default 1000). The work redone after `kill -9` is at most the
    /// items in flight plus three times this.
    pub commit_max_items: Option<usize>,
}

/// `max_failures`: a count or a share of the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxFailures {
    /// At most this many failed items.
    Count(u64),
    /// At most this share (0..=1) of the batch.
    Ratio(f64),
}

impl MaxFailures {
    /// Whether `failed` items out of `total` cross the limit.
    pub fn crossed(self, failed: u64, total: u64) -> bool {
        match self {
            MaxFailures::Count(n) => failed > n,
            MaxFailures::Ratio(r) => failed as f64 > r * total as f64,
        }
    }
}

impl fmt::Display for MaxFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxFailures::Count(n) => write!(f, "{n}"),
            MaxFailures::Ratio(r) => write!(f, "{}%", r * 100.0),
        }
    }
}

impl<'de> Deserialize<'de> for MaxFailures {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MaxFailures;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a count such as 10 or a percentage such as \"10%\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MaxFailures, E> {
                u64::try_from(v)
                    .map(MaxFailures::Count)
                    .map_err(|_| E::custom("`max_failures` must not be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MaxFailures, E> {
                Ok(MaxFailures::Count(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MaxFailures, E> {
                let v = v.trim();
                if let Some(p) = v.strip_suffix('%') {
                    let p: f64 = p.trim().parse().map_err(|_| {
                        E::custom(format!("invalid percentage {v:?}: expected e.g. \"10%\""))
                    })?;
                    if !(0.0..=100.0).contains(&p) {
                        return Err(E::custom("a percentage must be between 0% and 100%"));
                    }
                    Ok(MaxFailures::Ratio(p / 100.0))
                } else {
                    v.parse().map(MaxFailures::Count).map_err(|_| {
                        E::custom(format!(
                            "invalid value {v:?}: expected a count such as 10 or a percentage such as \"10%\""
                        ))
                    })
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_failures_parse_and_cross() {
        #[derive(Deserialize)]
        struct T {
            m: MaxFailures,
        }
        let parse = |s: &str| toml::from_str::<T>(&format!("m = {s}")).map(|t| t.m);
        assert_eq!(parse("5").ok(), Some(MaxFailures::Count(5)));
        assert_eq!(parse("\"10%\"").ok(), Some(MaxFailures::Ratio(0.1)));
        assert!(parse("\"150%\"").is_err());
        assert!(parse("-1").is_err());
        assert!(MaxFailures::Count(5).crossed(6, 100));
        assert!(!MaxFailures::Count(5).crossed(5, 100));
        assert!(MaxFailures::Ratio(0.1).crossed(11, 100));
        assert!(!MaxFailures::Ratio(0.1).crossed(10, 100));
    }
}
