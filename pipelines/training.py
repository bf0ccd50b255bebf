"""The training pipeline (KFP v2): ingest -> validate -> split+features -> train -> evaluate -> gate -> register
-> promote (only if the gate passes).

Components are lightweight KFP components whose bodies import the installed ``fraudops`` package: locally
(``kfp.local`` SubprocessRunner) that is this virtualenv, on a cluster it is the project image, whose name is a
build parameter (`build_pipeline`). Every component is a thin wrapper around a function in `fraudops.steps`.

Caching (KFP caches steps by default) is chosen per step in `CACHING`:
- ``ingest`` never caches: the same data URI may hold new data (a retraining run re-reads the same path).
- ``validate`` and ``split_features`` cache: they are pure functions of their input artifact, and a new ingest
  produces a new artifact, so a hit only happens for identical inputs.
- ``train``, ``evaluate``, ``gate``, ``register`` and ``promote`` never cache: a retraining run must train
  again, and the gate and registry steps read and change registry state outside the artifacts.
"""

# No `from __future__ import annotations`: KFP reads the component signatures' annotations as types.
from kfp import dsl, kubernetes
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

PIPELINE_NAME = "fraudops-training"
DEFAULT_IMAGE = "ghcr.io/fraudops/fraudops:0.1.0"

CACHING: dict[str, bool] = {
    "ingest": False,
    "validate": True,
    "split-features": True,
    "train": False,
    "evaluate": False,
    "gate": False,
    "register": False,
    "promote": False,
}

# Steps that read or write the registry get the object-store credentials on a cluster.
REGISTRY_STEPS = ("gate", "register", "promote")


def ingest(data_uri: str, extra_uris: str, dataset_spec: str, ip_table: str, rows: int, seed: int, start: str,
           days: float, fraud_rate: float, drift: str, dataset: Output[Dataset]) -> None:
    """Read the data URI (plus extra URIs, comma-separated) or generate synthetic transactions."""
    import json

    from fraudops.data.synthetic import DriftConfig
    from fraudops.schema import DatasetSpec
    from fraudops.steps import ingest as run

    spec = DatasetSpec.model_validate_json(dataset_spec) if dataset_spec else None
    summary = run(dataset.path, data_uri=data_uri, spec=spec, ip_table=ip_table, rows=rows, seed=seed,
                  start=start, days=days, fraud_rate=fraud_rate, drift=DriftConfig(**json.loads(drift or "{}")),
                  extra_uris=tuple(u.strip() for u in extra_uris.split(",") if u.strip()))
    dataset.metadata.update(rows=summary["rows"], source=summary["source"])


def validate(dataset: Input[Dataset], max_bad_fraction: float, clean: Output[Dataset], report: Output[Markdown]
             ) -> None:
    """Schema and quality checks; bad rows are kept aside with reasons, an unusable table fails the run."""
    import shutil
    from pathlib import Path

    from fraudops.steps import validate_step

    summary = validate_step(dataset.path, clean.path, max_bad_fraction=max_bad_fraction)
    shutil.copy(Path(clean.path) / "report.md", report.path)
    clean.metadata.update({k: v for k, v in summary.items() if k != "warnings"})


def split_features(clean: Input[Dataset], train_config: str, splits: Output[Dataset]) -> None:
    """Time-based split and features (entity features replayed over the table, its end-state snapshot)."""
    from fraudops.steps import split_features as run
    from fraudops.training import TrainConfig

    windows = run(clean.path, splits.path, TrainConfig.model_validate_json(train_config))
    splits.metadata.update({f"{name}_rows": w["rows"] for name, w in windows.items()})


def train(splits: Input[Dataset], train_config: str, model: Output[Model]) -> None:
    """CatBoost with native categorical features, early stopping and a cost-based threshold on valid (with
    ``refit`` in the config, then the final model trained on train + valid)."""
    from fraudops.steps import train_step
    from fraudops.training import TrainConfig

    summary = train_step(splits.path, model.path, TrainConfig.model_validate_json(train_config))
    model.metadata.update(summary)


def evaluate(model: Input[Model], splits: Input[Dataset], evaluation: Output[Dataset], metrics: Output[Metrics],
             card: Output[Markdown], pr_curve: Output[HTML]) -> None:
    """Holdout metrics, PR curve, model card and the drift reference sample."""
    import base64
    import shutil
    from pathlib import Path

    from fraudops.steps import CARD_FILE, PR_CURVE_FILE, evaluate_step

    values = evaluate_step(model.path, splits.path, evaluation.path)
    for key, value in values.items():
        metrics.log_metric(key, float(value))
    shutil.copy(Path(evaluation.path) / CARD_FILE, card.path)
    png = base64.b64encode((Path(evaluation.path) / PR_CURVE_FILE).read_bytes()).decode()
    Path(pr_curve.path).write_text(f'<html><body><img alt="PR curve" src="data:image/png;base64,{png}"/></body></html>')


