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
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::config::ProviderKind;
    use crate::judge::JudgeFailureKind;
    use crate::providers::{
        BoxFuture, ChatProvider, Completion, PreparedCall, ProviderError, UpstreamError,
    };

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

    /// A judge upstream that answers from the judge prompt it receives, without I/O.
    struct FakeJudge(fn(&str) -> Result<String, UpstreamError>);

    impl ChatProvider for FakeJudge {
        fn kind(&self) -> ProviderKind {
            ProviderKind::OpenaiCompatible
        }
        fn model(&self) -> &str {
            "judge"
        }
        fn prepare(
            &self,
            body: serde_json::Map<String, Value>,
        ) -> Result<PreparedCall, ProviderError> {
            PreparedCall::json(&body)
        }
        fn send<'a>(
            &'a self,
            call: &'a PreparedCall,
        ) -> BoxFuture<'a, Result<Completion, UpstreamError>> {
            let reply = (self.0)(&String::from_utf8_lossy(&call.body));
            Box::pin(async move {
                Ok(Completion {
                    candidates: vec![text(&reply?)],
                    usage: Usage {
                        prompt_tokens: 10,
                        completion_tokens: 1,
                    },
                    system_fingerprint: None,
                })
            })
        }
    }

    fn judge(reply: fn(&str) -> Result<String, UpstreamError>, metrics: &Metrics) -> Judge {
        let provider: crate::providers::SharedProvider = Arc::new(FakeJudge(reply));
        Judge {
            metrics: Arc::new(metrics.upstream("test", "judge", "judge")),
            provider,
            mode: JudgeMode::Pointwise,
            criterion: "overall_quality".into(),
            temperature: 0.0,
            max_tokens: 64,
            top_n: 1,
        }
    }

    /// Three say 41, one says 42: the vote picks candidate 0, a judge preferring 42 picks 1.
    fn candidates() -> Vec<Candidate> {
        vec![text("41"), text("42"), text("41"), text("41")]
    }

    async fn select_with(reply: fn(&str) -> Result<String, UpstreamError>) -> (Judged, Metrics) {
        let metrics = Metrics::new();
        let judge = judge(reply, &metrics);
        let judged = select(
            &judge,
            &VoteSettings::default(),
            &candidates(),
            &[],
            &metrics,
        )
        .await;
        (judged, metrics)
    }

    fn fallbacks(metrics: &Metrics, reason: &str) -> u64 {
        metrics.judge_fallbacks.with_label_values(&[reason]).get()
    }

    #[tokio::test]
    async fn the_best_score_wins_over_the_majority() {
        let (judged, metrics) = select_with(|prompt| {
            let score = if prompt.contains("42") { 9 } else { 3 };
            Ok(format!("{{\"reasoning\": \"-\", \"score\": {score}}}"))
        })
        .await;
        assert_eq!(judged.selected, 1);
        assert_eq!(
            judged.detail.scores,
            [Some(3.0), Some(9.0), Some(3.0), Some(3.0)]
        );
        // Two distinct answers, two judge calls; their usage is the request's too.
        assert_eq!((judged.detail.distinct, judged.detail.calls), (2, 2));
        assert_eq!(judged.usage.prompt_tokens, 20);
        assert!(judged.detail.error.is_none() && judged.detail.fallback.is_none());
        assert_eq!(
            fallbacks(&metrics, "unparseable") + fallbacks(&metrics, "error"),
            0
        );
    }

    #[tokio::test]
    async fn an_unreadable_judge_falls_back_to_the_vote_as_unparseable() {
        let (judged, metrics) = select_with(|_| Ok("They are both fine.".into())).await;
        assert_eq!(judged.selected, 0);
        let error = judged
            .detail
            .error
            .expect("the judge's failure is reported");
        assert_eq!(error.kind, JudgeFailureKind::Unparseable);
        assert!(error.message.starts_with("unparseable judge reply"));
        assert_eq!(judged.detail.fallback.map(|v| v.selected), Some(0));
        assert_eq!(
            (
                fallbacks(&metrics, "unparseable"),
                fallbacks(&metrics, "error")
            ),
            (1, 0)
        );
    }

    #[tokio::test]
    async fn a_failing_judge_falls_back_to_the_vote_as_an_error() {
        let (judged, metrics) = select_with(|_| {
            Err(UpstreamError::Status {
                status: 500,
                // A message that merely looks like a parse failure must not change the kind.
                message: "unparseable upstream state".into(),
                retry_after: None,
            })
        })
        .await;
        assert_eq!(judged.selected, 0);
        assert_eq!(
            judged.detail.error.map(|e| e.kind),
            Some(JudgeFailureKind::CallFailed)
        );
        assert_eq!(judged.detail.failures, 2);
        assert_eq!(
            (
                fallbacks(&metrics, "unparseable"),
                fallbacks(&metrics, "error")
            ),
            (0, 1)
        );
    }

    #[test]
    fn best_prefers_highest_then_earliest_and_skips_unscored() {
        assert_eq!(best(&[Some(3.0), Some(9.0), Some(9.0)]), Some(1));
        assert_eq!(best(&[None, Some(2.0), None]), Some(1));
        assert_eq!(best(&[None, None]), None);
    }
}
