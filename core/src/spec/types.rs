//! The raw spec: serde types 1:1 with the tables of `pipeline.toml`. Every field's `///` text is
//! the user's documentation of that key.

use std::fmt;
use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

pub(crate) use crate::policy::{BreakerSpec, PolicySpec, RetrySpec, POLICY_KEYS};

/// `[pipeline]`: the run as a whole.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PipelineSpec {
    /// The pipeline's name: names its runs in the checkpoint store and its log.
    pub name: String,
    /// Items taken from the source per run.
    #[schemars(extend("x-default" = "all"))]
    pub batch_size: Option<NonZeroU64>,
    /// Stop taking new work after this long, drain, save, exit 75; the next run resumes.
    #[schemars(extend("x-default" = "none"))]
    #[schemars(with = "Option<crate::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub max_run_time: Option<Duration>,
    /// After a stop signal (SIGTERM, SIGINT, SIGHUP) or `max_run_time`, in-flight items may finish
    /// this long before they are cancelled; the watchdog ends a drain still going 2s later. At most
    /// 30 days.
    #[schemars(extend("x-default" = "`\"30s\"`"))]
    #[schemars(with = "Option<crate::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub shutdown_grace: Option<Duration>,
    /// Permanently failed items allowed before the run aborts (exit 3): a count (`10`) or a share
    /// of the batch (`"10%"`).
    #[schemars(extend("x-default" = "no limit"))]
    pub max_failures: Option<MaxFailures>,
    /// How often a progress line is logged.
    #[schemars(extend("x-default" = "`\"10s\"`"))]
    #[schemars(with = "Option<crate::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub heartbeat: Option<Duration>,
    /// How long the runtime may go without answering (a stage blocking its threads) before a
    /// watchdog outside it ends the run (exit 3), naming the stages with attempts in flight; the
    /// next run resumes them. At least 1s, at most 30 days.
    #[schemars(extend("x-default" = "`\"60s\"`"))]
    #[schemars(with = "Option<crate::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub watchdog: Option<Duration>,
    /// The exit code of a run interrupted with its progress saved (a stop signal,
    /// `max_run_time`, a fenced runner): `0` where the platform alerts on any other code (a cron
    /// service), the interruption still in the log and the summary (`outcome = "interrupted"`).
    /// 0, or 4 to 125: 1, 2 and 3 mean other outcomes.
    #[schemars(extend("x-default" = "`75`"))]
    pub interrupted_exit_code: Option<InterruptedExitCode>,
    /// Stages whose `timeout` is longer than `shutdown_grace` are intended (a platform's grace
    /// of 10s, a model that may take 30s): no warning about it. Their attempts still running
    /// at shutdown are cut off and redone by the next run, as without it.
    #[schemars(extend("x-default" = "`false`"))]
    pub timeouts_outlast_grace: Option<bool>,
}

/// `[checkpoint]`: where progress is saved.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointSpec {
    /// Where progress is saved: `sqlite:PATH` (relative to the pipeline file), or a PostgreSQL
    /// database `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (`postgresql://` too) or
    /// `host=HOST user=USER password=PASSWORD dbname=DATABASE` (a libpq `key=value` string;
    /// quote a value with spaces: `password='a b'`); `"${DATABASE_URL}"` takes it from the
    /// environment. A password is never printed. TLS as libpq's `sslmode` (`disable`, `prefer`
    /// (the default), `require`, `verify-ca`, `verify-full`) and `sslrootcert` say: see
    /// "PostgreSQL connections and TLS".
    #[schemars(extend("x-default" = "`\"sqlite:.stagewise/<name>.db\"`"))]
    pub store: Option<String>,
    /// Longest time an item update waits before it is committed.
    #[schemars(extend("x-default" = "`\"200ms\"`"))]
    #[schemars(with = "Option<crate::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub commit_interval: Option<Duration>,
    /// Most items in one commit; the work redone after `kill -9` is at most the items in flight
    /// plus 3 × this.
    #[schemars(extend("x-default" = "`1000`"))]
    pub commit_max_items: Option<NonZeroUsize>,
    /// PostgreSQL store: how long a runner holds its items without renewing its lease (it
    /// renews at every `heartbeat`, from a thread of its own, whatever its attempts take). A
    /// runner that dies leaves its items to the others after this long; one paused or cut off
    /// for this long is fenced: it saves nothing more and exits 75. At least three heartbeats,
    /// and at least 1s.
    #[schemars(extend("x-default" = "`\"60s\"`"))]
    #[schemars(with = "Option<crate::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub lease_ttl: Option<Duration>,
}

