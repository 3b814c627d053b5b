//! Parsing and validation of chat requests — pure. The body is parsed once into a JSON map
//! (which is what gets forwarded, minus the worker's own fields) and checked against the typed
//! shape below, which also documents the API in `/openapi.json`.

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::config::MAX_BUDGET_LIMIT;

/// An OpenAI chat completion request plus the worker's fields. Fields not listed here
/// (temperature, top_p, seed, max_tokens, max_completion_tokens, response_format, stop, user, …)
/// are forwarded to the upstream unchanged.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ChatCompletionRequest {
    /// Model to use; must be the configured model (with or without its provider prefix).
    pub model: String,
    /// The conversation so far.
    #[schemars(length(min = 1))]
    pub messages: Vec<ChatMessage>,
    /// Number of upstream candidates to generate (1 = one plain call). The `X-ITS-Budget` header wins.
    #[schemars(range(min = 1, max = 1000))]
    pub budget: Option<u64>,
    /// `false` adds a `metadata` object with every candidate and the vote or judge scores.
    pub return_response_only: Option<bool>,
    /// Stream the selected answer as server-sent events.
    pub stream: Option<bool>,
    /// `{"include_usage": true}` adds a final chunk with the usage of the whole request.
    pub stream_options: Option<StreamOptions>,
    /// Tools the model may call; forwarded to every candidate call.
    pub tools: Option<Vec<ToolDefinition>>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name": …}}`; forwarded.
    #[schemars(with = "Option<Value>")]
    pub tool_choice: Option<IgnoredAny>,
    /// Must be 1 if given: one answer is returned (use `budget` for more candidates).
    pub n: Option<u64>,
    /// Overrides the endpoint's algorithm for this request, where `allow_request_override`
    /// permits. Checked when the request is planned; never forwarded.
    #[schemars(with = "Option<AlgorithmOverride>")]
    pub algorithm: Option<IgnoredAny>,
}

/// A request's `algorithm` field (sent through the OpenAI SDK's `extra_body`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlgorithmOverride {
    /// `self-consistency` or `best-of-n` (best-of-n needs a judge on the endpoint).
    pub name: Option<crate::config::AlgorithmName>,
    /// How tool-call candidates are voted on.
    pub tool_vote: Option<crate::config::ToolVote>,
    /// Adaptive self-consistency: `{"rule": "beta" | "dirichlet" | "its_hub", "threshold",
    /// "min_samples", "parallelism"}`.
    pub adaptive: Option<crate::config::AdaptiveConfig>,
}

/// One message of the conversation.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ChatMessage {
    pub role: Role,
    /// A string, a list of content parts, or null (assistant messages that only call tools).
    #[schemars(with = "Option<Value>")]
    pub content: Option<Content>,
    /// Tool calls made by an assistant message.
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// For `tool` messages: the id of the call this answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

/// A tool call in the conversation history.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ToolCallIn {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub function: FunctionCallIn,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FunctionCallIn {
    pub name: String,
    /// JSON-encoded arguments.
    pub arguments: Option<String>,
}

/// A tool the model may call.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ToolDefinition {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: Option<FunctionDefinition>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FunctionDefinition {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    #[schemars(with = "Option<Value>")]
    pub parameters: Option<IgnoredAny>,
}

/// The kind of a message's `content`. Only the kind is checked — the original JSON is what gets
/// forwarded — so validation copies no message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Text,
    Parts,
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Kind;
        impl<'de> serde::de::Visitor<'de> for Kind {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, an array of content parts or null")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Content, E> {
                Ok(Content::Text)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Content, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Content::Parts)
            }
        }
        d.deserialize_any(Kind)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// A validated request, ready to run.
#[derive(Debug)]
pub struct ChatRequest {
    pub model: String,
    pub budget: Option<u32>,
    pub stream: bool,
    pub include_usage: bool,
    pub return_response_only: bool,
    /// The `algorithm` override, unchecked (planning checks it against the endpoint).
    pub algorithm: Option<Value>,
    /// The body to forward: everything but the worker's own fields and the streaming switches
    /// (the worker always calls upstream without streaming).
    pub forward: Map<String, Value>,
}

/// Fields that are the worker's, never forwarded.
const OWN_FIELDS: &[&str] = &["budget", "return_response_only", "stream", "stream_options"];

/// Parses and validates a chat request body.
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )
    })?;
    if !value.is_object() {
        return Err(not_an_object());
    }
    for required in ["model", "messages"] {
        if value.get(required).is_none() {
            return Err(ApiError::bad_request(
                format!("Missing required parameter: '{required}'."),
                Some(required.to_owned()),
            ));
        }
    }
    // A typed pass over the same value, by reference: precise messages with the path of the
    // offending field, and nothing copied but the few scalars the worker reads.
    let typed: ChatCompletionRequest = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        ApiError::bad_request(format!("Invalid value for '{path}': {inner}"), Some(path))
    })?;
    check_semantics(&typed)?;
    let Value::Object(mut map) = value else {
        return Err(not_an_object());
    };
    for f in OWN_FIELDS {
        map.remove(*f);
    }
    let algorithm = map.remove("algorithm");
    let budget = match typed.budget {
        None => None,
        Some(b) => Some(check_budget_range(b)?),
    };
    Ok(ChatRequest {
        model: typed.model,
        budget,
        stream: typed.stream.unwrap_or(false),
        include_usage: typed
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        return_response_only: typed.return_response_only.unwrap_or(true),
        algorithm,
        forward: map,
    })
}

