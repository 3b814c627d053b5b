//! HTTP surface: thin handlers over the plain functions in the other modules.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::converse;
use crate::engine::{
    Conversation, FaultAction, FaultOutcome, Resolved, evaluate_faults, prompt_tokens, resolve,
    sample_latency_ms, select_answers, select_hashed,
};
use crate::judge::{self, JudgeMode};
use crate::openai::{self, RenderCtx, Usage};
use crate::scenario::{Answer, AnswerDraw, Scenario};
use crate::sigv4::{self, RequestParts, VerifyError};
use crate::state::{AppState, MAX_RECORDED, RequestGuard, Stats};
use crate::stepwise::{self, Steps};
use crate::{openai::ChatRequest, pooling};

pub const SERVICE_TIME_HEADER: &str = "x-mock-service-time-us";
const BODY_LIMIT: usize = 64 * 1024 * 1024;
const MAX_WAIT_MS: u64 = 120_000;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/model/{model_id}/converse", post(converse_handler))
        .route("/pooling", post(pooling_handler))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/_mock/scenario", get(get_scenario).put(put_scenario))
        .route("/_mock/reset", post(reset))
        .route("/_mock/stats", get(stats))
        .route("/_mock/requests", get(requests))
        .route("/_mock/wait", get(wait))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(service_time))
        .with_state(state)
}

