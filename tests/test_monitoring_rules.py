"""The alert rules (monitoring/rules/fraudops.rules.yaml) and the example Alertmanager config.

`promtool check rules` and `promtool test rules` (unit tests in monitoring/tests/), conventions every rule must
follow, `amtool` checks of the Alertmanager config and its routes, and one live run: a real Prometheus evaluates
a time-shrunk copy of the rules against a stub drift exporter and a real Alertmanager delivers the retrain alert
to a stub webhook with the bearer token. Skips with a reason when the Debian binaries are missing
(`apt-get install -y --no-install-recommends prometheus prometheus-alertmanager`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "monitoring" / "rules" / "fraudops.rules.yaml"
RULE_TESTS = sorted((ROOT / "monitoring" / "tests").glob("*.yaml"))
ALERTMANAGER = ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"

RETRAIN_ALERTS = {"FraudopsFeatureDrift", "FraudopsScoreDrift", "FraudopsPerformanceDrop"}
ALL_ALERTS = RETRAIN_ALERTS | {"FraudopsDriftJobStale", "FraudopsDriftMetricsAbsent", "FraudopsScorerErrorRate",
                               "FraudopsScorerLatencyHigh", "FraudopsPredictionLogFailing",
                               "FraudopsFeatureStoreFallback", "FraudopsFeatureStoreLostHistory"}
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not installed: apt-get install -y --no-install-recommends prometheus "
                    "prometheus-alertmanager (CI installs them)")
    return path


def duration_seconds(text: str) -> float:
    """Seconds in a Prometheus duration such as ``1h30m`` or ``5m``."""
    parts = re.findall(r"(\d+)(ms|[smhdwy])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


def shrink_windows(rules_text: str) -> str:
    """A copy of a rule file with every window 60x shorter (``for: 5m`` -> ``for: 5s``, ``[5m]`` -> ``[5s]``,
    ``2h`` -> ``2m``), for end-to-end runs with 1 s scrape and evaluation intervals. Thresholds are unchanged."""
    def shorter(match: re.Match[str]) -> str:
        number, unit = match.group("n"), match.group("u")
        return number + {"h": "m", "m": "s"}.get(unit, unit)

    duration = r"(?P<n>\d+)(?P<u>[hm])(?![a-z])"
    text = re.sub(r"(?m)^(\s*(?:for|keep_firing_for):\s*)" + duration,
                  lambda m: m.group(1) + shorter(m), rules_text)
    return re.sub(r"\[" + duration + r"\]", lambda m: "[" + shorter(m) + "]", text)


def load_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


# --- static checks ---------------------------------------------------------------------------------------------

def test_rules_file_is_valid_for_promtool() -> None:
    promtool = _need("promtool")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALL_ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = _need("promtool")
    assert RULE_TESTS, "no promtool unit tests in monitoring/tests/"
    result = subprocess.run([promtool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_rules_follow_the_conventions() -> None:
    rules = load_rules()
    assert {r["alert"] for r in rules} == ALL_ALERTS
    for rule in rules:
        name = rule["alert"]
        assert duration_seconds(rule["for"]) > 0, name
        assert duration_seconds(rule["keep_firing_for"]) > 0, name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, name
        assert rule["annotations"]["runbook_url"].endswith("#" + name.lower()), name
        assert ("action" in rule["labels"]) == (name in RETRAIN_ALERTS), name
        if name in RETRAIN_ALERTS:
            assert rule["labels"]["action"] == "retrain"
            # never fire on a window too small for a verdict, and keep the model label (no aggregation away)
            assert re.search(r"unless on \([^)]*\bmodel\b[^)]*\) \(fraudops_drift_insufficient_data == 1\)",
                             rule["expr"]), name
            assert "sum" not in rule["expr"] and "by (" not in rule["expr"], name
        # no group-level interval: the evaluation interval stays the global one (1 s in end-to-end runs)
    assert all("interval" not in group for group in yaml.safe_load(RULES.read_text())["groups"])


def test_every_alert_has_a_runbook_section() -> None:
    headings = set(re.findall(r"(?m)^### (\w+)$", (ROOT / "docs" / "deploy.md").read_text()))
    assert headings >= ALL_ALERTS, f"no runbook for {sorted(ALL_ALERTS - headings)} in docs/deploy.md"


def test_every_rule_has_unit_tests_that_fire_and_that_do_not_fire() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    names: list[str] = []
    for path in RULE_TESTS:
        spec = yaml.safe_load(path.read_text())
        assert spec["rule_files"] == ["../rules/fraudops.rules.yaml"], path
        for case in spec["tests"]:
            names.append(case["name"])
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fires == ALL_ALERTS, f"no firing test for {sorted(ALL_ALERTS - fires)}"
    assert silent == ALL_ALERTS, f"no silent test for {sorted(ALL_ALERTS - silent)}"
    text = " ".join(names)
    assert "insufficient" in text and "flap" in text


def test_shrink_windows_makes_every_window_60x_shorter() -> None:
    original = load_rules()
    shrunk = [r for g in yaml.safe_load(shrink_windows(RULES.read_text()))["groups"] for r in g["rules"]]
    for before, after in zip(original, shrunk, strict=True):
        for key in ("for", "keep_firing_for"):
            assert duration_seconds(after[key]) * 60 == duration_seconds(before[key])
        assert re.sub(r"\[\d+s\]", "[W]", after["expr"]) == re.sub(r"\[\d+m\]", "[W]", before["expr"])
        assert after["labels"] == before["labels"] and after["annotations"] == before["annotations"]


# --- Alertmanager ----------------------------------------------------------------------------------------------

def test_alertmanager_config_is_valid() -> None:
    amtool = _need("amtool")
    result = subprocess.run([amtool, "check-config", str(ALERTMANAGER)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("labels", "receiver"), [
    (["alertname=FraudopsFeatureDrift", "model=m", "action=retrain", "severity=warning"], "fraudops-retrain"),
    (["alertname=FraudopsPerformanceDrop", "model=m", "action=retrain", "severity=critical"], "fraudops-retrain"),
    (["alertname=FraudopsScorerErrorRate", "severity=critical"], "null"),
    (["alertname=FraudopsDriftJobStale", "model=m", "severity=warning"], "null"),
])
def test_alertmanager_routes_only_retrain_alerts_to_the_trigger(labels: list[str], receiver: str) -> None:
    amtool = _need("amtool")
    result = subprocess.run([amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == receiver, result.stdout + result.stderr


def test_alertmanager_config_shape() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    retrain = [r for r in config["route"]["routes"] if r["receiver"] == "fraudops-retrain"]
    assert len(retrain) == 1 and retrain[0]["matchers"] == ['action="retrain"']
    assert retrain[0]["group_by"] == ["alertname", "model"]
    longest = max(duration_seconds(r["for"]) + duration_seconds(r["keep_firing_for"]) for r in load_rules())
    assert duration_seconds(retrain[0]["repeat_interval"]) > longest
    receivers = {r["name"]: r for r in config["receivers"]}
    assert set(receivers["null"]) == {"name"}
    (hook,) = receivers["fraudops-retrain"]["webhook_configs"]
    assert hook["url"].endswith(":8080/alerts")
    assert hook["http_config"]["authorization"]["credentials_file"]
    assert "credentials" not in hook["http_config"]["authorization"]  # never a token in the file


# --- live: real Prometheus + Alertmanager, stub exporter and webhook -------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Stub:
    """An HTTP server in a thread: serves ``metrics`` on GET /metrics and records POST bodies and headers."""

    def __init__(self, metrics: str = "") -> None:
        self.metrics = metrics
        self.posts: list[tuple[str, dict[str, Any]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = stub.metrics.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.posts.append((self.headers.get("Authorization", ""), payload))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def monitoring(tmp_path: Path, exporter_port: int) -> Iterator[dict[str, Any]]:
    """A real Prometheus (1 s scrapes and evaluations, the rules with 60x shorter windows) scraping the drift
    exporter at ``exporter_port``, and a real Alertmanager with the example config delivering retrain alerts to a
    stub webhook with the bearer token."""
    prometheus, alertmanager = _need("prometheus"), _need("prometheus-alertmanager")
    tmp_path.mkdir(parents=True, exist_ok=True)
    webhook = _Stub()
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")

    config = yaml.safe_load(ALERTMANAGER.read_text())
    for route in [config["route"], *config["route"]["routes"]]:
        route.update(group_wait="1s", group_interval="1s")
    hook = config["receivers"][1]["webhook_configs"][0]
    hook["url"] = f"http://127.0.0.1:{webhook.port}/alerts"
    hook["http_config"]["authorization"]["credentials_file"] = str(token)
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "rules.yaml").write_text(shrink_windows(RULES.read_text()))
    am_port, prom_port = _free_port(), _free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "fraudops-drift-exporter",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }))
    procs = [
        subprocess.Popen([alertmanager, f"--config.file={tmp_path / 'alertmanager.yml'}",
                          f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
                          "--cluster.listen-address="],
                         stdout=subprocess.DEVNULL, stderr=(tmp_path / "alertmanager.log").open("w")),
        subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                          f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                          f"--web.listen-address=127.0.0.1:{prom_port}"],
                         stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w")),
    ]
    try:
        yield {"webhook": webhook, "prometheus": f"http://127.0.0.1:{prom_port}",
               "alertmanager": f"http://127.0.0.1:{am_port}", "logs": tmp_path}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        webhook.close()


@pytest.fixture
def monitoring_stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    now = time.time()
    exporter = _Stub(
        # "drifted": drift and enough data -> retrain alert; "thin": drift but insufficient data -> nothing;
        # "old": last run 6 h ago -> FraudopsDriftJobStale, which must not reach the trigger
        f'fraudops_drift_share_drifted_features{{model="drifted"}} 0.6\n'
        f'fraudops_drift_detected{{model="drifted"}} 1\n'
        f'fraudops_drift_insufficient_data{{model="drifted"}} 0\n'
        f'fraudops_drift_last_run_timestamp_seconds{{model="drifted"}} {now:.0f}\n'
        f'fraudops_drift_share_drifted_features{{model="thin"}} 0.9\n'
        f'fraudops_drift_detected{{model="thin"}} 1\n'
        f'fraudops_drift_insufficient_data{{model="thin"}} 1\n'
        f'fraudops_drift_last_run_timestamp_seconds{{model="thin"}} {now:.0f}\n'
        f'fraudops_drift_last_run_timestamp_seconds{{model="old"}} {now - 6 * 3600:.0f}\n')
    try:
        with monitoring(tmp_path, exporter.port) as stack:
            yield stack
    finally:
        exporter.close()


def test_live_drift_alert_reaches_the_trigger_webhook_with_the_token(monitoring_stack: dict[str, Any]) -> None:
    webhook: _Stub = monitoring_stack["webhook"]
    prom, am = monitoring_stack["prometheus"], monitoring_stack["alertmanager"]

    def retrain_alerts() -> list[dict[str, Any]]:
        return [alert for _, body in webhook.posts for alert in body["alerts"]]

    _wait("FraudopsFeatureDrift at the webhook", retrain_alerts, timeout=45)
    # the stale-job alert fires a few seconds later, is in Alertmanager, and goes to the null receiver
    def stale_in_alertmanager() -> bool:
        alerts = _get_json(f"{am}/api/v2/alerts")
        return any(a["labels"]["alertname"] == "FraudopsDriftJobStale" for a in alerts)

    _wait("FraudopsDriftJobStale in Alertmanager", stale_in_alertmanager, timeout=45)
    time.sleep(2.5)  # more than group_wait + group_interval: it would have been sent by now

    auth, body = webhook.posts[0]
    assert auth == "Bearer s3cret-token"
    assert body["version"] == "4" and body["receiver"] == "fraudops-retrain" and body["status"] == "firing"
    assert set(body["groupLabels"]) == {"alertname", "model"}
    sent = {(a["labels"]["alertname"], a["labels"]["model"]) for a in retrain_alerts()}
    assert sent == {("FraudopsFeatureDrift", "drifted")}, sent  # not "thin" (insufficient data), not the stale one
    alert = retrain_alerts()[0]
    assert alert["labels"]["action"] == "retrain" and alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"] == "Input drift on model drifted"
    firing = {a["labels"]["alertname"] for a in _get_json(f"{prom}/api/v1/alerts")["data"]["alerts"]
              if a["state"] == "firing"}
    assert firing == {"FraudopsFeatureDrift", "FraudopsDriftJobStale"}


@pytest.mark.slow
def test_one_drift_policy_a_change_in_the_policy_file_makes_the_alert_fire(tmp_path: Path) -> None:
    """The same drifted traffic, judged by the drift job (`fraudops monitor drift --policy`) with a lax policy
    file and then with a strict one, through the real exporter and a real Prometheus evaluating the rules file:
    no alert, then FraudopsFeatureDrift. The rules hold no threshold of their own."""
    from test_monitor_job import prediction_chunk, write_log

    from fraudops.data.synthetic import DriftConfig, generate_transactions
    from fraudops.decisions import Bands
    from fraudops.registry import Registry
    from fraudops.steps import train_to_directory
    from fraudops.training import TrainConfig

    home, log_root, monitor = tmp_path / "bentoml", tmp_path / "log", tmp_path / "monitor"
    generate_transactions(4000, seed=1).to_parquet(tmp_path / "train.parquet", index=False)
    registry = Registry(home=home, remote="")
    trained = train_to_directory(str(tmp_path / "train.parquet"), tmp_path / "out", None,
                                 TrainConfig(iterations=30, threads=2), registry=registry)
    if registry.champion() != trained["tag"]:  # a small model may miss the gate's floor: the test needs a champion
        registry.promote(trained["tag"], reason="the model the drift job watches")
    bundle = registry.load(trained["tag"])
    # drifted traffic, logged now as the scorer logs it
    frame = generate_transactions(1200, seed=2, start="2026-02-01", days=2,
                                  drift=DriftConfig(amount_shift=2.0, category_mix=0.9, new_pattern=True))
    features = bundle.features(frame)
    scores = bundle.score_features(features)
    raw = frame.drop(columns=["is_fraud"])
    inputs = [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
              for row in raw.to_dict("records")]
    request = {"frame": frame, "features": features, "scores": scores, "inputs": inputs,
               "decisions": Bands.around(bundle.threshold, 0.5, 1.0).decide(scores.tolist()),
               "request_id": "a" * 32}
    write_log(log_root, [prediction_chunk(request, datetime.now(UTC), trained["tag"])])
    env = {**os.environ, "BENTOML_HOME": str(home), "FRAUDOPS_PREDICTION_LOG": str(log_root),
           "FRAUDOPS_MONITOR_DIR": str(monitor), "FRAUDOPS_REGISTRY_URL": ""}
    policies = {"lax": {"min_rows": 100, "drift_share": 1.0, "score_threshold": 5.0},
                "strict": {"min_rows": 100, "drift_share": 0.05, "score_threshold": 5.0}}
    for name, policy in policies.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(policy))

    def drift_job(policy: str) -> str:
        result = subprocess.run([sys.executable, "-m", "fraudops", "monitor", "drift", "--window", "1h",
                                 "--policy", str(tmp_path / f"{policy}.yaml")], env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    assert f"model {trained['tag']}: ok (" in drift_job("lax")
    port = _free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "fraudops", "monitor", "exporter", "--port", str(port)],
                                env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "exporter.log").open("w"))
    try:
        with monitoring(tmp_path / "stack", port) as stack:
            prom = stack["prometheus"]

            def query(expr: str) -> list[dict[str, Any]]:
                return _get_json(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")["data"]["result"]

            def feature_drift_alerts() -> list[dict[str, Any]]:
                return [a for a in _get_json(f"{prom}/api/v1/alerts")["data"]["alerts"]
                        if a["labels"]["alertname"] == "FraudopsFeatureDrift"]

            # the lax verdict scraped for longer than the rule's `for` (5 s shrunk): share high, no alert
            scraped = f'count_over_time(fraudops_drift_detected{{model="{trained["tag"]}"}}[10s]) >= 8'
            _wait("the lax verdict in Prometheus", lambda: query(scraped), timeout=60)
            (share,) = query("fraudops_drift_share_drifted_features")
            assert float(share["value"][1]) > 0.05 and query("fraudops_drift_detected")[0]["value"][1] == "0"
            assert feature_drift_alerts() == []
            # the strict policy: same traffic, same rules file, the alert fires and carries the share
            assert f"model {trained['tag']}: drift (" in drift_job("strict")
            firing = _wait("FraudopsFeatureDrift firing", lambda: [
                a for a in feature_drift_alerts() if a["state"] == "firing"], timeout=60)
            assert firing[0]["labels"]["model"] == trained["tag"]
            assert f"{float(share['value'][1]):.0%}".rstrip("%") in firing[0]["annotations"]["description"]
            _wait("the retrain alert at the trigger's webhook", lambda: stack["webhook"].posts, timeout=30)
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
