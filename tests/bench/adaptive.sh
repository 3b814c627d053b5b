#!/usr/bin/env bash
# Early-decided and adaptive self-consistency benchmark (BENCHMARKS.md): release builds of the
# worker and the simulator on one machine. The simulator draws answers independently from a
# distribution whose majority answer ("A") has share 0.9, 0.7 or 0.5 among 3-5 distinct answers,
# with lognormal latency (median 200 ms, p99 640 ms: sigma 0.5). Every request is a "question"
# with its own reproducible answer sequence (`answer_draw: hashed`, keyed by the request's
# `user`), so each mode sees the same draws as the fixed full-budget run of that question, and
# agreement with the full-budget winner is measured question by question.
# For each distribution and mode it sends REQUESTS questions (CONCURRENCY at a time) and reports
# calls started, calls that reached the simulator and calls completed per request, agreement
# with the full-budget winner and with "A", and p50/p99 latency.
# Modes: fixed (early_decision: false, the benchmark aid; the reference), early (the default),
# adaptive beta 0.95 and adaptive its_hub 0.75 (parallelism 4). Budget 16, and 8 for fixed/early.
# Env: REQUESTS (default 200), CONCURRENCY (default 8), SKIP_BUILD=1.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --locked -p inferscale-worker -p mock-llm >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT

# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$ROOT/tests/bench/lib.sh"   # start NAME CMD... (sets URL, PID)

start mock "$BIN/mock-llm" --port 0 --seed 11
MOCK_URL=$URL
# No config file: each mode is applied through /configure (read-only when started with one).
start worker "$BIN/inferscale-worker" --port 0
WORKER_URL=$URL

MOCK_URL=$MOCK_URL WORKER_URL=$WORKER_URL python3 - <<'PY'
import json, os, statistics, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

MOCK, WORKER = os.environ["MOCK_URL"], os.environ["WORKER_URL"]
REQUESTS = int(os.environ.get("REQUESTS", "200"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "8"))

def http(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())

# Answer distributions with the majority answer "A" at the given share (multiplicities of 20).
DISTRIBUTIONS = {
    0.9: {"A": 18, "B": 1, "C": 1},
    0.7: {"A": 14, "B": 3, "C": 2, "D": 1},
    0.5: {"A": 10, "B": 4, "C": 3, "D": 2, "E": 1},
}

MODES = {
    "fixed": {"early_decision": False},
    "early": {},
    "adaptive beta 0.95": {"adaptive": {"rule": "beta"}},
    "adaptive its_hub 0.75": {"adaptive": {"rule": "its_hub"}},
}

def configure(extra):
    http("POST", f"{WORKER}/configure", {"provider": "openai-compatible", "endpoint": f"{MOCK}/v1",
                                         "model": "m", **extra})

def ask(question, budget):
    start = time.perf_counter()
    body = http("POST", f"{WORKER}/v1/chat/completions",
                {"model": "m", "messages": [{"role": "user", "content": "q"}], "budget": budget,
                 "user": f"question-{question}", "return_response_only": False})
    elapsed = time.perf_counter() - start
    return body["choices"][0]["message"]["content"], body["metadata"], elapsed

def run(budget):
    """All questions in one mode, each from the start of its answer sequence."""
    http("POST", f"{MOCK}/_mock/reset", {})
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(lambda q: ask(q, budget), range(REQUESTS)))
    upstream = http("GET", f"{MOCK}/_mock/stats")["requests"]
    return results, upstream

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

def strict_winner(meta):
    """True when the full vote had a single leader: with a tie, the winner is the tied answer of
    the earliest call, and which call gets which draw depends on arrival order, which differs
    between two runs of the same question."""
    top = sorted(meta["response_counts"].values(), reverse=True) + [0]
    return top[0] > top[1]

print("| share | budget | mode | calls sent / request | reached upstream / request | completed / request "
      "| agreement with full-budget winner: all / strict | answer is A | p50 ms | p99 ms |")
print("|---|---|---|---|---|---|---|---|---|---|")
for share, counts in DISTRIBUTIONS.items():
    answers = [{"content": k} for k, n in counts.items() for _ in range(n)]
    http("PUT", f"{MOCK}/_mock/scenario", {"answers": answers, "answer_draw": "hashed",
                                          "latency": {"p50_ms": 200, "p99_ms": 640}})
    for budget in (16, 8):
        full = None
        for mode, extra in MODES.items():
            if budget == 8 and mode.startswith("adaptive"):
                continue
            configure(extra)
            results, upstream = run(budget)
            if full is None:  # "fixed" runs first: the full-budget winner of every question
                full = [(a, strict_winner(m)) for a, m, _ in results]
            sent = statistics.mean(m["calls_sent"] for _, m, _ in results)
            done = statistics.mean(m["calls_completed"] for _, m, _ in results)
            agree = sum(1 for (a, _, _), (f, _) in zip(results, full) if a == f) / len(results)
            strict = [(a, f) for (a, _, _), (f, s) in zip(results, full) if s]
            agree_strict = sum(1 for a, f in strict if a == f) / max(len(strict), 1)
            is_a = sum(1 for a, _, _ in results if a == "A") / len(results)
            lat = [e * 1000 for _, _, e in results]
            print(f"| {share} | {budget} | {mode} | {sent:.2f} | {upstream / len(results):.2f} | {done:.2f} "
                  f"| {agree:.3f} / {agree_strict:.3f} ({len(strict)}) | {is_a:.3f} | {pct(lat, 50):.0f} | {pct(lat, 99):.0f} |", flush=True)
PY