/// Adds `x-mock-service-time-us` (time until the response head was ready,
/// injected latency included) to every response.
async fn service_time(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let mut resp = next.run(req).await;
    let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    resp.headers_mut()
        .insert(SERVICE_TIME_HEADER, HeaderValue::from(us));
    resp
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn header_map_json(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

/// Parse the body once; the raw text is kept for recording when it is not JSON.
fn parse_body(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice::<Value>(body).map_err(|_| String::from_utf8_lossy(body).into_owned())
}

fn record_request(
    st: &AppState,
    seq: u64,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Result<Value, String>,
) {
    let body = match body {
        Ok(v) => v.clone(),
        Err(raw) => Value::String(raw.clone()),
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    st.record(json!({
        "seq": seq,
        "path": uri.path(),
        "query": uri.query(),
        "has_authorization": authorization.is_some(),
        "authorization": authorization,
        "headers": header_map_json(headers),
        "body": body,
    }));
}

/// What the scenario decided for one request, after latency was served.
struct Decision {
    judge: Option<JudgeMode>,
    action: Option<FaultAction>,
    seq: u64,
}

/// Judge detection, fault evaluation and injected latency, shared by both
/// APIs.
async fn decide(
    st: &AppState,
    guard: &RequestGuard,
    scn: &Scenario,
    conv: &Conversation,
) -> Decision {
    let judge = judge::detect(&scn.judge, &conv.messages);
    let seqs = st.classify(guard, judge.is_some());
    let (latency_ms, outcome): (u64, FaultOutcome) = st.with_rng(|rng| {
        (
            sample_latency_ms(&scn.latency, rng),
            evaluate_faults(&scn.faults, seqs, judge.is_some(), rng),
        )
    });
    st.add_faults(outcome.fired);
    let total = latency_ms.saturating_add(outcome.delay_ms);
    if total > 0 {
        tokio::time::sleep(Duration::from_millis(total)).await;
    }
    Decision {
        judge,
        action: outcome.action,
        seq: guard.seq,
    }
}

/// The answers for a request: judge replies or scenario answers.
fn answer_choices(
    st: &AppState,
    scn: &Scenario,
    conv: &Conversation,
    d: &Decision,
    n: usize,
) -> Vec<Resolved> {
    match d.judge {
        Some(mode) => {
            let text = judge::reply(&scn.judge, mode, &conv.messages);
            vec![Resolved::text(text); n]
        }
        None => draw_answers(st, scn, conv, n)
            .iter()
            .enumerate()
            .map(|(i, a)| resolve(a, conv.first_tool.as_deref(), &format!("mock{}c{i}", d.seq)))
            .collect(),
    }
}

fn draw_answers(st: &AppState, scn: &Scenario, conv: &Conversation, n: usize) -> Vec<Answer> {
    match (scn.answer_draw, conv.answer_stream.as_deref()) {
        (AnswerDraw::Hashed, Some(stream)) => {
            let first = st.take_stream_draws(stream, n as u64);
            select_hashed(scn, conv, st.seed(), stream, first, n)
        }
        _ => select_answers(scn, conv, &st.answer_cursor, &st.tool_cursor, n),
    }
}

fn retry_after(resp: &mut Response, secs: Option<u64>) {
    if let Some(s) = secs {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
}

fn custom_body_response(status: StatusCode, body: &str) -> Response {
    let ct = if serde_json::from_str::<Value>(body).is_ok() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    (status, [(header::CONTENT_TYPE, ct)], body.to_string()).into_response()
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

// ---------------------------------------------------------------- OpenAI

async fn chat(
    State(st): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut guard = RequestGuard::start(&st);
    let parsed = parse_body(&body);
    record_request(&st, guard.seq, &uri, &headers, &parsed);
    let resp = chat_inner(&st, &guard, parsed).await;
    guard.finish(resp.status().as_u16());
    resp
}

fn openai_error(status: StatusCode, message: &str) -> Response {
    let (kind, code) = openai::error_kind(status.as_u16());
    json_response(status, &openai::error_body(message, kind, code))
}

async fn chat_inner(
    st: &AppState,
    guard: &RequestGuard,
    parsed: Result<Value, String>,
) -> Response {
    let Ok(value) = parsed else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)",
        );
    };
    let req = match openai::parse_chat_request(&value) {
        Ok(r) => r,
        Err(msg) => return openai_error(StatusCode::BAD_REQUEST, &msg),
    };
    let scn = st.scenario();
    let d = decide(st, guard, &scn, &req.conv).await;
    match &d.action {
        Some(FaultAction::Hang) => return std::future::pending().await,
        Some(FaultAction::Status {
            status,
            body,
            retry_after_s,
        }) => {
            let code = status_code(*status);
            let mut resp = match body {
                Some(b) => custom_body_response(code, b),
                None => openai_error(code, &format!("mock-llm injected fault (HTTP {status})")),
            };
            retry_after(&mut resp, *retry_after_s);
            return resp;
        }
        Some(FaultAction::Malformed) => {
            return if req.stream {
                sse_response(vec![openai::MALFORMED_SSE.to_string()], 0)
            } else {
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    openai::MALFORMED_BODY,
                )
                    .into_response()
            };
        }
        None => {}
    }
    if let Some(steps) = &scn.steps
        && d.judge.is_none()
        && !req.conv.has_tools
    {
        return step_reply(st, &scn, steps, &req, &value, d.seq);
    }
    let choices = answer_choices(st, &scn, &req.conv, &d, req.n);
    completion_reply(&scn, &req, d.seq, &choices, None)
}

/// A chat completion of `choices`, as one JSON body or as SSE when the request streams; with
/// vLLM's `stop_reason` next to each `finish_reason` when given (step mode).
fn completion_reply(
    scn: &Scenario,
    req: &ChatRequest,
    seq: u64,
    choices: &[Resolved],
    stop_reasons: Option<&[Value]>,
) -> Response {
    let ctx = RenderCtx {
        id: format!("chatcmpl-mock-{seq}"),
        created: unix_now(),
        model: req.model.clone(),
    };
    let usage = Usage::for_choices(prompt_tokens(&req.conv.messages), choices);
    if req.stream {
        let mut events = openai::render_sse(
            &ctx,
            choices,
            usage,
            req.include_usage,
            scn.stream.chunk_chars,
        );
        if let Some(reasons) = stop_reasons {
            events = events
                .into_iter()
                .map(|e| with_stop_reason_sse(e, reasons))
                .collect();
        }
        return sse_response(events, scn.stream.chunk_delay_ms);
    }
    let mut v = openai::render_completion(&ctx, choices, usage);
    if let (Some(reasons), Some(arr)) = (stop_reasons, v["choices"].as_array_mut()) {
        for (c, reason) in arr.iter_mut().zip(reasons) {
            c["stop_reason"] = reason.clone();
        }
    }
    json_response(StatusCode::OK, &v)
}

/// Step mode: one step (or the rest of the solution) per choice, with
/// vLLM's `stop_reason` next to each `finish_reason`.
fn step_reply(
    st: &AppState,
    scn: &Scenario,
    steps: &Steps,
    req: &ChatRequest,
    body: &Value,
    seq: u64,
) -> Response {
    let step_req = match stepwise::parse_step_request(body) {
        Ok(r) => r,
        Err(msg) => return openai_error(StatusCode::BAD_REQUEST, &msg),
    };
    let replies: Vec<stepwise::StepReply> = st.with_rng(|rng| {
        (0..req.n)
            .map(|_| stepwise::generate(steps, &step_req, rng))
            .collect()
    });
    let choices: Vec<Resolved> = replies
        .iter()
        .map(|r| Resolved {
            finish: r.finish,
            ..Resolved::text(r.text.clone())
        })
        .collect();
    let stop_reasons: Vec<Value> = replies
        .iter()
        .map(|r| r.stop_reason.clone().map_or(Value::Null, Value::String))
        .collect();
    completion_reply(scn, req, seq, &choices, Some(&stop_reasons))
}

/// Add `stop_reason` to the finish chunk of an SSE event.
fn with_stop_reason_sse(event: String, stop_reasons: &[Value]) -> String {
    let Some(data) = event
        .strip_prefix("data: ")
        .and_then(|d| d.strip_suffix("\n\n"))
    else {
        return event;
    };
    let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
        return event;
    };
    let Some(choice) = chunk["choices"].get_mut(0) else {
        return event;
    };
    if choice["finish_reason"].is_null() {
        return event;
    }
    let index = choice["index"].as_u64().unwrap_or(0) as usize;
    choice["stop_reason"] = stop_reasons.get(index).cloned().unwrap_or(Value::Null);
    format!("data: {chunk}\n\n")
}

