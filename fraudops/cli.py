"""The ``fraudops`` command line: data, training, pipelines and the model registry."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fraudops.errors import ConfigError, FraudopsError, problems

console = Console(stderr=True)
# Tables keep their columns when the output is a pipe or a file (rich would otherwise assume 80 columns).
out = Console(width=None if sys.stdout.isatty() else 160)


def _config_error(exc: ValidationError, what: str) -> ConfigError:
    return ConfigError(f"invalid {what}: {problems(exc, what)}")


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
        click.option("--account", help="Customer account column (entity features count accounts per entity; a "
                                       "canary is sticky by it)."),
        click.option("--entities", help="Comma-separated entity columns (device, IP, card, email, ...) whose "
                                        "history becomes features; empty: none."),
        click.option("--windows", help="Comma-separated sliding windows of the entity features, besides all "
                                       "history (a whole number and s, m, h, d or w; default 1h,24h,7d)."),
        click.option("--ip-table", default="", help="IP-range-to-country table (adds a country column)."),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), func)


def train_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options of the training run."""
    options = [
        click.option("--split", type=click.Choice(["time", "random"]), default="time", show_default=True,
                     help="Hold out the latest rows (time) or a stratified random share."),
        click.option("--test-fraction", type=float, default=0.2, show_default=True,
                     help="Share of rows held out for evaluation and the gate (the latest ones with --split time)."),
        click.option("--valid-fraction", type=float, default=0.15, show_default=True,
                     help="Share of rows for early stopping and the threshold (just before the test window)."),
        click.option("--iterations", type=int, default=800, show_default=True,
                     help="Maximum boosting rounds of the early-stopped fit (a --refit scales the rounds chosen by "
                          "the rows it adds)."),
        click.option("--learning-rate", type=float, default=0.08, show_default=True),
        click.option("--depth", type=int, default=6, show_default=True),
        click.option("--refit/--no-refit", default=False, show_default=True,
                     help="After early stopping, train the final model again on train + valid (the latest labelled "
                          "rows before the test window) for the rounds chosen, scaled by the rows added: a second "
                          "training run, for a model that has seen the most recent labels."),
        click.option("--threads", type=int, default=-1, show_default=True, help="CatBoost threads (-1: all cores)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Random seed (data and model)."),
        click.option("--cost-fn", type=float, default=100.0, show_default=True, help="Cost of a missed fraud."),
        click.option("--cost-fp", type=float, default=5.0, show_default=True, help="Cost of a false decline."),
        click.option("--max-bad-fraction", type=float, default=0.05, show_default=True,
                     help="Share of bad rows above which the data is unusable."),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), func)


SPEC_FLAGS = ("preset", "dataset_config", "target", "timestamp", "categorical", "drop", "account", "entities",
              "windows")
"""The keyword arguments `dataset_options` adds, in `_spec`'s order."""


def _spec(preset: str | None, dataset_config: str | None, target: str | None, timestamp: str | None,
          categorical: str | None, drop: str | None, account: str | None, entities: str | None,
          windows: str | None) -> Any:
    """The column roles from flags (over a preset or config file); without any, the project's synthetic schema."""
    from fraudops.schema import resolve_spec

    return resolve_spec(preset, dataset_config, target=target, timestamp=timestamp, categorical=_csv(categorical),
                        drop=_csv(drop), account=account, entities=_csv(entities), windows=_csv(windows))


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
    for noisy in ("bentoml", "kfp", "botocore", "s3fs", "aiobotocore", "matplotlib", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # the KFP client resets urllib3's level; a filter survives that: retries are reported once, in our own error
    logging.getLogger("urllib3.connectionpool").addFilter(lambda record: not record.getMessage().startswith("Retry"))
    warnings.filterwarnings("ignore", message="This client only works with Kubeflow Pipeline", category=FutureWarning)


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
@click.option("--population-seed", type=int, default=None,
              help="Shared customer base: files with the same population seed share customers, devices and IPs.")
@click.option("--amount-shift", type=float, default=0.0, help="Drift: log-shift of amounts.")
@click.option("--category-mix", type=float, default=0.0, help="Drift: 0..1 shift of the category mix.")
@click.option("--new-pattern", is_flag=True, help="Drift: add account-takeover fraud.")
@click.option("--fraud-rate-multiplier", type=float, default=1.0, help="Drift: scale the fraud rate.")
@friendly_errors
def data_generate(rows: int, seed: int, output: str, start: str, days: float, fraud_rate: float,
                  population_seed: int | None, amount_shift: float, category_mix: float, new_pattern: bool,
                  fraud_rate_multiplier: float) -> None:
    """Write synthetic e-commerce transactions with fraud patterns (and optional drift)."""
    from fraudops.data.io import write_table
    from fraudops.data.synthetic import DriftConfig, generate_transactions
    from fraudops.storage import is_remote

    drift = DriftConfig(amount_shift=amount_shift, category_mix=category_mix, new_pattern=new_pattern,
                        fraud_rate_multiplier=fraud_rate_multiplier)
    with console.status(f"generating {rows:,} transactions"):
        frame = generate_transactions(rows, seed=seed, start=start, days=days, fraud_rate=fraud_rate, drift=drift,
                                      population_seed=population_seed)
        if not is_remote(output):
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
def train(data_uri: str, output: str, ip_table: str, register: bool, registry_url: str | None,
          max_bad_fraction: float, **kwargs: Any) -> None:
    """Train and evaluate a CatBoost fraud model on a table; write metrics, model, PR curve and card."""
    from fraudops.registry import Registry
    from fraudops.steps import train_to_directory

    spec = _spec(*(kwargs.pop(k) for k in SPEC_FLAGS))
    config = _train_config(**kwargs)
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
            progress=lambda done, total: progress.update(fit, completed=done, total=total))
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
        click.option("--release", type=click.Choice(["promote", "rollout"]), default="promote", show_default=True,
                     help="A challenger that passes the gate becomes champion at once, or starts a staged rollout "
                          "(shadow, canary, promote: `fraudops rollout`)."),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), dataset_options(train_options(func)))


