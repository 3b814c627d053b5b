"""The end-to-end client check: the guide's tool-calling request through the real `openai` client.

Used by tests/e2e/test_e2e.py (worker run on the host as its Deployment specifies) and by
tests/kind/run.sh (in-cluster, as a Job talking to the ScalingEndpoint's Service):

    python client_check.py --worker http://openai-sc:8108 --mock http://mock-llm:8100 \
        [--api-key-expected sk-...] [--metrics-url http://…/metrics]

It sets a deterministic simulator scenario, sends the request with `budget: 5` and
`return_response_only: false`, and checks the answer (a `calculator` tool call), the vote
metadata, what reached the upstream, and the worker's Prometheus metrics (as deltas, so a worker
that already served requests is fine). Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request

from openai import OpenAI

MAJORITY = {"expression": "847 * 293 + 156"}
MINORITY = {"expression": "847*293+156"}
# Tool requests take the answers in this order (one shared cursor): 5 candidates are
# MAJORITY, MAJORITY, MINORITY, MAJORITY, MAJORITY whatever order they arrive in.
SCENARIO = {
    "tool_answers": [
        {"tool_calls": [{"name": "calculator", "arguments": MAJORITY}]},
        {"tool_calls": [{"name": "calculator", "arguments": MAJORITY}]},
        {"tool_calls": [{"name": "calculator", "arguments": MINORITY}]},
    ]
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Perform arithmetic calculations",
            "parameters": {
                "type": "object",
                "properties": {
                    "expression": {"type": "string", "description": "Mathematical expression to evaluate"}
                },
                "required": ["expression"],
            },
        },
    }
]
MESSAGES = [
    {"role": "system", "content": "You are a precise calculator. Always use the calculator tool for arithmetic."},
    {"role": "user", "content": "What is 847 * 293 + 156?"},
]

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def http(method: str, url: str, body: dict | None = None, timeout: float = 30.0):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        text = resp.read().decode()
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text format → {(name, labels): value}."""
    samples: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            raise AssertionError(f"unparseable metrics line: {line!r}")
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def metric(samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


class Checks:
    def __init__(self) -> None:
        self.passed: list[str] = []
        self.failed: list[str] = []

    def check(self, name: str, ok: bool, detail: object = "") -> None:
        (self.passed if ok else self.failed).append(name)
        print(f"{'PASS' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"), flush=True)


