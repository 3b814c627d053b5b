"""Every example of the reference service's guide, run unchanged against the worker.

The worker resolves `"endpoint": "auto"` like LiteLLM: OpenAI models go to OPENAI_BASE_URL and
Bedrock models to AWS_ENDPOINT_URL_BEDROCK_RUNTIME — both pointed at the simulator here, so the
guide's commands run verbatim apart from the worker's address.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap

import pytest

from conftest import http

GUIDE_PORT = "http://localhost:8108"

CONFIGURE_SC_OPENAI = """curl -X POST http://localhost:8108/configure \\
  -H "Content-Type: application/json" \\
  -d '{
    "provider": "litellm",
    "endpoint": "auto",
    "api_key": "your-openai-api-key",
    "model": "gpt-4o-mini",
    "alg": "self-consistency",
    "tool_vote": "tool_hierarchical",
    "exclude_args": ["timestamp", "request_id", "id", "type"]
  }'"""

CONFIGURE_SC_BEDROCK = """curl -X POST http://localhost:8108/configure \\
  -H "Content-Type: application/json" \\
  -d '{
    "provider": "litellm",
    "endpoint": "auto",
    "api_key": null,
    "model": "bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0",
    "alg": "self-consistency",
    "tool_vote": "tool_hierarchical",
    "exclude_args": ["timestamp", "request_id", "id"],
    "extra_args": {
      "aws_access_key_id": "your-access-key",
      "aws_secret_access_key": "your-secret-key",
      "aws_region_name": "us-east-1"
    }
  }'"""

CONFIGURE_BON_OPENAI = """curl -X POST http://localhost:8108/configure \\
  -H "Content-Type: application/json" \\
  -d '{
    "provider": "litellm",
    "endpoint": "auto",
    "api_key": "your-openai-api-key",
    "model": "gpt-4o-mini",
    "alg": "best-of-n",
    "rm_name": "llm-judge",
    "judge_model": "gpt-4o-mini",
    "judge_base_url": "auto",
    "judge_mode": "groupwise",
    "judge_criterion": "multi_step_tool_judge",
    "judge_api_key": "your-openai-api-key",
    "judge_temperature": 0.7,
    "judge_max_tokens": 2048
  }'"""

CONFIGURE_BON_BEDROCK = """curl -X POST http://localhost:8108/configure \\
  -H "Content-Type: application/json" \\
  -d '{
    "provider": "litellm",
    "endpoint": "auto",
    "api_key": null,
    "model": "bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0",
    "alg": "best-of-n",
    "rm_name": "llm-judge",
    "judge_model": "bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0",
    "judge_base_url": "auto",
    "judge_mode": "groupwise",
    "judge_criterion": "multi_step_tool_judge",
    "judge_api_key": null,
    "judge_temperature": 0.7,
    "judge_max_tokens": 2048,
    "extra_args": {
      "aws_access_key_id": "your-access-key",
      "aws_secret_access_key": "your-secret-key",
      "aws_region_name": "us-east-1"
    }
  }'"""

TOOL_CALLING = """curl -X POST http://localhost:8108/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "gpt-4o-mini",
    "messages": [
      {
        "role": "system",
        "content": "You are a precise calculator. Always use the calculator tool for arithmetic."
      },
      {
        "role": "user",
        "content": "What is 847 * 293 + 156?"
      }
    ],
    "tools": [
      {
        "type": "function",
        "function": {
          "name": "calculator",
          "description": "Perform arithmetic calculations",
          "parameters": {
            "type": "object",
            "properties": {
              "expression": {
                "type": "string",
                "description": "Mathematical expression to evaluate"
              }
            },
            "required": ["expression"]
          }
        }
      }
    ],
    "tool_choice": "auto",
    "budget": 5
  }'"""

BASIC_TEXT = """curl -X POST http://localhost:8108/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "gpt-4o-mini",
    "messages": [
      {"role": "user", "content": "Explain quantum computing in one sentence"}
    ],
    "budget": 4
  }'"""

