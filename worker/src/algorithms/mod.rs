//! The algorithms that spend a request's budget and pick the answer.
//!
//! Every algorithm works in the same three steps: generate candidates ([`crate::fanout`]), score
//! them (a vote, or a judge), select. Adaptive variants that stop early fit the same shape: they
//! consume the fan-out's results as they arrive ([`crate::fanout::InFlight`]) and drop the rest,
//! which cancels them.
//!
//! The algorithms know nothing of HTTP or of the response format: they return a typed
//! [`Outcome`], and the API layer renders it.

pub mod adaptive;
pub mod best_of_n;
pub mod early;
pub mod stepwise;
pub mod vote;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::config::AlgorithmName;
use crate::fanout::{CallResult, InFlight};
use crate::judge::Judge;
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::providers::{Candidate, PreparedCall, SharedProvider, UpstreamError, Usage};
use adaptive::AdaptivePolicy;
use best_of_n::JudgeDetail;
use early::Slot;
use vote::{Vote, VoteSettings};

/// What an algorithm takes from the configuration, borrowed from it so that a request keeps the
/// configuration it started with.
pub struct AlgorithmInputs<'a> {
    pub algorithm: AlgorithmName,
    /// Where the candidates come from.
    pub provider: &'a SharedProvider,
    pub candidate_metrics: &'a Arc<UpstreamMetrics>,
    /// How candidates are compared (self-consistency, and best-of-n's fallback).
    pub vote: &'a VoteSettings,
    /// The judge of best-of-n. Without one, the vote decides.
    pub judge: Option<&'a Judge>,
    /// Fewest successful candidates needed to answer.
    pub min_successful: usize,
    /// Self-consistency stops as soon as the vote can no longer change (exact, so the answer is
    /// the one waiting for every call would give). Off only as a benchmark baseline.
    pub early_decision: bool,
    /// How long the calls an early stop no longer waits for may still finish (and keep their
    /// connections) before they are aborted.
    pub straggler_grace: Duration,
    /// Self-consistency samples in a rolling window and stops when this rule is confident.
    pub adaptive: Option<AdaptivePolicy>,
}

/// Why a fan-out stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Every call answered (or failed).
    AllCompleted,
    /// The vote could no longer change, whatever the outstanding calls would answer.
    Decided,
    /// The adaptive rule was confident enough in the current leader.
    AdaptiveConfident,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::AllCompleted => "all_completed",
            StopReason::Decided => "decided",
            StopReason::AdaptiveConfident => "adaptive_confident",
        }
    }
}

/// What happened to a request's upstream calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallCounts {
    /// Calls started.
    pub sent: usize,
    /// Calls that returned, with candidates or an error.
    pub completed: usize,
    /// Calls aborted once the answer was known.
    pub cancelled: usize,
}

/// The result of a request's algorithm.
pub struct Outcome {
    pub algorithm: AlgorithmName,
    /// Successful candidates, in call order.
    pub candidates: Vec<Candidate>,
    pub selected: usize,
    /// Every upstream call of the request: candidates and judge.
    pub usage: Usage,
    /// The longest upstream leg: the slowest candidate call plus the judging step.
    pub upstream_time: Duration,
    /// Why the failed candidate calls failed.
    pub failures: Vec<String>,
    /// Candidates asked for but not obtained (a failed call asking for `n` loses `n`).
    pub failed_candidates: usize,
    pub system_fingerprint: Option<String>,
    pub detail: Detail,
    pub calls: CallCounts,
    pub stop_reason: StopReason,
}

/// How the winner was chosen.
pub enum Detail {
    Vote(Vote),
    Judge(JudgeDetail),
    /// Step-wise search or PRM best-of-n, with the vote that decided when the PRM failed.
    Stepwise(Box<(stepwise::StepwiseDetail, Option<Vote>)>),
}

