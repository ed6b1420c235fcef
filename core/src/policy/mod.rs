//! The policies every stage shares, resolved from the stage's keys, `[defaults]`, the kind's
//! defaults and the built-in defaults, in that order of precedence.
//!
//! They wrap each stage call in one order: concurrency → retry → timeout (per attempt) → rate
//! limit → call. A stage only classifies its errors; backoff, jitter and caps live here.

use std::time::Duration;

use rand::Rng;

use crate::stage::KindDefaults;
mod spec;

pub use spec::RateLimit;
pub(crate) use spec::{PolicySpec, RetrySpec, POLICY_KEYS};

/// A rate limit as a GCRA quota: attempts evenly spaced at `per / count`, with no burst, so that
/// no window of `per` ever sees more than `count` attempts started (plus the one at its edge).
pub(crate) fn quota(rate: RateLimit) -> governor::Quota {
    let period = (rate.per / rate.count).max(Duration::from_nanos(1));
    governor::Quota::with_period(period).expect("the period is at least 1ns")
}

/// The longest a stage's retry-after hint is honoured when `retry.max` is shorter.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Built-in defaults, used where neither the stage, `[defaults]` nor the kind says otherwise.
pub(crate) mod builtin {
    use std::time::Duration;
    pub const TIMEOUT: Duration = Duration::from_secs(30);
    pub const ATTEMPTS: u32 = 3;
    pub const INITIAL: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(30);
    pub const MULTIPLIER: f64 = 2.0;
    pub const CONCURRENCY: usize = 4;
}

/// The resolved policy of one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// Retry policy.
    pub retry: Retry,
    /// Items in the stage at once (threads, for a blocking stage).
    pub concurrency: usize,
    /// Most attempts started per period.
    pub rate_limit: Option<RateLimit>,
    /// Abandoned blocking calls after which the stage is wedged.
    pub max_abandoned: usize,
}

/// Exponential backoff with optional full jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Attempts in all, including the first.
    pub attempts: u32,
    /// Backoff before the second attempt.
    pub initial: Duration,
    /// Largest backoff.
    pub max: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
    /// Wait a uniform random time in `[0, backoff]` instead of the backoff itself.
    pub jitter: bool,
}

