"""Trust boundaries of one worker: who may call /configure, which secret sources a /configure body
may name, where the operator's environment keys and the main key may be sent, and the bounds on
what a configuration may cost.

Every test runs the real worker binary against the mock-llm simulator; the simulator's request log
shows what reached an upstream (and with which Authorization header).

The refusal of /configure from a non-loopback peer cannot be driven end to end here: tests may only
connect from 127.0.0.1, and every 127.x address is loopback, so binding the worker elsewhere in
that range would not change the peer. That decision is a pure function of the peer address
(`is_loopback_peer`), unit-tested with remote IPv4/IPv6 addresses in worker/src/api/access.rs, where
the whole /configure route is also served over HTTP with a remote peer address injected
(`MockConnectInfo`) and answers 403 with the error envelope.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import BIN_DIR, Mock, Process, http, start_worker

QUESTION = [{"role": "user", "content": "What is 847 * 293 + 156?"}]


def sc_config(mock, **extra):
    return {"provider": "openai-compatible", "endpoint": f"{mock.url}/v1", "model": "m",
            "alg": "self-consistency", **extra}


@pytest.fixture(scope="module")
def other_mock():
    """A second simulator on another port: an upstream URL of the caller's choosing."""
    proc = Process([str(BIN_DIR / "mock-llm"), "--port", "0", "--seed", "11"])
    m = Mock(proc)
    yield m
    proc.stop()


@pytest.fixture
def own_worker(mock):
    """Starts workers of their own and stops them after the test."""
    started = []

    def start(*args, env=None):
        mock.scenario({})
        w = start_worker(mock, *args, env=env)
        started.append(w)
        return w

    yield start
    for w in started:
        w.proc.stop()


