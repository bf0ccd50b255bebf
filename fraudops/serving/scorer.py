"""The scorer: scores requests with the current model, logs them, and swaps models without failing requests."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from catboost import Pool
from pydantic import ValidationError

from fraudops.bundle import ModelBundle
from fraudops.decisions import DECLINE_COLUMN, REVIEW_COLUMN
from fraudops.errors import FraudopsError
from fraudops.predlog import FEEDBACK, PREDICTIONS, LogChunk, LogUnavailableError, LogWriter, default_root
from fraudops.serving.api import FEEDBACK_LABELS
from fraudops.serving.errors import RequestError, check_batch, problems_of
from fraudops.serving.metrics import ScorerMetrics, private_registry
from fraudops.serving.model import ModelLoadError, ModelSource, ServedModel
from fraudops.settings import ServingConfig

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # how often an unready service retries loading when the champion poll is off


class NotReadyError(FraudopsError):
    """No model is loaded (HTTP 503)."""


class Scorer:
    """Scores requests with the current model, logs them, and swaps in a new model without failing requests.

    A request reads the current `ServedModel` once and uses it to the end, so a reload (an attribute swap)
    never mixes two models in one response. A model that fails to load or check leaves the current one serving.
    """

    def __init__(self, config: ServingConfig, source: ModelSource, log_writer: LogWriter,
                 metrics: ScorerMetrics | None = None) -> None:
        self.config = config
        self.source = source
        self.service_spec = config.service_spec()
        self.log = log_writer
        self.metrics = metrics or ScorerMetrics(private_registry())
        self.error: str | None = "not loaded yet"
        self._model: ServedModel | None = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: ServingConfig, *, packaged: str | None = None,
                    metrics: ScorerMetrics | None = None) -> Scorer:
        """A scorer with the registry, prediction log and metrics the settings describe."""
        metrics = metrics or ScorerMetrics()
        writer = LogWriter(config.prediction_log or default_root(), flush_rows=config.log_flush_rows,
                           flush_seconds=config.log_flush_seconds,
                           on_written=lambda kind, rows: metrics.log_rows.labels(kind).inc(rows),
                           on_error=lambda kind, _exc: metrics.log_failures.labels(kind).inc(),
                           wal_dir=wal_dir(config), fsync_seconds=config.wal_fsync_seconds,
                           on_wal_error=lambda _exc: metrics.wal_failures.inc())
        if writer.wal_recovered_rows or writer.wal_unreadable_records:
            metrics.wal_recovered.inc(writer.wal_recovered_rows)
            log.warning("recovered %d logged rows a killed scorer had written ahead to %s (%d torn records skipped)",
                        writer.wal_recovered_rows, writer.wal_dir, writer.wal_unreadable_records)
        return cls(config, ModelSource(config.model_tag, packaged=packaged), writer, metrics)

    @property
    def model(self) -> ServedModel | None:
        """The model serving now (None before the first successful load)."""
        return self._model

    @property
    def ready(self) -> bool:
        """True once a model is loaded."""
        return self._model is not None

    # -- model lifecycle ----------------------------------------------------------------------------------
    def reload(self) -> dict[str, Any]:
        """Serve the model the source points at now if it changed; `ModelLoadError` (old model kept) on failure."""
        with self._reload_lock:
            previous = self._model
            tag = None
            try:
                tag, path = self.source.locate()
                if previous is not None and tag == previous.tag:
                    return {"model_tag": tag, "previous": tag, "changed": False}
                served = ServedModel.build(tag, ModelBundle.load(path), self.config, self.service_spec)
            except Exception as exc:  # missing, corrupt or mismatched: whatever it is, keep the current model
                self._failed(tag, exc)
                raise ModelLoadError(self.error) from exc
            self._model = served  # the swap: requests in flight keep the model they started with
            # A full collection walks every long-lived object (~220k: the libraries and the model) and paused every
            # request for 130-170 ms. Frozen objects are skipped by the collector and still freed by reference
            # counting when the model is replaced (only cyclic garbage among them would stay).
            gc.freeze()
            self.error = None
            self.metrics.model_loads.labels("ok").inc()
            self.metrics.serving(served, previous)
            log.info("serving model %s (threshold %.4f, fast features: %s)%s", tag, served.bundle.threshold,
                     served.fast is not None, f", replacing {previous.tag}" if previous else "")
            return {"model_tag": tag, "previous": previous.tag if previous else None, "changed": True}

    def _failed(self, tag: str | None, exc: Exception) -> None:
        what = f"model {tag}" if tag else f"model {self.source.tag!r}"
        error = f"cannot serve {what}: {exc}"
        still = f"; still serving {self._model.tag}" if self._model else "; the service stays unready"
        if error != self.error:
            log.error("%s%s", error, still)
        self.error = error
        self.metrics.model_loads.labels("failed").inc()

    def start(self) -> None:
        """Load the model (a failure leaves the service unready and is retried) and start the champion poll."""
        self._try_reload()
        if self.config.poll_seconds > 0 or not self.ready:
            self._watcher = threading.Thread(target=self._watch, name="fraudops-model-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while True:
            interval = self.config.poll_seconds or (None if self.ready else RETRY_SECONDS)
            if interval is None or self._stop.wait(interval):
                return
            self._try_reload()

    def _try_reload(self) -> None:
        with contextlib.suppress(ModelLoadError):  # logged when the reason changes; the watcher retries
            self.reload()

    def close(self) -> None:
        """Stop polling and write every logged row."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        self.log.close()

    # -- requests -------------------------------------------------------------------------------------------
    def _handle(self, endpoint: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = work()
            outcome = "ok"
            return result
        except RequestError as exc:
            outcome = "invalid"
            for reason, count in Counter(p.reason for p in exc.problems).items():
                self.metrics.invalid.labels(reason).inc(count)
            raise
        except (NotReadyError, LogUnavailableError):
            outcome = "unavailable"
            raise
        finally:
            self.metrics.requests.labels(endpoint, outcome).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    def score(self, transactions: Any, explain: bool = False) -> dict[str, Any]:
        """Score 1..max_batch raw transactions (see `RowSchema`); the body of a `ScoreResponse`."""
        return self._handle("score", lambda: self._score(transactions, explain))

    def _score(self, transactions: Any, explain: bool) -> dict[str, Any]:
        served = self._model
        if served is None:
            raise NotReadyError(f"no model is loaded: {self.error}")
        check_batch(transactions, "transactions", self.config.max_batch)
        rows = served.schema.validate(transactions)
        names = served.feature_names
        model = served.bundle.model
        features: Mapping[str, Sequence[Any]]
        if served.fast is not None:
            matrix = served.fast.rows(rows)
            pool = Pool(matrix, cat_features=served.bundle.state.categorical_features, feature_names=names)
            features = {name: [row[j] for row in matrix] for j, name in enumerate(names)}
        else:
            frame = served.bundle.features(pd.DataFrame(transactions))  # the canonical function on raw rows
            pool = served.bundle.pool(frame)
            features = {name: frame[name].to_numpy() for name in names}
        scores = model.predict_proba(pool)[:, 1].tolist()
        decisions = served.bands.decide(scores)
        request_id = uuid.uuid4().hex
        spec = served.bundle.state.spec
        columns: dict[str, Any] = {"row": np.arange(len(rows), dtype="int32"), "score": scores,
                                   "decision": decisions}
        ids = [row.get(spec.id_column) for row in rows] if spec.id_column else None
        if ids is not None:
            columns["transaction_id"] = ids
        if spec.timestamp:
            columns[spec.timestamp] = served.schema.times(rows, spec.timestamp)
        self.log.append(LogChunk(PREDICTIONS, datetime.now(UTC), len(rows), columns={**columns, **features},
                                 shared={"request_id": request_id, "model_tag": served.tag,
                                         REVIEW_COLUMN: served.bands.review, DECLINE_COLUMN: served.bands.decline},
                                 json_columns={"input": transactions}))
        self.metrics.scored(scores, decisions)
        results: list[dict[str, Any]] = [{"row": i, "score": s, "decision": d}
                                         for i, (s, d) in enumerate(zip(scores, decisions, strict=True))]
        if ids is not None:
            for item, tid in zip(results, ids, strict=True):
                if tid is not None:
                    item["transaction_id"] = tid
        if explain:
            shap = model.get_feature_importance(pool, type="ShapValues")[:, :-1]
            for item, reasons in zip(results, reason_codes(shap, names, features, self.config.reasons), strict=True):
                item["reasons"] = reasons
        return {"request_id": request_id, "model_tag": served.tag,
                "thresholds": {"review": served.bands.review, "decline": served.bands.decline}, "results": results}

    def feedback(self, labels: Any) -> dict[str, Any]:
        """Record confirmed labels against request ids (the ``feedback`` log); the body of a `FeedbackResponse`."""
        return self._handle("feedback", lambda: self._feedback(labels))

    def _feedback(self, labels: Any) -> dict[str, Any]:
        check_batch(labels, "labels", self.config.max_batch)
        try:
            items = FEEDBACK_LABELS.validate_python(labels)
        except ValidationError as exc:
            raise RequestError(problems_of(exc)) from None
        now = datetime.now(UTC)
        columns = {"request_id": [x.request_id for x in items], "row": np.array([x.row for x in items], "int32"),
                   "transaction_id": [x.transaction_id for x in items], "is_fraud": [x.is_fraud for x in items],
                   "source": [x.source for x in items], "note": [x.note for x in items],
                   "observed_at": pd.to_datetime([x.observed_at or now for x in items], utc=True)}
        self.log.append(LogChunk(FEEDBACK, now, len(items), columns=columns))
        for source, count in Counter(x.source for x in items).items():
            self.metrics.feedback.labels(source).inc(count)
        return {"accepted": len(items)}



def wal_dir(config: ServingConfig) -> Path | None:
    """The write-ahead directory of the prediction log (None when ``prediction_wal`` is ``off``)."""
    if config.prediction_wal == "off":
        return None
    if config.prediction_wal:
        return Path(config.prediction_wal)
    from fraudops.registry import default_home

    return default_home() / "fraudops" / "prediction-wal"


def reason_codes(contributions: np.ndarray, names: list[str], features: Mapping[str, Sequence[Any]], k: int
                 ) -> list[list[dict[str, Any]]]:
    """The ``k`` features pushing each row's score most towards fraud (largest SHAP values first)."""
    top = np.argsort(-contributions, axis=1, kind="stable")[:, :k]
    return [[{"feature": names[j], "value": _plain(features[names[j]][i]), "contribution": float(contributions[i, j])}
             for j in top[i]] for i in range(len(contributions))]


def _plain(value: Any) -> str | float | None:
    if isinstance(value, str):
        return value
    value = float(value)
    return None if math.isnan(value) else value

