"""The bad-input catalogue (issue 11): every way a client can get a request wrong, in one table per
surface, each with the status, the OpenAI error `type`, the `param` at fault and a fragment of the
message a developer reads. Every case also checks that the worker spent nothing upstream and
keeps serving — a client's mistake is never a 500, a panic, a hang or a paid call.

Surfaces: the chat API body, the worker's headers (`X-ITS-Budget`, `Authorization`), routes and
methods, and `POST /configure`. The ScalingEndpoint half of the catalogue runs on the control
plane: tests/e2e/test_invalid_scalingendpoints.py.

Only today's documented behaviour is encoded (docs/compatibility.md, docs/configuration.md).
"""

from __future__ import annotations

import json

import openai
import pytest

from conftest import http, start_worker

QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]
MAX_BUDGET = 16
TOOL = {"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}


def ok_body(**changes):
    """A valid request with `changes` applied (a value of DROP removes the field)."""
    body = {"model": "m", "messages": QUESTION, **changes}
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()
BAD = "invalid_request_error"


def config(mock, **extra):
    return {"provider": "openai-compatible", "endpoint": f"{mock.url}/v1", "model": "m",
            "alg": "self-consistency", "max_budget": MAX_BUDGET, **extra}


def error_of(result):
    """The OpenAI envelope, exactly: {"error": {message, type, param, code}}."""
    status, headers, body = result
    assert isinstance(body, dict) and set(body) == {"error"}, (status, body)
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return status, headers, body["error"]


def assert_worker_still_serves(worker, mock):
    assert mock.stats()["requests"] == 0, "a refused request must not call the upstream"
    status, _, body = worker.chat(ok_body(budget=1))
    assert status == 200, body


# --- the chat API body ------------------------------------------------------------------------
# (id, body: dict | bytes, content type, status, type, param, message fragment)
CHAT_CASES = [
    # not JSON, or not an object
    ("truncated-json", b'{"model": ', "application/json", 400, BAD, None, "could not parse the JSON body"),
    ("empty-body", b"", "application/json", 400, BAD, None, "could not parse the JSON body"),
    ("trailing-garbage", b'{"model": "m", "messages": []} x', "application/json", 400, BAD, None, "could not parse the JSON body"),
    ("not-utf8", b'{"model": "\xff\xfe"}', "application/json", 400, BAD, None, "could not parse the JSON body"),
    ("json-array", b"[]", "application/json", 400, BAD, None, "must be a JSON object"),
    ("json-null", b"null", "application/json", 400, BAD, None, "must be a JSON object"),
    ("json-string", b'"hello"', "application/json", 400, BAD, None, "must be a JSON object"),
    # wrong content types: the body is still read as JSON, and a form or text body is not JSON
    ("form-encoded", b"model=m&messages=hi", "application/x-www-form-urlencoded", 400, BAD, None, "could not parse the JSON body"),
    ("plain-text", b"What is 2 + 2?", "text/plain", 400, BAD, None, "could not parse the JSON body"),
    # model
    ("missing-model", ok_body(model=DROP), None, 400, BAD, "model", "Missing required parameter: 'model'"),
    ("empty-model", ok_body(model=""), None, 400, BAD, "model", "model must not be empty"),
    ("model-not-a-string", ok_body(model=5), None, 400, BAD, "model", "invalid type: integer `5`, expected a string"),
    # messages
    ("missing-messages", ok_body(messages=DROP), None, 400, BAD, "messages", "Missing required parameter: 'messages'"),
    ("empty-messages", ok_body(messages=[]), None, 400, BAD, "messages", "messages must contain at least one message"),
    ("messages-a-string", ok_body(messages="hi"), None, 400, BAD, "messages", "invalid type"),
    ("message-not-an-object", ok_body(messages=["hi"]), None, 400, BAD, "messages[0]", "invalid type"),
    ("unknown-role", ok_body(messages=[{"role": "wizard", "content": "x"}]), None, 400, BAD, "messages[0].role", "unknown variant `wizard`"),
    ("missing-role", ok_body(messages=[{"content": "x"}]), None, 400, BAD, "messages[0]", "missing field `role`"),
    ("content-a-number", ok_body(messages=[{"role": "user", "content": 42}]), None, 400, BAD, "messages[0].content",
     "expected a string, an array of content parts or null"),
    ("user-content-null", ok_body(messages=[{"role": "user", "content": None}]), None, 400, BAD, "messages[0].content",
     "messages[0].content is required for a user message"),
    ("tool-message-without-call-id", ok_body(messages=QUESTION + [{"role": "tool", "content": "4"}]), None, 400, BAD,
     "messages[1].tool_call_id", "tool_call_id is required for tool messages"),
    ("tool-calls-on-a-user-message", ok_body(messages=[{"role": "user", "content": "x", "tool_calls": []}]), None, 400, BAD,
     "messages[0].tool_calls", "tool_calls is only allowed on assistant messages"),
    ("tool-call-without-function-name", ok_body(messages=QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"arguments": "{}"}}]}]),
     None, 400, BAD, "messages[1].tool_calls[0].function", "missing field `name`"),
    # tools
    ("tools-not-a-list", ok_body(tools="calculator"), None, 400, BAD, "tools", "invalid type"),
    ("function-tool-without-function", ok_body(tools=[{"type": "function"}]), None, 400, BAD, "tools[0].function",
     "tools[0].function is required for function tools"),
    ("tool-without-type", ok_body(tools=[{"function": TOOL["function"]}]), None, 400, BAD, "tools[0]", "missing field `type`"),
    ("tool-function-without-name", ok_body(tools=[{"type": "function", "function": {"parameters": {}}}]), None, 400, BAD,
     "tools[0].function", "missing field `name`"),
    ("tool-name-not-a-string", ok_body(tools=[{"type": "function", "function": {"name": 7}}]), None, 400, BAD,
     "tools[0].function.name", "invalid type"),
    # budget in the body
    ("budget-0", ok_body(budget=0), None, 400, BAD, "budget", "budget must be between 1 and 1000, got 0"),
    ("budget-negative", ok_body(budget=-3), None, 400, BAD, "budget", "invalid value: integer `-3`"),
    ("budget-not-an-integer", ok_body(budget=2.5), None, 400, BAD, "budget", "invalid type: floating point `2.5`"),
    ("budget-a-string", ok_body(budget="many"), None, 400, BAD, "budget", "invalid type"),
    ("budget-over-the-hard-limit", ok_body(budget=1001), None, 400, BAD, "budget", "budget must be between 1 and 1000, got 1001"),
    ("budget-over-max-budget", ok_body(budget=MAX_BUDGET + 1), None, 400, BAD, "budget",
     f"budget {MAX_BUDGET + 1} exceeds this endpoint's max_budget of {MAX_BUDGET}"),
    # n, stream and the worker's switches
    ("n-2", ok_body(n=2), None, 400, BAD, "n", "n must be 1 (got 2)"),
    ("n-0", ok_body(n=0), None, 400, BAD, "n", "n must be 1 (got 0)"),
    ("stream-not-a-bool", ok_body(stream="yes"), None, 400, BAD, "stream", "invalid type"),
    ("return-response-only-not-a-bool", ok_body(return_response_only="no"), None, 400, BAD, "return_response_only", "invalid type"),
    ("include-usage-not-a-bool", ok_body(stream=True, stream_options={"include_usage": "x"}), None, 400, BAD,
     "stream_options.include_usage", "invalid type"),
]


