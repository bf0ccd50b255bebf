"""Retraining backends: the CLI arguments of a request, the local child process, KFP runs (fake kfp.Client at
the API boundary), Kubernetes Jobs (manifest validated against the 1.31 schema, fake BatchV1Api) and
`make_backend`'s errors."""

from __future__ import annotations

import inspect
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client as k8s

from fraudops.cli import main as cli
from fraudops.errors import ConfigError
from fraudops.monitoring.backends import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    JobBackend,
    KfpBackend,
    LocalBackend,
    RetrainRequest,
    make_backend,
)
from fraudops.registry import Registry

IMAGE = "registry.example/fraudops:1.4.0"
REQUEST = RetrainRequest(run_id="20260301100000-abc123", data_uri="s3://fraud-data/base.parquet",
                         extra_uris=("s3://fraud-data/exports/a.parquet", "s3://fraud-data/exports/b.parquet"),
                         registry_url="s3://fraud-registry/prod", extra_args=("--iterations", "300"))


def wait_for_end(backend: Any, external_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (state := backend.status(external_id)) == RUNNING:
        assert time.monotonic() < deadline, f"run {external_id} still running after {timeout} s"
        time.sleep(0.2)
    return state


# -- the request ------------------------------------------------------------------------------------------------
def test_cli_args_of_a_request() -> None:
    assert REQUEST.cli_args() == [
        "pipeline", "run", "--local", "--data", "s3://fraud-data/base.parquet",
        "--extra-data", "s3://fraud-data/exports/a.parquet", "--extra-data", "s3://fraud-data/exports/b.parquet",
        "--registry-url", "s3://fraud-registry/prod", "--iterations", "300"]
    bare = RetrainRequest(run_id="r", data_uri="", extra_uris=())
    assert bare.cli_args() == ["pipeline", "run", "--local"]


def test_cli_args_are_accepted_by_the_pipeline_run_command() -> None:
    run = cli.commands["pipeline"].commands["run"]
    args = REQUEST.cli_args()
    assert args[:2] == ["pipeline", "run"]
    context = run.make_context("run", [*args[2:], "--root", "/tmp/runs"])
    assert context.params["data_uri"] == REQUEST.data_uri
    assert context.params["extra_data"] == REQUEST.extra_uris
    assert context.params["registry_url"] == REQUEST.registry_url
    assert context.params["iterations"] == 300 and context.params["root"] == "/tmp/runs"


# -- local ------------------------------------------------------------------------------------------------------
def test_local_status_of_an_unknown_process_is_failed(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    assert backend.status(f"{os.getpid()}/other-run") == FAILED  # a live pid running something else
    assert backend.status("not-a-pid") == FAILED
    assert backend.status(f"{2 ** 22 + 1}/gone") == FAILED


def test_a_restarted_trigger_follows_a_local_run_that_outlived_it(tmp_path: Path) -> None:
    """Only the trigger was killed (an OOM kill): its pipeline child runs on and must not count as failed, or the
    next alert would start a second retraining beside it."""
    class Sleeper(LocalBackend):
        def command(self, request: RetrainRequest) -> list[str]:
            return [sys.executable, "-c", f"import time, sys; time.sleep(1.5); sys.exit({request.extra_args[0]})"]

    first = Sleeper(tmp_path / "work")
    runs = {code: first.launch(RetrainRequest(run_id=f"run-{code}", data_uri="", extra_uris=(), extra_args=(code,)))
            for code in ("0", "3")}
    for run in runs.values():  # until the shells have started (a restart takes longer than that)
        cmdline = Path(f"/proc/{run.split('/')[0]}/cmdline")
        deadline = time.monotonic() + 10
        while b".exit" not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
    restarted = LocalBackend(tmp_path / "work")  # a new trigger process: it started neither child
    assert {restarted.status(run) for run in runs.values()} == {RUNNING}
    for run in runs.values():
        first.processes[run].wait(timeout=30)
    assert restarted.status(runs["0"]) == SUCCEEDED and restarted.status(runs["3"]) == FAILED
    assert first.status(runs["0"]) == SUCCEEDED

def test_local_run_that_fails_is_failed_with_its_log(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "work", env={"BENTOML_HOME": str(tmp_path / "bentoml")})
    request = RetrainRequest(run_id="bad-run", data_uri=str(tmp_path / "data.parquet"), extra_uris=(),
                             extra_args=("--no-such-option",))
    pid = backend.launch(request)
    assert pid.endswith("/bad-run") and backend.processes[pid].args[-3:] == ["--no-such-option", "--root",
                                                                             str(tmp_path / "work" / "runs")]
    assert wait_for_end(backend, pid, timeout=60) == FAILED
    log = (tmp_path / "work" / "bad-run.log").read_text()
    assert "No such option '--no-such-option'" in log


@pytest.mark.slow
def test_local_run_trains_and_registers_a_model(tmp_path: Path, transactions) -> None:
    base, recent = tmp_path / "base.parquet", tmp_path / "recent.parquet"
    transactions(3000, seed=1).to_parquet(base, index=False)
    (transactions(500, seed=2, start="2026-02-01").assign(transaction_id=lambda f: "recent-" + f.transaction_id)
     .to_parquet(recent, index=False))
    home = tmp_path / "bentoml"
    backend = LocalBackend(tmp_path / "work", env={"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True",
                                                   "FRAUDOPS_REGISTRY_URL": ""})
    request = RetrainRequest(run_id="retrain-1", data_uri=str(base), extra_uris=(str(recent),),
                             extra_args=("--iterations", "30", "--threads", "2"))
    pid = backend.launch(request)
    state = wait_for_end(backend, pid, timeout=300)
    log = (tmp_path / "work" / "retrain-1.log").read_text()
    assert state == SUCCEEDED, log[-3000:]
    registry = Registry(home=home, remote="")
    champion = registry.champion()
    assert champion is not None and f"registered {champion}" in log
    assert registry.info(champion).metadata["source"] == f"{base} + {recent}"
    assert (tmp_path / "work" / "runs").is_dir()


# -- Kubeflow Pipelines -----------------------------------------------------------------------------------------
class FakeKfpClient:
    """The two kfp.Client methods the backend uses."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.states: dict[str, Any] = {}

    def create_run_from_pipeline_func(self, pipeline_func: Any, arguments: dict[str, Any] | None = None,
                                      experiment_name: str | None = None, run_name: str | None = None,
                                      enable_caching: bool | None = None) -> Any:
        self.created.append({"pipeline_func": pipeline_func, "arguments": arguments,
                             "experiment_name": experiment_name, "run_name": run_name,
                             "enable_caching": enable_caching})
        return SimpleNamespace(run_id=f"kfp-run-{len(self.created)}")

    def get_run(self, run_id: str) -> Any:
        return SimpleNamespace(run_id=run_id, state=self.states[run_id])


def test_fakes_match_the_real_client_signatures() -> None:
    """The fakes stand in for kfp.Client and BatchV1Api: the calls they accept must bind to the real methods."""
    import kfp

    real = inspect.signature(kfp.Client.create_run_from_pipeline_func)
    real.bind(None, pipeline_func=None, arguments={}, experiment_name="e", run_name="r", enable_caching=None)
    inspect.signature(kfp.Client.get_run).bind(None, "run-id")
    inspect.signature(k8s.BatchV1Api.create_namespaced_job).bind(None, namespace="ns", body={})
    inspect.signature(k8s.BatchV1Api.read_namespaced_job).bind(None, name="job", namespace="ns")


def test_kfp_launch_submits_the_pipeline_with_validated_arguments(tmp_path: Path) -> None:
    from kfp import compiler

    fake = FakeKfpClient()
    backend = KfpBackend(fake, IMAGE, s3_secret="s3-creds", s3_endpoint="http://minio:9000")
    assert backend.launch(REQUEST) == "kfp-run-1"
    (call,) = fake.created
    assert call["run_name"] == "fraudops-retrain-20260301100000-abc123"
    assert call["experiment_name"] == "fraudops-retrain" and call["enable_caching"] is None
    arguments = call["arguments"]
    assert arguments["data_uri"] == "s3://fraud-data/base.parquet"
    assert arguments["extra_uris"] == "s3://fraud-data/exports/a.parquet,s3://fraud-data/exports/b.parquet"
    assert arguments["registry_url"] == "s3://fraud-registry/prod"
    assert arguments["rows"] == 20_000 and '"iterations":800' in arguments["train_config"]
    # what would be sent compiles, with the components in the project image and the registry secret
    compiler.Compiler().compile(call["pipeline_func"], str(tmp_path / "p.yaml"))
    docs = list(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    executors = docs[0]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {IMAGE}
    assert set(docs[0]["root"]["inputDefinitions"]["parameters"]) >= set(arguments)
    assert "s3-creds" in (tmp_path / "p.yaml").read_text()


def test_kfp_launch_passes_parameters_and_refuses_bad_ones_before_sending() -> None:
    fake = FakeKfpClient()
    backend = KfpBackend(fake, IMAGE, experiment="nightly")
    good = RetrainRequest(run_id="r2", data_uri="s3://d/x.parquet", extra_uris=(), parameters={"rows": 5000,
                                                                                              "seed": 3})
    backend.launch(good)
    assert fake.created[0]["arguments"]["seed"] == 3 and fake.created[0]["experiment_name"] == "nightly"
    assert fake.created[0]["arguments"]["extra_uris"] == ""
    bad = RetrainRequest(run_id="r3", data_uri="s3://d/x.parquet", extra_uris=(), parameters={"rows": 0})
    with pytest.raises(ConfigError, match="rows must be at least 1"):
        backend.launch(bad)
    assert len(fake.created) == 1


@pytest.mark.parametrize(("state", "expected"), [
    ("SUCCEEDED", SUCCEEDED), ("FAILED", FAILED), ("CANCELED", FAILED), ("CANCELING", FAILED),
    ("SKIPPED", FAILED), ("RUNNING", RUNNING), ("PENDING", RUNNING), ("RUNTIME_STATE_UNSPECIFIED", RUNNING),
])
def test_kfp_state_mapping(state: str, expected: str) -> None:
    fake = FakeKfpClient()
    fake.states["kfp-run-9"] = state
    assert KfpBackend(fake, IMAGE).status("kfp-run-9") == expected


# -- Kubernetes Jobs --------------------------------------------------------------------------------------------
class FakeBatchApi:
    """The two BatchV1Api methods the backend uses, returning real kubernetes client models."""

    def __init__(self) -> None:
        self.created: list[tuple[str, dict[str, Any]]] = []
        self.statuses: dict[str, k8s.V1JobStatus] = {}

    def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> k8s.V1Job:
        self.created.append((namespace, body))
        return k8s.V1Job(metadata=k8s.V1ObjectMeta(name=body["metadata"]["name"], namespace=namespace))

    def read_namespaced_job(self, name: str, namespace: str) -> k8s.V1Job:
        return k8s.V1Job(metadata=k8s.V1ObjectMeta(name=name, namespace=namespace), status=self.statuses[name])


def job_backend(api: Any = None, **kwargs: Any) -> JobBackend:
    options = {"service_account": "fraudops-retrain", "env_from_secret": "s3-creds",
               "env": {"FRAUDOPS_REGISTRY_URL": "s3://fraud-registry/prod", "FRAUDOPS_S3_ENDPOINT": "http://minio"}}
    return JobBackend(api or FakeBatchApi(), "ml-prod", IMAGE, **(options | kwargs))


def test_job_manifest_is_a_valid_hardened_job() -> None:
    manifest = job_backend().manifest(REQUEST)
    assert kubernetes_validate.validate(manifest, "1.31", strict=True)
    meta, spec = manifest["metadata"], manifest["spec"]
    assert meta["name"] == "fraudops-retrain-20260301100000-abc123" and meta["namespace"] == "ml-prod"
    labels = {"app.kubernetes.io/name": "fraudops", "app.kubernetes.io/component": "retrain",
              "fraudops.io/run-id": "20260301100000-abc123"}
    assert meta["labels"] == labels and spec["template"]["metadata"]["labels"] == labels
    assert spec["backoffLimit"] == 0 and spec["ttlSecondsAfterFinished"] == 86_400
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "fraudops-retrain"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True and security["capabilities"] == {"drop": ["ALL"]}
    assert container["args"] == [*REQUEST.cli_args(), "--root", "/tmp/runs"]
    assert {"s3://fraud-data/base.parquet", "s3://fraud-data/exports/a.parquet",
            "s3://fraud-data/exports/b.parquet"} <= set(container["args"])
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert container["env"] == [{"name": "FRAUDOPS_REGISTRY_URL", "value": "s3://fraud-registry/prod"},
                                {"name": "FRAUDOPS_S3_ENDPOINT", "value": "http://minio"}]
    # the read-only root file system still has writable scratch space where the run writes
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts and {v["name"] for v in pod["volumes"]} == {m["name"] for m in container["volumeMounts"]}
    assert container["resources"]["limits"]["memory"] == "4Gi"


def test_job_manifest_minimal_and_long_run_ids_stay_valid() -> None:
    backend = JobBackend(FakeBatchApi(), "default", IMAGE)
    long = RetrainRequest(run_id="20260301100000-ABCDEF-" + "x" * 30, data_uri="s3://d/base.parquet",
                          extra_uris=())
    manifest = backend.manifest(long)
    assert kubernetes_validate.validate(manifest, "1.31", strict=True)
    name = manifest["metadata"]["name"]
    assert len(name) <= 63 and name == name.lower() and not name.endswith("-")
    pod = manifest["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod and "envFrom" not in pod["containers"][0]
    assert pod["containers"][0]["env"] == []


def test_job_launch_and_status() -> None:
    api = FakeBatchApi()
    backend = job_backend(api)
    name = backend.launch(REQUEST)
    assert name == "fraudops-retrain-20260301100000-abc123"
    assert api.created == [("ml-prod", backend.manifest(REQUEST))]
    cases = [
        (k8s.V1JobStatus(active=1), RUNNING),
        (k8s.V1JobStatus(), RUNNING),
        (k8s.V1JobStatus(succeeded=1, conditions=[k8s.V1JobCondition(type="Complete", status="True")]), SUCCEEDED),
        (k8s.V1JobStatus(failed=1), FAILED),
        (k8s.V1JobStatus(conditions=[k8s.V1JobCondition(type="Failed", status="True", reason="DeadlineExceeded")]),
         FAILED),
        (k8s.V1JobStatus(active=1, conditions=[k8s.V1JobCondition(type="Failed", status="False")]), RUNNING),
    ]
    for status, expected in cases:
        api.statuses[name] = status
        assert backend.status(name) == expected, status


# -- make_backend -----------------------------------------------------------------------------------------------
def test_make_backend_local(tmp_path: Path) -> None:
    backend = make_backend("local", workdir=tmp_path / "runs")
    assert isinstance(backend, LocalBackend) and backend.workdir == tmp_path / "runs" and backend.name == "local"


def test_make_backend_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--kfp-host"):
        make_backend("kfp", workdir=tmp_path, image=IMAGE)
    with pytest.raises(ConfigError, match="unknown backend 'airflow'"):
        make_backend("airflow", workdir=tmp_path)


@pytest.fixture
def no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Neither in a pod nor with a kubeconfig."""
    from kubernetes.config import kube_config

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    missing = tmp_path / "no-such-kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    monkeypatch.setenv("HOME", str(tmp_path))
    # the kubernetes client reads $KUBECONFIG once, at import
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(missing))
    return missing


def test_make_backend_job_without_kubernetes_is_a_config_error(no_cluster: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the job backend needs a Kubernetes API"):
        make_backend("job", workdir=tmp_path, image=IMAGE)


def test_make_backend_job_with_a_kubeconfig(no_cluster: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    no_cluster.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "test", "user": {"token": "abc"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
    monkeypatch.setenv("FRAUDOPS_REGISTRY_URL", "s3://fraud-registry/prod")
    monkeypatch.setenv("FRAUDOPS_TRIGGER_TOKEN", "must-not-leak")
    backend = make_backend("job", workdir=tmp_path, image=IMAGE, namespace="ml-prod", s3_secret="s3-creds",
                           service_account="retrain")
    assert isinstance(backend, JobBackend) and backend.name == "job"
    assert backend.namespace == "ml-prod" and backend.image == IMAGE
    assert backend.env_from_secret == "s3-creds" and backend.service_account == "retrain"
    assert backend.env == {"FRAUDOPS_REGISTRY_URL": "s3://fraud-registry/prod"}
    assert isinstance(backend.api, k8s.BatchV1Api)
    default_ns = make_backend("job", workdir=tmp_path, image=IMAGE)
    assert default_ns.namespace == "default"  # not in a pod: no service-account namespace file
