//! The `sleep` transform: waits a set time, optionally jittered, then passes the record on
//! unchanged. It stands in for a slow call when trying out timeouts, concurrency and rate
//! limits; with `duration = "0s"` it is a no-op stage for measuring the runner's own overhead.
//!
//! Its async form sleeps on the runtime's timer and is cancelled by being dropped. Its blocking
//! form occupies a pool thread, like a real blocking call, and sleeps in short slices so that it
//! honours its deadline and cancellation as the blocking contract asks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use stagewise_core::stage::{
    AsyncStage, BlockingStage, BuildContext, Context, Outcome, Probe, ProbeContext, Record, Role,
    StageError, StageImpl, StageKind,
};

/// The longest a blocking sleep goes without looking at its cancellation flag.
const SLICE: Duration = Duration::from_millis(10);

/// Configuration of a `sleep` stage.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepConfig {
    /// How long to wait per record; `"0s"` makes a no-op stage.
    #[schemars(with = "stagewise_core::stage::DurationText")]
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// A uniform random extra wait, from zero up to this.
    #[schemars(extend("x-default" = "`\"0s\"`"))]
    #[schemars(with = "stagewise_core::stage::DurationText")]
    #[serde(default, with = "humantime_serde")]
    pub jitter: Duration,
    /// Sleep on the stage's blocking pool (waking every 10 ms to honour the deadline) instead of
    /// the async timer.
    #[schemars(extend("x-default" = "`false`"))]
    #[serde(default)]
    pub blocking: bool,
}

/// The `sleep` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct SleepKind;

impl StageKind for SleepKind {
    type Config = SleepConfig;

    fn kind(&self) -> &'static str {
        "sleep"
    }

    fn roles(&self) -> &'static [Role] {
        &[Role::Transform]
    }

    /// Its records keep their fields.
    fn probe(&self, _config: &SleepConfig, _cx: &ProbeContext<'_>) -> Probe {
        Probe::same()
    }

    fn build(&self, config: SleepConfig, _cx: &BuildContext) -> Result<StageImpl, StageError> {
        let stage = Arc::new(Sleep {
            duration: config.duration,
            jitter: config.jitter,
        });
        Ok(if config.blocking {
            StageImpl::Blocking(stage)
        } else {
            StageImpl::Async(stage)
        })
    }
}

struct Sleep {
    duration: Duration,
    jitter: Duration,
}

impl Sleep {
    /// This call's wait.
    fn pick(&self) -> Duration {
        if self.jitter.is_zero() {
            self.duration
        } else {
            self.duration
                .saturating_add(rand::random_range(Duration::ZERO..self.jitter))
        }
    }
}

#[async_trait]
impl AsyncStage for Sleep {
    async fn process(&self, record: Record, _cx: &Context) -> Result<Outcome, StageError> {
        let wait = self.pick();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(Outcome::Continue(record))
    }
}

