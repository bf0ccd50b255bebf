"""The drift job: the serving model's reference sample against the prediction log of a time window.

Each run writes ``<monitor root>/runs/<model name>/<version>/<run id>/{report.html,summary.json}`` and replaces
``<monitor root>/latest/<model name>__<version>.json``, which the exporter serves to Prometheus.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from fraudops import storage
from fraudops.decisions import DECLINE_COLUMN, REVIEW_COLUMN, Bands
from fraudops.errors import ConfigError
from fraudops.monitoring.drift import LABEL, SCORE, DriftPolicy, compute_drift
from fraudops.normalize import UNIT_SECONDS
from fraudops.predlog import TIME_COLUMN, read_feedback, read_predictions
from fraudops.registry import CANARY, CHAMPION, Registry, default_home
from fraudops.settings import StoreSettings

log = logging.getLogger(__name__)

LATEST = "latest"


def default_monitor_root() -> str:
    """``$FRAUDOPS_MONITOR_DIR``, else ``<BENTOML_HOME>/fraudops/monitor``."""
    return StoreSettings.from_env().monitor_dir or str(default_home() / "fraudops" / "monitor")


def parse_window(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``2d`` -> timedelta."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not match:
        raise ConfigError(f"window {text!r} is not a duration like 30m, 1h or 2d")
    value, unit = float(match.group(1)), match.group(2)
    seconds = value * UNIT_SECONDS[unit]
    if seconds > LONGEST_WINDOW.total_seconds():
        raise ConfigError(f"window {text!r} is longer than {LONGEST_WINDOW.days} days")
    return timedelta(seconds=seconds)


LONGEST_WINDOW = timedelta(days=36_500)
"""The longest window a command takes (a century: what comes before it is not a time a log holds)."""


def labelled_window(log_root: str, start: datetime, end: datetime, model_tag: str | None = None,
                    feedback_until: datetime | None = None) -> pd.DataFrame:
    """Predictions logged in [start, end) (of ``model_tag`` if given) with their confirmed labels.

    Labels come from feedback recorded up to ``feedback_until`` (default: now), matched on request id and row;
    ``label`` is NaN where none arrived. A prediction logged twice counts once. ``attrs["corrupt_parts"]`` counts
    unreadable log files.
    """
    predictions = read_predictions(log_root, start, end)
    corrupt = predictions.attrs.get("corrupt_parts", 0)
    if model_tag is not None and "model_tag" in predictions:
        predictions = predictions[predictions["model_tag"] == model_tag]
    if {"request_id", "row"} <= set(predictions):  # a row the log writer wrote twice (recovery after a crash)
        # one transaction's rows by other models or roles (shadow, the champion on canary rows) are not repeats
        key = ["request_id", "row", *(c for c in ("role", "model_tag") if c in predictions)]
        predictions = predictions.drop_duplicates(key, keep="first")
    feedback = read_feedback(log_root, start, feedback_until or datetime.now(UTC))
    corrupt += feedback.attrs.get("corrupt_parts", 0)
    if len(predictions) and len(feedback) and "request_id" in feedback:
        labels = (feedback.dropna(subset=["request_id"]).drop_duplicates(["request_id", "row"], keep="last")
                  [["request_id", "row", "is_fraud"]].rename(columns={"is_fraud": LABEL}))
        predictions = predictions.merge(labels, on=["request_id", "row"], how="left")
    elif LABEL not in predictions:
        predictions = predictions.assign(**{LABEL: float("nan")})
    predictions = predictions.reset_index(drop=True)
    predictions.attrs["corrupt_parts"] = corrupt
    return predictions


def run_drift_job(*, window: timedelta, registry: Registry | None = None, log_root: str | None = None,
                  monitor_root: str | None = None, policy: DriftPolicy | None = None,
                  reference_tag: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Run one drift check of the serving model (or ``reference_tag``) over the last ``window``."""
    from fraudops.predlog import default_root

    registry = registry or Registry()
    policy = policy or DriftPolicy()
    log_root = log_root or default_root()
    monitor_root = monitor_root or default_monitor_root()
    end = now or datetime.now(UTC)
    start = end - window
    tag = registry.resolve(reference_tag or "champion")
    bundle = registry.load(tag)
    if bundle.reference is None:
        raise ConfigError(f"model {tag} has no reference sample; register it through the pipeline")
    current = labelled_window(log_root, start, end, model_tag=tag)
    features = bundle.feature_names
    missing = [f for f in [*features, SCORE] if f not in current] if len(current) else []
    if missing:
        raise ConfigError(f"the prediction log at {log_root} lacks column(s) {missing} for model {tag}")
    bands = logged_bands(current, bundle.threshold)
    reference = bundle.reference
    summary, result = compute_drift(
        reference, current, features, bundle.state.categorical_features, policy,
        reference_decisions=pd.Series(bands.decide(reference[SCORE].tolist())),
        current_decisions=current.get("decision"), entity_features=bundle.state.entity_feature_names)
    run_id = f"{end.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"
    name, version = tag.split(":", 1)
    run_dir = storage.join(monitor_root, "runs", name, version, run_id)
    document = {"model": tag, "run_id": run_id, "window": {"start": start.isoformat(), "end": end.isoformat(),
                "seconds": window.total_seconds()}, "finished_at": datetime.now(UTC).isoformat(),
                "corrupt_parts": int(current.attrs.get("corrupt_parts", 0)), **summary.to_dict(),
                "report_html": storage.join(run_dir, "report.html") if result is not None else None,
                "summary_json": storage.join(run_dir, "summary.json")}
    if result is not None:
        _save_html(result, document["report_html"])
    storage.write_json(document["summary_json"], document)
    storage.write_json(storage.join(monitor_root, LATEST, f"{name}__{version}.json"), document)
    log.info("drift run %s for %s: %s (%d rows)", run_id, tag, summary.verdict, summary.rows)
    return document