impl Retry {
    /// The ceiling of the wait after failed attempt `attempt` (1-based): `initial ×
    /// multiplier^(attempt-1)`, capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = self.initial.as_secs_f64() * exp;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The wait after failed attempt `attempt`; a stage's retry-after hint wins, up to
    /// [`MAX_RETRY_AFTER`] or `max`, whichever is longer (a server asking for a day's wait must
    /// not stall an item for a day). With `jitter`, a hinted wait is stretched by up to half
    /// again at random: the items a server turned away together (a burst of 429s, all told
    /// "1 s") must not all come back in the same millisecond and be turned away again.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        if let Some(hint) = retry_after {
            let cap = self.max.max(MAX_RETRY_AFTER);
            let hint = hint.min(cap);
            if !self.jitter || hint.is_zero() {
                return hint;
            }
            let spread = rng.random_range(0.0..=hint.as_secs_f64() / 2.0);
            return (hint + Duration::from_secs_f64(spread)).min(cap.max(hint));
        }
        let ceiling = self.ceiling(attempt);
        if self.jitter && !ceiling.is_zero() {
            Duration::from_secs_f64(rng.random_range(0.0..=ceiling.as_secs_f64()))
        } else {
            ceiling
        }
    }
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
        let retry = Retry {
            attempts: pick(
                l,
                "retry.attempts",
                sr.attempts,
                dr.attempts,
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
        };
        let concurrency = if is_source {
            l.push(("concurrency", Layer::Source));
            1
        } else {
            pick(
                l,
                "concurrency",
                stage.concurrency,
                defaults.concurrency,
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
            stage.max_abandoned,
            defaults.max_abandoned,
            None,
            concurrency,
        )
        .min(concurrency);
        let policy = Policy {
            timeout,
            retry,
            concurrency,
            rate_limit,
            max_abandoned,
        };
        (policy, layers)
    }

    /// The longest one item can spend in this stage: every attempt timing out, with the
    /// largest backoff between them.
    pub fn worst_case(&self) -> Duration {
        let attempts = self.retry.attempts.max(1);
        let backoff: Duration = (1..attempts).map(|a| self.retry.ceiling(a)).sum();
        self.timeout.saturating_mul(attempts) + backoff
    }

    /// Problems with the resolved values, as `(key, message)`.
    pub(crate) fn check(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.timeout.is_zero() {
            problems.push(("timeout", "`timeout` must be greater than 0".to_owned()));
        }
        if self.retry.attempts == 0 {
            problems.push((
                "retry.attempts",
                "`retry.attempts` must be at least 1".to_owned(),
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
        if self.concurrency == 0 {
            problems.push(("concurrency", "`concurrency` must be at least 1".to_owned()));
        }
        if self.max_abandoned == 0 {
            problems.push((
                "max_abandoned",
                "`max_abandoned` must be at least 1".to_owned(),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn retry(jitter: bool) -> Retry {
        Retry {
            attempts: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let r = retry(false);
        let ms: Vec<u128> = (1..=6).map(|a| r.ceiling(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn full_jitter_stays_under_the_ceiling_and_varies() {
        let r = retry(true);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let waits: Vec<Duration> = (0..200).map(|_| r.delay(3, None, &mut rng)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(400)));
        assert!(waits.iter().any(|w| *w < Duration::from_millis(200)));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(200)));
    }

    #[test]
    fn retry_after_wins() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let hint = Duration::from_millis(700);
        assert_eq!(retry(false).delay(1, Some(hint), &mut rng), hint);
        // With jitter: never sooner than asked, at most half again, and spread out.
        let waits: Vec<Duration> = (0..50)
            .map(|_| retry(true).delay(1, Some(hint), &mut rng))
            .collect();
        assert!(
            waits.iter().all(|w| *w >= hint && *w <= hint * 3 / 2),
            "{waits:?}"
        );
        let (lo, hi) = (waits.iter().min(), waits.iter().max());
        assert!(
            hi.zip(lo)
                .is_some_and(|(h, l)| *h - *l > Duration::from_millis(100)),
            "{waits:?}"
        );
        let day = Duration::from_secs(86_400);
        assert_eq!(
            retry(true).delay(1, Some(day), &mut rng),
            MAX_RETRY_AFTER,
            "capped"
        );
    }

    #[test]
    fn precedence_is_stage_defaults_kind_builtin() {
        let stage = PolicySpec {
            timeout: Some(Duration::from_secs(1)),
            ..PolicySpec::default()
        };
        let defaults = PolicySpec {
            timeout: Some(Duration::from_secs(2)),
            concurrency: Some(8),
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
    fn rate_limits_space_attempts_evenly() {
        use governor::clock::FakeRelativeClock;
        let clock = FakeRelativeClock::default();
        let rate = RateLimit {
            count: 60,
            per: Duration::from_secs(60),
        };
        let limiter = governor::RateLimiter::direct_with_clock(quota(rate), clock.clone());
        assert!(limiter.check().is_ok(), "the first attempt goes at once");
        assert!(limiter.check().is_err(), "no burst: the second waits");
        clock.advance(Duration::from_millis(999));
        assert!(limiter.check().is_err(), "60/min is one a second");
        clock.advance(Duration::from_millis(1));
        assert!(limiter.check().is_ok());
        // Over a minute, no more than 60 (+1 at the edge) get through.
        let mut allowed = 0;
        for _ in 0..600 {
            clock.advance(Duration::from_millis(100));
            allowed += usize::from(limiter.check().is_ok());
        }
        assert_eq!(allowed, 60);
    }

    #[test]
    fn worst_case_adds_timeouts_and_backoff() {
        let p = Policy {
            timeout: Duration::from_secs(10),
            retry: retry(false),
            concurrency: 1,
            rate_limit: None,
            max_abandoned: 1,
        };
        // 5 × 10 s + (100 + 200 + 400 + 800) ms
        assert_eq!(p.worst_case(), Duration::from_millis(51_500));
    }
}
