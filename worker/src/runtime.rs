//! A configuration made ready to serve: providers built, secrets resolved, regexes compiled.
//! A new `/configure` builds a new `Runtime` and swaps it in; requests already running keep the
//! one they started with.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;

use crate::algorithms::AlgorithmInputs;
use crate::algorithms::stepwise::StepwiseSetup;
use crate::algorithms::vote::VoteSettings;
use crate::config::bedrock::BedrockField;
use crate::config::limits::{
    DEFAULT_CALL_TIMEOUT_SECS, DEFAULT_CONNECT_TIMEOUT_SECS, DEFAULT_JUDGE_MAX_TOKENS,
    DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_RETRIES, DEFAULT_MIN_SUCCESSFUL_CANDIDATES,
    DEFAULT_REQUEST_TIMEOUT_SECS, DEFAULT_STRAGGLER_GRACE_MS,
};
use crate::config::routing::{OPENAI_DEFAULT_BASE, Route, resolve_routes};
use crate::config::{
    AdaptiveConfig, AlgorithmName, ConfigError, JudgeMode, LiveSecret, OverrideKey, SecretValue,
    UpstreamSettings, WorkerConfig,
};
use crate::judge::Judge;
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::providers::bedrock::{AwsEnv, BedrockProvider, BedrockSettings};
use crate::providers::openai::{OpenAiProvider, OpenAiSettings};
use crate::providers::{HttpClient, RetryPolicy, SharedProvider, USER_AGENT};
use crate::reward::{PrmClient, PrmClientSettings};

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
    /// Adaptive self-consistency, resolved per request (its window depends on the budget).
    pub adaptive: Option<AdaptiveConfig>,
    /// What a request's `algorithm` field may override.
    pub allow_request_override: Vec<OverrideKey>,
    /// Whether self-consistency stops once its vote is decided (off only for benchmarks).
    pub early_decision: bool,
    /// How long a call the answer no longer waits for may still finish before it is aborted.
    pub straggler_grace: Duration,
    /// Unix time the configuration was applied.
    pub created: u64,
    /// Step-wise search or PRM best-of-n: the settings and the PRM client.
    pub stepwise: Option<Arc<StepwiseSetup>>,
}

/// The process environment a runtime depends on, read once so building stays testable.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub openai_base_url: Option<String>,
    pub openai_api_key_set: bool,
    /// An HTTP proxy is configured (`HTTP_PROXY`, `ALL_PROXY`, in either case): plain-HTTP
    /// upstreams then go through reqwest, which honours it, instead of the worker's own client.
    pub http_proxy_set: bool,
}

impl Env {
    pub fn from_process() -> Self {
        Self {
            openai_base_url: std::env::var("OPENAI_BASE_URL")
                .or_else(|_| std::env::var("OPENAI_API_BASE"))
                .ok(),
            openai_api_key_set: std::env::var_os("OPENAI_API_KEY").is_some(),
            http_proxy_set: ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|p| !p.is_empty())),
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
        let client = http_client(&upstream, env)?;
        let limit = upstream_limit(&upstream);

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
            limit.clone(),
        )?;

        // `resolve_routes` refused `candidates_per_call > 1` for upstreams without `n`.
        let candidates_per_call = upstream.candidates_per_call.unwrap_or(1);
        let judge = routes
            .judge
            .as_ref()
            .map(|judge_route| {
                build_judge(
                    cfg,
                    &main_route,
                    judge_route,
                    &client,
                    &upstream,
                    &limit,
                    env,
                    metrics,
                )
            })
            .transpose()?;
        let vote = VoteSettings::new(
            cfg.tool_vote,
            cfg.exclude_args.clone(),
            cfg.regex_patterns.as_deref().unwrap_or(&[]),
        )
        .map_err(|e| err("regex_patterns", e.to_string()))?;
        let candidate_metrics =
            Arc::new(metrics.upstream(provider.kind().as_str(), provider.model(), "candidate"));
        let stepwise = build_stepwise(cfg, &client, &upstream)?;
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
            request_timeout: seconds(
                "upstream.request_timeout_secs",
                upstream.request_timeout_secs,
                DEFAULT_REQUEST_TIMEOUT_SECS,
            )?,
            min_successful: upstream
                .min_successful_candidates
                .unwrap_or(DEFAULT_MIN_SUCCESSFUL_CANDIDATES) as usize,
            candidates_per_call,
            adaptive: cfg.adaptive.clone(),
            allow_request_override: cfg.allow_request_override.clone(),
            early_decision: cfg.early_decision.unwrap_or(true),
            straggler_grace: Duration::from_millis(u64::from(
                upstream
                    .straggler_grace_ms
                    .unwrap_or(DEFAULT_STRAGGLER_GRACE_MS),
            )),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            stepwise,
        })
    }

    /// The pieces of this configuration an algorithm runs with.
    pub fn algorithm_inputs(&self) -> AlgorithmInputs<'_> {
        AlgorithmInputs {
            algorithm: self.algorithm,
            provider: &self.provider,
            candidate_metrics: &self.candidate_metrics,
            vote: &self.vote,
            judge: self.judge.as_ref(),
            min_successful: self.min_successful,
            early_decision: self.early_decision,
            straggler_grace: self.straggler_grace,
            adaptive: None,
        }
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
fn http_client(u: &UpstreamSettings, env: &Env) -> Result<HttpClient, ConfigError> {
    let connect_timeout = seconds(
        "upstream.connect_timeout_secs",
        u.connect_timeout_secs,
        DEFAULT_CONNECT_TIMEOUT_SECS,
    )?;
    let reqwest = reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .user_agent(USER_AGENT)
        .build()
        .map_err(|e| err("upstream", format!("cannot build the HTTP client: {e}")))?;
    Ok(HttpClient::new(
        reqwest,
        connect_timeout,
        !env.http_proxy_set,
    ))
}

