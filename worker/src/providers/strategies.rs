//! Proptest strategies for provider translation tests: arbitrary JSON biased towards the keys and
//! values the translators look at, so generated inputs reach deep into their match arms.

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value, json};

/// Keys and string values the OpenAI and Converse translators branch on.
const WORDS: &[&str] = &[
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "url",
    "tool_calls",
    "id",
    "function",
    "name",
    "arguments",
    "tool_call_id",
    "messages",
    "tools",
    "tool_choice",
    "parameters",
    "description",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "top_k",
    "user",
    "assistant",
    "system",
    "developer",
    "tool",
    "output",
    "message",
    "toolUse",
    "toolUseId",
    "input",
    "reasoningContent",
    "reasoningText",
    "stopReason",
    "usage",
    "inputTokens",
    "outputTokens",
    "cacheReadInputTokens",
    "choices",
    "finish_reason",
    "logprobs",
    "auto",
    "none",
    "required",
    "end_turn",
    "tool_use",
    "max_tokens",
    "",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(WORDS).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON numbers are finite", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
    ]
}

/// Any JSON value, up to four levels deep.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(word(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn text_part() -> impl Strategy<Value = Value> {
    word().prop_map(|t| json!({"type": "text", "text": t}))
}

fn image_part() -> impl Strategy<Value = Value> {
    select(
        &[
            "data:image/png;base64,iVBORw0KGgo=",
            "data:image/jpeg;base64,",
            "data:image/bmp;base64,AAAA",
            "data:image/png,raw",
            "data:",
            "https://example.com/cat.png",
        ][..],
    )
    .prop_map(|u| json!({"type": "image_url", "image_url": {"url": u}}))
}

fn content() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        word().prop_map(|s| Some(Value::String(s))),
        prop::collection::vec(prop_oneof![text_part(), image_part(), json_value()], 0..4)
            .prop_map(|parts| Some(Value::Array(parts))),
        json_value().prop_map(Some),
    ]
}

fn tool_call() -> impl Strategy<Value = Value> {
    let arguments = prop_oneof![
        Just(json!("{\"expression\":\"2+2\"}")),
        Just(json!("{not json")),
        Just(json!("")),
        json_value(),
    ];
    (word(), word(), arguments).prop_map(|(id, name, arguments)| {
        json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
    })
}

fn message() -> impl Strategy<Value = Value> {
    let role = select(&["system", "developer", "user", "assistant", "tool", "critic"][..]);
    let calls = prop_oneof![
        Just(None),
        prop::collection::vec(tool_call(), 0..3).prop_map(|c| Some(Value::Array(c))),
        json_value().prop_map(Some),
    ];
    (role, content(), calls, prop::option::of(word())).prop_map(
        |(role, content, calls, call_id)| {
            let mut m = Map::new();
            m.insert("role".into(), json!(role));
            if let Some(c) = content {
                m.insert("content".into(), c);
            }
            if let Some(c) = calls {
                m.insert("tool_calls".into(), c);
            }
            if let Some(id) = call_id {
                m.insert("tool_call_id".into(), json!(id));
            }
            Value::Object(m)
        },
    )
}

fn tool() -> impl Strategy<Value = Value> {
    (
        select(&["function", "function", "web_search"][..]),
        word(),
        json_value(),
    )
        .prop_map(|(kind, name, parameters)| {
            json!({"type": kind, "function": {"name": name, "description": "d", "parameters": parameters}})
        })
}

