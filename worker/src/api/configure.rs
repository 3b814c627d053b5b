//! `POST /configure`: validate fully, then swap the runtime in one atomic store. Requests that
//! already started keep the runtime they loaded.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use schemars::JsonSchema;
use serde::Serialize;

use super::AppState;
use super::access::PeerAddr;
use super::error::ApiError;
use crate::config::{ConfigError, SecretAllowList, SecretValue, WorkerConfig};
use crate::runtime::Runtime;

/// Reply of a successful `/configure`. Never contains a secret.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ConfigureResponse {
    pub status: &'static str,
    pub message: String,
    pub model: String,
    pub alg: &'static str,
    pub default_budget: u32,
    pub max_budget: u32,
}

pub async fn configure(
    State(app): State<Arc<AppState>>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ConfigureResponse>, ApiError> {
    app.access.check_admin(&headers, peer)?;
    let bytes = super::read_body(body, app.max_body_bytes).await?;
    let result = apply(&app, &bytes);
    app.metrics
        .configure
        .with_label_values(&[if result.is_ok() {
            "success"
        } else {
            "rejected"
        }])
        .inc();
    result.map(Json)
}

fn apply(app: &AppState, bytes: &[u8]) -> Result<ConfigureResponse, ApiError> {
    let cfg: WorkerConfig =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes))
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                // "." is the document itself and "?" a position serde_path_to_error could not
                // name (a syntax error): neither is a field.
                let param = (path != "." && path != "?").then_some(path);
                ApiError::bad_request(format!("invalid configuration: {inner}"), param)
            })?;
    if cfg.server.is_some() {
        return Err(ApiError::bad_request(
            "server settings can only be set in the config file, not through /configure",
            Some("server".to_owned()),
        ));
    }
    check_secret_sources(&cfg, &app.access.configure_secrets)?;
    let runtime = Runtime::build(&cfg, &app.metrics, &app.env)
        .map_err(|e| hide_secret_read_errors(&cfg, e))?;
    let reply = ConfigureResponse {
        status: "success",
        message: format!(
            "Initialized {} with {} algorithm",
            runtime.model,
            runtime.algorithm.as_str()
        ),
        model: runtime.model.clone(),
        alg: runtime.algorithm.as_str(),
        default_budget: runtime.default_budget,
        max_budget: runtime.max_budget,
    };
    tracing::info!(model = %runtime.model, alg = runtime.algorithm.as_str(), "configuration applied");
    app.runtime.store(Some(Arc::new(runtime)));
    Ok(reply)
}

pub(crate) fn config_error(e: ConfigError) -> ApiError {
    let param = e.param().map(str::to_owned);
    ApiError::bad_request(e.to_string(), param)
}

/// Refuses file and environment secret sources outside the allow-list, and checks that the
/// admitted ones can be read, before anything is built. Every refusal of one field reads the same
/// whether the file exists or not, and no OS error is passed on: the caller must not be able to
/// probe the worker's filesystem or environment through these messages.
fn check_secret_sources(cfg: &WorkerConfig, allowed: &SecretAllowList) -> Result<(), ApiError> {
    for (param, source) in cfg.secret_references() {
        if matches!(source, SecretValue::Inline(_)) {
            continue;
        }
        if !allowed.admits(&source) {
            return Err(ApiError::bad_request(
                format!(
                    "{param}: this file or environment variable is not among the secret sources /configure may use \
                     (the worker's --configure-secret-dir and --configure-secret-env); send the value inline, \
                     or put the reference in the worker's config file"
                ),
                Some(param),
            ));
        }
        if source.read_now().is_err() {
            return Err(ApiError::bad_request(
                format!("{param}: the referenced secret cannot be read"),
                Some(param),
            ));
        }
    }
    Ok(())
}

/// A referenced secret can still fail to read while the runtime is built (the file was removed
/// after the check); the error for such a field is replaced by the generic one so that no OS
/// error reaches the caller.
fn hide_secret_read_errors(cfg: &WorkerConfig, e: ConfigError) -> ApiError {
    // The two forms of `SecretError`'s message; other errors of the same field pass through.
    let message = e.to_string();
    let is_read_error = message.contains("cannot be read") || message.contains("is not set");
    let by_reference = is_read_error
        && cfg.secret_references().into_iter().any(|(param, source)| {
            !matches!(source, SecretValue::Inline(_))
                && e.param()
                    .is_some_and(|p| param == p || param.starts_with(&format!("{p}.")))
        });
    match (by_reference, e.param()) {
        (true, Some(param)) => ApiError::bad_request(
            format!("{param}: the referenced secret cannot be read"),
            Some(param.to_owned()),
        ),
        _ => config_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> WorkerConfig {
        serde_json::from_str(json).unwrap()
    }

    fn message(e: ApiError) -> String {
        match e {
            ApiError::BadRequest { message, .. } => message,
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn read_errors_of_referenced_secrets_do_not_reach_the_caller() {
        let c = cfg(r#"{"model":"m","api_key":{"file":"/run/secrets/key"}}"#);
        let e = ConfigError::Invalid {
            param: "api_key",
            message: "secret file /run/secrets/key cannot be read: entity not found".into(),
        };
        assert_eq!(
            message(hide_secret_read_errors(&c, e)),
            "api_key: the referenced secret cannot be read"
        );
    }

    #[test]
    fn other_errors_pass_through() {
        let c = cfg(r#"{"model":"m","extra_args":{"aws_access_key_id":{"file":"/k"}}}"#);
        let e = ConfigError::Invalid {
            param: "extra_args",
            message: "region \"US-EAST-1\" is not a valid AWS region".into(),
        };
        assert!(message(hide_secret_read_errors(&c, e)).contains("US-EAST-1"));
        let inline = cfg(r#"{"model":"m","api_key":"k"}"#);
        let e = ConfigError::Invalid {
            param: "api_key",
            message: "environment variable X is not set".into(),
        };
        assert!(message(hide_secret_read_errors(&inline, e)).contains("X is not set"));
    }
}
