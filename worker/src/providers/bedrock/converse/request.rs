//! OpenAI chat request → Converse request (the rules are in the parent module's docs).

use serde_json::{Map, Value, json};

/// Translates an OpenAI chat body into a Converse body (see the module docs for the rules).
pub(in crate::providers::bedrock) fn to_converse(
    body: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages must be an array")?;
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    let mut history_tools: Vec<String> = Vec::new();
    let mut history_has_tool_blocks = false;
    for (i, m) in messages.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("messages[{i}] has no role"))?;
        let content = m.get("content");
        match role {
            "system" | "developer" => {
                for text in text_parts(content, i)? {
                    if !text.trim().is_empty() {
                        system.push(json!({ "text": text }));
                    }
                }
            }
            "user" => push_turn(&mut turns, "user", user_blocks(content, i)?),
            "assistant" => {
                let mut blocks: Vec<Value> = text_parts(content, i)?
                    .into_iter()
                    .filter(|t| !t.trim().is_empty())
                    .map(|t| json!({ "text": t }))
                    .collect();
                if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
                    let calls = calls
                        .as_array()
                        .ok_or_else(|| format!("messages[{i}].tool_calls must be an array"))?;
                    for (j, call) in calls.iter().enumerate() {
                        let (block, name) = tool_use_block(call, i, j)?;
                        blocks.push(block);
                        if !history_tools.contains(&name) {
                            history_tools.push(name);
                        }
                        history_has_tool_blocks = true;
                    }
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| format!("messages[{i}] (role tool) has no tool_call_id"))?;
                // An empty result is sent as one empty text block, which every model accepts.
                let text = text_parts(content, i)?.join("");
                let block =
                    json!({ "toolResult": { "toolUseId": id, "content": [{ "text": text }] } });
                push_turn(&mut turns, "user", vec![block]);
                history_has_tool_blocks = true;
            }
            other => {
                return Err(format!(
                    "messages[{i}] has role {other:?}, which Bedrock cannot take"
                ));
            }
        }
    }
    if turns.is_empty() {
        return Err("Bedrock needs at least one user or assistant message with content".into());
    }
    if turns[0].role == "assistant" {
        turns.insert(
            0,
            Turn {
                role: "user",
                content: vec![json!({ "text": "." })],
            },
        );
    }

    let mut out = Map::new();
    out.insert(
        "messages".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|t| json!({ "role": t.role, "content": t.content }))
                .collect(),
        ),
    );
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    if let Some(cfg) = inference_config(body)? {
        out.insert("inferenceConfig".into(), Value::Object(cfg));
    }
    if let Some(cfg) = tool_config(body, &history_tools, history_has_tool_blocks)? {
        out.insert("toolConfig".into(), Value::Object(cfg));
    }
    if let Some(k) = body.get("top_k").filter(|v| !v.is_null()) {
        if !k.is_number() {
            return Err("top_k must be a number".into());
        }
        out.insert("additionalModelRequestFields".into(), json!({ "top_k": k }));
    }
    Ok(out)
}

struct Turn {
    role: &'static str,
    content: Vec<Value>,
}

/// Appends blocks as a turn, merging into the previous turn of the same role (Converse requires
/// strictly alternating roles). Messages without blocks are dropped.
fn push_turn(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => turns.push(Turn {
            role,
            content: blocks,
        }),
    }
}

/// Texts of a content value: a string, or the `text` parts of a list. Other parts are refused.
fn text_parts(content: Option<&Value>, i: usize) -> Result<Vec<String>, String> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| part_text(p, i, j))
            .collect(),
        Some(_) => Err(format!(
            "messages[{i}].content must be a string, a list of parts or null"
        )),
    }
}

/// The text of a `text` content part; any other part type is refused.
fn part_text(p: &Value, i: usize, j: usize) -> Result<String, String> {
    match part_type(p) {
        Some("text") => p
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("messages[{i}].content[{j}] has no text")),
        other => Err(format!(
            "messages[{i}].content[{j}] of type {} cannot be sent to Bedrock here",
            other.unwrap_or("(none)")
        )),
    }
}

