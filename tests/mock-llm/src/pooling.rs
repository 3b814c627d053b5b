//! A process reward model behind vLLM's pooling API (v0.11.0, `--runner
//! pooling`, Qwen2ForProcessRewardModel: STEP pooling + softmax): one row
//! `[p_negative, p_positive]` per step tag in each input.
//!
//! Scores are a noisy signal of whether the path is still correct at that
//! step, with a configured AUC, and deterministic given the seed and the
//! text scored (the same partial answer always gets the same score).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::rng::Rng;
use crate::stepwise::step_is_marked_ok;

/// More inputs than any step of a real search sends; bounds one call.
pub const MAX_INPUTS: usize = 1024;
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
const ASSISTANT_START: &str = "<|im_start|>assistant\n";
const TRAILERS: [&str; 2] = ["<|endoftext|>", "<|im_end|>"];

/// Scenario block `prm:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prm {
    /// Probability that a step on a correct path scores higher than a step
    /// on a broken one.
    pub auc: f64,
    pub step_tag: String,
    /// When set, requests naming another model get vLLM's 404.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<PoolingFault>,
}

impl Default for Prm {
    fn default() -> Self {
        Prm {
            auc: 0.8,
            step_tag: "<extra_0>".to_string(),
            model: None,
            faults: Vec::new(),
        }
    }
}

impl Prm {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.5..=0.999).contains(&self.auc) {
            return Err("prm.auc must be within 0.5..0.999".into());
        }
        if self.step_tag.is_empty() {
            return Err("prm.step_tag must not be empty".into());
        }
        for (i, f) in self.faults.iter().enumerate() {
            f.validate().map_err(|e| format!("prm.faults[{i}]: {e}"))?;
        }
        Ok(())
    }

    /// Distance between the means of the two classes' logits (unit
    /// variance each): AUC = Φ(d / √2).
    fn separation(&self) -> f64 {
        std::f64::consts::SQRT_2 * inverse_normal_cdf(self.auc)
    }
}

/// A fault on `/pooling`: the trigger rules of the top-level faults
/// (`every` counts `/pooling` requests), plus `wrong_rows`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolingFault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    /// Fires on every `/pooling` request after the first `after` ones: a PRM
    /// that breaks in the middle of a search, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub malformed: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hang: bool,
    /// 200 whose first input has one score row too few.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wrong_rows: bool,
}

