#!/usr/bin/env bash
# Delete the kind cluster made by scripts/kind-up.sh and its kubeconfig.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require kind
clusters="$(kind get clusters 2> /dev/null)"
if grep -qx "$CLUSTER_NAME" <<< "$clusters"; then
  log "deleting kind cluster $CLUSTER_NAME"
  kind delete cluster --name "$CLUSTER_NAME"
else
  log "no kind cluster named $CLUSTER_NAME"
fi
rm -f "$KIND_KUBECONFIG"
