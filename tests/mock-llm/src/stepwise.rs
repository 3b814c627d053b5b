//! Step-wise reasoning mode: a scripted "model" that solves a problem in K
//! steps, one step per call, the way step-wise search (particle filtering,
//! beam search) drives vLLM: the partial answer comes back as a trailing
//! assistant message with `continue_final_message: true` and generation stops
//! at the step token.
//!
//! The simulator stays stateless across calls: every step carries a visible
//! marker of its correctness (`Step 3 (ok): ...` / `Step 3 (slip): ...`), so
//! the particle's progress and whether it is still on a correct path are read
//! back from the request itself. The final step boxes the correct answer only
//! when every step of the particle was correct. Each step also carries a
//! random four-hex-digit draft tag (`Step 3 (ok): [1f0a] ...`): sampled steps
//! differ in text like a real model's, while their length stays fixed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::openai::content_text;
use crate::rng::Rng;
use crate::scenario::FinishReason;

const OK_MARKER: &str = " (ok): ";
const SLIP_MARKER: &str = " (slip): ";
/// Steps are joined with this when one call returns a whole solution.
const FULL_SOLUTION_JOINER: &str = "\n\n";
/// More stop strings than any real client sends; bounds the per-call work.
const MAX_STOP_STRINGS: usize = 16;
const MAX_STEP_COUNT: u32 = 64;
const MAX_DISTRACTORS: u32 = 100;

/// Filler that makes intermediate steps look (and count tokens) like
/// reasoning. Single-line, so no common step token ever cuts it.
const FILLERS: [&str; 4] = [
    "we restate what is given and what is asked.",
    "we carry the computation one part further.",
    "we check the intermediate result against the constraints.",
    "we combine the partial results.",
];

/// Scenario block `steps:`; its presence turns step mode on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Steps {
    /// Steps per complete solution (K).
    pub count: u32,
    /// Probability that one step is correct, independently of the others.
    pub p_correct: f64,
    /// The correct final answer.
    pub answer: String,
    /// Number of distinct wrong final answers a broken path can end in.
    pub distractors: u32,
}

impl Default for Steps {
    fn default() -> Self {
        Steps {
            count: 6,
            p_correct: 0.8,
            answer: "42".to_string(),
            distractors: 4,
        }
    }
}

impl Steps {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_STEP_COUNT).contains(&self.count) {
            return Err(format!("steps.count must be within 1..={MAX_STEP_COUNT}"));
        }
        if !(0.0..=1.0).contains(&self.p_correct) {
            return Err("steps.p_correct must be within 0..1".into());
        }
        if self.answer.is_empty() || self.answer.contains('}') {
            return Err("steps.answer must be non-empty and contain no '}'".into());
        }
        if !(1..=MAX_DISTRACTORS).contains(&self.distractors) {
            return Err(format!(
                "steps.distractors must be within 1..={MAX_DISTRACTORS}"
            ));
        }
        Ok(())
    }

    /// The k-th wrong answer (k >= 1): n+k for an integer answer.
    fn distractor(&self, k: u32) -> String {
        match self.answer.parse::<i64>() {
            Ok(n) => n.saturating_add(i64::from(k)).to_string(),
            Err(_) => format!("{}-wrong{k}", self.answer),
        }
    }
}

/// What the simulator reads from a chat request in step mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepRequest {
    /// The partial answer being continued ("" when starting afresh).
    pub prefix: String,
    pub stop: Vec<String>,
    pub max_tokens: Option<u64>,
}

pub fn parse_step_request(body: &Value) -> Result<StepRequest, String> {
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or("'stop' must be a string or an array of strings")?,
        Some(_) => return Err("'stop' must be a string or an array of strings".into()),
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(format!("'stop' takes at most {MAX_STOP_STRINGS} strings"));
    }
    if stop.iter().any(String::is_empty) {
        return Err("'stop' strings must not be empty".into());
    }
    let continue_final = match body.get("continue_final_message") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("'continue_final_message' must be a boolean".into()),
    };
    let max_tokens = match body
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| body.get("max_tokens").filter(|v| !v.is_null()))
    {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| *n >= 1)
                .ok_or("'max_tokens' must be a positive integer")?,
        ),
    };
    let last = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last());
    let prefix = match last {
        Some(m) if continue_final && m.get("role").and_then(Value::as_str) == Some("assistant") => {
            m.get("content").map(content_text).unwrap_or_default()
        }
        _ => String::new(),
    };
    Ok(StepRequest {
        prefix,
        stop,
        max_tokens,
    })
}

/// The state of a particle, read back from its partial answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Particle {
    pub steps_done: usize,
    /// No step so far was a slip.
    pub on_track: bool,
}

pub fn read_particle(prefix: &str) -> Particle {
    let ok = prefix.matches(OK_MARKER).count();
    let slips = prefix.matches(SLIP_MARKER).count();
    Particle {
        steps_done: ok + slips,
        on_track: slips == 0,
    }
}

/// True when a step's text says it (and so far as it knows, its path) is
/// correct; used by the PRM side to score steps.
pub fn step_is_marked_ok(step: &str) -> bool {
    step.contains(OK_MARKER) && !step.contains(SLIP_MARKER)
}