def _pipeline_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    from fraudops.gate import GatePolicy
    from fraudops.orchestration import pipeline_arguments

    spec = _spec(*(kwargs.pop(k) for k in SPEC_FLAGS))
    try:
        policy = GatePolicy(min_pr_auc_gain=kwargs.pop("min_pr_auc_gain"),
                            recall_tolerance=kwargs.pop("recall_tolerance"), floor_pr_auc=kwargs.pop("floor_pr_auc"))
    except ValidationError as exc:
        raise _config_error(exc, "gate option") from None
    general = {k: kwargs.pop(k) for k in ("data_uri", "ip_table", "rows", "start", "days", "fraud_rate",
                                          "max_bad_fraction", "registry_url", "release")}
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
    except Exception as exc:  # kfp and kfp_server_api raise ApiException, MaxRetryError, ValueError, ...
        raise FraudopsError(f"cannot submit to the KFP API at {host}: {str(exc).splitlines()[0]}") from None
    out.print(f"submitted run {run_id} to {host}")
    if wait:
        with console.status(f"waiting for run {run_id}"):
            state = wait_for_run(client, run_id, timeout=timeout)
        out.print(f"run {run_id}: {state}")
        if state != "SUCCEEDED":
            sys.exit(1)


def _replayed_options(ctx: click.Context, names: set[str]) -> list[str]:
    """The options among ``names`` that the user gave, as command-line arguments (for a run elsewhere)."""
    from click.core import ParameterSource

    args: list[str] = []
    for param in ctx.command.params:
        if param.name not in names or ctx.get_parameter_source(param.name) == ParameterSource.DEFAULT:
            continue
        assert isinstance(param, click.Option)
        value = ctx.params[param.name]
        if param.is_flag:
            args.append(param.opts[0] if value else param.secondary_opts[0])
            continue
        for item in value if param.multiple else [value]:
            args += [param.opts[0], str(item)]
    return args


