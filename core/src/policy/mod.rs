//! The policies every stage shares: each one a layer of its own, and their resolution from the
//! stage's keys, `[defaults]`, the kind's defaults and the built-in defaults, in that order of
//! precedence.
//!
//! The runner wraps each stage call in the layers in one order, outermost first:
//!
//! 1. [`retry`] — attempts, backoff with jitter, a stage's retry-after hint (up to
//!    `retry.max_retry_after`);
//! 2. [`lanes`] — for a stage with lanes (`http-download`: one per host), the item's lane's
//!    places, as many as its width, narrowed by that lane's overload signals;
//! 3. concurrency — the stage's `concurrency` slots (a semaphore, in the runner);
//! 4. [`breaker`] — no attempt at all while the service is down (`breaker`), then one probe;
//! 5. [`adaptive`] — fewer attempts at once while the service says it is overloaded;
//! 6. [`rate`] — attempts started no faster than `rate_limit`;
//! 7. [`timeout`] — each attempt's deadline (for a blocking stage, with the abandonment of a
//!    call that ignores it, in the runner's `call`);
//! 8. the stage's call.
//!
//! An item's `item_deadline` ([`retry::ItemDeadline`]) bounds them all: no attempt starts past
//! it, every wait ends at it, and the attempt under way is cut short there.
//!
//! So a wait for a lane, a slot, a rate-limit slot or an adaptive place does not count against
//! the attempt's timeout, and a retry waits its backoff holding no place of any kind: an item a
//! server told to come back in a minute holds back no other item. A stage only classifies its
//! errors; backoff, jitter, caps and limits live here.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use crate::stage::KindDefaults;

pub(crate) mod adaptive;
pub(crate) mod breaker;
pub(crate) mod lanes;
pub(crate) mod rate;
pub(crate) mod retry;
mod spec;
pub(crate) mod timeout;

pub use breaker::{BreakerPolicy, OnOpen};
pub use retry::Retry;
pub use spec::RateLimit;
pub(crate) use spec::{BreakerSpec, PolicySpec, RetrySpec, POLICY_KEYS};

/// The largest `concurrency`: a blocking stage gets that many threads.
pub(crate) const MAX_CONCURRENCY: usize = 10_000;

/// The longest `timeout`: 30 days.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Built-in defaults, used where neither the stage, `[defaults]` nor the kind says otherwise.
pub(crate) mod builtin {
    use std::time::Duration;
    pub const TIMEOUT: Duration = Duration::from_secs(30);
    pub const ATTEMPTS: u32 = 3;
    pub const INITIAL: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(30);
    pub const MULTIPLIER: f64 = 2.0;
    pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
    pub const CONCURRENCY: usize = 4;
    pub const BREAKER_FAILURES: u32 = 10;
    pub const BREAKER_WINDOW: Duration = Duration::from_secs(30);
    pub const BREAKER_COOL_DOWN: Duration = Duration::from_secs(20);
}

/// The resolved policy of one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// The most time an item may spend in the stage, from its first attempt there.
    pub item_deadline: Option<Duration>,
    /// Retry policy.
    pub retry: Retry,
    /// Items in the stage at once (threads, for a blocking stage).
    pub concurrency: usize,
    /// Most attempts started per period.
    pub rate_limit: Option<RateLimit>,
    /// Abandoned blocking calls after which the stage is wedged.
    pub max_abandoned: usize,
    /// The circuit breaker, if the stage has one.
    pub breaker: Option<BreakerPolicy>,
}

/// The layer a resolved policy value came from, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layer {
    /// The stage's own table.
    Stage,
    /// `[defaults]`.
    Defaults,
    /// The stage kind's [`KindDefaults`].
    Kind,
    /// The built-in default.
    BuiltIn,
    /// Not configurable here: a source runs one read at a time.
    Source,
}

