//! The LLM judge of best-of-n: pointwise (one call per distinct candidate, in parallel) or
//! groupwise (one call ranking all distinct candidates).

pub mod parse;
pub mod prompts;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::config::JudgeMode;
use crate::fanout::run_calls;
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::providers::{Candidate, SharedProvider, Usage};

/// A configured judge.
pub struct Judge {
    pub provider: SharedProvider,
    pub metrics: Arc<UpstreamMetrics>,
    pub mode: JudgeMode,
    /// The configured criterion (a built-in name or the free text).
    pub criterion: String,
    pub temperature: f64,
    pub max_tokens: u32,
    pub top_n: usize,
}

/// What the judge said about the distinct candidates.
#[derive(Debug, Clone, Default)]
pub struct Judgement {
    /// One entry per distinct candidate; `None` when no valid score could be had for it.
    pub scores: Vec<Option<f64>>,
    pub calls: u32,
    /// Calls that failed or whose reply could not be parsed.
    pub failures: u32,
    pub usage: Usage,
    pub elapsed: Duration,
    /// The first failure, for the response metadata and logs.
    pub error: Option<JudgeFailure>,
}

/// Why the judge could not score a candidate; the kind decides the fallback's metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeFailureKind {
    /// The judge answered, but not with a score or ranking that could be read.
    Unparseable,
    /// The judge call could not be prepared, or failed upstream, or gave no result.
    CallFailed,
}

impl JudgeFailureKind {
    /// The bounded label of `inferscale_judge_calls_total` and `inferscale_judge_fallbacks_total`.
    pub fn label(self) -> &'static str {
        match self {
            JudgeFailureKind::Unparseable => "unparseable",
            JudgeFailureKind::CallFailed => "error",
        }
    }
}

/// A judge failure: its kind, and a message for the response metadata and the logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JudgeFailure {
    pub kind: JudgeFailureKind,
    pub message: String,
}

impl JudgeFailure {
    fn unparseable(reply: &str) -> Self {
        Self {
            kind: JudgeFailureKind::Unparseable,
            message: format!("unparseable judge reply: {}", preview(reply)),
        }
    }

    fn call_failed(message: String) -> Self {
        Self {
            kind: JudgeFailureKind::CallFailed,
            message,
        }
    }
}

/// The name of a judge mode, as the metadata and the metrics labels spell it.
pub fn mode_name(mode: JudgeMode) -> &'static str {
    match mode {
        JudgeMode::Pointwise => "pointwise",
        JudgeMode::Groupwise => "groupwise",
    }
}

