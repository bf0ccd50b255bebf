#!/usr/bin/env bash
# Bring up a single-node Kubernetes on this Linux host from Kubernetes' own components, with no registry: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, the kubelet with containerd (Debian's) through its CRI,
# CNI bridge networking (Debian's plugins), kube-proxy (iptables) and CoreDNS. The same layout as upstream's
# hack/local-up-cluster.sh; docs/deploy.md says why this and not kind here.
#
#   scripts/local/up.sh IMAGE...      # IMAGE: Docker images to load into the node (built beforehand)
#
# Needs root. Writes the admin kubeconfig to $KIND_KUBECONFIG; everything else lives in $STATE_DIR and on the
# interfaces $NODE_IFACE and $CNI_BRIDGE, which scripts/local/down.sh removes, leaving the host as it was.
set -euo pipefail

# shellcheck source=scripts/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ "$(id -u)" == 0 ]] || die "the local cluster needs root (containerd, network interfaces, iptables)"
require containerd ctr runc iptables iptables-save ip openssl findmnt setsid
[[ -x /usr/lib/cni/bridge ]] || die "the CNI plugins are missing: apt-get install containernetworking-plugins"
[[ -x "$K8S_BIN/kube-apiserver" ]] || die "no Kubernetes binaries in $K8S_BIN: run scripts/local/build.sh"
# Kubernetes 1.34 with containerd 1.6 runs on cgroup v1 here; a cgroup v2 host needs containerd 2 (kind has it)
[[ ! -e /sys/fs/cgroup/cgroup.controllers ]] ||
  die "this host uses cgroup v2 only; the local provider needs cgroup v1 (use CLUSTER_PROVIDER=kind)"

if pid_alive kube-apiserver && kube get --raw=/readyz > /dev/null 2>&1; then
  log "local cluster $CLUSTER_NAME is already up; loading the images again"
  load_images "$@"
  exit 0
