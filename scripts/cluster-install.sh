#!/usr/bin/env bash
# Install fraudops on the development cluster that scripts/kind-up.sh made (either provider), the way a platform
# engineer would on any cluster:
#   1. namespaces, with Pod Security admission enforcing the `restricted` profile;
#   2. the S3 object store add-on (SeaweedFS) with generated keys, Secret fraudops-s3, the bucket and the base
#      training table (synthetic transactions from the project's generator);
#   3. the Prometheus Operator: its CRDs (from its Go module), the operator, one Prometheus, one Alertmanager;
#   4. the bearer tokens of the trigger and of the scorer's /feedback and /reload (Secrets fraudops-trigger-token,
#      fraudops-scorer-token) and the feature store's password (Secret fraudops-feature-store);
#   5. a first champion, trained by `fraudops pipeline job` in a Kubernetes Job (the retrain Job's shape);
#   6. the chart, with real Helm, waiting for every pod to be Ready.
#
#   scripts/cluster-install.sh IMAGE...   # IMAGE: the add-on images loaded into the cluster (cluster-images.sh)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

image="$(image_ref)"
fraudops="$ROOT/.venv/bin/fraudops"
[[ -x "$fraudops" ]] || die "no $fraudops: run make install"

addon_image() {
  local name="$1" ref
  for ref in "${ADDON_IMAGES[@]}"; do
    if [[ "${ref%:*}" == "$ADDON_REGISTRY/$name" ]]; then
      printf '%s\n' "$ref"
      return 0
    fi
  done
  die "no $ADDON_REGISTRY/$name image among: ${ADDON_IMAGES[*]}"
}
ADDON_IMAGES=("$@")

# fill FIELD=VALUE pairs into an add-on manifest's @FIELD@ placeholders
render() {
  local file="$1" expression=()
  shift
  for pair in "$@"; do
    expression+=(-e "s|@${pair%%=*}@|${pair#*=}|g")
  done
  sed "${expression[@]}" "$file"
}

random_key() {
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'
}

# --- 1. namespaces -----------------------------------------------------------------------------------------------
log "namespaces $NAMESPACE, $INFRA_NAMESPACE, $MONITORING_NAMESPACE (Pod Security: restricted)"
for ns in "$NAMESPACE" "$INFRA_NAMESPACE" "$MONITORING_NAMESPACE"; do
  kube create namespace "$ns" --dry-run=client -o yaml | kube apply -f - > /dev/null
  kube label namespace "$ns" --overwrite pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/enforce-version=latest > /dev/null
done

