#!/usr/bin/env bash
# shellcheck disable=SC2034  # the settings are used by the scripts that source this file
# Shared settings and helpers for the kind scripts (sourced, not run). Every setting can be overridden from the
# environment, e.g. CLUSTER_NAME=fraudops-2 scripts/kind-up.sh.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT

# kind cluster and the kubeconfig written for it (kept out of ~/.kube/config)
CLUSTER_NAME="${CLUSTER_NAME:-fraudops}"
KIND_KUBECONFIG="${KIND_KUBECONFIG:-$ROOT/.kind/kubeconfig}"
# kind release the node image in kind-config.yaml was built for
KIND_EXPECTED_VERSION="v0.30.0"
# where the chart goes
NAMESPACE="${NAMESPACE:-fraudops}"
RELEASE="${RELEASE:-fraudops}"
# Kubeflow Pipelines standalone (SeaweedFS is its object store since 2.15); matches the kfp 2.17 SDK
KFP_VERSION="${KFP_VERSION:-2.17.2}"
# kube-prometheus-stack chart version, installed only with PROMETHEUS=1
KPS_VERSION="${KPS_VERSION:-85.1.2}"
PROMETHEUS="${PROMETHEUS:-0}"
# fraudops image: name and tag from pyproject.toml (never latest)
IMAGE_NAME="${IMAGE_NAME:-fraudops}"

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
    command -v "$tool" > /dev/null 2>&1 || die "$tool is required but not installed (see docs/deploy.md#kind)"
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

kube() {
  kubectl --kubeconfig "$KIND_KUBECONFIG" "$@"
}