/// The layer of each resolved policy key, by dotted key (`"retry.attempts"`), in the order
/// `plan` shows them.
pub(crate) type Layers = Vec<(&'static str, Layer)>;

/// The first of `stage`, `defaults`, `kind` that is set, else `builtin`; its layer goes to
/// `layers` under `key`.
fn pick<T>(
    layers: &mut Layers,
    key: &'static str,
    stage: Option<T>,
    defaults: Option<T>,
    kind: Option<T>,
    builtin: T,
) -> T {
    let (value, layer) = match (stage, defaults, kind) {
        (Some(v), _, _) => (v, Layer::Stage),
        (None, Some(v), _) => (v, Layer::Defaults),
        (None, None, Some(v)) => (v, Layer::Kind),
        (None, None, None) => (builtin, Layer::BuiltIn),
    };
    layers.push((key, layer));
    value
}

impl Policy {
    /// Resolve a stage's policy: stage keys, then `[defaults]`, then the kind, then built-ins;
    /// with the layer each value came from (for `plan`).
    pub(crate) fn resolve(
        stage: &PolicySpec,
        defaults: &PolicySpec,
        kind: &KindDefaults,
        is_source: bool,
    ) -> (Policy, Layers) {
        let sr = stage.retry.clone().unwrap_or_default();
        let dr = defaults.retry.clone().unwrap_or_default();
        let mut layers = Layers::new();
        let l = &mut layers;
        let timeout = pick(
            l,
            "timeout",
            stage.timeout,
            defaults.timeout,
            kind.timeout,
            builtin::TIMEOUT,
        );
        // A source reads its batch once per run: it has no items yet.
        let item_deadline = if is_source {
            l.push(("item_deadline", Layer::Source));
            None
        } else {
            pick(
                l,
                "item_deadline",
                stage.item_deadline.map(Some),
                defaults.item_deadline.map(Some),
                None,
                None,
            )
        };
        let retry = Retry {
            attempts: pick(
                l,
                "retry.attempts",
                sr.attempts.map(NonZeroU32::get),
                dr.attempts.map(NonZeroU32::get),
                kind.attempts,
                builtin::ATTEMPTS,
            ),
            initial: pick(
                l,
                "retry.initial",
                sr.initial,
                dr.initial,
                None,
                builtin::INITIAL,
            ),
            max: pick(
                l,
                "retry.max",
                sr.max,
                dr.max,
                kind.backoff_max,
                builtin::MAX,
            ),
            multiplier: pick(
                l,
                "retry.multiplier",
                sr.multiplier,
                dr.multiplier,
                None,
                builtin::MULTIPLIER,
            ),
            jitter: pick(l, "retry.jitter", sr.jitter, dr.jitter, None, true),
            max_retry_after: pick(
                l,
                "retry.max_retry_after",
                sr.max_retry_after,
                dr.max_retry_after,
                None,
                builtin::MAX_RETRY_AFTER,
            ),
            on: pick(l, "retry.on", sr.on.map(Some), dr.on.map(Some), None, None),
            never: pick(l, "retry.never", sr.never, dr.never, None, Vec::new()),
        };
        let concurrency = if is_source {
            l.push(("concurrency", Layer::Source));
            1
        } else {
            pick(
                l,
                "concurrency",
                stage.concurrency.map(NonZeroUsize::get),
                defaults.concurrency.map(NonZeroUsize::get),
                kind.concurrency,
                builtin::CONCURRENCY,
            )
        };
        let rate_limit = pick(
            l,
            "rate_limit",
            stage.rate_limit.map(Some),
            defaults.rate_limit.map(Some),
            None,
            None,
        );
        // More stuck calls than threads cannot happen: once every thread is stuck, the stage
        // is wedged whatever the setting says.
        let max_abandoned = pick(
            l,
            "max_abandoned",
            stage.max_abandoned.map(NonZeroUsize::get),
            defaults.max_abandoned.map(NonZeroUsize::get),
            None,
            concurrency,
        )
        .min(concurrency);
        // A source reads its batch once per run, under its retries only.
        let breaker = if is_source {
            l.push(("breaker", Layer::Source));
            None
        } else {
            pick(
                l,
                "breaker",
                stage.breaker.clone().map(Some),
                defaults.breaker.clone().map(Some),
                None,
                None,
            )
        }
        .map(|b: BreakerSpec| BreakerPolicy {
            failures: b
                .failures
                .map_or(builtin::BREAKER_FAILURES, NonZeroU32::get),
            window: b.window.unwrap_or(builtin::BREAKER_WINDOW),
            cool_down: b.cool_down.unwrap_or(builtin::BREAKER_COOL_DOWN),
            on_open: match b.on_open {
                Some(spec::OnOpenSpec::Abort) => OnOpen::Abort,
                _ => OnOpen::Wait,
            },
        });
        let policy = Policy {
            timeout,
            item_deadline,
            retry,
            concurrency,
            rate_limit,
            max_abandoned,
            breaker,
        };
        (policy, layers)
    }

    /// The longest one item can spend in this stage: every attempt timing out, with the
    /// largest backoff between them.
    pub fn worst_case(&self) -> Duration {
        let attempts = self.retry.attempts.max(1);
        // The backoff grows until it reaches `retry.max`; from there on each wait is `max`, so
        // the sum takes as many steps as the growth does, not one per attempt.
        // A backoff that grows slowly or not at all (`multiplier = 1.0`) never reaches `max`:
        // after `STEPS` steps every later wait counts as the last one (waits never shrink), so
        // `attempts = 4294967295` costs no more than a few thousand steps.
        const STEPS: u32 = 1000;
        let mut backoff = Duration::ZERO;
        let mut waits = 1;
        while waits < attempts {
            let wait = self.retry.ceiling(waits);
            if wait >= self.retry.max || waits >= STEPS {
                backoff = backoff
                    .saturating_add(wait.min(self.retry.max).saturating_mul(attempts - waits));
                break;
            }
            backoff = backoff.saturating_add(wait);
            waits += 1;
        }
        let worst = self
            .timeout
            .saturating_mul(attempts)
            .saturating_add(backoff);
        // The deadline cuts the attempt under way short, and starts no other.
        self.item_deadline
            .map_or(worst, |deadline| worst.min(deadline))
    }

    /// Problems with the resolved values, as `(key, message)`.
    pub(crate) fn check(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.timeout.is_zero() {
            problems.push(("timeout", "`timeout` must be greater than 0".to_owned()));
        }
        if self.timeout > MAX_TIMEOUT {
            problems.push((
                "timeout",
                format!(
                    "`timeout` must be at most {} (a deadline further off is no deadline)",
                    crate::text::duration(MAX_TIMEOUT)
                ),
            ));
        }
        if self.item_deadline.is_some_and(|d| d.is_zero()) {
            problems.push((
                "item_deadline",
                "`item_deadline` must be greater than 0 (e.g. \"10m\")".to_owned(),
            ));
        }
        if self.item_deadline.is_some_and(|d| d > MAX_TIMEOUT) {
            problems.push((
                "item_deadline",
                format!(
                    "`item_deadline` must be at most {}",
                    crate::text::duration(MAX_TIMEOUT)
                ),
            ));
        }
        if self.concurrency > MAX_CONCURRENCY {
            problems.push((
                "concurrency",
                format!(
                    "`concurrency` must be at most {MAX_CONCURRENCY} (a blocking stage gets a thread per place)"
                ),
            ));
        }
        if !(self.retry.multiplier >= 1.0 && self.retry.multiplier.is_finite()) {
            problems.push((
                "retry.multiplier",
                "`retry.multiplier` must be at least 1.0".to_owned(),
            ));
        }
        if self.retry.initial > self.retry.max {
            problems.push((
                "retry.initial",
                "`retry.initial` must not exceed `retry.max`".to_owned(),
            ));
        }
        if let Some(b) = &self.breaker {
            if b.window.is_zero() {
                problems.push((
                    "breaker.window",
                    "`breaker.window` must be greater than 0 (e.g. \"30s\")".to_owned(),
                ));
            }
            if b.cool_down.is_zero() {
                problems.push((
                    "breaker.cool_down",
                    "`breaker.cool_down` must be greater than 0 (e.g. \"20s\")".to_owned(),
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::retry::tests::retry;

    #[test]
    fn precedence_is_stage_defaults_kind_builtin() {
        let stage = PolicySpec {
            timeout: Some(Duration::from_secs(1)),
            ..PolicySpec::default()
        };
        let defaults = PolicySpec {
            timeout: Some(Duration::from_secs(2)),
            concurrency: NonZeroUsize::new(8),
            ..PolicySpec::default()
        };
        let kind = KindDefaults {
            timeout: Some(Duration::from_secs(3)),
            attempts: Some(9),
            concurrency: Some(16),
            ..KindDefaults::default()
        };
        let p = Policy::resolve(&stage, &defaults, &kind, false).0;
        assert_eq!(p.timeout, Duration::from_secs(1));
        assert_eq!(p.concurrency, 8);
        assert_eq!(p.retry.attempts, 9);
        assert_eq!(p.retry.initial, builtin::INITIAL);
        assert_eq!(p.max_abandoned, 8);
        assert_eq!(
            Policy::resolve(&stage, &defaults, &kind, true)
                .0
                .concurrency,
            1
        );
        let (_, layers) = Policy::resolve(&stage, &defaults, &kind, false);
        let layer = |key: &str| layers.iter().find(|(k, _)| *k == key).map(|(_, l)| *l);
        let cases = [
            ("timeout", Layer::Stage),
            ("concurrency", Layer::Defaults),
            ("retry.attempts", Layer::Kind),
            ("retry.initial", Layer::BuiltIn),
            ("rate_limit", Layer::BuiltIn),
        ];
        for (key, want) in cases {
            assert_eq!(layer(key), Some(want), "{key}");
        }
        let (_, layers) = Policy::resolve(&stage, &defaults, &kind, true);
        assert!(layers.contains(&("concurrency", Layer::Source)));
    }

    #[test]
    fn worst_case_of_a_backoff_that_never_grows_takes_no_time() {
        let mut r = retry(false);
        r.attempts = u32::MAX;
        r.multiplier = 1.0;
        r.initial = Duration::from_millis(1);
        r.max = Duration::from_secs(1);
        let p = Policy {
            timeout: Duration::from_secs(1),
            item_deadline: None,
            retry: r,
            concurrency: 1,
            rate_limit: None,
            max_abandoned: 1,
            breaker: None,
        };
        let began = std::time::Instant::now();
        let worst = p.worst_case();
        assert!(began.elapsed() < Duration::from_secs(1));
        // u32::MAX timeouts of 1 s, and as many waits of 1 ms.
        assert!(
            worst > Duration::from_secs(u64::from(u32::MAX)),
            "{worst:?}"
        );
    }

    #[test]
    fn worst_case_adds_timeouts_and_backoff() {
        let p = Policy {
            timeout: Duration::from_secs(10),
            item_deadline: None,
            retry: retry(false),
            concurrency: 1,
            rate_limit: None,
            max_abandoned: 1,
            breaker: None,
        };
        // 5 × 10 s + (100 + 200 + 400 + 800) ms
        assert_eq!(p.worst_case(), Duration::from_millis(51_500));
        // Past the cap each wait is `max` (1 s): 9 waits of 100, 200, 400, 800, then 5 × 1000.
        let long = Policy {
            retry: Retry {
                attempts: 10,
                ..retry(false)
            },
            ..p.clone()
        };
        assert_eq!(
            long.worst_case(),
            Duration::from_millis(100_000 + 1_500 + 5_000)
        );
        // Absurd settings are a long time, not a hang or an overflow.
        let absurd = Policy {
            timeout: Duration::MAX,
            retry: Retry {
                attempts: u32::MAX,
                ..retry(false)
            },
            ..p
        };
        assert_eq!(absurd.worst_case(), Duration::MAX);
    }
}
