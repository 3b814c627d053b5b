# shellcheck shell=bash
# Sourced by the control-plane scripts (cluster-up/down, with-cluster, smoke-negative); not run alone.
# Callers set HERE (this dir) first.

REPO=$(cd "$HERE/../.." && pwd)
STATE=${STATE:-$REPO/target/testcluster}
ETCD_PORT=${ETCD_PORT:-23790}; ETCD_PEER_PORT=${ETCD_PEER_PORT:-23800}
API_PORT=${API_PORT:-16443}; KCM_PORT=${KCM_PORT:-10257}
SCHED_PORT=${SCHED_PORT:-10259}; KWOK_PORT=${KWOK_PORT:-10247}
# shellcheck disable=SC2034  # used by the scripts that source this file
ALL_PORTS=("$ETCD_PORT" "$ETCD_PEER_PORT" "$API_PORT" "$KCM_PORT" "$SCHED_PORT" "$KWOK_PORT")

# pid_is PID EXE: true if PID is alive and still runs EXE (resolved path). Guards against killing,
# or refusing to start because of, an unrelated process that inherited a recycled pid.
# (A zombie has no /proc/PID/exe target, so it counts as gone.)
pid_is() {
  local pid=$1 exe=${2:-} cur
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  cur=$(readlink -f "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ -z $exe || $cur == "$exe" ]]
}

# port_free PORT: nothing accepts connections on 127.0.0.1:PORT (a 0.0.0.0 listener counts as busy).
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# recorded_pid NAME: pid cluster-up.sh recorded for NAME (empty if none).
recorded_pid() { [[ -f $STATE/pids ]] && awk -v n="$1" '$1==n {p=$2} END {print p}' "$STATE/pids"; }
