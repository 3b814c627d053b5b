//! Spending a budget: upstream calls run concurrently, one task each, on the provider's pooled
//! client. The tasks live in a `JoinSet`, so dropping the fan-out (a client that disconnects, a
//! request deadline, an algorithm that has seen enough) aborts every call still in flight and
//! closes its connection.
//!
//! This module sits below both the algorithms and the judge: candidates and judge calls fan out
//! the same way, and neither has to import the other to do so.

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

/// Calls in flight. Results come out in arrival order with the index of their call, so an
/// algorithm can decide as they arrive and drop the rest, which cancels them. Calls may be added
/// while others run ([`InFlight::push`]), which is how a rolling window keeps a fixed number busy.
pub struct InFlight {
    set: JoinSet<(usize, CallResult)>,
    provider: SharedProvider,
    metrics: Arc<UpstreamMetrics>,
}

impl InFlight {
    /// A fan-out with no call started yet.
    pub fn new(provider: &SharedProvider, metrics: &Arc<UpstreamMetrics>) -> Self {
        Self {
            set: JoinSet::new(),
            provider: provider.clone(),
            metrics: metrics.clone(),
        }
    }

    /// Starts every call at once.
    pub fn spawn(
        provider: &SharedProvider,
        calls: &[Arc<PreparedCall>],
        metrics: &Arc<UpstreamMetrics>,
    ) -> Self {
        let mut in_flight = Self::new(provider, metrics);
        for (index, call) in calls.iter().enumerate() {
            in_flight.push(index, call);
        }
        in_flight
    }

    /// Starts one more call; its result comes out of [`InFlight::next`] with `index`.
    pub fn push(&mut self, index: usize, call: &Arc<PreparedCall>) {
        let (provider, call, metrics) = (self.provider.clone(), call.clone(), self.metrics.clone());
        self.set
            .spawn(async move { (index, timed_call(&provider, &call, &metrics).await) });
    }

    /// Calls started and not yet returned by [`InFlight::next`].
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The next call to finish, with its index; `None` when none is left.
    pub async fn next(&mut self) -> Option<(usize, CallResult)> {
        loop {
            match self.set.join_next().await? {
                Ok(finished) => return Some(finished),
                // A panicking call task is a bug; its call counts as failed rather than fail all.
                Err(e) => tracing::error!(error = %e, "upstream call task failed"),
            }
        }
    }
}

/// Sends every call and returns the results in call order (so ties between candidates are
/// broken by call order, not arrival order).
pub async fn run_calls(
    provider: &SharedProvider,
    calls: &[Arc<PreparedCall>],
    metrics: &Arc<UpstreamMetrics>,
) -> Vec<CallResult> {
    if let [call] = calls {
        // A single call needs no task of its own.
        return vec![timed_call(provider, call, metrics).await];
    }
    let mut in_flight = InFlight::spawn(provider, calls, metrics);
    let mut slots: Vec<Option<CallResult>> = (0..calls.len()).map(|_| None).collect();
    while let Some((index, result)) = in_flight.next().await {
        slots[index] = Some(result);
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