/// An OpenAI chat request body, mostly well-formed, sometimes not.
pub fn chat_body() -> impl Strategy<Value = Map<String, Value>> {
    let tool_choice = prop_oneof![
        Just(None),
        select(&["none", "auto", "required", "sometimes"][..]).prop_map(|s| Some(json!(s))),
        word().prop_map(|n| Some(json!({"type": "function", "function": {"name": n}}))),
        json_value().prop_map(Some),
    ];
    let scalar = prop::option::of(prop_oneof![number(), json_value()]);
    (
        prop::collection::vec(message(), 0..7),
        prop::option::of(prop::collection::vec(tool(), 0..3)),
        tool_choice,
        scalar.clone(),
        scalar.clone(),
        scalar,
        prop::option::of(json_value()),
    )
        .prop_map(
            |(messages, tools, choice, max_tokens, temperature, top_k, stop)| {
                let mut body = Map::new();
                body.insert("messages".into(), Value::Array(messages));
                let mut set = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        body.insert(k.into(), v);
                    }
                };
                set("tools", tools.map(Value::Array));
                set("tool_choice", choice);
                set("max_tokens", max_tokens);
                set("temperature", temperature);
                set("top_k", top_k);
                set("stop", stop);
                body
            },
        )
}

/// A Converse response body: well-formed blocks mixed with arbitrary ones.
pub fn converse_body() -> impl Strategy<Value = Value> {
    let block = prop_oneof![
        word().prop_map(|t| json!({"text": t})),
        (word(), word(), json_value()).prop_map(
            |(id, n, input)| json!({"toolUse": {"toolUseId": id, "name": n, "input": input}})
        ),
        word().prop_map(|r| json!({"reasoningContent": {"reasoningText": {"text": r}}})),
        json_value(),
    ];
    (
        prop::collection::vec(block, 0..5),
        prop::option::of(word()),
        prop::option::of(json_value()),
    )
        .prop_map(|(blocks, stop, usage)| {
            json!({
                "output": {"message": {"role": "assistant", "content": blocks}},
                "stopReason": stop,
                "usage": usage,
            })
        })
}

/// A well-formed conversation of text messages (and tool exchanges), in any role order: what a
/// real client sends, so translation is expected to succeed whenever a user or assistant message
/// has text.
pub fn plain_conversation() -> impl Strategy<Value = Map<String, Value>> {
    let message = prop_oneof![
        (
            select(&["system", "developer", "user", "assistant"][..]),
            "[a-z ]{0,6}"
        )
            .prop_map(|(role, text)| json!({"role": role, "content": text})),
        "[a-z]{1,4}".prop_map(
            |id| json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "calc", "arguments": "{}"}}]})
        ),
        "[a-z]{1,4}".prop_map(|id| json!({"role": "tool", "tool_call_id": id, "content": "4"})),
    ];
    prop::collection::vec(message, 1..8).prop_map(|messages| {
        let mut body = Map::new();
        body.insert("messages".into(), Value::Array(messages));
        body
    })
}

/// A `chat.completion` body: mostly well-formed choices (assistant messages, finish reasons,
/// logprobs) and usage, with any field sometimes replaced by an arbitrary value.
pub fn completion_body() -> impl Strategy<Value = Value> {
    let choice = prop_oneof![
        4 => (
            message(),
            prop_oneof![Just(json!("stop")), Just(json!("tool_calls")), json_value()],
            prop_oneof![Just(Value::Null), json_value()],
        )
            .prop_map(|(message, finish_reason, logprobs)| {
                json!({"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": logprobs})
            }),
        1 => json_value(),
    ];
    let usage = prop_oneof![
        (any::<u32>(), any::<u32>()).prop_map(|(p, c)| {
            json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": u64::from(p) + u64::from(c)})
        }),
        json_value(),
    ];
    (
        prop_oneof![
            4 => prop::collection::vec(choice, 0..4).prop_map(Value::Array),
            1 => json_value(),
        ],
        prop::option::of(usage),
        prop::option::of(prop_oneof![word().prop_map(Value::String), json_value()]),
        prop::option::of(json_value()),
    )
        .prop_map(|(choices, usage, fingerprint, extra)| {
            let mut body = Map::new();
            body.insert("id".into(), json!("chatcmpl-1"));
            body.insert("object".into(), json!("chat.completion"));
            body.insert("created".into(), json!(1_700_000_000));
            body.insert("model".into(), json!("gpt-4o-mini"));
            body.insert("choices".into(), choices);
            let mut set = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    body.insert(k.into(), v);
                }
            };
            set("usage", usage);
            set("system_fingerprint", fingerprint);
            set("service_tier", extra);
            Value::Object(body)
        })
}
