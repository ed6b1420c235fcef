//! The `fault` transform: injects failures so that retries, timeouts, `max_failures`, panic
//! handling and wedge detection can be tried out and tested end to end.
//!
//! Every call draws a number `u` in `[0, 1)` from the seed, the record key and the attempt
//! number, never from a random source, so a run is reproducible: the same seed, key and
//! attempt always get the same fault, while a retry (the next attempt) draws anew. The draw is
//! FNV-1a (64-bit) over the bytes of `seed` (8 bytes, little-endian), the key (UTF-8) and
//! the attempt (4 bytes, little-endian), finished with the SplitMix64 mixer; the top 53 bits
//! of the result, divided by 2⁵³, are `u`. This is fixed: changing it changes which items
//! fail in existing tests and benchmarks.
//!
//! `u` then falls into one band, in this order: `panic_rate`, `hang_rate`, `permanent_rate`,
//! `error_rate`, `freeze_rate`, and the rest passes the record on unchanged. (`freeze_rate`
//! came last, so that the other bands of existing pipelines did not move.)

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use stagewise_core::stage::{
    AsyncStage, BlockingStage, BuildContext, Context, Outcome, Probe, ProbeContext, Record, Role,
    StageError, StageImpl, StageKind,
};

/// How far above 1 the rates may add up before it counts as a mistake: `0.1 + 0.2 + 0.7` is
/// `1.0000000000000002` in floating point.
const SUM_TOLERANCE: f64 = 1e-9;

/// Configuration of a `fault` stage. Each rate is the share of calls (attempts, not items)
/// that get that fault; the rates must add up to at most 1.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Share of calls that fail with a transient error ("injected transient fault").
    #[schemars(extend("x-default" = "`0`"))]
    #[serde(default)]
    pub error_rate: f64,
    /// Share of calls that fail with a permanent error ("injected permanent fault").
    #[schemars(extend("x-default" = "`0`"))]
    #[serde(default)]
    pub permanent_rate: f64,
    /// Share of calls that never return; in blocking mode the call ignores cancellation and holds
    /// its thread for `hang_for`, then succeeds (a slow call that ignored its deadline).
    #[schemars(extend("x-default" = "`0`"))]
    #[serde(default)]
    pub hang_rate: f64,
    /// Share of calls that panic ("injected panic").
    #[schemars(extend("x-default" = "`0`"))]
    #[serde(default)]
    pub panic_rate: f64,
    /// Chooses which calls get which fault.
    #[schemars(extend("x-default" = "`0`"))]
    #[serde(default)]
    pub seed: u64,
    /// Run on the stage's blocking pool.
    #[schemars(extend("x-default" = "`false`"))]
    #[serde(default)]
    pub blocking: bool,
    /// Share of calls that freeze the runtime thread they run on: a plain `std::thread::sleep`
    /// of `freeze_for` inside the async call, never yielding, as a library that blocks without
    /// saying so would. Only with `blocking = false` (on the blocking pool, that is `hang_rate`).
    #[schemars(extend("x-default" = "`0`"))]
    #[serde(default)]
    pub freeze_rate: f64,
    /// How long a frozen call blocks its thread.
    #[schemars(extend("x-default" = "`\"1h\"`"))]
    #[schemars(with = "stagewise_core::stage::DurationText")]
    #[serde(default = "an_hour", with = "humantime_serde")]
    pub freeze_for: Duration,
    /// How long a blocking hang (`hang_rate` with `blocking = true`) holds its thread before it
    /// returns the record unchanged.
    #[schemars(extend("x-default" = "`\"1h\"`"))]
    #[schemars(with = "stagewise_core::stage::DurationText")]
    #[serde(default = "an_hour", with = "humantime_serde")]
    pub hang_for: Duration,
}

fn an_hour() -> Duration {
    Duration::from_secs(3600)
}

impl FaultConfig {
    /// The rates with their keys, in the order their bands are laid out in the docs.
    fn rates(&self) -> [(&'static str, f64); 5] {
        [
            ("error_rate", self.error_rate),
            ("permanent_rate", self.permanent_rate),
            ("hang_rate", self.hang_rate),
            ("panic_rate", self.panic_rate),
            ("freeze_rate", self.freeze_rate),
        ]
    }
}

/// The `fault` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultKind;

impl StageKind for FaultKind {
    type Config = FaultConfig;