def logged_bands(window: pd.DataFrame, threshold: float) -> Bands:
    """The decision thresholds the scorer applied in a log window (the ones most rows were decided with), so that
    the reference sample's decisions are made the same way; the default bands around ``threshold`` for a log
    written before the scorer recorded them."""
    pairs = window.reindex(columns=[REVIEW_COLUMN, DECLINE_COLUMN]).dropna()
    if pairs.empty:
        return Bands.around(threshold)
    review, decline = pairs.value_counts().idxmax()
    return Bands(review=float(review), decline=float(decline))


def _save_html(result: Any, url: str) -> None:
    if not storage.is_remote(url):
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        result.save_html(url)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "report.html"
        result.save_html(local)
        fs, path = storage.filesystem(url)
        fs.put_file(str(local), path)


def latest_summaries(monitor_root: str | None = None) -> list[dict[str, Any]]:
    """The newest summary of every monitored model (unreadable files are skipped)."""
    fs, base = storage.filesystem(storage.join(monitor_root or default_monitor_root(), LATEST))
    if not fs.exists(base):
        return []
    documents = []
    for path in sorted(fs.glob(f"{base}/*.json")):
        try:
            with fs.open(path, "rb") as fh:
                document = json.loads(fh.read())
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable drift summary %s: %s", path, exc)
            continue
        if isinstance(document, dict) and {"model", "verdict"} <= document.keys():
            documents.append(document)
        else:
            log.warning("skipping %s: not a drift summary", path)
    return documents


def export_labelled(log_root: str, start: datetime, end: datetime, output: str, label_column: str,
                    id_column: str | None = None) -> int:
    """Write the labelled transactions of a window in the training schema (the logged input fields plus the
    label column) so that a retraining run can train on recent traffic; returns the row count.

    Only the rows that decided (role champion or canary; rows logged before roles count as champion) are
    training rows: a rollout's shadow rows score the same transactions again. A transaction scored more than once
    (a client's retry, a replay) is one training row: with ``id_column``, the newest scoring of each id and its
    label are kept."""
    frame = labelled_window(log_root, start, end)
    if "input" not in frame:
        frame = frame.assign(input=pd.Series(dtype=object))
    decided = frame["role"].isna() | frame["role"].isin([CHAMPION, CANARY]) if "role" in frame else True
    labelled = frame[frame[LABEL].notna() & decided]
    if TIME_COLUMN in labelled:
        labelled = labelled.sort_values(TIME_COLUMN, kind="stable")
    rows = [json.loads(text) for text in labelled["input"]]
    table = pd.DataFrame(rows)
    table[label_column] = labelled[LABEL].astype("int64").to_numpy()
    if id_column and id_column in table:
        table = table.drop_duplicates(id_column, keep="last").reset_index(drop=True)
    fs, path = storage.filesystem(output)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    table.to_parquet(output, index=False, storage_options=storage.storage_options(output) or None)
    return len(table)