fn part_type(p: &Value) -> Option<&str> {
    p.get("type").and_then(Value::as_str)
}

/// Content blocks of a user message: text, and images given inline as `data:` URLs.
fn user_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Value>, String> {
    let Some(Value::Array(parts)) = content else {
        return Ok(text_parts(content, i)?
            .into_iter()
            .filter(|t| !t.trim().is_empty())
            .map(|t| json!({ "text": t }))
            .collect());
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        match part_type(p) {
            Some("image_url") => {
                let url = p
                    .pointer("/image_url/url")
                    .or_else(|| p.get("image_url"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("messages[{i}].content[{j}] has no image_url.url"))?;
                blocks.push(
                    image_block(url).map_err(|m| format!("messages[{i}].content[{j}]: {m}"))?,
                );
            }
            _ => {
                let t = part_text(p, i, j)?;
                if !t.trim().is_empty() {
                    blocks.push(json!({ "text": t }));
                }
            }
        }
    }
    Ok(blocks)
}

/// A Converse image block from a `data:image/…;base64,…` URL (Converse's JSON carries the bytes
/// base64-encoded, so the data is passed through untouched).
fn image_block(url: &str) -> Result<Value, String> {
    let rest = url
        .strip_prefix("data:")
        .ok_or("Bedrock takes images inline only (data: URLs), not by URL")?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or("malformed data: URL (no comma)")?;
    let mime = meta
        .strip_suffix(";base64")
        .ok_or("data: URL images must be base64-encoded")?;
    let format = match mime {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => return Err(format!("image type {other:?} is not supported by Bedrock")),
    };
    Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }))
}

/// A `toolUse` block from an OpenAI tool call, and the tool's name.
fn tool_use_block(call: &Value, i: usize, j: usize) -> Result<(Value, String), String> {
    let at = || format!("messages[{i}].tool_calls[{j}]");
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{} has no id", at()))?;
    let name = call
        .pointer("/function/name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{} has no function.name", at()))?;
    let input = match call.pointer("/function/arguments") {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => serde_json::from_str(s)
            .map_err(|e| format!("{}.function.arguments is not valid JSON ({e})", at()))?,
        // Already structured (not OpenAI's shape, but unambiguous).
        Some(other) => other.clone(),
    };
    Ok((
        json!({ "toolUse": { "toolUseId": id, "name": name, "input": input } }),
        name.to_owned(),
    ))
}

fn inference_config(body: &Map<String, Value>) -> Result<Option<Map<String, Value>>, String> {
    let mut cfg = Map::new();
    let number = |key: &str| -> Result<Option<Value>, String> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) if v.is_number() => Ok(Some(v.clone())),
            Some(_) => Err(format!("{key} must be a number")),
        }
    };
    // OpenAI deprecated max_tokens for max_completion_tokens; the newer one wins.
    if let Some(v) = number("max_completion_tokens")?.or(number("max_tokens")?) {
        if !v.is_u64() {
            return Err("max_tokens must be a positive integer".into());
        }
        cfg.insert("maxTokens".into(), v);
    }
    if let Some(v) = number("temperature")? {
        cfg.insert("temperature".into(), v);
    }
    if let Some(v) = number("top_p")? {
        cfg.insert("topP".into(), v);
    }
    match body.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            cfg.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
            if !list.is_empty() {
                cfg.insert("stopSequences".into(), Value::Array(list.clone()));
            }
        }
        Some(_) => return Err("stop must be a string or a list of strings".into()),
    }
    Ok((!cfg.is_empty()).then_some(cfg))
}

/// What `tool_choice` asks for.
enum Choice {
    /// Not given: Converse's default (auto).
    Unset,
    None,
    Given(Value),
}

