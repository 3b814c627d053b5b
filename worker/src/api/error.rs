//! Every error the worker returns, rendered as OpenAI's envelope
//! `{"error": {"message", "type", "param", "code"}}` with the matching status.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;

use crate::algorithms::AlgorithmError;
use crate::plan::BudgetError;
use crate::providers::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error(
        "the request body was not received within {} seconds (server.body_read_timeout_secs)",
        .0.as_secs_f64()
    )]
    RequestTimeout(Duration),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "The model `{model}` does not exist or you do not have access to it. Available models: {available}"
    )]
    ModelNotFound { model: String, available: String },
    #[error("unknown route {0}")]
    NotFound(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the worker is not configured yet: POST /configure first (or start it with --config)")]
    NotConfigured,
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    UpstreamTimeout(String),
}

/// The OpenAI error envelope.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// Error details, as OpenAI clients parse them.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorBody {
    /// Human-readable, precise description.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`, `rate_limit_error`,
    /// `upstream_error`, `timeout_error` or `service_unavailable`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// A stable machine-readable code.
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: impl Into<Option<String>>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: param.into(),
            code: Some("invalid_value"),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::ModelNotFound { .. } | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Metrics outcome label.
    pub fn outcome(&self) -> &'static str {
        match self.status().as_u16() {
            504 => "timeout",
            502 | 429 => "upstream_error",
            500 => "internal_error",
            _ => "client_error",
        }
    }

    pub fn body(&self) -> ErrorBody {
        let (kind, code, param) = match self {
            ApiError::BadRequest { param, code, .. } => {
                ("invalid_request_error", *code, param.clone())
            }
            ApiError::PayloadTooLarge(_) => {
                ("invalid_request_error", Some("request_too_large"), None)
            }
            ApiError::RequestTimeout(_) => ("invalid_request_error", Some("request_timeout"), None),
            ApiError::Unauthorized(_) => ("authentication_error", Some("invalid_api_key"), None),
            ApiError::Forbidden(_) => ("permission_error", Some("forbidden"), None),
            ApiError::ModelNotFound { .. } => (
                "invalid_request_error",
                Some("model_not_found"),
                Some("model".to_owned()),
            ),
            ApiError::NotFound(_) => ("invalid_request_error", Some("unknown_url"), None),
            ApiError::MethodNotAllowed => {
                ("invalid_request_error", Some("method_not_allowed"), None)
            }
            ApiError::NotConfigured => ("service_unavailable", Some("not_configured"), None),
            ApiError::RateLimited { .. } => ("rate_limit_error", Some("rate_limit_exceeded"), None),
            ApiError::Upstream(_) => ("upstream_error", Some("upstream_error"), None),
            ApiError::UpstreamTimeout(_) => ("timeout_error", Some("upstream_timeout"), None),
        };
        ErrorBody {
            message: self.to_string(),
            kind,
            param,
            code,
        }
    }

    /// Deterministic failures: a retry by the client would fail the same way (and re-run the
    /// whole fan-out), so tell openai-python not to.
    fn should_retry(&self) -> bool {
        matches!(
            self,
            ApiError::RateLimited { .. } | ApiError::Upstream(_) | ApiError::UpstreamTimeout(_)
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, Json(ErrorEnvelope { error: self.body() })).into_response();
        let headers = resp.headers_mut();
        if !self.should_retry() {
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if let ApiError::RateLimited {
            retry_after: Some(d),
            ..
        } = &self
            && let Ok(v) = HeaderValue::from_str(&d.as_secs().max(1).to_string())
        {
            headers.insert(header::RETRY_AFTER, v);
        }
        if let ApiError::Unauthorized(_) = &self {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<BudgetError> for ApiError {
    fn from(e: BudgetError) -> Self {
        ApiError::bad_request(e.to_string(), Some("budget".to_owned()))
    }
}

impl From<AlgorithmError> for ApiError {
    fn from(e: AlgorithmError) -> Self {
        let AlgorithmError::Upstream { errors, .. } = &e;
        let message = format!("no answer: {e}");
        if !errors.is_empty()
            && errors
                .iter()
                .all(|e| matches!(e, UpstreamError::Timeout(_)))
        {
            return ApiError::UpstreamTimeout(message);
        }
        // The upstream refused the request itself (bad parameter) for every candidate: that is
        // the client's error, and says so with the upstream's own words.
        if let Some(UpstreamError::Status {
            status,
            message: upstream,
            ..
        }) = errors.first()
        {
            let all_same = errors
                .iter()
                .all(|e| matches!(e, UpstreamError::Status { status: s, .. } if s == status));
            if all_same && matches!(status, 400 | 404 | 413 | 422) {
                return ApiError::BadRequest {
                    message: format!("the upstream rejected the request ({status}): {upstream}"),
                    param: None,
                    code: Some("upstream_rejected"),
                };
            }
            if all_same && *status == 429 {
                let retry_after = errors.iter().find_map(|e| match e {
                    UpstreamError::Status { retry_after, .. } => *retry_after,
                    _ => None,
                });
                return ApiError::RateLimited {
                    message,
                    retry_after,
                };
            }
        }
        ApiError::Upstream(message)
    }
}
