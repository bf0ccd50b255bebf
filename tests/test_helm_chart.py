"""The Helm chart (helm/fraudops), rendered offline with helm-python-sdk.

Renders the defaults and a matrix of value combinations, lints strictly, validates every object against the
Kubernetes 1.29-1.34 OpenAPI schemas (kubernetes-validate, strict) and the Prometheus Operator objects against
the fields their CRDs require, and checks security policy, wiring (selectors, ports, names), the values schema,
the PrometheusRule (equal to monitoring/rules/fraudops.rules.yaml, read through a symlink) and the helm test hook.
"""

from __future__ import annotations

import copy
import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extras")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extras")

ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = ROOT / "helm" / "fraudops"
RULES = ROOT / "monitoring" / "rules" / "fraudops.rules.yaml"
KUBE_VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33", "1.34")
RELEASE, NAMESPACE = "fraudops", "fraudops"
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule", "AlertmanagerConfig"}

MONITORING_ON = {"monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                                "alertmanagerConfig": {"enabled": True}, "grafanaDashboard": {"enabled": True}}}
PVC = {"model": {"source": "pvc", "existingClaim": "fraudops-models"},
       "predictionLog": {"existingClaim": "fraudops-predictions"},
       "driftMonitor": {"existingClaim": "fraudops-monitor"},
       "trigger": {"backend": "local", "state": {"existingClaim": "fraudops-trigger-state"}}}
OBJECT_STORE = {"objectStore": {"endpoint": "http://seaweedfs.kubeflow:8333", "existingSecret": "fraudops-s3"},
                "model": {"registryUrl": "s3://bucket/fraudops"}}
MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "object-store": OBJECT_STORE,
    "pvc": PVC,
    "ingress": {"scorer": {"ingress": {"enabled": True, "className": "nginx",
                                       "tls": [{"secretName": "fraudops-tls", "hosts": ["fraudops.example.com"]}]}}},
    "hpa": {"scorer": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}}},
    "monitoring": MONITORING_ON,
    "backend-kfp": {"trigger": {"backend": "kfp", "kfp": {"projectedToken": True}}},
    "backend-local": {"trigger": {"backend": "local"}},
    "no-network-policy": {"networkPolicy": {"enabled": False}},
    "scorer-only": {"driftMonitor": {"enabled": False}, "trigger": {"enabled": False}},
    "everything": {**OBJECT_STORE, **MONITORING_ON,
                   "imagePullSecrets": [{"name": "registry"}], "commonLabels": {"team": "risk"},
                   "image": {"repository": "registry.example.com/fraudops", "tag": "0.1.0"},
                   "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/fraudops"}},
                   "scorer": {"extraEnv": [{"name": "LOG_LEVEL", "value": "debug"}], "extraArgs": ["--verbose"],
                              "autoscaling": {"enabled": True}, "ingress": {"enabled": True},
                              "service": {"type": "LoadBalancer"}},
                   "driftMonitor": {"timeZone": "Europe/Berlin", "extraArgs": ["--report-html"]}},
}


# --- rendering helpers -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chart() -> Any:
    loaded = helm_python.Chart.load(CHART_DIR)
    yield loaded
    loaded.close()


def render(chart: Any, values: dict[str, Any] | None = None, *, namespace: str = NAMESPACE) -> dict[str, str]:
    return chart.render(values or {}, name=RELEASE, namespace=namespace, is_install=True)


def objects(chart: Any, values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders (NOTES.txt excluded)."""
    return [doc for path, text in sorted(render(chart, values, **kwargs).items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = find(docs, kind, name)
    return doc


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(owner "Kind/name", pod spec) of every pod the chart can start."""
    specs = []
    for doc in docs:
        owner = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            specs.append((owner, doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "CronJob":
            specs.append((owner, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif doc["kind"] == "Pod":
            specs.append((owner, doc["spec"]))
    return specs


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return doc["spec"]["template"]["metadata"]["labels"]


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --- Prometheus Operator CRD schemas (the fields the operator's CRDs require, with their types) ----------------

_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_SECRET_KEY = {"type": "object", "required": ["key"],
               "properties": {"key": {"type": "string"}, "name": {"type": "string"},
                              "optional": {"type": "boolean"}}}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name", "namespace"],
             "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                                     "maxLength": 253},
                            "namespace": {"type": "string"}, "labels": _LABELS, "annotations": _LABELS}}
_SELECTOR = {"type": "object", "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}}}


def _crd(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": _METADATA,
                           "spec": spec}}


CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    # monitoring.coreos.com_servicemonitors.yaml: spec.required = [endpoints, selector]
    "ServiceMonitor": _crd("monitoring.coreos.com/v1", "ServiceMonitor", {
        "type": "object", "required": ["endpoints", "selector"],
        "properties": {
            "selector": _SELECTOR,
            "namespaceSelector": {"type": "object", "additionalProperties": False,
                                  "properties": {"any": {"type": "boolean"},
                                                 "matchNames": {"type": "array", "items": {"type": "string"}}}},
            "jobLabel": {"type": "string"},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                               "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                               "interval": {"type": "string", "pattern": _DURATION},
                               "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                               "honorLabels": {"type": "boolean"}}}},
        }}),
    # monitoring.coreos.com_prometheusrules.yaml: groups[].name (minLength 1) and rules[].expr are required
    "PrometheusRule": _crd("monitoring.coreos.com/v1", "PrometheusRule", {
        "type": "object", "required": ["groups"],
        "properties": {"groups": {"type": "array", "items": {
            "type": "object", "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "interval": {"type": "string", "pattern": _DURATION},
                "rules": {"type": "array", "items": {
                    "type": "object", "required": ["expr"], "additionalProperties": False,
                    "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                                   "expr": {"type": ["string", "integer"]},
                                   "for": {"type": "string", "pattern": _DURATION},
                                   "keep_firing_for": {"type": "string", "minLength": 1, "pattern": _DURATION},
                                   "labels": _LABELS, "annotations": _LABELS}}}}}}}}),
    # monitoring.coreos.com_alertmanagerconfigs.yaml (v1alpha1): receivers[].name, matchers[].name required
    "AlertmanagerConfig": _crd("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig", {
        "type": "object",
        "properties": {
            "route": {"type": "object", "properties": {
                "receiver": {"type": "string"},
                "groupBy": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
                "groupWait": {"type": "string", "minLength": 1, "pattern": _DURATION},
                "groupInterval": {"type": "string", "minLength": 1, "pattern": _DURATION},
                "repeatInterval": {"type": "string", "minLength": 1, "pattern": _DURATION},
                "continue": {"type": "boolean"},
                "matchers": {"type": "array", "items": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string", "minLength": 1}, "value": {"type": "string"},
                                   "matchType": {"enum": ["!=", "=", "=~", "!~"]},
                                   "regex": {"type": "boolean"}}}}}},
            "receivers": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "webhookConfigs": {"type": "array", "items": {
                        "type": "object",
                        "properties": {
                            "url": {"type": "string"}, "urlSecret": _SECRET_KEY,
                            "sendResolved": {"type": "boolean"},
                            "maxAlerts": {"type": "integer", "minimum": 0},
                            "timeout": {"type": "string", "pattern": _DURATION},
                            "httpConfig": {"type": "object", "properties": {
                                "authorization": {"type": "object", "properties": {
                                    "type": {"type": "string"}, "credentials": _SECRET_KEY}}}}}}}}}},
        }}),
}


