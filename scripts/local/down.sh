#!/usr/bin/env bash
# Remove the local cluster of scripts/local/up.sh and everything it made on the host: its processes and
# containers, mounts, network interfaces, packet filter chains and tables, cgroups, sysctl changes and $STATE_DIR.
# Then check: no process or mount of the cluster is left, and the host's packet filter rules and sysctls equal the
# copy saved before the cluster came up. Anything left or different is reported, the state directory is kept (it
# holds that copy) and the exit status is 1, so that a second run can finish the job.
set -euo pipefail

# shellcheck source=scripts/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ "$(id -u)" == 0 ]] || die "removing the local cluster needs root"

# Every process of the cluster names the state directory on its command line (configs, data and sockets live
# there), so it is found even when its pid file is gone, and nothing else is.
cluster_processes() {
  pgrep -f -- "$STATE_DIR/" || true
}

if [[ ! -d "$STATE_DIR" && -z "$(cluster_processes)" ]] && ! ip link show "$NODE_IFACE" > /dev/null 2>&1 &&
  ! ip link show "$CNI_BRIDGE" > /dev/null 2>&1; then
  log "no local cluster $CLUSTER_NAME"
  exit 0
fi
log "removing local cluster $CLUSTER_NAME ($STATE_DIR)"
before="$STATE_DIR/host-before"

stop() {
  local name="$1" pid
  if pid="$(pid_of "$name")"; then
    terminate "$pid" 10
  fi
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
  "$K8S_BIN/kube-proxy" --cleanup --config "$STATE_DIR/kube-proxy/config.yaml" > /dev/null 2>&1 || true
fi

# 4. containerd, then every process left that belongs to the cluster (shims outlive containerd), then any
#    container process left in the pods' cgroups
stop containerd
for pid in $(cluster_processes); do
  terminate "$pid" 5
done
for hierarchy in /sys/fs/cgroup/*/; do
  [[ -d "$hierarchy$CGROUP_PARENT" ]] || continue
  find "$hierarchy$CGROUP_PARENT" -name cgroup.procs -exec cat {} + 2> /dev/null | while read -r pid; do
    kill -9 "$pid" 2> /dev/null || true
  done
done
sleep 1

# 5. mounts under the state directory (pod volumes, overlay snapshots, network namespaces), deepest first
{ findmnt -rn -o TARGET | grep -F "$STATE_DIR/" || true; } | sort -r | while read -r mount; do
  umount "$mount" 2> /dev/null || umount -l "$mount" 2> /dev/null || true
done

# 6. network: the node interface, the pod bridge, and the chains and tables of Kubernetes and CNI
ip link delete "$NODE_IFACE" 2> /dev/null || true
ip link delete "$CNI_BRIDGE" 2> /dev/null || true
if [[ -f "$before/firewall" ]]; then
  remove_cluster_firewall "$before/firewall"
fi

# 7. sysctls as they were (a value that cannot be restored shows in the check below)
if [[ -f "$before/sysctl" ]]; then
  while IFS='=' read -r key value; do
    if [[ -n "$value" ]]; then
      sysctl -qw "$key=$value" 2> /dev/null || true
    fi
  done < "$before/sysctl"
fi
if [[ -f "$STATE_DIR/br_netfilter-loaded" ]]; then
  modprobe -r br_netfilter 2> /dev/null || true
fi

# 8. the pods' cgroups, deepest first
for hierarchy in /sys/fs/cgroup/*/; do
  [[ -d "$hierarchy$CGROUP_PARENT" ]] || continue
  find "$hierarchy$CGROUP_PARENT" -depth -type d -exec rmdir {} \; 2> /dev/null || true
done

# 9. the check
problems=""
if [[ -n "$(cluster_processes)" ]]; then
  problems+="processes still running: $(cluster_processes | tr '\n' ' ')"$'\n'
fi
mounts="$(findmnt -rn -o TARGET | grep -F "$STATE_DIR/" || true)"
if [[ -n "$mounts" ]]; then
  problems+="mounts left:"$'\n'"$mounts"$'\n'
fi
for hierarchy in /sys/fs/cgroup/*/; do
  if [[ -d "$hierarchy$CGROUP_PARENT" ]]; then
    problems+="cgroup left: $hierarchy$CGROUP_PARENT"$'\n'
  fi
done
if [[ -f "$before/firewall" && -f "$before/sysctl" ]]; then
  firewall="$(diff "$before/firewall" <(firewall_rules 2> /dev/null) || true)"
  if [[ -n "$firewall" ]]; then
    problems+="packet filter rules differ from before the cluster:"$'\n'"$firewall"$'\n'
  fi
  sysctls="$(diff "$before/sysctl" <(for key in "${SYSCTLS[@]}"; do
    printf '%s=%s\n' "$key" "$(sysctl -n "$key" 2> /dev/null || true)"
  done) || true)"
  if [[ -n "$sysctls" ]]; then
    problems+="sysctls differ from before the cluster:"$'\n'"$sysctls"$'\n'
  fi
else
  problems+="no copy of the host from before the cluster in $before: packet filter and sysctls not checked"$'\n'
fi
if [[ -n "$problems" ]]; then
  printf 'the local cluster %s is not completely removed (state kept in %s; run this again):\n%s' \
    "$CLUSTER_NAME" "$STATE_DIR" "$problems" >&2
  exit 1
fi
rm -rf "$STATE_DIR"
rm -f "$KIND_KUBECONFIG"
rmdir "$(dirname "$STATE_DIR")" 2> /dev/null || true
log "local cluster $CLUSTER_NAME removed; no process, mount or cgroup left; packet filter rules and sysctls as before"
