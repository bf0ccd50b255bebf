#!/usr/bin/env bash
# Build the binaries of the local cluster from Go modules (the Go module proxy is the only source): Kubernetes
# (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl) with the etcd its
# release is tested with, CoreDNS, Helm, SeaweedFS (the in-cluster S3 object store), Prometheus and the
# Prometheus Operator (operator and config reloader), crictl, plus the pause container from the Kubernetes sources.
#
#   scripts/local/build.sh            # everything missing from the cache
#   scripts/local/build.sh helm       # one tool
#
# Binaries land in $CACHE_DIR/bin/<tool>-<version>/, built once: a second run finds them and returns at once.
# Go's module and build caches live in $CACHE_DIR/go too, so the cache is one directory outside the repository.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

export GOMODCACHE="$CACHE_DIR/go/mod" GOCACHE="$CACHE_DIR/go/build" GOFLAGS=-mod=mod CGO_ENABLED=0
export GOTOOLCHAIN=local GOPROXY="${GOPROXY:-https://proxy.golang.org}"

# A wrapper module that requires MODULE@VERSION, so that `go build` can build its commands although the module's
# go.mod has replace directives (which `go install pkg@version` refuses). Local-path replaces (Kubernetes'
# staging repositories, the operator's API submodules) become the published module at LOCAL_VERSION; replaces
# that name another module are copied as they are.
wrapper_module() {
  local dir="$1" module="$2" version="$3" local_version="$4"
  local upstream
  mkdir -p "$dir"
  upstream="$(go mod download -json "$module@$version" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$upstream" ]] || die "go mod download $module@$version gave no go.mod"
  {
    printf 'module fraudops.local/build/%s\n\ngo %s\n\nrequire %s %s\n\n' \
      "$(basename "$dir")" "$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$upstream")" "$module" "$version"
    replace_directives "$upstream" "$local_version"
  } > "$dir/go.mod"
}

