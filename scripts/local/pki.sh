#!/usr/bin/env bash
# The local cluster's certificates and kubeconfigs, made with openssl: one CA; serving certificates for the API
# server and the kubelet; client certificates for the admin, the controller manager, the scheduler, the kubelet,
# kube-proxy and the API server's calls to the kubelet; the service-account signing key. The same identities
# kubeadm creates, so that the API server's default RBAC bindings apply unchanged.
#
#   scripts/local/pki.sh DIR NODE_NAME NODE_IP API_SERVICE_IP ADMIN_KUBECONFIG
set -euo pipefail

dir="$1" node="$2" node_ip="$3" api_service_ip="$4" admin_kubeconfig="$5"
server="https://$node_ip:6443"
mkdir -p "$dir"
cd "$dir"
umask 077

# cert NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA, valid for a year
cert() {
  local name="$1" subject="$2" extensions="$3"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$name.key" -subj "$subject" -out "$name.csr" 2> /dev/null
  printf '%s\n' "$extensions" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -sha256 \
    -extfile "$name.ext" -out "$name.crt" 2> /dev/null
  rm -f "$name.csr" "$name.ext"
}

client() {
  cert "$1" "$2" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
}

# kubeconfig FILE CERT_NAME: a kubeconfig with client certificate CERT_NAME, context NAME
kubeconfig() {
  local file="$1" name="$2"
  cat > "$file" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
  - name: $node
    cluster:
      server: $server
      certificate-authority-data: $(base64 -w0 ca.crt)
users:
  - name: $name
    user:
      client-certificate-data: $(base64 -w0 "$name.crt")
      client-key-data: $(base64 -w0 "$name.key")
contexts:
  - name: $node
    context:
      cluster: $node
      user: $name
current-context: $node
KUBECONFIG
}

openssl req -x509 -new -newkey rsa:2048 -nodes -keyout ca.key -days 365 -sha256 -subj "/CN=fraudops-local-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
  -out ca.crt 2> /dev/null

cert apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:$api_service_ip,IP:$node_ip,IP:127.0.0.1"
cert kubelet-serving "/CN=$node" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$node,IP:$node_ip"

client admin "/O=system:masters/CN=fraudops-admin"
client kube-controller-manager "/CN=system:kube-controller-manager"
client kube-scheduler "/CN=system:kube-scheduler"
client kubelet "/O=system:nodes/CN=system:node:$node"
client kube-proxy "/CN=system:kube-proxy"
client apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"

openssl genrsa -out sa.key 2048 2> /dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2> /dev/null

for name in kube-controller-manager kube-scheduler kubelet kube-proxy admin; do
  kubeconfig "$name.kubeconfig" "$name"
done
mkdir -p "$(dirname "$admin_kubeconfig")"
cp admin.kubeconfig "$admin_kubeconfig"
chmod 600 "$admin_kubeconfig"
