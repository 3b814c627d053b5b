//! The PRM wire format of vLLM v0.11.0's pooling runner (`vllm serve Qwen/Qwen2.5-Math-PRM-7B
//! --runner pooling`, STEP pooling + softmax): rendering a partial answer for the PRM, the
//! request body, the response parser and score aggregation. Pure.
//!
//! Request: `POST {rm_endpoint}/pooling` `{"model": rm_name, "input": [text, ...]}`, one text
//! per particle. Response: `{"data": [{"index": i, "data": [[p_neg, p_pos], ...]}, ...],
//! "usage": {"prompt_tokens": N, ...}}`, one row per step tag in order; a step's score is p_pos.

use serde_json::{Value, json};

use crate::config::RmAggMethod;

/// The system prompt the Qwen2.5-Math PRM was trained with, used when the request has none.
pub const DEFAULT_PRM_SYSTEM: &str =
    "Please reason step by step, and put your final answer within \\boxed{}.";
/// Most rows one input may have: far above any `max_steps`, so a hostile server cannot make
/// the worker allocate without bound.
const MAX_ROWS: usize = 4096;

/// Renders one partial answer with the Qwen2.5 chat template, the step tag after every step.
pub fn render_input(system: &str, question: &str, steps: &[String], step_tag: &str) -> String {
    let mut out = String::with_capacity(
        system.len()
            + question.len()
            + steps
                .iter()
                .map(|s| s.len() + step_tag.len())
                .sum::<usize>()
            + 96,
    );
    out.push_str("<|im_start|>system\n");
    out.push_str(system);
    out.push_str("<|im_end|>\n<|im_start|>user\n");
    out.push_str(question);
    out.push_str("<|im_end|>\n<|im_start|>assistant\n");
    for step in steps {
        out.push_str(step);
        out.push_str(step_tag);
    }
    out.push_str("<|im_end|><|endoftext|>");
    out
}

/// The pooling request body.
pub fn request_body(model: &str, inputs: &[String]) -> Value {
    json!({"model": model, "input": inputs})
}

/// What a PRM answered that the worker cannot use. Every variant says which input and row.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrmResponseError {
    #[error("the reward model's answer is not JSON: {0}")]
    NotJson(String),
    #[error("the reward model's answer has no `data` list")]
    MissingData,
    #[error("the reward model scored {got} inputs, {expected} were sent")]
    WrongInputCount { expected: usize, got: usize },
    #[error("the reward model's item {0} has no valid `index`")]
    BadIndex(usize),
    #[error("the reward model gave input {input} {got} step scores, it has {expected} steps")]
    WrongRowCount {
        input: usize,
        expected: usize,
        got: usize,
    },
    #[error("the reward model's score of input {input}, step {step} is not a probability: {value}")]
    NotAProbability {
        input: usize,
        step: usize,
        value: String,
    },
}

/// Scores of one pooling call: per input, the positive-class probability of each step.
#[derive(Debug, Clone, PartialEq)]
pub struct PrmScores {
    pub steps: Vec<Vec<f64>>,
    /// `usage.prompt_tokens` (0 when absent).
    pub prompt_tokens: u64,
}

/// Parses a pooling response; `expected_rows[i]` is the number of steps of input `i`.
/// Items may come in any order (their `index` says which input they score).
pub fn parse_response(body: &[u8], expected_rows: &[usize]) -> Result<PrmScores, PrmResponseError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| PrmResponseError::NotJson(e.to_string()))?;
    let items = value
        .get("data")
        .and_then(Value::as_array)
        .ok_or(PrmResponseError::MissingData)?;
    if items.len() != expected_rows.len() {
        return Err(PrmResponseError::WrongInputCount {
            expected: expected_rows.len(),
            got: items.len(),
        });
    }
    let mut steps: Vec<Option<Vec<f64>>> = vec![None; items.len()];
    for (position, item) in items.iter().enumerate() {
        let index = match item.get("index") {
            None => position,
            Some(v) => v
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .filter(|i| *i < items.len() && steps[*i].is_none())
                .ok_or(PrmResponseError::BadIndex(position))?,
        };
        let rows =
            item.get("data")
                .and_then(Value::as_array)
                .ok_or(PrmResponseError::WrongRowCount {
                    input: index,
                    expected: expected_rows[index],
                    got: 0,
                })?;
        if rows.len() != expected_rows[index] || rows.len() > MAX_ROWS {
            return Err(PrmResponseError::WrongRowCount {
                input: index,
                expected: expected_rows[index],
                got: rows.len(),
            });
        }
        let scores = rows
            .iter()
            .enumerate()
            .map(|(step, row)| positive_probability(row, index, step))
            .collect::<Result<Vec<_>, _>>()?;
        steps[index] = Some(scores);
    }
    let prompt_tokens = value
        .pointer("/usage/prompt_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Ok(PrmScores {
        // Every slot is filled: as many distinct in-range indices as slots.
        steps: steps.into_iter().map(Option::unwrap_or_default).collect(),
        prompt_tokens,
    })
}

