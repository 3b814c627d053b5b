//! AWS Bedrock Converse wire format (`POST /model/{modelId}/converse`).

use serde_json::{Map, Value, json};

use crate::engine::{Conversation, Msg, Resolved};

#[derive(Debug, Clone)]
pub struct ConverseRequest {
    pub conv: Conversation,
}

const KNOWN_FIELDS: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
];

/// Text of a list of Converse content blocks (`text`, `toolUse` input,
/// `toolResult` content), joined with newlines.
fn blocks_text(blocks: &[Value]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for b in blocks {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            parts.push(t.to_string());
        }
        if let Some(tu) = b.get("toolUse") {
            let name = tu.get("name").and_then(Value::as_str).unwrap_or_default();
            parts.push(format!("{name}{}", tu.get("input").unwrap_or(&Value::Null)));
        }
        if let Some(inner) = b
            .get("toolResult")
            .and_then(|r| r.get("content"))
            .and_then(Value::as_array)
        {
            for c in inner {
                if let Some(t) = c.get("text").and_then(Value::as_str) {
                    parts.push(t.to_string());
                } else if let Some(j) = c.get("json") {
                    parts.push(j.to_string());
                }
            }
        }
    }
    parts.join("\n")
}

pub fn parse_converse_request(body: &Value) -> Result<ConverseRequest, String> {
    let obj = body
        .as_object()
        .ok_or("request body must be a JSON object")?;
    if let Some(k) = obj.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(format!("Unknown field '{k}' in the Converse request"));
    }
    let mut messages = Vec::new();
    if let Some(system) = obj.get("system") {
        let blocks = system
            .as_array()
            .ok_or("system must be an array of content blocks")?;
        messages.push(Msg::new("system", blocks_text(blocks)));
    }
    let raw = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages is required and must be an array")?;
    if raw.is_empty() {
        return Err("A conversation must start with a user message.".into());
    }
    let mut after_tool_result = false;
    for (i, m) in raw.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(format!("messages.{i}.role must be 'user' or 'assistant'"));
        }
        let blocks = m
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("messages.{i}.content must be an array of content blocks"))?;
        after_tool_result = blocks.iter().any(|b| b.get("toolResult").is_some());
        messages.push(Msg::new(role, blocks_text(blocks)));
    }
    if let Some(cfg) = obj.get("inferenceConfig")
        && let Some(max) = cfg.get("maxTokens")
        && max.as_u64().is_none_or(|m| m == 0)
    {
        return Err("inferenceConfig.maxTokens must be a positive integer".into());
    }
    let tools = obj
        .get("toolConfig")
        .and_then(|t| t.get("tools"))
        .and_then(Value::as_array);
    let first_tool = tools
        .and_then(|t| t.first())
        .and_then(|t| t.pointer("/toolSpec/name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(ConverseRequest {
        conv: Conversation {
            messages,
            first_tool,
            has_tools: tools.is_some_and(|t| !t.is_empty()),
            after_tool_result,
            answer_stream: None,
        },
    })
}

/// Converse `input` must be an object: arguments that are not a JSON object
/// are wrapped as `{"_raw": "<text>"}`.
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            let mut m = Map::new();
            m.insert("_raw".into(), Value::String(arguments.to_string()));
            Value::Object(m)
        }
    }
}

/// Converse response body for one answer.
pub fn render_converse(answer: &Resolved, input_tokens: u64, latency_ms: u64) -> Value {
    let mut content = Vec::new();
    match &answer.content {
        Some(text) if !text.is_empty() || answer.tool_calls.is_empty() => {
            content.push(json!({ "text": text }));
        }
        _ => {}
    }
    for t in &answer.tool_calls {
        content.push(json!({
            "toolUse": { "toolUseId": t.id, "name": t.name, "input": tool_input(&t.arguments) }
        }));
    }
    let output_tokens = answer.completion_tokens();
    json!({
        "output": { "message": { "role": "assistant", "content": content } },
        "stopReason": answer.finish.as_converse(),
        "usage": {
            "inputTokens": input_tokens,
            "outputTokens": output_tokens,
            "totalTokens": input_tokens + output_tokens,
        },
        "metrics": { "latencyMs": latency_ms },
    })
}

