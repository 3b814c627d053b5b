//! The provider boundary: every upstream (OpenAI, any OpenAI-compatible server, later Bedrock)
//! implements [`ChatProvider`]. A request is *prepared* once — its upstream body built and
//! serialised a single time — and then *sent* once per candidate, so a budget of N costs N
//! network calls and no re-serialisation.

pub mod bedrock;
pub(crate) mod http;
pub mod openai;
mod redact;
mod retry;
#[cfg(test)]
mod strategies;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::config::ProviderKind;

pub use http::{
    ErrorResponse, HttpClient, PostAuth, USER_AGENT, UpstreamUrl, post_json, root_cause,
    transport_error,
};
pub use redact::redact;
pub use retry::{RetryPolicy, parse_retry_after, send_with_retries};

/// A boxed future, so the trait stays object-safe (one `Arc<dyn ChatProvider>` per runtime).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an algorithm asks of an upstream: one chat completion per call.
pub trait ChatProvider: Send + Sync + 'static {
    /// Provider family for metrics and logs (its `as_str()`: `openai`, `openai-compatible`,
    /// `bedrock`).
    fn kind(&self) -> ProviderKind;
    /// Upstream model name (prefix stripped), also the metrics label.
    fn model(&self) -> &str;
    /// Builds the upstream request once. `body` is an OpenAI chat request without the
    /// worker's own fields; the provider sets the model and translates as needed.
    fn prepare(&self, body: Map<String, Value>) -> Result<PreparedCall, ProviderError>;
    /// Whether one call can return several candidates (OpenAI's `n`).
    fn supports_n(&self) -> bool {
        false
    }
    /// Sends one prepared call (with the provider's retries and concurrency limit).
    fn send<'a>(
        &'a self,
        call: &'a PreparedCall,
    ) -> BoxFuture<'a, Result<Completion, UpstreamError>>;
}

/// An upstream request ready to send any number of times.
#[derive(Debug, Clone)]
pub struct PreparedCall {
    pub body: Bytes,
}

impl PreparedCall {
    /// Serialises a request body, once.
    pub fn json(body: &impl serde::Serialize) -> Result<Self, ProviderError> {
        let bytes =
            serde_json::to_vec(body).map_err(|e| ProviderError::Translate(e.to_string()))?;
        Ok(Self {
            body: Bytes::from(bytes),
        })
    }
}

/// One upstream answer: usually one candidate, several when the upstream was asked for `n`.
#[derive(Debug, Clone)]
pub struct Completion {
    pub candidates: Vec<Candidate>,
    pub usage: Usage,
    pub system_fingerprint: Option<String>,
}

/// One candidate answer, kept verbatim and pre-digested for voting.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The assistant message exactly as the upstream returned it (OpenAI shape).
    pub message: Value,
    pub finish_reason: Option<String>,
    /// Text content: a string, or the text parts of a list joined by a space.
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub logprobs: Option<Value>,
    /// vLLM's `stop_reason`. Step-wise search tells a finished answer from a finished step by it.
    pub stop_reason: UpstreamStop,
}

/// Why the upstream stopped generating, as vLLM reports it in a choice's `stop_reason`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UpstreamStop {
    /// No `stop_reason` field (OpenAI and most servers other than vLLM).
    #[default]
    NotReported,
    /// `null`: the model ended its answer (or a stop token id matched).
    EndOfSequence,
    /// One of the request's `stop` strings matched (it is not part of the text).
    Matched(String),
}

/// A tool call as voted on: name and raw JSON arguments string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

/// Token usage; summed over every call of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// A provider could not be built or a request could not be translated for it.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{0}")]
    Translate(String),
}

/// Why one upstream call failed (after retries). Messages never contain credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the upstream answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("the upstream answered with an unreadable body: {0}")]
    Malformed(String),
    #[error("the upstream connection failed: {0}")]
    Transport(String),
    /// The request could not be signed (bad credentials in the configuration): another attempt
    /// would fail the same way, so it is not retried.
    #[error("cannot sign the request: {0}")]
    Signing(String),
}

impl UpstreamError {
    /// Worth another attempt: connection problems, 408, 429 and 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Transport(_) => true,
            UpstreamError::Status { status, .. } => {
                *status == 408 || *status == 429 || *status >= 500
            }
            UpstreamError::Timeout(_) | UpstreamError::Malformed(_) | UpstreamError::Signing(_) => {
                false
            }
        }
    }

    /// A bounded label for metrics.
    pub fn status_label(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect_error",
            UpstreamError::Transport(_) => "transport_error",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Malformed(_) => "malformed",
            UpstreamError::Signing(_) => "signing_error",
            UpstreamError::Status { status, .. } => match status {
                400 => "400",
                401 => "401",
                403 => "403",
                404 => "404",
                408 => "408",
                422 => "422",
                429 => "429",
                500 => "500",
                502 => "502",
                503 => "503",
                504 => "504",
                400..=499 => "4xx",
                _ => "5xx",
            },
        }
    }
}

/// Shared by every provider built from one configuration.
pub type SharedProvider = Arc<dyn ChatProvider>;

impl Candidate {
    /// Digests an OpenAI assistant message; the message itself is kept untouched.
    pub fn from_message(
        message: Value,
        finish_reason: Option<String>,
        logprobs: Option<Value>,
    ) -> Self {
        let text = message_text(message.get("content"));
        let tool_calls = tool_calls_of(&message);
        Self {
            message,
            finish_reason,
            text,
            tool_calls,
            logprobs,
            stop_reason: UpstreamStop::NotReported,
        }
    }

    pub fn has_tool_calls(&self) -> bool {
        !self.tool_calls.is_empty()
    }
}

/// The tool calls of an OpenAI message (name and raw arguments string); malformed entries are
/// skipped.
pub fn tool_calls_of(message: &Value) -> Vec<ToolCall> {
    let Some(calls) = message.get("tool_calls").and_then(Value::as_array) else {
        return Vec::new();
    };
    calls
        .iter()
        .filter_map(|c| {
            let f = c.get("function")?;
            Some(ToolCall {
                name: f.get("name")?.as_str()?.to_owned(),
                arguments: match f.get("arguments") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                },
            })
        })
        .collect()
}

/// Text of an OpenAI `content`: a string, or the `text` parts of a list joined by a space.
pub fn message_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_content_text_parts_are_joined() {
        let c = Candidate::from_message(
            serde_json::json!({"role":"assistant","content":[{"type":"text","text":"a"},{"type":"image_url"},{"type":"text","text":"b"}]}),
            None,
            None,
        );
        assert_eq!(c.text, "a b");
    }

    #[test]
    fn a_signing_failure_is_not_retried() {
        let e = UpstreamError::Signing("invalid header value".into());
        assert!(!e.is_retryable());
        assert_eq!(e.status_label(), "signing_error");
        assert_eq!(
            e.to_string(),
            "cannot sign the request: invalid header value"
        );
        assert!(UpstreamError::Transport("reset".into()).is_retryable());
    }
}
