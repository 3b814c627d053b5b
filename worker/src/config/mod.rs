//! The worker's configuration: one type for `POST /configure`, the `--config` file and the
//! ConfigMap the operator writes. Field names follow the reference service's guide (snake_case).
//!
//! This module is compiled without the `server` feature too, so the operator shares the type
//! instead of keeping a copy.

pub mod bedrock;
pub mod limits;
pub mod routing;
mod secret;
pub mod stepwise;
mod validate;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use secret::{LiveSecret, SecretAllowList, SecretError, SecretValue};
pub use stepwise::{Resampling, RmAggMethod, Selection, StepTokens, StepwiseSettings};
pub use validate::{AdaptiveField, ConfigError, MAX_BUDGET_LIMIT, check_adaptive};

/// Default number of candidates when neither the request nor the configuration names one.
pub const DEFAULT_BUDGET: u32 = 4;
/// Largest budget a request may ask for when the configuration sets no `max_budget`. Each unit
/// is one paid upstream call, so the default is deliberately far below [`MAX_BUDGET_LIMIT`] (the
/// reference service's 1000); the operator's CRD uses the same default.
pub const DEFAULT_MAX_BUDGET: u32 = 16;
/// Default TCP port of the worker.
pub const DEFAULT_PORT: u16 = 8108;

/// Everything `/configure` accepts. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// `litellm` (route by model string, as the guide does), `openai`, `bedrock`,
    /// `openai-compatible` (any OpenAI-style server, vLLM included). An explicit provider wins over
    /// the model-string prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderKind>,
    /// Upstream base URL (for example `http://vllm:8000/v1`) or `auto` to route by model string.
    #[serde(default = "auto")]
    pub endpoint: String,
    /// Upstream API key: inline text, `{"file": path}` or `{"env": NAME}`. Never echoed. In a
    /// `/configure` body, the file and env forms must be allowed by the worker's start-up flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretValue>,
    /// Model string. LiteLLM-style prefixes (`openai/`, `bedrock/`, `hosted_vllm/`) select the provider.
    pub model: String,
    /// The algorithm that spends the budget.
    #[serde(default)]
    pub alg: AlgorithmName,
    /// How tool-call candidates are voted on (self-consistency only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_vote: Option<ToolVote>,
    /// Adaptive self-consistency: sample in a rolling window and stop once a statistical rule is
    /// confident in the current leader. The budget stays the most calls a request may make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveConfig>,
    /// Which parts of the algorithm a request may override with its `algorithm` field
    /// (default: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_request_override: Vec<OverrideKey>,
    /// Benchmark aid: `false` makes self-consistency wait for every call even when the vote is
    /// already decided (default `true`; the answer is the same either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_decision: Option<bool>,
    /// Tool argument names ignored when voting (timestamps, request ids). `exclude_tool_args` is
    /// accepted as an alias.
    #[serde(
        default,
        alias = "exclude_tool_args",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exclude_args: Vec<String>,
    /// Regular expressions whose first match (group 1 if present) is what text answers are voted
    /// on. Matched case-insensitively with `.` matching newlines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_patterns: Option<Vec<String>>,
    /// Default budget (candidates per request) when the request does not set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<u32>,
    /// Largest budget a request may ask for (default 16, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget: Option<u32>,
    /// Default sampling temperature for candidate calls when the request sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Reward model: `llm-judge` (best-of-n with the LLM judge) or the served name of a process
    /// reward model at `rm_endpoint` (PRM best-of-n, particle filtering, beam search).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rm_name: Option<String>,
    /// Base URL of the PRM server (vLLM `--runner pooling`); the worker POSTs `{rm_endpoint}/pooling`
    /// (a trailing `/v1` is dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rm_endpoint: Option<String>,
    /// The PRM server's API key (same forms as `api_key`). Only ever sent to `rm_endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rm_api_key: Option<SecretValue>,
    /// The PRM's step separator in its input (default `<extra_0>`, Qwen2.5-Math-PRM's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rm_step_tag: Option<String>,
    /// How step scores become an answer's score: `model` (default), `prod`, `min`, `last`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rm_agg_method: Option<RmAggMethod>,
    /// Accepted for the reference's configurations and ignored: the PRM runs in its own server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rm_device: Option<String>,
    /// Where a step ends (string or list; default `"\n\n"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_token: Option<StepTokens>,
    /// A step containing this text finishes its particle (e.g. `\boxed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_token: Option<String>,
    /// Most steps of one search (default 32, at most 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    /// Token cap of one step (default 512, at most 32768).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_step_tokens: Option<u32>,
    /// Beam search: partial answers kept after each step; the budget must be a multiple of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beam_width: Option<u32>,
    /// Particle filtering: `multinomial` (default) or `systematic` resampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resampling: Option<Resampling>,
    /// Particle filtering: `argmax` (default) or `sample` among the finished particles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
    /// Most generation calls of one step-wise request (default max_budget x max_steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u32>,
    /// Judge model string (same routing rules as `model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_model: Option<String>,
    /// Judge provider; defaults to routing by `judge_model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_provider: Option<ProviderKind>,
    /// Judge base URL or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_base_url: Option<String>,
    /// Judge API key (same forms as `api_key`). Defaults to `api_key` only when the judge calls
    /// the same provider at the same origin (scheme, host and port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_api_key: Option<SecretValue>,
    /// `pointwise` (one call per distinct candidate) or `groupwise` (one call ranking all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_mode: Option<JudgeMode>,
    /// `overall_quality`, `multi_step_tool_judge`, or free text describing what a good answer is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_criterion: Option<String>,
    /// How many candidates a groupwise judge selects (the first selected wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_top_n: Option<u32>,
    /// Sampling temperature of judge calls (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_temperature: Option<f64>,
    /// Maximum tokens of a judge reply (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_max_tokens: Option<u32>,
    /// Accepted for compatibility with the reference; judge outcomes are always logged at debug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_judge_logging: Option<bool>,
    /// Provider options, e.g. `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`,
    /// `aws_region_name` for Bedrock. Values may be strings or `{"file"|"env": …}` references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_args: Option<BTreeMap<String, serde_json::Value>>,
    /// Timeouts, retries and concurrency of upstream calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamSettings>,
    /// Listener, logging and access settings. Only allowed in the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSettings>,
}

