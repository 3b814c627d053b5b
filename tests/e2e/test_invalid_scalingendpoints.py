"""Bad ScalingEndpoints refused by the API server itself (OpenAPI schema and CEL rules of the CRD),
with the message a user sees from `kubectl apply`. Server-side dry runs: nothing is persisted and no
operator is needed. Part of the bad-input catalogue of issue 11 (the worker's side is
tests/python/test_bad_input.py).

Only rules the CRD states today are listed; the operator's own checks (ConfigValid=False) are
tested by the operator's integration tests.
"""

from __future__ import annotations

import copy
import json

import pytest

from conftest import ROOT, SUFFIX, k, namespace

NS = f"e2e-badse-{SUFFIX}"

VALID = {
    "apiVersion": "inferscale.dev/v1alpha1",
    "kind": "ScalingEndpoint",
    "metadata": {"name": "probe"},
    "spec": {
        "model": {"name": "gpt-4o-mini", "provider": "openai", "apiKeySecretRef": {"name": "openai", "key": "api-key"}},
        "algorithm": {"name": "self-consistency", "defaultBudget": 5, "maxBudget": 16},
    },
}


DELETE = object()


def with_(*changes) -> dict:
    """VALID with each (dotted path, value) change applied; the value DELETE removes the field."""
    obj = copy.deepcopy(VALID)
    for path, value in zip(changes[::2], changes[1::2]):
        *parents, last = path.split(".")
        node = obj
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return obj


# (case id, object, fragment of the API server's refusal)
CASES = [
    ("no-model", with_("spec.model", DELETE), "spec.model: Required value"),
    ("no-algorithm", with_("spec.algorithm", DELETE), "spec.algorithm: Required value"),
    ("empty-model-name", with_("spec.model.name", ""), "model name must not be empty"),
    ("unknown-algorithm", with_("spec.algorithm.name", "particle-gibbs"), 'spec.algorithm.name: Unsupported value: "particle-gibbs"'),
    ("unknown-provider", with_("spec.model.provider", "azure"), 'spec.model.provider: Unsupported value: "azure"'),
    ("endpoint-not-a-url", with_("spec.model.endpoint", "ftp://example.com"), "endpoint must be 'auto' or an http(s) URL"),
    ("default-budget-0", with_("spec.algorithm.defaultBudget", 0), "budgets must satisfy 1 <= defaultBudget <= maxBudget <= 1000"),
    ("max-budget-over-1000", with_("spec.algorithm.maxBudget", 1001), "budgets must satisfy 1 <= defaultBudget <= maxBudget <= 1000"),
    ("default-over-max", with_("spec.algorithm.defaultBudget", 17), "budgets must satisfy 1 <= defaultBudget <= maxBudget <= 1000"),
    ("budget-not-integer", with_("spec.algorithm.maxBudget", "many"), "spec.algorithm.maxBudget: Invalid value"),
    ("tool-vote-with-best-of-n", with_("spec.algorithm", {"name": "best-of-n", "toolVote": "tool_name"}),
     "toolVote, excludeArgs and regexPatterns are only valid with algorithm self-consistency"),
    ("best-of-n-without-judge", with_("spec.algorithm", {"name": "best-of-n"}), "algorithm best-of-n needs a judge or a reward model: set spec.judge or spec.reward"),
    ("unknown-tool-vote", with_("spec.algorithm.toolVote", "tool_magic"), 'spec.algorithm.toolVote: Unsupported value: "tool_magic"'),
    ("secret-ref-without-key", with_("spec.model.apiKeySecretRef", {"name": "openai"}), "a secret reference needs both name and key"),
    ("auth-secret-ref-without-name", with_("spec.auth", {"apiKeysSecretRef": {"key": "keys"}}), "a secret reference needs both name and key"),
    ("bedrock-aws-without-region", with_("spec.model.aws", {}), "spec.model.aws.region: Required value"),
    # vLLM with an explicit endpoint: the workers would call something other than the vLLM they own.
    ("vllm-with-endpoint", with_("spec.vllm", {"model": "Qwen/Qwen2.5-7B-Instruct"}, "spec.model.endpoint", "https://api.example.com/v1"),
     "model.endpoint must be unset or 'auto' when vllm is set"),
    ("autoscaling-min-over-max", with_("spec.worker", {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
     "worker.autoscaling.minReplicas must not exceed maxReplicas"),
    ("negative-replicas", with_("spec.worker", {"replicas": -1}), "spec.worker.replicas: Invalid value: -1"),
    ("service-port-0", with_("spec.service", {"port": 0}), "spec.service.port: Invalid value: 0"),
    ("bad-service-type", with_("spec.service", {"type": "ExternalName"}), 'spec.service.type: Unsupported value: "ExternalName"'),
    ("judge-mode-unknown", with_("spec.judge", {"name": "gpt-4o", "mode": "pairwise"}), 'spec.judge.mode: Unsupported value: "pairwise"'),
    ("judge-top-n-0", with_("spec.judge", {"name": "gpt-4o", "topN": 0}), "spec.judge.topN: Invalid value: 0"),
    ("name-not-dns-1035", with_("metadata.name", "9lives"), "metadata.name must be a DNS-1035 label"),
    ("name-too-long", with_("metadata.name", "a" * 59), "metadata.name must be a DNS-1035 label"),
]


@pytest.fixture(scope="module")
def bad_se_ns(cluster):
    k("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds/scalingendpoints.inferscale.dev.yaml"))
    k("wait", "--for=condition=Established", "--timeout=60s", "crd/scalingendpoints.inferscale.dev")
    namespace(NS, enforce="restricted")
    yield NS
    k("delete", "namespace", NS, "--ignore-not-found", "--wait=false", check=False)


def dry_run(ns: str, obj: dict):
    return k("-n", ns, "apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)


def test_the_valid_base_is_accepted(bad_se_ns):
    """Each bad case differs from this object in one place, so its refusal is due to that place."""
    done = dry_run(bad_se_ns, VALID)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("obj,fragment", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_scalingendpoint_is_refused(bad_se_ns, obj, fragment):
    done = dry_run(bad_se_ns, obj)
    assert done.returncode != 0, f"accepted:\n{json.dumps(obj, indent=1)}\n{done.stdout}"
    assert "is invalid" in done.stderr and fragment in done.stderr, done.stderr
