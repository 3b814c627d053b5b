#!/usr/bin/env bash
# Start a loopback-only Kubernetes control plane as ordinary processes:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (+ fake nodes via nodes.sh).
#
# Env: K8S_BIN     dir with the binaries (default: whatever build-bins.sh prints, built if needed)
#      STATE       work dir (default <repo>/target/testcluster); admin kubeconfig at $STATE/admin.kubeconfig
#      COMPONENTS  subset to start (default "etcd apiserver kcm scheduler kwok")
#      NODES=0     skip creating the fake nodes
#      KEEP_STATE=1 reuse etcd data left by `KEEP_STATE=1 cluster-down.sh` instead of starting empty
#      ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHED_PORT KWOK_PORT   listener ports (all on 127.0.0.1)
# Every process started is recorded in $STATE/pids as "name pid exe"; cluster-down.sh stops exactly
# those. If start-up fails half-way, whatever was started is stopped again before exiting non-zero.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$HERE/lib.sh"          # STATE, *_PORT defaults, pid_is, port_free
COMPONENTS=${COMPONENTS:-etcd apiserver kcm scheduler kwok}
SERVICE_CIDR=${SERVICE_CIDR:-10.96.0.0/16}; SERVICE_IP=${SERVICE_IP:-10.96.0.1}
POD_CIDR=${POD_CIDR:-10.244.0.0/16}
PKI=$STATE/pki; LOGS=$STATE/logs; PIDS=$STATE/pids
t_start=$SECONDS
log() { echo "[cluster-up +$((SECONDS - t_start))s] $*" >&2; }
die() { echo "cluster-up: FATAL: $*" >&2; exit 1; }
refuse() { echo "cluster-up: REFUSED: $*" >&2; exit 2; }   # exit 2: nothing was started
want() { [[ " $COMPONENTS " == *" $1 "* ]]; }

# --- refuse leftovers of an earlier run ------------------------------------------------------
mkdir -p "$STATE" "$LOGS"
if [[ -s $PIDS ]]; then
  while read -r n p exe; do
    # A recorded pid only counts if it still runs the binary we started: pids get reused.
    if pid_is "$p" "$exe"; then
      refuse "$n (pid $p) from an earlier run is still alive; stop it with: STATE=$STATE $HERE/cluster-down.sh"
    fi
  done <"$PIDS"
  log "removing stale pid file of an earlier run (none of its processes is alive)"
  rm -f "$PIDS"
fi
ports=()
want etcd && ports+=("$ETCD_PORT" "$ETCD_PEER_PORT")
want apiserver && ports+=("$API_PORT")
want kcm && ports+=("$KCM_PORT")
want scheduler && ports+=("$SCHED_PORT")
want kwok && ports+=("$KWOK_PORT")
for p in "${ports[@]}"; do
  port_free "$p" || refuse "127.0.0.1:$p is already in use (a stale cluster, another etcd/apiserver?). See: ss -ltnp 'sport = :$p'. Ports are overridable: ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHED_PORT KWOK_PORT"
done

if [[ -z ${K8S_BIN:-} ]]; then
  log "K8S_BIN not set: building or reusing the cached binaries"
  K8S_BIN=$("$HERE/build-bins.sh")
fi
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl; do
  [[ -x $K8S_BIN/$b ]] || refuse "$K8S_BIN/$b missing (K8S_BIN should be the dir build-bins.sh prints)"
done
KWOK_STAGES=${KWOK_STAGES:-$K8S_BIN/../share/kwok-stages.yaml}
[[ -s $KWOK_STAGES ]] || refuse "kwok stages file $KWOK_STAGES missing (kwok would exit with 'no stages found')"

# A cluster starts empty: etcd data of an earlier run would bring back its nodes, pods and namespaces.
if [[ -d $STATE/etcd && ${KEEP_STATE:-0} != 1 ]]; then
  log "removing etcd data of an earlier run ($STATE/etcd)"; rm -rf "$STATE/etcd"
fi

# If anything below fails, stop what we started so no half cluster is left behind.
started_ok=0
on_exit() { local rc=$?; if (( started_ok == 0 )) && [[ -s $PIDS ]]; then
  echo "cluster-up: start-up failed (rc=$rc); stopping the processes it started" >&2
  STATE=$STATE "$HERE/cluster-down.sh" >&2 || true; fi; }
trap on_exit EXIT
trap 'exit 130' INT   # turn signals into an ordinary exit so on_exit runs with a meaningful rc
trap 'exit 143' TERM

