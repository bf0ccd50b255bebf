"""The whole loop with real processes on loopback ports: Debian's redis-server (the feature store), scorer
(BentoML), drift exporter, retrain trigger, Debian's Prometheus and Alertmanager, kfp.local retraining."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fraudops.demo import DemoSettings, Timeline, run_demo
from fraudops.registry import Registry

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("prometheus") and shutil.which("prometheus-alertmanager")
                            and shutil.which("redis-server")),
                       reason="needs Debian's prometheus, prometheus-alertmanager and redis-server (apt-get install "
                              "them)"),
]


def _counter(text: str, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_drift_alert_retrains_once_and_the_gate_decides(tmp_path: Path) -> None:
    timeline = Timeline()
    settings = DemoSettings(train_rows=14_000, traffic_rows=3_000, drifted_rows=7_000, iterations=200, seed=11)
    result = run_demo(tmp_path / "loop", settings, timeline)

    # normal traffic: no drift verdict, no retrain alert
    assert result["normal_drift"]["verdict"] == "ok", result["normal_drift"]["reasons"]
    assert result["alerts_on_normal"] == []
    # drifted traffic: drift (or degraded) verdict, a retrain-worthy alert
    assert result["drifted_drift"]["verdict"] in ("drift", "degraded")
    assert result["alerts_on_drift"]
    # exactly one retraining although Alertmanager kept repeating and several alerts fired
    assert len(result["runs"]) == 1 and result["runs"][0]["state"] == "succeeded"
    metrics = result["trigger_metrics"]
    assert _counter(metrics, "fraudops_trigger_retrains_launched_total") == 1
    assert _counter(metrics, "fraudops_trigger_alerts_received_total") >= 2
    assert (_counter(metrics, "fraudops_trigger_alerts_deduplicated_total")
            + _counter(metrics, "fraudops_trigger_alerts_suppressed_total")) >= 1
    # the gate's decision is what the registry and the scorer show
    registry = Registry(home=tmp_path / "loop" / "bentoml")
    assert result["gate"] in ("promote", "reject")
    if result["gate"] == "promote":  # released as a staged rollout, stepped by the trigger's controller
        events = {name: detail for _, name, detail in timeline.events}
        history = registry.history()
        actions = [e["action"] for e in history]
        assert actions[:2] == ["promote", "rollout-start"] and history[-1]["actor"] == "rollout-controller"
        assert timeline.at("gate decided") <= timeline.at("rollout: shadow")
        if "rollout promoted" in events:  # shadow and canary held: every limit within the policy, named
            assert actions[2:] == ["rollout-stage", "promote"] and history[2]["actor"] == "rollout-controller"
            assert timeline.at("rollout: shadow") < timeline.at("rollout: canary 50%") < timeline.at(
                "rollout promoted") <= timeline.at("new champion serving")
            assert "pp <= max" in history[-1]["reason"]
            assert result["champion"] == result["challenger"] != result["first_model"]
        else:  # a limit broke: aborted, the champion stays
            assert actions[2:] in (["rollout-abort"], ["rollout-stage", "rollout-abort"])
            assert "> max" in history[-1]["reason"] and "rollout aborted" in events
            assert result["champion"] == result["first_model"]
    else:
        assert result["champion"] == result["first_model"]
    # reports and state written
    for key in ("normal_drift", "drifted_drift"):
        assert Path(result[key]["report_html"]).stat().st_size > 10_000
        assert Path(result[key]["summary_json"]).exists()
    assert (tmp_path / "loop" / "trigger" / "trigger.db").exists()
    assert list((tmp_path / "loop" / "trigger" / "exports").glob("*.parquet"))
    assert timeline.at("alert firing") < timeline.at("retraining launched") < timeline.at("retraining finished")