fn sse_response(events: Vec<String>, delay_ms: u64) -> Response {
    let stream = futures_util::stream::unfold(
        (events.into_iter(), true),
        move |(mut it, first)| async move {
            let event = it.next()?;
            if !first && delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            Some((Ok::<_, Infallible>(Bytes::from(event)), (it, false)))
        },
    );
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

// ---------------------------------------------------------------- Bedrock

fn aws_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    let mut resp = json_response(status, &json!({ "message": message }));
    if let Ok(v) = HeaderValue::from_str(error_type) {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    resp
}

async fn converse_handler(
    State(st): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut guard = RequestGuard::start(&st);
    let parsed = parse_body(&body);
    record_request(&st, guard.seq, &uri, &headers, &parsed);
    let start = Instant::now();
    let mut resp = match check_signature(&st, &method, &uri, &headers, &body) {
        Ok(()) => converse_inner(&st, &guard, parsed, start).await,
        Err(e) => signature_rejection(&st, &e),
    };
    if let Ok(v) = HeaderValue::from_str(&format!("mock-{}", guard.seq)) {
        resp.headers_mut().insert("x-amzn-requestid", v);
    }
    guard.finish(resp.status().as_u16());
    resp
}

/// Verify SigV4 when credentials are configured (otherwise accept).
fn check_signature(
    st: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), VerifyError> {
    let Some(creds) = st.aws_credentials() else {
        return Ok(());
    };
    let parts = RequestParts {
        method: method.as_str(),
        raw_path: uri.path(),
        raw_query: uri.query().unwrap_or(""),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
    sigv4::verify(&parts, &creds, "bedrock", now)
}

/// 403 in Bedrock's shape; on a mismatch the canonical request and string to
/// sign are logged to stderr to help debug the client's signer.
fn signature_rejection(st: &AppState, e: &VerifyError) -> Response {
    st.add_signature_failure();
    if let VerifyError::Mismatch {
        canonical_request,
        string_to_sign,
    } = e
    {
        eprintln!(
            "mock-llm: SigV4 mismatch\n--- canonical request ---\n{canonical_request}\n--- string to sign ---\n{string_to_sign}\n---"
        );
    }
    aws_error(StatusCode::FORBIDDEN, e.error_type(), &e.message())
}

async fn converse_inner(
    st: &AppState,
    guard: &RequestGuard,
    parsed: Result<Value, String>,
    start: Instant,
) -> Response {
    let validation = |msg: &str| aws_error(StatusCode::BAD_REQUEST, "ValidationException", msg);
    let Ok(value) = parsed else {
        return validation("Malformed input request, please reformat your input and try again.");
    };
    let req = match converse::parse_converse_request(&value) {
        Ok(r) => r,
        Err(msg) => return validation(&msg),
    };
    let scn = st.scenario();
    let d = decide(st, guard, &scn, &req.conv).await;
    match &d.action {
        Some(FaultAction::Hang) => return std::future::pending().await,
        Some(FaultAction::Status {
            status,
            body,
            retry_after_s,
        }) => {
            let code = status_code(*status);
            let mut resp = match body {
                Some(b) => custom_body_response(code, b),
                None => aws_error(
                    code,
                    converse::error_type(*status),
                    converse::default_error_message(*status),
                ),
            };
            retry_after(&mut resp, *retry_after_s);
            return resp;
        }
        Some(FaultAction::Malformed) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                openai::MALFORMED_BODY,
            )
                .into_response();
        }
        None => {}
    }
    let choices = answer_choices(st, &scn, &req.conv, &d, 1);
    let Some(answer) = choices.first() else {
        return aws_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            "mock-llm: scenario has no answers",
        );
    };
    let latency_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    json_response(
        StatusCode::OK,
        &converse::render_converse(answer, prompt_tokens(&req.conv.messages), latency_ms),
    )
}

