#!/usr/bin/env bash
# Runs the worker on 127.0.0.1:8108 with the upstream simulator on 127.0.0.1:8100 as its
# "OpenAI" and "Bedrock", so every example of the reference guide answers with no API key.
# Ctrl-C stops both.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
cargo build --release --locked -p inferscale-worker -p mock-llm
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
for port in 8100 8108; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port on 127.0.0.1 is already in use; stop whatever listens there first" >&2; exit 1
  fi
done
"$BIN/mock-llm" --host 127.0.0.1 --port 8100 \
  --aws-access-key-id your-access-key --aws-secret-access-key your-secret-key &
MOCK=$!
trap 'kill $MOCK 2>/dev/null' EXIT
OPENAI_BASE_URL=http://127.0.0.1:8100/v1 AWS_ENDPOINT_URL_BEDROCK_RUNTIME=http://127.0.0.1:8100 \
  "$BIN/inferscale-worker" --config deploy/demo/worker.yaml
