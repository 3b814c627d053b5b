"""Step-wise search with a process reward model (issue 9), end to end with the real `openai`
client: particle filtering, beam search and PRM-scored best-of-n against the simulator's
step-wise reasoning mode and its `/pooling` PRM (tests/mock-llm/README.md).

The simulator's steps carry a visible `(ok)` / `(slip)` marker and its PRM scores a step by
whether the path is still correct, with a configured AUC. With `p_correct: 1.0` every call is
predictable, so usage totals are checked exactly; with a near-perfect PRM (AUC 0.999) a search
that really follows the PRM ends on a correct path where unguided sampling mostly does not.
"""

from __future__ import annotations

import json
import math
import re

import openai
import pytest

from conftest import BIN_DIR, Mock, Process, http, start_worker

QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]
CORRECT = "\\boxed{42}"
BAD = "invalid_request_error"
# The simulator's filler for steps 1..5 (tests/mock-llm/src/stepwise.rs) and its last step.
FILLERS = [
    "we restate what is given and what is asked.",
    "we carry the computation one part further.",
    "we check the intermediate result against the constraints.",
    "we combine the partial results.",
]


def ok_step(i: int, count: int = 6) -> str:
    """Step i of a correct path as a regex: every sampled step carries a random draft tag."""
    body = "so the final answer is \\boxed{42}." if i == count else FILLERS[(i - 1) % len(FILLERS)]
    return re.escape(f"Step {i} (ok): ") + r"\[[0-9a-f]{4}\] " + re.escape(body)


def ok_len(i: int, count: int = 6) -> int:
    """Characters of step i (the draft tag has a fixed width)."""
    body = "so the final answer is \\boxed{42}." if i == count else FILLERS[(i - 1) % len(FILLERS)]
    return len(f"Step {i} (ok): [0000] {body}")


def is_correct_solution(text: str) -> bool:
    """The steps of a complete correct solution, joined with the step token."""
    return re.fullmatch("\n\n".join(ok_step(i) for i in range(1, 7)), text) is not None


def tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


@pytest.fixture(scope="module")
def step_mock():
    proc = Process([str(BIN_DIR / "mock-llm"), "--port", "0", "--seed", "9"])
    yield Mock(proc)
    proc.stop()


@pytest.fixture(scope="module")
def step_worker(step_mock):
    w = start_worker(step_mock)
    yield w
    w.proc.stop()


def config(mock, alg, **extra):
    return {"provider": "openai-compatible", "endpoint": f"{mock.url}/v1", "model": "m",
            "alg": alg, "max_budget": 16, "rm_name": "prm", "rm_endpoint": mock.url, **extra}


def scenario(mock, p_correct=1.0, auc=0.8, **prm):
    mock.scenario({"steps": {"count": 6, "p_correct": p_correct, "answer": "42"},
                   "prm": {"auc": auc, "model": "prm", **prm}})


def client(worker):
    return openai.OpenAI(base_url=f"{worker.url}/v1", api_key="dummy-key", max_retries=0)


def ask(worker, budget, **kwargs):
    resp = client(worker).chat.completions.create(
        model="m", messages=QUESTION, extra_body={"budget": budget, "return_response_only": False},
        **kwargs)
    return resp, resp.to_dict(warnings=False)["metadata"]


def recorded(mock, path):
    return [r["body"] for r in mock.requests(200) if r["path"] == path]


def metric(worker, name: str, labels: str) -> float:
    for line in worker.metrics().splitlines():
        if line.startswith(f"{name}{{{labels}}}"):
            return float(line.split()[-1])
    return 0.0


# --- the three algorithms ---------------------------------------------------------------------

