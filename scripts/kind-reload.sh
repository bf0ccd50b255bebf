#!/usr/bin/env bash
# Rebuild the project image and roll it out to the cluster of scripts/kind-up.sh (`make kind-reload`): for a
# developer changing code between two end-to-end runs. The tag stays the version in pyproject.toml; the pods
# are restarted so that they run the new image.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -f "$PROVIDER_FILE" ]] || die "no cluster: run scripts/kind-up.sh first"
provider="$(cat "$PROVIDER_FILE")"
image="$(image_ref)"
ensure_docker
if [[ "$DOCKER_STARTED_HERE" == 1 ]]; then
  touch "$ROOT/.kind/private-docker"  # kind-down stops it
fi
if [[ "$provider" == local ]]; then
  IMAGE_BASE="${IMAGE_BASE:-offline}" "$ROOT/scripts/image.sh"
  # shellcheck source=scripts/local/lib.sh
  source "$ROOT/scripts/local/lib.sh"
  load_images "$image"
else
  "$ROOT/scripts/image.sh"
  load_into_kind "$image"
fi
kube -n "$NAMESPACE" rollout restart deployment > /dev/null
for deployment in $(kube -n "$NAMESPACE" get deployment -o name); do
  kube -n "$NAMESPACE" rollout status "$deployment" --timeout=300s > /dev/null
done
log "$image rolled out in namespace $NAMESPACE"
