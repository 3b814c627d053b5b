//! Model-string routing with LiteLLM's conventions: which provider family serves a model string
//! and at which base URL. An explicit provider wins over the prefix.

use crate::config::ProviderKind;

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
    pub fn kind(&self) -> &'static str {
        match self {
            Route::OpenAi { .. } => "openai",
            Route::OpenAiCompatible { .. } => "openai-compatible",
            Route::Bedrock { .. } => "bedrock",
        }
    }
}

/// Resolves a route. `openai_base_env` is the value of `OPENAI_BASE_URL`/`OPENAI_API_BASE`, passed
/// in so the function stays pure.
pub fn route(
    provider: Option<ProviderKind>,
    endpoint: &str,
    model: &str,
    openai_base_env: Option<&str>,
) -> Result<Route, String> {
    let explicit_url = (endpoint != "auto").then(|| endpoint.trim_end_matches('/').to_owned());
    let (prefix, bare) = split_prefix(model);
    if bare.is_empty() {
        return Err(format!(
            "model {model:?} has an empty name after its provider prefix"
        ));
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
    let family = match provider {
        Some(ProviderKind::Openai) => Family::OpenAi,
        Some(ProviderKind::Bedrock) => Family::Bedrock,
        Some(ProviderKind::OpenaiCompatible) => Family::Compatible,
        Some(ProviderKind::Litellm) | None => match prefix {
            Some("bedrock") => Family::Bedrock,
            Some("hosted_vllm") | Some("vllm") => Family::Compatible,
            Some("openai") => Family::OpenAi,
            _ if explicit_url.is_some() => Family::Compatible,
            _ => Family::OpenAi,
        },
    };
    match family {
        Family::OpenAi => Ok(Route::OpenAi {
            base_url: openai_base(),
            model: bare.to_owned(),
        }),
        Family::Compatible => match explicit_url {
            Some(base_url) => Ok(Route::OpenAiCompatible {
                base_url,
                model: bare.to_owned(),
            }),
            None => Err(format!(
                "model {model:?} is served by an OpenAI-compatible server, which needs an endpoint URL instead of \"auto\""
            )),
        },
        Family::Bedrock => Ok(Route::Bedrock {
            model_id: bare.to_owned(),
        }),
    }
}

enum Family {
    OpenAi,
    Compatible,
    Bedrock,
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
        assert_eq!(r(None, "auto", "openai/gpt-4o").kind(), "openai");
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
            "openai"
        );
        assert_eq!(
            r(Some(ProviderKind::Bedrock), "auto", "claude").kind(),
            "bedrock"
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
                .contains("needs an endpoint URL")
        );
        assert!(route(None, "auto", "openai/", None).is_err());
    }
}
