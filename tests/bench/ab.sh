#!/usr/bin/env bash
# A/B benchmark of the worker's hot path (BENCHMARKS.md, "A/B: worker CPU per upstream call").
# Builds the worker (release) at BASE in a temporary git worktree and at the working tree, then
# runs both ALTERNATELY against the simulator (mock-llm) with the same config and load:
#   b1-c32, b4-c32, b8-c32 (0 ms upstream), b8-c64-20ms (20 ms fixed upstream latency),
#   b4-c1 (one client, for the added latency).
# Per run it measures: requests/s (loadgen), worker CPU µs per upstream call (utime+stime delta
# from /proc/<pid>/stat over the run ÷ the simulator's /_mock/stats `requests` delta), simulator
# CPU µs per call (same way), worker peak RSS (VmHWM) and the worker's added latency p50 (loadgen:
# client latency minus the slowest upstream leg, from x-inferscale-upstream-us). The worker is
# restarted for every run so VmHWM belongs to that run. Medians over RUNS and new/base ratios are
# printed at the end.
# Env: BASE (commit, default: merge-base of HEAD and main), RUNS (default 3), DURATION (s, default
#      10), WARMUP (s, default 2), SCENARIOS (space-separated subset of the names above),
#      SKIP_BASE_BUILD=1 with BASE_BIN=<path> to reuse a base worker binary, NEW_BIN=<path> to
#      compare a prebuilt worker instead of the working tree's (e.g. one allocator against another),
#      SKIP_TOOLS_BUILD=1 with BIN_DIR=<dir> holding prebuilt mock-llm and loadgen (building them
#      alone selects other features of shared dependencies than a workspace build, and so
#      rebuilds those on a warm target dir).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
BASE=${BASE:-$(git merge-base HEAD main)}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SCENARIOS=${SCENARIOS:-"b1-c32 b4-c32 b8-c32 b8-c64-20ms b4-c1"}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BIN_DIR:-$TARGET/release}
WORK=$(mktemp -d)
BASE_TREE=""
cleanup() {
  local pids=()
  mapfile -t pids < <(jobs -p)
  (( ${#pids[@]} == 0 )) || kill "${pids[@]}" 2>/dev/null || true
  if [[ -n $BASE_TREE ]]; then git -C "$ROOT" worktree remove --force "$BASE_TREE" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- builds -------------------------------------------------------------------------------
# Base first: both builds share the target dir, so each worker binary is copied out at once.
if [[ ${SKIP_BASE_BUILD:-0} == 1 ]]; then
  cp "${BASE_BIN:?SKIP_BASE_BUILD=1 needs BASE_BIN}" "$WORK/worker-base"
else
  BASE_TREE=$(mktemp -d /tmp/inferscale-ab-base.XXXXXX)
  rmdir "$BASE_TREE"
  git worktree add --detach "$BASE_TREE" "$BASE" >&2
  (cd "$BASE_TREE" && CARGO_TARGET_DIR=$TARGET cargo build --release --locked -p inferscale-worker >&2)
  cp "$TARGET/release/inferscale-worker" "$WORK/worker-base"
  git worktree remove --force "$BASE_TREE"
  BASE_TREE=""
fi
if [[ -n ${NEW_BIN:-} ]]; then
  [[ ${SKIP_TOOLS_BUILD:-0} == 1 ]] || cargo build --release --locked -p mock-llm -p loadgen >&2
  cp "$NEW_BIN" "$WORK/worker-new"
else
  cargo build --release --locked -p inferscale-worker -p mock-llm -p loadgen >&2
  cp "$TARGET/release/inferscale-worker" "$WORK/worker-new"
fi
if [[ ${SKIP_BASE_BUILD:-0} == 1 ]]; then base_label=$BASE_BIN; else base_label=$(git rev-parse --short "$BASE"); fi
echo "base: $base_label  new: ${NEW_BIN:-working tree of $(git rev-parse --short HEAD)}" >&2

# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$ROOT/tests/bench/lib.sh"   # start NAME CMD... (sets URL, PID)

# utime+stime of a process in clock ticks (fields 14 and 15 of /proc/<pid>/stat; the command
# name in field 2 has no spaces for these binaries).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
peak_rss_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mock_requests() { curl -sf "$1/_mock/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])'; }

stop() { # stop PID: end a worker this script started and reap it
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# --- simulators ---------------------------------------------------------------------------
start mock0 "$BIN/mock-llm" --port 0
MOCK0_URL=$URL MOCK0_PID=$PID
printf 'latency: {fixed_ms: 20}\n' >"$WORK/mock20.yaml"
start mock20 "$BIN/mock-llm" --port 0 --scenario "$WORK/mock20.yaml"
MOCK20_URL=$URL MOCK20_PID=$PID

# One run: start the worker VARIANT against MOCK, drive it, append a JSON line to results.
run_one() { # run_one VARIANT SCENARIO BUDGET CONCURRENCY MOCK_URL MOCK_PID
  local variant=$1 scenario=$2 budget=$3 conc=$4 mock_url=$5 mock_pid=$6
  # Fields both the base and the new build accept; early_decision stays at its default.
  cat >"$WORK/worker.yaml" <<YAML
provider: openai-compatible
endpoint: $mock_url/v1
model: gpt-4o-mini
alg: self-consistency
tool_vote: tool_hierarchical
exclude_args: [request_id]
server: {port: 0, log_level: warn}
YAML
  start "worker-$variant" "$WORK/worker-$variant" --config "$WORK/worker.yaml"
  local wurl=$URL wpid=$PID
  local w0 m0 r0 w1 m1 r1 hwm out
  w0=$(cpu_ticks "$wpid"); m0=$(cpu_ticks "$mock_pid"); r0=$(mock_requests "$mock_url")
  out=$("$BIN/loadgen" --url "$wurl" --budget "$budget" --concurrency "$conc" \
    --duration-secs "$DURATION" --warmup-secs "$WARMUP" --pid "$wpid")
  w1=$(cpu_ticks "$wpid"); m1=$(cpu_ticks "$mock_pid"); r1=$(mock_requests "$mock_url")
  hwm=$(peak_rss_kb "$wpid")
  stop "$wpid"
  local line
  line=$(LOADGEN="$out" python3 - "$variant" "$scenario" "$((w1 - w0))" "$((m1 - m0))" \
    "$((r1 - r0))" "$hwm" "$(getconf CLK_TCK)" <<'PY'
import json, os, sys
variant, scenario, wt, mt, calls, hwm, hz = sys.argv[1:]
lg = json.loads(os.environ["LOADGEN"])
calls, hz = int(calls), int(hz)
us = lambda ticks: int(ticks) * 1e6 / hz / calls if calls else float("nan")
print(json.dumps({"variant": variant, "scenario": scenario, "rps": lg["rps"],
                  "errors": lg["errors"], "calls": calls,
                  "worker_us_per_call": round(us(wt), 1), "mock_us_per_call": round(us(mt), 1),
                  "rss_mb": round(int(hwm) / 1024, 1), "added_p50_ms": lg["added_p50_ms"]}))
PY
)
  echo "$line" | tee -a "$WORK/results.jsonl" >&2
}

# --- runs: base and new alternate within every repeat --------------------------------------
for scenario in $SCENARIOS; do
  case $scenario in
    b1-c32) args=(1 32 "$MOCK0_URL" "$MOCK0_PID") ;;
    b4-c32) args=(4 32 "$MOCK0_URL" "$MOCK0_PID") ;;
    b8-c32) args=(8 32 "$MOCK0_URL" "$MOCK0_PID") ;;
    b8-c64-20ms) args=(8 64 "$MOCK20_URL" "$MOCK20_PID") ;;
    b4-c1) args=(4 1 "$MOCK0_URL" "$MOCK0_PID") ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
  for run in $(seq 1 "$RUNS"); do
    # Swap the order every repeat so neither variant always runs on a warmer machine.
    if (( run % 2 )); then order=(base new); else order=(new base); fi
    for variant in "${order[@]}"; do run_one "$variant" "$scenario" "${args[@]}"; done
  done
done

# --- table ----------------------------------------------------------------------------------
python3 - "$WORK/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
metrics = [("rps", "req/s"), ("worker_us_per_call", "worker µs/call"),
           ("mock_us_per_call", "sim µs/call"), ("rss_mb", "RSS MB"), ("added_p50_ms", "added p50 ms")]
print("| scenario | metric | base | new | new/base |")
print("|---|---|---:|---:|---:|")
for scenario in dict.fromkeys(r["scenario"] for r in rows):
    for key, label in metrics:
        med = {v: statistics.median(r[key] for r in rows if r["scenario"] == scenario and r["variant"] == v)
               for v in ("base", "new")}
        ratio = med["new"] / med["base"] if med["base"] else float("nan")
        print(f"| {scenario} | {label} | {med['base']:g} | {med['new']:g} | {ratio:.2f} |")
errors = sum(r["errors"] for r in rows)
print(f"\n{len(rows)} runs, medians of {len(rows) // 2 // len(set(r['scenario'] for r in rows))} per cell; "
      f"loadgen errors in total: {errors}")
PY
