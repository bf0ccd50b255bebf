#!/usr/bin/env bash
# shellcheck disable=SC2034  # the settings are used by the scripts that source this file
# Shared settings and helpers of the image and cluster scripts (sourced, not run). Every setting can be
# overridden from the environment, e.g. CLUSTER_NAME=fraudops-2 scripts/kind-up.sh.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT

# Which cluster `make kind-up` makes: `local` (Kubernetes' own components run directly on this Linux host, no
# registry needed: scripts/local/) or `kind` (stock kind, its node image pulled from the internet). `auto` picks
# kind when the kind command is installed and a Docker engine answers, else local. docs/deploy.md argues it.
CLUSTER_PROVIDER="${CLUSTER_PROVIDER:-auto}"
CLUSTER_NAME="${CLUSTER_NAME:-fraudops}"
# the kubeconfig written for the cluster (never ~/.kube/config)
KIND_KUBECONFIG="${KIND_KUBECONFIG:-$ROOT/.kind/kubeconfig}"
# the provider kind-up.sh chose, for kind-e2e.sh and kind-down.sh
PROVIDER_FILE="$ROOT/.kind/provider"
# kind release the node image in kind-config.yaml was built for
KIND_EXPECTED_VERSION="v0.30.0"
# where the chart goes, and the in-cluster object store and monitoring stack
NAMESPACE="${NAMESPACE:-fraudops}"
RELEASE="${RELEASE:-fraudops}"
INFRA_NAMESPACE="${INFRA_NAMESPACE:-fraudops-system}"
MONITORING_NAMESPACE="${MONITORING_NAMESPACE:-monitoring}"
# fraudops image: name and tag from pyproject.toml (never latest)
IMAGE_NAME="${IMAGE_NAME:-fraudops}"

# Builds (Go binaries, Go's caches, the debootstrap root filesystem, the private Docker engine's images) are kept
# in one directory outside the repository, so that a second run builds nothing.
CACHE_DIR="${FRAUDOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fraudops}"
# What scripts/local/build.sh builds from the Go module proxy, each pinned. Kubernetes 1.34 is the newest release
# that runs on cgroup v1 without extra settings and with containerd 1.6 (Debian bookworm's).
KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
PAUSE_VERSION="3.10.1"
CRICTL_VERSION="v1.34.0"
COREDNS_VERSION="v1.12.1"
HELM_VERSION="v4.3.1"
SEAWEEDFS_VERSION="v0.0.0-20261109003541-7506e5f91cd6"
PROMETHEUS_OPERATOR_VERSION="v0.85.0"
# Prometheus 3.5 (LTS, the newest the operator release is tested with); its Go module is versioned v0.305.0
PROMETHEUS_VERSION="v0.305.0"
# Images of the cluster's add-ons, built by scripts/cluster-images.sh (never pulled). Alertmanager is Debian
# bookworm's package; its version is read from the package at build time.
ADDON_REGISTRY="fraudops.local"
# Debian bookworm, made offline with debootstrap, is the base of every image built here without a registry
DEBIAN_MIRROR="${DEBIAN_MIRROR:-}"
DEBIAN_IMAGE="fraudops-debian:bookworm"
OFFLINE_PYTHON_IMAGE="fraudops-python:3.11-bookworm"

log() {
  printf '\033[1m==> %s\033[0m\n' "$*" >&2
}

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" > /dev/null 2>&1 || die "$tool is required but not installed (see docs/deploy.md#local-cluster)"
  done
}

