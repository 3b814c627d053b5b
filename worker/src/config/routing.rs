//! Model-string routing with LiteLLM's conventions: which provider family serves a model string
//! and at which base URL. An explicit provider wins over the prefix.
//!
//! Pure and built without the `server` feature: [`resolve_routes`] is what both
//! `WorkerConfig::validate` (and so the operator) and the worker's runtime use to decide where the
//! candidates and the judge go, so a configuration the operator accepts is one the worker starts.

use super::bedrock::{BedrockField, check_bedrock_config};
use super::{ConfigError, ProviderKind, WorkerConfig};

/// OpenAI's public API, used for `endpoint: auto` unless `OPENAI_BASE_URL` says otherwise.
pub const OPENAI_DEFAULT_BASE: &str = "https://api.openai.com/v1";

/// Where a model string goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// OpenAI's API (or the base URL in `OPENAI_BASE_URL`).
    OpenAi { base_url: String, model: String },
    /// Any OpenAI-compatible server at an explicit URL (vLLM, TGI, proxies, the simulator).
    OpenAiCompatible { base_url: String, model: String },
    /// AWS Bedrock (Converse API) with a model or inference-profile id.
    Bedrock { model_id: String },
}

impl Route {
    /// The resolved provider family; never [`ProviderKind::Litellm`].
    pub fn kind(&self) -> ProviderKind {
        match self {
            Route::OpenAi { .. } => ProviderKind::Openai,
            Route::OpenAiCompatible { .. } => ProviderKind::OpenaiCompatible,
            Route::Bedrock { .. } => ProviderKind::Bedrock,
        }
    }

    /// Whether one call can return several candidates (OpenAI's `n`); Converse has no `n`.
    pub fn supports_n(&self) -> bool {
        !matches!(self, Route::Bedrock { .. })
    }
}

/// Why a model string cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("model {model:?} has an empty name after its provider prefix")]
    EmptyName { model: String },
    #[error(
        "model {model:?} is served by an OpenAI-compatible server, which needs an endpoint URL instead of \"auto\""
    )]
    NeedsEndpoint { model: String },
}

/// Resolves a route. `openai_base_env` is the value of `OPENAI_BASE_URL`/`OPENAI_API_BASE`, passed
/// in so the function stays pure.
pub fn route(
    provider: Option<ProviderKind>,
    endpoint: &str,
    model: &str,
    openai_base_env: Option<&str>,
) -> Result<Route, RouteError> {
    let explicit_url = (endpoint != "auto").then(|| endpoint.trim_end_matches('/').to_owned());
    let (prefix, bare) = split_prefix(model);
    if bare.is_empty() {
        return Err(RouteError::EmptyName {
            model: model.to_owned(),
        });
    }
    let openai_base = || {
        explicit_url
            .clone()
            .or_else(|| {
                openai_base_env
                    .filter(|s| !s.is_empty())
                    .map(|s| s.trim_end_matches('/').to_owned())
            })
            .unwrap_or_else(|| OPENAI_DEFAULT_BASE.to_owned())
    };
    let kind = match provider {
        Some(ProviderKind::Litellm) | None => match prefix {
            Some("bedrock") => ProviderKind::Bedrock,
            Some("hosted_vllm") | Some("vllm") => ProviderKind::OpenaiCompatible,
            Some("openai") => ProviderKind::Openai,
            _ if explicit_url.is_some() => ProviderKind::OpenaiCompatible,
            _ => ProviderKind::Openai,
        },
        Some(explicit) => explicit,
    };
    match kind {
        // `Litellm` was resolved to a family just above; it cannot reach this arm's alternative.
        ProviderKind::Openai | ProviderKind::Litellm => Ok(Route::OpenAi {
            base_url: openai_base(),
            model: bare.to_owned(),
        }),
        ProviderKind::OpenaiCompatible => match explicit_url {
            Some(base_url) => Ok(Route::OpenAiCompatible {
                base_url,
                model: bare.to_owned(),
            }),
            None => Err(RouteError::NeedsEndpoint {
                model: model.to_owned(),
            }),
        },
        ProviderKind::Bedrock => Ok(Route::Bedrock {
            model_id: bare.to_owned(),
        }),
    }
}

/// Where a configuration's calls go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    /// The candidates' upstream.
    pub main: Route,
    /// The judge's upstream (best-of-n only).
    pub judge: Option<Route>,
}

fn invalid(param: &'static str, message: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        param,
        message: message.to_string(),
    }
}

