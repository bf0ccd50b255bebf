{{/*
Names, labels, image and shared pod fragments.
*/}}

{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "fraudops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name prefix of every object: <release>-<chart>, or <release> when it already contains the chart name. */}}
{{- define "fraudops.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of one component's objects: (dict "ctx" $ "component" "scorer"). Room is left for suffixes. */}}
{{- define "fraudops.componentName" -}}
{{- printf "%s-%s" (include "fraudops.fullname" .ctx | trunc (int (sub 51 (len .component))) | trimSuffix "-") .component }}
{{- end }}

{{/* The Secret holding the scorer's internal token (/feedback, /reload); the chart never holds secret values. */}}
{{- define "fraudops.internalTokenSecret" -}}
{{- required "scorer.internalToken.existingSecret is required: create a Secret with the bearer token of /feedback and /reload (kubectl create secret generic fraudops-scorer-token --from-literal=token=$(openssl rand -hex 32)) and set its name" .Values.scorer.internalToken.existingSecret }}
{{- end }}

{{/* The Secret holding the feature store's password; the chart never holds secret values. */}}
{{- define "fraudops.featureStoreSecret" -}}
{{- required "featureStore.auth.existingSecret is required: create a Secret with the feature store's password (kubectl create secret generic fraudops-feature-store --from-literal=password=$(openssl rand -hex 32)) and set its name, or set featureStore.enabled=false" .Values.featureStore.auth.existingSecret }}
{{- end }}

{{/* The scorer's feature store env: the password from the Secret, spliced into the URL by Kubernetes. */}}
{{- define "fraudops.featureStoreEnv" -}}
{{- if .Values.featureStore.enabled }}
- name: FEATURE_STORE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "fraudops.featureStoreSecret" . }}
      key: {{ .Values.featureStore.auth.key }}
- name: FRAUDOPS_FEATURE_STORE_URL
  value: {{ printf "redis://:$(FEATURE_STORE_PASSWORD)@%s.%s.svc.%s:6379/0" (include "fraudops.componentName" (dict "ctx" . "component" "feature-store")) .Release.Namespace .Values.clusterDomain | quote }}
- name: FRAUDOPS_FEATURE_STORE_TIMEOUT_SECONDS
  value: {{ .Values.featureStore.timeoutSeconds | quote }}
- name: FRAUDOPS_FEATURE_STORE_KEY_TIMEOUT_SECONDS
  value: {{ .Values.featureStore.keyTimeoutSeconds | quote }}
{{- end }}
{{- end }}

{{- define "fraudops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels shared by every object of the release. */}}
{{- define "fraudops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fraudops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels. */}}
{{- define "fraudops.labels" -}}
helm.sh/chart: {{ include "fraudops.chart" . }}
{{ include "fraudops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fraudops
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component: (dict "ctx" $ "component" "scorer"). */}}
{{- define "fraudops.componentLabels" -}}
{{ include "fraudops.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "scorer"). */}}
{{- define "fraudops.componentSelectorLabels" -}}
{{ include "fraudops.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The image reference: repository:tag, the tag defaulting to appVersion and never `latest`. */}}
{{- define "fraudops.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString }}
{{- if or (eq $tag "latest") (eq $tag "") }}
{{- fail (printf "image.tag %q is not allowed: pin a version (the default is the chart appVersion %s)" $tag .Chart.AppVersion) }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* ServiceAccount of the scorer, the drift job and the exporter. */}}
{{- define "fraudops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fraudops.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* ServiceAccount of the retrain trigger. */}}
{{- define "fraudops.trigger.serviceAccountName" -}}
{{- if .Values.trigger.serviceAccount.create }}
{{- default (include "fraudops.componentName" (dict "ctx" . "component" "trigger")) .Values.trigger.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.trigger.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the trigger token Secret; fails with a clear message when missing. */}}
{{- define "fraudops.trigger.secretName" -}}
{{- required "trigger.auth.existingSecret is required: create a Secret with the bearer token (kubectl create secret generic fraudops-trigger-token --from-literal=token=$(openssl rand -hex 32)) and set its name" .Values.trigger.auth.existingSecret }}
{{- end }}

{{/* imagePullSecrets of every pod. */}}
{{- define "fraudops.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Object store endpoint and credentials as env entries. */}}
{{- define "fraudops.objectStoreEnv" -}}
{{- with .Values.objectStore.endpoint -}}
- name: FRAUDOPS_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.objectStore.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.objectStore.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.objectStore.secretAccessKeyKey }}
{{- end }}
{{- end }}

{{/* Paths inside the containers. */}}
{{- define "fraudops.bentomlHome" -}}/var/lib/fraudops/bentoml{{- end }}
{{- define "fraudops.predictionLogPath" -}}/var/lib/fraudops/predictions{{- end }}
{{- define "fraudops.monitorPath" -}}/var/lib/fraudops/monitor{{- end }}

{{/* Env of every fraudops container: caches and config go to the /tmp emptyDir (the root FS is read-only). */}}
{{- define "fraudops.commonEnv" -}}
- name: HOME
  value: /tmp
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
{{- end }}

{{/* Model registry env: FRAUDOPS_REGISTRY_URL is empty (local BentoML store) for source: pvc. */}}
{{- define "fraudops.modelEnv" -}}
- name: BENTOML_HOME
  value: {{ include "fraudops.bentomlHome" . }}
- name: BENTOML_DO_NOT_TRACK
  value: "True"
- name: FRAUDOPS_MODEL_TAG
  value: {{ .Values.model.tag | quote }}
- name: FRAUDOPS_REGISTRY_URL
  value: {{ eq .Values.model.source "objectStore" | ternary .Values.model.registryUrl "" | quote }}
{{- end }}

{{/* FRAUDOPS_PREDICTION_LOG: the URL, or the mounted claim. */}}
{{- define "fraudops.predictionLog" -}}
{{- if .Values.predictionLog.existingClaim }}
{{- include "fraudops.predictionLogPath" . }}
{{- else }}
{{- required "predictionLog.url or predictionLog.existingClaim is required" .Values.predictionLog.url }}
{{- end }}
{{- end }}

{{/* FRAUDOPS_MONITOR_DIR: the URL, or the mounted claim. */}}
{{- define "fraudops.monitorDir" -}}
{{- if .Values.driftMonitor.existingClaim }}
{{- include "fraudops.monitorPath" . }}
{{- else }}
{{- required "driftMonitor.reportsUrl or driftMonitor.existingClaim is required" .Values.driftMonitor.reportsUrl }}
{{- end }}
{{- end }}

{{/* The BentoML home volume: the model claim for source: pvc, else an emptyDir (the root FS is read-only). */}}
{{- define "fraudops.bentomlVolume" -}}
- name: bentoml-home
{{- if eq .Values.model.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ required "model.existingClaim is required when model.source is pvc" .Values.model.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: 2Gi
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end }}

{{- define "fraudops.bentomlVolumeMounts" -}}
- name: bentoml-home
  mountPath: {{ include "fraudops.bentomlHome" . }}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Default topology spread of a component: (dict "ctx" $ "component" "scorer"). */}}
{{- define "fraudops.defaultTopologySpread" -}}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "fraudops.componentSelectorLabels" . | nindent 6 }}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "fraudops.componentSelectorLabels" . | nindent 6 }}
{{- end }}

{{/* Trigger in-cluster URL for Alertmanager. */}}
{{- define "fraudops.trigger.alertsUrl" -}}
{{- printf "http://%s.%s.svc.%s:%v/alerts" (include "fraudops.componentName" (dict "ctx" . "component" "trigger")) .Release.Namespace .Values.clusterDomain .Values.trigger.service.port }}
{{- end }}
