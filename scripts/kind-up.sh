#!/usr/bin/env bash
# Bring up a single-node Kubernetes cluster for fraudops (`make kind-up`), load the images built here and install
# the chart with Helm, waiting for every pod to be Ready.
#
#   scripts/kind-up.sh                          # provider from CLUSTER_PROVIDER (auto: kind if installed, else local)
#   CLUSTER_PROVIDER=local scripts/kind-up.sh   # Kubernetes' own components on this host, no registry (root)
#   CLUSTER_PROVIDER=kind scripts/kind-up.sh    # stock kind; its node image is pulled from the internet
#
# Builds are cached in $CACHE_DIR, so a second run only starts things. Prints the time each phase took.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

provider="$CLUSTER_PROVIDER"
if [[ -f "$PROVIDER_FILE" ]]; then
  previous="$(cat "$PROVIDER_FILE")"
  [[ "$provider" == auto || "$provider" == "$previous" ]] ||
    die "a $previous cluster is up: scripts/kind-down.sh first"
  provider="$previous"
fi
if [[ "$provider" == auto ]]; then
  if command -v kind > /dev/null 2>&1 && docker info > /dev/null 2>&1; then
    provider=kind
  else
    provider=local
  fi
fi
[[ "$provider" == kind || "$provider" == local ]] || die "CLUSTER_PROVIDER must be auto, kind or local"
mkdir -p "$(dirname "$PROVIDER_FILE")"
echo "$provider" > "$PROVIDER_FILE"

started=$SECONDS
phase() {
  log "[$((SECONDS - started)) s] $*"
}

# --- builds (cached) ---------------------------------------------------------------------------------------------
phase "building (cached in $CACHE_DIR)"
if [[ "$provider" == local ]]; then
  [[ "$(id -u)" == 0 ]] || die "the local provider needs root (CLUSTER_PROVIDER=kind uses your Docker and kind)"
  # shellcheck source=scripts/local/lib.sh
  source "$ROOT/scripts/local/lib.sh"
  ensure_packages
  "$ROOT/scripts/local/build.sh"
else
  require docker kind go
  "$ROOT/scripts/local/build.sh" helm seaweedfs prometheus prometheus-operator
fi
# the private Docker engine (if one is started) stays up until kind-down: the add-on images are built and loaded
# from it
ensure_docker
if [[ "$DOCKER_STARTED_HERE" == 1 ]]; then
  touch "$ROOT/.kind/private-docker"
fi
if [[ "$provider" == local ]]; then
  IMAGE_BASE="${IMAGE_BASE:-offline}" "$ROOT/scripts/image.sh"
else
  "$ROOT/scripts/image.sh"
fi
image_options=()
if [[ "$provider" == local ]]; then
  image_options=(--with-local)
fi
addon_list="$("$ROOT/scripts/cluster-images.sh" "${image_options[@]}")"
mapfile -t addons <<< "$addon_list"
images=("$(image_ref)" "${addons[@]}")

# --- the cluster -------------------------------------------------------------------------------------------------
if [[ "$provider" == local ]]; then
  phase "starting the local cluster (Kubernetes $KUBE_VERSION)"
  "$ROOT/scripts/local/up.sh" "${images[@]}"
else
  require kind
  kind_version="$(kind version | awk '{print $2}')"
  if [[ "$kind_version" != "$KIND_EXPECTED_VERSION" ]]; then
    log "warning: kind $kind_version; kind-config.yaml pins the node image built for kind $KIND_EXPECTED_VERSION"
  fi
  if kind get clusters 2> /dev/null | grep -qx "$CLUSTER_NAME"; then
    kind export kubeconfig --name "$CLUSTER_NAME" --kubeconfig "$KIND_KUBECONFIG"
  else
    phase "creating kind cluster $CLUSTER_NAME"
    kind create cluster --name "$CLUSTER_NAME" --config "$ROOT/kind-config.yaml" --kubeconfig "$KIND_KUBECONFIG" \
      --wait 180s
  fi
  load_into_kind "${images[@]}"
fi

# --- fraudops ----------------------------------------------------------------------------------------------------
phase "installing add-ons, a first model and the chart"
"$ROOT/scripts/cluster-install.sh" "${addons[@]}"
phase "ready"

cat >&2 <<NEXT

fraudops is installed in namespace $NAMESPACE of the $provider cluster $CLUSTER_NAME.
  export KUBECONFIG=$KIND_KUBECONFIG
  make kind-e2e        # tests/test_kind_e2e.py against it
  make kind-down       # remove the cluster and everything it started
NEXT
