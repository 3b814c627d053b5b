#!/usr/bin/env bash
# Stop exactly the processes cluster-up.sh recorded in $STATE/pids, newest first, by pid.
# Never matches by name: a developer may run other etcds/apiservers on the same machine.
# Env: STATE (default <repo>/target/testcluster), KEEP_STATE=1 keeps the etcd data for a later
# `KEEP_STATE=1 cluster-up.sh`. Exits non-zero only if a recorded process survives SIGKILL.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$HERE/lib.sh"          # STATE default, pid_is
PIDS=$STATE/pids
[[ -f $PIDS ]] || { echo "cluster-down: nothing recorded in $PIDS"; exit 0; }
rc=0
while read -r name pid exe; do
  if ! pid_is "$pid" "$exe"; then echo "cluster-down: $name ($pid) already gone"; continue; fi
  kill -TERM "$pid" 2>/dev/null || true
  # Up to 10 s for a graceful stop (etcd flushes, apiserver drains), then SIGKILL.
  for _ in $(seq 1 100); do pid_is "$pid" "$exe" || break; sleep 0.1; done
  if pid_is "$pid" "$exe"; then
    echo "cluster-down: $name ($pid) ignored SIGTERM for 10s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do pid_is "$pid" "$exe" || break; sleep 0.1; done
    if pid_is "$pid" "$exe"; then echo "cluster-down: $name ($pid) survived SIGKILL" >&2; rc=1; continue; fi
  fi
  echo "cluster-down: stopped $name ($pid)"
done < <(tac "$PIDS")
(( rc == 0 )) && rm -f "$PIDS"
[[ ${KEEP_STATE:-0} == 1 ]] || rm -rf "$STATE/etcd"
exit "$rc"