// ---------------------------------------------------------------- reward model

fn vllm_error(status: StatusCode, message: &str) -> Response {
    json_response(status, &pooling::error_body(status.as_u16(), message))
}

/// `POST /pooling`: a process reward model as vLLM's pooling runner serves it.
async fn pooling_handler(
    State(st): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seq = st.next_pooling_seq();
    let parsed = parse_body(&body);
    record_request(&st, seq, &uri, &headers, &parsed);
    let Ok(value) = parsed else {
        return vllm_error(StatusCode::BAD_REQUEST, "request body is not valid JSON");
    };
    let req = match pooling::parse_request(&value) {
        Ok(r) => r,
        Err(msg) => return vllm_error(StatusCode::BAD_REQUEST, &msg),
    };
    let scn = st.scenario();
    let prm = scn.prm.clone().unwrap_or_default();
    if let Some(model) = &prm.model
        && *model != req.model
    {
        return vllm_error(
            StatusCode::NOT_FOUND,
            &format!("The model `{}` does not exist.", req.model),
        );
    }
    let outcome = st.with_rng(|rng| pooling::evaluate_faults(&prm.faults, seq, rng));
    st.add_faults(outcome.fired);
    if outcome.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(outcome.delay_ms)).await;
    }
    let mut rows: Vec<Vec<[f64; 2]>> = req
        .inputs
        .iter()
        .map(|text| pooling::score_input(&prm, st.seed(), text))
        .collect();
    match outcome.action {
        Some(pooling::PoolingAction::Hang) => return std::future::pending().await,
        Some(pooling::PoolingAction::Status { status, body }) => {
            let code = status_code(status);
            return match body {
                Some(b) => custom_body_response(code, &b),
                None => vllm_error(code, &format!("mock-llm injected fault (HTTP {status})")),
            };
        }
        Some(pooling::PoolingAction::Malformed) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"id":"pool-malformed","object":"list","data":[{"index":0,"object":"pool"#,
            )
                .into_response();
        }
        Some(pooling::PoolingAction::WrongRows) => {
            if let Some(first) = rows.first_mut()
                && first.pop().is_none()
            {
                first.push([0.5, 0.5]);
            }
        }
        None => {}
    }
    let prompt_tokens = req
        .inputs
        .iter()
        .map(|t| crate::engine::tokens_for_chars(t.chars().count()))
        .sum();
    json_response(
        StatusCode::OK,
        &pooling::render_response(seq, unix_now(), &req.model, &rows, prompt_tokens),
    )
}

// ---------------------------------------------------------------- misc + control

async fn models(State(st): State<Arc<AppState>>) -> Response {
    let data: Vec<Value> = st
        .scenario()
        .models
        .iter()
        .map(|id| json!({ "id": id, "object": "model", "created": 0, "owned_by": "mock-llm" }))
        .collect();
    json_response(StatusCode::OK, &json!({ "object": "list", "data": data }))
}

async fn health() -> Response {
    json_response(StatusCode::OK, &json!({ "status": "ok" }))
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let msg = format!("mock-llm: unknown route {method} {}", uri.path());
    json_response(
        StatusCode::NOT_FOUND,
        &openai::error_body(&msg, "invalid_request_error", None),
    )
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

async fn get_scenario(State(st): State<Arc<AppState>>) -> Response {
    json_response(StatusCode::OK, &to_json(&*st.scenario()))
}

async fn put_scenario(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body);
    match Scenario::parse(&text) {
        Ok(s) => {
            let v = to_json(&s);
            st.set_scenario(s);
            json_response(StatusCode::OK, &v)
        }
        Err(e) => json_response(StatusCode::BAD_REQUEST, &json!({ "error": e })),
    }
}

async fn reset(State(st): State<Arc<AppState>>) -> Response {
    st.reset();
    json_response(StatusCode::OK, &to_json(&st.stats()))
}

async fn stats(State(st): State<Arc<AppState>>) -> Response {
    json_response(StatusCode::OK, &to_json(&st.stats()))
}

#[derive(Debug, Deserialize)]
struct RequestsQuery {
    limit: Option<usize>,
}

async fn requests(State(st): State<Arc<AppState>>, Query(q): Query<RequestsQuery>) -> Response {
    let reqs = st.recorded(q.limit.unwrap_or(MAX_RECORDED));
    json_response(StatusCode::OK, &json!({ "requests": reqs }))
}