    fn kind(&self) -> &'static str {
        "fault"
    }

    fn roles(&self) -> &'static [Role] {
        &[Role::Transform]
    }

    fn check(&self, config: &FaultConfig, _role: Role) -> Vec<(String, String)> {
        let mut problems: Vec<(String, String)> = config
            .rates()
            .into_iter()
            // Written so that NaN fails too.
            .filter(|(_, rate)| !(0.0..=1.0).contains(rate))
            .map(|(key, _)| (key.to_owned(), format!("`{key}` must be between 0 and 1")))
            .collect();
        let sum: f64 = config.rates().iter().map(|(_, rate)| rate).sum();
        if problems.is_empty() && sum > 1.0 + SUM_TOLERANCE {
            let set: Vec<String> = config
                .rates()
                .into_iter()
                .filter(|(_, rate)| *rate > 0.0)
                .map(|(key, _)| format!("`{key}`"))
                .collect();
            // A problem names one key: the first rate that is set, as all set ones share the
            // blame. The sum is above 1, so at least two are set.
            let key = config
                .rates()
                .into_iter()
                .find(|(_, rate)| *rate > 0.0)
                .map_or("error_rate", |(key, _)| key);
            let (last, rest) = set.split_last().expect("a sum above 1 has a rate set");
            let names = if rest.is_empty() {
                last.clone()
            } else {
                format!("{} and {last}", rest.join(", "))
            };
            problems.push((
                key.to_owned(),
                format!("{names} add up to {sum}, more than 1"),
            ));
        }
        if config.blocking && config.freeze_rate > 0.0 {
            problems.push((
                "freeze_rate".to_owned(),
                "`freeze_rate` freezes an async stage's runtime thread; with `blocking = true` use `hang_rate`".to_owned(),
            ));
        }
        problems
    }

    /// Its records keep their fields.
    fn probe(&self, _config: &FaultConfig, _cx: &ProbeContext<'_>) -> Probe {
        Probe::same()
    }

    fn build(&self, config: FaultConfig, _cx: &BuildContext) -> Result<StageImpl, StageError> {
        let stage = Arc::new(Fault::new(&config));
        Ok(if config.blocking {
            StageImpl::Blocking(stage)
        } else {
            StageImpl::Async(stage)
        })
    }
}

/// What one call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Injected {
    Nothing,
    Transient,
    Permanent,
    Hang,
    Panic,
    Freeze,
}

/// The stage, with the rates turned into cumulative upper bounds of their bands.
struct Fault {
    panic_below: f64,
    hang_below: f64,
    permanent_below: f64,
    error_below: f64,
    freeze_below: f64,
    freeze_for: Duration,
    hang_for: Duration,
    seed: u64,
}

impl Fault {
    fn new(config: &FaultConfig) -> Self {
        let hang_below = config.panic_rate + config.hang_rate;
        let permanent_below = hang_below + config.permanent_rate;
        let error_below = permanent_below + config.error_rate;
        Self {
            panic_below: config.panic_rate,
            hang_below,
            permanent_below,
            error_below,
            freeze_below: error_below + config.freeze_rate,
            freeze_for: config.freeze_for,
            hang_for: config.hang_for,
            seed: config.seed,
        }
    }

    fn decide(&self, key: &str, attempt: u32) -> Injected {
        let u = draw(self.seed, key, attempt);
        if u < self.panic_below {
            Injected::Panic
        } else if u < self.hang_below {
            Injected::Hang
        } else if u < self.permanent_below {
            Injected::Permanent
        } else if u < self.error_below {
            Injected::Transient
        } else if u < self.freeze_below {
            Injected::Freeze
        } else {
            Injected::Nothing
        }
    }
}

/// The call's number in `[0, 1)`, as the module docs define it.
fn draw(seed: u64, key: &str, attempt: u32) -> f64 {
    const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let seed = seed.to_le_bytes();
    let attempt = attempt.to_le_bytes();
    let bytes = seed.iter().chain(key.as_bytes()).chain(&attempt);
    let hash = bytes.fold(FNV_OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
    });
    // FNV-1a alone leaves short, similar keys ("1", "2", …) with similar high bits.
    let mixed = splitmix64_mix(hash);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

