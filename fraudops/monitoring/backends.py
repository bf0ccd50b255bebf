"""Where a retraining runs: ``local`` (the KFP pipeline with kfp.local in a child process), ``kfp`` (a run on a
Kubeflow Pipelines API) or ``job`` (a Kubernetes Job running the pipeline in the project image)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from fraudops.errors import ConfigError
from fraudops.settings import StoreSettings, TriggerSettings, variable

log = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"


def new_run_id() -> str:
    """A run id that sorts by start time and is unique: ``YYYYmmddHHMMSS-xxxxxx`` (UTC)."""
    return f"{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class RetrainRequest:
    """What to train on: the base data (optional) plus the exported recent labelled traffic."""

    run_id: str
    data_uri: str
    extra_uris: tuple[str, ...]
    registry_url: str = ""
    extra_args: tuple[str, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    release: str = "promote"

    def cli_args(self) -> list[str]:
        """``fraudops pipeline run --local`` arguments for this request."""
        args = ["pipeline", "run", "--local"]
        if self.data_uri:
            args += ["--data", self.data_uri]
        for uri in self.extra_uris:
            args += ["--extra-data", uri]
        if self.registry_url:
            args += ["--registry-url", self.registry_url]
        if self.release != "promote":
            args += ["--release", self.release]
        return [*args, *self.extra_args]


class Backend(Protocol):
    """Launches retraining runs and reports their state."""

    name: str

    def launch(self, request: RetrainRequest) -> str:
        """Start a run; returns the backend's id for it."""

    def status(self, external_id: str) -> str:
        """``running``, ``succeeded`` or ``failed``."""