/// `x-amzn-errortype` Bedrock uses for a status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

pub fn default_error_message(status: u16) -> &'static str {
    match status {
        429 => "Too many requests, please wait before trying again.",
        503 => "Bedrock is unable to process your request.",
        400 => "The provided request is not valid.",
        _ => "The server encountered an internal error.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ResolvedToolCall;
    use crate::scenario::FinishReason;

    #[test]
    fn parses_converse_request() {
        let body = json!({
            "system": [{"text": "You are helpful."}],
            "messages": [
                {"role": "user", "content": [{"text": "What is 847*293+156?"}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "calculator", "input": {"expression": "847*293+156"}}}]},
                {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"json": {"result": 248327}}], "status": "success"}}]}
            ],
            "inferenceConfig": {"maxTokens": 512, "temperature": 0.7},
            "toolConfig": {"tools": [{"toolSpec": {"name": "calculator", "inputSchema": {"json": {"type": "object"}}}}]}
        });
        let r = parse_converse_request(&body).unwrap();
        assert_eq!(r.conv.messages[0], Msg::new("system", "You are helpful."));
        assert_eq!(
            r.conv.messages[2].text,
            r#"calculator{"expression":"847*293+156"}"#
        );
        assert_eq!(r.conv.messages[3].text, r#"{"result":248327}"#);
        assert_eq!(r.conv.first_tool.as_deref(), Some("calculator"));
        assert!(r.conv.has_tools && r.conv.after_tool_result);
    }

    #[test]
    fn rejects_invalid_converse_requests() {
        for bad in [
            json!({"messages": []}),
            json!({}),
            json!({"model": "x", "messages": [{"role": "user", "content": [{"text": "a"}]}]}),
            json!({"messages": [{"role": "system", "content": [{"text": "a"}]}]}),
            json!({"messages": [{"role": "user", "content": "a"}]}),
            json!({"messages": [{"role": "user", "content": [{"text": "a"}]}], "inferenceConfig": {"maxTokens": 0}}),
        ] {
            assert!(parse_converse_request(&bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn renders_text_and_tool_use() {
        let text = render_converse(&Resolved::text("The answer is 248327."), 10, 12);
        assert_eq!(
            text["output"]["message"]["content"],
            json!([{"text": "The answer is 248327."}])
        );
        assert_eq!(text["stopReason"], "end_turn");
        assert_eq!(
            text["usage"],
            json!({"inputTokens": 10, "outputTokens": 6, "totalTokens": 16})
        );
        assert_eq!(text["metrics"]["latencyMs"], 12);

        let tool = Resolved {
            content: None,
            tool_calls: vec![
                ResolvedToolCall {
                    id: "call_1_0".into(),
                    name: "calculator".into(),
                    arguments: r#"{"expression":"847*293+156"}"#.into(),
                },
                ResolvedToolCall {
                    id: "call_1_1".into(),
                    name: "calculator".into(),
                    arguments: "{oops".into(),
                },
            ],
            finish: FinishReason::ToolCalls,
        };
        let v = render_converse(&tool, 1, 0);
        let content = v["output"]["message"]["content"].as_array().unwrap();
        assert_eq!(content.len(), 2);
        assert_eq!(
            content[0]["toolUse"]["input"],
            json!({"expression": "847*293+156"})
        );
        assert_eq!(content[0]["toolUse"]["toolUseId"], "call_1_0");
        assert_eq!(content[1]["toolUse"]["input"], json!({"_raw": "{oops"}));
        assert_eq!(v["stopReason"], "tool_use");
        let mut len = Resolved::text("trunc");
        len.finish = FinishReason::Length;
        assert_eq!(render_converse(&len, 1, 0)["stopReason"], "max_tokens");
    }

    #[test]
    fn error_types() {
        assert_eq!(error_type(429), "ThrottlingException");
        assert_eq!(error_type(500), "InternalServerException");
        assert_eq!(error_type(503), "ServiceUnavailableException");
    }
}
