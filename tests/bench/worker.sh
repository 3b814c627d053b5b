#!/usr/bin/env bash
# Worker load benchmark (BENCHMARKS.md): release builds of the worker, the simulator (0 ms
# upstream) and the load generator on one machine; budgets 1, 4, 8 and 16.
# Env: DURATION (s, default 10), CONCURRENCY (default 32), RUNS (repeats per budget, default 3).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --locked -p inferscale-worker -p mock-llm -p loadgen >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT

# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$ROOT/tests/bench/lib.sh"   # start NAME CMD... (sets URL, PID)

start mock "$BIN/mock-llm" --port 0
MOCK_URL=$URL
cat > "$WORK/worker.yaml" <<YAML
provider: openai-compatible
endpoint: $MOCK_URL/v1
model: gpt-4o-mini
alg: self-consistency
tool_vote: tool_hierarchical
exclude_args: [request_id]
server: {port: 0, log_level: warn}
YAML
start worker "$BIN/inferscale-worker" --config "$WORK/worker.yaml"
WORKER_URL=$URL WORKER_PID=$PID

for budget in 1 4 8 16; do
  for _ in $(seq 1 "${RUNS:-3}"); do
    "$BIN/loadgen" --url "$WORKER_URL" --budget "$budget" --concurrency "${CONCURRENCY:-32}" \
      --duration-secs "${DURATION:-10}" --pid "$WORKER_PID"
  done
done
