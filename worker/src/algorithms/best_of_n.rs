//! Best-of-n: distinct candidates are judged once each; the best score wins. If the judge fails
//! for every candidate, the self-consistency winner is returned instead — counted in
//! `inferscale_judge_fallbacks_total` and reported in the metadata, never a made-up score.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::vote::{self, Vote, canonical_args};
use super::{Detail, Outcome, insert_vote};
use crate::metrics::Metrics;
use crate::providers::Candidate;
use crate::runtime::Runtime;

/// What the judging step did, for the metadata.
pub struct JudgeDetail {
    /// Score of every candidate (that of its distinct answer), `None` where the judge failed.
    pub scores: Vec<Option<f64>>,
    pub distinct: usize,
    pub mode: &'static str,
    pub criterion: String,
    pub calls: u32,
    pub failures: u32,
    pub error: Option<String>,
    /// Set when the judge gave nothing usable and the vote decided instead.
    pub fallback: Option<Vote>,
}

impl JudgeDetail {
    pub(crate) fn insert_metadata(&self, m: &mut Map<String, Value>) {
        m.insert("scores".into(), json!(self.scores));
        let mut judge = Map::new();
        judge.insert("mode".into(), json!(self.mode));
        judge.insert("criterion".into(), json!(self.criterion));
        judge.insert("distinct_candidates".into(), json!(self.distinct));
        judge.insert("calls".into(), json!(self.calls));
        judge.insert("failures".into(), json!(self.failures));
        judge.insert("error".into(), json!(self.error));
        judge.insert(
            "fallback".into(),
            json!(self.fallback.as_ref().map(|_| "self-consistency")),
        );
        m.insert("judge".into(), Value::Object(judge));
        if let Some(v) = &self.fallback {
            insert_vote(m, v);
        }
    }
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

pub(super) async fn select(
    rt: &Runtime,
    outcome: &mut Outcome,
    context: &[Value],
    metrics: &Metrics,
) {
    let Some(judge) = &rt.judge else {
        return;
    };
    let (firsts, of) = distinct(&outcome.candidates);
    let mut detail = JudgeDetail {
        scores: vec![Some(1.0); outcome.candidates.len()],
        distinct: firsts.len(),
        mode: judge.mode_str(),
        criterion: judge.criterion.clone(),
        calls: 0,
        failures: 0,
        error: None,
        fallback: None,
    };
    if firsts.len() > 1 {
        let unique: Vec<&Candidate> = firsts.iter().map(|&i| &outcome.candidates[i]).collect();
        let j = judge.judge(context, &unique, metrics).await;
        outcome.usage.add(j.usage);
        outcome.upstream_time += j.elapsed;
        detail.scores = of.iter().map(|&d| j.scores[d]).collect();
        detail.calls = j.calls;
        detail.failures = j.failures;
        detail.error = j.error;
    }
    match best(&detail.scores) {
        Some(i) => outcome.selected = i,
        None => {
            let reason = if detail
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("unparseable"))
            {
                "unparseable"
            } else {
                "error"
            };
            metrics.judge_fallbacks.with_label_values(&[reason]).inc();
            tracing::warn!(
                error = detail.error.as_deref().unwrap_or(""),
                "judge gave no usable score; using the self-consistency winner"
            );
            if let Ok(v) = vote::vote(&outcome.candidates, &rt.vote) {
                outcome.selected = v.selected;
                detail.fallback = Some(v);
            }
        }
    }
    outcome.detail = Detail::Judge(detail);
}

#[cfg(test)]
mod tests {
    use super::*;

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
