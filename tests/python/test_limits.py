"""Load shedding and bounded I/O: in-flight limits answer 429 with Retry-After (what OpenAI
clients retry on), a slow body gets 408, slow headers and excess connections cannot pin the
worker. Held requests are parked on the simulator's `hang` fault and counted with
`/_mock/wait`, so nothing here waits on a guess."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from urllib.parse import urlparse

import openai
import pytest

from conftest import BIN_DIR, http, start_worker
from test_api import QUESTION, sc_config

HANG = {"faults": [{"hang": True}]}


def limited_worker(mock, tmp_path, server: dict, **config):
    mock.scenario({})
    cfg = tmp_path / "worker.yaml"
    # A short upstream deadline ends the parked requests soon after the test, so shutdown is quick.
    upstream = {"max_retries": 0, "call_timeout_secs": 8, "request_timeout_secs": 8}
    cfg.write_text(json.dumps({**sc_config(mock, budget=1, upstream=upstream, **config),
                               "server": server}))
    return start_worker(mock, "--config", str(cfg))


def park(worker, count: int, mock, key: str | None = None) -> list[threading.Thread]:
    """Starts `count` chat requests that hang upstream, and returns once all are in flight."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    already = mock.stats()["in_flight"]
    threads = [threading.Thread(target=worker.chat, args=({"model": "m", "messages": QUESTION}, headers),
                                kwargs={"timeout": 30}, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    assert not mock.wait(in_flight=already + count)["timed_out"]
    return threads


def shed_metric(worker, reason: str) -> float:
    for line in worker.metrics().splitlines():
        if line.startswith(f'inferscale_requests_shed_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def assert_retryable_429(status, headers, body, setting: str):
    assert status == 429, body
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["retry-after"] == "1"
    assert headers["x-should-retry"] == "true"
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert setting in body["error"]["message"]


def test_a_client_over_its_limit_is_shed_while_another_is_served(mock, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("sk-greedy\nsk-polite\n")
    w = limited_worker(mock, tmp_path, {"api_keys_file": str(keys), "max_in_flight_per_client": 2})
    try:
        mock.scenario(HANG)
        park(w, 2, mock, key="sk-greedy")
        status, headers, body = w.chat({"model": "m", "messages": QUESTION},
                                       {"Authorization": "Bearer sk-greedy"})
        assert_retryable_429(status, headers, body, "server.max_in_flight_per_client")
        # Shedding is immediate: the third request never reached the upstream.
        assert mock.stats()["requests"] == 2

        mock.scenario({})
        polite = openai.OpenAI(base_url=f"{w.url}/v1", api_key="sk-polite", max_retries=0)
        reply = polite.chat.completions.create(model="m", messages=QUESTION)
        assert "248327" in reply.choices[0].message.content
        assert shed_metric(w, "client_limit") == 1
        assert "inferscale_admitted_requests_in_flight 2" in w.metrics()
    finally:
        w.proc.stop()


def test_openai_client_sees_a_rate_limit_error(mock, tmp_path):
    w = limited_worker(mock, tmp_path, {"max_in_flight_requests": 1})
    try:
        mock.scenario(HANG)
        park(w, 1, mock)
        c = openai.OpenAI(base_url=f"{w.url}/v1", api_key="any", max_retries=0)
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model="m", messages=QUESTION)
        assert "server.max_in_flight_requests" in e.value.message
        # Health, readiness and metrics are not admission-controlled.
        assert http("GET", f"{w.url}/health")[0] == 200
        assert http("GET", f"{w.url}/ready")[0] == 200
        assert shed_metric(w, "global_limit") == 1
    finally:
        w.proc.stop()


def test_the_global_limit_sheds_every_client(mock, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("sk-a\nsk-b\n")
    w = limited_worker(mock, tmp_path, {"api_keys_file": str(keys), "max_in_flight_requests": 2,
                                        "max_in_flight_per_client": 5})
    try:
        mock.scenario(HANG)
        park(w, 2, mock, key="sk-a")
        status, headers, body = w.chat({"model": "m", "messages": QUESTION}, {"Authorization": "Bearer sk-b"})
        assert_retryable_429(status, headers, body, "server.max_in_flight_requests")
    finally:
        w.proc.stop()


def test_a_stream_holds_its_slot_until_its_last_frame(mock, tmp_path):
    w = limited_worker(mock, tmp_path, {"max_in_flight_per_client": 1})
    try:
        mock.scenario(HANG)
        sock = raw_connection(w)
        body = json.dumps({"model": "m", "messages": QUESTION, "stream": True}).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        # The handler has returned once the head and the role chunk are out...
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert not mock.wait(in_flight=1)["timed_out"]
        # ...but the stream is still being served, so it still counts against the client.
        status, headers, reply = w.chat({"model": "m", "messages": QUESTION})
        assert_retryable_429(status, headers, reply, "server.max_in_flight_per_client")
        sock.close()
    finally:
        w.proc.stop()


def raw_connection(worker) -> socket.socket:
    u = urlparse(worker.url)
    assert u.hostname == "127.0.0.1"
    return socket.create_connection((u.hostname, u.port), timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def test_a_trickled_body_gets_408_while_other_requests_are_served(mock, tmp_path):
    w = limited_worker(mock, tmp_path, {"body_read_timeout_secs": 1})
    try:
        body = json.dumps({"model": "m", "messages": QUESTION}).encode()
        sock = raw_connection(w)
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:5])
        stop = threading.Event()

        def trickle():
            # The slow client under test: one byte every 200 ms, never the whole body in time.
            for byte in body[5:]:
                if stop.wait(0.2):
                    return
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    return

        threading.Thread(target=trickle, daemon=True).start()
        # Other clients are served while the slow body is pending.
        status, _, reply = w.chat({"model": "m", "messages": QUESTION})
        assert status == 200, reply
        assert time.monotonic() - started < 1.0, "the normal request should not wait for the slow one"

        response = read_until_closed(sock)
        elapsed = time.monotonic() - started
        stop.set()
        sock.close()
        head, _, payload = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), response[:200]
        error = json.loads(payload)["error"]
        assert error["code"] == "request_timeout"
        assert "server.body_read_timeout_secs" in error["message"]
        assert 0.9 <= elapsed < 5, elapsed
        assert shed_metric(w, "body_timeout") == 1
    finally:
        w.proc.stop()


def test_headers_that_never_finish_close_the_connection(mock, tmp_path):
    w = limited_worker(mock, tmp_path, {"header_read_timeout_secs": 1})
    try:
        sock = raw_connection(w)
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        read_until_closed(sock)
        assert time.monotonic() - started < 5
        sock.close()
        assert http("GET", f"{w.url}/health")[0] == 200
    finally:
        w.proc.stop()


def test_connections_over_the_limit_wait_for_a_free_slot(mock, tmp_path):
    w = limited_worker(mock, tmp_path, {"max_connections": 2, "header_read_timeout_secs": 30})
    try:
        idle = [raw_connection(w), raw_connection(w)]
        # Both slots are taken, so a third connection is not served...
        with pytest.raises(OSError):
            http("GET", f"{w.url}/health", timeout=1)
        # ...until one of them closes.
        idle.pop().close()
        assert http("GET", f"{w.url}/health", timeout=10)[0] == 200
        idle[0].close()
    finally:
        w.proc.stop()


@pytest.mark.parametrize("server, param", [
    ({"max_in_flight_requests": 0}, "server.max_in_flight_requests"),
    ({"max_in_flight_per_client": 0}, "server.max_in_flight_per_client"),
    ({"max_connections": 0}, "server.max_connections"),
    ({"body_read_timeout_secs": 1e20}, "server.body_read_timeout_secs"),
    ({"header_read_timeout_secs": -1}, "server.header_read_timeout_secs"),
])
def test_out_of_range_limits_are_refused_at_start(mock, tmp_path, server, param):
    cfg = tmp_path / "worker.yaml"
    cfg.write_text(json.dumps({**sc_config(mock), "server": {"port": 0, **server}}))
    done = subprocess.run([str(BIN_DIR / "inferscale-worker"), "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert param in done.stderr
    assert "listening" not in done.stdout
