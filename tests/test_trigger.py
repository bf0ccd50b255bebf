"""The retrain trigger over HTTP: authentication, payload validation, at most one retrain per alert instance
(repeats and concurrent HA deliveries), busy and cooldown suppression, run tracking, restarts, the exporter and
launch failures. The backend is a small in-test class implementing the Backend protocol."""

from __future__ import annotations

import contextlib
import copy
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from fraudops.monitoring import trigger as trigger_module
from fraudops.monitoring.backends import FAILED, RUNNING, SUCCEEDED, RetrainRequest
from fraudops.monitoring.trigger import (
    MAX_BODY_BYTES,
    Notification,
    RetrainTrigger,
    TriggerConfig,
    TriggerState,
    create_app,
)

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "fraud-detector:champion001"
BASE = "s3://fraud-data/base/transactions.parquet"


class RecordingBackend:
    """Records every launch; the test decides each run's state."""

    name = "recording"

    def __init__(self) -> None:
        self.launches: list[RetrainRequest] = []
        self.states: dict[str, str] = {}
        self.error: Exception | None = None
        self.lock = threading.Lock()

    def launch(self, request: RetrainRequest) -> str:
        with self.lock:
            if self.error is not None:
                raise self.error
            self.launches.append(request)
            external = f"ext-{len(self.launches)}"
            self.states[external] = RUNNING
            return external

    def status(self, external_id: str) -> str:
        return self.states[external_id]

    def finish(self, state: str) -> None:
        """End the newest run with ``state``."""
        self.states[f"ext-{len(self.launches)}"] = state


def notification(*, fingerprint: str = "a1b2c3d4e5f60718", starts: str = "2026-03-01T10:00:00.123456789Z",
                 status: str = "firing", model: str = MODEL, alertname: str = "FraudModelDrift") -> dict[str, Any]:
    """An Alertmanager webhook body (version 4) with one alert, as Alertmanager sends it."""
    labels = {"alertname": alertname, "model": model, "severity": "warning"}
    return {
        "version": "4", "groupKey": f'{{}}/{{severity="warning"}}:{{alertname="{alertname}"}}', "truncatedAlerts": 0,
        "status": status, "receiver": "retrain-trigger", "groupLabels": {"alertname": alertname},
        "commonLabels": labels, "commonAnnotations": {"summary": "drift on amount"},
        "externalURL": "http://alertmanager:9093",
        "alerts": [{"status": status, "labels": labels, "annotations": {"summary": "drift on amount"},
                    "startsAt": starts,
                    "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-03-01T11:00:00Z",
                    "generatorURL": "http://prometheus:9090/graph", "fingerprint": fingerprint}],
    }


@contextlib.contextmanager
def serve(state_dir: Path, backend: Any, *, cooldown: timedelta = timedelta(hours=1), base_data: str = BASE,
          exporter: Callable[[str, datetime, datetime], str | None] | None = None
          ) -> Iterator[tuple[RetrainTrigger, TestClient]]:
    config = TriggerConfig(state_dir=state_dir, cooldown=cooldown, base_data=base_data,
                           recent_window=timedelta(days=7), registry_url="s3://fraud-registry/prod",
                           poll_seconds=3600, pipeline_args=("--iterations", "300"))
    trigger = RetrainTrigger(config, backend, exporter)
    with TestClient(create_app(trigger, TOKEN)) as client:
        yield trigger, client


