//! Scenario: what the simulated provider answers, how slowly, and which
//! faults it injects. Loaded from YAML/JSON (`--scenario`) or replaced at run
//! time with `PUT /_mock/scenario`. Every field is optional; missing fields
//! take the defaults of the demo scenario (see [`Scenario::default`]).

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value, json};

use crate::pooling::Prm;
use crate::stepwise::Steps;

/// Effective scenario. Deserialised through [`ScenarioFile`] so that the
/// defaulting rules (see `tool_answers`) and validation always apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ScenarioFile")]
pub struct Scenario {
    pub latency: Latency,
    pub answers: Vec<Answer>,
    /// Used instead of `answers` for requests that declare tools (unless the
    /// last message is a tool result). `None` means "use `answers`".
    pub tool_answers: Option<Vec<Answer>>,
    pub faults: Vec<Fault>,
    pub judge: Judge,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsCredentials>,
    pub stream: StreamConfig,
    pub models: Vec<String>,
    /// Step-wise reasoning mode (stepwise.rs); `None`: scripted answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Steps>,
    /// The process reward model behind `/pooling` (pooling.rs); `None`: its defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prm: Option<Prm>,
    pub answer_draw: AnswerDraw,
}

/// How a request's answers are chosen from `answers` / `tool_answers`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerDraw {
    /// One shared cursor walks the list in arrival order (the default).
    #[default]
    Cycle,
    /// Requests carrying a `user` field draw independently, with the list's multiplicities, from a
    /// sequence of their own that depends only on `--seed`, the `user` value and the draw's
    /// position in that sequence (reset by `POST /_mock/reset`). A benchmark can so replay the
    /// same question with a larger budget. Requests without `user` use the cycle.
    Hashed,
}

/// On-disk / wire form: everything optional, unknown fields rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    #[serde(default)]
    latency: Option<Latency>,
    #[serde(default)]
    answers: Option<Vec<Answer>>,
    #[serde(default)]
    tool_answers: Option<Vec<Answer>>,
    #[serde(default)]
    faults: Option<Vec<Fault>>,
    #[serde(default)]
    judge: Option<Judge>,
    #[serde(default)]
    aws: Option<AwsCredentials>,
    #[serde(default)]
    stream: Option<StreamConfig>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    steps: Option<Steps>,
    #[serde(default)]
    prm: Option<Prm>,
    #[serde(default)]
    answer_draw: AnswerDraw,
}

impl TryFrom<ScenarioFile> for Scenario {
    type Error = String;

    fn try_from(f: ScenarioFile) -> Result<Self, String> {
        let d = Scenario::default();
        // A file that sets its own `answers` but no `tool_answers` means
        // "answer tool requests from `answers` too"; only a file that says
        // nothing about answers inherits the default tool-call answers.
        let tool_answers = match (f.tool_answers, f.answers.is_some()) {
            (Some(t), _) => Some(t),
            (None, true) => None,
            (None, false) => d.tool_answers,
        };
        let s = Scenario {
            latency: f.latency.unwrap_or(d.latency),
            answers: f.answers.unwrap_or(d.answers),
            tool_answers,
            faults: f.faults.unwrap_or(d.faults),
            judge: f.judge.unwrap_or(d.judge),
            aws: f.aws,
            stream: f.stream.unwrap_or(d.stream),
            models: f.models.unwrap_or(d.models),
            steps: f.steps,
            prm: f.prm,
            answer_draw: f.answer_draw,
        };
        s.validate()?;
        Ok(s)
    }
}

impl Scenario {
    /// Parse YAML or JSON (JSON is tried first when the text looks like it).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Scenario::default());
        }
        if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| format!("invalid scenario JSON: {e}"))
        } else {
            serde_yaml::from_str(text).map_err(|e| format!("invalid scenario YAML: {e}"))
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.latency.validate()?;
        if self.answers.is_empty() {
            return Err("`answers` must not be empty".into());
        }
        if self.tool_answers.as_ref().is_some_and(Vec::is_empty) {
            return Err("`tool_answers` must not be empty when given".into());
        }
        for (i, a) in self.answers.iter().enumerate() {
            a.validate().map_err(|e| format!("answers[{i}]: {e}"))?;
        }
        for (i, a) in self.tool_answers.iter().flatten().enumerate() {
            a.validate()
                .map_err(|e| format!("tool_answers[{i}]: {e}"))?;
        }
        for (i, f) in self.faults.iter().enumerate() {
            f.validate().map_err(|e| format!("faults[{i}]: {e}"))?;
        }
        if self.stream.chunk_chars == 0 {
            return Err("`stream.chunk_chars` must be at least 1".into());
        }
        if let Some(aws) = &self.aws
            && (aws.access_key_id.is_empty() || aws.secret_access_key.is_empty())
        {
            return Err("`aws.access_key_id` and `aws.secret_access_key` must be non-empty".into());
        }
        if let Some(steps) = &self.steps {
            steps.validate()?;
        }
        if let Some(prm) = &self.prm {
            prm.validate()?;
        }
        Ok(())
    }
}

