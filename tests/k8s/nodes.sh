#!/usr/bin/env bash
# Create the fake nodes the tests schedule onto, then wait until kwok has made them Ready and the
# node-lifecycle controller has lifted the not-ready taint (until then nothing schedules on them).
#   cpu-0, cpu-1  plain CPU nodes
#   gpu-0         8 x NVIDIA-A100-SXM4-80GB, untainted
#   gpu-1         4 x NVIDIA-H100-80GB-HBM3, tainted nvidia.com/gpu=present:NoSchedule
# Labels follow what NVIDIA's GPU operator / GPU feature discovery put on real nodes.
# Env: KUBECONFIG (admin), K8S_BIN (kubectl is taken from there first), NODES_TIMEOUT (s, default 90),
#      NODE_PODS (pod capacity per node, default 1500: room for the 1,000-endpoint scale benchmark;
#      kubelet's 110 left 670 of its worker pods Pending with "Too many pods"). The CPU nodes have
#      128 cores each for the same reason: a worker pod requests 100m, and 16 + 16 + 64 cores
#      left the last 40 of 1,000 workers Pending with "Insufficient cpu".
# Idempotent: existing nodes are left as they are.
set -euo pipefail
[[ -n ${K8S_BIN:-} ]] && PATH=$K8S_BIN:$PATH
: "${KUBECONFIG:?set KUBECONFIG to the admin kubeconfig}"
timeout_s=${NODES_TIMEOUT:-90}
node_pods=${NODE_PODS:-1500}

node() { # name cpu memory gpus product taint(yes|no)
  local name=$1 cpu=$2 mem=$3 gpus=$4 product=$5 taint=$6 labels='' caps spec='spec: {}'
  if kubectl get node "$name" >/dev/null 2>&1; then return 0; fi
  caps="{cpu: \"$cpu\", memory: $mem, pods: \"$node_pods\", ephemeral-storage: 200Gi"
  if (( gpus > 0 )); then
    caps+=", nvidia.com/gpu: \"$gpus\""
    labels="
    nvidia.com/gpu.present: \"true\"
    nvidia.com/gpu.product: $product
    nvidia.com/gpu.count: \"$gpus\"
    nvidia.com/gpu.memory: \"81920\""
  fi
  caps+="}"
  if [[ $taint == yes ]]; then
    spec="spec:
  taints:
  - {key: nvidia.com/gpu, value: present, effect: NoSchedule}"
  fi
  # Status (capacity/allocatable) is only taken from the object on create; kwok's node-initialize
  # stage keeps capacity that is already there. Later changes go through the status subresource.
  kubectl create -f - >/dev/null <<N
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok$labels
$spec
status:
  capacity: $caps
  allocatable: $caps
N
}
node cpu-0 128 64Gi 0 ''                     no
node cpu-1 128 64Gi 0 ''                     no
node gpu-0 64 512Gi 8 NVIDIA-A100-SXM4-80GB  no
node gpu-1 64 512Gi 4 NVIDIA-H100-80GB-HBM3  yes

# Ready (kwok) and without node.kubernetes.io/* taints (node-lifecycle controller of kcm).
deadline=$((SECONDS + timeout_s))
while :; do
  state=$(kubectl get nodes cpu-0 cpu-1 gpu-0 gpu-1 -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}/{.spec.taints[*].key} {end}')
  [[ $state != *node.kubernetes.io/* && $(grep -o '=True' <<<"$state" | wc -l) == 4 ]] && break
  if (( SECONDS > deadline )); then
    echo "nodes.sh: fake nodes not Ready+untainted after ${timeout_s}s: $state" >&2
    echo "  (no Ready: kwok not running or annotation missing; node.kubernetes.io/not-ready taint: kube-controller-manager not running)" >&2
    exit 1
  fi
  sleep 1
done
