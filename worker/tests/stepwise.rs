//! Step-wise search through the whole worker (HTTP in, HTTP out) against an in-process
//! generator that continues partial answers the way vLLM does and a PRM that speaks vLLM's
//! pooling API, both on 127.0.0.1. Every fourth path the generator starts goes wrong ("bad"
//! steps, final answer 7); the PRM scores good steps 0.9 and bad ones 0.1.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwapOption;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use inferscale_worker::api::AppState;
use inferscale_worker::api::access::Access;
use inferscale_worker::api::admission::Admission;
use inferscale_worker::config::{SecretAllowList, ServerSettings, WorkerConfig};
use inferscale_worker::metrics::Metrics;
use inferscale_worker::runtime::{Env, Runtime};

const STEPS: usize = 3;

#[derive(Default)]
struct Upstreams {
    paths_started: AtomicUsize,
    generation_calls: AtomicUsize,
    pooling_calls: AtomicUsize,
    prm_fails: bool,
    bodies: std::sync::Mutex<Vec<Value>>,
}

fn step_text(k: usize, good: bool) -> String {
    match (k == STEPS, good) {
        (false, true) => format!("Step {k} good."),
        (false, false) => format!("Step {k} bad."),
        (true, true) => format!("Step {k} so \\boxed{{42}}"),
        (true, false) => format!("Step {k} so \\boxed{{7}}"),
    }
}

async fn generate(up: Arc<Upstreams>, body: Value) -> Json<Value> {
    up.generation_calls.fetch_add(1, Ordering::SeqCst);
    up.bodies.lock().unwrap().push(body.clone());
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or_default();
    let prefix = if body["continue_final_message"] == json!(true) && last["role"] == "assistant" {
        last["content"].as_str().unwrap_or_default().to_owned()
    } else {
        String::new()
    };
    let done = prefix.matches("Step ").count();
    let good = if prefix.is_empty() {
        up.paths_started.fetch_add(1, Ordering::SeqCst) % 4 != 3
    } else {
        !prefix.contains("bad")
    };
    let (text, stop_reason) = if body.get("stop").is_some() {
        let k = done + 1;
        let stop = (k < STEPS).then_some("\n\n");
        (step_text(k, good), stop)
    } else {
        let all: Vec<String> = (1..=STEPS).map(|k| step_text(k, good)).collect();
        (all.join("\n\n"), None)
    };
    Json(json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "gen",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop", "stop_reason": stop_reason}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
}

async fn pooling(up: Arc<Upstreams>, body: Value) -> Response {
    up.pooling_calls.fetch_add(1, Ordering::SeqCst);
    if up.prm_fails {
        return (StatusCode::INTERNAL_SERVER_ERROR, "PRM exploded").into_response();
    }
    assert_eq!(body["model"], "prm");
    let data: Vec<Value> = body["input"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let input = input.as_str().unwrap();
            let answer = input.rsplit("<|im_start|>assistant\n").next().unwrap();
            let tags = answer.matches("<extra_0>").count();
            let rows: Vec<Value> = answer
                .split("<extra_0>")
                .take(tags)
                .map(|step| {
                    let p = if step.contains("bad") || step.contains("{7}") {
                        0.1
                    } else {
                        0.9
                    };
                    json!([1.0 - p, p])
                })
                .collect();
            json!({"index": i, "object": "pooling", "data": rows})
        })
        .collect();
    Json(
        json!({"id": "pool", "object": "list", "created": 0, "model": "prm", "data": data,
                "usage": {"prompt_tokens": 100, "total_tokens": 100, "completion_tokens": 0}}),
    )
    .into_response()
}

async fn upstreams(prm_fails: bool) -> (String, Arc<Upstreams>) {
    let up = Arc::new(Upstreams {
        prm_fails,
        ..Default::default()
    });
    let (g, p) = (up.clone(), up.clone());
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(move |Json(b): Json<Value>| generate(g.clone(), b)),
        )
        .route(
            "/pooling",
            axum::routing::post(move |Json(b): Json<Value>| pooling(p.clone(), b)),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), up)
}

