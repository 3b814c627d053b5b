#!/usr/bin/env bash
# Proves the oldest Kubernetes version the chart claims (Chart.yaml kubeVersion) accepts what we ship:
# starts etcd + the kube-apiserver built by build-oldest-apiserver.sh on ports of its own, applies
# the CRD server-side, waits for Established, applies every deploy/examples/*.yaml server-side (one
# namespace each) and checks each object was stored, then checks that an invalid ScalingEndpoint
# is REFUSED with its CEL message (the CRD's validation rules run on that version too).
# The control plane is started by cluster-up.sh (COMPONENTS="etcd apiserver") and ALWAYS stopped.
# Env: OLDEST_STATE (default <repo>/target/oldest-cluster), OLDEST_ETCD_PORT (24190),
#      OLDEST_ETCD_PEER_PORT (24200), OLDEST_API_PORT (24443): not the suite's ports, so this runs
#      while the suite's own control plane is up. K8S_BIN (etcd, kubectl) and OLDEST_K8S_BIN
#      (kube-apiserver) default to what build-bins.sh / build-oldest-apiserver.sh print (built if missing).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
STATE=${OLDEST_STATE:-$REPO/target/oldest-cluster}
ETCD_PORT=${OLDEST_ETCD_PORT:-24190}; ETCD_PEER_PORT=${OLDEST_ETCD_PEER_PORT:-24200}
API_PORT=${OLDEST_API_PORT:-24443}
CRD=$REPO/crds/scalingendpoints.inferscale.dev.yaml
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$HERE/lib.sh"          # port_free (STATE and the ports above are already set, so kept)
t0=$SECONDS
log() { echo "[oldest-apiserver +$((SECONDS - t0))s] $*" >&2; }
fail() { echo "oldest-apiserver: FAILED: $*" >&2; exit 1; }

K8S_BIN=${K8S_BIN:-$("$HERE/build-bins.sh")}
OLDEST_K8S_BIN=${OLDEST_K8S_BIN:-$("$HERE/build-oldest-apiserver.sh")}
server_version=$("$OLDEST_K8S_BIN/kube-apiserver" --version)
claimed=$(sed -n 's/^kubeVersion:[[:space:]]*"*>=\([0-9]*\.[0-9]*\).*/\1/p' "$REPO/charts/inferscale/Chart.yaml")
[[ -n $claimed ]] || fail "no kubeVersion \">=X.Y\" in charts/inferscale/Chart.yaml"
[[ $server_version == "Kubernetes v$claimed."* ]] ||
  fail "the chart claims >=$claimed but $OLDEST_K8S_BIN/kube-apiserver is '$server_version' (set OLDEST_K8S_VERSION for build-oldest-apiserver.sh)"

# cluster-up.sh checks for every binary of a full control plane; give it a bin dir holding the old
# kube-apiserver and the suite's other binaries (only etcd and kube-apiserver are started).
mkdir -p "$STATE/bin"
for b in etcd kube-controller-manager kube-scheduler kwok kubectl; do ln -sfn "$K8S_BIN/$b" "$STATE/bin/$b"; done
ln -sfn "$OLDEST_K8S_BIN/kube-apiserver" "$STATE/bin/kube-apiserver"

up=(env STATE="$STATE" ETCD_PORT="$ETCD_PORT" ETCD_PEER_PORT="$ETCD_PEER_PORT" API_PORT="$API_PORT"
    K8S_BIN="$STATE/bin" KWOK_STAGES="$K8S_BIN/../share/kwok-stages.yaml" COMPONENTS="etcd apiserver" NODES=0)
owned=0
# shellcheck disable=SC2317  # reached through the trap
on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if (( owned )); then
    STATE=$STATE "$HERE/cluster-down.sh" >&2 || rc=$(( rc ? rc : 1 ))
    local p
    for p in "$ETCD_PORT" "$ETCD_PEER_PORT" "$API_PORT"; do
      port_free "$p" || { echo "oldest-apiserver: 127.0.0.1:$p still listening after cluster-down" >&2; rc=$(( rc ? rc : 1 )); }
    done
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
owned=1
rc=0; "${up[@]}" "$HERE/cluster-up.sh" >/dev/null || rc=$?
if (( rc == 2 )); then owned=0; exit 2; fi   # refused (busy port / live earlier run): not ours to stop
(( rc == 0 )) || exit "$rc"
log "$server_version up on 127.0.0.1:$API_PORT (etcd $ETCD_PORT)"

# A fresh discovery cache: kubectl must learn about the CRD's kind from this server, not a stale one.
kc() { "$K8S_BIN/kubectl" --kubeconfig="$STATE/admin.kubeconfig" --cache-dir="$STATE/kubectl-cache" "$@"; }
rm -rf "$STATE/kubectl-cache"

out=$(kc apply --server-side -f "$CRD" 2>&1) || fail "the CRD was refused by $server_version:"$'\n'"$out"
log "CRD: $out"
# Polled rather than `kubectl wait --for=condition=Established`: right after the apply the CRD can
# have no status.conditions yet, and kubectl wait then fails at once instead of waiting.
established() {
  [[ $(kc get crd scalingendpoints.inferscale.dev \
    -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null) == True ]]
}
deadline=$((SECONDS + 60))
until established; do
  (( SECONDS < deadline )) ||
    fail "the CRD never became Established on $server_version: $(kc get crd scalingendpoints.inferscale.dev -o jsonpath='{.status.conditions}')"
  sleep 0.2  # polling interval
done
log "CRD Established"

n=0
for f in "$REPO"/deploy/examples/*.yaml; do
  ns=oldest-$(basename "$f" .yaml)
  kc create namespace "$ns" >/dev/null
  out=$(kc apply --server-side -n "$ns" -f "$f" 2>&1) || fail "$(basename "$f") was refused by $server_version:"$'\n'"$out"
  # Every object of the file must now be stored (kubectl get -f fails on any missing one).
  stored=$(kc get -n "$ns" -f "$f" -o name 2>&1) || fail "$(basename "$f"): not every object was stored:"$'\n'"$stored"
  want=$(grep -c '^kind:' "$f")
  got=$(wc -l <<<"$stored")
  (( got == want )) || fail "$(basename "$f"): $want objects in the file, $got stored: $stored"
  log "$(basename "$f"): accepted ($(tr '\n' ' ' <<<"$stored"))"
  n=$((n + 1))
done
(( n > 0 )) || fail "no deploy/examples/*.yaml found"

# The CEL rules work on this version: particle filtering without a reward model is refused with
# the rule's message, and nothing is stored.
kc create namespace oldest-invalid >/dev/null
invalid='apiVersion: inferscale.dev/v1alpha1
kind: ScalingEndpoint
metadata: {name: pf-without-reward}
spec:
  model: {name: gpt-4o-mini, provider: openai, endpoint: auto}
  algorithm: {name: particle-filtering}'
want_msg="algorithm particle-filtering and beam-search need a process reward model: set spec.reward"
if out=$(kc apply --server-side -n oldest-invalid -f - <<<"$invalid" 2>&1); then
  fail "$server_version ACCEPTED particle-filtering without spec.reward: $out"
fi
[[ $out == *"$want_msg"* ]] || fail "refused, but not with the CEL message '$want_msg':"$'\n'"$out"
if stored=$(kc get -n oldest-invalid scalingendpoint pf-without-reward -o name 2>&1); then
  fail "the refused object was stored anyway: $stored"
fi
log "invalid object refused: $out"
log "OK: $server_version accepts the CRD and all $n examples, and enforces its CEL rules"
