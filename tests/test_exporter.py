"""The drift exporter: gauges from the latest drift summaries (names, labels, values), the model filter,
unreadable summaries, no stale series, and the Starlette app serving /metrics and /healthz."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from fraudops.monitoring.exporter import DriftCollector, create_app

CHAMPION = "fraud-detector:champion001"
OLD = "fraud-detector:previous0001"
FINISHED = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)


def summary(model: str, **changes: Any) -> dict[str, Any]:
    """A summary document shaped like the ones `run_drift_job` writes."""
    name, version = model.split(":")
    doc = {
        "model": model, "run_id": "20260301T120000Z-abc123",
        "window": {"start": "2026-03-01T11:00:00+00:00", "end": "2026-03-01T12:00:00+00:00", "seconds": 3600.0},
        "finished_at": FINISHED.isoformat(), "corrupt_parts": 1,
        "verdict": "drift", "rows": 1200, "reference_rows": 5000, "labelled_rows": 300,
        "share_drifted_features": 0.4, "dataset_drift": True, "score_drift": 0.05, "score_drifted": False,
        "features": {"amount": {"distance": 0.31, "drifted": True, "method": "wasserstein", "weight": 1.0},
                     "country": {"distance": 0.02, "drifted": False, "method": "jensenshannon", "weight": 1.0}},
        "skipped_features": [], "decision_rates": {"approve": 0.9, "review": 0.07, "decline": 0.03},
        "reference_decision_rates": {"approve": 0.92, "review": 0.05, "decline": 0.03},
        "performance": {"pr_auc": 0.61, "recall_at_1pct_fpr": 0.42, "roc_auc": 0.93, "fraud_rate": 0.03,
                        "reference_pr_auc": 0.7, "reference_recall_at_1pct_fpr": 0.5},
        "reasons": ["40% of the (weighted) features drifted"],
        "report_html": f"/m/runs/{name}/{version}/x/report.html", "summary_json": f"/m/runs/{name}/{version}/x/s.json",
    }
    return doc | changes


def write_latest(root: Path, doc: dict[str, Any]) -> Path:
    name, version = doc["model"].split(":")
    path = root / "latest" / f"{name}__{version}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def scrape(root: Path, models=lambda: None) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The exposition text of a collector, parsed back as Prometheus would: family name -> samples."""
    registry = CollectorRegistry()
    registry.register(DriftCollector(str(root), models))
    return parse(generate_latest(registry).decode())


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {family.name: [(sample.labels, sample.value) for sample in family.samples]
            for family in text_string_to_metric_families(text)}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_latest(tmp_path, summary(CHAMPION))
    write_latest(tmp_path, summary(OLD, verdict="insufficient_data", rows=12, labelled_rows=0, performance=None,
                                   share_drifted_features=0.0, dataset_drift=False, score_drift=0.0, features={},
                                   decision_rates={"approve": 1.0}, corrupt_parts=0, report_html=None))
    return tmp_path