impl PoolingFault {
    fn validate(&self) -> Result<(), String> {
        if let Some(r) = self.rate
            && !(0.0..=1.0).contains(&r)
        {
            return Err("`rate` must be within 0..1".into());
        }
        if self.every == Some(0) {
            return Err("`every` must be at least 1".into());
        }
        let triggers = usize::from(self.rate.is_some())
            + usize::from(self.every.is_some())
            + usize::from(self.after.is_some());
        if triggers > 1 {
            return Err("use one of `rate`, `every`, `after`".into());
        }
        let terminal = usize::from(self.status.is_some())
            + usize::from(self.malformed)
            + usize::from(self.hang)
            + usize::from(self.wrong_rows);
        if terminal > 1 {
            return Err("only one of `status`, `malformed`, `hang`, `wrong_rows` per fault".into());
        }
        if terminal == 0 && self.delay_ms.is_none() {
            return Err(
                "a fault needs `status`, `malformed`, `hang`, `wrong_rows` or `delay_ms`".into(),
            );
        }
        if let Some(s) = self.status
            && !(100..=599).contains(&s)
        {
            return Err(format!("invalid HTTP status {s}"));
        }
        if self.status.is_none() && self.body.is_some() {
            return Err("`body` needs `status`".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolingAction {
    Status { status: u16, body: Option<String> },
    Malformed,
    Hang,
    WrongRows,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolingFaultOutcome {
    pub delay_ms: u64,
    pub action: Option<PoolingAction>,
    pub fired: u64,
}

/// Evaluate faults in order for the `seq`-th `/pooling` request (1-based):
/// delays add up, the first terminal fault that fires wins.
pub fn evaluate_faults(faults: &[PoolingFault], seq: u64, rng: &mut Rng) -> PoolingFaultOutcome {
    let mut out = PoolingFaultOutcome::default();
    for f in faults {
        let fires = match (f.every, f.rate, f.after) {
            (Some(k), _, _) => k > 0 && seq > 0 && seq.is_multiple_of(k),
            (None, Some(rate), _) => rng.next_f64() < rate,
            (None, None, Some(n)) => seq > n,
            (None, None, None) => true,
        };
        if !fires {
            continue;
        }
        out.fired += 1;
        out.delay_ms = out.delay_ms.saturating_add(f.delay_ms.unwrap_or(0));
        let action = if let Some(status) = f.status {
            Some(PoolingAction::Status {
                status,
                body: f.body.clone(),
            })
        } else if f.malformed {
            Some(PoolingAction::Malformed)
        } else if f.hang {
            Some(PoolingAction::Hang)
        } else if f.wrong_rows {
            Some(PoolingAction::WrongRows)
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolingRequest {
    pub model: String,
    pub inputs: Vec<String>,
}

pub fn parse_request(body: &Value) -> Result<PoolingRequest, String> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or("'model' is required and must be a string")?
        .to_string();
    let inputs = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or("'input' must be a string or an array of strings")?,
        _ => return Err("'input' is required: a string or an array of strings".into()),
    };
    if inputs.is_empty() {
        return Err("'input' must not be empty".into());
    }
    if inputs.len() > MAX_INPUTS {
        return Err(format!("'input' takes at most {MAX_INPUTS} texts"));
    }
    if inputs.iter().any(|t| t.len() > MAX_INPUT_BYTES) {
        return Err(format!(
            "each input must be at most {MAX_INPUT_BYTES} bytes"
        ));
    }
    Ok(PoolingRequest { model, inputs })
}

/// The assistant part of a rendered chat (after the last assistant header,
/// without the end-of-turn tokens) and where it starts in `input`.
fn assistant_part(input: &str) -> (usize, &str) {
    let start = input
        .rfind(ASSISTANT_START)
        .map_or(0, |at| at + ASSISTANT_START.len());
    let mut text = &input[start..];
    loop {
        let before = text;
        for t in TRAILERS {
            text = text.strip_suffix(t).unwrap_or(text);
        }
        if text == before {
            return (start, text);
        }
    }
}

/// One `[p_negative, p_positive]` row per step tag in `input`.
pub fn score_input(prm: &Prm, seed: u64, input: &str) -> Vec<[f64; 2]> {
    let (offset, assistant) = assistant_part(input);
    let half = prm.separation() / 2.0;
    let mut on_track = true;
    let mut rows = Vec::new();
    let mut start = 0;
    while let Some(found) = assistant[start..].find(prm.step_tag.as_str()) {
        let end = start + found;
        on_track &= step_is_marked_ok(&assistant[start..end]);
        let tag_end = end + prm.step_tag.len();
        // Noise keyed by everything the PRM has seen up to this tag.
        let mut rng = Rng::new(text_hash(seed, &input[..offset + tag_end]));
        let mean = if on_track { half } else { -half };
        let p = sigmoid(mean + rng.next_normal());
        rows.push([1.0 - p, p]);
        start = tag_end;
    }
    rows
}

/// vLLM's pooling response for `inputs`' rows.
pub fn render_response(
    id: u64,
    created: u64,
    model: &str,
    rows: &[Vec<[f64; 2]>],
    prompt_tokens: u64,
) -> Value {
    let data: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(index, r)| json!({ "index": index, "object": "pooling", "data": r }))
        .collect();
    json!({
        "id": format!("pool-mock-{id}"),
        "object": "list",
        "created": created,
        "model": model,
        "data": data,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens,
            "completion_tokens": 0
        }
    })
}

/// vLLM's error body.
pub fn error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        400 => "BadRequestError",
        404 => "NotFoundError",
        _ => "InternalServerError",
    };
    json!({ "object": "error", "message": message, "type": kind, "param": null, "code": status })
}

/// FNV-1a over the text, mixed with the seed.
fn text_hash(seed: u64, text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Standard normal CDF via erfc (Abramowitz-Stegun 7.1.26, error < 1.5e-7).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-z * z).exp();
    if x >= 0.0 {
        1.0 - erfc / 2.0
    } else {
        erfc / 2.0
    }
}

/// Φ⁻¹(p) for p in (0, 1), by bisection (precision far beyond what a test
/// double needs).
fn inverse_normal_cdf(p: f64) -> f64 {
    let (mut lo, mut hi) = (-10.0_f64, 10.0_f64);
    for _ in 0..80 {
        let mid = (lo + hi) / 2.0;
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEM: &str = "Please reason step by step, and put your final answer within \\boxed{}.";

    fn render(question: &str, steps: &[&str]) -> String {
        let mut body = String::new();
        for s in steps {
            body.push_str(s);
            body.push_str("<extra_0>");
        }
        format!(
            "<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{body}<|im_end|><|endoftext|>"
        )
    }

    #[test]
    fn one_row_per_step_tag_deterministic_given_seed_and_text() {
        let prm = Prm::default();
        let text = render(
            "q",
            &["Step 1 (ok): a.", "Step 2 (ok): b.", "Step 3 (ok): c."],
        );
        let rows = score_input(&prm, 7, &text);
        assert_eq!(rows.len(), 3);
        for r in &rows {
            assert!((r[0] + r[1] - 1.0).abs() < 1e-12);
            assert!((0.0..=1.0).contains(&r[1]));
        }
        assert_eq!(score_input(&prm, 7, &text), rows);
        assert_ne!(score_input(&prm, 8, &text), rows);
        // A prefix's rows do not change when steps are appended.
        let shorter = render("q", &["Step 1 (ok): a.", "Step 2 (ok): b."]);
        let longer = score_input(&prm, 7, &text);
        let short = score_input(&prm, 7, &shorter);
        assert_eq!(short[..2], longer[..2]);
        // Text without a tag after the last step gets no row for it.
        let untagged = text.replace("c.<extra_0>", "c.");
        assert_eq!(score_input(&prm, 7, &untagged).len(), 2);
        assert!(score_input(&prm, 7, "no tags at all").is_empty());
    }

    /// Probability that a random good step outscores a random bad one.
    fn empirical_auc(prm: &Prm) -> f64 {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for i in 0..600 {
            let q = format!("question {i}");
            good.push(score_input(prm, 1, &render(&q, &["Step 1 (ok): x."]))[0][1]);
            bad.push(score_input(prm, 1, &render(&q, &["Step 1 (slip): x."]))[0][1]);
        }
        let wins: usize = good
            .iter()
            .map(|g| bad.iter().filter(|b| g > *b).count())
            .sum();
        wins as f64 / (good.len() * bad.len()) as f64
    }

    #[test]
    fn signal_has_the_configured_auc() {
        for auc in [0.6, 0.8, 0.95] {
            let prm = Prm {
                auc,
                ..Prm::default()
            };
            let got = empirical_auc(&prm);
            assert!((got - auc).abs() < 0.04, "auc {auc}: measured {got}");
        }
    }

    #[test]
    fn a_slip_taints_every_later_step() {
        let prm = Prm {
            auc: 0.999,
            ..Prm::default()
        };
        let text = render(
            "q",
            &["Step 1 (ok): a.", "Step 2 (slip): b.", "Step 3 (ok): c."],
        );
        let rows = score_input(&prm, 3, &text);
        // d = 4.37 at AUC 0.999: the classes barely overlap.
        assert!(rows[0][1] > 0.5, "{rows:?}");
        assert!(rows[1][1] < 0.5 && rows[2][1] < 0.5, "{rows:?}");
    }

    #[test]
    fn parses_requests_and_bounds_them() {
        let r = parse_request(&json!({"model": "prm", "input": ["a", "b"]})).unwrap();
        assert_eq!(r.inputs, ["a", "b"]);
        let r = parse_request(&json!({"model": "prm", "input": "a"})).unwrap();
        assert_eq!(r.inputs, ["a"]);
        for bad in [
            json!({"input": ["a"]}),
            json!({"model": "prm"}),
            json!({"model": "prm", "input": []}),
            json!({"model": "prm", "input": [1]}),
            json!({"model": "prm", "input": vec!["a"; MAX_INPUTS + 1]}),
        ] {
            assert!(parse_request(&bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn faults_fire_on_their_own_sequence() {
        let faults: Vec<PoolingFault> = serde_yaml::from_str(
            "[{every: 3, wrong_rows: true}, {every: 2, status: 500}, {delay_ms: 4}]",
        )
        .unwrap();
        let mut rng = Rng::new(0);
        let actions: Vec<_> = (1..=6)
            .map(|s| evaluate_faults(&faults, s, &mut rng).action)
            .collect();
        assert_eq!(actions[0], None);
        assert!(matches!(
            actions[1],
            Some(PoolingAction::Status { status: 500, .. })
        ));
        assert_eq!(actions[2], Some(PoolingAction::WrongRows));
        assert_eq!(actions[5], Some(PoolingAction::WrongRows));
        assert_eq!(evaluate_faults(&faults, 1, &mut rng).delay_ms, 4);
        let after: Vec<PoolingFault> =
            serde_yaml::from_str("[{after: 2, malformed: true}]").unwrap();
        let fired: Vec<u64> = (1..=4)
            .filter(|&s| evaluate_faults(&after, s, &mut rng).action.is_some())
            .collect();
        assert_eq!(fired, [3, 4]);
        let both: Vec<PoolingFault> =
            serde_yaml::from_str("[{after: 2, every: 2, malformed: true}]").unwrap();
        assert!(both[0].validate().is_err());
        let prm = Prm {
            faults: serde_yaml::from_str("[{wrong_rows: true, malformed: true}]").unwrap(),
            ..Prm::default()
        };
        assert!(prm.validate().is_err());
        assert!(
            Prm {
                auc: 0.4,
                ..Prm::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Prm {
                step_tag: String::new(),
                ..Prm::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn normal_cdf_and_inverse() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.96) - 0.975).abs() < 1e-4);
        assert!((inverse_normal_cdf(0.8) - 0.8416).abs() < 1e-3);
    }

    #[test]
    fn response_has_vllm_shape() {
        let v = render_response(3, 10, "prm", &[vec![[0.25, 0.75]]], 12);
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][0]["object"], "pooling");
        assert_eq!(v["data"][0]["data"][0][1], 0.75);
        assert_eq!(v["usage"]["completion_tokens"], 0);
        assert_eq!(error_body(404, "x")["type"], "NotFoundError");
    }
}
