# shellcheck shell=bash
# Sourced by the benchmark scripts of tests/bench; not run alone. Callers set WORK (a temp dir).

# Start a process and wait (bounded) for its "listening on" line; sets URL and PID.
start() { # start NAME CMD...
  local name=$1; shift
  "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  local pid=$! url=""
  for _ in $(seq 1 300); do
    url=$(grep -o 'http://[0-9.:]*' "$WORK/$name.out" | head -1 || true)
    [[ -n $url ]] && break
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.err" >&2; exit 1; }
    sleep 0.1   # polling the output file for the address, bounded by the loop
  done
  [[ -n $url ]] || { echo "$name did not start" >&2; exit 1; }
  # shellcheck disable=SC2034  # both are read by the sourcing script
  { URL=$url; PID=$pid; }
}
