//! OpenAI chat completions over HTTP: OpenAI itself and every OpenAI-compatible server.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::{
    BoxFuture, Candidate, ChatProvider, Completion, HttpClient, PostAuth, PreparedCall,
    ProviderError, RetryPolicy, UpstreamError, UpstreamStop, UpstreamUrl, Usage, post_json, redact,
    send_with_retries,
};
use crate::config::{LiveSecret, ProviderKind};

mod wire;

pub struct OpenAiProvider {
    kind: ProviderKind,
    url: UpstreamUrl,
    model: String,
    api_key: Option<Arc<LiveSecret>>,
    client: HttpClient,
    retry: RetryPolicy,
    call_timeout: Duration,
    limit: Arc<Semaphore>,
}

/// Everything needed to build an [`OpenAiProvider`].
pub struct OpenAiSettings {
    pub kind: ProviderKind,
    pub base_url: String,
    pub model: String,
    pub api_key: Option<Arc<LiveSecret>>,
    pub client: HttpClient,
    pub retry: RetryPolicy,
    pub call_timeout: Duration,
    pub limit: Arc<Semaphore>,
}

impl OpenAiProvider {
    pub fn new(s: OpenAiSettings) -> Self {
        Self {
            kind: s.kind,
            url: s.client.url(format!(
                "{}/chat/completions",
                s.base_url.trim_end_matches('/')
            )),
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
        let auth = key.as_deref().map_or(PostAuth::None, PostAuth::Bearer);
        let bytes = post_json(
            &self.client,
            &self.url,
            body,
            self.call_timeout,
            auth,
            |e| UpstreamError::Status {
                status: e.status,
                message: redact(typed_error_message(&e.body), key.as_deref()),
                retry_after: e.retry_after,
            },
        )
        .await?;
        parse_completion(&bytes)
    }
}

impl ChatProvider for OpenAiProvider {
    fn kind(&self) -> ProviderKind {
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
        if self.kind == ProviderKind::Openai
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

/// Parses an OpenAI `chat.completion` body into candidates. Shared by all OpenAI-shaped upstreams.
///
/// Only the fields the worker reads are built (`choices[].message`, `finish_reason`, `logprobs`,
/// `usage`, `system_fingerprint`); `id`, `created`, `model` and anything else are skipped while
/// parsing instead of being built into a `Value` tree and dropped. The messages themselves stay
/// `Value`s, verbatim, as they are answered to the client.
pub fn parse_completion(body: &[u8]) -> Result<Completion, UpstreamError> {
    let wire: wire::ObjectOr<wire::Completion> = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Malformed(format!("invalid JSON ({e})")))?;
    let wire::ObjectOr::Object(wire) = wire else {
        return Err(UpstreamError::Malformed("expected a JSON object".into()));
    };
    let usage = match wire.usage {
        Some(wire::ObjectOr::Object(u)) => Usage {
            prompt_tokens: u.prompt_tokens.0.unwrap_or(0),
            completion_tokens: u.completion_tokens.0.unwrap_or(0),
        },
        _ => Usage::default(),
    };
    let Some(wire::ArrayOr::Array(choices)) = wire.choices else {
        return Err(UpstreamError::Malformed("no `choices` array".into()));
    };
    let mut candidates = Vec::with_capacity(choices.len());
    for choice in choices {
        let wire::ObjectOr::Object(choice) = choice else {
            return Err(UpstreamError::Malformed("a choice is not an object".into()));
        };
        let message = choice
            .message
            .filter(Value::is_object)
            .ok_or_else(|| UpstreamError::Malformed("a choice has no `message` object".into()))?;
        let logprobs = choice.logprobs.filter(|v| !v.is_null());
        let mut candidate = Candidate::from_message(message, choice.finish_reason.0, logprobs);
        candidate.stop_reason = match choice.stop_reason {
            None => UpstreamStop::NotReported,
            Some(Value::String(s)) => UpstreamStop::Matched(s),
            // `null`, or a stop token id (vLLM `stop_token_ids`): the answer ended.
            Some(_) => UpstreamStop::EndOfSequence,
        };
        candidates.push(candidate);
    }
    if candidates.is_empty() {
        return Err(UpstreamError::Malformed("`choices` is empty".into()));
    }
    Ok(Completion {
        candidates,
        usage,
        system_fingerprint: wire.system_fingerprint.0,
    })
}

/// What a client is told of an upstream error: `{error.type}: {message}` (like Bedrock's
/// `{Type}: {message}`), or the message alone when the body names no type.
fn typed_error_message(body: &[u8]) -> String {
    let message = error_message(body);
    let kind = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.pointer("/error/type")
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty())
            .map(str::to_owned)
    });
    match kind {
        Some(kind) => format!("{kind}: {message}"),
        None => message,
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
    use crate::providers::ToolCall;

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
    fn error_type_is_kept_in_front_of_the_message() {
        assert_eq!(
            typed_error_message(
                br#"{"error":{"message":"Rate limit","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
            ),
            "requests: Rate limit"
        );
        assert_eq!(
            typed_error_message(br#"{"detail":"Not Found"}"#),
            "Not Found"
        );
        assert_eq!(typed_error_message(b"<html>502</html>"), "<html>502</html>");
    }

    #[test]
    fn parses_tool_call_completion() {
        let body = br#"{"id":"x","choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"call_1","type":"function","function":{"name":"calculator","arguments":"{\"expression\":\"1+1\"}"}}]}}],
            "usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#;
        let c = parse_completion(body).unwrap();
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 5
            }
        );
        let cand = &c.candidates[0];
        assert_eq!(
            cand.tool_calls,
            vec![ToolCall {
                name: "calculator".into(),
                arguments: r#"{"expression":"1+1"}"#.into()
            }]
        );
        assert_eq!(cand.text, "");
        assert!(cand.message["content"].is_null());
    }

    #[test]
    fn stop_reason_tells_not_reported_from_end_of_sequence() {
        let stop = |choice: &str| {
            let body = format!(
                r#"{{"choices":[{{"message":{{"role":"assistant","content":"s"}},"finish_reason":"stop"{choice}}}]}}"#
            );
            parse_completion(body.as_bytes()).unwrap().candidates[0]
                .stop_reason
                .clone()
        };
        assert_eq!(stop(""), UpstreamStop::NotReported);
        assert_eq!(stop(r#","stop_reason":null"#), UpstreamStop::EndOfSequence);
        assert_eq!(
            stop(r#","stop_reason":151643"#),
            UpstreamStop::EndOfSequence
        );
        assert_eq!(
            stop(r#","stop_reason":"\n\n""#),
            UpstreamStop::Matched("\n\n".to_owned())
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for body in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"choices":[]}"#,
            br#"{"choices":[{"message":1}]}"#,
        ] {
            assert!(matches!(
                parse_completion(body),
                Err(UpstreamError::Malformed(_))
            ));
        }
    }

    /// The parser before typed deserialisation (a `Value` tree per body): the reference the
    /// typed parser must agree with on every body.
    fn parse_completion_via_value_tree(body: &[u8]) -> Result<Completion, UpstreamError> {
        let mut value: Value = serde_json::from_slice(body)
            .map_err(|e| UpstreamError::Malformed(format!("invalid JSON ({e})")))?;
        let obj = value
            .as_object_mut()
            .ok_or_else(|| UpstreamError::Malformed("expected a JSON object".into()))?;
        let usage = obj
            .get("usage")
            .map(|v| {
                let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                Usage {
                    prompt_tokens: n("prompt_tokens"),
                    completion_tokens: n("completion_tokens"),
                }
            })
            .unwrap_or_default();
        let system_fingerprint = obj
            .get("system_fingerprint")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let Some(Value::Array(choices)) = obj.remove("choices") else {
            return Err(UpstreamError::Malformed("no `choices` array".into()));
        };
        let mut candidates = Vec::with_capacity(choices.len());
        for choice in choices {
            let Value::Object(mut choice) = choice else {
                return Err(UpstreamError::Malformed("a choice is not an object".into()));
            };
            let message = choice
                .remove("message")
                .filter(Value::is_object)
                .ok_or_else(|| {
                    UpstreamError::Malformed("a choice has no `message` object".into())
                })?;
            let finish_reason = choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let logprobs = choice.remove("logprobs").filter(|v| !v.is_null());
            candidates.push(Candidate::from_message(message, finish_reason, logprobs));
        }
        if candidates.is_empty() {
            return Err(UpstreamError::Malformed("`choices` is empty".into()));
        }
        Ok(Completion {
            candidates,
            usage,
            system_fingerprint,
        })
    }

    /// Same candidates (messages re-serialised byte for byte, as the client gets them), usage
    /// and fingerprint, or the same error message (only serde's own wording of invalid JSON
    /// may differ between a `Value` and a typed parse).
    fn assert_same_parse(body: &[u8]) {
        let typed = parse_completion(body);
        let tree = parse_completion_via_value_tree(body);
        match (&typed, &tree) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.usage, b.usage);
                assert_eq!(a.system_fingerprint, b.system_fingerprint);
                assert_eq!(a.candidates.len(), b.candidates.len());
                for (x, y) in a.candidates.iter().zip(&b.candidates) {
                    assert_eq!(
                        serde_json::to_vec(&x.message).unwrap(),
                        serde_json::to_vec(&y.message).unwrap()
                    );
                    assert_eq!(x.finish_reason, y.finish_reason);
                    assert_eq!(x.text, y.text);
                    assert_eq!(x.tool_calls, y.tool_calls);
                    assert_eq!(x.logprobs, y.logprobs);
                }
            }
            (Err(UpstreamError::Malformed(a)), Err(UpstreamError::Malformed(b))) => {
                if !(a.starts_with("invalid JSON") && b.starts_with("invalid JSON")) {
                    assert_eq!(a, b);
                }
            }
            _ => panic!(
                "typed {typed:?} but value tree {tree:?} for {}",
                String::from_utf8_lossy(body)
            ),
        }
    }

    #[test]
    fn typed_parse_agrees_with_the_value_tree_on_edge_cases() {
        for body in [
            &br#"{"choices":[{"message":{"role":"assistant","content":"4"},"finish_reason":7,"logprobs":null}],"usage":{"prompt_tokens":-1,"completion_tokens":2.5},"system_fingerprint":["x"]}"#[..],
            br#"{"choices":[{"message":{"role":"assistant","content":"4"}}],"usage":"none"}"#,
            br#"{"choices":{"0":{"message":{}}}}"#,
            br#"{"choices":"many"}"#,
            br#"{"choices":[[1,2]]}"#,
            br#"{"choices":[{"message":{"content":[{"type":"text","text":"a"}]},"logprobs":{"content":[]}}],"usage":{"prompt_tokens":18446744073709551615}}"#,
            b"[]",
            br#""text""#,
            b"null",
            br#"{"choices":["#,
            b"",
        ] {
            assert_same_parse(body);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_completion_bodies_never_panic(
            value in crate::providers::strategies::json_value(),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            let _ = parse_completion(&serde_json::to_vec(&value).unwrap());
            let _ = parse_completion(&bytes);
            let _ = error_message(&bytes);
        }

        #[test]
        fn typed_parse_agrees_with_the_value_tree(
            body in crate::providers::strategies::completion_body(),
        ) {
            assert_same_parse(&serde_json::to_vec(&body).unwrap());
        }
    }
}