PYTHON_TOOL_CALLING = '''
from openai import OpenAI

client = OpenAI(
    base_url="http://localhost:8108/v1",
    api_key="dummy-key"  # Not validated for local use
)

# Define tools
tools = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Perform arithmetic calculations",
            "parameters": {
                "type": "object",
                "properties": {
                    "expression": {
                        "type": "string",
                        "description": "Mathematical expression to evaluate"
                    }
                },
                "required": ["expression"]
            }
        }
    }
]

response = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[
        {"role": "system", "content": "You are a precise calculator. Always use the calculator tool for arithmetic."},
        {"role": "user", "content": "What is 847 * 293 + 156?"}
    ],
    tools=tools,
    tool_choice="auto",
    extra_body={"budget": 5}  # IaaS-specific parameter
)

# Access tool calls
tool_calls = response.choices[0].message.tool_calls
print(f"Tool: {tool_calls[0].function.name}")
print(f"Arguments: {tool_calls[0].function.arguments}")
'''

PYTHON_WATSON = '''
# Watson Orchestrate integration
import openai

client = openai.OpenAI(
    base_url="http://localhost:8108/v1",
    api_key="dummy-key"
)

response = client.chat.completions.create(
    model="Qwen/Qwen2.5-Math-1.5B-Instruct",
    messages=[{"role": "user", "content": "Solve this math problem"}],
    extra_body={"budget": 4}  # IaaS-specific parameter
)
print(response.choices[0].message.content)
'''

VLLM_DIRECT = """curl -X POST http://localhost:8100/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "Qwen/Qwen2.5-Math-1.5B-Instruct",
    "messages": [{"role": "user", "content": "Hello"}],
    "max_tokens": 50
  }'"""

IAAS_QWEN = """curl -X POST http://localhost:8108/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "Qwen/Qwen2.5-Math-1.5B-Instruct",
    "messages": [{"role": "user", "content": "Hello"}],
    "budget": 2
  }'"""


def curl(command: str, worker_url: str, vllm_url: str | None = None) -> tuple[int, dict | str]:
    """Runs a guide curl command with the guide's hosts replaced by the test processes."""
    command = command.replace(GUIDE_PORT, worker_url)
    if vllm_url:
        command = command.replace("http://localhost:8100", vllm_url)
    argv = shlex.split(command.replace("\\\n", " "))
    argv[1:1] = ["-sS", "-w", "\n%{http_code}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    body, _, code = out.rpartition("\n")
    try:
        return int(code), json.loads(body)
    except ValueError:
        return int(code), body


def run_python(snippet: str, worker_url: str) -> str:
    code = textwrap.dedent(snippet).replace(GUIDE_PORT, worker_url)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def bedrock_mock(mock):
    mock.scenario({"aws": {"access_key_id": "your-access-key", "secret_access_key": "your-secret-key"}})
    return mock


def test_configure_self_consistency_openai(worker):
    code, body = curl(CONFIGURE_SC_OPENAI, worker.url)
    assert code == 200, body
    assert body["status"] == "success"
    assert body["message"] == "Initialized gpt-4o-mini with self-consistency algorithm"
    assert "your-openai-api-key" not in json.dumps(body)


def test_configure_best_of_n_openai(worker):
    code, body = curl(CONFIGURE_BON_OPENAI, worker.url)
    assert code == 200, body
    assert body["message"] == "Initialized gpt-4o-mini with best-of-n algorithm"


def test_tool_calling_curl_example(worker, mock):
    assert curl(CONFIGURE_SC_OPENAI, worker.url)[0] == 200
    code, body = curl(TOOL_CALLING, worker.url)
    assert code == 200, body
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-its-")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "calculator"
    # The simulator answered "847 * 293 + 156" three times out of five, "847*293+156" twice.
    assert json.loads(call["function"]["arguments"]) == {"expression": "847 * 293 + 156"}
    # Budget 5; calls after a decided vote may be cancelled before they are sent.
    sent = mock.stats()["requests"]
    assert 3 <= sent <= 5
    # The guide's API key reached the upstream; the worker's own fields did not.
    forwarded = mock.requests(sent)
    assert all(r["authorization"] == "Bearer your-openai-api-key" for r in forwarded)
    assert all("budget" not in r["body"] for r in forwarded)
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] > 0


