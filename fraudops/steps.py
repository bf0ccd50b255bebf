"""The training workflow as steps that read and write directories: the KFP components and the CLI call these.

Each step takes its inputs as paths and parameters and writes its outputs into one directory, so the same code
runs inside a Kubeflow pod (artifact paths), under ``kfp.local`` and when called directly.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraudops.bundle import META_FILE, REFERENCE_FILE, ModelBundle
from fraudops.card import model_card
from fraudops.data.io import fingerprint, load_dataset, read_table
from fraudops.data.synthetic import DriftConfig, generate_transactions
from fraudops.errors import ConfigError
from fraudops.evaluation import fraud_metrics, plot_pr_curve
from fraudops.features import FeatureState
from fraudops.gate import RELEASES, GatePolicy, decide
from fraudops.registry import Registry
from fraudops.schema import SYNTHETIC, DatasetSpec
from fraudops.training import Progress, TrainConfig, featurize, fit, split
from fraudops.validation import validate

DATA_FILE = "data.parquet"
SPEC_FILE = "spec.json"
LABEL = "__label__"
METRICS_FILE = "metrics.json"
CARD_FILE = "model_card.md"
PR_CURVE_FILE = "pr_curve.png"
GATE_FILE = "gate.json"
PARTS = ("train", "valid", "test")


def _write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=2, default=str))


def _read_spec(directory: Path) -> dict[str, Any]:
    return json.loads((directory / SPEC_FILE).read_text())


def ingest(out_dir: str | Path, *, data_uri: str = "", spec: DatasetSpec | None = None, ip_table: str = "",
           rows: int = 20_000, seed: int = 0, start: str = "2026-01-01", days: float = 30.0,
           fraud_rate: float = 0.03, drift: DriftConfig | None = None, extra_uris: tuple[str, ...] = ()
           ) -> dict[str, Any]:
    """Read ``data_uri`` (and ``extra_uris``, same schema, appended) or, without one, generate synthetic data."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if data_uri:
        spec = spec or SYNTHETIC
        frame, spec = load_dataset(data_uri, spec, ip_table or None)
        source = data_uri
    else:
        if spec is not None and spec != SYNTHETIC:
            raise ConfigError("no data given: generated data uses the synthetic schema, so leave the column "
                              "roles unset or pass a data file")
        spec = SYNTHETIC
        frame = generate_transactions(rows, seed=seed, start=start, days=days, fraud_rate=fraud_rate, drift=drift)
        source = f"synthetic(rows={rows}, seed={seed}, start={start}, days={days})"
    extras = [read_table(uri) for uri in extra_uris if uri]
    if extras:
        frame = _text_where_mixed(pd.concat([frame, *extras], ignore_index=True, sort=False))
        source += " + " + " + ".join(u for u in extra_uris if u)
    frame.to_parquet(out / DATA_FILE, index=False)
    summary = {"source": source, "rows": len(frame), "columns": list(frame.columns)}
    _write_json(out / SPEC_FILE, {"spec": spec.model_dump(mode="json"), "ingest": summary})
    return summary