fn tool_choice(body: &Map<String, Value>) -> Result<Choice, String> {
    let err = || {
        "tool_choice must be \"none\", \"auto\", \"required\" or \
         {\"type\": \"function\", \"function\": {\"name\": …}}"
            .to_owned()
    };
    match body.get("tool_choice") {
        None | Some(Value::Null) => Ok(Choice::Unset),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(Choice::None),
            "auto" => Ok(Choice::Given(json!({ "auto": {} }))),
            "required" => Ok(Choice::Given(json!({ "any": {} }))),
            _ => Err(err()),
        },
        Some(v @ Value::Object(_)) => {
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(err)?;
            Ok(Choice::Given(json!({ "tool": { "name": name } })))
        }
        Some(_) => Err(err()),
    }
}

fn tool_config(
    body: &Map<String, Value>,
    history_tools: &[String],
    history_has_tool_blocks: bool,
) -> Result<Option<Map<String, Value>>, String> {
    let mut specs = Vec::new();
    if let Some(tools) = body.get("tools").filter(|v| !v.is_null()) {
        let tools = tools.as_array().ok_or("tools must be an array")?;
        for (i, t) in tools.iter().enumerate() {
            if let Some(kind) = part_type(t).filter(|k| *k != "function") {
                return Err(format!(
                    "tools[{i}] has type {kind:?}; Bedrock takes function tools only"
                ));
            }
            let f = t
                .get("function")
                .ok_or_else(|| format!("tools[{i}] has no function"))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("tools[{i}].function has no name"))?;
            let schema = f
                .get("parameters")
                .filter(|p| p.is_object())
                .cloned()
                .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
            let mut spec = Map::new();
            spec.insert("name".into(), json!(name));
            if let Some(d) = f
                .get("description")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
            {
                spec.insert("description".into(), json!(d));
            }
            spec.insert("inputSchema".into(), json!({ "json": schema }));
            specs.push(json!({ "toolSpec": spec }));
        }
    }
    let choice = tool_choice(body)?;
    if matches!(choice, Choice::None) && !history_has_tool_blocks {
        // No tool may be called and none is needed to read the history: no toolConfig at all.
        return Ok(None);
    }
    if specs.is_empty() && history_has_tool_blocks {
        // Converse refuses toolUse/toolResult blocks without a toolConfig: declare the tools the
        // history used.
        specs = history_tools
            .iter()
            .map(|name| {
                json!({ "toolSpec": {
                    "name": name,
                    "inputSchema": { "json": { "type": "object" } }
                } })
            })
            .collect();
    }
    if specs.is_empty() {
        return Ok(None);
    }
    let mut cfg = Map::new();
    cfg.insert("tools".into(), Value::Array(specs));
    if let Choice::Given(c) = choice {
        cfg.insert("toolChoice".into(), c);
    }
    Ok(Some(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(body: Value) -> Value {
        let Value::Object(map) = body else {
            panic!("body must be an object")
        };
        Value::Object(to_converse(&map).unwrap())
    }

    fn translate_err(body: Value) -> String {
        let Value::Object(map) = body else {
            panic!("body must be an object")
        };
        to_converse(&map).unwrap_err()
    }

    fn calculator() -> Value {
        json!({"type": "function", "function": {
            "name": "calculator", "description": "Evaluates arithmetic",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}
        }})
    }

    #[test]
    fn system_and_developer_messages_become_system_blocks() {
        let out = translate(json!({
            "model": "x",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
                {"role": "user", "content": "Hi"},
            ]
        }));
        assert_eq!(
            out,
            json!({
                "system": [{"text": "Be terse."}, {"text": "Use metric units."}],
                "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            })
        );
    }

    #[test]
    fn multi_turn_tool_history_is_translated_and_merged() {
        let out = translate(json!({
            "messages": [
                {"role": "user", "content": "What is 2+2 and 3*3?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"2+2\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"3*3\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "4"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "9"}]},
                {"role": "user", "content": "Thanks. Now add them."},
                {"role": "assistant", "content": "Let me add.", "tool_calls": [
                    {"id": "call_3", "type": "function", "function": {"name": "calculator", "arguments": ""}},
                ]},
                {"role": "tool", "tool_call_id": "call_3", "content": ""},
            ],
            "tools": [calculator()],
        }));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"text": "What is 2+2 and 3*3?"}]},
                {"role": "assistant", "content": [
                    {"toolUse": {"toolUseId": "call_1", "name": "calculator", "input": {"expression": "2+2"}}},
                    {"toolUse": {"toolUseId": "call_2", "name": "calculator", "input": {"expression": "3*3"}}},
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "call_1", "content": [{"text": "4"}]}},
                    {"toolResult": {"toolUseId": "call_2", "content": [{"text": "9"}]}},
                    {"text": "Thanks. Now add them."},
                ]},
                {"role": "assistant", "content": [
                    {"text": "Let me add."},
                    {"toolUse": {"toolUseId": "call_3", "name": "calculator", "input": {}}},
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "call_3", "content": [{"text": ""}]}},
                ]},
            ])
        );
        assert_eq!(
            out["toolConfig"],
            json!({"tools": [{"toolSpec": {
                "name": "calculator", "description": "Evaluates arithmetic",
                "inputSchema": {"json": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}
            }}]})
        );
    }

    #[test]
    fn tool_choice_variants() {
        let with = |choice: Value| {
            translate(json!({
                "messages": [{"role": "user", "content": "2+2?"}],
                "tools": [calculator()],
                "tool_choice": choice,
            }))
        };
        assert_eq!(
            with(json!("auto"))["toolConfig"]["toolChoice"],
            json!({"auto": {}})
        );
        assert_eq!(
            with(json!("required"))["toolConfig"]["toolChoice"],
            json!({"any": {}})
        );
        assert_eq!(
            with(json!({"type": "function", "function": {"name": "calculator"}}))["toolConfig"]["toolChoice"],
            json!({"tool": {"name": "calculator"}})
        );
        let unset = with(Value::Null);
        assert!(unset["toolConfig"].get("toolChoice").is_none());
        assert_eq!(
            unset["toolConfig"]["tools"][0]["toolSpec"]["name"],
            "calculator"
        );
        // none without tool history: no tools offered at all.
        assert!(with(json!("none")).get("toolConfig").is_none());
        assert!(
            translate_err(
                json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"})
            )
            .contains("tool_choice")
        );
    }

    #[test]
    fn tool_history_keeps_a_tool_config() {
        let history = json!([
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "4"},
        ]);
        // none with tool history: the tools stay (Converse demands them), toolChoice is omitted.
        let none =
            translate(json!({"messages": history, "tools": [calculator()], "tool_choice": "none"}));
        assert_eq!(
            none["toolConfig"]["tools"][0]["toolSpec"]["name"],
            "calculator"
        );
        assert!(none["toolConfig"].get("toolChoice").is_none());
        // No tools in the request: the history's tool names are declared.
        let bare = translate(json!({"messages": history}));
        assert_eq!(
            bare["toolConfig"],
            json!({"tools": [{"toolSpec": {"name": "calculator", "inputSchema": {"json": {"type": "object"}}}}]})
        );
    }

    #[test]
    fn inference_config_and_dropped_fields() {
        let out = translate(json!({
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 100, "max_completion_tokens": 200, "temperature": 0.7, "top_p": 0.9,
            "stop": ["END", "STOP"], "top_k": 40,
            "n": 1, "seed": 7, "logprobs": true, "response_format": {"type": "json_object"},
            "presence_penalty": 0.5, "user": "u", "parallel_tool_calls": false, "model": "m",
        }));
        assert_eq!(
            out,
            json!({
                "messages": [{"role": "user", "content": [{"text": "x"}]}],
                "inferenceConfig": {"maxTokens": 200, "temperature": 0.7, "topP": 0.9, "stopSequences": ["END", "STOP"]},
                "additionalModelRequestFields": {"top_k": 40},
            })
        );
        let single = translate(
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stop": "\n"}),
        );
        assert_eq!(
            single["inferenceConfig"],
            json!({"maxTokens": 5, "stopSequences": ["\n"]})
        );
        assert!(
            translate_err(
                json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"})
            )
            .contains("temperature")
        );
        assert!(
            translate_err(
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5})
            )
            .contains("max_tokens")
        );
    }

    #[test]
    fn conversation_shape_rules() {
        // A leading assistant turn gets a placeholder user turn; blank messages are dropped.
        let out = translate(json!({"messages": [
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "  "},
            {"role": "user", "content": "Hi"},
        ]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"text": "."}]},
                {"role": "assistant", "content": [{"text": "Hello! How can I help?"}]},
                {"role": "user", "content": [{"text": "Hi"}]},
            ])
        );
        assert!(
            translate_err(json!({"messages": [{"role": "system", "content": "s"}]}))
                .contains("at least one")
        );
        assert!(
            translate_err(json!({"messages": [{"role": "tool", "content": "4"}]}))
                .contains("tool_call_id")
        );
        assert!(
            translate_err(json!({"messages": [{"role": "assistant", "tool_calls": [
                {"id": "c", "function": {"name": "f", "arguments": "{not json"}}]}]}))
            .contains("not valid JSON")
        );
    }

    #[test]
    fn images_are_inline_only() {
        let out = translate(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]}]}));
        assert_eq!(
            out["messages"][0]["content"],
            json!([{"text": "What is this?"}, {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}])
        );
        let e = translate_err(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}));
        assert!(e.contains("data: URLs"), "{e}");
        let e = translate_err(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "input_audio", "input_audio": {}}]}]}));
        assert!(e.contains("content[1]") && e.contains("input_audio"), "{e}");
    }

    proptest::proptest! {
        /// Any OpenAI-shaped body translates or is refused with a message, never a panic; what
        /// translates is a conversation Converse accepts: user first, roles alternating, no
        /// empty turn.
        #[test]
        fn any_chat_body_translates_to_a_valid_conversation_or_an_error(
            body in crate::providers::strategies::chat_body()
        ) {
            if let Ok(out) = to_converse(&body) {
                let turns = out["messages"].as_array().expect("messages is an array");
                proptest::prop_assert!(!turns.is_empty());
                proptest::prop_assert_eq!(&turns[0]["role"], "user");
                for pair in turns.windows(2) {
                    proptest::prop_assert_ne!(&pair[0]["role"], &pair[1]["role"]);
                }
                for t in turns {
                    proptest::prop_assert!(!t["content"].as_array().expect("content").is_empty());
                }
            }
        }

        /// Real conversations translate unless they hold no user or assistant content at all,
        /// into strictly alternating turns that start with the user.
        #[test]
        fn plain_conversations_translate_into_alternating_turns(
            body in crate::providers::strategies::plain_conversation()
        ) {
            let has_content = body["messages"].as_array().unwrap().iter().any(|m| {
                m["role"] != "system" && m["role"] != "developer"
                    && (m["content"].as_str().is_none_or(|t| !t.trim().is_empty()))
            });
            match to_converse(&body) {
                Ok(out) => {
                    let turns = out["messages"].as_array().unwrap();
                    proptest::prop_assert_eq!(&turns[0]["role"], "user");
                    for pair in turns.windows(2) {
                        proptest::prop_assert_ne!(&pair[0]["role"], &pair[1]["role"]);
                    }
                }
                Err(e) => proptest::prop_assert!(!has_content, "refused: {e}"),
            }
        }

        #[test]
        fn any_json_object_is_translated_or_refused(
            body in proptest::collection::btree_map(
                "[a-z_]{1,12}", crate::providers::strategies::json_value(), 0..8)
        ) {
            let _ = to_converse(&body.into_iter().collect());
        }
    }
}
