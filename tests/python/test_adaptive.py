"""Early decision, adaptive self-consistency and per-request algorithm choice, end to end with
the real `openai` client against the simulator.

Answers are cycled in arrival order; `hang` faults keep chosen calls open until the worker
drops them, so "the vote was decided before these calls answered" is certain, not timing luck.
The simulator's `cancelled` counter proves the worker really closed those connections.
"""

from __future__ import annotations

import openai
import pytest

from conftest import BIN_DIR, Mock, Process, start_worker

QUESTION = [{"role": "user", "content": "What is 847 * 293 + 156?"}]


def sc_config(mock, **extra):
    return {"provider": "openai-compatible", "endpoint": f"{mock.url}/v1", "model": "m",
            "alg": "self-consistency", **extra}


def client(worker):
    return openai.OpenAI(base_url=f"{worker.url}/v1", api_key="dummy-key", max_retries=0)


def ask(worker, budget, **extra_body):
    resp = client(worker).chat.completions.create(
        model="m", messages=QUESTION,
        extra_body={"budget": budget, "return_response_only": False, **extra_body})
    # The SDK's own `metadata` field is typed as a map of strings; read the raw object instead.
    return resp.choices[0].message.content, resp.to_dict()["metadata"]


def cancelled_calls_metric(worker) -> float:
    for line in worker.metrics().splitlines():
        if line.startswith('inferscale_cancelled_calls_total{algorithm="self-consistency"}'):
            return float(line.split()[-1])
    return 0.0


# --- early decision -----------------------------------------------------------------------

@pytest.fixture
def own_mock():
    """A simulator no other test has talked to: the scenario below counts requests, and a late
    retry from an earlier test would shift which calls hang."""
    proc = Process([str(BIN_DIR / "mock-llm"), "--port", "0", "--seed", "7"])
    yield Mock(proc)
    proc.stop()


@pytest.fixture
def own_worker(own_mock):
    w = start_worker(own_mock)
    yield w
    w.proc.stop()


def test_a_decided_vote_answers_without_the_stragglers_and_cancels_them(own_worker, own_mock):
    worker, mock = own_worker, own_mock
    # The decision is exact at the candidate level: an outstanding call *before* the first A in
    # call order could still answer A and become the returned candidate, so only calls after it
    # may be dropped. A window of 3 (adaptive, with a rule that can never reach its threshold of
    # 1, so only the exact decision stops) makes calls 0-2 the simulator's first three requests:
    # all answer A after 200 ms, the third 300 ms later still. Calls 3 and 4 start as the first
    # two answer, become requests 4 and 5, and hang. When the third A arrives, A has 3 votes
    # against at most 2: the worker answers and drops calls 3 and 4. (The 200 ms keep a busy
    # machine from letting call 3 overtake call 0 on its way to the simulator: call 0 would then
    # be the one hanging, and an outstanding call before the first A rightly keeps the vote open.)
    mock.scenario({"answers": [{"content": "A"}], "latency": {"fixed_ms": 200},
                   "faults": [{"every": 3, "delay_ms": 300},
                              {"every": 4, "hang": True}, {"every": 5, "hang": True}]})
    worker.configure(sc_config(mock, adaptive={"rule": "beta", "threshold": 1, "parallelism": 3}))
    before = cancelled_calls_metric(worker)
    answer, meta = ask(worker, 5)
    assert answer == "A"
    assert meta["stop_reason"] == "decided"
    assert (meta["calls_sent"], meta["calls_completed"], meta["calls_cancelled"]) == (5, 3, 2), meta
    assert meta["response_counts"] == {"A": 3}
    # The simulator saw both hanging connections closed by the worker.
    stats = mock.wait(cancelled=2)
    assert stats["timed_out"] is False and stats["cancelled"] == 2
    assert cancelled_calls_metric(worker) == before + 2

    # Waiting for every call (the benchmark baseline, no hangs) gives the same answer.
    mock.scenario({"answers": [{"content": "A"}, {"content": "A"}, {"content": "A"}, {"content": "B"}]})
    worker.configure(sc_config(mock, early_decision=False))
    full_answer, full = ask(worker, 5)
    assert full_answer == answer
    assert full["stop_reason"] == "all_completed"
    assert (full["calls_sent"], full["calls_completed"], full["calls_cancelled"]) == (5, 5, 0)


def test_an_open_vote_waits_for_every_call(worker, mock):
    mock.scenario({"answers": [{"content": "A"}, {"content": "B"}, {"content": "C"}, {"content": "D"}]})
    worker.configure(sc_config(mock))
    _, meta = ask(worker, 4)
    # Four different answers: whichever arrives last could repeat any earlier one and win.
    assert meta["calls_completed"] == 4 and meta["calls_cancelled"] == 0
    assert meta["stop_reason"] == "all_completed"


# --- adaptive -----------------------------------------------------------------------------

