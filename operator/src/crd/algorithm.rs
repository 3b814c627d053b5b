//! The algorithm block (`spec.algorithm`) and the judge of best-of-n (`spec.judge`).

use inferscale_worker::config::stepwise::{
    MAX_CALLS_LIMIT, MAX_STEP_TOKENS_LIMIT, MAX_STEPS_LIMIT,
};
use inferscale_worker::config::{
    AdaptiveRuleName, AlgorithmName, DEFAULT_MAX_BUDGET, JudgeMode, MAX_BUDGET_LIMIT, Resampling,
    Selection, ToolVote,
};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ModelSpec;

fn default_max_budget() -> Option<i32> {
    i32::try_from(DEFAULT_MAX_BUDGET).ok()
}

/// The algorithm that spends the budget, and its settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("self.name == 'self-consistency' || (!has(self.toolVote) && !has(self.excludeArgs) && !has(self.regexPatterns))")
        .message("toolVote, excludeArgs and regexPatterns are only valid with algorithm self-consistency")
)]
#[x_kube(
    validation = Rule::new(format!("(!has(self.defaultBudget) || self.defaultBudget >= 1) && (!has(self.maxBudget) || (self.maxBudget >= 1 && self.maxBudget <= {MAX_BUDGET_LIMIT})) && (!has(self.defaultBudget) || self.defaultBudget <= (has(self.maxBudget) ? self.maxBudget : {MAX_BUDGET_LIMIT}))"))
        .message(kube::core::Message::Message(format!("budgets must satisfy 1 <= defaultBudget <= maxBudget <= {MAX_BUDGET_LIMIT}")))
)]
#[x_kube(
    validation = Rule::new("self.name == 'self-consistency' || !has(self.adaptive)")
        .message("adaptive is only valid with algorithm self-consistency")
)]
#[x_kube(
    validation = Rule::new(format!("!has(self.adaptive) || !has(self.adaptive.minSamples) || self.adaptive.minSamples <= (has(self.maxBudget) ? self.maxBudget : {DEFAULT_MAX_BUDGET})"))
        .message("adaptive.minSamples must not exceed maxBudget")
)]
#[x_kube(
    validation = Rule::new("self.name != 'self-consistency' || (!has(self.stepToken) && !has(self.stopToken) && !has(self.maxSteps) && !has(self.maxStepTokens) && !has(self.maxCalls))")
        .message("stepToken, stopToken, maxSteps, maxStepTokens and maxCalls are only valid with algorithm particle-filtering, beam-search or best-of-n")
)]
#[x_kube(
    validation = Rule::new("self.name == 'beam-search' || !has(self.beamWidth)")
        .message("beamWidth is only valid with algorithm beam-search")
)]
#[x_kube(
    validation = Rule::new("self.name != 'beam-search' || has(self.beamWidth)")
        .message("algorithm beam-search needs beamWidth: the partial answers kept per step")
        .reason(Reason::FieldValueRequired)
)]
#[x_kube(
    validation = Rule::new("self.name == 'particle-filtering' || (!has(self.resampling) && !has(self.selection))")
        .message("resampling and selection are only valid with algorithm particle-filtering")
)]
#[x_kube(
    validation = Rule::new(format!("!has(self.beamWidth) || ((has(self.maxBudget) ? self.maxBudget : {DEFAULT_MAX_BUDGET}) % self.beamWidth == 0 && (!has(self.defaultBudget) || self.defaultBudget % self.beamWidth == 0))"))
        .message("beam-search expands each of beamWidth beams budget/beamWidth times: maxBudget and defaultBudget must be multiples of beamWidth")
)]
#[serde(rename_all = "camelCase")]
pub struct AlgorithmSpec {
    /// `self-consistency` (majority vote over answers or tool calls), `best-of-n` (an LLM judge or
    /// a process reward model picks the best candidate), `particle-filtering` (budget = particles
    /// extended step by step, scored by the PRM and resampled) or `beam-search` (the best
    /// beamWidth partial answers kept per step). The last two need spec.reward.
    pub name: AlgorithmName,
    /// How tool-call candidates are voted on (self-consistency only): `tool_name`, `tool_args`,
    /// `tool_hierarchical` or `tool_flat_all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_vote: Option<ToolVote>,
    /// Tool argument names ignored when voting, e.g. timestamps or request ids
    /// (self-consistency only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_args: Option<Vec<String>>,
    /// Regular expressions whose first match (group 1 if present) is what text answers are voted
    /// on (self-consistency only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_patterns: Option<Vec<String>>,
    /// Candidates per request when the request does not say (1 to maxBudget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_budget: Option<i32>,
    /// Largest budget a request may ask for (1 to 1000, default 16: each unit is one paid
    /// upstream call).
    #[serde(
        default = "default_max_budget",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_budget: Option<i32>,
    /// Adaptive self-consistency: calls run in a rolling window and sampling stops once a
    /// statistical rule is confident in the current leader (maxBudget stays the most calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveSpec>,
    /// Which parts of the algorithm a request may override with its `algorithm` field:
    /// `name`, `toolVote`, `adaptive` (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_override: Option<Vec<RequestOverrideKey>>,
    /// Step-wise search: the text that ends a reasoning step (default a blank line, `"\n\n"`).
    /// Each generation call stops there, and the PRM scores the answer step by step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self != ''").message("stepToken must not be empty"))]
    #[schemars(length(max = 64))]
    pub step_token: Option<String>,
    /// Step-wise search: a step containing this text finishes its answer (e.g. `\boxed`). Unset:
    /// an answer finishes when the model stops on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self != ''").message("stopToken must not be empty"))]
    #[schemars(length(max = 64))]
    pub stop_token: Option<String>,
    /// Step-wise search: most steps of one answer (1 to 256, default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_STEPS_LIMIT))]
    pub max_steps: Option<i32>,
    /// Step-wise search: most tokens one step may generate (1 to 32768, default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_STEP_TOKENS_LIMIT))]
    pub max_step_tokens: Option<i32>,
    /// Beam search: partial answers kept after each step. The budget must be a multiple of it; each
    /// beam is expanded budget/beamWidth times per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_BUDGET_LIMIT))]
    pub beam_width: Option<i32>,
    /// Particle filtering: how particles are resampled from their weights after each step,
    /// `multinomial` or `systematic` (lower variance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resampling: Option<Resampling>,
    /// Particle filtering: which finished particle answers, `argmax` (the highest weight) or
    /// `sample` (drawn by weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
    /// Step-wise search: most generation calls one request may make (default maxBudget x
    /// maxSteps; the PRM is called at most once per step more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_CALLS_LIMIT))]
    pub max_calls: Option<i32>,
}

