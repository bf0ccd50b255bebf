#!/usr/bin/env bash
# shellcheck disable=SC2034  # the settings are used by the scripts that source this file
# Settings of the local provider: a single-node Kubernetes run from its own components on this host (sourced by
# scripts/local/up.sh and down.sh). Everything it creates is named here, so that down.sh removes exactly that.

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# All state of the running cluster: certificates, etcd data, containerd's root, the kubelet's pods, logs, pids.
STATE_DIR="${LOCAL_STATE_DIR:-/var/lib/fraudops-local/$CLUSTER_NAME}"
LOGS="$STATE_DIR/logs"
PIDS="$STATE_DIR/pids"
PKI="$STATE_DIR/pki"
# The node's address lives on an interface of its own (an empty bridge: every kernel has bridges), so that nothing of the cluster listens on the
# host's real interfaces and the address does not change with the host's network.
NODE_NAME="$CLUSTER_NAME"
NODE_IFACE="${NODE_IFACE:-fraudops0}"
NODE_IP="${NODE_IP:-10.254.254.1}"
CNI_BRIDGE="${CNI_BRIDGE:-fraudops-cni0}"
POD_CIDR="10.244.0.0/16"
NODE_POD_CIDR="10.244.0.0/24"
SERVICE_CIDR="10.96.0.0/16"
API_SERVICE_IP="10.96.0.1"
DNS_SERVICE_IP="10.96.0.10"
CLUSTER_DOMAIN="cluster.local"
# etcd's client port on 127.0.0.1 (peer and metrics: the next two)
ETCD_PORT="${ETCD_PORT:-2379}"
# kubelet cgroups: every pod under this parent of each cgroup v1 hierarchy
CGROUP_PARENT="fraudops-$CLUSTER_NAME"
K8S_BIN="$(tool_bin kubernetes "$KUBE_VERSION")"
CONTAINERD_SOCK="$STATE_DIR/containerd/containerd.sock"
# host settings the cluster changes, restored by down.sh
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables)

ctr_k8s() {
  ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"
}

# The pid of a process start() started, if it is still that process (its pid file holds the pid and the program:
# after a reboot or a crash the number may belong to another program, which must never be signalled).
pid_of() {
  local file="$PIDS/$1.pid" pid program
  [[ -f "$file" ]] || return 1
  read -r pid program < "$file"
  [[ "$(readlink "/proc/$pid/exe" 2> /dev/null)" == "$program" ]] || return 1
  echo "$pid"
}

# load_images IMAGE...: images from the Docker engine into the node's containerd
load_images() {
  local image
  for image in "$@"; do
    log "loading $image into the node"
    docker save "$image" | ctr_k8s images import - > /dev/null
  done
}

pid_alive() {
  pid_of "$1" > /dev/null
}

# start NAME COMMAND...: a background process in its own session, its output in $LOGS/NAME.log
start() {
  local name="$1" program
  shift
  if pid_alive "$name"; then
    return 0
  fi
  mkdir -p "$LOGS" "$PIDS"
  program="$(readlink -f "$(command -v "$1")")"
  setsid "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null &
  echo "$! $program" > "$PIDS/$name.pid"
}

# The Debian packages the local provider needs, installed when missing (as root, with apt-get).
ensure_packages() {
  local missing=() command package
  for command in containerd:containerd runc:runc iptables:iptables nft:nftables \
    openssl:openssl findmnt:util-linux debootstrap:debootstrap; do
    package="${command#*:}" command="${command%%:*}"
    command -v "$command" > /dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$command" > /dev/null 2>&1 ||
      missing+=("$package")
  done
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  # Debian's Docker engine, unless one is installed (another engine's packages would conflict with it)
  command -v dockerd > /dev/null 2>&1 || docker info > /dev/null 2>&1 || missing+=(docker.io)
  ((${#missing[@]})) || return 0
  apt_install "${missing[@]}"
}

# wait_until WHAT SECONDS COMMAND...: retry COMMAND every second
wait_until() {
  local what="$1" seconds="$2" _
  shift 2
  for _ in $(seq "$seconds"); do
    if "$@" > /dev/null 2>&1; then
      return 0
    fi
    sleep 1
  done
  die "timed out after $seconds s waiting for $what (logs: $LOGS)"
}

# The host's packet filter rules, without counters, to compare before and after the cluster: the whole nftables
# ruleset where iptables is its nf_tables variant (so that tables the cluster created are seen too), else what
# iptables-save and ip6tables-save print. Never `iptables-save -t TABLE`: on nf_tables that creates the table.
firewall_rules() {
  if iptables --version | grep -q nf_tables && command -v nft > /dev/null; then
    nft list ruleset | sed -E 's/ counter packets [0-9]+ bytes [0-9]+//'
  else
    { iptables-save; ip6tables-save; } 2> /dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
  fi
}

# Remove the chains of Kubernetes (KUBE-*) and CNI (CNI-*) that were not there before, with every rule that
# jumps to them, from the IPv4 and IPv6 tables; then, on nf_tables, the tables the cluster created that are
# left empty. BEFORE is the output of firewall_rules from before the cluster.
remove_cluster_firewall() {
  local before="$1" tool table chain rule family name
  for tool in iptables ip6tables; do
    "$tool-save" 2> /dev/null | awk '/^\*/ {table = substr($0, 2)} /^:(KUBE|CNI)-/ {print table, substr($1, 2)}' |
      while read -r table chain; do
        grep -qE "(chain $chain \{|^:$chain )" "$before" && continue
        { "$tool-save" -t "$table" | grep -E -- "-j $chain( |$)" || true; } | sed 's/^-A /-D /' |
          while read -r rule; do
            # shellcheck disable=SC2086  # a saved rule is a list of arguments
            eval "$tool" -t "$table" $rule 2> /dev/null || true
          done
        "$tool" -t "$table" -F "$chain" 2> /dev/null || true
        "$tool" -t "$table" -X "$chain" 2> /dev/null || true
      done
  done
  if iptables --version | grep -q nf_tables && command -v nft > /dev/null; then
    nft list tables | while read -r _ family name; do
      grep -q "^table $family $name {" "$before" && continue
      # empty: no chain of the table holds a rule (only base-chain headers and braces)
      if [[ "$(nft list table "$family" "$name" | awk '!/^[[:space:]]*(table|chain|type|\}|$)/' | wc -l)" == 0 ]]; then
        nft delete table "$family" "$name"
      fi
    done
  fi
}
