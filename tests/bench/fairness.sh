#!/usr/bin/env bash
# Fairness benchmark (BENCHMARKS.md, "Worker: per-client limits and fairness"): release builds of
# the worker, the simulator (fixed upstream latency) and the load generator on one machine.
# Client A (well below its per-client limit) runs alone, then together with a greedy client B that
# keeps more requests open than its limit allows. Prints B's and A's 429 counts and A's p50
# latency alone and with B. A must see no 429 and stay within 20% of its solo p50.
# Env: DURATION (s, default 10), LATENCY_MS (upstream, default 50), LIMIT (per client, default 16),
# A_CONCURRENCY (default 8), B_CONCURRENCY (default 64), BUDGET (default 4),
# B_HONOURS_RETRY_AFTER (1: B waits Retry-After after a 429 like OpenAI clients; default 0: B
# retries at once, the worst case for A), BIN_DIR (prebuilt binaries; with SKIP_BUILD=1).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --locked -p inferscale-worker -p mock-llm -p loadgen >&2
BIN=${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
DURATION=${DURATION:-10} LIMIT=${LIMIT:-16} BUDGET=${BUDGET:-4}

# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$ROOT/tests/bench/lib.sh"   # start NAME CMD... (sets URL, PID)

echo "latency: {fixed_ms: ${LATENCY_MS:-50}}" > "$WORK/scenario.yaml"
start mock "$BIN/mock-llm" --port 0 --scenario "$WORK/scenario.yaml"
MOCK_URL=$URL
printf 'sk-client-a\nsk-client-b\n' > "$WORK/keys"
cat > "$WORK/worker.yaml" <<YAML
provider: openai-compatible
endpoint: $MOCK_URL/v1
model: gpt-4o-mini
alg: self-consistency
tool_vote: tool_hierarchical
server: {port: 0, log_level: warn, api_keys_file: $WORK/keys, max_in_flight_per_client: $LIMIT}
YAML
start worker "$BIN/inferscale-worker" --config "$WORK/worker.yaml"
WORKER_URL=$URL WORKER_PID=$PID

load() { # load KEY CONCURRENCY [extra loadgen flags]
  "$BIN/loadgen" --url "$WORKER_URL" --budget "$BUDGET" --concurrency "$2" \
    --duration-secs "$DURATION" --pid "$WORKER_PID" --api-key "$1" "${@:3}"
}

B_FLAGS=()
[[ ${B_HONOURS_RETRY_AFTER:-0} == 1 ]] && B_FLAGS=(--honour-retry-after)
load sk-client-a "${A_CONCURRENCY:-8}" > "$WORK/a-solo.json"
load sk-client-b "${B_CONCURRENCY:-64}" "${B_FLAGS[@]}" > "$WORK/b-shared.json" &
B_JOB=$!
load sk-client-a "${A_CONCURRENCY:-8}" > "$WORK/a-shared.json"
wait "$B_JOB"
SHED=$(curl -s "$WORKER_URL/metrics" | grep '^inferscale_requests_shed_total' || true)

python3 - "$WORK" "$SHED" <<'PY'
import json, sys
work, shed = sys.argv[1], sys.argv[2]
solo, a, b = (json.load(open(f"{work}/{n}.json")) for n in ("a-solo", "a-shared", "b-shared"))
ratio = a["client_p50_ms"] / solo["client_p50_ms"] if solo["client_p50_ms"] else float("nan")
print(json.dumps({"a_solo": solo, "a_with_b": a, "b": b}, indent=1))
print(f"A alone: p50 {solo['client_p50_ms']} ms, {solo['rps']} req/s, 429s {solo['rate_limited']}")
print(f"A with B: p50 {a['client_p50_ms']} ms ({(ratio - 1) * 100:+.1f}% vs alone), "
      f"{a['rps']} req/s, 429s {a['rate_limited']}, errors {a['errors']}")
print(f"B: {b['rps']} req/s served, 429s {b['rate_limited']}, errors {b['errors']}")
print(shed)
ok = a["rate_limited"] == 0 and a["errors"] == 0 and b["rate_limited"] > 0 and ratio <= 1.2
print("PASS" if ok else "FAIL: A must see no 429/errors, B must be shed, A's p50 within 20% of solo")
sys.exit(0 if ok else 1)
PY
