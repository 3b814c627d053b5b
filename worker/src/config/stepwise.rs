//! Step-wise search with a process reward model (PRM): particle filtering, beam search and
//! PRM-scored best-of-n. The configuration's step-wise fields, their defaults, and the
//! configure-time rules that tie them together (issue 9). Pure: no I/O.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validate::{ConfigError, check_endpoint};
use super::{AlgorithmName, WorkerConfig, limits};

/// The reward-model name that means "the LLM judge" rather than a PRM.
pub const LLM_JUDGE: &str = "llm-judge";
/// Default step delimiter: a blank line, as the reference's guide uses.
pub const DEFAULT_STEP_TOKEN: &str = "\n\n";
/// Default PRM step tag (Qwen2.5-Math-PRM's).
pub const DEFAULT_RM_STEP_TAG: &str = "<extra_0>";
/// Default most steps of one search.
pub const DEFAULT_MAX_STEPS: u32 = 32;
/// Largest `max_steps` accepted.
pub const MAX_STEPS_LIMIT: u32 = 256;
/// Default token cap of one step.
pub const DEFAULT_MAX_STEP_TOKENS: u32 = 512;
/// Largest `max_step_tokens` accepted.
pub const MAX_STEP_TOKENS_LIMIT: u32 = 32_768;
/// Largest `max_calls` accepted: a full search at the largest budget and step count.
pub const MAX_CALLS_LIMIT: u32 = super::validate::MAX_BUDGET_LIMIT * MAX_STEPS_LIMIT;
/// Longest step token, stop token or step tag accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 64;
/// Most step tokens accepted.
pub const MAX_STEP_TOKEN_COUNT: usize = 8;

/// `step_token`: one delimiter or several (OpenAI's `stop` accepts up to four; vLLM more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StepTokens {
    One(String),
    Many(Vec<String>),
}

impl StepTokens {
    /// The delimiters, in configuration order.
    pub fn as_slice(&self) -> &[String] {
        match self {
            StepTokens::One(s) => std::slice::from_ref(s),
            StepTokens::Many(v) => v,
        }
    }
}

/// How a PRM's per-step scores become one score of a (partial) answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RmAggMethod {
    /// The score the model gives the answer as a whole: for a PRM, its last step's score.
    #[default]
    Model,
    /// The product of the step scores.
    Prod,
    /// The lowest step score.
    Min,
    /// The last step's score.
    Last,
}

impl RmAggMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            RmAggMethod::Model => "model",
            RmAggMethod::Prod => "prod",
            RmAggMethod::Min => "min",
            RmAggMethod::Last => "last",
        }
    }
}

/// How particle filtering resamples the live particles after each step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resampling {
    /// Independent draws from softmax(weights) (the reference's behaviour).
    #[default]
    Multinomial,
    /// One draw, evenly spaced pointers: lower variance.
    Systematic,
}

/// How the answer is picked among the finished particles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The highest weight.
    #[default]
    Argmax,
    /// A draw from softmax(weights).
    Sample,
}

/// The step-wise settings with defaults applied, for the runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct StepwiseSettings {
    /// PRM served model name (`model` of the pooling request).
    pub rm_name: String,
    /// PRM base URL, without a trailing `/` or `/v1`.
    pub rm_base_url: String,
    pub rm_step_tag: String,
    pub rm_agg_method: RmAggMethod,
    pub step_tokens: Vec<String>,
    pub stop_token: Option<String>,
    pub max_steps: u32,
    pub max_step_tokens: u32,
    /// Beam search only.
    pub beam_width: Option<u32>,
    pub resampling: Resampling,
    pub selection: Selection,
    /// Most generation calls one request may make.
    pub max_calls: u32,
}

impl AlgorithmName {
    /// Particle filtering or beam search: generation one step at a time, guided by a PRM.
    pub fn is_stepwise(self) -> bool {
        matches!(
            self,
            AlgorithmName::ParticleFiltering | AlgorithmName::BeamSearch
        )
    }
}

impl WorkerConfig {
    /// The PRM's name when `rm_name` names one (anything but `llm-judge`).
    pub fn prm_name(&self) -> Option<&str> {
        self.rm_name.as_deref().filter(|n| *n != LLM_JUDGE)
    }

    /// Whether the algorithm scores with a PRM: step-wise search, or best-of-n with a PRM.
    pub fn uses_prm(&self) -> bool {
        self.alg.is_stepwise() || (self.alg == AlgorithmName::BestOfN && self.prm_name().is_some())
    }