impl Default for Scenario {
    fn default() -> Self {
        let text = |s: &str| Answer {
            content: Some(s.to_string()),
            ..Answer::default()
        };
        // Name omitted: the first tool declared in the request is called.
        let calc = |expr: &str| Answer {
            tool_calls: vec![ToolCallSpec {
                name: None,
                arguments: json!({ "expression": expr }),
            }],
            ..Answer::default()
        };
        Scenario {
            latency: Latency::default(),
            answers: vec![
                text("The answer is 248327."),
                text("The answer is 248327."),
                text("I believe it is 248,317."),
            ],
            tool_answers: Some(vec![
                calc("847 * 293 + 156"),
                calc("847 * 293 + 156"),
                calc("847*293+156"),
            ]),
            faults: Vec::new(),
            judge: Judge::default(),
            aws: None,
            stream: StreamConfig::default(),
            models: vec!["mock-model".to_string()],
            steps: None,
            prm: None,
            answer_draw: AnswerDraw::Cycle,
        }
    }
}

/// Injected latency for every LLM request: fixed, or lognormal given p50/p99.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

impl Latency {
    fn validate(&self) -> Result<(), String> {
        match (self.fixed_ms, self.p50_ms, self.p99_ms) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                Err("latency: use either `fixed_ms` or `p50_ms`/`p99_ms`, not both".into())
            }
            (None, Some(p50), Some(p99)) if !(p50 >= 0.0 && p99 >= p50) => {
                Err("latency: need 0 <= p50_ms <= p99_ms".into())
            }
            (None, Some(_), None) | (None, None, Some(_)) => {
                Err("latency: `p50_ms` and `p99_ms` go together".into())
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    ToolCalls,
    Length,
}

impl FinishReason {
    pub fn as_openai(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Length => "length",
        }
    }

    pub fn as_converse(self) -> &'static str {
        match self {
            FinishReason::Stop => "end_turn",
            FinishReason::ToolCalls => "tool_use",
            FinishReason::Length => "max_tokens",
        }
    }
}

/// One scripted model answer: text, tool calls, or both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallSpec>,
    /// Defaults to `tool_calls` when there are tool calls, else `stop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
}

impl Answer {
    fn validate(&self) -> Result<(), String> {
        for tc in &self.tool_calls {
            match &tc.arguments {
                Value::Object(_) | Value::String(_) => {}
                _ => return Err("tool call `arguments` must be an object or a string".into()),
            }
        }
        Ok(())
    }