# --- 2. object store ---------------------------------------------------------------------------------------------
log "object store (SeaweedFS) in $INFRA_NAMESPACE"
if ! kube -n "$INFRA_NAMESPACE" get secret seaweedfs-s3 > /dev/null 2>&1; then
  access_key="fraudops$(random_key | head -c 12)" secret_key="$(random_key)"
  kube -n "$INFRA_NAMESPACE" create secret generic seaweedfs-s3 --from-file=s3.json=<(cat <<JSON
{"identities": [{"name": "fraudops", "credentials": [{"accessKey": "$access_key", "secretKey": "$secret_key"}],
                 "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
  ) > /dev/null
  kube -n "$NAMESPACE" delete secret fraudops-s3 --ignore-not-found > /dev/null
fi
# (secret values go through files, never on a command line other users could read)
if ! kube -n "$NAMESPACE" get secret fraudops-s3 > /dev/null 2>&1; then
  s3_json="$(kube -n "$INFRA_NAMESPACE" get secret seaweedfs-s3 -o jsonpath='{.data.s3\.json}' | base64 -d)"
  kube -n "$NAMESPACE" create secret generic fraudops-s3 --from-env-file=<(
    printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' \
      "$(sed -n 's/.*"accessKey": "\([^"]*\)".*/\1/p' <<< "$s3_json")" \
      "$(sed -n 's/.*"secretKey": "\([^"]*\)".*/\1/p' <<< "$s3_json")") > /dev/null
fi
render "$ROOT/scripts/addons/object-store.yaml" NAMESPACE="$INFRA_NAMESPACE" IMAGE="$(addon_image seaweedfs)" |
  kube apply -f - > /dev/null
kube -n "$INFRA_NAMESPACE" rollout status deployment/seaweedfs --timeout=300s > /dev/null
log "bucket fraudops and the base training table s3://fraudops/data/base.parquet"
kube -n "$NAMESPACE" delete job fraudops-seed --ignore-not-found > /dev/null
"$ROOT/scripts/addons/seed-job.sh" "$image" | kube -n "$NAMESPACE" apply -f - > /dev/null
kube -n "$NAMESPACE" wait --for=condition=Complete job/fraudops-seed --timeout=600s > /dev/null ||
  die "seeding the object store failed: $(kube -n "$NAMESPACE" logs job/fraudops-seed --tail=20 2>&1)"
champion="$(kube -n "$NAMESPACE" logs job/fraudops-seed | sed -n 's/^champion: //p')"
kube -n "$NAMESPACE" delete job fraudops-seed > /dev/null

# --- 3. Prometheus Operator ----------------------------------------------------------------------------------------
log "Prometheus Operator $PROMETHEUS_OPERATOR_VERSION, Prometheus and Alertmanager in $MONITORING_NAMESPACE"
operator_module="$(GOMODCACHE="$CACHE_DIR/go/mod" GOFLAGS=-mod=mod go mod download -json \
  "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
  sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
[[ -d "$operator_module/example/prometheus-operator-crd" ]] || die "no CRDs in the operator module ($operator_module)"
# server-side: the CRDs are larger than the client-side apply annotation allows
kube apply --server-side --force-conflicts -f "$operator_module/example/prometheus-operator-crd" > /dev/null
kube wait --for condition=established --timeout=120s \
  crd/prometheuses.monitoring.coreos.com crd/alertmanagers.monitoring.coreos.com \
  crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com \
  crd/alertmanagerconfigs.monitoring.coreos.com > /dev/null
kube apply -f "$operator_module/example/rbac/prometheus-operator/prometheus-operator-cluster-role.yaml" > /dev/null
prometheus_image="$(addon_image prometheus)" alertmanager_image="$(addon_image alertmanager)"
render "$ROOT/scripts/addons/monitoring.yaml" NAMESPACE="$MONITORING_NAMESPACE" \
  OPERATOR_IMAGE="$(addon_image prometheus-operator)" RELOADER_IMAGE="$(addon_image prometheus-config-reloader)" \
  PROMETHEUS_IMAGE="$prometheus_image" PROMETHEUS_VERSION="${prometheus_image##*:}" \
  ALERTMANAGER_IMAGE="$alertmanager_image" ALERTMANAGER_VERSION="${alertmanager_image##*:}" | kube apply -f - > /dev/null
kube -n "$MONITORING_NAMESPACE" rollout status deployment/prometheus-operator --timeout=300s > /dev/null
wait_for_statefulset() {
  local name="$1" _
  for _ in $(seq 120); do
    kube -n "$MONITORING_NAMESPACE" get statefulset "$name" > /dev/null 2>&1 && break
    sleep 2
  done
  kube -n "$MONITORING_NAMESPACE" rollout status "statefulset/$name" --timeout=300s > /dev/null ||
    die "statefulset $name of the operator is not ready: $(kube -n "$MONITORING_NAMESPACE" describe statefulset "$name" | tail -n 5)"
}
wait_for_statefulset prometheus-fraudops
wait_for_statefulset alertmanager-fraudops

# --- 4. bearer tokens: Alertmanager -> trigger, clients -> the scorer's /feedback and /reload ----------------------
for secret in fraudops-trigger-token fraudops-scorer-token; do
  if ! kube -n "$NAMESPACE" get secret "$secret" > /dev/null 2>&1; then
    kube -n "$NAMESPACE" create secret generic "$secret" --from-file=token=<(random_key) > /dev/null
  fi
done
# the feature store's password (URL-safe: the scorer's FRAUDOPS_FEATURE_STORE_URL carries it)
if ! kube -n "$NAMESPACE" get secret fraudops-feature-store > /dev/null 2>&1; then
  kube -n "$NAMESPACE" create secret generic fraudops-feature-store --from-file=password=<(random_key) > /dev/null
fi

# --- 5. a first champion (the scorer is not ready without one) ---------------------------------------------------
[[ -n "$champion" ]] || die "the seed Job did not report the registry's champion"
if [[ "$champion" == none ]]; then
  log "training the first model in a Job (fraudops pipeline job)"
  "$fraudops" pipeline job --kubeconfig "$KIND_KUBECONFIG" --namespace "$NAMESPACE" --image "$image" \
    --s3-secret fraudops-s3 --s3-endpoint "http://seaweedfs.$INFRA_NAMESPACE.svc.cluster.local:8333" \
    --registry-url s3://fraudops/registry --data s3://fraudops/data/base.parquet --cpu 500m --memory 1Gi \
    --iterations 300 --wait --timeout 1800 | tail -n 4
else
  log "the registry's champion is $champion"
fi

# --- 6. the chart --------------------------------------------------------------------------------------------------
log "installing the chart ($image) with Helm $("$HELM" version --short 2> /dev/null)"
helm_cmd upgrade --install "$RELEASE" "$ROOT/helm/fraudops" --namespace "$NAMESPACE" \
  -f "$ROOT/helm/fraudops/values-kind.yaml" --set image.tag="$(project_version)" --wait --timeout 15m > /dev/null
kube -n "$NAMESPACE" wait --for=condition=Ready pod --field-selector=status.phase=Running --all --timeout=300s > /dev/null
log "every pod is Ready:"
kube get pods -A -o wide >&2