/// One reply in step mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReply {
    pub text: String,
    pub finish: FinishReason,
    /// vLLM's `stop_reason`: the stop string that ended generation, `None`
    /// for an end of sequence (the solution is complete) or a length cut.
    pub stop_reason: Option<String>,
}

fn boxed(answer: &str) -> String {
    format!("\\boxed{{{answer}}}")
}

/// Generate the next step (with a `stop` list) or the rest of the solution
/// (without), drawing each step's correctness from `rng`.
pub fn generate(steps: &Steps, req: &StepRequest, rng: &mut Rng) -> StepReply {
    let particle = read_particle(&req.prefix);
    let total = steps.count as usize;
    let mut on_track = particle.on_track;
    let final_answer = |on_track: bool, rng: &mut Rng| {
        if on_track {
            steps.answer.clone()
        } else {
            // distractors >= 1 by validation; modulo keeps it in 1..=distractors.
            let k = (rng.next_u64() % u64::from(steps.distractors.max(1))) as u32 + 1;
            steps.distractor(k)
        }
    };
    let mut texts = Vec::new();
    let mut finished = false;
    if particle.steps_done >= total {
        texts.push(boxed(&final_answer(on_track, rng)));
        finished = true;
    }
    let mut i = particle.steps_done + 1;
    while !finished {
        let ok = rng.next_f64() < steps.p_correct;
        on_track &= ok;
        let marker = if ok { OK_MARKER } else { SLIP_MARKER };
        let body = if i >= total {
            finished = true;
            format!(
                "so the final answer is {}.",
                boxed(&final_answer(on_track, rng))
            )
        } else {
            FILLERS[(i - 1) % FILLERS.len()].to_string()
        };
        // A per-step draft tag makes every sampled step a different text, as a real model's
        // are, so the PRM's text-keyed noise is drawn afresh for each path.
        let draft = rng.next_u64() & 0xffff;
        texts.push(format!("Step {i}{marker}[{draft:04x}] {body}"));
        i += 1;
        if !req.stop.is_empty() {
            break;
        }
    }
    let text = texts.join(FULL_SOLUTION_JOINER);
    let (text, stop_reason) = cut_at_stop(text, &req.stop, finished);
    match req.max_tokens {
        Some(max) if text.chars().count() as u64 > max.saturating_mul(4) => StepReply {
            text: text
                .chars()
                .take(usize::try_from(max.saturating_mul(4)).unwrap_or(usize::MAX))
                .collect(),
            finish: FinishReason::Length,
            stop_reason: None,
        },
        _ => StepReply {
            text,
            finish: FinishReason::Stop,
            stop_reason,
        },
    }
}