    pub fn finish_reason(&self) -> FinishReason {
        self.finish_reason.unwrap_or(if self.tool_calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCallSpec {
    /// Omitted: the name of the first tool declared in the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// JSON object, or a string sent verbatim (may be invalid JSON on purpose).
    #[serde(default = "empty_object")]
    pub arguments: Value,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppliesTo {
    #[default]
    All,
    /// Only non-judge (candidate) requests.
    Answers,
    /// Only requests recognised as judge calls.
    Judge,
}

/// A fault fires on a request when its trigger matches: `every: k` on every
/// k-th request (counted among the requests it `applies_to`), `rate: p` with
/// seeded probability p, neither: always.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    #[serde(default)]
    pub applies_to: AppliesTo,
    /// Extra delay before answering (not terminal: later faults still apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Reply with this HTTP status (terminal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Body for `status` (default: a provider-shaped JSON error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `retry-after` header for `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    /// 200 with a body that is not JSON (terminal).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub malformed: bool,
    /// Never answer; only ends when the client goes away (terminal).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hang: bool,
}

impl Fault {
    fn validate(&self) -> Result<(), String> {
        if let Some(r) = self.rate
            && !(0.0..=1.0).contains(&r)
        {
            return Err("`rate` must be within 0..1".into());
        }
        if self.every == Some(0) {
            return Err("`every` must be at least 1".into());
        }
        if self.rate.is_some() && self.every.is_some() {
            return Err("use either `rate` or `every`, not both".into());
        }
        let terminal = usize::from(self.status.is_some())
            + usize::from(self.malformed)
            + usize::from(self.hang);
        if terminal > 1 {
            return Err("only one of `status`, `malformed`, `hang` per fault".into());
        }
        if terminal == 0 && self.delay_ms.is_none() {
            return Err("a fault needs `status`, `malformed`, `hang` or `delay_ms`".into());
        }
        if let Some(s) = self.status
            && !(100..=599).contains(&s)
        {
            return Err(format!("invalid HTTP status {s}"));
        }
        if self.status.is_none() && (self.body.is_some() || self.retry_after_s.is_some()) {
            return Err("`body` and `retry_after_s` need `status`".into());
        }
        Ok(())
    }
}

/// How judge calls are recognised and answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Judge {
    /// A request is a judge call when any message contains this text
    /// (case-insensitive). `null` or empty disables judge handling.
    pub marker: Option<String>,
    pub pointwise: Vec<PointwiseRule>,
    pub default_score: Number,
    pub groupwise_pick_contains: Option<String>,
    /// When set, every judge call gets exactly this text.
    pub raw_reply: Option<String>,
}

impl Default for Judge {
    fn default() -> Self {
        Judge {
            marker: Some("expert evaluator".into()),
            pointwise: vec![PointwiseRule {
                contains: "248327".into(),
                score: Number::from(9),
                reasoning: None,
            }],
            default_score: Number::from(3),
            groupwise_pick_contains: Some("248327".into()),
            raw_reply: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointwiseRule {
    pub contains: String,
    pub score: Number,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

/// Shape of SSE streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Characters per content / argument delta.
    pub chunk_chars: usize,
    /// Pause between SSE events.
    pub chunk_delay_ms: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            chunk_chars: 8,
            chunk_delay_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_scenario() {
        assert_eq!(Scenario::parse("{}").unwrap(), Scenario::default());
        assert_eq!(Scenario::parse("  \n").unwrap(), Scenario::default());
    }

    #[test]
    fn spec_example_parses() {
        let yaml = r#"
latency: {p50_ms: 20, p99_ms: 80}
answers:
  - content: "The answer is 248327."
  - tool_calls: [{name: calculator, arguments: {expression: "847*293+156"}}]
  - {content: "...", finish_reason: length}
faults:
  - {rate: 0.3, status: 500, body: "oops"}
  - {every: 4, status: 429, retry_after_s: 1}
  - {rate: 0.1, delay_ms: 5000}
  - {every: 3, malformed: true}
  - {hang: true, rate: 1.0}
judge:
  marker: "expert evaluator"
  pointwise: [{contains: "248327", score: 9}]
  default_score: 3
  groupwise_pick_contains: "248327"
  raw_reply: null
"#;
        let s = Scenario::parse(yaml).unwrap();
        assert_eq!(s.answers.len(), 3);
        assert_eq!(s.answers[1].finish_reason(), FinishReason::ToolCalls);
        assert_eq!(s.answers[2].finish_reason(), FinishReason::Length);
        assert_eq!(s.faults.len(), 5);
        // Own answers, no tool_answers: tool requests use `answers`.
        assert_eq!(s.tool_answers, None);
        // Round trip through the JSON the control API returns.
        let back = Scenario::parse(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn default_round_trips() {
        let d = Scenario::default();
        let back = Scenario::parse(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn faults_only_file_keeps_default_answers() {
        let s = Scenario::parse("faults: [{every: 2, status: 503}]").unwrap();
        assert_eq!(s.answers, Scenario::default().answers);
        assert_eq!(s.tool_answers, Scenario::default().tool_answers);
    }

    #[test]
    fn partial_judge_is_defaulted() {
        let s = Scenario::parse(r#"{"judge": {"raw_reply": "```json\n{}"}}"#).unwrap();
        assert_eq!(s.judge.marker.as_deref(), Some("expert evaluator"));
        assert_eq!(s.judge.raw_reply.as_deref(), Some("```json\n{}"));
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        for bad in [
            "answer: []",
            "answers: []",
            "answers: [{text: hi}]",
            "faults: [{rate: 1.5, status: 500}]",
            "faults: [{every: 0, status: 500}]",
            "faults: [{rate: 0.5}]",
            "faults: [{status: 500, hang: true}]",
            "faults: [{malformed: true, retry_after_s: 3}]",
            "latency: {fixed_ms: 1, p50_ms: 2, p99_ms: 3}",
            "latency: {p50_ms: 30, p99_ms: 10}",
            "answers: [{tool_calls: [{name: x, arguments: 3}]}]",
            "judge: {bogus: 1}",
            "stream: {chunk_chars: 0}",
            "steps: {count: 0}",
            "steps: {p: 0.5}",
            "prm: {auc: 1.5}",
            "prm: {faults: [{every: 2}]}",
        ] {
            assert!(Scenario::parse(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn step_mode_blocks_are_defaulted_and_round_trip() {
        let s = Scenario::parse(
            "steps: {p_correct: 0.5}\nprm: {faults: [{every: 2, wrong_rows: true}]}",
        )
        .unwrap();
        let steps = s.steps.as_ref().unwrap();
        assert_eq!(
            (steps.count, steps.p_correct, steps.answer.as_str()),
            (6, 0.5, "42")
        );
        let prm = s.prm.as_ref().unwrap();
        assert_eq!((prm.auc, prm.step_tag.as_str()), (0.8, "<extra_0>"));
        let back = Scenario::parse(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(Scenario::default().steps, None);
    }

    #[test]
    fn string_arguments_are_kept() {
        let s = Scenario::parse(r#"answers: [{tool_calls: [{name: f, arguments: "{not json"}]}]"#)
            .unwrap();
        assert_eq!(s.answers[0].tool_calls[0].arguments, json!("{not json"));
    }
}
