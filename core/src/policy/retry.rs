//! The retry layer: an item's attempts at one stage, with exponential backoff and full jitter
//! between them, a stage's retry-after hint in place of the backoff, and a stop request ending
//! the wait at once. Only transient errors are retried; a permanent or fatal error, or the last
//! attempt's error, ends the item's time in the stage.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::stage::{ErrorClass, ErrorKind, StageError};

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
    /// The longest wait a retry-after hint imposes.
    pub max_retry_after: Duration,
    /// Retry the errors of these kinds only (`None`: the stage's transient ones).
    pub on: Option<Vec<ErrorKind>>,
    /// Never retry the errors of these kinds (wins over `on`).
    pub never: Vec<ErrorKind>,
}

impl Retry {
    /// Whether an attempt that failed with `error` is tried again (attempts allowing): never a
    /// fatal one, nor one of a kind in `never`; with `on`, one of a kind in it; else a
    /// transient one.
    pub fn retries(&self, error: &StageError) -> bool {
        if error.class == ErrorClass::Fatal || self.never.contains(&error.kind) {
            return false;
        }
        match &self.on {
            Some(on) => on.contains(&error.kind),
            None => error.class == ErrorClass::Transient,
        }
    }

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
    /// `max_retry_after` (a server asking for a day's wait must not stall an item for a day).
    /// With `jitter`, a hinted wait is stretched by up to half
    /// again at random: the items a server turned away together (a burst of 429s, all told
    /// "1 s") must not all come back in the same millisecond and be turned away again.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        if let Some(hint) = retry_after {
            let cap = self.max_retry_after;
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

/// How one attempt ended, as the retry layer sees it.
#[derive(Debug)]
pub(crate) enum Attempt<T> {
    /// The stage answered.
    Done(T),
    /// The attempt failed (a timeout or a panic already turned into a [`StageError`]).
    Failed(StageError),
    /// The attempt timed out, and its call goes on (an abandoned blocking call): if it returns
    /// an answer before the item is settled — while the item waits for its next attempt —
    /// that answer is taken. Otherwise it counts as [`Attempt::Failed`] with `error`.
    TimedOut {
        /// The attempt's error.
        error: StageError,
        /// Receives the call's answer if it succeeds; dropped (closed) if it fails.
        late: tokio::sync::oneshot::Receiver<T>,
    },
    /// The run cancelled the attempt; it counts for nothing.
    Interrupted,
    /// The item's deadline passed before the attempt's call began (while it waited for a
    /// place): it counts for nothing, and the item fails with the deadline's error.
    Expired,
}

/// An item's deadline at a stage (`item_deadline`): no attempt starts after `at`, and the item
/// fails once it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ItemDeadline {
    /// When it passes.
    pub at: tokio::time::Instant,
    /// The setting, for messages.
    pub limit: Duration,
}

impl ItemDeadline {
    /// The error of an item whose deadline passed after `attempts` attempts here, the last
    /// failing with `last`: permanent (no attempt may follow), of kind `timeout`.
    pub(crate) fn passed(&self, attempts: u32, last: Option<&StageError>) -> StageError {
        let what = format!(
            "the item's deadline passed: `item_deadline` = {} in this stage (counted from its first attempt, or its first wait at an open breaker), {attempts} attempt{} made",
            crate::text::duration(self.limit),
            if attempts == 1 { "" } else { "s" },
        );
        let message = match last {
            Some(last) => format!("{what}; the last: {}", last.message),
            None => what,
        };
        StageError::permanent(message).with_kind(ErrorKind::Timeout)
    }
}

/// How an item's attempts at a stage ended without an answer.
#[derive(Debug)]
pub(crate) enum Ended {
    /// Failed for good: not transient, or no attempt left.
    Failed {
        /// The last attempt's error.
        error: StageError,
        /// Attempts made.
        attempts: u32,
    },
    /// The run stopped while the item was in an attempt or waiting for the next.
    Interrupted,
}

/// What the retry layer tells its caller as it goes (for statistics and logs).
pub(crate) trait RetryEvents {
    /// Attempt `attempt` failed with `error`; the next starts after `delay`.
    fn retrying(&self, attempt: u32, error: &StageError, delay: Duration);
    /// The item started (`true`) or stopped (`false`) waiting between attempts.
    fn backing_off(&self, waiting: bool);
    /// Attempt `attempt` had timed out, and its call answered while the item waited for the
    /// next one: that answer is the result.
    fn late_answer(&self, attempt: u32);
}

