//! Spending the budget: upstream calls run concurrently, one task each, on the runtime's pooled
//! client. The tasks live in a `JoinSet`, so dropping the future (a client that disconnects, a
//! deadline) aborts every call still in flight and closes its connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::metrics::UpstreamMetrics;
use crate::providers::{Completion, PreparedCall, SharedProvider, UpstreamError};

/// One finished call.
pub struct CallResult {
    pub result: Result<Completion, UpstreamError>,
    pub elapsed: Duration,
}

/// Sends every call and returns the results in call order (so ties between candidates are
/// broken by call order, not arrival order).
pub async fn run_calls(
    provider: &SharedProvider,
    calls: &[Arc<PreparedCall>],
    metrics: &Arc<UpstreamMetrics>,
) -> Vec<CallResult> {
    if calls.len() == 1 {
        // A single call needs no task of its own.
        return vec![timed_call(provider, &calls[0], metrics).await];
    }
    let mut set = JoinSet::new();
    for (index, call) in calls.iter().enumerate() {
        let (provider, call, metrics) = (provider.clone(), call.clone(), metrics.clone());
        set.spawn(async move { (index, timed_call(&provider, &call, &metrics).await) });
    }
    let mut slots: Vec<Option<CallResult>> = (0..calls.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((index, result)) => slots[index] = Some(result),
            // A panicking call task is a bug; count it as a failed call rather than fail all.
            Err(e) => tracing::error!(error = %e, "upstream call task failed"),
        }
    }
    slots
        .into_iter()
        .map(|s| {
            s.unwrap_or(CallResult {
                result: Err(UpstreamError::Transport("call task failed".into())),
                elapsed: Duration::ZERO,
            })
        })
        .collect()
}

async fn timed_call(
    provider: &SharedProvider,
    call: &PreparedCall,
    metrics: &UpstreamMetrics,
) -> CallResult {
    let start = Instant::now();
    let result = provider.send(call).await;
    let elapsed = start.elapsed();
    metrics.record(
        result.as_ref().err().map(UpstreamError::status_label),
        elapsed.as_secs_f64(),
    );
    if let Err(e) = &result {
        tracing::warn!(provider = provider.kind().as_str(), model = provider.model(), error = %e, "upstream call failed");
    }
    CallResult { result, elapsed }
}
