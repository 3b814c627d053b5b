//! Best-of-n: distinct candidates are judged once each; the best score wins. If the judge fails
//! for every candidate, the self-consistency winner is returned instead — counted in
//! `inferscale_judge_fallbacks_total` and reported in the metadata, never a made-up score.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::vote::{self, Vote, VoteSettings, canonical_args};
use crate::config::JudgeMode;
use crate::judge::{Judge, JudgeFailure};
use crate::metrics::Metrics;
use crate::providers::{Candidate, Usage};

/// What the judging step did.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeDetail {
    /// Score of every candidate (that of its distinct answer), `None` where the judge failed.
    pub scores: Vec<Option<f64>>,
    pub distinct: usize,
    pub mode: JudgeMode,
    pub criterion: String,
    pub calls: u32,
    pub failures: u32,
    /// The judge's first failure.
    pub error: Option<JudgeFailure>,
    /// Set when the judge gave nothing usable and the vote decided instead.
    pub fallback: Option<Vote>,
}

/// The judged selection, with what judging cost.
pub struct Judged {
    pub selected: usize,
    pub detail: JudgeDetail,
    pub usage: Usage,
    pub elapsed: Duration,
}

/// Identity of a candidate for de-duplication: its trimmed text and its exact tool calls.
fn dedupe_key(c: &Candidate) -> String {
    let mut key = c.text.trim().to_owned();
    for t in &c.tool_calls {
        key.push('\u{1f}');
        key.push_str(&t.name);
        key.push('(');
        key.push_str(&canonical_args(&t.arguments, &[]));
        key.push(')');
    }
    key
}

/// Groups identical candidates: returns the index of the first of each distinct answer, and for
/// every candidate the position of its distinct answer.
pub fn distinct(candidates: &[Candidate]) -> (Vec<usize>, Vec<usize>) {
    let mut firsts = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(candidates.len());
    let mut of = Vec::with_capacity(candidates.len());
    for (i, c) in candidates.iter().enumerate() {
        let next = firsts.len();
        let d = *seen.entry(dedupe_key(c)).or_insert(next);
        if d == next {
            firsts.push(i);
        }
        of.push(d);
    }
    (firsts, of)
}

/// Index of the best score; ties go to the earliest candidate. `None` when nothing was scored.
pub fn best(scores: &[Option<f64>]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, s) in scores.iter().enumerate() {
        if let Some(s) = *s
            && best.is_none_or(|(_, b)| s > b)
        {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// Judges the distinct candidates and picks the best; when no score is usable, the vote decides.
pub async fn select(
    judge: &Judge,
    vote_settings: &VoteSettings,
    candidates: &[Candidate],
    context: &[Value],
    metrics: &Metrics,
) -> Judged {
    let (firsts, of) = distinct(candidates);
    let mut judged = Judged {
        selected: 0,
        detail: JudgeDetail {
            scores: vec![Some(1.0); candidates.len()],
            distinct: firsts.len(),
            mode: judge.mode,
            criterion: judge.criterion.clone(),
            calls: 0,
            failures: 0,
            error: None,
            fallback: None,
        },
        usage: Usage::default(),
        elapsed: Duration::ZERO,
    };
    // A single distinct answer needs no judge: it wins whatever the score.
    if firsts.len() > 1 {
        let unique: Vec<&Candidate> = firsts.iter().map(|&i| &candidates[i]).collect();
        let j = judge.judge(context, &unique, metrics).await;
        judged.usage = j.usage;
        judged.elapsed = j.elapsed;
        judged.detail.scores = of.iter().map(|&d| j.scores[d]).collect();
        judged.detail.calls = j.calls;
        judged.detail.failures = j.failures;
        judged.detail.error = j.error;
    }
    match best(&judged.detail.scores) {
        Some(i) => judged.selected = i,
        None => {
            let error = judged.detail.error.as_ref();
            // Without a recorded failure there is nothing to blame but an error.
            let reason = error.map_or("error", |e| e.kind.label());
            metrics.judge_fallbacks.with_label_values(&[reason]).inc();
            tracing::warn!(
                error = error.map_or("", |e| e.message.as_str()),
                "judge gave no usable score; using the self-consistency winner"
            );
            if let Ok(v) = vote::vote(candidates, vote_settings) {
                judged.selected = v.selected;
                judged.detail.fallback = Some(v);
            }
        }
    }
    judged
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(t: &str) -> Candidate {
        Candidate::from_message(json!({"role":"assistant","content":t}), None, None)
    }

    #[test]
    fn identical_candidates_are_judged_once() {
        let call = |args: &str| {
            Candidate::from_message(
                json!({"role":"assistant","content":null,"tool_calls":[{"id":"x","type":"function","function":{"name":"f","arguments":args}}]}),
                None,
                None,
            )
        };
        let c = [
            text("a"),
            text(" a "),
            text("b"),
            call(r#"{"x":1,"y":2}"#),
            call(r#"{"y":2,"x":1}"#),
        ];
        let (firsts, of) = distinct(&c);
        assert_eq!(firsts, vec![0, 2, 3]);
        assert_eq!(of, vec![0, 0, 1, 2, 2]);
    }

    #[test]
    fn best_prefers_highest_then_earliest_and_skips_unscored() {
        assert_eq!(best(&[Some(3.0), Some(9.0), Some(9.0)]), Some(1));
        assert_eq!(best(&[None, Some(2.0), None]), Some(1));
        assert_eq!(best(&[None, None]), None);
    }
}