@cache
def _validate_builtin(text: str, version: str) -> str | None:
    """Error message of kubernetes-validate for one object (JSON text) on one Kubernetes version, or None."""
    try:
        kubernetes_validate.validate(json.loads(text), version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:  # str() is empty: read .message
        return f"no schema: {exc.message}"
    except kubernetes_validate.ValidationError as exc:
        return f"{exc.message} at {'/'.join(map(str, exc.path))}"
    return None


def validation_errors(docs: list[dict[str, Any]]) -> list[str]:
    errors = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in OPERATOR_KINDS:
            validator = jsonschema.Draft7Validator(CRD_SCHEMAS[doc["kind"]])
            errors += [f"{where}: {e.message} at {'/'.join(map(str, e.path))}" for e in validator.iter_errors(doc)]
            continue
        text = json.dumps(doc, sort_keys=True)
        errors += [f"{where} on {v}: {err}" for v in KUBE_VERSIONS if (err := _validate_builtin(text, v))]
    return errors


def policy_violations(docs: list[dict[str, Any]]) -> list[str]:
    """Security and operability policy over every pod the chart renders."""
    problems = []
    for owner, spec in pod_specs(docs):
        psc = spec.get("securityContext", {})
        if not (psc.get("runAsNonRoot") and psc.get("runAsUser") == 10001):
            problems.append(f"{owner}: pod must run as non-root uid 10001")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{owner}: seccompProfile must be RuntimeDefault")
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                problems.append(f"{owner}: {key}")
        if any("hostPath" in volume for volume in spec.get("volumes", [])):
            problems.append(f"{owner}: hostPath volume")
        uses_api = owner.endswith("-trigger") and spec.get("serviceAccountName", "").endswith("-trigger")
        if spec.get("automountServiceAccountToken") is not False and not uses_api:
            problems.append(f"{owner}: automountServiceAccountToken must be false")
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{owner}/{container['name']}"
            csc = container.get("securityContext", {})
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem must be read-only")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation must be off")
            if csc.get("privileged"):
                problems.append(f"{where}: privileged")
            if csc.get("capabilities", {}).get("drop") != ["ALL"] or csc.get("capabilities", {}).get("add"):
                problems.append(f"{where}: capabilities must drop ALL and add none")
            if csc.get("runAsNonRoot") is not True:
                problems.append(f"{where}: runAsNonRoot")
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(part, {})):
                    problems.append(f"{where}: resources.{part} needs cpu and memory")
            image = container["image"]
            name, _, tag = image.rpartition(":")
            if "@sha256:" not in image and (not name or "/" in tag or tag in {"", "latest"}):
                problems.append(f"{where}: image {image!r} must carry a version tag (never latest)")
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            if owner.split("/")[0] != "Pod" and not (tmp and "emptyDir" in volumes[tmp[0]["name"]]):
                problems.append(f"{where}: needs a writable /tmp emptyDir (the root filesystem is read-only)")
            long_running = owner.split("/")[0] in {"Deployment", "StatefulSet", "DaemonSet"}
            if long_running and not {"readinessProbe", "livenessProbe"} <= set(container):
                problems.append(f"{where}: long-running container needs readiness and liveness probes")
    return problems


# --- the matrix ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(MATRIX))
def test_matrix_renders_valid_objects_for_kubernetes_1_29_to_1_34(chart: Any, case: str) -> None:
    docs = objects(chart, MATRIX[case])
    assert validation_errors(docs) == []
    assert policy_violations(docs) == []
    assert not find(docs, "Secret"), "the chart must never hold a secret value"
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "duplicate objects"
    for doc in docs:
        assert doc["metadata"]["namespace"] == NAMESPACE
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "fraudops"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "fraudops-0.1.0"


def test_kind_values_render_valid_objects(chart: Any) -> None:
    kind_values = yaml.safe_load((CHART_DIR / "values-kind.yaml").read_text())
    docs = objects(chart, merge(kind_values, {"image": {"tag": "0.1.0"}}))
    assert validation_errors(docs) == [] and policy_violations(docs) == []
    service = one(docs, "Service", "fraudops-scorer")
    assert service["spec"]["type"] == "NodePort" and service["spec"]["ports"][0]["nodePort"] == 30080
    kind_config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    host_ports = {m["containerPort"] for n in kind_config["nodes"] for m in n.get("extraPortMappings", [])}
    assert 30080 in host_ports, "kind-config.yaml must map the scorer NodePort"
    (trigger,) = find(docs, "Deployment", "fraudops-trigger")
    args = trigger["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--backend") + 1] == "job"
    assert json.loads(args[args.index("--job-resources") + 1]) == kind_values["trigger"]["job"]["resources"]
    assert args[args.index("--base-data") + 1] == "s3://fraudops/data/base.parquet"
    # every monitoring object of the Prometheus Operator add-on
    assert {d["kind"] for d in docs} >= {"ServiceMonitor", "PrometheusRule", "AlertmanagerConfig"}
    # a terminating scorer keeps serving for a moment (zero failed requests during a rollout)
    (scorer,) = find(docs, "Deployment", "fraudops-scorer")
    container = scorer["spec"]["template"]["spec"]["containers"][0]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]


