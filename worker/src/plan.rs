//! Request planning: how many candidates a request spends and how they are asked for upstream.
//! Plain functions over the request's fields and the configuration's settings — no HTTP types
//! and no I/O — so the handler only parses, calls these, and renders.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::algorithms::adaptive::{AdaptivePolicy, AdaptiveRule};
use crate::config::{
    AdaptiveConfig, AdaptiveRuleName, AlgorithmName, DEFAULT_ADAPTIVE_MIN_SAMPLES,
    DEFAULT_ADAPTIVE_PARALLELISM, OverrideKey, ToolVote, check_adaptive,
};
use crate::providers::{ChatProvider, PreparedCall, ProviderError};

/// The endpoint's budget settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetPolicy {
    /// Used when the request names no budget.
    pub default: u32,
    /// The most a request may ask for.
    pub max: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("budget {budget} exceeds this endpoint's max_budget of {max}")]
    OverMax { budget: u32, max: u32 },
}

/// The budget of a request: the `X-ITS-Budget` header (already parsed) wins over the body's
/// `budget`, which wins over the endpoint's default; none may exceed the endpoint's maximum.
pub fn resolve_budget(
    header: Option<u32>,
    body: Option<u32>,
    policy: BudgetPolicy,
) -> Result<u32, BudgetError> {
    let budget = header.or(body).unwrap_or(policy.default);
    if budget > policy.max {
        return Err(BudgetError::OverMax {
            budget,
            max: policy.max,
        });
    }
    Ok(budget)
}

/// The endpoint's algorithm settings, as far as a request's choice is concerned.
#[derive(Debug, Clone, Copy)]
pub struct AlgorithmDefaults<'a> {
    pub algorithm: AlgorithmName,
    pub tool_vote: Option<ToolVote>,
    pub adaptive: Option<&'a AdaptiveConfig>,
    /// `allow_request_override`.
    pub allowed: &'a [OverrideKey],
    /// Whether best-of-n has a judge to call.
    pub has_judge: bool,
    pub max_budget: u32,
}

/// The algorithm a request runs with: the endpoint's, changed where the request may and did.
#[derive(Debug, Clone, PartialEq)]
pub struct AlgorithmChoice {
    pub algorithm: AlgorithmName,
    pub tool_vote: Option<ToolVote>,
    /// The adaptive policy, resolved for the request's budget (self-consistency only).
    pub adaptive: Option<AdaptivePolicy>,
}

/// A refused `algorithm` override; `param` is the offending field's path in the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OverrideError {
    pub param: String,
    pub message: String,
}

impl OverrideError {
    fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// A request's `algorithm` field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedAlgorithm {
    name: Option<AlgorithmName>,
    tool_vote: Option<ToolVote>,
    adaptive: Option<AdaptiveConfig>,
}

