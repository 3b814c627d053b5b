//! `POST /v1/chat/completions`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::AppState;
use super::error::ApiError;
use super::metadata::Metadata;
use super::request::{ChatRequest, parse_budget_header, parse_chat};
use super::response::{
    ChatCompletion, Choice, StreamHead, error_frames, finish_reason, keep_alive, normalise_message,
};
use crate::algorithms::vote::VoteSettings;
use crate::algorithms::{self, Outcome, stepwise};
use crate::config::AlgorithmName;
use crate::config::stepwise::check_beam_budget;
use crate::metrics::Metrics;
use crate::plan::{self, AlgorithmChoice, AlgorithmDefaults, BudgetPolicy, Plan, PlanSettings};
use crate::runtime::Runtime;

/// How often a waiting stream sends an SSE comment.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(10);

/// A request that passed validation.
struct Job {
    rt: Arc<Runtime>,
    req: ChatRequest,
    budget: u32,
    plan: Plan,
    /// The algorithm this request runs: the endpoint's, or the request's override.
    choice: AlgorithmChoice,
    /// The vote settings when the request changed `tool_vote`; else the endpoint's apply.
    vote: Option<VoteSettings>,
}

pub async fn chat_completions(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut guard = RequestGuard::new(app.metrics.clone());
    let job = match prepare(&app, &headers, body).await {
        Ok(job) => job,
        Err(e) => {
            guard.finish(e.outcome());
            return e.into_response();
        }
    };
    guard.algorithm = label(&job);
    app.metrics
        .budget
        .with_label_values(&[guard.algorithm])
        .observe(f64::from(job.budget));
    if job.req.stream {
        stream(app, job, guard)
    } else {
        match run(&app.metrics, &job).await {
            Ok(outcome) => {
                let overhead = guard
                    .started
                    .elapsed()
                    .saturating_sub(outcome.upstream_time);
                let upstream_us = outcome.upstream_time.as_micros() as u64;
                let mut resp = completion(&job, outcome);
                // Lets a load generator split its latency into upstream time and the worker's own.
                resp.headers_mut()
                    .insert("x-inferscale-upstream-us", HeaderValue::from(upstream_us));
                guard.finish_ok(overhead);
                resp
            }
            Err(e) => {
                guard.finish(e.outcome());
                e.into_response()
            }
        }
    }
}

fn label(job: &Job) -> &'static str {
    match (job.budget, job.choice.algorithm) {
        (1, _) => "single",
        (_, a) => a.as_str(),
    }
}

async fn prepare(app: &AppState, headers: &HeaderMap, body: Body) -> Result<Job, ApiError> {
    app.access.check_client(headers)?;
    let bytes = super::read_body(body, app.max_body_bytes).await?;
    let mut req = parse_chat(&bytes)?;
    let rt = app.runtime.load_full().ok_or(ApiError::NotConfigured)?;
    if !rt.serves(&req.model) {
        return Err(ApiError::ModelNotFound {
            model: req.model,
            available: rt.model.clone(),
        });
    }
    let header_budget = headers
        .get("x-its-budget")
        .map(|h| parse_budget_header(h.as_bytes()))
        .transpose()?;
    let policy = BudgetPolicy {
        default: rt.default_budget,
        max: rt.max_budget,
    };
    let budget = plan::resolve_budget(header_budget, req.budget, policy)?;
    let defaults = AlgorithmDefaults {
        algorithm: rt.algorithm,
        tool_vote: rt.vote.tool_vote,
        adaptive: rt.adaptive.as_ref(),
        allowed: &rt.allow_request_override,
        has_judge: rt.judge.is_some(),
        max_budget: rt.max_budget,
    };
    let choice = plan::choose_algorithm(req.algorithm.as_ref(), &defaults, budget)
        .map_err(|e| ApiError::bad_request(e.message, Some(e.param)))?;
    check_stepwise_request(&rt, &choice, &req.forward, budget)?;
    let vote = (choice.tool_vote != rt.vote.tool_vote).then(|| VoteSettings {
        tool_vote: choice.tool_vote,
        ..rt.vote.clone()
    });
    let settings = PlanSettings {
        algorithm: choice.algorithm,
        provider: rt.provider.as_ref(),
        default_temperature: rt.default_temperature,
        candidates_per_call: rt.candidates_per_call,
    };
    let plan = plan::plan(std::mem::take(&mut req.forward), budget, &settings)
        .map_err(|e| ApiError::bad_request(e.to_string(), None))?;
    Ok(Job {
        rt,
        req,
        budget,
        plan,
        choice,
        vote,
    })
}

