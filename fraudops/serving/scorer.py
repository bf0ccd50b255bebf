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
from dataclasses import dataclass
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
from fraudops.registry import CANARY, CHAMPION, SHADOW
from fraudops.serving.api import FEEDBACK_LABELS
from fraudops.serving.challenger import Challenger, ShadowWorker
from fraudops.serving.errors import RequestError, check_batch, problems_of
from fraudops.serving.metrics import ScorerMetrics, private_registry
from fraudops.serving.model import ModelLoadError, ModelSource, ServedModel
from fraudops.settings import ServingConfig

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # how often an unready service retries loading when the champion poll is off


class NotReadyError(FraudopsError):
    """No model is loaded (HTTP 503)."""


@dataclass(frozen=True)
class Scored:
    """One model's output for some rows of a request."""

    scores: list[float]
    decisions: list[str]
    features: Mapping[str, Sequence[Any]]
    seconds: float
    reasons: list[list[dict[str, Any]]] | None = None


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
        self._challenger: Challenger | None = None
        self._shadow = ShadowWorker(self._score_shadow, on_dropped=self.metrics.shadow_dropped.inc,
                                    on_failed=lambda _exc: self.metrics.shadow_failures.inc())
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
    def challenger(self) -> Challenger | None:
        """The challenger of the active rollout, when one is loaded."""
        return self._challenger

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
                    self._refresh_rollout()
                    return {"model_tag": tag, "previous": tag, "changed": False, **self._rollout_state()}
                challenger = self._challenger
                served = (challenger.model if challenger is not None and challenger.model.tag == tag else
                          ServedModel.build(tag, ModelBundle.load(path), self.config, self.service_spec))
            except Exception as exc:  # missing, corrupt or mismatched: whatever it is, keep the current model
                self._failed(tag, exc)
                raise ModelLoadError(self.error) from exc
            self._model = served  # the swap: requests in flight keep the model they started with
            self._refresh_rollout()
            # A full collection walks every long-lived object (~220k: the libraries and the model) and paused every
            # request for 130-170 ms. Frozen objects are skipped by the collector and still freed by reference
            # counting when the model is replaced (only cyclic garbage among them would stay).
            gc.freeze()
            self.error = None
            self.metrics.model_loads.labels("ok").inc()
            self.metrics.serving(served, previous)
            log.info("serving model %s (threshold %.4f, fast features: %s)%s", tag, served.bundle.threshold,
                     served.fast is not None, f", replacing {previous.tag}" if previous else "")
            return {"model_tag": tag, "previous": previous.tag if previous else None, "changed": True,
                    **self._rollout_state()}

    def _refresh_rollout(self) -> None:
        """Follow the rollout state beside the champion pointer: load, update or drop the challenger. A challenger
        that cannot be served is dropped (logged and counted): the champion goes on alone."""
        try:
            rollout = self.source.rollout()
        except Exception as exc:  # the store is down: keep what we have, the next poll retries
            log.warning("cannot read the rollout state: %s", exc)
            return
        current = self._challenger
        if rollout is None or (self._model is not None and rollout.challenger == self._model.tag):
            if current is not None:
                log.info("rollout of %s ended", current.model.tag)
            self._challenger = None
        elif current is not None and current.model.tag == rollout.challenger:
            if current.rollout != rollout:
                log.info("rollout of %s: %s %g%%", rollout.challenger, rollout.mode, rollout.percent)
            self._challenger = Challenger(rollout, current.model)
        else:
            try:
                model = ServedModel.build(rollout.challenger, ModelBundle.load(self.source.registry.path(
                    rollout.challenger)), self.config, self.service_spec)
            except Exception as exc:
                if current is None or current.rollout.id != rollout.id:
                    log.error("cannot serve challenger %s of rollout %s; the champion serves alone: %s",
                              rollout.challenger, rollout.id, exc)
                self.metrics.model_loads.labels("failed").inc()
                self._challenger = None
                return
            log.info("rollout of %s beside %s: %s %g%%", rollout.challenger, rollout.champion, rollout.mode,
                     rollout.percent)
            self._challenger = Challenger(rollout, model)
        self.metrics.rollout(self._challenger)

    def _rollout_state(self) -> dict[str, Any]:
        challenger = self._challenger
        if challenger is None:
            return {"rollout": None}
        r = challenger.rollout
        return {"rollout": {"id": r.id, "challenger": r.challenger, "mode": r.mode, "percent": r.percent}}

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
        """Stop polling, finish shadow scoring and write every logged row."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        self._shadow.close()
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
        served, challenger = self._model, self._challenger
        if served is None:
            raise NotReadyError(f"no model is loaded: {self.error}")
        check_batch(transactions, "transactions", self.config.max_batch)
        rows = served.schema.validate(transactions)
        request_id = uuid.uuid4().hex
        rollout_id = challenger.rollout.id if challenger is not None else None
        canary = challenger.canary_rows(self._keys(served, rows)) if challenger is not None else []
        results: list[dict[str, Any]] = [{} for _ in rows]
        if canary:
            chosen = set(canary)
            rest = [i for i in range(len(rows)) if i not in chosen]
            canary_rows = challenger.model.schema.validate([transactions[i] for i in canary])
            groups = [(served, CHAMPION, rest, [rows[i] for i in rest]),
                      (challenger.model, CANARY, canary, canary_rows)]
        else:
            groups = [(served, CHAMPION, list(range(len(rows))), rows)]
        for model, role, index, group_rows in groups:
            if not index:
                continue
            raw = transactions if len(index) == len(rows) else [transactions[i] for i in index]
            scored = self._run(model, group_rows, raw, explain)
            self._log(model, role, index, group_rows, scored, raw, request_id, rollout_id)
            self.metrics.scored(scored.scores, scored.decisions, role)
            id_column = model.bundle.state.spec.id_column
            for k, i in enumerate(index):
                item = results[i]
                item.update(row=i, score=scored.scores[k], decision=scored.decisions[k])
                tid = group_rows[k].get(id_column) if id_column else None
                if tid is not None:
                    item["transaction_id"] = tid
                if role == CANARY:
                    item["model_tag"] = model.tag
                if scored.reasons is not None:
                    item["reasons"] = scored.reasons[k]
        if challenger is not None and challenger.shadow:
            self._shadow.submit(challenger, transactions, request_id)
        return {"request_id": request_id, "model_tag": served.tag,
                "thresholds": {"review": served.bands.review, "decline": served.bands.decline}, "results": results}

    def _run(self, served: ServedModel, rows: list[dict[str, Any]], transactions: list[Any], explain: bool) -> Scored:
        """Features, scores, decisions (and with ``explain`` reason codes) of validated rows."""
        started = time.perf_counter()
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
        seconds = time.perf_counter() - started
        reasons = None
        if explain:
            shap = model.get_feature_importance(pool, type="ShapValues")[:, :-1]
            reasons = reason_codes(shap, names, features, self.config.reasons)
        return Scored(scores, served.bands.decide(scores), features, seconds, reasons)

    def _log(self, served: ServedModel, role: str, index: list[int], rows: list[dict[str, Any]], scored: Scored,
             transactions: list[Any], request_id: str | list[str], rollout_id: str | None) -> None:
        """One chunk of the prediction log: these rows (of one request, or each with its ``request_id``) as one
        model scored them."""
        spec = served.bundle.state.spec
        columns: dict[str, Any] = {"row": np.array(index, dtype="int32"), "score": scored.scores,
                                   "decision": scored.decisions}
        if spec.id_column:
            columns["transaction_id"] = [row.get(spec.id_column) for row in rows]
        if spec.timestamp:
            columns[spec.timestamp] = served.schema.times(rows, spec.timestamp)
        shared = {"model_tag": served.tag, "role": role, "rollout_id": rollout_id,
                  "latency_ms": scored.seconds * 1000, REVIEW_COLUMN: served.bands.review,
                  DECLINE_COLUMN: served.bands.decline}
        if isinstance(request_id, list):
            columns["request_id"] = request_id
        else:
            shared["request_id"] = request_id
        self.log.append(LogChunk(PREDICTIONS, datetime.now(UTC), len(rows), columns={**columns, **scored.features},
                                 shared=shared, json_columns={"input": transactions}))

    def _score_shadow(self, challenger: Challenger, batch: list[tuple[list[Any], str]]) -> None:
        """The challenger's scores of requests the champion answered, in one model call (the shadow worker's job);
        their ``latency_ms`` is that call's time."""
        rows: list[dict[str, Any]] = []
        transactions: list[Any] = []
        index: list[int] = []
        request_ids: list[str] = []
        for raw, request_id in batch:
            valid = challenger.model.schema.validate(raw)
            rows += valid
            transactions += raw
            index += range(len(valid))
            request_ids += [request_id] * len(valid)
        scored = self._run(challenger.model, rows, transactions, explain=False)
        self._log(challenger.model, SHADOW, index, rows, scored, transactions, request_ids, challenger.rollout.id)
        self.metrics.scored(scored.scores, scored.decisions, SHADOW, rows=False)

    @staticmethod
    def _keys(served: ServedModel, rows: list[dict[str, Any]]) -> list[Any]:
        """The customer key of each row, which keeps a customer on one model in a canary: the account, else the
        first entity column, else the transaction id."""
        spec = served.bundle.state.spec
        column = spec.account or (spec.entities[0] if spec.entities else None) or spec.id_column
        return [row.get(column) for row in rows] if column else [None] * len(rows)

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