/// Why no answer could be produced.
#[derive(Debug, thiserror::Error)]
pub enum AlgorithmError {
    #[error("{succeeded} of {attempted} candidates were generated, {needed} needed; first error: {}", errors.first().map(ToString::to_string).unwrap_or_default())]
    Upstream {
        errors: Vec<UpstreamError>,
        succeeded: usize,
        attempted: usize,
        needed: usize,
    },
}

impl Outcome {
    pub fn winner(&self) -> &Candidate {
        &self.candidates[self.selected]
    }
}

/// The candidates of a fan-out, with what it cost.
struct Generated {
    candidates: Vec<Candidate>,
    errors: Vec<UpstreamError>,
    usage: Usage,
    slowest: Duration,
    system_fingerprint: Option<String>,
    /// Candidates asked for by the calls that returned (cancelled calls are not counted).
    asked: usize,
    calls: CallCounts,
    stop_reason: StopReason,
}

/// Runs the configured algorithm for one request: `calls` spend `budget` candidates, call `i`
/// asking for `sizes[i]` of them; `context` is the conversation the judge sees (best-of-n only).
pub async fn run(
    inputs: &AlgorithmInputs<'_>,
    calls: &[Arc<PreparedCall>],
    sizes: &[usize],
    budget: u32,
    context: &[Value],
    metrics: &Metrics,
) -> Result<Outcome, AlgorithmError> {
    let alg = inputs.algorithm.as_str();
    let generated = generate(inputs, calls, sizes).await;
    record_candidates(metrics, alg, &generated);

    let Generated {
        candidates,
        errors,
        mut usage,
        slowest,
        system_fingerprint,
        asked,
        calls,
        stop_reason,
    } = generated;
    let attempted = budget as usize;
    let needed = inputs.min_successful.min(attempted).max(1);
    let shortfall = |errors, succeeded| AlgorithmError::Upstream {
        errors,
        succeeded,
        attempted,
        needed,
    };
    if candidates.len() < needed {
        return Err(shortfall(errors, candidates.len()));
    }
    let mut upstream_time = slowest;
    let (selected, detail) = match (inputs.algorithm, inputs.judge) {
        (AlgorithmName::BestOfN, Some(judge)) => {
            let judged = best_of_n::select(judge, inputs.vote, &candidates, context, metrics).await;
            usage.add(judged.usage);
            upstream_time += judged.elapsed;
            (judged.selected, Detail::Judge(judged.detail))
        }
        _ => match vote::vote(&candidates, inputs.vote) {
            Ok(v) => {
                metrics
                    .vote_agreement
                    .with_label_values(&[alg, v.space.as_str()])
                    .observe(v.agreement());
                (v.selected, Detail::Vote(v))
            }
            // Only with no candidate at all, which `needed` (at least 1) has ruled out.
            Err(vote::VoteError::NoCandidates) => return Err(shortfall(errors, 0)),
        },
    };
    let failed_candidates = asked.saturating_sub(candidates.len());
    Ok(Outcome {
        algorithm: inputs.algorithm,
        candidates,
        selected,
        usage,
        upstream_time,
        failures: errors.iter().map(ToString::to_string).collect(),
        failed_candidates,
        system_fingerprint,
        detail,
        calls,
        stop_reason,
    })
}

/// How a fan-out may stop before every call has answered.
#[derive(Clone, Copy)]
struct Stopping<'a> {
    vote: &'a VoteSettings,
    needed: usize,
    exact: bool,
    adaptive: Option<AdaptivePolicy>,
}