/// Applies a request's `algorithm` field (if any) to the endpoint's settings. Each key must be
/// in `allow_request_override`; values are checked as strictly as the configuration's.
pub fn choose_algorithm(
    requested: Option<&Value>,
    defaults: &AlgorithmDefaults<'_>,
    budget: u32,
) -> Result<AlgorithmChoice, OverrideError> {
    let requested = match requested {
        None => None,
        Some(v) => Some(parse_requested(v)?),
    };
    let requested = requested.unwrap_or(RequestedAlgorithm {
        name: None,
        tool_vote: None,
        adaptive: None,
    });
    let allow = |key: OverrideKey, present: bool, param: &str| {
        if present && !defaults.allowed.contains(&key) {
            Err(OverrideError::new(
                param,
                format!(
                    "this endpoint does not let requests override {param} (see allow_request_override)"
                ),
            ))
        } else {
            Ok(())
        }
    };
    allow(
        OverrideKey::Name,
        requested.name.is_some(),
        "algorithm.name",
    )?;
    allow(
        OverrideKey::ToolVote,
        requested.tool_vote.is_some(),
        "algorithm.tool_vote",
    )?;
    allow(
        OverrideKey::Adaptive,
        requested.adaptive.is_some(),
        "algorithm.adaptive",
    )?;
    let algorithm = requested.name.unwrap_or(defaults.algorithm);
    // Step-wise search and a PRM are set up per endpoint (rm_endpoint, step tokens, beam width);
    // a request may not switch into or out of it.
    if algorithm != defaults.algorithm
        && (algorithm.is_stepwise() || defaults.algorithm.is_stepwise())
    {
        return Err(OverrideError::new(
            "algorithm.name",
            format!(
                "this endpoint runs {}; a request cannot switch to {} (step-wise search is configured per endpoint)",
                defaults.algorithm.as_str(),
                algorithm.as_str()
            ),
        ));
    }
    if requested.name == Some(AlgorithmName::BestOfN) && !defaults.has_judge {
        return Err(OverrideError::new(
            "algorithm.name",
            "best-of-n needs a judge, and this endpoint has none configured (judge_model)",
        ));
    }
    if let Some(a) = &requested.adaptive {
        if algorithm != AlgorithmName::SelfConsistency {
            return Err(OverrideError::new(
                "algorithm.adaptive",
                format!(
                    "adaptive applies to self-consistency only, not to {}",
                    algorithm.as_str()
                ),
            ));
        }
        check_adaptive(a, defaults.max_budget).map_err(|(field, problem)| {
            let param = field.request_param();
            OverrideError::new(param, format!("{param} {problem}"))
        })?;
    }
    let adaptive = match algorithm {
        AlgorithmName::SelfConsistency => requested
            .adaptive
            .as_ref()
            .or(defaults.adaptive)
            .map(|a| adaptive_policy(a, budget)),
        AlgorithmName::BestOfN | AlgorithmName::ParticleFiltering | AlgorithmName::BeamSearch => {
            None
        }
    };
    Ok(AlgorithmChoice {
        algorithm,
        tool_vote: requested.tool_vote.or(defaults.tool_vote),
        adaptive,
    })
}

fn parse_requested(value: &Value) -> Result<RequestedAlgorithm, OverrideError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." {
            "algorithm".to_owned()
        } else {
            format!("algorithm.{path}")
        };
        let inner = e.into_inner();
        OverrideError::new(
            param.clone(),
            format!("Invalid value for '{param}': {inner}"),
        )
    })
}

/// Resolves adaptive settings for a request's budget: the rule's default threshold, at least
/// one sample, and a window no wider than the budget.
pub fn adaptive_policy(a: &AdaptiveConfig, budget: u32) -> AdaptivePolicy {
    let rule = match a.rule {
        AdaptiveRuleName::Beta => AdaptiveRule::Beta,
        AdaptiveRuleName::Dirichlet => AdaptiveRule::Dirichlet,
        AdaptiveRuleName::ItsHub => AdaptiveRule::ItsHub,
    };
    AdaptivePolicy {
        rule,
        threshold: a.threshold.unwrap_or(a.rule.default_threshold()),
        min_samples: a.min_samples.unwrap_or(DEFAULT_ADAPTIVE_MIN_SAMPLES).max(1) as usize,
        parallelism: a
            .parallelism
            .unwrap_or(DEFAULT_ADAPTIVE_PARALLELISM.min(budget))
            .max(1) as usize,
    }
}

/// How a budget is split into upstream calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSplit {
    /// Candidates asked for per call with OpenAI's `n`; 1 means one call per candidate, and no
    /// `n` is sent at all.
    pub per_call: u32,
    /// Calls asking for `per_call` candidates each.
    pub full_calls: u32,
    /// Candidates of one last, smaller call; 0 when there is none.
    pub remainder: u32,
}