fn auto() -> String {
    "auto".to_owned()
}

/// Provider families the worker can call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// Route by model string, as LiteLLM does (the guide's value).
    Litellm,
    /// OpenAI's API (or `OPENAI_BASE_URL`).
    Openai,
    /// AWS Bedrock through the Converse API.
    Bedrock,
    /// Any server speaking OpenAI chat completions (vLLM, TGI, LiteLLM proxy, …).
    #[serde(alias = "vllm", alias = "hosted_vllm")]
    OpenaiCompatible,
}

impl ProviderKind {
    /// The serialised name, also the `provider` label of the upstream metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Litellm => "litellm",
            ProviderKind::Openai => "openai",
            ProviderKind::Bedrock => "bedrock",
            ProviderKind::OpenaiCompatible => "openai-compatible",
        }
    }
}

/// The inference-time-scaling algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AlgorithmName {
    /// Majority vote over the candidates' answers or tool calls.
    #[default]
    SelfConsistency,
    /// Best candidate according to an LLM judge, or a process reward model (`rm_name`).
    BestOfN,
    /// Particles extended one step at a time, weighted by a PRM and resampled.
    ParticleFiltering,
    /// The best `beam_width` partial answers by PRM score, each expanded budget/beam_width times.
    BeamSearch,
}

impl AlgorithmName {
    pub fn as_str(self) -> &'static str {
        match self {
            AlgorithmName::SelfConsistency => "self-consistency",
            AlgorithmName::BestOfN => "best-of-n",
            AlgorithmName::ParticleFiltering => "particle-filtering",
            AlgorithmName::BeamSearch => "beam-search",
        }
    }
}

/// Adaptive self-consistency settings (`adaptive` in the configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// `beta`, `dirichlet` or `its_hub`.
    pub rule: AdaptiveRuleName,
    /// Confidence at which sampling stops, in (0, 1] (default 0.95 for `beta` and `dirichlet`,
    /// 0.75 for `its_hub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Successful samples before the rule is consulted (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u32>,
    /// Calls in flight at once (default the smaller of the budget and 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
}

/// The stopping rule of adaptive self-consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdaptiveRuleName {
    /// P(leader's share > runner-up's) under a Beta posterior (Aggarwal et al. 2023).
    Beta,
    /// P(leader's share is the largest) under a Dirichlet posterior over every answer seen.
    Dirichlet,
    /// its_hub's rule: the leader's share of the votes after 2, 4, 8, … samples.
    ItsHub,
}

