//! Step-wise search guided by a process reward model (issue 9): particle filtering, beam
//! search and PRM-scored best-of-n. `steps` (joining, stop rules) and `weights` (logit,
//! softmax, resampling, selection) are pure; `search` runs the steps; the PRM client is
//! `crate::reward`. docs/algorithms.md says what each spends.

pub mod search;
pub mod steps;
pub mod weights;

use serde_json::Value;

use crate::config::StepwiseSettings;
use crate::providers::message_text;
use crate::reward::PrmClient;
use crate::reward::pooling::DEFAULT_PRM_SYSTEM;

pub use search::{run, run_prm_best_of_n};

/// A configuration's step-wise settings and its PRM, built once by the runtime.
pub struct StepwiseSetup {
    pub settings: StepwiseSettings,
    pub prm: PrmClient,
}

/// One particle (or best-of-n candidate) as the metadata reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticleReport {
    pub steps: Vec<String>,
    /// The PRM's score of each step, from its last scoring (empty if never scored).
    pub step_scores: Vec<f64>,
    /// The aggregated score (`rm_agg_method`) of the particle's last scoring.
    pub score: Option<f64>,
    /// Particle filtering: log-weight logit(score); beam search and best-of-n: the score.
    pub weight: Option<f64>,
    pub finished: bool,
    /// The particle it was copied from at each resampling, oldest first.
    pub ancestry: Vec<usize>,
}

/// What a step-wise search did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepwiseDetail {
    pub particles: Vec<ParticleReport>,
    /// Search steps run.
    pub steps: u32,
    pub generation_calls: usize,
    pub reward_calls: usize,
    pub reward_prompt_tokens: u64,
    /// Resampling or beam selection events.
    pub resamplings: u32,
    /// Why the PRM could not be used, when the answer came from the majority vote instead.
    pub fallback_reason: Option<String>,
    /// `max_calls` stopped the search before every particle finished.
    pub max_calls_reached: bool,
}

/// What the PRM is shown of the conversation: its system prompt (the request's first system
/// message, else the PRM's own) and the question (the last user message).
pub fn prm_prompt(messages: &[Value]) -> (String, String) {
    let text_of = |role: &str, last: bool| {
        let mut it = messages
            .iter()
            .filter(|m| m.get("role").and_then(Value::as_str) == Some(role));
        let m = if last { it.next_back() } else { it.next() };
        m.map(|m| message_text(m.get("content")))
    };
    let system = text_of("system", false)
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_PRM_SYSTEM.to_owned());
    (system, text_of("user", true).unwrap_or_default())
}

/// Splits a complete answer into steps at the step token (PRM best-of-n), dropping empty steps.
pub fn split_steps(text: &str, step_token: &str) -> Vec<String> {
    text.split(step_token)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn prm_sees_the_system_prompt_and_the_last_question() {
        let msgs = [
            json!({"role":"user","content":"first"}),
            json!({"role":"assistant","content":"a"}),
            json!({"role":"user","content":[{"type":"text","text":"What is 6*7?"}]}),
        ];
        let (system, q) = prm_prompt(&msgs);
        assert_eq!(system, DEFAULT_PRM_SYSTEM);
        assert_eq!(q, "What is 6*7?");
        let msgs = [
            json!({"role":"system","content":"Be brief."}),
            json!({"role":"user","content":"Q"}),
        ];
        assert_eq!(prm_prompt(&msgs), ("Be brief.".into(), "Q".into()));
    }

    #[test]
    fn answers_split_into_non_empty_steps() {
        assert_eq!(
            split_steps("a\n\n\n\nb\n\n c \n\n", "\n\n"),
            vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]
        );
        assert!(split_steps("", "\n\n").is_empty());
    }
}
