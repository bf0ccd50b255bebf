"""End to end on a real cluster: the kind cluster of scripts/kind-up.sh (run it through scripts/kind-e2e.sh).

1. the release is up (trigger, drift exporter; the scorer waits for a champion);
2. the training pipeline runs on Kubeflow Pipelines (kfp.Client) and registers a champion;
3. the scorer Service (NodePort 30080) turns ready and scores transactions;
4. with PROMETHEUS=1: drifted traffic, a drift run, the drift alert in Prometheus, Alertmanager's webhook to the
   trigger, and a retraining run on KFP. The chart's PrometheusRule is first checked against
   monitoring/rules/fraudops.rules.yaml, then replaced by a copy with 60x shorter windows.

Skips (with the reason) unless a Kubernetes API answers within 3 s on the kind context (kind-fraudops, or
FRAUDOPS_E2E_CONTEXT), and kubectl is installed. Settings come from the environment set by scripts/kind-e2e.sh.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "monitoring" / "rules" / "fraudops.rules.yaml"
NAMESPACE = os.environ.get("FRAUDOPS_E2E_NAMESPACE", "fraudops")
RELEASE = os.environ.get("FRAUDOPS_E2E_RELEASE", "fraudops")
IMAGE = os.environ.get("FRAUDOPS_E2E_IMAGE", "fraudops:0.1.0")
SCORER_URL = os.environ.get("FRAUDOPS_E2E_SCORER_URL", "http://127.0.0.1:30080")
CONTEXT = os.environ.get("FRAUDOPS_E2E_CONTEXT", "kind-fraudops")
S3_ENDPOINT = os.environ.get("FRAUDOPS_E2E_S3_ENDPOINT", "http://seaweedfs.kubeflow.svc.cluster.local:8333")
REGISTRY_URL = os.environ.get("FRAUDOPS_E2E_REGISTRY_URL", "s3://fraudops/registry")
TRAIN_TIMEOUT = float(os.environ.get("FRAUDOPS_E2E_TRAIN_TIMEOUT", "3600"))
WITH_PROMETHEUS = os.environ.get("FRAUDOPS_E2E_PROMETHEUS", "0") == "1"


@cache
def _unreachable_reason() -> str | None:
    """Why the end-to-end test cannot run here, or None when the kind cluster answers."""
    if shutil.which("kubectl") is None:
        return "kubectl is not installed (the end-to-end test runs on the kind cluster: scripts/kind-e2e.sh)"
    try:
        from kubernetes import client, config
    except ImportError:
        return "the kubernetes Python client is not installed"
    try:
        _, active = config.list_kube_config_contexts()
    except (config.ConfigException, OSError, TypeError) as exc:
        return f"no Kubernetes context (KUBECONFIG={os.environ.get('KUBECONFIG', 'unset')}): {exc}"
    if not active or active.get("name") != CONTEXT:
        return (f"current context {active.get('name') if active else None!r} is not the kind cluster {CONTEXT!r}; "
                "run scripts/kind-up.sh then scripts/kind-e2e.sh (or set FRAUDOPS_E2E_CONTEXT)")
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
        pytest.skip(reason)
    from kubernetes import client, config

    config.load_kube_config()
    return client


def kubectl(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def wait_for(what: str, check: Callable[[], Any], timeout: float, poll: float = 5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def port_forward(namespace: str, target: str, port: int) -> Iterator[str]:
    """``kubectl port-forward`` to ``target`` (e.g. svc/ml-pipeline); yields http://127.0.0.1:<local port>."""
    local = _free_port()
    proc = subprocess.Popen(["kubectl", "-n", namespace, "port-forward", target, f"{local}:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(f"port-forward to {namespace}/{target}",
                 lambda: socket.create_connection(("127.0.0.1", local), timeout=1).close() or True, 30, poll=0.5)
        yield f"http://127.0.0.1:{local}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def http_json(url: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def transactions(n: int, seed: int, drifted: bool = False) -> list[dict[str, Any]]:
    from fraudops.data.synthetic import DriftConfig, generate_transactions

    drift = DriftConfig(amount_shift=2.0, category_mix=0.9, new_pattern=True) if drifted else None
    frame = generate_transactions(n, seed=seed, drift=drift).drop(columns=["is_fraud"])
    for column in ("signup_time", "purchase_time"):
        frame[column] = frame[column].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return json.loads(frame.to_json(orient="records"))


# --- the run -----------------------------------------------------------------------------------------------------

def test_release_is_installed(kube: Any) -> None:
    apps = kube.AppsV1Api()
    for name in (f"{RELEASE}-trigger", f"{RELEASE}-drift-exporter"):
        deployment = apps.read_namespaced_deployment(name, NAMESPACE)
        assert (deployment.status.available_replicas or 0) >= 1, f"{name} is not available"
    scorer = apps.read_namespaced_deployment(f"{RELEASE}-scorer", NAMESPACE)
    assert scorer.spec.template.spec.containers[0].image == IMAGE
    assert kube.BatchV1Api().read_namespaced_cron_job(f"{RELEASE}-drift", NAMESPACE)


@pytest.fixture(scope="module")
def kfp_host(kube: Any) -> Iterator[str]:
    with port_forward("kubeflow", "svc/ml-pipeline", 8888) as url:
        yield url


def test_training_pipeline_runs_on_kfp_and_promotes_a_champion(kfp_host: str) -> None:
    from fraudops.orchestration import kfp_client, pipeline_arguments, submit, wait_for_run

    client = kfp_client(kfp_host)
    arguments = pipeline_arguments(rows=20_000, seed=7, registry_url=REGISTRY_URL)
    run_id = submit(client, arguments, image=IMAGE, experiment="fraudops-e2e", run_name="fraudops-e2e-initial",
                    s3_secret="fraudops-s3", s3_endpoint=S3_ENDPOINT)
    assert wait_for_run(client, run_id, timeout=TRAIN_TIMEOUT, poll=15) == "SUCCEEDED"


def test_scorer_turns_ready_and_scores(kube: Any) -> None:
    wait_for("the scorer to load the champion (/readyz)", lambda: http_json(f"{SCORER_URL}/readyz")[0] == 200,
             timeout=900, poll=10)
    status, answer = http_json(f"{SCORER_URL}/score", {"transactions": transactions(20, seed=11)})
    assert status == 200, answer
    assert answer
    status, bad = http_json(f"{SCORER_URL}/score", {"transactions": [{"amount": "not a number"}]})
    assert 400 <= status < 500, bad
    with urllib.request.urlopen(f"{SCORER_URL}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert "fraudops_scorer_requests_total" in metrics and "fraudops_scorer_model_info" in metrics


def _prometheus_query(url: str, query: str) -> list[dict[str, Any]]:
    status, body = http_json(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}")
    assert status == 200, body
    return body["data"]["result"]


def test_drift_alert_launches_a_retraining_run(kube: Any, kfp_host: str) -> None:
    if not WITH_PROMETHEUS:
        pytest.skip("needs kube-prometheus-stack: scripts/kind-up.sh with PROMETHEUS=1")
    from test_monitoring_rules import shrink_windows

    from fraudops.orchestration import kfp_client, wait_for_run

    custom = kube.CustomObjectsApi()
    rule_name = f"{RELEASE}-monitoring"
    rule = custom.get_namespaced_custom_object("monitoring.coreos.com", "v1", NAMESPACE, "prometheusrules", rule_name)
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    shrunk = yaml.safe_load(shrink_windows(RULES.read_text()))["groups"]
    custom.patch_namespaced_custom_object("monitoring.coreos.com", "v1", NAMESPACE, "prometheusrules", rule_name,
                                          {"spec": {"groups": shrunk}})

    client = kfp_client(kfp_host)
    runs_before = {r.run_id for r in (client.list_runs(page_size=100).runs or [])}

    # drifted traffic (shifted amounts, another category mix, a new fraud pattern), then a drift run now
    rows = transactions(3000, seed=23, drifted=True)
    for start in range(0, len(rows), 250):
        status, answer = http_json(f"{SCORER_URL}/score", {"transactions": rows[start:start + 250]})
        assert status == 200, answer
    cron = kube.BatchV1Api().read_namespaced_cron_job(f"{RELEASE}-drift", NAMESPACE)
    job_name = f"{RELEASE}-drift-e2e-{int(time.time())}"
    job = kube.V1Job(metadata=kube.V1ObjectMeta(name=job_name, labels=cron.spec.job_template.metadata.labels),
                     spec=cron.spec.job_template.spec)
    kube.BatchV1Api().create_namespaced_job(NAMESPACE, job)
    wait_for(f"drift job {job_name}",
             lambda: (kube.BatchV1Api().read_namespaced_job_status(job_name, NAMESPACE).status.succeeded or 0) >= 1,
             timeout=1200, poll=10)

    with port_forward("monitoring", "svc/prometheus-operated", 9090) as prometheus:
        wait_for("drift metrics in Prometheus",
                 lambda: _prometheus_query(prometheus, "fraudops_drift_last_run_timestamp_seconds"), 300)
        wait_for("a firing retrain alert",
                 lambda: _prometheus_query(prometheus, 'ALERTS{alertstate="firing", action="retrain"}'), 600)
        wait_for("the trigger to launch a retraining run",
                 lambda: any(float(s["value"][1]) > 0 for s in _prometheus_query(
                     prometheus, "fraudops_trigger_retrains_launched_total")), 600)

    new_runs = wait_for("a new KFP run", lambda: [r for r in (client.list_runs(page_size=100).runs or [])
                                                  if r.run_id not in runs_before], 300)
    assert wait_for_run(client, new_runs[0].run_id, timeout=TRAIN_TIMEOUT, poll=15) == "SUCCEEDED"