#[derive(Debug, Default, Deserialize)]
struct WaitQuery {
    in_flight: Option<u64>,
    cancelled: Option<u64>,
    completed: Option<u64>,
    requests: Option<u64>,
    judge_requests: Option<u64>,
    pooling_requests: Option<u64>,
    timeout_ms: Option<u64>,
}

impl WaitQuery {
    /// All given thresholds reached (`>=`).
    fn satisfied(&self, s: &Stats) -> bool {
        [
            (self.in_flight, s.in_flight),
            (self.cancelled, s.cancelled),
            (self.completed, s.completed),
            (self.requests, s.requests),
            (self.judge_requests, s.judge_requests),
            (self.pooling_requests, s.pooling_requests),
        ]
        .iter()
        .all(|(want, have)| want.is_none_or(|w| *have >= w))
    }
}

async fn wait(State(st): State<Arc<AppState>>, Query(q): Query<WaitQuery>) -> Response {
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(5_000).min(MAX_WAIT_MS));
    let deadline = tokio::time::Instant::now() + timeout;
    let (stats, ok) = st.wait_for(|s| q.satisfied(s), deadline).await;
    let mut body = to_json(&stats);
    body["timed_out"] = Value::Bool(!ok);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::REQUEST_TIMEOUT
    };
    json_response(status, &body)
}