/// A worker configured with `extra` on top of a step-wise configuration; returns its base URL.
async fn worker(base: &str, extra: Value) -> String {
    let mut cfg = json!({
        "model": "hosted_vllm/gen", "endpoint": format!("{base}/v1"),
        "alg": "particle-filtering", "rm_name": "prm", "rm_endpoint": format!("{base}/v1"),
        "stop_token": "\\boxed", "max_steps": 8,
        "regex_patterns": ["\\\\boxed\\{(.*?)\\}"],
        "upstream": {"max_retries": 0}
    });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let cfg: WorkerConfig = serde_json::from_value(cfg).unwrap();
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::build(&cfg, &metrics, &Env::default()).unwrap();
    let limits = ServerSettings::default().limits().unwrap();
    let state = Arc::new(AppState {
        runtime: ArcSwapOption::new(Some(Arc::new(runtime))),
        admission: Arc::new(Admission::new(64, 64)),
        metrics,
        access: Access {
            api_keys: None,
            allow_configure: false,
            admin_token: None,
            configure_secrets: SecretAllowList::new(&[], &[]).unwrap(),
        },
        env: Env::default(),
        max_body_bytes: 1 << 20,
        limits,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(inferscale_worker::server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

async fn chat(worker: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{worker}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

fn question(budget: u32) -> Value {
    json!({"model": "hosted_vllm/gen", "budget": budget, "return_response_only": false,
           "messages": [{"role": "user", "content": "What is 6*7?"}]})
}

fn content(body: &Value) -> &str {
    body["choices"][0]["message"]["content"].as_str().unwrap()
}

#[tokio::test]
async fn particle_filtering_follows_the_prm_to_the_right_answer() {
    let (base, up) = upstreams(false).await;
    let w = worker(&base, json!({})).await;
    let (status, body) = chat(&w, question(4)).await;
    assert_eq!(status, 200, "{body}");
    assert!(content(&body).ends_with("\\boxed{42}"), "{body}");
    assert_eq!(
        content(&body),
        "Step 1 good.\n\nStep 2 good.\n\nStep 3 so \\boxed{42}"
    );
    // 4 particles x 3 steps, every generation call counted in usage; one PRM call per step.
    assert_eq!(up.generation_calls.load(Ordering::SeqCst), 12);
    assert_eq!(up.pooling_calls.load(Ordering::SeqCst), 3);
    assert_eq!(body["usage"]["prompt_tokens"], 120);
    assert_eq!(body["usage"]["completion_tokens"], 60);
    let m = &body["metadata"];
    assert_eq!(m["algorithm"], "particle-filtering");
    let search = &m["search"];
    assert_eq!(search["generation_calls"], 12);
    assert_eq!(search["reward_calls"], 3);
    assert_eq!(search["reward_prompt_tokens"], 300);
    assert_eq!(search["steps"], 3);
    assert_eq!(search["resamplings"], 2);
    assert_eq!(search["fallback"], Value::Null);
    let particles = search["particles"].as_array().unwrap();
    assert_eq!(particles.len(), 4);
    let selected = &particles[m["selected_index"].as_u64().unwrap() as usize];
    assert_eq!(selected["finished"], true);
    assert_eq!(selected["step_scores"], json!([0.9, 0.9, 0.9]));
    assert_eq!(selected["ancestry"].as_array().unwrap().len(), 2);
    // Steps after the first continue the partial answer, which ends with the step token.
    let bodies = up.bodies.lock().unwrap();
    let continued = bodies
        .iter()
        .find(|b| b["continue_final_message"] == json!(true))
        .unwrap();
    assert_eq!(continued["add_generation_prompt"], false);
    assert_eq!(continued["stop"], json!(["\n\n"]));
    assert_eq!(continued["max_tokens"], 512);
    let partial = continued["messages"][1]["content"].as_str().unwrap();
    assert!(partial.ends_with("\n\n"), "{partial:?}");
}

#[tokio::test]
async fn beam_search_keeps_the_best_beams_and_checks_the_budget() {
    let (base, up) = upstreams(false).await;
    let w = worker(&base, json!({"alg": "beam-search", "beam_width": 2})).await;
    let (status, body) = chat(&w, question(4)).await;
    assert_eq!(status, 200, "{body}");
    assert!(content(&body).ends_with("\\boxed{42}"), "{body}");
    assert_eq!(body["metadata"]["algorithm"], "beam-search");
    assert_eq!(body["metadata"]["search"]["reward_calls"], 3);
    assert_eq!(up.generation_calls.load(Ordering::SeqCst), 12);

    let before = up.generation_calls.load(Ordering::SeqCst);
    let (status, body) = chat(&w, question(5)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "budget");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("budget (5)") && msg.contains("beam_width (2)"),
        "{msg}"
    );
    assert_eq!(
        up.generation_calls.load(Ordering::SeqCst),
        before,
        "nothing spent"
    );
}

#[tokio::test]
async fn a_failing_prm_degrades_to_the_majority_vote_and_says_so() {
    let (base, up) = upstreams(true).await;
    let w = worker(&base, json!({})).await;
    let (status, body) = chat(&w, question(4)).await;
    assert_eq!(status, 200, "{body}");
    // Three of four unguided paths are right: the vote over the final answers picks 42.
    assert!(content(&body).ends_with("\\boxed{42}"), "{body}");
    let search = &body["metadata"]["search"];
    assert_eq!(search["fallback"], "self-consistency");
    assert!(
        search["fallback_reason"].as_str().unwrap().contains("500"),
        "{search}"
    );
    assert_eq!(search["reward_calls"], 1, "no PRM call after it failed");
    assert_eq!(up.pooling_calls.load(Ordering::SeqCst), 1);
    assert_eq!(up.generation_calls.load(Ordering::SeqCst), 12);
    assert_eq!(body["metadata"]["response_counts"]["42"], 3);
    let metrics = reqwest::get(format!("{w}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("inferscale_reward_fallbacks_total{algorithm=\"particle-filtering\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "inferscale_reward_calls_total{algorithm=\"particle-filtering\",outcome=\"error\"} 1"
    ));
}

#[tokio::test]
async fn prm_best_of_n_picks_the_highest_scored_answer() {
    let (base, up) = upstreams(false).await;
    let w = worker(&base, json!({"alg": "best-of-n", "stop_token": null})).await;
    let (status, body) = chat(&w, question(4)).await;
    assert_eq!(status, 200, "{body}");
    assert!(content(&body).ends_with("\\boxed{42}"), "{body}");
    assert_eq!(up.generation_calls.load(Ordering::SeqCst), 4);
    assert_eq!(up.pooling_calls.load(Ordering::SeqCst), 1);
    let m = &body["metadata"];
    assert_eq!(m["algorithm"], "best-of-n");
    let scores = m["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 4);
    assert!(scores.contains(&json!(0.1)) && scores.contains(&json!(0.9)));
}

#[tokio::test]
async fn tools_are_refused_before_anything_is_spent() {
    let (base, up) = upstreams(false).await;
    let w = worker(&base, json!({})).await;
    let mut req = question(4);
    req["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    let (status, body) = chat(&w, req).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "tools");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("particle-filtering")
    );
    assert_eq!(up.generation_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn streaming_sends_the_winner_once_the_search_ends() {
    let (base, _up) = upstreams(false).await;
    let w = worker(&base, json!({})).await;
    let mut req = question(4);
    req["stream"] = json!(true);
    let text = reqwest::Client::new()
        .post(format!("{w}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(req.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let first = text.lines().find(|l| l.starts_with("data: ")).unwrap();
    assert!(first.contains("\"role\":\"assistant\""), "{text}");
    assert!(text.contains("boxed{42}"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[tokio::test]
async fn max_calls_stops_the_search_and_is_reported() {
    let (base, up) = upstreams(false).await;
    // Room for two steps of 4 particles, not three.
    let w = worker(&base, json!({"max_calls": 8})).await;
    let (status, body) = chat(&w, question(4)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.generation_calls.load(Ordering::SeqCst), 8);
    assert_eq!(body["metadata"]["search"]["max_calls_reached"], true);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}
