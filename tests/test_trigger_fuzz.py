"""schemathesis against the retrain trigger's own /openapi.json, served by uvicorn on a loopback port with a fake
backend: every check, hundreds of generated requests per operation, with the bearer token and without it.

Stateful testing does not apply: the document has no links (nothing a response returns is an input of another
operation), and schemathesis skips the phase as not applicable.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from fraudops.monitoring.backends import RUNNING, RetrainRequest
from fraudops.monitoring.trigger import RetrainTrigger, TriggerConfig, create_app
from fraudops.stack import free_port

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token"


class RunningBackend:
    """Launches runs that stay running (so that later alerts are suppressed as busy)."""

    name = "fake"

    def __init__(self) -> None:
        self.launches: list[RetrainRequest] = []

    def launch(self, request: RetrainRequest) -> str:
        self.launches.append(request)
        return f"ext-{len(self.launches)}"

    def status(self, external_id: str) -> str:
        return RUNNING


@pytest.fixture
def trigger_url(tmp_path: Path) -> Iterator[str]:
    """The trigger app served by uvicorn in a thread on a free loopback port."""
    config = TriggerConfig(state_dir=tmp_path / "state", base_data="s3://fraud-data/base.parquet", poll_seconds=3600)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(RetrainTrigger(config, RunningBackend()), TOKEN),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="trigger-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the trigger server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def fuzz(url: str, report: Path, *options: str) -> dict[str, Any]:
    """One schemathesis run with every check (300 examples per operation); its JSON report."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json", "--checks", "all",
         "--max-examples", "300", "--continue-on-failure", "--seed", "7", "--no-color", "--report", "json",
         "--report-json-path", str(report), *options], capture_output=True, text=True, timeout=600)
    assert report.exists(), result.stdout[-4000:] + result.stderr[-4000:]
    run = json.loads(report.read_text())
    assert run["failures"] == [] and run["errors"] == [], result.stdout[-6000:]
    assert run["operations"]["tested"] == 4, run["operations"]  # /alerts, /runs, /metrics, /healthz
    assert run["test_cases"]["generated"] >= 300, run["test_cases"]
    return run


def counters(url: str) -> dict[tuple[str, str], float]:
    """The trigger's counters by (name, reason or status label)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(s.name, s.labels.get("reason", s.labels.get("status", ""))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples if s.name.endswith("_total")}


def test_fuzzing_with_the_token_finds_nothing(trigger_url: str, tmp_path: Path) -> None:
    """No 5xx, every status and body as declared, schema-violating bodies refused, valid ones accepted."""
    fuzz(trigger_url, tmp_path / "report.json", "--header", f"Authorization: Bearer {TOKEN}")
    seen = counters(trigger_url)
    # the generated bodies got through the token: valid ones were handled (one launched), invalid ones refused
    assert seen[("fraudops_trigger_retrains_launched_total", "")] >= 1
    assert seen[("fraudops_trigger_alerts_received_total", "firing")] >= 50
    assert seen[("fraudops_trigger_requests_rejected_total", "invalid")] >= 50
    assert httpx.get(f"{trigger_url}/healthz", timeout=10).status_code == 200


def test_fuzzing_without_the_token_gets_401_for_every_alert(trigger_url: str, tmp_path: Path) -> None:
    run = fuzz(trigger_url, tmp_path / "report.json")
    assert run["warnings"]["missing_auth"] == ["POST /alerts"]  # schemathesis saw nothing but 401 there
    seen = counters(trigger_url)
    assert seen[("fraudops_trigger_requests_rejected_total", "unauthorized")] >= 300
    assert ("fraudops_trigger_alerts_received_total", "firing") not in seen
    assert ("fraudops_trigger_requests_rejected_total", "invalid") not in seen