#[cfg(test)]
mod tests {
    //! End-to-end tests over real HTTP on 127.0.0.1 (in-process server, tiny
    //! blocking HTTP/1.1 client).
    use super::*;
    use crate::sigv4::{Credentials, authorization_header, format_amz_date};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn json(&self) -> Value {
            serde_json::from_str(&self.body).unwrap()
        }
    }

    fn dechunk(mut raw: &str) -> String {
        let mut out = String::new();
        loop {
            let (size, rest) = raw.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                return out;
            }
            out.push_str(&rest[..n]);
            raw = &rest[n + 2..];
        }
    }

    fn request_bytes(
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
        close: bool,
    ) -> String {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\n",
            body.len()
        );
        if close {
            req.push_str("connection: close\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        req
    }

    fn http_blocking(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Resp {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request_bytes(method, path, headers, body, true).as_bytes())
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v == "chunked");
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn call<K: AsRef<str>, V: AsRef<str>>(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(K, V)],
        body: &str,
    ) -> Resp {
        let (m, p, b) = (method.to_string(), path.to_string(), body.to_string());
        let h: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            http_blocking(addr, &m, &p, &h, &b)
        })
        .await
        .unwrap()
    }

    const NO_HEADERS: &[(&str, &str)] = &[];

    async fn start(scenario: Scenario, aws: Option<Credentials>) -> SocketAddr {
        let state = AppState::new(scenario, 7, aws);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
        addr
    }

    const ASK: &str =
        r#"{"model":"gpt-test","messages":[{"role":"user","content":"What is 847*293+156?"}]}"#;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chat_completion_round_trip() {
        let addr = start(Scenario::default(), None).await;
        let r = call(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-test")],
            ASK,
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(
            r.header(SERVICE_TIME_HEADER)
                .unwrap()
                .parse::<u64>()
                .is_ok()
        );
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-test");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "The answer is 248327."
        );
        assert_eq!(v["usage"]["prompt_tokens"], 5);
        // Second path alias, n = 2 continues the cycle.
        let body = ASK.replace("\"messages\"", "\"n\":2,\"messages\"");
        let v = call(addr, "POST", "/chat/completions", NO_HEADERS, &body)
            .await
            .json();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "The answer is 248327."
        );
        assert_eq!(
            v["choices"][1]["message"]["content"],
            "I believe it is 248,317."
        );

        let recorded = call(addr, "GET", "/_mock/requests?limit=2", NO_HEADERS, "")
            .await
            .json();
        let reqs = recorded["requests"].as_array().unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0]["authorization"], "Bearer sk-test");
        assert_eq!(reqs[0]["has_authorization"], true);
        assert_eq!(reqs[1]["has_authorization"], false);
        assert_eq!(reqs[1]["body"]["n"], 2);

        let stats = call(addr, "GET", "/_mock/stats", NO_HEADERS, "")
            .await
            .json();
        assert_eq!(stats["requests"], 2);
        assert_eq!(stats["completed"], 2);
        assert_eq!(stats["by_status"]["200"], 2);

        let bad = call(addr, "POST", "/v1/chat/completions", NO_HEADERS, "{").await;
        assert_eq!(bad.status, 400);
        assert_eq!(bad.json()["error"]["type"], "invalid_request_error");

        assert_eq!(
            call(addr, "GET", "/health", NO_HEADERS, "").await.status,
            200
        );
        let models = call(addr, "GET", "/v1/models", NO_HEADERS, "").await.json();
        assert_eq!(models["data"][0]["id"], "mock-model");
        assert_eq!(call(addr, "GET", "/nope", NO_HEADERS, "").await.status, 404);

        let reset = call(addr, "POST", "/_mock/reset", NO_HEADERS, "")
            .await
            .json();
        assert_eq!(reset["requests"], 0);
        let v = call(addr, "POST", "/v1/chat/completions", NO_HEADERS, ASK)
            .await
            .json();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "The answer is 248327."
        );
        assert_eq!(v["id"], "chatcmpl-mock-1");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streaming_tool_calls_use_request_tool_name() {
        let addr = start(Scenario::default(), None).await;
        let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},
            "messages":[{"role":"user","content":"What is 847*293+156?"}],
            "tools":[{"type":"function","function":{"name":"calc","parameters":{}}}]}"#;
        let r = call(addr, "POST", "/v1/chat/completions", NO_HEADERS, body).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        let events: Vec<&str> = r.body.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(*events.last().unwrap(), "data: [DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
            .collect();
        assert_eq!(
            chunks[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
            "calc"
        );
        let args: String = chunks
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(args, r#"{"expression":"847 * 293 + 156"}"#);
        assert!(
            chunks.last().unwrap()["usage"]["total_tokens"]
                .as_u64()
                .unwrap()
                > 0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn faults_and_latency() {
        let scn = Scenario::parse(
            "latency: {fixed_ms: 30}\nfaults: [{every: 2, status: 429, retry_after_s: 1}, {every: 3, malformed: true}]",
        )
        .unwrap();
        let addr = start(scn, None).await;
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let r = call(addr, "POST", "/v1/chat/completions", NO_HEADERS, ASK).await;
            let us: u64 = r.header(SERVICE_TIME_HEADER).unwrap().parse().unwrap();
            assert!(us >= 30_000, "service time {us}");
            statuses.push((
                r.status,
                r.header("retry-after").map(str::to_string),
                r.body.clone(),
            ));
        }
        assert_eq!(statuses[0].0, 200);
        assert_eq!((statuses[1].0, statuses[1].1.as_deref()), (429, Some("1")));
        assert_eq!(
            serde_json::from_str::<Value>(&statuses[1].2).unwrap()["error"]["code"],
            "rate_limit_exceeded"
        );
        assert_eq!(statuses[2].0, 200);
        assert!(serde_json::from_str::<Value>(&statuses[2].2).is_err());
        let stats = call(addr, "GET", "/_mock/stats", NO_HEADERS, "")
            .await
            .json();
        assert_eq!(stats["faults_injected"], 2);
        assert_eq!(stats["by_status"], json!({"200": 2, "429": 1}));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hung_request_counts_as_cancelled_when_client_leaves() {
        let addr = start(Scenario::parse("faults: [{hang: true}]").unwrap(), None).await;
        let client = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(
                request_bytes("POST", "/v1/chat/completions", NO_HEADERS, ASK, false).as_bytes(),
            )
            .unwrap();
            s
        })
        .await
        .unwrap();
        let w = call(
            addr,
            "GET",
            "/_mock/wait?in_flight=1&timeout_ms=5000",
            NO_HEADERS,
            "",
        )
        .await;
        assert_eq!(w.status, 200);
        assert_eq!(w.json()["in_flight"], 1);
        drop(client);
        let w = call(
            addr,
            "GET",
            "/_mock/wait?cancelled=1&timeout_ms=5000",
            NO_HEADERS,
            "",
        )
        .await;
        assert_eq!(w.status, 200, "{}", w.body);
        let v = w.json();
        assert_eq!(
            (
                v["cancelled"].as_u64(),
                v["in_flight"].as_u64(),
                v["completed"].as_u64()
            ),
            (Some(1), Some(0), Some(0))
        );
        let t = call(
            addr,
            "GET",
            "/_mock/wait?completed=1&timeout_ms=50",
            NO_HEADERS,
            "",
        )
        .await;
        assert_eq!(t.status, 408);
        assert_eq!(t.json()["timed_out"], true);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn judge_calls_and_scenario_control() {
        let addr = start(Scenario::default(), None).await;
        let judge = |answer: &str| {
            json!({"model": "judge", "messages": [
                {"role": "system", "content": "You are an expert evaluator. Reply with JSON {\"reasoning\": str, \"score\": int}."},
                {"role": "user", "content": format!("Question: 847*293+156\nResponse: {answer}")}
            ]})
            .to_string()
        };
        let v = call(
            addr,
            "POST",
            "/v1/chat/completions",
            NO_HEADERS,
            &judge("The answer is 248327."),
        )
        .await
        .json();
        let reply: Value =
            serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
        assert_eq!(reply["score"], 9);
        let v = call(
            addr,
            "POST",
            "/v1/chat/completions",
            NO_HEADERS,
            &judge("248,317"),
        )
        .await
        .json();
        let reply: Value =
            serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
        assert_eq!(reply["score"], 3);
        // Judge calls do not advance the answer cursor.
        let v = call(addr, "POST", "/v1/chat/completions", NO_HEADERS, ASK)
            .await
            .json();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "The answer is 248327."
        );
        let stats = call(addr, "GET", "/_mock/stats", NO_HEADERS, "")
            .await
            .json();
        assert_eq!(stats["judge_requests"], 2);

        let bad = call(
            addr,
            "PUT",
            "/_mock/scenario",
            NO_HEADERS,
            r#"{"answerz": []}"#,
        )
        .await;
        assert_eq!(bad.status, 400);
        assert!(bad.json()["error"].as_str().unwrap().contains("answerz"));
        let put = call(
            addr,
            "PUT",
            "/_mock/scenario",
            NO_HEADERS,
            r#"{"judge": {"raw_reply": "not json"}}"#,
        )
        .await;
        assert_eq!(put.status, 200);
        let got = call(addr, "GET", "/_mock/scenario", NO_HEADERS, "")
            .await
            .json();
        assert_eq!(got["judge"]["raw_reply"], "not json");
        let v = call(
            addr,
            "POST",
            "/v1/chat/completions",
            NO_HEADERS,
            &judge("x"),
        )
        .await
        .json();
        assert_eq!(v["choices"][0]["message"]["content"], "not json");
    }

    /// Headers of a SigV4-signed Converse request as our test client sends
    /// it (the client writes `host: 127.0.0.1`).
    fn signed_headers(path: &str, body: &str, creds: &Credentials) -> Vec<(String, String)> {
        let amz_date = format_amz_date(i64::try_from(unix_now()).unwrap());
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("host".to_string(), "127.0.0.1".to_string()),
            ("x-amz-date".to_string(), amz_date.clone()),
        ];
        let parts = RequestParts {
            method: "POST",
            raw_path: path,
            raw_query: "",
            headers: headers.clone(),
            body: body.as_bytes(),
        };
        let signed = ["content-type", "host", "x-amz-date"].map(String::from);
        let auth = authorization_header(&parts, creds, &amz_date, "us-east-1", "bedrock", &signed)
            .unwrap();
        headers.push(("authorization".to_string(), auth));
        headers.retain(|(k, _)| k != "host");
        headers
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn converse_with_sigv4() {
        let creds = Credentials {
            access_key_id: "AKIDMOCK".into(),
            secret_access_key: "secret/key+1".into(),
            session_token: None,
        };
        let addr = start(Scenario::default(), Some(creds.clone())).await;
        let path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
        let body = r#"{"messages":[{"role":"user","content":[{"text":"What is 847*293+156?"}]}],
            "toolConfig":{"tools":[{"toolSpec":{"name":"calculator","inputSchema":{"json":{"type":"object"}}}}]}}"#;
        let r = call(
            addr,
            "POST",
            path,
            &signed_headers(path, body, &creds),
            body,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["stopReason"], "tool_use");
        let tu = &v["output"]["message"]["content"][0]["toolUse"];
        assert_eq!(tu["name"], "calculator");
        assert_eq!(tu["input"], json!({"expression": "847 * 293 + 156"}));
        assert!(v["usage"]["totalTokens"].as_u64().unwrap() > 0);

        // Wrong secret.
        let mut wrong = creds.clone();
        wrong.secret_access_key = "nope".into();
        let r = call(
            addr,
            "POST",
            path,
            &signed_headers(path, body, &wrong),
            body,
        )
        .await;
        assert_eq!(r.status, 403);
        assert_eq!(
            r.header("x-amzn-errortype"),
            Some("InvalidSignatureException")
        );
        assert!(
            r.json()["message"]
                .as_str()
                .unwrap()
                .starts_with("The request signature we calculated does not match")
        );
        // Unsigned.
        let r = call(
            addr,
            "POST",
            path,
            &[("content-type", "application/json")],
            body,
        )
        .await;
        assert_eq!(r.status, 403);
        assert_eq!(
            r.header("x-amzn-errortype"),
            Some("MissingAuthenticationTokenException")
        );
        let stats = call(addr, "GET", "/_mock/stats", NO_HEADERS, "")
            .await
            .json();
        assert_eq!(stats["signature_failures"], 2);
        // Invalid body, correctly signed: validation error.
        let bad = r#"{"messages":[]}"#;
        let r = call(addr, "POST", path, &signed_headers(path, bad, &creds), bad).await;
        assert_eq!(r.status, 400);
        assert_eq!(r.header("x-amzn-errortype"), Some("ValidationException"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn step_mode_and_pooling_over_http() {
        let scn = Scenario::parse(
            "steps: {count: 2, p_correct: 1.0, answer: \"7\"}\nprm: {model: prm-test, faults: [{every: 3, wrong_rows: true}, {every: 4, status: 500}]}",
        )
        .unwrap();
        let addr = start(scn, None).await;
        let step = |prefix: Option<&str>, stream: bool| {
            let mut messages = vec![json!({"role": "user", "content": "q"})];
            if let Some(p) = prefix {
                messages.push(json!({"role": "assistant", "content": p}));
            }
            json!({"model": "gen", "messages": messages, "stop": ["\n\n"], "max_tokens": 512,
                   "continue_final_message": prefix.is_some(), "add_generation_prompt": false,
                   "stream": stream})
            .to_string()
        };
        let v = call(
            addr,
            "POST",
            "/v1/chat/completions",
            NO_HEADERS,
            &step(None, false),
        )
        .await
        .json();
        let first = v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(first.starts_with("Step 1 (ok): "), "{first}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["choices"][0]["stop_reason"], "\n\n");
        let prefix = format!("{first}\n\n");
        let v = call(
            addr,
            "POST",
            "/v1/chat/completions",
            NO_HEADERS,
            &step(Some(&prefix), false),
        )
        .await
        .json();
        let second = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(second.starts_with("Step 2 (ok): ["), "{second}");
        assert!(
            second.ends_with("] so the final answer is \\boxed{7}."),
            "{second}"
        );
        assert_eq!(v["choices"][0]["stop_reason"], Value::Null);
        // Streaming: the finish chunk carries stop_reason too.
        let r = call(
            addr,
            "POST",
            "/v1/chat/completions",
            NO_HEADERS,
            &step(None, true),
        )
        .await;
        let finish: Vec<Value> = r
            .body
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|c| !c["choices"][0]["finish_reason"].is_null())
            .collect();
        assert_eq!(finish.len(), 1);
        assert_eq!(finish[0]["choices"][0]["stop_reason"], "\n\n");

        let render = |steps: &[&str]| {
            format!(
                "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n{}<|im_end|><|endoftext|>",
                steps
                    .iter()
                    .map(|s| format!("{s}<extra_0>"))
                    .collect::<String>()
            )
        };
        let body = json!({"model": "prm-test", "input": [render(&["Step 1 (ok): a."]),
                                                          render(&["Step 1 (ok): a.", "Step 2 (slip): b."])]})
        .to_string();
        let v = call(addr, "POST", "/pooling", NO_HEADERS, &body)
            .await
            .json();
        assert_eq!(v["object"], "list");
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[0]["data"].as_array().unwrap().len(), 1);
        assert_eq!(data[1]["data"].as_array().unwrap().len(), 2);
        // Same text, same score, in either input.
        assert_eq!(data[0]["data"][0], data[1]["data"][0]);
        assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        let wrong_model = body.replace("prm-test", "other");
        let r = call(addr, "POST", "/pooling", NO_HEADERS, &wrong_model).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["type"], "NotFoundError");
        // Third /pooling request: one row short.
        let v = call(addr, "POST", "/pooling", NO_HEADERS, &body)
            .await
            .json();
        assert_eq!(v["data"][0]["data"].as_array().unwrap().len(), 0);
        let r = call(addr, "POST", "/pooling", NO_HEADERS, &body).await;
        assert_eq!(r.status, 500);
        let r = call(
            addr,
            "POST",
            "/pooling",
            NO_HEADERS,
            r#"{"model": "prm-test"}"#,
        )
        .await;
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["object"], "error");
        let stats = call(addr, "GET", "/_mock/stats", NO_HEADERS, "")
            .await
            .json();
        assert_eq!(stats["pooling_requests"], 5);
        assert_eq!(stats["requests"], 3);
        let w = call(
            addr,
            "GET",
            "/_mock/wait?pooling_requests=5&timeout_ms=100",
            NO_HEADERS,
            "",
        )
        .await;
        assert_eq!(w.status, 200);
        let recorded = call(addr, "GET", "/_mock/requests?limit=1", NO_HEADERS, "")
            .await
            .json();
        assert_eq!(recorded["requests"][0]["path"], "/pooling");
    }
}