/// Default `adaptive.min_samples`.
pub const DEFAULT_ADAPTIVE_MIN_SAMPLES: u32 = 2;
/// Default `adaptive.parallelism` (when the budget is larger).
pub const DEFAULT_ADAPTIVE_PARALLELISM: u32 = 4;

impl AdaptiveRuleName {
    /// The default `threshold`: the paper's 0.95 for the posterior rules, its_hub's 0.75.
    pub fn default_threshold(self) -> f64 {
        match self {
            AdaptiveRuleName::Beta | AdaptiveRuleName::Dirichlet => 0.95,
            AdaptiveRuleName::ItsHub => 0.75,
        }
    }
}

/// A part of the algorithm a request may override (`allow_request_override`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverrideKey {
    /// `algorithm.name`: self-consistency or best-of-n.
    Name,
    /// `algorithm.tool_vote`.
    ToolVote,
    /// `algorithm.adaptive`.
    Adaptive,
}

/// How tool-call candidates are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolVote {
    /// The sequence of called tool names.
    ToolName,
    /// The sequence of canonical arguments (keys sorted, excluded arguments removed).
    ToolArgs,
    /// Names first; then exact arguments among candidates with the winning names.
    ToolHierarchical,
    /// The set of (name, arguments) pairs, order-independent.
    ToolFlatAll,
}

impl ToolVote {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolVote::ToolName => "tool_name",
            ToolVote::ToolArgs => "tool_args",
            ToolVote::ToolHierarchical => "tool_hierarchical",
            ToolVote::ToolFlatAll => "tool_flat_all",
        }
    }
}

/// How the LLM judge scores candidates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JudgeMode {
    /// One call per distinct candidate, scoring it 0-10.
    Pointwise,
    /// One call that sees all distinct candidates and selects the best.
    #[default]
    Groupwise,
}

/// Upstream call behaviour. Every field has a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// TCP connect timeout in seconds (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_secs: Option<f64>,
    /// Timeout of one upstream call in seconds (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_timeout_secs: Option<f64>,
    /// Deadline of a whole client request in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_secs: Option<f64>,
    /// Retries of one call on connect errors, 429 and 5xx (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Most calls in flight to this upstream at once, across requests (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Fewest successful candidates the algorithm needs to answer (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_successful_candidates: Option<u32>,
    /// Ask the upstream for up to this many candidates per call with OpenAI's `n` (vLLM and
    /// OpenAI support it; it shares the prompt's prefill between candidates). Default 1: one
    /// call per candidate. Not available with Bedrock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates_per_call: Option<u32>,
    /// Milliseconds a call the answer no longer waits for (early decision, adaptive stop) may
    /// still take to finish before it is aborted (default 20; 0 aborts at once). One that
    /// finishes keeps its connection for the next call instead of closing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub straggler_grace_ms: Option<u32>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "server", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Process settings, only valid in the config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Listen address (default 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Listen port (default 8108).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `text` or `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// A tracing filter such as `info` or `inferscale_worker=debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// A file of client API keys, one per line; when set, `/v1` requests need `Authorization: Bearer <key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Whether `POST /configure` is served. Defaults to false when the config comes from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_configure: Option<bool>,
    /// When set, `POST /configure` needs `Authorization: Bearer <token>`; when no admin token is
    /// set anywhere (flag, environment or here), `/configure` is served to loopback peers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<SecretValue>,
    /// Largest accepted request body in bytes (default 8 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// Most chat requests processed at once; more are refused with 429 (default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_requests: Option<u32>,
    /// Most chat requests processed at once for one client: one API key, or one peer address
    /// when no client keys are configured; more are refused with 429 (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_client: Option<u32>,
    /// Most open client connections; further ones wait in the listen backlog (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Seconds a client has to send a request's headers before the connection is closed
    /// (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout_secs: Option<f64>,
    /// Seconds a client has to send a request's whole body before it gets 408 (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_read_timeout_secs: Option<f64>,
}