/// Resolves the candidates' and the judge's routes and checks everything about them that the
/// configuration alone decides (Bedrock settings, `candidates_per_call` against `n` support).
/// `openai_base_env` is `OPENAI_BASE_URL`; it changes a base URL, never whether routing succeeds.
pub fn resolve_routes(
    cfg: &WorkerConfig,
    openai_base_env: Option<&str>,
) -> Result<Routes, ConfigError> {
    let main = route(cfg.provider, &cfg.endpoint, &cfg.model, openai_base_env)
        .map_err(|e| invalid("model", e))?;
    check_route(cfg, &main, "model")?;
    let per_call = cfg
        .upstream
        .as_ref()
        .and_then(|u| u.candidates_per_call)
        .unwrap_or(1);
    if per_call > 1 && !main.supports_n() {
        return Err(invalid(
            "upstream.candidates_per_call",
            format!(
                "{} does not return several candidates per call; leave upstream.candidates_per_call at 1",
                main.kind().as_str()
            ),
        ));
    }
    // A self-consistency endpoint gets a judge too when requests may switch to best-of-n and a
    // judge model is named.
    let requests_may_judge = cfg
        .allow_request_override
        .contains(&super::OverrideKey::Name)
        && cfg.judge_model.is_some();
    if cfg.uses_prm() && !main.supports_n() {
        // Step-wise generation continues a partial assistant message (`continue_final_message`),
        // which only OpenAI-compatible servers such as vLLM offer.
        return Err(invalid(
            "model",
            format!(
                "{} with a process reward model needs an OpenAI-compatible generator (vLLM); {} cannot continue a partial answer",
                cfg.alg.as_str(),
                main.kind().as_str()
            ),
        ));
    }
    let judge = if cfg.uses_llm_judge() || requests_may_judge {
        let judge = judge_route(cfg, &main, openai_base_env)?;
        check_route(cfg, &judge, "judge_model")?;
        Some(judge)
    } else {
        None
    };
    Ok(Routes { main, judge })
}

/// The judge's route. A judge without its own endpoint or provider goes where the candidates go.
fn judge_route(
    cfg: &WorkerConfig,
    main: &Route,
    openai_base_env: Option<&str>,
) -> Result<Route, ConfigError> {
    let judge_model = cfg.judge_model.as_deref().unwrap_or(&cfg.model);
    let endpoint = cfg.judge_base_url.as_deref().unwrap_or("auto");
    let (provider, endpoint) = match (cfg.judge_provider, endpoint) {
        (None, "auto") if !matches!(main, Route::OpenAi { .. }) => (
            cfg.provider.or(Some(ProviderKind::Litellm)),
            cfg.endpoint.as_str(),
        ),
        (p, e) => (p, e),
    };
    route(provider, endpoint, judge_model, openai_base_env).map_err(|e| invalid("judge_model", e))
}

/// The provider-specific checks of a route that need only the configuration.
fn check_route(
    cfg: &WorkerConfig,
    route: &Route,
    model_param: &'static str,
) -> Result<(), ConfigError> {
    if let Route::Bedrock { model_id } = route {
        check_bedrock_config(model_id, cfg.extra_args.as_ref()).map_err(|e| {
            let param = match e.field() {
                BedrockField::ModelId => model_param,
                BedrockField::ExtraArgs => "extra_args",
            };
            invalid(param, e)
        })?;
    }
    Ok(())
}

