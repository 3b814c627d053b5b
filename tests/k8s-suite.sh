#!/usr/bin/env bash
# Everything that needs the local control plane; run by tests/run.sh inside with-cluster.sh,
# which exports KUBECONFIG and puts the built kubectl/helm first on PATH.
# Every step runs; the script fails if any step failed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=python3
if command -v python >/dev/null && python -c 'import openai, pytest' 2>/dev/null; then PY=python; fi  # tests/run.sh's venv

status=0; summary=()
step() { # step NAME CMD... — runs a step, records the outcome, keeps going
  local name=$1; shift
  printf '\n--> %s\n' "$name"
  if "$@"; then summary+=("ok     $name"); else summary+=("FAILED $name"); status=1; fi
}

# shellcheck disable=SC2317  # called through step
operator_tests() {
  INFERSCALE_K8S_TESTS=1 cargo test --locked -p inferscale-operator --test '*' -- --test-threads=2
}
# shellcheck disable=SC2317  # called through step
e2e() {
  # The binaries the end-to-end tests run (a no-op when tests/run.sh built them already).
  cargo build --locked --bins -p inferscale-worker -p inferscale-operator -p mock-llm
  "$PY" -m pytest -q -p no:cacheprovider tests/e2e
}

step "operator integration tests" operator_tests
step "chart, manifests, Dockerfiles: static checks" tests/e2e/static-checks.sh
step "end to end: helm install, operator with the chart's RBAC, worker, openai client; dry runs" e2e
# Its own etcd + kube-apiserver of the chart's oldest claimed version, on ports of its own (built
# by tests/k8s/build-oldest-apiserver.sh when missing).
step "oldest claimed Kubernetes (v1.30): CRD and every example accepted" tests/k8s/oldest-apiserver.sh
# Alone after the others: it swaps the cluster-wide CRD (and restores the committed one).
step "chart CRD upgrade path: adopt, helm install/upgrade upgrade it, uninstall keeps it" tests/e2e/crd-upgrade.sh
step "kind (skips without a container engine)" tests/kind/run.sh

printf '\nk8s-suite:\n'; printf '  %s\n' "${summary[@]}"
exit "$status"
