//! The `metadata` object of a response (sent when the request sets `return_response_only:
//! false`): what the algorithm did, rendered from its typed outcome.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use crate::algorithms::best_of_n::JudgeDetail;
use crate::algorithms::stepwise::StepwiseDetail;
use crate::algorithms::vote::Vote;
use crate::algorithms::{Detail, Outcome};
use crate::judge::mode_name;

/// How the answer was chosen. Fields are declared in alphabetical order, which is the order they
/// have always been sent in (clients that compare raw bytes see no change).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Metadata {
    /// Share of the voting candidates that agreed with the winner (self-consistency, or
    /// best-of-n when the vote decided).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    /// `self-consistency` or `best-of-n`.
    pub algorithm: &'static str,
    /// Every successful candidate's message as the upstream returned it, in call order.
    pub all_responses: Vec<Value>,
    /// Candidate calls aborted once the answer was known.
    pub calls_cancelled: usize,
    /// Candidate calls that returned, with candidates or an error.
    pub calls_completed: usize,
    /// Candidate calls started.
    pub calls_sent: usize,
    /// Why the failed candidate calls failed (absent when none failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_errors: Option<Vec<String>>,
    /// Candidates asked for but not obtained.
    pub failed_candidates: usize,
    /// What the judge did (best-of-n only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeMetadata>,
    /// Votes per distinct answer, keyed by the answer as voted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_counts: Option<BTreeMap<String, usize>>,
    /// The judge's score of every candidate, `null` where it gave none (best-of-n only); with a
    /// process reward model, each particle's aggregated PRM score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<Option<f64>>>,
    /// What step-wise search (or PRM best-of-n) did: particles, PRM calls, fallback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchMetadata>,
    /// Index into `all_responses` of the returned answer.
    pub selected_index: usize,
    /// Why sampling stopped: `all_completed`, `decided` (the vote could no longer change) or
    /// `adaptive_confident`.
    pub stop_reason: &'static str,
    /// Votes per tool name, the first level of a `tool_hierarchical` vote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_name_counts: Option<BTreeMap<String, usize>>,
    /// What was voted on: `text_exact`, `text_regex`, `tool_name`, `tool_args`,
    /// `tool_hierarchical`, `tool_flat_all` or `tool_calls_exact`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vote_space: Option<&'static str>,
}

/// The judging step of best-of-n.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct JudgeMetadata {
    /// Judge calls made.
    pub calls: u32,
    /// The configured criterion: a built-in name or the free text.
    pub criterion: String,
    /// Distinct answers judged (identical candidates are judged once).
    pub distinct_candidates: usize,
    /// The judge's first failure, `null` when it had none.
    pub error: Option<String>,
    /// Judge calls that failed or whose reply could not be read.
    pub failures: u32,
    /// `self-consistency` when the judge gave no usable score and the vote decided, else `null`.
    pub fallback: Option<&'static str>,
    /// `pointwise` or `groupwise`.
    pub mode: &'static str,
}

impl Metadata {
    pub fn from_outcome(outcome: &Outcome) -> Self {
        let mut metadata = Self {
            agreement: None,
            algorithm: outcome.algorithm.as_str(),
            all_responses: outcome
                .candidates
                .iter()
                .map(|c| c.message.clone())
                .collect(),
            calls_cancelled: outcome.calls.cancelled,
            calls_completed: outcome.calls.completed,
            calls_sent: outcome.calls.sent,
            candidate_errors: (!outcome.failures.is_empty()).then(|| outcome.failures.clone()),
            failed_candidates: outcome.failed_candidates,
            judge: None,
            response_counts: None,
            scores: None,
            search: None,
            selected_index: outcome.selected,
            stop_reason: outcome.stop_reason.as_str(),
            tool_name_counts: None,
            vote_space: None,
        };
        match &outcome.detail {
            Detail::Vote(vote) => metadata.add_vote(vote),
            Detail::Stepwise(boxed) => {
                let (search, fallback_vote) = boxed.as_ref();
                metadata.scores = Some(search.particles.iter().map(|p| p.score).collect());
                metadata.search = Some(SearchMetadata::from(search));
                if let Some(vote) = fallback_vote {
                    metadata.add_vote(vote);
                }
            }
            Detail::Judge(judge) => {
                metadata.scores = Some(judge.scores.clone());
                metadata.judge = Some(JudgeMetadata::from(judge));
                if let Some(vote) = &judge.fallback {
                    metadata.add_vote(vote);
                }
            }
        }
        metadata
    }

