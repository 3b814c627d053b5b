//! OpenAI chat-completions wire format: request parsing, JSON responses and
//! SSE stream rendering.

use serde_json::{Value, json};

use crate::engine::{Conversation, Msg, Resolved};

/// The parts of a chat-completions request the simulator uses.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub conv: Conversation,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
}

const MAX_N: u64 = 128;

/// Text of an OpenAI `content` value: a string, or an array of parts whose
/// `text` fields are joined with newlines.
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

pub fn parse_chat_request(body: &Value) -> Result<ChatRequest, String> {
    let obj = body
        .as_object()
        .ok_or("request body must be a JSON object")?;
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .ok_or("you must provide a model parameter")?
        .to_string();
    let raw_messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("'messages' is a required property and must be an array")?;
    if raw_messages.is_empty() {
        return Err("'messages' must contain at least one message".into());
    }
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (i, m) in raw_messages.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("messages[{i}].role is required"))?;
        let mut text = m.get("content").map(content_text).unwrap_or_default();
        // Tool calls the assistant made earlier count towards prompt tokens.
        for tc in m
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let f = &tc["function"];
            for part in [&f["name"], &f["arguments"]] {
                if let Some(s) = part.as_str() {
                    text.push_str(s);
                }
            }
        }
        messages.push(Msg::new(role, text));
    }
    let n = match obj.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_N).contains(&n) => n as usize,
            _ => return Err(format!("'n' must be an integer between 1 and {MAX_N}")),
        },
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("'stream' must be a boolean".into()),
    };
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let tools = obj.get("tools").and_then(Value::as_array);
    let first_tool = tools
        .and_then(|t| t.first())
        .and_then(|t| t.pointer("/function/name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let after_tool_result = raw_messages
        .last()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        == Some("tool");
    Ok(ChatRequest {
        model,
        conv: Conversation {
            messages,
            first_tool,
            has_tools: tools.is_some_and(|t| !t.is_empty()),
            after_tool_result,
            answer_stream: obj.get("user").and_then(Value::as_str).map(str::to_string),
        },
        n,
        stream,
        include_usage,
    })
}

/// Identity shared by all chunks / the body of one response.
#[derive(Debug, Clone)]
pub struct RenderCtx {
    pub id: String,
    pub created: u64,
    pub model: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

impl Usage {
    pub fn for_choices(prompt: u64, choices: &[Resolved]) -> Self {
        Usage {
            prompt,
            completion: choices.iter().map(Resolved::completion_tokens).sum(),
        }
    }

    fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        })
    }
}

fn tool_calls_json(choice: &Resolved) -> Value {
    Value::Array(
        choice
            .tool_calls
            .iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "type": "function",
                    "function": { "name": t.name, "arguments": t.arguments },
                })
            })
            .collect(),
    )
}

/// Non-streaming `chat.completion` body.
pub fn render_completion(ctx: &RenderCtx, choices: &[Resolved], usage: Usage) -> Value {
    let choices: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let mut message = json!({ "role": "assistant", "content": c.content });
            if !c.tool_calls.is_empty() {
                message["tool_calls"] = tool_calls_json(c);
            }
            json!({
                "index": index,
                "message": message,
                "finish_reason": c.finish.as_openai(),
                "logprobs": null,
            })
        })
        .collect();
    json!({
        "id": ctx.id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": choices,
        "usage": usage.to_json(),
    })
}

