#!/usr/bin/env bash
# Run the end-to-end test (tests/test_kind_e2e.py) against the kind cluster made by scripts/kind-up.sh.
# Extra arguments go to pytest, e.g. scripts/kind-e2e.sh -x -k scoring
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require kubectl
[[ -f "$KIND_KUBECONFIG" ]] || die "no kubeconfig at $KIND_KUBECONFIG: run scripts/kind-up.sh first"
kube cluster-info > /dev/null 2>&1 || die "the kind cluster $CLUSTER_NAME is not reachable: run scripts/kind-up.sh"

python="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"

export KUBECONFIG="$KIND_KUBECONFIG"
export FRAUDOPS_E2E_NAMESPACE="$NAMESPACE"
export FRAUDOPS_E2E_RELEASE="$RELEASE"
export FRAUDOPS_E2E_IMAGE
FRAUDOPS_E2E_IMAGE="$(image_ref)"
export FRAUDOPS_E2E_SCORER_URL="${FRAUDOPS_E2E_SCORER_URL:-http://127.0.0.1:30080}"
export FRAUDOPS_E2E_PROMETHEUS="$PROMETHEUS"

cd "$ROOT"
exec "$python" -m pytest tests/test_kind_e2e.py -v -p no:cacheprovider "$@"