/// Run `attempt(used + 1)`, `attempt(used + 2)`, … under `retry` until one answers, one fails
/// for good, or `stop` is cancelled (during an attempt, the attempt itself returns
/// [`Attempt::Interrupted`]; between attempts, the wait ends at once). `used` is the attempts
/// an item already used in earlier processes (the caller fails an item that used them all).
pub(crate) async fn retrying<T, F, Fut>(
    retry: &Retry,
    stop: &CancellationToken,
    events: &impl RetryEvents,
    used: u32,
    attempt: F,
) -> Result<T, Ended>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    retrying_by(retry, stop, events, (used, None), attempt).await
}

/// [`retrying`], for an item with a `deadline` at the stage: no attempt starts once it passed
/// (nor one its backoff would start after it), and the item fails with
/// [`ItemDeadline::passed`]'s error, whatever attempts are left. The attempts themselves must
/// end by it (their time limit cut to it, their waits for a place ending in
/// [`Attempt::Expired`]).
pub(crate) async fn retrying_by<T, F, Fut>(
    retry: &Retry,
    stop: &CancellationToken,
    events: &impl RetryEvents,
    (used, deadline): (u32, Option<ItemDeadline>),
    mut attempt: F,
) -> Result<T, Ended>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let passed = |attempts: u32, last: Option<&StageError>| {
        deadline.map(|d| Ended::Failed {
            error: d.passed(attempts, last),
            attempts,
        })
    };
    let past = |at: tokio::time::Instant| deadline.is_some_and(|d| at >= d.at);
    let mut n = used;
    let mut last: Option<StageError> = None;
    loop {
        if past(tokio::time::Instant::now()) {
            return Err(passed(n, last.as_ref()).expect("a deadline passed"));
        }
        n += 1;
        let (error, late) = match attempt(n).await {
            Attempt::Done(value) => return Ok(value),
            Attempt::Interrupted => return Err(Ended::Interrupted),
            Attempt::Expired => {
                return Err(passed(n - 1, last.as_ref()).expect("only a deadline expires"))
            }
            Attempt::Failed(error) => (error, None),
            Attempt::TimedOut { error, late } => (error, Some(late)),
        };
        if !retry.retries(&error) {
            return Err(Ended::Failed { error, attempts: n });
        }
        if past(tokio::time::Instant::now()) {
            // The attempt ended at the deadline, most likely cut short by it.
            return Err(passed(n, Some(&error)).expect("a deadline passed"));
        }
        if n >= retry.attempts {
            return Err(Ended::Failed { error, attempts: n });
        }
        let delay = retry.delay(n, error.retry_after, &mut rand::rng());
        if past(tokio::time::Instant::now() + delay) {
            // The next attempt could not begin in time: the item fails now, not at the end of
            // a wait that changes nothing.
            return Err(passed(n, Some(&error)).expect("a deadline passed"));
        }
        last = Some(error.clone());
        events.retrying(n, &error, delay);
        events.backing_off(true);
        let mut late = late;
        let waited = tokio::select! {
            biased;
            () = stop.cancelled() => Err(Ended::Interrupted),
            Some(Ok(value)) = async { Some(late.as_mut()?.await) } => Ok(Some(value)),
            () = tokio::time::sleep(delay) => Ok(None),
        };
        events.backing_off(false);
        if let Some(value) = waited? {
            events.late_answer(n);
            return Ok(value);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// 5 attempts, 100 ms doubling up to 1 s.
    pub(crate) fn retry(jitter: bool) -> Retry {
        Retry {
            attempts: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            multiplier: 2.0,
            jitter,
            max_retry_after: Duration::from_secs(60),
            on: None,
            never: Vec::new(),
        }
    }

    #[test]
    fn error_kinds_decide_what_is_retried() {
        let error = |class, kind| StageError {
            class,
            kind,
            message: String::new(),
            retry_after: None,
        };
        let (t, p, f) = (
            ErrorClass::Transient,
            ErrorClass::Permanent,
            ErrorClass::Fatal,
        );
        let mut r = retry(false);
        // The stage's own classification by default.
        assert!(r.retries(&error(t, ErrorKind::Http5xx)));
        assert!(!r.retries(&error(p, ErrorKind::Http4xx)));
        assert!(!r.retries(&error(f, ErrorKind::Database)));
        // `never` wins, whatever the class.
        r.never = vec![ErrorKind::Http5xx];
        assert!(!r.retries(&error(t, ErrorKind::Http5xx)));
        assert!(r.retries(&error(t, ErrorKind::Timeout)));
        // `on`: those kinds only, a permanent one too; never a fatal one; `never` still wins.
        r.on = Some(vec![
            ErrorKind::Timeout,
            ErrorKind::Http4xx,
            ErrorKind::Http5xx,
        ]);
        assert!(r.retries(&error(t, ErrorKind::Timeout)));
        assert!(r.retries(&error(p, ErrorKind::Http4xx)));
        assert!(!r.retries(&error(t, ErrorKind::Connect)));
        assert!(!r.retries(&error(t, ErrorKind::Http5xx)));
        assert!(!r.retries(&error(f, ErrorKind::Timeout)));
    }

    #[test]
    fn every_error_kind_has_one_name_that_reads_back() {
        for kind in ErrorKind::ALL {
            assert_eq!(kind.as_str().parse::<ErrorKind>(), Ok(kind));
        }
        assert_eq!(ErrorKind::of_status(429), Some(ErrorKind::Http429));
        assert_eq!(ErrorKind::of_status(404), Some(ErrorKind::Http4xx));
        assert_eq!(ErrorKind::of_status(503), Some(ErrorKind::Http5xx));
        assert_eq!(ErrorKind::of_status(200), None);
        assert!("http_3xx".parse::<ErrorKind>().is_err());
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
            Duration::from_secs(60),
            "capped at `max_retry_after`"
        );
    }

    /// Records what the layer reports, and when each attempt started.
    #[derive(Default)]
    struct Seen {
        delays: Mutex<Vec<Duration>>,
        waiting: Mutex<Vec<bool>>,
    }

    impl RetryEvents for Seen {
        fn retrying(&self, _attempt: u32, _error: &StageError, delay: Duration) {
            self.delays.lock().expect("lock").push(delay);
        }
        fn backing_off(&self, waiting: bool) {
            self.waiting.lock().expect("lock").push(waiting);
        }
        fn late_answer(&self, _attempt: u32) {}
    }

    /// Runs the layer over `answers` (one per attempt, the last repeated), returning the result
    /// and the start time of each attempt, relative to the start.
    async fn run_with(
        retry: &Retry,
        stop: &CancellationToken,
        seen: &Seen,
        answers: Vec<Attempt<&'static str>>,
    ) -> (Result<&'static str, Ended>, Vec<Duration>) {
        let began = Instant::now();
        let starts = Mutex::new(Vec::new());
        let answers = Mutex::new(answers);
        let result = retrying(retry, stop, seen, 0, |_| {
            starts.lock().expect("lock").push(began.elapsed());
            let mut answers = answers.lock().expect("lock");
            let next = if answers.len() > 1 {
                answers.remove(0)
            } else {
                match &answers[0] {
                    Attempt::Done(v) => Attempt::Done(*v),
                    Attempt::Failed(e) => Attempt::Failed(e.clone()),
                    Attempt::Interrupted => Attempt::Interrupted,
                    Attempt::Expired => Attempt::Expired,
                    Attempt::TimedOut { .. } => unreachable!("a late answer is given once"),
                }
            };
            std::future::ready(next)
        })
        .await;
        let starts = starts.into_inner().expect("lock");
        (result, starts)
    }

    fn transient() -> Attempt<&'static str> {
        Attempt::Failed(StageError::transient("busy"))
    }

    /// An item's deadline: no attempt begins after it, nor one its backoff would begin after
    /// it; an attempt that ends past it ends the item; one that never began (its wait for a
    /// place expired) counts for nothing. The error says so, with the last attempt's error,
    /// and is permanent.
    #[tokio::test(start_paused = true)]
    async fn an_item_deadline_ends_the_item_whatever_attempts_are_left() {
        let began = Instant::now();
        let limit = Duration::from_millis(250);
        let deadline = ItemDeadline {
            at: began + limit,
            limit,
        };
        // Backoffs of 100, 200, 400 ms: attempt 3 would begin at 300 ms, past the deadline.
        let starts = Mutex::new(Vec::new());
        let result: Result<&str, Ended> = retrying_by(
            &retry(false),
            &CancellationToken::new(),
            &Seen::default(),
            (0, Some(deadline)),
            |_| {
                starts.lock().expect("lock").push(began.elapsed());
                std::future::ready(transient())
            },
        )
        .await;
        let Err(Ended::Failed { error, attempts }) = result else {
            panic!("the item fails: {result:?}");
        };
        assert_eq!(attempts, 2);
        assert_eq!(error.class, ErrorClass::Permanent);
        assert_eq!(error.kind, ErrorKind::Timeout);
        assert_eq!(
            error.message,
            "the item's deadline passed: `item_deadline` = 250ms in this stage (counted from its first attempt, or its first wait at an open breaker), 2 attempts made; the last: busy"
        );
        assert_eq!(
            *starts.lock().expect("lock"),
            [Duration::ZERO, Duration::from_millis(100)]
        );
        assert!(
            began.elapsed() < Duration::from_millis(250),
            "it fails as soon as it knows, not at the deadline"
        );

        // An attempt that runs past the deadline (cut short by it) ends the item.
        let began = Instant::now();
        let deadline = ItemDeadline {
            at: began + limit,
            limit,
        };
        let result: Result<&str, Ended> = retrying_by(
            &retry(false),
            &CancellationToken::new(),
            &Seen::default(),
            (0, Some(deadline)),
            |_| async {
                tokio::time::sleep_until(deadline.at).await;
                Attempt::Failed(StageError::transient("timed out after 250ms"))
            },
        )
        .await;
        assert!(
            matches!(&result, Err(Ended::Failed { error, attempts: 1 }) if error.message.ends_with("1 attempt made; the last: timed out after 250ms")),
            "{result:?}"
        );

        // A deadline that passed in an earlier process: no attempt at all.
        let result: Result<&str, Ended> = retrying_by(
            &retry(false),
            &CancellationToken::new(),
            &Seen::default(),
            (
                2,
                Some(ItemDeadline {
                    at: Instant::now(),
                    limit,
                }),
            ),
            |_| -> std::future::Ready<Attempt<&'static str>> { panic!("no attempt begins") },
        )
        .await;
        assert!(
            matches!(&result, Err(Ended::Failed { attempts: 2, .. })),
            "{result:?}"
        );

        // An attempt whose wait for a place expired counts for nothing.
        let fresh = || ItemDeadline {
            at: Instant::now() + limit,
            limit,
        };
        let result: Result<&str, Ended> = retrying_by(
            &retry(false),
            &CancellationToken::new(),
            &Seen::default(),
            (0, Some(fresh())),
            |_| std::future::ready(Attempt::Expired),
        )
        .await;
        assert!(
            matches!(&result, Err(Ended::Failed { attempts: 0, error }) if error.class == ErrorClass::Permanent),
            "{result:?}"
        );
        // A permanent error is the item's own, deadline or not.
        let result: Result<&str, Ended> = retrying_by(
            &retry(false),
            &CancellationToken::new(),
            &Seen::default(),
            (0, Some(fresh())),
            |_| std::future::ready(Attempt::Failed(StageError::permanent("404"))),
        )
        .await;
        assert!(
            matches!(&result, Err(Ended::Failed { attempts: 1, error }) if error.message == "404"),
            "{result:?}"
        );
    }

    /// Attempts an item used in earlier processes count: numbering goes on from them, and the
    /// item fails when the total reaches `attempts`.
    #[tokio::test(start_paused = true)]
    async fn attempts_used_before_count() {
        let numbers = Mutex::new(Vec::new());
        let result: Result<&str, Ended> = retrying(
            &retry(false),
            &CancellationToken::new(),
            &Seen::default(),
            3,
            |n| {
                numbers.lock().expect("lock").push(n);
                std::future::ready(transient())
            },
        )
        .await;
        assert_eq!(*numbers.lock().expect("lock"), [4, 5]);
        assert!(matches!(result, Err(Ended::Failed { attempts: 5, .. })));
    }

    /// A timed-out attempt whose call answers while the item backs off: the answer is the
    /// result and no other attempt starts; one whose call fails, or answers only after the
    /// next attempt began, changes nothing.
    #[tokio::test(start_paused = true)]
    async fn a_late_answer_during_the_backoff_is_taken() {
        for (answers_after, fails, want_attempts, want) in [
            (Some(60), false, 1, "late"),
            (Some(150), false, 2, "second"),
            (None, true, 2, "second"),
        ] {
            let started = Mutex::new(0);
            let result = retrying(
                &retry(false),
                &CancellationToken::new(),
                &Seen::default(),
                0,
                |n| {
                    *started.lock().expect("lock") += 1;
                    let answer = if n == 1 {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        tokio::spawn(async move {
                            if let Some(ms) = answers_after {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                let _ = tx.send("late");
                            } else if fails {
                                drop(tx);
                            }
                        });
                        Attempt::TimedOut {
                            error: StageError::transient("timed out"),
                            late: rx,
                        }
                    } else {
                        Attempt::Done("second")
                    };
                    std::future::ready(answer)
                },
            )
            .await;
            assert_eq!(result.ok(), Some(want), "{answers_after:?}");
            assert_eq!(*started.lock().expect("lock"), want_attempts);
        }
        // The last attempt's late answer is not waited for: the item fails at once.
        let result: Result<&str, Ended> = retrying(
            &Retry {
                attempts: 1,
                ..retry(false)
            },
            &CancellationToken::new(),
            &Seen::default(),
            0,
            |_| {
                let (_tx, rx) = tokio::sync::oneshot::channel();
                std::future::ready(Attempt::TimedOut {
                    error: StageError::transient("timed out"),
                    late: rx,
                })
            },
        )
        .await;
        assert!(matches!(result, Err(Ended::Failed { attempts: 1, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_on_the_backoff_schedule() {
        let seen = Seen::default();
        let answers = vec![transient(), transient(), transient(), Attempt::Done("ok")];
        let (result, starts) =
            run_with(&retry(false), &CancellationToken::new(), &seen, answers).await;
        assert_eq!(result.ok(), Some("ok"));
        let ms: Vec<u128> = starts.iter().map(Duration::as_millis).collect();
        // Waits of 100, 200 and 400 ms before attempts 2, 3 and 4.
        assert_eq!(ms, [0, 100, 300, 700]);
        assert_eq!(
            seen.waiting.lock().expect("lock").len(),
            6,
            "three waits, begun and ended"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_attempt_fails_the_item_with_its_error() {
        let seen = Seen::default();
        let (result, starts) = run_with(
            &retry(false),
            &CancellationToken::new(),
            &seen,
            vec![transient()],
        )
        .await;
        match result {
            Err(Ended::Failed { error, attempts }) => {
                assert_eq!(attempts, 5);
                assert_eq!(error.message, "busy");
            }
            other => panic!("{other:?}"),
        }
        let ms: Vec<u128> = starts.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 100, 300, 700, 1500], "capped at max = 1000 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_and_fatal_errors_are_not_retried() {
        for error in [StageError::permanent("gone"), StageError::fatal("bad key")] {
            let seen = Seen::default();
            let answers = vec![Attempt::Failed(error.clone()), Attempt::Done("ok")];
            let (result, starts) =
                run_with(&retry(false), &CancellationToken::new(), &seen, answers).await;
            assert!(
                matches!(result, Err(Ended::Failed { attempts: 1, .. })),
                "{error:?}: {result:?}"
            );
            assert_eq!(starts.len(), 1);
            assert!(seen.delays.lock().expect("lock").is_empty());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_hint_replaces_the_backoff_and_is_capped() {
        let seen = Seen::default();
        let hinted =
            |after: Duration| Attempt::Failed(StageError::transient("429").with_retry_after(after));
        let answers = vec![
            hinted(Duration::from_secs(7)),
            hinted(Duration::from_secs(86_400)),
            Attempt::Done("ok"),
        ];
        let (result, starts) =
            run_with(&retry(false), &CancellationToken::new(), &seen, answers).await;
        assert_eq!(result.ok(), Some("ok"));
        // 7 s as asked (longer than `max`), then a day's hint capped at `max_retry_after`.
        assert_eq!(
            starts,
            [
                Duration::ZERO,
                Duration::from_secs(7),
                Duration::from_secs(67)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_the_backoff_interrupts_at_once_without_failing() {
        let seen = Seen::default();
        let stop = CancellationToken::new();
        let canceller = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            canceller.cancel();
        });
        let began = Instant::now();
        let (result, starts) = run_with(&retry(false), &stop, &seen, vec![transient()]).await;
        assert!(matches!(result, Err(Ended::Interrupted)), "{result:?}");
        assert_eq!(starts.len(), 1, "no second attempt");
        assert_eq!(
            began.elapsed(),
            Duration::from_millis(50),
            "the wait ended at the stop"
        );
        assert_eq!(*seen.waiting.lock().expect("lock"), [true, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_interrupted_attempt_ends_the_item_as_interrupted() {
        let seen = Seen::default();
        let answers = vec![transient(), Attempt::Interrupted, Attempt::Done("ok")];
        let (result, starts) =
            run_with(&retry(false), &CancellationToken::new(), &seen, answers).await;
        assert!(matches!(result, Err(Ended::Interrupted)), "{result:?}");
        assert_eq!(starts.len(), 2);
    }
}
