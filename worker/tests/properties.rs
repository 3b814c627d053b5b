//! Property tests: no input a client or an operator can send makes the worker's parsers,
//! validators or vote panic, and every refusal is a client error in the OpenAI envelope.
//! Only public entry points are used, so internal restructuring does not break these tests.

use std::collections::HashMap;

use inferscale_worker::algorithms::vote::{VoteSettings, vote};
use inferscale_worker::api::request::{parse_budget_header, parse_chat};
use inferscale_worker::config::{ToolVote, WorkerConfig};
use inferscale_worker::providers::Candidate;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Any JSON value, with strings, numbers and keys biased toward what the parsers look at.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just(1e20),
            Just(-1.0),
            Just(0.0),
            Just(1e-300),
            Just(f64::MAX)
        ]
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        interesting_word().prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        interesting_word().prop_map(str::to_owned),
        "[a-z_]{1,10}".prop_map(String::from),
    ]
}

/// Field names and values of the chat and configuration schemas.
fn interesting_word() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "model",
        "messages",
        "role",
        "content",
        "user",
        "assistant",
        "system",
        "tool",
        "tool_calls",
        "function",
        "name",
        "arguments",
        "tools",
        "budget",
        "stream",
        "stream_options",
        "include_usage",
        "return_response_only",
        "n",
        "temperature",
        "max_tokens",
        "text",
        "type",
        "image_url",
        "provider",
        "endpoint",
        "api_key",
        "alg",
        "best-of-n",
        "self-consistency",
        "tool_vote",
        "tool_hierarchical",
        "regex_patterns",
        "(",
        "max_budget",
        "judge_mode",
        "upstream",
        "call_timeout_secs",
        "request_timeout_secs",
        "max_concurrency",
        "candidates_per_call",
        "server",
        "file",
        "env",
        "auto",
        "openai-compatible",
        "bedrock/x",
    ])
}

/// A body shaped like a chat request: the two required fields present, anything else around.
fn chat_shaped() -> impl Strategy<Value = Value> {
    (
        any_json(),
        prop::collection::vec(any_json(), 0..4),
        prop::collection::vec((key(), any_json()), 0..5),
    )
        .prop_map(|(model, messages, extra)| {
            let mut body: Map<String, Value> = extra.into_iter().collect();
            body.insert("model".into(), model);
            body.insert("messages".into(), Value::Array(messages));
            Value::Object(body)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn chat_parser_answers_any_bytes_with_ok_or_a_client_error(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = parse_chat(&bytes) {
            prop_assert!(e.status().is_client_error(), "{e}: {}", e.status());
        }
    }

    #[test]
    fn chat_parser_answers_any_json_with_ok_or_a_client_error(body in prop_oneof![any_json(), chat_shaped()]) {
        let bytes = serde_json::to_vec(&body).unwrap();
        match parse_chat(&bytes) {
            Ok(req) => {
                // What is accepted names a model and forwards no worker-only field.
                prop_assert!(body.get("model").is_some_and(Value::is_string));
                for own in ["budget", "return_response_only", "stream", "stream_options"] {
                    prop_assert!(!req.forward.contains_key(own));
                }
            }
            Err(e) => {
                prop_assert!(e.status().is_client_error(), "{e}: {}", e.status());
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    #[test]
    fn budget_header_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..24)) {
        if let Ok(b) = parse_budget_header(&bytes) {
            prop_assert!(b >= 1);
        }
    }

    #[test]
    fn configure_bodies_deserialise_and_validate_without_panicking(body in prop_oneof![
        any_json(),
        (any_json(), prop::collection::vec((key(), any_json()), 0..6)).prop_map(|(model, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            m.insert("model".into(), model);
            Value::Object(m)
        }),
    ]) {
        let bytes = serde_json::to_vec(&body).unwrap();
        if let Ok(cfg) = serde_json::from_slice::<WorkerConfig>(&bytes) {
            let _ = cfg.validate();
            if let Some(server) = &cfg.server {
                let _ = server.limits();
            }
        }
    }

    #[test]
    fn the_winner_has_the_most_votes(answers in prop::collection::vec(prop::sample::select(vec![
        "42", " 42", "42 ", "41", "forty-two", "", "The answer is 42.", "\u{e9}",
    ]), 1..24)) {
        let candidates: Vec<Candidate> = answers
            .iter()
            .map(|a| Candidate::from_message(json!({"role": "assistant", "content": a}), None, None))
            .collect();
        let result = vote(&candidates, &VoteSettings::default()).unwrap();
        prop_assert!(result.selected < candidates.len());
        // An independent count of the trimmed answers.
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for a in &answers {
            *counts.entry(a.trim()).or_default() += 1;
        }
        let most = counts.values().copied().max().unwrap();
        prop_assert_eq!(counts[answers[result.selected].trim()], most);
        prop_assert_eq!(result.winner_votes, most);
        // Ties go to the first of the tied answers.
        let first_with_most = answers.iter().position(|a| counts[a.trim()] == most).unwrap();
        prop_assert_eq!(answers[result.selected].trim(), answers[first_with_most].trim());
    }

    #[test]
    fn vote_over_arbitrary_messages_never_panics(
        messages in prop::collection::vec(any_json(), 1..8),
        tool_vote in prop::option::of(prop::sample::select(vec![
            ToolVote::ToolName, ToolVote::ToolArgs, ToolVote::ToolHierarchical, ToolVote::ToolFlatAll,
        ])),
        patterns in prop::collection::vec(prop::sample::select(vec![
            r"answer is (\d+)", r"\d+", "(", "[a-z]+", r"(?P<x>.)",
        ]), 0..3),
    ) {
        let candidates: Vec<Candidate> = messages
            .into_iter()
            .map(|m| Candidate::from_message(m, None, None))
            .collect();
        let patterns: Vec<String> = patterns.into_iter().map(str::to_owned).collect();
        // An invalid pattern is refused when configured, before any vote.
        let Ok(settings) = VoteSettings::new(tool_vote, vec!["id".into()], &patterns) else {
            return Ok(());
        };
        let result = vote(&candidates, &settings).unwrap();
        prop_assert!(result.selected < candidates.len());
        prop_assert!(result.winner_votes >= 1);
        prop_assert!(result.winner_votes <= result.eligible);
        prop_assert!(result.counts.iter().all(|(_, n)| *n <= result.winner_votes));
    }

    #[test]
    fn tool_call_votes_pick_a_most_common_call(calls in prop::collection::vec(
        (prop::sample::select(vec!["add", "sub"]), prop::sample::select(vec![
            r#"{"a":1,"b":2}"#, r#"{"b":2,"a":1}"#, r#"{"a":1.0,"b":2}"#, r#"{"a":3}"#, "not json", "",
        ])),
        1..12,
    )) {
        let candidates: Vec<Candidate> = calls
            .iter()
            .map(|(name, args)| Candidate::from_message(json!({
                "role": "assistant", "content": null,
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": name, "arguments": args}}],
            }), None, None))
            .collect();
        let settings = VoteSettings::new(Some(ToolVote::ToolName), Vec::new(), &[]).unwrap();
        let result = vote(&candidates, &settings).unwrap();
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (name, _) in &calls {
            *by_name.entry(name).or_default() += 1;
        }
        let most = by_name.values().copied().max().unwrap();
        prop_assert_eq!(by_name[calls[result.selected].0], most);
    }
}