/// The output function of SplitMix64 (Steele, Lea and Flood, 2014).
fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn injected_error(injected: Injected) -> Option<StageError> {
    match injected {
        Injected::Permanent => Some(StageError::permanent("injected permanent fault")),
        Injected::Transient => Some(StageError::transient("injected transient fault")),
        Injected::Nothing | Injected::Hang | Injected::Panic | Injected::Freeze => None,
    }
}

#[async_trait]
impl AsyncStage for Fault {
    async fn process(&self, record: Record, cx: &Context) -> Result<Outcome, StageError> {
        match self.decide(&record.key, cx.attempt()) {
            Injected::Panic => panic!("injected panic"),
            Injected::Hang => {
                let never: Infallible = std::future::pending().await;
                match never {}
            }
            Injected::Freeze => {
                // On purpose: this blocks the runtime thread the call is polled on, deaf to
                // timeouts and signals, until it wakes.
                std::thread::sleep(self.freeze_for);
                Ok(Outcome::Continue(record))
            }
            injected => match injected_error(injected) {
                Some(err) => Err(err),
                None => Ok(Outcome::Continue(record)),
            },
        }
    }
}

impl BlockingStage for Fault {
    fn process(&self, record: Record, cx: &Context) -> Result<Outcome, StageError> {
        match self.decide(&record.key, cx.attempt()) {
            Injected::Panic => panic!("injected panic"),
            Injected::Hang => {
                // Deliberately deaf to the deadline and the cancel flag: this is the stuck
                // call that the runner must abandon. Should it ever wake, the call just was
                // very slow.
                std::thread::sleep(self.hang_for);
                Ok(Outcome::Continue(record))
            }
            injected => match injected_error(injected) {
                Some(err) => Err(err),
                None => Ok(Outcome::Continue(record)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{build_cx, config, cx};
    use stagewise_core::stage::ErrorClass;
    use std::collections::HashMap;
    use std::future::Future;
    use std::task::Poll;

    fn fault(toml_text: &str) -> Fault {
        let config: FaultConfig = config(toml_text).expect("valid config");
        assert_eq!(FaultKind.check(&config, Role::Transform), Vec::new());
        Fault::new(&config)
    }

    fn build(toml_text: &str) -> StageImpl {
        let config: FaultConfig = config(toml_text).expect("valid config");
        FaultKind
            .build(
                config,
                &build_cx(Role::Transform, std::path::Path::new(".")),
            )
            .expect("builds")
    }

    #[test]
    fn draw_is_pinned() {
        // The draw is documented and reproducible across builds and releases; these values
        // only change if the documented hash does.
        let cases = [
            (0, "0", 1, 0.8149019633994086),
            (0, "0", 2, 0.6496108576177302),
            (7, "item-42", 3, 0.39907063274675225),
        ];
        for (seed, key, attempt, expected) in cases {
            assert_eq!(draw(seed, key, attempt), expected, "{seed} {key} {attempt}");
        }
    }

    #[test]
    fn same_seed_key_and_attempt_give_the_same_fault() {
        let a = fault("error_rate = 0.2\npermanent_rate = 0.2\nhang_rate = 0.2\nseed = 9");
        let b = fault("error_rate = 0.2\npermanent_rate = 0.2\nhang_rate = 0.2\nseed = 9");
        for i in 0..1000 {
            let key = format!("k{i}");
            for attempt in 1..=3 {
                assert_eq!(a.decide(&key, attempt), b.decide(&key, attempt), "{key}");
                assert_eq!(a.decide(&key, attempt), a.decide(&key, attempt), "{key}");
            }
        }
    }

    #[test]
    fn attempts_and_seeds_change_the_draw() {
        let fault = fault("error_rate = 0.5");
        let retried_differently = (0..1000)
            .map(|i| i.to_string())
            .filter(|key| fault.decide(key, 1) != fault.decide(key, 2))
            .count();
        // Independent coin flips differ about half the time.
        assert!(
            (400..600).contains(&retried_differently),
            "{retried_differently}"
        );

        let seeds_differ = (0..1000)
            .map(|i| i.to_string())
            .filter(|key| draw(1, key, 1) != draw(2, key, 1))
            .count();
        assert_eq!(seeds_differ, 1000);
    }

    #[test]
    fn shares_roughly_match_the_rates() {
        // (keys, expected share of each fault)
        let cases: &[(&str, [(Injected, f64); 5])] = &[
            (
                "error_rate = 0.3",
                [
                    (Injected::Transient, 0.3),
                    (Injected::Permanent, 0.0),
                    (Injected::Hang, 0.0),
                    (Injected::Panic, 0.0),
                    (Injected::Nothing, 0.7),
                ],
            ),
            (
                "error_rate = 0.1\npermanent_rate = 0.2\nhang_rate = 0.3\npanic_rate = 0.4\nseed = 3",
                [
                    (Injected::Transient, 0.1),
                    (Injected::Permanent, 0.2),
                    (Injected::Hang, 0.3),
                    (Injected::Panic, 0.4),
                    (Injected::Nothing, 0.0),
                ],
            ),
            (
                "",
                [
                    (Injected::Transient, 0.0),
                    (Injected::Permanent, 0.0),
                    (Injected::Hang, 0.0),
                    (Injected::Panic, 0.0),
                    (Injected::Nothing, 1.0),
                ],
            ),
        ];
        const N: usize = 10_000;
        for (keys, expected) in cases {
            let fault = fault(keys);
            let mut counts: HashMap<Injected, usize> = HashMap::new();
            for i in 0..N {
                *counts.entry(fault.decide(&i.to_string(), 1)).or_default() += 1;
            }
            for (injected, rate) in expected {
                let share = counts.get(injected).copied().unwrap_or(0) as f64 / N as f64;
                assert!(
                    (share - rate).abs() <= 0.05,
                    "{keys:?}: {injected:?} share {share}, expected about {rate}"
                );
                if *rate == 0.0 {
                    assert_eq!(share, 0.0, "{keys:?}: {injected:?}");
                }
            }
        }
    }

    #[test]
    fn check_rejects_rates_out_of_range_and_sums_above_one() {
        // (keys, expected problems)
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("error_rate = 1.0", &[]),
            (
                "error_rate = 0.1\npermanent_rate = 0.2\nhang_rate = 0.7",
                &[],
            ),
            (
                "error_rate = 1.5",
                &[("error_rate", "`error_rate` must be between 0 and 1")],
            ),
            (
                "permanent_rate = -0.1\npanic_rate = nan",
                &[
                    ("permanent_rate", "`permanent_rate` must be between 0 and 1"),
                    ("panic_rate", "`panic_rate` must be between 0 and 1"),
                ],
            ),
            (
                "hang_rate = 0.6\npanic_rate = 0.5",
                &[(
                    "hang_rate",
                    "`hang_rate` and `panic_rate` add up to 1.1, more than 1",
                )],
            ),
            (
                "error_rate = 0.5\npermanent_rate = 0.25\nhang_rate = 0.25\npanic_rate = 0.25",
                &[(
                    "error_rate",
                    "`error_rate`, `permanent_rate`, `hang_rate` and `panic_rate` add up to \
                     1.25, more than 1",
                )],
            ),
        ];
        for (keys, expected) in cases {
            let config: FaultConfig = config(keys).expect(keys);
            let problems = FaultKind.check(&config, Role::Transform);
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(k, m)| ((*k).to_owned(), (*m).to_owned()))
                .collect();
            assert_eq!(problems, expected, "{keys:?}");
        }
    }

    #[test]
    fn config_denies_unknown_keys() {
        assert!(crate::testing::config::<FaultConfig>("error = 0.1").is_err());
        assert!(crate::testing::config::<FaultConfig>("seed = -1").is_err());
    }

    /// A key (from "0", "1", …) whose first attempt gets `want` under `fault`.
    fn key_for(fault: &Fault, want: Injected) -> String {
        (0..10_000)
            .map(|i| i.to_string())
            .find(|key| fault.decide(key, 1) == want)
            .expect("some key gets each fault")
    }

    const ALL: &str = "error_rate = 0.2\npermanent_rate = 0.2\nhang_rate = 0.2\npanic_rate = 0.2";

    #[tokio::test]
    async fn async_stage_injects_each_fault() {
        let decider = fault(ALL);
        let StageImpl::Async(stage) = build(ALL) else {
            panic!("expected an async stage");
        };
        let call = |want| {
            let key = key_for(&decider, want);
            let stage = stage.clone();
            async move { stage.process(Record::new(key.clone()), &cx(&key, 1)).await }
        };

        let out = call(Injected::Nothing).await.expect("passes");
        assert!(matches!(out, Outcome::Continue(_)));
        let err = call(Injected::Transient).await.expect_err("transient");
        assert_eq!(err.class, ErrorClass::Transient);
        assert_eq!(err.message, "injected transient fault");
        let err = call(Injected::Permanent).await.expect_err("permanent");
        assert_eq!(err.class, ErrorClass::Permanent);
        assert_eq!(err.message, "injected permanent fault");

        let mut hang = std::pin::pin!(call(Injected::Hang));
        let polled = std::future::poll_fn(|task| Poll::Ready(hang.as_mut().poll(task))).await;
        assert!(polled.is_pending(), "a hang must not finish");

        let panicked = tokio::spawn(call(Injected::Panic))
            .await
            .expect_err("panics");
        assert!(panicked.is_panic());
    }

    #[test]
    fn blocking_stage_injects_errors_and_panics() {
        let decider = fault(ALL);
        let StageImpl::Blocking(stage) = build(&format!("{ALL}\nblocking = true")) else {
            panic!("expected a blocking stage");
        };
        let call = |want| {
            let key = key_for(&decider, want);
            stage.process(Record::new(key.clone()), &cx(&key, 1))
        };
        assert!(matches!(call(Injected::Nothing), Ok(Outcome::Continue(_))));
        assert_eq!(
            call(Injected::Transient).map_err(|e| e.class),
            Err(ErrorClass::Transient)
        );
        assert_eq!(
            call(Injected::Permanent).map_err(|e| e.class),
            Err(ErrorClass::Permanent)
        );
        let panic =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(Injected::Panic)))
                .expect_err("panics");
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"injected panic"));
        // A blocking hang sleeps for an hour; it is not called here.
    }

    #[test]
    fn the_freeze_band_comes_last_and_moves_no_other() {
        let without = fault("error_rate = 0.2\npermanent_rate = 0.2\nhang_rate = 0.1\nseed = 3");
        let with = fault(
            "error_rate = 0.2\npermanent_rate = 0.2\nhang_rate = 0.1\nfreeze_rate = 0.3\nseed = 3",
        );
        let mut frozen = 0;
        for i in 0..1000 {
            let key = format!("k{i}");
            match with.decide(&key, 1) {
                Injected::Freeze => {
                    frozen += 1;
                    assert_eq!(without.decide(&key, 1), Injected::Nothing, "{key}");
                }
                other => assert_eq!(without.decide(&key, 1), other, "{key}"),
            }
        }
        assert!((230..370).contains(&frozen), "{frozen}");
    }

    #[test]
    fn a_frozen_call_blocks_its_thread_inside_one_poll() {
        let StageImpl::Async(stage) = build("freeze_rate = 1.0\nfreeze_for = \"200ms\"") else {
            panic!("expected an async stage");
        };
        let cx = cx("k", 1);
        let mut call = std::pin::pin!(stage.process(Record::new("k"), &cx));
        let waker = std::task::Waker::noop();
        let began = std::time::Instant::now();
        // One poll: a stage that yielded would return Pending at once.
        let polled = call
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        assert!(polled.is_ready(), "a freeze never yields");
        assert!(
            began.elapsed() >= Duration::from_millis(200),
            "{:?}",
            began.elapsed()
        );
    }

    #[test]
    fn a_freeze_needs_an_async_stage() {
        let config: FaultConfig =
            config("freeze_rate = 0.5\nblocking = true").expect("valid config");
        let problems = FaultKind.check(&config, Role::Transform);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "freeze_rate");
    }
}
