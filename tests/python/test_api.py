"""Behaviour of the worker's API: voting, judging, streaming, errors, cancellation, metrics.

Each test sets the simulator's scenario; answers are cycled in arrival order, so with a
budget equal to the number of scripted answers every answer occurs exactly once per request.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from urllib.parse import urlparse

import openai
import pytest

from conftest import http, start_worker

CALC_TOOL = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Perform arithmetic calculations",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    },
}
QUESTION = [{"role": "user", "content": "What is 847 * 293 + 156?"}]


def sc_config(mock, **extra):
    # These tests check the full vote (every candidate in the metadata); stopping once the vote
    # is decided is tested in test_adaptive.py.
    return {"provider": "openai-compatible", "endpoint": f"{mock.url}/v1", "model": "m",
            "alg": "self-consistency", "early_decision": False, **extra}


def bon_config(mock, **extra):
    return {**sc_config(mock), "alg": "best-of-n", "rm_name": "llm-judge", "judge_model": "m", **extra}


def call(name, **args):
    return {"tool_calls": [{"name": name, "arguments": args}]}


def chat(worker, budget, **extra):
    status, headers, body = worker.chat({"model": "m", "messages": QUESTION, "budget": budget,
                                         "return_response_only": False, **extra})
    assert status == 200, body
    return body


def client(worker, **kw):
    return openai.OpenAI(base_url=f"{worker.url}/v1", api_key="dummy-key", **kw)


# --- self-consistency -----------------------------------------------------------------------

def test_text_majority_with_metadata(worker, mock):
    mock.scenario({"answers": [{"content": "B"}, {"content": " A "}, {"content": "A"}, {"content": "B"}, {"content": "A"}]})
    worker.configure(sc_config(mock))
    body = chat(worker, 5)
    assert body["choices"][0]["message"]["content"].strip() == "A"
    meta = body["metadata"]
    assert meta["algorithm"] == "self-consistency"
    assert meta["response_counts"] == {"A": 3, "B": 2}
    assert len(meta["all_responses"]) == 5
    assert meta["all_responses"][meta["selected_index"]]["content"].strip() == "A"
    assert meta["agreement"] == pytest.approx(0.6)


def test_regex_projection_and_unmatched_candidates(worker, mock):
    mock.scenario({"answers": [{"content": "no idea"}, {"content": "no idea"}, {"content": "no idea"},
                               {"content": "Final answer: 42"}, {"content": "Final answer: 41"},
                               {"content": "so the FINAL ANSWER: 42."}]})
    worker.configure(sc_config(mock, regex_patterns=[r"final answer:\s*(\d+)"]))
    body = chat(worker, 6)
    assert "42" in body["choices"][0]["message"]["content"]
    assert body["metadata"]["response_counts"] == {"42": 2, "41": 1}
    assert body["metadata"]["vote_space"] == "text_regex"


@pytest.mark.parametrize("mode,answers,winner,counts", [
    ("tool_name",
     [call("search", q="x"), call("calculator", expression="1"), call("calculator", expression="2")],
     {"name": "calculator"}, {"calculator": 2, "search": 1}),
    ("tool_args",
     [call("calculator", expression="2", request_id="r1"), call("calculator", expression="1", request_id="r2"),
      call("calculator", expression="2", request_id="r3")],
     {"args": {"expression": "2"}}, None),
    ("tool_hierarchical",
     [call("search", q="x"), call("search", q="x"), call("calculator", expression="1", request_id="a"),
      call("calculator", expression="2", request_id="b"), call("calculator", expression="2", request_id="c")],
     {"name": "calculator", "args": {"expression": "2"}}, None),
    ("tool_flat_all",
     [{"tool_calls": [{"name": "a", "arguments": {"request_id": 1}}, {"name": "b", "arguments": {}}]},
      {"tool_calls": [{"name": "b", "arguments": {}}, {"name": "a", "arguments": {"request_id": 2}}]},
      call("a")],
     {"names": {"a", "b"}}, None),
])
def test_tool_vote_modes_with_exclude_args(worker, mock, mode, answers, winner, counts):
    mock.scenario({"answers": answers})
    worker.configure(sc_config(mock, tool_vote=mode, exclude_args=["request_id"]))
    body = chat(worker, len(answers), tools=[CALC_TOOL])
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    if "name" in winner:
        assert calls[0]["function"]["name"] == winner["name"]
    if "args" in winner:
        args = json.loads(calls[0]["function"]["arguments"])
        args.pop("request_id", None)
        assert args == winner["args"]
    if "names" in winner:
        assert {c["function"]["name"] for c in calls} == winner["names"]
    if counts:
        assert body["metadata"]["response_counts"] == counts
    assert body["metadata"]["vote_space"] == mode


def test_exclude_tool_args_alias(worker, mock):
    mock.scenario({"answers": [call("calculator", expression="1", ts=1), call("calculator", expression="2", ts=2),
                               call("calculator", expression="2", ts=3)]})
    worker.configure(sc_config(mock, tool_vote="tool_args", exclude_tool_args=["ts"]))
    body = chat(worker, 3, tools=[CALC_TOOL])
    assert json.loads(body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])["expression"] == "2"


def test_mixed_tool_and_text_candidates(worker, mock):
    # 2 of 4 call tools: with tool_vote set, half is enough for the tool vote.
    mock.scenario({"answers": [{"content": "It is 248327."}, call("calculator", expression="847*293+156"),
                               {"content": "It is 248327."}, call("calculator", expression="847*293+156")]})
    worker.configure(sc_config(mock, tool_vote="tool_hierarchical"))
    assert chat(worker, 4, tools=[CALC_TOOL])["choices"][0]["finish_reason"] == "tool_calls"
    # Without tool_vote the text answers are voted on.
    worker.configure(sc_config(mock))
    mock.reset()
    body = chat(worker, 4, tools=[CALC_TOOL])
    assert body["choices"][0]["message"]["content"] == "It is 248327."
    assert body["choices"][0]["finish_reason"] == "stop"


def test_multi_turn_tool_history_is_forwarded(worker, mock):
    worker.configure(sc_config(mock))
    messages = QUESTION + [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "calculator", "arguments": "{\"expression\": \"847*293+156\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "248327"},
    ]
    status, _, body = worker.chat({"model": "m", "messages": messages, "tools": [CALC_TOOL], "budget": 2,
                                   "temperature": 0.3, "max_completion_tokens": 64, "seed": 5, "top_p": 0.9,
                                   "response_format": {"type": "text"}, "stop": ["\n\n"], "user": "u1"})
    assert status == 200, body
    sent = mock.requests(2)
    assert len(sent) == 2
    for r in sent:
        b = r["body"]
        assert b["messages"] == messages
        assert (b["temperature"], b["max_completion_tokens"], b["seed"], b["top_p"]) == (0.3, 64, 5, 0.9)
        assert b["response_format"] == {"type": "text"} and b["stop"] == ["\n\n"] and b["user"] == "u1"
        assert not {"budget", "return_response_only", "stream"} & b.keys()


def test_budget_header_wins_and_budget_one_is_a_single_call(worker, mock):
    worker.configure(sc_config(mock, budget=3))
    worker.chat({"model": "m", "messages": QUESTION})
    assert mock.stats()["requests"] == 3
    mock.reset()
    worker.chat({"model": "m", "messages": QUESTION, "budget": 6}, headers={"X-ITS-Budget": "2"})
    assert mock.stats()["requests"] == 2
    mock.reset()
    body = chat(worker, 1)
    assert mock.stats()["requests"] == 1
    assert body["choices"][0]["message"]["content"]


def test_usage_sums_every_call_including_the_judge(worker, mock):
    mock.scenario({"answers": [{"content": "same answer"}]})
    worker.configure(sc_config(mock))
    one = chat(worker, 1)["usage"]
    four = chat(worker, 4)["usage"]
    assert four["prompt_tokens"] == 4 * one["prompt_tokens"]
    assert four["completion_tokens"] == 4 * one["completion_tokens"]
    assert four["total_tokens"] == four["prompt_tokens"] + four["completion_tokens"]
    mock.scenario({"answers": [{"content": "answer one"}, {"content": "answer two"}]})
    worker.configure(bon_config(mock, judge_mode="groupwise"))
    judged = chat(worker, 2)["usage"]
    mock.scenario({"answers": [{"content": "answer one"}, {"content": "answer two"}]})
    worker.configure(sc_config(mock))
    voted = chat(worker, 2)["usage"]
    assert judged["prompt_tokens"] > voted["prompt_tokens"] and judged["completion_tokens"] > voted["completion_tokens"]


# --- best-of-n ------------------------------------------------------------------------------

JUDGE_ANSWERS = [{"content": "I believe it is 248,317."}, {"content": "The answer is 248327."},
                 {"content": "I believe it is 248,317."}, {"content": "I believe it is 248,317."}]


def test_pointwise_judge_beats_the_majority(worker, mock):
    mock.scenario({"answers": JUDGE_ANSWERS, "judge": {"pointwise": [{"contains": "248327", "score": 9}], "default_score": 3}})
    worker.configure(bon_config(mock, judge_mode="pointwise", judge_criterion="overall_quality"))
    body = chat(worker, 4)
    assert body["choices"][0]["message"]["content"] == "The answer is 248327."
    meta = body["metadata"]
    assert meta["algorithm"] == "best-of-n"
    assert sorted(meta["scores"]) == [3.0, 3.0, 3.0, 9.0]
    assert meta["judge"]["calls"] == 2 and meta["judge"]["distinct_candidates"] == 2
    assert mock.stats()["judge_requests"] == 2


def test_groupwise_judge_with_custom_criterion(worker, mock):
    mock.scenario({"answers": JUDGE_ANSWERS, "judge": {"groupwise_pick_contains": "248327"}})
    worker.configure(bon_config(mock, judge_mode="groupwise", judge_criterion="Prefer the arithmetically exact answer."))
    body = chat(worker, 4)
    assert body["choices"][0]["message"]["content"] == "The answer is 248327."
    assert mock.stats()["judge_requests"] == 1
    judge_call = [r for r in mock.requests(5) if "expert evaluator" in json.dumps(r["body"])][0]["body"]
    assert "Prefer the arithmetically exact answer." in judge_call["messages"][0]["content"]


def test_identical_candidates_skip_the_judge(worker, mock):
    mock.scenario({"answers": [{"content": "same"}]})
    worker.configure(bon_config(mock))
    body = chat(worker, 4)
    assert mock.stats()["judge_requests"] == 0
    assert body["metadata"]["scores"] == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("mode,reply,scores", [
    ("pointwise", "```json\n{\"reasoning\": \"ok\", \"score\": 8}\n```", [8.0] * 4),
    ("pointwise", "Here is my verdict: {\"reasoning\": \"ok\", \"score\": 7}", [7.0] * 4),
    ("pointwise", "{\"reasoning\": \"cut off\", \"score\": 6.5", [6.5] * 4),
    ("groupwise", "```\n{\"selected_indices\": [1]}\n```", None),
])
def test_judge_reply_forms_are_parsed(worker, mock, mode, reply, scores):
    mock.scenario({"answers": JUDGE_ANSWERS, "judge": {"raw_reply": reply}})
    worker.configure(bon_config(mock, judge_mode=mode))
    body = chat(worker, 4)
    meta = body["metadata"]
    assert meta["judge"]["failures"] == 0 and meta["judge"]["fallback"] is None
    if scores:
        assert meta["scores"] == scores
    else:  # distinct answer 1 (the second distinct one, in call order) was selected
        # Which answer comes second depends on the order in which the concurrent calls reached the
        # simulator's answer cycle, so the expectation is derived from the candidates themselves.
        texts = [m["content"] for m in meta["all_responses"]]
        distinct = list(dict.fromkeys(texts))
        assert len(distinct) == 2
        assert meta["scores"] == [1.0 if t == distinct[1] else 0.0 for t in texts]


def test_garbage_judge_falls_back_to_the_vote_and_is_counted(fresh_worker, mock):
    mock.scenario({"answers": JUDGE_ANSWERS, "judge": {"raw_reply": "I cannot decide between these."}})
    fresh_worker.configure(bon_config(mock, judge_mode="groupwise"))
    body = chat(fresh_worker, 4)
    meta = body["metadata"]
    assert meta["judge"]["fallback"] == "self-consistency"
    assert "unparseable judge reply" in meta["judge"]["error"]
    assert meta["scores"] == [None] * 4
    # The vote decides: 3 of 4 said 248,317.
    assert body["choices"][0]["message"]["content"] == "I believe it is 248,317."
    assert 'inferscale_judge_fallbacks_total{reason="unparseable"} 1' in fresh_worker.metrics()


# --- streaming through openai-python --------------------------------------------------------

def test_streaming_text_with_usage(worker, mock):
    mock.scenario({"answers": [{"content": "Streamed answer."}]})
    worker.configure(sc_config(mock))
    stream = client(worker).chat.completions.create(
        model="m", messages=QUESTION, stream=True, stream_options={"include_usage": True}, extra_body={"budget": 3})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Streamed answer."
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_streamed_response_reports_the_budget_it_spent(worker, mock):
    worker.configure(sc_config(mock, budget=4))
    status, headers, body = worker.chat({"model": "m", "messages": QUESTION, "budget": 3, "stream": True})
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert body.rstrip().endswith("data: [DONE]")
    assert headers["x-its-budget"] == "3" and mock.stats()["requests"] == 3
    mock.reset()
    # The header wins over the body, as for a JSON response; without either, the default.
    _, headers, _ = worker.chat({"model": "m", "messages": QUESTION, "budget": 3, "stream": True},
                                headers={"X-ITS-Budget": "2"})
    assert headers["x-its-budget"] == "2" and mock.stats()["requests"] == 2
    _, headers, _ = worker.chat({"model": "m", "messages": QUESTION, "stream": True})
    assert headers["x-its-budget"] == "4"


def test_streaming_tool_calls_through_the_stream_helper(worker, mock):
    mock.scenario({"answers": [call("calculator", expression="847*293+156")]})
    worker.configure(sc_config(mock, tool_vote="tool_hierarchical"))
    c = client(worker)
    helper = getattr(c.chat.completions, "stream", None) or c.beta.chat.completions.stream
    with helper(model="m", messages=QUESTION, tools=[CALC_TOOL], extra_body={"budget": 3}) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (tc,) = choice.message.tool_calls
    assert tc.function.name == "calculator" and tc.id.startswith("call_") and tc.type == "function"
    assert json.loads(tc.function.arguments) == {"expression": "847*293+156"}


def test_streaming_error_after_start_is_an_error_event(worker, mock):
    mock.scenario({"faults": [{"rate": 1.0, "status": 500}]})
    worker.configure(sc_config(mock, upstream={"max_retries": 0}))
    with pytest.raises(openai.APIError) as err:
        list(client(worker, max_retries=0).chat.completions.create(model="m", messages=QUESTION, stream=True,
                                                                 extra_body={"budget": 2}))
    assert "upstream" in str(err.value)


# --- errors ---------------------------------------------------------------------------------

def error_of(status_body):
    status, headers, body = status_body
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return status, headers, body["error"]


def test_chat_before_configure_is_503(fresh_worker):
    status, headers, err = error_of(fresh_worker.chat({"model": "m", "messages": QUESTION}))
    assert status == 503 and err["code"] == "not_configured" and "/configure" in err["message"]
    assert headers["x-should-retry"] == "false"
    assert http("GET", fresh_worker.url + "/ready")[0] == 503


@pytest.mark.parametrize("body,param,fragment", [
    (b"{\"model\": ", None, "could not parse the JSON body"),
    ({"messages": QUESTION}, "model", "Missing required parameter: 'model'"),
    ({"model": "m", "messages": "hi"}, "messages", "invalid type"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "unknown variant `wizard`"),
    ({"model": "m", "messages": QUESTION, "budget": 0}, "budget", "between 1 and 1000"),
    ({"model": "m", "messages": QUESTION, "budget": "many"}, "budget", "invalid type"),
    ({"model": "m", "messages": QUESTION, "budget": 50}, "budget", "exceeds this endpoint's max_budget of 16"),
    ({"model": "m", "messages": QUESTION, "n": 3}, "n", "n must be 1"),
])
def test_bad_chat_requests(worker, mock, body, param, fragment):
    worker.configure(sc_config(mock, max_budget=16))
    status, headers, err = error_of(worker.chat(body))
    assert status == 400, err
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert fragment in err["message"], err["message"]
    assert headers["x-should-retry"] == "false"
    assert mock.stats()["requests"] == 0


def test_budget_header_must_be_an_integer(worker, mock):
    worker.configure(sc_config(mock))
    status, _, err = error_of(worker.chat({"model": "m", "messages": QUESTION}, headers={"X-ITS-Budget": "lots"}))
    assert status == 400 and err["param"] == "budget"


def test_unknown_model_is_404_through_openai(worker, mock):
    worker.configure(sc_config(mock))
    with pytest.raises(openai.NotFoundError) as e:
        client(worker).chat.completions.create(model="gpt-9", messages=QUESTION)
    assert e.value.code == "model_not_found"
    assert mock.stats()["requests"] == 0


def test_oversized_body_unknown_route_and_wrong_method(worker, mock):
    worker.configure(sc_config(mock))
    huge = {"model": "m", "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    status, _, err = error_of(worker.chat(huge))
    assert status == 413 and err["code"] == "request_too_large"
    status, _, err = error_of(http("GET", worker.url + "/v2/nothing"))
    assert status == 404 and "/v2/nothing" in err["message"]
    status, _, err = error_of(http("GET", worker.url + "/v1/chat/completions"))
    assert status == 405


@pytest.mark.parametrize("config,param,fragment", [
    ({"model": "m", "alg": "particle-gibbs"}, "alg", "unknown variant `particle-gibbs`"),
    ({"model": "m", "regex_patterns": ["("]}, "regex_patterns", "not a valid regular expression"),
    ({"model": "m", "tool_vote": "by_vibes"}, "tool_vote", "unknown variant `by_vibes`"),
    ({"model": "m", "surprise": True}, None, "unknown field `surprise`"),
    ({"model": "m", "budget": 0}, "budget", "budget must be between 1"),
    ({"model": "m", "endpoint": "localhost:8000"}, "endpoint", "must be \"auto\" or an http(s) URL"),
    ({"alg": "self-consistency"}, None, "missing field `model`"),
])
def test_bad_configurations_change_nothing(worker, mock, config, param, fragment):
    worker.configure(sc_config(mock))
    status, _, err = error_of(http("POST", worker.url + "/configure", config))
    assert status == 400 and fragment in err["message"], err
    if param:
        assert err["param"] == param
    # The previous configuration still serves.
    assert http("GET", worker.url + "/v1/models")[2]["data"][0]["id"] == "m"
    assert worker.chat({"model": "m", "messages": QUESTION, "budget": 1})[0] == 200


def test_configure_never_echoes_secrets(worker, mock):
    body = worker.configure({**sc_config(mock), "api_key": "sk-supersecret-123", "judge_api_key": "sk-judge-456"})
    assert "supersecret" not in json.dumps(body) and "judge-456" not in json.dumps(body)


def test_all_candidates_failing_is_502_with_the_reason(worker, mock):
    mock.scenario({"faults": [{"rate": 1.0, "status": 500, "body": "{\"error\": {\"message\": \"GPU on fire\"}}"}]})
    worker.configure(sc_config(mock, upstream={"max_retries": 0}))
    status, headers, err = error_of(worker.chat({"model": "m", "messages": QUESTION, "budget": 3}))
    assert status == 502 and "GPU on fire" in err["message"]
    assert "0 of 3 candidates were generated" in err["message"]


def test_upstream_rate_limit_for_every_candidate_is_429(worker, mock):
    mock.scenario({"faults": [{"rate": 1.0, "status": 429, "retry_after_s": 3}]})
    worker.configure(sc_config(mock, upstream={"max_retries": 0}))
    status, headers, err = error_of(worker.chat({"model": "m", "messages": QUESTION, "budget": 2}))
    assert status == 429 and headers["retry-after"] == "3"


def test_hanging_upstream_hits_the_deadline(worker, mock):
    mock.scenario({"faults": [{"rate": 1.0, "hang": True}]})
    worker.configure(sc_config(mock, upstream={"request_timeout_secs": 1.0}))
    start = time.monotonic()
    status, _, err = error_of(worker.chat({"model": "m", "messages": QUESTION, "budget": 3}))
    assert status == 504 and err["code"] == "upstream_timeout"
    assert time.monotonic() - start < 10
    # The abandoned calls were closed, not left hanging upstream.
    assert mock.wait(cancelled=3)["cancelled"] == 3


def test_request_deadline_bounds_the_judging_too(worker, mock):
    mock.scenario({"answers": JUDGE_ANSWERS, "faults": [{"applies_to": "judge", "rate": 1.0, "hang": True}]})
    worker.configure(bon_config(mock, judge_mode="pointwise", upstream={"request_timeout_secs": 1.0}))
    start = time.monotonic()
    status, _, err = error_of(worker.chat({"model": "m", "messages": QUESTION, "budget": 4}))
    assert status == 504 and err["code"] == "upstream_timeout" and "request_timeout_secs" in err["message"]
    # Far below the judge call's own timeout (120 s): the deadline covers the candidates and the judge.
    assert time.monotonic() - start < 10
    # The candidates answered; both hanging judge calls were closed, not left behind.
    assert mock.wait(cancelled=2)["cancelled"] == 2
    assert mock.stats()["judge_requests"] == 2


def test_partial_failures_still_answer_and_are_reported(worker, mock):
    mock.scenario({"answers": [{"content": "ok"}], "faults": [{"every": 2, "status": 500}]})
    worker.configure(sc_config(mock, upstream={"max_retries": 0}))
    body = chat(worker, 4)
    assert body["choices"][0]["message"]["content"] == "ok"
    assert body["metadata"]["failed_candidates"] == 2 and len(body["metadata"]["all_responses"]) == 2


# --- cancellation, atomicity, metrics -------------------------------------------------------

def raw_request(worker, body: dict) -> socket.socket:
    u = urlparse(worker.url)
    payload = json.dumps(body).encode()
    s = socket.create_connection((u.hostname, u.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return s


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_cancels_upstream_calls(worker, mock, stream):
    mock.scenario({"latency": {"fixed_ms": 30000}})
    worker.configure(sc_config(mock))
    sock = raw_request(worker, {"model": "m", "messages": QUESTION, "budget": 4, "stream": stream})
    assert mock.wait(in_flight=4)["in_flight"] == 4
    sock.close()
    stats = mock.wait(cancelled=4)
    assert stats["cancelled"] == 4 and stats["completed"] == 0


def test_configure_is_atomic_under_concurrent_requests(worker, mock):
    mock.scenario({"answers": [{"content": "one"}, {"content": "two"}], "latency": {"fixed_ms": 5}})
    configs = [sc_config(mock), bon_config(mock, judge_mode="pointwise")]
    worker.configure(configs[0])
    results, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            results.append(worker.chat({"model": "m", "messages": QUESTION, "budget": 2, "return_response_only": False}))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    # Reconfigure back and forth for as long as the load runs (bounded), so swaps land mid-flight.
    deadline, i = time.monotonic() + 30, 0
    while len(results) < 60 and time.monotonic() < deadline:
        worker.configure(configs[i % 2])
        i += 1
    stop.set()
    for t in threads:
        t.join()
    assert len(results) >= 60 and i > 10
    for status, _, body in results:
        assert status == 200, body
        meta = body["metadata"]
        # Every request ran entirely on one configuration: votes with SC, scores with best-of-n.
        if meta["algorithm"] == "self-consistency":
            assert "response_counts" in meta and "scores" not in meta
        else:
            assert meta["algorithm"] == "best-of-n" and len(meta["scores"]) == 2


def test_in_flight_request_finishes_on_its_configuration(worker, mock):
    mock.scenario({"answers": [{"content": "one"}, {"content": "two"}], "latency": {"fixed_ms": 1500}})
    worker.configure(sc_config(mock))
    out = {}
    t = threading.Thread(target=lambda: out.update(r=worker.chat(
        {"model": "m", "messages": QUESTION, "budget": 2, "return_response_only": False})))
    t.start()
    mock.wait(in_flight=2)
    worker.configure(bon_config(mock))
    t.join()
    status, _, body = out["r"]
    assert status == 200 and body["metadata"]["algorithm"] == "self-consistency"


def test_metrics_pass_promtool_and_count_requests(fresh_worker, mock):
    fresh_worker.configure(sc_config(mock))
    chat(fresh_worker, 3)
    fresh_worker.chat({"model": "nope", "messages": QUESTION})
    text = fresh_worker.metrics()
    assert 'inferscale_requests_total{algorithm="self-consistency",outcome="success"} 1' in text
    assert 'inferscale_requests_total{algorithm="none",outcome="client_error"} 1' in text
    assert 'inferscale_upstream_requests_total{model="m",provider="openai-compatible",role="candidate",status="200"} 3' in text
    assert "inferscale_overhead_seconds_bucket" in text and "inferscale_vote_agreement_ratio_bucket" in text
    assert "process_resident_memory_bytes" in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is required"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