/// The rules of a request to an endpoint that scores with a process reward model: no tools
/// (step-wise search is for text reasoning), and for beam search a budget that is a multiple of
/// `beam_width`.
fn check_stepwise_request(
    rt: &Runtime,
    choice: &AlgorithmChoice,
    forward: &serde_json::Map<String, Value>,
    budget: u32,
) -> Result<(), ApiError> {
    let Some(setup) = rt.stepwise.as_deref() else {
        return Ok(());
    };
    let alg = choice.algorithm;
    if !(alg.is_stepwise() || alg == AlgorithmName::BestOfN) {
        return Ok(());
    }
    if forward.get("tools").is_some_and(|t| !t.is_null()) {
        return Err(ApiError::bad_request(
            format!(
                "{} with a process reward model is for text reasoning and cannot use tools; send the request without `tools`",
                alg.as_str()
            ),
            Some("tools".to_owned()),
        ));
    }
    if alg == AlgorithmName::BeamSearch
        && let Some(width) = setup.settings.beam_width
    {
        check_beam_budget(budget, width)
            .map_err(|message| ApiError::bad_request(message, Some("budget".to_owned())))?;
    }
    Ok(())
}

/// Runs the algorithm under the request deadline (`upstream.request_timeout_secs`), which bounds
/// the whole fan-out and the judging; when it passes, the algorithm's future is dropped, which
/// aborts every upstream call still in flight.
async fn run(metrics: &Metrics, job: &Job) -> Result<Outcome, ApiError> {
    let deadline = job.rt.request_timeout;
    let mut inputs = job.rt.algorithm_inputs();
    inputs.algorithm = job.choice.algorithm;
    inputs.adaptive = job.choice.adaptive;
    if let Some(vote) = &job.vote {
        inputs.vote = vote;
    }
    let stepwise = job.rt.stepwise.as_deref();
    let work = async {
        match (stepwise, job.choice.algorithm, &job.plan.forward) {
            (Some(setup), alg, Some(forward)) if alg.is_stepwise() => {
                stepwise::run(&inputs, setup, forward, job.budget, metrics).await
            }
            (Some(setup), AlgorithmName::BestOfN, _) => {
                // Best-of-n with a PRM generates and votes like any best-of-n without a judge;
                // the PRM then picks among the candidates.
                inputs.judge = None;
                let outcome = algorithms::run(
                    &inputs,
                    &job.plan.calls,
                    &job.plan.sizes,
                    job.budget,
                    &job.plan.context,
                    metrics,
                )
                .await?;
                Ok(stepwise::run_prm_best_of_n(setup, outcome, &job.plan.context, metrics).await)
            }
            _ => {
                algorithms::run(
                    &inputs,
                    &job.plan.calls,
                    &job.plan.sizes,
                    job.budget,
                    &job.plan.context,
                    metrics,
                )
                .await
            }
        }
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => Err(ApiError::UpstreamTimeout(format!(
            "no answer within the request deadline of {}s (upstream.request_timeout_secs)",
            deadline.as_secs_f64()
        ))),
    }
}

fn completion(job: &Job, mut outcome: Outcome) -> Response {
    let metadata = (!job.req.return_response_only).then(|| Metadata::from_outcome(&outcome));
    let (message, finish, logprobs) = take_winner(&mut outcome);
    let id = format!("chatcmpl-its-{}", crate::rand::hex(24));
    let body = ChatCompletion {
        object: "chat.completion",
        created: now(),
        model: job.req.model.clone(),
        choices: vec![Choice {
            index: 0,
            message,
            logprobs,
            finish_reason: finish.to_owned(),
        }],
        usage: outcome.usage.into(),
        system_fingerprint: outcome.system_fingerprint,
        metadata,
        id,
    };
    let mut resp = Json(&body).into_response();
    add_headers(resp.headers_mut(), &body.id, job.budget);
    resp
}

