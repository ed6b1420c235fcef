//! The timeout layer: each attempt has a deadline, and an attempt that reaches it has failed
//! with a transient error ("timed out after 30s"), retried like any other.
//!
//! An async stage's future is dropped at the deadline ([`within`]). A blocking call cannot be
//! dropped: the runner's `call` raises its cancel flag at the deadline and abandons it if it
//! does not return (see `runner/call.rs`), then reports the same [`TimedOut`].

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::stage::StageError;
use crate::text;

/// An attempt ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimedOut {
    /// The attempt's time limit.
    pub after: Duration,
}

impl From<TimedOut> for StageError {
    fn from(t: TimedOut) -> Self {
        StageError::transient(format!("timed out after {}", text::duration(t.after)))
            .with_kind(crate::stage::ErrorKind::Timeout)
    }
}

/// `fut`'s output if it is ready by `deadline`; else it is dropped and the attempt, limited to
/// `limit`, timed out.
pub(crate) async fn within<F: Future>(
    deadline: Instant,
    limit: Duration,
    fut: F,
) -> Result<F::Output, TimedOut> {
    tokio::time::timeout_at(deadline, fut)
        .await
        .map_err(|_| TimedOut { after: limit })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::ErrorClass;

    #[tokio::test(start_paused = true)]
    async fn an_attempt_past_its_deadline_is_a_transient_timeout() {
        let limit = Duration::from_secs(30);
        let began = Instant::now();
        let result = within(began + limit, limit, std::future::pending::<()>()).await;
        assert_eq!(result, Err(TimedOut { after: limit }));
        assert_eq!(began.elapsed(), limit, "not a moment later");
        let error = StageError::from(TimedOut { after: limit });
        assert_eq!(error.class, ErrorClass::Transient);
        assert_eq!(error.message, "timed out after 30s");
        assert_eq!(error.retry_after, None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_before_the_deadline_passes_through() {
        let limit = Duration::from_secs(1);
        let began = Instant::now();
        let answer = async {
            tokio::time::sleep(Duration::from_millis(999)).await;
            7
        };
        assert_eq!(within(began + limit, limit, answer).await, Ok(7));
    }
}
