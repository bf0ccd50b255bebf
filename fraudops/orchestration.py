"""Running the training pipeline: compile to IR YAML, run on this machine with ``kfp.local``, or submit to a
Kubeflow Pipelines API with ``kfp.Client``."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fraudops.data.synthetic import DriftConfig
from fraudops.errors import ConfigError, FraudopsError
from fraudops.gate import RELEASES, GatePolicy
from fraudops.registry import Registry
from fraudops.schema import DatasetSpec
from fraudops.training import TrainConfig

log = logging.getLogger(__name__)

ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$", re.MULTILINE)
FINAL_STATES = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELING", "PAUSED"}


def pipeline_arguments(*, data_uri: str = "", extra_uris: tuple[str, ...] = (), spec: DatasetSpec | None = None,
                       ip_table: str = "", rows: int = 20_000, seed: int = 0, start: str = "2026-01-01",
                       days: float = 30.0, fraud_rate: float = 0.03, drift: DriftConfig | None = None,
                       max_bad_fraction: float = 0.05, train_config: TrainConfig | None = None,
                       gate_policy: GatePolicy | None = None, registry_url: str = "",
                       release: str = "promote") -> dict[str, Any]:
    """Pipeline parameters from validated objects (so that bad values fail here, before any run starts)."""
    if rows < 1:
        raise ConfigError(f"rows must be at least 1, got {rows}")
    if release not in RELEASES:
        raise ConfigError(f"release must be one of {', '.join(RELEASES)}, not {release!r}")
    drift = drift or DriftConfig()
    return {
        "data_uri": data_uri,
        "extra_uris": ",".join(extra_uris),
        "dataset_spec": spec.model_dump_json() if spec else "",
        "ip_table": ip_table,
        "rows": rows,
        "seed": seed,
        "start": start,
        "days": days,
        "fraud_rate": fraud_rate,
        "drift": json.dumps(asdict(drift)),
        "max_bad_fraction": max_bad_fraction,
        "train_config": (train_config or TrainConfig()).model_dump_json(),
        "gate_policy": (gate_policy or GatePolicy()).model_dump_json(),
        "registry_url": registry_url,
        "release": release,
    }


def compile_pipeline(output: str | Path, image: str, s3_secret: str = "", s3_endpoint: str = "") -> Path:
    """Write the pipeline as KFP IR YAML for ``image``."""
    from kfp import compiler

    from pipelines.training import build_pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image, s3_secret, s3_endpoint), str(output))
    return output


@dataclass
class LocalRun:
    """What a local pipeline run did, read back from the registry (not from the runner's status)."""

    tag: str
    verdict: str
    reason: str
    champion: str | None
    run_dir: Path
    log: Path


class _TaskOutput(io.TextIOBase):
    """Where ``kfp.local`` prints the tasks' output: a log file, optionally the console, and the last error."""

    def __init__(self, log_file: io.TextIOBase, echo: io.TextIOBase | None) -> None:
        self.log_file, self.echo, self.failures = log_file, echo, []

    def write(self, text: str) -> int:
        self.log_file.write(text)
        if self.echo is not None:
            self.echo.write(text)
        self.failures += [f"{name}: {message}" for name, message in ERROR_LINE.findall(text)]
        return len(text)


def run_local(arguments: dict[str, Any], root: str | Path = "fraudops-runs", echo: bool = False) -> LocalRun:
    """Run the pipeline with ``kfp.local`` (SubprocessRunner, this virtualenv) and check what it registered.

    The tasks' output goes to ``<root>/logs/<time>.log`` (and to the console with ``echo``); a failed run raises
    `FraudopsError` with the failing step's error message.
    """
    from kfp import local

    from pipelines.training import PIPELINE_NAME, build_pipeline

    root = Path(root).resolve()
    workspace = root / "workspace"
    log_path = root / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in root.glob(f"{PIPELINE_NAME}-*")}
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               workspace_root=str(workspace), raise_on_error=True)
    with log_path.open("w") as log_file, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        output = _TaskOutput(log_file, sys.stdout if echo else None)
        try:
            with contextlib.redirect_stdout(output):
                tag = build_pipeline()(**arguments).output
        except RuntimeError as exc:
            cause = output.failures[-1] if output.failures else str(exc)
            raise FraudopsError(f"pipeline run failed: {cause} (task logs: {log_path})") from None
        finally:
            shutil.rmtree(workspace, ignore_errors=True)
    registry = Registry(remote=arguments.get("registry_url") or None)
    info = registry.info(tag)  # the run must really have registered the model
    new_runs = sorted(p for p in root.glob(f"{PIPELINE_NAME}-*") if p.name not in before)
    run_dir = new_runs[-1] if new_runs else root
    gate = json.loads((registry.path(tag) / "gate.json").read_text())
    champion = registry.champion()
    rollout = registry.rollout()
    released = champion == tag or (rollout is not None and rollout.challenger == tag)
    if (gate["verdict"] == "promote") != released:
        raise FraudopsError(f"pipeline run is inconsistent: gate said {gate['verdict']} but the champion is "
                            f"{champion} and the rollout {rollout.challenger if rollout else 'none'}; check the "
                            f"promote step in {log_path}")
    return LocalRun(tag=info.tag, verdict=gate["verdict"], reason=gate["reason"], champion=champion,
                    run_dir=run_dir, log=log_path)


def kfp_client(host: str, namespace: str | None = None, token: str | None = None) -> Any:
    """A ``kfp.Client`` for the KFP API at ``host``."""
    import kfp

    return kfp.Client(host=host, namespace=namespace, existing_token=token)


def submit(client: Any, arguments: dict[str, Any], *, image: str, experiment: str = "fraudops",
           run_name: str | None = None, s3_secret: str = "", s3_endpoint: str = "",
           enable_caching: bool | None = None) -> str:
    """Create a run on a Kubeflow Pipelines API; returns the run id.

    Per-step caching follows `pipelines.training.CACHING` unless ``enable_caching`` overrides it.
    """
    from pipelines.training import build_pipeline

    run = client.create_run_from_pipeline_func(
        build_pipeline(image, s3_secret, s3_endpoint), arguments=arguments, experiment_name=experiment,
        run_name=run_name or f"fraudops-training-{time.strftime('%Y%m%d-%H%M%S')}", enable_caching=enable_caching)
    return run.run_id


def run_state(client: Any, run_id: str) -> str:
    """The state of a KFP run (``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED``, ...)."""
    return str(client.get_run(run_id).state)


def wait_for_run(client: Any, run_id: str, timeout: float = 3600, poll: float = 10) -> str:
    """Poll a KFP run until it ends; returns its final state, raises on time-out."""
    deadline = time.monotonic() + timeout
    while True:
        state = run_state(client, run_id)
        if state in FINAL_STATES:
            return state
        if time.monotonic() > deadline:
            raise FraudopsError(f"KFP run {run_id} still {state} after {timeout:.0f} s")
        time.sleep(poll)