/// Sends the calls — all at once, or in a rolling window under an adaptive policy — and gathers
/// the candidates in call order, stopping (and cancelling the calls still running) as soon as
/// the self-consistency vote is decided or the adaptive rule is confident.
async fn generate(
    inputs: &AlgorithmInputs<'_>,
    calls: &[Arc<PreparedCall>],
    sizes: &[usize],
) -> Generated {
    let self_consistency = inputs.algorithm == AlgorithmName::SelfConsistency;
    let stopping = Stopping {
        vote: inputs.vote,
        needed: inputs.min_successful.min(sizes.iter().sum()).max(1),
        exact: self_consistency && inputs.early_decision,
        adaptive: inputs.adaptive.filter(|_| self_consistency),
    };
    let window = stopping
        .adaptive
        .map_or(calls.len(), |a| a.parallelism.max(1));
    let mut in_flight = InFlight::new(inputs.provider, inputs.candidate_metrics);
    let mut started = 0;
    while started < calls.len().min(window) {
        in_flight.push(started, &calls[started]);
        started += 1;
    }
    let mut finished: Vec<Option<CallResult>> = (0..calls.len()).map(|_| None).collect();
    let mut stop_reason = StopReason::AllCompleted;
    while let Some((index, result)) = in_flight.next().await {
        finished[index] = Some(result);
        if let Some(reason) = should_stop(&finished, sizes, &stopping) {
            stop_reason = reason;
            break;
        }
        while started < calls.len()
            && in_flight.len() < window
            && (in_flight.is_empty() || !enough_in_flight(&finished, sizes, started, &stopping))
        {
            in_flight.push(started, &calls[started]);
            started += 1;
        }
    }
    let cancelled = in_flight.release(inputs.straggler_grace);
    gather(finished, sizes, started, cancelled, stop_reason)
}

/// After an arrival: whether to stop now, and why. Never before `needed` candidates succeeded.
fn should_stop(
    finished: &[Option<CallResult>],
    sizes: &[usize],
    stopping: &Stopping<'_>,
) -> Option<StopReason> {
    if finished.iter().all(Option::is_some) {
        return None;
    }
    let no_candidates: &[Candidate] = &[];
    let slots: Vec<Slot<'_>> = finished
        .iter()
        .zip(sizes)
        .map(|(f, &size)| match f {
            None => Slot::Pending(size),
            Some(CallResult { result: Ok(c), .. }) => Slot::Done(&c.candidates),
            Some(_) => Slot::Done(no_candidates),
        })
        .collect();
    let successes: usize = slots
        .iter()
        .map(|s| match s {
            Slot::Done(c) => c.len(),
            Slot::Pending(_) => 0,
        })
        .sum();
    if successes < stopping.needed {
        return None;
    }
    if stopping.exact && early::settled(&slots, stopping.vote) {
        return Some(StopReason::Decided);
    }
    let adaptive = stopping.adaptive?;
    if successes < adaptive.min_samples {
        return None;
    }
    let counts = vote_counts(finished, stopping.vote)?;
    adaptive
        .confident(&counts)
        .then_some(StopReason::AdaptiveConfident)
}

/// The vote counts (any order) of the candidates the finished calls brought; empty when none
/// succeeded, `None` when they cannot be voted on.
fn vote_counts(finished: &[Option<CallResult>], settings: &VoteSettings) -> Option<Vec<usize>> {
    let candidates: Vec<Candidate> = finished
        .iter()
        .flatten()
        .filter_map(|r| r.result.as_ref().ok())
        .flat_map(|c| c.candidates.iter().cloned())
        .collect();
    if candidates.is_empty() {
        return Some(Vec::new());
    }
    let vote = vote::vote(&candidates, settings).ok()?;
    Some(vote.counts.iter().map(|(_, n)| *n).collect())
}

/// Under an adaptive policy: true when the calls already in flight could be all the rule still
/// needs — if each of them brought the current leader's answer, the rule would be confident. A
/// new call then waits for their answers instead of starting now: if they agree it would only
/// be cancelled (paid for nothing), and if they do not, it starts as they arrive. This keeps the
/// calls *sent* close to the calls the rule needs, at the cost of a round of latency only on
/// questions where the in-flight answers disagree.
fn enough_in_flight(
    finished: &[Option<CallResult>],
    sizes: &[usize],
    started: usize,
    stopping: &Stopping<'_>,
) -> bool {
    let Some(adaptive) = stopping.adaptive else {
        return false;
    };
    let pending: usize = finished[..started]
        .iter()
        .zip(sizes)
        .filter(|(f, _)| f.is_none())
        .map(|(_, &size)| size)
        .sum();
    if pending == 0 {
        return false;
    }
    let Some(mut counts) = vote_counts(finished, stopping.vote) else {
        return false;
    };
    match counts.iter_mut().max() {
        Some(leader) => *leader += pending,
        None => counts.push(pending),
    }
    adaptive.confident(&counts)
}

