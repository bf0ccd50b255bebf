"""Faults on the alerting path, with real processes on loopback ports: Debian's Prometheus and Alertmanager and the
retrain trigger (uvicorn in its own process: this file run as a script) with a backend whose runs live in files,
as a KFP run or a Kubernetes Job outlives the trigger process. Each test prints what it measured (``pytest -s``).

The alert rule is always true (``vector(1)``) with the production rules' shape at a smaller scale: ``for: 5s`` and
``keep_firing_for: 30s`` against Prometheus' ``--rules.alert.resend-delay=1s`` (production: 5m and 30m against the
default 1m), evaluated every second. Alertmanager groups by alertname and model and repeats every 5 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fraudops.monitoring.backends import RUNNING, SUCCEEDED, RetrainRequest
from fraudops.stack import Process, free_port, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("prometheus") and shutil.which("prometheus-alertmanager")),
                       reason="needs Debian's prometheus and prometheus-alertmanager (apt-get install them)"),
]

MODEL = "fraud-detector:fault"
REPEAT_SECONDS = 5
RULES = {"groups": [{"name": "fault", "interval": "1s", "rules": [{
    "alert": "FaultTestDrift", "expr": "vector(1)", "for": "5s", "keep_firing_for": "30s",
    "labels": {"model": MODEL, "action": "retrain", "severity": "warning"},
    "annotations": {"summary": "always firing"}}]}]}


class FileBackend:
    """Runs as files in ``root``: ``<run id>.launch`` (the request) per launch, ``<run id>.state`` once ended."""

    name = "files"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def launch(self, request: RetrainRequest) -> str:
        (self.root / f"{request.run_id}.launch").write_text(json.dumps(asdict(request)))
        return request.run_id

    def status(self, external_id: str) -> str:
        state = self.root / f"{external_id}.state"
        return state.read_text() if state.exists() else RUNNING


def serve_trigger(port: int, home: Path) -> None:
    """The trigger as ``fraudops trigger serve`` runs it, with the file backend and a 0.5 s watcher."""
    import uvicorn

    from fraudops.monitoring.trigger import RetrainTrigger, TriggerConfig, create_app

    config = TriggerConfig(state_dir=home / "trigger", cooldown=timedelta(hours=1),
                           base_data="s3://fraud-data/base.parquet", poll_seconds=0.5)
    trigger = RetrainTrigger(config, FileBackend(home / "runs"))
    uvicorn.run(create_app(trigger, (home / "token").read_text()), host="127.0.0.1", port=port, log_level="warning")


class Loop:
    """Trigger, Alertmanager and Prometheus under ``home``, each on a fixed free port so that it can be stopped and
    started again on the same port, configuration and data directory."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.ports = {name: free_port() for name in ("trigger", "alertmanager", "prometheus")}
        self.processes: dict[str, Process] = {}
        (home / "logs").mkdir(parents=True)
        (home / "token").write_text("fault-token")
        (home / "rules.yml").write_text(yaml.safe_dump(RULES))
        (home / "alertmanager.yml").write_text(yaml.safe_dump({
            "route": {"receiver": "trigger", "group_by": ["alertname", "model"], "group_wait": "1s",
                      "group_interval": "2s", "repeat_interval": f"{REPEAT_SECONDS}s"},
            "receivers": [{"name": "trigger", "webhook_configs": [{
                "url": f"{self.url('trigger')}/alerts", "send_resolved": False,
                "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(home / "token")}}}]}],
        }))
        (home / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"evaluation_interval": "1s"}, "rule_files": [str(home / "rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [self.url("alertmanager")[7:]]}]}]},
        }))

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def command(self, name: str) -> list[str]:
        listen = f"--web.listen-address=127.0.0.1:{self.ports[name]}"
        if name == "trigger":
            return [sys.executable, __file__, str(self.ports[name]), str(self.home)]
        if name == "alertmanager":
            return ["prometheus-alertmanager", f"--config.file={self.home / 'alertmanager.yml'}",
                    f"--storage.path={self.home / 'alertmanager'}", listen, "--cluster.listen-address="]
        return ["prometheus", f"--config.file={self.home / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.home / 'prometheus'}", listen, "--rules.alert.resend-delay=1s"]

    def start(self, name: str) -> float:
        """Start a process and wait until it is ready; returns the monotonic time it was started at."""
        started = time.monotonic()
        with (self.home / "logs" / f"{name}.log").open("ab") as log:
            popen = subprocess.Popen(self.command(name), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.home, start_new_session=True)
        self.processes[name] = Process(name, popen, self.home / "logs" / f"{name}.log", self.url(name))
        path = "/healthz" if name == "trigger" else "/-/ready"
        wait_for(lambda: self._answers(name, path), 60, 0.1, f"{name} to be ready")
        return started

    def _answers(self, name: str, path: str) -> bool:
        assert self.processes[name].popen.poll() is None, self.processes[name].log.read_text()[-3000:]
        try:
            return httpx.get(self.url(name) + path, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, name: str) -> None:
        """SIGTERM (then SIGKILL) of the process group."""
        assert self.processes.pop(name).stop() is not None

    def kill(self, name: str) -> None:
        """SIGKILL of the process group, at once."""
        popen = self.processes.pop(name).popen
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(10)

    def close(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()

    # -- what each process says -------------------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        return httpx.get(self.url("trigger") + "/runs", timeout=10).json()["runs"]

    def launches(self) -> list[str]:
        return sorted(p.stem for p in (self.home / "runs").glob("*.launch"))

    def finish(self, run_id: str) -> None:
        (self.home / "runs" / f"{run_id}.state").write_text(SUCCEEDED)

    def handled(self) -> list[tuple[str, str]]:
        """The alert instances the trigger handled (key, outcome), oldest first (read-only, beside the trigger)."""
        db = sqlite3.connect(f"file:{self.home / 'trigger' / 'trigger.db'}?mode=ro", uri=True)
        try:
            return db.execute("SELECT key, outcome FROM alerts ORDER BY received_at").fetchall()
        finally:
            db.close()

    def counter(self, name: str, metric: str, **labels: str) -> float:
        """A counter of a process's /metrics, summed over the series matching ``labels``."""
        text = httpx.get(self.url(name) + "/metrics", timeout=10).text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == metric and labels.items() <= s.labels.items())

    def prometheus_alert(self) -> dict[str, Any] | None:
        """The test alert as Prometheus has it, if it is firing."""
        alerts = httpx.get(self.url("prometheus") + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        return next((a for a in alerts if a["state"] == "firing"), None)


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    stack = Loop(tmp_path)
    try:
        yield stack
    finally:
        stack.close()


def report(what: str, **measured: Any) -> None:
    print(f"\n{what}: " + ", ".join(f"{k}={round(v, 1) if isinstance(v, float) else v}"
                                    for k, v in measured.items()))


def test_alertmanager_down_while_the_alert_fires_retrains_once_when_it_returns(loop: Loop) -> None:
    loop.start("trigger")
    loop.start("alertmanager")
    loop.stop("alertmanager")  # it ran, then went down before the alert fired
    loop.start("prometheus")
    wait_for(loop.prometheus_alert, 60, 0.2, "the alert to fire")
    fired = time.monotonic()
    # Prometheus tried to send it and could not
    wait_for(lambda: loop.counter("prometheus", "prometheus_notifications_errors_total") > 0, 30, 0.2,
             "Prometheus to fail sending the alert")
    time.sleep(5)
    assert loop.runs() == [] and loop.launches() == []

    back = loop.start("alertmanager")  # same configuration, same data directory
    (run,) = wait_for(loop.runs, 60, 0.1, "the retrain launched once Alertmanager is back")
    launched_after = time.monotonic() - back
    time.sleep(3 * REPEAT_SECONDS)  # Alertmanager repeats the notification: every repeat is a duplicate
    assert [r["id"] for r in loop.runs()] == [run["id"]] and loop.launches() == [run["id"]]
    received = loop.counter("trigger", "fraudops_trigger_alerts_received_total", status="firing")
    duplicates = loop.counter("trigger", "fraudops_trigger_alerts_deduplicated_total")
    assert received >= 2 and duplicates == received - 1
    assert [outcome for _, outcome in loop.handled()] == [f"launched:{run['id']}"]  # one alert instance
    report("alertmanager down", outage_after_firing_s=back - fired, launched_after_alertmanager_back_s=launched_after,
           runs=1, notifications=received, duplicates=duplicates)


def test_prometheus_down_while_the_alert_fires_re_fires_it_and_starts_no_second_retrain(loop: Loop) -> None:
    loop.start("trigger")
    loop.start("alertmanager")
    loop.start("prometheus")
    (run,) = wait_for(loop.runs, 60, 0.1, "the first retrain")
    before = loop.prometheus_alert()
    assert before is not None
    loop.stop("prometheus")  # same TSDB directory when it starts again
    stopped = time.monotonic()
    loop.finish(run["id"])  # the run ends during the outage: the per-model cooldown is what must hold now
    wait_for(lambda: loop.runs()[0]["state"] == SUCCEEDED, 30, 0.2, "the run to be followed to its end")
    time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))

    back = loop.start("prometheus")
    after = wait_for(loop.prometheus_alert, 60, 0.2, "the alert to fire again")
    refired_after = time.monotonic() - back
    wait_for(lambda: len(loop.handled()) >= 2, 60, 0.2, "the re-fired alert to reach the trigger")
    time.sleep(2 * REPEAT_SECONDS)
    handled = loop.handled()
    # the alert was not restored: it went pending again and fired with a new start, a new alert instance for the
    # trigger, which its cooldown suppressed
    assert after["activeAt"] != before["activeAt"]
    assert [outcome.split(":")[0] for _, outcome in handled] == ["launched", "cooldown"]
    assert [r["id"] for r in loop.runs()] == [run["id"]] and loop.launches() == [run["id"]]
    report("prometheus down", outage_s=back - stopped, refired_after_prometheus_back_s=refired_after,
           active_at_before=before["activeAt"], active_at_after=after["activeAt"],
           instances=[key for key, _ in handled], runs=1)


def test_trigger_killed_mid_run_follows_the_run_and_takes_the_retry_as_a_duplicate(loop: Loop) -> None:
    loop.start("trigger")
    loop.start("alertmanager")
    loop.start("prometheus")
    # killed once launched: a run still pending (recorded, not launched yet) is failed by the next trigger
    (run,) = wait_for(lambda: [r for r in loop.runs() if r["state"] == RUNNING], 60, 0.1, "the retrain's launch")
    loop.kill("trigger")
    killed = time.monotonic()
    # Alertmanager keeps notifying (repeat interval) and fails while the trigger is gone
    wait_for(lambda: loop.counter("alertmanager", "alertmanager_notifications_failed_total",
                                  integration="webhook") > 0, 30, 0.2, "a failed notification")
    restarted = loop.start("trigger")  # same state directory, same port
    ready_after = time.monotonic() - restarted
    (after,) = loop.runs()
    assert after["id"] == run["id"] and after["state"] == RUNNING
    assert loop.counter("trigger", "fraudops_trigger_retrains_active") == 1  # picked up on start
    wait_for(lambda: loop.counter("trigger", "fraudops_trigger_alerts_deduplicated_total") >= 1, 60, 0.2,
             "Alertmanager's next notification")
    duplicate_after = time.monotonic() - restarted

    loop.finish(run["id"])
    finished = time.monotonic()
    # /metrics asks no backend: the watcher of the new process sees the end by itself
    wait_for(lambda: loop.counter("trigger", "fraudops_trigger_retrains_succeeded_total") == 1, 30, 0.1,
             "the run to be followed to its end")
    followed_after = time.monotonic() - finished
    assert loop.counter("trigger", "fraudops_trigger_retrains_active") == 0
    assert loop.runs()[0]["state"] == SUCCEEDED
    assert loop.counter("trigger", "fraudops_trigger_retrains_launched_total") == 0  # nothing new launched
    assert [r["id"] for r in loop.runs()] == [run["id"]] and loop.launches() == [run["id"]]
    assert [outcome for _, outcome in loop.handled()] == [f"launched:{run['id']}"]  # one alert instance
    report("trigger killed", down_s=restarted - killed, ready_after_restart_s=ready_after,
           duplicate_after_restart_s=duplicate_after, end_seen_after_s=followed_after, runs=1)


if __name__ == "__main__":
    serve_trigger(int(sys.argv[1]), Path(sys.argv[2]))
