"""The ``fraudops`` command line: data, training, pipelines and the model registry."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fraudops.errors import ConfigError, FraudopsError

console = Console(stderr=True)
# Tables keep their columns when the output is a pipe or a file (rich would otherwise assume 80 columns).
out = Console(width=None if sys.stdout.isatty() else 160)


def _config_error(exc: ValidationError, what: str) -> ConfigError:
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or what}: {e['msg']}" for e in exc.errors())
    return ConfigError(f"invalid {what}: {problems}")


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our exceptions into one-line errors with exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FraudopsError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(1)

    return wrapper


def _csv(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value is not None else None


def dataset_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options naming the data and its column roles."""
    options = [
        click.option("--preset", type=click.Choice(["synthetic", "ecommerce", "ieee-cis"]),
                     help="Built-in column roles for a known table."),
        click.option("--dataset-config", type=click.Path(dir_okay=False),
                     help="YAML/JSON file with column roles (keys of DatasetSpec)."),
        click.option("--target", help="Label column (0/1)."),
        click.option("--timestamp", help="Event-time column (datetime, or numeric seconds)."),
        click.option("--categorical", help="Comma-separated categorical columns."),
        click.option("--drop", help="Comma-separated columns to ignore."),
        click.option("--ip-table", default="", help="IP-range-to-country table (adds a country column)."),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), func)


def train_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options of the training run."""
    options = [
        click.option("--split", type=click.Choice(["time", "random"]), default="time", show_default=True,
                     help="Hold out the latest rows (time) or a stratified random share."),
        click.option("--iterations", type=int, default=800, show_default=True, help="Maximum boosting rounds."),
        click.option("--learning-rate", type=float, default=0.08, show_default=True),
        click.option("--depth", type=int, default=6, show_default=True),
        click.option("--threads", type=int, default=-1, show_default=True, help="CatBoost threads (-1: all cores)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Random seed (data and model)."),
        click.option("--cost-fn", type=float, default=100.0, show_default=True, help="Cost of a missed fraud."),
        click.option("--cost-fp", type=float, default=5.0, show_default=True, help="Cost of a false decline."),
        click.option("--max-bad-fraction", type=float, default=0.05, show_default=True,
                     help="Share of bad rows above which the data is unusable."),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), func)


def _spec(preset: str | None, dataset_config: str | None, target: str | None, timestamp: str | None,
          categorical: str | None, drop: str | None) -> Any:
    """The column roles from flags; without any, the project's synthetic schema."""
    from fraudops.schema import resolve_spec

    return resolve_spec(preset, dataset_config, target=target, timestamp=timestamp, categorical=_csv(categorical),
                        drop=_csv(drop))


def _train_config(**kwargs: Any) -> Any:
    from fraudops.training import TrainConfig

    try:
        return TrainConfig(**kwargs)
    except ValidationError as exc:
        raise _config_error(exc, "training option") from None