# The replace directives of a go.mod (single-line and block form), for a module that requires it: a replace by
# a local path becomes the published module at LOCAL_VERSION, any other is copied.
replace_directives() {
  local gomod="$1" local_version="$2"
  sed -n -e 's/^replace \(.*=>.*\)$/\1/p' -e '/^replace (/,/^)/{/=>/p}' "$gomod" |
    awk -v local_version="$local_version" '
      $1 ~ /^\/\// { next }
      {
        split($0, side, "=>"); split(side[1], left, " "); split(side[2], right, " ")
        if (right[1] ~ /^\.\.?\//) print "replace " left[1] " => " left[1] " " local_version
        else print "replace " left[1] " => " right[1] " " right[2]
      }'
}

# build TOOL VERSION MODULE LOCAL_VERSION LDFLAGS OUTPUT=PACKAGE...
build() {
  local tool="$1" version="$2" module="$3" local_version="$4" ldflags="$5"
  shift 5
  local out="$CACHE_DIR/bin/$tool-$version" src="$CACHE_DIR/src/$tool-$version" target binary package
  if [[ -f "$out/.complete" ]]; then
    return 0
  fi
  log "building $tool $version from the Go module proxy (first time only)"
  wrapper_module "$src" "$module" "$version" "$local_version"
  printf '//go:build tools\n\npackage tools\n\nimport (\n' > "$src/tools.go"
  for target in "$@"; do
    printf '\t_ "%s"\n' "${target#*=}" >> "$src/tools.go"
  done
  printf ')\n' >> "$src/tools.go"
  (cd "$src" && go mod tidy) > "$src/tidy.log" 2>&1 || { cat "$src/tidy.log" >&2; die "go mod tidy failed for $module@$version"; }
  mkdir -p "$out"
  for target in "$@"; do
    binary="${target%%=*}" package="${target#*=}"
    local started=$SECONDS
    (cd "$src" && go build -trimpath -ldflags "-s -w $ldflags" -o "$out/$binary" "$package")
    log "  $binary: $((SECONDS - started)) s"
  done
  touch "$out/.complete"
}

build_kubernetes() {
  local minor="${KUBE_VERSION#v1.}"
  minor="${minor%%.*}"
  local ldflags="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  # etcd: the server release Kubernetes requires in its own go.mod (its control plane is tested with it)
  build kubernetes "$KUBE_VERSION" k8s.io/kubernetes "v0.${KUBE_VERSION#v1.}" "$ldflags" \
    kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
    kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
    kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
    kubelet=k8s.io/kubernetes/cmd/kubelet \
    kube-proxy=k8s.io/kubernetes/cmd/kube-proxy \
    kubectl=k8s.io/kubernetes/cmd/kubectl \
    etcd=go.etcd.io/etcd/server/v3
}

# The pause container (the sandbox of every pod), from the C source in the Kubernetes module, linked statically.
build_pause() {
  local out="$CACHE_DIR/bin/pause-$PAUSE_VERSION" source
  [[ -f "$out/.complete" ]] && return 0
  source="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
  mkdir -p "$out"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-fraudops" -o "$out/pause" \
    "$source/build/pause/linux/pause.c"
  strip "$out/pause"
  touch "$out/.complete"
}

build_coredns() {
  build coredns "$COREDNS_VERSION" github.com/coredns/coredns "" \
    "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" coredns=github.com/coredns/coredns
}

build_crictl() {
  build cri-tools "$CRICTL_VERSION" sigs.k8s.io/cri-tools "" "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    crictl=sigs.k8s.io/cri-tools/cmd/crictl
}

build_helm() {
  build helm "$HELM_VERSION" helm.sh/helm/v4 "" "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    helm=helm.sh/helm/v4/cmd/helm
}

build_seaweedfs() {
  build seaweedfs "$SEAWEEDFS_VERSION" github.com/seaweedfs/seaweedfs "" "" \
    weed=github.com/seaweedfs/seaweedfs/weed
}

# Prometheus itself: Debian bookworm's package is built without Kubernetes service discovery, which the operator's
# ServiceMonitors need. The web UI's assets are not built (no npm build): the API and the scrape loop are complete.
build_prometheus() {
  build prometheus "$PROMETHEUS_VERSION" github.com/prometheus/prometheus "" \
    "-X github.com/prometheus/common/version.Version=$(prometheus_release | tr -d v)" \
    prometheus=github.com/prometheus/prometheus/cmd/prometheus
}

build_prometheus_operator() {
  local pkg=github.com/prometheus-operator/prometheus-operator
  build prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" "$pkg" "$PROMETHEUS_OPERATOR_VERSION" \
    "-X github.com/prometheus/common/version.Version=${PROMETHEUS_OPERATOR_VERSION#v}" \
    operator="$pkg/cmd/operator" prometheus-config-reloader="$pkg/cmd/prometheus-config-reloader"
}

main() {
  require go gcc
  local go_version go_minor tools tool
  go_version="$(go env GOVERSION)"
  go_minor="${go_version#go1.}"
  ((${go_minor%%.*} >= 24)) ||
    die "Go 1.24 or newer builds Kubernetes $KUBE_VERSION; this is $go_version (https://go.dev/dl)"
  tools=("$@")
  if ((${#tools[@]} == 0)); then
    tools=(kubernetes pause crictl coredns helm seaweedfs prometheus prometheus-operator)
  fi
  local built_before
  mkdir -p "$CACHE_DIR/bin" # absent on a machine that never built: find would fail the pipeline (pipefail)
  built_before="$(find "$CACHE_DIR/bin" -name .complete | wc -l)"
  for tool in "${tools[@]}"; do
    case "$tool" in
      kubernetes) build_kubernetes ;;
      pause) build_pause ;;
      crictl) build_crictl ;;
      coredns) build_coredns ;;
      helm) build_helm ;;
      seaweedfs) build_seaweedfs ;;
      prometheus) build_prometheus ;;
      prometheus-operator) build_prometheus_operator ;;
      *) die "unknown tool $tool (kubernetes, pause, crictl, coredns, helm, seaweedfs, prometheus, prometheus-operator)" ;;
    esac
  done
  # The binaries are what the next run needs; Go's build cache (about 9 GB after everything) only speeds up a
  # rebuild after a version change. The module cache stays (the operator's CRDs are read from it).
  if (($(find "$CACHE_DIR/bin" -name .complete | wc -l) > built_before)); then
    log "dropping Go's build cache ($(du -sh "$GOCACHE" | cut -f1)); the binaries are in $CACHE_DIR/bin"
    go clean -cache
  fi
}

# run, unless sourced (tests source it for replace_directives)
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
