#!/usr/bin/env bash
# tests/kind/run.sh — the end-to-end test in a real cluster with real images (kind).
#
# Where a container engine works (`docker info` succeeds) this: creates a kind cluster, builds the
# operator, worker, mock-llm and client images from the repository's Dockerfiles and loads them
# into it, installs the chart with helm, deploys the simulator (deploy/dev/mock-llm.yaml) and the
# OpenAI self-consistency example pointed at it, waits for the ScalingEndpoint to be Ready, and
# runs tests/e2e/client_check.py (the real `openai` client) as a Job in the cluster against the
# endpoint's Service. The cluster is deleted afterwards (KEEP_CLUSTER=1 keeps it).
#
# Without a container engine it prints why it skips and exits 0.
#
# Env: KIND_CLUSTER (default inferscale-e2e), KEEP_CLUSTER=1, KIND_TIMEOUT (seconds per wait, 300).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
log() { printf '[kind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
skip() { echo "kind: SKIPPED — $* (the end-to-end test on the local control plane, tests/e2e, covers the rest)"; exit 0; }

command -v docker >/dev/null || skip "no docker CLI"
docker info >/dev/null 2>&1 || skip "docker cannot reach a container engine (\`docker info\` failed)"

# kind, kubectl and helm: from PATH, else the control-plane bin dir (built once and cached).
if ! { command -v kind && command -v kubectl && command -v helm; } >/dev/null; then
  PATH="$(tests/k8s/build-bins.sh):$PATH"
fi
CLUSTER=${KIND_CLUSTER:-inferscale-e2e}
T=${KIND_TIMEOUT:-300}
TAG=e2e-$(date +%s)
NS_SYS=inferscale-system
NS=inferscale-kind-e2e
WORK=$(mktemp -d)
export KUBECONFIG=$WORK/kubeconfig  # never the caller's cluster

created=0
cleanup() {
  local rc=$?
  if (( rc != 0 )) && (( created )); then
    log "failed; state of the cluster:"
    kubectl get pods,se,jobs -A -o wide >&2 || true
    kubectl -n "$NS_SYS" logs deploy/inferscale --tail=50 >&2 || true
  fi
  if (( created )) && [[ ${KEEP_CLUSTER:-0} != 1 ]]; then
    kind delete cluster --name "$CLUSTER" >&2 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if kind get clusters 2>/dev/null | grep -x "$CLUSTER" >/dev/null; then
  log "reusing kind cluster $CLUSTER"
  kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG" >&2
else
  log "creating kind cluster $CLUSTER"
  created=1
  kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait "${T}s" >&2
fi

log "building images (tag $TAG)"
for spec in operator:operator/Dockerfile worker:worker/Dockerfile mock-llm:tests/mock-llm/Dockerfile \
            e2e-client:tests/kind/client.Dockerfile; do
  DOCKER_BUILDKIT=1 docker build -q -f "${spec#*:}" -t "inferscale/${spec%%:*}:$TAG" . >&2
  kind load docker-image --name "$CLUSTER" "inferscale/${spec%%:*}:$TAG" >&2
done

log "installing the chart"
for ns in "$NS_SYS" "$NS"; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >&2
  kubectl label --overwrite namespace "$ns" pod-security.kubernetes.io/enforce=restricted >&2
done
# The operator watches its own namespace plus the example's (the chart's namespaced default).
helm upgrade --install inferscale charts/inferscale --namespace "$NS_SYS" --set "watchNamespaces={$NS}" \
  --set image.tag="$TAG" --set image.pullPolicy=Never --set workerImage.tag="$TAG" \
  --wait --timeout "${T}s" >&2

log "deploying the simulator and the example"
kubectl -n "$NS" apply -f deploy/dev/mock-llm.yaml >&2
kubectl -n "$NS" set image deployment/mock-llm mock-llm="inferscale/mock-llm:$TAG" >&2
kubectl -n "$NS" rollout status deployment/mock-llm --timeout="${T}s" >&2
# The guide's example, with the simulator as upstream and one worker (so /metrics through the
# Service always reaches the worker that answered).
kubectl create --dry-run=client -o json -f deploy/examples/openai-self-consistency.yaml \
  | python3 -c '
import json, sys
dec, text, i, out = json.JSONDecoder(), sys.stdin.read(), 0, []
while (i := len(text) - len(text[i:].lstrip())) < len(text):
    obj, i = dec.raw_decode(text, i)
    obj["metadata"].pop("namespace", None)
    if obj["kind"] == "Secret":
        obj["stringData"]["api-key"] = "sk-kind-e2e"
    else:
        obj["spec"]["model"].update({"provider": "openai-compatible", "endpoint": "http://mock-llm:8100/v1"})
        obj["spec"]["worker"]["replicas"] = 1
    out.append(obj)
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": out}))
' | kubectl -n "$NS" apply -f - >&2
kubectl -n "$NS" wait --for=condition=Ready scalingendpoint/openai-sc --timeout="${T}s" >&2

# The chart's test hook runs where pods really run (kwok on the local control plane runs none):
# the operator image probes the operator's /healthz and the example worker's model list.
log "helm test"
helm upgrade inferscale charts/inferscale --namespace "$NS_SYS" --reuse-values \
  --set "helmTest.urls={http://openai-sc.$NS.svc:8108/v1/models}" --wait --timeout "${T}s" >&2
helm test inferscale --namespace "$NS_SYS" --timeout "${T}s" --logs >&2

log "running the client check in the cluster"
kubectl -n "$NS" delete job e2e-client --ignore-not-found >&2
sed "s|inferscale/e2e-client:dev|inferscale/e2e-client:$TAG|" tests/kind/client-job.yaml | kubectl -n "$NS" apply -f - >&2
result=timeout
deadline=$((SECONDS + T))
while (( SECONDS < deadline )); do
  conds=" $(kubectl -n "$NS" get job e2e-client -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}') "
  case $conds in
    *" Complete "*) result=complete; break ;;
    *" Failed "*) result=failed; break ;;
  esac
  sleep 2  # polling interval
done
kubectl -n "$NS" logs job/e2e-client || true
if [[ $result != complete ]]; then log "the client check did not pass: $result"; exit 1; fi
log "passed"