def _step_progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs.")
@click.version_option(package_name="fraudops")
def main(verbose: bool) -> None:
    """fraudops: train, ship and monitor e-commerce fraud models."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    for noisy in ("bentoml", "kfp", "botocore", "s3fs", "aiobotocore", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- data ---------------------------------------------------------------------------------------------------
@main.group()
def data() -> None:
    """Generate transaction data."""


@data.command("generate")
@click.option("--rows", type=int, required=True, help="Number of transactions.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), required=True, help=".csv, .csv.gz or .parquet file.")
@click.option("--start", default="2026-01-01", show_default=True, help="First day of the traffic (UTC).")
@click.option("--days", type=float, default=30.0, show_default=True, help="Length of the time window.")
@click.option("--fraud-rate", type=float, default=0.03, show_default=True)
@click.option("--amount-shift", type=float, default=0.0, help="Drift: log-shift of amounts.")
@click.option("--category-mix", type=float, default=0.0, help="Drift: 0..1 shift of the category mix.")
@click.option("--new-pattern", is_flag=True, help="Drift: add account-takeover fraud.")
@click.option("--fraud-rate-multiplier", type=float, default=1.0, help="Drift: scale the fraud rate.")
@friendly_errors
def data_generate(rows: int, seed: int, output: str, start: str, days: float, fraud_rate: float,
                  amount_shift: float, category_mix: float, new_pattern: bool, fraud_rate_multiplier: float) -> None:
    """Write synthetic e-commerce transactions with fraud patterns (and optional drift)."""
    from fraudops.data.io import write_table
    from fraudops.data.synthetic import DriftConfig, generate_transactions

    drift = DriftConfig(amount_shift=amount_shift, category_mix=category_mix, new_pattern=new_pattern,
                        fraud_rate_multiplier=fraud_rate_multiplier)
    with console.status(f"generating {rows:,} transactions"):
        frame = generate_transactions(rows, seed=seed, start=start, days=days, fraud_rate=fraud_rate, drift=drift)
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        write_table(frame, output)
    out.print(f"wrote {len(frame):,} transactions ({frame['is_fraud'].mean():.2%} fraud) to {output}")


# -- train --------------------------------------------------------------------------------------------------
@main.command()
@click.option("--data", "data_uri", required=True, help="CSV/Parquet file or URL (gzip allowed).")
@click.option("--output", type=click.Path(file_okay=False), required=True, help="Directory for the results.")
@dataset_options
@train_options
@click.option("--register", is_flag=True, help="Also gate, register and (if it passes) promote the model.")
@click.option("--registry-url", default=None, help="Object-store registry (default: $FRAUDOPS_REGISTRY_URL).")
@friendly_errors
def train(data_uri: str, output: str, preset: str | None, dataset_config: str | None, target: str | None,
          timestamp: str | None, categorical: str | None, drop: str | None, ip_table: str, register: bool,
          registry_url: str | None, max_bad_fraction: float, **train_kwargs: Any) -> None:
    """Train and evaluate a CatBoost fraud model on a table; write metrics, model, PR curve and card."""
    from fraudops.registry import Registry
    from fraudops.steps import train_to_directory

    spec = _spec(preset, dataset_config, target, timestamp, categorical, drop)
    config = _train_config(**train_kwargs)
    registry = Registry(remote=registry_url) if register else None
    with _step_progress() as progress:
        steps = progress.add_task("starting", total=None)
        fit = progress.add_task("train", total=config.iterations, visible=False)

        def on_step(name: str) -> None:
            progress.update(steps, description=name)
            progress.update(fit, visible=name == "train")

        result = train_to_directory(
            data_uri, output, spec, config, ip_table=ip_table, max_bad_fraction=max_bad_fraction,
            registry=registry, on_step=on_step,
            progress=lambda i, total: progress.update(fit, completed=i + 1))
        progress.update(steps, description="done", total=1, completed=1)
    _print_metrics(result["metrics"], result["validation"])
    if "tag" in result:
        gate = result["gate"]
        out.print(f"registered {result['tag']}: gate {gate['verdict']} ({gate['reason']})")
    out.print(f"results in {output}/ (metrics.json, model/, pr_curve.png, model_card.md)")


def _print_metrics(metrics: dict[str, Any], validation: dict[str, Any]) -> None:
    table = Table(title="holdout metrics (test window)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("pr_auc", "roc_auc", "recall_at_1pct_fpr", "threshold", "precision_at_threshold",
                "recall_at_threshold", "n_rows", "n_fraud"):
        value = metrics[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(table)
    if validation["rows_rejected"]:
        out.print(f"[yellow]{validation['rows_rejected']} rows rejected by validation[/] "
                  "(see validation.md and rejected_rows.csv)")


# -- pipeline -----------------------------------------------------------------------------------------------
@main.group()
def pipeline() -> None:
    """Compile, run locally or submit the Kubeflow training pipeline."""


def pipeline_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Parameters of a pipeline run."""
    options = [
        click.option("--data", "data_uri", default="", help="Data file or URL (default: generate synthetic data)."),
        click.option("--extra-data", multiple=True, help="More data with the same columns (repeatable)."),
        click.option("--rows", type=int, default=20_000, show_default=True, help="Rows to generate without --data."),
        click.option("--start", default="2026-01-01", show_default=True, help="Start of generated traffic."),
        click.option("--days", type=float, default=30.0, show_default=True, help="Days of generated traffic."),
        click.option("--fraud-rate", type=float, default=0.03, show_default=True),
        click.option("--min-pr-auc-gain", type=float, default=0.005, show_default=True,
                     help="Gate: PR-AUC the challenger must add."),
        click.option("--recall-tolerance", type=float, default=0.0, show_default=True,
                     help="Gate: recall at 1% FPR the challenger may lose."),
        click.option("--floor-pr-auc", type=float, default=0.2, show_default=True,
                     help="Gate: PR-AUC the first model needs."),
        click.option("--registry-url", default="", help="Object-store registry URL (default: local store)."),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), dataset_options(train_options(func)))