@pytest.fixture(scope="module")
def configured(worker_process, mock):
    mock.scenario({})
    worker_process.configure(config(mock))
    return worker_process


@pytest.fixture
def catalogue_worker(configured, mock):
    mock.reset()
    return configured


@pytest.mark.parametrize("body,content_type,status,kind,param,fragment",
                         [c[1:] for c in CHAT_CASES], ids=[c[0] for c in CHAT_CASES])
def test_bad_chat_body(catalogue_worker, mock, body, content_type, status, kind, param, fragment):
    headers = {"Content-Type": content_type} if content_type else None
    got, resp_headers, err = error_of(catalogue_worker.chat(body, headers=headers))
    assert (got, err["type"], err["param"]) == (status, kind, param), err
    assert fragment in err["message"], err["message"]
    # A deterministic refusal: openai-python must not retry it.
    assert resp_headers["x-should-retry"] == "false"
    assert_worker_still_serves(catalogue_worker, mock)


def test_unknown_model_is_404_naming_the_model(catalogue_worker, mock):
    status, _, err = error_of(catalogue_worker.chat(ok_body(model="gpt-9")))
    assert (status, err["type"], err["param"], err["code"]) == (404, BAD, "model", "model_not_found")
    assert "`gpt-9` does not exist" in err["message"] and "Available models: m" in err["message"]
    assert_worker_still_serves(catalogue_worker, mock)


