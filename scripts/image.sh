#!/usr/bin/env bash
# Build the project image fraudops:<version from pyproject.toml> (`make image`).
#
#   scripts/image.sh                       # base: the pinned public python image if it can be had, else offline
#   IMAGE_BASE=public scripts/image.sh     # the pinned public python image (needs a registry)
#   IMAGE_BASE=offline scripts/image.sh    # a Debian base made here with debootstrap (no registry needed)
#
# The offline base is Debian bookworm made with debootstrap from the Debian mirror apt already uses, imported
# as fraudops-debian:bookworm, plus Debian's python3 (docker/python-offline.Dockerfile): the same Python 3.11 on
# the same Debian release as the public image. Both are cached: the root filesystem under $CACHE_DIR/base, the
# images in the Docker engine. Extra certificate authorities for an inspecting proxy: EXTRA_CA_CERTS (a list of
# .crt files; default: the ones in /usr/local/share/ca-certificates), used during the build only.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGE_BASE="${IMAGE_BASE:-auto}"
PUBLIC_PYTHON_IMAGE="$(public_python_image)"

ensure_docker
cleanup() {
  find "$ROOT/docker/ca-certificates" -name '*.crt' -delete
  if [[ "$DOCKER_STARTED_HERE" == 1 && "${KEEP_DOCKER:-0}" != 1 ]]; then
    stop_private_docker
  fi
}
trap cleanup EXIT

# The Debian mirror apt uses on this machine (debootstrap fetches the same packages apt would).
debian_mirror() {
  if [[ -n "$DEBIAN_MIRROR" ]]; then
    printf '%s\n' "$DEBIAN_MIRROR"
    return 0
  fi
  local mirror
  mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2> /dev/null |
    grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n 1 | tr -d ' ')"
  printf '%s\n' "${mirror:-http://deb.debian.org/debian}"
}

# fraudops-debian:bookworm from a debootstrap root filesystem (made once, kept in the cache).
debian_base() {
  docker image inspect "$DEBIAN_IMAGE" > /dev/null 2>&1 && return 0
  [[ "$(id -u)" == 0 ]] || die "debootstrap needs root to make the offline base image"
  if ! command -v debootstrap > /dev/null 2>&1; then
    apt_install debootstrap
  fi
  local rootfs="$CACHE_DIR/base/bookworm-rootfs" tarball="$CACHE_DIR/base/bookworm-rootfs.tar"
  if [[ ! -f "$tarball" ]]; then
    log "making a Debian bookworm root filesystem with debootstrap ($(debian_mirror))"
    rm -rf "$rootfs"
    mkdir -p "$CACHE_DIR/base"
    debootstrap --variant=minbase bookworm "$rootfs" "$(debian_mirror)" > "$CACHE_DIR/base/debootstrap.log" 2>&1 ||
      die "debootstrap failed: see $CACHE_DIR/base/debootstrap.log"
    # no package caches or lists in the image (the derived images run apt-get update themselves)
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar --numeric-owner -C "$rootfs" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$rootfs"
  fi
  log "importing $DEBIAN_IMAGE"
  docker import -c 'CMD ["/bin/bash"]' "$tarball" "$DEBIAN_IMAGE" > /dev/null
}

offline_python_base() {
  debian_base
  log "building $OFFLINE_PYTHON_IMAGE (Debian's python3)"
  docker build --network host --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" --build-arg DEBIAN_MIRROR="$(debian_mirror)" \
    -t "$OFFLINE_PYTHON_IMAGE" \
    -f "$ROOT/docker/python-offline.Dockerfile" "$ROOT/docker" > "$CACHE_DIR/python-base-build.log" 2>&1 ||
    { tail -n 30 "$CACHE_DIR/python-base-build.log" >&2; die "building $OFFLINE_PYTHON_IMAGE failed"; }
}

public_base_available() {
  docker image inspect "$PUBLIC_PYTHON_IMAGE" > /dev/null 2>&1 && return 0
  log "pulling $PUBLIC_PYTHON_IMAGE"
  timeout 120 docker pull "$PUBLIC_PYTHON_IMAGE" > /dev/null 2>&1
}

mkdir -p "$CACHE_DIR"
case "$IMAGE_BASE" in
  public) public_base_available || die "cannot pull $PUBLIC_PYTHON_IMAGE (no registry? use IMAGE_BASE=offline)"
    base="$PUBLIC_PYTHON_IMAGE" ;;
  offline) offline_python_base
    base="$OFFLINE_PYTHON_IMAGE" ;;
  auto) if public_base_available; then
      base="$PUBLIC_PYTHON_IMAGE"
    else
      log "no registry: building the base image offline"
      offline_python_base
      base="$OFFLINE_PYTHON_IMAGE"
    fi ;;
  *) die "IMAGE_BASE must be auto, public or offline, not $IMAGE_BASE" ;;
esac

# certificate authorities for the build only (docker/ca-certificates/README.md)
find "$ROOT/docker/ca-certificates" -name '*.crt' -delete
read -r -a ca_files <<< "${EXTRA_CA_CERTS:-$(echo /usr/local/share/ca-certificates/*.crt)}"
for ca in "${ca_files[@]}"; do
  if [[ -f "$ca" ]]; then
    cp "$ca" "$ROOT/docker/ca-certificates/"
  fi
done

image="$(image_ref)"
log "building $image from $base"
started=$SECONDS
docker build --network host --build-arg PYTHON_IMAGE="$base" --build-arg VERSION="$(project_version)" \
  -t "$image" "$ROOT" > "$CACHE_DIR/image-build.log" 2>&1 ||
  { tail -n 40 "$CACHE_DIR/image-build.log" >&2; die "docker build failed: see $CACHE_DIR/image-build.log"; }
log "built $image in $((SECONDS - started)) s ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
