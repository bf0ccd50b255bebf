#!/usr/bin/env bash
# Build the images of the cluster's add-ons without a registry and print their references, one per line:
#   pause, CoreDNS          the local provider's pod sandbox and cluster DNS (Go and C builds of scripts/local/build.sh)
#   SeaweedFS               the in-cluster S3 object store of models, prediction logs and drift reports
#   Prometheus Operator     operator, config reloader and Prometheus (Go builds), Alertmanager (Debian's package)
# Every image but pause (a static binary alone) starts from the Debian bookworm base of scripts/image.sh, and runs
# as a non-root user. Images already in the engine are kept.
#
#   scripts/cluster-images.sh [--with-local]    # --with-local: also pause and CoreDNS
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require docker
with_local=0
if [[ "${1:-}" == "--with-local" ]]; then
  with_local=1
fi
# The base: the Debian image scripts/image.sh made offline, else the pinned public python image it pulled (Debian
# bookworm too) when there is a registry.
base="$DEBIAN_IMAGE"
if ! docker image inspect "$base" > /dev/null 2>&1; then
  base="$(public_python_image)"
  docker image inspect "$base" > /dev/null 2>&1 || die "neither $DEBIAN_IMAGE nor $base is there: run scripts/image.sh"
fi

build_log="$CACHE_DIR/cluster-images.log"
: > "$build_log"

exists() {
  docker image inspect "$1" > /dev/null 2>&1
}

# binary_image IMAGE BINARY USER [ENTRYPOINT ARGS...]: the base image plus one static binary in /usr/bin (also
# /bin: Debian's /bin is /usr/bin), where the upstream images keep theirs (the operator runs the reloader by path)
binary_image() {
  local image="$1" binary="$2" user="$3"
  shift 3
  exists "$image" && return 0
  [[ -x "$binary" ]] || die "$binary is missing: run scripts/local/build.sh"
  local context entrypoint
  context="$(mktemp -d)"
  cp "$binary" "$context/"
  entrypoint="$(printf '"%s", ' "/usr/bin/$(basename "$binary")" "$@")"
  docker build -t "$image" -f - "$context" >> "$build_log" 2>&1 <<DOCKERFILE || die "building $image failed: see $build_log"
FROM $base
COPY $(basename "$binary") /usr/bin/
USER $user
ENTRYPOINT [${entrypoint%, }]
DOCKERFILE
  rm -rf "$context"
}

# debian_image NAME PACKAGE BINARY USER: Debian's package in the base image, tagged with the program's version
debian_image() {
  local name="$1" package="$2" binary="$3" user="$4" version
  # a `build` tag is what a failed earlier run left; a version tag is a finished image
  docker rmi "$ADDON_REGISTRY/$name:build" > /dev/null 2>&1 || true
  version="$(docker images --format '{{.Tag}}' "$ADDON_REGISTRY/$name" | { grep '^v' || true; } | head -n 1)"
  if [[ -n "$version" ]]; then
    printf '%s\n' "$ADDON_REGISTRY/$name:$version"
    return 0
  fi
  docker build --network host -t "$ADDON_REGISTRY/$name:build" -f - "$ROOT/docker" >> "$build_log" 2>&1 <<DOCKERFILE ||
FROM $base
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $package \\
 && apt-get clean && rm -rf /var/lib/apt/lists/*
USER $user
ENTRYPOINT ["$binary"]
DOCKERFILE
    die "building $name failed: see $build_log"
  version="$(docker run --rm --network none "$ADDON_REGISTRY/$name:build" --version 2>&1 |
    sed -n 's/^[a-z-]*, version \([0-9.]*\).*/v\1/p' | head -n 1)"
  [[ -n "$version" ]] || die "cannot read the version of $binary in $ADDON_REGISTRY/$name:build"
  docker tag "$ADDON_REGISTRY/$name:build" "$ADDON_REGISTRY/$name:$version"
  docker rmi "$ADDON_REGISTRY/$name:build" > /dev/null
  printf '%s\n' "$ADDON_REGISTRY/$name:$version"
}

if ((with_local)); then
  pause="$ADDON_REGISTRY/pause:$PAUSE_VERSION"
  if ! exists "$pause"; then
    tar -C "$(tool_bin pause "$PAUSE_VERSION")" -c pause |
      docker import -c 'ENTRYPOINT ["/pause"]' -c 'USER 65535:65535' - "$pause" >> "$build_log"
  fi
  printf '%s\n' "$pause"
  binary_image "$ADDON_REGISTRY/coredns:$COREDNS_VERSION" "$(tool_bin coredns "$COREDNS_VERSION")/coredns" 65532:65532
  printf '%s\n' "$ADDON_REGISTRY/coredns:$COREDNS_VERSION"
fi

seaweedfs="$ADDON_REGISTRY/seaweedfs:${SEAWEEDFS_VERSION##*-}"
binary_image "$seaweedfs" "$(tool_bin seaweedfs "$SEAWEEDFS_VERSION")/weed" 10002:10002
printf '%s\n' "$seaweedfs"

operator_bin="$(tool_bin prometheus-operator "$PROMETHEUS_OPERATOR_VERSION")"
binary_image "$ADDON_REGISTRY/prometheus-operator:$PROMETHEUS_OPERATOR_VERSION" "$operator_bin/operator" 65534:65534
binary_image "$ADDON_REGISTRY/prometheus-config-reloader:$PROMETHEUS_OPERATOR_VERSION" \
  "$operator_bin/prometheus-config-reloader" 65534:65534
printf '%s\n' "$ADDON_REGISTRY/prometheus-operator:$PROMETHEUS_OPERATOR_VERSION" \
  "$ADDON_REGISTRY/prometheus-config-reloader:$PROMETHEUS_OPERATOR_VERSION"

prometheus="$ADDON_REGISTRY/prometheus:$(prometheus_release)"
binary_image "$prometheus" "$(tool_bin prometheus "$PROMETHEUS_VERSION")/prometheus" 65534:65534
printf '%s\n' "$prometheus"
debian_image alertmanager prometheus-alertmanager /usr/bin/prometheus-alertmanager 65534:65534