/// The per-upstream limit on calls in flight, shared by every caller of that upstream.
/// The PRM client of a configuration that uses one. Its key is `rm_api_key` only: the
/// generator's key is never sent to the PRM server. Its calls have their own in-flight limit
/// (`upstream.max_concurrency`), so a slow PRM cannot starve generation or the reverse.
fn build_stepwise(
    cfg: &WorkerConfig,
    client: &HttpClient,
    upstream: &UpstreamSettings,
) -> Result<Option<Arc<StepwiseSetup>>, ConfigError> {
    let Some(settings) = cfg.stepwise_settings() else {
        return Ok(None);
    };
    let api_key = cfg
        .rm_api_key
        .clone()
        .filter(|k| !k.is_empty_inline())
        .map(|k| LiveSecret::new(k).map(Arc::new))
        .transpose()
        .map_err(|e| err("rm_api_key", e.to_string()))?;
    let prm = PrmClient::new(PrmClientSettings {
        client: client.reqwest().clone(),
        base_url: settings.rm_base_url.clone(),
        model: settings.rm_name.clone(),
        api_key,
        call_timeout: seconds(
            "upstream.call_timeout_secs",
            upstream.call_timeout_secs,
            DEFAULT_CALL_TIMEOUT_SECS,
        )?,
        retry: RetryPolicy {
            max_retries: upstream.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            ..RetryPolicy::default()
        },
        limit: upstream_limit(upstream),
    });
    Ok(Some(Arc::new(StepwiseSetup { settings, prm })))
}

fn upstream_limit(u: &UpstreamSettings) -> Arc<Semaphore> {
    // Validation bounds max_concurrency far below Semaphore::MAX_PERMITS, so this cannot panic.
    Arc::new(Semaphore::new(
        u.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY) as usize,
    ))
}

/// A configured number of seconds as a Duration. Validation has bounded it already; the checked
/// conversion keeps an unvalidated value from ever reaching `Duration::from_secs_f64`'s panic.
fn seconds(param: &'static str, value: Option<f64>, default: f64) -> Result<Duration, ConfigError> {
    let secs = value.unwrap_or(default);
    Duration::try_from_secs_f64(secs).map_err(|_| {
        err(
            param,
            format!("{param} must be a positive number of seconds, got {secs}"),
        )
    })
}

/// The key to use: the configured one, else `OPENAI_API_KEY`, but only for OpenAI's own API.
/// The environment key belongs to the operator; sending it to a URL chosen by whoever wrote the
/// configuration would hand it to them.
fn key_for(route: &Route, configured: Option<&SecretValue>, env: &Env) -> Option<SecretValue> {
    match configured {
        Some(k) if !k.is_empty_inline() => Some(k.clone()),
        _ if env.openai_api_key_set && is_official_openai(route, env) => Some(SecretValue::Env {
            env: "OPENAI_API_KEY".into(),
        }),
        _ => None,
    }
}

/// Whether a route goes to OpenAI's API: its default URL, or the `OPENAI_BASE_URL` the operator
/// set in the worker's environment (trusted like `OPENAI_API_KEY` itself, which comes from the
/// same place; the demo and tests point it at the simulator).
pub fn is_official_openai(route: &Route, env: &Env) -> bool {
    let Route::OpenAi { base_url, .. } = route else {
        return false;
    };
    let base = base_url.trim_end_matches('/');
    base == OPENAI_DEFAULT_BASE
        || env
            .openai_base_url
            .as_deref()
            .map(|b| b.trim().trim_end_matches('/'))
            .is_some_and(|b| !b.is_empty() && b == base)
}

