#!/usr/bin/env bash
# Remove the local cluster of scripts/local/up.sh and everything it made on the host: its processes and
# containers, mounts, network interfaces, packet filter chains and tables, cgroups, sysctl changes and $STATE_DIR.
# Ends by comparing the host's packet filter rules with the ones saved before the cluster came up; exits non-zero
# when anything differs. Safe to run twice.
set -euo pipefail

# shellcheck source=scripts/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ "$(id -u)" == 0 ]] || die "removing the local cluster needs root"
if [[ ! -d "$STATE_DIR" ]] && ! ip link show "$NODE_IFACE" > /dev/null 2>&1; then
  log "no local cluster $CLUSTER_NAME"
  exit 0
fi
log "removing local cluster $CLUSTER_NAME ($STATE_DIR)"

stop() {
  local name="$1"
  [[ -f "$PIDS/$name.pid" ]] || return 0
  terminate "$(cat "$PIDS/$name.pid")" 10
  rm -f "$PIDS/$name.pid"
}

# 1. no new pods: stop the kubelet and the control plane
for name in kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
  stop "$name"
done

# 2. every pod sandbox stopped and removed through the CRI, so that CNI releases its addresses and rules
crictl_bin="$(tool_bin cri-tools "$CRICTL_VERSION")/crictl"
if pid_alive containerd && [[ -x "$crictl_bin" ]]; then
  "$crictl_bin" --runtime-endpoint "unix://$CONTAINERD_SOCK" --timeout 30s rmp --all --force > /dev/null 2>&1 || true
fi

# 3. kube-proxy's rules
stop kube-proxy
if [[ -f "$STATE_DIR/kube-proxy/config.yaml" ]]; then
  "$K8S_BIN/kube-proxy" --cleanup --config "$STATE_DIR/kube-proxy/config.yaml" > "$LOGS/kube-proxy-cleanup.log" 2>&1 || true
fi

# 4. containerd and any container left (their shims outlive containerd)
stop containerd
pkill -9 -f -- "containerd-shim.* -address $CONTAINERD_SOCK" 2> /dev/null || true
sleep 1

# 5. mounts under the state directory (pod volumes, overlay snapshots, network namespaces), deepest first
{ findmnt -rn -o TARGET | grep -F "$STATE_DIR/" || true; } | sort -r | while read -r mount; do
  umount "$mount" 2> /dev/null || umount -l "$mount"
done

# 6. network: the node interface, the pod bridge, and the chains and tables of Kubernetes and CNI
ip link delete "$NODE_IFACE" 2> /dev/null || true
ip link delete "$CNI_BRIDGE" 2> /dev/null || true
if [[ -f "$STATE_DIR/host-before/firewall" ]]; then
  remove_cluster_firewall "$STATE_DIR/host-before/firewall"
fi

# 7. sysctls as they were
if [[ -f "$STATE_DIR/host-before/sysctl" ]]; then
  while IFS='=' read -r key value; do
    sysctl -qw "$key=$value"
  done < "$STATE_DIR/host-before/sysctl"
fi

# 8. the pods' cgroups, deepest first
for hierarchy in /sys/fs/cgroup/*/; do
  [[ -d "$hierarchy$CGROUP_PARENT" ]] || continue
  find "$hierarchy$CGROUP_PARENT" -depth -type d -exec rmdir {} \; 2> /dev/null || true
done

# 9. what is left: compare with the host before, then remove the state
differences=""
if [[ -f "$STATE_DIR/host-before/firewall" ]]; then
  differences="$(diff "$STATE_DIR/host-before/firewall" <(firewall_rules) || true)"
fi
if [[ -f "$STATE_DIR/host-before/sysctl" ]]; then
  differences+="$(diff "$STATE_DIR/host-before/sysctl" <(for key in "${SYSCTLS[@]}"; do
    printf '%s=%s\n' "$key" "$(sysctl -n "$key")"
  done) || true)"
fi
rm -rf "$STATE_DIR"
rm -f "$KIND_KUBECONFIG"
rmdir "$(dirname "$STATE_DIR")" 2> /dev/null || true
leftovers="$(findmnt -rn -o TARGET | grep -F "$STATE_DIR" || true)"
if [[ -n "$differences" || -n "$leftovers" ]]; then
  printf 'the host differs from before the cluster:\n%s\n%s\n' "$differences" "$leftovers" >&2
  exit 1
fi
log "local cluster $CLUSTER_NAME removed; packet filter rules and sysctls are as before"