@pipeline.command("job")
@click.option("--namespace", required=True, help="Namespace of the Job.")
@click.option("--image", required=True, help="Project image the Job runs (a version tag, not latest).")
@click.option("--service-account", default="", help="Service account of the Job's pod (default: the namespace's).")
@click.option("--s3-secret", default="", help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for the registry.")
@click.option("--s3-endpoint", default="", help="Object-store endpoint for the registry.")
@click.option("--cpu", default="1", show_default=True, help="CPU the Job requests.")
@click.option("--memory", default="2Gi", show_default=True, help="Memory the Job requests and may use.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None,
              help="kubeconfig of the cluster (default: in-cluster, then $KUBECONFIG).")
@click.option("--wait/--no-wait", default=False, help="Follow the Job until it ends and print its output.")
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds to wait with --wait.")
@pipeline_options
@click.pass_context
@friendly_errors
def pipeline_job(ctx: click.Context, namespace: str, image: str, service_account: str, s3_secret: str,
                 s3_endpoint: str, cpu: str, memory: str, kubeconfig: str | None, wait: bool, timeout: float,
                 **kwargs: Any) -> None:
    """Run the training pipeline in a Kubernetes Job (kfp.local inside the project image), the way the retrain
    trigger's job backend does, without Kubeflow Pipelines."""
    from fraudops.monitoring.backends import SUCCEEDED, JobBackend, RetrainRequest, kubernetes_api, new_run_id

    if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
        raise ConfigError(f"--image {image!r} needs a version tag (not latest)")
    remote_args = _replayed_options(ctx, set(kwargs))
    _pipeline_arguments(dict(kwargs))  # refuse bad parameters here, before a pod fails on them
    client = kubernetes_api(kubeconfig, purpose="fraudops pipeline job")
    backend = JobBackend(client.BatchV1Api(), namespace, image, purpose="train", service_account=service_account,
                         env_from_secret=s3_secret, env={"FRAUDOPS_S3_ENDPOINT": s3_endpoint} if s3_endpoint else {},
                         resources={"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}})
    try:
        name = backend.launch(RetrainRequest(run_id=new_run_id(), data_uri="", extra_uris=(),
                                             extra_args=tuple(remote_args)))
    except client.exceptions.ApiException as exc:
        raise FraudopsError(f"cannot create the Job in namespace {namespace}: {exc.status} {exc.reason}: "
                            f"{json.loads(exc.body or '{}').get('message', '')}") from None
    out.print(f"created job {namespace}/{name}")
    if wait:
        with console.status(f"waiting for job {name}"):
            state = backend.wait(name, timeout)
        output = backend.logs(client.CoreV1Api(), name)
        if output:
            out.print(output.rstrip(), markup=False, highlight=False)
        out.print(f"job {name}: {state}")
        if state != SUCCEEDED:
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


# -- serve --------------------------------------------------------------------------------------------------
@main.command()
@click.option("--model", "model_tag", default="champion", show_default=True,
              help="Model tag to serve; 'champion' follows the champion pointer.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=3000, show_default=True)
@click.option("--poll-seconds", type=float, default=None, help="Champion pointer poll interval (0: off).")
@click.option("--prediction-log", default=None, help="Prediction log root (path or URL).")
def serve(model_tag: str, host: str, port: int, poll_seconds: float | None, prediction_log: str | None) -> None:
    """Start the BentoML scoring service (same as `bentoml serve services.scorer:FraudScorer`)."""
    env = {"FRAUDOPS_MODEL_TAG": model_tag}
    if poll_seconds is not None:
        env["FRAUDOPS_POLL_SECONDS"] = str(poll_seconds)
    if prediction_log:
        env["FRAUDOPS_PREDICTION_LOG"] = prediction_log
    os.environ.update(env)
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    os.execv(bentoml, [bentoml, "serve", "services.scorer:FraudScorer", "--host", host, "--port", str(port)])


# -- features -----------------------------------------------------------------------------------------------
@main.group()
def features() -> None:
    """The online feature store of the entity features (Redis): load a model's snapshot, rebuild from the log."""


def _store_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--store-url", envvar="FRAUDOPS_FEATURE_STORE_URL", required=True,
                     help="redis:// URL of the feature store (default: $FRAUDOPS_FEATURE_STORE_URL)."),
        click.option("--model", "model_tag", default="champion", show_default=True,
                     help="Model whose entity snapshot and windows to use."),
        click.option("--registry-url", default=None, help="Object-store registry (default: $FRAUDOPS_REGISTRY_URL)."),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), func)


def _store_and_model(store_url: str, model_tag: str, registry_url: str | None) -> tuple[Any, Any, str]:
    from fraudops.feature_store import open_store

    registry = _registry(registry_url)
    tag = registry.resolve(model_tag)
    bundle = registry.load(tag)
    return open_store(store_url, bundle), bundle, tag


@features.command("load-snapshot")
@_store_options
@friendly_errors
def features_load_snapshot(store_url: str, model_tag: str, registry_url: str | None) -> None:
    """Load the model's frozen snapshot (the entity history at its training table's end) into the store, unless
    the store already has history (the scorer does this at start; idempotent)."""
    from fraudops.feature_store import seed_from_bundle
    from fraudops.online_store import StoreUnavailable

    store, bundle, tag = _store_and_model(store_url, model_tag, registry_url)
    try:
        with console.status(f"loading the snapshot of {tag}"):
            result = seed_from_bundle(store, bundle, tag)
    except StoreUnavailable as exc:
        raise FraudopsError(str(exc)) from None
    if result.loaded:
        out.print(f"loaded the snapshot of {tag}: {result.entities:,} entity values, {result.transactions:,} "
                  "transactions")
    else:
        out.print(f"not loaded: the store already has history (seeded from {result.source})")


@features.command("rebuild")
@click.option("--from-log", "window", required=True, help="How far back to replay the prediction log (30m, 1h, 7d).")
@click.option("--log-root", default=None, help="Prediction log root (default: $FRAUDOPS_PREDICTION_LOG).")
@click.option("--wal-dir", envvar="FRAUDOPS_PREDICTION_WAL", default="",
              help="The scorers' write-ahead directory on this host: rows that killed scorers left there are written "
                   "to the log first, as a starting scorer does (default: the scorer's, when the log is the scorer's "
                   "own; `off`: none).")
@click.option("--spill-dir", envvar="FRAUDOPS_PREDICTION_SPILL", default="",
              help="The scorers' spill directory on this host (rows the log storage refused at their shutdown), "
                   "replayed with the log (default: the scorer's, when the log is the scorer's own).")
@_store_options
@friendly_errors
def features_rebuild(window: str, log_root: str | None, wal_dir: str, spill_dir: str, store_url: str,
                     model_tag: str, registry_url: str | None) -> None:
    """Rebuild a lost store: the model's snapshot if the store has no history, then the decided transactions of
    the last WINDOW of the prediction log (with the rows the scorers on this host wrote ahead or spilled) in
    event-time order (idempotent by transaction id)."""
    from datetime import UTC, datetime
    from pathlib import Path

    from fraudops.feature_store import rebuild_from_log
    from fraudops.monitoring.job import parse_window
    from fraudops.online_store import StoreUnavailable
    from fraudops.predlog import default_root, recover_wal, spill_directory, wal_directory

    span = parse_window(window)
    store, bundle, tag = _store_and_model(store_url, model_tag, registry_url)
    scorers_root = default_root()
    root = log_root or scorers_root
    own = root == scorers_root  # the default directories hold what this host's scorers wrote for their own log
    wal = wal_directory(wal_dir) if wal_dir or own else None
    spill = Path(spill_dir) if spill_dir else spill_directory() if own else None
    if wal is not None and wal.is_dir():
        rows, torn = recover_wal(root, wal, spill)
        if rows or torn:
            out.print(f"recovered {rows:,} rows that killed scorers left in {wal} (written to the log, or to "
                      f"{spill or spill_directory()} if it refused them; {torn} torn records skipped)")
    end = datetime.now(UTC)
    try:
        with console.status(f"replaying the last {window} of the prediction log"):
            result = rebuild_from_log(store, bundle, tag, root, end - span, end,
                                      spill_dir=str(spill) if spill is not None and spill.is_dir() else None)
    except StoreUnavailable as exc:
        raise FraudopsError(str(exc)) from None
    seeded = (f"loaded the snapshot of {tag}" if result.seed.loaded
              else f"kept its history (seeded from {result.seed.source})")
    left = (f"; {result.left_out:,} left out: the scorers recorded them (logged since "
            f"{result.covered_since:%Y-%m-%d %H:%M:%S} UTC) and the store has folded them into its all-history "
            "counts" if result.left_out and result.covered_since else "")
    out.print(f"store {seeded}; replayed {result.transactions - result.rejected:,} logged transactions, "
              f"{result.recorded:,} new{left}")
    failures = []
    if result.unreadable:
        failures.append(f"{len(result.unreadable)} log file(s) could not be read, their transactions not replayed: "
                        f"{', '.join(result.unreadable)}; restore them")
    if result.rejected:
        unnamed = result.rejected - len(result.problems)
        more = f"; and {unnamed:,} more" if unnamed else ""
        failures.append(f"{result.rejected:,} logged transaction(s) that the schema of {tag} refuses were not "
                        f"replayed: {'; '.join(result.problems)}{more}; mend them, or give --model the model that "
                        "scored them (a window holding rows of two schemas needs a rebuild with each)")
    if failures:
        raise FraudopsError(f"{'. '.join(failures)}. Then run the rebuild again within a longest window (it counts "
                            "nothing twice then)")


# -- monitor ------------------------------------------------------------------------------------------------
@main.group()
def monitor() -> None:
    """Drift jobs and the drift metrics exporter."""


def _registry(registry_url: str | None) -> Any:
    from fraudops.registry import Registry

    return Registry(remote=registry_url)


@monitor.command("drift")
@click.option("--window", default="1h", show_default=True, help="How far back to read the prediction log.")
@click.option("--reference", "reference_tag", default=None, help="Model whose reference to use (default: champion).")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), default=None, help="Drift policy YAML.")
@click.option("--log-root", default=None, help="Prediction log root (default: $FRAUDOPS_PREDICTION_LOG).")
@click.option("--monitor-root", default=None, help="Where reports go (default: $FRAUDOPS_MONITOR_DIR).")
@click.option("--registry-url", default=None, help="Object-store registry (default: $FRAUDOPS_REGISTRY_URL).")
@friendly_errors
def monitor_drift(window: str, reference_tag: str | None, policy_file: str | None, log_root: str | None,
                  monitor_root: str | None, registry_url: str | None) -> None:
    """Run the drift job once: reference sample of the serving model against the last WINDOW of traffic."""
    from fraudops.monitoring.drift import DriftPolicy
    from fraudops.monitoring.job import parse_window, run_drift_job

    policy = DriftPolicy.from_file(policy_file) if policy_file else DriftPolicy()
    with console.status("comparing live traffic with the reference"):
        result = run_drift_job(window=parse_window(window), registry=_registry(registry_url), log_root=log_root,
                               monitor_root=monitor_root, policy=policy, reference_tag=reference_tag)
    out.print(f"model {result['model']}: [bold]{result['verdict']}[/] ({result['rows']} rows, "
              f"{result['labelled_rows']} labelled; {result['share_drifted_features']:.0%} of features drifted, "
              f"score drift {result['score_drift']:.3f})")
    for reason in result["reasons"]:
        out.print(f"  - {reason}")
    if result["report_html"]:
        out.print(f"report: {result['report_html']}")
    out.print(f"summary: {result['summary_json']}")


