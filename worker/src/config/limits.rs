//! Defaults and bounds of every number the configuration sets. Bounds keep a configuration from
//! turning into a panic (`Duration::from_secs_f64(1e20)`), an allocation failure or an unbounded
//! bill; the defaults are the values the runtime uses when a field is absent.

use super::validate::ConfigError;
// The step-wise search bounds live beside their fields; listed here with every other bound.
pub use super::stepwise::{
    DEFAULT_MAX_STEP_TOKENS, DEFAULT_MAX_STEPS, MAX_CALLS_LIMIT, MAX_STEP_TOKENS_LIMIT,
    MAX_STEPS_LIMIT,
};
use super::{ServerSettings, UpstreamSettings};

/// TCP connect timeout of upstream calls when none is configured, in seconds.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: f64 = 5.0;
/// Timeout of one upstream call (retries excluded) when none is configured, in seconds.
pub const DEFAULT_CALL_TIMEOUT_SECS: f64 = 120.0;
/// Deadline of one client request when none is configured, in seconds.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: f64 = 300.0;
/// Longest connect timeout accepted, in seconds.
pub const MAX_CONNECT_TIMEOUT_SECS: f64 = 300.0;
/// Longest call or request timeout accepted, in seconds (one hour).
pub const MAX_TIMEOUT_SECS: f64 = 3600.0;
/// Retries of one upstream call when none is configured.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Most retries of one upstream call accepted.
pub const MAX_RETRIES_LIMIT: u32 = 10;
/// Upstream calls in flight at once, per upstream, when none is configured.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 256;
/// Largest per-upstream concurrency accepted.
pub const MAX_CONCURRENCY_LIMIT: u32 = 10_000;
/// Most candidates asked for in one upstream call (OpenAI's own limit for `n`).
pub const MAX_CANDIDATES_PER_CALL: u32 = 128;
/// Grace of a call the answer no longer waits for, in milliseconds, when none is configured:
/// long enough for a call that is already answering to finish (on a fast upstream most are),
/// short against the seconds an LLM call takes, so a call still generating is stopped early.
pub const DEFAULT_STRAGGLER_GRACE_MS: u32 = 20;
/// Longest straggler grace accepted, in milliseconds.
pub const MAX_STRAGGLER_GRACE_MS: u32 = 10_000;
/// Fewest successful candidates an answer needs when none is configured.
pub const DEFAULT_MIN_SUCCESSFUL_CANDIDATES: u32 = 1;
/// Judge reply token limit when none is configured.
pub const DEFAULT_JUDGE_MAX_TOKENS: u32 = 4096;
/// Largest judge reply token limit accepted.
pub const MAX_JUDGE_MAX_TOKENS: u32 = 1_000_000;
/// Largest request body limit accepted, in bytes (256 MiB).
pub const MAX_BODY_BYTES_LIMIT: usize = 256 * 1024 * 1024;
/// Chat requests in flight at once in one worker when none is configured.
pub const DEFAULT_MAX_IN_FLIGHT_REQUESTS: u32 = 512;
/// Chat requests in flight at once per client when none is configured.
pub const DEFAULT_MAX_IN_FLIGHT_PER_CLIENT: u32 = 64;
/// Open client connections when none is configured.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// Largest count limit of the `server` block: far above what one process can serve, low enough
/// that no arithmetic on it overflows.
pub const MAX_SERVER_COUNT_LIMIT: u32 = 1_000_000;
/// Time a client has to send its request headers when none is configured, in seconds.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: f64 = 10.0;
/// Time a client has to send its request body when none is configured, in seconds.
pub const DEFAULT_BODY_READ_TIMEOUT_SECS: f64 = 30.0;

/// Checks a number of seconds: finite, positive and at most `max`.
pub fn check_seconds(param: &'static str, value: Option<f64>, max: f64) -> Result<(), ConfigError> {
    match value {
        Some(v) if !(v.is_finite() && v > 0.0 && v <= max) => Err(ConfigError::Invalid {
            param,
            message: format!(
                "{param} must be a number of seconds above 0 and at most {max}, got {v}"
            ),
        }),
        _ => Ok(()),
    }
}

/// Checks a count: between `min` and `max`, inclusive.
pub fn check_count<T>(
    param: &'static str,
    value: Option<T>,
    min: T,
    max: T,
) -> Result<(), ConfigError>
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    match value {
        Some(v) if !(min <= v && v <= max) => Err(ConfigError::Invalid {
            param,
            message: format!("{param} must be between {min} and {max}, got {v}"),
        }),
        _ => Ok(()),
    }
}

