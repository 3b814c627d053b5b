//! Prometheus metrics of the operator: reconciles, failures by reason, reconcile duration,
//! leadership, and the process collector (RSS, CPU) for capacity planning.

use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    reconciles: IntCounter,
    failures: IntCounterVec,
    duration: Histogram,
    leader: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("inferscale_operator".to_owned()), None)?;
        let reconciles = IntCounter::new("reconciles_total", "Reconciles started")?;
        let failures = IntCounterVec::new(
            Opts::new(
                "reconcile_errors_total",
                "Reconciles that failed or found the spec invalid, by reason",
            ),
            &["reason"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new("reconcile_duration_seconds", "Duration of one reconcile").buckets(
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
        )?;
        let leader = IntGauge::new("leader", "1 while this replica holds the leader Lease")?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            reconciles,
            failures,
            duration,
            leader,
        })
    }

    /// Counts a reconcile and measures it until the guard is dropped.
    pub fn reconcile(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: &self.duration,
        }
    }

    /// Counts a failed reconcile. `reason` must come from a bounded set (error labels, condition
    /// reasons), never from user input.
    pub fn failure(&self, reason: &str) {
        self.failures.with_label_values(&[reason]).inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// Observes the reconcile duration when dropped, so early returns are measured too.
pub struct ReconcileTimer<'a> {
    start: Instant,
    histogram: &'a Histogram,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_operator_series() {
        let m = Metrics::new().unwrap();
        drop(m.reconcile());
        m.failure("SecretNotFound");
        m.set_leader(true);
        let text = m.render().unwrap();
        assert!(
            text.contains("inferscale_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "inferscale_operator_reconcile_errors_total{reason=\"SecretNotFound\"} 1"
            )
        );
        assert!(text.contains("inferscale_operator_reconcile_duration_seconds_count 1"));
        assert!(text.contains("inferscale_operator_leader 1"));
    }
}
