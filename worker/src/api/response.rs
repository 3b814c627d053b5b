//! The response shapes: `chat.completion`, and the SSE `chat.completion.chunk` stream of the
//! selected answer. Pure functions.

use bytes::Bytes;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Value, json};

use super::error::ErrorBody;
use super::metadata::Metadata;
use crate::providers::{Candidate, Usage};

/// A standard `chat.completion`, plus `metadata` when the request set `return_response_only: false`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-its-…`
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model the request named.
    pub model: String,
    /// Exactly one choice: the selected candidate.
    pub choices: Vec<Choice>,
    /// Summed over every upstream call of the request: all candidates and the judge.
    pub usage: UsageOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// How the answer was chosen: every candidate, and the vote or the judge's scores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Choice {
    pub index: u32,
    /// The selected assistant message as the upstream returned it.
    pub message: Value,
    pub logprobs: Option<Value>,
    /// `stop`, `length`, `tool_calls` or `content_filter`.
    pub finish_reason: String,
}

#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
pub struct UsageOut {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total(),
        }
    }
}

/// `tool_calls` when the answer calls tools, else the upstream's reason when it is a standard one.
pub fn finish_reason(c: &Candidate) -> &'static str {
    if c.has_tool_calls() {
        return "tool_calls";
    }
    match c.finish_reason.as_deref() {
        Some("length") => "length",
        Some("content_filter") => "content_filter",
        _ => "stop",
    }
}

/// Makes an upstream message a well-formed OpenAI assistant message: `role` set, `content`
/// present (null when absent), every tool call with an `id` and `type`.
pub fn normalise_message(message: Value, ids: &mut impl FnMut() -> String) -> Value {
    let Value::Object(mut m) = message else {
        return json!({"role": "assistant", "content": null});
    };
    m.insert("role".into(), json!("assistant"));
    m.entry("content").or_insert(Value::Null);
    if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
        for call in calls.iter_mut().filter_map(Value::as_object_mut) {
            if call
                .get("id")
                .is_none_or(|v| v.as_str().is_none_or(|s| s.is_empty()))
            {
                call.insert("id".into(), json!(ids()));
            }
            call.entry("type").or_insert(json!("function"));
        }
    } else if m.get("tool_calls").is_some_and(Value::is_null) {
        m.remove("tool_calls");
    }
    Value::Object(m)
}

/// Identity of a stream: every chunk repeats it.
pub struct StreamHead<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
}

impl StreamHead<'_> {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Bytes {
        frame(&json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        }))
    }

    /// The first chunk, sent as soon as the request is accepted.
    pub fn role_chunk(&self) -> Bytes {
        self.chunk(json!({"role": "assistant"}), None)
    }

    /// The answer: content, then each tool call (`id`, `type` and `name` in its first delta only,
    /// arguments in the next), the finish chunk, the usage chunk if asked for, and `[DONE]`.
    pub fn answer_chunks(
        &self,
        message: &Value,
        finish_reason: &str,
        usage: Option<UsageOut>,
    ) -> Vec<Bytes> {
        let mut out = Vec::new();
        if let Some(content) = message
            .get("content")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
        {
            out.push(self.chunk(json!({"content": content}), None));
        }
        for (k, call) in message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let f = call.get("function").cloned().unwrap_or(Value::Null);
            let name = f.get("name").cloned().unwrap_or(json!(""));
            let args = f.get("arguments").cloned().unwrap_or(json!(""));
            out.push(self.chunk(
                json!({"tool_calls": [{"index": k, "id": call.get("id"), "type": "function", "function": {"name": name, "arguments": ""}}]}),
                None,
            ));
            out.push(self.chunk(
                json!({"tool_calls": [{"index": k, "function": {"arguments": args}}]}),
                None,
            ));
        }
        out.push(self.chunk(json!({}), Some(finish_reason)));
        if let Some(u) = usage {
            out.push(frame(&json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": u,
            })));
        }
        out.push(done());
        out
    }
}

/// An error after the stream has started: an `error` event, then `[DONE]`.
pub fn error_frames(error: &ErrorBody) -> [Bytes; 2] {
    [frame(&json!({"error": error})), done()]
}

/// An SSE comment that keeps proxies and client read timeouts from closing a long fan-out.
pub fn keep_alive() -> Bytes {
    Bytes::from_static(b": keep-alive\n\n")
}

fn frame(v: &Value) -> Bytes {
    let mut s = String::with_capacity(256);
    s.push_str("data: ");
    s.push_str(&v.to_string());
    s.push_str("\n\n");
    Bytes::from(s)
}

fn done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(b: &[Bytes]) -> Vec<Value> {
        b.iter()
            .map(|f| std::str::from_utf8(f).unwrap())
            .filter(|s| !s.contains("[DONE]"))
            .map(|s| serde_json::from_str(s.trim_start_matches("data: ").trim()).unwrap())
            .collect()
    }

    #[test]
    fn tool_call_stream_sends_id_and_name_once() {
        let head = StreamHead {
            id: "chatcmpl-its-1",
            created: 1,
            model: "m",
        };
        let msg = json!({"role":"assistant","content":null,"tool_calls":[
            {"id":"call_a","type":"function","function":{"name":"calc","arguments":"{\"e\":1}"}},
            {"id":"call_b","type":"function","function":{"name":"other","arguments":"{}"}}]});
        let chunks = head.answer_chunks(
            &msg,
            "tool_calls",
            Some(UsageOut {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3,
            }),
        );
        assert_eq!(chunks.last().unwrap(), &done());
        let f = frames(&chunks);
        assert_eq!(f[0]["choices"][0]["delta"]["tool_calls"][0]["id"], "call_a");
        assert_eq!(
            f[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
            "calc"
        );
        assert!(
            f[1]["choices"][0]["delta"]["tool_calls"][0]
                .get("id")
                .is_none()
        );
        assert!(
            f[1]["choices"][0]["delta"]["tool_calls"][0]["function"]
                .get("name")
                .is_none()
        );
        assert_eq!(
            f[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"e\":1}"
        );
        assert_eq!(f[2]["choices"][0]["delta"]["tool_calls"][0]["index"], 1);
        assert_eq!(f[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(f[5]["choices"], json!([]));
        assert_eq!(f[5]["usage"]["total_tokens"], 3);
    }

    #[test]
    fn normalise_fills_missing_fields() {
        let mut n = 0;
        let mut ids = || {
            n += 1;
            format!("call_{n}")
        };
        let m = normalise_message(
            json!({"tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}),
            &mut ids,
        );
        assert_eq!(m["role"], "assistant");
        assert!(m["content"].is_null());
        assert_eq!(m["tool_calls"][0]["id"], "call_1");
        assert_eq!(m["tool_calls"][0]["type"], "function");
        let m = normalise_message(json!({"content":"hi","tool_calls":null}), &mut ids);
        assert!(m.get("tool_calls").is_none());
    }

    #[test]
    fn finish_reasons() {
        let c = Candidate::from_message(json!({"content":"x"}), Some("length".into()), None);
        assert_eq!(finish_reason(&c), "length");
        let c = Candidate::from_message(json!({"content":"x"}), Some("end_turn".into()), None);
        assert_eq!(finish_reason(&c), "stop");
    }
}
