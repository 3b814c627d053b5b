//! Recognising and answering LLM-as-judge calls.

use serde_json::json;

use crate::engine::Msg;
use crate::scenario::Judge;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeMode {
    /// Reply `{"reasoning": ..., "score": N}`.
    Pointwise,
    /// Reply `{"reasoning": ..., "selected_indices": [i]}`.
    Groupwise,
}

/// A request is a judge call when any message contains the marker
/// (case-insensitive). Groupwise when the prompt mentions `selected_indices`,
/// otherwise pointwise (prompts normally ask for a `score`).
pub fn detect(judge: &Judge, messages: &[Msg]) -> Option<JudgeMode> {
    let marker = judge.marker.as_deref().filter(|m| !m.is_empty())?;
    let marker = marker.to_lowercase();
    let lowered: Vec<String> = messages.iter().map(|m| m.text.to_lowercase()).collect();
    if !lowered.iter().any(|t| t.contains(&marker)) {
        return None;
    }
    if lowered.iter().any(|t| t.contains("selected_indices")) {
        Some(JudgeMode::Groupwise)
    } else {
        Some(JudgeMode::Pointwise)
    }
}

fn last_user_text(messages: &[Msg]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .or(messages.last())
        .map_or("", |m| m.text.as_str())
}

/// Text of the judge's reply.
pub fn reply(judge: &Judge, mode: JudgeMode, messages: &[Msg]) -> String {
    if let Some(raw) = &judge.raw_reply {
        return raw.clone();
    }
    let last_user = last_user_text(messages);
    match mode {
        JudgeMode::Pointwise => {
            let lowered = last_user.to_lowercase();
            let rule = judge
                .pointwise
                .iter()
                .find(|r| lowered.contains(&r.contains.to_lowercase()));
            let (reasoning, score) = match rule {
                Some(r) => (
                    r.reasoning.clone().unwrap_or_else(|| {
                        format!(
                            "The response states {}, which matches the correct result, and the reasoning is sound.",
                            r.contains
                        )
                    }),
                    r.score.clone(),
                ),
                None => (
                    "The response does not reach the correct result.".to_string(),
                    judge.default_score.clone(),
                ),
            };
            json!({ "reasoning": reasoning, "score": score }).to_string()
        }
        JudgeMode::Groupwise => {
            let mut blocks = response_blocks(last_user);
            if blocks.is_empty() {
                let all: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
                blocks = response_blocks(&all.join("\n"));
            }
            let picked = judge.groupwise_pick_contains.as_deref().and_then(|pick| {
                let pick_l = pick.to_lowercase();
                blocks
                    .iter()
                    .find(|(_, body)| body.to_lowercase().contains(&pick_l))
                    .map(|(i, _)| (*i, pick))
            });
            let (index, reasoning) = match picked {
                Some((i, pick)) => (
                    i,
                    format!("Response {i} reaches the correct result ({pick}); the others do not."),
                ),
                None => (
                    0,
                    "No response is clearly better; selecting the first.".to_string(),
                ),
            };
            json!({ "reasoning": reasoning, "selected_indices": [index] }).to_string()
        }
    }
}

/// Split a prompt into `Response <i>:` blocks. A block starts at a line that
/// begins (after whitespace and markdown `#`/`*`) with `Response <i>:` and runs
/// until the next such line or the end of the text.
pub fn response_blocks(text: &str) -> Vec<(u64, String)> {
    let mut blocks: Vec<(u64, String)> = Vec::new();
    for line in text.lines() {
        if let Some((index, rest)) = block_header(line) {
            blocks.push((index, rest.to_string()));
        } else if let Some((_, body)) = blocks.last_mut() {
            body.push('\n');
            body.push_str(line);
        }
    }
    blocks
}