# The project version from pyproject.toml, used as the image tag.
project_version() {
  local version
  version="$(sed -n 's/^version = "\([^"]*\)"$/\1/p' "$ROOT/pyproject.toml" | head -n 1)"
  [[ -n "$version" ]] || die "no version in $ROOT/pyproject.toml"
  [[ "$version" != "latest" ]] || die "the image tag must be a version, not latest"
  printf '%s\n' "$version"
}

image_ref() {
  printf '%s:%s\n' "$IMAGE_NAME" "$(project_version)"
}

# load_into_kind IMAGE...: images from the Docker engine into the kind cluster's node, through an archive
# (`kind load docker-image` fails when Docker keeps images in its containerd store: kind issue #3795)
load_into_kind() {
  local image archive
  archive="$(mktemp --suffix=.tar)"
  for image in "$@"; do
    log "loading $image into kind cluster $CLUSTER_NAME"
    docker save -o "$archive" "$image"
    kind load image-archive "$archive" --name "$CLUSTER_NAME"
  done
  rm -f "$archive"
}

# The pinned public python image, the default base of the Dockerfile (ARG PYTHON_IMAGE).
public_python_image() {
  local image
  image="$(sed -n 's/^ARG PYTHON_IMAGE=\(.*\)$/\1/p' "$ROOT/Dockerfile")"
  [[ -n "$image" ]] || die "no ARG PYTHON_IMAGE default in $ROOT/Dockerfile"
  printf '%s\n' "$image"
}

# The Prometheus release of its Go module version: v0.305.0 is Prometheus v3.5.0.
prometheus_release() {
  local minor="${PROMETHEUS_VERSION#v0.}"
  printf 'v%s.%s.%s\n' "${minor:0:1}" "$((10#${minor:1:2}))" "${minor#*.}"
}

# Binaries built by scripts/local/build.sh
tool_bin() {
  local tool="$1" version="$2"
  printf '%s/bin/%s-%s\n' "$CACHE_DIR" "$tool" "$version"
}

# kubectl and helm: the ones built here when present (the local provider), else from PATH (a laptop with kind).
KUBECTL="$(tool_bin kubernetes "$KUBE_VERSION")/kubectl"
[[ -x "$KUBECTL" ]] || KUBECTL=kubectl
HELM="$(tool_bin helm "$HELM_VERSION")/helm"
[[ -x "$HELM" ]] || HELM=helm

kube() {
  "$KUBECTL" --kubeconfig "$KIND_KUBECONFIG" "$@"
}

helm_cmd() {
  "$HELM" --kubeconfig "$KIND_KUBECONFIG" "$@"
}

# apt_install PACKAGE...: Debian packages a script needs, installed when it runs as root on Debian/Ubuntu
apt_install() {
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get > /dev/null 2>&1; then
    die "missing: $*; install them (Debian/Ubuntu: sudo apt-get install --no-install-recommends $*)"
  fi
  log "installing $* (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" > /dev/null
}

# --- Docker engine ---------------------------------------------------------------------------------------------
# Images are built with the Docker engine DOCKER_HOST names, or one a user already runs; without either (this
# kind of machine), with a private engine that these scripts start: its own data root in the cache (so built
# layers survive), its own socket, no bridge network and no iptables rules (builds use the host network).
PRIVATE_DOCKER_DIR="$CACHE_DIR/docker"
PRIVATE_DOCKER_HOST="unix://$PRIVATE_DOCKER_DIR/run/docker.sock"

# the private engine's pid, if that process is still a dockerd (a pid file can outlive a reboot)
private_docker_pid() {
  local pid
  pid="$(cat "$PRIVATE_DOCKER_DIR/run/dockerd.pid" 2> /dev/null)" || return 1
  [[ "$(basename "$(readlink "/proc/$pid/exe" 2> /dev/null)")" == dockerd ]] || return 1
  echo "$pid"
}

private_docker_running() {
  private_docker_pid > /dev/null
}

# Point DOCKER_HOST at a working engine; sets DOCKER_STARTED_HERE=1 when it started the private one.
DOCKER_STARTED_HERE=0
ensure_docker() {
  if [[ -n "${DOCKER_HOST:-}" ]]; then
    docker info > /dev/null 2>&1 || die "the Docker engine at DOCKER_HOST=$DOCKER_HOST does not answer"
    return 0
  fi
  if private_docker_running; then
    export DOCKER_HOST="$PRIVATE_DOCKER_HOST"
    return 0
  fi
  if docker info > /dev/null 2>&1; then
    return 0
  fi
  [[ "$(id -u)" == 0 ]] || die "no Docker engine answers; start one or run as root to use a private engine"
  if ! command -v dockerd > /dev/null 2>&1; then
    apt_install docker.io
  fi
  log "starting a private Docker engine ($PRIVATE_DOCKER_DIR)"
  mkdir -p "$PRIVATE_DOCKER_DIR/data" "$PRIVATE_DOCKER_DIR/run/exec"
  setsid dockerd --data-root "$PRIVATE_DOCKER_DIR/data" --exec-root "$PRIVATE_DOCKER_DIR/run/exec" \
    --pidfile "$PRIVATE_DOCKER_DIR/run/dockerd.pid" -H "$PRIVATE_DOCKER_HOST" \
    --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --containerd-namespace fraudops-docker --containerd-plugins-namespace fraudops-docker-plugins \
    > "$PRIVATE_DOCKER_DIR/dockerd.log" 2>&1 < /dev/null &
  local engine=$! _
  export DOCKER_HOST="$PRIVATE_DOCKER_HOST"
  for _ in $(seq 60); do
    if docker info > /dev/null 2>&1; then
      DOCKER_STARTED_HERE=1
      return 0
    fi
    sleep 1
  done
  terminate "$engine" 30
  stop_private_docker
  die "the private Docker engine did not start within 60 s: see $PRIVATE_DOCKER_DIR/dockerd.log"
}

# terminate PID SECONDS: SIGTERM, then SIGKILL if the process is still there after SECONDS
terminate() {
  local pid="$1" seconds="$2" _
  kill "$pid" 2> /dev/null || return 0
  for _ in $(seq "$((seconds * 2))"); do
    kill -0 "$pid" 2> /dev/null || return 0
    sleep 0.5
  done
  kill -9 "$pid" 2> /dev/null || true
}

stop_private_docker() {
  local pid
  if pid="$(private_docker_pid)"; then
    log "stopping the private Docker engine"
    terminate "$pid" 30
  fi
  [[ -d "$PRIVATE_DOCKER_DIR/run" ]] || return 0
  # the engine leaves its default network namespace mounted under its exec root
  { findmnt -rn -o TARGET | grep -F "$PRIVATE_DOCKER_DIR/run/" || true; } | sort -r | xargs -r umount
  rm -rf "$PRIVATE_DOCKER_DIR/run"
}