    fn add_vote(&mut self, vote: &Vote) {
        let counts = |c: &[(String, usize)]| c.iter().cloned().collect::<BTreeMap<_, _>>();
        self.response_counts = Some(counts(&vote.counts));
        self.tool_name_counts = vote.name_counts.as_deref().map(counts);
        self.vote_space = Some(vote.space.as_str());
        self.agreement = Some(vote.agreement());
    }
}

/// Step-wise search (`particle-filtering`, `beam-search`) or PRM best-of-n.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SearchMetadata {
    /// `self-consistency` when the process reward model failed and the majority vote over the
    /// particles' answers decided, else `null`.
    pub fallback: Option<&'static str>,
    /// Why the process reward model could not be used, `null` when it could.
    pub fallback_reason: Option<String>,
    /// Generation calls made (one per particle per step).
    pub generation_calls: usize,
    /// Whether `max_calls` stopped the search before every particle finished.
    pub max_calls_reached: bool,
    /// Every particle with at least one step, in the order `all_responses` lists them.
    pub particles: Vec<ParticleMetadata>,
    /// Resampling (particle filtering) or beam selection events.
    pub resamplings: u32,
    /// Process reward model calls made (one per step).
    pub reward_calls: usize,
    /// Prompt tokens the process reward model reported (not counted in `usage`).
    pub reward_prompt_tokens: u64,
    /// Search steps run.
    pub steps: u32,
}

/// One particle of a search (or one candidate of PRM best-of-n).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ParticleMetadata {
    /// The particle each resampling copied this one from (indices into the particles of the
    /// step before), oldest first.
    pub ancestry: Vec<usize>,
    /// Whether it finished (stop token, end of answer or `max_steps`).
    pub finished: bool,
    /// Its aggregated PRM score (`rm_agg_method`), `null` if never scored.
    pub score: Option<f64>,
    /// The PRM's score of each step, from the last scoring.
    pub step_scores: Vec<f64>,
    /// Its steps, without the step token.
    pub steps: Vec<String>,
    /// Particle filtering: logit(score); otherwise the score.
    pub weight: Option<f64>,
}

impl From<&StepwiseDetail> for SearchMetadata {
    fn from(d: &StepwiseDetail) -> Self {
        Self {
            fallback: d.fallback_reason.as_ref().map(|_| "self-consistency"),
            fallback_reason: d.fallback_reason.clone(),
            generation_calls: d.generation_calls,
            max_calls_reached: d.max_calls_reached,
            particles: d
                .particles
                .iter()
                .map(|p| ParticleMetadata {
                    ancestry: p.ancestry.clone(),
                    finished: p.finished,
                    score: p.score,
                    step_scores: p.step_scores.clone(),
                    steps: p.steps.clone(),
                    weight: p.weight,
                })
                .collect(),
            resamplings: d.resamplings,
            reward_calls: d.reward_calls,
            reward_prompt_tokens: d.reward_prompt_tokens,
            steps: d.steps,
        }
    }
}

