"""Fixtures of the end-to-end tests on the local control plane (tests/k8s/).

Run by tests/k8s-suite.sh inside tests/k8s/with-cluster.sh, which exports KUBECONFIG (admin) and
puts kubectl and helm on PATH. Tests that need the cluster are skipped without KUBECONFIG.

Identities: the admin kubeconfig is the installer (helm) and the kubelet (reads the ConfigMaps
and Secrets a pod mounts); the operator runs with a TokenRequest token of the chart's
ServiceAccount, so the chart's RBAC is exactly what it has.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

import podsim

ROOT = podsim.ROOT
BIN_DIR = Path(os.environ.get("INFERSCALE_BIN_DIR", ROOT / "target" / "debug"))
CHART = ROOT / "charts" / "inferscale"
SUFFIX = secrets.token_hex(3)
RELEASE = f"inferscale-e2e-{SUFFIX}"  # also the chart's fullname: ServiceAccount, ClusterRole, Deployment
OP_NS = f"inferscale-e2e-{SUFFIX}"
EX_NS = f"e2e-examples-{SUFFIX}"
CLIENT_NS = f"e2e-client-{SUFFIX}"
# A namespace the release does not watch, holding a Secret the operator must not be able to read.
OTHER_NS = f"e2e-other-{SUFFIX}"
# The chart's values for the e2e release: every optional object on; the default namespaced RBAC,
# watching the release namespace plus the examples' and the client's namespaces.
RELEASE_VALUES = ["--set", "serviceMonitor.enabled=true", "--set", "grafanaDashboard.enabled=true",
                  "--set", f"watchNamespaces={{{EX_NS},{CLIENT_NS}}}"]


def k(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    return done


def kj(*args: str) -> dict:
    return json.loads(k(*args, "-o", "json").stdout)


def helm(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(["helm", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    return done


def namespace(name: str, enforce: str, warn: str = "restricted") -> None:
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/part-of": "inferscale-e2e",
                "pod-security.kubernetes.io/enforce": enforce,
                "pod-security.kubernetes.io/warn": warn,
            },
        },
    }
    k("apply", "-f", "-", input=json.dumps(ns))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str) -> Path:
    p = BIN_DIR / name
    if not p.exists():
        pytest.fail(f"{p} is missing: build it with `cargo build --workspace --bins`")
    return p


@pytest.fixture(scope="session")
def cluster():
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("no KUBECONFIG: run through tests/k8s/with-cluster.sh (see docs/testing.md)")
    k("version")
    return os.environ["KUBECONFIG"]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("e2e")
    os.chmod(d, 0o755)  # traversable by the non-root uid of the sandboxed processes
    return d


@pytest.fixture(scope="session")
def monitoring_crd(cluster):
    k("apply", "--server-side", "-f", str(ROOT / "tests/e2e/servicemonitor-crd.yaml"))
    k("wait", "--for=condition=Established", "--timeout=60s", "crd/servicemonitors.monitoring.coreos.com")


@pytest.fixture(scope="session")
def release(cluster, monitoring_crd):
    """`helm install` of the chart into a namespace that enforces the restricted Pod Security Standard."""
    namespace(OP_NS, enforce="restricted")
    # The watched namespaces exist before the install: the chart puts a Role in each.
    namespace(EX_NS, enforce="baseline")  # vLLM's pods run as the image's user (not "restricted")
    namespace(CLIENT_NS, enforce="restricted")
    helm("install", RELEASE, str(CHART), "--namespace", OP_NS, *RELEASE_VALUES, "--wait", "--timeout", "120s")
    k("wait", "--for=condition=Established", "--timeout=60s", "crd/scalingendpoints.inferscale.dev")
    yield RELEASE
    helm("uninstall", RELEASE, "--namespace", OP_NS, check=False)
    k("delete", "namespace", OP_NS, EX_NS, CLIENT_NS, OTHER_NS, "--ignore-not-found", "--wait=false", check=False)


@pytest.fixture(scope="session")
def sa_kubeconfig(release, workdir) -> Path:
    """A kubeconfig holding only a TokenRequest token of the chart's ServiceAccount."""
    sa = kj("-n", OP_NS, "get", "deployment", RELEASE)["spec"]["template"]["spec"]["serviceAccountName"]
    token = k("-n", OP_NS, "create", "token", sa, "--duration=2h").stdout.strip()
    admin = json.loads(k("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cl = admin["clusters"][0]["cluster"]
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": cl["server"], "certificate-authority-data": cl["certificate-authority-data"]}}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": sa}}],
        "current-context": "e2e",
    }
    d = workdir / "sa-kubeconfig"
    d.mkdir(exist_ok=True)
    (d / "kubeconfig").write_text(json.dumps(cfg))
    os.chmod(d / "kubeconfig", 0o444)
    os.chmod(d, 0o755)
    return d


SA_KUBECONFIG_MOUNT = "/var/run/inferscale-e2e"


def start_operator(kube_dir: Path, workdir: Path) -> tuple[podsim.PodProcess, str]:
    """Runs the operator as the chart's Deployment specifies, with the ServiceAccount's token."""
    dep = kj("-n", OP_NS, "get", "deployment", RELEASE)
    port = free_port()
    spec = podsim.resolve_pod(
        dep["spec"]["template"]["spec"],
        "operator",
        OP_NS,
        podsim.parse_dockerfile(ROOT / "operator/Dockerfile"),
        binary("inferscale-operator"),
        workdir,
        pod_name=f"{RELEASE}-host-{port}",
        extra_env={"KUBECONFIG": f"{SA_KUBECONFIG_MOUNT}/kubeconfig"},
        replace_args={"--metrics-addr=": f"--metrics-addr=127.0.0.1:{port}"},
    )
    spec.mounts.append(podsim.Mount(SA_KUBECONFIG_MOUNT, kube_dir, True))
    proc = podsim.PodProcess(spec, workdir / f"operator-{port}", wait_listen=False)
    url = f"http://127.0.0.1:{port}"

    def leading() -> bool:
        if not proc.alive():
            raise AssertionError(f"the operator exited ({proc.proc.returncode}):\n{proc.logs()}")
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            return "inferscale_operator_leader 1" in r.read().decode()

    try:
        podsim.wait_for("the operator to lead", leading, timeout=60)
    except Exception:
        proc.stop()
        raise
    return proc, url


@pytest.fixture(scope="session")
def operator(sa_kubeconfig, workdir):
    proc, url = start_operator(sa_kubeconfig, workdir)
    state = {"proc": proc, "url": url}
    yield state
    state["proc"].stop()


@pytest.fixture(scope="session")
def mock(workdir):
    """mock-llm, the upstream simulator, run like its image (ENTRYPOINT, USER, read-only root)."""
    image = podsim.parse_dockerfile(ROOT / "tests/mock-llm/Dockerfile")
    uid, gid = podsim._uid(image.user)
    spec = podsim.PodProcessSpec(
        image=image,
        binary=binary("mock-llm"),
        argv=[*image.entrypoint, "--host", "127.0.0.1", "--port", "0", "--seed", "7"],
        env={},
        mounts=[],
        uid=uid,
        gid=gid,
        groups=[gid],
        read_only_root=True,
        no_new_privs=True,
    )
    proc = podsim.PodProcess(spec, workdir / "mock", wait_listen=True)
    yield proc
    proc.stop()