impl CallSplit {
    /// Candidates asked for by each call, in call order.
    pub fn sizes(&self) -> Vec<u32> {
        let mut sizes = vec![self.per_call; self.full_calls as usize];
        if self.remainder > 0 {
            sizes.push(self.remainder);
        }
        sizes
    }
}

/// Splits `budget` candidates into calls of at most `candidates_per_call` each — only when the
/// upstream takes `n`; otherwise one call per candidate.
pub fn split_calls(budget: u32, candidates_per_call: u32, supports_n: bool) -> CallSplit {
    let per_call = if supports_n {
        candidates_per_call.clamp(1, budget.max(1))
    } else {
        1
    };
    CallSplit {
        per_call,
        full_calls: budget / per_call,
        remainder: budget % per_call,
    }
}

/// Prepares the calls of a split. Each distinct body is serialised once; calls with the same
/// body share its bytes.
pub fn prepare_calls(
    provider: &dyn ChatProvider,
    mut forward: Map<String, Value>,
    split: CallSplit,
) -> Result<Vec<Arc<PreparedCall>>, ProviderError> {
    if split.per_call == 1 {
        let call = Arc::new(provider.prepare(forward)?);
        return Ok(vec![call; split.full_calls as usize]);
    }
    let mut calls = Vec::with_capacity(split.full_calls as usize + 1);
    let remainder = if split.remainder > 0 {
        let mut last = forward.clone();
        last.insert("n".to_owned(), Value::from(split.remainder));
        Some(Arc::new(provider.prepare(last)?))
    } else {
        None
    };
    forward.insert("n".to_owned(), Value::from(split.per_call));
    let full = Arc::new(provider.prepare(forward)?);
    calls.extend(std::iter::repeat_n(full, split.full_calls as usize));
    calls.extend(remainder);
    Ok(calls)
}

/// What the configuration contributes to a request's plan.
pub struct PlanSettings<'a> {
    pub algorithm: AlgorithmName,
    pub provider: &'a dyn ChatProvider,
    /// Sent as `temperature` when the request has none.
    pub default_temperature: Option<f64>,
    /// `upstream.candidates_per_call`.
    pub candidates_per_call: u32,
}

/// A request's upstream work, ready to run.
pub struct Plan {
    /// The upstream calls that spend the budget, each prepared once.
    pub calls: Vec<Arc<PreparedCall>>,
    /// Candidates asked for by each call, in call order.
    pub sizes: Vec<usize>,
    /// The conversation, for the judge (best-of-n with more than one candidate only).
    pub context: Vec<Value>,
    /// Step-wise search: the forwarded body each step's request is built from (no `calls`).
    pub forward: Option<Map<String, Value>>,
}