/// The load limits of [`ServerSettings`], defaults applied and bounds checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLimits {
    pub max_in_flight_requests: u32,
    pub max_in_flight_per_client: u32,
    pub max_connections: u32,
    pub header_read_timeout: std::time::Duration,
    pub body_read_timeout: std::time::Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_in_flight_requests: limits::DEFAULT_MAX_IN_FLIGHT_REQUESTS,
            max_in_flight_per_client: limits::DEFAULT_MAX_IN_FLIGHT_PER_CLIENT,
            max_connections: limits::DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: std::time::Duration::from_secs_f64(
                limits::DEFAULT_HEADER_READ_TIMEOUT_SECS,
            ),
            body_read_timeout: std::time::Duration::from_secs_f64(
                limits::DEFAULT_BODY_READ_TIMEOUT_SECS,
            ),
        }
    }
}

impl ServerSettings {
    /// The load limits, with defaults for absent fields. Refuses zero, huge or non-finite values
    /// (the bounds of [`limits::check_server`]) so that nothing downstream can panic or overflow.
    pub fn limits(&self) -> Result<ServerLimits, ConfigError> {
        limits::check_server(self)?;
        let d = ServerLimits::default();
        let secs = |v: Option<f64>, default| v.map_or(default, std::time::Duration::from_secs_f64);
        Ok(ServerLimits {
            max_in_flight_requests: self
                .max_in_flight_requests
                .unwrap_or(d.max_in_flight_requests),
            max_in_flight_per_client: self
                .max_in_flight_per_client
                .unwrap_or(d.max_in_flight_per_client),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            header_read_timeout: secs(self.header_read_timeout_secs, d.header_read_timeout),
            body_read_timeout: secs(self.body_read_timeout_secs, d.body_read_timeout),
        })
    }
}

#[cfg(test)]
mod limits_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn absent_limits_take_the_documented_defaults() {
        let limits = ServerSettings::default().limits().unwrap();
        assert_eq!(limits, ServerLimits::default());
        assert_eq!(limits.max_in_flight_requests, 512);
        assert_eq!(limits.max_in_flight_per_client, 64);
        assert_eq!(limits.max_connections, 4096);
        assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(limits.body_read_timeout, Duration::from_secs(30));
    }

    #[test]
    fn out_of_range_limits_name_their_setting() {
        let cases = [
            ("max_in_flight_requests: 0", "server.max_in_flight_requests"),
            (
                "max_in_flight_per_client: 2000000",
                "server.max_in_flight_per_client",
            ),
            ("max_connections: 0", "server.max_connections"),
            (
                "header_read_timeout_secs: 0",
                "server.header_read_timeout_secs",
            ),
            (
                "body_read_timeout_secs: 1e20",
                "server.body_read_timeout_secs",
            ),
            (
                "body_read_timeout_secs: .nan",
                "server.body_read_timeout_secs",
            ),
        ];
        for (yaml, param) in cases {
            let settings: ServerSettings = serde_yaml::from_str(yaml).unwrap();
            let err = settings.limits().unwrap_err();
            assert_eq!(err.param(), Some(param), "{yaml}");
            assert!(err.to_string().contains(param), "{err}");
        }
        let ok: ServerSettings =
            serde_yaml::from_str("body_read_timeout_secs: 0.5\nmax_connections: 3").unwrap();
        let limits = ok.limits().unwrap();
        assert_eq!(limits.body_read_timeout, Duration::from_millis(500));
        assert_eq!(limits.max_connections, 3);
    }
}