/// `scheme://host[:port]` of a URL, as written (scheme and host lower-cased, user info dropped,
/// no default port filled in).
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    (!host_port.is_empty()).then(|| {
        format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            host_port.to_ascii_lowercase()
        )
    })
}

/// Whether two routes reach the same upstream: the same provider family at the same origin.
/// Bedrock routes of one configuration share `extra_args`, hence their endpoint.
fn same_upstream(a: &Route, b: &Route) -> bool {
    match (a, b) {
        (Route::Bedrock { .. }, Route::Bedrock { .. }) => true,
        (Route::OpenAi { base_url: x, .. }, Route::OpenAi { base_url: y, .. })
        | (
            Route::OpenAiCompatible { base_url: x, .. },
            Route::OpenAiCompatible { base_url: y, .. },
        ) => origin(x).is_some() && origin(x) == origin(y),
        _ => false,
    }
}

/// The judge's key: `judge_api_key` when given; else the main key (configured, or the
/// environment's for OpenAI's API) only when the judge calls the same provider at the same
/// origin; else only the environment key for the judge's own official API.
fn judge_key(
    cfg: &WorkerConfig,
    main_route: &Route,
    judge_route: &Route,
    env: &Env,
) -> Option<SecretValue> {
    match &cfg.judge_api_key {
        Some(k) if !k.is_empty_inline() => Some(k.clone()),
        _ if same_upstream(main_route, judge_route) => {
            key_for(main_route, cfg.api_key.as_ref(), env)
        }
        _ => key_for(judge_route, None, env),
    }
}

