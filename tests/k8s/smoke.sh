#!/usr/bin/env bash
# Proves the local control plane does what the operator's tests rely on. Run it first in a suite.
# Needs: KUBECONFIG (admin), the fake nodes of nodes.sh; kubectl from $K8S_BIN (put first on PATH).
# Env: SMOKE_TIMEOUT  per-check deadline in seconds (default 60).
# Prints one PASS/FAIL line per check, then "smoke: N passed, M failed"; exits 1 if any failed.
# All objects live in a fresh namespace smoke-<suffix>, deleted (without waiting) at the end.
set -euo pipefail
[[ -n ${K8S_BIN:-} ]] && PATH=$K8S_BIN:$PATH
: "${KUBECONFIG:?set KUBECONFIG to the admin kubeconfig (e.g. target/testcluster/admin.kubeconfig)}"
T=${SMOKE_TIMEOUT:-60}
NS=smoke-$(date +%s)-$$
t0=$SECONDS
passed=0 failed=0
TMP=$(mktemp -d)
cleanup() {
  kubectl delete namespace "$NS" --wait=false --ignore-not-found >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# poll DEADLINE_S CMD...: re-run CMD once a second until it succeeds or the deadline passes.
# (The sleep is the polling interval, never the synchronisation itself.)
poll() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do (( SECONDS >= deadline )) && return 1; sleep 1; done
}
# check NAME FUNCTION: runs one check; the function prints its reason (last line) and returns 0/1.
check() {
  local name=$1 out rc=0 t=$SECONDS
  out=$("$2" 2>&1) || rc=$?
  local reason=${out##*$'\n'}
  if (( rc == 0 )); then
    passed=$((passed + 1)); echo "PASS $name ($((SECONDS - t))s): $reason"
  else
    failed=$((failed + 1)); echo "FAIL $name ($((SECONDS - t))s): $reason"
    if [[ $out == *$'\n'* ]]; then while IFS= read -r l; do echo "    $l"; done <<<"${out%$'\n'*}"; fi
  fi
  return 0
}
k() { kubectl -n "$NS" "$@"; }
jp() { k get "$1" -o jsonpath="$2" 2>/dev/null; }

# --- objects, all created up front so the controllers work on them concurrently ------------------
setup() {
  kubectl create namespace "$NS" >/dev/null
  # Own ServiceAccount instead of "default": the default SA is made by kube-controller-manager, and
  # the scheduler/kwok checks must not depend on it.
  k create serviceaccount smoke >/dev/null
  k apply -f - >/dev/null <<Y
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: smoke-web}}
  template:
    metadata: {labels: {app: smoke-web}}
    spec:
      serviceAccountName: smoke
      automountServiceAccountToken: false
      containers:
      - {name: c, image: fake.invalid/never-pulled, resources: {requests: {cpu: 100m}}}
---
apiVersion: v1
kind: Pod
metadata: {name: too-many-gpus}
spec:
  serviceAccountName: smoke
  automountServiceAccountToken: false
  tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
  containers:
  - {name: c, image: fake.invalid/never-pulled, resources: {limits: {nvidia.com/gpu: "16"}}}
---
apiVersion: v1
kind: Pod
metadata: {name: h100-no-toleration}
spec:
  serviceAccountName: smoke
  automountServiceAccountToken: false
  nodeSelector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}
  containers:
  - {name: c, image: fake.invalid/never-pulled, resources: {limits: {nvidia.com/gpu: "1"}}}
---
apiVersion: v1
kind: Pod
metadata: {name: h100-tolerating}
spec:
  serviceAccountName: smoke
  automountServiceAccountToken: false
  nodeSelector: {nvidia.com/gpu.present: "true", nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}
  tolerations: [{key: nvidia.com/gpu, operator: Equal, value: present, effect: NoSchedule}]
  containers:
  - {name: c, image: fake.invalid/never-pulled, resources: {limits: {nvidia.com/gpu: "1"}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: owner}
Y
  local uid; uid=$(jp cm/owner '{.metadata.uid}')
  k apply -f - >/dev/null <<Y
apiVersion: v1
kind: ConfigMap
metadata:
  name: dependent
  ownerReferences: [{apiVersion: v1, kind: ConfigMap, name: owner, uid: "$uid"}]
Y
  echo "namespace $NS with 1 Deployment, 3 Pods, 2 ConfigMaps"
}

# --- checks -------------------------------------------------------------------------------------
c_apiserver() {
  local v; v=$(kubectl version -o json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["clientVersion"]["gitVersion"], d["serverVersion"]["gitVersion"])') || return 1
  echo "kubectl ${v% *}, server ${v#* }"
}