    /// Whether best-of-n asks the LLM judge (no PRM named).
    pub fn uses_llm_judge(&self) -> bool {
        self.alg == AlgorithmName::BestOfN && self.prm_name().is_none()
    }

    pub fn max_steps(&self) -> u32 {
        self.max_steps.unwrap_or(DEFAULT_MAX_STEPS)
    }

    /// `max_calls`, by default enough for a whole search at `max_budget`.
    pub fn max_calls(&self) -> u32 {
        self.max_calls
            .unwrap_or_else(|| self.max_budget().saturating_mul(self.max_steps()))
    }

    /// The step-wise settings with defaults, when the algorithm uses a PRM; call after
    /// [`WorkerConfig::validate`].
    pub fn stepwise_settings(&self) -> Option<StepwiseSettings> {
        if !self.uses_prm() {
            return None;
        }
        Some(StepwiseSettings {
            rm_name: self.prm_name()?.to_owned(),
            rm_base_url: prm_base_url(self.rm_endpoint.as_deref()?),
            rm_step_tag: self
                .rm_step_tag
                .clone()
                .unwrap_or_else(|| DEFAULT_RM_STEP_TAG.to_owned()),
            rm_agg_method: self.rm_agg_method.unwrap_or_default(),
            step_tokens: self.step_token.as_ref().map_or_else(
                || vec![DEFAULT_STEP_TOKEN.to_owned()],
                |t| t.as_slice().to_vec(),
            ),
            stop_token: self.stop_token.clone(),
            max_steps: self.max_steps(),
            max_step_tokens: self.max_step_tokens.unwrap_or(DEFAULT_MAX_STEP_TOKENS),
            beam_width: self.beam_width,
            resampling: self.resampling.unwrap_or_default(),
            selection: self.selection.unwrap_or_default(),
            max_calls: self.max_calls(),
        })
    }
}

/// `{rm_endpoint}` without a trailing `/` or `/v1`: the pooling route is `{base}/pooling`.
pub fn prm_base_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    trimmed
        .strip_suffix("/v1")
        .unwrap_or(trimmed)
        .trim_end_matches('/')
        .to_owned()
}

fn invalid(param: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        param,
        message: message.into(),
    }
}

/// The configure-time rules of the step-wise fields (see docs/configuration.md).
pub(super) fn check_stepwise(cfg: &WorkerConfig) -> Result<(), ConfigError> {
    let alg = cfg.alg.as_str();
    match cfg.rm_name.as_deref() {
        Some(name) if name.trim().is_empty() => {
            return Err(invalid("rm_name", "rm_name must not be empty"));
        }
        Some(LLM_JUDGE) if cfg.alg.is_stepwise() => {
            return Err(invalid(
                "rm_name",
                format!(
                    "{alg} scores every step with a process reward model; rm_name \"llm-judge\" cannot do that: name the PRM served at rm_endpoint"
                ),
            ));
        }
        None if cfg.alg.is_stepwise() => {
            return Err(invalid(
                "rm_name",
                format!(
                    "{alg} needs a process reward model: set rm_name (its served model name) and rm_endpoint"
                ),
            ));
        }
        Some(name) if name != LLM_JUDGE && cfg.alg == AlgorithmName::SelfConsistency => {
            return Err(invalid(
                "rm_name",
                format!(
                    "rm_name {name:?} (a process reward model) applies to best-of-n, particle-filtering and beam-search, not to self-consistency"
                ),
            ));
        }
        _ => {}
    }
    match (&cfg.rm_endpoint, cfg.uses_prm()) {
        (None, true) => {
            return Err(invalid(
                "rm_endpoint",
                format!(
                    "{alg} with the process reward model {:?} needs rm_endpoint, the base URL of the server that serves it (e.g. http://prm:8000)",
                    cfg.rm_name.as_deref().unwrap_or_default()
                ),
            ));
        }
        (Some(_), false) => {
            return Err(invalid(
                "rm_endpoint",
                "rm_endpoint is only used with a process reward model: set rm_name to the PRM's name and alg to best-of-n, particle-filtering or beam-search",
            ));
        }
        (Some(url), true) => {
            if url == "auto" {
                return Err(invalid(
                    "rm_endpoint",
                    "rm_endpoint must be an http(s) URL; \"auto\" has no meaning for a PRM server",
                ));
            }
            check_endpoint("rm_endpoint", url)?;
        }
        (None, false) => {}
    }
    if let Some(tokens) = &cfg.step_token {
        let tokens = tokens.as_slice();
        if tokens.is_empty() || tokens.iter().any(String::is_empty) {
            return Err(invalid(
                "step_token",
                "step_token must not be empty: each step ends at it (default \"\\n\\n\")",
            ));
        }
        if tokens.len() > MAX_STEP_TOKEN_COUNT {
            return Err(invalid(
                "step_token",
                format!(
                    "step_token may list at most {MAX_STEP_TOKEN_COUNT} delimiters, got {}",
                    tokens.len()
                ),
            ));
        }
        check_token_length("step_token", tokens)?;
    }
    for (param, value) in [
        ("stop_token", &cfg.stop_token),
        ("rm_step_tag", &cfg.rm_step_tag),
    ] {
        if let Some(v) = value {
            if v.is_empty() {
                return Err(invalid(param, format!("{param} must not be empty")));
            }
            check_token_length(param, std::slice::from_ref(v))?;
        }
    }
    limits::check_count("max_steps", cfg.max_steps, 1, MAX_STEPS_LIMIT)?;
    limits::check_count(
        "max_step_tokens",
        cfg.max_step_tokens,
        1,
        MAX_STEP_TOKENS_LIMIT,
    )?;
    limits::check_count("max_calls", cfg.max_calls, 1, MAX_CALLS_LIMIT)?;
    check_beam_width(cfg)
}

