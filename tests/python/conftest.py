"""Fixtures for the end-to-end tests: the real worker binary against the mock-llm upstream
simulator (a test double for LLM providers), driven with real clients (openai, curl).

Processes print a "listening on http://HOST:PORT" line once bound; the fixtures wait for that
line instead of sleeping. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("INFERSCALE_BIN_DIR", ROOT / "target" / "debug"))
LISTEN = re.compile(r"listening on (http://\S+)")


class Process:
    """A child process whose stdout announces its address."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, timeout: float = 30.0):
        full_env = {**os.environ, **(env or {})}
        self.args = args
        self.proc = subprocess.Popen(
            args, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.url = self._wait_for_address(timeout)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def _wait_for_address(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        result: list[str] = []

        def read() -> None:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                m = LISTEN.search(line)
                if m:
                    result.append(m.group(1))
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(max(0.0, deadline - time.monotonic()))
        if not result:
            self.stop()
            raise RuntimeError(f"{self.args[0]} did not start: {''.join(self.stderr_lines)[-2000:]}")
        # Keep draining stdout so the child never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        return result[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def http(method: str, url: str, body=None, headers: dict[str, str] | None = None, timeout: float = 30.0):
    """A plain HTTP call; returns (status, headers, parsed JSON or text)."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        data = data.encode() if isinstance(data, str) else data
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status, rh = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as e:
        raw, status, rh = e.read(), e.code, dict(e.headers)
    text = raw.decode()
    try:
        return status, rh, json.loads(text)
    except ValueError:
        return status, rh, text


class Mock:
    """Handle on the mock-llm simulator's control API."""

    def __init__(self, proc: Process):
        self.proc = proc
        self.url = proc.url

    def scenario(self, scenario: dict) -> None:
        status, _, body = http("PUT", f"{self.url}/_mock/scenario", scenario)
        assert status == 200, body
        self.reset()

    def reset(self) -> None:
        status, _, body = http("POST", f"{self.url}/_mock/reset", {})
        assert status == 200, body

    def stats(self) -> dict:
        return http("GET", f"{self.url}/_mock/stats")[2]

    def requests(self, limit: int = 50) -> list:
        return http("GET", f"{self.url}/_mock/requests?limit={limit}")[2]["requests"]

    def wait(self, **cond) -> dict:
        q = "&".join(f"{k}={v}" for k, v in cond.items())
        return http("GET", f"{self.url}/_mock/wait?{q}&timeout_ms=20000", timeout=30)[2]


class Worker:
    def __init__(self, proc: Process):
        self.proc = proc
        self.url = proc.url

    def configure(self, config: dict, expect: int = 200):
        status, _, body = http("POST", f"{self.url}/configure", config)
        assert status == expect, body
        return body

    def chat(self, body, headers=None, timeout=60.0):
        return http("POST", f"{self.url}/v1/chat/completions", body, headers, timeout)

    def metrics(self) -> str:
        return http("GET", f"{self.url}/metrics")[2]


def start_worker(mock: Mock, *args: str, env: dict[str, str] | None = None) -> Worker:
    base_env = {
        "OPENAI_BASE_URL": f"{mock.url}/v1",
        "OPENAI_API_KEY": "sk-test-env-key",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": mock.url,
    }
    proc = Process([str(BIN_DIR / "inferscale-worker"), "--port", "0", *args], {**base_env, **(env or {})})
    return Worker(proc)


@pytest.fixture(scope="session")
def mock():
    proc = Process([str(BIN_DIR / "mock-llm"), "--port", "0", "--seed", "7"])
    yield Mock(proc)
    proc.stop()


@pytest.fixture(scope="session")
def worker_process(mock):
    w = start_worker(mock)
    yield w
    w.proc.stop()


@pytest.fixture
def worker(worker_process, mock):
    """The shared worker, with the simulator reset to its default scenario."""
    mock.scenario({})
    return worker_process


@pytest.fixture
def fresh_worker(mock):
    """A worker of its own, for tests that need a clean process (metrics, readiness)."""
    mock.scenario({})
    w = start_worker(mock)
    yield w
    w.proc.stop()
