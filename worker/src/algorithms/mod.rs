//! The algorithms that spend a request's budget and pick the answer.
//!
//! Every algorithm works in the same three steps: generate candidates ([`fanout`]), score them
//! (a vote, or a judge), select. Adaptive variants that stop early fit the same shape: they
//! consume the fan-out's results as they arrive and drop the rest, which cancels them.

pub mod adaptive;
pub mod best_of_n;
pub mod early;
pub mod fanout;
pub mod vote;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::config::AlgorithmName;
use crate::metrics::Metrics;
use crate::providers::{Candidate, PreparedCall, UpstreamError, Usage};
use crate::runtime::Runtime;
use best_of_n::JudgeDetail;
use vote::Vote;

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

    /// The `metadata` object of the response (only built when the client asks for it).
    pub fn metadata(&self) -> Value {
        let mut m = Map::new();
        m.insert("algorithm".into(), json!(self.algorithm.as_str()));
        m.insert(
            "all_responses".into(),
            Value::Array(self.candidates.iter().map(|c| c.message.clone()).collect()),
        );
        m.insert("selected_index".into(), json!(self.selected));
        match &self.detail {
            Detail::Vote(v) => insert_vote(&mut m, v),
            Detail::Judge(j) => j.insert_metadata(&mut m),
        }
        m.insert("failed_candidates".into(), json!(self.failed_candidates));
        if !self.failures.is_empty() {
            m.insert("candidate_errors".into(), json!(self.failures));
        }
        Value::Object(m)
    }
}

pub(crate) fn insert_vote(m: &mut Map<String, Value>, v: &Vote) {
    let counts: Map<String, Value> = v
        .counts
        .iter()
        .map(|(k, n)| (k.clone(), json!(n)))
        .collect();
    m.insert("response_counts".into(), Value::Object(counts));
    if let Some(names) = &v.name_counts {
        let names: Map<String, Value> = names.iter().map(|(k, n)| (k.clone(), json!(n))).collect();
        m.insert("tool_name_counts".into(), Value::Object(names));
    }
    m.insert("vote_space".into(), json!(v.space.as_str()));
    m.insert("agreement".into(), json!(v.agreement()));
}

/// Runs the configured algorithm for one request.
pub async fn run(
    rt: &Runtime,
    calls: &[Arc<PreparedCall>],
    budget: u32,
    context: &[Value],
    metrics: &Metrics,
) -> Result<Outcome, AlgorithmError> {
    let alg = rt.algorithm.as_str();
    let results = fanout::run_calls(&rt.provider, calls, &rt.candidate_metrics).await;

    let mut candidates = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    let mut usage = Usage::default();
    let mut slowest = Duration::ZERO;
    let mut system_fingerprint = None;
    for r in results {
        slowest = slowest.max(r.elapsed);
        match r.result {
            Ok(c) => {
                usage.add(c.usage);
                system_fingerprint = system_fingerprint.or(c.system_fingerprint);
                candidates.extend(c.candidates);
            }
            Err(e) => errors.push(e),
        }
    }
    metrics
        .candidates
        .with_label_values(&[alg, "ok"])
        .inc_by(candidates.len() as u64);
    metrics
        .candidates
        .with_label_values(&[alg, "error"])
        .inc_by((budget as usize).saturating_sub(candidates.len()) as u64);
    metrics
        .tokens
        .with_label_values(&["prompt", "candidate"])
        .inc_by(usage.prompt_tokens);
    metrics
        .tokens
        .with_label_values(&["completion", "candidate"])
        .inc_by(usage.completion_tokens);

    let needed = rt.min_successful.min(budget as usize).max(1);
    if candidates.len() < needed {
        return Err(AlgorithmError::Upstream {
            succeeded: candidates.len(),
            attempted: budget as usize,
            needed,
            errors,
        });
    }
    let candidates_len = candidates.len();
    let failures: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let mut outcome = Outcome {
        algorithm: rt.algorithm,
        candidates,
        selected: 0,
        usage,
        upstream_time: slowest,
        failures,
        failed_candidates: (budget as usize).saturating_sub(candidates_len),
        system_fingerprint,
        detail: Detail::Vote(Vote {
            selected: 0,
            counts: Vec::new(),
            name_counts: None,
            eligible: 0,
            winner_votes: 0,
            space: vote::VoteSpace::TextExact,
            tied: false,
        }),
    };
    match rt.algorithm {
        AlgorithmName::SelfConsistency => {
            // Cannot fail: there is at least one candidate.
            if let Ok(v) = vote::vote(&outcome.candidates, &rt.vote) {
                metrics
                    .vote_agreement
                    .with_label_values(&[alg, v.space.as_str()])
                    .observe(v.agreement());
                outcome.selected = v.selected;
                outcome.detail = Detail::Vote(v);
            }
        }
        AlgorithmName::BestOfN => best_of_n::select(rt, &mut outcome, context, metrics).await,
    }
    Ok(outcome)
}
