#!/usr/bin/env bash
# Early-decided and adaptive self-consistency benchmark (BENCHMARKS.md): release builds of the
# worker and the simulator on one machine. The simulator answers from a cycle whose majority
# answer ("A") has share 0.9, 0.7 or 0.5 among 3-5 distinct answers, with lognormal latency
# (median 200 ms, p99 640 ms: sigma 0.5). For each distribution and mode it sends REQUESTS
# requests (CONCURRENCY at a time) and reports upstream calls per request, agreement of the
# answer with the majority answer, and p50/p99 latency.
# Modes: fixed (early_decision: false, the benchmark aid), early (the default), adaptive beta
# 0.95 and adaptive its_hub 0.75 (parallelism 4). Budget 16, and 8 for fixed/early.
# Env: REQUESTS (default 40), CONCURRENCY (default 4), SKIP_BUILD=1.
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
REQUESTS = int(os.environ.get("REQUESTS", "40"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "4"))

def http(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())

# Answer cycles of 20 with the majority answer "A" at the given share.
DISTRIBUTIONS = {
    0.9: {"A": 18, "B": 1, "C": 1},
    0.7: {"A": 14, "B": 3, "C": 2, "D": 1},
    0.5: {"A": 10, "B": 4, "C": 3, "D": 2, "E": 1},
}

def cycle(counts):
    # Interleave so that every window of the cycle has roughly the target share.
    pool = [k for k, n in counts.items() for _ in range(n)]
    order = sorted(range(len(pool)), key=lambda i: (i * 7) % len(pool))
    return [{"content": pool[i]} for i in order]

MODES = {
    "fixed": {"early_decision": False},
    "early": {},
    "adaptive beta 0.95": {"adaptive": {"rule": "beta"}},
    "adaptive its_hub 0.75": {"adaptive": {"rule": "its_hub"}},
}

def configure(extra):
    http("POST", f"{WORKER}/configure", {"provider": "openai-compatible", "endpoint": f"{MOCK}/v1",
                                         "model": "m", **extra})

def one(budget):
    start = time.perf_counter()
    body = http("POST", f"{WORKER}/v1/chat/completions",
                {"model": "m", "messages": [{"role": "user", "content": "q"}], "budget": budget,
                 "return_response_only": False})
    elapsed = time.perf_counter() - start
    return body["choices"][0]["message"]["content"], body["metadata"], elapsed

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

print(f"| share | budget | mode | calls sent / request | calls completed / request | agreement with A | p50 ms | p99 ms |")
print(f"|---|---|---|---|---|---|---|---|")
for share, counts in DISTRIBUTIONS.items():
    http("PUT", f"{MOCK}/_mock/scenario", {"answers": cycle(counts), "latency": {"p50_ms": 200, "p99_ms": 640}})
    http("POST", f"{MOCK}/_mock/reset", {})
    for budget in (16, 8):
        for mode, extra in MODES.items():
            if budget == 8 and mode.startswith("adaptive"):
                continue
            configure(extra)
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                results = list(pool.map(lambda _: one(budget), range(REQUESTS)))
            sent = statistics.mean(m["calls_sent"] for _, m, _ in results)
            done = statistics.mean(m["calls_completed"] for _, m, _ in results)
            agree = sum(1 for a, _, _ in results if a == "A") / len(results)
            lat = [e * 1000 for _, _, e in results]
            print(f"| {share} | {budget} | {mode} | {sent:.2f} | {done:.2f} | {agree:.3f} | {pct(lat, 50):.0f} | {pct(lat, 99):.0f} |",
                  flush=True)
PY