start_bg() { # name exe args...
  local name=$1 exe=$2; shift 2
  "$exe" "$@" >"$LOGS/$name.log" 2>&1 &
  echo "$name $! $(readlink -f "$exe")" >>"$PIDS"
}
wait_for() { # name timeout_s curl-args...   polls the health endpoint until ok, the process dies, or the deadline
  local name=$1 timeout=$2; shift 2
  local pid t0=$SECONDS; pid=$(recorded_pid "$name")
  until curl -fsS --max-time 3 "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "cluster-up: FATAL: $name (pid $pid) exited; last lines of $LOGS/$name.log:" >&2
      tail -n 40 "$LOGS/$name.log" >&2; return 1; fi
    if (( SECONDS - t0 > timeout )); then
      echo "cluster-up: FATAL: $name not healthy after ${timeout}s; last lines of $LOGS/$name.log:" >&2
      tail -n 40 "$LOGS/$name.log" >&2; return 1; fi
    sleep 0.5
  done
  log "$name healthy after $((SECONDS - t0))s (pid $pid)"
}
kubeconfig() { # file user certbase   (data inline: kubectl, helm, kwok and kube-rs read the same file)
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: inferscale-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$3.crt")
    client-key-data: $(base64 -w0 <"$PKI/$3.key")
contexts:
- name: inferscale-test
  context: {cluster: inferscale-test, user: $2}
current-context: inferscale-test
KC
  chmod 600 "$1"
}

SERVICE_IP=$SERVICE_IP "$HERE/pki.sh" "$PKI"
kubeconfig "$STATE/admin.kubeconfig"     test-admin admin
kubeconfig "$STATE/kcm.kubeconfig"       system:kube-controller-manager kcm
kubeconfig "$STATE/scheduler.kubeconfig" system:kube-scheduler scheduler
kubeconfig "$STATE/kwok.kubeconfig"      kwok-controller kwok
ADMIN_CURL=(--cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key")
log "PKI and kubeconfigs ready in $STATE"

if want etcd; then
  # --unsafe-no-fsync: throw-away data, and fsync latency dominates etcd on a shared disk.
  etcd_help=$("$K8S_BIN/etcd" --help 2>&1 || true); extra=()
  [[ $etcd_help == *--unsafe-no-fsync* ]] && extra+=(--unsafe-no-fsync)
  start_bg etcd "$K8S_BIN/etcd" --name test --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "test=http://127.0.0.1:$ETCD_PEER_PORT" "${extra[@]}"
  wait_for etcd 30 "http://127.0.0.1:$ETCD_PORT/health"
fi

if want apiserver; then
  # --advertise-address=127.0.0.1 + --endpoint-reconciler-type=none: no default-route lookup and no
  # "loopback endpoints are invalid" churn for the `kubernetes` Service (nothing out-of-cluster needs it).
  start_bg kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --endpoint-reconciler-type=none \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --cert-dir="$STATE/apiserver-certs" --profiling=false --v="${APISERVER_V:-1}"
  # readyz with the admin cert: independent of anonymous auth and of when RBAC bootstrap finishes.
  wait_for kube-apiserver 90 "${ADMIN_CURL[@]}" "https://127.0.0.1:$API_PORT/readyz"
fi

if want kcm; then
  # Each controller runs under its own ServiceAccount (as kubeadm does), so RBAC bootstrap roles apply.
  start_bg kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$STATE/kcm.kubeconfig" \
    --authentication-kubeconfig="$STATE/kcm.kubeconfig" --authorization-kubeconfig="$STATE/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --controllers='*' --v="${KCM_V:-1}"
  wait_for kube-controller-manager 60 -k "https://127.0.0.1:$KCM_PORT/healthz"
fi

if want scheduler; then
  cat >"$STATE/scheduler-config.yaml" <<SC
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $STATE/scheduler.kubeconfig
leaderElection:
  leaderElect: false
SC
  start_bg kube-scheduler "$K8S_BIN/kube-scheduler" --config="$STATE/scheduler-config.yaml" \
    --authentication-kubeconfig="$STATE/scheduler.kubeconfig" --authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --v="${SCHED_V:-1}"
  wait_for kube-scheduler 60 -k "https://127.0.0.1:$SCHED_PORT/healthz"
fi

if want kwok; then
  # --server-address is mandatory here: without it kwok's server listens on 0.0.0.0.
  # --node-ip=127.0.0.1 keeps any apiserver->"kubelet" call (logs/exec) on loopback.
  # Only nodes annotated kwok.x-k8s.io/node=fake are managed, so a test can add real-looking nodes
  # that nobody heartbeats (e.g. to test NotReady handling).
  start_bg kwok "$K8S_BIN/kwok" --kubeconfig="$STATE/kwok.kubeconfig" --config="$KWOK_STAGES" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-ip=127.0.0.1 --cidr="$POD_CIDR" --node-lease-duration-seconds="${KWOK_LEASE_SECONDS:-20}" \
    --server-address="127.0.0.1:$KWOK_PORT"
  wait_for kwok 60 "http://127.0.0.1:$KWOK_PORT/healthz"
fi

if [[ ${NODES:-1} == 1 ]] && want apiserver && want kwok; then
  KUBECONFIG=$STATE/admin.kubeconfig K8S_BIN=$K8S_BIN "$HERE/nodes.sh"
  log "fake nodes Ready"
fi
started_ok=1
log "control plane up in $((SECONDS - t_start))s"
# stdout is meant for eval: eval "$(tests/k8s/cluster-up.sh)" sets up an interactive shell.
echo "export KUBECONFIG=$STATE/admin.kubeconfig"
echo "export K8S_BIN=$K8S_BIN PATH=$K8S_BIN:\$PATH"
