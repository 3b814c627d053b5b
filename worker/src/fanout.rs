//! Spending a budget: upstream calls run concurrently on the provider's pooled client, polled
//! by the request's own task. Dropping the fan-out (a client that disconnects, a request
//! deadline) drops every call still in flight, which closes its connection.
//!
//! The calls are futures of the request's task rather than tasks of their own: a call's answer
//! then wakes the one task that waits for it, on the thread that runs it, instead of a call
//! task that in turn wakes the request's task, often on the other thread (BENCHMARKS.md,
//! issue 14). Requests still spread over every thread of the runtime.
//!
//! An algorithm that has seen enough does not drop the fan-out: it [`InFlight::release`]s it.
//! The calls still running then get a short grace to answer before they are aborted. On a fast
//! upstream most of them are already answering, and one that finishes leaves its connection in
//! the pool; aborting it closes the connection, which costs a new TCP (and TLS) handshake on the
//! next call. A call that is still generating is aborted when the grace ends, which tells the
//! upstream (vLLM, say) to stop generating.
//!
//! This module sits below both the algorithms and the judge: candidates and judge calls fan out
//! the same way, and neither has to import the other to do so.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::{FutureExt, future::BoxFuture};

use crate::metrics::UpstreamMetrics;
use crate::providers::{Completion, PreparedCall, SharedProvider, UpstreamError};

/// One finished call.
pub struct CallResult {
    pub result: Result<Completion, UpstreamError>,
    pub elapsed: Duration,
}

/// Calls in flight. Results come out in arrival order with the index of their call, so an
/// algorithm can decide as they arrive and release the rest. Calls may be added while others
/// run ([`InFlight::push`]), which is how a rolling window keeps a fixed number busy.
pub struct InFlight {
    calls: FuturesUnordered<BoxFuture<'static, (usize, CallResult)>>,
    provider: SharedProvider,
    metrics: Arc<UpstreamMetrics>,
}

impl InFlight {
    /// A fan-out with no call started yet.
    pub fn new(provider: &SharedProvider, metrics: &Arc<UpstreamMetrics>) -> Self {
        Self {
            calls: FuturesUnordered::new(),
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
        self.calls.push(Box::pin(async move {
            // A panic in a call is a bug; it fails that call rather than the whole request.
            let result = AssertUnwindSafe(timed_call(&provider, &call, &metrics))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!("upstream call panicked");
                    CallResult {
                        result: Err(UpstreamError::Transport("call task failed".into())),
                        elapsed: Duration::ZERO,
                    }
                });
            (index, result)
        }));
    }

    /// Calls started and not yet returned by [`InFlight::next`].
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Stops waiting for the calls still running and returns how many there were. They get
    /// `grace` to answer (their results are not used; their connections go back to the pool),
    /// then the ones still running are aborted. A zero grace aborts them at once, as dropping
    /// the fan-out does.
    pub fn release(self, grace: Duration) -> usize {
        let running = self.calls.len();
        if running == 0 || grace.is_zero() {
            return running;
        }
        let mut calls = self.calls;
        tokio::spawn(async move {
            let drain = async { while calls.next().await.is_some() {} };
            // When the grace ends, `calls` is dropped, which aborts whatever is left.
            let _ = tokio::time::timeout(grace, drain).await;
        });
        running
    }

    /// The next call to finish, with its index; `None` when none is left.
    pub async fn next(&mut self) -> Option<(usize, CallResult)> {
        self.calls.next().await
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
        // A single call needs no fan-out.
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use serde_json::json;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::config::ProviderKind;
    use crate::metrics::Metrics;
    use crate::providers::http::test_server::{Reply, Server, start};
    use crate::providers::openai::{OpenAiProvider, OpenAiSettings};
    use crate::providers::{HttpClient, RetryPolicy};

    const ANSWER: &str = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"A"},"finish_reason":"stop"}]}"#;

    /// An upstream that answers at once, except calls whose body says "slow": those take
    /// 200 ms, as a generation still running when the vote is decided.
    async fn upstream() -> Server {
        start(|body| {
            let slow = body.windows(4).any(|w| w == b"slow");
            Reply {
                delay: if slow {
                    Duration::from_millis(200)
                } else {
                    Duration::ZERO
                },
                ..Reply::json(ANSWER)
            }
        })
        .await
    }

    fn fan_out(server: &Server) -> (SharedProvider, Arc<UpstreamMetrics>) {
        let provider: SharedProvider = Arc::new(OpenAiProvider::new(OpenAiSettings {
            kind: ProviderKind::OpenaiCompatible,
            base_url: server.url.clone(),
            model: "m".into(),
            api_key: None,
            client: HttpClient::default(),
            retry: RetryPolicy::default(),
            call_timeout: Duration::from_secs(30),
            limit: Arc::new(Semaphore::new(16)),
        }));
        let metrics = Arc::new(Metrics::new().upstream("openai-compatible", "m", "candidate"));
        (provider, metrics)
    }

    fn call(provider: &SharedProvider, content: &str) -> Arc<PreparedCall> {
        let body = json!({"messages": [{"role": "user", "content": content}]});
        Arc::new(provider.prepare(body.as_object().unwrap().clone()).unwrap())
    }

    /// Starts fast, fast and slow calls, takes the two fast answers and releases the fan-out.
    async fn release_the_slow_call(
        grace: Duration,
    ) -> (Server, SharedProvider, Arc<UpstreamMetrics>) {
        let server = upstream().await;
        let (provider, metrics) = fan_out(&server);
        let calls = [
            call(&provider, "fast"),
            call(&provider, "fast"),
            call(&provider, "slow"),
        ];
        let mut in_flight = InFlight::spawn(&provider, &calls, &metrics);
        for _ in 0..2 {
            let (index, result) = in_flight.next().await.unwrap();
            assert!(index < 2 && result.result.is_ok());
        }
        assert_eq!(in_flight.release(grace), 1);
        (server, provider, metrics)
    }

    #[tokio::test]
    async fn a_released_call_that_answers_within_its_grace_keeps_its_connection() {
        let (server, provider, metrics) = release_the_slow_call(Duration::from_secs(30)).await;
        // The slow call still answers; its result is recorded once its connection is back in
        // the pool (the fan-out that started it is gone).
        tokio::time::timeout(Duration::from_secs(10), async {
            while metrics.duration.get_sample_count() < 3 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the released call did not finish");
        assert_eq!(server.abandoned.available_permits(), 0);
        // Three calls at once now find three pooled connections: none is opened.
        let calls = [
            call(&provider, "fast"),
            call(&provider, "fast"),
            call(&provider, "fast"),
        ];
        let results = run_calls(&provider, &calls, &metrics).await;
        assert!(results.iter().all(|r| r.result.is_ok()));
        assert_eq!(server.connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_released_call_still_running_after_its_grace_is_aborted() {
        let (server, _provider, metrics) = release_the_slow_call(Duration::ZERO).await;
        // The upstream sees the connection closed while it generates: it can stop.
        let closed = tokio::time::timeout(Duration::from_secs(10), server.abandoned.acquire());
        assert!(closed.await.is_ok(), "the slow call was not aborted");
        assert_eq!(server.answered.available_permits(), 2);
        assert_eq!(
            metrics.duration.get_sample_count(),
            2,
            "an aborted call records nothing"
        );
    }
}
