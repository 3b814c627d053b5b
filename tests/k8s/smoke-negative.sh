#!/usr/bin/env bash
# smoke-negative.sh [scheduler|controller-manager|kwok ...]   (default: $SMOKE_KILL, else all three)
# Shows that smoke.sh detects a missing component: for each component, start a fresh control plane,
# kill that one process by its recorded pid, run smoke.sh and require that it fails with exactly the
# expected set of failing checks. Not part of the default test command (takes a few minutes).
# Env: SMOKE_TIMEOUT per-check deadline passed to smoke.sh (default here 30 s).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$HERE/lib.sh"          # STATE, recorded_pid, pid_is
export STATE SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-30}
read -r -a comps <<<"${*:-${SMOKE_KILL:-scheduler controller-manager kwok}}"

# Which smoke checks must fail without each component, and why.
declare -A expect=(
  # no scheduler: nothing gets bound, and no Unschedulable condition is ever written
  [scheduler]="deployment-available gpu-insufficient gpu-taint-repels gpu-toleration"
  # no kcm: no ReplicaSet for the Deployment, no garbage collection
  [controller-manager]="deployment-available gc-ownerref gc-deployment"
  # no kwok: no lease heartbeat, bound pods never Running, deleted pods stuck Terminating
  [kwok]="node-heartbeat deployment-available gpu-toleration gc-deployment"
)
declare -A proc=([scheduler]=kube-scheduler [controller-manager]=kube-controller-manager [kwok]=kwok)

K8S_BIN=$("$HERE/build-bins.sh")
export K8S_BIN PATH="$K8S_BIN:$PATH" KUBECONFIG="$STATE/admin.kubeconfig"
owned=0
# shellcheck disable=SC2317  # reached through the trap
stop_owned() { if (( owned )); then "$HERE/cluster-down.sh" >/dev/null 2>&1 || true; fi; }
trap stop_owned EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ok=0 bad=0
for c in "${comps[@]}"; do
  [[ -n ${expect[$c]:-} ]] || { echo "unknown component '$c' (scheduler|controller-manager|kwok)" >&2; exit 64; }
  echo "=== $c: start cluster, kill ${proc[$c]}, run smoke.sh"
  owned=1
  rc=0; "$HERE/cluster-up.sh" >/dev/null 2>"$STATE.negative-up.log" || rc=$?
  (( rc == 2 )) && owned=0
  (( rc == 0 )) || { cat "$STATE.negative-up.log" >&2; exit "$rc"; }
  pid=$(recorded_pid "${proc[$c]}")
  kill -TERM "$pid"
  # Wait (bounded) until the process is really gone before testing its absence.
  for _ in $(seq 1 100); do pid_is "$pid" || break; sleep 0.1; done
  if pid_is "$pid"; then echo "could not stop ${proc[$c]} ($pid)" >&2; exit 1; fi
  src=0; out=$("$HERE/smoke.sh" 2>&1) || src=$?
  while IFS= read -r l; do echo "    $l"; done <<<"$out"
  # Compare as sorted sets: the order of checks in smoke.sh is not part of the claim.
  got=$(awk '$1=="FAIL" {print $2}' <<<"$out" | sort | xargs)
  want=$(tr ' ' '\n' <<<"${expect[$c]}" | sort | xargs)
  "$HERE/cluster-down.sh" >/dev/null; owned=0
  if (( src != 0 )) && [[ $got == "$want" ]]; then
    ok=$((ok + 1)); echo "PASS without $c: smoke.sh exited $src, failing checks: $got"
  else
    bad=$((bad + 1)); echo "FAIL without $c: smoke.sh exited $src, failing checks: '$got', expected '$want'"
  fi
done
echo "smoke-negative: $ok passed, $bad failed"
(( bad == 0 ))