def _text_where_mixed(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns that mix types after appending tables (e.g. datetimes from Parquet, text from CSV) as text;
    validation parses them again, so nothing is lost."""
    for name in frame.select_dtypes(include="object").columns:
        present = frame[name].dropna()
        if present.map(type).nunique() > 1:
            frame[name] = frame[name].where(frame[name].isna(), frame[name].astype(str))
    return frame


def validate_step(in_dir: str | Path, out_dir: str | Path, *, max_bad_fraction: float = 0.05) -> dict[str, Any]:
    """Validate the ingested table; write accepted rows, rejected rows with reasons and the report."""
    src, out = Path(in_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = _read_spec(src)
    spec = DatasetSpec.model_validate(info["spec"])
    result = validate(pd.read_parquet(src / DATA_FILE), spec, max_bad_fraction=max_bad_fraction)
    result.clean.to_parquet(out / DATA_FILE, index=False)
    result.rejected.to_parquet(out / "rejected.parquet", index=False)
    (out / "report.md").write_text(result.report.to_markdown())
    _write_json(out / "report.json", result.report.to_dict())
    summary = {"rows_read": result.report.n_rows, "rows_accepted": result.report.n_valid,
               "rows_rejected": result.report.n_rejected, "warnings": result.report.warnings,
               "data_fingerprint": fingerprint(result.clean)}
    _write_json(out / SPEC_FILE, {"spec": result.spec.model_dump(mode="json"), "numeric": result.numeric,
                                  "ingest": info.get("ingest", {}), "validation": summary})
    return summary


def split_features(in_dir: str | Path, out_dir: str | Path, config: TrainConfig) -> dict[str, Any]:
    """Split validated rows (time-based by default), replay the entity features over the whole table and write
    the raw parts, their features and the feature state."""
    src, out = Path(in_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = _read_spec(src)
    spec = DatasetSpec.model_validate(info["spec"])
    splits = split(pd.read_parquet(src / DATA_FILE), spec, config)
    state, *features = featurize(splits, spec, info["numeric"])
    state.save(out / "features")
    for name, part, x in zip(PARTS, (splits.train, splits.valid, splits.test), features, strict=True):
        part.to_parquet(out / f"{name}.parquet", index=False)
        x.assign(**{LABEL: part[spec.target].to_numpy()}).to_parquet(out / f"{name}_features.parquet", index=False)
    windows = splits.windows(spec.timestamp)
    for name, part in zip(PARTS, (splits.train, splits.valid, splits.test), strict=True):
        windows[name]["fraud"] = int(part[spec.target].sum())
    _write_json(out / SPEC_FILE, {**info, "windows": windows, "split": config.split})
    return windows


def _features(split_dir: Path, name: str) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.read_parquet(split_dir / f"{name}_features.parquet")
    return frame.drop(columns=[LABEL]), frame[LABEL].to_numpy()


def train_step(split_dir: str | Path, model_dir: str | Path, config: TrainConfig,
               progress: Progress | None = None) -> dict[str, Any]:
    """Train CatBoost on the split's features; write the model bundle."""
    src = Path(split_dir)
    info = _read_spec(src)
    state = FeatureState.load(src / "features")
    x_train, y_train = _features(src, "train")
    x_valid, y_valid = _features(src, "valid")
    bundle = fit(state, x_train, y_train, x_valid, y_valid, config, progress)
    validation = info.get("validation", {})
    bundle.meta.update(
        name=state.spec.name, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        spec=state.spec.model_dump(mode="json"), windows=info["windows"], split=info["split"],
        source=info.get("ingest", {}).get("source", ""), data_fingerprint=validation.get("data_fingerprint"),
        rows_accepted=validation.get("rows_accepted"), rows_rejected=validation.get("rows_rejected"),
    )
    bundle.save(model_dir)
    summary = {"best_iteration": bundle.meta["best_iteration"], "threshold": bundle.threshold}
    if "refit" in bundle.meta:
        summary["refit_rounds"] = bundle.meta["refit"]["rounds"]
    return summary


def evaluate_step(model_dir: str | Path, split_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Holdout metrics at the model's threshold, the PR curve, the model card and the drift reference sample."""
    src, out = Path(split_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle = ModelBundle.load(model_dir)
    params = TrainConfig.model_validate(bundle.meta["params"])
    x_test, y_test = _features(src, "test")
    scores = bundle.score_features(x_test)
    metrics = fraud_metrics(y_test, scores, bundle.threshold, what="the test window")
    metrics["cost_per_1k_transactions"] = _cost(y_test, scores >= bundle.threshold, params) * 1000 / len(y_test)
    _write_json(out / METRICS_FILE, metrics)
    plot_pr_curve(y_test, scores, out / PR_CURVE_FILE, title=f"{bundle.meta['name']}: test window",
                  threshold=bundle.threshold)
    (out / CARD_FILE).write_text(model_card(bundle.meta, metrics))
    spec = bundle.state.spec
    reference = x_test.assign(score=scores, label=y_test)
    if spec.timestamp:
        reference[spec.timestamp] = pd.read_parquet(src / "test.parquet", columns=[spec.timestamp])[spec.timestamp]
    if len(reference) > params.reference_rows:
        reference = reference.sample(params.reference_rows, random_state=params.seed).sort_index()
    reference.to_parquet(out / REFERENCE_FILE, index=False)
    return metrics


def _cost(y: np.ndarray, flagged: np.ndarray, params: TrainConfig) -> float:
    return float(params.cost_fn * (~flagged & (y == 1)).sum() + params.cost_fp * (flagged & (y == 0)).sum())


def gate_step(split_dir: str | Path, eval_dir: str | Path, registry: Registry, policy: GatePolicy,
              out_dir: str | Path) -> dict[str, Any]:
    """Compare the challenger with the champion on the challenger's test window (the same recent holdout), each
    with its own features replayed over the split's whole table."""
    src, out = Path(split_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    challenger = json.loads((Path(eval_dir) / METRICS_FILE).read_text())
    champion_tag = registry.champion()
    if champion_tag is None:
        decision = decide(challenger, None, policy)
    else:
        champion = registry.load(champion_tag)
        spec = DatasetSpec.model_validate(_read_spec(src)["spec"])
        parts = {name: pd.read_parquet(src / f"{name}.parquet") for name in PARTS}
        test = parts["test"]
        missing = set(champion.state.input_columns) - set(test.columns)
        if champion.state.spec.target != spec.target or missing:
            reason = (f"champion {champion_tag} was trained on another schema ({champion.state.spec.name}; "
                      f"columns missing here: {sorted(missing)}); it cannot be compared on this holdout, "
                      "promote explicitly if intended")
            result = {"verdict": "reject", "promote": False, "reason": reason, "challenger": challenger,
                      "champion": None, "champion_tag": champion_tag}
            _write_json(out / GATE_FILE, result)
            return result
        # the champion's own feature definition replayed over the same table: what it would have seen serving
        # these transactions with an online store, as the challenger's test features do
        whole = pd.concat(parts.values(), ignore_index=True)
        features = champion.state.training_features(whole).iloc[len(whole) - len(test):]
        champion_metrics = fraud_metrics(test[spec.target].to_numpy(), champion.score_features(features),
                                         champion.threshold, what="the test window")
        decision = decide(challenger, champion_metrics, policy, champion_tag)
    result = decision.to_dict()
    _write_json(out / GATE_FILE, result)
    return result


def register_step(model_dir: str | Path, eval_dir: str | Path, gate_dir: str | Path, registry: Registry
                  ) -> str:
    """Register the challenger with its evaluation and the gate's verdict (promotion is a separate step)."""
    evaluation, gate_dir = Path(eval_dir), Path(gate_dir)
    metrics = json.loads((evaluation / METRICS_FILE).read_text())
    gate = json.loads((gate_dir / GATE_FILE).read_text())
    meta = json.loads((Path(model_dir) / META_FILE).read_text())
    files = {name: evaluation / name for name in (METRICS_FILE, CARD_FILE, PR_CURVE_FILE, REFERENCE_FILE)}
    files[GATE_FILE] = gate_dir / GATE_FILE
    labels = {"dataset": meta["name"], "gate": gate["verdict"], "stage": "candidate"}
    return registry.register(model_dir, extra_files=files, labels=labels,
                             metadata={"metrics": metrics, "gate_reason": gate["reason"]})


def promote_step(tag: str, registry: Registry, reason: str, actor: str = "pipeline",
                 release: str = "promote") -> dict[str, Any]:
    """Release a challenger that passed the gate: make it the champion (``promote``), or start its staged rollout
    in shadow beside the champion (``rollout``; the first model, with no champion to compare with, is promoted)."""
    if release not in RELEASES:
        raise ConfigError(f"release must be one of {', '.join(RELEASES)}, not {release!r}")
    if release == "rollout" and registry.champion() is not None:
        return registry.start_rollout(tag, "shadow", reason=f"passed the gate: {reason}", actor=actor)
    return registry.promote(tag, reason=reason, actor=actor)


def train_to_directory(data_uri: str, output: str | Path, spec: DatasetSpec | None, config: TrainConfig, *,
                       ip_table: str = "", rows: int = 20_000, seed: int = 0, max_bad_fraction: float = 0.05,
                       registry: Registry | None = None, policy: GatePolicy | None = None,
                       progress: Progress | None = None, on_step: Any = None) -> dict[str, Any]:
    """Run the workflow without an orchestrator and gather the results in ``output``.

    ``output`` gets ``model/`` (the bundle), ``metrics.json``, ``pr_curve.png``, ``model_card.md``,
    ``reference.parquet``, ``validation.md`` and ``rejected_rows.csv`` when rows were rejected. With a
    ``registry``, the model also goes through the gate, is registered, and is promoted if the gate passes.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    say = on_step or (lambda _name: None)
    result: dict[str, Any] = {}
    try:
        say("ingest")
        ingest(work / "raw", data_uri=data_uri, spec=spec, ip_table=ip_table, rows=rows, seed=seed)
        say("validate")
        result["validation"] = validate_step(work / "raw", work / "valid", max_bad_fraction=max_bad_fraction)
        shutil.copy2(work / "valid" / "report.md", out / "validation.md")
        rejected = pd.read_parquet(work / "valid" / "rejected.parquet")
        if len(rejected):
            rejected.to_csv(out / "rejected_rows.csv", index=False)
        say("split + features")
        split_features(work / "valid", work / "split", config)
        say("train")
        train_step(work / "split", out / "model", config, progress)
        say("evaluate")
        result["metrics"] = evaluate_step(out / "model", work / "split", out)
        if registry is not None:
            say("gate")
            gate = gate_step(work / "split", out, registry, policy or GatePolicy(), out)
            say("register")
            tag = register_step(out / "model", out, out, registry)
            result.update(gate=gate, tag=tag)
            if gate["promote"]:
                promote_step(tag, registry, reason=gate["reason"], actor="fraudops train")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result