/// Split into pieces of at most `size` characters (never splitting a char).
pub fn chunk_text(text: &str, size: usize) -> Vec<String> {
    let size = size.max(1);
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// SSE events (each `data: ...\n\n`) of a streamed completion: per choice a
/// role chunk, content deltas, per tool call a first delta with id/type/name
/// and then argument deltas, a finish chunk; then a usage chunk when asked
/// for, and `data: [DONE]`.
pub fn render_sse(
    ctx: &RenderCtx,
    choices: &[Resolved],
    usage: Usage,
    include_usage: bool,
    chunk_chars: usize,
) -> Vec<String> {
    let chunk = |index: usize, delta: Value, finish: Option<&str>| {
        let mut c = json!({
            "id": ctx.id,
            "object": "chat.completion.chunk",
            "created": ctx.created,
            "model": ctx.model,
            "choices": [{
                "index": index,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish,
            }],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let mut events = Vec::new();
    for (index, c) in choices.iter().enumerate() {
        let role_content = if c.content.is_some() {
            json!("")
        } else {
            Value::Null
        };
        events.push(chunk(
            index,
            json!({ "role": "assistant", "content": role_content }),
            None,
        ));
        if let Some(content) = &c.content {
            for piece in chunk_text(content, chunk_chars) {
                events.push(chunk(index, json!({ "content": piece }), None));
            }
        }
        for (ti, t) in c.tool_calls.iter().enumerate() {
            events.push(chunk(
                index,
                json!({ "tool_calls": [{
                    "index": ti,
                    "id": t.id,
                    "type": "function",
                    "function": { "name": t.name, "arguments": "" },
                }]}),
                None,
            ));
            for piece in chunk_text(&t.arguments, chunk_chars) {
                events.push(chunk(
                    index,
                    json!({ "tool_calls": [{ "index": ti, "function": { "arguments": piece } }] }),
                    None,
                ));
            }
        }
        events.push(chunk(index, json!({}), Some(c.finish.as_openai())));
    }
    if include_usage {
        let u = json!({
            "id": ctx.id,
            "object": "chat.completion.chunk",
            "created": ctx.created,
            "model": ctx.model,
            "choices": [],
            "usage": usage.to_json(),
        });
        events.push(format!("data: {u}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    events
}

/// OpenAI-shaped error body.
pub fn error_body(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
}

/// Error type/code a real provider would use for an injected status.
pub fn error_kind(status: u16) -> (&'static str, Option<&'static str>) {
    match status {
        400 => ("invalid_request_error", None),
        401 => ("invalid_request_error", Some("invalid_api_key")),
        403 => ("invalid_request_error", None),
        404 => ("invalid_request_error", Some("model_not_found")),
        429 => ("requests", Some("rate_limit_exceeded")),
        _ => ("server_error", None),
    }
}

/// Body of a `malformed` fault: starts like a completion, is not JSON.
pub const MALFORMED_BODY: &str = r#"{"id":"chatcmpl-malformed","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"The answ"#;

/// Stream body of a `malformed` fault: an SSE event whose data is not JSON.
pub const MALFORMED_SSE: &str =
    "data: {\"id\":\"chatcmpl-malformed\",\"choices\":[{\"delta\":{\"content\n\ndata: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ResolvedToolCall;
    use crate::scenario::FinishReason;

    fn ctx() -> RenderCtx {
        RenderCtx {
            id: "chatcmpl-mock-1".into(),
            created: 1_700_000_000,
            model: "gpt-test".into(),
        }
    }

    fn tool_choice() -> Resolved {
        Resolved {
            content: None,
            tool_calls: vec![ResolvedToolCall {
                id: "call_1_0".into(),
                name: "calculator".into(),
                arguments: r#"{"expression":"847*293+156"}"#.into(),
            }],
            finish: FinishReason::ToolCalls,
        }
    }

    fn events_json(events: &[String]) -> Vec<Value> {
        events
            .iter()
            .map(|e| {
                assert!(e.starts_with("data: ") && e.ends_with("\n\n"), "{e:?}");
                let data = &e[6..e.len() - 2];
                if data == "[DONE]" {
                    Value::String("[DONE]".into())
                } else {
                    serde_json::from_str(data).unwrap()
                }
            })
            .collect()
    }

    #[test]
    fn parses_requests() {
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "calc", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "42"}
            ],
            "tools": [{"type": "function", "function": {"name": "calc", "parameters": {}}}, {"type": "function", "function": {"name": "other"}}],
            "n": 3, "stream": true, "stream_options": {"include_usage": true}
        });
        let r = parse_chat_request(&body).unwrap();
        assert_eq!(r.model, "m");
        assert_eq!(r.n, 3);
        assert!(r.stream && r.include_usage);
        assert_eq!(r.conv.first_tool.as_deref(), Some("calc"));
        assert!(r.conv.has_tools && r.conv.after_tool_result);
        assert_eq!(r.conv.messages[1].text, "a\nb");
        assert_eq!(r.conv.messages[2].text, "calc{}");
        assert_eq!(r.conv.messages[3].role, "tool");
    }

    #[test]
    fn rejects_bad_requests() {
        for bad in [
            json!([]),
            json!({"messages": [{"role": "user", "content": "x"}]}),
            json!({"model": "m"}),
            json!({"model": "m", "messages": []}),
            json!({"model": "m", "messages": [{"content": "x"}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 1.5}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
        ] {
            assert!(parse_chat_request(&bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn non_stream_shape() {
        let choices = [Resolved::text("The answer is 248327."), tool_choice()];
        let usage = Usage::for_choices(5, &choices);
        let v = render_completion(&ctx(), &choices, usage);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-test");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "The answer is 248327."
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(v["choices"][0]["message"].get("tool_calls").is_none());
        assert!(v["choices"][0]["logprobs"].is_null());
        let c1 = &v["choices"][1];
        assert_eq!(c1["index"], 1);
        assert!(c1["message"]["content"].is_null());
        assert_eq!(c1["finish_reason"], "tool_calls");
        let tc = &c1["message"]["tool_calls"][0];
        assert_eq!(tc["type"], "function");
        assert_eq!(tc["function"]["name"], "calculator");
        assert_eq!(
            tc["function"]["arguments"],
            r#"{"expression":"847*293+156"}"#
        );
        // 21 chars -> 6 tokens; "calculator" + args = 10 + 28 -> 10 tokens.
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21})
        );
    }

    #[test]
    fn sse_text_stream_reassembles() {
        let choices = [Resolved::text("The answer is 248327.")];
        let usage = Usage::for_choices(5, &choices);
        let ev = events_json(&render_sse(&ctx(), &choices, usage, true, 8));
        assert_eq!(ev.last().unwrap(), "[DONE]");
        assert_eq!(
            ev[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert!(ev[0]["usage"].is_null() && ev[0].get("usage").is_some());
        let text: String = ev
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "The answer is 248327.");
        let finish = &ev[ev.len() - 3];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        let usage_chunk = &ev[ev.len() - 2];
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["total_tokens"], 11);
        for e in &ev[..ev.len() - 1] {
            assert_eq!(e["object"], "chat.completion.chunk");
            assert_eq!(e["id"], "chatcmpl-mock-1");
        }
    }

    #[test]
    fn sse_tool_call_stream() {
        let choices = [tool_choice()];
        let ev = events_json(&render_sse(
            &ctx(),
            &choices,
            Usage::for_choices(1, &choices),
            false,
            5,
        ));
        assert_eq!(
            ev[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": null})
        );
        let first = &ev[1]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(first["id"], "call_1_0");
        assert_eq!(first["type"], "function");
        assert_eq!(first["function"]["name"], "calculator");
        assert_eq!(first["function"]["arguments"], "");
        let args: String = ev[2..]
            .iter()
            .filter_map(|e| {
                e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(args, r#"{"expression":"847*293+156"}"#);
        for e in &ev[2..ev.len() - 2] {
            let d = &e["choices"][0]["delta"]["tool_calls"][0];
            assert!(d.get("id").is_none() && d["function"].get("name").is_none());
        }
        assert_eq!(
            ev[ev.len() - 2]["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert!(ev[0].get("usage").is_none());
        assert_eq!(ev.last().unwrap(), "[DONE]");
    }

    #[test]
    fn sse_multiple_choices_have_indices() {
        let choices = [Resolved::text("a"), Resolved::text("b")];
        let ev = events_json(&render_sse(
            &ctx(),
            &choices,
            Usage::for_choices(1, &choices),
            false,
            8,
        ));
        let finishes: Vec<u64> = ev
            .iter()
            .filter(|e| e["choices"][0]["finish_reason"].is_string())
            .map(|e| e["choices"][0]["index"].as_u64().unwrap())
            .collect();
        assert_eq!(finishes, [0, 1]);
    }

    #[test]
    fn chunking_respects_chars() {
        assert_eq!(chunk_text("héllo wörld", 4), ["héll", "o wö", "rld"]);
        assert!(chunk_text("", 4).is_empty());
    }

    #[test]
    fn malformed_bodies_are_not_json() {
        assert!(serde_json::from_str::<Value>(MALFORMED_BODY).is_err());
        let data = MALFORMED_SSE
            .lines()
            .next()
            .unwrap()
            .strip_prefix("data: ")
            .unwrap();
        assert!(serde_json::from_str::<Value>(data).is_err());
    }
}