/// Cut `text` where the earliest stop string occurs, as vLLM does (the stop
/// string itself is excluded). An unfinished step that contains none ends
/// where the model would emit the first stop string next.
fn cut_at_stop(text: String, stop: &[String], finished: bool) -> (String, Option<String>) {
    let earliest = stop
        .iter()
        .filter_map(|s| text.find(s.as_str()).map(|at| (at, s)))
        .min_by_key(|(at, _)| *at);
    match earliest {
        Some((at, s)) => (text[..at].to_string(), Some(s.clone())),
        None if finished => (text, None),
        None => (text, stop.first().cloned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(prefix: &str, stop: &[&str]) -> StepRequest {
        StepRequest {
            prefix: prefix.to_string(),
            stop: stop.iter().map(|s| s.to_string()).collect(),
            max_tokens: None,
        }
    }

    fn all_ok() -> Steps {
        Steps {
            p_correct: 1.0,
            ..Steps::default()
        }
    }

    #[test]
    fn parses_the_contract_fields() {
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "Step 1 (ok): a."}
            ],
            "continue_final_message": true,
            "add_generation_prompt": false,
            "stop": ["\n\n"],
            "max_tokens": 512
        });
        let r = parse_step_request(&body).unwrap();
        assert_eq!(r.prefix, "Step 1 (ok): a.");
        assert_eq!(r.stop, ["\n\n"]);
        assert_eq!(r.max_tokens, Some(512));
        // Without continue_final_message the assistant message is history,
        // not a prefix to continue.
        let mut plain = body.clone();
        plain["continue_final_message"] = json!(false);
        assert_eq!(parse_step_request(&plain).unwrap().prefix, "");
        let single = json!({"messages": [], "stop": "\n", "max_completion_tokens": 3});
        let r = parse_step_request(&single).unwrap();
        assert_eq!((r.stop, r.max_tokens), (vec!["\n".to_string()], Some(3)));
        for bad in [
            json!({"stop": 3}),
            json!({"stop": ["a", 1]}),
            json!({"stop": [""]}),
            json!({"stop": vec!["x"; 17]}),
            json!({"continue_final_message": "yes"}),
            json!({"max_tokens": 0}),
            json!({"max_tokens": -1}),
        ] {
            assert!(parse_step_request(&bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn one_step_per_call_until_a_boxed_answer() {
        let steps = all_ok();
        let mut rng = Rng::new(1);
        let mut prefix = String::new();
        for i in 1..=6 {
            let r = generate(&steps, &req(&prefix, &["\n\n"]), &mut rng);
            assert!(
                r.text.starts_with(&format!("Step {i} (ok): ")),
                "{}",
                r.text
            );
            assert!(!r.text.contains("\n\n"));
            assert_eq!(r.finish, FinishReason::Stop);
            if i < 6 {
                assert_eq!(r.stop_reason.as_deref(), Some("\n\n"));
                assert!(!r.text.contains("boxed"));
            } else {
                assert_eq!(r.stop_reason, None);
                assert!(r.text.ends_with("\\boxed{42}."), "{}", r.text);
                assert_eq!(
                    r.text.len(),
                    "Step 6 (ok): [0000] so the final answer is \\boxed{42}.".len()
                );
            }
            // The worker joins steps with the step token, with a trailing
            // one while the particle is still going.
            prefix.push_str(&r.text);
            prefix.push_str("\n\n");
        }
        assert_eq!(read_particle(&prefix).steps_done, 6);
        // Asking past the end repeats the answer and ends the sequence.
        let again = generate(&steps, &req(&prefix, &["\n\n"]), &mut rng);
        assert_eq!(
            (again.text.as_str(), again.stop_reason),
            ("\\boxed{42}", None)
        );
    }

    #[test]
    fn a_single_slip_makes_the_answer_wrong() {
        let steps = all_ok();
        let mut rng = Rng::new(2);
        let prefix = "Step 1 (ok): a.\n\nStep 2 (slip): b.\n\nStep 3 (ok): c.\n\nStep 4 (ok): d.\n\nStep 5 (ok): e.\n\n";
        let r = generate(&steps, &req(prefix, &["\n\n"]), &mut rng);
        assert!(r.text.starts_with("Step 6 (ok): "), "{}", r.text);
        assert!(!r.text.contains("{42}"), "{}", r.text);
        let wrong: Vec<String> = (1..=4).map(|k| format!("\\boxed{{{}}}", 42 + k)).collect();
        assert!(
            wrong.iter().any(|w| r.text.contains(w.as_str())),
            "{}",
            r.text
        );
        let text_answer = Steps {
            answer: "x".into(),
            distractors: 1,
            ..all_ok()
        };
        assert_eq!(text_answer.distractor(1), "x-wrong1");
    }

    #[test]
    fn without_stop_the_whole_solution_comes_back() {
        let mut rng = Rng::new(3);
        let r = generate(&Steps::default(), &req("", &[]), &mut rng);
        let parts: Vec<&str> = r.text.split("\n\n").collect();
        assert_eq!(parts.len(), 6);
        assert_eq!(r.stop_reason, None);
        assert!(parts[5].contains("\\boxed{"));
        let p = read_particle(&r.text);
        assert_eq!(p.steps_done, 6);
        // Correct iff no step slipped.
        assert_eq!(r.text.contains("\\boxed{42}"), p.on_track);
    }

    #[test]
    fn accuracy_matches_p_correct_to_the_power_k_and_is_seeded() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..4000)
                .filter(|_| {
                    generate(&Steps::default(), &req("", &[]), &mut rng)
                        .text
                        .contains("\\boxed{42}")
                })
                .count()
        };
        assert_eq!(run(5), run(5));
        // 0.8^6 = 0.262 of 4000 = 1049; 4 sigma is about 110.
        let hits = run(5);
        assert!((940..1160).contains(&hits), "hits {hits}");
    }

    #[test]
    fn stop_strings_cut_like_vllm_and_max_tokens_caps() {
        let mut rng = Rng::new(4);
        // A stop string inside the step's text cuts there.
        let r = generate(&all_ok(), &req("", &[":"]), &mut rng);
        assert_eq!(r.text, "Step 1 (ok)");
        assert_eq!(r.stop_reason.as_deref(), Some(":"));
        let r = generate(&all_ok(), &req("", &["]"]), &mut rng);
        assert_eq!(r.text.len(), "Step 1 (ok): [0000".len());
        let capped = StepRequest {
            max_tokens: Some(2),
            ..req("", &["\n\n"])
        };
        let r = generate(&all_ok(), &capped, &mut rng);
        assert_eq!(r.text, "Step 1 (");
        assert_eq!((r.finish, r.stop_reason), (FinishReason::Length, None));
    }

    #[test]
    fn validation_bounds_every_field() {
        assert!(Steps::default().validate().is_ok());
        for bad in [
            Steps {
                count: 0,
                ..Steps::default()
            },
            Steps {
                count: 65,
                ..Steps::default()
            },
            Steps {
                p_correct: 1.5,
                ..Steps::default()
            },
            Steps {
                p_correct: f64::NAN,
                ..Steps::default()
            },
            Steps {
                answer: String::new(),
                ..Steps::default()
            },
            Steps {
                distractors: 0,
                ..Steps::default()
            },
        ] {
            assert!(bad.validate().is_err(), "accepted {bad:?}");
        }
    }
}