/// Adaptive self-consistency settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.threshold) || (self.threshold > 0.0 && self.threshold <= 1.0)")
        .message("adaptive.threshold must be above 0 and at most 1")
)]
#[x_kube(
    validation = Rule::new("!has(self.parallelism) || self.parallelism >= 1")
        .message("adaptive.parallelism must be at least 1")
)]
#[x_kube(
    validation = Rule::new("!has(self.minSamples) || self.minSamples >= 1")
        .message("adaptive.minSamples must be at least 1")
)]
#[serde(rename_all = "camelCase")]
pub struct AdaptiveSpec {
    /// `beta` (Beta posterior, threshold 0.95 by default), `dirichlet` (Dirichlet posterior,
    /// 0.95) or `its_hub` (leader's share after 2, 4, 8, … samples, 0.75).
    pub rule: AdaptiveRuleName,
    /// Confidence at which sampling stops, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Successful samples before the rule is consulted (default 2, at most maxBudget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<i32>,
    /// Calls in flight at once (default the smaller of the budget and 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
}

/// A part of the algorithm a request may override.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RequestOverrideKey {
    Name,
    ToolVote,
    Adaptive,
}

/// The LLM judge of best-of-n: a model block like `spec.model`, plus how it judges.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JudgeSpec {
    #[serde(flatten)]
    pub model: ModelSpec,
    /// `pointwise` (one call per distinct candidate, scored 0-10) or `groupwise` (one call that
    /// sees all candidates and selects the best).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<JudgeMode>,
    /// `overall_quality`, `multi_step_tool_judge`, or free text describing a good answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criterion: Option<String>,
    /// Sampling temperature of judge calls (0 to 2, default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Maximum tokens of a judge reply (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens: Option<i32>,
    /// How many candidates a groupwise judge selects (the first selected wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub top_n: Option<i32>,
}