def test_adaptive_stops_early_when_the_answers_agree(worker, mock):
    mock.scenario({"answers": [{"content": "42"}]})
    worker.configure(sc_config(mock, adaptive={"rule": "beta", "parallelism": 2}))
    answer, meta = ask(worker, 16)
    assert answer == "42"
    assert meta["stop_reason"] == "adaptive_confident"
    # Beta at 0.95 needs 4 unanimous votes. After three agreeing answers the one call in flight
    # could be the fourth, so the window of 2 starts no fifth call that would only be cancelled.
    assert (meta["calls_sent"], meta["calls_completed"], meta["calls_cancelled"]) == (4, 4, 0)
    assert mock.stats()["requests"] == 4


def test_adaptive_spends_the_budget_when_the_answers_stay_split(worker, mock):
    # One call at a time, so the answers arrive in the simulator's cycle order: A B C D A B C D.
    # its_hub sees shares of 1/2 after 2 and 1/4 after 4 samples; after 7 the last call could
    # still make A, B or C the winner, so the exact decision cannot stop either.
    mock.scenario({"answers": [{"content": "A"}, {"content": "B"}, {"content": "C"}, {"content": "D"}]})
    worker.configure(sc_config(mock, adaptive={"rule": "its_hub", "parallelism": 1}))
    _, meta = ask(worker, 8)
    assert (meta["calls_sent"], meta["calls_completed"]) == (8, 8)
    assert meta["stop_reason"] == "all_completed"
    assert mock.stats()["requests"] == 8


def test_adaptive_is_refused_for_best_of_n_and_nonsense_values(worker, mock):
    bad = [({"alg": "best-of-n", "rm_name": "llm-judge", "judge_model": "m", "adaptive": {"rule": "beta"}},
            "adaptive"),
           ({"adaptive": {"rule": "beta", "threshold": 0}}, "adaptive.threshold"),
           ({"adaptive": {"rule": "beta", "parallelism": 0}}, "adaptive.parallelism"),
           ({"max_budget": 8, "adaptive": {"rule": "dirichlet", "min_samples": 9}}, "adaptive.min_samples")]
    for extra, param in bad:
        body = worker.configure(sc_config(mock, **extra), expect=400)
        assert body["error"]["param"] == param, body


# --- per-request choice -------------------------------------------------------------------

def test_an_allowed_override_changes_the_algorithm_for_that_request_only(worker, mock):
    mock.scenario({"answers": [{"content": "42"}]})
    worker.configure(sc_config(mock, allow_request_override=["adaptive", "name"]))
    _, meta = ask(worker, 16, algorithm={"adaptive": {"rule": "beta", "parallelism": 1}})
    assert meta["stop_reason"] == "adaptive_confident"
    assert meta["calls_completed"] == 4
    assert meta["algorithm"] == "self-consistency"
    # The override is the worker's own: it is not forwarded upstream.
    assert all("algorithm" not in r["body"] for r in mock.requests(20))

    # The next request without it uses the endpoint's settings: every call, all unanimous.
    mock.reset()
    _, meta = ask(worker, 4)
    assert meta["calls_sent"] == 4


def test_forbidden_and_malformed_overrides_are_refused_with_the_field(worker, mock):
    worker.configure(sc_config(mock, allow_request_override=["adaptive", "name"]))
    cases = [({"tool_vote": "tool_name"}, "algorithm.tool_vote"),
             # No judge on this endpoint.
             ({"name": "best-of-n"}, "algorithm.name"),
             ({"name": "majority"}, "algorithm.name"),
             ({"adaptive": {"rule": "beta", "threshold": 2}}, "algorithm.adaptive.threshold"),
             ({"adaptive": {"rule": "beta", "parallelism": 0}}, "algorithm.adaptive.parallelism")]
    for override, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            ask(worker, 2, algorithm=override)
        assert e.value.status_code == 400
        assert e.value.param == param, (override, e.value.body)
    assert mock.stats()["requests"] == 0

    worker.configure(sc_config(mock))
    with pytest.raises(openai.BadRequestError) as e:
        ask(worker, 2, algorithm={"name": "self-consistency"})
    assert e.value.param == "algorithm.name"
    assert "allow_request_override" in e.value.message


def test_best_of_n_by_request_on_an_endpoint_with_a_judge(worker, mock):
    mock.scenario({"answers": [{"content": "The answer is 248327."}, {"content": "no idea"}],
                   "judge": {"pointwise": [{"contains": "248327", "score": 9}], "default_score": 1}})
    worker.configure({**sc_config(mock), "rm_name": "llm-judge", "judge_model": "m",
                      "allow_request_override": ["name"]})
    answer, meta = ask(worker, 2, algorithm={"name": "best-of-n"})
    assert "248327" in answer
    assert meta["algorithm"] == "best-of-n"
    assert meta["stop_reason"] == "all_completed"
    assert "self-consistency" in worker.metrics()
    assert 'inferscale_requests_total{algorithm="best-of-n",outcome="success"}' in worker.metrics()
