//! Converse response → one OpenAI-shaped candidate.

use serde_json::{Map, Value, json};

use crate::providers::{Candidate, Completion, UpstreamError, Usage};

/// Parses a Converse response into one OpenAI-shaped candidate.
pub(in crate::providers::bedrock) fn parse_converse_response(
    body: &[u8],
) -> Result<Completion, UpstreamError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Malformed(format!("invalid JSON ({e})")))?;
    let blocks = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| UpstreamError::Malformed("no output.message.content array".into()))?;
    let mut text: Option<String> = None;
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.get_or_insert_with(String::new).push_str(t);
        } else if let Some(tu) = block.get("toolUse") {
            let field = |k: &str| {
                tu.get(k)
                    .and_then(Value::as_str)
                    .ok_or_else(|| UpstreamError::Malformed(format!("a toolUse block has no {k}")))
            };
            let input = tu.get("input").cloned().unwrap_or_else(|| json!({}));
            let arguments = serde_json::to_string(&input)
                .map_err(|e| UpstreamError::Malformed(e.to_string()))?;
            tool_calls.push(json!({
                "id": field("toolUseId")?,
                "type": "function",
                "function": { "name": field("name")?, "arguments": arguments },
            }));
        } else if let Some(r) = block
            .pointer("/reasoningContent/reasoningText/text")
            .and_then(Value::as_str)
        {
            reasoning.push_str(r);
        }
        // Other blocks (citations, images, guard content) have no OpenAI counterpart.
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert("content".into(), text.map_or(Value::Null, Value::String));
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), Value::String(reasoning));
    }
    let stop = v.get("stopReason").and_then(Value::as_str).unwrap_or("");
    let finish = finish_reason(stop);
    if finish == "stop" && !matches!(stop, "end_turn" | "stop_sequence") {
        tracing::debug!(stop_reason = stop, "Bedrock stop reason mapped to stop");
    }
    let usage = v.get("usage").map(converse_usage).unwrap_or_default();
    Ok(Completion {
        candidates: vec![Candidate::from_message(
            Value::Object(message),
            Some(finish.to_owned()),
            None,
        )],
        usage,
        system_fingerprint: None,
    })
}

/// Converse `stopReason` → OpenAI `finish_reason`.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "tool_use" => "tool_calls",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        // end_turn, stop_sequence, and reasons without an OpenAI equivalent
        // (malformed_model_output, malformed_tool_use, unknown future values).
        _ => "stop",
    }
}

fn converse_usage(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        prompt_tokens: n("inputTokens") + n("cacheReadInputTokens") + n("cacheWriteInputTokens"),
        completion_tokens: n("outputTokens"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_response_translates() {
        let c = parse_converse_response(br#"{"output":{"message":{"role":"assistant","content":[{"text":"The answer "},{"text":"is 4."}]}},
            "stopReason":"end_turn","usage":{"inputTokens":12,"outputTokens":5,"totalTokens":17,"cacheReadInputTokens":3},"metrics":{"latencyMs":10}}"#).unwrap();
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 15,
                completion_tokens: 5
            }
        );
        let cand = &c.candidates[0];
        assert_eq!(
            cand.message,
            json!({"role": "assistant", "content": "The answer is 4."})
        );
        assert_eq!(cand.finish_reason.as_deref(), Some("stop"));
        assert_eq!(cand.text, "The answer is 4.");
        assert!(!cand.has_tool_calls());
    }

    #[test]
    fn tool_use_response_translates() {
        let c = parse_converse_response(br#"{"output":{"message":{"role":"assistant","content":[
            {"reasoningContent":{"reasoningText":{"text":"need a tool"}}},
            {"toolUse":{"toolUseId":"tooluse_abc","name":"calculator","input":{"expression":"2+2"}}}]}},
            "stopReason":"tool_use","usage":{"inputTokens":20,"outputTokens":9}}"#).unwrap();
        let cand = &c.candidates[0];
        assert_eq!(
            cand.message,
            json!({"role": "assistant", "content": null, "reasoning_content": "need a tool", "tool_calls": [
                {"id": "tooluse_abc", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"2+2\"}"}}]})
        );
        assert_eq!(cand.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(cand.tool_calls[0].name, "calculator");
        assert_eq!(cand.tool_calls[0].arguments, r#"{"expression":"2+2"}"#);
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 20,
                completion_tokens: 9
            }
        );
    }

    #[test]
    fn malformed_responses_are_errors() {
        for body in [
            &b"nope"[..],
            b"{}",
            br#"{"output":{"message":{"content":[{"toolUse":{"name":"f"}}]}}}"#,
        ] {
            assert!(matches!(
                parse_converse_response(body),
                Err(UpstreamError::Malformed(_))
            ));
        }
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("tool_use", "tool_calls"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
            ("malformed_tool_use", "stop"),
            ("", "stop"),
        ] {
            assert_eq!(finish_reason(stop), finish, "{stop}");
        }
    }

    proptest::proptest! {
        /// Any Converse-shaped body gives one assistant candidate with an OpenAI finish reason,
        /// or a Malformed error; never a panic.
        #[test]
        fn any_converse_body_parses_to_one_candidate_or_malformed(
            body in crate::providers::strategies::converse_body()
        ) {
            match parse_converse_response(&serde_json::to_vec(&body).unwrap()) {
                Ok(c) => {
                    proptest::prop_assert_eq!(c.candidates.len(), 1);
                    let cand = &c.candidates[0];
                    proptest::prop_assert_eq!(&cand.message["role"], "assistant");
                    let finish = cand.finish_reason.as_deref().unwrap_or("");
                    proptest::prop_assert!(
                        ["stop", "tool_calls", "length", "content_filter"].contains(&finish)
                    );
                }
                Err(e) => proptest::prop_assert!(matches!(e, UpstreamError::Malformed(_))),
            }
        }

        #[test]
        fn arbitrary_bytes_and_json_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            value in crate::providers::strategies::json_value(),
        ) {
            let _ = parse_converse_response(&bytes);
            let _ = parse_converse_response(&serde_json::to_vec(&value).unwrap());
        }
    }
}