@monitor.command("exporter")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=9108, show_default=True)
@click.option("--monitor-root", default=None, help="Where drift summaries are (default: $FRAUDOPS_MONITOR_DIR).")
@click.option("--all-models", is_flag=True, help="Export every monitored model, not only the champion.")
@click.option("--registry-url", default=None, help="Object-store registry (default: $FRAUDOPS_REGISTRY_URL).")
@friendly_errors
def monitor_exporter(host: str, port: int, monitor_root: str | None, all_models: bool,
                     registry_url: str | None) -> None:
    """Serve the latest drift summaries as Prometheus metrics (GET /metrics)."""
    import uvicorn

    from fraudops.monitoring.exporter import create_app
    from fraudops.monitoring.job import default_monitor_root

    registry = _registry(registry_url)

    def champion_only() -> set[str] | None:
        champion = registry.champion()
        return {champion} if champion else set()

    app = create_app(monitor_root or default_monitor_root(), (lambda: None) if all_models else champion_only)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@monitor.command("export-labelled")
@click.option("--window", default="7d", show_default=True, help="How far back to read the prediction log.")
@click.option("--output", required=True, help="Parquet file (path or URL) in the training schema.")
@click.option("--label-column", default="is_fraud", show_default=True)
@click.option("--id-column", default="transaction_id", show_default=True,
              help="Transaction id: a transaction scored twice is exported once ('' keeps every scoring).")
@click.option("--log-root", default=None, help="Prediction log root (default: $FRAUDOPS_PREDICTION_LOG).")
@friendly_errors
def monitor_export_labelled(window: str, output: str, label_column: str, id_column: str, log_root: str | None
                            ) -> None:
    """Write recent scored transactions that have confirmed labels, for retraining."""
    from datetime import UTC, datetime

    from fraudops.monitoring.job import export_labelled, parse_window
    from fraudops.predlog import default_root

    end = datetime.now(UTC)
    rows = export_labelled(log_root or default_root(), end - parse_window(window), end, output, label_column,
                           id_column or None)
    out.print(f"wrote {rows} labelled transactions to {output}")


# -- decisions ----------------------------------------------------------------------------------------------
@main.group()
def decisions() -> None:
    """Backtest the decision bands on logged, labelled traffic."""


@decisions.command("simulate")
@click.option("--window", default="30d", show_default=True, help="How far back to read the prediction log.")
@click.option("--model", "model_tag", default="champion", show_default=True,
              help="Replay the rows this model scored (and use its training costs).")
@click.option("--review", type=float, default=None, help="Proposed review threshold (a score in [0, 1]).")
@click.option("--decline", type=float, default=None, help="Proposed decline threshold (a score in [0, 1]).")
@click.option("--review-factor", type=float, default=None,
              help="Proposed review threshold as a factor of the model threshold (FRAUDOPS_REVIEW_FACTOR).")
@click.option("--decline-factor", type=float, default=None,
              help="Proposed decline threshold as a factor of the model threshold (FRAUDOPS_DECLINE_FACTOR).")
@click.option("--cost-fn", type=float, default=None, help="Cost of a missed fraud (default: the model's training).")
@click.option("--cost-fp", type=float, default=None,
              help="Cost of a declined good customer (default: the model's training).")
