//! OpenAI chat completions over HTTP: OpenAI itself and every OpenAI-compatible server.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::{
    BoxFuture, ChatProvider, Completion, PreparedCall, ProviderError, RetryPolicy, UpstreamError,
    read_error, redact, send_with_retries, transport_error,
};
use crate::config::LiveSecret;

pub struct OpenAiProvider {
    kind: &'static str,
    url: String,
    model: String,
    api_key: Option<Arc<LiveSecret>>,
    client: reqwest::Client,
    retry: RetryPolicy,
    call_timeout: Duration,
    limit: Arc<Semaphore>,
}

/// Everything needed to build an [`OpenAiProvider`].
pub struct OpenAiSettings {
    pub kind: &'static str,
    pub base_url: String,
    pub model: String,
    pub api_key: Option<Arc<LiveSecret>>,
    pub client: reqwest::Client,
    pub retry: RetryPolicy,
    pub call_timeout: Duration,
    pub limit: Arc<Semaphore>,
}

impl OpenAiProvider {
    pub fn new(s: OpenAiSettings) -> Self {
        Self {
            kind: s.kind,
            url: format!("{}/chat/completions", s.base_url.trim_end_matches('/')),
            model: s.model,
            api_key: s.api_key,
            client: s.client,
            retry: s.retry,
            call_timeout: s.call_timeout,
            limit: s.limit,
        }
    }

    async fn send_once(&self, body: &Bytes) -> Result<Completion, UpstreamError> {
        let key = self.api_key.as_ref().map(|k| k.get());
        let mut req = self
            .client
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .timeout(self.call_timeout)
            .body(body.clone());
        if let Some(k) = key.as_deref().filter(|k| !k.is_empty()) {
            req = req.bearer_auth(k);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(e, self.call_timeout))?;
        if !resp.status().is_success() {
            let e = read_error(resp).await;
            return Err(UpstreamError::Status {
                status: e.status,
                message: redact(error_message(&e.body), key.as_deref()),
                retry_after: e.retry_after,
            });
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(e, self.call_timeout))?;
        super::parse_openai_completion(&bytes)
    }
}

impl ChatProvider for OpenAiProvider {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn supports_n(&self) -> bool {
        true
    }

    fn prepare(&self, mut body: Map<String, Value>) -> Result<PreparedCall, ProviderError> {
        body.insert("model".to_owned(), Value::String(self.model.clone()));
        // OpenAI deprecated `max_tokens` and its reasoning models refuse it, while
        // `max_completion_tokens` works on every chat model; other servers get what was sent.
        if self.kind == "openai"
            && !body.contains_key("max_completion_tokens")
            && let Some(v) = body.remove("max_tokens")
        {
            body.insert("max_completion_tokens".to_owned(), v);
        }
        PreparedCall::json(&body)
    }

    fn send<'a>(
        &'a self,
        call: &'a PreparedCall,
    ) -> BoxFuture<'a, Result<Completion, UpstreamError>> {
        Box::pin(send_with_retries(&self.limit, &self.retry, || {
            self.send_once(&call.body)
        }))
    }
}

/// The `error.message` of an OpenAI-style error body, or the body text itself.
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let msg = v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .or_else(|| v.get("error"));
        if let Some(Value::String(s)) = msg {
            return s.clone();
        }
    }
    let text = String::from_utf8_lossy(body).trim().to_owned();
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_prefers_openai_envelope() {
        assert_eq!(
            error_message(br#"{"error":{"message":"Rate limit","type":"x"}}"#),
            "Rate limit"
        );
        assert_eq!(error_message(b"upstream exploded"), "upstream exploded");
        assert_eq!(error_message(b""), "(empty body)");
    }

    #[test]
    fn redacts_echoed_keys() {
        assert_eq!(
            redact("bad key sk-secret1".into(), ["sk-secret1"]),
            "bad key [redacted]"
        );
    }
}
