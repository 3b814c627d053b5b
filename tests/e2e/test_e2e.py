"""End to end on the local control plane: chart → operator (with the chart's RBAC) → ScalingEndpoint
→ the worker its Deployment specifies → the real `openai` client.

The tests share one release and one operator process and run in file order; each builds on the
state the previous one left (that is the point of an end-to-end run).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

import client_check
import podsim
from conftest import (
    CLIENT_NS,
    EX_NS,
    OP_NS,
    OTHER_NS,
    RELEASE,
    ROOT,
    binary,
    helm,
    k,
    kj,
    namespace,
    start_operator,
)

EXAMPLES = {
    "openai-self-consistency.yaml": "openai-sc",
    "openai-best-of-n.yaml": "openai-bon",
    "bedrock.yaml": "bedrock-claude",
    "vllm-gpu.yaml": "qwen-local",
    "prm-gpu.yaml": "qwen-math",
}
UPSTREAM_KEY = "sk-e2e-from-the-secret"
# What the e2e learned, for later tests (the worker's metrics, for the dashboard test).
SEEN: dict[str, object] = {}


def condition(obj: dict, type_: str) -> dict | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None)


def wait_ready(ns: str, name: str, timeout: float = 90) -> dict:
    def ready():
        se = kj("-n", ns, "get", "scalingendpoint", name)
        c = condition(se, "Ready")
        return se if c and c["status"] == "True" and se["status"].get("observedGeneration") == se["metadata"]["generation"] else None

    try:
        return podsim.wait_for(f"ScalingEndpoint {ns}/{name} Ready", ready, timeout=timeout)
    except TimeoutError:
        se = kj("-n", ns, "get", "scalingendpoint", name)
        raise AssertionError(f"{ns}/{name} not Ready: {json.dumps(se.get('status'), indent=1)}") from None


def json_stream(text: str) -> list[dict]:
    """Concatenated JSON documents (kubectl -o json of several objects)."""
    dec, out, i = json.JSONDecoder(), [], 0
    while (i := len(text) - len(text[i:].lstrip()) ) < len(text):
        obj, i = dec.raw_decode(text, i)
        out.append(obj)
    return out


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def no_forbidden(proc: podsim.PodProcess) -> None:
    # RBAC refusals only (a namespace being deleted also answers 403, NamespaceTerminating).
    bad = [line for line in proc.stdout + proc.stderr if re.search(r'forbidden: User \\?"system:serviceaccount:[^"\\]+\\?" cannot', line)]
    assert not bad, "the operator was refused by the API server:\n" + "".join(bad[:10])


# --- RBAC of the chart --------------------------------------------------------------------------


SA = f"system:serviceaccount:{OP_NS}:{RELEASE}"
WATCHED = (OP_NS, EX_NS, CLIENT_NS)


def can(verb: str, res: str, ns: str | None = EX_NS, who: str = SA) -> bool:
    """`kubectl auth can-i` as `who` (impersonated by the admin); `res` may end in /subresource.
    ns None: a cluster-scoped resource; "*": in all namespaces at once."""
    res, _, sub = res.partition("/")
    where = [] if ns is None else ["--all-namespaces"] if ns == "*" else ["-n", ns]
    args = ["auth", "can-i", verb, res, f"--as={who}", *where] + ([f"--subresource={sub}"] if sub else [])
    return k(*args, check=False).stdout.strip() == "yes"


def as_sa(sa_kubeconfig, *args: str, input: str | None = None):
    """kubectl with nothing but the chart ServiceAccount's token."""
    return k("--kubeconfig", str(sa_kubeconfig / "kubeconfig"), *args, input=input, check=False)


