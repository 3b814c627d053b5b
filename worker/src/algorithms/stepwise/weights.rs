//! Particle weights: logit of the PRM score, softmax, resampling and selection. Pure; every
//! random draw comes from a `uniform` source in [0, 1) so tests can fix the sequence (the
//! worker passes `crate::rand::unit`).

/// Scores are clipped into [EPS, 1 - EPS] before the logit, so 0 and 1 stay finite.
pub const SCORE_EPS: f64 = 1e-7;

/// log(p / (1 - p)) of a score clipped to [1e-7, 1 - 1e-7]; a NaN counts as the lowest score.
pub fn logit(score: f64) -> f64 {
    let p = if score.is_nan() {
        SCORE_EPS
    } else {
        score.clamp(SCORE_EPS, 1.0 - SCORE_EPS)
    };
    (p / (1.0 - p)).ln()
}

/// Softmax, shifted by the maximum so large weights do not overflow. Empty in, empty out.
pub fn softmax(weights: &[f64]) -> Vec<f64> {
    let max = weights.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = weights.iter().map(|w| (w - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The index whose cumulative probability first exceeds `u` (the last one for rounding).
fn inverse_cdf(probs: &[f64], u: f64) -> usize {
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return i;
        }
    }
    probs.len().saturating_sub(1)
}

/// `n` independent draws from `probs`.
pub fn multinomial(probs: &[f64], n: usize, uniform: &mut impl FnMut() -> f64) -> Vec<usize> {
    (0..n).map(|_| inverse_cdf(probs, uniform())).collect()
}

/// `n` evenly spaced pointers (one random offset) into the cumulative `probs`: every index
/// with probability p is drawn floor(n·p) or ceil(n·p) times, so less variance than
/// multinomial resampling.
pub fn systematic(probs: &[f64], n: usize, uniform: &mut impl FnMut() -> f64) -> Vec<usize> {
    if n == 0 || probs.is_empty() {
        return Vec::new();
    }
    let offset = uniform() / n as f64;
    let mut out = Vec::with_capacity(n);
    let mut acc = probs[0];
    let mut i = 0;
    for k in 0..n {
        let u = offset + k as f64 / n as f64;
        while u >= acc && i + 1 < probs.len() {
            i += 1;
            acc += probs[i];
        }
        out.push(i);
    }
    out
}

/// The index of the largest value; the earliest wins ties. `None` when empty.
pub fn argmax(values: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, v) in values.iter().enumerate() {
        if best.is_none_or(|b| *v > values[b]) {
            best = Some(i);
        }
    }
    best
}

/// One draw from softmax(weights).
pub fn sample(weights: &[f64], uniform: &mut impl FnMut() -> f64) -> Option<usize> {
    (!weights.is_empty()).then(|| inverse_cdf(&softmax(weights), uniform()))
}

/// The indices of the `k` highest scores, best first; the earlier index wins ties.
pub fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
    order.truncate(k);
    order
}

/// Effective sample size 1/Σp² of normalised probabilities (reported in metadata).
pub fn effective_sample_size(probs: &[f64]) -> f64 {
    let s: f64 = probs.iter().map(|p| p * p).sum();
    if s > 0.0 { 1.0 / s } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed sequence of uniforms, repeated.
    fn seq(values: &'static [f64]) -> impl FnMut() -> f64 {
        let mut i = 0;
        move || {
            let v = values[i % values.len()];
            i += 1;
            v
        }
    }

    #[test]
    fn logit_is_clipped_and_symmetric() {
        assert_eq!(logit(0.5), 0.0);
        let hi = logit(1.0);
        assert!((hi - ((1.0 - 1e-7) / 1e-7f64).ln()).abs() < 1e-6, "{hi}");
        assert!((logit(0.0) + hi).abs() < 1e-6);
        assert_eq!(logit(2.0), hi);
        assert_eq!(logit(f64::NAN), logit(0.0));
        assert!((logit(0.8) - 4f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_huge_weights() {
        let p = softmax(&[0.0, 4f64.ln()]);
        assert!((p[0] - 0.2).abs() < 1e-12 && (p[1] - 0.8).abs() < 1e-12);
        let p = softmax(&[1000.0, 1000.0]);
        assert_eq!(p, vec![0.5, 0.5]);
        let p = softmax(&[logit(1.0), logit(0.0)]);
        assert!(p[0] > 0.999_999 && p.iter().all(|x| x.is_finite()));
        assert!(softmax(&[]).is_empty());
    }

    #[test]
    fn multinomial_follows_the_cumulative_distribution() {
        let probs = [0.1, 0.6, 0.3];
        let draws = multinomial(&probs, 5, &mut seq(&[0.05, 0.1, 0.69, 0.7, 0.999]));
        assert_eq!(draws, vec![0, 1, 1, 2, 2]);
    }

    #[test]
    fn systematic_gives_each_particle_its_share() {
        let probs = [0.5, 0.25, 0.25];
        assert_eq!(systematic(&probs, 4, &mut seq(&[0.0])), vec![0, 0, 1, 2]);
        assert_eq!(systematic(&probs, 4, &mut seq(&[0.99])), vec![0, 0, 1, 2]);
        // A particle with no weight is never drawn.
        assert_eq!(systematic(&[0.0, 1.0], 3, &mut seq(&[0.5])), vec![1, 1, 1]);
        assert!(systematic(&probs, 0, &mut seq(&[0.5])).is_empty());
    }

    #[test]
    fn seeded_multinomial_resampling_is_reproducible_and_unbiased() {
        // xorshift with a fixed seed: the same draws every run.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rng = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let probs = softmax(&[logit(0.9), logit(0.5), logit(0.1)]);
        let draws = multinomial(&probs, 30_000, &mut rng);
        for (i, p) in probs.iter().enumerate() {
            let share = draws.iter().filter(|d| **d == i).count() as f64 / 30_000.0;
            assert!((share - p).abs() < 0.02, "{i}: {share} vs {p}");
        }
    }

    #[test]
    fn selection_and_beam_choice() {
        assert_eq!(argmax(&[0.1, 0.9, 0.9]), Some(1));
        assert_eq!(argmax(&[]), None);
        assert_eq!(sample(&[0.0, 0.0], &mut seq(&[0.75])), Some(1));
        assert_eq!(top_k(&[0.2, 0.9, 0.5, 0.9], 2), vec![1, 3]);
        assert_eq!(top_k(&[0.2], 3), vec![0]);
        assert!((effective_sample_size(&[0.5, 0.5]) - 2.0).abs() < 1e-12);
    }
}
