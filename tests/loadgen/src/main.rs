//! Closed-loop load generator for the worker benchmark: `--concurrency` clients each send the
//! guide's tool-calling request back to back for `--duration-secs`, then it prints requests/s,
//! client latency, and the worker's added latency — client latency minus the slowest upstream
//! leg, which the worker reports in `x-inferscale-upstream-us` — plus the worker's RSS.
//! Requests the worker sheds with 429 are counted apart from errors (`rate_limited`).

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Worker base URL, e.g. http://127.0.0.1:8108
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 4)]
    budget: u32,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Seconds of warm-up whose requests are not counted.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Worker PID, to report its resident memory.
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    /// Client API key, sent as `Authorization: Bearer`; the worker's per-client limit counts by it.
    #[arg(long)]
    api_key: Option<String>,
    /// After a 429, wait the `Retry-After` the worker gave (as OpenAI clients do) instead of
    /// retrying at once.
    #[arg(long)]
    honour_retry_after: bool,
}

struct Sample {
    client_us: u64,
    added_us: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let body = serde_json::to_vec(&json!({
        "model": args.model,
        "messages": [
            {"role": "system", "content": "You are a precise calculator. Always use the calculator tool for arithmetic."},
            {"role": "user", "content": "What is 847 * 293 + 156?"}
        ],
        "tools": [{"type": "function", "function": {"name": "calculator", "description": "Perform arithmetic calculations",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}],
        "tool_choice": "auto",
        "budget": args.budget
    }))
    .expect("static body");
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .expect("client");
    let url = format!("{}/v1/chat/completions", args.url.trim_end_matches('/'));
    let start = Instant::now();
    let warm_until = start + Duration::from_secs_f64(args.warmup_secs);
    let end = warm_until + Duration::from_secs_f64(args.duration_secs);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        let (api_key, honour_retry_after) = (args.api_key.clone(), args.honour_retry_after);
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0u64;
            let mut rate_limited = 0u64;
            while Instant::now() < end {
                let t0 = Instant::now();
                let mut req = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone());
                if let Some(key) = &api_key {
                    req = req.bearer_auth(key);
                }
                let resp = req.send().await;
                if let Ok(r) = &resp
                    && r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    if t0 >= warm_until {
                        rate_limited += 1;
                    }
                    let wait = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(1)
                        .min(5);
                    if honour_retry_after {
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                    continue;
                }
                let ok = match resp {
                    Ok(r) if r.status().is_success() => {
                        let upstream: u64 = r
                            .headers()
                            .get("x-inferscale-upstream-us")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        r.bytes().await.ok().map(|_| upstream)
                    }
                    _ => None,
                };
                let client_us = t0.elapsed().as_micros() as u64;
                if t0 < warm_until {
                    continue;
                }
                match ok {
                    Some(upstream) => samples.push(Sample {
                        client_us,
                        added_us: client_us.saturating_sub(upstream),
                    }),
                    None => errors += 1,
                }
            }
            (samples, errors, rate_limited)
        }));
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    let mut rate_limited = 0;
    for t in tasks {
        let (s, e, r) = t.await.expect("task");
        samples.extend(s);
        errors += e;
        rate_limited += r;
    }
    let rss_kb = args.pid.and_then(rss_kb);
    let mut client: Vec<u64> = samples.iter().map(|s| s.client_us).collect();
    let mut added: Vec<u64> = samples.iter().map(|s| s.added_us).collect();
    client.sort_unstable();
    added.sort_unstable();
    let q = |v: &[u64], p: f64| {
        if v.is_empty() {
            0.0
        } else {
            v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
        }
    };
    let result = json!({
        "budget": args.budget,
        "concurrency": args.concurrency,
        "requests": samples.len(),
        "errors": errors,
        "rate_limited": rate_limited,
        "rps": (samples.len() as f64 / args.duration_secs).round(),
        "client_p50_ms": q(&client, 0.5),
        "client_p99_ms": q(&client, 0.99),
        "added_p50_ms": q(&added, 0.5),
        "added_p99_ms": q(&added, 0.99),
        "worker_rss_mb": rss_kb.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0),
    });
    println!("{result}");
}

/// Current resident set size of a process, from /proc.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
