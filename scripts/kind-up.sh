#!/usr/bin/env bash
# Create a local kind cluster with Kubeflow Pipelines (standalone, SeaweedFS object store), build and load the
# fraudops image and install the chart with helm/fraudops/values-kind.yaml.
#
#   scripts/kind-up.sh                 # cluster + KFP + fraudops
#   PROMETHEUS=1 scripts/kind-up.sh    # also kube-prometheus-stack and the chart's monitoring objects
#
# Needs docker (with a running engine), kind (v0.30.0), kubectl and helm. Idempotent: re-running upgrades.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require docker kind kubectl helm
docker info > /dev/null 2>&1 || die "the docker engine is not reachable (is it running?)"

kind_version="$(kind version | awk '{print $2}')"
if [[ "$kind_version" != "$KIND_EXPECTED_VERSION" ]]; then
  log "warning: kind $kind_version; kind-config.yaml pins the node image built for kind $KIND_EXPECTED_VERSION"
fi

image="$(image_ref)"

# --- cluster -----------------------------------------------------------------------------------------------------
mkdir -p "$(dirname "$KIND_KUBECONFIG")"
clusters="$(kind get clusters 2> /dev/null)"
if grep -qx "$CLUSTER_NAME" <<< "$clusters"; then
  log "kind cluster $CLUSTER_NAME exists"
  kind export kubeconfig --name "$CLUSTER_NAME" --kubeconfig "$KIND_KUBECONFIG"
else
  log "creating kind cluster $CLUSTER_NAME"
  kind create cluster --name "$CLUSTER_NAME" --config "$ROOT/kind-config.yaml" \
    --kubeconfig "$KIND_KUBECONFIG" --wait 180s
fi

# --- image -------------------------------------------------------------------------------------------------------
log "building $image"
docker build -t "$image" "$ROOT"
log "loading $image into the cluster"
kind load docker-image "$image" --name "$CLUSTER_NAME"

# --- Kubeflow Pipelines ------------------------------------------------------------------------------------------
log "installing Kubeflow Pipelines $KFP_VERSION (standalone)"
kube apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$KFP_VERSION"
kube wait --for condition=established --timeout=120s crd/applications.app.k8s.io
kube apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=$KFP_VERSION"
log "waiting for KFP (several minutes on a laptop)"
kube -n kubeflow wait --for=condition=Available deployment --all --timeout=20m

# --- namespace, secrets, bucket ----------------------------------------------------------------------------------
kube create namespace "$NAMESPACE" --dry-run=client -o yaml | kube apply -f -
# KFP's SeaweedFS NetworkPolicy admits S3 traffic from namespaces labelled as Kubeflow profiles
kube label namespace "$NAMESPACE" app.kubernetes.io/part-of=kubeflow-profile --overwrite

access_key="$(kube -n kubeflow get secret mlpipeline-minio-artifact -o jsonpath='{.data.accesskey}' | base64 -d)"
secret_key="$(kube -n kubeflow get secret mlpipeline-minio-artifact -o jsonpath='{.data.secretkey}' | base64 -d)"
[[ -n "$access_key" && -n "$secret_key" ]] || die "no credentials in kubeflow/mlpipeline-minio-artifact"
# the scorer, drift job and trigger read fraudops-s3 in $NAMESPACE; pipeline steps read it in kubeflow
for ns in "$NAMESPACE" kubeflow; do
  kube -n "$ns" create secret generic fraudops-s3 \
    --from-literal=AWS_ACCESS_KEY_ID="$access_key" --from-literal=AWS_SECRET_ACCESS_KEY="$secret_key" \
    --dry-run=client -o yaml | kube apply -f -
done
if ! kube -n "$NAMESPACE" get secret fraudops-trigger-token > /dev/null 2>&1; then
  log "creating the trigger's bearer token"
  kube -n "$NAMESPACE" create secret generic fraudops-trigger-token \
    --from-literal=token="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
fi

log "creating bucket fraudops in SeaweedFS"
kube -n "$NAMESPACE" delete job fraudops-create-bucket --ignore-not-found
"$ROOT/scripts/kind/create-bucket-job.sh" "$image" | kube -n "$NAMESPACE" apply -f -
kube -n "$NAMESPACE" wait --for=condition=Complete job/fraudops-create-bucket --timeout=5m
kube -n "$NAMESPACE" delete job fraudops-create-bucket

# --- monitoring (optional) ---------------------------------------------------------------------------------------
values=(-f "$ROOT/helm/fraudops/values-kind.yaml")
if [[ "$PROMETHEUS" == "1" ]]; then
  log "installing kube-prometheus-stack $KPS_VERSION"
  helm --kubeconfig "$KIND_KUBECONFIG" repo add prometheus-community \
    https://prometheus-community.github.io/helm-charts --force-update > /dev/null
  helm --kubeconfig "$KIND_KUBECONFIG" upgrade --install kps prometheus-community/kube-prometheus-stack \
    --version "$KPS_VERSION" --namespace monitoring --create-namespace \
    -f "$ROOT/scripts/kind/kube-prometheus-stack-values.yaml" --wait --timeout 20m
  values+=(-f "$ROOT/helm/fraudops/values-kind-monitoring.yaml")
fi

# --- fraudops ----------------------------------------------------------------------------------------------------
log "installing the fraudops chart ($image)"
helm --kubeconfig "$KIND_KUBECONFIG" upgrade --install "$RELEASE" "$ROOT/helm/fraudops" \
  --namespace "$NAMESPACE" "${values[@]}" --set image.tag="$(project_version)"
# the scorer turns ready only once a champion model exists (the end-to-end test trains one)
kube -n "$NAMESPACE" rollout status deployment/"$RELEASE"-trigger --timeout=5m
kube -n "$NAMESPACE" rollout status deployment/"$RELEASE"-drift-exporter --timeout=5m

cat >&2 <<NEXT

fraudops is installed in namespace $NAMESPACE of kind cluster $CLUSTER_NAME.
  export KUBECONFIG=$KIND_KUBECONFIG
  scripts/kind-e2e.sh        # train through KFP, score on 127.0.0.1:30080, drift -> alert -> retraining
  scripts/kind-down.sh       # delete the cluster
NEXT