def test_oversize_body_is_413(catalogue_worker, mock):
    huge = ok_body(messages=[{"role": "user", "content": "x" * (9 * 1024 * 1024)}])
    status, _, err = error_of(catalogue_worker.chat(huge))
    assert (status, err["type"], err["param"], err["code"]) == (413, BAD, None, "request_too_large")
    assert "larger than the limit of 8388608 bytes" in err["message"]
    assert_worker_still_serves(catalogue_worker, mock)


# --- headers ----------------------------------------------------------------------------------
# X-ITS-Budget wins over the body, so it is validated the same way.
BUDGET_HEADER_CASES = [
    ("word", "lots", 'X-ITS-Budget must be an integer between 1 and 1000, got "lots"'),
    ("empty", "", 'X-ITS-Budget must be an integer between 1 and 1000, got ""'),
    ("negative", "-1", 'X-ITS-Budget must be an integer between 1 and 1000, got "-1"'),
    ("fraction", "2.5", 'X-ITS-Budget must be an integer between 1 and 1000, got "2.5"'),
    ("zero", "0", "budget must be between 1 and 1000, got 0"),
    ("over-the-hard-limit", "5000", "budget must be between 1 and 1000, got 5000"),
    ("over-max-budget", str(MAX_BUDGET + 4), f"budget {MAX_BUDGET + 4} exceeds this endpoint's max_budget of {MAX_BUDGET}"),
]


@pytest.mark.parametrize("value,fragment", [c[1:] for c in BUDGET_HEADER_CASES], ids=[c[0] for c in BUDGET_HEADER_CASES])
def test_bad_budget_header(catalogue_worker, mock, value, fragment):
    # A valid body budget does not rescue a bad header.
    status, _, err = error_of(catalogue_worker.chat(ok_body(budget=2), headers={"X-ITS-Budget": value}))
    assert (status, err["type"], err["param"]) == (400, BAD, "budget"), err
    assert fragment in err["message"], err["message"]
    assert_worker_still_serves(catalogue_worker, mock)


# --- routes and methods -----------------------------------------------------------------------
ROUTE_CASES = [
    ("unknown-path", "GET", "/v2/nothing", 404, "unknown_url", "unknown route /v2/nothing"),
    ("unknown-v1-path", "POST", "/v1/completions", 404, "unknown_url", "unknown route /v1/completions"),
    ("get-chat", "GET", "/v1/chat/completions", 405, "method_not_allowed", "method not allowed"),
    ("put-chat", "PUT", "/v1/chat/completions", 405, "method_not_allowed", "method not allowed"),
    ("delete-configure", "DELETE", "/configure", 405, "method_not_allowed", "method not allowed"),
    ("post-models", "POST", "/v1/models", 405, "method_not_allowed", "method not allowed"),
]