/// Moves the selected candidate out of the outcome (no copy) as a well-formed assistant message,
/// with its finish reason and logprobs.
fn take_winner(outcome: &mut Outcome) -> (Value, &'static str, Option<Value>) {
    let finish = finish_reason(outcome.winner());
    let winner = outcome.candidates.swap_remove(outcome.selected);
    (
        normalise_message(winner.message, &mut tool_call_id),
        finish,
        winner.logprobs,
    )
}

fn add_headers(h: &mut HeaderMap, id: &str, budget: u32) {
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("x-request-id", v);
    }
    h.insert("x-its-budget", HeaderValue::from(budget));
}

fn tool_call_id() -> String {
    format!("call_{}", crate::rand::hex(24))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Streams the selected answer. The role chunk goes out at once and keep-alive comments while
/// the candidates are generated; the algorithm runs in a task that is aborted — cancelling every
/// upstream call — when the client goes away.
fn stream(app: Arc<AppState>, job: Job, mut guard: RequestGuard) -> Response {
    let id = format!("chatcmpl-its-{}", crate::rand::hex(24));
    let created = now();
    let job_budget = job.budget;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let head_id = id.clone();
    let task = tokio::spawn(async move {
        let head = StreamHead {
            id: &head_id,
            created,
            model: &job.req.model,
        };
        if tx.send(head.role_chunk()).await.is_err() {
            return;
        }
        let work = run(&app.metrics, &job);
        tokio::pin!(work);
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + KEEP_ALIVE_EVERY,
            KEEP_ALIVE_EVERY,
        );
        let result = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = ticks.tick() => if tx.send(keep_alive()).await.is_err() { return },
            }
        };
        let frames: Vec<Bytes> = match result {
            Ok(mut outcome) => {
                let overhead = guard
                    .started
                    .elapsed()
                    .saturating_sub(outcome.upstream_time);
                let (message, finish, _) = take_winner(&mut outcome);
                let usage = job.req.include_usage.then(|| outcome.usage.into());
                guard.finish_ok(overhead);
                head.answer_chunks(&message, finish, usage)
            }
            Err(e) => {
                guard.finish(e.outcome());
                error_frames(&e.body()).to_vec()
            }
        };
        for f in frames {
            if tx.send(f).await.is_err() {
                return;
            }
        }
    });
    let body = Body::from_stream(AbortOnDrop {
        rx,
        task: task.abort_handle(),
    });
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    add_headers(h, &id, job_budget);
    resp
}

/// The SSE body: frames from the algorithm task, which is aborted if the body is dropped.
struct AbortOnDrop {
    rx: mpsc::Receiver<Bytes>,
    task: AbortHandle,
}

impl futures_util::Stream for AbortOnDrop {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a request in flight and records its outcome exactly once — as `cancelled` if the
/// client went away before it finished.
struct RequestGuard {
    metrics: Arc<Metrics>,
    started: Instant,
    algorithm: &'static str,
    done: bool,
}

impl RequestGuard {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.requests_in_flight.inc();
        Self {
            metrics,
            started: Instant::now(),
            algorithm: "none",
            done: false,
        }
    }

    fn finish(&mut self, outcome: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        self.metrics
            .requests
            .with_label_values(&[self.algorithm, outcome])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[self.algorithm, outcome])
            .observe(secs);
        self.done = true;
    }

    fn finish_ok(&mut self, overhead: Duration) {
        self.metrics
            .overhead
            .with_label_values(&[self.algorithm])
            .observe(overhead.as_secs_f64());
        self.finish("success");
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.metrics.requests_in_flight.dec();
        if !self.done {
            self.finish("cancelled");
        }
    }
}