/// Splits a LiteLLM provider prefix off a model string. Only known prefixes count, so model ids
/// that contain a slash (`Qwen/Qwen2.5-7B-Instruct`) stay whole.
fn split_prefix(model: &str) -> (Option<&'static str>, &str) {
    for prefix in [
        "bedrock/converse",
        "bedrock",
        "hosted_vllm",
        "vllm",
        "openai",
    ] {
        if let Some(rest) = model.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) {
            let family = if prefix == "bedrock/converse" {
                "bedrock"
            } else {
                prefix
            };
            return (Some(family), rest);
        }
    }
    (None, model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::bedrock::BedrockConfigError;

    fn r(p: Option<ProviderKind>, e: &str, m: &str) -> Route {
        route(p, e, m, None).unwrap()
    }

    #[test]
    fn litellm_prefixes() {
        assert_eq!(
            r(Some(ProviderKind::Litellm), "auto", "gpt-4o-mini"),
            Route::OpenAi {
                base_url: OPENAI_DEFAULT_BASE.into(),
                model: "gpt-4o-mini".into()
            }
        );
        assert_eq!(
            r(None, "auto", "openai/gpt-4o").kind(),
            ProviderKind::Openai
        );
        assert_eq!(
            r(
                None,
                "auto",
                "bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0"
            ),
            Route::Bedrock {
                model_id: "us.anthropic.claude-3-7-sonnet-20250219-v1:0".into()
            }
        );
        assert_eq!(
            r(
                None,
                "auto",
                "bedrock/converse/global.anthropic.claude-sonnet-4"
            ),
            Route::Bedrock {
                model_id: "global.anthropic.claude-sonnet-4".into()
            }
        );
        assert_eq!(
            r(None, "http://vllm:8000/v1/", "hosted_vllm/Qwen/Qwen2.5-7B"),
            Route::OpenAiCompatible {
                base_url: "http://vllm:8000/v1".into(),
                model: "Qwen/Qwen2.5-7B".into()
            }
        );
    }

    #[test]
    fn explicit_url_with_bare_model_is_openai_compatible() {
        assert_eq!(
            r(
                None,
                "http://127.0.0.1:8100/v1",
                "Qwen/Qwen2.5-Math-1.5B-Instruct"
            ),
            Route::OpenAiCompatible {
                base_url: "http://127.0.0.1:8100/v1".into(),
                model: "Qwen/Qwen2.5-Math-1.5B-Instruct".into()
            }
        );
    }

    #[test]
    fn explicit_provider_wins_over_prefix() {
        assert_eq!(
            r(Some(ProviderKind::Openai), "auto", "bedrock/x").kind(),
            ProviderKind::Openai
        );
        assert_eq!(
            r(Some(ProviderKind::Bedrock), "auto", "claude").kind(),
            ProviderKind::Bedrock
        );
    }

    #[test]
    fn openai_base_env_applies_to_auto_only() {
        let env = Some("http://127.0.0.1:9/v1");
        assert_eq!(
            route(None, "auto", "gpt-4o-mini", env).unwrap(),
            Route::OpenAi {
                base_url: "http://127.0.0.1:9/v1".into(),
                model: "gpt-4o-mini".into()
            }
        );
    }

    #[test]
    fn compatible_needs_a_url() {
        assert!(
            route(None, "auto", "hosted_vllm/x", None)
                .unwrap_err()
                .to_string()
                .contains("needs an endpoint URL")
        );
        assert!(route(None, "auto", "openai/", None).is_err());
    }

    fn refused(json: &str) -> (Option<&'static str>, String) {
        let cfg: WorkerConfig = serde_json::from_str(json).unwrap();
        let e = cfg.validate().unwrap_err();
        (e.param(), e.to_string())
    }

    #[test]
    fn validate_refuses_a_compatible_model_without_endpoint() {
        assert_eq!(
            refused(r#"{"model":"hosted_vllm/x","endpoint":"auto"}"#),
            (
                Some("model"),
                r#"model "hosted_vllm/x" is served by an OpenAI-compatible server, which needs an endpoint URL instead of "auto""#
                    .to_owned()
            )
        );
    }

    #[test]
    fn validate_refuses_an_invalid_bedrock_region_and_settings() {
        assert_eq!(
            refused(
                r#"{"model":"bedrock/anthropic.claude","extra_args":{"aws_region_name":"US-EAST-1"}}"#
            ),
            (
                Some("extra_args"),
                r#""US-EAST-1" is not an AWS region name"#.to_owned()
            )
        );
        let (param, message) = refused(
            r#"{"model":"bedrock/m","extra_args":{"aws_bedrock_runtime_endpoint":"https://h/x?a=1"}}"#,
        );
        assert_eq!(param, Some("extra_args"));
        assert!(
            message.contains("must not have a query string"),
            "{message}"
        );
        assert_eq!(
            refused(r#"{"model":"bedrock/invoke/anthropic.claude"}"#).0,
            Some("model")
        );
        // The same region under another provider is not Bedrock's business.
        let cfg: WorkerConfig = serde_json::from_str(
            r#"{"model":"gpt-4o-mini","extra_args":{"aws_region_name":"US-EAST-1"}}"#,
        )
        .unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn validate_refuses_judge_routing_errors() {
        assert_eq!(
            refused(r#"{"model":"gpt-4o-mini","alg":"best-of-n","judge_model":"hosted_vllm/j"}"#).0,
            Some("judge_model")
        );
        assert_eq!(
            refused(
                r#"{"model":"gpt-4o-mini","alg":"best-of-n","judge_model":"bedrock/invoke/x"}"#
            ),
            (
                Some("judge_model"),
                BedrockConfigError::InvokeNotSupported.to_string()
            )
        );
        // A judge following a Bedrock main model shares its extra_args.
        assert_eq!(
            refused(
                r#"{"model":"bedrock/m","alg":"best-of-n","extra_args":{"aws_access_key_id":"AKID"}}"#
            )
            .0,
            Some("extra_args")
        );
    }

    #[test]
    fn validate_refuses_n_for_bedrock_only() {
        assert_eq!(
            refused(r#"{"model":"bedrock/m","upstream":{"candidates_per_call":4}}"#),
            (
                Some("upstream.candidates_per_call"),
                "bedrock does not return several candidates per call; leave upstream.candidates_per_call at 1"
                    .to_owned()
            )
        );
        let cfg: WorkerConfig = serde_json::from_str(
            r#"{"model":"Qwen/Q","endpoint":"http://127.0.0.1:8000/v1","upstream":{"candidates_per_call":4}}"#,
        )
        .unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn resolved_routes_for_best_of_n() {
        let cfg: WorkerConfig = serde_json::from_str(
            r#"{"model":"Qwen/Q","endpoint":"http://127.0.0.1:8000/v1","alg":"best-of-n"}"#,
        )
        .unwrap();
        let routes = resolve_routes(&cfg, None).unwrap();
        // The judge follows the candidates to their server.
        assert_eq!(routes.judge, Some(routes.main.clone()));
        assert_eq!(routes.main.kind(), ProviderKind::OpenaiCompatible);
        assert_eq!(routes.main.kind().as_str(), "openai-compatible");
    }
}
