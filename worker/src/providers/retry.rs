//! Retries with exponential backoff and full jitter, honouring `Retry-After`.

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;

use super::{Completion, UpstreamError};

/// How one upstream call is retried. Only retryable errors (see
/// [`super::UpstreamError::is_retryable`]) are retried; the request deadline bounds it all.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// Longest `Retry-After` honoured; beyond it the call fails rather than stall the fan-out.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

impl RetryPolicy {
    /// Delay before retry number `attempt` (0-based). `retry_after` from the upstream wins when given.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(MAX_RETRY_AFTER);
        }
        let exp = self.base_delay.saturating_mul(1u32 << attempt.min(16));
        let cap = exp.min(self.max_delay);
        // Full jitter spreads retries of the N candidates of one request apart.
        cap.mul_f64(0.5 + 0.5 * crate::rand::unit())
    }
}

/// Sends one call under the upstream's concurrency limit, retrying retryable failures with
/// backoff. The permit is held across retries so a struggling upstream is not flooded.
pub async fn send_with_retries<F, Fut>(
    limit: &Semaphore,
    policy: &RetryPolicy,
    mut attempt_once: F,
) -> Result<Completion, UpstreamError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Completion, UpstreamError>>,
{
    let _permit = limit
        .acquire()
        .await
        .map_err(|_| UpstreamError::Transport("shutting down".into()))?;
    let mut attempt = 0;
    loop {
        match attempt_once().await {
            Err(e) if e.is_retryable() && attempt < policy.max_retries => {
                let retry_after = match &e {
                    UpstreamError::Status { retry_after, .. } => *retry_after,
                    _ => None,
                };
                tracing::debug!(error = %e, attempt, "retrying upstream call");
                tokio::time::sleep(policy.delay(attempt, retry_after)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Parses a `Retry-After` header: delay-seconds (fractions accepted) or an HTTP date. The result
/// is bounded by [`MAX_RETRY_AFTER`] whatever the upstream sends (`1e20`, a date in the year 9999),
/// since it becomes a sleep and a header sent on to the client; unreadable, negative or
/// non-finite values count as absent.
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    parse_retry_after_at(value, SystemTime::now())
}

fn parse_retry_after_at(value: Option<&str>, now: SystemTime) -> Option<Duration> {
    let value = value?.trim();
    let wait = match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            // Clamped before conversion: `Duration::from_secs_f64` panics on overflow.
            Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64()))
        }
        Ok(_) => return None,
        // A date in the past means "now".
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        for attempt in 0..20 {
            let d = p.delay(attempt, None);
            let cap = p
                .base_delay
                .saturating_mul(1 << attempt.min(16))
                .min(p.max_delay);
            assert!(
                d >= cap / 2 && d <= cap,
                "attempt {attempt}: {d:?} vs cap {cap:?}"
            );
        }
    }

    #[test]
    fn retry_after_wins_but_is_bounded() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(p.delay(0, Some(Duration::from_secs(3600))), MAX_RETRY_AFTER);
        assert_eq!(
            parse_retry_after(Some(" 1.5 ")),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn retry_after_never_panics_and_is_bounded() {
        for huge in [
            "1e20",
            "1e308",
            "99999999999999999999999999",
            "18446744073709551616",
        ] {
            assert_eq!(
                parse_retry_after(Some(huge)),
                Some(MAX_RETRY_AFTER),
                "{huge}"
            );
        }
        for absent in ["-1", "-0.5", "NaN", "inf", "-inf", "", "soon", "1e400x"] {
            assert_eq!(parse_retry_after(Some(absent)), None, "{absent}");
        }
        assert_eq!(parse_retry_after(Some("0")), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(None), None);
    }

    #[test]
    fn retry_after_http_dates_are_relative_and_bounded() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let at = |v: &str| parse_retry_after_at(Some(v), now);
        assert_eq!(
            at("Wed, 21 Oct 2015 07:28:10 GMT"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(at("Tue, 20 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(at("Fri, 31 Dec 9999 23:59:59 GMT"), Some(MAX_RETRY_AFTER));
        assert_eq!(at("Wed, 32 Oct 2015 07:28:00 GMT"), None);
    }

    proptest::proptest! {
        /// Whatever an upstream puts in `Retry-After`, parsing neither panics nor exceeds the cap.
        #[test]
        fn any_retry_after_is_bounded(
            text in "\\PC{0,40}",
            secs in proptest::prelude::any::<f64>(),
            digits in "[0-9]{1,60}",
            year in 1u32..100_000,
        ) {
            let date = format!("Fri, 31 Dec {year} 23:59:59 GMT");
            for v in [text, secs.to_string(), format!("{secs:e}"), digits, date] {
                if let Some(d) = parse_retry_after(Some(&v)) {
                    proptest::prop_assert!(d <= MAX_RETRY_AFTER, "{v:?} gave {d:?}");
                }
            }
        }
    }
}