fn block_header(line: &str) -> Option<(u64, &str)> {
    let l = line.trim_start_matches(|c: char| c.is_whitespace() || c == '#' || c == '*');
    let rest = l.strip_prefix("Response ")?;
    let digits_end = rest.find(|c: char| !c.is_ascii_digit())?;
    if digits_end == 0 {
        return None;
    }
    let index = rest[..digits_end].parse().ok()?;
    let after = rest[digits_end..].trim_start_matches('*');
    let body = after.strip_prefix(':')?;
    Some((index, body.trim_start_matches('*')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;
    use serde_json::Value;

    const SYSTEM: &str = "You are an expert evaluator. Judge the response.";

    fn judge() -> Judge {
        Scenario::default().judge
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn detection() {
        let j = judge();
        let plain = [Msg::new("user", "What is 847*293+156?")];
        assert_eq!(detect(&j, &plain), None);
        let point = [
            Msg::new("system", "You are an EXPERT Evaluator."),
            Msg::new(
                "user",
                "Rate it. Reply with JSON {\"reasoning\", \"score\"}",
            ),
        ];
        assert_eq!(detect(&j, &point), Some(JudgeMode::Pointwise));
        let group = [
            Msg::new("system", SYSTEM),
            Msg::new(
                "user",
                "Pick the best. Reply {\"selected_indices\": [..]} (no score)",
            ),
        ];
        assert_eq!(detect(&j, &group), Some(JudgeMode::Groupwise));
        let mut off = j.clone();
        off.marker = None;
        assert_eq!(detect(&off, &point), None);
        off.marker = Some(String::new());
        assert_eq!(detect(&off, &point), None);
    }

    #[test]
    fn pointwise_first_matching_rule_in_last_user_message() {
        let mut j = judge();
        j.pointwise.push(crate::scenario::PointwiseRule {
            contains: "248,317".into(),
            score: 2.into(),
            reasoning: Some("Off by ten.".into()),
        });
        let ask = |answer: &str| {
            let msgs = [
                Msg::new(
                    "system",
                    format!("{SYSTEM} 248327 is not mentioned here? it is."),
                ),
                Msg::new(
                    "user",
                    format!("Response to score:\n{answer}\nGive a score."),
                ),
            ];
            parse(&reply(&j, JudgeMode::Pointwise, &msgs))
        };
        assert_eq!(ask("The answer is 248327.")["score"], 9);
        let off = ask("I believe it is 248,317.");
        assert_eq!(off["score"], 2);
        assert_eq!(off["reasoning"], "Off by ten.");
        // System prompt text does not count; only the last user message.
        assert_eq!(ask("No idea.")["score"], 3);
    }

    #[test]
    fn groupwise_picks_first_block_containing_text() {
        let j = judge();
        let prompt = "Question: what is 847*293+156?\n\
                      Response 0: I believe it is 248,317.\n\
                      more text\n\
                      Response 1: The answer is 248327.\n\
                      Response 2: The answer is 248327.\n\
                      Return selected_indices.";
        let msgs = [Msg::new("system", SYSTEM), Msg::new("user", prompt)];
        let v = parse(&reply(&j, JudgeMode::Groupwise, &msgs));
        assert_eq!(v["selected_indices"], serde_json::json!([1]));
        assert!(v["reasoning"].as_str().unwrap().contains("Response 1"));

        let none = "Response 0: foo\nResponse 1: bar";
        let v = parse(&reply(&j, JudgeMode::Groupwise, &[Msg::new("user", none)]));
        assert_eq!(v["selected_indices"], serde_json::json!([0]));
    }

    #[test]
    fn block_parsing() {
        let blocks = response_blocks(
            "intro mentioning Response 9: inline\n  **Response 1:** a\nb\n### Response 2: c\nResponse x: no\nResponses 3: no",
        );
        assert_eq!(
            blocks,
            vec![
                (1, " a\nb".to_string()),
                (2, " c\nResponse x: no\nResponses 3: no".to_string())
            ]
        );
    }

    #[test]
    fn raw_reply_wins() {
        let mut j = judge();
        j.raw_reply = Some("```json\n{\"score\": 7".into());
        let msgs = [Msg::new("user", "x")];
        assert_eq!(
            reply(&j, JudgeMode::Pointwise, &msgs),
            "```json\n{\"score\": 7"
        );
        assert_eq!(
            reply(&j, JudgeMode::Groupwise, &msgs),
            "```json\n{\"score\": 7"
        );
    }
}