nodes_state() { kubectl get nodes -l type=kwok -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{range .spec.taints[*]}/{.key}{end} {end}'; }
nodes_ok() { local s; s=$(nodes_state); [[ $(grep -o '=True' <<<"$s" | wc -l) -ge 4 && $s != *node.kubernetes.io/* ]]; }
c_nodes() {
  if ! poll "$T" nodes_ok; then echo "fake nodes not all Ready/untainted: $(nodes_state)"; return 1; fi
  nodes_state; echo
}

# kwok is the only thing renewing the fake nodes' Leases: a renewTime that moves proves it runs.
lease_time() { kubectl -n kube-node-lease get lease gpu-0 -o jsonpath='{.spec.renewTime}' 2>/dev/null; }
lease_moved() { [[ $(lease_time) != "$1" ]]; }
c_heartbeat() {
  local before; before=$(lease_time)
  [[ -n $before ]] || { echo "no Lease kube-node-lease/gpu-0 (kwok never heartbeated the node)"; return 1; }
  if ! poll 30 lease_moved "$before"; then
    echo "Lease gpu-0 not renewed within 30s (renewTime stuck at $before): kwok is not heartbeating"; return 1
  fi
  echo "Lease gpu-0 renewed ($before -> $(lease_time))"
}

deploy_available() { [[ $(jp deploy/web '{.status.availableReplicas}/{.status.conditions[?(@.type=="Available")].status}') == 2/True ]]; }
c_deployment() {
  if ! poll "$T" deploy_available; then
    # Say which link of Deployment -> ReplicaSet -> scheduled Pod -> Running Pod is missing.
    local rs pods
    rs=$(k get rs -l app=smoke-web -o name 2>/dev/null | wc -l)
    pods=$(k get pods -l app=smoke-web -o jsonpath='{range .items[*]}{.metadata.name}@{.spec.nodeName}/{.status.phase} {end}' 2>/dev/null)
    echo "ReplicaSets: $rs; pods (name@node/phase): ${pods:-none}"
    if (( rs == 0 )); then echo "Deployment not Available after ${T}s: no ReplicaSet (deployment controller / kube-controller-manager not running?)"
    elif [[ -z $pods ]]; then echo "Deployment not Available after ${T}s: no Pods (replicaset controller not running?)"
    elif [[ $pods == *@/* ]]; then echo "Deployment not Available after ${T}s: Pods not scheduled (kube-scheduler not running?)"
    else echo "Deployment not Available after ${T}s: Pods bound but not Running/Ready (kwok not running?)"; fi
    return 1
  fi
  local fake placed p
  fake=" $(kubectl get nodes -o jsonpath='{range .items[?(@.metadata.annotations.kwok\.x-k8s\.io/node=="fake")]}{.metadata.name} {end}')"
  placed=$(k get pods -l app=smoke-web -o jsonpath='{range .items[*]}{.spec.nodeName}/{.status.phase} {end}')
  for p in $placed; do
    [[ $p == */Running && $fake == *" ${p%/*} "* ]] || { echo "pod not Running on a kwok node: $p (of: $placed)"; return 1; }
  done
  echo "Deployment web Available, 2 Pods Running on kwok nodes: $placed"
}

sched_msg() {
  local m; m=$(jp "pod/$1" '{.status.conditions[?(@.type=="PodScheduled")].reason}: {.status.conditions[?(@.type=="PodScheduled")].message}')
  [[ $m == ': ' || -z $m ]] && m="no PodScheduled condition"
  echo "$m"
}
# Every scheduling verdict for a pod, one per line: its FailedScheduling events plus the current
# PodScheduled condition. The history matters: if nodes change later (e.g. kwok dies and the
# node-lifecycle controller taints them unreachable), the condition is rewritten with a new reason.
sched_history() {
  k get events --field-selector "involvedObject.kind=Pod,involvedObject.name=$1,reason=FailedScheduling" \
    -o jsonpath='{range .items[*]}Unschedulable: {.message}{"\n"}{end}' 2>/dev/null
  sched_msg "$1"
}
# unschedulable_with POD PATTERN...: some verdict says Unschedulable and contains every PATTERN.
unschedulable_with() {
  local pod=$1 line p ok; shift
  while IFS= read -r line; do
    [[ $line == Unschedulable:* ]] || continue
    ok=1; for p in "$@"; do [[ $line == *"$p"* ]] || ok=0; done
    (( ok )) && { echo "$line"; return 0; }
  done < <(sched_history "$pod")
  return 1
}
c_gpu_insufficient() {
  if ! poll "$T" unschedulable_with too-many-gpus 'Insufficient nvidia.com/gpu' >/dev/null; then
    echo "pod asking for 16 GPUs has no 'Unschedulable ... Insufficient nvidia.com/gpu' verdict after ${T}s (kube-scheduler not running?); PodScheduled: '$(sched_msg too-many-gpus)'"; return 1
  fi
  local st; st=$(jp pod/too-many-gpus '{.status.phase}@{.spec.nodeName}')
  [[ $st == Pending@ ]] || { echo "pod should be Pending and unbound, is $st"; return 1; }
  echo "16-GPU pod Pending; $(unschedulable_with too-many-gpus 'Insufficient nvidia.com/gpu')"
}

# Exactly one node (the tainted H100 node gpu-1) rejected for its taint, the other three for the
# selector: a generic "untolerated taint(s)" could also come from not-ready/unreachable taints.
c_gpu_taint() {
  local want=('1 node(s) had untolerated taint' "3 node(s) didn't match Pod's node affinity/selector")
  if ! poll "$T" unschedulable_with h100-no-toleration "${want[@]}" >/dev/null; then
    echo "H100 pod without toleration not rejected by the taint of gpu-1 alone after ${T}s (kube-scheduler not running?); PodScheduled: '$(sched_msg h100-no-toleration)'"; return 1
  fi
  local st; st=$(jp pod/h100-no-toleration '{.status.phase}@{.spec.nodeName}')
  [[ $st == Pending@ ]] || { echo "pod should be Pending and unbound, is $st"; return 1; }
  echo "H100 pod without toleration Pending; $(unschedulable_with h100-no-toleration "${want[@]}")"
}

tolerating_running() { [[ $(jp pod/h100-tolerating '{.spec.nodeName}/{.status.phase}') == gpu-1/Running ]]; }
c_gpu_toleration() {
  if ! poll "$T" tolerating_running; then
    local st; st=$(jp pod/h100-tolerating '{.spec.nodeName}/{.status.phase}')
    if [[ $st == /* ]]; then echo "pod with GPU nodeSelector+toleration not scheduled after ${T}s (kube-scheduler not running?): $(sched_msg h100-tolerating)"
    else echo "pod with GPU nodeSelector+toleration is node/phase '$st', want gpu-1/Running (kwok not running if bound but not Running)"; fi
    return 1
  fi
  echo "pod with nodeSelector nvidia.com/gpu.product=H100 + toleration Running on tainted node gpu-1"
}

gone() { [[ -z $(k get "$@" -o name --ignore-not-found 2>/dev/null) ]]; }
c_gc_ownerref() {
  [[ -n $(k get cm/dependent -o name 2>/dev/null) ]] || { echo "dependent ConfigMap missing before the test"; return 1; }
  k delete cm/owner >/dev/null
  if ! poll "$T" gone cm/dependent; then
    echo "ConfigMap with ownerReference to deleted owner still there after ${T}s (garbage collector / kube-controller-manager not running?)"; return 1
  fi
  echo "deleting owner ConfigMap garbage-collected its dependent"
}

c_gc_deployment() {
  local rs; rs=$(k get rs -l app=smoke-web -o name 2>/dev/null)
  [[ -n $rs ]] || { echo "no ReplicaSet exists to be collected (deployment controller / kube-controller-manager not running?)"; return 1; }
  k delete deploy/web --cascade=background >/dev/null
  if ! poll "$T" gone rs,pods -l app=smoke-web; then
    echo "after deleting Deployment web, still there after ${T}s: $(k get rs,pods -l app=smoke-web -o name | tr '\n' ' ') (GC needs kube-controller-manager; Terminating pods need kwok)"; return 1
  fi
  echo "deleting Deployment garbage-collected $rs and its Pods"
}

http_code_is() { # code token url
  [[ $(curl -sS -o /dev/null -w '%{http_code}' --cacert "$TMP/ca.crt" -H "Authorization: Bearer $2" "$3") == "$1" ]]
}
c_rbac() {
  k create serviceaccount no-rbac >/dev/null
  local token server code url body
  token=$(k create token no-rbac --duration=10m) || { echo "TokenRequest for ServiceAccount failed"; return 1; }
  server=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
  kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$TMP/ca.crt"
  url="$server/api/v1/namespaces/$NS/pods"
  code=$(curl -sS -o "$TMP/body" -w '%{http_code}' --cacert "$TMP/ca.crt" -H "Authorization: Bearer $token" "$url")
  body=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("message",""))' "$TMP/body" 2>/dev/null || true)
  [[ $code == 403 && $body == *"system:serviceaccount:$NS:no-rbac"* ]] || {
    echo "SA token without RBAC: want 403 naming the SA, got $code: $body"; return 1; }
  # Positive control: the same token is allowed once a Role grants it, so the 403 came from RBAC.
  k create role pod-reader --verb=list --resource=pods >/dev/null
  k create rolebinding no-rbac-reads --role=pod-reader --serviceaccount="$NS:no-rbac" >/dev/null
  if ! poll 20 http_code_is 200 "$token" "$url"; then
    echo "token still refused after a RoleBinding granted list pods"; return 1
  fi
  echo "SA token without RBAC refused (403: $body); allowed (200) after a RoleBinding"
}

echo "[smoke] kubectl: $(command -v kubectl); namespace $NS"
check apiserver            c_apiserver
check setup                setup
check nodes-ready          c_nodes
# Scheduler verdicts first: they arrive within a second, while the nodes are still as nodes.sh made them.
check gpu-insufficient     c_gpu_insufficient
check gpu-taint-repels     c_gpu_taint
check gpu-toleration       c_gpu_toleration
check deployment-available c_deployment
check node-heartbeat       c_heartbeat
check gc-ownerref          c_gc_ownerref
check gc-deployment        c_gc_deployment
check rbac-forbidden       c_rbac
echo "[smoke] done in $((SECONDS - t0))s"
echo "smoke: $passed passed, $failed failed"
(( failed == 0 ))
