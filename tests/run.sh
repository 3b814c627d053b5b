#!/usr/bin/env bash
# The project's whole test suite — what README's "Run the tests" and CI run.
#
# Installs or builds everything it needs (caches under ~/.cache), then runs, in order:
#   1. script conventions, module dependency rules (no import cycles), cargo fmt --check and
#      clippy -D warnings
#   2. cargo test --workspace          (unit tests, CRD drift check)
#   3. pytest tests/python             (worker + simulator, real `openai` clients for Python and
#                                       Node.js, curl, promtool)
#   4. the local Kubernetes control plane (tests/k8s/with-cluster.sh): smoke test, operator
#      integration tests, chart and manifest checks — the control plane is always stopped.
# Env: SKIP_K8S=1 skips step 4 (for a quick local loop; CI never sets it).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# Outside the steps, a failing command ends the run: say which one, not just the exit status.
trap 'echo "tests/run.sh: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/inferscale
log() { printf '\n==> %s\n' "$*"; }
passed=0; failed=0; failed_steps=()
step() { # step NAME CMD... — runs a step, records the outcome, keeps going
  local name=$1; shift
  log "$name"
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); failed_steps+=("$name"); fi
}

# --- tools ------------------------------------------------------------------------------------
need() { command -v "$1" >/dev/null || { echo "tests/run.sh: $1 is required ($2)" >&2; exit 1; }; }
need cargo "Rust toolchain"; need go "Go 1.26 for the control plane"; need python3 "Python 3.11"; need curl "curl"
# promtool (Debian's prometheus package) checks /metrics; shellcheck checks the scripts.
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v shellcheck >/dev/null || missing+=(shellcheck)
if (( ${#missing[@]} )); then
  log "installing ${missing[*]} from Debian"
  sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
VENV=$CACHE/venv
req_hash=$(sha256sum tests/python/requirements.txt | cut -c1-16)
if [[ ! -f $VENV/.req-$req_hash ]]; then
  log "creating the Python test environment in $VENV"
  rm -rf "$VENV"; python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
  touch "$VENV/.req-$req_hash"
fi
export PATH="$VENV/bin:$PATH"
# openai-node for the Node.js client tests, pinned by tests/node/package-lock.json.
need node "Node.js 20+ for the openai-node client tests"; need npm "npm"
lock_hash=$(sha256sum tests/node/package-lock.json | cut -c1-16)
if [[ ! -f tests/node/node_modules/.lock-$lock_hash ]]; then
  log "installing openai-node (npm ci in tests/node)"
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error) && touch "tests/node/node_modules/.lock-$lock_hash"
fi

# --- Rust -------------------------------------------------------------------------------------
step "script conventions (tests/check-scripts.sh)" tests/check-scripts.sh
# The module dependency rules (docs/architecture.md): its self-test first, so a check that
# stopped seeing cycles cannot pass silently.
module_rules() { python3 tests/check-cycles.py --self-test && python3 tests/check-cycles.py; }
step "module dependency rules (tests/check-cycles.py)" module_rules
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo build (binaries used by the end-to-end tests)"
cargo build --workspace --bins --locked
step "cargo test (unit)" cargo test --workspace --locked
export INFERSCALE_BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/debug

# --- worker end to end ------------------------------------------------------------------------
step "pytest tests/python" python -m pytest -q -p no:cacheprovider tests/python

# --- Kubernetes -------------------------------------------------------------------------------
if [[ ${SKIP_K8S:-0} == 1 ]]; then
  log "SKIP_K8S=1: skipping the control-plane tests"
else
  step "control plane: smoke test, operator, chart" tests/k8s/with-cluster.sh tests/k8s-suite.sh
fi

log "summary"
(( failed == 0 )) || printf 'failed step: %s\n' "${failed_steps[@]}"
echo "steps: $passed passed, $failed failed"
(( failed == 0 ))
