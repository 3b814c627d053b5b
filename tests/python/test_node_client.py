"""openai-node (the official OpenAI client for Node.js) against the worker: the tests live in
tests/node/client.test.mjs and run under node's own test runner; this file starts them with the
worker and the simulator of the python fixtures. tests/run.sh installs the pinned client
(`npm ci` in tests/node)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def test_openai_node_client(worker, mock):
    assert shutil.which("node"), "node is required (Node.js 20+)"
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "run `npm ci` in tests/node (tests/run.sh does)"
    worker.configure({"provider": "litellm", "endpoint": "auto", "api_key": "sk-node", "model": "gpt-4o-mini",
                      "alg": "self-consistency", "tool_vote": "tool_hierarchical"})
    env = {**os.environ, "WORKER_URL": worker.url, "MOCK_URL": mock.url}
    run = subprocess.run(["node", "--test", "--test-reporter=spec", "client.test.mjs"], cwd=NODE_DIR, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    # The three node tests ran and passed (a file that loads no test would also exit 0).
    assert "ℹ pass 3" in run.stdout and "ℹ fail 0" in run.stdout, run.stdout[-2000:]
