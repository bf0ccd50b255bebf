#!/usr/bin/env bash
# Remove the cluster made by scripts/kind-up.sh and everything it started (`make kind-down`): the local
# provider's processes, mounts, interfaces, iptables chains, cgroups and data (scripts/local/down.sh checks that
# the host's iptables rules and sysctls are as before), or the kind cluster; then the private Docker engine, if
# kind-up started it. Build caches in $CACHE_DIR stay, so the next kind-up builds nothing.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

provider="$(cat "$PROVIDER_FILE" 2> /dev/null || echo "$CLUSTER_PROVIDER")"
# a local cluster whose provider file is gone (an interrupted kind-up or kind-down) is still found
if [[ "$provider" == auto && -d "${LOCAL_STATE_DIR:-/var/lib/fraudops-local/$CLUSTER_NAME}" ]]; then
  provider=local
fi
# every step runs even when an earlier one reports a problem; the exit status says whether one did
status=0
case "$provider" in
  local)
    "$ROOT/scripts/local/down.sh" || status=$?
    ;;
  kind)
    require kind
    if kind get clusters 2> /dev/null | grep -qx "$CLUSTER_NAME"; then
      log "deleting kind cluster $CLUSTER_NAME"
      kind delete cluster --name "$CLUSTER_NAME"
    else
      log "no kind cluster named $CLUSTER_NAME"
    fi
    ;;
  auto)
    log "no cluster was made by scripts/kind-up.sh"
    ;;
  *) die "unknown provider $provider in $PROVIDER_FILE" ;;
esac
if [[ -f "$ROOT/.kind/private-docker" ]]; then
  stop_private_docker
  rm -f "$ROOT/.kind/private-docker"
fi
if ((status != 0)); then
  die "the $provider cluster is not completely removed: run make kind-down again"
fi
rm -f "$KIND_KUBECONFIG" "$PROVIDER_FILE"
rmdir "$ROOT/.kind" 2> /dev/null || true