impl BlockingStage for Sleep {
    fn process(&self, record: Record, cx: &Context) -> Result<Outcome, StageError> {
        let wait = self.pick();
        if !wait.is_zero() {
            let until = Instant::now() + wait;
            loop {
                if cx.is_cancelled() {
                    return Err(StageError::transient("cancelled"));
                }
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(SLICE));
            }
        }
        Ok(Outcome::Continue(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{build_cx, config, cx, cx_with};
    use stagewise_core::stage::{CancelFlag, ErrorClass};
    use std::future::Future;

    fn build(toml_text: &str) -> StageImpl {
        let config: SleepConfig = config(toml_text).expect("valid config");
        SleepKind
            .build(
                config,
                &build_cx(Role::Transform, std::path::Path::new(".")),
            )
            .expect("builds")
    }

    fn record() -> Record {
        let mut record = Record::new("k");
        record.fields.insert("x".to_owned(), 1.into());
        record
    }

    #[test]
    fn config_parses_durations_and_defaults() {
        // (keys, duration, jitter, blocking)
        let cases = [
            ("duration = \"250ms\"", 250, 0, false),
            ("duration = \"2s\"\njitter = \"5ms\"", 2000, 5, false),
            ("duration = \"0s\"\nblocking = true", 0, 0, true),
        ];
        for (keys, duration, jitter, blocking) in cases {
            let config: SleepConfig = config(keys).expect(keys);
            assert_eq!(config.duration, Duration::from_millis(duration), "{keys}");
            assert_eq!(config.jitter, Duration::from_millis(jitter), "{keys}");
            assert_eq!(config.blocking, blocking, "{keys}");
        }
        for bad in [
            "",
            "duration = 5",
            "duration = \"soon\"",
            "duration = \"1s\"\nwait = 1",
        ] {
            assert!(
                crate::testing::config::<SleepConfig>(bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn blocking_flag_picks_the_implementation() {
        assert!(matches!(build("duration = \"1s\""), StageImpl::Async(_)));
        assert!(matches!(
            build("duration = \"1s\"\nblocking = true"),
            StageImpl::Blocking(_)
        ));
    }

    #[test]
    fn jitter_stays_within_its_range() {
        let sleep = Sleep {
            duration: Duration::from_millis(100),
            jitter: Duration::from_millis(50),
        };
        let picks: Vec<Duration> = (0..1000).map(|_| sleep.pick()).collect();
        assert!(picks
            .iter()
            .all(|d| (Duration::from_millis(100)..Duration::from_millis(150)).contains(d)));
        assert!(picks.iter().any(|d| *d != picks[0]), "jitter never varied");
    }

    #[tokio::test(start_paused = true)]
    async fn async_sleep_waits_then_passes_through() {
        let StageImpl::Async(stage) = build("duration = \"250ms\"") else {
            panic!("expected an async stage");
        };
        let start = tokio::time::Instant::now();
        let out = stage.process(record(), &cx("k", 1)).await.expect("sleeps");
        assert_eq!(out, Outcome::Continue(record()));
        let took = start.elapsed();
        // The timer works in whole milliseconds, so allow it to round up.
        assert!(
            (Duration::from_millis(250)..Duration::from_millis(260)).contains(&took),
            "took {took:?}"
        );
    }

    #[test]
    fn zero_duration_is_a_no_op_outside_any_runtime() {
        // No runtime here: were the async form to touch tokio's timer, it would panic.
        let StageImpl::Async(stage) = build("duration = \"0s\"") else {
            panic!("expected an async stage");
        };
        let out = futures_poll_once(stage.process(record(), &cx("k", 1)));
        assert_eq!(out, Some(Ok(Outcome::Continue(record()))));

        let StageImpl::Blocking(stage) = build("duration = \"0s\"\nblocking = true") else {
            panic!("expected a blocking stage");
        };
        let out = stage.process(record(), &cx("k", 1));
        assert_eq!(out, Ok(Outcome::Continue(record())));
    }

    /// Polls `fut` once with a no-op waker: `Some` if it finished right away.
    fn futures_poll_once<F: Future>(fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn blocking_sleep_honours_cancellation() {
        let StageImpl::Blocking(stage) = build("duration = \"10s\"\nblocking = true") else {
            panic!("expected a blocking stage");
        };
        let cancel = CancelFlag::new();
        let raiser = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                cancel.cancel();
            })
        };
        let start = Instant::now();
        let err = stage
            .process(record(), &cx_with("k", 1, cancel))
            .expect_err("cancelled");
        let took = start.elapsed();
        raiser.join().expect("raiser thread");
        assert_eq!(err.class, ErrorClass::Transient);
        assert_eq!(err.message, "cancelled");
        assert!(took < Duration::from_secs(2), "took {took:?} after cancel");
    }

    #[test]
    fn blocking_sleep_stops_at_the_deadline() {
        let StageImpl::Blocking(stage) = build("duration = \"10s\"\nblocking = true") else {
            panic!("expected a blocking stage");
        };
        let start = Instant::now();
        let deadline = start + Duration::from_millis(50);
        let cx = Context::new("k", "test", 1, deadline, CancelFlag::new());
        let err = stage.process(record(), &cx).expect_err("past deadline");
        assert_eq!(err.class, ErrorClass::Transient);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn blocking_sleep_waits_its_duration() {
        let StageImpl::Blocking(stage) = build("duration = \"60ms\"\nblocking = true") else {
            panic!("expected a blocking stage");
        };
        let start = Instant::now();
        let out = stage.process(record(), &cx("k", 1)).expect("sleeps");
        assert_eq!(out, Outcome::Continue(record()));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(60), "woke early: {took:?}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
}