fn check_token_length(param: &'static str, values: &[String]) -> Result<(), ConfigError> {
    match values.iter().find(|v| v.len() > MAX_TOKEN_BYTES) {
        Some(v) => Err(invalid(
            param,
            format!(
                "{param} must be at most {MAX_TOKEN_BYTES} bytes, got {} bytes",
                v.len()
            ),
        )),
        None => Ok(()),
    }
}

fn check_beam_width(cfg: &WorkerConfig) -> Result<(), ConfigError> {
    let max = cfg.max_budget();
    let width = match (cfg.beam_width, cfg.alg) {
        (None, AlgorithmName::BeamSearch) => {
            return Err(invalid(
                "beam_width",
                "beam-search needs beam_width: how many partial answers are kept after each step (the budget must be a multiple of it)",
            ));
        }
        (Some(_), alg) if alg != AlgorithmName::BeamSearch => {
            return Err(invalid(
                "beam_width",
                format!(
                    "beam_width applies to beam-search only, not to {}",
                    alg.as_str()
                ),
            ));
        }
        (Some(w), _) => w,
        (None, _) => return Ok(()),
    };
    if !(1..=max).contains(&width) {
        return Err(invalid(
            "beam_width",
            format!("beam_width must be between 1 and max_budget ({max}), got {width}"),
        ));
    }
    for (param, value) in [("max_budget", max), ("budget", cfg.default_budget())] {
        if !value.is_multiple_of(width) {
            return Err(invalid(
                param,
                format!(
                    "{param} ({value}) must be a multiple of beam_width ({width}): beam search expands each of the beam_width partial answers budget/beam_width times"
                ),
            ));
        }
    }
    Ok(())
}

