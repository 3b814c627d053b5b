#!/usr/bin/env bash
# Everything that needs the local control plane; run by tests/run.sh inside with-cluster.sh,
# which exports KUBECONFIG and puts the built kubectl/helm first on PATH.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
INFERSCALE_K8S_TESTS=1 cargo test --locked -p inferscale-operator --test '*' -- --test-threads=2