def configure(worker, body, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    return http("POST", f"{worker.url}/configure", body, headers)


def one_answer(worker):
    status, _, body = worker.chat({"model": "m", "messages": QUESTION, "budget": 1})
    assert status == 200, body
    return body


def worker_exit(args, env=None):
    """Runs a worker that is expected to refuse to start; returns (exit code, stderr)."""
    proc = subprocess.run([str(BIN_DIR / "inferscale-worker"), "--port", "0", *args],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stderr


# --- secret references in a /configure body ---------------------------------------------------

def test_file_and_env_references_are_refused_without_revealing_existence(own_worker, mock, tmp_path):
    w = own_worker()
    existing = tmp_path / "real-secret"
    existing.write_text("sk-should-never-leave\n")
    refusals = []
    for source in [{"file": str(existing)}, {"file": str(tmp_path / "missing")}, {"file": "/etc/hostname"},
                   {"file": str(tmp_path / ".." / tmp_path.name / "real-secret")}]:
        status, _, body = configure(w, sc_config(mock, api_key=source))
        assert status == 400 and body["error"]["param"] == "api_key", body
        refusals.append(body["error"]["message"])
    # One message for an existing file, a missing one and a system file: nothing to probe with.
    assert len(set(refusals)) == 1, refusals
    assert "--configure-secret-dir" in refusals[0]
    assert not any(word in refusals[0].lower() for word in ("no such", "not found", "exist", "denied"))

    env_refusals = []
    for name in ["OPENAI_API_KEY", "PATH", "INFERSCALE_SURELY_UNSET_VARIABLE"]:
        status, _, body = configure(w, sc_config(mock, judge_api_key={"env": name}, alg="best-of-n", judge_model="m"))
        assert status == 400 and body["error"]["param"] == "judge_api_key", body
        env_refusals.append(body["error"]["message"])
    assert len(set(env_refusals)) == 1, env_refusals

    # AWS keys in extra_args are secret sources too.
    status, _, body = configure(w, {"model": "bedrock/anthropic.claude-3-haiku-20240307-v1:0",
                                    "extra_args": {"aws_access_key_id": {"env": "HOME"},
                                                   "aws_secret_access_key": "s", "aws_region_name": "us-east-1"}})
    assert status == 400 and body["error"]["param"] == "extra_args.aws_access_key_id", body

    # Nothing was applied and nothing reached an upstream.
    assert w.chat({"model": "m", "messages": QUESTION, "budget": 1})[0] == 503
    assert mock.stats()["requests"] == 0


def test_references_inside_the_allow_list_are_used(own_worker, mock, tmp_path):
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "key").write_text("sk-from-allowed-file\n")
    (outside / "key").write_text("sk-outside\n")
    (allowed / "link").symlink_to(outside / "key")
    w = own_worker("--configure-secret-dir", str(allowed), "--configure-secret-env", "INFERSCALE_TEST_UPSTREAM_KEY",
                   env={"INFERSCALE_TEST_UPSTREAM_KEY": "sk-from-allowed-env"})

    status, _, body = configure(w, sc_config(mock, api_key={"file": str(allowed / "key")}))
    assert status == 200, body
    one_answer(w)
    status, _, body = configure(w, sc_config(mock, api_key={"env": "INFERSCALE_TEST_UPSTREAM_KEY"}))
    assert status == 200, body
    one_answer(w)
    assert [r["authorization"] for r in mock.requests(2)] == ["Bearer sk-from-allowed-file",
                                                              "Bearer sk-from-allowed-env"]

    # `..` and symlinks are resolved before the check; other variables stay off limits.
    messages = set()
    for source in [{"file": str(allowed / ".." / "outside" / "key")}, {"file": str(allowed / "link")},
                   {"file": str(allowed / "missing")}]:
        status, _, body = configure(w, sc_config(mock, api_key=source))
        assert status == 400 and body["error"]["param"] == "api_key", body
        messages.add(body["error"]["message"])
    assert len(messages) == 1, messages
    assert configure(w, sc_config(mock, api_key={"env": "OPENAI_API_KEY"}))[0] == 400


def test_allow_list_from_the_environment(own_worker, mock, tmp_path):
    (tmp_path / "key").write_text("sk-env-listed\n")
    w = own_worker(env={"INFERSCALE_CONFIGURE_SECRET_DIRS": str(tmp_path)})
    status, _, body = configure(w, sc_config(mock, api_key={"file": str(tmp_path / "key")}))
    assert status == 200, body
    one_answer(w)
    assert mock.requests(1)[0]["authorization"] == "Bearer sk-env-listed"


def test_the_config_file_may_name_any_secret_source(own_worker, mock, tmp_path):
    key = tmp_path / "operator-key"
    key.write_text("sk-operator\n")
    cfg = tmp_path / "worker.yaml"
    cfg.write_text(json.dumps(sc_config(mock, api_key={"file": str(key)})))
    w = own_worker("--config", str(cfg))
    one_answer(w)
    assert mock.requests(1)[0]["authorization"] == "Bearer sk-operator"


# --- admin credential for /configure -----------------------------------------------------------

def test_admin_token_file_is_required_and_follows_rotation(own_worker, mock, tmp_path):
    token = tmp_path / "admin-token"
    token.write_text("adm-first\n")
    w = own_worker("--admin-token-file", str(token))
    # With a token configured, even a loopback caller must present it.
    status, _, body = configure(w, sc_config(mock))
    assert status == 401 and body["error"]["type"] == "authentication_error", body
    assert configure(w, sc_config(mock), "wrong")[0] == 401
    assert configure(w, sc_config(mock), "adm-first")[0] == 200
    token.write_text("adm-second-rotated\n")
    assert configure(w, sc_config(mock), "adm-first")[0] == 401
    status, _, body = configure(w, sc_config(mock, model="m2"), "adm-second-rotated")
    assert status == 200 and body["model"] == "m2", body


def test_admin_token_from_the_environment(own_worker, mock, tmp_path):
    w = own_worker(env={"INFERSCALE_ADMIN_TOKEN": "adm-env"})
    assert configure(w, sc_config(mock))[0] == 401
    assert configure(w, sc_config(mock), "adm-env")[0] == 200

    token = tmp_path / "token"
    token.write_text("adm-env-file")
    w2 = own_worker(env={"INFERSCALE_ADMIN_TOKEN_FILE": str(token)})
    assert configure(w2, sc_config(mock), "adm-env")[0] == 401
    assert configure(w2, sc_config(mock), "adm-env-file")[0] == 200


def test_an_empty_or_missing_admin_token_stops_the_worker(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    code, err = worker_exit(["--admin-token-file", str(empty)])
    assert code == 2 and "--admin-token-file is empty" in err, err
    code, err = worker_exit(["--admin-token-file", str(tmp_path / "missing")])
    assert code == 2 and "--admin-token-file" in err, err


def test_without_admin_token_loopback_callers_may_configure(own_worker, mock):
    # The guide's `curl localhost:8108/configure` case: no credential, a local caller.
    w = own_worker()
    status, _, body = configure(w, sc_config(mock))
    assert status == 200 and body["status"] == "success", body


# --- where keys may be sent --------------------------------------------------------------------

def test_operator_openai_key_is_not_sent_to_a_custom_url(own_worker, mock, other_mock):
    w = own_worker()  # OPENAI_API_KEY=sk-test-env-key, OPENAI_BASE_URL=<mock>/v1
    other_mock.scenario({})
    for config in [{"provider": "openai", "endpoint": f"{other_mock.url}/v1", "model": "m"},
                   {"endpoint": f"{other_mock.url}/v1", "model": "openai/m"},
                   {"provider": "openai-compatible", "endpoint": f"{other_mock.url}/v1", "model": "m"}]:
        assert configure(w, config)[0] == 200
        one_answer(w)
    seen = other_mock.requests(3)
    assert len(seen) == 3 and not any(r["has_authorization"] for r in seen), seen
    # The operator's own OpenAI endpoint (OPENAI_BASE_URL) still gets the operator's key.
    assert configure(w, {"endpoint": "auto", "model": "gpt-4o-mini"})[0] == 200
    w.chat({"model": "gpt-4o-mini", "messages": QUESTION, "budget": 1})
    assert mock.requests(1)[0]["authorization"] == "Bearer sk-test-env-key"


def test_main_key_is_not_sent_to_a_judge_on_another_origin(own_worker, mock, other_mock):
    w = own_worker()
    other_mock.scenario({})
    bon = sc_config(mock, alg="best-of-n", rm_name="llm-judge", judge_model="m", api_key="sk-main",
                    judge_provider="openai-compatible", judge_base_url=f"{other_mock.url}/v1")
    assert configure(w, bon)[0] == 200
    status, _, body = w.chat({"model": "m", "messages": QUESTION, "budget": 3})
    assert status == 200, body
    judged = other_mock.requests(5)
    assert other_mock.stats()["judge_requests"] >= 1 and not any(r["has_authorization"] for r in judged), judged
    assert all(r["authorization"] == "Bearer sk-main" for r in mock.requests(3))

    # Its own key is sent when given.
    other_mock.reset()
    assert configure(w, {**bon, "judge_api_key": "sk-judge"})[0] == 200
    assert w.chat({"model": "m", "messages": QUESTION, "budget": 3})[0] == 200
    assert [r["authorization"] for r in other_mock.requests(5)] == ["Bearer sk-judge"] * other_mock.stats()["requests"]


def test_judge_on_the_same_origin_shares_the_main_key(own_worker, mock):
    w = own_worker()
    bon = sc_config(mock, alg="best-of-n", rm_name="llm-judge", judge_model="m", api_key="sk-main")
    assert configure(w, bon)[0] == 200
    assert w.chat({"model": "m", "messages": QUESTION, "budget": 3})[0] == 200
    assert mock.stats()["judge_requests"] == 1
    assert all(r["authorization"] == "Bearer sk-main" for r in mock.requests(4))


# --- cost and bounds ---------------------------------------------------------------------------

def test_budget_1000_is_refused_by_default(own_worker, mock):
    w = own_worker()
    status, _, body = configure(w, sc_config(mock))
    assert status == 200 and body["max_budget"] == 16, body
    status, _, body = w.chat({"model": "m", "messages": QUESTION, "budget": 1000})
    assert status == 400 and body["error"]["param"] == "budget", body
    assert "max_budget of 16" in body["error"]["message"]
    assert mock.stats()["requests"] == 0
    # An operator can still raise it explicitly, up to the hard limit.
    assert configure(w, sc_config(mock, max_budget=1000))[0] == 200
    assert configure(w, sc_config(mock, max_budget=1001))[0] == 400


@pytest.mark.parametrize("field", ["connect_timeout_secs", "call_timeout_secs", "request_timeout_secs"])
@pytest.mark.parametrize("value", [1e20, -1, 0])
def test_unbounded_timeouts_are_refused_with_their_param(own_worker, mock, field, value):
    w = own_worker()
    assert configure(w, sc_config(mock))[0] == 200
    status, _, body = configure(w, sc_config(mock, upstream={field: value}))
    assert status == 400 and body["error"]["param"] == f"upstream.{field}", body
    # The worker is still up and still serves the previous configuration.
    one_answer(w)


def test_unbounded_counts_are_refused_with_their_param(own_worker, mock):
    w = own_worker()
    for upstream, param in [({"max_retries": 1000}, "upstream.max_retries"),
                            ({"max_concurrency": 4294967295}, "upstream.max_concurrency"),
                            ({"min_successful_candidates": 17}, "upstream.min_successful_candidates")]:
        status, _, body = configure(w, sc_config(mock, upstream=upstream))
        assert status == 400 and body["error"]["param"] == param, body


def test_a_config_file_with_a_huge_timeout_stops_the_worker(tmp_path, mock):
    cfg = tmp_path / "worker.yaml"
    cfg.write_text(json.dumps(sc_config(mock, upstream={"request_timeout_secs": 1e20})))
    code, err = worker_exit(["--config", str(cfg)])
    assert code == 2 and "upstream.request_timeout_secs" in err, err
    assert "panicked" not in err
