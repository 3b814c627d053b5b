//! Judge prompts and the rendering of conversations for them — pure functions.

use serde_json::Value;

use crate::providers::{Candidate, ToolCall, message_text, tool_calls_of};

/// Built-in criterion: general answer quality.
pub const OVERALL_QUALITY: &str = "Judge the response on: accuracy and correctness; completeness with respect to the \
user's question; clarity and coherence; appropriate depth and level of detail; professional tone.";

/// Built-in criterion for agentic, multi-step tool workflows.
pub const MULTI_STEP_TOOL_JUDGE: &str = "The conversation is an agentic workflow that uses tools. Judge which response is \
the best next step: (1) process awareness: does it advance the workflow at its current stage (planning, data \
gathering, analysis, completion) and pause to reflect after several tool calls; (2) strategic reasoning: flexible \
high-level planning early, validating assumptions before proceeding, logical decomposition of complex requests, \
addressing the user's real need; (3) tool execution: appropriate tools for the stage, correctly configured \
arguments, steps that build toward the objective.";

/// The criterion text for a configured criterion name, or the free text itself.
pub fn criterion_text(criterion: &str) -> &str {
    match criterion {
        "overall_quality" => OVERALL_QUALITY,
        "multi_step_tool_judge" => MULTI_STEP_TOOL_JUDGE,
        custom => custom,
    }
}

const SCALE: &str = "0-2: poor (wrong, irrelevant or harmful)\n3-4: below average\n5-6: average\n7-8: good\n9-10: excellent";

/// System prompt of a pointwise judge.
pub fn pointwise_system(criterion: &str) -> String {
    format!(
        "You are an expert evaluator of AI assistant responses.\n\nEVALUATION CRITERIA:\n{criterion}\n\n\
         SCORING SCALE:\n{SCALE}\n\nOUTPUT FORMAT:\nReply with only a JSON object: \
         {{\"reasoning\": \"<brief justification>\", \"score\": <number from 0 to 10>}}"
    )
}

/// User prompt of a pointwise judge: the conversation so far and the candidate to score.
pub fn pointwise_user(context: &[Value], candidate: &Candidate) -> String {
    format!(
        "Evaluate the final assistant turn in light of the preceding conversation.\n\n## Conversation\n{}\n\n\
         ## Final assistant turn\n{}",
        render_conversation(context),
        render_candidate(candidate)
    )
}

/// System prompt of a groupwise judge. It never says "score", so replies are unambiguous.
pub fn groupwise_system(criterion: &str, candidates: usize, top_n: usize) -> String {
    format!(
        "You are an expert evaluator of AI assistant responses.\n\nEVALUATION CRITERIA:\n{criterion}\n\n\
         TASK:\nCompare all {candidates} candidate responses and select the best {top_n}.\n\nOUTPUT FORMAT:\n\
         Reply with only a JSON object: {{\"reasoning\": \"<brief comparison>\", \"selected_indices\": [<index>, ...]}} \
         listing exactly {top_n} response indices, best first."
    )
}

/// User prompt of a groupwise judge: the conversation and every candidate, numbered from 0.
pub fn groupwise_user(context: &[Value], candidates: &[&Candidate]) -> String {
    let mut out = format!(
        "## Conversation context\n{}\n\n## Candidate responses",
        render_conversation(context)
    );
    for (i, c) in candidates.iter().enumerate() {
        out.push_str(&format!("\n\nResponse {i}: {}", render_candidate(c)));
    }
    out
}

/// One line per message: `Role: text`, with tool calls as `name(arguments)`.
pub fn render_conversation(messages: &[Value]) -> String {
    messages
        .iter()
        .map(render_message)
        .collect::<Vec<_>>()
        .join("\n")
}

fn render_message(m: &Value) -> String {
    let role = m.get("role").and_then(Value::as_str).unwrap_or("unknown");
    let role = capitalise(role);
    let text = message_text(m.get("content"));
    let calls = render_calls(&tool_calls_of(m));
    match (text.is_empty(), calls.is_empty()) {
        (_, false) if text.is_empty() => format!("{role} [tool calls]: {calls}"),
        (_, false) => format!("{role}: {text}\n{role} [tool calls]: {calls}"),
        _ => format!("{role}: {text}"),
    }
}

/// A candidate as the judge sees it: its text, then its tool calls.
pub fn render_candidate(c: &Candidate) -> String {
    let calls = render_calls(&c.tool_calls);
    match (c.text.trim().is_empty(), calls.is_empty()) {
        (true, true) => "(empty response)".to_owned(),
        (false, true) => c.text.trim().to_owned(),
        (true, false) => format!("[tool calls]: {calls}"),
        (false, false) => format!("{}\n[tool calls]: {calls}", c.text.trim()),
    }
}

fn render_calls(calls: &[ToolCall]) -> String {
    calls
        .iter()
        .map(|t| format!("{}({})", t.name, t.arguments))
        .collect::<Vec<_>>()
        .join(", ")
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_tool_history() {
        let msgs = vec![
            json!({"role":"user","content":"What is 2+2?"}),
            json!({"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"calc","arguments":"{\"e\":\"2+2\"}"}}]}),
            json!({"role":"tool","tool_call_id":"c","content":"4"}),
        ];
        assert_eq!(
            render_conversation(&msgs),
            "User: What is 2+2?\nAssistant [tool calls]: calc({\"e\":\"2+2\"})\nTool: 4"
        );
    }

    #[test]
    fn groupwise_prompt_numbers_candidates_and_avoids_the_word_score() {
        let a = Candidate::from_message(json!({"role":"assistant","content":"A"}), None, None);
        let b = Candidate::from_message(json!({"role":"assistant","content":"B"}), None, None);
        let user = groupwise_user(&[json!({"role":"user","content":"q"})], &[&a, &b]);
        assert!(
            user.contains("\nResponse 0: A") && user.contains("\nResponse 1: B"),
            "{user}"
        );
        let system = groupwise_system(OVERALL_QUALITY, 2, 1);
        assert!(!system.to_lowercase().contains("score"));
        assert!(pointwise_system("x").contains("\"score\""));
    }

    #[test]
    fn criteria_resolve() {
        assert_eq!(criterion_text("overall_quality"), OVERALL_QUALITY);
        assert_eq!(
            criterion_text("Prefer short answers."),
            "Prefer short answers."
        );
    }
}