def test_chart_rbac_is_least_privilege(release):
    """The default install: a Role in each watched namespace, nothing cluster-wide, and in them only
    what the operator calls."""
    assert k("get", "clusterrole", RELEASE, check=False).returncode != 0
    assert k("get", "clusterrolebinding", RELEASE, check=False).returncode != 0
    for ns in WATCHED:
        role = kj("-n", ns, "get", "role", RELEASE)
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), f"wildcard in {rule}"
            if "secrets" in rule["resources"]:
                # read, or create (the generated vLLM key) in a rule of its own
                assert set(rule["verbs"]) <= {"get", "list", "watch"} or rule["verbs"] == ["create"], rule
            if "pods" in rule["resources"]:
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule

    allowed = [("watch", "scalingendpoints.inferscale.dev"), ("patch", "scalingendpoints.inferscale.dev/status"),
               ("create", "deployments.apps"), ("get", "secrets"), ("create", "secrets"), ("create", "events.events.k8s.io"),
               ("patch", "servicemonitors.monitoring.coreos.com"), ("get", "pods"), ("list", "pods"), ("watch", "pods")]
    denied = [("update", "secrets"), ("delete", "secrets"), ("patch", "secrets"),
              ("delete", "scalingendpoints.inferscale.dev"), ("update", "scalingendpoints.inferscale.dev"),
              ("create", "pods"), ("delete", "pods"), ("patch", "pods"), ("create", "pods/exec"),
              ("create", "serviceaccounts/token"), ("update", "scalingendpoints.inferscale.dev/status"),
              ("create", "roles.rbac.authorization.k8s.io"), ("update", "deployments.apps"), ("create", "leases.coordination.k8s.io")]
    for ns in (EX_NS, CLIENT_NS):
        assert [a for a in allowed if not can(*a, ns=ns)] == [], ns
        assert [d for d in denied if can(*d, ns=ns)] == [], ns
    assert not can("list", "nodes", None) and not can("create", "customresourcedefinitions.apiextensions.k8s.io", None)
    # The Lease only in the release namespace.
    assert can("patch", "leases.coordination.k8s.io", OP_NS) and not can("patch", "leases.coordination.k8s.io", EX_NS)


def test_default_install_cannot_read_secrets_outside_its_namespaces(release, sa_kubeconfig):
    """With the chart's own token: Secrets of a namespace it does not watch are refused by the API
    server, while the same request in a watched namespace works (so the token itself is fine)."""
    namespace(OTHER_NS, enforce="restricted")
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-creds"}, "stringData": {"password": "hunter2"}}
    for ns in (OTHER_NS, EX_NS):
        k("-n", ns, "apply", "-f", "-", input=json.dumps(secret))

    assert not can("get", "secrets", OTHER_NS) and not can("list", "secrets", OTHER_NS)
    assert not can("list", "secrets", "*"), "cluster-wide Secret list must be refused"
    refused = as_sa(sa_kubeconfig, "-n", OTHER_NS, "get", "secret", "db-creds", "-o", "json")
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr + refused.stdout
    assert "hunter2" not in refused.stdout + refused.stderr and "aHVudGVyMg" not in refused.stdout
    listed = as_sa(sa_kubeconfig, "get", "secrets", "--all-namespaces")
    assert listed.returncode != 0 and "forbidden" in listed.stderr.lower(), listed.stderr
    # Nor anything else there: no ScalingEndpoints, no Deployments.
    assert not can("list", "scalingendpoints.inferscale.dev", OTHER_NS) and not can("create", "deployments.apps", OTHER_NS)
    # Control: the same token reads the Secret in a watched namespace.
    ok = as_sa(sa_kubeconfig, "-n", EX_NS, "get", "secret", "db-creds", "-o", "jsonpath={.metadata.name}")
    assert ok.returncode == 0 and ok.stdout == "db-creds", ok.stderr


