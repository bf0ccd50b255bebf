"""Prometheus metrics of the scoring service."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudops.decisions import APPROVE, DECLINE, REVIEW
from fraudops.predlog import FEEDBACK, PREDICTIONS

if TYPE_CHECKING:
    from fraudops.serving.challenger import Challenger
    from fraudops.serving.model import ServedModel

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)


class ScorerMetrics:
    """Prometheus metrics of the scoring service (the table is in services/scorer.py's docstring).

    ``registry`` defaults to prometheus_client's global registry; under BentoML every process writes to the
    multiprocess directory and BentoML's /metrics merges them.
    """

    def __init__(self, registry: Any = None) -> None:
        import prometheus_client as prom  # late: BentoML sets PROMETHEUS_MULTIPROC_DIR after importing services

        reg = prom.REGISTRY if registry is None else registry
        p = "fraudops_scorer_"
        self.requests = prom.Counter(p + "requests", "Requests handled, by endpoint and outcome (ok, invalid, "
                                     "unauthorized, unavailable, error)", ["endpoint", "outcome"], registry=reg)
        self.rows = prom.Counter(p + "rows_scored", "Transactions scored", registry=reg)
        self.latency = prom.Histogram(p + "request_latency_seconds", "Handler time from validation to response, "
                                      "by endpoint", ["endpoint"], buckets=LATENCY_BUCKETS, registry=reg)
        self.scores = prom.Histogram(p + "score", "Fraud scores returned", buckets=SCORE_BUCKETS, registry=reg)
        self.decisions = prom.Counter(p + "decisions", "Decisions returned, by outcome", ["decision"], registry=reg)
        self.invalid = prom.Counter(p + "validation_errors", "Problems found in rejected requests, by reason",
                                    ["reason"], registry=reg)
        self.model_info = prom.Gauge(p + "model_info", "1 for the model being served (0 once replaced)",
                                     ["model_tag", "trained_at"], multiprocess_mode="livemax", registry=reg)
        self.model_loads = prom.Counter(p + "model_loads", "Model load attempts, by outcome (ok, failed)",
                                        ["outcome"], registry=reg)
        self.log_rows = prom.Counter(p + "predlog_rows_written", "Rows written to the prediction log, by log "
                                     "(predictions, feedback)", ["log"], registry=reg)
        self.log_failures = prom.Counter(p + "predlog_write_failures", "Failed prediction-log writes (the rows are "
                                         "kept and retried), by log", ["log"], registry=reg)
        self.wal_failures = prom.Counter(p + "predlog_wal_write_failures", "Rows the prediction log could not write "
                                         "ahead (kept in memory only; e.g. the volume is full)", registry=reg)
        self.wal_recovered = prom.Counter(p + "predlog_wal_recovered_rows", "Logged rows recovered at start from the "
                                          "write-ahead log of a killed scorer", registry=reg)
        self.role_decisions = prom.Counter(p + "role_decisions", "Decisions of each model of a rollout, by role "
                                           "(champion, shadow: not returned, canary) and outcome",
                                           ["role", "decision"], registry=reg)
        self.role_scores = prom.Histogram(p + "role_score", "Fraud scores of each model of a rollout, by role",
                                          ["role"], buckets=SCORE_BUCKETS, registry=reg)
        self.role_latency = prom.Histogram(p + "role_model_seconds", "Time of one model call (features and "
                                           "scores) of each model of a rollout, by role; shadow calls score "
                                           "micro-batches of requests in the shadow process", ["role"],
                                           buckets=LATENCY_BUCKETS, registry=reg)
        self.shadow_dropped = prom.Counter(p + "shadow_dropped", "Requests not shadow-scored because the shadow "
                                           "queue was full", registry=reg)
        self.shadow_failures = prom.Counter(p + "shadow_failures", "Shadow scorings that failed (the answer was "
                                            "already given)", registry=reg)
        self.feature_store_requests = prom.Counter(p + "feature_store_requests", "Model calls of scored requests "
                                                   "that asked the online feature store for entity features",
                                                   registry=reg)
        self.feature_store_fallbacks = prom.Counter(p + "feature_store_fallbacks", "... of which the store was slow "
                                                    "or down: answered with the frozen snapshot's entity features "
                                                    "(features_fallback in the response)", registry=reg)
        self.feature_store_pending = prom.Gauge(p + "feature_store_pending_writes", "Transactions held to record in "
                                                "the feature store once it answers again (it was down or slow)",
                                                multiprocess_mode="livesum", registry=reg)
        self.feature_store_dropped = prom.Counter(p + "feature_store_dropped_writes", "Held transactions dropped "
                                                  "unrecorded (more than FRAUDOPS_FEATURE_STORE_MAX_PENDING "
                                                  "waited): `fraudops features rebuild --from-log` restores them",
                                                  registry=reg)
        self.feature_store_races = prom.Counter(p + "feature_store_write_races", "Feature store writes that lost a "
                                                "compare-and-set race to another replica's write of the same entity "
                                                "values, and read and merged again", registry=reg)
        self.feature_store_reseeds = prom.Counter(p + "feature_store_reseeds", "Champion polls that found the "
                                                  "feature store without history (restarted empty) and loaded the "
                                                  "model's snapshot again: the live history since training needs "
                                                  "`fraudops features rebuild --from-log`", registry=reg)
        self.rollout_info = prom.Gauge(p + "rollout_info", "1 for the active rollout's challenger, mode and canary "
                                       "percent (0 once changed)", ["challenger", "mode", "percent"],
                                       multiprocess_mode="livemax", registry=reg)
        self._rollout_labels: tuple[str, str, str] | None = None
        self.feedback = prom.Counter(p + "feedback_labels", "Confirmed labels recorded, by source", ["source"],
                                     registry=reg)
        for decision in (APPROVE, REVIEW, DECLINE):
            self.decisions.labels(decision)
        for kind in (PREDICTIONS, FEEDBACK):
            self.log_rows.labels(kind)
            self.log_failures.labels(kind)

    def scored(self, scores: Sequence[float], decisions: Sequence[str], role: str = "champion",
               seconds: float | None = None, *, rows: bool = True) -> None:
        """Count scored rows, their scores and decisions, and the model call's ``seconds`` (``rows``: the decisions
        were returned, not shadow)."""
        if seconds is not None:
            self.role_latency.labels(role).observe(seconds)
        if rows:
            self.rows.inc(len(scores))
        values = np.asarray(scores, dtype="float64")
        if rows:
            observe_many(self.scores, values)
        observe_many(self.role_scores.labels(role), values)
        for decision, count in Counter(decisions).items():
            if rows:
                self.decisions.labels(decision).inc(count)
            self.role_decisions.labels(role, decision).inc(count)

    def rollout(self, challenger: Challenger | None) -> None:
        """Point the rollout gauge at the active rollout (none: every series 0)."""
        labels = None if challenger is None else (challenger.model.tag, challenger.rollout.mode,
                                                  f"{challenger.rollout.percent:g}")
        if labels == self._rollout_labels:
            return
        if self._rollout_labels is not None:
            self.rollout_info.labels(*self._rollout_labels).set(0)
        if labels is not None:
            self.rollout_info.labels(*labels).set(1)
        self._rollout_labels = labels

    def refused(self, endpoint: str, reason: str) -> None:
        """Count a request the request guard refused before it reached the handler (httpguard)."""
        if reason == "unauthorized":
            self.requests.labels(endpoint, reason).inc()
            return
        self.requests.labels(endpoint, "invalid").inc()
        self.invalid.labels(reason).inc()

    def serving(self, model: ServedModel, previous: ServedModel | None) -> None:
        """Point the model-info gauge at ``model``."""
        if previous is not None:
            self.model_info.labels(previous.tag, previous.trained_at).set(0)
        self.model_info.labels(model.tag, model.trained_at).set(1)


_FEW = 8  # values observed one by one: below this, numpy's fixed cost (~5 us) is more than the loop's


def observe_many(histogram: Any, values: np.ndarray) -> None:
    """``histogram.observe`` of each value, with one increment per bucket instead of one per value (a batch of 1,000
    scores: 2,000 observations, each a locked write to a shared file under BentoML). It uses the fields
    prometheus_client's `Histogram.observe` uses (``_upper_bounds``, ``_buckets`` (not cumulative), ``_sum``); a
    test pins the equality with `observe`."""
    if len(values) <= _FEW:
        for value in values.tolist():
            histogram.observe(value)
        return
    histogram._raise_if_not_observable()
    histogram._sum.inc(float(values.sum()))
    bounds = histogram._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, "left"), minlength=len(bounds) + 1)  # first bound >= value
    for bucket, count in zip(histogram._buckets, counts[:len(bounds)].tolist(), strict=True):  # NaN: in no bucket
        if count:
            bucket.inc(count)


def private_registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()