/// `[telemetry]`: metrics for Prometheus, served while the run goes on and pushed at its end.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TelemetrySpec {
    /// Serve `/metrics` (Prometheus text format), `/healthz` (200 while the runtime answers,
    /// 503 once it has not for 2s or `[pipeline] watchdog`, whichever is shorter) and
    /// `/progress` (the heartbeat's figures as JSON) on this address and port, from a thread
    /// beside the runtime, for as long as the run goes on: `"127.0.0.1:9464"`, or
    /// `"0.0.0.0:9464"` for every interface (as in a container). An address that cannot be
    /// bound stops the run before it starts (exit 2).
    #[schemars(extend("x-default" = "none (no server)"))]
    pub listen: Option<String>,
    /// A Prometheus Pushgateway (`http://HOST:9091`) that the run's final metrics are pushed to
    /// as it ends (`PUT {push}/metrics/job/stagewise/pipeline/<name>`), for jobs that end
    /// before a scrape (cron). A push that fails is a warning: it never changes the exit code.
    #[schemars(extend("x-default" = "none (no push)"))]
    pub push: Option<String>,
    /// The longest the push at the end may take, connecting included. At most 5m.
    #[schemars(extend("x-default" = "`\"5s\"`"))]
    #[schemars(with = "Option<crate::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub push_timeout: Option<Duration>,
}

/// The keys that make a table of `[[stage]]` a stage, besides the policy keys and its kind's
/// own. Read by hand in `spec/mod.rs` (the kind decides how the rest is read); this type is
/// their documentation, for the schema and the reference.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[allow(dead_code)] // read for its keys and schema
pub(crate) struct StageKeys {
    /// Unique; used in logs, `status`, the checkpoint and environment overrides.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The stage's kind, one of those below: its own keys follow it.
    pub kind: String,
}

/// `interrupted_exit_code`: 0, or 4 to 125.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptedExitCode(pub u8);

impl schemars::JsonSchema for InterruptedExitCode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "InterruptedExitCode".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [
                { "const": 0 },
                { "type": "integer", "minimum": 4, "maximum": 125 },
            ],
            "examples": [0, 75],
        })
    }
}

impl<'de> Deserialize<'de> for InterruptedExitCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = InterruptedExitCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an exit code for `interrupted_exit_code`: 0, or 4 to 125 (1, 2 and 3 mean other outcomes, and a shell uses 126 and above), such as 0")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<InterruptedExitCode, E> {
                match v {
                    0 | 4..=125 => Ok(InterruptedExitCode(v as u8)),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<InterruptedExitCode, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
        deserializer.deserialize_any(V)
    }
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
            // As the file wrote it: "7%", not the float's "7.000000000000001%".
            MaxFailures::Ratio(r) => write!(f, "{}%", (r * 100.0 * 1e6).round() / 1e6),
        }
    }
}

impl schemars::JsonSchema for MaxFailures {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MaxFailures".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                // A count as text ("10"), or a percentage as f64 reads it ("10%", ".5%").
                { "type": "string", "pattern": r"^\s*(\+?[0-9]+|[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*%)\s*$" },
            ],
            "examples": [10, "10%"],
        })
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
