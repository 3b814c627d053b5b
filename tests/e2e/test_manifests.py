"""Server-side dry runs of what users apply: the rendered chart and the plain manifests of deploy/.

The API server validates each object fully (schemas, CEL rules, admission incl. Pod Security)
without persisting it.
"""

from __future__ import annotations

import subprocess

import pytest

from conftest import CHART, ROOT, SUFFIX, k, namespace

DRY_NS = f"e2e-dryrun-{SUFFIX}"

VALUE_SETS = {
    "defaults": [],
    "everything-on": ["--set", "serviceMonitor.enabled=true", "--set", "grafanaDashboard.enabled=true",
                      "--set", "replicaCount=2", "--set", "leaderElection.namespace=" + DRY_NS],
    "another-namespace-listed": ["--set", f"watchNamespaces={{{DRY_NS}-b}}"],
    "all-namespaces": ["--set", "watchAllNamespaces=true"],
    "no-leader-election": ["--set", "leaderElection.enabled=false", "--set", "metrics.service.enabled=false"],
}


@pytest.fixture(scope="module")
def dry_ns(cluster, monitoring_crd):
    namespace(DRY_NS, enforce="restricted")
    namespace(f"{DRY_NS}-b", enforce="restricted")  # watched by "another-namespace-listed": its Role goes there
    yield DRY_NS
    k("delete", "namespace", DRY_NS, f"{DRY_NS}-b", "--ignore-not-found", "--wait=false", check=False)


@pytest.mark.parametrize("values", VALUE_SETS, ids=list(VALUE_SETS))
def test_helm_template_applies_with_server_dry_run(dry_ns, values):
    rendered = subprocess.run(
        ["helm", "template", "inferscale-dry", str(CHART), "--namespace", dry_ns, "--include-crds", *VALUE_SETS[values]],
        check=True, capture_output=True, text=True,
    ).stdout
    done = k("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert done.returncode == 0, done.stderr
    kinds = {line.split("/")[0] for line in done.stdout.splitlines()}
    assert "deployment.apps" in kinds and "customresourcedefinition.apiextensions.k8s.io" in kinds, done.stdout
    # "restricted" is enforced in the namespace: a pod template that broke it would warn here.
    assert "violate PodSecurity" not in done.stderr, done.stderr


def test_kubectl_apply_k_deploy_with_server_dry_run(cluster):
    # The kustomization creates inferscale-system; a dry run persists nothing, so the namespace
    # must exist for the namespaced objects to be checked.
    k("apply", "-f", str(ROOT / "deploy/operator/namespace.yaml"))
    # The e2e release (test_e2e.py) already owns the cluster-scoped inferscale-edit/-view through
    # Helm; server-side apply would report that as a field-manager conflict, which says nothing
    # about these manifests (a cluster has one or the other), so it is forced in this dry run.
    for mode in ([], ["--server-side", "--force-conflicts"]):
        done = k("apply", "-k", str(ROOT / "deploy"), "--dry-run=server", *mode, check=False)
        assert done.returncode == 0, done.stderr
        out = done.stdout
        for obj in ("customresourcedefinition.apiextensions.k8s.io/scalingendpoints.inferscale.dev",
                    "role.rbac.authorization.k8s.io/inferscale", "clusterrole.rbac.authorization.k8s.io/inferscale-edit",
                    "clusterrole.rbac.authorization.k8s.io/inferscale-view", "deployment.apps/inferscale",
                    "serviceaccount/inferscale", "service/inferscale-metrics"):
            assert obj in out, out
        assert "violate PodSecurity" not in done.stderr, done.stderr
    # Nothing from deploy/examples or deploy/demo is part of it.
    built = k("kustomize", str(ROOT / "deploy")).stdout
    top_kinds = {line for line in built.splitlines() if line.startswith("kind: ")}
    # Namespaced RBAC: the only cluster-scoped roles are the aggregated inferscale-edit/-view, and
    # nothing is bound cluster-wide.
    assert top_kinds == {"kind: CustomResourceDefinition", "kind: Namespace", "kind: ServiceAccount", "kind: ClusterRole",
                         "kind: Role", "kind: RoleBinding", "kind: Service", "kind: Deployment"}, top_kinds


def test_dev_and_kind_manifests_with_server_dry_run(dry_ns):
    """The simulator (Tilt, kind) and the kind client Job are admitted in a "restricted" namespace."""
    for f in ("deploy/dev/mock-llm.yaml", "tests/kind/client-job.yaml"):
        done = k("-n", dry_ns, "apply", "--dry-run=server", "-f", str(ROOT / f), check=False)
        assert done.returncode == 0, (f, done.stderr)
        assert "violate PodSecurity" not in done.stderr, (f, done.stderr)