@click.option("--cost-review", type=float, default=0.0, show_default=True, help="Cost of one manual review.")
@click.option("--sweep", "with_sweep", is_flag=True, help="Also print the decline curve and the cost-optimal bands.")
@click.option("--step", type=float, default=0.05, show_default=True, help="Threshold step of the --sweep curve.")
@click.option("--log-root", default=None, help="Prediction log root (default: $FRAUDOPS_PREDICTION_LOG).")
@click.option("--registry-url", default=None, help="Object-store registry (default: $FRAUDOPS_REGISTRY_URL).")
@friendly_errors
def decisions_simulate(window: str, model_tag: str, log_root: str | None, registry_url: str | None,
                       **options: Any) -> None:
    """Replay the logged scores of rows whose labels have arrived under the current bands (each row's own) and
    proposed ones (an omitted threshold stays as it is): rates, frauds caught and missed, good customers declined
    and cost. Only labelled rows count; nothing is retrained or changed."""
    from fraudops.backtest import simulate
    from fraudops.monitoring.job import parse_window
    from fraudops.predlog import default_root

    span = parse_window(window)
    with console.status("replaying the prediction log"):
        result = simulate(_registry(registry_url), log_root or default_root(), span, model_tag=model_tag, **options)
    _print_backtest(result, window)


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{value:.2%}"  # NaN: nothing to divide by


def _factors(bands: Any, threshold: float) -> str:
    """How to set ``bands`` in the scorer (it takes factors of the model threshold)."""
    review, decline = bands.review / threshold, bands.decline / threshold
    note = " (the scorer takes review factors up to 1)" if review > 1 else ""
    return f"FRAUDOPS_REVIEW_FACTOR={review:.6g} FRAUDOPS_DECLINE_FACTOR={decline:.6g}{note}"


def _print_backtest(result: Any, window: str) -> None:
    from fraudops.decisions import APPROVE, DECLINE, REVIEW

    replay, model, current = result.replay, result.model, result.current
    when = "%Y-%m-%d %H:%M"
    out.print(f"model {model.tag} (threshold {model.threshold:.4f}), last {window} up to {replay.end:{when}} UTC",
              highlight=False)
    out.print(f"{current.scored:,} rows scored from {replay.first_logged:{when}} to {replay.last_logged:{when}}, "
              f"{current.labelled:,} labelled, {current.frauds:,} frauds", highlight=False)
    for bands, rows in replay.band_settings():
        out.print(f"current bands: review {bands.review:.4g}, decline {bands.decline:.4g} ({rows:,} rows)",
                  highlight=False)
    columns = [("current", current)]
    if result.proposed is not None:
        out.print(f"proposed bands: review {result.proposed.review:.6g}, decline {result.proposed.decline:.6g}; "
                  f"to apply: {_factors(result.proposed, model.threshold)}", highlight=False)
        columns.append(("proposed", result.proposed_outcome))
    if result.sweep is not None:
        columns.append(("cost-optimal", result.optimal_outcome))
    out.print(model.costs.formula(), highlight=False)
    table = Table(title="labelled rows (the last two lines: all scored rows)")
    table.add_column("")
    for name, _ in columns:
        table.add_column(name, justify="right")
    rows: list[tuple[str, Callable[[Any], str]]] = [
        ("decline rate", lambda o: _pct(o.rate(DECLINE))),
        ("review rate", lambda o: _pct(o.rate(REVIEW))),
        ("approve rate", lambda o: _pct(o.rate(APPROVE))),
        ("frauds declined (recall)", lambda o: f"{o.frauds_declined:,} ({_pct(o.recall)})"),
        ("frauds sent to review", lambda o: f"{o.frauds_reviewed:,}"),
        ("frauds approved (missed)", lambda o: f"{o.frauds_approved:,}"),
        ("good customers declined (FPR)", lambda o: f"{o.good_declined:,} ({_pct(o.false_positive_rate)})"),
        ("cost", lambda o: f"{o.cost:,.0f}"),
        ("cost per 1,000 labelled rows", lambda o: f"{o.cost_per_1k:,.1f}"),
        ("all scored rows: declines", lambda o: f"{o.scored_declined:,} ({_pct(o.scored_rate(DECLINE))})"),
        ("all scored rows: reviews (load)", lambda o: f"{o.scored_reviewed:,} ({_pct(o.scored_rate(REVIEW))})"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(o) for _, o in columns))
    out.print(table)
    out.print(f"labels arrived for {_pct(current.labelled_share(APPROVE))} of the approved, "
              f"{_pct(current.labelled_share(REVIEW))} of the reviewed and {_pct(current.labelled_share(DECLINE))} "
              "of the declined rows (current bands)", highlight=False)
    if result.sweep is not None:
        marks: dict[float, list[str]] = {}
        for name, bands in (("current", replay.usual), ("proposed", result.proposed),
                            ("optimal", result.sweep.decline_only), ("optimal with review", result.sweep.with_review)):
            if bands is not None:
                marks.setdefault(bands.decline, []).append(name)
        curve = Table(title="decline curve (decline only, no review band)")
        for name in ("decline from", "decline rate", "recall", "FPR", "cost", ""):
            curve.add_column(name, justify="right")
        for point in result.sweep.curve:
            curve.add_row(f"{point.threshold:.6g}", _pct(point.decline_rate), _pct(point.recall),
                          _pct(point.false_positive_rate), f"{point.cost:,.0f}",
                          ", ".join(marks.get(point.threshold, [])))
        out.print(curve)
        best = result.sweep.optimal
        out.print(f"cost-optimal bands: review {best.review}, decline {best.decline} (cost "
                  f"{result.optimal_outcome.cost:,.0f}, current {current.cost:,.0f}); to apply: "
                  f"{_factors(best, model.threshold)}", highlight=False)
    for warning in result.warnings():
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


