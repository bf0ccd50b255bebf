"""Serves the latest drift summaries to Prometheus as gauges labelled by model (read fresh on every scrape, so
a model that stops being monitored stops being exported: no stale series, unlike a Pushgateway)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fraudops.monitoring.job import latest_summaries

PREFIX = "fraudops_drift_"


class DriftCollector(Collector):
    """Gauges from the newest summary of each model; ``models`` limits them (e.g. to the serving champion)."""

    def __init__(self, monitor_root: str, models: Callable[[], set[str] | None] = lambda: None) -> None:
        self.monitor_root, self.models = monitor_root, models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Build the gauges from the summaries on disk (or the object store)."""
        wanted = self.models()
        summaries = [s for s in latest_summaries(self.monitor_root) if wanted is None or s["model"] in wanted]

        def family(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, labels=["model", *(extra or [])])

        simple: dict[str, tuple[str, Callable[[dict[str, Any]], float | None]]] = {
            "share_drifted_features": ("Weighted share of drifted features of the transaction itself (the vote "
                                       "on input drift)", lambda s: s["share_drifted_features"]),
            "entity_share_drifted_features": ("Weighted share of drifted entity features (velocity and link "
                                              "counts; voted only when the policy says so)",
                                              lambda s: s.get("entity_share_drifted_features")),
            "detected": ("1 when the dataset drifted (share of drifted features, or of entity features where "
                         "voted, at least the policy's)",
                         lambda s: float(s["dataset_drift"])),
            "score_drift": ("Distance between reference and live score distributions", lambda s: s["score_drift"]),
            "score_drifted": ("1 when the score distribution drifted", lambda s: float(s["score_drifted"])),
            "rows": ("Live rows in the last drift window", lambda s: s["rows"]),
            "labelled_rows": ("Live rows with confirmed labels in the window", lambda s: s["labelled_rows"]),
            "insufficient_data": ("1 when the window had too few rows to judge",
                                  lambda s: float(s["verdict"] == "insufficient_data")),
            "degraded": ("1 when PR-AUC on labelled traffic dropped beyond the policy",
                         lambda s: float(s["verdict"] == "degraded")),
            "pr_auc": ("PR-AUC on labelled live traffic", lambda s: (s["performance"] or {}).get("pr_auc")),
            "reference_pr_auc": ("PR-AUC of the model on its reference sample",
                                 lambda s: (s["performance"] or {}).get("reference_pr_auc")),
            "recall_at_1pct_fpr": ("Recall at 1% FPR on labelled live traffic",
                                   lambda s: (s["performance"] or {}).get("recall_at_1pct_fpr")),
            "corrupt_log_parts": ("Unreadable prediction-log files skipped by the last run",
                                  lambda s: s.get("corrupt_parts", 0)),
        }
        families = {name: family(name, doc) for name, (doc, _) in simple.items()}
        last_run = family("last_run_timestamp_seconds", "When the last drift run finished (Unix time)")
        feature = family("feature_drift", "Drift distance of one feature", ["feature"])
        decision = family("decision_rate", "Share of live decisions by outcome", ["decision"])
        for summary in summaries:
            model = summary["model"]
            for name, (_, value) in simple.items():
                number = value(summary)
                if number is not None:
                    families[name].add_metric([model], float(number))
            finished = summary.get("finished_at")
            if finished:
                last_run.add_metric([model], datetime.fromisoformat(finished).timestamp())
            for name, info in summary.get("features", {}).items():
                feature.add_metric([model, name], float(info["distance"]))
            for outcome, rate in summary.get("decision_rates", {}).items():
                decision.add_metric([model, outcome], float(rate))
        yield from families.values()
        yield from (last_run, feature, decision)


def create_app(monitor_root: str, models: Callable[[], set[str] | None] = lambda: None) -> Any:
    """The exporter's Starlette app: ``GET /metrics`` and ``GET /healthz``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    registry = CollectorRegistry()
    registry.register(DriftCollector(monitor_root, models))

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "time": time.time()})

    return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz)])
