//! Adaptive self-consistency: statistical rules that stop sampling once the current leader is
//! *probably* the final majority (Adaptive-Consistency, Aggarwal et al. 2023, and its_hub's
//! round-based rule) — pure functions, no I/O. They trade a small chance of a different answer
//! for fewer calls; the exact early decision that never changes the answer is [`super::early`].

/// The statistical stopping rules of adaptive self-consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaptiveRule {
    /// Beta posterior over the two leading answers (Aggarwal et al. 2023; its_hub's
    /// `BetaSelfConsistency`): stop when P(leader's share > runner-up's) reaches the threshold.
    Beta,
    /// Dirichlet posterior over every answer seen: stop when P(leader's share is the largest)
    /// reaches the threshold.
    Dirichlet,
    /// its_hub's `AdaptiveSelfConsistency`: after rounds of 2, 2, 4, 8, … samples, stop when the
    /// leader's share of the votes reaches the threshold.
    ItsHub,
}

/// A resolved adaptive setting: which rule, when it is confident enough, and how many calls run
/// at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptivePolicy {
    pub rule: AdaptiveRule,
    /// Stop once the rule's confidence reaches this, in (0, 1].
    pub threshold: f64,
    /// Successful samples needed before the rule is asked at all (at least 1).
    pub min_samples: usize,
    /// Calls in flight at once (at least 1); a new one starts as one finishes.
    pub parallelism: usize,
}

impl AdaptivePolicy {
    /// True when the vote counts of the samples so far let this policy stop.
    pub fn confident(&self, counts: &[usize]) -> bool {
        let samples: usize = counts.iter().sum();
        samples >= self.min_samples
            && self
                .rule
                .confidence(counts)
                .is_some_and(|c| c >= self.threshold)
    }
}

impl AdaptiveRule {
    /// The rule's name in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            AdaptiveRule::Beta => "beta",
            AdaptiveRule::Dirichlet => "dirichlet",
            AdaptiveRule::ItsHub => "its_hub",
        }
    }

    /// The threshold used when the configuration names none: the paper's 0.95 for the posterior
    /// rules, its_hub's 0.75 for the share rule.
    pub fn default_threshold(self) -> f64 {
        match self {
            AdaptiveRule::Beta | AdaptiveRule::Dirichlet => 0.95,
            AdaptiveRule::ItsHub => 0.75,
        }
    }

    /// Confidence that the current leader is the final majority, from the vote counts of the
    /// answers seen so far (any order). `None` when this rule does not judge at this number of
    /// samples (its_hub only looks at the end of a round).
    pub fn confidence(self, counts: &[usize]) -> Option<f64> {
        let samples: usize = counts.iter().sum();
        if samples == 0 {
            return None;
        }
        let (first, second) = top_two(counts);
        match self {
            AdaptiveRule::Beta => Some(beta_confidence(first, second)),
            AdaptiveRule::Dirichlet => Some(dirichlet_confidence(counts)),
            AdaptiveRule::ItsHub => {
                // Rounds of 2, 2, 4, 8…: a round ends when the sample count is a power of two.
                (samples >= 2 && samples.is_power_of_two()).then(|| first as f64 / samples as f64)
            }
        }
    }
}

fn top_two(counts: &[usize]) -> (usize, usize) {
    let (mut first, mut second) = (0, 0);
    for &c in counts {
        if c > first {
            second = first;
            first = c;
        } else if c > second {
            second = c;
        }
    }
    (first, second)
}

/// P(p1 > p2) for p1 / (p1 + p2) ~ Beta(v1 + 1, v2 + 1): 1 − I_½(v1 + 1, v2 + 1), which for
/// integer parameters is exactly 1 − Σ_{k=0..v2} C(n, k) / 2ⁿ with n = v1 + v2 + 1.
pub fn beta_confidence(v1: usize, v2: usize) -> f64 {
    let n = v1 + v2 + 1;
    // Σ C(n, k) / 2ⁿ term by term in floating point: C(n, k+1) = C(n, k)·(n − k)/(k + 1). The
    // first term is 2⁻ⁿ, which underflows only past n = 1074 (the budget is bounded far below).
    let mut term = 0.5f64.powi(n as i32);
    let mut tail = 0.0;
    for k in 0..=v2 {
        tail += term;
        term *= (n - k) as f64 / (k + 1) as f64;
    }
    (1.0 - tail).clamp(0.0, 1.0)
}

/// P(the leader's share is the largest) under a Dirichlet(counts + 1) posterior.
///
/// With G_i ~ Gamma(α_i, 1) independent, shares are G_i / ΣG, so the probability is
/// ∫ g_{α₁}(x) Π_{j≠1} F_{α_j}(x) dx, where for integer α the Gamma CDF is the Erlang
/// F_α(x) = 1 − e^{−x} Σ_{k<α} x^k / k!. Integrated with composite Simpson's rule. With a single
/// answer seen, an unseen rival (count 0) stands in, so two answers give exactly the Beta rule.
pub fn dirichlet_confidence(counts: &[usize]) -> f64 {
    let Some((lead_at, &lead)) = counts
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
    else {
        return 0.0;
    };
    let mut others: Vec<usize> = counts
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != lead_at)
        .map(|(_, &c)| c + 1)
        .collect();
    if others.is_empty() {
        // A unanimous start: weigh it against one answer not seen yet, as the Beta rule does.
        others.push(1);
    }
    let alpha = lead + 1;
    let integrand =
        |x: f64| gamma_pdf(alpha, x) * others.iter().map(|&a| erlang_cdf(a, x)).product::<f64>();
    // The Gamma(α) density is negligible past α + 12√α + 40.
    let upper = alpha as f64 + 12.0 * (alpha as f64).sqrt() + 40.0;
    simpson(integrand, 0.0, upper, 4000).clamp(0.0, 1.0)
}