def test_particle_filtering_usage_and_wire_format(step_worker, step_mock):
    worker, mock = step_worker, step_mock
    scenario(mock)
    worker.configure(config(mock, "particle-filtering", max_step_tokens=300))
    resp, meta = ask(worker, 4)
    # The answer is the winning particle's steps joined as the reference joins them (a
    # finished particle has no trailing step token).
    answer = resp.choices[0].message.content
    assert is_correct_solution(answer), answer
    assert resp.choices[0].finish_reason == "stop"
    search = meta["search"]
    assert meta["algorithm"] == "particle-filtering"
    assert (search["steps"], search["generation_calls"], search["reward_calls"]) == (6, 24, 6), search
    assert search["fallback"] is None and search["max_calls_reached"] is False
    stats = mock.stats()
    assert (stats["requests"], stats["pooling_requests"]) == (24, 6)
    assert len(search["particles"]) == 4
    for p in search["particles"]:
        assert p["finished"] and len(p["steps"]) == 6
        assert is_correct_solution("\n\n".join(p["steps"])), p
        assert len(p["step_scores"]) == 6 and all(0 <= s <= 1 for s in p["step_scores"])
    # usage counts every generation call and every PRM call exactly as the simulator billed
    # them; the PRM's share is also reported apart.
    gen = recorded(mock, "/v1/chat/completions")
    assert len(gen) == 24
    prompt = sum(tokens("".join(m["content"] for m in b["messages"])) for b in gen)
    completion = 4 * sum(tokens("x" * ok_len(i)) for i in range(1, 7))
    pooled = recorded(mock, "/pooling")
    reward_prompt = sum(tokens(t) for b in pooled for t in b["input"])
    assert search["reward_prompt_tokens"] == reward_prompt > 0
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (prompt + reward_prompt, completion)
    assert resp.usage.total_tokens == prompt + reward_prompt + completion
    # Generation calls continue the partial answer and stop at the step token.
    later = [b for b in gen if b["messages"][-1]["role"] == "assistant"]
    assert len(later) == 20
    for b in gen:
        assert b["stop"] == ["\n\n"] and b["max_tokens"] == 300, b
    for b in later:
        assert b["continue_final_message"] is True and b["add_generation_prompt"] is False
    # One PRM call per step for all particles, each rendered with the Qwen2.5 template.
    assert [len(b["input"]) for b in pooled] == [4] * 6
    last = pooled[-1]["input"][0]
    assert last.startswith("<|im_start|>system\n") and "<|im_start|>user\nWhat is 6 * 7?<|im_end|>" in last
    assert last.endswith("<|im_end|><|endoftext|>") and last.count("<extra_0>") == 6
    assert all(b["model"] == "prm" for b in pooled)


@pytest.mark.parametrize("resampling", ["multinomial", "systematic"])
def test_particle_filtering_follows_the_prm_to_a_correct_path(step_worker, step_mock, resampling):
    worker, mock = step_worker, step_mock
    # A whole solution is correct with 0.7^6 = 0.12; with a PRM that nearly always ranks a
    # correct path above a broken one, resampling keeps the correct paths alive.
    scenario(mock, p_correct=0.7, auc=0.999)
    worker.configure(config(mock, "particle-filtering", resampling=resampling))
    before = metric(worker, "inferscale_search_resamplings_total", 'algorithm="particle-filtering"')
    answers = []
    for _ in range(6):
        resp, meta = ask(worker, 8)
        answers.append(resp.choices[0].message.content)
        search = meta["search"]
        chosen = search["particles"][meta["selected_index"]]
        assert "\n\n".join(chosen["steps"]) == resp.choices[0].message.content
        # The chosen particle carries the highest final weight of the finished ones.
        weights = [p["weight"] for p in search["particles"] if p["finished"]]
        assert chosen["weight"] == max(weights)
        assert search["resamplings"] >= 1
        assert all(len(p["ancestry"]) == search["resamplings"] for p in search["particles"]), search
    assert sum(CORRECT in a for a in answers) >= 5, answers
    assert metric(worker, "inferscale_search_resamplings_total", 'algorithm="particle-filtering"') > before


def test_beam_search_keeps_the_best_beams(step_worker, step_mock):
    worker, mock = step_worker, step_mock
    scenario(mock, p_correct=0.7, auc=0.999)
    worker.configure(config(mock, "beam-search", beam_width=2))
    answers = []
    for _ in range(6):
        resp, meta = ask(worker, 4)
        answers.append(resp.choices[0].message.content)
        search = meta["search"]
        assert meta["algorithm"] == "beam-search"
        # Every step extends budget = 4 paths (2 beams x 2 expansions) and scores them once.
        assert (search["steps"], search["generation_calls"], search["reward_calls"]) == (6, 24, 6), search
    # Measured: 58 of 60 correct (0.7^6 = 0.12 unguided).
    assert sum(CORRECT in a for a in answers) >= 4, answers