fi
[[ ! -e "$STATE_DIR" ]] || die "$STATE_DIR exists from an earlier run: scripts/kind-down.sh removes it"
for range in "$POD_CIDR" "$SERVICE_CIDR" "$NODE_IP/32"; do
  if ip route show to match "${range%/*}" | grep -v '^default' | grep -q .; then
    die "the host already routes $range; set NODE_IP or use another machine ($(ip route show to match "${range%/*}" | head -n 1))"
  fi
done
! ip link show "$NODE_IFACE" > /dev/null 2>&1 || die "interface $NODE_IFACE exists already"
for port in "$ETCD_PORT" "$((ETCD_PORT + 1))" "$((ETCD_PORT + 2))"; do
  [[ -z "$(ss -Hltn "sport = :$port")" ]] || die "port $port is in use on this host: set ETCD_PORT to a free range"
done

mkdir -p "$STATE_DIR" "$LOGS" "$PIDS"
started=$SECONDS

# --- the host as it was, for down.sh ---------------------------------------------------------------------------
mkdir -p "$STATE_DIR/host-before"
firewall_rules > "$STATE_DIR/host-before/firewall"
for key in "${SYSCTLS[@]}"; do
  printf '%s=%s\n' "$key" "$(sysctl -n "$key" 2> /dev/null || true)"
done > "$STATE_DIR/host-before/sysctl"
# bridged pod traffic must pass iptables (Services between pods on one bridge): load br_netfilter if it is a
# module that is not loaded (down.sh unloads it again)
if [[ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
  if ! modprobe br_netfilter 2> /dev/null; then
    die "the kernel lacks br_netfilter (net.bridge.bridge-nf-call-iptables); Services from pods need it"
  fi
  touch "$STATE_DIR/br_netfilter-loaded"
fi

# --- network: the node address, forwarding and bridged traffic through iptables (Services from pods) --------------
ip link add "$NODE_IFACE" type bridge
ip addr add "$NODE_IP/32" dev "$NODE_IFACE"
ip link set "$NODE_IFACE" up
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1

# --- certificates and kubeconfigs ------------------------------------------------------------------------------
log "certificates"
"$(dirname "${BASH_SOURCE[0]}")/pki.sh" "$PKI" "$NODE_NAME" "$NODE_IP" "$API_SERVICE_IP" "$KIND_KUBECONFIG"

# --- containerd (its own root, state and socket; the CRI with CNI and the locally built pause image) -------------
log "containerd"
mkdir -p "$STATE_DIR/containerd" "$STATE_DIR/cni/net.d"
cat > "$STATE_DIR/containerd/config.toml" <<TOML
version = 2
root = "$STATE_DIR/containerd/root"
state = "$STATE_DIR/containerd/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE_DIR/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$ADDON_REGISTRY/pause:$PAUSE_VERSION"
  # this machine lacks CAP_SYS_RESOURCE: never ask runc for a lower OOM score than containerd's own
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "$STATE_DIR/cni/net.d"
TOML
cat > "$STATE_DIR/cni/net.d/10-fraudops.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "fraudops",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
start containerd containerd --config "$STATE_DIR/containerd/config.toml"
wait_until "containerd" 60 ctr --address "$CONTAINERD_SOCK" version

# --- images: from the Docker engine into the node --------------------------------------------------------------
load_images "$@"

# --- control plane ---------------------------------------------------------------------------------------------
log "etcd, kube-apiserver, kube-controller-manager, kube-scheduler ($KUBE_VERSION)"
# etcd on loopback only: the node address is routable from every pod, and etcd holds every Secret
start etcd "$K8S_BIN/etcd" --name "$NODE_NAME" --data-dir "$STATE_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-cluster "$NODE_NAME=http://127.0.0.1:$((ETCD_PORT + 1))" \
  --listen-metrics-urls "http://127.0.0.1:$((ETCD_PORT + 2))" --quota-backend-bytes 2147483648 --log-level warn
wait_until "etcd" 60 curl -sf "http://127.0.0.1:$((ETCD_PORT + 2))/health"

start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --advertise-address "$NODE_IP" --bind-address "$NODE_IP" --secure-port 6443 \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --service-cluster-ip-range "$SERVICE_CIDR" --service-node-port-range 30000-32767 \
  --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP \
  --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --allow-privileged=false --profiling=false --anonymous-auth=true \
  --cert-dir "$STATE_DIR/apiserver"
wait_until "kube-apiserver /readyz" 120 kube get --raw=/readyz

start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$PKI/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig "$PKI/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig "$PKI/kube-controller-manager.kubeconfig" \
  --bind-address "$NODE_IP" --leader-elect=false --use-service-account-credentials \
  --allocate-node-cidrs --cluster-cidr "$POD_CIDR" --node-cidr-mask-size 24 \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
  --cert-dir "$STATE_DIR/controller-manager" --profiling=false
start kube-scheduler "$K8S_BIN/kube-scheduler" \
  --kubeconfig "$PKI/kube-scheduler.kubeconfig" \
  --authentication-kubeconfig "$PKI/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig "$PKI/kube-scheduler.kubeconfig" \
  --bind-address "$NODE_IP" --leader-elect=false --cert-dir "$STATE_DIR/scheduler" --profiling=false

# --- node: kubelet and kube-proxy ------------------------------------------------------------------------------
log "kubelet and kube-proxy"
# the cgroup v1 parent of every pod, in each hierarchy (cpuset needs its CPUs and memory nodes set first)
for hierarchy in /sys/fs/cgroup/*/; do
  [[ -e "$hierarchy/cgroup.procs" && "$hierarchy" != */unified/ ]] || continue
  mkdir -p "$hierarchy$CGROUP_PARENT"
  if [[ -e "$hierarchy/cpuset.cpus" ]]; then
    cat "$hierarchy/cpuset.cpus" > "$hierarchy$CGROUP_PARENT/cpuset.cpus"
    cat "$hierarchy/cpuset.mems" > "$hierarchy$CGROUP_PARENT/cpuset.mems"
  fi
done
mkdir -p "$STATE_DIR/kubelet"
cat > "$STATE_DIR/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
healthzBindAddress: $NODE_IP
readOnlyPort: 0
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_PARENT
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: /etc/resolv.conf
failSwapOn: false
serializeImagePulls: false
# the images were loaded, never pulled: keep them however full the disk gets, and evict only when nearly full
imageGCHighThresholdPercent: 100
evictionHard:
  memory.available: 256Mi
  nodefs.available: 2%
  imagefs.available: 2%
YAML
start kubelet "$K8S_BIN/kubelet" --config "$STATE_DIR/kubelet/config.yaml" \
  --kubeconfig "$PKI/kubelet.kubeconfig" --root-dir "$STATE_DIR/kubelet" \
  --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --cert-dir "$STATE_DIR/kubelet/pki"

mkdir -p "$STATE_DIR/kube-proxy"
cat > "$STATE_DIR/kube-proxy/config.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $PKI/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: $NODE_IP:10256
metricsBindAddress: $NODE_IP:10249
# node ports only on the node's own address, never on the host's real interfaces or loopback
nodePortAddresses: [$NODE_IP/32]
iptables:
  localhostNodePorts: false
# leave the host's conntrack settings alone
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
YAML
start kube-proxy "$K8S_BIN/kube-proxy" --config "$STATE_DIR/kube-proxy/config.yaml"

wait_until "node $NODE_NAME to register" 120 kube get node "$NODE_NAME"
kube wait --for=condition=Ready "node/$NODE_NAME" --timeout=180s > /dev/null

# --- cluster DNS -----------------------------------------------------------------------------------------------
log "CoreDNS"
sed -e "s|@DNS_SERVICE_IP@|$DNS_SERVICE_IP|g" -e "s|@CLUSTER_DOMAIN@|$CLUSTER_DOMAIN|g" \
  -e "s|@IMAGE@|$ADDON_REGISTRY/coredns:$COREDNS_VERSION|g" "$ROOT/scripts/local/coredns.yaml" | kube apply -f - > /dev/null
kube -n kube-system rollout status deployment/coredns --timeout=180s > /dev/null

log "local cluster $CLUSTER_NAME up in $((SECONDS - started)) s: Kubernetes $KUBE_VERSION, node $NODE_NAME at $NODE_IP"