/// Parses the `X-ITS-Budget` header.
pub fn parse_budget_header(value: &[u8]) -> Result<u32, ApiError> {
    let text = std::str::from_utf8(value).unwrap_or("").trim();
    let n: u64 = text.parse().map_err(|_| {
        ApiError::bad_request(
            format!(
                "X-ITS-Budget must be an integer between 1 and {MAX_BUDGET_LIMIT}, got {text:?}"
            ),
            Some("budget".to_owned()),
        )
    })?;
    check_budget_range(n)
}

fn check_budget_range(b: u64) -> Result<u32, ApiError> {
    if (1..=MAX_BUDGET_LIMIT as u64).contains(&b) {
        Ok(b as u32)
    } else {
        Err(ApiError::bad_request(
            format!("budget must be between 1 and {MAX_BUDGET_LIMIT}, got {b}"),
            Some("budget".to_owned()),
        ))
    }
}

fn check_semantics(r: &ChatCompletionRequest) -> Result<(), ApiError> {
    if r.model.trim().is_empty() {
        return Err(ApiError::bad_request(
            "model must not be empty",
            Some("model".to_owned()),
        ));
    }
    if r.messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages must contain at least one message",
            Some("messages".to_owned()),
        ));
    }
    if let Some(n) = r.n
        && n != 1
    {
        return Err(ApiError::bad_request(
            format!(
                "n must be 1 (got {n}): the worker returns the single best answer; use budget to generate more candidates"
            ),
            Some("n".to_owned()),
        ));
    }
    for (i, m) in r.messages.iter().enumerate() {
        let at = |field: &str| Some(format!("messages[{i}].{field}"));
        if m.content.is_none() {
            let tool_call_turn =
                m.role == Role::Assistant && m.tool_calls.as_ref().is_some_and(|c| !c.is_empty());
            if !tool_call_turn {
                return Err(ApiError::bad_request(
                    format!("messages[{i}].content is required for a {:?} message (null is only allowed for assistant messages with tool_calls)", m.role).to_lowercase(),
                    at("content"),
                ));
            }
        }
        if m.role == Role::Tool && m.tool_call_id.as_deref().is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(
                format!("messages[{i}].tool_call_id is required for tool messages"),
                at("tool_call_id"),
            ));
        }
        if m.tool_calls.is_some() && m.role != Role::Assistant {
            return Err(ApiError::bad_request(
                format!("messages[{i}].tool_calls is only allowed on assistant messages"),
                at("tool_calls"),
            ));
        }
    }
    for (i, t) in r.tools.iter().flatten().enumerate() {
        if t.kind == "function" && t.function.is_none() {
            return Err(ApiError::bad_request(
                format!("tools[{i}].function is required for function tools"),
                Some(format!("tools[{i}].function")),
            ));
        }
    }
    Ok(())
}

fn not_an_object() -> ApiError {
    ApiError::bad_request("The request body must be a JSON object.", None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: &str) -> (String, Option<String>) {
        match parse_chat(body.as_bytes()) {
            Err(ApiError::BadRequest { message, param, .. }) => (message, param),
            other => panic!("expected a bad request for {body}, got {other:?}"),
        }
    }

    #[test]
    fn guide_request_parses_and_strips_own_fields() {
        let r = parse_chat(
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"budget":5,"temperature":0.3,
                "tool_choice":"auto","stream":false,"return_response_only":false,"seed":7}"#,
        )
        .unwrap();
        assert_eq!(r.budget, Some(5));
        assert!(!r.return_response_only);
        assert!(!r.forward.contains_key("budget") && !r.forward.contains_key("stream"));
        assert_eq!(r.forward["temperature"], 0.3);
        assert_eq!(r.forward["seed"], 7);
    }

    #[test]
    fn tool_history_with_null_content_is_accepted() {
        parse_chat(
            br#"{"model":"m","messages":[{"role":"user","content":"q"},
              {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
              {"role":"tool","tool_call_id":"c1","content":"42"}]}"#,
        )
        .unwrap();
    }

    #[test]
    fn precise_errors() {
        assert_eq!(bad("{not json").1, None);
        assert!(
            bad("{not json")
                .0
                .starts_with("We could not parse the JSON body")
        );
        assert_eq!(bad("[]").0, "The request body must be a JSON object.");
        assert_eq!(
            bad(r#"{"messages":[]}"#),
            (
                "Missing required parameter: 'model'.".into(),
                Some("model".into())
            )
        );
        assert_eq!(
            bad(r#"{"model":"m","messages":[]}"#).1,
            Some("messages".into())
        );
        let (msg, param) = bad(r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#);
        assert_eq!(param.as_deref(), Some("messages[0].role"));
        assert!(msg.contains("unknown variant `robot`"), "{msg}");
        let (msg, param) =
            bad(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"budget":"8"}"#);
        assert_eq!(param.as_deref(), Some("budget"));
        assert!(msg.contains("invalid type: string \"8\""), "{msg}");
        assert_eq!(
            bad(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"budget":0}"#).1,
            Some("budget".into())
        );
        assert_eq!(
            bad(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"budget":1001}"#).1,
            Some("budget".into())
        );
        assert_eq!(
            bad(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#).1,
            Some("n".into())
        );
        assert_eq!(
            bad(r#"{"model":"m","messages":[{"role":"user"}]}"#).1,
            Some("messages[0].content".into())
        );
        assert_eq!(
            bad(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#).1,
            Some("messages[0].content".into())
        );
        assert_eq!(
            bad(r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#).1,
            Some("messages[0].tool_call_id".into())
        );
        assert_eq!(
            bad(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#).1,
            Some("stream".into())
        );
    }

    #[test]
    fn budget_header() {
        assert_eq!(parse_budget_header(b" 8 ").unwrap(), 8);
        assert!(parse_budget_header(b"eight").is_err());
        assert!(parse_budget_header(b"0").is_err());
    }
}