def post(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post("/alerts", json=body, headers=AUTH)


def runs(client: TestClient) -> list[dict[str, Any]]:
    response = client.get("/runs")
    assert response.status_code == 200
    return response.json()["runs"]


def wait_launched(client: TestClient, run_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Poll /runs until the background launch of ``run_id`` has finished (the run left ``pending``)."""
    deadline = time.monotonic() + timeout
    while True:
        run = next(r for r in runs(client) if r["id"] == run_id)
        if run["state"] != "pending":
            return run
        assert time.monotonic() < deadline, f"run {run_id} still pending after {timeout} s"
        time.sleep(0.01)


def metrics(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(client: TestClient, name: str, **labels: str) -> float:
    return metrics(client).get((name, tuple(sorted(labels.items()))), 0.0)


def launch(client: TestClient, **kwargs: Any) -> dict[str, Any]:
    """Send a new firing alert, expect a launch, wait for it; returns the run."""
    response = post(client, notification(**kwargs))
    assert response.status_code == 202, response.text
    assert response.json()["action"] == "launched"
    return wait_launched(client, response.json()["run_id"])


# -- requests ---------------------------------------------------------------------------------------------------
def test_requests_without_the_right_token_are_refused(tmp_path: Path) -> None:
    backend = RecordingBackend()
    with serve(tmp_path, backend) as (_, client):
        body = notification()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            response = client.post("/alerts", json=body, headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
        assert metric(client, "fraudops_trigger_requests_rejected_total", reason="unauthorized") == 4
        assert metric(client, "fraudops_trigger_alerts_received_total", status="firing") == 0
    assert backend.launches == []


def _without_group_key(body: dict) -> None:
    del body["groupKey"]


def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def change(body: dict) -> None:
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


@pytest.mark.parametrize(("change", "field"), [
    (_set(("version",), "3"), "version"),
    (_without_group_key, "groupKey"),
    (_set(("alerts",), []), "alerts"),
    (_set(("alerts", 0, "startsAt"), "yesterday"), "alerts.0.startsAt"),
    (_set(("alerts", 0, "status"), "pending"), "alerts.0.status"),
    (_set(("alerts", 0, "fingerprint"), ""), "alerts.0.fingerprint"),
    (_set(("status",), "weird"), "status"),
    # numbers are not times (pydantic would read them as Unix times), and a time without an offset is ambiguous
    (_set(("alerts", 0, "startsAt"), 1772359200), "alerts.0.startsAt"),
    (_set(("alerts", 0, "endsAt"), 0), "alerts.0.endsAt"),
    (_set(("alerts", 0, "startsAt"), "2026-03-01T10:00:00"), "alerts.0.startsAt"),
    (_set(("commonLabels",), {"model": 1}), "commonLabels.model"),
])
def test_bad_payloads_are_refused_naming_the_field(tmp_path: Path, change: Callable[[dict], None],
                                                   field: str) -> None:
    backend = RecordingBackend()
    body = copy.deepcopy(notification())
    change(body)
    with serve(tmp_path, backend) as (_, client):
        response = post(client, body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error.startswith("invalid Alertmanager payload: ") and f"{field}:" in error
        assert metric(client, "fraudops_trigger_requests_rejected_total", reason="invalid") == 1
    assert backend.launches == []


def test_non_json_body_is_refused(tmp_path: Path) -> None:
    backend = RecordingBackend()
    with serve(tmp_path, backend) as (_, client):
        response = client.post("/alerts", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
        assert response.status_code == 400 and "invalid Alertmanager payload" in response.json()["error"]
        assert "body" in response.json()["error"]
        # JSON nested deeper than the parser's recursion limit (e.g. in an extra field) is refused, not recursed
        deep = json.dumps(notification())[:-1] + ', "extra": ' + "[" * 5000 + "]" * 5000 + "}"
        response = client.post("/alerts", content=deep, headers={**AUTH, "Content-Type": "application/json"})
        assert response.status_code == 400 and "recursion limit" in response.json()["error"]
    assert backend.launches == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_gets_415(tmp_path: Path, content_type: str | None) -> None:
    backend = RecordingBackend()
    headers = AUTH if content_type is None else {**AUTH, "Content-Type": content_type}
    with serve(tmp_path, backend) as (_, client):
        response = client.post("/alerts", content=json.dumps(notification()).encode(), headers=headers)
        assert response.status_code == 415 and "send application/json" in response.json()["error"]
        assert metric(client, "fraudops_trigger_requests_rejected_total", reason="content_type") == 1
    assert backend.launches == []


def sized(size: int, **kwargs: Any) -> bytes:
    """A valid notification of exactly ``size`` bytes (a long description annotation)."""
    body = notification(**kwargs)
    body["commonAnnotations"]["description"] = ""
    body["commonAnnotations"]["description"] = "x" * (size - len(json.dumps(body).encode()))
    data = json.dumps(body).encode()
    assert len(data) == size
    return data


def test_an_oversized_body_gets_413_declared_or_streamed(tmp_path: Path) -> None:
    backend = RecordingBackend()
    over = sized(MAX_BODY_BYTES + 1)

    def chunks() -> Iterator[bytes]:  # no Content-Length (chunked): the guard counts what arrives
        for start in range(0, len(over), 64 * 1024):
            yield over[start:start + 64 * 1024]

    headers = {**AUTH, "Content-Type": "application/json"}
    with serve(tmp_path, backend) as (_, client):
        response = client.post("/alerts", content=over, headers=headers)
        assert response.status_code == 413 and f"limit of {MAX_BODY_BYTES}" in response.json()["error"]
        response = client.post("/alerts", content=chunks(), headers=headers)
        assert response.status_code == 413 and "over the limit" in response.json()["error"]
        assert metric(client, "fraudops_trigger_requests_rejected_total", reason="too_large") == 2
        # a body of exactly the limit is read and handled
        assert client.post("/alerts", content=sized(MAX_BODY_BYTES), headers=headers).status_code == 202
    assert len(backend.launches) == 1


def test_the_token_is_checked_before_the_body_is_read(tmp_path: Path) -> None:
    backend = RecordingBackend()
    with serve(tmp_path, backend) as (_, client):
        for headers, content in (({"Content-Type": "text/plain"}, b"hello"),
                                 ({"Content-Type": "application/json"}, b"x" * (MAX_BODY_BYTES + 1)),
                                 ({"Content-Type": "application/json", "Content-Length": "many"}, b"{}")):
            response = client.post("/alerts", content=content, headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert metric(client, "fraudops_trigger_requests_rejected_total", reason="unauthorized") == 3
        assert metric(client, "fraudops_trigger_requests_rejected_total", reason="too_large") == 0
        assert metric(client, "fraudops_trigger_requests_rejected_total", reason="content_type") == 0


def test_a_body_that_does_not_arrive_in_time_gets_408(tmp_path: Path) -> None:
    backend = RecordingBackend()
    trigger = RetrainTrigger(TriggerConfig(state_dir=tmp_path, base_data=BASE), backend)
    app = create_app(trigger, TOKEN, body_seconds=0.2)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not sent:  # the first chunk, then nothing more (a client that stalls)
            sent.append({})
            return {"type": "http.request", "body": b'{"version": "4"', "more_body": True}
        await anyio.sleep(5)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/alerts", "raw_path": b"/alerts", "query_string": b"",
             "root_path": "", "headers": [(b"authorization", f"Bearer {TOKEN}".encode()),
                                          (b"content-type", b"application/json")]}
    anyio.run(app, scope, receive, send)
    trigger.state.close()
    assert sent[1]["status"] == 408 and "within 0.2 s" in json.loads(sent[2]["body"])["error"]
    assert backend.launches == []


def test_resolved_notifications_are_ignored(tmp_path: Path) -> None:
    backend = RecordingBackend()
    with serve(tmp_path, backend) as (_, client):
        response = post(client, notification(status="resolved"))
        assert response.status_code == 200 and response.json()["action"] == "ignored"
        # a firing group whose only alert has resolved is ignored as well
        mixed = notification()
        mixed["alerts"][0]["status"] = "resolved"
        assert post(client, mixed).json()["action"] == "ignored"
        assert runs(client) == []
        assert metric(client, "fraudops_trigger_alerts_received_total", status="resolved") == 1
    assert backend.launches == []


@pytest.mark.parametrize("starts", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999999-01:00"])
def test_start_times_at_the_ends_of_the_datetime_range_are_handled(tmp_path: Path, starts: str) -> None:
    """Their UTC instant is outside what a datetime holds (the trigger answered 500): one launch, then duplicates."""
    backend = RecordingBackend()
    with serve(tmp_path, backend) as (_, client):
        first = post(client, notification(starts=starts))
        assert first.status_code == 202, first.text
        assert json.loads(wait_launched(client, first.json()["run_id"])["alerts"]) == [f"a1b2c3d4e5f60718@{starts}"]
        assert post(client, notification(starts=starts)).json()["action"] == "duplicate"
    assert len(backend.launches) == 1


def test_a_notification_with_many_alerts_is_looked_up_in_one_query(tmp_path: Path) -> None:
    """Every alert key was looked up with one query per alert (quadratic: 4,000 alerts took 7.6 s, holding the
    decision lock)."""
    backend = RecordingBackend()
    body = notification()
    body["alerts"] = [{**body["alerts"][0], "fingerprint": f"f{i:05d}"} for i in range(2000)]
    with serve(tmp_path, backend) as (trigger, client):
        queries: list[str] = []
        trigger.state.db.set_trace_callback(queries.append)
        response = post(client, body)
        trigger.state.db.set_trace_callback(None)
        assert response.status_code == 202
        assert sum(q.startswith("SELECT key FROM alerts") for q in queries) == 1
        (run,) = runs(client)
        assert len(json.loads(run["alerts"])) == 2000
        assert post(client, body).json()["action"] == "duplicate"


# -- the OpenAPI document -------------------------------------------------------------------------------------
def test_the_openapi_document_describes_every_route(tmp_path: Path) -> None:
    backend = RecordingBackend()
    with serve(tmp_path, backend) as (_, client):
        document = client.get("/openapi.json").json()
        routes = {route.path: route.methods - {"HEAD"} for route in client.app.routes}
    assert document["openapi"].startswith("3.")
    assert {path: {m.upper() for m in item} for path, item in document["paths"].items()} == routes
    schemas = document["components"]["schemas"]
    body = document["paths"]["/alerts"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schemas[body["$ref"].rsplit("/", 1)[1]]["required"] == list(Notification.model_json_schema()["required"])
    assert schemas["Alert"]["properties"]["startsAt"]["format"] == "date-time"
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert document["paths"]["/alerts"]["post"]["security"] == [{"bearer": []}]
    for item in document["paths"].values():  # every $ref resolves
        for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(item)):
            assert ref in schemas


def test_every_status_declared_for_alerts_is_one_the_server_answers(tmp_path: Path) -> None:
    """Each declared status of POST /alerts, produced for real, with a body of its declared model (408 has its
    own test above)."""
    backend = RecordingBackend()
    json_type = {"Content-Type": "application/json"}
    requests: dict[str, tuple[dict[str, str], bytes]] = {
        "202": (AUTH, json.dumps(notification()).encode()),
        "200": (AUTH, json.dumps(notification()).encode()),
        "400": (AUTH, b'{"version": "4"}'),
        "401": ({}, json.dumps(notification()).encode()),
        "413": (AUTH, sized(MAX_BODY_BYTES + 1)),
        "415": ({**AUTH, "Content-Type": "text/plain"}, b"hello"),
    }
    with serve(tmp_path, backend) as (_, client):
        declared = client.get("/openapi.json").json()["paths"]["/alerts"]["post"]["responses"]
        for status, (headers, content) in requests.items():
            response = client.post("/alerts", content=content, headers={**json_type, **headers})
            assert str(response.status_code) == status, (status, response.text)
            model_name = declared[status]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
            getattr(trigger_module, model_name).model_validate(response.json())
    assert set(declared) == {*requests, "408"}


# -- launching and following runs --------------------------------------------------------------------------
def test_firing_alert_launches_one_run_and_follows_it(tmp_path: Path) -> None:
    backend = RecordingBackend()
    with serve(tmp_path, backend) as (trigger, client):
        response = post(client, notification())
        assert response.status_code == 202
        body = response.json()
        assert body["action"] == "launched" and "FraudModelDrift" in body["reason"] and MODEL in body["reason"]
        run = wait_launched(client, body["run_id"])
        assert run["state"] == RUNNING and run["external_id"] == "ext-1" and run["backend"] == "recording"
        assert run["model"] == MODEL and run["finished_at"] is None
        assert json.loads(run["alerts"]) == ["a1b2c3d4e5f60718@2026-03-01T10:00:00.123456+00:00"]
        assert len(backend.launches) == 1
        request = backend.launches[0]
        assert request.run_id == body["run_id"] and request.data_uri == BASE and request.extra_uris == ()
        assert request.registry_url == "s3://fraud-registry/prod"
        assert request.extra_args == ("--iterations", "300")
        assert metric(client, "fraudops_trigger_retrains_active") == 1

        backend.finish(SUCCEEDED)
        trigger.refresh()
        (run,) = runs(client)
        assert run["state"] == SUCCEEDED and run["finished_at"] is not None
        assert metric(client, "fraudops_trigger_retrains_launched_total") == 1
        assert metric(client, "fraudops_trigger_retrains_succeeded_total") == 1
        assert metric(client, "fraudops_trigger_retrains_failed_total") == 0
        assert metric(client, "fraudops_trigger_retrains_active") == 0
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["backend"] == "recording"


def test_the_same_notification_fifty_times_launches_once(tmp_path: Path) -> None:
    backend = RecordingBackend()
    with serve(tmp_path, backend) as (_, client):
        responses = [post(client, notification()) for _ in range(50)]
        assert [r.status_code for r in responses] == [202] + [200] * 49
        assert {r.json()["action"] for r in responses[1:]} == {"duplicate"}
        wait_launched(client, responses[0].json()["run_id"])
        # the same instant written with another offset is the same alert instance
        assert post(client, notification(starts="2026-03-01T11:00:00.123456+01:00")).json()["action"] == "duplicate"
        assert len(backend.launches) == 1 and len(runs(client)) == 1
        assert metric(client, "fraudops_trigger_alerts_received_total", status="firing") == 51
        assert metric(client, "fraudops_trigger_alerts_deduplicated_total") == 50
        assert metric(client, "fraudops_trigger_retrains_launched_total") == 1


def test_concurrent_deliveries_from_an_ha_pair_launch_once(tmp_path: Path) -> None:
    backend = RecordingBackend()
    threads = 16
    start = threading.Barrier(threads)
    with serve(tmp_path, backend) as (_, client):
        def deliver(_: int) -> tuple[int, str]:
            start.wait(timeout=10)
            response = post(client, notification())
            return response.status_code, response.json()["action"]

        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(deliver, range(threads)))
        assert sorted(results) == [(200, "duplicate")] * (threads - 1) + [(202, "launched")]
        (run,) = runs(client)
        wait_launched(client, run["id"])
        assert len(backend.launches) == 1
        assert metric(client, "fraudops_trigger_alerts_deduplicated_total") == threads - 1
        assert metric(client, "fraudops_trigger_alerts_received_total", status="firing") == threads
        assert metric(client, "fraudops_trigger_retrains_launched_total") == 1


def test_concurrent_handling_outside_the_event_loop_launches_once(tmp_path: Path) -> None:
    """The same decision from many threads at once (a server with several worker threads)."""
    backend = RecordingBackend()
    threads = 16
    start = threading.Barrier(threads)
    with serve(tmp_path, backend) as (trigger, client):
        message = Notification.model_validate_json(json.dumps(notification(fingerprint="0badc0de")))

        def handle(_: int) -> str:
            start.wait(timeout=10)
            return trigger.handle(message)[1]["action"]

        with ThreadPoolExecutor(threads) as pool:
            actions = sorted(pool.map(handle, range(threads)))
        assert actions == ["duplicate"] * (threads - 1) + ["launched"]
        (run,) = runs(client)
        wait_launched(client, run["id"])
    assert len(backend.launches) == 1


def test_new_alert_while_a_run_is_active_is_suppressed_busy(tmp_path: Path) -> None:
    backend = RecordingBackend()
    with serve(tmp_path, backend) as (_, client):
        first = launch(client)
        response = post(client, notification(starts="2026-03-01T10:30:00Z"))
        assert response.status_code == 200
        assert response.json()["action"] == "suppressed"
        assert response.json()["reason"].startswith(f"busy: retraining {first['id']} is still running")
        # another model's alert waits as well: one retraining at a time
        other = post(client, notification(fingerprint="ffff0000", model="fraud-detector:other"))
        assert other.json()["action"] == "suppressed" and other.json()["reason"].startswith("busy")
        # the suppressed instance was handled: its repeats are duplicates, even once the run is over
        backend.finish(SUCCEEDED)
        assert post(client, notification(starts="2026-03-01T10:30:00Z")).json()["action"] == "duplicate"
        assert len(backend.launches) == 1
        assert metric(client, "fraudops_trigger_alerts_suppressed_total", reason="busy") == 2


def test_cooldown_after_success_then_launch_after_it(tmp_path: Path) -> None:
    backend = RecordingBackend()
    cooldown = timedelta(seconds=2)
    with serve(tmp_path, backend, cooldown=cooldown) as (trigger, client):
        first = launch(client)
        backend.finish(SUCCEEDED)
        trigger.refresh()
        response = post(client, notification(starts="2026-03-01T10:30:00Z"))
        assert response.json()["action"] == "suppressed"
        assert response.json()["reason"].startswith(f"cooldown: {MODEL} was retrained at {first['created_at']}")
        assert metric(client, "fraudops_trigger_alerts_suppressed_total", reason="cooldown") == 1
        # the cooldown is per model
        launch(client, fingerprint="ffff0000", model="fraud-detector:other")
        backend.finish(SUCCEEDED)
        trigger.refresh()
        # once the cooldown has passed, a new alert instance retrains again
        ends = datetime.fromisoformat(first["created_at"]) + cooldown
        time.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.05)
        third = launch(client, starts="2026-03-01T10:45:00Z")
        assert third["state"] == RUNNING and len(backend.launches) == 3


def test_failed_run_starts_no_cooldown(tmp_path: Path) -> None:
    backend = RecordingBackend()
    with serve(tmp_path, backend, cooldown=timedelta(hours=6)) as (trigger, client):
        first = launch(client)
        backend.finish(FAILED)
        trigger.refresh()
        assert next(r for r in runs(client) if r["id"] == first["id"])["state"] == FAILED
        assert metric(client, "fraudops_trigger_retrains_failed_total") == 1
        assert metric(client, "fraudops_trigger_retrains_active") == 0
        second = launch(client, starts="2026-03-01T10:30:00Z")
        assert second["state"] == RUNNING and len(backend.launches) == 2


def test_restart_remembers_alerts_and_runs(tmp_path: Path) -> None:
    backend = RecordingBackend()  # the backend's runs outlive the trigger process, as KFP runs or Jobs do
    with serve(tmp_path, backend) as (_, client):
        first = launch(client)
    with serve(tmp_path, backend) as (trigger, client):
        assert post(client, notification()).json()["action"] == "duplicate"
        (run,) = runs(client)
        assert run["id"] == first["id"] and run["state"] == RUNNING
        assert metric(client, "fraudops_trigger_retrains_active") == 1  # picked up on start
        assert post(client, notification(starts="2026-03-01T10:30:00Z")).json()["reason"].startswith("busy")
        backend.finish(SUCCEEDED)
        trigger.refresh()
        assert runs(client)[0]["state"] == SUCCEEDED
        assert metric(client, "fraudops_trigger_retrains_succeeded_total") == 1
        assert metric(client, "fraudops_trigger_retrains_active") == 0
    assert len(backend.launches) == 1


def test_run_left_pending_by_a_dead_process_does_not_block_forever(tmp_path: Path) -> None:
    state = TriggerState(tmp_path / "trigger.db")  # what a trigger killed between recording and launching leaves
    state.add_run("20260301100000-dead01", "recording", MODEL, "FraudModelDrift", ["old@2026-03-01T09:00:00+00:00"])
    state.close()
    backend = RecordingBackend()
    with serve(tmp_path, backend) as (_, client):
        response = post(client, notification())
        assert response.status_code == 202, response.json()
    assert len(backend.launches) == 1


# -- training data and launch failures ----------------------------------------------------------------------
def test_exporter_supplies_the_recent_labelled_traffic(tmp_path: Path) -> None:
    calls: list[tuple[str, datetime, datetime]] = []

    def exporter(run_id: str, start: datetime, end: datetime) -> str | None:
        calls.append((run_id, start, end))
        return f"s3://fraud-data/exports/{run_id}.parquet"

    backend = RecordingBackend()
    with serve(tmp_path / "a", backend, exporter=exporter) as (_, client):
        run = launch(client)
    (run_id, start, end), request = calls[0], backend.launches[0]
    assert run_id == run["id"] and end - start == timedelta(days=7)
    assert abs((datetime.now(UTC) - end).total_seconds()) < 60
    assert request.data_uri == BASE and request.extra_uris == (f"s3://fraud-data/exports/{run_id}.parquet",)

    # without base data the export is the training data
    with serve(tmp_path / "b", backend, base_data="", exporter=exporter) as (_, client):
        run = launch(client)
    assert backend.launches[1].data_uri == f"s3://fraud-data/exports/{run['id']}.parquet"
    assert backend.launches[1].extra_uris == ()

    # nothing exported (no labelled traffic): train on the base data alone
    with serve(tmp_path / "c", backend, exporter=lambda *_: None) as (_, client):
        launch(client)
    assert backend.launches[2].data_uri == BASE and backend.launches[2].extra_uris == ()


def test_launch_failure_is_recorded_as_failed_not_lost(tmp_path: Path) -> None:
    backend = RecordingBackend()
    backend.error = RuntimeError("cluster API unreachable")
    with serve(tmp_path, backend) as (_, client):
        run = launch(client)
        assert run["state"] == FAILED and run["finished_at"] is not None
        assert run["detail"] == "launch failed: cluster API unreachable"
        assert metric(client, "fraudops_trigger_retrains_launched_total") == 1
        assert metric(client, "fraudops_trigger_retrains_failed_total") == 1
        assert metric(client, "fraudops_trigger_retrains_active") == 0
        # the failure neither blocks nor cools down: the next alert instance launches
        backend.error = None
        again = launch(client, starts="2026-03-01T10:30:00Z")
        assert again["state"] == RUNNING and len(backend.launches) == 1


def test_exporter_failure_or_no_data_fails_the_run(tmp_path: Path) -> None:
    def broken(*_: Any) -> str | None:
        raise OSError("log store unreachable")

    backend = RecordingBackend()
    with serve(tmp_path / "a", backend, exporter=broken) as (_, client):
        run = launch(client)
        assert run["state"] == FAILED and run["detail"] == "launch failed: log store unreachable"
    with serve(tmp_path / "b", backend, base_data="", exporter=lambda *_: None) as (_, client):
        run = launch(client)
        assert run["state"] == FAILED and "no training data" in run["detail"]
    with serve(tmp_path / "c", backend, base_data="") as (_, client):
        assert launch(client)["state"] == FAILED
    assert backend.launches == []


class SlowStatusBackend(RecordingBackend):
    """A backend whose status API is slow: once armed, status calls wait (up to 5 s) for each other."""

    def __init__(self) -> None:
        super().__init__()
        self.barrier: threading.Barrier | None = None

    def status(self, external_id: str) -> str:
        if self.barrier is not None:
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait()
        return super().status(external_id)


def test_concurrent_refreshes_count_a_finished_run_once(tmp_path: Path) -> None:
    backend = SlowStatusBackend()
    with serve(tmp_path, backend) as (trigger, client):
        launch(client)
        backend.finish(SUCCEEDED)
        backend.barrier = threading.Barrier(2, timeout=5.0)
        workers = [threading.Thread(target=trigger.refresh) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=10)
        backend.barrier = None
        assert metric(client, "fraudops_trigger_retrains_succeeded_total") == 1
        assert metric(client, "fraudops_trigger_retrains_active") == 0


class BlockingStatusBackend(RecordingBackend):
    """A backend whose status API hangs (a slow Kubernetes or KFP API) until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.blocking = False

    def status(self, external_id: str) -> str:
        if self.blocking:
            self.entered.set()
            self.release.wait(timeout=30)
        return super().status(external_id)


@pytest.mark.parametrize("slow_request", ["runs", "alerts"])
def test_a_hanging_backend_api_never_stalls_the_server(tmp_path: Path, slow_request: str) -> None:
    backend = BlockingStatusBackend()
    with serve(tmp_path, backend, cooldown=timedelta(0)) as (_, client), ThreadPoolExecutor(2) as pool:
        launch(client)
        backend.blocking = True
        slow = pool.submit(lambda: client.get("/runs") if slow_request == "runs"
                           else post(client, notification(fingerprint="ffff000011112222")))
        assert backend.entered.wait(timeout=10), "the request never reached the backend"
        # the backend is hanging inside that request: the server still answers
        health = pool.submit(client.get, "/healthz")
        try:
            assert health.result(timeout=10).status_code == 200
            assert not slow.done()
        finally:
            backend.release.set()
        assert slow.result(timeout=10).status_code in (200, 202)