def test_validators_are_not_no_ops(chart: Any) -> None:
    docs = objects(chart, MONITORING_ON)
    deployment = copy.deepcopy(one(docs, "Deployment", "fraudops-scorer"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    assert any("httpGett" in e for e in validation_errors([deployment]))
    rule = copy.deepcopy(one(docs, "PrometheusRule", "fraudops-monitoring"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "5 minutes"
    assert validation_errors([rule])
    monitor = copy.deepcopy(find(docs, "ServiceMonitor")[0])
    del monitor["spec"]["selector"]
    assert validation_errors([monitor])
    insecure = copy.deepcopy(deployment)
    insecure["spec"]["template"]["spec"]["containers"][0]["image"] = "fraudops:latest"
    insecure["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    assert len(policy_violations([insecure])) == 2
    with pytest.raises(AssertionError):
        assert _validate_builtin(json.dumps({"apiVersion": "v1", "kind": "Nope", "metadata": {}}), "1.31") is None


@pytest.mark.parametrize("kube_version", [f"v{v}.0" for v in KUBE_VERSIONS])
def test_lint_is_clean_in_strict_mode(kube_version: str) -> None:
    kind_values = yaml.safe_load((CHART_DIR / "values-kind.yaml").read_text())
    for values in ({}, MATRIX["everything"], PVC, kind_values):
        report = helm_python.lint(CHART_DIR, values, strict=True, kube_version=kube_version, namespace=NAMESPACE)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report["messages"]


# --- Chart.yaml, values.yaml, values.schema.json --------------------------------------------------------------

def test_chart_metadata(chart: Any) -> None:
    meta = chart.metadata
    assert meta["apiVersion"] == "v2" and meta["name"] == "fraudops"
    assert meta["appVersion"] == "0.1.0" and meta["kubeVersion"] == ">=1.29.0-0"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])


def test_image_tag_defaults_to_app_version_and_latest_is_refused(chart: Any) -> None:
    images = {c["image"] for _, spec in pod_specs(objects(chart)) for c in spec["containers"]}
    assert images == {"fraudops:0.1.0"}
    images = {c["image"] for _, spec in pod_specs(objects(chart, {"image": {"tag": "1.2.3"}}))
              for c in spec["containers"]}
    assert images == {"fraudops:1.2.3"}
    with pytest.raises(helm_python.HelmValuesError, match="/image/tag"):
        render(chart, {"image": {"tag": "latest"}})


@pytest.mark.parametrize(("values", "message"), [
    ({"scorer": {"replicaCount": "two"}}, "at '/scorer/replicaCount': got string, want integer"),
    ({"scorer": {"replicaCount": -1}}, "at '/scorer/replicaCount': minimum: got -1, want 0"),
    ({"scorer": {"workers": 0}}, "at '/scorer/workers'"),
    ({"scorer": {"workers": "many"}}, "at '/scorer/workers'"),
    ({"trigger": {"backend": "airflow"}}, "at '/trigger/backend': value must be one of 'kfp', 'job', 'local'"),
    ({"scorer": {"replicas": 3}}, "at '/scorer': additional properties 'replicas' not allowed"),
    ({"tolerations": []}, "at '': additional properties 'tolerations' not allowed"),
    ({"model": {"source": "s3"}}, "at '/model/source': value must be one of 'objectStore', 'pvc'"),
    ({"model": {"source": "pvc"}}, "at '/model/existingClaim': minLength: got 0, want 1"),
    ({"scorer": {"service": {"type": "ExternalName"}}}, "at '/scorer/service/type'"),
    ({"scorer": {"autoscaling": {"targetCPUUtilizationPercentage": 150}}},
     "at '/scorer/autoscaling/targetCPUUtilizationPercentage': maximum: got 150, want 100"),
    ({"driftMonitor": {"concurrencyPolicy": "Sometimes"}}, "at '/driftMonitor/concurrencyPolicy'"),
    ({"monitoring": {"serviceMonitor": {"interval": "30 seconds"}}},
     "at '/monitoring/serviceMonitor/interval': '30 seconds' does not match pattern"),
    ({"trigger": {"auth": {"existingSecret": "Not_A_Name"}}}, "at '/trigger/auth/existingSecret'"),
    ({"scorer": {"resources": {"requests": {"cpu": "lots"}, "limits": {}}}}, "at '/scorer/resources/requests/cpu'"),
])
def test_values_schema_rejects_bad_values_naming_them(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as raised:
        chart.validate_schema(values)
    assert message in str(raised.value)
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(message)):
        render(chart, values)


def test_values_schema_accepts_every_matrix_case(chart: Any) -> None:
    for values in MATRIX.values():
        chart.validate_schema(values)


def _schema_objects(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if "properties" in schema:
        found.append((path, schema))
        for key, sub in schema["properties"].items():
            found += _schema_objects(sub, f"{path}.{key}")
    return found


def test_values_schema_is_strict() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    checked = 0
    for path, sub in _schema_objects(schema):
        if path.endswith("Probe"):
            continue  # Kubernetes Probe objects are passed through as they are
        assert sub.get("additionalProperties") is False, f"{path or '(root)'} accepts unknown keys"
        checked += 1
    assert checked > 30
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(values)


def test_every_value_is_documented_above_its_key() -> None:
    """Each value in values.yaml has a `# --` comment on the line above its key; only sections (strict objects
    whose own keys are documented) may go without."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    undocumented = []

    def walk(node: yaml.MappingNode, sub: dict[str, Any], path: str) -> None:
        for key_node, value_node in node.value:
            key = key_node.value
            child = sub.get("properties", {}).get(key, {})
            above = key_node.start_mark.line - 1
            while above >= 0 and lines[above].strip().startswith("#") and not lines[above].strip().startswith(
                    "# --"):
                above -= 1  # continuation lines of the comment
            if above >= 0 and lines[above].strip().startswith("# --"):
                continue  # a documented value (possibly an object, e.g. resources)
            if child.get("additionalProperties") is False and isinstance(value_node, yaml.MappingNode):
                walk(value_node, child, f"{path}{key}.")  # a section: its keys carry the documentation
            else:
                undocumented.append(path + key)

    walk(yaml.compose("\n".join(lines)), schema, "")
    assert undocumented == []


# --- components --------------------------------------------------------------------------------------------------

def test_default_objects(chart: Any) -> None:
    docs = objects(chart)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == sorted([
        ("ConfigMap", "fraudops-scorer"), ("ConfigMap", "fraudops-drift-policy"), ("CronJob", "fraudops-drift"),
        ("Deployment", "fraudops-drift-exporter"), ("Deployment", "fraudops-scorer"),
        ("Deployment", "fraudops-trigger"),
        ("NetworkPolicy", "fraudops-drift"), ("NetworkPolicy", "fraudops-drift-exporter"),
        ("NetworkPolicy", "fraudops-feature-store"), ("Service", "fraudops-feature-store"),
        ("StatefulSet", "fraudops-feature-store"),
        ("NetworkPolicy", "fraudops-scorer"), ("NetworkPolicy", "fraudops-trigger"),
        ("PodDisruptionBudget", "fraudops-scorer"), ("Pod", "fraudops-test-score"),
        ("Role", "fraudops-trigger"), ("RoleBinding", "fraudops-trigger"),
        ("Service", "fraudops-drift-exporter"), ("Service", "fraudops-scorer"), ("Service", "fraudops-trigger"),
        ("ServiceAccount", "fraudops"), ("ServiceAccount", "fraudops-feature-store"),
        ("ServiceAccount", "fraudops-trigger"),
    ])


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_scorer_deployment(chart: Any) -> None:
    docs = objects(chart, OBJECT_STORE)
    deployment = one(docs, "Deployment", "fraudops-scorer")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    (container,) = pod["containers"]
    assert container["command"] == ["fraudops"]
    # `fraudops serve` sets FRAUDOPS_MODEL_TAG from --model (default champion): pass the value explicitly
    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", "3000", "--model", "champion"]
    assert container["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 300
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    env = _env(container)
    assert env["FRAUDOPS_MODEL_TAG"] == "champion"
    assert env["FRAUDOPS_REGISTRY_URL"] == "s3://bucket/fraudops"
    assert env["FRAUDOPS_S3_ENDPOINT"] == "http://seaweedfs.kubeflow:8333"
    assert env["BENTOML_HOME"] == "/var/lib/fraudops/bentoml"
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "fraudops-s3", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "fraudops-s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    config = one(docs, "ConfigMap", "fraudops-scorer")["data"]
    assert config == {"FRAUDOPS_PREDICTION_LOG": "s3://fraudops/logs", "FRAUDOPS_POLL_SECONDS": "60",
                      "FRAUDOPS_MAX_BATCH": "1000", "FRAUDOPS_WORKERS": "1"}
    assert container["envFrom"] == [{"configMapRef": {"name": "fraudops-scorer"}}]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/lib/fraudops/bentoml"]] and "emptyDir" in volumes[mounts["/tmp"]]
    # /feedback and /reload: the token comes from the chart's Secret, as a file only the scorer user reads
    assert env["FRAUDOPS_INTERNAL_TOKEN_FILE"] == "/var/run/secrets/fraudops-scorer/token"
    assert volumes[mounts["/var/run/secrets/fraudops-scorer"]]["secret"] == {
        "secretName": "fraudops-scorer-token", "defaultMode": 0o400, "items": [{"key": "token", "path": "token"}]}


def test_feature_store_runs_redis_from_the_project_image_and_the_scorer_shares_it(chart: Any) -> None:
    docs = objects(chart, OBJECT_STORE)
    store = one(docs, "StatefulSet", "fraudops-feature-store")
    pod = store["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    scorer = one(docs, "Deployment", "fraudops-scorer")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == scorer["image"] and store["spec"]["replicas"] == 1
    # its own identity: not the scorer's ServiceAccount (which may carry object-store cloud roles)
    assert pod["serviceAccountName"] == "fraudops-feature-store" and pod["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount", "fraudops-feature-store")["automountServiceAccountToken"] is False
    script = container["command"][-1]
    assert "exec redis-server /tmp/redis.conf" in script and "--maxmemory 768mb --maxmemory-policy noeviction" in script
    assert "--appendonly no" in script and "requirepass" in script and "env" not in container  # from a file
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["password"]["secret"]["secretName"] == "fraudops-feature-store"
    assert "emptyDir" in volumes["data"] and "volumeClaimTemplates" not in store["spec"]
    service = one(docs, "Service", "fraudops-feature-store")
    assert service["spec"]["clusterIP"] == "None" and store["spec"]["serviceName"] == "fraudops-feature-store"
    env = _env(scorer)
    assert env["FEATURE_STORE_PASSWORD"] == {"secretKeyRef": {"name": "fraudops-feature-store", "key": "password"}}
    assert env["FRAUDOPS_FEATURE_STORE_URL"] == ("redis://:$(FEATURE_STORE_PASSWORD)@fraudops-feature-store."
                                                 f"{NAMESPACE}.svc.cluster.local:6379/0")
    assert env["FRAUDOPS_FEATURE_STORE_TIMEOUT_SECONDS"] == "0.05"
    names = [e["name"] for e in scorer["env"]]  # Kubernetes splices only variables defined before
    assert names.index("FEATURE_STORE_PASSWORD") < names.index("FRAUDOPS_FEATURE_STORE_URL")
    policy = one(docs, "NetworkPolicy", "fraudops-feature-store")["spec"]
    assert policy["ingress"] == [{"from": [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "fraudops", "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "scorer"}}}], "ports": [{"port": "redis", "protocol": "TCP"}]}]
    # persistence: a claim per pod, the append-only file
    kept = objects(chart, merge(OBJECT_STORE, {"featureStore": {"persistence": {
        "enabled": True, "size": "10Gi", "storageClass": "fast"}, "maxMemory": "2gb"}}))
    assert validation_errors(kept) == [] and policy_violations(kept) == []
    store = one(kept, "StatefulSet", "fraudops-feature-store")
    (claim,) = store["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi" and claim["spec"]["storageClassName"] == "fast"
    assert "data" not in {v["name"] for v in store["spec"]["template"]["spec"]["volumes"]}
    assert "--appendonly yes" in store["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    # off: no store, and the scorer serves the frozen snapshot
    off = objects(chart, merge(OBJECT_STORE, {"featureStore": {"enabled": False}}))
    assert not [d for d in off if "feature-store" in d["metadata"]["name"]]
    assert "FRAUDOPS_FEATURE_STORE_URL" not in _env(one(off, "Deployment", "fraudops-scorer")["spec"]["template"][
        "spec"]["containers"][0])
    with pytest.raises(helm_python.HelmRenderError, match=r"featureStore\.auth\.existingSecret is required"):
        render(chart, merge(OBJECT_STORE, {"featureStore": {"auth": {"existingSecret": ""}}}))
    with pytest.raises(helm_python.HelmValuesError, match="/featureStore/maxMemory"):
        render(chart, merge(OBJECT_STORE, {"featureStore": {"maxMemory": "lots"}}))


def test_the_internal_token_secret_is_the_users(chart: Any) -> None:
    docs = objects(chart, {"scorer": {"internalToken": {"existingSecret": "scoring-internal", "key": "bearer"}}})
    pod = one(docs, "Deployment", "fraudops-scorer")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "internal-token"]
    assert volume["secret"]["secretName"] == "scoring-internal"
    assert volume["secret"]["items"] == [{"key": "bearer", "path": "token"}]
    with pytest.raises(helm_python.HelmError, match=r"scorer\.internalToken\.existingSecret is required"):
        render(chart, {"scorer": {"internalToken": {"existingSecret": ""}}})


def test_scorer_config_checksum_rolls_pods(chart: Any) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = one(objects(chart, values), "Deployment", "fraudops-scorer")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"scorer": {"pollSeconds": 5}})
    assert re.fullmatch(r"[0-9a-f]{64}", checksum({}))


def test_pvc_model_source(chart: Any) -> None:
    docs = objects(chart, PVC)
    for owner, spec in pod_specs(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            env = _env(container)
            if "FRAUDOPS_REGISTRY_URL" in env:
                assert env["FRAUDOPS_REGISTRY_URL"] == "", owner  # the local BentoML store on the claim
                mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["BENTOML_HOME"])
                assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "fraudops-models", owner
            if "FRAUDOPS_PREDICTION_LOG" in env:
                assert env["FRAUDOPS_PREDICTION_LOG"] == "/var/lib/fraudops/predictions"
    scorer = one(docs, "Deployment", "fraudops-scorer")["spec"]["template"]["spec"]
    assert {"name": "prediction-log", "persistentVolumeClaim": {"claimName": "fraudops-predictions"}} in scorer[
        "volumes"]
    assert one(docs, "ConfigMap", "fraudops-scorer")["data"]["FRAUDOPS_PREDICTION_LOG"] == (
        "/var/lib/fraudops/predictions")
    trigger = one(docs, "Deployment", "fraudops-trigger")["spec"]["template"]["spec"]
    state = next(v for v in trigger["volumes"] if v["name"] == "state")
    assert state == {"name": "state", "persistentVolumeClaim": {"claimName": "fraudops-trigger-state"}}
    exporter = one(docs, "Deployment", "fraudops-drift-exporter")["spec"]["template"]["spec"]
    assert _env(exporter["containers"][0])["FRAUDOPS_MONITOR_DIR"] == "/var/lib/fraudops/monitor"
    # the exporter reads the champion pointer from the model store
    assert {"name": "bentoml-home", "persistentVolumeClaim": {"claimName": "fraudops-models"}} in exporter["volumes"]


def test_ingress_hpa_and_pdb(chart: Any) -> None:
    docs = objects(chart, merge(MATRIX["ingress"], MATRIX["hpa"]))
    ingress = one(docs, "Ingress", "fraudops-scorer")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]  # the internal endpoints stay inside the cluster
    assert (path["path"], path["pathType"]) == ("/score", "Exact")
    assert path["backend"]["service"] == {"name": "fraudops-scorer", "port": {"name": "http"}}
    hpa = one(docs, "HorizontalPodAutoscaler", "fraudops-scorer")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fraudops-scorer"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in one(docs, "Deployment", "fraudops-scorer")["spec"]
    assert one(docs, "PodDisruptionBudget", "fraudops-scorer")["spec"]["maxUnavailable"] == 1
    assert not find(objects(chart), "HorizontalPodAutoscaler") and not find(objects(chart), "Ingress")
    with pytest.raises(helm_python.HelmRenderError, match="minReplicas must not be greater"):
        render(chart, {"scorer": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}})


def test_drift_cronjob_and_exporter(chart: Any) -> None:
    docs = objects(chart)
    cron = one(docs, "CronJob", "fraudops-drift")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and cron["schedule"] == "5 * * * *"
    assert cron["successfulJobsHistoryLimit"] == 3 and cron["failedJobsHistoryLimit"] == 3
    job = cron["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == 1800 and job["backoffLimit"] == 1
    (container,) = job["template"]["spec"]["containers"]
    assert container["args"] == ["monitor", "drift", "--window", "1h", "--policy",
                                 "/etc/fraudops/drift-policy/policy.yaml"]
    assert {"name": "drift-policy", "mountPath": "/etc/fraudops/drift-policy", "readOnly": True} in container[
        "volumeMounts"]
    assert {"name": "drift-policy", "configMap": {"name": "fraudops-drift-policy"}} in job["template"]["spec"][
        "volumes"]
    assert _env(container)["FRAUDOPS_MONITOR_DIR"] == "s3://fraudops/monitor"
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    exporter = one(docs, "Deployment", "fraudops-drift-exporter")["spec"]["template"]["spec"]["containers"][0]
    assert exporter["args"] == ["monitor", "exporter", "--host", "0.0.0.0", "--port", "9108"]
    assert exporter["readinessProbe"]["httpGet"]["path"] == "/healthz"
    service = one(docs, "Service", "fraudops-drift-exporter")
    assert service["spec"]["ports"][0]["name"] == "metrics" and service["spec"]["ports"][0]["port"] == 9108
    minimal = objects(chart, MATRIX["scorer-only"])
    assert not find(minimal, "CronJob") and not find(minimal, "Deployment", "fraudops-drift-exporter")
    assert not find(minimal, "Deployment", "fraudops-trigger") and not find(minimal, "Role")


def test_drift_policy_goes_from_values_to_the_drift_job(chart: Any, tmp_path: Path) -> None:
    from fraudops.monitoring.drift import DriftPolicy, EntityDriftPolicy

    default = one(objects(chart), "ConfigMap", "fraudops-drift-policy")["data"]["policy.yaml"]
    (tmp_path / "default.yaml").write_text(default)
    assert DriftPolicy.from_file(tmp_path / "default.yaml") == DriftPolicy()
    tuned = {"drift_share": 0.15, "feature_weights": {"amount": 2.0}, "max_pr_auc_drop": 0.1}
    text = one(objects(chart, {"driftMonitor": {"policy": tuned}}), "ConfigMap", "fraudops-drift-policy")["data"][
        "policy.yaml"]
    (tmp_path / "tuned.yaml").write_text(text)
    assert DriftPolicy.from_file(tmp_path / "tuned.yaml") == DriftPolicy(**tuned)
    # the values schema is DriftPolicy's: a misspelt or out-of-range key fails at install, naming it
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())["properties"]["driftMonitor"]["properties"]
    assert set(schema["policy"]["properties"]) == set(DriftPolicy.model_fields)
    entity = schema["policy"]["properties"]["entity_features"]["properties"]
    assert set(entity) == set(EntityDriftPolicy.model_fields)
    text = one(objects(chart, {"driftMonitor": {"policy": {"entity_features": {"drift_share": 0.6}}}}), "ConfigMap",
               "fraudops-drift-policy")["data"]["policy.yaml"]
    (tmp_path / "entity.yaml").write_text(text)
    assert DriftPolicy.from_file(tmp_path / "entity.yaml").entity_features == EntityDriftPolicy(drift_share=0.6)
    with pytest.raises(helm_python.HelmValuesError, match="/driftMonitor/policy/entity_features/drift_share"):
        render(chart, {"driftMonitor": {"policy": {"entity_features": {"drift_share": 0}}}})
    with pytest.raises(helm_python.HelmValuesError, match="drift_shar"):
        render(chart, {"driftMonitor": {"policy": {"drift_shar": 0.2}}})
    with pytest.raises(helm_python.HelmValuesError, match="/driftMonitor/policy/drift_share"):
        render(chart, {"driftMonitor": {"policy": {"drift_share": 1.5}}})



def test_rollout_release_goes_from_values_to_the_trigger(chart: Any, tmp_path: Path) -> None:
    from fraudops.rollout import RolloutPolicy

    def trigger_args(docs: list[dict[str, Any]]) -> list[str]:
        return one(docs, "Deployment", "fraudops-trigger")["spec"]["template"]["spec"]["containers"][0]["args"]

    default = objects(chart)
    assert trigger_args(default)[-2:] == ["--release", "promote"]
    assert not [d for d in default if d["metadata"]["name"] == "fraudops-rollout-policy"]
    tuned = {"shadow": {"min_rows": 5000, "min_minutes": 60}, "max_decline_rate_increase": 0.01}
    docs = objects(chart, {"trigger": {"release": "rollout", "rollout": {
        "every": "2m", "prometheusUrl": "http://prometheus-operated.monitoring:9090", "policy": tuned}}})
    args = trigger_args(docs)
    assert args[args.index("--release"):] == [
        "--release", "rollout", "--rollout-policy", "/etc/fraudops/rollout/policy.yaml", "--rollout-every", "2m",
        "--prometheus-url", "http://prometheus-operated.monitoring:9090"]
    pod = one(docs, "Deployment", "fraudops-trigger")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "rollout-policy"]
    assert volume["configMap"]["name"] == "fraudops-rollout-policy"
    text = one(docs, "ConfigMap", "fraudops-rollout-policy")["data"]["policy.yaml"]
    (tmp_path / "tuned.yaml").write_text(text)
    assert RolloutPolicy.from_file(tmp_path / "tuned.yaml") == RolloutPolicy(**tuned)
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())["properties"]["trigger"]["properties"]
    assert set(schema["rollout"]["properties"]["policy"]["properties"]) == set(RolloutPolicy.model_fields)
    with pytest.raises(helm_python.HelmValuesError, match="max_decline_rate_increas"):
        render(chart, {"trigger": {"release": "rollout", "rollout": {"policy": {"max_decline_rate_increas": 1}}}})
    with pytest.raises(helm_python.HelmValuesError, match="release"):
        render(chart, {"trigger": {"release": "yolo"}})

def test_trigger_job_backend_gets_least_privilege_rbac(chart: Any) -> None:
    docs = objects(chart)
    role = one(docs, "Role", "fraudops-trigger")
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]},
    ]
    binding = one(docs, "RoleBinding", "fraudops-trigger")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fraudops-trigger"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fraudops-trigger", "namespace": NAMESPACE}]
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    pod = one(docs, "Deployment", "fraudops-trigger")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "fraudops-trigger" and pod["automountServiceAccountToken"] is True
    (container,) = pod["containers"]
    assert container["args"] == ["trigger", "serve", "--host", "0.0.0.0", "--port", "8080", "--backend", "job",
                                 "--state-dir", "/var/lib/fraudops/trigger",
                                 "--token-file", "/var/run/secrets/fraudops-trigger/token",
                                 "--cooldown", "6h", "--recent-window", "7d",
                                 "--registry-url", "s3://fraudops/registry", "--image", "fraudops:0.1.0",
                                 "--namespace", NAMESPACE, "--service-account", "fraudops",
                                 "--job-resources", json.dumps({"limits": {"memory": "4Gi"},
                                                                "requests": {"cpu": "1", "memory": "2Gi"}},
                                                               separators=(",", ":")),
                                 "--release", "promote"]
    token = next(v for v in pod["volumes"] if v["name"] == "token")
    assert token["secret"]["secretName"] == "fraudops-trigger-token"
    assert token["secret"]["items"] == [{"key": "token", "path": "token"}]
    assert {"name": "token", "mountPath": "/var/run/secrets/fraudops-trigger", "readOnly": True} in container[
        "volumeMounts"]
    assert _env(container)["FRAUDOPS_PREDICTION_LOG"] == "s3://fraudops/logs"
    assert one(docs, "Deployment", "fraudops-trigger")["spec"]["strategy"] == {"type": "Recreate"}


def test_trigger_kfp_backend_has_no_kubernetes_rights(chart: Any) -> None:
    docs = objects(chart, {"trigger": {"backend": "kfp", "kfp": {"host": "https://kfp.example.com"}}})
    assert not find(docs, "Role") and not find(docs, "RoleBinding")
    pod = one(docs, "Deployment", "fraudops-trigger")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    args = pod["containers"][0]["args"]
    assert args[args.index("--backend") + 1] == "kfp"
    assert args[args.index("--kfp-host") + 1] == "https://kfp.example.com"
    assert one(docs, "ServiceAccount", "fraudops-trigger")["automountServiceAccountToken"] is False
    projected = objects(chart, MATRIX["backend-kfp"])
    pod = one(projected, "Deployment", "fraudops-trigger")["spec"]["template"]["spec"]
    (source,) = next(v for v in pod["volumes"] if v["name"] == "kfp-token")["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    assert pod["automountServiceAccountToken"] is False


def test_trigger_passes_the_object_store_to_the_runs_it_launches(chart: Any) -> None:
    docs = objects(chart, merge(OBJECT_STORE, {"trigger": {"backend": "kfp", "exportRoot": "s3://bucket/exports",
                                                           "baseData": "s3://bucket/train.parquet"}}))
    args = one(docs, "Deployment", "fraudops-trigger")["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = dict(zip(args[2::2], args[3::2], strict=True))
    assert flags["--s3-secret"] == "fraudops-s3" and flags["--s3-endpoint"] == "http://seaweedfs.kubeflow:8333"
    assert flags["--registry-url"] == "s3://bucket/fraudops" and flags["--image"] == "fraudops:0.1.0"
    assert flags["--export-root"] == "s3://bucket/exports" and flags["--base-data"] == "s3://bucket/train.parquet"
    assert "--namespace" not in flags and "--service-account" not in flags
    local = one(objects(chart, PVC), "Deployment", "fraudops-trigger")["spec"]["template"]["spec"]
    args = local["containers"][0]["args"]
    assert "--image" not in args and "--registry-url" not in args
    assert local["automountServiceAccountToken"] is False


@pytest.mark.parametrize("backend", ["job", "kfp"])
def test_pvc_models_need_the_local_backend(chart: Any, backend: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=r"use trigger\.backend=local"):
        render(chart, merge(PVC, {"trigger": {"backend": backend}}))


def test_trigger_secret_name_is_required(chart: Any) -> None:
    with pytest.raises(helm_python.HelmError, match="existingSecret"):
        render(chart, {"trigger": {"auth": {"existingSecret": ""}}})


def test_network_policies(chart: Any) -> None:
    docs = objects(chart)
    by_name = {d["metadata"]["name"]: d["spec"] for d in find(docs, "NetworkPolicy")}
    assert set(by_name) == {"fraudops-scorer", "fraudops-drift-exporter", "fraudops-trigger", "fraudops-drift",
                            "fraudops-feature-store"}
    assert all(spec["policyTypes"] == ["Ingress"] for spec in by_name.values())
    assert "ingress" not in by_name["fraudops-drift"]  # the drift job admits nothing
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    alertmanager = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "alertmanager"}}}
    (scorer,) = by_name["fraudops-scorer"]["ingress"]
    assert scorer["from"] == [{"podSelector": {}}, prometheus]
    assert scorer["ports"] == [{"port": "http", "protocol": "TCP"}]
    (exporter,) = by_name["fraudops-drift-exporter"]["ingress"]
    assert exporter["from"] == [prometheus] and exporter["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    (trigger,) = by_name["fraudops-trigger"]["ingress"]
    assert trigger["from"] == [alertmanager]
    # scraped trigger: Prometheus is admitted too; ingress controller admitted to the scorer when the Ingress is on
    docs = objects(chart, merge(MONITORING_ON, MATRIX["ingress"]))
    by_name = {d["metadata"]["name"]: d["spec"] for d in find(docs, "NetworkPolicy")}
    assert by_name["fraudops-trigger"]["ingress"][0]["from"] == [alertmanager, prometheus]
    assert by_name["fraudops-scorer"]["ingress"][0]["from"][2]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
    assert not find(objects(chart, MATRIX["no-network-policy"]), "NetworkPolicy")


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("case", ["defaults", "everything", "pvc"])
def test_selectors_and_ports_line_up(chart: Any, case: str) -> None:
    docs = objects(chart, MATRIX[case])
    workloads = [d for d in docs if d["kind"] in {"Deployment", "StatefulSet", "CronJob"}]
    for workload in [d for d in workloads if d["kind"] != "CronJob"]:
        assert _matches(workload["spec"]["selector"]["matchLabels"], pod_labels(workload))
    for service in find(docs, "Service"):
        (target,) = [w for w in workloads if _matches(service["spec"]["selector"], pod_labels(w))]
        port_names = {p["name"] for c in pod_specs([target])[0][1]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for policy in find(docs, "NetworkPolicy"):
        (target,) = [w for w in workloads if _matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels(w))]
        port_names = {p["name"] for c in pod_specs([target])[0][1]["containers"] for p in c.get("ports", [])}
        for rule in policy["spec"].get("ingress", []):
            assert {p["port"] for p in rule["ports"]} <= port_names
    for monitor in find(docs, "ServiceMonitor"):
        (service,) = [s for s in find(docs, "Service")
                      if _matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    for pdb in find(docs, "PodDisruptionBudget"):
        assert any(_matches(pdb["spec"]["selector"]["matchLabels"], pod_labels(w)) for w in workloads)


# --- monitoring objects ------------------------------------------------------------------------------------------

def test_rules_reach_the_chart_through_a_symlink_not_a_copy() -> None:
    link = CHART_DIR / "files" / "fraudops.rules.yaml"
    assert link.is_symlink()
    assert os.readlink(link) == "../../../monitoring/rules/fraudops.rules.yaml"
    assert link.resolve() == RULES.resolve()


def test_prometheus_rule_equals_the_rules_file(chart: Any) -> None:
    rule = one(objects(chart, MONITORING_ON), "PrometheusRule", "fraudops-monitoring")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    labelled = objects(chart, {"monitoring": {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}}})
    assert one(labelled, "PrometheusRule", "fraudops-monitoring")["metadata"]["labels"]["release"] == "kps"


def test_service_monitors(chart: Any) -> None:
    docs = objects(chart, merge(MONITORING_ON, {"monitoring": {"serviceMonitor": {"labels": {"release": "kps"}}}}))
    monitors = {d["metadata"]["name"]: d for d in find(docs, "ServiceMonitor")}
    assert set(monitors) == {"fraudops-scorer", "fraudops-drift-exporter", "fraudops-trigger"}
    for monitor in monitors.values():
        assert monitor["metadata"]["labels"]["release"] == "kps"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics" and endpoint["interval"] == "30s"
    minimal = objects(chart, merge(MATRIX["scorer-only"], MONITORING_ON | {
        "monitoring": {"serviceMonitor": {"enabled": True}}}))
    assert [d["metadata"]["name"] for d in find(minimal, "ServiceMonitor")] == ["fraudops-scorer"]


def test_alertmanager_config_routes_retrain_alerts_to_the_trigger(chart: Any) -> None:
    config = one(objects(chart, MONITORING_ON), "AlertmanagerConfig", "fraudops-trigger")["spec"]
    route = config["route"]
    assert route["receiver"] == "fraudops-retrain"
    assert route["matchers"] == [{"name": "action", "value": "retrain", "matchType": "="}]
    assert route["groupBy"] == ["alertname", "model"] and route["repeatInterval"] == "12h"
    (receiver,) = config["receivers"]
    (hook,) = receiver["webhookConfigs"]
    assert hook["url"] == "http://fraudops-trigger.fraudops.svc.cluster.local:8080/alerts"
    assert hook["httpConfig"]["authorization"] == {
        "type": "Bearer", "credentials": {"name": "fraudops-trigger-token", "key": "token"}}
    assert hook["sendResolved"] is False
    with pytest.raises(helm_python.HelmRenderError, match=r"trigger\.enabled"):
        render(chart, merge(MONITORING_ON, {"trigger": {"enabled": False}}))


SCORER_METRICS = {"fraudops_scorer_requests_total", "fraudops_scorer_rows_scored_total",
                  "fraudops_scorer_request_latency_seconds_bucket", "fraudops_scorer_score_bucket",
                  "fraudops_scorer_decisions_total", "fraudops_scorer_validation_errors_total",
                  "fraudops_scorer_model_info", "fraudops_scorer_predlog_write_failures_total",
                  "fraudops_scorer_predlog_wal_write_failures_total", "fraudops_scorer_feature_store_requests_total",
                  "fraudops_scorer_feature_store_fallbacks_total", "fraudops_scorer_feature_store_reseeds_total",
                  "fraudops_scorer_feature_store_pending_writes", "fraudops_scorer_feature_store_dropped_writes_total",
                  "fraudops_scorer_role_decisions_total",
                  "fraudops_scorer_role_model_seconds_bucket", "fraudops_scorer_shadow_dropped_total",
                  "fraudops_scorer_shadow_failures_total"}
DRIFT_METRICS = {"fraudops_drift_share_drifted_features", "fraudops_drift_detected", "fraudops_drift_score_drift",
                 "fraudops_drift_feature_drift", "fraudops_drift_decision_rate", "fraudops_drift_rows",
                 "fraudops_drift_labelled_rows", "fraudops_drift_pr_auc", "fraudops_drift_recall_at_1pct_fpr",
                 "fraudops_drift_last_run_timestamp_seconds", "fraudops_drift_insufficient_data",
                 "fraudops_drift_score_drifted", "fraudops_drift_degraded"}
TRIGGER_METRICS = {"fraudops_trigger_alerts_received_total", "fraudops_trigger_alerts_deduplicated_total",
                   "fraudops_trigger_retrains_launched_total", "fraudops_trigger_retrains_succeeded_total",
                   "fraudops_trigger_retrains_failed_total", "fraudops_rollout_decisions_total",
                   "fraudops_rollout_decline_rate", "fraudops_rollout_disagreement"}


def test_grafana_dashboard(chart: Any) -> None:
    docs = objects(chart, {"monitoring": {"grafanaDashboard": {"enabled": True, "namespace": "grafana"}}})
    (config_map,) = find(docs, "ConfigMap", "fraudops-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "grafana"
    dashboard = json.loads(config_map["data"]["fraudops.json"])
    assert dashboard == json.loads((CHART_DIR / "files" / "grafana-dashboard.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in ("Score distribution", "Decisions", "Latency p50 / p99", "Request rate by outcome",
                   "Error ratio (server-side failures)", "Share of drifted features", "Score drift", "Retrains",
                   "Decisions by role", "Controller: stage comparison"):
        assert wanted in titles
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bfraudops_[a-z0-9_]+", e)}
    assert used <= SCORER_METRICS | DRIFT_METRICS | TRIGGER_METRICS, used - (SCORER_METRICS | DRIFT_METRICS |
                                                                            TRIGGER_METRICS)
    assert {"fraudops_scorer_score_bucket", "fraudops_trigger_retrains_launched_total"} <= used


def test_rules_use_only_contract_metrics() -> None:
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\bfraudops_[a-z0-9_]+", e)}
    assert used <= SCORER_METRICS | DRIFT_METRICS | TRIGGER_METRICS


# --- helm test hook and NOTES ------------------------------------------------------------------------------------

def test_helm_test_hook_scores_one_transaction(chart: Any) -> None:
    (pod,) = find(objects(chart), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "hook-succeeded" in pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    (container,) = pod["spec"]["containers"]
    env = _env(container)
    assert env["SCORER_URL"] == "http://fraudops-scorer.fraudops.svc:3000"
    transaction = json.loads(env["TRANSACTION"])
    assert {"amount", "purchase_time", "signup_time", "country", "payment_method"} <= set(transaction)
    script = container["command"][-1]
    assert "/readyz" in script and "/score" in script
    compile(script, "helm-test", "exec")
    assert pod["spec"]["restartPolicy"] == "Never"
    custom = {"purchase_value": 12.5, "source": "Ads"}
    (pod,) = find(objects(chart, {"helmTest": {"transaction": custom}}), "Pod")
    assert json.loads(_env(pod["spec"]["containers"][0])["TRANSACTION"]) == custom


def test_notes_explain_how_to_reach_the_scorer(chart: Any) -> None:
    notes = render(chart)["fraudops/templates/NOTES.txt"]
    assert "port-forward service/fraudops-scorer 3000:3000" in notes
    assert "create secret generic fraudops-trigger-token" in notes
    with_ingress = render(chart, MATRIX["ingress"])["fraudops/templates/NOTES.txt"]
    assert "https://fraudops.example.com/" in with_ingress


def test_other_release_names_and_namespaces(chart: Any) -> None:
    docs = [doc for path, text in chart.render({}, name="fraud-eu", namespace="risk", is_install=True).items()
            if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]
    names = {d["metadata"]["name"] for d in docs}
    assert "fraud-eu-fraudops-scorer" in names
    assert all(d["metadata"]["namespace"] == "risk" for d in docs)
    long_docs = [doc for path, text in chart.render({}, name="r" * 53, namespace="risk").items()
                 if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]
    assert all(len(d["metadata"]["name"]) <= 52 for d in find(long_docs, "CronJob"))  # CronJob name limit
    assert all(len(d["metadata"]["name"]) <= 63 and "--" not in d["metadata"]["name"] for d in long_docs)


def test_packaged_chart_carries_the_rules_file_content(tmp_path: Path) -> None:
    archive = helm_python.package(CHART_DIR, destination=tmp_path)
    packaged = helm_python.Chart.load_archive(Path(archive).read_bytes())
    try:
        assert not any(f["name"].startswith("values-kind") for f in packaged.files)
        docs = [doc for path, text in packaged.render(MONITORING_ON, name=RELEASE, namespace=NAMESPACE).items()
                if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]
        rule = one(docs, "PrometheusRule", "fraudops-monitoring")
        assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    finally:
        packaged.close()