impl WorkerConfig {
    /// Parses a config file's text: YAML (which also reads JSON).
    pub fn from_file_text(text: &str) -> Result<Self, ConfigError> {
        serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// The minimal configuration for a model, with every other field at its default.
    pub fn for_model(model: impl Into<String>) -> Self {
        Self {
            provider: None,
            endpoint: auto(),
            api_key: None,
            model: model.into(),
            alg: AlgorithmName::SelfConsistency,
            tool_vote: None,
            adaptive: None,
            allow_request_override: Vec::new(),
            early_decision: None,
            exclude_args: Vec::new(),
            regex_patterns: None,
            budget: None,
            max_budget: None,
            temperature: None,
            rm_name: None,
            rm_endpoint: None,
            rm_api_key: None,
            rm_step_tag: None,
            rm_agg_method: None,
            rm_device: None,
            step_token: None,
            stop_token: None,
            max_steps: None,
            max_step_tokens: None,
            beam_width: None,
            resampling: None,
            selection: None,
            max_calls: None,
            judge_model: None,
            judge_provider: None,
            judge_base_url: None,
            judge_api_key: None,
            judge_mode: None,
            judge_criterion: None,
            judge_top_n: None,
            judge_temperature: None,
            judge_max_tokens: None,
            enable_judge_logging: None,
            extra_args: None,
            upstream: None,
            server: None,
        }
    }

    pub fn default_budget(&self) -> u32 {
        self.budget.unwrap_or(DEFAULT_BUDGET.min(self.max_budget()))
    }

    pub fn max_budget(&self) -> u32 {
        self.max_budget.unwrap_or(DEFAULT_MAX_BUDGET)
    }

    /// Every secret source named by this configuration, with the field it appears in: the key
    /// fields, and `extra_args` values written as `{"file": …}` / `{"env": …}` (the AWS keys).
    /// Inline values are included too, so callers can decide per form.
    pub fn secret_references(&self) -> Vec<(String, SecretValue)> {
        let mut refs = Vec::new();
        for (param, value) in [
            ("api_key", &self.api_key),
            ("judge_api_key", &self.judge_api_key),
            ("rm_api_key", &self.rm_api_key),
        ] {
            if let Some(v) = value {
                refs.push((param.to_owned(), v.clone()));
            }
        }
        for (key, value) in self.extra_args.iter().flatten() {
            if value.is_object()
                && let Ok(v) = serde_json::from_value::<SecretValue>(value.clone())
            {
                refs.push((format!("extra_args.{key}"), v));
            }
        }
        if let Some(token) = self.server.as_ref().and_then(|s| s.admin_token.as_ref()) {
            refs.push(("server.admin_token".to_owned(), token.clone()));
        }
        refs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guide_examples_parse() {
        let sc = r#"{"provider":"litellm","endpoint":"auto","api_key":"k","model":"gpt-4o-mini",
            "alg":"self-consistency","tool_vote":"tool_hierarchical",
            "exclude_args":["timestamp","request_id","id","type"]}"#;
        let c: WorkerConfig = serde_json::from_str(sc).unwrap();
        assert_eq!(c.tool_vote, Some(ToolVote::ToolHierarchical));
        assert_eq!(c.exclude_args.len(), 4);

        let bon = r#"{"provider":"litellm","endpoint":"auto","api_key":null,
            "model":"bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0","alg":"best-of-n",
            "rm_name":"llm-judge","judge_model":"bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0",
            "judge_base_url":"auto","judge_mode":"groupwise","judge_criterion":"multi_step_tool_judge",
            "judge_api_key":null,"judge_temperature":0.7,"judge_max_tokens":2048,
            "extra_args":{"aws_access_key_id":"a","aws_secret_access_key":"s","aws_region_name":"us-east-1"}}"#;
        let c: WorkerConfig = serde_json::from_str(bon).unwrap();
        assert_eq!(c.alg, AlgorithmName::BestOfN);
        assert_eq!(c.judge_mode, Some(JudgeMode::Groupwise));
    }

    #[test]
    fn exclude_tool_args_is_an_alias() {
        let c: WorkerConfig =
            serde_json::from_str(r#"{"model":"m","exclude_tool_args":["id"]}"#).unwrap();
        assert_eq!(c.exclude_args, vec!["id".to_owned()]);
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = serde_json::from_str::<WorkerConfig>(r#"{"model":"m","bogus":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn yaml_round_trip() {
        let mut c = WorkerConfig::for_model("gpt-4o-mini");
        c.api_key = Some(SecretValue::File {
            file: "/etc/inferscale/secrets/api-key".into(),
        });
        let text = serde_yaml::to_string(&c).unwrap();
        assert_eq!(WorkerConfig::from_file_text(&text).unwrap(), c);
    }

    #[test]
    fn secret_references_cover_keys_and_extra_args() {
        let c: WorkerConfig = serde_json::from_str(
            r#"{"model":"m","api_key":{"file":"/a"},"judge_api_key":"inline",
                "extra_args":{"aws_access_key_id":{"env":"K"},"aws_region_name":"us-east-1"}}"#,
        )
        .unwrap();
        let params: Vec<String> = c.secret_references().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            params,
            ["api_key", "judge_api_key", "extra_args.aws_access_key_id"]
        );
    }

    #[test]
    fn max_budget_defaults_to_the_safe_default() {
        let c = WorkerConfig::for_model("m");
        assert_eq!(c.max_budget(), DEFAULT_MAX_BUDGET);
        assert_eq!(c.default_budget(), DEFAULT_BUDGET);
    }
}
