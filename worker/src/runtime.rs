//! A configuration made ready to serve: providers built, secrets resolved, regexes compiled.
//! A new `/configure` builds a new `Runtime` and swaps it in; requests already running keep the
//! one they started with.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;

use crate::algorithms::vote::VoteSettings;
use crate::config::bedrock::BedrockField;
use crate::config::routing::{Route, resolve_routes};
use crate::config::{
    AlgorithmName, ConfigError, JudgeMode, LiveSecret, SecretValue, UpstreamSettings, WorkerConfig,
};
use crate::judge::Judge;
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::providers::bedrock::{AwsEnv, BedrockProvider, BedrockSettings};
use crate::providers::openai::{OpenAiProvider, OpenAiSettings};
use crate::providers::{RetryPolicy, SharedProvider};

pub struct Runtime {
    /// The configured model string (what `/v1/models` lists).
    pub model: String,
    pub algorithm: AlgorithmName,
    pub provider: SharedProvider,
    pub candidate_metrics: Arc<UpstreamMetrics>,
    pub judge: Option<Judge>,
    pub vote: VoteSettings,
    pub default_budget: u32,
    pub max_budget: u32,
    pub default_temperature: Option<f64>,
    pub request_timeout: Duration,
    pub min_successful: usize,
    /// Candidates asked for per upstream call (OpenAI's `n`); 1 = one call per candidate.
    pub candidates_per_call: u32,
    /// Unix time the configuration was applied.
    pub created: u64,
}

/// The process environment a runtime depends on, read once so building stays testable.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub openai_base_url: Option<String>,
    pub openai_api_key_set: bool,
}

impl Env {
    pub fn from_process() -> Self {
        Self {
            openai_base_url: std::env::var("OPENAI_BASE_URL")
                .or_else(|_| std::env::var("OPENAI_API_BASE"))
                .ok(),
            openai_api_key_set: std::env::var_os("OPENAI_API_KEY").is_some(),
        }
    }
}

fn err(param: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        param,
        message: message.into(),
    }
}

impl Runtime {
    /// Validates and builds. Nothing is applied when this fails.
    pub fn build(cfg: &WorkerConfig, metrics: &Metrics, env: &Env) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let upstream = cfg.upstream.clone().unwrap_or_default();
        let client = http_client(&upstream)
            .map_err(|e| err("upstream", format!("cannot build the HTTP client: {e}")))?;
        let limit = Arc::new(Semaphore::new(
            upstream.max_concurrency.unwrap_or(256) as usize
        ));

        // The same resolution and checks `WorkerConfig::validate` ran (and the operator runs).
        let routes = resolve_routes(cfg, env.openai_base_url.as_deref())?;
        let main_route = routes.main;
        let provider = build_provider(
            &main_route,
            key_for(&main_route, cfg.api_key.as_ref(), env),
            ("model", "api_key"),
            cfg.extra_args.as_ref(),
            &client,
            &upstream,
            limit,
        )?;

        // `resolve_routes` refused `candidates_per_call > 1` for upstreams without `n`.
        let candidates_per_call = upstream.candidates_per_call.unwrap_or(1);
        let judge = routes
            .judge
            .as_ref()
            .map(|judge_route| build_judge(cfg, judge_route, &client, &upstream, env, metrics))
            .transpose()?;
        let vote = VoteSettings::new(
            cfg.tool_vote,
            cfg.exclude_args.clone(),
            cfg.regex_patterns.as_deref().unwrap_or(&[]),
        )
        .map_err(|e| err("regex_patterns", e.to_string()))?;
        let candidate_metrics =
            Arc::new(metrics.upstream(provider.kind().as_str(), provider.model(), "candidate"));
        Ok(Self {
            model: cfg.model.clone(),
            algorithm: cfg.alg,
            provider,
            candidate_metrics,
            judge,
            vote,
            default_budget: cfg.default_budget(),
            max_budget: cfg.max_budget(),
            default_temperature: cfg.temperature,
            request_timeout: Duration::from_secs_f64(
                upstream.request_timeout_secs.unwrap_or(300.0),
            ),
            min_successful: upstream.min_successful_candidates.unwrap_or(1) as usize,
            candidates_per_call,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        })
    }

    /// Whether a request's `model` names this configuration: the configured string, or the same
    /// without its provider prefix (`bedrock/x` answers to `x` too).
    pub fn serves(&self, model: &str) -> bool {
        model == self.model
            || self
                .model
                .split_once('/')
                .is_some_and(|(_, bare)| bare == model)
                && is_prefixed(&self.model)
    }
}

