"""The Tiltfile, evaluated without Tilt (no Tilt binary can be built here: the Go module proxy
refuses github.com/tilt-dev/tilt).

tests/e2e/tiltfile_check runs it in go.starlark.net with stand-ins for the Tilt built-ins that
take exactly Tilt's parameters, then checks what Tilt checks when it assembles resources; the
YAML the Tiltfile hands to k8s_yaml is then dry-run against the API server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, k

CHECKER_SRC = ROOT / "tests/e2e/tiltfile_check"


@pytest.fixture(scope="module")
def checker(tmp_path_factory) -> Path:
    if not shutil.which("go"):
        pytest.skip("needs Go to build tests/e2e/tiltfile_check")
    out = ROOT / "target" / "tiltfile_check"
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false -mod=mod"}
    done = subprocess.run(["go", "build", "-o", str(out), "."], cwd=CHECKER_SRC, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out


def evaluate(checker: Path, tiltfile: Path, *args: str, out: Path | None = None) -> subprocess.CompletedProcess:
    argv = [str(checker), "-f", str(tiltfile)] + (["-out", str(out)] if out else []) + (["--", *args] if args else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("example", ["openai-self-consistency", "openai-best-of-n"])
def test_tiltfile_evaluates_and_its_objects_pass_a_server_dry_run(checker, release, example, tmp_path):
    out = tmp_path / "objects.yaml"
    done = evaluate(checker, ROOT / "Tiltfile", f"--example={example}", out=out)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    name = {"openai-self-consistency": "openai-sc", "openai-best-of-n": "openai-bon"}[example]
    assert summary["resources"] == sorted(["operator", "mock-llm", name, "chat"])
    assert {i["Ref"] for i in summary["images"]} == {"inferscale/operator", "inferscale/worker", "inferscale/mock-llm"}
    forwards = {r["Workload"]: r["PortForwards"] for r in summary["k8s_resources"]}
    assert forwards[name] == ["8108:8108"] and forwards["mock-llm"] == ["8100:8100"]

    text = out.read_text()
    assert "endpoint: http://mock-llm:8100/v1" in text and "provider: openai-compatible" in text
    # The namespace is created for real (a dry run persists nothing); everything else is dry-run.
    ns = k("create", "--dry-run=client", "-o", "json", "-f", str(out)).stdout
    assert '"name": "inferscale-dev"' in ns
    k("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "inferscale-dev", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}))
    dry = k("apply", "--dry-run=server", "--server-side", "--force-conflicts", "-f", str(out), check=False)
    assert dry.returncode == 0, dry.stderr
    assert f"scalingendpoint.inferscale.dev/{name} serverside-applied (server dry run)" in dry.stdout, dry.stdout
    assert "violate PodSecurity" not in dry.stderr, dry.stderr


def test_examples_the_simulator_cannot_serve_are_refused(checker):
    done = evaluate(checker, ROOT / "Tiltfile", "--example=vllm-gpu")
    assert done.returncode == 5 and "does not use an OpenAI-style upstream" in done.stderr, done.stderr


def test_the_checker_refuses_what_tilt_refuses(checker, tmp_path):
    """The stand-ins are strict: an unknown parameter, an unused image, a missing workload."""
    cases = {
        "docker_build('a/b', '.', dockerfil='Dockerfile')": "unexpected keyword argument",
        "docker_build('a/b', '.')": "no workload uses it",
        "k8s_resource('nothing', port_forwards=8080)": "no such workload",
        "k8s_yaml(blob('apiVersion: x/v1\\nkind: Thing\\nmetadata: {name: t}\\n'))": "no CustomResourceDefinition",
    }
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    for src, message in cases.items():
        tf = tmp_path / "Tiltfile"
        tf.write_text(src + "\n")
        done = evaluate(checker, tf)
        assert done.returncode == 5 and message in done.stderr, (src, done.stderr)
