//! Request planning: how many candidates a request spends and how they are asked for upstream.
//! Plain functions over the request's fields and the configuration's settings — no HTTP types
//! and no I/O — so the handler only parses, calls these, and renders.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::AlgorithmName;
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