fn build_provider(
    route: &Route,
    key: Option<SecretValue>,
    (model_param, key_param): (&'static str, &'static str),
    extra_args: Option<&BTreeMap<String, serde_json::Value>>,
    client: &HttpClient,
    upstream: &UpstreamSettings,
    limit: Arc<Semaphore>,
) -> Result<SharedProvider, ConfigError> {
    let api_key = key
        .map(|k| LiveSecret::new(k).map(Arc::new))
        .transpose()
        .map_err(|e| err(key_param, e.to_string()))?;
    let retry = RetryPolicy {
        max_retries: upstream.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
        ..RetryPolicy::default()
    };
    let call_timeout = seconds(
        "upstream.call_timeout_secs",
        upstream.call_timeout_secs,
        DEFAULT_CALL_TIMEOUT_SECS,
    )?;
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
            env: aws_env_for(extra_args, AwsEnv::from_process()),
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

/// The AWS environment a Bedrock provider may use. When the configuration names its own Bedrock
/// endpoint, the environment's bearer token (`AWS_BEARER_TOKEN_BEDROCK`) is withheld: it would
/// otherwise be sent as-is to whatever URL the configuration's author chose. SigV4 credentials
/// from the environment stay usable: a signature does not reveal the secret key.
fn aws_env_for(extra_args: Option<&BTreeMap<String, serde_json::Value>>, env: AwsEnv) -> AwsEnv {
    let custom_endpoint = extra_args
        .and_then(|a| a.get("aws_bedrock_runtime_endpoint"))
        .and_then(|v| v.as_str())
        .is_some_and(|e| {
            env.endpoint.as_deref().map(|x| x.trim_end_matches('/'))
                != Some(e.trim_end_matches('/'))
        });
    if custom_endpoint {
        AwsEnv {
            bearer_token: false,
            ..env
        }
    } else {
        env
    }
}

#[allow(clippy::too_many_arguments)]
fn build_judge(
    cfg: &WorkerConfig,
    main_route: &Route,
    judge_route: &Route,
    client: &HttpClient,
    upstream: &UpstreamSettings,
    main_limit: &Arc<Semaphore>,
    env: &Env,
    metrics: &Metrics,
) -> Result<Judge, ConfigError> {
    let key = judge_key(cfg, main_route, judge_route, env);
    // Judge calls to the candidates' upstream count against the same limit as candidate calls.
    let limit = if same_upstream(main_route, judge_route) {
        main_limit.clone()
    } else {
        upstream_limit(upstream)
    };
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
        max_tokens: cfg.judge_max_tokens.unwrap_or(DEFAULT_JUDGE_MAX_TOKENS),
        top_n: cfg.judge_top_n.unwrap_or(1) as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai(base: &str) -> Route {
        Route::OpenAi {
            base_url: base.into(),
            model: "m".into(),
        }
    }

    fn compatible(base: &str) -> Route {
        Route::OpenAiCompatible {
            base_url: base.into(),
            model: "m".into(),
        }
    }

    fn env_with(base: Option<&str>) -> Env {
        Env {
            openai_base_url: base.map(str::to_owned),
            openai_api_key_set: true,
            http_proxy_set: false,
        }
    }

    fn is_env_key(k: Option<SecretValue>) -> bool {
        matches!(k, Some(SecretValue::Env { env }) if env == "OPENAI_API_KEY")
    }

    #[test]
    fn env_key_only_goes_to_the_official_api() {
        let env = env_with(Some("http://127.0.0.1:8100/v1/"));
        assert!(is_env_key(key_for(
            &openai(OPENAI_DEFAULT_BASE),
            None,
            &env
        )));
        assert!(is_env_key(key_for(
            &openai("http://127.0.0.1:8100/v1"),
            None,
            &env
        )));
        // A caller-chosen URL never gets the operator's key, whatever the provider family.
        assert_eq!(
            key_for(&openai("https://attacker.example/v1"), None, &env),
            None
        );
        assert_eq!(key_for(&compatible(OPENAI_DEFAULT_BASE), None, &env), None);
        assert_eq!(
            key_for(&compatible("http://127.0.0.1:9/v1"), None, &env),
            None
        );
        assert_eq!(
            key_for(
                &Route::Bedrock {
                    model_id: "x".into()
                },
                None,
                &env
            ),
            None
        );
        // An empty inline key counts as none; a configured key is always used.
        let empty = SecretValue::Inline(" ".into());
        assert_eq!(
            key_for(&openai("https://attacker.example/v1"), Some(&empty), &env),
            None
        );
        let given = SecretValue::Inline("sk-given".into());
        assert_eq!(
            key_for(&compatible("http://x/v1"), Some(&given), &env),
            Some(given.clone())
        );
        // Without OPENAI_API_KEY there is nothing to fall back to.
        let unset = Env {
            openai_api_key_set: false,
            ..env
        };
        assert_eq!(key_for(&openai(OPENAI_DEFAULT_BASE), None, &unset), None);
    }

    #[test]
    fn origin_is_scheme_host_and_port_as_written() {
        assert_eq!(
            origin("https://API.example.com:8443/v1?x"),
            Some("https://api.example.com:8443".into())
        );
        assert_eq!(origin("http://user:pw@h:1/v1"), Some("http://h:1".into()));
        assert_ne!(origin("https://h/v1"), origin("https://h:443/v1"));
        assert_ne!(origin("http://h/v1"), origin("https://h/v1"));
        assert_eq!(origin("auto"), None);
        assert_eq!(origin("http:///v1"), None);
    }

    #[test]
    fn judge_shares_the_main_key_only_with_the_same_upstream() {
        let mut cfg = WorkerConfig::for_model("m");
        cfg.api_key = Some(SecretValue::Inline("sk-main".into()));
        let env = env_with(None);
        let main = compatible("http://127.0.0.1:8000/v1");
        let main_key = Some(SecretValue::Inline("sk-main".into()));
        assert_eq!(
            judge_key(
                &cfg,
                &main,
                &compatible("http://127.0.0.1:8000/other"),
                &env
            ),
            main_key
        );
        assert_eq!(
            judge_key(&cfg, &main, &compatible("http://127.0.0.1:8001/v1"), &env),
            None
        );
        assert_eq!(
            judge_key(
                &cfg,
                &main,
                &Route::Bedrock {
                    model_id: "x".into()
                },
                &env
            ),
            None
        );
        // A judge on OpenAI's API may use the operator's OpenAI key, never the main one.
        assert!(is_env_key(judge_key(
            &cfg,
            &main,
            &openai(OPENAI_DEFAULT_BASE),
            &env
        )));
        cfg.judge_api_key = Some(SecretValue::Inline("sk-judge".into()));
        assert_eq!(
            judge_key(&cfg, &main, &compatible("http://elsewhere/v1"), &env),
            Some(SecretValue::Inline("sk-judge".into()))
        );
    }

    #[test]
    fn bedrock_bearer_token_is_withheld_from_a_custom_endpoint() {
        let env = AwsEnv {
            bearer_token: true,
            access_keys: true,
            endpoint: Some("http://127.0.0.1:8100".into()),
            ..AwsEnv::default()
        };
        let args = |e: &str| {
            BTreeMap::from([(
                "aws_bedrock_runtime_endpoint".to_owned(),
                serde_json::json!(e),
            )])
        };
        let custom = aws_env_for(Some(&args("https://attacker.example")), env.clone());
        assert!(!custom.bearer_token && custom.access_keys);
        assert!(aws_env_for(Some(&args("http://127.0.0.1:8100/")), env.clone()).bearer_token);
        assert!(aws_env_for(None, env).bearer_token);
    }
}