/// The per-request budget rule of beam search, shared by `/configure` and the request path:
/// the message names both numbers.
pub fn check_beam_budget(budget: u32, beam_width: u32) -> Result<(), String> {
    if beam_width == 0 || !budget.is_multiple_of(beam_width) || budget < beam_width {
        Err(format!(
            "budget ({budget}) must be a multiple of beam_width ({beam_width}) for beam-search"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> WorkerConfig {
        serde_json::from_str(json).unwrap()
    }

    const PF: &str = r#""model":"hosted_vllm/qwen","endpoint":"http://127.0.0.1:9/v1","alg":"particle-filtering""#;
    const PRM: &str = r#""rm_name":"Qwen/Qwen2.5-Math-PRM-7B","rm_endpoint":"http://127.0.0.1:9""#;

    fn refused(json: &str) -> (&'static str, String) {
        let e = cfg(json).validate().unwrap_err();
        (e.param().unwrap_or("<none>"), e.to_string())
    }

    #[test]
    fn guide_era_particle_filtering_config_is_accepted_with_defaults() {
        let c = cfg(&format!(
            r#"{{{PF},{PRM},"step_token":"\n\n","stop_token":"\\boxed","rm_device":"cuda:0","rm_agg_method":"model"}}"#
        ));
        c.validate().unwrap();
        let s = c.stepwise_settings().unwrap();
        assert_eq!(s.rm_name, "Qwen/Qwen2.5-Math-PRM-7B");
        assert_eq!(s.rm_base_url, "http://127.0.0.1:9");
        assert_eq!(s.rm_step_tag, "<extra_0>");
        assert_eq!(s.step_tokens, vec!["\n\n".to_owned()]);
        assert_eq!(s.stop_token.as_deref(), Some("\\boxed"));
        assert_eq!((s.max_steps, s.max_step_tokens), (32, 512));
        assert_eq!(s.max_calls, 16 * 32);
        assert_eq!(s.resampling, Resampling::Multinomial);
        assert_eq!(s.selection, Selection::Argmax);
    }

    #[test]
    fn step_token_may_be_a_list() {
        let c = cfg(&format!(r#"{{{PF},{PRM},"step_token":["\n\n","\nStep"]}}"#));
        c.validate().unwrap();
        assert_eq!(c.stepwise_settings().unwrap().step_tokens.len(), 2);
    }

    #[test]
    fn prm_base_url_drops_v1_and_slashes() {
        assert_eq!(prm_base_url("http://prm:8000/v1/"), "http://prm:8000");
        assert_eq!(prm_base_url("http://prm:8000/"), "http://prm:8000");
        assert_eq!(prm_base_url("http://prm:8000/x"), "http://prm:8000/x");
    }

    #[test]
    fn step_wise_search_without_a_prm_names_the_missing_field() {
        let (param, msg) = refused(&format!("{{{PF}}}"));
        assert_eq!(param, "rm_name");
        assert!(
            msg.contains("particle-filtering needs a process reward model"),
            "{msg}"
        );
        let (param, _) = refused(&format!(r#"{{{PF},"rm_name":"prm"}}"#));
        assert_eq!(param, "rm_endpoint");
        let (param, msg) = refused(&format!(
            r#"{{{PF},"rm_name":"llm-judge","rm_endpoint":"http://127.0.0.1:9"}}"#
        ));
        assert_eq!(param, "rm_name");
        assert!(msg.contains("llm-judge"), "{msg}");
        let (param, _) = refused(
            r#"{"model":"hosted_vllm/q","endpoint":"http://127.0.0.1:9","alg":"beam-search","beam_width":2,"rm_name":"llm-judge"}"#,
        );
        assert_eq!(param, "rm_name");
    }

    #[test]
    fn prm_fields_out_of_place_are_refused() {
        let (param, _) =
            refused(r#"{"model":"m","rm_name":"prm","rm_endpoint":"http://127.0.0.1:9"}"#);
        assert_eq!(param, "rm_name");
        let (param, _) = refused(r#"{"model":"m","rm_endpoint":"http://127.0.0.1:9"}"#);
        assert_eq!(param, "rm_endpoint");
        let (param, _) = refused(&format!(r#"{{{PF},"rm_name":"prm","rm_endpoint":"auto"}}"#));
        assert_eq!(param, "rm_endpoint");
        let (param, _) = refused(&format!(
            r#"{{{PF},"rm_name":"prm","rm_endpoint":"prm:8000"}}"#
        ));
        assert_eq!(param, "rm_endpoint");
        let (param, _) = refused(&format!(r#"{{{PF},{PRM},"adaptive":{{"rule":"beta"}}}}"#));
        assert_eq!(param, "adaptive");
    }

    #[test]
    fn prm_best_of_n_needs_no_judge_and_llm_judge_best_of_n_still_works() {
        let c = cfg(&format!(
            r#"{{"model":"hosted_vllm/q","endpoint":"http://127.0.0.1:9","alg":"best-of-n",{PRM}}}"#
        ));
        c.validate().unwrap();
        assert!(c.uses_prm() && !c.uses_llm_judge());
        let routes = super::super::routing::resolve_routes(&c, None).unwrap();
        assert!(routes.judge.is_none());
        let c = cfg(r#"{"model":"m","alg":"best-of-n","rm_name":"llm-judge"}"#);
        c.validate().unwrap();
        assert!(c.uses_llm_judge() && c.stepwise_settings().is_none());
    }

    #[test]
    fn empty_or_oversized_tokens_are_refused() {
        for (extra, param) in [
            (r#""step_token":"""#, "step_token"),
            (r#""step_token":[]"#, "step_token"),
            (r#""step_token":["\n\n",""]"#, "step_token"),
            (r#""stop_token":"""#, "stop_token"),
            (r#""rm_step_tag":"""#, "rm_step_tag"),
        ] {
            let (p, msg) = refused(&format!(r#"{{{PF},{PRM},{extra}}}"#));
            assert_eq!(p, param, "{extra}: {msg}");
        }
        let (p, _) = refused(&format!(
            r#"{{{PF},"rm_name":" ","rm_endpoint":"http://127.0.0.1:9"}}"#
        ));
        assert_eq!(p, "rm_name");
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        let (p, _) = refused(&format!(r#"{{{PF},{PRM},"stop_token":"{long}"}}"#));
        assert_eq!(p, "stop_token");
    }

    #[test]
    fn numbers_are_bounded_and_name_their_field() {
        for (extra, param) in [
            (r#""max_steps":0"#, "max_steps"),
            (r#""max_steps":257"#, "max_steps"),
            (r#""max_step_tokens":0"#, "max_step_tokens"),
            (r#""max_step_tokens":32769"#, "max_step_tokens"),
            (r#""max_calls":0"#, "max_calls"),
            (r#""max_calls":4000000000"#, "max_calls"),
        ] {
            let (p, msg) = refused(&format!(r#"{{{PF},{PRM},{extra}}}"#));
            assert_eq!(p, param, "{extra}: {msg}");
        }
        cfg(&format!(
            r#"{{{PF},{PRM},"max_steps":256,"max_step_tokens":32768,"max_calls":256000}}"#
        ))
        .validate()
        .unwrap();
    }

    #[test]
    fn beam_width_rules() {
        let bs = r#""model":"hosted_vllm/q","endpoint":"http://127.0.0.1:9","alg":"beam-search""#;
        cfg(&format!(r#"{{{bs},{PRM},"beam_width":2,"budget":8}}"#))
            .validate()
            .unwrap();
        let (p, _) = refused(&format!(r#"{{{bs},{PRM}}}"#));
        assert_eq!(p, "beam_width");
        let (p, _) = refused(&format!(r#"{{{bs},{PRM},"beam_width":0}}"#));
        assert_eq!(p, "beam_width");
        let (p, _) = refused(&format!(r#"{{{bs},{PRM},"beam_width":17}}"#));
        assert_eq!(p, "beam_width");
        let (p, msg) = refused(&format!(
            r#"{{{bs},{PRM},"beam_width":3,"max_budget":12,"budget":4}}"#
        ));
        assert_eq!(p, "budget");
        assert!(
            msg.contains("budget (4)") && msg.contains("beam_width (3)"),
            "{msg}"
        );
        let (p, _) = refused(&format!(r#"{{{bs},{PRM},"beam_width":3,"budget":3}}"#));
        assert_eq!(p, "max_budget");
        let (p, _) = refused(&format!(r#"{{{PF},{PRM},"beam_width":2}}"#));
        assert_eq!(p, "beam_width");
        assert!(check_beam_budget(8, 4).is_ok());
        let msg = check_beam_budget(6, 4).unwrap_err();
        assert!(
            msg.contains("budget (6)") && msg.contains("beam_width (4)"),
            "{msg}"
        );
        assert!(check_beam_budget(2, 4).is_err());
    }

    #[test]
    fn bedrock_generator_cannot_run_step_wise_search() {
        let (p, msg) = refused(&format!(
            r#"{{"model":"bedrock/anthropic.claude","alg":"particle-filtering",{PRM},"extra_args":{{"aws_region_name":"us-east-1"}}}}"#
        ));
        assert_eq!(p, "model", "{msg}");
        assert!(msg.contains("OpenAI-compatible"), "{msg}");
    }

    #[test]
    fn rm_api_key_is_a_secret_reference_and_never_debug_printed() {
        let c = cfg(&format!(r#"{{{PF},{PRM},"rm_api_key":"sk-prm-secret"}}"#));
        c.validate().unwrap();
        let refs: Vec<String> = c.secret_references().into_iter().map(|(p, _)| p).collect();
        assert_eq!(refs, ["rm_api_key"]);
        assert!(!format!("{c:?}").contains("sk-prm-secret"));
    }
}
