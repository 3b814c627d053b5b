"""Provider resilience and access control: faults, retries, deadlines, rotated key files,
client API keys and a read-only /configure."""

from __future__ import annotations

import json
import os
import time

import openai
import pytest

from conftest import http, start_worker
from test_api import QUESTION, chat, sc_config


def test_thirty_percent_failures_at_budget_8_still_answer(worker, mock):
    mock.scenario({"answers": [{"content": "steady"}], "faults": [{"rate": 0.3, "status": 500}]})
    worker.configure(sc_config(mock, upstream={"max_retries": 0}))
    failed_total = 0
    for _ in range(10):
        body = chat(worker, 8)
        assert body["choices"][0]["message"]["content"] == "steady"
        meta = body["metadata"]
        assert meta["failed_candidates"] + len(meta["all_responses"]) == 8
        failed_total += meta["failed_candidates"]
    # Every injected fault is accounted for in the responses, and in the worker's metrics.
    assert failed_total == mock.stats()["faults_injected"] > 0
    assert f'inferscale_candidates_total{{algorithm="self-consistency",outcome="error"}}' in worker.metrics()


def test_429_with_retry_after_is_retried(worker, mock):
    mock.scenario({"answers": [{"content": "after the wait"}], "faults": [{"every": 2, "status": 429, "retry_after_s": 1}]})
    worker.configure(sc_config(mock, upstream={"max_retries": 2}))
    start = time.monotonic()
    body = chat(worker, 2)
    elapsed = time.monotonic() - start
    assert body["metadata"]["failed_candidates"] == 0 and len(body["metadata"]["all_responses"]) == 2
    stats = mock.stats()
    assert stats["requests"] == 3 and stats["by_status"]["429"] == 1
    assert elapsed >= 1.0, "Retry-After was not honoured"


def test_rotated_key_file_is_used_by_the_next_request(mock, tmp_path):
    key = tmp_path / "api-key"
    key.write_text("sk-first\n")
    cfg = tmp_path / "worker.yaml"
    cfg.write_text(json.dumps({**sc_config(mock), "api_key": {"file": str(key)}}))
    w = start_worker(mock, "--config", str(cfg))
    try:
        mock.scenario({})
        assert w.chat({"model": "m", "messages": QUESTION, "budget": 1})[0] == 200
        key.write_text("sk-second-rotated\n")
        assert w.chat({"model": "m", "messages": QUESTION, "budget": 1})[0] == 200
        seen = [r["authorization"] for r in mock.requests(2)]
        assert seen == ["Bearer sk-first", "Bearer sk-second-rotated"]
    finally:
        w.proc.stop()