/// Column 1 of a `[p_neg, p_pos]` row, which must be a finite number in [0, 1].
fn positive_probability(row: &Value, input: usize, step: usize) -> Result<f64, PrmResponseError> {
    let bad = |value: String| PrmResponseError::NotAProbability { input, step, value };
    let cell = row
        .as_array()
        .filter(|r| r.len() == 2)
        .map(|r| &r[1])
        .ok_or_else(|| bad(truncate(row.to_string())))?;
    match cell.as_f64() {
        Some(p) if p.is_finite() && (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(bad(truncate(cell.to_string()))),
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > 40 {
        let mut end = 40;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// One score of a (partial) answer from its step scores; `None` without any step.
/// `model` is the score the PRM gives the answer as a whole, which for a process reward model
/// is its last step's score.
pub fn aggregate(step_scores: &[f64], method: RmAggMethod) -> Option<f64> {
    let last = *step_scores.last()?;
    Some(match method {
        RmAggMethod::Model | RmAggMethod::Last => last,
        RmAggMethod::Prod => step_scores.iter().product(),
        RmAggMethod::Min => step_scores.iter().copied().fold(f64::INFINITY, f64::min),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_qwen_template_with_a_tag_after_every_step() {
        let steps = ["Step 1".to_owned(), "Step 2".to_owned()];
        assert_eq!(
            render_input("S", "Q?", &steps, "<extra_0>"),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\nStep 1<extra_0>Step 2<extra_0><|im_end|><|endoftext|>"
        );
        assert_eq!(
            request_body("prm", &["a".into(), "b".into()]),
            json!({"model":"prm","input":["a","b"]})
        );
    }

    const OK: &str = r#"{"id":"pool-1","object":"list","created":1,"model":"prm",
        "data":[{"index":1,"object":"pooling","data":[[0.1,0.9]]},
                {"index":0,"object":"pooling","data":[[0.3,0.7],[0.6,0.4]]}],
        "usage":{"prompt_tokens":50,"total_tokens":50,"completion_tokens":0}}"#;

    #[test]
    fn parses_scores_by_index() {
        let s = parse_response(OK.as_bytes(), &[2, 1]).unwrap();
        assert_eq!(s.steps, vec![vec![0.7, 0.4], vec![0.9]]);
        assert_eq!(s.prompt_tokens, 50);
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        let e = |body: &str, rows: &[usize]| parse_response(body.as_bytes(), rows).unwrap_err();
        assert!(matches!(e("<html>", &[1]), PrmResponseError::NotJson(_)));
        assert_eq!(
            e(r#"{"object":"list"}"#, &[1]),
            PrmResponseError::MissingData
        );
        assert_eq!(
            e(OK, &[2, 1, 1]),
            PrmResponseError::WrongInputCount {
                expected: 3,
                got: 2
            }
        );
        assert_eq!(
            e(OK, &[3, 1]),
            PrmResponseError::WrongRowCount {
                input: 0,
                expected: 3,
                got: 2
            }
        );
        let nan = r#"{"data":[{"index":0,"data":[[0.5,"NaN"]]}]}"#;
        assert!(matches!(
            e(nan, &[1]),
            PrmResponseError::NotAProbability {
                input: 0,
                step: 0,
                ..
            }
        ));
        let above = r#"{"data":[{"index":0,"data":[[-0.5,1.5]]}]}"#;
        assert!(matches!(
            e(above, &[1]),
            PrmResponseError::NotAProbability { .. }
        ));
        let short_row = r#"{"data":[{"index":0,"data":[[0.5]]}]}"#;
        assert!(matches!(
            e(short_row, &[1]),
            PrmResponseError::NotAProbability { .. }
        ));
        let dup = r#"{"data":[{"index":0,"data":[[0.5,0.5]]},{"index":0,"data":[[0.5,0.5]]}]}"#;
        assert_eq!(e(dup, &[1, 1]), PrmResponseError::BadIndex(1));
        let missing_rows = r#"{"data":[{"index":0}]}"#;
        assert!(matches!(
            e(missing_rows, &[1]),
            PrmResponseError::WrongRowCount { .. }
        ));
        // Error text stays short even when the server sends a huge cell.
        let huge = format!(
            r#"{{"data":[{{"index":0,"data":[[0.5,"{}"]]}}]}}"#,
            "x".repeat(10_000)
        );
        assert!(e(&huge, &[1]).to_string().len() < 200);
    }

    #[test]
    fn aggregation_methods() {
        let s = [0.9, 0.5, 0.8];
        assert_eq!(aggregate(&s, RmAggMethod::Model), Some(0.8));
        assert_eq!(aggregate(&s, RmAggMethod::Last), Some(0.8));
        assert!((aggregate(&s, RmAggMethod::Prod).unwrap() - 0.36).abs() < 1e-12);
        assert_eq!(aggregate(&s, RmAggMethod::Min), Some(0.5));
        assert_eq!(aggregate(&[], RmAggMethod::Min), None);
    }
}
