"""The embedded monitoring loop on one machine: the online feature store (Debian's redis-server), scorer, drift
exporter, retrain trigger, Prometheus and Alertmanager as local processes on free loopback ports, started
together and always stopped together.

Prometheus gets a copy of ``monitoring/rules/fraudops.rules.yaml`` with its windows shortened (``for``,
``keep_firing_for`` and range selectors), so that the loop closes in seconds instead of minutes.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from fraudops.errors import FraudopsError

# A checkout (editable install) reads monitoring/ directly; a wheel carries the same file as package data.
RULES_FILES = (Path(__file__).resolve().parent.parent / "monitoring" / "rules" / "fraudops.rules.yaml",
               Path(__file__).resolve().parent / "_rules" / "fraudops.rules.yaml")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fast_rules(text: str, hold: str = "2s", keep: str = "1m", window: str = "30s") -> str:
    """The rules with every ``for:`` set to ``hold``, ``keep_firing_for:`` to ``keep`` and ``[..]`` ranges to
    ``window`` (thresholds and expressions unchanged)."""
    doc = yaml.safe_load(text)
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = hold
            if "keep_firing_for" in rule:
                rule["keep_firing_for"] = keep
            rule["expr"] = re.sub(r"\[\d+[smhd]\]", f"[{window}]", rule["expr"])
    return yaml.safe_dump(doc, sort_keys=False)


def rules_text() -> str:
    """The rules file of ``monitoring/rules/`` (the single source of truth)."""
    for path in RULES_FILES:
        if path.exists():
            return path.read_text()
    raise FraudopsError(f"alert rules not found at {' or '.join(map(str, RULES_FILES))}")


@dataclass
class Process:
    """A child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then SIGKILL of the whole process group after ``timeout``."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