# -- rollout ------------------------------------------------------------------------------------------------
@main.group()
def rollout() -> None:
    """Shadow and canary rollouts of a challenger beside the champion: start, watch, promote, abort, or let the
    rollout policy take a step."""


def _rollout_policy(policy_file: str | None) -> Any:
    from fraudops.rollout import RolloutPolicy

    return RolloutPolicy.from_file(policy_file) if policy_file else RolloutPolicy()


@rollout.command("start")
@click.argument("tag")
@click.option("--mode", type=click.Choice(["shadow", "canary"]), default="shadow", show_default=True,
              help="shadow: scored beside the champion, never decides; canary: decides for --percent of traffic.")
@click.option("--percent", type=float, default=None,
              help="Share of traffic (sticky by account) the challenger decides in canary mode.")
@click.option("--reason", default="manual rollout", show_default=True)
@click.option("--registry-url", default=None, help="Object-store registry (default: $FRAUDOPS_REGISTRY_URL).")
@friendly_errors
def rollout_start(tag: str, mode: str, percent: float | None, reason: str, registry_url: str | None) -> None:
    """Start a rollout of TAG: every scorer replica loads it beside the champion."""
    from fraudops.rollout import stage_name

    if mode == "canary" and percent is None:
        raise ConfigError("--mode canary needs --percent")
    if mode == "shadow" and percent is not None:
        raise ConfigError("--percent applies to --mode canary only")
    registry = _registry(registry_url)
    registry.start_rollout(tag, mode=mode, percent=percent or 0.0, reason=reason,
                           actor=os.environ.get("USER", "cli"))
    state = registry.rollout()
    out.print(f"rollout {state.id}: {state.challenger} in {stage_name(state.mode, state.percent)} beside champion "
              f"{state.champion}", highlight=False)


@rollout.command("status")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), default=None,
              help="Rollout policy YAML (default: the built-in one, as in monitoring/rollout-policy.yaml).")
@click.option("--log-root", default=None, help="Prediction log root (default: $FRAUDOPS_PREDICTION_LOG).")
@click.option("--registry-url", default=None, help="Object-store registry (default: $FRAUDOPS_REGISTRY_URL).")
@friendly_errors
def rollout_status(policy_file: str | None, log_root: str | None, registry_url: str | None) -> None:
    """Compare the challenger with the champion on the rollout's logged traffic, over the current stage and the
    whole rollout, and say what the policy would decide now and why (nothing is changed)."""
    from fraudops.predlog import default_root
    from fraudops.rollout import compare, decide

    policy = _rollout_policy(policy_file)
    registry = _registry(registry_url)
    state = registry.rollout()
    if state is None:
        out.print(f"no rollout is active; champion: {registry.champion() or '(none)'}", highlight=False)
        return
    with console.status("reading the rollout's predictions"):
        report = compare(log_root or default_root(), state, score_method=policy.score_method)
    _print_rollout(report)
    decision = decide(report, policy, state)
    checks = Table(title="rollout policy")
    for name in ("check", "status", "value", "limit", "compared"):
        checks.add_column(name)
    for check in decision.checks:
        checks.add_row(check.name, check.status, check.value, check.limit, check.compared)
    out.print(checks)
    out.print(f"policy verdict: {decision.action}: {decision.reason}", highlight=False, soft_wrap=True)


def _print_rollout(report: Any) -> None:
    from fraudops.rollout import stage_name

    state, when = report.rollout, "%Y-%m-%d %H:%M UTC"
    out.print(f"rollout {state.id}: {state.challenger} beside champion {state.champion}, started "
              f"{report.whole.start:{when}} by {state.actor} ({state.reason})", highlight=False, soft_wrap=True)
    minutes = (report.end - report.stage.start).total_seconds() / 60
    out.print(f"current stage: {stage_name(state.mode, state.percent)} since {report.stage.start:{when}} "
              f"({minutes:,.0f} minutes)", highlight=False)
    for title, window in ((f"current stage since {report.stage.start:{when}}", report.stage),
                          (f"whole rollout since {report.whole.start:{when}}", report.whole)):
        out.print(_rollout_table(f"{title}, up to {report.end:{when}}", window, report.score_method))
        for line in _pairing_lines(window):
            out.print(line, highlight=False, soft_wrap=True)
    if report.corrupt_parts:
        console.print(f"[yellow]warning:[/] {report.corrupt_parts} unreadable log files were skipped", highlight=False)


def _pairing_lines(window: Any) -> list[str]:
    """Each challenger role beside the champion on the same transactions (`fraudops.rollout.Pairing`), or why a
    canary has no such pairs."""
    from fraudops.rollout import CANARY, SHADOW

    lines = [f"paired: {role} and champion on the same {pairing.rows:,} transactions: decline rate "
             f"{_pct1(pairing.challenger.decline_rate)} vs {_pct1(pairing.champion.decline_rate)}, review rate "
             f"{_pct1(pairing.challenger.review_rate)} vs {_pct1(pairing.champion.review_rate)}, score distance "
             f"{_num(pairing.score_distance)}; they disagree on declining {_pct1(pairing.decline_disagreement)} and "
             f"on any decision {_pct1(pairing.disagreement)}"
             for role, pairing in window.paired.items() if role in (SHADOW, CANARY)]
    if window.rows(CANARY) and CANARY not in window.paired:
        lines.append("unpaired: no canary transactions scored by the champion too (a scorer that logs no "
                     "counterfactual rows): the canary is compared with the champion's other transactions")
    return lines


def _pct1(value: float) -> str:
    return "n/a" if value != value else f"{value:.1%}"