impl Judge {
    pub fn mode_str(&self) -> &'static str {
        mode_name(self.mode)
    }

    /// Scores the distinct candidates of a conversation.
    pub async fn judge(
        &self,
        context: &[Value],
        candidates: &[&Candidate],
        metrics: &Metrics,
    ) -> Judgement {
        let start = Instant::now();
        let mut j = match self.mode {
            JudgeMode::Pointwise => self.pointwise(context, candidates, metrics).await,
            JudgeMode::Groupwise => self.groupwise(context, candidates, metrics).await,
        };
        j.elapsed = start.elapsed();
        metrics
            .judge_duration
            .with_label_values(&[self.mode_str()])
            .observe(j.elapsed.as_secs_f64());
        metrics
            .tokens
            .with_label_values(&["prompt", "judge"])
            .inc_by(j.usage.prompt_tokens);
        metrics
            .tokens
            .with_label_values(&["completion", "judge"])
            .inc_by(j.usage.completion_tokens);
        j
    }

    async fn pointwise(
        &self,
        context: &[Value],
        candidates: &[&Candidate],
        metrics: &Metrics,
    ) -> Judgement {
        let criterion = prompts::criterion_text(&self.criterion);
        let system = prompts::pointwise_system(criterion);
        let mut calls = Vec::with_capacity(candidates.len());
        for c in candidates {
            match self
                .provider
                .prepare(self.body(&system, prompts::pointwise_user(context, c)))
            {
                Ok(call) => calls.push(Arc::new(call)),
                Err(e) => return failed(candidates.len(), e.to_string()),
            }
        }
        let results = run_calls(&self.provider, &calls, &self.metrics).await;
        let mut j = Judgement {
            calls: results.len() as u32,
            ..Default::default()
        };
        for r in results {
            let score = match r.result {
                Ok(completion) => {
                    j.usage.add(completion.usage);
                    let reply = completion
                        .candidates
                        .first()
                        .map(|c| c.text.as_str())
                        .unwrap_or("");
                    let score = parse::parse_score(reply);
                    if score.is_none() {
                        self.note_failure(&mut j, JudgeFailure::unparseable(reply), metrics);
                    } else {
                        metrics
                            .judge_calls
                            .with_label_values(&[self.mode_str(), "ok"])
                            .inc();
                    }
                    score
                }
                Err(e) => {
                    let failure = JudgeFailure::call_failed(format!("judge call failed: {e}"));
                    self.note_failure(&mut j, failure, metrics);
                    None
                }
            };
            j.scores.push(score);
        }
        j
    }

    async fn groupwise(
        &self,
        context: &[Value],
        candidates: &[&Candidate],
        metrics: &Metrics,
    ) -> Judgement {
        let criterion = prompts::criterion_text(&self.criterion);
        let top_n = self.top_n.clamp(1, candidates.len());
        let system = prompts::groupwise_system(criterion, candidates.len(), top_n);
        let call = match self
            .provider
            .prepare(self.body(&system, prompts::groupwise_user(context, candidates)))
        {
            Ok(call) => Arc::new(call),
            Err(e) => return failed(candidates.len(), e.to_string()),
        };
        let mut results = run_calls(&self.provider, &[call], &self.metrics).await;
        let mut j = Judgement {
            calls: 1,
            scores: vec![None; candidates.len()],
            ..Default::default()
        };
        match results.pop().map(|r| r.result) {
            Some(Ok(completion)) => {
                j.usage.add(completion.usage);
                let reply = completion
                    .candidates
                    .first()
                    .map(|c| c.text.as_str())
                    .unwrap_or("");
                match parse::parse_selection(reply, candidates.len()) {
                    Some(selected) => {
                        metrics
                            .judge_calls
                            .with_label_values(&[self.mode_str(), "ok"])
                            .inc();
                        // Ranked scores: the first selected gets 1.0, later ones less, the rest 0.
                        j.scores = vec![Some(0.0); candidates.len()];
                        let k = selected.len() as f64;
                        for (rank, idx) in selected.into_iter().enumerate() {
                            j.scores[idx] = Some(1.0 - rank as f64 / k);
                        }
                    }
                    None => self.note_failure(&mut j, JudgeFailure::unparseable(reply), metrics),
                }
            }
            Some(Err(e)) => self.note_failure(
                &mut j,
                JudgeFailure::call_failed(format!("judge call failed: {e}")),
                metrics,
            ),
            None => self.note_failure(
                &mut j,
                JudgeFailure::call_failed("judge call produced no result".into()),
                metrics,
            ),
        }
        j
    }

    fn body(&self, system: &str, user: String) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert(
            "messages".into(),
            json!([{"role": "system", "content": system}, {"role": "user", "content": user}]),
        );
        body.insert("temperature".into(), json!(self.temperature));
        body.insert("max_tokens".into(), json!(self.max_tokens));
        body
    }

    fn note_failure(&self, j: &mut Judgement, failure: JudgeFailure, metrics: &Metrics) {
        metrics
            .judge_calls
            .with_label_values(&[self.mode_str(), failure.kind.label()])
            .inc();
        tracing::warn!(mode = self.mode_str(), "{}", failure.message);
        j.failures += 1;
        j.error.get_or_insert(failure);
    }
}

/// No judge call could be prepared: nothing was sent.
fn failed(n: usize, error: String) -> Judgement {
    Judgement {
        scores: vec![None; n],
        failures: 1,
        error: Some(JudgeFailure::call_failed(error)),
        ..Default::default()
    }
}

/// The start of a reply, for logs and metadata.
fn preview(reply: &str) -> String {
    let mut s: String = reply.chars().take(100).collect();
    if reply.chars().count() > 100 {
        s.push_str("...");
    }
    format!("{s:?}")
}