def test_aggregated_roles_grant_scalingendpoints_to_edit_and_view(release):
    """inferscale-edit/-view aggregate into the built-in roles: a user bound to `edit` in a
    namespace manages ScalingEndpoints there, one bound to `view` reads them only."""
    for name, label in (("inferscale-edit", "aggregate-to-edit"), ("inferscale-view", "aggregate-to-view")):
        role = kj("get", "clusterrole", name)
        assert role["metadata"]["labels"][f"rbac.authorization.k8s.io/{label}"] == "true"
    assert kj("get", "clusterrole", "inferscale-edit")["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    editor, viewer = f"e2e-editor-{RELEASE}", f"e2e-viewer-{RELEASE}"
    k("-n", EX_NS, "create", "rolebinding", "e2e-editor", "--clusterrole=edit", f"--user={editor}")
    k("-n", EX_NS, "create", "rolebinding", "e2e-viewer", "--clusterrole=view", f"--user={viewer}")
    se = "scalingendpoints.inferscale.dev"
    # The clusterrole-aggregation controller fills the built-in roles asynchronously.
    podsim.wait_for("inferscale-edit to aggregate into edit", lambda: can("create", se, EX_NS, editor), timeout=60)
    podsim.wait_for("inferscale-view to aggregate into view", lambda: can("list", se, EX_NS, viewer), timeout=60)

    for verb in ("create", "update", "patch", "delete", "get", "list", "watch"):
        assert can(verb, se, EX_NS, editor), verb
    assert can("get", f"{se}/status", EX_NS, editor) and can("patch", f"{se}/scale", EX_NS, editor)
    for verb in ("get", "list", "watch"):
        assert can(verb, se, EX_NS, viewer), verb
    for verb in ("create", "update", "patch", "delete"):
        assert not can(verb, se, EX_NS, viewer), verb
    assert not can("patch", f"{se}/scale", EX_NS, viewer) and not can("patch", f"{se}/status", EX_NS, editor)
    # Bindings are per namespace: nothing elsewhere.
    assert not can("create", se, OP_NS, editor) and not can("list", se, OP_NS, viewer)

    # A real request, authorised by the API server: the editor's create passes, the viewer's does not.
    obj = json.dumps({"apiVersion": "inferscale.dev/v1alpha1", "kind": "ScalingEndpoint", "metadata": {"name": "rbac-probe"},
                      "spec": {"model": {"name": "gpt-4o-mini"}, "algorithm": {"name": "self-consistency"}}})
    made = k("-n", EX_NS, "create", "--dry-run=server", f"--as={editor}", "-f", "-", input=obj, check=False)
    assert made.returncode == 0, made.stderr
    refused = k("-n", EX_NS, "create", "--dry-run=server", f"--as={viewer}", "-f", "-", input=obj, check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
    k("-n", EX_NS, "delete", "rolebinding", "e2e-editor", "e2e-viewer")


def test_chart_objects(release):
    dep = kj("-n", OP_NS, "get", "deployment", RELEASE)
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert "--leader-election-namespace=" + OP_NS in c["args"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    # Installed into a namespace that enforces "restricted": the pod was admitted and is Available.
    assert any(cond["type"] == "Available" and cond["status"] == "True" for cond in dep["status"]["conditions"])
    svc = kj("-n", OP_NS, "get", "service", f"{RELEASE}-metrics")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    sm = kj("-n", OP_NS, "get", "servicemonitor", RELEASE)
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    cm = kj("-n", OP_NS, "get", "configmap", f"{RELEASE}-dashboard")
    dash = json.loads(cm["data"]["inferscale.json"])
    assert dash["uid"] == "inferscale-endpoints" and len(dash["panels"]) >= 6


# --- the operator with the chart's token --------------------------------------------------------


def test_operator_leads_with_the_chart_token(operator):
    lease = kj("-n", OP_NS, "get", "lease", "inferscale-operator")
    assert lease["spec"]["holderIdentity"].startswith(f"{RELEASE}-host-")
    status, body = get(operator["url"] + "/readyz")
    assert status == 200, body


def test_every_example_reconciles(operator):
    """Each deploy/examples file, unchanged, reaches Ready under the chart's RBAC."""
    for f in EXAMPLES:
        k("-n", EX_NS, "apply", "-f", str(ROOT / "deploy/examples" / f))
    for name in EXAMPLES.values():
        wait_ready(EX_NS, name)
    assert kj("-n", EX_NS, "get", "pdb", "openai-sc")["spec"]["maxUnavailable"] == 1
    assert kj("-n", EX_NS, "get", "hpa", "openai-bon")["spec"]["maxReplicas"] >= 2
    bon = kj("-n", EX_NS, "get", "scalingendpoint", "openai-bon")
    assert condition(bon, "ServiceMonitorReady")["status"] == "True", bon["status"]
    assert kj("-n", EX_NS, "get", "servicemonitor", "openai-bon")["metadata"]["ownerReferences"][0]["name"] == "openai-bon"
    pods = kj("-n", EX_NS, "get", "pods", "-l", "app.kubernetes.io/instance=qwen-local,app.kubernetes.io/component=model-server")
    assert {p["spec"]["nodeName"] for p in pods["items"]} <= {"gpu-0", "gpu-1"} and pods["items"]
    # The guide's layout: the process reward model is served by its own vLLM on a GPU node.
    math = kj("-n", EX_NS, "get", "scalingendpoint", "qwen-math")
    assert condition(math, "RewardModelAvailable")["status"] == "True", math["status"]
    prm = kj("-n", EX_NS, "get", "pods", "-l", "app.kubernetes.io/instance=qwen-math,app.kubernetes.io/component=reward-model")
    assert prm["items"] and {p["spec"]["nodeName"] for p in prm["items"]} <= {"gpu-0", "gpu-1"}, prm["items"]
    events = kj("-n", EX_NS, "get", "events.events.k8s.io", "--field-selector", "regarding.name=openai-sc")
    assert any(e["reason"] == "Created" for e in events["items"]), "no Created Event: events.k8s.io create failed"
    no_forbidden(operator["proc"])


def test_children_no_longer_asked_for_are_deleted(operator):
    """Every delete rule of the chart is used: the operator removes what a changed spec drops."""
    gone = lambda kind, name: k("-n", EX_NS, "get", kind, name, check=False).returncode != 0  # noqa: E731
    k("-n", EX_NS, "patch", "scalingendpoint", "openai-sc", "--type=merge", "-p", '{"spec":{"worker":{"replicas":1}}}')
    k("-n", EX_NS, "patch", "scalingendpoint", "openai-bon", "--type=json", "-p",
      '[{"op":"remove","path":"/spec/worker/autoscaling"},{"op":"replace","path":"/spec/metrics/serviceMonitor/enabled","value":false}]')
    k("-n", EX_NS, "patch", "scalingendpoint", "qwen-local", "--type=json", "-p",
      '[{"op":"remove","path":"/spec/vllm"},{"op":"add","path":"/spec/model/endpoint","value":"http://127.0.0.1:9/v1"},'
      '{"op":"add","path":"/spec/model/provider","value":"openai-compatible"}]')
    for kind, name in [("pdb", "openai-sc"), ("hpa", "openai-bon"), ("servicemonitor", "openai-bon"),
                       ("deployment", "qwen-local-vllm"), ("service", "qwen-local-vllm")]:
        podsim.wait_for(f"{kind}/{name} to be deleted", lambda: gone(kind, name), timeout=60)
    for name in ("openai-sc", "openai-bon", "qwen-local"):
        wait_ready(EX_NS, name)
    no_forbidden(operator["proc"])


# --- the worker, run as its Deployment specifies, and the OpenAI client --------------------------


def test_openai_client_through_the_worker(operator, mock, workdir):
    namespace(CLIENT_NS, enforce="restricted")
    # The guide's example with the simulator as its upstream.
    objs = json_stream(k("create", "--dry-run=client", "-o", "json", "-f", str(ROOT / "deploy/examples/openai-self-consistency.yaml")).stdout)
    assert [o["kind"] for o in objs] == ["Secret", "ScalingEndpoint"]
    for obj in objs:
        obj["metadata"].pop("namespace", None)
        if obj["kind"] == "Secret":
            obj["stringData"]["api-key"] = UPSTREAM_KEY
            # The simulator is a custom endpoint: the Secret's owner has to allow sending it there.
            obj["metadata"].setdefault("labels", {})["inferscale.dev/allow-custom-endpoint"] = "true"
        else:
            obj["spec"]["model"].update({"provider": "openai-compatible", "endpoint": f"{mock.url}/v1"})
    k("-n", CLIENT_NS, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    se = wait_ready(CLIENT_NS, "openai-sc")
    assert se["status"]["url"] == f"http://openai-sc.{CLIENT_NS}.svc:8108/v1"

    dep = kj("-n", CLIENT_NS, "get", "deployment", "openai-sc")
    pod = dep["spec"]["template"]["spec"]
    spec = podsim.resolve_pod(
        pod,
        "worker",
        CLIENT_NS,
        podsim.parse_dockerfile(ROOT / "worker/Dockerfile"),
        binary("inferscale-worker"),
        workdir / "worker",
        pod_name="openai-sc-e2e",
        # The pod's own network becomes loopback: listen on 127.0.0.1 and a free port.
        extra_env={"INFERSCALE_HOST": "127.0.0.1", "INFERSCALE_PORT": "0"},
    )
    # What the Deployment says, as podsim runs it.
    assert spec.argv[1:] == pod["containers"][0]["args"]
    assert {m.path for m in spec.mounts} >= {"/etc/inferscale/config", "/etc/inferscale/secrets/openai", "/tmp"}
    assert spec.uid == 65532 and spec.read_only_root and spec.no_new_privs
    worker = podsim.PodProcess(spec, workdir / "worker", wait_listen=True)
    try:
        print(f"worker run mode: {worker.mode}; argv {spec.argv}; uid {spec.uid}")
        port = int(worker.url.rsplit(":", 1)[1])
        c = pod["containers"][0]
        for probe in ("readinessProbe", "livenessProbe"):
            status, body = get(f"http://127.0.0.1:{port}{c[probe]['httpGet']['path']}")
            assert status == 200, (probe, body)

        checks = client_check.run(worker.url, mock.url, api_key_expected=UPSTREAM_KEY)
        assert not checks.failed, f"failed checks: {checks.failed}\nworker log:\n{worker.logs()}"
        SEEN["metrics"] = get(f"{worker.url}/metrics")[1]
        if worker.mode == "sandbox":
            # Process identity as the kubelet would have set it.
            status = open(f"/proc/{worker.proc.pid}/status").read()
            assert re.search(r"^Uid:\s+65532\s", status, re.M) and re.search(r"^NoNewPrivs:\s+1", status, re.M), status
            assert re.search(r"^CapEff:\s+0+$", status, re.M), status
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, worker.logs()


def test_dashboard_queries_match_the_worker_metrics(tmp_path):
    """Every metric the Grafana dashboard queries exists in a real worker's /metrics, with the
    labels the queries group by (namespace and service come from Prometheus' target labels)."""
    text = SEEN.get("metrics")
    if not isinstance(text, str):
        pytest.skip("needs the worker metrics of test_openai_client_through_the_worker")
    exposed: dict[str, set[str]] = {}
    for (name, labels), _ in client_check.parse_metrics(text).items():
        exposed.setdefault(name, set()).update(dict(labels))
    # A labelled metric appears only once observed (judge fallbacks need a failing judge): those
    # are taken from their registration in the worker's source, name and label names.
    source = (ROOT / "worker/src/metrics.rs").read_text()
    for name, labels in re.findall(r'"(inferscale_[a-z_]+)",\s*"[^"]*",\s*&\[([^\]]*)\]', source):
        label_set = set(re.findall(r'"([a-z_]+)"', labels))
        for n in (name, f"{name}_bucket", f"{name}_sum", f"{name}_count"):
            exposed.setdefault(n, set()).update(label_set)
    dash = json.loads((ROOT / "charts/inferscale/files/dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    for expr in exprs:
        for name in set(re.findall(r"\b(inferscale_[a-z_]+)", expr)):
            assert name in exposed, f"{name} (in {expr}) is not exposed by the worker"
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (s.strip() for s in group.split(",")):
                if label in ("namespace", "service", "le"):
                    continue
                names = set(re.findall(r"\b(inferscale_[a-z_]+)", expr))
                assert any(label in exposed[n] for n in names), f"label {label} not on {names}"
    for wanted in ("inferscale_requests_total", "inferscale_budget_", "inferscale_vote_agreement_ratio_",
                   "inferscale_upstream_request_duration_seconds_", "inferscale_upstream_requests_total",
                   "inferscale_judge_fallbacks_total", "inferscale_overhead_seconds_"):
        assert any(wanted in e for e in exprs), wanted
    if shutil.which("promtool"):
        # PromQL syntax: the expressions as recording rules, with Grafana's variables filled in.
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:expr{i}", "expr": e.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$endpoint", ".*")}
            for i, e in enumerate(exprs)]}]}
        path = tmp_path / "dashboard-rules.json"
        path.write_text(json.dumps(rules))
        done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_operator_was_never_refused(operator):
    no_forbidden(operator["proc"])
    assert operator["proc"].alive(), operator["proc"].logs()


