#!/usr/bin/env bash
# tests/e2e/crd-upgrade.sh — the chart's CRD upgrade path on a real control plane (KUBECONFIG):
# an older CRD applied the documented way (kubectl apply --server-side, as Helm's crds/ would have
# left it) is adopted by a release with crds.install=true, `helm upgrade` replaces it with this
# chart's CRD, and `helm uninstall` leaves it in place (crds.keep). Run it alone on a cluster (it
# changes the cluster-wide CRD), e.g.:
#   tests/k8s/with-cluster.sh bash tests/e2e/crd-upgrade.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
command -v helm >/dev/null && command -v kubectl >/dev/null || PATH="$(tests/k8s/build-bins.sh):$PATH"
CRD=scalingendpoints.inferscale.dev
NS=crd-upgrade-$$
REL=crdup
work=$(mktemp -d)
cleanup() {
  helm uninstall "$REL" -n "$NS" >/dev/null 2>&1 || true
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL $*" >&2; exit 1; }
has_pvc_field() { # the CRD as served has this chart's spec.vllm.cache.pvc
  kubectl get crd "$CRD" -o json | python3 -c '
import json, sys
crd = json.load(sys.stdin)
props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
sys.exit(0 if "pvc" in props["vllm"]["properties"]["cache"]["properties"] else 1)'
}

# 1. The CRD of an older release: this chart's, without the cache.pvc field.
python3 - crds/$CRD.yaml >"$work/old-crd.yaml" <<'PY'
import sys, yaml
crd = yaml.safe_load(open(sys.argv[1]))
del crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["vllm"]["properties"]["cache"]["properties"]["pvc"]
for v in crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["vllm"]["properties"]["cache"].get("x-kubernetes-validations", []):
    v["rule"] = "has(self.persistentVolumeClaim) != has(self.emptyDirSize)"
vllm = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["vllm"]
vllm["x-kubernetes-validations"] = [v for v in vllm.get("x-kubernetes-validations", []) if "pvc" not in v["rule"]]
yaml.safe_dump(crd, sys.stdout)
PY
kubectl apply --server-side --force-conflicts -f "$work/old-crd.yaml" >/dev/null
kubectl wait --for=condition=Established "crd/$CRD" --timeout=60s >/dev/null
if has_pvc_field; then fail "the old CRD already has cache.pvc"; fi
echo "PASS an older CRD is installed (no vllm.cache.pvc)"

# 2. Adopt it into the release (the README's step), then install with the templated CRD.
kubectl create namespace "$NS" >/dev/null
kubectl label crd "$CRD" app.kubernetes.io/managed-by=Helm --overwrite >/dev/null
kubectl annotate crd "$CRD" meta.helm.sh/release-name="$REL" meta.helm.sh/release-namespace="$NS" --overwrite >/dev/null
helm install "$REL" charts/inferscale -n "$NS" --skip-crds --set crds.install=true \
  --set rbac.aggregatedRoles=false >/dev/null
kubectl wait --for=condition=Established "crd/$CRD" --timeout=60s >/dev/null
has_pvc_field || fail "helm install with crds.install=true did not upgrade the CRD"
echo "PASS helm install (crds.install=true) upgraded the adopted CRD"

# 3. helm upgrade keeps it current (an upgrade re-applies the template).
kubectl apply --server-side --force-conflicts -f "$work/old-crd.yaml" >/dev/null
if has_pvc_field; then fail "could not roll the CRD back for the upgrade check"; fi
helm upgrade "$REL" charts/inferscale -n "$NS" --reuse-values >/dev/null
has_pvc_field || fail "helm upgrade did not upgrade the CRD"
echo "PASS helm upgrade upgraded the CRD"

# 4. helm uninstall leaves it (crds.keep, helm.sh/resource-policy: keep).
helm uninstall "$REL" -n "$NS" >/dev/null
kubectl get crd "$CRD" >/dev/null || fail "helm uninstall deleted the CRD"
echo "PASS helm uninstall kept the CRD"
# Leave the cluster with the committed CRD, as other tests expect.
kubectl apply --server-side --force-conflicts -f "crds/$CRD.yaml" >/dev/null
echo "crd-upgrade: 4 passed"