fn gamma_pdf(alpha: usize, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    // x^(α−1) e^(−x) / (α−1)!, in logs to stay finite for large α.
    let ln_fact: f64 = (1..alpha).map(|k| (k as f64).ln()).sum();
    ((alpha as f64 - 1.0) * x.ln() - x - ln_fact).exp()
}

fn erlang_cdf(alpha: usize, x: f64) -> f64 {
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..alpha {
        term *= x / k as f64;
        sum += term;
    }
    (1.0 - (-x).exp() * sum).clamp(0.0, 1.0)
}

fn simpson(f: impl Fn(f64) -> f64, a: f64, b: f64, intervals: usize) -> f64 {
    let n = intervals + intervals % 2;
    let h = (b - a) / n as f64;
    let mut acc = f(a) + f(b);
    for i in 1..n {
        let w = if i % 2 == 1 { 4.0 } else { 2.0 };
        acc += w * f(a + i as f64 * h);
    }
    acc * h / 3.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn beta_matches_its_hub_reference_values() {
        // its_hub.md §2.3 and test vector 17.
        for (v1, v2, p) in [
            (1, 0, 0.75),
            (2, 0, 0.875),
            (3, 0, 0.9375),
            (4, 0, 0.96875),
            (5, 5, 0.5),
            (6, 1, 0.9648),
            (5, 1, 0.9375),
        ] {
            assert!(
                close(beta_confidence(v1, v2), p, 5e-5),
                "P({v1},{v2}) = {}",
                beta_confidence(v1, v2)
            );
        }
        assert!(beta_confidence(10, 1) > 0.99);
        // The smallest leads that reach 0.95 (its_hub.md §2.3).
        for (v2, v1) in [(0, 4), (1, 6), (2, 8), (3, 9), (4, 11), (5, 12)] {
            assert!(
                beta_confidence(v1, v2) >= 0.95 && beta_confidence(v1 - 1, v2) < 0.95,
                "v2 = {v2}"
            );
        }
    }

    #[test]
    fn dirichlet_with_two_answers_is_the_beta_rule() {
        for (v1, v2) in [(1, 0), (3, 1), (6, 2), (9, 4)] {
            let (d, b) = (dirichlet_confidence(&[v1, v2]), beta_confidence(v1, v2));
            assert!(close(d, b, 1e-6), "({v1},{v2}): dirichlet {d} beta {b}");
        }
        // A single answer seen is weighed against one not seen yet, as the Beta rule does.
        assert!(close(
            dirichlet_confidence(&[5]),
            beta_confidence(5, 0),
            1e-6
        ));
    }

    #[test]
    fn dirichlet_by_hand() {
        // Three answers seen once each: by symmetry each leads with probability 1/3.
        assert!(close(dirichlet_confidence(&[1, 1, 1]), 1.0 / 3.0, 1e-6));
        // (1, 0): Beta(2, 1) → 0.75.
        assert!(close(dirichlet_confidence(&[1, 0]), 0.75, 1e-6));
        // (2, 1, 1): α = (3, 2, 2). By hand: P(G1 > G2, G1 > G3) = ∫ x²e^{-x}/2 · (1 − e^{-x}(1 + x))² dx
        // = 1 − ∫ x²e^{-2x}(1 + x) dx + ½∫ x²e^{-3x}(1 + x)² dx
        // = 1 − (2/8 + 6/16) + ½(2/27 + 2·6/81 + 24/243) = 0.535494…
        let expected = 1.0 - (0.25 + 0.375) + (2.0 / 27.0 + 12.0 / 81.0 + 24.0 / 243.0) / 2.0;
        assert!(
            close(dirichlet_confidence(&[2, 1, 1]), expected, 1e-6),
            "{}",
            dirichlet_confidence(&[2, 1, 1])
        );
        // More rivals make the leader less certain than the two-answer rule says.
        assert!(dirichlet_confidence(&[6, 2, 2]) < beta_confidence(6, 2));
    }

    #[test]
    fn its_hub_rule_judges_only_at_the_end_of_a_round() {
        let rule = AdaptiveRule::ItsHub;
        // its_hub.md test vector 16: "42","24","42","42" → agreement 3/4 ≥ 0.75 after 4.
        assert_eq!(rule.confidence(&[1, 1]), Some(0.5));
        assert_eq!(rule.confidence(&[2, 1]), None);
        assert_eq!(rule.confidence(&[3, 1]), Some(0.75));
        // All "42": 2 of 2 after the first round.
        assert_eq!(rule.confidence(&[2]), Some(1.0));
        assert_eq!(rule.confidence(&[]), None);
        assert_eq!(rule.confidence(&[1]), None);
    }
}
