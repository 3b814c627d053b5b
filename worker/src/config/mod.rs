//! The worker's configuration: one type for `POST /configure`, the `--config` file and the
//! ConfigMap the operator writes. Field names follow the reference service's guide (snake_case).
//!
//! This module is compiled without the `server` feature too, so the operator shares the type
//! instead of keeping a copy.

mod secret;
mod validate;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use secret::{LiveSecret, SecretError, SecretValue};
pub use validate::{ConfigError, DEFAULT_MAX_BUDGET, MAX_BUDGET_LIMIT};

/// Default number of candidates when neither the request nor the configuration names one.
pub const DEFAULT_BUDGET: u32 = 4;
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
    /// Upstream API key: inline text, `{"file": path}` or `{"env": NAME}`. Never echoed.
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
    /// Largest budget a request may ask for (at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget: Option<u32>,
    /// Default sampling temperature for candidate calls when the request sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Reward model for best-of-n; only `llm-judge` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rm_name: Option<String>,
    /// Judge model string (same routing rules as `model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_model: Option<String>,
    /// Judge provider; defaults to routing by `judge_model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_provider: Option<ProviderKind>,
    /// Judge base URL or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_base_url: Option<String>,
    /// Judge API key (same forms as `api_key`). Defaults to `api_key` when the judge uses the same
    /// endpoint.
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

/// The inference-time-scaling algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AlgorithmName {
    /// Majority vote over the candidates' answers or tool calls.
    #[default]
    SelfConsistency,
    /// Best candidate according to an LLM judge.
    BestOfN,
}

impl AlgorithmName {
    pub fn as_str(self) -> &'static str {
        match self {
            AlgorithmName::SelfConsistency => "self-consistency",
            AlgorithmName::BestOfN => "best-of-n",
        }
    }
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
    /// When set, `POST /configure` needs `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<SecretValue>,
    /// Largest accepted request body in bytes (default 8 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
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
            exclude_args: Vec::new(),
            regex_patterns: None,
            budget: None,
            max_budget: None,
            temperature: None,
            rm_name: None,
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
        self.max_budget.unwrap_or(MAX_BUDGET_LIMIT)
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
}