def run(worker: str, mock: str, api_key_expected: str | None = None, metrics_url: str | None = None, model: str = "gpt-4o-mini") -> Checks:
    worker = worker.rstrip("/")
    mock = mock.rstrip("/")
    metrics_url = metrics_url or f"{worker}/metrics"
    c = Checks()

    http("PUT", f"{mock}/_mock/scenario", SCENARIO)
    http("POST", f"{mock}/_mock/reset", {})
    before = parse_metrics(http("GET", metrics_url))

    client = OpenAI(base_url=f"{worker}/v1", api_key="dummy-key", max_retries=0, timeout=60)
    # with_raw_response: the typed object for the answer, and the JSON as sent for the worker's
    # `metadata` (the client's own `metadata` type is a map of strings).
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="auto",
        extra_body={"budget": 5, "return_response_only": False},
    )
    resp = raw.parse()
    body = raw.http_response.json()

    # The answer: the majority tool call.
    choice = resp.choices[0]
    calls = choice.message.tool_calls or []
    c.check("finish_reason is tool_calls", choice.finish_reason == "tool_calls", choice.finish_reason)
    c.check("one calculator tool call", len(calls) == 1 and calls[0].function.name == "calculator", calls)
    if calls:
        c.check("majority arguments won", json.loads(calls[0].function.arguments) == MAJORITY, calls[0].function.arguments)
    c.check("model echoed", resp.model == model, resp.model)
    usage = resp.usage
    c.check("usage adds up", usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0, usage)

    # The vote metadata (return_response_only: false).
    meta = body.get("metadata") or {}
    counts = meta.get("response_counts") or {}
    c.check("metadata.algorithm", meta.get("algorithm") == "self-consistency", meta.get("algorithm"))
    # Five calls were started. Once the vote cannot change any more the worker answers and cancels
    # the rest (early decision), so the metadata covers the calls that completed: all five (4 to 1)
    # or fewer, with the same winner.
    sent, completed = meta.get("calls_sent"), meta.get("calls_completed", -1)
    c.check("5 calls sent, each completed or cancelled",
            sent == 5 and completed + meta.get("calls_cancelled", -1) == 5, meta)
    if meta.get("stop_reason") == "all_completed":
        c.check("response_counts is 4 to 1", sorted(counts.values()) == [1, 4], counts)
    else:
        c.check("stopped because the vote was decided", meta.get("stop_reason") == "decided", meta.get("stop_reason"))
        c.check("response_counts: a majority of the completed calls",
                sum(counts.values()) == completed and 2 * max(counts.values(), default=0) > completed, counts)
    c.check("all_responses has the completed candidates", len(meta.get("all_responses") or []) == completed,
            meta.get("all_responses"))
    agreement = max(counts.values(), default=0) / max(completed, 1)
    c.check("agreement is the winner's share", abs(float(meta.get("agreement", -1)) - agreement) < 1e-9,
            meta.get("agreement"))

    # What reached the upstream (a cancelled call may have been dropped before it was sent).
    reqs = http("GET", f"{mock}/_mock/requests?limit=50")["requests"]
    c.check("upstream calls: the completed ones, at most 5", completed <= len(reqs) <= 5, len(reqs))
    c.check("upstream model", all(r["body"].get("model") == model for r in reqs), [r["body"].get("model") for r in reqs])
    c.check("worker fields not forwarded", all("budget" not in r["body"] and "return_response_only" not in r["body"] for r in reqs))
    if api_key_expected is not None:
        auth = {r["authorization"] for r in reqs}
        c.check("upstream API key from the Secret", auth == {f"Bearer {api_key_expected}"}, auth)

    # The worker's Prometheus metrics (deltas).
    after = parse_metrics(http("GET", metrics_url))

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    c.check("requests_total success +1", delta("inferscale_requests_total", algorithm="self-consistency", outcome="success") == 1)
    c.check("request_duration observed", delta("inferscale_request_duration_seconds_count", algorithm="self-consistency") == 1)
    c.check("budget 5 observed", delta("inferscale_budget_count") == 1 and delta("inferscale_budget_sum") == 5)
    c.check("vote agreement observed", delta("inferscale_vote_agreement_ratio_count") == 1
            and abs(delta("inferscale_vote_agreement_ratio_sum") - agreement) < 1e-9)
    # A call can answer after the vote was decided and before it is cancelled: the upstream metrics
    # count every answer received, the metadata only those that took part.
    ok_200 = delta("inferscale_upstream_requests_total", model=model, role="candidate", status="200")
    c.check("an upstream 200 per completed call", completed <= ok_200 <= 5, ok_200)
    observed = delta("inferscale_upstream_request_duration_seconds_count", model=model, role="candidate")
    c.check("upstream latency observed", completed <= observed <= 5, observed)
    c.check("overhead observed", delta("inferscale_overhead_seconds_count") == 1)
    c.check("no judge fallback", delta("inferscale_judge_fallbacks_total") == 0)
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", required=True, help="base URL of the worker (without /v1)")
    ap.add_argument("--mock", required=True, help="base URL of mock-llm (control API)")
    ap.add_argument("--api-key-expected", help="the upstream API key the worker must send")
    ap.add_argument("--metrics-url", help="the worker's /metrics (default: WORKER/metrics)")
    a = ap.parse_args()
    c = run(a.worker, a.mock, a.api_key_expected, a.metrics_url)
    print(f"client_check: {len(c.passed)} passed, {len(c.failed)} failed")
    return 0 if not c.failed else 1


if __name__ == "__main__":
    sys.exit(main())