@pytest.mark.parametrize("method,path,status,code,fragment", [c[1:] for c in ROUTE_CASES], ids=[c[0] for c in ROUTE_CASES])
def test_unknown_route_or_method(catalogue_worker, mock, method, path, status, code, fragment):
    got, _, err = error_of(http(method, catalogue_worker.url + path, ok_body() if method != "GET" else None))
    assert (got, err["type"], err["param"], err["code"]) == (status, BAD, None, code), err
    assert fragment in err["message"]
    assert_worker_still_serves(catalogue_worker, mock)


# --- POST /configure --------------------------------------------------------------------------
# (id, body (dict or bytes), param, message fragment); all 400 invalid_request_error
CONFIGURE_CASES = [
    ("not-json", b"{model: m}", None, "invalid configuration: key must be a string"),
    ("missing-model", {"alg": "self-consistency"}, None, "missing field `model`"),
    ("empty-model", {"model": " "}, "model", "model must not be empty"),
    ("unknown-field", {"model": "m", "surprise": True}, "surprise", "unknown field `surprise`"),
    ("unknown-algorithm", {"model": "m", "alg": "particle-gibbs"}, "alg", "unknown variant `particle-gibbs`"),
    ("unknown-provider", {"model": "m", "provider": "azure"}, "provider", "unknown variant `azure`"),
    ("unknown-tool-vote", {"model": "m", "tool_vote": "by_vibes"}, "tool_vote", "unknown variant `by_vibes`"),
    ("unknown-judge-mode", {"model": "m", "judge_mode": "pairwise"}, "judge_mode", "unknown variant `pairwise`"),
    ("invalid-regex", {"model": "m", "regex_patterns": ["("]}, "regex_patterns", "is not a valid regular expression"),
    ("regex-not-a-list", {"model": "m", "regex_patterns": "(\\d+)"}, "regex_patterns", "invalid type"),
    ("endpoint-not-a-url", {"model": "m", "endpoint": "localhost:8000"}, "endpoint", 'must be "auto" or an http(s) URL'),
    ("judge-url-not-a-url", {"model": "m", "judge_base_url": "ftp://judge"}, "judge_base_url", 'must be "auto" or an http(s) URL'),
    ("budget-0", {"model": "m", "budget": 0}, "budget", "budget must be between 1 and max_budget"),
    ("budget-over-max-budget", {"model": "m", "budget": 20, "max_budget": 10}, "budget", "budget must be between 1 and max_budget (10), got 20"),
    ("budget-a-string", {"model": "m", "budget": "five"}, "budget", "invalid type"),
    ("budget-negative", {"model": "m", "budget": -1}, "budget", "invalid value: integer `-1`"),
    ("max-budget-0", {"model": "m", "max_budget": 0}, "max_budget", "max_budget must be between 1 and 1000, got 0"),
    ("max-budget-over-limit", {"model": "m", "max_budget": 1001}, "max_budget", "max_budget must be between 1 and 1000, got 1001"),
    ("temperature-too-high", {"model": "m", "temperature": 3}, "temperature", "temperature must be between 0 and 2, got 3"),
    ("temperature-negative", {"model": "m", "temperature": -0.5}, "temperature", "temperature must be between 0 and 2"),
    ("judge-temperature-too-high", {"model": "m", "judge_temperature": 2.5}, "judge_temperature", "judge_temperature must be between 0 and 2"),
    ("unknown-reward-model", {"model": "m", "rm_name": "prm"}, "rm_name", "applies to best-of-n, particle-filtering and beam-search, not to self-consistency"),
    ("judge-top-n-0", {"model": "m", "judge_top_n": 0}, "judge_top_n", "judge_top_n must be between 1 and 1000, got 0"),
    ("judge-max-tokens-0", {"model": "m", "judge_max_tokens": 0}, "judge_max_tokens", "judge_max_tokens must be between 1 and 1000000, got 0"),
    ("empty-judge-criterion", {"model": "m", "judge_criterion": "  "}, "judge_criterion", "judge_criterion must not be empty"),
    ("empty-exclude-arg", {"model": "m", "exclude_args": [""]}, "exclude_args", "exclude_args must not contain empty names"),
    ("timeout-0", {"model": "m", "upstream": {"request_timeout_secs": 0}}, "upstream.request_timeout_secs",
     "must be a number of seconds above 0 and at most 3600, got 0"),
    ("timeout-negative", {"model": "m", "upstream": {"call_timeout_secs": -1}}, "upstream.call_timeout_secs",
     "must be a number of seconds above 0 and at most 3600, got -1"),
    ("timeout-1e20", {"model": "m", "upstream": {"request_timeout_secs": 1e20}}, "upstream.request_timeout_secs",
     "must be a number of seconds above 0 and at most 3600, got 100000000000000000000"),
    ("max-concurrency-0", {"model": "m", "upstream": {"max_concurrency": 0}}, "upstream.max_concurrency", "must be between 1 and 10000, got 0"),
    ("candidates-per-call-0", {"model": "m", "upstream": {"candidates_per_call": 0}}, "upstream.candidates_per_call",
     "must be between 1 and 128"),
    ("unknown-upstream-field", {"model": "m", "upstream": {"retries": 3}}, "upstream.retries", "unknown field `retries`"),
    ("server-settings", {"model": "m", "server": {"port": 9}}, "server", "server settings can only be set in the config file"),
]