def _num(value: float, digits: int = 3) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def _rollout_table(title: str, window: Any, score_method: str) -> Table:
    """One column per group of a rollout window (`fraudops.rollout.WindowReport`)."""
    from fraudops.rollout import CHALLENGER, CHAMPION, CHAMPION_ON_CANARY

    table = Table(title=title)
    table.add_column("")
    groups = list(window.groups.values())
    titles = {CHALLENGER: "challenger (all)", CHAMPION_ON_CANARY: "champion on canary rows"}
    for group in groups:
        table.add_column(titles.get(group.group, group.group), justify="right")
    rows: list[tuple[str, Callable[[Any], str]]] = [
        ("transactions", lambda g: f"{g.rows:,}"),
        ("requests", lambda g: f"{g.requests:,}"),
        ("decline rate", lambda g: _pct1(g.decline_rate)),
        ("review rate", lambda g: _pct1(g.review_rate)),
        ("approve rate", lambda g: _pct1(g.approve_rate)),
        ("score mean", lambda g: _num(g.score_mean)),
        ("score p50 / p90 / p99", lambda g: " / ".join(_num(v) for v in (g.score_p50, g.score_p90, g.score_p99))),
        (f"score distance from champion ({score_method})",
         lambda g: "" if g.group == CHAMPION else _num(window.score_distance.get(g.group, float("nan")))),
        ("scoring time p50 / p99 (ms)", lambda g: f"{_num(g.latency_p50_ms, 1)} / {_num(g.latency_p99_ms, 1)}"),
        ("labelled rows (frauds)", lambda g: f"{g.labelled:,} ({g.frauds:,})"),
        ("PR-AUC (labelled rows)", lambda g: _num(g.pr_auc)),
        ("recall at decline threshold", lambda g: _pct1(g.recall)),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(g) for g in groups))
    return table


@rollout.command("promote")
@click.option("--reason", default="manual promotion", show_default=True)
@click.option("--registry-url", default=None, help="Object-store registry (default: $FRAUDOPS_REGISTRY_URL).")
@friendly_errors
def rollout_promote(reason: str, registry_url: str | None) -> None:
    """Make the rollout's challenger the champion now; this ends the rollout."""
    from fraudops.errors import RegistryError

    registry = _registry(registry_url)
    state = registry.rollout()
    if state is None:
        raise RegistryError("no rollout is active (`fraudops models promote TAG` promotes any model)")
    event = registry.promote(state.challenger, reason=reason, actor=os.environ.get("USER", "cli"))
    out.print(f"champion: {event['tag']} (was {event['previous']}); rollout {state.id} ended", highlight=False)


@rollout.command("abort")
@click.option("--reason", default="manual abort", show_default=True)
@click.option("--registry-url", default=None, help="Object-store registry (default: $FRAUDOPS_REGISTRY_URL).")
@friendly_errors
def rollout_abort(reason: str, registry_url: str | None) -> None:
    """Stop the rollout: every replica drops the challenger, the champion stays."""
    registry = _registry(registry_url)
    state = registry.rollout()
    registry.abort_rollout(reason=reason, actor=os.environ.get("USER", "cli"))  # refuses when none is active
    out.print(f"rollout {state.id} aborted: {state.champion} stays champion", highlight=False)


@rollout.command("step")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), default=None,
              help="Rollout policy YAML (default: the built-in one, as in monitoring/rollout-policy.yaml).")
@click.option("--log-root", default=None, help="Prediction log root (default: $FRAUDOPS_PREDICTION_LOG).")
@click.option("--registry-url", default=None, help="Object-store registry (default: $FRAUDOPS_REGISTRY_URL).")
@friendly_errors
def rollout_step(policy_file: str | None, log_root: str | None, registry_url: str | None) -> None:
    """Take one step of the rollout controller (for cron or by hand): hold, advance to the next stage, promote or
    abort, as the policy decides on the logged traffic."""
    from fraudops.predlog import default_root
    from fraudops.rollout import step

    policy = _rollout_policy(policy_file)
    with console.status("judging the rollout"):
        decision = step(_registry(registry_url), log_root or default_root(), policy)
    out.print(f"{decision.action}: {decision.reason}", highlight=False, soft_wrap=True)


# -- trigger ------------------------------------------------------------------------------------------------
@main.group()
def trigger() -> None:
    """The retrain trigger (Alertmanager webhook)."""


@trigger.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--backend", type=click.Choice(["local", "kfp", "job"]), default="local", show_default=True)
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the bearer token (default: $FRAUDOPS_TRIGGER_TOKEN).")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="Where the trigger keeps its state (default: $BENTOML_HOME/fraudops/trigger).")
@click.option("--cooldown", default="6h", show_default=True, help="Least time between retrains of one model.")
@click.option("--base-data", default="", help="Original training data to retrain with (path or URL).")
@click.option("--recent-window", default="7d", show_default=True, help="Recent labelled traffic to add.")
@click.option("--export-root", default=None, help="Where recent traffic is exported (default: <state-dir>/exports).")
@click.option("--log-root", default=None, help="Prediction log root (default: $FRAUDOPS_PREDICTION_LOG).")
@click.option("--registry-url", default="", help="Object-store registry for the retraining run.")
@click.option("--kfp-host", default="", help="Kubeflow Pipelines API (backend kfp).")
@click.option("--image", default=None, help="Project image for kfp and job backends.")
@click.option("--namespace", default="", help="Namespace for Jobs (default: the pod's own).")
@click.option("--s3-secret", default="", help="Secret with object-store credentials for runs.")
@click.option("--s3-endpoint", default="", help="Object-store endpoint for runs.")
@click.option("--service-account", default="", help="Service account of retraining Jobs.")
@click.option("--job-resources", default="", help="Resources of retraining Jobs, as a JSON ResourceRequirements "
              "object (default: 1 CPU and 2Gi requested, 4Gi limit).")
@click.option("--pipeline-arg", "pipeline_args", multiple=True,
              help="Extra 'fraudops pipeline run' argument for local and job runs (repeatable).")
