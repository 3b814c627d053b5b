#!/usr/bin/env bash
# Step-wise search benchmark (BENCHMARKS.md, issue 9): release builds of the worker and the
# simulator on one machine. The simulator's step task: 6 steps, each correct with p = 0.8
# (a whole solution is correct with 0.8^6 = 0.26), wrong paths end in one of 4 distractor
# answers, and a process reward model whose per-step score tells a correct path from a broken
# one with AUC 0.8. For each algorithm (self-consistency over \boxed{} answers, PRM-scored
# best-of-n, beam search with beam width 2, particle filtering) and budget (4, 8, 16) it sends
# REQUESTS requests, CONCURRENCY at a time, and reports accuracy (the answer boxes the correct
# 42), generation and PRM calls per request (from the simulator's counters), and the median
# and p90 wall time per request.
# Then the worker's own time per step: 20 particle-filtering requests at budget 8, one at a
# time, with an injected generation latency of LATENCY_MS per call and none on the PRM;
# (median wall - steps x LATENCY_MS) / steps is what the worker (plus the simulator's own
# handling of 8 step calls and one PRM call) adds per step.
# Env: REQUESTS (default 100), CONCURRENCY (default 4), LATENCY_MS (default 50), SEED (default
# 11), ALGS (default "self-consistency best-of-n-prm beam-search particle-filtering"),
# SKIP_BUILD=1, INFERSCALE_BIN_DIR (binaries to use instead of the release build's).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --locked -p inferscale-worker -p mock-llm >&2
BIN=${INFERSCALE_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT

# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$ROOT/tests/bench/lib.sh"   # start NAME CMD... (sets URL, PID)

start mock "$BIN/mock-llm" --port 0 --seed "${SEED:-11}"
MOCK_URL=$URL
# No config file: each algorithm is applied through /configure (read-only when started with one).
start worker "$BIN/inferscale-worker" --port 0
WORKER_URL=$URL

MOCK_URL=$MOCK_URL WORKER_URL=$WORKER_URL python3 - <<'PY'
import json, os, statistics, time, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor

MOCK, WORKER = os.environ["MOCK_URL"], os.environ["WORKER_URL"]
REQUESTS = int(os.environ.get("REQUESTS", "100"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "4"))
LATENCY_MS = int(os.environ.get("LATENCY_MS", "50"))
OVERHEAD_REQUESTS = 20
ALGS = os.environ.get("ALGS", "self-consistency best-of-n-prm beam-search particle-filtering").split()
STEPS = {"count": 6, "p_correct": 0.8, "answer": "42", "distractors": 4}
CORRECT = "\\boxed{42}"

def http(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")

BASE = {"provider": "openai-compatible", "endpoint": f"{MOCK}/v1", "model": "m", "max_budget": 16}
PRM = {"rm_name": "prm", "rm_endpoint": MOCK, "step_token": "\n\n", "max_steps": 12}
CONFIGS = {
    "self-consistency": {"alg": "self-consistency", "regex_patterns": ["\\\\boxed\\{(.*?)\\}"]},
    "best-of-n-prm": {"alg": "best-of-n", **PRM},
    "beam-search": {"alg": "beam-search", "beam_width": 2, **PRM},
    "particle-filtering": {"alg": "particle-filtering", **PRM},
}

def scenario(latency_ms):
    status, body = http("PUT", f"{MOCK}/_mock/scenario", {"steps": STEPS, "prm": {"auc": 0.8},
                                                          "latency": {"fixed_ms": latency_ms}})
    assert status == 200, body

def configure(alg):
    status, body = http("POST", f"{WORKER}/configure", {**BASE, **CONFIGS[alg]})
    if status != 200:
        raise RuntimeError(f"{alg}: /configure answered {status}: {body}")

def one(budget):
    start = time.perf_counter()
    status, body = http("POST", f"{WORKER}/v1/chat/completions",
                        {"model": "m", "messages": [{"role": "user", "content": "What is 6 * 7?"}],
                         "budget": budget})
    elapsed = time.perf_counter() - start
    if status != 200:
        raise RuntimeError(f"chat answered {status}: {body}")
    return body["choices"][0]["message"]["content"], elapsed

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

def run(alg, budget, requests=REQUESTS, concurrency=CONCURRENCY):
    configure(alg)
    http("POST", f"{MOCK}/_mock/reset", {})
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: one(budget), range(requests)))
    _, stats = http("GET", f"{MOCK}/_mock/stats")
    return results, stats

scenario(0)
print(f"Step task: 6 steps, p = 0.8 per step, PRM AUC 0.8; {REQUESTS} requests per cell, "
      f"concurrency {CONCURRENCY}, no injected latency.\n")
print("| algorithm | budget | accuracy | generation calls / request | PRM calls / request | p50 ms | p90 ms |")
print("|---|---|---|---|---|---|---|")
for alg in ALGS:
    for budget in (4, 8, 16):
        try:
            results, stats = run(alg, budget)
        except RuntimeError as e:
            print(f"| {alg} | {budget} | not run: {e} | | | | |", flush=True)
            break
        acc = sum(1 for a, _ in results if CORRECT in (a or "")) / len(results)
        lat = [e * 1000 for _, e in results]
        print(f"| {alg} | {budget} | {acc:.2f} | {stats['requests'] / REQUESTS:.1f} | "
              f"{stats['pooling_requests'] / REQUESTS:.1f} | {pct(lat, 50):.0f} | {pct(lat, 90):.0f} |", flush=True)

if "particle-filtering" in ALGS:
    scenario(LATENCY_MS)
    try:
        results, stats = run("particle-filtering", 8, requests=OVERHEAD_REQUESTS, concurrency=1)
    except RuntimeError as e:
        print(f"\nper-step overhead not measured: {e}")
    else:
        # Every particle runs the same number of steps in lock step; steps per request = the
        # generation calls of one particle. Lock-step rounds = calls / particles.
        rounds = stats["requests"] / OVERHEAD_REQUESTS / 8
        walls = sorted(e * 1000 for _, e in results)
        med = statistics.median(walls)
        per_step = (med - rounds * LATENCY_MS) / rounds
        print(f"\nParticle filtering, budget 8, one request at a time, generation latency {LATENCY_MS} ms, PRM 0 ms: "
              f"{rounds:.2f} steps per request, median wall {med:.0f} ms, "
              f"worker + simulator time per step {per_step:.1f} ms (median wall / steps - {LATENCY_MS} ms).")
PY