@dataclass
class LocalStack:
    """Starts the loop's processes under ``home``; use as a context manager (everything is stopped on exit)."""

    home: Path
    base_data: str = ""
    poll_seconds: float = 1.0
    trigger_cooldown: str = "1h"
    recent_window: str = "1d"
    pipeline_args: tuple[str, ...] = ()
    alert_repeat: str = "5s"
    release: str = "promote"
    rollout_policy: str = ""
    """Rollout policy file the trigger steps a rollout by (release ``rollout``); empty: the defaults."""
    processes: dict[str, Process] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        self.logs = self.home / "logs"
        self.token = secrets.token_urlsafe(24)  # Alertmanager -> trigger
        self.internal_token = secrets.token_urlsafe(24)  # the scorer's /feedback and /reload
        self.env = {**os.environ, "BENTOML_HOME": str(self.home / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
                    "FRAUDOPS_PREDICTION_LOG": str(self.home / "prediction-log"),
                    "FRAUDOPS_MONITOR_DIR": str(self.home / "monitor"), "FRAUDOPS_TRIGGER_TOKEN": self.token,
                    "FRAUDOPS_INTERNAL_TOKEN": self.internal_token,
                    "FRAUDOPS_POLL_SECONDS": str(self.poll_seconds), "FRAUDOPS_LOG_FLUSH_SECONDS": "1"}

    # -- processes ------------------------------------------------------------------------------------------
    def _start(self, name: str, command: list[str], url: str = "") -> Process:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with log.open("ab") as fh:
            popen = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, cwd=self.home, start_new_session=True)
        process = Process(name, popen, log, url)
        self.processes[name] = process
        return process

    def _fraudops(self, name: str, args: list[str], url: str) -> Process:
        return self._start(name, [sys.executable, "-m", "fraudops", *args], url)

    def wait_ready(self, name: str, path: str, timeout: float = 90) -> None:
        """Poll ``path`` on a process until it answers 200; fail with its log's tail if it dies or times out."""
        process = self.processes[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(process.url + path, timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        tail = process.log.read_text(errors="replace")[-2000:] if process.log.exists() else ""
        state = "exited" if process.popen.poll() is not None else f"not ready after {timeout:.0f} s"
        raise FraudopsError(f"{name} {state} (log {process.log}):\n{tail}")

    def start_feature_store(self) -> str:
        """A private ``redis-server`` (no persistence) as the online feature store of the scorer started after it
        (``FRAUDOPS_FEATURE_STORE_URL``); returns its URL."""
        import redis

        port = free_port()
        data = self.home / "redis"
        data.mkdir(parents=True, exist_ok=True)
        url = f"redis://127.0.0.1:{port}/0"
        process = self._start("redis", [_binary("redis-server", package="redis-server"), "--port", str(port),
                                        "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
                                        str(data)], url)
        client = redis.Redis(port=port, socket_timeout=1)
        try:
            wait_for(lambda: process.popen.poll() is not None or _pings(client), 20, interval=0.1,
                     what="redis-server to answer")
        finally:
            client.close()
        if process.popen.poll() is not None:
            raise FraudopsError(f"redis-server exited (log {process.log}):\n"
                                f"{process.log.read_text(errors='replace')[-2000:]}")
        self.env.update(FRAUDOPS_FEATURE_STORE_URL=url, FRAUDOPS_FEATURE_STORE_TIMEOUT_SECONDS="0.5")
        return url

    def start_scorer(self) -> str:
        """The BentoML scoring service following the champion pointer (with the feature store if one was
        started)."""
        port = free_port()
        self._fraudops("scorer", ["serve", "--port", str(port), "--poll-seconds", str(self.poll_seconds)],
                       f"http://127.0.0.1:{port}")
        self.wait_ready("scorer", "/readyz", timeout=120)
        return self.processes["scorer"].url

    def start_monitoring(self) -> None:
        """Exporter, trigger, Alertmanager (webhook to the trigger) and Prometheus (scraping all three)."""
        ports = {name: free_port() for name in ("exporter", "trigger", "alertmanager", "prometheus")}
        self._fraudops("exporter", ["monitor", "exporter", "--port", str(ports["exporter"])],
                       f"http://127.0.0.1:{ports['exporter']}")
        trigger = ["trigger", "serve", "--port", str(ports["trigger"]), "--backend", "local",
                   "--state-dir", str(self.home / "trigger"), "--cooldown", self.trigger_cooldown,
                   "--recent-window", self.recent_window]
        if self.base_data:
            trigger += ["--base-data", self.base_data]
        if self.release == "rollout":
            trigger += ["--release", "rollout", "--rollout-every", "2s",
                        "--prometheus-url", f"http://127.0.0.1:{ports['prometheus']}"]
            if self.rollout_policy:
                trigger += ["--rollout-policy", self.rollout_policy]
        for arg in self.pipeline_args:
            trigger.append(f"--pipeline-arg={arg}")
        self._fraudops("trigger", trigger, f"http://127.0.0.1:{ports['trigger']}")
        config_dir = self.home / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "trigger-token").write_text(self.token)
        (config_dir / "alertmanager.yml").write_text(yaml.safe_dump(self._alertmanager_config(ports["trigger"])))
        (config_dir / "rules.yaml").write_text(fast_rules(rules_text()))
        (config_dir / "prometheus.yml").write_text(yaml.safe_dump(self._prometheus_config(ports)))
        self._start("alertmanager", [_binary("prometheus-alertmanager", "alertmanager"),
                                     f"--config.file={config_dir / 'alertmanager.yml'}",
                                     f"--storage.path={self.home / 'alertmanager'}",
                                     f"--web.listen-address=127.0.0.1:{ports['alertmanager']}",
                                     "--cluster.listen-address="],
                    f"http://127.0.0.1:{ports['alertmanager']}")
        self._start("prometheus", [_binary("prometheus"), f"--config.file={config_dir / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={self.home / 'prometheus'}",
                                   f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
                    f"http://127.0.0.1:{ports['prometheus']}")
        self.wait_ready("exporter", "/healthz")
        self.wait_ready("trigger", "/healthz")
        self.wait_ready("alertmanager", "/-/ready")
        self.wait_ready("prometheus", "/-/ready")

    def _alertmanager_config(self, trigger_port: int) -> dict[str, Any]:
        timing = {"group_wait": "1s", "group_interval": "2s", "repeat_interval": self.alert_repeat}
        return {
            "route": {"receiver": "null", "group_by": ["alertname", "model"], **timing,
                      "routes": [{"receiver": "fraudops-retrain", "matchers": ['action="retrain"'],
                                  "group_by": ["alertname", "model"], **timing}]},
            "receivers": [{"name": "null"}, {"name": "fraudops-retrain", "webhook_configs": [{
                "url": f"http://127.0.0.1:{trigger_port}/alerts", "send_resolved": False,
                "http_config": {"authorization": {"type": "Bearer",
                                                  "credentials_file": str(self.home / "config" / "trigger-token")}},
            }]}],
        }

    def _prometheus_config(self, ports: dict[str, int]) -> dict[str, Any]:
        scorer = self.processes["scorer"].url.removeprefix("http://") if "scorer" in self.processes else None
        targets = {"fraudops-drift-exporter": f"127.0.0.1:{ports['exporter']}",
                   "fraudops-trigger": f"127.0.0.1:{ports['trigger']}"}
        if scorer:
            targets["fraudops-scorer"] = scorer
        return {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(self.home / "config" / "rules.yaml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{ports['alertmanager']}"]}]}]},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in targets.items()],
        }

    def stop(self) -> None:
        """Stop every process (reverse start order)."""
        for process in reversed(list(self.processes.values())):
            process.stop()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries --------------------------------------------------------------------------------------------
    def url(self, name: str) -> str:
        """Base URL of a started process."""
        return self.processes[name].url

    def firing_alerts(self) -> list[dict[str, Any]]:
        """Alerts Prometheus has firing now."""
        body = httpx.get(self.url("prometheus") + "/api/v1/alerts", timeout=5).json()
        return [a for a in body["data"]["alerts"] if a["state"] == "firing"]

    def trigger_runs(self) -> list[dict[str, Any]]:
        """What the trigger launched, newest first."""
        return httpx.get(self.url("trigger") + "/runs", timeout=10).json()["runs"]


def _binary(*names: str, package: str = "prometheus prometheus-alertmanager") -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise FraudopsError(f"{names[0]} is not installed; on Debian/Ubuntu: apt-get install {package}")


def _pings(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def wait_for(condition: Any, timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    """Poll ``condition()`` until it returns something truthy; raise `FraudopsError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise FraudopsError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)