@click.option("--release", type=click.Choice(["promote", "rollout"]), default="promote", show_default=True,
              help="A retrained challenger that passes the gate becomes champion at once, or starts a staged "
                   "rollout that this trigger steps (shadow, canary, promote or abort) by --rollout-policy.")
@click.option("--rollout-policy", type=click.Path(dir_okay=False), default=None,
              help="Rollout policy YAML (default: the built-in one, as in monitoring/rollout-policy.yaml).")
@click.option("--rollout-every", default="1m", show_default=True, help="How often the rollout is judged.")
@click.option("--prometheus-url", default="", help="Prometheus whose firing scorer alerts abort a canary "
              "(unreachable: the rollout holds). Empty: the scorer's alerts are not consulted.")
@friendly_errors
def trigger_serve(host: str, port: int, backend: str, token_file: str | None, state_dir: str | None, cooldown: str,
                  base_data: str, recent_window: str, export_root: str | None, log_root: str | None,
                  registry_url: str, kfp_host: str, image: str | None, namespace: str, s3_secret: str,
                  s3_endpoint: str, service_account: str, job_resources: str, pipeline_args: tuple[str, ...],
                  release: str, rollout_policy: str | None, rollout_every: str, prometheus_url: str) -> None:
    """Start the retrain trigger: POST /alerts (Alertmanager), GET /runs, /metrics, /healthz, /openapi.json."""
    import uvicorn

    from fraudops.monitoring.backends import make_backend
    from fraudops.monitoring.job import export_labelled, parse_window
    from fraudops.monitoring.trigger import RetrainTrigger, TriggerConfig, create_app
    from fraudops.predlog import default_root
    from fraudops.registry import default_home
    from fraudops.settings import TriggerSettings, variable
    from fraudops.storage import join
    from pipelines.training import DEFAULT_IMAGE

    token = (Path(token_file).read_text().strip() if token_file
             else TriggerSettings.from_env().trigger_token.get_secret_value())
    if not token:
        variable_name = variable(TriggerSettings, "trigger_token")
        raise ConfigError(f"the trigger needs a bearer token: --token-file or ${variable_name}")
    state = Path(state_dir) if state_dir else default_home() / "fraudops" / "trigger"
    config = TriggerConfig(state_dir=state, cooldown=parse_window(cooldown), base_data=base_data,
                           recent_window=parse_window(recent_window), registry_url=registry_url,
                           pipeline_args=pipeline_args, release=release)
    try:
        resources = json.loads(job_resources) if job_resources else None
    except ValueError as exc:
        raise ConfigError(f"--job-resources is not JSON: {exc}") from None
    if resources is not None and not (isinstance(resources, dict) and set(resources) <= {"requests", "limits"}):
        raise ConfigError("--job-resources must be an object with 'requests' and/or 'limits'")
    runner = make_backend(backend, workdir=state / "runs", kfp_host=kfp_host, image=image or DEFAULT_IMAGE,
                          namespace=namespace, s3_secret=s3_secret, s3_endpoint=s3_endpoint,
                          service_account=service_account, job_resources=resources)
    logs, exports = log_root or default_root(), export_root or str(state / "exports")
    registry = _registry(registry_url or None)

    def exporter(run_id: str, start: Any, end: Any) -> str | None:
        """Recent labelled traffic in the serving model's schema (its label column)."""
        target = join(exports, f"{run_id}.parquet")
        spec = registry.info("champion").metadata["spec"]
        return target if export_labelled(logs, start, end, target, spec["target"], spec.get("id_column")) else None

    controller = None
    if release == "rollout":
        from fraudops.rollout import Controller, firing_scorer_alerts

        controller = Controller(registry, logs, _rollout_policy(rollout_policy), parse_window(rollout_every),
                                (lambda: firing_scorer_alerts(prometheus_url)) if prometheus_url else None)
    app = create_app(RetrainTrigger(config, runner, exporter, controller), token)
    uvicorn.run(app, host=host, port=port, log_level="warning")


# -- demo ---------------------------------------------------------------------------------------------------
@main.command()
@click.option("--home", type=click.Path(file_okay=False), default=".fraudops/demo", show_default=True,
              help="Where the demo keeps its model store, logs and reports (replaced on each run).")
@click.option("--train-rows", type=int, default=16_000, show_default=True)
@click.option("--traffic-rows", type=int, default=4_000, show_default=True,
              help="Transactions of normal traffic (twice as many drifted ones follow).")
@click.option("--iterations", type=int, default=300, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@friendly_errors
def demo(home: str, train_rows: int, traffic_rows: int, iterations: int, seed: int) -> None:
    """Run the whole loop on this machine and print its timeline: train, serve, traffic, drift, alert,
    retrain, gate, switch."""
    import shutil

    from fraudops.demo import DemoSettings, Timeline, run_demo

    path = Path(home)
    if path.exists():
        shutil.rmtree(path)
    timeline = Timeline(echo=lambda at, event, detail: out.print(f"[dim]{at:7.1f}s[/] [bold]{event}[/]: {detail}",
                                                                 highlight=False, soft_wrap=True))
    settings = DemoSettings(train_rows=train_rows, traffic_rows=traffic_rows, drifted_rows=2 * traffic_rows,
                            iterations=iterations, seed=seed)
    result = run_demo(path, settings, timeline)
    table = Table(title="fraudops loop")
    for name in ("t (s)", "event", "detail"):
        table.add_column(name, overflow="fold")
    for at, event, detail in timeline.events:
        table.add_row(f"{at:.1f}", event, detail)
    out.print(table)
    out.print(f"champion now: {result['champion']} (first model {result['first_model']}); "
              f"retrains launched: {len(result['runs'])}; process logs in {result['logs']}")