def _cases(table):
    """pytest params from (id, values...) rows; a row may already be a pytest.param with marks."""
    out = []
    for row in table:
        if hasattr(row, "marks"):  # a pytest.param (itself a tuple)
            out.append(pytest.param(*row.values[1:], id=row.values[0], marks=row.marks))
        else:
            out.append(pytest.param(*row[1:], id=row[0]))
    return out


@pytest.mark.parametrize("body,param,fragment", _cases(CONFIGURE_CASES))
def test_bad_configuration_is_refused_and_changes_nothing(catalogue_worker, mock, body, param, fragment):
    status, headers, err = error_of(http("POST", catalogue_worker.url + "/configure", body))
    assert (status, err["type"], err["param"]) == (400, BAD, param), err
    assert fragment in err["message"], err["message"]
    # The previous configuration still serves, unchanged (max_budget included).
    assert http("GET", catalogue_worker.url + "/v1/models")[2]["data"][0]["id"] == "m"
    status, _, over = error_of(catalogue_worker.chat(ok_body(budget=MAX_BUDGET + 1)))
    assert status == 400 and f"max_budget of {MAX_BUDGET}" in over["message"]
    assert_worker_still_serves(catalogue_worker, mock)


# --- the same refusals through the real openai client ------------------------------------------
OPENAI_CASES = [
    ("n-2", {"n": 2}, {}, "n"),
    ("budget-0", {}, {"budget": 0}, "budget"),
    ("budget-over-max", {}, {"budget": MAX_BUDGET + 1}, "budget"),
    ("unknown-role", {"messages": [{"role": "wizard", "content": "x"}]}, {}, "messages[0].role"),
    ("function-tool-without-function", {"tools": [{"type": "function"}]}, {}, "tools[0].function"),
]


@pytest.mark.parametrize("kwargs,extra_body,param", [c[1:] for c in OPENAI_CASES], ids=[c[0] for c in OPENAI_CASES])
def test_openai_client_sees_bad_request_with_param(catalogue_worker, mock, kwargs, extra_body, param):
    client = openai.OpenAI(base_url=f"{catalogue_worker.url}/v1", api_key="dummy", max_retries=2)
    args = {"model": "m", "messages": QUESTION, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args, extra_body=extra_body)
    assert e.value.status_code == 400 and e.value.param == param and e.value.type == BAD
    assert mock.stats()["requests"] == 0