def test_gauges_per_model(root: Path) -> None:
    metrics = scrape(root)
    champion = {"model": CHAMPION}
    old = {"model": OLD}

    def value(name: str, labels: dict[str, str]) -> float | None:
        return dict((tuple(sorted(lab.items())), v) for lab, v in metrics[name]).get(tuple(sorted(labels.items())))

    assert value("fraudops_drift_share_drifted_features", champion) == 0.4
    assert value("fraudops_drift_share_drifted_features", old) == 0.0
    assert value("fraudops_drift_detected", champion) == 1.0 and value("fraudops_drift_detected", old) == 0.0
    assert value("fraudops_drift_score_drift", champion) == 0.05
    assert value("fraudops_drift_score_drifted", champion) == 0.0
    assert value("fraudops_drift_rows", champion) == 1200 and value("fraudops_drift_rows", old) == 12
    assert value("fraudops_drift_labelled_rows", champion) == 300 and value("fraudops_drift_labelled_rows", old) == 0
    assert value("fraudops_drift_insufficient_data", champion) == 0.0
    assert value("fraudops_drift_insufficient_data", old) == 1.0
    assert value("fraudops_drift_degraded", champion) == 0.0
    assert value("fraudops_drift_corrupt_log_parts", champion) == 1.0
    assert value("fraudops_drift_last_run_timestamp_seconds", champion) == FINISHED.timestamp()
    # performance gauges only where labelled traffic was judged
    assert metrics["fraudops_drift_pr_auc"] == [(champion, 0.61)]
    assert metrics["fraudops_drift_reference_pr_auc"] == [(champion, 0.7)]
    assert metrics["fraudops_drift_recall_at_1pct_fpr"] == [(champion, 0.42)]
    # per feature and per decision
    assert sorted(metrics["fraudops_drift_feature_drift"], key=lambda s: s[0]["feature"]) == [
        ({"model": CHAMPION, "feature": "amount"}, 0.31), ({"model": CHAMPION, "feature": "country"}, 0.02)]
    assert sorted((lab["model"], lab["decision"], v) for lab, v in metrics["fraudops_drift_decision_rate"]) == [
        (CHAMPION, "approve", 0.9), (CHAMPION, "decline", 0.03), (CHAMPION, "review", 0.07), (OLD, "approve", 1.0)]


def test_degraded_verdict_is_exported(tmp_path: Path) -> None:
    write_latest(tmp_path, summary(CHAMPION, verdict="degraded"))
    assert scrape(tmp_path)["fraudops_drift_degraded"] == [({"model": CHAMPION}, 1.0)]


def test_every_family_is_a_gauge_with_help(root: Path) -> None:
    registry = CollectorRegistry()
    registry.register(DriftCollector(str(root)))
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    assert families and all(f.type == "gauge" and f.documentation for f in families)
    assert all(f.name.startswith("fraudops_drift_") for f in families)


def test_models_filter_limits_the_series(root: Path) -> None:
    only = scrape(root, lambda: {CHAMPION})
    assert {lab["model"] for samples in only.values() for lab, _ in samples} == {CHAMPION}
    nothing = scrape(root, lambda: set())
    assert all(samples == [] for samples in nothing.values())
    everything = scrape(root, lambda: None)
    assert {lab["model"] for lab, _ in everything["fraudops_drift_rows"]} == {CHAMPION, OLD}


def test_unreadable_summary_is_skipped(root: Path) -> None:
    (root / "latest" / "broken__1.json").write_bytes(b"\xff\xfe{ not json")
    (root / "latest" / "truncated__1.json").write_text('{"model": "fraud-detector:trunc", "rows": 1')
    metrics = scrape(root)
    assert {lab["model"] for lab, _ in metrics["fraudops_drift_rows"]} == {CHAMPION, OLD}


def test_json_that_is_not_a_summary_is_skipped(root: Path) -> None:
    (root / "latest" / "odd__1.json").write_text("[]")
    metrics = scrape(root)
    assert {lab["model"] for lab, _ in metrics["fraudops_drift_rows"]} == {CHAMPION, OLD}


def test_series_disappear_with_their_summary_and_missing_root_is_empty(root: Path, tmp_path: Path) -> None:
    (root / "latest" / f"{OLD.replace(':', '__')}.json").unlink()
    assert {lab["model"] for lab, _ in scrape(root)["fraudops_drift_rows"]} == {CHAMPION}
    empty = scrape(tmp_path / "nothing-here")
    assert empty and all(samples == [] for samples in empty.values())


def test_app_serves_metrics_and_health(root: Path) -> None:
    with TestClient(create_app(str(root), lambda: {CHAMPION})) as client:
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        metrics = parse(response.text)
        assert metrics["fraudops_drift_rows"] == [({"model": CHAMPION}, 1200.0)]
        assert metrics["fraudops_drift_detected"] == [({"model": CHAMPION}, 1.0)]
        # read fresh on each scrape
        write_latest(root, summary(CHAMPION, rows=5))
        assert parse(client.get("/metrics").text)["fraudops_drift_rows"] == [({"model": CHAMPION}, 5.0)]
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert client.get("/nope").status_code == 404