# --- watchAllNamespaces: the cluster-wide opt-in ------------------------------------------------


def test_watch_all_namespaces_is_a_cluster_wide_opt_in(operator, sa_kubeconfig, workdir):
    """watchAllNamespaces=true: the Roles give way to one ClusterRole and binding; the operator,
    restarted as the upgraded Deployment says (no --namespace), reconciles in every namespace, and
    — the documented consequence — its token now reads Secrets everywhere."""
    assert operator["proc"].stop() == 0, operator["proc"].logs()
    helm("upgrade", RELEASE, str(ROOT / "charts/inferscale"), "--namespace", OP_NS, "--reuse-values",
         "--set", "watchAllNamespaces=true", "--set-json", "watchNamespaces=[]", "--wait", "--timeout", "120s")
    assert kj("get", "clusterrole", RELEASE)["rules"]
    assert kj("get", "clusterrolebinding", RELEASE)["subjects"][0]["name"] == RELEASE
    for ns in (CLIENT_NS, EX_NS):
        assert k("-n", ns, "get", "role", RELEASE, check=False).returncode != 0, ns
    assert can("get", "secrets", OTHER_NS) and can("list", "secrets", "*")
    shown = as_sa(sa_kubeconfig, "-n", OTHER_NS, "get", "secret", "db-creds", "-o", "jsonpath={.metadata.name}")
    assert shown.returncode == 0 and shown.stdout == "db-creds", shown.stderr

    proc, url = start_operator(sa_kubeconfig, workdir)
    operator.update(proc=proc, url=url)
    assert not any(a.startswith("--namespace") for a in proc.spec.argv), proc.spec.argv
    # A deleted child is recreated in each namespace: the cluster-wide watches and writes work.
    for ns, name in ((CLIENT_NS, "openai-sc"), (EX_NS, "openai-bon")):
        uid = kj("-n", ns, "get", "deployment", name)["metadata"]["uid"]
        k("-n", ns, "delete", "deployment", name, "--wait=false")
        podsim.wait_for(
            f"the worker Deployment {ns}/{name} to be recreated",
            lambda ns=ns, name=name, uid=uid: (d := k("-n", ns, "get", "deployment", name, "-o", "jsonpath={.metadata.uid}", check=False)).returncode == 0
            and d.stdout not in ("", uid),
            timeout=60,
        )
        wait_ready(ns, name)
    # A namespace no value names is reconciled too.
    k("-n", OTHER_NS, "apply", "-f", str(ROOT / "deploy/examples/openai-self-consistency.yaml"))
    wait_ready(OTHER_NS, "openai-sc")
    no_forbidden(proc)
    assert proc.alive(), proc.logs()