def _pipeline_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    from fraudops.gate import GatePolicy
    from fraudops.orchestration import pipeline_arguments

    spec = _spec(*(kwargs.pop(k) for k in ("preset", "dataset_config", "target", "timestamp", "categorical",
                                           "drop")))
    try:
        policy = GatePolicy(min_pr_auc_gain=kwargs.pop("min_pr_auc_gain"),
                            recall_tolerance=kwargs.pop("recall_tolerance"), floor_pr_auc=kwargs.pop("floor_pr_auc"))
    except ValidationError as exc:
        raise _config_error(exc, "gate option") from None
    general = {k: kwargs.pop(k) for k in ("data_uri", "ip_table", "rows", "start", "days", "fraud_rate",
                                          "max_bad_fraction", "registry_url")}
    extra = tuple(kwargs.pop("extra_data"))
    config = _train_config(**kwargs)
    return pipeline_arguments(spec=spec, extra_uris=extra, seed=config.seed, train_config=config,
                              gate_policy=policy, **general)


@pipeline.command("compile")
@click.option("--output", type=click.Path(dir_okay=False), default="fraudops-training.yaml", show_default=True)
@click.option("--image", default=None, help="Project image the components run in.")
@click.option("--s3-secret", default="", help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for the registry.")
@click.option("--s3-endpoint", default="", help="Object-store endpoint for the registry steps.")
@friendly_errors
def pipeline_compile(output: str, image: str | None, s3_secret: str, s3_endpoint: str) -> None:
    """Compile the training pipeline to KFP IR YAML."""
    from fraudops.orchestration import compile_pipeline
    from pipelines.training import DEFAULT_IMAGE

    path = compile_pipeline(output, image or DEFAULT_IMAGE, s3_secret, s3_endpoint)
    out.print(f"wrote {path}")


@pipeline.command("run")
@click.option("--local", "local_run", is_flag=True, required=True,
              help="Run on this machine with kfp.local (use 'submit' for a cluster).")
@click.option("--root", type=click.Path(file_okay=False), default="fraudops-runs", show_default=True,
              help="Where run artifacts go.")
@click.option("--show-logs", is_flag=True, help="Print the tasks' output (it always goes to <root>/logs/).")
@pipeline_options
@friendly_errors
def pipeline_run(local_run: bool, root: str, show_logs: bool, **kwargs: Any) -> None:
    """Run the training pipeline locally (kfp.local SubprocessRunner)."""
    from fraudops.orchestration import run_local

    if not local_run:
        raise click.UsageError("pass --local (use 'fraudops pipeline submit' for a cluster)")
    arguments = _pipeline_arguments(kwargs)
    with console.status("running the training pipeline with kfp.local"):
        result = run_local(arguments, root, echo=show_logs)
    out.print(f"registered {result.tag}; gate: {result.verdict} ({result.reason})")
    out.print(f"champion: {result.champion}; artifacts in {result.run_dir}; task logs in {result.log}")


@pipeline.command("submit")
@click.option("--host", required=True, help="Kubeflow Pipelines API, e.g. http://localhost:8888.")
@click.option("--image", default=None, help="Project image the components run in.")
@click.option("--experiment", default="fraudops", show_default=True)
@click.option("--run-name", default=None)
@click.option("--namespace", default=None, help="KFP namespace (multi-user installs).")
@click.option("--token-env", default="KFP_TOKEN", show_default=True, help="Variable holding a bearer token.")
@click.option("--s3-secret", default="", help="Secret with the registry's object-store credentials.")
@click.option("--s3-endpoint", default="", help="Object-store endpoint for the registry steps.")
@click.option("--wait/--no-wait", default=False, help="Follow the run until it ends.")
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds to wait with --wait.")
@pipeline_options
@friendly_errors
def pipeline_submit(host: str, image: str | None, experiment: str, run_name: str | None, namespace: str | None,
                    token_env: str, s3_secret: str, s3_endpoint: str, wait: bool, timeout: float,
                    **kwargs: Any) -> None:
    """Submit the training pipeline to a Kubeflow Pipelines API."""
    from fraudops.orchestration import kfp_client, submit, wait_for_run
    from pipelines.training import DEFAULT_IMAGE

    arguments = _pipeline_arguments(kwargs)
    try:
        client = kfp_client(host, namespace, os.environ.get(token_env))
        run_id = submit(client, arguments, image=image or DEFAULT_IMAGE, experiment=experiment, run_name=run_name,
                        s3_secret=s3_secret, s3_endpoint=s3_endpoint)
    except (OSError, ValueError) as exc:
        raise FraudopsError(f"cannot submit to the KFP API at {host}: {exc}") from None
    except Exception as exc:  # kfp_server_api raises ApiException/MaxRetryError subclasses of Exception
        raise FraudopsError(f"KFP API at {host} refused the run: {str(exc).splitlines()[0]}") from None
    out.print(f"submitted run {run_id} to {host}")
    if wait:
        with console.status(f"waiting for run {run_id}"):
            state = wait_for_run(client, run_id, timeout=timeout)
        out.print(f"run {run_id}: {state}")
        if state != "SUCCEEDED":
            sys.exit(1)


# -- models -------------------------------------------------------------------------------------------------
@main.group()
@click.option("--registry-url", default=None, help="Object-store registry (default: $FRAUDOPS_REGISTRY_URL).")
@click.pass_context
def models(ctx: click.Context, registry_url: str | None) -> None:
    """List, inspect, promote and roll back registered models (BentoML store at $BENTOML_HOME)."""
    from fraudops.registry import Registry

    ctx.obj = Registry(remote=registry_url)


@models.command("list")
@click.pass_obj
@friendly_errors
def models_list(registry: Any) -> None:
    """Registered models, newest first; the champion is marked."""
    table = Table()
    for name in ("", "tag", "created", "dataset", "gate", "PR-AUC", "recall@1%FPR", "threshold"):
        table.add_column(name)
    for info in registry.list():
        metrics = info.metadata.get("metrics", {})
        table.add_row("*" if info.champion else "", info.tag, info.created_at, info.labels.get("dataset", ""),
                      info.labels.get("gate", ""), _fmt(metrics.get("pr_auc")),
                      _fmt(metrics.get("recall_at_1pct_fpr")), _fmt(info.metadata.get("threshold")))
    out.print(table)
    out.print("* champion" if registry.champion() else "no champion yet")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else ""


@models.command("show")
@click.argument("tag")
@click.pass_obj
@friendly_errors
def models_show(registry: Any, tag: str) -> None:
    """Metadata, metrics and gate verdict of one model (TAG may be 'champion')."""
    info = registry.info(tag)
    out.print_json(json.dumps({"tag": info.tag, "champion": info.champion, "created_at": info.created_at,
                               "labels": info.labels, "metadata": info.metadata,
                               "path": str(registry.path(info.tag))}, default=str))


@models.command("promote")
@click.argument("tag")
@click.option("--reason", default="manual promotion", show_default=True)
@click.pass_obj
@friendly_errors
def models_promote(registry: Any, tag: str, reason: str) -> None:
    """Make TAG the champion (logged in the pointer's history)."""
    event = registry.promote(tag, reason=reason, actor=os.environ.get("USER", "cli"))
    out.print(f"champion: {event['tag']} (was {event['previous']})")


@models.command("rollback")
@click.option("--reason", default="manual rollback", show_default=True)
@click.pass_obj
@friendly_errors
def models_rollback(registry: Any, reason: str) -> None:
    """Reinstate the previous champion."""
    event = registry.rollback(reason=reason, actor=os.environ.get("USER", "cli"))
    out.print(f"champion: {event['tag']} (rolled back from {event['previous']})")


@models.command("history")
@click.pass_obj
@friendly_errors
def models_history(registry: Any) -> None:
    """Every promotion and rollback, oldest first."""
    table = Table()
    for name in ("at", "action", "tag", "previous", "actor", "reason"):
        table.add_column(name)
    for event in registry.history():
        table.add_row(*(str(event.get(k) or "") for k in ("at", "action", "tag", "previous", "actor", "reason")))
    out.print(table)
