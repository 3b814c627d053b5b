//! Robust parsing of judge replies — pure functions. Judges wrap JSON in prose or code fences,
//! and get truncated by `max_tokens`; every form seen in practice is handled, and anything else
//! is reported as unparseable (never a made-up score).

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

/// Highest score on the pointwise scale.
pub const MAX_SCORE: f64 = 10.0;

/// The pointwise score in a reply, if there is a valid one (0..=10).
pub fn parse_score(reply: &str) -> Option<f64> {
    static SCORE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#""score"\s*:\s*"?(-?\d+(?:\.\d+)?)"#).expect("static regex"));
    let from_json = extract_object(reply).and_then(|o| o.get("score").and_then(number));
    let score = match from_json {
        Some(s) => s,
        // Truncated JSON such as `{"score": 6.5` still carries the number.
        None => SCORE.captures(reply)?.get(1)?.as_str().parse().ok()?,
    };
    (score.is_finite() && (0.0..=MAX_SCORE).contains(&score)).then_some(score)
}

/// The candidate indices a groupwise judge selected, best first, de-duplicated; out-of-range
/// indices are dropped. `None` when the reply names no valid index.
pub fn parse_selection(reply: &str, candidates: usize) -> Option<Vec<usize>> {
    static LIST: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#""selected_indices"\s*:\s*\[([^\]]*)"#).expect("static regex")
    });
    let raw: Vec<f64> = match extract_object(reply) {
        Some(o) => match o
            .get("selected_indices")
            .or_else(|| o.get("selected_index"))
            .or_else(|| o.get("best_index"))
        {
            Some(Value::Array(items)) => items.iter().filter_map(number).collect(),
            Some(single) => number(single).into_iter().collect(),
            None => Vec::new(),
        },
        None => LIST
            .captures(reply)
            .map(|c| {
                c[1].split(',')
                    .filter_map(|s| s.trim().trim_matches('"').parse().ok())
                    .collect()
            })
            .unwrap_or_default(),
    };
    let mut picked = Vec::new();
    for f in raw {
        if f.fract() == 0.0
            && f >= 0.0
            && (f as usize) < candidates
            && !picked.contains(&(f as usize))
        {
            picked.push(f as usize);
        }
    }
    (!picked.is_empty()).then_some(picked)
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The JSON object in a reply: the whole text, else the first fenced code block, else the first
/// balanced `{…}` that parses.
pub fn extract_object(reply: &str) -> Option<Map<String, Value>> {
    let trimmed = reply.trim();
    if let Ok(Value::Object(o)) = serde_json::from_str(trimmed) {
        return Some(o);
    }
    if let Some(block) = fenced_block(trimmed)
        && let Ok(Value::Object(o)) = serde_json::from_str(block.trim())
    {
        return Some(o);
    }
    let mut from = 0;
    while let Some(rel) = trimmed[from..].find('{') {
        let start = from + rel;
        if let Some(end) = balanced_end(&trimmed[start..])
            && let Ok(Value::Object(o)) = serde_json::from_str(&trimmed[start..start + end])
        {
            return Some(o);
        }
        from = start + 1;
    }
    None
}

/// Inside of the first ``` fence (an optional language tag on the opening line is skipped).
fn fenced_block(text: &str) -> Option<&str> {
    let open = text.find("```")?;
    let after = &text[open + 3..];
    let body_start = after.find('\n').map_or(0, |i| i + 1);
    let body = &after[body_start..];
    let close = body.find("```")?;
    Some(&body[..close])
}

/// Length of the balanced `{…}` at the start of `s`, respecting JSON strings.
fn balanced_end(s: &str) -> Option<usize> {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for (i, ch) in s.char_indices() {
        if in_str {
            match (escaped, ch) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match ch {
            '"' => in_str = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_score_vectors() {
        let cases: &[(&str, Option<f64>)] = &[
            (r#"{"score": 8}"#, Some(8.0)),
            (r#"  {"score": 7.5}  "#, Some(7.5)),
            ("```json\n{\"score\": 9}\n```", Some(9.0)),
            ("```\n{\"score\": 6}\n```", Some(6.0)),
            ("Here is my evaluation:\n{\"score\": 4}", Some(4.0)),
            (
                r#"Based on analysis, {"score": 3} is my rating."#,
                Some(3.0),
            ),
            (r#"{"rating": 8}"#, None),
            ("The response is quite good overall.", None),
            ("", None),
            (
                "text {\"score\": 1}\n```json\n{\"score\": 9}\n```",
                Some(9.0),
            ),
            (r#"{"score": "high"}"#, None),
            ("{\"score\": 6.5\n\n\n", Some(6.5)),
            (
                r#"{"reasoning": "nested {braces} in \"text\"", "score": 7}"#,
                Some(7.0),
            ),
            (r#"Verdict: {"reasoning": "ok", "score": "8"}"#, Some(8.0)),
            (r#"{"score": 85}"#, None),
            (r#"{"score": -1}"#, None),
        ];
        for (reply, want) in cases {
            assert_eq!(parse_score(reply), *want, "reply {reply:?}");
        }
    }

    #[test]
    fn selection_vectors() {
        assert_eq!(
            parse_selection(r#"{"reasoning":"r","selected_indices":[1]}"#, 3),
            Some(vec![1])
        );
        assert_eq!(
            parse_selection("```json\n{\"selected_indices\": [2, 0]}\n```", 3),
            Some(vec![2, 0])
        );
        assert_eq!(parse_selection(r#"{"selected_indices":[7]}"#, 3), None);
        assert_eq!(
            parse_selection(r#"{"selected_indices":[7, 1, 1]}"#, 3),
            Some(vec![1])
        );
        assert_eq!(
            parse_selection(r#"{"selected_index": 2}"#, 3),
            Some(vec![2])
        );
        assert_eq!(parse_selection("I cannot decide between them.", 3), None);
        assert_eq!(
            parse_selection("{\"reasoning\": \"long...\", \"selected_indices\": [0", 3),
            Some(vec![0])
        );
        assert_eq!(parse_selection(r#"{"selected_indices":[1.5]}"#, 3), None);
    }
}
