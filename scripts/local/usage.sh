#!/usr/bin/env bash
# Memory and disk of the local cluster: resident memory of its processes (etcd, the control plane, kubelet,
# kube-proxy, containerd and its shims) plus the resident memory of every pod (the memory cgroup the kubelet puts
# them under; page cache excluded), and the size of its state directory.
#
#   scripts/local/usage.sh              # one line now
#   scripts/local/usage.sh --watch 2    # a line every 2 s with the peak so far, until stopped
set -euo pipefail

# shellcheck source=scripts/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# resident memory of the cluster, in KiB: "total processes pods"
sample() {
  local processes=0 pid rss pods=0 stat="/sys/fs/cgroup/memory/$CGROUP_PARENT/memory.stat"
  local pids=() file
  for file in "$PIDS"/*.pid; do
    if [[ -f "$file" ]] && pid="$(pid_of "$(basename "$file" .pid)")"; then
      pids+=("$pid")
    fi
  done
  mapfile -t -O "${#pids[@]}" pids < <(pgrep -f -- "containerd-shim.* -address $CONTAINERD_SOCK" || true)
  for pid in "${pids[@]}"; do
    # a process that exits meanwhile, or a zombie, has no resident memory line
    rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2> /dev/null || true)"
    processes=$((processes + ${rss:-0}))
  done
  if [[ -f "$stat" ]]; then
    pods=$(awk '/^total_rss / {rss=$2} /^total_mapped_file / {mapped=$2} END {print int((rss + mapped) / 1024)}' "$stat")
  fi
  echo "$((processes + pods)) $processes $pods"
}

mib() {
  echo "$(($1 / 1024)) MiB"
}

[[ -d "$STATE_DIR" ]] || die "no local cluster at $STATE_DIR"
if [[ "${1:-}" != "--watch" ]]; then
  read -r total processes pods < <(sample)
  echo "memory $(mib "$total") (processes $(mib "$processes"), pods $(mib "$pods")); disk $(du -shx "$STATE_DIR" | cut -f1)"
  exit 0
fi
interval="${2:-2}" peak=0 peak_processes=0 peak_pods=0
while true; do
  read -r total processes pods < <(sample)
  if ((total > peak)); then
    peak=$total peak_processes=$processes peak_pods=$pods
  fi
  echo "peak memory $(mib "$peak") (processes $(mib "$peak_processes"), pods $(mib "$peak_pods")); now $(mib "$total"); disk $(du -shx "$STATE_DIR" 2> /dev/null | cut -f1)"
  sleep "$interval"
done
