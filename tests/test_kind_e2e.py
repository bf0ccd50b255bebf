"""End to end on a real Kubernetes: the cluster of `make kind-up` (run through `make kind-e2e`).

In order, against the release `make kind-up` installed (add-ons: SeaweedFS as the object store, the Prometheus
Operator with a Prometheus and an Alertmanager):

1. the release is deployed, every pod Ready, every fraudops container non-root with a read-only root filesystem,
   and the namespace's Pod Security admission refuses a pod that may run as root; each scorer pod runs the
   chart's number of BentoML workers, and `FRAUDOPS_WORKERS=auto` counts a pod's CPU limit;
2. `helm test` passes; the scorer Service scores, refuses bad input, exports its metrics;
3. `helm upgrade` to a new model (trained by `fraudops pipeline job`) rolls the scorer while a client scores
   through the Service: zero failed requests; then back to following the champion;
4. a Job made from the drift CronJob completes and the exporter serves its gauges;
5. an Alertmanager notification posted to the trigger Service makes the `job` backend create a Kubernetes Job
   that retrains on the base table plus the labelled drifted traffic, gates and registers; the scorer switches
   to the new champion;
6. the Prometheus Operator path: the chart's PrometheusRule equals the rules file and its ServiceMonitors are
   scraped; with a model of the base table as the champion (so that a re-run against the same cluster means the
   same) and the rule windows shortened, drifted traffic and a drift run make Prometheus fire, Alertmanager
   (configured by the chart's AlertmanagerConfig) calls the trigger, and the trigger's Job retrains;
7. the chart's NetworkPolicies were accepted by the API server;
8. a staged rollout through the registry's pointer: every scorer replica takes up a challenger in shadow (scored,
   never returned), then as a canary of 50% (sticky by account, on every replica alike), and drops it on abort;
   the champion stays, and the pointer's history records each step with its actor and reason;
9. the feature store (the chart's Redis StatefulSet) is shared by the scorer replicas: a burst scored on both
   sees its own earlier transactions, a retry counts once; with the store gone every replica still answers (frozen
   features, flagged, counted, Ready); back empty, `fraudops features rebuild --from-log` in a scorer pod restores
   every transaction, also those scored while it was gone.

Skips with the reason when no cluster answers (`make test` on a machine without one); `make kind-e2e` sets
FRAUDOPS_E2E_REQUIRED=1, which turns that skip into a failure. Settings come from scripts/kind-e2e.sh.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "monitoring" / "rules" / "fraudops.rules.yaml"
NAMESPACE = os.environ.get("FRAUDOPS_E2E_NAMESPACE", "fraudops")
RELEASE = os.environ.get("FRAUDOPS_E2E_RELEASE", "fraudops")
INFRA_NAMESPACE = os.environ.get("FRAUDOPS_E2E_INFRA_NAMESPACE", "fraudops-system")
MONITORING_NAMESPACE = os.environ.get("FRAUDOPS_E2E_MONITORING_NAMESPACE", "monitoring")
IMAGE = os.environ.get("FRAUDOPS_E2E_IMAGE", "fraudops:0.1.0")
SCORER_URL = os.environ.get("FRAUDOPS_E2E_SCORER_URL", "http://127.0.0.1:30080")
CONTEXT = os.environ.get("FRAUDOPS_E2E_CONTEXT", "kind-fraudops")
KUBECTL = os.environ.get("FRAUDOPS_E2E_KUBECTL", "kubectl")
HELM = os.environ.get("FRAUDOPS_E2E_HELM", "helm")
REQUIRED = os.environ.get("FRAUDOPS_E2E_REQUIRED") == "1"
S3_ENDPOINT = f"http://seaweedfs.{INFRA_NAMESPACE}.svc.cluster.local:8333"
REGISTRY_URL = "s3://fraudops/registry"
BASE_DATA = "s3://fraudops/data/base.parquet"
JOB_TIMEOUT = float(os.environ.get("FRAUDOPS_E2E_JOB_TIMEOUT", "1800"))
# the synthetic customers of the base table (scripts/addons/seed-job.sh), so that traffic looks like them
POPULATION_SEED = 7


@cache
def _unreachable_reason() -> str | None:
    """Why the end-to-end test cannot run here, or None when the cluster answers."""
    if shutil.which(KUBECTL) is None or shutil.which(HELM) is None:
        return f"{KUBECTL} or {HELM} is not installed (the test runs on the cluster of make kind-up)"
    from kubernetes import client, config

    try:
        _, active = config.list_kube_config_contexts()
    except (config.ConfigException, OSError, TypeError) as exc:
        return f"no Kubernetes context (KUBECONFIG={os.environ.get('KUBECONFIG', 'unset')}): {exc}"
    if not active or active.get("name") != CONTEXT:
        return (f"current context {active.get('name') if active else None!r} is not the cluster {CONTEXT!r}; "
                "run make kind-up then make kind-e2e")
    try:
        config.load_kube_config()
        client.VersionApi().get_code(_request_timeout=3)
    except Exception as exc:  # any transport or auth failure means: no cluster to test against
        return f"Kubernetes API of context {CONTEXT!r} not reachable within 3 s: {type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="module")
def kube() -> Any:
    reason = _unreachable_reason()
    if reason:
        if REQUIRED:
            pytest.fail(f"make kind-e2e needs the cluster: {reason}")
        pytest.skip(reason)
    from kubernetes import client, config

    config.load_kube_config()
    return client


# --- helpers -------------------------------------------------------------------------------------------------------

def run(*command: str, timeout: float = 300) -> str:
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def kubectl(*args: str, timeout: float = 120) -> str:
    return run(KUBECTL, *args, timeout=timeout)


def helm(*args: str, timeout: float = 900) -> str:
    return run(HELM, *args, "--namespace", NAMESPACE, timeout=timeout)


def wait_for(what: str, check: Callable[[], Any], timeout: float, poll: float = 3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, httpx.HTTPError, ValueError, KeyError) as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last!r})")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def port_forward(namespace: str, target: str, port: int) -> Iterator[str]:
    """``kubectl port-forward`` to ``target`` (e.g. svc/fraudops-trigger); yields its http://127.0.0.1:<port>."""
    local = _free_port()
    proc = subprocess.Popen([KUBECTL, "-n", namespace, "port-forward", target, f"{local}:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(f"port-forward to {namespace}/{target}",
                 lambda: socket.create_connection(("127.0.0.1", local), timeout=1).close() or True, 30, poll=0.5)
        yield f"http://127.0.0.1:{local}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def secret_value(kube: Any, name: str, key: str, namespace: str = NAMESPACE) -> str:
    secret = kube.CoreV1Api().read_namespaced_secret(name, namespace)
    return base64.b64decode(secret.data[key]).decode()


# Two waves of drift: the first (as in `fraudops demo`) is what the retrained champion of step 5 learns; the second,
# stronger one is what the Prometheus Operator loop of step 6 has to notice on that champion.
DRIFT = {"first": {"amount_shift": 0.5, "category_mix": 0.6, "new_pattern": True, "fraud_rate_multiplier": 2.0},
         "second": {"amount_shift": 2.0, "category_mix": 0.95, "new_pattern": True, "fraud_rate_multiplier": 3.0}}


def traffic(n: int, seed: int, start: str, drift: str | None = None) -> tuple[list[dict[str, Any]], list[bool]]:
    """Transactions of the base table's customers (the request payload) and their true labels."""
    from fraudops.data.synthetic import DriftConfig, generate_transactions

    frame = generate_transactions(n, seed=seed, start=start, days=4, population_seed=POPULATION_SEED,
                                  drift=DriftConfig(**DRIFT[drift]) if drift else None)
    truth = frame.pop("is_fraud").astype(bool).tolist()
    for column in ("signup_time", "purchase_time"):
        frame[column] = frame[column].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.loads(frame.to_json(orient="records")), truth


def score_all(client: httpx.Client, rows: list[dict[str, Any]], truth: list[bool], batch: int = 100
              ) -> tuple[list[dict[str, Any]], set[str]]:
    """Score every row through the Service; returns feedback labels and the model tags that answered."""
    labels: list[dict[str, Any]] = []
    tags: set[str] = set()
    for start in range(0, len(rows), batch):
        response = client.post(f"{SCORER_URL}/score", json={"transactions": rows[start:start + batch]})
        assert response.status_code == 200, response.text[:500]
        body = response.json()
        tags.add(body["model_tag"])
        labels += [{"request_id": body["request_id"], "row": item["row"], "is_fraud": truth[start + item["row"]],
                    "source": "chargeback" if truth[start + item["row"]] else "manual_review"}
                   for item in body["results"]]
    return labels, tags


def send_feedback(kube: Any, client: httpx.Client, labels: list[dict[str, Any]]) -> None:
    """Labels through /feedback with the scorer's internal token (from its Secret); refused without it."""
    token = secret_value(kube, "fraudops-scorer-token", "token")
    refused = client.post(f"{SCORER_URL}/feedback", json={"labels": labels[:1]})
    assert refused.status_code == 401, refused.text[:500]
    for start in range(0, len(labels), 500):
        response = client.post(f"{SCORER_URL}/feedback", json={"labels": labels[start:start + 500]},
                               headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text[:500]


def served_tag(client: httpx.Client) -> str:
    rows, _ = traffic(1, seed=1, start="2026-02-01")
    response = client.post(f"{SCORER_URL}/score", json={"transactions": rows})
    assert response.status_code == 200, response.text[:500]
    return str(response.json()["model_tag"])


def pods(kube: Any, selector: str, namespace: str = NAMESPACE) -> list[Any]:
    return kube.CoreV1Api().list_namespaced_pod(namespace, label_selector=selector).items


def assert_hardened(pod: Any) -> None:
    """Every container of a fraudops pod: non-root uid, read-only root filesystem, no privilege, no capability."""
    pod_context = pod.spec.security_context
    for container in pod.spec.containers:
        context = container.security_context
        assert context is not None, f"{pod.metadata.name}/{container.name} has no securityContext"
        assert (context.run_as_non_root or pod_context.run_as_non_root), pod.metadata.name
        assert (context.run_as_user or pod_context.run_as_user) == 10001, pod.metadata.name
        assert context.read_only_root_filesystem is True, pod.metadata.name
        assert context.allow_privilege_escalation is False and not context.privileged, pod.metadata.name
        assert context.capabilities.drop == ["ALL"] and not context.capabilities.add, pod.metadata.name
        assert container.image == IMAGE, (pod.metadata.name, container.image)


def wait_for_job(kube: Any, name: str, timeout: float = JOB_TIMEOUT) -> Any:
    """Wait until a Job succeeded (fails on a failed Job, with its log)."""
    batch = kube.BatchV1Api()

    def done() -> Any:
        job = batch.read_namespaced_job_status(name, NAMESPACE)
        if job.status.failed:
            log = kubectl("-n", NAMESPACE, "logs", f"job/{name}", "--tail=40")
            raise AssertionError(f"job {name} failed:\n{log}")
        return job if job.status.succeeded else None

    return wait_for(f"job {name}", done, timeout, poll=5)


def champion_tag(kube: Any) -> str:
    """The registry's champion, read from the object store by a pod (the store has no route from the host)."""
    pointer = run_python_in_cluster(kube, "from fraudops.registry import Registry; "
                                          f"print(Registry(remote={REGISTRY_URL!r}).champion())")
    return pointer.strip().splitlines()[-1]


def run_python_in_cluster(kube: Any, code: str) -> str:
    """Run Python in a scorer pod (it has the object-store credentials) and return its output."""
    (pod, *_) = [p for p in pods(kube, "app.kubernetes.io/component=scorer") if p.status.phase == "Running"]
    return kubectl("-n", NAMESPACE, "exec", pod.metadata.name, "--", "python", "-c", code, timeout=120)


class ScoringClient:
    """Scores one transaction at a time through the Service with a keep-alive connection pool (like a checkout
    service would) until stopped; counts every failed request and the model tags that answered."""

    def __init__(self, rate: float = 20) -> None:
        self.rows, _ = traffic(200, seed=41, start="2026-02-01")
        self.interval = 1 / rate
        self.ok = 0
        self.failures: list[str] = []
        self.tags: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not self._stop.is_set():
                try:
                    response = client.post(f"{SCORER_URL}/score", json={"transactions": [self.rows[i % 200]]})
                    if response.status_code == 200:
                        self.ok += 1
                        tag = response.json()["model_tag"]
                        if not self.tags or self.tags[-1] != tag:
                            self.tags.append(tag)
                    else:
                        self.failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                i += 1
                time.sleep(self.interval)

    def __enter__(self) -> ScoringClient:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def train_job(*args: str) -> str:
    """`fraudops pipeline job --wait` in the release namespace; returns its output."""
    return run(sys.executable, "-m", "fraudops", "pipeline", "job", "--namespace", NAMESPACE, "--image", IMAGE,
               "--s3-secret", "fraudops-s3", "--s3-endpoint", S3_ENDPOINT, "--registry-url", REGISTRY_URL,
               "--data", BASE_DATA, "--cpu", "500m", "--memory", "1Gi", "--iterations", "200", "--wait",
               "--timeout", str(JOB_TIMEOUT), *args, timeout=JOB_TIMEOUT + 60)


def scorer_pods(kube: Any) -> set[str]:
    return {p.metadata.name for p in pods(kube, "app.kubernetes.io/component=scorer")}


def rollout(kube: Any, tag: str) -> set[str]:
    """`helm upgrade` the scorer to serve ``tag``; returns once the old pods are gone (they drain their
    keep-alive connections while terminating). Returns the new pods."""
    old = scorer_pods(kube)
    helm("upgrade", RELEASE, str(ROOT / "helm" / "fraudops"), "--reuse-values", "--set", f"model.tag={tag}",
         "--wait", "--timeout", "10m")
    kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{RELEASE}-scorer", "--timeout=600s", timeout=620)
    wait_for("the old scorer pods to terminate", lambda: not scorer_pods(kube) & old, 180, poll=1)
    new = scorer_pods(kube)
    assert new and not new & old
    return new


# --- 1. the release ------------------------------------------------------------------------------------------------

def test_release_is_deployed_with_every_pod_ready_and_hardened(kube: Any) -> None:
    status = json.loads(helm("status", RELEASE, "-o", "json"))
    assert status["info"]["status"] == "deployed"
    apps = kube.AppsV1Api()
    for component in ("scorer", "trigger", "drift-exporter"):
        deployment = apps.read_namespaced_deployment(f"{RELEASE}-{component}", NAMESPACE)
        assert deployment.status.available_replicas == deployment.spec.replicas, component
    store = apps.read_namespaced_stateful_set(f"{RELEASE}-feature-store", NAMESPACE)
    assert store.status.ready_replicas == store.spec.replicas == 1
    assert kube.BatchV1Api().read_namespaced_cron_job(f"{RELEASE}-drift", NAMESPACE)
    running = [p for p in pods(kube, f"app.kubernetes.io/instance={RELEASE}") if p.status.phase == "Running"]
    assert {p.metadata.labels["app.kubernetes.io/component"] for p in running} >= {"scorer", "trigger",
                                                                                   "drift-exporter", "feature-store"}
    for pod in running:
        assert all(c.ready for c in pod.status.container_statuses), pod.metadata.name
        assert_hardened(pod)
    # the root filesystem really is read-only, and the process really is uid 10001
    name = next(p.metadata.name for p in running if p.metadata.labels["app.kubernetes.io/component"] == "scorer")
    probe = "import os; print(os.getuid()); open('/opt/venv/probe', 'w')"
    result = subprocess.run([KUBECTL, "-n", NAMESPACE, "exec", name, "--", "python", "-c", probe],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "10001" and "Read-only file system" in result.stderr, result


def test_pod_security_admission_refuses_a_pod_that_may_run_as_root(kube: Any) -> None:
    labels = kube.CoreV1Api().read_namespace(NAMESPACE).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    unhardened = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root-probe"},
                  "spec": {"containers": [{"name": "c", "image": IMAGE}]}}
    result = subprocess.run([KUBECTL, "-n", NAMESPACE, "create", "--dry-run=server", "-f", "-"],
                            input=json.dumps(unhardened), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and 'violates PodSecurity "restricted:latest"' in result.stderr, result
    assert "runAsNonRoot" in result.stderr and "allowPrivilegeEscalation" in result.stderr


WORKERS = ("import os; print(sum(b'_bentoml_impl.worker.service' in open(f'/proc/{p}/cmdline', 'rb').read() "
           "for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()))")  # not this probe's own


def test_scorer_workers_follow_the_chart_and_auto_follows_a_pod_cpu_limit(kube: Any) -> None:
    """Each scorer pod runs the chart's `scorer.workers` BentoML workers; with `auto` a pod counts the CPUs its
    container may use, through the container runtime's real cgroup (here the host has 2, the pod is given half)."""
    values = yaml.safe_load((ROOT / "helm" / "fraudops" / "values.yaml").read_text())["scorer"]
    for pod in scorer_replicas(kube):
        assert python_in_pod(pod, WORKERS).strip() == str(values["workers"]), pod
    from fraudops.monitoring.backends import CONTAINER_SECURITY, POD_SECURITY

    name = f"workers-auto-{int(time.time())}"
    code = "from fraudops.settings import ServingConfig; print(ServingConfig.from_env().workers)"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"restartPolicy": "Never", "securityContext": POD_SECURITY, "containers": [{
               "name": "probe", "image": IMAGE, "imagePullPolicy": "IfNotPresent", "command": ["python", "-c", code],
               "env": [{"name": "FRAUDOPS_WORKERS", "value": "auto"}], "securityContext": CONTAINER_SECURITY,
               "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                             "limits": {"cpu": "500m", "memory": "256Mi"}}}]}}
    core = kube.CoreV1Api()
    core.create_namespaced_pod(NAMESPACE, pod)
    try:
        wait_for(f"pod {name} to finish", lambda: core.read_namespaced_pod_status(name, NAMESPACE).status.phase
                 in ("Succeeded", "Failed"), 180)
        log = kubectl("-n", NAMESPACE, "logs", name)
        assert core.read_namespaced_pod_status(name, NAMESPACE).status.phase == "Succeeded", log
        assert log.split()[-1] == "1", log  # a scorer there would run one worker, not one per host CPU
        on_the_host = python_in_pod(scorer_replicas(kube)[0], "import os; print(len(os.sched_getaffinity(0)))")
        assert int(on_the_host) > 1, "the host has one CPU: this check cannot tell a limit from none"
    finally:
        core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)


# --- 2. helm test and the scorer Service ---------------------------------------------------------------------------

def test_helm_test_passes(kube: Any) -> None:
    output = helm("test", RELEASE, "--logs", "--timeout", "5m")
    assert "Phase:          Succeeded" in output or "Phase: Succeeded" in output.replace("  ", " "), output


def test_scorer_service_scores_refuses_bad_input_and_exports_metrics(kube: Any) -> None:
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{SCORER_URL}/readyz").status_code == 200
        rows, truth = traffic(20, seed=11, start="2026-02-01")
        labels, tags = score_all(client, rows, truth)
        assert len(labels) == 20 and len(tags) == 1
        bad = client.post(f"{SCORER_URL}/score", json={"transactions": [{**rows[0], "amount": "not a number"}]})
        assert bad.status_code == 400 and "amount" in bad.text, bad.text
        metrics = client.get(f"{SCORER_URL}/metrics").text
    assert "fraudops_scorer_requests_total" in metrics and "fraudops_scorer_model_info" in metrics


# --- 3. helm upgrade to a new model --------------------------------------------------------------------------------

BASE_MODELS: list[str] = []  # the models this session trained on the base table alone


def train_a_base_model() -> str:
    """A new model of the base table, registered but not promoted (the gate asks for a PR-AUC gain no model can
    make); returns its tag."""
    output = train_job("--seed", "3", "--min-pr-auc-gain", "1.0")
    match = re.search(r"registered (\S+); gate: reject", output)
    assert match, output
    BASE_MODELS.append(match.group(1))
    return match.group(1)


def test_helm_upgrade_to_a_new_model_rolls_the_scorer_with_zero_failed_requests(kube: Any) -> None:
    champion = champion_tag(kube)
    with httpx.Client(timeout=30) as client:
        before = served_tag(client)
    new_tag = train_a_base_model()
    assert new_tag not in (before, champion) and champion_tag(kube) == champion
    with ScoringClient() as client:
        time.sleep(3)
        rollout(kube, new_tag)
        time.sleep(3)
    assert client.failures == [], client.failures[:10]
    assert client.ok > 100 and client.tags[0] == before and client.tags[-1] == new_tag, (client.ok, client.tags)
    # and back to following the champion pointer, again without a failed request
    with ScoringClient() as client:
        time.sleep(3)
        rollout(kube, "champion")
        time.sleep(3)
    assert client.failures == [], client.failures[:10]
    assert client.ok > 100 and client.tags == [new_tag, champion], (client.ok, client.tags)


# --- 4. the drift CronJob and the exporter -------------------------------------------------------------------------

def run_drift_job(kube: Any) -> None:
    """A Job made from the drift CronJob (what `kubectl create job --from=cronjob/...` does), to completion."""
    name = f"{RELEASE}-drift-e2e-{int(time.time())}"
    kubectl("-n", NAMESPACE, "create", "job", name, f"--from=cronjob/{RELEASE}-drift")
    wait_for_job(kube, name, timeout=900)
    (pod,) = pods(kube, f"job-name={name}")
    assert_hardened(pod)


def exporter_metrics() -> str:
    with port_forward(NAMESPACE, f"svc/{RELEASE}-drift-exporter", 9108) as url:
        return httpx.get(f"{url}/metrics", timeout=30).text


def test_drift_cronjob_completes_and_the_exporter_serves_its_gauges(kube: Any) -> None:
    with httpx.Client(timeout=60) as client:
        champion = served_tag(client)
        rows, truth = traffic(1500, seed=13, start="2026-01-31")
        labels, _ = score_all(client, rows, truth)
        send_feedback(kube, client, labels)
    # the prediction log is written in batches: give the scorers' flush interval time to pass
    time.sleep(15)
    started = time.time()
    run_drift_job(kube)

    def gauges_of_this_run() -> str | None:
        """The exporter's metrics once they show a drift run of the champion that ended after `started`."""
        metrics = exporter_metrics()
        last = re.search(rf'^fraudops_drift_last_run_timestamp_seconds\{{[^}}]*model="{re.escape(champion)}"[^}}]*\}} '
                         r"(\S+)$", metrics, re.M)
        return metrics if last and float(last[1]) >= started else None

    metrics = wait_for("drift gauges of this run", gauges_of_this_run, 120)
    for gauge in ("fraudops_drift_share_drifted_features", "fraudops_drift_detected", "fraudops_drift_rows",
                  "fraudops_drift_last_run_timestamp_seconds"):
        assert re.search(rf'^{gauge}\{{[^}}]*model="{re.escape(champion)}"', metrics, re.M), gauge


# --- 5. alert -> trigger -> Job -> new champion --------------------------------------------------------------------

def trigger_runs(url: str) -> list[dict[str, Any]]:
    return httpx.get(f"{url}/runs", timeout=30).json()["runs"]


def promote(kube: Any, tag: str, reason: str) -> None:
    """Make ``tag`` the champion through the registry's pointer (recorded in its history, as this test's)."""
    run_python_in_cluster(kube, (
        f"from fraudops.registry import Registry; Registry(remote={REGISTRY_URL!r}).promote({tag!r}, "
        f"reason={reason!r}, actor='test_kind_e2e')"))


def start_from_the_first_model(kube: Any) -> str:
    """On a fresh cluster, nothing: the first model is the champion and the trigger has launched nothing. On a
    re-run against the same cluster, make it so: the first model becomes the champion again (recorded in the
    pointer's history) and the trigger restarts (its state is an emptyDir: its cooldowns go), so that the drift
    scenario below means the same thing every time."""
    first = json.loads(run_python_in_cluster(kube, (
        "import json; from fraudops.registry import Registry; "
        f"print(json.dumps(Registry(remote={REGISTRY_URL!r}).history()[0]['tag']))")).strip().splitlines()[-1])
    if champion_tag(kube) != first:
        promote(kube, first, "end-to-end test: the drift scenario starts from the first model")
        kubectl("-n", NAMESPACE, "rollout", "restart", f"deployment/{RELEASE}-trigger")
        kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{RELEASE}-trigger", "--timeout=300s",
                timeout=320)
    with httpx.Client(timeout=30) as client:
        wait_for("the scorer to serve the first model", lambda: served_tag(client) == first, 120)
    return first


def test_alert_to_the_trigger_launches_a_retraining_job_and_the_scorer_switches(kube: Any) -> None:
    champion = start_from_the_first_model(kube)
    with httpx.Client(timeout=60) as client:
        # the customers start to behave differently: drifted traffic, then its confirmed labels
        rows, truth = traffic(3000, seed=17, start="2026-02-04", drift="first")
        labels, _ = score_all(client, rows, truth)
        send_feedback(kube, client, labels)
    time.sleep(15)  # the prediction log's flush interval
    token = secret_value(kube, "fraudops-trigger-token", "token")
    now = datetime.now(UTC).isoformat()
    alert = {"status": "firing", "labels": {"alertname": "FraudopsFeatureDrift", "model": champion,
                                            "severity": "warning", "action": "retrain", "namespace": NAMESPACE},
             "annotations": {"summary": f"Input drift on model {champion}"}, "startsAt": now,
             "fingerprint": f"e2e{int(time.time())}"}
    notification = {"version": "4", "groupKey": "{}:{alertname=\"FraudopsFeatureDrift\"}", "status": "firing",
                    "receiver": "fraudops-retrain", "groupLabels": {"alertname": "FraudopsFeatureDrift"},
                    "commonLabels": alert["labels"], "alerts": [alert]}
    with port_forward(NAMESPACE, f"svc/{RELEASE}-trigger", 8080) as url:
        unauthorized = httpx.post(f"{url}/alerts", json=notification, timeout=30)
        assert unauthorized.status_code == 401
        response = httpx.post(f"{url}/alerts", json=notification, headers={"Authorization": f"Bearer {token}"},
                              timeout=30)
        assert response.status_code == 202, response.text
        run_id = response.json()["run_id"]
        duplicate = httpx.post(f"{url}/alerts", json=notification, headers={"Authorization": f"Bearer {token}"},
                               timeout=30)
        assert duplicate.json()["action"] == "duplicate"
        job = wait_for("the retraining Job", lambda: kube.BatchV1Api().list_namespaced_job(
            NAMESPACE, label_selector=f"fraudops.io/run-id={run_id}").items, 120)[0]
    name = job.metadata.name
    wait_for_job(kube, name)
    (pod,) = pods(kube, f"job-name={name}")
    assert_hardened(pod)
    log = kubectl("-n", NAMESPACE, "logs", f"job/{name}")
    match = re.search(r"registered (\S+); gate: promote", log)
    assert match, f"the retrained model was not promoted:\n{log[-3000:]}"
    new_champion = match.group(1)
    args = job.spec.template.spec.containers[0].args
    assert args[args.index("--data") + 1] == BASE_DATA
    assert args[args.index("--extra-data") + 1] == f"s3://fraudops/exports/{run_id}.parquet"
    with httpx.Client(timeout=30) as client:
        wait_for("the scorer to serve the new champion", lambda: served_tag(client) == new_champion, 180)
    assert champion_tag(kube) == new_champion
    with port_forward(NAMESPACE, f"svc/{RELEASE}-trigger", 8080) as url:
        run = wait_for("the trigger to record the run as succeeded",
                       lambda: [r for r in trigger_runs(url) if r["id"] == run_id and r["state"] == "succeeded"], 120)
    assert run[0]["model"] == champion


# --- 6. the Prometheus Operator loop -------------------------------------------------------------------------------

def prometheus_query(url: str, query: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["data"]["result"]


def test_prometheus_operator_alert_reaches_the_trigger_through_alertmanager_and_retrains(kube: Any) -> None:
    from test_monitoring_rules import shrink_windows

    custom = kube.CustomObjectsApi()
    rules = yaml.safe_load(RULES.read_text())["groups"]
    # what Helm installed is the rules file, and the operator's CRDs accepted every object of the chart
    installed = [d for d in yaml.safe_load_all(helm("get", "manifest", RELEASE)) if d]
    (rule,) = [d for d in installed if d["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == rules
    for kind, version in (("servicemonitors", "v1"), ("prometheusrules", "v1"), ("alertmanagerconfigs", "v1alpha1")):
        assert custom.list_namespaced_custom_object("monitoring.coreos.com", version, NAMESPACE, kind)["items"], kind
    name = rule["metadata"]["name"]
    custom.patch_namespaced_custom_object("monitoring.coreos.com", "v1", NAMESPACE, "prometheusrules", name,
                                          {"spec": {"groups": yaml.safe_load(shrink_windows(RULES.read_text()))
                                                    ["groups"]}})
    serve_a_new_base_model(kube)
    try:
        alert_loop(kube)
    finally:
        custom.patch_namespaced_custom_object("monitoring.coreos.com", "v1", NAMESPACE, "prometheusrules", name,
                                              {"spec": {"groups": rules}})


def serve_a_new_base_model(kube: Any) -> None:
    """Make the champion a model that has seen the base table only and never alerted. The champion section 5 left
    was retrained on every labelled transaction of the trigger's export window: on a re-run against the same
    cluster those include this section's drifted traffic of the earlier runs, so it no longer sees that as drift,
    and Alertmanager may still hold its alert group."""
    tag = BASE_MODELS[-1] if BASE_MODELS else train_a_base_model()
    promote(kube, tag, "end-to-end test: the alert loop starts from a model of the base table")
    # every replica: each polls the pointer on its own, and the traffic below may all go to the one that did not yet
    # (it did on 2026-12-05: the drift run of the new champion then found 455 rows)
    wait_for("every scorer replica to serve the model of the base table",
             lambda: all(replica_models(pod) == [tag] for pod in scorer_replicas(kube)), 180, poll=2)


def alert_loop(kube: Any) -> None:
    """Drifted traffic and a drift run make Prometheus fire (rule windows 60x shorter); Alertmanager calls the
    trigger; the trigger's Job retrains and gates."""
    with httpx.Client(timeout=60) as client:
        champion = served_tag(client)
        rows, truth = traffic(3000, seed=29, start="2026-02-08", drift="second")
        labels, _ = score_all(client, rows, truth)
        send_feedback(kube, client, labels)
    time.sleep(15)
    with port_forward(MONITORING_NAMESPACE, "svc/prometheus-operated", 9090) as prometheus:
        # every ServiceMonitor of the chart is scraped
        up = wait_for("the chart's targets up in Prometheus", lambda: (
            r if len(r := prometheus_query(prometheus, f'up{{namespace="{NAMESPACE}"}} == 1')) >= 3 else None), 180)
        assert {s["metric"]["service"] for s in up} >= {f"{RELEASE}-scorer", f"{RELEASE}-drift-exporter",
                                                         f"{RELEASE}-trigger"}
        run_drift_job(kube)
        wait_for("the drift run of the champion in Prometheus", lambda: prometheus_query(
            prometheus, f'fraudops_drift_last_run_timestamp_seconds{{model="{champion}"}}'), 180)
        firing = wait_for("a firing retrain alert", lambda: prometheus_query(
            prometheus, f'ALERTS{{alertstate="firing", action="retrain", model="{champion}"}}'), 300)
        assert {a["metric"]["alertname"] for a in firing} & {"FraudopsFeatureDrift", "FraudopsScoreDrift",
                                                             "FraudopsPerformanceDrop"}
    with port_forward(NAMESPACE, f"svc/{RELEASE}-trigger", 8080) as url:
        run = wait_for("Alertmanager to call the trigger", lambda: [r for r in trigger_runs(url)
                                                                    if r["model"] == champion], 300)[0]
    job = wait_for("the retraining Job", lambda: kube.BatchV1Api().list_namespaced_job(
        NAMESPACE, label_selector=f"fraudops.io/run-id={run['id']}").items, 120)[0]
    wait_for_job(kube, job.metadata.name)
    log = kubectl("-n", NAMESPACE, "logs", f"job/{job.metadata.name}")
    assert re.search(r"registered \S+; gate: (promote|reject)", log), log[-3000:]


# --- 7. NetworkPolicies ---------------------------------------------------------------------------------------------

def test_network_policies_are_accepted_by_the_api_server(kube: Any) -> None:
    policies = kube.NetworkingV1Api().list_namespaced_network_policy(NAMESPACE).items
    names = {p.metadata.name for p in policies}
    assert {f"{RELEASE}-scorer", f"{RELEASE}-drift-exporter", f"{RELEASE}-trigger"} <= names, names
    # the chart's own manifests are accepted again by the server's validation (a server-side dry run)
    manifest = helm("get", "manifest", RELEASE)
    documents = [d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "NetworkPolicy"]
    result = subprocess.run([KUBECTL, "-n", NAMESPACE, "apply", "--dry-run=server", "-f", "-"],
                            input=yaml.safe_dump_all(documents), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- 8. staged rollouts: shadow, canary, abort ---------------------------------------------------------------------

ROLLOUT_ACTOR = "test_kind_e2e"
ROLLOUT_REASONS = {"rollout-start": "end-to-end test: shadow on the real scorers",
                   "rollout-stage": "end-to-end test: canary of 50%",
                   "rollout-abort": "end-to-end test: abort, the champion stays"}


def scorer_replicas(kube: Any) -> list[str]:
    """The scorer pods serving now: Running, Ready, not terminating."""
    return sorted(p.metadata.name for p in pods(kube, "app.kubernetes.io/component=scorer")
                  if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
                  and all(c.ready for c in p.status.container_statuses or []))


def python_in_pod(pod: str, code: str) -> str:
    return kubectl("-n", NAMESPACE, "exec", pod, "--", "python", "-c", code, timeout=120)


def replica_metrics(pod: str) -> str:
    """One replica's /metrics, read inside its pod (through the Service any replica would answer)."""
    return python_in_pod(pod, "import urllib.request; print(urllib.request.urlopen("
                              "'http://127.0.0.1:3000/metrics', timeout=30).read().decode())")


def replica_models(pod: str) -> list[str]:
    """The models one replica's model-info gauge is 1 for: its champion, once it has loaded it."""
    return [labels["model_tag"] for labels, value in samples(replica_metrics(pod), "fraudops_scorer_model_info")
            if value]


def replica_score(pod: str, rows: list[dict[str, Any]], explain: bool = False) -> dict[str, Any]:
    """Score ``rows`` on one replica, inside its pod."""
    body = json.dumps({"transactions": rows, "explain": explain})
    return json.loads(python_in_pod(pod, (
        "import urllib.request; print(urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:3000/score', "
        f"data={body!r}.encode(), headers={{'Content-Type': 'application/json'}}), timeout=60).read().decode())")))


def samples(metrics: str, name: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.labels, s.value) for family in text_string_to_metric_families(metrics) for s in family.samples
            if s.name == name]


def active_rollout_series(metrics: str) -> set[tuple[str, str, str]]:
    """(challenger, mode, percent) of the rollout gauge's series at 1."""
    return {(labels["challenger"], labels["mode"], labels["percent"])
            for labels, value in samples(metrics, "fraudops_scorer_rollout_info") if value == 1}


def role_decisions(metrics: str) -> dict[str, int]:
    """Decisions counted per role (champion, shadow, canary), all outcomes together."""
    counts = {"champion": 0, "shadow": 0, "canary": 0}
    for labels, value in samples(metrics, "fraudops_scorer_role_decisions_total"):
        counts[labels["role"]] = counts.get(labels["role"], 0) + int(value)
    return counts


def every_replica_decisions(replicas: list[str]) -> dict[str, dict[str, int]]:
    return {pod: role_decisions(replica_metrics(pod)) for pod in replicas}


def growth(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {pod: {role: after[pod][role] - before[pod].get(role, 0) for role in after[pod]} for pod in after}


def wait_for_every_replica(replicas: list[str], what: str, active: set[tuple[str, str, str]],
                           timeout: float = 180) -> None:
    """Wait until the rollout gauge of every replica has exactly ``active`` at 1 (the scorer polls the pointer)."""
    def check() -> bool:
        return all(active_rollout_series(replica_metrics(pod)) == active for pod in replicas)

    wait_for(f"every scorer replica to {what}", check, timeout, poll=2)


def registry_json(kube: Any, expression: str) -> Any:
    """``expression`` (of ``registry``, the object-store registry) evaluated in a scorer pod, through JSON."""
    output = run_python_in_cluster(kube, "import dataclasses, json; from fraudops.registry import Registry; "
                                         f"registry = Registry(remote={REGISTRY_URL!r}); "
                                         f"print(json.dumps({expression}))")
    return json.loads(output.strip().splitlines()[-1])


ACTIVE_ROLLOUT = "(lambda r: dataclasses.asdict(r) if r else None)(registry.rollout())"


def rollout_cli(kube: Any, *args: str) -> str:
    """`fraudops rollout ...` in a scorer pod, as the operator ``ROLLOUT_ACTOR`` (the CLI's actor is $USER)."""
    (pod, *_) = scorer_replicas(kube)
    return kubectl("-n", NAMESPACE, "exec", pod, "--", "env", f"USER={ROLLOUT_ACTOR}", "COLUMNS=250", "python", "-m",
                   "fraudops", "rollout", *args, "--registry-url", REGISTRY_URL, timeout=180)


def abort_active_rollout(kube: Any, reason: str) -> None:
    """Abort the rollout the pointer holds, if any."""
    run_python_in_cluster(kube, (
        f"from fraudops.registry import Registry; registry = Registry(remote={REGISTRY_URL!r}); "
        f"registry.rollout() and registry.abort_rollout(reason={reason!r}, actor={ROLLOUT_ACTOR!r})"))


def a_second_model(kube: Any, champion: str) -> str:
    """A registered model other than the champion (test 3 registers one); on a cluster that has none, one trained
    now and registered without promotion."""
    tags = registry_json(kube, "[m.tag for m in registry.list()]")
    others = [tag for tag in tags if tag != champion]
    if others:
        return str(others[0])
    output = train_job("--seed", "5", "--min-pr-auc-gain", "1.0")
    match = re.search(r"registered (\S+); gate: reject", output)
    assert match, output
    return match.group(1)


def score_spread(rows: list[dict[str, Any]], batch: int) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Score ``rows`` through the Service, each request on a new connection so that the Service spreads them over
    the replicas; returns each request's rows with its response."""
    answers = []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        response = httpx.post(f"{SCORER_URL}/score", json={"transactions": chunk}, timeout=60)
        assert response.status_code == 200, response.text[:500]
        answers.append((chunk, response.json()))
    return answers


def models_by_account(answers: list[tuple[list[dict[str, Any]], dict[str, Any]]]) -> dict[str, set[str]]:
    """The models that decided for each account: a canary row names its model, any other is the response's."""
    seen: dict[str, set[str]] = {}
    for chunk, body in answers:
        for item in body["results"]:
            seen.setdefault(chunk[item["row"]]["user_id"], set()).add(item.get("model_tag", body["model_tag"]))
    return seen


def test_rollout_shadow_then_canary_then_abort_on_every_scorer_replica(kube: Any) -> None:
    from fraudops.serving.challenger import bucket

    champion = champion_tag(kube)
    replicas = scorer_replicas(kube)
    assert len(replicas) >= 2, f"the chart's scorer runs 2 replicas on this cluster, found {replicas}"

    def serves_alone(pod: str) -> bool:
        return replica_models(pod) == [champion] and not active_rollout_series(replica_metrics(pod))

    if registry_json(kube, ACTIVE_ROLLOUT) is not None:
        abort_active_rollout(kube, "end-to-end test: a rollout an interrupted run left behind")
    wait_for("every replica to serve the champion alone", lambda: all(map(serves_alone, replicas)), 180, poll=2)
    challenger = a_second_model(kube, champion)
    assert challenger != champion
    # customers of the base table, each account once (a canary keeps an account on one model)
    rows, _ = traffic(600, seed=43, start="2026-02-02")
    rows = list({row["user_id"]: row for row in rows}.values())
    assert len(rows) > 300, len(rows)
    rollout_id = None
    try:
        # 1. shadow: every replica loads the challenger; it scores every request, the champion still answers
        output = rollout_cli(kube, "start", challenger, "--mode", "shadow", "--reason",
                             ROLLOUT_REASONS["rollout-start"])
        state = registry_json(kube, ACTIVE_ROLLOUT)
        assert state and state["challenger"] == challenger and state["champion"] == champion, (output, state)
        assert state["mode"] == "shadow" and state["actor"] == ROLLOUT_ACTOR, state
        rollout_id = state["id"]
        assert f"rollout {rollout_id}: {challenger} in shadow beside champion {champion}" in output, output
        wait_for_every_replica(replicas, f"shadow {challenger}", {(challenger, "shadow", "0")})
        before = every_replica_decisions(replicas)
        answers = score_spread(rows, batch=10)
        assert {body["model_tag"] for _, body in answers} == {champion}
        assert not [item for _, body in answers for item in body["results"] if "model_tag" in item]
        # the shadow scores after the answer: wait for it to count every row, on every replica
        def shadow_scored_every_row() -> dict[str, dict[str, int]] | None:
            grown = growth(before, every_replica_decisions(replicas))
            return grown if sum(g["shadow"] for g in grown.values()) >= len(rows) else None

        grown = wait_for("the shadow to score every request", shadow_scored_every_row, 120, poll=2)
        assert sum(g["champion"] for g in grown.values()) == len(rows), grown
        assert sum(g["shadow"] for g in grown.values()) == len(rows), grown
        assert all(g["shadow"] > 0 and g["shadow"] == g["champion"] and g["canary"] == 0
                   for g in grown.values()), grown

        # 2. canary of 50%: the challenger decides for the accounts of its half, the same on every replica
        run_python_in_cluster(kube, (
            f"from fraudops.registry import Registry; Registry(remote={REGISTRY_URL!r}).set_rollout_stage("
            f"'canary', 50, reason={ROLLOUT_REASONS['rollout-stage']!r}, actor={ROLLOUT_ACTOR!r}, "
            f"rollout_id={rollout_id!r})"))
        wait_for_every_replica(replicas, f"make {challenger} a canary of 50%", {(challenger, "canary", "50")})
        before = every_replica_decisions(replicas)
        answers = []
        for round_ in range(3):  # each account again, in other requests, on other connections and replicas
            answers += score_spread(rows[round_ * 7:] + rows[:round_ * 7], batch=20)
        assert {body["model_tag"] for _, body in answers} == {champion}  # the response names the champion
        seen = models_by_account(answers)
        assert len(seen) == len(rows)
        assert all(len(models) == 1 for models in seen.values()), {a: m for a, m in seen.items() if len(m) > 1}
        canary_accounts = {account for account, (model,) in seen.items() if model == challenger}
        assert canary_accounts == {row["user_id"] for row in rows if bucket(rollout_id, row["user_id"]) < 50}
        assert 0.35 < len(canary_accounts) / len(rows) < 0.65, len(canary_accounts)
        grown = growth(before, every_replica_decisions(replicas))
        assert sum(g["canary"] for g in grown.values()) == 3 * len(canary_accounts), grown
        assert sum(g["champion"] for g in grown.values()) == 3 * (len(rows) - len(canary_accounts)), grown
        assert all(g["canary"] > 0 and g["champion"] > 0 and g["shadow"] == 0 for g in grown.values()), grown
        # and each replica on its own decides as the Service's answers did
        sample = rows[:50]
        for pod in replicas:
            body = replica_score(pod, sample)
            assert {sample[i["row"]]["user_id"]: {i.get("model_tag", body["model_tag"])} for i in body["results"]} \
                == {row["user_id"]: seen[row["user_id"]] for row in sample}, pod

        # 3. abort: every replica drops the challenger, the champion decides for everyone again
        output = rollout_cli(kube, "abort", "--reason", ROLLOUT_REASONS["rollout-abort"])
        assert f"rollout {rollout_id} aborted: {champion} stays champion" in output, output
        rollout_id = None
        wait_for_every_replica(replicas, f"drop {challenger}", set())
        before = every_replica_decisions(replicas)
        answers = score_spread(rows, batch=20)
        assert {body["model_tag"] for _, body in answers} == {champion}
        assert not [item for _, body in answers for item in body["results"] if "model_tag" in item]
        time.sleep(2)  # a shadow would have counted by now
        grown = growth(before, every_replica_decisions(replicas))
        assert sum(g["champion"] for g in grown.values()) == len(rows), grown
        assert all(g["shadow"] == 0 and g["canary"] == 0 for g in grown.values()), grown
    finally:
        if rollout_id is not None:
            abort_active_rollout(kube, "end-to-end test: cleanup after a failure")
    # the pointer: the champion stayed, and its history tells who did what and why
    assert registry_json(kube, ACTIVE_ROLLOUT) is None
    assert champion_tag(kube) == champion
    history = registry_json(kube, "registry.history()[-3:]")
    assert [event["action"] for event in history] == list(ROLLOUT_REASONS), history
    for event in history:
        assert event["tag"] == challenger and event["previous"] == champion, event
        assert event["actor"] == ROLLOUT_ACTOR and event["reason"] == ROLLOUT_REASONS[event["action"]], event
    assert (history[0]["mode"], history[0]["percent"]) == ("shadow", 0.0), history[0]
    assert (history[1]["mode"], history[1]["percent"]) == ("canary", 50.0), history[1]
    with httpx.Client(timeout=30) as client:
        assert served_tag(client) == champion


# --- 9. the feature store ------------------------------------------------------------------------------------------

def card_testing_burst(device: str, n: int, start: datetime) -> list[dict[str, Any]]:
    """``n`` small payments 30 s apart from one new device and IP by three accounts of the base table."""
    rows, _ = traffic(n, seed=47, start="2026-02-01")
    accounts = list(dict.fromkeys(row["user_id"] for row in rows))[:3]
    return [{**row, "transaction_id": f"{device}-{i}", "device_id": device, "ip_address": f"198.51.100.{i % 7}",
             "user_id": accounts[i % 3], "amount": 1.0 + i,
             "purchase_time": (start + timedelta(seconds=30 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")}
            for i, row in enumerate(rows)]


def scale_store(replicas: int, client_pod: str) -> None:
    """Scale the feature store to 0 (and wait until its pod is gone) or 1 (and wait until ``client_pod``, a scorer
    pod, reaches it through the Service with its password: endpoints reach kube-proxy after the pod is Ready)."""
    kubectl("-n", NAMESPACE, "scale", f"statefulset/{RELEASE}-feature-store", f"--replicas={replicas}")
    if replicas:
        kubectl("-n", NAMESPACE, "rollout", "status", f"statefulset/{RELEASE}-feature-store", "--timeout=180s",
                timeout=200)
        ping = ("import os, redis; print(redis.Redis.from_url(os.environ['FRAUDOPS_FEATURE_STORE_URL'], "
                "socket_timeout=2, socket_connect_timeout=2).ping())")
        wait_for("the feature store Service to answer a scorer pod",
                 lambda: "True" in subprocess.run([KUBECTL, "-n", NAMESPACE, "exec", client_pod, "--", "python",
                                                   "-c", ping], capture_output=True, text=True, timeout=60).stdout,
                 60, poll=1)
    else:
        kubectl("-n", NAMESPACE, "wait", "--for=delete", f"pod/{RELEASE}-feature-store-0", "--timeout=120s",
                timeout=140)


def store_counter(pod: str, name: str) -> float:
    return sum(value for _, value in samples(replica_metrics(pod), f"fraudops_scorer_{name}_total"))


def test_feature_store_is_shared_by_the_replicas_survives_its_loss_and_is_rebuilt_from_the_log(kube: Any) -> None:
    replicas = scorer_replicas(kube)
    assert len(replicas) >= 2, replicas
    env = {e.name: e.value for e in pods(kube, "app.kubernetes.io/component=scorer")[0].spec.containers[0].env}
    assert env["FRAUDOPS_FEATURE_STORE_URL"] == (
        f"redis://:$(FEATURE_STORE_PASSWORD)@{RELEASE}-feature-store.{NAMESPACE}.svc.cluster.local:6379/0")
    device = f"E2E-DEV-{int(time.time())}"  # new on every run: the store of a reused cluster keeps older bursts
    burst = card_testing_burst(device, 12, datetime(2026, 3, 1, 10, tzinfo=UTC))

    def features(pod: str, row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        body = replica_score(pod, [row], explain=True)
        return body["results"][0]["features"], bool(body.get("features_fallback"))

    # shared: the burst alternates between two replicas, each transaction sees every earlier one (strictly before)
    seen = [features(replicas[i % 2], row) for i, row in enumerate(burst[:6])]
    assert not any(fallback for _, fallback in seen), seen
    assert [f["device_id__count_1h"] for f, _ in seen] == [0, 1, 2, 3, 4, 5]
    assert [f["device_id__accounts_1h"] for f, _ in seen] == [0, 1, 2, 3, 3, 3]
    assert seen[0][0]["device_id__first_seen"] == 1 and seen[1][0]["device_id__first_seen"] == 0
    assert seen[3][0]["device_id__amount_sum_1h"] == 1.0 + 2.0 + 3.0
    retried, _ = features(replicas[1], burst[2])  # a client's retry, on the other replica
    assert retried == seen[2][0]
    assert features(replicas[0], burst[6])[0]["device_id__count_1h"] == 6  # ... counted once

    fallbacks = {pod: store_counter(pod, "feature_store_fallbacks") for pod in replicas}
    scale_store(0, replicas[0])
    try:
        # gone: every replica answers within its timeout with the frozen snapshot, flags it, counts it, stays Ready
        down = [features(replicas[i % 2], row) for i, row in enumerate(burst[7:9])]
        assert all(fallback for _, fallback in down), down
        assert [f["device_id__count_1h"] for f, _ in down] == [0, 0]  # the snapshot has never seen this device
        for pod in replicas:
            assert store_counter(pod, "feature_store_fallbacks") == fallbacks[pod] + 1, pod
            assert python_in_pod(pod, "import urllib.request; print(urllib.request.urlopen("
                                      "'http://127.0.0.1:3000/readyz', timeout=10).status)").strip() == "200"
    finally:
        scale_store(1, replicas[0])
    # back, empty (no persistence): the rebuild loads the model's snapshot and replays the prediction log, the
    # transactions scored while the store was gone included (the log flushes every 10 s: wait until they are in it)
    logged = ("import json, os; from datetime import UTC, datetime, timedelta; "
              "from fraudops.predlog import read_predictions; now = datetime.now(UTC); "
              "frame = read_predictions(os.environ['FRAUDOPS_PREDICTION_LOG'], now - timedelta(hours=1), now); "
              f"print(len({{json.loads(t)['transaction_id'] for t in frame['input'] if {device!r} in t}}))")
    wait_for("the burst's 9 transactions in the prediction log",
             lambda: int(python_in_pod(replicas[0], logged).strip().splitlines()[-1]) == 9, 120, poll=5)
    output = kubectl("-n", NAMESPACE, "exec", replicas[0], "--", "python", "-m", "fraudops", "features", "rebuild",
                     "--from-log", "1h", timeout=300)
    assert re.search(r"replayed [\d,]+ logged transactions, [\d,]+ new", output), output
    after = [features(replicas[i % 2], row) for i, row in enumerate(burst[9:11])]
    assert not any(fallback for _, fallback in after), after
    assert [f["device_id__count_1h"] for f, _ in after] == [9, 10]
    assert after[0][0]["device_id__accounts_1h"] == 3