def test_openai_client_budget_header_is_checked(catalogue_worker, mock):
    client = openai.OpenAI(base_url=f"{catalogue_worker.url}/v1", api_key="dummy")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=QUESTION, extra_headers={"X-ITS-Budget": "lots"})
    assert e.value.param == "budget"
    assert mock.stats()["requests"] == 0


# --- credentials: client keys and the admin token ----------------------------------------------


@pytest.fixture(scope="module")
def guarded_worker(mock, tmp_path_factory):
    """A worker started from a config file with client keys and an admin token."""
    d = tmp_path_factory.mktemp("guarded")
    (d / "keys").write_text("sk-client-one\nsk-client-two\n")
    cfg = {**config(mock), "server": {"api_keys_file": str(d / "keys"), "allow_configure": True,
                                      "admin_token": "admin-secret-token"}}
    (d / "config.json").write_text(json.dumps(cfg))
    w = start_worker(mock, "--config", str(d / "config.json"))
    yield w
    w.proc.stop()


@pytest.fixture(scope="module")
def file_only_worker(mock, tmp_path_factory):
    """A worker whose configuration comes from its file only (no allow_configure)."""
    d = tmp_path_factory.mktemp("file-only")
    (d / "config.json").write_text(json.dumps(config(mock)))
    w = start_worker(mock, "--config", str(d / "config.json"))
    yield w
    w.proc.stop()


CREDENTIAL_CASES = [
    ("chat-without-key", "guarded", "POST", "/v1/chat/completions", {}, 401, "authentication_error", "Missing API key"),
    ("chat-wrong-key", "guarded", "POST", "/v1/chat/completions", {"Authorization": "Bearer sk-nope"}, 401,
     "authentication_error", "Incorrect API key provided."),
    ("chat-key-not-bearer", "guarded", "POST", "/v1/chat/completions", {"Authorization": "Basic c2stY2xpZW50LW9uZQ=="}, 401,
     "authentication_error", "Missing API key"),
    ("models-without-key", "guarded", "GET", "/v1/models", {}, 401, "authentication_error", "Missing API key"),
    ("configure-without-admin-token", "guarded", "POST", "/configure", {}, 401, "authentication_error", "Missing admin token"),
    ("configure-with-a-client-key", "guarded", "POST", "/configure", {"Authorization": "Bearer sk-client-one"}, 401,
     "authentication_error", "Incorrect admin token provided."),
    ("configure-on-a-file-configured-worker", "file_only", "POST", "/configure", {}, 403, "permission_error",
     "POST /configure is disabled"),
]


@pytest.mark.parametrize("which,method,path,headers,status,kind,fragment", [c[1:] for c in CREDENTIAL_CASES],
                         ids=[c[0] for c in CREDENTIAL_CASES])
def test_missing_or_wrong_credentials(request, mock, which, method, path, headers, status, kind, fragment):
    worker = request.getfixturevalue(f"{which}_worker")
    mock.reset()
    body = config(mock, model="changed") if path == "/configure" else (ok_body() if method == "POST" else None)
    got, resp_headers, err = error_of(http(method, worker.url + path, body, headers))
    assert (got, err["type"], err["param"]) == (status, kind, None), err
    assert fragment in err["message"], err["message"]
    if status == 401:
        assert resp_headers["www-authenticate"] == "Bearer"
    # The secrets are never echoed, whatever was sent.
    text = json.dumps(err)
    assert "sk-client" not in text and "admin-secret-token" not in text
    assert mock.stats()["requests"] == 0
    # Nothing changed: the worker still serves model m to a caller with a valid key.
    ok = http("POST", worker.url + "/v1/chat/completions", ok_body(budget=1), {"Authorization": "Bearer sk-client-two"})
    assert ok[0] == 200, ok[2]
