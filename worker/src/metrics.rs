//! Prometheus metrics of the worker. Names are prefixed `inferscale_`; labels are bounded
//! (algorithm, outcome, provider, configured model, role) — never user input.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub requests_in_flight: IntGauge,
    pub budget: HistogramVec,
    pub candidates: IntCounterVec,
    /// Candidate calls the answer did not wait for (early decision, adaptive); each is aborted
    /// unless it finishes within `upstream.straggler_grace_ms`.
    pub cancelled_calls: IntCounterVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub judge_calls: IntCounterVec,
    pub judge_duration: HistogramVec,
    pub judge_fallbacks: IntCounterVec,
    pub vote_agreement: HistogramVec,
    pub tokens: IntCounterVec,
    pub overhead: HistogramVec,
    pub configure: IntCounterVec,
    pub build_info: IntGaugeVec,
    /// Requests refused by admission control, by reason (`global_limit`, `client_limit`) and
    /// request bodies not received in time (`body_timeout`).
    pub requests_shed: IntCounterVec,
    /// Requests holding an admission slot (chat requests, streams until their last frame).
    pub admitted_in_flight: IntGauge,
    /// Clients with at least one admitted request.
    pub clients_in_flight: IntGauge,
    /// Open client connections.
    pub connections_open: IntGauge,
    /// Step-wise search with a process reward model (block at the end of this file).
    pub search: SearchMetrics,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];
