//! Protocol-independent logic: normalised conversations, answer cycling,
//! tool-call resolution, token counting and fault selection.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::rng::{Rng, lognormal_ms};
use crate::scenario::{Answer, AppliesTo, FinishReason, Latency, Scenario};

/// One message reduced to its role and text (all text parts concatenated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub role: String,
    pub text: String,
}

impl Msg {
    pub fn new(role: &str, text: impl Into<String>) -> Self {
        Msg {
            role: role.to_string(),
            text: text.into(),
        }
    }
}

/// What the simulator needs to know about a request, whatever its API.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    pub messages: Vec<Msg>,
    /// Name of the first tool the request declares, if any.
    pub first_tool: Option<String>,
    pub has_tools: bool,
    /// The last message carries a tool result: a real model now answers in
    /// text, so `answers` is used even when tools are declared.
    pub after_tool_result: bool,
    /// The request's `user` field: with `answer_draw: hashed`, requests with the same value draw
    /// from their own reproducible answer sequence.
    pub answer_stream: Option<String>,
}

/// Tokens for a text of `chars` characters: ceil(chars / 4), at least 1.
pub fn tokens_for_chars(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

pub fn prompt_tokens(messages: &[Msg]) -> u64 {
    tokens_for_chars(messages.iter().map(|m| m.text.chars().count()).sum())
}

/// Pick `n` answers from the scenario, advancing the matching shared cursor.
pub fn select_answers(
    scenario: &Scenario,
    conv: &Conversation,
    answer_cursor: &AtomicU64,
    tool_cursor: &AtomicU64,
    n: usize,
) -> Vec<Answer> {
    let (list, cursor) = match &scenario.tool_answers {
        Some(tools) if conv.has_tools && !conv.after_tool_result => (tools, tool_cursor),
        _ => (&scenario.answers, answer_cursor),
    };
    if list.is_empty() || n == 0 {
        return Vec::new();
    }
    let start = cursor.fetch_add(n as u64, Ordering::SeqCst);
    (0..n as u64)
        .map(|i| list[((start + i) % list.len() as u64) as usize].clone())
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedToolCall {
    pub id: String,
    pub name: String,
    /// JSON text as sent on the wire (OpenAI `arguments` string).
    pub arguments: String,
}

/// `n` answers for the requests of one answer stream (`answer_draw: hashed`): the `k`-th answer
/// of a stream is a pseudo-random pick (independent draws with the list's multiplicities) that
/// depends only on the simulator's seed, the stream's name and `k`. Replaying a stream after a
/// reset therefore yields the same answers, whatever else the simulator served in between.
pub fn select_hashed(
    scenario: &Scenario,
    conv: &Conversation,
    seed: u64,
    stream: &str,
    first_draw: u64,
    n: usize,
) -> Vec<Answer> {
    let list = match &scenario.tool_answers {
        Some(tools) if conv.has_tools && !conv.after_tool_result => tools,
        _ => &scenario.answers,
    };
    if list.is_empty() {
        return Vec::new();
    }
    let stream_hash = fnv1a(stream.as_bytes());
    (0..n as u64)
        .map(|i| {
            let mut rng = Rng::new(seed ^ stream_hash ^ (first_draw + i).wrapping_mul(0x9E37_79B9));
            list[(rng.next_u64() % list.len() as u64) as usize].clone()
        })
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An answer made concrete for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `None` only when the answer is tool calls without text.
    pub content: Option<String>,
    pub tool_calls: Vec<ResolvedToolCall>,
    pub finish: FinishReason,
}

impl Resolved {
    pub fn text(content: impl Into<String>) -> Self {
        Resolved {
            content: Some(content.into()),
            tool_calls: Vec::new(),
            finish: FinishReason::Stop,
        }
    }

    pub fn completion_tokens(&self) -> u64 {
        let chars = self.content.as_deref().map_or(0, |c| c.chars().count())
            + self
                .tool_calls
                .iter()
                .map(|t| t.name.chars().count() + t.arguments.chars().count())
                .sum::<usize>();
        tokens_for_chars(chars)
    }
}

/// Fill in tool names (from the request when omitted), serialise arguments
/// and give tool calls ids `call_<id_base>_<i>`.
pub fn resolve(answer: &Answer, first_tool: Option<&str>, id_base: &str) -> Resolved {
    let tool_calls: Vec<ResolvedToolCall> = answer
        .tool_calls
        .iter()
        .enumerate()
        .map(|(i, tc)| ResolvedToolCall {
            id: format!("call_{id_base}_{i}"),
            name: tc
                .name
                .clone()
                .or_else(|| first_tool.map(str::to_string))
                .unwrap_or_else(|| "tool".to_string()),
            arguments: match &tc.arguments {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        })
        .collect();
    let content = match &answer.content {
        Some(c) => Some(c.clone()),
        None if tool_calls.is_empty() => Some(String::new()),
        None => None,
    };
    Resolved {
        content,
        tool_calls,
        finish: answer.finish_reason(),
    }
}

/// Latency to inject for one request.
pub fn sample_latency_ms(latency: &Latency, rng: &mut Rng) -> u64 {
    match (latency.fixed_ms, latency.p50_ms, latency.p99_ms) {
        (Some(ms), _, _) => ms,
        (None, Some(p50), Some(p99)) => lognormal_ms(rng, p50, p99).round() as u64,
        _ => 0,
    }
}

/// 1-based position of the current request among all requests, among
/// non-judge requests, and among judge requests (0 = not in that class).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seqs {
    pub all: u64,
    pub answers: u64,
    pub judge: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    Status {
        status: u16,
        body: Option<String>,
        retry_after_s: Option<u64>,
    },
    Malformed,
    Hang,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultOutcome {
    /// Sum of the delays of all fired delay faults.
    pub delay_ms: u64,
    /// First fired terminal fault, if any.
    pub action: Option<FaultAction>,
    /// Number of faults that fired.
    pub fired: u64,
}

/// Evaluate faults in order. Delays accumulate; the first terminal fault
/// (status / malformed / hang) that fires ends the evaluation. Rate draws
/// consume the seeded RNG only for faults that apply to the request.
pub fn evaluate_faults(
    faults: &[crate::scenario::Fault],
    seqs: Seqs,
    is_judge: bool,
    rng: &mut Rng,
) -> FaultOutcome {
    let mut out = FaultOutcome::default();
    for f in faults {
        let seq = match f.applies_to {
            AppliesTo::All => seqs.all,
            AppliesTo::Answers if !is_judge => seqs.answers,
            AppliesTo::Judge if is_judge => seqs.judge,
            _ => continue,
        };
        let fires = match (f.every, f.rate) {
            (Some(k), _) => k > 0 && seq > 0 && seq % k == 0,
            (None, Some(rate)) => rng.next_f64() < rate,
            (None, None) => true,
        };
        if !fires {
            continue;
        }
        out.fired += 1;
        out.delay_ms += f.delay_ms.unwrap_or(0);
        let action = if let Some(status) = f.status {
            Some(FaultAction::Status {
                status,
                body: f.body.clone(),
                retry_after_s: f.retry_after_s,
            })
        } else if f.malformed {
            Some(FaultAction::Malformed)
        } else if f.hang {
            Some(FaultAction::Hang)
        } else {
            None
        };
        if action.is_some() {
            out.action = action;
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Fault, ToolCallSpec};
    use serde_json::json;

    fn conv(has_tools: bool, after_tool_result: bool) -> Conversation {
        Conversation {
            messages: vec![Msg::new("user", "What is 847*293+156?")],
            first_tool: has_tools.then(|| "calculator".to_string()),
            has_tools,
            after_tool_result,
            answer_stream: None,
        }
    }

    #[test]
    fn token_counts() {
        assert_eq!(tokens_for_chars(0), 1);
        assert_eq!(tokens_for_chars(4), 1);
        assert_eq!(tokens_for_chars(5), 2);
        assert_eq!(
            prompt_tokens(&[Msg::new("system", "abcd"), Msg::new("user", "é")]),
            2
        );
    }

    #[test]
    fn answers_cycle_in_arrival_order() {
        let s = Scenario::default();
        let (a, t) = (AtomicU64::new(0), AtomicU64::new(0));
        let texts: Vec<_> = (0..4)
            .map(|_| {
                select_answers(&s, &conv(false, false), &a, &t, 1)[0]
                    .content
                    .clone()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            texts,
            [
                "The answer is 248327.",
                "The answer is 248327.",
                "I believe it is 248,317.",
                "The answer is 248327."
            ]
        );
        // n > 1 takes consecutive answers.
        let three = select_answers(&s, &conv(false, false), &a, &t, 3);
        assert_eq!(three[2].content.as_deref(), Some("The answer is 248327."));
        assert_eq!(a.load(Ordering::SeqCst), 7);
        assert_eq!(t.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn hashed_streams_replay_and_follow_multiplicities() {
        let s =
            Scenario::parse("answers: [{content: A}, {content: A}, {content: A}, {content: B}]")
                .unwrap();
        let c = conv(false, false);
        let texts = |v: Vec<Answer>| {
            v.into_iter()
                .map(|a| a.content.unwrap())
                .collect::<Vec<_>>()
        };
        // Drawing 16 at once equals drawing 4 then 12 (the position, not the batch, decides).
        let whole = texts(select_hashed(&s, &c, 7, "q1", 0, 16));
        let mut split = texts(select_hashed(&s, &c, 7, "q1", 0, 4));
        split.extend(texts(select_hashed(&s, &c, 7, "q1", 4, 12)));
        assert_eq!(whole, split);
        // Another stream or seed gives another sequence.
        assert_ne!(whole, texts(select_hashed(&s, &c, 7, "q2", 0, 16)));
        assert_ne!(whole, texts(select_hashed(&s, &c, 8, "q1", 0, 16)));
        // Independent draws follow the list's multiplicities (3/4 "A").
        let many = texts(select_hashed(&s, &c, 7, "q1", 0, 4000));
        let share = many.iter().filter(|t| *t == "A").count() as f64 / 4000.0;
        assert!((0.72..0.78).contains(&share), "share of A {share}");
    }

    #[test]
    fn tool_requests_use_tool_answers_with_request_tool_name() {
        let s = Scenario::default();
        let (a, t) = (AtomicU64::new(0), AtomicU64::new(0));
        let c = conv(true, false);
        let args: Vec<_> = (0..3)
            .map(|i| {
                let ans = &select_answers(&s, &c, &a, &t, 1)[0];
                let r = resolve(ans, c.first_tool.as_deref(), &format!("r{i}"));
                assert_eq!(r.finish, FinishReason::ToolCalls);
                assert_eq!(r.content, None);
                assert_eq!(r.tool_calls[0].name, "calculator");
                assert_eq!(r.tool_calls[0].id, format!("call_r{i}_0"));
                r.tool_calls[0].arguments.clone()
            })
            .collect();
        assert_eq!(
            args,
            [
                r#"{"expression":"847 * 293 + 156"}"#,
                r#"{"expression":"847 * 293 + 156"}"#,
                r#"{"expression":"847*293+156"}"#
            ]
        );
        // After a tool result the model answers in text.
        let after = select_answers(&s, &conv(true, true), &a, &t, 1);
        assert_eq!(after[0].content.as_deref(), Some("The answer is 248327."));
    }

    #[test]
    fn without_tool_answers_tool_requests_use_answers() {
        let s = Scenario::parse("answers: [{content: only}]").unwrap();
        let (a, t) = (AtomicU64::new(0), AtomicU64::new(0));
        let got = select_answers(&s, &conv(true, false), &a, &t, 2);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|x| x.content.as_deref() == Some("only")));
    }

    #[test]
    fn resolve_string_arguments_and_explicit_names() {
        let ans = Answer {
            content: Some("calling".into()),
            tool_calls: vec![
                ToolCallSpec {
                    name: Some("search".into()),
                    arguments: json!("{broken"),
                },
                ToolCallSpec {
                    name: None,
                    arguments: json!({}),
                },
            ],
            finish_reason: None,
        };
        let r = resolve(&ans, None, "x");
        assert_eq!(r.content.as_deref(), Some("calling"));
        assert_eq!(r.tool_calls[0].name, "search");
        assert_eq!(r.tool_calls[0].arguments, "{broken");
        assert_eq!(r.tool_calls[1].name, "tool");
        assert_eq!(r.tool_calls[1].arguments, "{}");
        // "calling" + "search{broken" + "tool{}" = 7 + 13 + 6 = 26 chars.
        assert_eq!(r.completion_tokens(), 7);
        let empty = resolve(&Answer::default(), None, "y");
        assert_eq!(empty.content.as_deref(), Some(""));
        assert_eq!(empty.finish, FinishReason::Stop);
    }

    fn faults(yaml: &str) -> Vec<Fault> {
        Scenario::parse(yaml).unwrap().faults
    }

    fn seq(all: u64) -> Seqs {
        Seqs {
            all,
            answers: all,
            judge: 0,
        }
    }

    #[test]
    fn every_k_is_deterministic() {
        let f = faults("faults: [{every: 4, status: 429, retry_after_s: 1}]");
        let mut rng = Rng::new(0);
        let fired: Vec<u64> = (1..=12)
            .filter(|&i| {
                evaluate_faults(&f, seq(i), false, &mut rng)
                    .action
                    .is_some()
            })
            .collect();
        assert_eq!(fired, [4, 8, 12]);
        let out = evaluate_faults(&f, seq(4), false, &mut rng);
        assert_eq!(
            out.action,
            Some(FaultAction::Status {
                status: 429,
                body: None,
                retry_after_s: Some(1)
            })
        );
    }

    #[test]
    fn rate_is_seeded_and_roughly_right() {
        let f = faults("faults: [{rate: 0.3, status: 500}]");
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (1..=2000)
                .map(|i| evaluate_faults(&f, seq(i), false, &mut rng).fired)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        let hits: u64 = run(9).iter().sum();
        assert!((500..700).contains(&hits), "hits {hits}");
        let never = faults("faults: [{rate: 0.0, status: 500}]");
        let always = faults("faults: [{rate: 1.0, hang: true}]");
        let mut rng = Rng::new(1);
        for i in 1..100 {
            assert_eq!(evaluate_faults(&never, seq(i), false, &mut rng).fired, 0);
            assert_eq!(
                evaluate_faults(&always, seq(i), false, &mut rng).action,
                Some(FaultAction::Hang)
            );
        }
    }

    #[test]
    fn delays_accumulate_and_first_terminal_wins() {
        let f = faults(
            "faults: [{delay_ms: 10}, {every: 2, delay_ms: 5}, {every: 3, malformed: true}, {status: 500}]",
        );
        let mut rng = Rng::new(0);
        let o = evaluate_faults(&f, seq(6), false, &mut rng);
        assert_eq!((o.delay_ms, o.fired), (15, 3));
        assert_eq!(o.action, Some(FaultAction::Malformed));
        let o = evaluate_faults(&f, seq(1), false, &mut rng);
        assert_eq!((o.delay_ms, o.fired), (10, 2));
        assert!(matches!(
            o.action,
            Some(FaultAction::Status { status: 500, .. })
        ));
    }

    #[test]
    fn applies_to_filters_and_counts_per_class() {
        let f = faults("faults: [{every: 2, applies_to: judge, status: 500}]");
        let mut rng = Rng::new(0);
        let candidate = Seqs {
            all: 2,
            answers: 2,
            judge: 0,
        };
        assert_eq!(evaluate_faults(&f, candidate, false, &mut rng).fired, 0);
        let judge1 = Seqs {
            all: 3,
            answers: 0,
            judge: 1,
        };
        let judge2 = Seqs {
            all: 5,
            answers: 0,
            judge: 2,
        };
        assert_eq!(evaluate_faults(&f, judge1, true, &mut rng).fired, 0);
        assert_eq!(evaluate_faults(&f, judge2, true, &mut rng).fired, 1);
    }

    #[test]
    fn latency_sampling() {
        let mut rng = Rng::new(0);
        assert_eq!(sample_latency_ms(&Latency::default(), &mut rng), 0);
        let fixed = Latency {
            fixed_ms: Some(25),
            ..Latency::default()
        };
        assert_eq!(sample_latency_ms(&fixed, &mut rng), 25);
        let ln = Latency {
            fixed_ms: None,
            p50_ms: Some(20.0),
            p99_ms: Some(80.0),
        };
        let x = sample_latency_ms(&ln, &mut rng);
        assert!(x <= 800);
    }
}