fn is_prefixed(model: &str) -> bool {
    ["openai/", "bedrock/", "hosted_vllm/", "vllm/"]
        .iter()
        .any(|p| model.starts_with(p))
}

/// One pooled client per configuration: connections are reused across requests and candidates;
/// Nagle is off so small request bodies leave at once.
fn http_client(u: &UpstreamSettings) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs_f64(
            u.connect_timeout_secs.unwrap_or(5.0),
        ))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .user_agent(concat!("inferscale-worker/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The key to use: the configured one, else `OPENAI_API_KEY` for OpenAI itself.
fn key_for(route: &Route, configured: Option<&SecretValue>, env: &Env) -> Option<SecretValue> {
    match configured {
        Some(k) if !k.is_empty_inline() => Some(k.clone()),
        _ if matches!(route, Route::OpenAi { .. }) && env.openai_api_key_set => {
            Some(SecretValue::Env {
                env: "OPENAI_API_KEY".into(),
            })
        }
        _ => None,
    }
}

fn build_provider(
    route: &Route,
    key: Option<SecretValue>,
    (model_param, key_param): (&'static str, &'static str),
    extra_args: Option<&BTreeMap<String, serde_json::Value>>,
    client: &reqwest::Client,
    upstream: &UpstreamSettings,
    limit: Arc<Semaphore>,
) -> Result<SharedProvider, ConfigError> {
    let api_key = key
        .map(|k| LiveSecret::new(k).map(Arc::new))
        .transpose()
        .map_err(|e| err(key_param, e.to_string()))?;
    let retry = RetryPolicy {
        max_retries: upstream.max_retries.unwrap_or(2),
        ..RetryPolicy::default()
    };
    let call_timeout = Duration::from_secs_f64(upstream.call_timeout_secs.unwrap_or(120.0));
    match route {
        Route::OpenAi { base_url, model } | Route::OpenAiCompatible { base_url, model } => {
            Ok(Arc::new(OpenAiProvider::new(OpenAiSettings {
                kind: route.kind(),
                base_url: base_url.clone(),
                model: model.clone(),
                api_key,
                client: client.clone(),
                retry,
                call_timeout,
                limit,
            })))
        }
        // Region, endpoint and credentials come from extra_args and the AWS environment.
        Route::Bedrock { model_id } => BedrockProvider::build(BedrockSettings {
            model_id,
            extra_args,
            api_key,
            env: AwsEnv::from_process(),
            client: client.clone(),
            retry,
            call_timeout,
            limit,
        })
        .map(|p| Arc::new(p) as SharedProvider)
        .map_err(|e| {
            let param = match e.field() {
                BedrockField::ModelId => model_param,
                BedrockField::ExtraArgs => "extra_args",
            };
            err(param, e.to_string())
        }),
    }
}

fn build_judge(
    cfg: &WorkerConfig,
    judge_route: &Route,
    client: &reqwest::Client,
    upstream: &UpstreamSettings,
    env: &Env,
    metrics: &Metrics,
) -> Result<Judge, ConfigError> {
    let key = match &cfg.judge_api_key {
        Some(k) if !k.is_empty_inline() => Some(k.clone()),
        _ => key_for(judge_route, cfg.api_key.as_ref(), env),
    };
    let limit = Arc::new(Semaphore::new(
        upstream.max_concurrency.unwrap_or(256) as usize
    ));
    let provider = build_provider(
        judge_route,
        key,
        ("judge_model", "judge_api_key"),
        cfg.extra_args.as_ref(),
        client,
        upstream,
        limit,
    )?;
    let metrics = Arc::new(metrics.upstream(provider.kind().as_str(), provider.model(), "judge"));
    Ok(Judge {
        provider,
        metrics,
        mode: cfg.judge_mode.unwrap_or(JudgeMode::Groupwise),
        criterion: cfg
            .judge_criterion
            .clone()
            .unwrap_or_else(|| "overall_quality".to_owned()),
        temperature: cfg.judge_temperature.unwrap_or(0.0),
        max_tokens: cfg.judge_max_tokens.unwrap_or(4096),
        top_n: cfg.judge_top_n.unwrap_or(1) as usize,
    })
}