def test_client_api_keys_and_read_only_configure(mock, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("client-key-1\nclient-key-2\n")
    cfg = tmp_path / "worker.yaml"
    cfg.write_text(json.dumps({**sc_config(mock), "server": {"api_keys_file": str(keys)}}))
    w = start_worker(mock, "--config", str(cfg))
    try:
        mock.scenario({})
        status, headers, body = w.chat({"model": "m", "messages": QUESTION, "budget": 1})
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{w.url}/v1", api_key="wrong").chat.completions.create(model="m", messages=QUESTION)
        ok = openai.OpenAI(base_url=f"{w.url}/v1", api_key="client-key-2").chat.completions.create(
            model="m", messages=QUESTION, extra_body={"budget": 2})
        assert ok.choices[0].message.content
        assert mock.stats()["requests"] == 2
        # The configuration came from a file, so /configure is off.
        status, _, body = http("POST", f"{w.url}/configure", sc_config(mock))
        assert status == 403 and body["error"]["type"] == "permission_error"
        # Probes and metrics stay open for the kubelet and Prometheus.
        assert http("GET", f"{w.url}/ready")[0] == 200 and http("GET", f"{w.url}/metrics")[0] == 200
    finally:
        w.proc.stop()


def test_bedrock_wrong_secret_is_rejected_by_the_signature_check(worker, mock):
    mock.scenario({"aws": {"access_key_id": "AKIDTEST", "secret_access_key": "right-secret"}})
    worker.configure({"model": "bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0", "upstream": {"max_retries": 0},
                      "extra_args": {"aws_access_key_id": "AKIDTEST", "aws_secret_access_key": "wrong-secret",
                                     "aws_region_name": "us-east-1"}})
    status, _, body = worker.chat({"model": "bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0",
                                   "messages": QUESTION, "budget": 2})
    assert status == 502 and "signature" in body["error"]["message"].lower()
    assert "wrong-secret" not in json.dumps(body)
    assert mock.stats()["signature_failures"] == 2


def test_bedrock_tool_calls_round_trip(worker, mock):
    mock.scenario({"aws": {"access_key_id": "AKIDTEST", "secret_access_key": "s3cret"},
                   "answers": [{"tool_calls": [{"name": "calculator", "arguments": {"expression": "2+2"}}]}]})
    worker.configure({"model": "bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0", "tool_vote": "tool_args",
                      "extra_args": {"aws_access_key_id": "AKIDTEST", "aws_secret_access_key": "s3cret",
                                     "aws_region_name": "us-east-1"}})
    history = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "tooluse_1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\": \"1+1\"}"}}]},
        {"role": "tool", "tool_call_id": "tooluse_1", "content": "2"},
        {"role": "user", "content": "And 2+2?"},
    ]
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}]
    status, _, body = worker.chat({"model": "bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0", "messages": history,
                                   "tools": tools, "tool_choice": "required", "budget": 2, "max_tokens": 100})
    assert status == 200, body
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert call["type"] == "function" and call["function"]["name"] == "calculator"
    assert json.loads(call["function"]["arguments"]) == {"expression": "2+2"}
    sent = mock.requests(1)[0]["body"]
    assert sent["toolConfig"]["toolChoice"] == {"any": {}}
    assert sent["inferenceConfig"]["maxTokens"] == 100
    blocks = [b for m in sent["messages"] for b in m["content"]]
    assert {"toolUse": {"toolUseId": "tooluse_1", "name": "calculator", "input": {"expression": "1+1"}}} in blocks
    assert any(b.get("toolResult", {}).get("toolUseId") == "tooluse_1" for b in blocks)


def test_several_candidates_per_call_with_n(worker, mock):
    mock.scenario({"answers": [{"content": "A"}, {"content": "A"}, {"content": "B"}]})
    worker.configure(sc_config(mock, upstream={"candidates_per_call": 4}))
    body = chat(worker, 6)
    assert len(body["metadata"]["all_responses"]) == 6
    sent = sorted(r["body"]["n"] for r in mock.requests(10))
    assert sent == [2, 4]  # one call of 4 and one of the remaining 2, instead of 6 calls
    assert body["metadata"]["response_counts"] == {"A": 4, "B": 2}


def test_max_tokens_becomes_max_completion_tokens_for_openai(worker, mock):
    worker.configure({"model": "gpt-4o-mini", "endpoint": "auto"})
    status, _, body = worker.chat({"model": "gpt-4o-mini", "messages": QUESTION, "budget": 1, "max_tokens": 50})
    assert status == 200, body
    sent = mock.requests(1)[0]["body"]
    assert sent["max_completion_tokens"] == 50 and "max_tokens" not in sent


def test_candidates_per_call_is_refused_for_bedrock(worker, mock):
    status, _, body = http("POST", f"{worker.url}/configure", {
        "model": "bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0", "upstream": {"candidates_per_call": 4},
        "extra_args": {"aws_access_key_id": "a", "aws_secret_access_key": "b", "aws_region_name": "us-east-1"}})
    assert status == 400 and body["error"]["param"] == "upstream.candidates_per_call"


def test_admin_token_guards_configure(mock, tmp_path):
    cfg = tmp_path / "worker.yaml"
    cfg.write_text(json.dumps({**sc_config(mock), "server": {"allow_configure": True, "admin_token": "adm-token"}}))
    w = start_worker(mock, "--config", str(cfg))
    try:
        status, _, body = http("POST", f"{w.url}/configure", sc_config(mock))
        assert status == 401 and body["error"]["type"] == "authentication_error"
        status, _, _ = http("POST", f"{w.url}/configure", sc_config(mock), {"Authorization": "Bearer nope"})
        assert status == 401
        status, _, body = http("POST", f"{w.url}/configure", {**sc_config(mock), "model": "m2"},
                               {"Authorization": "Bearer adm-token"})
        assert status == 200 and body["model"] == "m2"
    finally:
        w.proc.stop()