/// Plans the calls of a request whose forwarded body is `forward` (the OpenAI fields, without
/// the worker's own).
pub fn plan(
    mut forward: Map<String, Value>,
    budget: u32,
    settings: &PlanSettings<'_>,
) -> Result<Plan, ProviderError> {
    if let Some(t) = settings.default_temperature {
        forward.entry("temperature").or_insert(Value::from(t));
    }
    if settings.algorithm.is_stepwise() {
        // Step-wise search builds its calls step by step from the partial answers.
        return Ok(Plan {
            calls: Vec::new(),
            sizes: Vec::new(),
            context: Vec::new(),
            forward: Some(forward),
        });
    }
    let context = match settings.algorithm {
        AlgorithmName::BestOfN if budget > 1 => forward
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let split = split_calls(
        budget,
        settings.candidates_per_call,
        settings.provider.supports_n(),
    );
    let calls = prepare_calls(settings.provider, forward, split)?;
    let sizes = split.sizes().into_iter().map(|n| n as usize).collect();
    Ok(Plan {
        calls,
        sizes,
        context,
        forward: None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::ProviderKind;
    use crate::providers::{BoxFuture, Completion, UpstreamError};

    const POLICY: BudgetPolicy = BudgetPolicy {
        default: 4,
        max: 16,
    };

    #[test]
    fn budget_comes_from_the_header_then_the_body_then_the_default() {
        let over = |budget| Err(BudgetError::OverMax { budget, max: 16 });
        // (header, body) -> budget
        type Case = (Option<u32>, Option<u32>, Result<u32, BudgetError>);
        let cases: [Case; 8] = [
            (None, None, Ok(4)),
            (None, Some(6), Ok(6)),
            (Some(2), None, Ok(2)),
            (Some(2), Some(6), Ok(2)),
            (Some(16), Some(1), Ok(16)),
            (None, Some(17), over(17)),
            (Some(50), Some(3), over(50)),
            // A header within bounds rescues an over-max body: the header wins.
            (Some(3), Some(50), Ok(3)),
        ];
        for (header, body, expected) in cases {
            assert_eq!(
                resolve_budget(header, body, POLICY),
                expected,
                "header {header:?}, body {body:?}"
            );
        }
        let tight = BudgetPolicy { default: 8, max: 4 };
        assert_eq!(
            resolve_budget(None, None, tight),
            Err(BudgetError::OverMax { budget: 8, max: 4 })
        );
        assert_eq!(
            BudgetError::OverMax {
                budget: 50,
                max: 16
            }
            .to_string(),
            "budget 50 exceeds this endpoint's max_budget of 16"
        );
    }

    const ALL_KEYS: &[OverrideKey] = &[
        OverrideKey::Name,
        OverrideKey::ToolVote,
        OverrideKey::Adaptive,
    ];

    fn defaults<'a>(
        allowed: &'a [OverrideKey],
        adaptive: Option<&'a AdaptiveConfig>,
    ) -> AlgorithmDefaults<'a> {
        AlgorithmDefaults {
            algorithm: AlgorithmName::SelfConsistency,
            tool_vote: None,
            adaptive,
            allowed,
            has_judge: false,
            max_budget: 16,
        }
    }

    fn beta() -> AdaptiveConfig {
        AdaptiveConfig {
            rule: AdaptiveRuleName::Beta,
            threshold: None,
            min_samples: None,
            parallelism: None,
        }
    }

    #[test]
    fn without_an_override_the_endpoint_settings_apply() {
        let a = beta();
        let choice = choose_algorithm(None, &defaults(&[], Some(&a)), 8).unwrap();
        assert_eq!(choice.algorithm, AlgorithmName::SelfConsistency);
        let policy = choice.adaptive.unwrap();
        assert_eq!(
            (
                policy.rule,
                policy.threshold,
                policy.min_samples,
                policy.parallelism
            ),
            (AdaptiveRule::Beta, 0.95, 2, 4)
        );
        // The window is never wider than the budget.
        let small = choose_algorithm(None, &defaults(&[], Some(&a)), 3).unwrap();
        assert_eq!(small.adaptive.unwrap().parallelism, 3);
    }

    #[test]
    fn step_wise_endpoints_refuse_switching_and_adaptive_overrides() {
        let mut pf = defaults(ALL_KEYS, None);
        pf.algorithm = AlgorithmName::ParticleFiltering;
        let e = choose_algorithm(Some(&json!({"name": "self-consistency"})), &pf, 8).unwrap_err();
        assert_eq!(e.param, "algorithm.name");
        let e = choose_algorithm(Some(&json!({"adaptive": {"rule": "beta"}})), &pf, 8).unwrap_err();
        assert_eq!(e.param, "algorithm.adaptive");
        assert!(
            e.message.contains("not to particle-filtering"),
            "{}",
            e.message
        );
        let sc = defaults(ALL_KEYS, None);
        let e = choose_algorithm(Some(&json!({"name": "beam-search"})), &sc, 8).unwrap_err();
        assert_eq!(e.param, "algorithm.name");
        // Naming the endpoint's own algorithm is not a switch.
        choose_algorithm(Some(&json!({"name": "particle-filtering"})), &pf, 8).unwrap();
    }

    #[test]
    fn allowed_overrides_change_the_algorithm() {
        let requested = json!({
            "tool_vote": "tool_args",
            "adaptive": {"rule": "its_hub", "parallelism": 2}
        });
        let choice = choose_algorithm(Some(&requested), &defaults(ALL_KEYS, None), 16).unwrap();
        assert_eq!(choice.tool_vote, Some(ToolVote::ToolArgs));
        let policy = choice.adaptive.unwrap();
        assert_eq!(policy.rule, AdaptiveRule::ItsHub);
        assert_eq!(policy.threshold, 0.75);
        assert_eq!(policy.parallelism, 2);

        // Switching to best-of-n leaves the endpoint's adaptive setting behind.
        let a = beta();
        let mut with_judge = defaults(ALL_KEYS, Some(&a));
        with_judge.has_judge = true;
        let bon = json!({"name": "best-of-n"});
        let choice = choose_algorithm(Some(&bon), &with_judge, 4).unwrap();
        assert_eq!(choice.algorithm, AlgorithmName::BestOfN);
        assert_eq!(choice.adaptive, None);
    }

    #[test]
    fn refused_overrides_name_the_field() {
        let only_name = &[OverrideKey::Name];
        // (allowed, request, param)
        let cases: [(&[OverrideKey], Value, &str); 9] = [
            (&[], json!({"name": "self-consistency"}), "algorithm.name"),
            (
                only_name,
                json!({"tool_vote": "tool_name"}),
                "algorithm.tool_vote",
            ),
            (
                only_name,
                json!({"adaptive": {"rule": "beta"}}),
                "algorithm.adaptive",
            ),
            (only_name, json!({"name": "best-of-n"}), "algorithm.name"),
            (ALL_KEYS, json!({"name": "majority"}), "algorithm.name"),
            (
                ALL_KEYS,
                json!({"adaptive": {"rule": "beta", "threshold": 1.5}}),
                "algorithm.adaptive.threshold",
            ),
            (
                ALL_KEYS,
                json!({"adaptive": {"rule": "beta", "parallelism": 0}}),
                "algorithm.adaptive.parallelism",
            ),
            (
                ALL_KEYS,
                json!({"adaptive": {"rule": "beta", "min_samples": 17}}),
                "algorithm.adaptive.min_samples",
            ),
            (ALL_KEYS, json!({"colour": "blue"}), "algorithm.colour"),
        ];
        for (allowed, requested, param) in cases {
            let e = choose_algorithm(Some(&requested), &defaults(allowed, None), 8).unwrap_err();
            assert_eq!(e.param, param, "{requested}: {e}");
        }
        let e =
            choose_algorithm(Some(&json!("best-of-n")), &defaults(ALL_KEYS, None), 8).unwrap_err();
        assert_eq!(e.param, "algorithm");
        let e = choose_algorithm(
            Some(&json!({"adaptive": {"rule": "beta", "threshold": 0}})),
            &defaults(ALL_KEYS, None),
            8,
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "algorithm.adaptive.threshold must be above 0 and at most 1, got 0"
        );
    }

    #[test]
    fn budget_is_split_into_calls_of_at_most_candidates_per_call() {
        // (budget, candidates_per_call, supports_n) -> candidates per call
        let cases: [(u32, u32, bool, &[u32]); 9] = [
            (1, 1, true, &[1]),
            (4, 1, true, &[1, 1, 1, 1]),
            (4, 4, false, &[1, 1, 1, 1]),
            (4, 4, true, &[4]),
            (4, 2, true, &[2, 2]),
            (7, 3, true, &[3, 3, 1]),
            (8, 3, true, &[3, 3, 2]),
            (3, 8, true, &[3]),
            (1, 8, true, &[1]),
        ];
        for (budget, per_call, supports_n, sizes) in cases {
            let split = split_calls(budget, per_call, supports_n);
            assert_eq!(split.sizes(), sizes, "budget {budget}, per call {per_call}");
            assert_eq!(split.sizes().iter().sum::<u32>(), budget);
        }
    }

    /// A provider that only prepares: bodies are serialised as given.
    struct Preparer {
        n: bool,
    }

    impl ChatProvider for Preparer {
        fn kind(&self) -> ProviderKind {
            ProviderKind::OpenaiCompatible
        }
        fn model(&self) -> &str {
            "m"
        }
        fn prepare(&self, body: Map<String, Value>) -> Result<PreparedCall, ProviderError> {
            PreparedCall::json(&body)
        }
        fn supports_n(&self) -> bool {
            self.n
        }
        fn send<'a>(
            &'a self,
            _: &'a PreparedCall,
        ) -> BoxFuture<'a, Result<Completion, UpstreamError>> {
            Box::pin(async { Err(UpstreamError::Transport("not sent in these tests".into())) })
        }
    }

    fn body(call: &PreparedCall) -> Value {
        serde_json::from_slice(&call.body).unwrap()
    }

    fn forward() -> Map<String, Value> {
        let messages = json!([{"role": "user", "content": "2+2?"}]);
        Map::from_iter([("messages".to_owned(), messages)])
    }

    fn settings(
        provider: &dyn ChatProvider,
        algorithm: AlgorithmName,
        per_call: u32,
    ) -> PlanSettings<'_> {
        PlanSettings {
            algorithm,
            provider,
            default_temperature: Some(0.7),
            candidates_per_call: per_call,
        }
    }

    #[test]
    fn calls_of_one_candidate_share_one_body_without_n() {
        let provider = Preparer { n: true };
        let plan = plan(
            forward(),
            3,
            &settings(&provider, AlgorithmName::SelfConsistency, 1),
        )
        .unwrap();
        assert_eq!(plan.calls.len(), 3);
        assert!(plan.calls.iter().all(|c| Arc::ptr_eq(c, &plan.calls[0])));
        let sent = body(&plan.calls[0]);
        assert!(sent.get("n").is_none());
        assert_eq!(sent["temperature"], 0.7);
        // Self-consistency has no judge, so no context is kept.
        assert!(plan.context.is_empty());
    }

    #[test]
    fn grouped_calls_ask_for_n_and_the_remainder_comes_last() {
        let provider = Preparer { n: true };
        let mut request = forward();
        request.insert("temperature".into(), json!(0.2));
        let plan = plan(request, 7, &settings(&provider, AlgorithmName::BestOfN, 3)).unwrap();
        let ns: Vec<Value> = plan.calls.iter().map(|c| body(c)["n"].clone()).collect();
        assert_eq!(ns, [json!(3), json!(3), json!(1)]);
        assert_eq!(plan.sizes, [3, 3, 1]);
        assert!(Arc::ptr_eq(&plan.calls[0], &plan.calls[1]));
        // The request's own temperature wins over the endpoint's default.
        assert_eq!(body(&plan.calls[2])["temperature"], 0.2);
        assert_eq!(
            plan.context,
            forward()["messages"].as_array().unwrap().clone()
        );
    }

    #[test]
    fn an_upstream_without_n_gets_one_call_per_candidate() {
        let provider = Preparer { n: false };
        let plan = plan(
            forward(),
            4,
            &settings(&provider, AlgorithmName::BestOfN, 4),
        )
        .unwrap();
        assert_eq!(plan.calls.len(), 4);
        assert!(body(&plan.calls[0]).get("n").is_none());
    }

    #[test]
    fn a_single_candidate_best_of_n_keeps_no_judge_context() {
        let provider = Preparer { n: true };
        let plan = plan(
            forward(),
            1,
            &settings(&provider, AlgorithmName::BestOfN, 1),
        )
        .unwrap();
        assert_eq!(plan.calls.len(), 1);
        assert!(plan.context.is_empty());
    }
}