class LocalBackend:
    """Runs ``fraudops pipeline run --local`` as a child process of the trigger (this machine).

    The run id is ``<pid>/<run id>``. A shell around the pipeline writes its exit code to
    ``<workdir>/<run id>.exit``, so a restarted trigger still follows a run that outlived it (only the trigger was
    killed): running while that pid still runs this run, then the code in the file. A run that died with the
    trigger's process group left no code: failed.
    """

    name = "local"

    def __init__(self, workdir: str | Path, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def launch(self, request: RetrainRequest) -> str:
        """Start the pipeline in a child process whose output goes to ``<workdir>/<run id>.log``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_file = (self.workdir / f"{request.run_id}.log").open("wb")
        command = self.command(request)
        exit_file = self.workdir / f"{request.run_id}.exit"
        process = subprocess.Popen(["/bin/sh", "-c", '"$@"; echo $? > "$0.tmp" && mv "$0.tmp" "$0"',
                                    str(exit_file), *command],
                                   stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(self.env or {})})
        log_file.close()
        external_id = f"{process.pid}/{request.run_id}"
        self.processes[external_id] = process
        return external_id

    def command(self, request: RetrainRequest) -> list[str]:
        """The pipeline's command line."""
        return [sys.executable, "-m", "fraudops", *request.cli_args(), "--root", str(self.workdir / "runs")]

    def status(self, external_id: str) -> str:
        """Running while the run's process lives, then succeeded or failed by its exit code."""
        pid, _, run_id = external_id.partition("/")
        process = self.processes.get(external_id)
        if process is not None and process.poll() is None:  # (poll also reaps a finished child)
            return RUNNING
        exit_file = self.workdir / f"{run_id}.exit"
        if run_id and exit_file.exists():
            return SUCCEEDED if exit_file.read_text().strip() == "0" else FAILED
        if run_id and pid.isdigit() and _runs(int(pid), str(exit_file)):
            return RUNNING
        return FAILED


def _runs(pid: int, marker: str) -> bool:
    """True if process ``pid`` is alive and its command line holds ``marker`` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and marker.encode() in cmdline


class KfpBackend:
    """Creates runs of the training pipeline on a Kubeflow Pipelines API with ``kfp.Client``."""

    name = "kfp"

    def __init__(self, client: Any, image: str, experiment: str = "fraudops-retrain", s3_secret: str = "",
                 s3_endpoint: str = "") -> None:
        self.client, self.image, self.experiment = client, image, experiment
        self.s3_secret, self.s3_endpoint = s3_secret, s3_endpoint

    def launch(self, request: RetrainRequest) -> str:
        """Submit one run; the parameters are validated before anything is sent."""
        from fraudops.orchestration import pipeline_arguments, submit

        arguments = pipeline_arguments(data_uri=request.data_uri, extra_uris=request.extra_uris,
                                       registry_url=request.registry_url, release=request.release,
                                       **request.parameters)
        return submit(self.client, arguments, image=self.image, experiment=self.experiment,
                      run_name=f"fraudops-retrain-{request.run_id}", s3_secret=self.s3_secret,
                      s3_endpoint=self.s3_endpoint)

    def status(self, external_id: str) -> str:
        """Map KFP run states onto running/succeeded/failed."""
        from fraudops.orchestration import FINAL_STATES, run_state

        state = run_state(self.client, external_id)
        if state == "SUCCEEDED":
            return SUCCEEDED
        return FAILED if state in FINAL_STATES else RUNNING


# What the `restricted` Pod Security standard asks of a fraudops container, and of its pod.
CONTAINER_SECURITY: dict[str, Any] = {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False,
                                      "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
POD_SECURITY: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}, "fsGroup": 10001}


class JobBackend:
    """Creates a Kubernetes Job that runs the pipeline (``kfp.local`` inside the project image)."""

    name = "job"

    def __init__(self, batch_api: Any, namespace: str, image: str, *, purpose: str = "retrain",
                 service_account: str = "", env_from_secret: str = "", env: dict[str, str] | None = None,
                 ttl_seconds: int = 86_400, resources: dict[str, dict[str, str]] | None = None) -> None:
        """``purpose`` (retrain, train) names the Job, its container and its component label."""
        self.api, self.namespace, self.image, self.purpose = batch_api, namespace, image, purpose
        self.service_account, self.env_from_secret = service_account, env_from_secret
        self.env = env or {}
        self.ttl_seconds = ttl_seconds
        self.resources = resources or {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}

    def manifest(self, request: RetrainRequest) -> dict[str, Any]:
        """The Job object for a request (what `launch` sends to the API)."""
        name = f"fraudops-{self.purpose}-{request.run_id}".lower()[:63].rstrip("-")
        container: dict[str, Any] = {
            "name": self.purpose, "image": self.image, "args": [*request.cli_args(), "--root", "/tmp/runs"],
            "env": [{"name": k, "value": v} for k, v in sorted(self.env.items())],
            "resources": self.resources,
            "securityContext": CONTAINER_SECURITY,
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                             {"name": "bentoml", "mountPath": "/var/lib/fraudops/bentoml"}],
        }
        if self.env_from_secret:
            container["envFrom"] = [{"secretRef": {"name": self.env_from_secret}}]
        pod: dict[str, Any] = {
            "restartPolicy": "Never", "containers": [container],
            "securityContext": POD_SECURITY,
            "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "bentoml", "emptyDir": {}}],
            "automountServiceAccountToken": False,
        }
        if self.service_account:
            pod["serviceAccountName"] = self.service_account
        labels = {"app.kubernetes.io/name": "fraudops", "app.kubernetes.io/component": self.purpose,
                  "fraudops.io/run-id": request.run_id}
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
                "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": self.ttl_seconds,
                         "template": {"metadata": {"labels": labels}, "spec": pod}}}

    def launch(self, request: RetrainRequest) -> str:
        """Create the Job; returns its name."""
        body = self.manifest(request)
        self.api.create_namespaced_job(namespace=self.namespace, body=body)
        return body["metadata"]["name"]

    def wait(self, external_id: str, timeout: float, poll: float = 5.0) -> str:
        """Follow a Job until it succeeds or fails; ``running`` when ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while (state := self.status(external_id)) == RUNNING and time.monotonic() < deadline:
            time.sleep(poll)
        return state

    def logs(self, core_api: Any, external_id: str, tail_lines: int = 40) -> str:
        """The last lines of the output of the Job's newest pod ('' when it has none yet)."""
        pods = core_api.list_namespaced_pod(self.namespace, label_selector=f"job-name={external_id}").items
        if not pods:
            return ""
        newest = max(pods, key=lambda pod: pod.metadata.creation_timestamp)
        return core_api.read_namespaced_pod_log(newest.metadata.name, self.namespace, tail_lines=tail_lines)

    def status(self, external_id: str) -> str:
        """Map the Job's status onto running/succeeded/failed."""
        # the Job object carries its status; reading the jobs/status subresource would need one more RBAC rule
        job = self.api.read_namespaced_job(name=external_id, namespace=self.namespace)
        status = job.status
        if status.succeeded:
            return SUCCEEDED
        conditions = status.conditions or []
        if status.failed or any(c.type == "Failed" and c.status == "True" for c in conditions):
            return FAILED
        return RUNNING


def kubernetes_api(kubeconfig: str | None = None, purpose: str = "the job backend") -> Any:
    """The ``kubernetes`` client configured for this pod's cluster, else the kubeconfig (``kubeconfig`` or
    $KUBECONFIG); fails with what is missing and what needed it."""
    from kubernetes import client, config

    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
    except (config.ConfigException, OSError) as exc:
        raise ConfigError(f"{purpose} needs a Kubernetes API (in-cluster or kubeconfig): {exc}") from None
    return client


def make_backend(name: str, *, workdir: str | Path, kfp_host: str = "", image: str = "", namespace: str = "",
                 s3_secret: str = "", s3_endpoint: str = "", service_account: str = "",
                 job_resources: dict[str, dict[str, str]] | None = None) -> Backend:
    """Build a backend from the trigger's flags; fails early with what is missing."""
    if name == "local":
        return LocalBackend(workdir)
    if name == "kfp":
        if not kfp_host:
            raise ConfigError("the kfp backend needs --kfp-host (the Kubeflow Pipelines API address)")
        from fraudops.orchestration import kfp_client

        token = TriggerSettings.from_env().kfp_token.get_secret_value() or None
        return KfpBackend(kfp_client(kfp_host, token=token), image, s3_secret=s3_secret, s3_endpoint=s3_endpoint)
    if name == "job":
        client = kubernetes_api()
        store = StoreSettings.from_env(**({"s3_endpoint": s3_endpoint} if s3_endpoint else {}))
        env = {variable(StoreSettings, name): value for name in ("registry_url", "s3_endpoint", "prediction_log")
               if (value := getattr(store, name))}
        return JobBackend(client.BatchV1Api(), namespace or _pod_namespace(), image, service_account=service_account,
                          env_from_secret=s3_secret, env=env, resources=job_resources)
    raise ConfigError(f"unknown backend {name!r}; choose local, kfp or job")


def _pod_namespace() -> str:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.exists() else "default"