impl From<&JudgeDetail> for JudgeMetadata {
    fn from(j: &JudgeDetail) -> Self {
        Self {
            calls: j.calls,
            criterion: j.criterion.clone(),
            distinct_candidates: j.distinct,
            error: j.error.as_ref().map(|e| e.message.clone()),
            failures: j.failures,
            fallback: j.fallback.as_ref().map(|_| "self-consistency"),
            mode: mode_name(j.mode),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::algorithms::vote::VoteSpace;
    use crate::algorithms::{CallCounts, StopReason};
    use crate::config::{AlgorithmName, JudgeMode};
    use crate::judge::{JudgeFailure, JudgeFailureKind};
    use crate::providers::{Candidate, Usage};

    fn text(t: &str) -> Candidate {
        Candidate::from_message(json!({"role": "assistant", "content": t}), None, None)
    }

    fn outcome(algorithm: AlgorithmName, detail: Detail) -> Outcome {
        Outcome {
            algorithm,
            candidates: vec![text("42"), text("41"), text("42")],
            selected: 0,
            usage: Usage::default(),
            upstream_time: Duration::ZERO,
            failures: Vec::new(),
            failed_candidates: 0,
            system_fingerprint: None,
            detail,
            calls: CallCounts {
                sent: 3,
                completed: 3,
                cancelled: 0,
            },
            stop_reason: StopReason::AllCompleted,
        }
    }

    fn vote(space: VoteSpace, name_counts: Option<Vec<(String, usize)>>) -> Vote {
        Vote {
            selected: 0,
            // In order of first appearance, as the vote reports them.
            counts: vec![("42".into(), 2), ("41".into(), 1)],
            name_counts,
            eligible: 4,
            winner_votes: 2,
            space,
            tied: false,
        }
    }

    /// The bytes a client receives, to compare with what the worker always sent.
    fn wire(m: &Metadata) -> String {
        serde_json::to_string(m).unwrap()
    }

    #[test]
    fn a_vote_reports_counts_space_and_agreement() {
        let mut o = outcome(
            AlgorithmName::SelfConsistency,
            Detail::Vote(vote(VoteSpace::TextRegex, None)),
        );
        o.failures = vec!["the upstream answered 500: boom".into()];
        o.failed_candidates = 1;
        let expected = json!({
            "algorithm": "self-consistency",
            "all_responses": [
                {"role": "assistant", "content": "42"},
                {"role": "assistant", "content": "41"},
                {"role": "assistant", "content": "42"}
            ],
            "selected_index": 0,
            "calls_sent": 3,
            "calls_completed": 3,
            "calls_cancelled": 0,
            "stop_reason": "all_completed",
            "response_counts": {"42": 2, "41": 1},
            "vote_space": "text_regex",
            "agreement": 0.5,
            "failed_candidates": 1,
            "candidate_errors": ["the upstream answered 500: boom"]
        });
        let m = Metadata::from_outcome(&o);
        assert_eq!(serde_json::to_value(&m).unwrap(), expected);
        assert_eq!(wire(&m), expected.to_string());
    }

    #[test]
    fn a_hierarchical_tool_vote_adds_the_name_counts() {
        let o = outcome(
            AlgorithmName::SelfConsistency,
            Detail::Vote(vote(
                VoteSpace::ToolHierarchical,
                Some(vec![("calc".into(), 3), ("search".into(), 1)]),
            )),
        );
        let m = serde_json::to_value(Metadata::from_outcome(&o)).unwrap();
        assert_eq!(m["tool_name_counts"], json!({"calc": 3, "search": 1}));
        assert_eq!(m["vote_space"], "tool_hierarchical");
        assert!(m.get("candidate_errors").is_none() && m.get("judge").is_none());
    }

    #[test]
    fn a_judge_that_failed_reports_its_error_and_the_fallback_vote() {
        let detail = JudgeDetail {
            scores: vec![None, None, None],
            distinct: 2,
            mode: JudgeMode::Pointwise,
            criterion: "overall_quality".into(),
            calls: 2,
            failures: 2,
            error: Some(JudgeFailure {
                kind: JudgeFailureKind::Unparseable,
                message: "unparseable judge reply: \"meh\"".into(),
            }),
            fallback: Some(vote(VoteSpace::TextExact, None)),
        };
        let o = outcome(AlgorithmName::BestOfN, Detail::Judge(detail));
        let expected = json!({
            "algorithm": "best-of-n",
            "all_responses": [
                {"role": "assistant", "content": "42"},
                {"role": "assistant", "content": "41"},
                {"role": "assistant", "content": "42"}
            ],
            "selected_index": 0,
            "calls_sent": 3,
            "calls_completed": 3,
            "calls_cancelled": 0,
            "stop_reason": "all_completed",
            "scores": [null, null, null],
            "judge": {
                "mode": "pointwise", "criterion": "overall_quality", "distinct_candidates": 2,
                "calls": 2, "failures": 2, "error": "unparseable judge reply: \"meh\"",
                "fallback": "self-consistency"
            },
            "response_counts": {"42": 2, "41": 1},
            "vote_space": "text_exact",
            "agreement": 0.5,
            "failed_candidates": 0
        });
        let m = Metadata::from_outcome(&o);
        assert_eq!(serde_json::to_value(&m).unwrap(), expected);
        assert_eq!(wire(&m), expected.to_string());
    }

    #[test]
    fn a_judge_that_scored_sends_null_error_and_fallback_and_no_vote() {
        let detail = JudgeDetail {
            scores: vec![Some(0.5), Some(1.0), Some(0.5)],
            distinct: 2,
            mode: JudgeMode::Groupwise,
            criterion: "be brief".into(),
            calls: 1,
            failures: 0,
            error: None,
            fallback: None,
        };
        let mut o = outcome(AlgorithmName::BestOfN, Detail::Judge(detail));
        o.selected = 1;
        let m = serde_json::to_value(Metadata::from_outcome(&o)).unwrap();
        assert_eq!(m["selected_index"], 1);
        assert_eq!(m["scores"], json!([0.5, 1.0, 0.5]));
        assert_eq!(m["judge"]["error"], Value::Null);
        assert_eq!(m["judge"]["fallback"], Value::Null);
        assert_eq!(m["judge"]["mode"], "groupwise");
        for absent in [
            "response_counts",
            "vote_space",
            "agreement",
            "tool_name_counts",
        ] {
            assert!(m.get(absent).is_none(), "{absent} should be absent");
        }
    }
}