def test_prm_best_of_n_scores_whole_solutions(step_worker, step_mock):
    worker, mock = step_worker, step_mock
    scenario(mock, p_correct=0.7, auc=0.999)
    worker.configure(config(mock, "best-of-n", rm_agg_method="min"))
    resp, meta = ask(worker, 8)
    search = meta["search"]
    # Whole solutions in one call each, then one PRM call for all candidates.
    assert (search["generation_calls"], search["reward_calls"]) == (8, 1), search
    assert (mock.stats()["requests"], mock.stats()["pooling_requests"]) == (8, 1)
    pooled = recorded(mock, "/pooling")[0]["input"]
    assert len(pooled) == 8 and all(t.count("<extra_0>") == 6 for t in pooled)
    scores = [p["score"] for p in search["particles"]]
    # `min` aggregation: a candidate's score is its lowest step score.
    for p in search["particles"]:
        assert p["score"] == pytest.approx(min(p["step_scores"]))
    assert scores[meta["selected_index"]] == max(scores)
    assert len(meta["all_responses"]) == 8
    # With a near-perfect PRM, a correct candidate (if any) wins.
    any_correct = any(all("(ok)" in s for s in p["steps"]) for p in search["particles"])
    assert (CORRECT in resp.choices[0].message.content) == any_correct


def test_streaming_particle_filtering(step_worker, step_mock):
    worker, mock = step_worker, step_mock
    scenario(mock)
    worker.configure(config(mock, "particle-filtering"))
    stream = client(worker).chat.completions.create(
        model="m", messages=QUESTION, stream=True, stream_options={"include_usage": True},
        extra_body={"budget": 3})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert is_correct_solution(text), text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1].completion_tokens == 3 * sum(tokens("x" * ok_len(i)) for i in range(1, 7))


# --- the PRM failing mid-search -----------------------------------------------------------------

@pytest.mark.parametrize("fault,reason", [
    ({"after": 2, "status": 500}, "500"),
    ({"after": 2, "malformed": True}, ""),
    ({"after": 2, "wrong_rows": True}, ""),
], ids=["http-500", "garbage-body", "wrong-row-count"])
def test_prm_failure_mid_search_falls_back_to_a_vote(step_worker, step_mock, fault, reason):
    worker, mock = step_worker, step_mock
    scenario(mock, faults=[fault])
    worker.configure(config(mock, "particle-filtering"))
    before = metric(worker, "inferscale_reward_fallbacks_total", 'algorithm="particle-filtering"')
    resp, meta = ask(worker, 4)
    search = meta["search"]
    assert search["fallback"] == "self-consistency", search
    assert search["fallback_reason"] and reason in search["fallback_reason"], search
    # The search still finished every particle (unguided) and the majority answer won; with
    # p_correct 1.0 every particle agrees.
    assert is_correct_solution(resp.choices[0].message.content)
    assert all(p["finished"] for p in search["particles"])
    assert mock.stats()["pooling_requests"] >= 3
    assert metric(worker, "inferscale_reward_fallbacks_total", 'algorithm="particle-filtering"') == before + 1


# --- bad configurations and requests ----------------------------------------------------------

def error_of(result):
    status, _, body = result
    assert isinstance(body, dict) and set(body) == {"error"}, (status, body)
    return status, body["error"]


def base(mock, **extra):
    return {"provider": "openai-compatible", "endpoint": f"{mock.url}/v1", "model": "m",
            "max_budget": 16, **extra}


