"""The scorer: scores requests with the current model, logs them, and swaps models without failing requests."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import numpy as np
import pandas as pd
from pydantic import ValidationError

from fraudops.bundle import ModelBundle
from fraudops.errors import FraudopsError
from fraudops.predlog import FEEDBACK, LogChunk, LogUnavailableError, LogWriter, default_root, wal_directory
from fraudops.registry import CANARY, CHAMPION, CHAMPION_ON_CANARY, SHADOW, Rollout
from fraudops.serving.api import FEEDBACK_LABELS
from fraudops.serving.challenger import Challenger
from fraudops.serving.errors import RequestError, check_batch, problems_of
from fraudops.serving.metrics import ScorerMetrics, private_registry
from fraudops.serving.model import ModelLoadError, ModelSource, ServedModel, StoreGuard
from fraudops.serving.shadow import LogCounts, ShadowJob, ShadowOutcome, ShadowProcess
from fraudops.serving.siblings import TICK_SECONDS, Siblings
from fraudops.settings import ServingConfig

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # how often an unready service retries loading when the champion poll is off
SIBLING_SECONDS = 20.0  # how long /reload waits for the server's other workers to load the model
THREAD_ROWS = 32
"""Requests of at least this many transactions wait on the feature store in a worker thread (`Scorer.score_async`)."""


class NotReadyError(FraudopsError):
    """No model is loaded (HTTP 503)."""


class Scorer:
    """Scores requests with the current model, logs them, and swaps in a new model without failing requests.

    A request reads the current `ServedModel` once and uses it to the end, so a reload (an attribute swap)
    never mixes two models in one response. A model that fails to load or check leaves the current one serving.
    """

    def __init__(self, config: ServingConfig, source: ModelSource, log_writer: LogWriter,
                 metrics: ScorerMetrics | None = None, siblings: Siblings | None = None) -> None:
        self.config = config
        self.siblings = siblings
        self.siblings_error: str | None = None  # why the other workers cannot be reached (they were to be)
        self.source = source
        self.service_spec = config.service_spec()
        self.log = log_writer
        self.metrics = metrics or ScorerMetrics(private_registry())
        self.error: str | None = "not loaded yet"
        self._model: ServedModel | None = None
        self._challenger: Challenger | None = None
        self._store_guard = StoreGuard(config.feature_store_retry_seconds, config.feature_store_max_pending)
        self._shadow = ShadowProcess(config, log_writer.options(), on_outcome=self._shadowed,
                                     on_log=self._shadow_logged, on_dropped=self.metrics.shadow_dropped.inc)
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: ServingConfig, *, packaged: str | None = None,
                    metrics: ScorerMetrics | None = None, siblings: Siblings | None = None) -> Scorer:
        """A scorer with the registry, prediction log and metrics the settings describe (``siblings``: the other
        workers of its server, which `reload_everywhere` reaches)."""
        metrics = metrics or ScorerMetrics()
        writer = LogWriter(config.prediction_log or default_root(), flush_rows=config.log_flush_rows,
                           flush_seconds=config.log_flush_seconds,
                           on_written=lambda kind, rows: metrics.log_rows.labels(kind).inc(rows),
                           on_error=lambda kind, _exc: metrics.log_failures.labels(kind).inc(),
                           wal_dir=wal_directory(config.prediction_wal), fsync_seconds=config.wal_fsync_seconds,
                           on_wal_error=lambda _exc: metrics.wal_failures.inc())
        if writer.wal_recovered_rows or writer.wal_unreadable_records:
            metrics.wal_recovered.inc(writer.wal_recovered_rows)
            log.warning("recovered %d logged rows a killed scorer had written ahead to %s (%d torn records skipped)",
                        writer.wal_recovered_rows, writer.wal_dir, writer.wal_unreadable_records)
        return cls(config, ModelSource(config.model_tag, packaged=packaged), writer, metrics, siblings)

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
                tag, path, rollout = self.source.locate()
                if previous is not None and tag == previous.tag:
                    if previous.seed_store():  # a store restarted empty gets the snapshot again
                        self.metrics.feature_store_reseeds.inc()
                        log.warning("the feature store had no history (restarted empty?): loaded the snapshot of %s "
                                    "again; its live history since training is missing until `fraudops features "
                                    "rebuild --from-log WINDOW`", tag)
                    self._refresh_rollout(rollout)
                    return {"model_tag": tag, "previous": tag, "changed": False, **self._rollout_state()}
                challenger = self._challenger
                if challenger is not None and challenger.model.tag == tag:  # promoted: already loaded
                    served = challenger.model
                    served.seed_store()
                else:
                    served = ServedModel.build(tag, ModelBundle.load(path), self.config, self.service_spec, path,
                                               seed=True, guard=self._store_guard)
            except Exception as exc:  # missing, corrupt or mismatched: whatever it is, keep the current model
                self._failed(tag, exc)
                raise ModelLoadError(self.error) from exc
            self._model = served  # the swap: requests in flight keep the model they started with
            self._refresh_rollout(rollout)
            # A full collection walks every long-lived object (~220k: the libraries and the model) and paused every
            # request for 130-170 ms. Frozen objects are skipped by the collector and still freed by reference
            # counting when the model is replaced (only cyclic garbage among them would stay).
            gc.freeze()
            self.error = None
            self.metrics.model_loads.labels("ok").inc()
            self.metrics.serving(served, previous)
            log.info("serving model %s (threshold %.4f, entity features from %s)%s", tag, served.bundle.threshold,
                     "the online store" if served.reads_store else "the frozen snapshot",
                     f", replacing {previous.tag}" if previous else "")
            return {"model_tag": tag, "previous": previous.tag if previous else None, "changed": True,
                    **self._rollout_state()}

    def _refresh_rollout(self, rollout: Rollout | None) -> None:
        """Follow the rollout state read with the champion pointer: load, update or drop the challenger. A
        challenger that cannot be served is dropped (logged and counted): the champion goes on alone."""
        current = self._challenger
        if rollout is None or (self._model is not None and rollout.challenger == self._model.tag):
            if current is not None:
                log.info("rollout of %s ended", current.model.tag)
                self._shadow.release()  # its memory back
            self._challenger = None
        elif current is not None and current.model.tag == rollout.challenger:
            if current.rollout != rollout:
                log.info("rollout of %s: %s %g%%", rollout.challenger, rollout.mode, rollout.percent)
                if current.rollout.mode != rollout.mode:
                    self._warm(Challenger(rollout, current.model))
            self._challenger = Challenger(rollout, current.model)
        else:
            try:
                path = self.source.registry.path(rollout.challenger)
                model = ServedModel.build(rollout.challenger, ModelBundle.load(path), self.config,
                                          self.service_spec, path, guard=self._store_guard)
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
            self._warm(self._challenger)
        self.metrics.rollout(self._challenger)

    def _warm(self, challenger: Challenger) -> None:
        """Have the shadow process load, before traffic needs it, the model this stage has it score: the
        challenger in shadow, the champion (on the canary's transactions) in a canary."""
        if challenger.shadow and challenger.model.path:
            self._shadow.warm(SHADOW, challenger.model.tag, challenger.model.path)
        elif not challenger.shadow and self._model is not None and self._model.path:
            self._shadow.warm(CHAMPION_ON_CANARY, self._model.tag, self._model.path)

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
        """Load the model (a failure leaves the service unready and is retried), then start the champion poll and,
        with siblings, listen to their requests (from before the load: a /reload made meanwhile waits for it)."""
        if self.siblings is not None:
            try:
                self.siblings.join()
            except OSError as exc:  # e.g. a read-only BENTOML_HOME: serve, and say so at each /reload
                self.siblings_error = f"cannot share {self.siblings.root} with the other workers: {exc}"
                log.error("%s; POST /reload reaches only the worker that takes it", self.siblings_error)
                self.siblings = None
        self._try_reload()
        if self.config.poll_seconds > 0 or not self.ready or self.siblings is not None:
            self._watcher = threading.Thread(target=self._watch, name="fraudops-model-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        polled = time.monotonic()
        while True:
            interval = self.config.poll_seconds or (None if self.ready else RETRY_SECONDS)
            if interval is None and self.siblings is None:
                return
            if self._stop.wait(TICK_SECONDS if self.siblings is not None else interval):
                return
            if self.siblings is not None:
                try:
                    for request, action in self.siblings.pending():
                        self.siblings.answer(request, self._reload_answer() if action == "reload" else
                                             {"error": f"unknown action {action!r}"})
                except Exception:  # the poll goes on; the asker names this worker as unanswered
                    log.exception("cannot answer the other workers' requests in %s", self.siblings.root)
            if interval is not None and time.monotonic() - polled >= interval:
                polled = time.monotonic()
                self._try_reload()

    def _reload_answer(self) -> dict[str, Any]:
        try:
            return self.reload()
        except ModelLoadError as exc:
            return {"error": str(exc)}
        except Exception as exc:  # an answer, not a silence the asking worker waits out
            log.exception("reload asked by another worker failed")
            return {"error": f"{type(exc).__name__}: {exc}"}

    def reload_everywhere(self) -> dict[str, Any]:
        """`reload` here, then in every other worker of this server; ``workers`` says how many of the
        ``FRAUDOPS_WORKERS`` serve the answer's model now, and why the others do not (``errors``, by pid)."""
        result = self.reload()
        if self.siblings is None:
            return result if self.siblings_error is None else self._alone(result, self.siblings_error)
        try:
            asked = self.siblings.ask("reload", SIBLING_SECONDS)
        except (OSError, ValueError) as exc:  # this worker switched: say what the others may not have
            log.exception("cannot ask the other workers to reload")
            return self._alone(result, f"cannot ask the other workers through {self.siblings.root}: {exc}")
        errors = {str(pid): answer.get("error") or f"serves {answer.get('model_tag')}"
                  for pid, answer in asked["answers"].items() if answer.get("model_tag") != result["model_tag"]}
        errors.update({str(pid): f"no answer in {SIBLING_SECONDS:.0f} s" for pid in asked["unanswered"]})
        reached = 1 + len(asked["answers"]) + len(asked["unanswered"])
        if reached < self.config.workers:
            errors["unregistered"] = f"{self.config.workers - reached} of the workers were not running (starting?)"
        serving = 1 + sum(answer.get("model_tag") == result["model_tag"] for answer in asked["answers"].values())
        return {**result, "workers": {"serving": serving, "total": max(reached, self.config.workers),
                                      "errors": errors}}

    def _alone(self, result: dict[str, Any], why: str) -> dict[str, Any]:
        """``result`` of a reload of this worker only, the others not reached because of ``why``."""
        return {**result, "workers": {"serving": 1, "total": self.config.workers, "errors": {"siblings": why}}}

    def _try_reload(self) -> None:
        with contextlib.suppress(ModelLoadError):  # logged when the reason changes; the watcher retries
            self.reload()

    def close(self) -> None:
        """Stop polling, write every logged row, then finish shadow scoring (the answers' rows first: a shadow
        process slow to stop must not use up the grace period they need)."""
        if self.siblings is not None:
            self.siblings.leave()
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        self.log.close()
        self._shadow.close()

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

    async def score_async(self, transactions: Any, explain: bool = False) -> dict[str, Any]:
        """`score` for an event loop. A batch of `THREAD_ROWS` transactions or more for a model that reads an online
        feature store is scored in a worker thread, so that while it waits on the store (tens of ms for hundreds of
        entity values) the loop reads and scores other requests; the rest inline, where a thread hop costs more
        than it frees (measured on 2 cores: p99 of single transactions at 200 req/s 4.9-5.0 ms inline, 6.3-7.6 ms
        through a thread; batches of 100 and 1,000 without a store 7-12% slower through a thread)."""
        served = self._model
        if (isinstance(transactions, list) and len(transactions) >= THREAD_ROWS and served is not None
                and served.reads_store):
            return await anyio.to_thread.run_sync(self.score, transactions, explain)
        return self.score(transactions, explain)

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
        fallback = False
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
            scored = model.run(group_rows, explain, self.config.reasons, record=True)  # these decisions count
            self.log.append(model.log_chunk(role, index, group_rows, scored, raw, request_id, rollout_id))
            self.metrics.scored(scored.scores, scored.decisions, role, scored.seconds)
            if scored.store:
                self.metrics.feature_store_requests.inc()
                if scored.fallback:
                    self.metrics.feature_store_fallbacks.inc()
                    fallback = True
                self.metrics.feature_store_pending.set(self._store_guard.pending_rows)
                self.metrics.feature_store_dropped.inc(self._store_guard.take_dropped())
                self.metrics.feature_store_races.inc(model.entities.take_races() if model.entities else 0)
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
                    item["features"] = scored.features_of(k)
            if role == CANARY and served.path:  # what the champion would have decided: the canary's fair comparison
                self._shadow.submit(ShadowJob(CHAMPION_ON_CANARY, served.tag, served.path, rollout_id, request_id, raw,
                                              index))
        if challenger is not None and challenger.shadow and challenger.model.path:
            self._shadow.submit(ShadowJob(SHADOW, challenger.model.tag, challenger.model.path, rollout_id,
                                          request_id, transactions, list(range(len(rows)))))
        answer = {"request_id": request_id, "model_tag": served.tag,
                  "thresholds": {"review": served.bands.review, "decline": served.bands.decline}, "results": results}
        if fallback:
            answer["features_fallback"] = True
        return answer

    def _shadowed(self, outcome: ShadowOutcome) -> None:
        """Count what the shadow process scored (or failed to) in the metrics of its role."""
        if outcome.failed:
            self.metrics.shadow_failures.inc(outcome.failed)
        if outcome.error is not None:
            self.metrics.shadow_failures.inc(outcome.requests)
        elif outcome.scores:
            self.metrics.scored(outcome.scores, outcome.decisions, outcome.role, outcome.seconds, rows=False)

    def _shadow_logged(self, counts: LogCounts) -> None:
        """Add the shadow process's log writes and failures to this worker's."""
        for kind, rows in counts.written.items():
            self.metrics.log_rows.labels(kind).inc(rows)
        for kind, failures in counts.failures.items():
            self.metrics.log_failures.labels(kind).inc(failures)
        if counts.wal_failures:
            self.metrics.wal_failures.inc(counts.wal_failures)

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
