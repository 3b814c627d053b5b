//! Small seeded PRNG (SplitMix64) so fault rates and latency samples are
//! reproducible for a given `--seed` and request arrival order. No external
//! dependency needed for a test double.

#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal sample (Box-Muller).
    pub fn next_normal(&mut self) -> f64 {
        // 1 - u is in (0, 1], so ln() is finite.
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// z-score of the 99th percentile of the standard normal distribution.
const Z_99: f64 = 2.326_347_874;

/// Sample a lognormal latency in milliseconds whose median is `p50` and whose
/// 99th percentile is `p99`. Capped at `10 * p99` so a freak sample cannot
/// stall a test run.
pub fn lognormal_ms(rng: &mut Rng, p50: f64, p99: f64) -> f64 {
    if p50 <= 0.0 {
        return 0.0;
    }
    let p99 = p99.max(p50);
    let mu = p50.ln();
    let sigma = (p99.ln() - mu) / Z_99;
    (mu + sigma * rng.next_normal()).exp().min(10.0 * p99)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn uniform_in_range() {
        let mut r = Rng::new(7);
        for _ in 0..10_000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }

    #[test]
    fn lognormal_percentiles_roughly_match() {
        let mut r = Rng::new(3);
        let mut xs: Vec<f64> = (0..20_000)
            .map(|_| lognormal_ms(&mut r, 20.0, 80.0))
            .collect();
        xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p50 = xs[xs.len() / 2];
        let p99 = xs[xs.len() * 99 / 100];
        assert!((p50 - 20.0).abs() < 2.0, "p50 {p50}");
        assert!((p99 - 80.0).abs() < 12.0, "p99 {p99}");
        assert!(xs.iter().all(|&x| x > 0.0 && x <= 800.0));
    }

    #[test]
    fn degenerate_lognormal() {
        let mut r = Rng::new(3);
        assert_eq!(lognormal_ms(&mut r, 0.0, 10.0), 0.0);
        let x = lognormal_ms(&mut r, 10.0, 10.0);
        assert!((x - 10.0).abs() < 1e-9);
    }
}
