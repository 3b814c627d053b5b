#!/usr/bin/env bash
# with-cluster.sh CMD [ARGS...]
# Build or reuse the control-plane binaries, start a fresh local control plane, run smoke.sh, then
# CMD with KUBECONFIG, K8S_BIN and PATH (K8S_BIN first) exported. The control plane is ALWAYS
# stopped again (EXIT/INT/TERM), and the exit status is CMD's (or the first failing step's).
# Env: SKIP_SMOKE=1 skips smoke.sh; STATE and the *_PORT variables as for cluster-up.sh.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$HERE/lib.sh"          # STATE, ALL_PORTS, port_free
(( $# > 0 )) || { echo "usage: $0 CMD [ARGS...]" >&2; exit 64; }
export STATE

# build-bins.sh logs to stderr and prints only the bin dir; a cache hit returns at once.
K8S_BIN=$("$HERE/build-bins.sh")
export K8S_BIN PATH="$K8S_BIN:$PATH" KUBECONFIG="$STATE/admin.kubeconfig"

owned=0   # set once cluster-up.sh got past its refusal checks: only then is the cluster ours to stop
# shellcheck disable=SC2317  # reached through the trap
on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if (( owned )); then
    STATE=$STATE "$HERE/cluster-down.sh" >&2 || rc=$(( rc ? rc : 1 ))
    # Proof that nothing is left listening on the control-plane ports.
    local p busy=()
    for p in "${ALL_PORTS[@]}"; do port_free "$p" || busy+=("$p"); done
    if (( ${#busy[@]} )); then
      echo "with-cluster: still listening after cluster-down on 127.0.0.1: ${busy[*]}" >&2
      rc=$(( rc ? rc : 1 ))
    fi
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

owned=1
rc=0; "$HERE/cluster-up.sh" >&2 || rc=$?
if (( rc == 2 )); then owned=0; exit 2; fi   # refused (busy port / live earlier run): not ours to stop
(( rc == 0 )) || exit "$rc"
if [[ ${SKIP_SMOKE:-0} != 1 ]]; then "$HERE/smoke.sh"; fi
rc=0; "$@" || rc=$?
exit "$rc"