CONFIG_CASES = [
    ("particle-filtering-without-prm", {"alg": "particle-filtering"}, "rm_name", "particle-filtering"),
    ("particle-filtering-with-llm-judge", {"alg": "particle-filtering", "rm_name": "llm-judge"}, "rm_name", "llm-judge"),
    ("prm-without-endpoint", {"alg": "particle-filtering", "rm_name": "prm"}, "rm_endpoint", "rm_endpoint"),
    ("empty-step-token", {"alg": "particle-filtering", "rm_name": "prm", "rm_endpoint": "MOCK", "step_token": ""},
     "step_token", "step_token"),
    ("beam-width-not-dividing-max-budget", {"alg": "beam-search", "rm_name": "prm", "rm_endpoint": "MOCK",
                                            "beam_width": 3}, "max_budget", "beam_width (3)"),
    ("beam-search-without-width", {"alg": "beam-search", "rm_name": "prm", "rm_endpoint": "MOCK"},
     "beam_width", "beam_width"),
]


@pytest.mark.parametrize("extra,param,fragment", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_stepwise_configuration_is_refused_naming_the_field(step_worker, step_mock, extra, param, fragment):
    worker, mock = step_worker, step_mock
    scenario(mock)
    worker.configure(config(mock, "particle-filtering"))
    extra = {k: (mock.url if v == "MOCK" else v) for k, v in extra.items()}
    status, err = error_of(http("POST", worker.url + "/configure", base(mock, **extra)))
    assert (status, err["type"], err["param"]) == (400, BAD, param), err
    assert fragment in err["message"], err
    # The previous configuration still serves.
    _, meta = ask(worker, 2)
    assert meta["algorithm"] == "particle-filtering"


def test_tools_in_a_stepwise_request_are_refused(step_worker, step_mock):
    worker, mock = step_worker, step_mock
    scenario(mock)
    worker.configure(config(mock, "particle-filtering"))
    tool = {"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as e:
        client(worker).chat.completions.create(model="m", messages=QUESTION, tools=[tool],
                                               extra_body={"budget": 2})
    assert (e.value.status_code, e.value.param, e.value.type) == (400, "tools", BAD)
    assert "tools" in str(e.value)
    assert mock.stats()["requests"] == 0 and mock.stats()["pooling_requests"] == 0


def test_beam_budget_must_be_a_multiple_of_the_width(step_worker, step_mock):
    worker, mock = step_worker, step_mock
    scenario(mock)
    worker.configure(config(mock, "beam-search", beam_width=4))
    with pytest.raises(openai.BadRequestError) as e:
        client(worker).chat.completions.create(model="m", messages=QUESTION, extra_body={"budget": 6})
    assert (e.value.param, e.value.type) == ("budget", BAD)
    assert "budget (6)" in str(e.value) and "beam_width (4)" in str(e.value)
    assert mock.stats()["requests"] == 0


# --- bounds and secrets -----------------------------------------------------------------------

def test_max_calls_stops_the_search_and_says_so(step_worker, step_mock):
    worker, mock = step_worker, step_mock
    scenario(mock)
    # 4 particles x 6 steps would be 24 calls; 10 allows two whole steps.
    worker.configure(config(mock, "particle-filtering", max_calls=10))
    resp, meta = ask(worker, 4)
    search = meta["search"]
    assert search["max_calls_reached"] is True, search
    assert search["generation_calls"] <= 10 and search["generation_calls"] == mock.stats()["requests"]
    assert resp.choices[0].finish_reason == "length"
    assert CORRECT not in resp.choices[0].message.content


def test_the_prm_key_goes_to_the_prm_only(step_worker, step_mock):
    worker, mock = step_worker, step_mock
    scenario(mock)
    reply = worker.configure(config(mock, "particle-filtering", api_key="sk-generator-key",
                                    rm_api_key="sk-prm-key"))
    _, meta = ask(worker, 2)
    calls = mock.requests(200)
    pooled = [c for c in calls if c["path"] == "/pooling"]
    generated = [c for c in calls if c["path"] == "/v1/chat/completions"]
    assert pooled and generated
    assert {c["authorization"] for c in pooled} == {"Bearer sk-prm-key"}
    assert {c["authorization"] for c in generated} == {"Bearer sk-generator-key"}
    # Never echoed back or logged.
    assert "sk-prm-key" not in json.dumps(reply) + json.dumps(meta)
    assert "sk-prm-key" not in "".join(worker.proc.stderr_lines)