/// Bounds of the `upstream` block.
pub fn check_upstream(u: &UpstreamSettings, max_budget: u32) -> Result<(), ConfigError> {
    check_seconds(
        "upstream.connect_timeout_secs",
        u.connect_timeout_secs,
        MAX_CONNECT_TIMEOUT_SECS,
    )?;
    check_seconds(
        "upstream.call_timeout_secs",
        u.call_timeout_secs,
        MAX_TIMEOUT_SECS,
    )?;
    check_seconds(
        "upstream.request_timeout_secs",
        u.request_timeout_secs,
        MAX_TIMEOUT_SECS,
    )?;
    check_count("upstream.max_retries", u.max_retries, 0, MAX_RETRIES_LIMIT)?;
    check_count(
        "upstream.max_concurrency",
        u.max_concurrency,
        1,
        MAX_CONCURRENCY_LIMIT,
    )?;
    check_count(
        "upstream.candidates_per_call",
        u.candidates_per_call,
        1,
        MAX_CANDIDATES_PER_CALL,
    )?;
    check_count(
        "upstream.straggler_grace_ms",
        u.straggler_grace_ms,
        0,
        MAX_STRAGGLER_GRACE_MS,
    )?;
    // More required successes than candidates could ever exist would fail every request.
    check_count(
        "upstream.min_successful_candidates",
        u.min_successful_candidates,
        1,
        max_budget,
    )
}

/// Bounds of the numeric `server` settings.
pub fn check_server(s: &ServerSettings) -> Result<(), ConfigError> {
    check_count(
        "server.max_body_bytes",
        s.max_body_bytes,
        1,
        MAX_BODY_BYTES_LIMIT,
    )?;
    for (param, value) in [
        ("server.max_in_flight_requests", s.max_in_flight_requests),
        (
            "server.max_in_flight_per_client",
            s.max_in_flight_per_client,
        ),
        ("server.max_connections", s.max_connections),
    ] {
        check_count(param, value, 1, MAX_SERVER_COUNT_LIMIT)?;
    }
    check_seconds(
        "server.header_read_timeout_secs",
        s.header_read_timeout_secs,
        MAX_TIMEOUT_SECS,
    )?;
    check_seconds(
        "server.body_read_timeout_secs",
        s.body_read_timeout_secs,
        MAX_TIMEOUT_SECS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_refuse_huge_negative_and_nan() {
        for bad in [
            1e20,
            -1.0,
            0.0,
            f64::NAN,
            f64::INFINITY,
            MAX_TIMEOUT_SECS + 1.0,
        ] {
            let e = check_seconds("upstream.call_timeout_secs", Some(bad), MAX_TIMEOUT_SECS)
                .unwrap_err();
            assert_eq!(e.param(), Some("upstream.call_timeout_secs"), "{bad}");
        }
        for good in [0.001, 1.0, MAX_TIMEOUT_SECS] {
            check_seconds("x", Some(good), MAX_TIMEOUT_SECS).unwrap();
        }
        // Every accepted value converts to a Duration without panicking.
        assert!(std::time::Duration::try_from_secs_f64(MAX_TIMEOUT_SECS).is_ok());
    }

    #[test]
    fn upstream_counts_are_bounded() {
        let over = |u: UpstreamSettings| check_upstream(&u, 16).unwrap_err().param();
        assert_eq!(
            over(UpstreamSettings {
                max_retries: Some(MAX_RETRIES_LIMIT + 1),
                ..Default::default()
            }),
            Some("upstream.max_retries")
        );
        assert_eq!(
            over(UpstreamSettings {
                max_concurrency: Some(0),
                ..Default::default()
            }),
            Some("upstream.max_concurrency")
        );
        assert_eq!(
            over(UpstreamSettings {
                max_concurrency: Some(u32::MAX),
                ..Default::default()
            }),
            Some("upstream.max_concurrency")
        );
        assert_eq!(
            over(UpstreamSettings {
                min_successful_candidates: Some(17),
                ..Default::default()
            }),
            Some("upstream.min_successful_candidates")
        );
        assert_eq!(
            over(UpstreamSettings {
                candidates_per_call: Some(129),
                ..Default::default()
            }),
            Some("upstream.candidates_per_call")
        );
        assert_eq!(
            over(UpstreamSettings {
                straggler_grace_ms: Some(MAX_STRAGGLER_GRACE_MS + 1),
                ..Default::default()
            }),
            Some("upstream.straggler_grace_ms")
        );
        // Zero is allowed: released calls are aborted at once.
        check_upstream(
            &UpstreamSettings {
                straggler_grace_ms: Some(0),
                ..Default::default()
            },
            16,
        )
        .unwrap();
        check_upstream(&UpstreamSettings::default(), 16).unwrap();
    }

    #[test]
    fn body_limit_is_bounded() {
        let s = ServerSettings {
            max_body_bytes: Some(0),
            ..Default::default()
        };
        assert_eq!(
            check_server(&s).unwrap_err().param(),
            Some("server.max_body_bytes")
        );
        let s = ServerSettings {
            max_body_bytes: Some(usize::MAX),
            ..Default::default()
        };
        assert!(check_server(&s).is_err());
    }
}