/// The candidates of the calls that returned, in call order, with what they cost.
fn gather(
    finished: Vec<Option<CallResult>>,
    sizes: &[usize],
    sent: usize,
    cancelled: usize,
    stop_reason: StopReason,
) -> Generated {
    let mut generated = Generated {
        candidates: Vec::new(),
        errors: Vec::new(),
        usage: Usage::default(),
        slowest: Duration::ZERO,
        system_fingerprint: None,
        asked: 0,
        calls: CallCounts {
            sent,
            completed: 0,
            cancelled,
        },
        stop_reason,
    };
    for (r, &size) in finished.into_iter().zip(sizes) {
        let Some(r) = r else { continue };
        generated.calls.completed += 1;
        generated.asked += size;
        generated.slowest = generated.slowest.max(r.elapsed);
        match r.result {
            Ok(c) => {
                generated.usage.add(c.usage);
                generated.system_fingerprint =
                    generated.system_fingerprint.or(c.system_fingerprint);
                generated.candidates.extend(c.candidates);
            }
            Err(e) => generated.errors.push(e),
        }
    }
    generated
}

fn record_candidates(metrics: &Metrics, alg: &str, generated: &Generated) {
    let ok = generated.candidates.len();
    metrics
        .candidates
        .with_label_values(&[alg, "ok"])
        .inc_by(ok as u64);
    metrics
        .candidates
        .with_label_values(&[alg, "error"])
        .inc_by(generated.asked.saturating_sub(ok) as u64);
    metrics
        .cancelled_calls
        .with_label_values(&[alg])
        .inc_by(generated.calls.cancelled as u64);
    metrics
        .tokens
        .with_label_values(&["prompt", "candidate"])
        .inc_by(generated.usage.prompt_tokens);
    metrics
        .tokens
        .with_label_values(&["completion", "candidate"])
        .inc_by(generated.usage.completion_tokens);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;
    use tokio::sync::Semaphore;

    use super::adaptive::AdaptiveRule;
    use super::*;
    use crate::config::ProviderKind;
    use crate::providers::{BoxFuture, ChatProvider, Completion, ProviderError};

    /// An upstream whose k-th call (in the order calls are sent) answers `script[k]` after its
    /// latency in (paused, virtual) time. A call dropped before it answers adds a permit to
    /// `cancelled`, so a test can wait for the cancellations themselves.
    struct Scripted {
        script: Vec<(&'static str, u64)>,
        sent: AtomicUsize,
        cancelled: Arc<Semaphore>,
    }

    /// Counts a call as cancelled unless it answered.
    struct CancelWatch {
        cancelled: Arc<Semaphore>,
        answered: bool,
    }

    impl CancelWatch {
        fn answer(&mut self) {
            self.answered = true;
        }
    }

    impl Drop for CancelWatch {
        fn drop(&mut self) {
            if !self.answered {
                self.cancelled.add_permits(1);
            }
        }
    }

    impl ChatProvider for Scripted {
        fn kind(&self) -> ProviderKind {
            ProviderKind::OpenaiCompatible
        }
        fn model(&self) -> &str {
            "m"
        }
        fn prepare(
            &self,
            body: serde_json::Map<String, Value>,
        ) -> Result<PreparedCall, ProviderError> {
            PreparedCall::json(&body)
        }
        fn send<'a>(
            &'a self,
            _: &'a PreparedCall,
        ) -> BoxFuture<'a, Result<Completion, UpstreamError>> {
            let k = self.sent.fetch_add(1, Ordering::SeqCst);
            let (answer, latency_ms) = self.script[k % self.script.len()];
            let mut watch = CancelWatch {
                cancelled: self.cancelled.clone(),
                answered: false,
            };
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(latency_ms)).await;
                watch.answer();
                let message = json!({"role": "assistant", "content": answer});
                Ok(Completion {
                    candidates: vec![Candidate::from_message(message, None, None)],
                    usage: Usage {
                        prompt_tokens: 5,
                        completion_tokens: 1,
                    },
                    system_fingerprint: None,
                })
            })
        }
    }

    struct Harness {
        provider: SharedProvider,
        cancelled: Arc<Semaphore>,
        metrics: Metrics,
        upstream: Arc<UpstreamMetrics>,
        vote: VoteSettings,
    }

    impl Harness {
        fn new(script: Vec<(&'static str, u64)>) -> Self {
            let cancelled = Arc::new(Semaphore::new(0));
            let provider: SharedProvider = Arc::new(Scripted {
                script,
                sent: AtomicUsize::new(0),
                cancelled: cancelled.clone(),
            });
            let metrics = Metrics::new();
            let upstream = Arc::new(metrics.upstream("openai-compatible", "m", "candidate"));
            Self {
                provider,
                cancelled,
                metrics,
                upstream,
                vote: VoteSettings::default(),
            }
        }

        async fn run(
            &self,
            budget: usize,
            early_decision: bool,
            adaptive: Option<AdaptivePolicy>,
        ) -> Outcome {
            let inputs = AlgorithmInputs {
                algorithm: AlgorithmName::SelfConsistency,
                provider: &self.provider,
                candidate_metrics: &self.upstream,
                vote: &self.vote,
                judge: None,
                min_successful: 1,
                early_decision,
                straggler_grace: Duration::from_millis(20),
                adaptive,
            };
            let body = serde_json::Map::new();
            let call = Arc::new(self.provider.prepare(body).unwrap());
            let calls = vec![call; budget];
            let sizes = vec![1; budget];
            run(&inputs, &calls, &sizes, budget as u32, &[], &self.metrics)
                .await
                .unwrap()
        }

        fn cancelled_metric(&self) -> u64 {
            self.metrics
                .cancelled_calls
                .with_label_values(&["self-consistency"])
                .get()
        }
    }

    fn winner_text(o: &Outcome) -> &str {
        &o.winner().text
    }

    // A A B A arrive first; the last two calls are slow. After the fourth arrival A has 3 votes
    // against B's 1 with 2 outstanding: B can at best tie, and ties go to the answer seen first
    // in call order (A, call 0), so the vote is decided.
    const DECIDED_EARLY: [(&str, u64); 6] = [
        ("A", 10),
        ("A", 20),
        ("B", 30),
        ("A", 40),
        ("B", 1000),
        ("B", 1000),
    ];

    #[tokio::test(start_paused = true)]
    async fn early_decision_returns_the_full_votes_answer_and_cancels_the_rest() {
        let full = Harness::new(DECIDED_EARLY.to_vec())
            .run(6, false, None)
            .await;
        assert_eq!(full.stop_reason, StopReason::AllCompleted);
        assert_eq!(full.calls.completed, 6);

        let h = Harness::new(DECIDED_EARLY.to_vec());
        let early = h.run(6, true, None).await;
        assert_eq!(winner_text(&early), winner_text(&full));
        assert_eq!(winner_text(&early), "A");
        assert_eq!(early.stop_reason, StopReason::Decided);
        assert_eq!(
            early.calls,
            CallCounts {
                sent: 6,
                completed: 4,
                cancelled: 2
            }
        );
        // Cancelled calls are neither candidates nor failures.
        assert_eq!(early.candidates.len(), 4);
        assert_eq!(early.failed_candidates, 0);
        assert_eq!(h.cancelled_metric(), 2);
        // Both slow calls were really dropped, not left running.
        let dropped = tokio::time::timeout(Duration::from_secs(5), h.cancelled.acquire_many(2));
        assert!(
            dropped.await.is_ok(),
            "the outstanding calls were not cancelled"
        );
        // The answer came at the fourth arrival, long before the slow calls.
        assert!(early.upstream_time < Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn an_undecided_vote_waits_for_every_call() {
        // A B A B: after four arrivals A and B have 2 each and 2 are outstanding.
        let script = vec![
            ("A", 10),
            ("B", 20),
            ("A", 30),
            ("B", 40),
            ("B", 50),
            ("A", 60),
        ];
        let o = Harness::new(script).run(6, true, None).await;
        // A:3, B:3, A seen first.
        assert_eq!(winner_text(&o), "A");
        assert!(o.calls.completed >= 5);
    }

    fn policy(rule: AdaptiveRule, parallelism: usize) -> AdaptivePolicy {
        AdaptivePolicy {
            rule,
            threshold: rule.default_threshold(),
            min_samples: 2,
            parallelism,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn adaptive_stops_once_unanimous_answers_make_the_rule_confident() {
        let h = Harness::new(vec![("A", 10)]);
        let o = h.run(16, true, Some(policy(AdaptiveRule::Beta, 2))).await;
        assert_eq!(winner_text(&o), "A");
        assert_eq!(o.stop_reason, StopReason::AdaptiveConfident);
        // Beta: 4 unanimous votes give 1 − 2⁻⁵ ≈ 0.97 ≥ 0.95, 3 give 0.9375. Once three have
        // agreed and one is in flight, that one could be enough: no fifth call is started.
        assert_eq!(
            o.calls,
            CallCounts {
                sent: 4,
                completed: 4,
                cancelled: 0
            }
        );
        assert_eq!(o.usage.prompt_tokens, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_window_that_could_decide_starts_no_call_it_would_cancel() {
        // Window 4, unanimous: the first four calls are all the Beta rule needs, so nothing more
        // starts while they run (a fixed window would have started three more and cancelled them).
        let h = Harness::new(vec![("A", 10)]);
        let o = h.run(16, true, Some(policy(AdaptiveRule::Beta, 4))).await;
        assert_eq!(
            o.stop_reason,
            StopReason::AdaptiveConfident,
            "{:?}",
            o.calls
        );
        assert_eq!((o.calls.sent, o.calls.cancelled), (4, 0));
        // One dissenting answer in four: the in-flight calls can no longer be enough, so the
        // window refills, one call at a time once a few are in flight, until A:8, B:2 (10 calls)
        // makes the rule confident — and, with six calls left, the vote decided too.
        let h = Harness::new(vec![("A", 10), ("A", 10), ("B", 10), ("A", 10)]);
        let o = h.run(16, true, Some(policy(AdaptiveRule::Beta, 4))).await;
        assert_eq!(winner_text(&o), "A");
        assert_ne!(o.stop_reason, StopReason::AllCompleted);
        assert_eq!((o.calls.sent, o.calls.cancelled), (10, 0), "{:?}", o.calls);
    }

    #[tokio::test(start_paused = true)]
    async fn adaptive_spends_the_budget_when_answers_stay_split() {
        let h = Harness::new(vec![("A", 10), ("B", 10), ("C", 10)]);
        let o = h.run(16, true, Some(policy(AdaptiveRule::ItsHub, 4))).await;
        assert_eq!(o.calls.sent, 16);
        assert_ne!(o.stop_reason, StopReason::AdaptiveConfident);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rolling_window_keeps_at_most_parallelism_calls_in_flight() {
        // Sixteen calls of 100 ms through a window of 4 take four rounds.
        let h = Harness::new(vec![("A", 100), ("B", 100)]);
        let start = tokio::time::Instant::now();
        let o = h.run(16, false, Some(policy(AdaptiveRule::Beta, 4))).await;
        assert_eq!(o.calls.completed, 16);
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }
}
