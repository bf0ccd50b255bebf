#!/usr/bin/env bash
# Run tests/test_kind_e2e.py against the cluster made by scripts/kind-up.sh (`make kind-e2e`). Nothing may skip:
# FRAUDOPS_E2E_REQUIRED=1 turns a missing cluster into a failure. On the local provider it also samples the
# memory of the cluster (its processes and its pods) while the test runs and reports the peak and the disk used.
# Extra arguments go to pytest, e.g. scripts/kind-e2e.sh -x -k scoring
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -f "$PROVIDER_FILE" && -f "$KIND_KUBECONFIG" ]] || die "no cluster: run scripts/kind-up.sh first"
provider="$(cat "$PROVIDER_FILE")"
kube get --raw=/readyz > /dev/null 2>&1 || die "the $provider cluster $CLUSTER_NAME does not answer: run scripts/kind-up.sh"

python="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$python" ]] || die "no $python: run make install"

export KUBECONFIG="$KIND_KUBECONFIG"
export FRAUDOPS_E2E_REQUIRED=1
export FRAUDOPS_E2E_NAMESPACE="$NAMESPACE" FRAUDOPS_E2E_RELEASE="$RELEASE"
export FRAUDOPS_E2E_INFRA_NAMESPACE="$INFRA_NAMESPACE" FRAUDOPS_E2E_MONITORING_NAMESPACE="$MONITORING_NAMESPACE"
export FRAUDOPS_E2E_KUBECTL="$KUBECTL" FRAUDOPS_E2E_HELM="$HELM"
export FRAUDOPS_E2E_IMAGE
FRAUDOPS_E2E_IMAGE="$(image_ref)"
if [[ "$provider" == local ]]; then
  # shellcheck source=scripts/local/lib.sh
  source "$ROOT/scripts/local/lib.sh"
  export FRAUDOPS_E2E_CONTEXT="$CLUSTER_NAME" FRAUDOPS_E2E_SCORER_URL="http://$NODE_IP:30080"
else
  export FRAUDOPS_E2E_CONTEXT="kind-$CLUSTER_NAME" FRAUDOPS_E2E_SCORER_URL="http://127.0.0.1:30080"
fi

sampler_pid=""
if [[ "$provider" == local ]]; then
  peak_file="$(mktemp)"
  "$ROOT/scripts/local/usage.sh" --watch 2 > "$peak_file" &
  sampler_pid=$!
fi
started=$SECONDS
status=0
(cd "$ROOT" && "$python" -m pytest tests/test_kind_e2e.py -v -p no:cacheprovider "$@") || status=$?
log "make kind-e2e: $((SECONDS - started)) s, pytest exit status $status"
if [[ -n "$sampler_pid" ]]; then
  kill "$sampler_pid" 2> /dev/null || true
  wait "$sampler_pid" 2> /dev/null || true
  log "cluster usage: $(tail -n 1 "$peak_file") (now: $("$ROOT/scripts/local/usage.sh"))"
  rm -f "$peak_file"
fi
exit "$status"