const BUDGET_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0,
];
const RATIO_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process collector");
        let requests_in_flight = IntGauge::new(
            "inferscale_requests_in_flight",
            "Chat requests being processed.",
        )
        .expect("valid metric");
        r.register(Box::new(requests_in_flight.clone()))
            .expect("unique metric");
        let build_info = IntGaugeVec::new(
            Opts::new("inferscale_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(build_info.clone()))
            .expect("unique metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Self {
            requests: counter(
                &r,
                "inferscale_requests_total",
                "Chat requests by algorithm and outcome.",
                &["algorithm", "outcome"],
            ),
            request_duration: histogram(
                &r,
                "inferscale_request_duration_seconds",
                "End-to-end duration of chat requests.",
                &["algorithm", "outcome"],
                LATENCY_BUCKETS,
            ),
            requests_in_flight,
            budget: histogram(
                &r,
                "inferscale_budget",
                "Budget (candidates asked for) per request.",
                &["algorithm"],
                BUDGET_BUCKETS,
            ),
            candidates: counter(
                &r,
                "inferscale_candidates_total",
                "Candidates generated, by outcome (ok, error).",
                &["algorithm", "outcome"],
            ),
            cancelled_calls: counter(
                &r,
                "inferscale_cancelled_calls_total",
                "Candidate calls the answer did not wait for (early decision, adaptive stop); aborted unless they finish within upstream.straggler_grace_ms.",
                &["algorithm"],
            ),
            upstream_requests: counter(
                &r,
                "inferscale_upstream_requests_total",
                "Upstream calls by provider, model, role (candidate, judge) and status.",
                &["provider", "model", "role", "status"],
            ),
            upstream_duration: histogram(
                &r,
                "inferscale_upstream_request_duration_seconds",
                "Duration of upstream calls, retries included.",
                &["provider", "model", "role"],
                LATENCY_BUCKETS,
            ),
            judge_calls: counter(
                &r,
                "inferscale_judge_calls_total",
                "LLM judge calls by mode and outcome (ok, error, unparseable).",
                &["mode", "outcome"],
            ),
            judge_duration: histogram(
                &r,
                "inferscale_judge_duration_seconds",
                "Duration of the judging step of best-of-n.",
                &["mode"],
                LATENCY_BUCKETS,
            ),
            judge_fallbacks: counter(
                &r,
                "inferscale_judge_fallbacks_total",
                "Best-of-n requests that fell back to the self-consistency winner because the judge failed.",
                &["reason"],
            ),
            vote_agreement: histogram(
                &r,
                "inferscale_vote_agreement_ratio",
                "Share of the voting candidates that agreed with the winner.",
                &["algorithm", "vote_space"],
                RATIO_BUCKETS,
            ),
            tokens: counter(
                &r,
                "inferscale_tokens_total",
                "Tokens by kind (prompt, completion) and source (candidate, judge).",
                &["kind", "source"],
            ),
            overhead: histogram(
                &r,
                "inferscale_overhead_seconds",
                "The worker's own time: request duration minus the slowest upstream leg (candidates plus judge).",
                &["algorithm"],
                OVERHEAD_BUCKETS,
            ),
            configure: counter(
                &r,
                "inferscale_configure_total",
                "Configuration attempts by outcome.",
                &["outcome"],
            ),
            build_info,
            requests_shed: counter(
                &r,
                "inferscale_requests_shed_total",
                "Requests refused before any upstream call: 429 over an in-flight limit (reason global_limit or client_limit), 408 for a body not received in time (body_timeout).",
                &["reason"],
            ),
            admitted_in_flight: gauge(
                &r,
                "inferscale_admitted_requests_in_flight",
                "Requests holding an admission slot (streams until their last frame).",
            ),
            clients_in_flight: gauge(
                &r,
                "inferscale_clients_in_flight",
                "Distinct clients (API keys, or peer addresses) with admitted requests.",
            ),
            connections_open: gauge(
                &r,
                "inferscale_connections_open",
                "Open client connections.",
            ),
            search: SearchMetrics::register(&r),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Pre-resolved handles for one upstream's calls, so the hot path skips the label lookup.
    pub fn upstream(&self, provider: &str, model: &str, role: &'static str) -> UpstreamMetrics {
        UpstreamMetrics {
            duration: self
                .upstream_duration
                .with_label_values(&[provider, model, role]),
            ok: self
                .upstream_requests
                .with_label_values(&[provider, model, role, "200"]),
            requests: self.upstream_requests.clone(),
            labels: [provider.to_owned(), model.to_owned(), role.to_owned()],
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Metric handles of one (provider, model, role).
#[derive(Clone)]
pub struct UpstreamMetrics {
    pub duration: Histogram,
    ok: prometheus::IntCounter,
    requests: IntCounterVec,
    labels: [String; 3],
}

impl UpstreamMetrics {
    pub fn record(&self, status: Option<&str>, seconds: f64) {
        self.duration.observe(seconds);
        match status {
            None => self.ok.inc(),
            Some(s) => self
                .requests
                .with_label_values(&[&self.labels[0], &self.labels[1], &self.labels[2], s])
                .inc(),
        }
    }
}

// ---- Step-wise search (issue 9): particle filtering, beam search, PRM best-of-n ----

const STEP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Metrics of step-wise search, labelled by algorithm (`particle-filtering`, `beam-search`,
/// `best-of-n`) and, for PRM calls, outcome (`ok`, `error`).
#[derive(Clone)]
pub struct SearchMetrics {
    /// Search steps a request ran.
    pub steps: HistogramVec,
    /// PRM calls by outcome.
    pub reward_calls: IntCounterVec,
    /// PRM call latency, retries included.
    pub reward_duration: HistogramVec,
    /// Particles extended in a step.
    pub live_particles: HistogramVec,
    /// Resampling (particle filtering) or beam selection events.
    pub resamplings: IntCounterVec,
    /// Requests that fell back to a majority vote because the PRM failed.
    pub reward_fallbacks: IntCounterVec,
}

impl SearchMetrics {
    fn register(r: &Registry) -> Self {
        Self {
            steps: histogram(
                r,
                "inferscale_search_steps",
                "Steps a step-wise search request ran.",
                &["algorithm"],
                STEP_BUCKETS,
            ),
            reward_calls: counter(
                r,
                "inferscale_reward_calls_total",
                "Process reward model calls (one per search step), by outcome.",
                &["algorithm", "outcome"],
            ),
            reward_duration: histogram(
                r,
                "inferscale_reward_call_duration_seconds",
                "Latency of one process reward model call, retries included.",
                &["algorithm"],
                LATENCY_BUCKETS,
            ),
            live_particles: histogram(
                r,
                "inferscale_search_live_particles",
                "Particles extended in one search step.",
                &["algorithm"],
                BUDGET_BUCKETS,
            ),
            resamplings: counter(
                r,
                "inferscale_search_resamplings_total",
                "Resampling (particle filtering) or beam selection events.",
                &["algorithm"],
            ),
            reward_fallbacks: counter(
                r,
                "inferscale_reward_fallbacks_total",
                "Requests answered by a majority vote because the process reward model failed.",
                &["algorithm"],
            ),
        }
    }
}