def test_tool_calling_through_best_of_n(worker, mock):
    assert curl(CONFIGURE_BON_OPENAI, worker.url)[0] == 200
    code, body = curl(TOOL_CALLING, worker.url)
    assert code == 200, body
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    stats = mock.stats()
    # 5 candidates and one groupwise judge call over the 2 distinct answers.
    assert stats["requests"] == 6 and stats["judge_requests"] == 1


def test_python_tool_calling_example(worker):
    assert curl(CONFIGURE_SC_OPENAI, worker.url)[0] == 200
    out = run_python(PYTHON_TOOL_CALLING, worker.url)
    assert out.splitlines()[0] == "Tool: calculator"
    assert json.loads(out.splitlines()[1].removeprefix("Arguments: ")) == {"expression": "847 * 293 + 156"}


def test_basic_text_example(worker, mock):
    assert curl(CONFIGURE_SC_OPENAI, worker.url)[0] == 200
    code, body = curl(BASIC_TEXT, worker.url)
    assert code == 200, body
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == "The answer is 248327."
    # Budget 4; the vote may be decided (and the last calls cancelled before they are sent)
    # once two agreeing answers lead in call order.
    assert 2 <= mock.stats()["requests"] <= 4


def test_ssh_tunnel_and_watson_examples(worker, mock):
    # The simulator stands in for the guide's vLLM server on port 8100.
    code, body = curl(VLLM_DIRECT, worker.url, vllm_url=mock.url)
    assert code == 200 and body["choices"][0]["message"]["content"], body
    # Every call reaches the simulator, so its answer cycle is where the last example expects.
    worker.configure({"provider": "openai-compatible", "endpoint": f"{mock.url}/v1",
                      "model": "Qwen/Qwen2.5-Math-1.5B-Instruct", "alg": "self-consistency",
                      "early_decision": False})
    code, body = curl(IAAS_QWEN, worker.url)
    assert code == 200, body
    assert body["model"] == "Qwen/Qwen2.5-Math-1.5B-Instruct"
    out = run_python(PYTHON_WATSON, worker.url)
    assert out.strip() == "The answer is 248327."


def test_configure_self_consistency_bedrock(worker, bedrock_mock):
    code, body = curl(CONFIGURE_SC_BEDROCK, worker.url)
    assert code == 200, body
    assert "your-secret-key" not in json.dumps(body)
    code, body = curl(TOOL_CALLING.replace('"gpt-4o-mini"', '"bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0"'), worker.url)
    assert code == 200, body
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "calculator"
    assert bedrock_mock.stats()["by_status"].get("403", 0) == 0


def test_configure_best_of_n_bedrock(worker, bedrock_mock):
    code, body = curl(CONFIGURE_BON_BEDROCK, worker.url)
    assert code == 200, body
    code, body = curl(TOOL_CALLING.replace('"gpt-4o-mini"', '"bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0"'), worker.url)
    assert code == 200, body
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert bedrock_mock.stats()["judge_requests"] == 1


def test_service_endpoints(worker):
    for path in ("/docs", "/health", "/openapi.json", "/v1/models", "/metrics"):
        status, _, _ = http("GET", worker.url + path)
        assert status == 200, path
    assert curl(CONFIGURE_SC_OPENAI, worker.url)[0] == 200
    _, _, models = http("GET", worker.url + "/v1/models")
    assert models["object"] == "list" and models["data"][0]["id"] == "gpt-4o-mini"