def gate(splits: Input[Dataset], evaluation: Input[Dataset], registry_url: str, gate_policy: str,
         decision: Output[Dataset]) -> str:
    """Compare the challenger with the champion on the same recent holdout; returns ``promote`` or ``reject``.

    The verdict is the single ``Output`` parameter (``kfp.local`` resolves ``dsl.If`` conditions only on
    outputs named ``Output``); the reason and numbers are in the ``decision`` artifact.
    """
    from fraudops.gate import GatePolicy
    from fraudops.registry import Registry
    from fraudops.steps import gate_step

    result = gate_step(splits.path, evaluation.path, Registry(remote=registry_url or None),
                       GatePolicy.model_validate_json(gate_policy), decision.path)
    decision.metadata.update(verdict=result["verdict"], reason=result["reason"])
    return result["verdict"]


def register(model: Input[Model], evaluation: Input[Dataset], decision: Input[Dataset], registry_url: str) -> str:
    """Register the challenger in the BentoML model store (and the remote registry) with the gate's verdict."""
    from fraudops.registry import Registry
    from fraudops.steps import register_step

    return register_step(model.path, evaluation.path, decision.path, Registry(remote=registry_url or None))


def promote(tag: str, decision: Input[Dataset], registry_url: str, release: str) -> str:
    """Release the registered challenger, citing the gate's reason: champion now (``promote``), or a staged
    rollout starting in shadow (``rollout``)."""
    import json
    from pathlib import Path

    from fraudops.registry import Registry
    from fraudops.steps import GATE_FILE, promote_step

    reason = json.loads((Path(decision.path) / GATE_FILE).read_text())["reason"]
    promote_step(tag, Registry(remote=registry_url or None), reason=reason, actor="pipeline", release=release)
    return tag


def build_pipeline(image: str = DEFAULT_IMAGE, s3_secret: str = "", s3_endpoint: str = ""):
    """The pipeline function; components run in ``image`` on a cluster.

    ``s3_secret`` names a Kubernetes Secret with ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` for the registry
    steps, ``s3_endpoint`` the object store's endpoint (``FRAUDOPS_S3_ENDPOINT``).
    """
    component = dsl.component(base_image=image, install_kfp_package=False)
    ops = {name: component(fn) for name, fn in (
        ("ingest", ingest), ("validate", validate), ("split-features", split_features), ("train", train),
        ("evaluate", evaluate), ("gate", gate), ("register", register), ("promote", promote))}

    def configure(name: str, task: dsl.PipelineTask) -> dsl.PipelineTask:
        task.set_caching_options(CACHING[name]).set_display_name(name)
        if name in REGISTRY_STEPS:
            if s3_secret:
                kubernetes.use_secret_as_env(task, s3_secret, {
                    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
            if s3_endpoint:
                task.set_env_variable("FRAUDOPS_S3_ENDPOINT", s3_endpoint)
        return task

    @dsl.pipeline(name=PIPELINE_NAME, description="Train, evaluate, gate and register a CatBoost fraud model.")
    def training_pipeline(
        data_uri: str = "",
        extra_uris: str = "",
        dataset_spec: str = "",
        ip_table: str = "",
        rows: int = 20000,
        seed: int = 0,
        start: str = "2026-01-01",
        days: float = 30.0,
        fraud_rate: float = 0.03,
        drift: str = "{}",
        max_bad_fraction: float = 0.05,
        train_config: str = "{}",
        gate_policy: str = "{}",
        registry_url: str = "",
        release: str = "promote",
    ) -> str:
        ingested = configure("ingest", ops["ingest"](
            data_uri=data_uri, extra_uris=extra_uris, dataset_spec=dataset_spec, ip_table=ip_table, rows=rows,
            seed=seed, start=start, days=days, fraud_rate=fraud_rate, drift=drift))
        checked = configure("validate", ops["validate"](
            dataset=ingested.outputs["dataset"], max_bad_fraction=max_bad_fraction))
        parts = configure("split-features", ops["split-features"](
            clean=checked.outputs["clean"], train_config=train_config))
        trained = configure("train", ops["train"](splits=parts.outputs["splits"], train_config=train_config))
        evaluated = configure("evaluate", ops["evaluate"](
            model=trained.outputs["model"], splits=parts.outputs["splits"]))
        gated = configure("gate", ops["gate"](
            splits=parts.outputs["splits"], evaluation=evaluated.outputs["evaluation"],
            registry_url=registry_url, gate_policy=gate_policy))
        registered = configure("register", ops["register"](
            model=trained.outputs["model"], evaluation=evaluated.outputs["evaluation"],
            decision=gated.outputs["decision"], registry_url=registry_url))
        with dsl.If(gated.outputs["Output"] == "promote", name="gate-passed"):
            configure("promote", ops["promote"](
                tag=registered.output, decision=gated.outputs["decision"], registry_url=registry_url,
                release=release))
        return registered.output

    return training_pipeline
