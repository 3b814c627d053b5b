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
pub mod vote;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::config::AlgorithmName;
use crate::fanout;
use crate::judge::Judge;
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::providers::{Candidate, PreparedCall, SharedProvider, UpstreamError, Usage};
use best_of_n::JudgeDetail;
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
}

/// How the winner was chosen.
pub enum Detail {
    Vote(Vote),
    Judge(JudgeDetail),
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
}

/// Runs the configured algorithm for one request: `calls` spend `budget` candidates; `context`
/// is the conversation the judge sees (best-of-n only).
pub async fn run(
    inputs: &AlgorithmInputs<'_>,
    calls: &[Arc<PreparedCall>],
    budget: u32,
    context: &[Value],
    metrics: &Metrics,
) -> Result<Outcome, AlgorithmError> {
    let alg = inputs.algorithm.as_str();
    let generated = generate(inputs, calls).await;
    record_candidates(metrics, alg, budget, &generated);

    let Generated {
        candidates,
        errors,
        mut usage,
        slowest,
        system_fingerprint,
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
    let failed_candidates = attempted.saturating_sub(candidates.len());
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
    })
}

/// Sends every call and gathers the candidates in call order.
async fn generate(inputs: &AlgorithmInputs<'_>, calls: &[Arc<PreparedCall>]) -> Generated {
    let results = fanout::run_calls(inputs.provider, calls, inputs.candidate_metrics).await;
    let mut generated = Generated {
        candidates: Vec::with_capacity(results.len()),
        errors: Vec::new(),
        usage: Usage::default(),
        slowest: Duration::ZERO,
        system_fingerprint: None,
    };
    for r in results {
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

fn record_candidates(metrics: &Metrics, alg: &str, budget: u32, generated: &Generated) {
    let ok = generated.candidates.len();
    metrics
        .candidates
        .with_label_values(&[alg, "ok"])
        .inc_by(ok as u64);
    metrics
        .candidates
        .with_label_values(&[alg, "error"])
        .inc_by((budget as usize).saturating_sub(ok) as u64);
    metrics
        .tokens
        .with_label_values(&["prompt", "candidate"])
        .inc_by(generated.usage.prompt_tokens);
    metrics
        .tokens
        .with_label_values(&["completion", "candidate"])
        .inc_by(generated.usage.completion_tokens);
}
