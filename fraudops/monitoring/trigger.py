"""The retrain trigger: an Alertmanager webhook that starts at most one retraining per alert, per model cooldown
and at a time, and remembers what it did across restarts.

Alertmanager retries a notification until it gets a 2xx and an HA pair sends each notification twice, so every
firing alert instance is keyed on ``fingerprint`` + ``startsAt`` and handled once: a repeat is a duplicate, not a
new retrain. State (alert keys, runs) lives in SQLite in the state directory.

``GET /openapi.json`` describes every route, built from the pydantic models below. ``POST /alerts`` checks the
bearer token before anything else (401), then refuses a body that is not JSON (415), over ``MAX_BODY_BYTES``
(413, unread) or too slow (408) with `fraudops.httpguard`, then one that is not a notification (400).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

from fraudops.errors import problems
from fraudops.httpguard import RequestGuard
from fraudops.monitoring.backends import FAILED, RUNNING, SUCCEEDED, Backend, RetrainRequest, new_run_id

if TYPE_CHECKING:
    from fraudops.rollout import Controller, Decision, RolloutReport

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # a notification carries one alert group: kilobytes, even with many alerts
BODY_SECONDS = 10.0


# -- Alertmanager webhook payload (version 4) -----------------------------------------------------------------
# strict: times are RFC 3339 strings with an offset, as Alertmanager writes them (not numbers, not local times);
# validate the JSON text (``model_validate_json``), as the webhook does
class Alert(BaseModel):
    """One alert of a notification."""

    model_config = ConfigDict(extra="allow", strict=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: AwareDatetime
    endsAt: AwareDatetime | None = None
    fingerprint: str = Field(min_length=1)

    def key(self) -> str:
        """The alert instance: fingerprint and start time in UTC (a start time outside the range of UTC
        datetimes, e.g. 0001-01-01T00:00:00+01:00, keeps its own offset)."""
        try:
            starts = self.startsAt.astimezone(UTC)
        except OverflowError:
            starts = self.startsAt
        return f"{self.fingerprint}@{starts.isoformat()}"


class Notification(BaseModel):
    """Alertmanager's webhook body."""

    model_config = ConfigDict(extra="allow", strict=True)

    version: Literal["4"]
    groupKey: str = Field(min_length=1)
    status: Literal["firing", "resolved"]
    receiver: str
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    alerts: list[Alert] = Field(min_length=1)


def payload_problems(exc: ValidationError) -> str:
    """One line naming every bad field."""
    return problems(exc, "body")


# -- response bodies (for the OpenAPI document) ---------------------------------------------------------------
class Handled(BaseModel):
    """A notification that started no retrain."""

    action: Literal["ignored", "duplicate", "suppressed"]
    reason: str


class Launched(BaseModel):
    """A notification that launched a retrain."""

    action: Literal["launched"]
    run_id: str
    reason: str


class Problem(BaseModel):
    """A refused request."""

    error: str


class Run(BaseModel):
    """A retraining run the trigger launched (a row of its state)."""

    id: str
    backend: str
    external_id: str | None
    model: str
    reason: str
    alerts: str = Field(description="JSON list of the alert instances (fingerprint@startsAt) behind the run")
    state: Literal["pending", "running", "succeeded", "failed"]
    created_at: str
    finished_at: str | None
    detail: str | None


class Runs(BaseModel):
    """Every run, newest first."""

    runs: list[Run]


class Health(BaseModel):
    """The trigger is up."""

    status: Literal["ok"]
    backend: str
    time: float


# -- state ----------------------------------------------------------------------------------------------------
class TriggerState:
    """Seen alert instances and launched runs, in SQLite (safe across restarts and threads)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.executescript("""
            PRAGMA journal_mode=WAL;
            CREATE TABLE IF NOT EXISTS alerts (
                key TEXT PRIMARY KEY, group_key TEXT, alertname TEXT, model TEXT, received_at TEXT, outcome TEXT);
            CREATE TABLE IF NOT EXISTS runs (
                id TEXT PRIMARY KEY, backend TEXT, external_id TEXT, model TEXT, reason TEXT, alerts TEXT,
                state TEXT, created_at TEXT, finished_at TEXT, detail TEXT);
        """)

    def close(self) -> None:
        """Close the database."""
        with self.lock:
            self.db.close()

    def seen(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` were handled before (one query: a body of at most MAX_BODY_BYTES holds fewer alerts
        than SQLite's default limit of 32766 variables)."""
        with self.lock:
            rows = self.db.execute(f"SELECT key FROM alerts WHERE key IN ({','.join('?' * len(keys))})", keys)
            return {r["key"] for r in rows}

    def remember(self, keys: list[str], group_key: str, alertname: str, model: str, outcome: str) -> None:
        """Record alert instances as handled with their outcome."""
        now = datetime.now(UTC).isoformat()
        with self.lock:
            self.db.executemany("INSERT OR IGNORE INTO alerts VALUES (?, ?, ?, ?, ?, ?)",
                                [(k, group_key, alertname, model, now, outcome) for k in keys])

    def add_run(self, run_id: str, backend: str, model: str, reason: str, alerts: list[str]) -> None:
        """Record a run before it is launched (state ``pending``)."""
        with self.lock:
            self.db.execute("INSERT INTO runs VALUES (?, ?, NULL, ?, ?, ?, 'pending', ?, NULL, NULL)",
                            (run_id, backend, model, reason, json.dumps(alerts), datetime.now(UTC).isoformat()))

    def update_run(self, run_id: str, only_if_state: str | None = None, **values: Any) -> bool:
        """Set columns of a run (only while it is in ``only_if_state``, if given); False if nothing changed."""
        columns = ", ".join(f"{k} = ?" for k in values)
        query, args = f"UPDATE runs SET {columns} WHERE id = ?", [*values.values(), run_id]
        if only_if_state is not None:
            query += " AND state = ?"
            args.append(only_if_state)
        with self.lock:
            return self.db.execute(query, args).rowcount > 0

    def runs(self, states: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Runs, newest first (optionally only in ``states``)."""
        query, args = "SELECT * FROM runs", []
        if states:
            query += f" WHERE state IN ({','.join('?' * len(states))})"
            args = list(states)
        with self.lock:
            return [dict(r) for r in self.db.execute(query + " ORDER BY created_at DESC", args)]

    def last_run_for(self, model: str) -> dict[str, Any] | None:
        """The newest run started for ``model`` that did not fail (a failed run does not start a cooldown)."""
        with self.lock:
            found = self.db.execute("SELECT * FROM runs WHERE model = ? AND state != ? ORDER BY created_at DESC "
                                    "LIMIT 1", (model, FAILED)).fetchone()
        return dict(found) if found else None


# -- the trigger ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TriggerConfig:
    """Trigger settings (flags of ``fraudops trigger serve``)."""

    state_dir: Path
    cooldown: timedelta = timedelta(hours=6)
    base_data: str = ""
    recent_window: timedelta = timedelta(days=7)
    registry_url: str = ""
    poll_seconds: float = 5.0
    pipeline_args: tuple[str, ...] = ()
    release: str = "promote"


class RolloutCollector(Collector):
    """The rollout controller's last comparison (`fraudops.rollout.RolloutReport`) as gauges, read at scrape time
    so that a scrape never mixes two ticks; no series while no rollout is active.

    ``window`` is ``stage`` (the current stage) or ``rollout`` (the whole rollout); ``role`` is a group of rows:
    ``champion``, ``shadow``, ``canary``, ``champion-on-canary`` (the champion's scores of the canary's
    transactions) and ``challenger`` (shadow and canary rows together). A value that cannot be measured yet (too
    few rows, no labels: NaN in the report) has no series rather than a NaN sample."""

    PREFIX = "fraudops_rollout_"

    def __init__(self) -> None:
        self.report: RolloutReport | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauges of ``report`` (none without one)."""
        report = self.report

        def family(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(self.PREFIX + name, doc, labels=labels)

        info = family("stage_info", "The active rollout and its current stage (always 1)",
                      ["rollout_id", "challenger", "champion", "stage"])
        per_role = {name: family(name, doc, ["window", "role"]) for name, doc in (
            ("rows", "Transactions of each role in the window"),
            ("decline_rate", "Share of the role's transactions declined"),
            ("review_rate", "Share of the role's transactions sent to review"),
            ("latency_p99_seconds", "p99 of the role's model scoring time per request"),
            ("paired_rows", "The challenger role's transactions that the champion scored too"))}
        distance = family("score_distance", "Distance of the role's scores from the champion's, on all the "
                          "champion's rows (comparison=unpaired) or on the same transactions (paired)",
                          ["window", "role", "comparison"])
        disagreement = family("disagreement", "Share of the transactions both models scored that they decide "
                              "differently (kind=any) or that exactly one declines (kind=decline)",
                              ["window", "role", "kind"])
        labelled = {name: family(name, doc, ["role"]) for name, doc in (
            ("labelled_rows", "The role's transactions over the whole rollout whose label arrived"),
            ("pr_auc", "PR-AUC of the role's labelled transactions over the whole rollout"),
            ("recall", "Share of the role's labelled frauds over the whole rollout scored at or above the decline "
                       "threshold"))}
        if report is not None:
            from fraudops.rollout import stage_name

            state = report.rollout
            info.add_metric([state.id, state.challenger, state.champion, stage_name(state.mode, state.percent)], 1)
            for window, part in (("stage", report.stage), ("rollout", report.whole)):
                for role, stats in part.groups.items():
                    for name, value in (("rows", stats.rows), ("decline_rate", stats.decline_rate),
                                        ("review_rate", stats.review_rate),
                                        ("latency_p99_seconds", stats.latency_p99_ms / 1000)):
                        _add(per_role[name], [window, role], value)
                for role, value in part.score_distance.items():
                    _add(distance, [window, role, "unpaired"], value)
                for role, pairing in part.paired.items():
                    _add(per_role["paired_rows"], [window, role], pairing.rows)
                    _add(distance, [window, role, "paired"], pairing.score_distance)
                    _add(disagreement, [window, role, "any"], pairing.disagreement)
                    _add(disagreement, [window, role, "decline"], pairing.decline_disagreement)
            for role, stats in report.whole.groups.items():
                for name, value in (("labelled_rows", stats.labelled), ("pr_auc", stats.pr_auc),
                                    ("recall", stats.recall)):
                    _add(labelled[name], [role], value)
        yield info
        yield from per_role.values()
        yield from (distance, disagreement)
        yield from labelled.values()


def _add(family: GaugeMetricFamily, labels: list[str], value: float) -> None:
    """A sample, unless ``value`` is NaN."""
    if not math.isnan(value):
        family.add_metric(labels, float(value))


class TriggerMetrics:
    """The trigger's own Prometheus metrics, and the rollout controller's (`RolloutCollector`,
    ``fraudops_rollout_decisions_total{action}``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("fraudops_trigger_alerts_received", "Alert notifications received", ["status"],
                                registry=r)
        self.deduplicated = Counter("fraudops_trigger_alerts_deduplicated", "Alert instances seen before",
                                    registry=r)
        self.suppressed = Counter("fraudops_trigger_alerts_suppressed", "New alerts that started no retrain",
                                  ["reason"], registry=r)
        self.launched = Counter("fraudops_trigger_retrains_launched", "Retraining runs launched", registry=r)
        self.succeeded = Counter("fraudops_trigger_retrains_succeeded", "Retraining runs that succeeded",
                                 registry=r)
        self.failed = Counter("fraudops_trigger_retrains_failed", "Retraining runs that failed", registry=r)
        self.active = Gauge("fraudops_trigger_retrains_active", "Retraining runs in progress", registry=r)
        self.rejected = Counter("fraudops_trigger_requests_rejected", "Webhook requests refused", ["reason"],
                                registry=r)
        self.rollout = RolloutCollector()
        r.register(self.rollout)
        self.rollout_decisions = Counter("fraudops_rollout_decisions", "Rollout controller decisions on an active "
                                         "rollout", ["action"], registry=r)
        for action in ("hold", "advance", "promote", "abort"):
            self.rollout_decisions.labels(action)

    def rollout_decided(self, decision: Decision) -> None:
        """Count a controller decision and export the comparison it was judged on; a rollout that ended (or none
        active) clears the rollout's gauges, a hold without a report (alerts unreadable) keeps the last ones."""
        if decision.rollout_id is not None:
            self.rollout_decisions.labels(decision.action).inc()
        if decision.rollout_id is None or decision.action in ("promote", "abort"):
            self.rollout.report = None
        elif decision.report is not None:
            self.rollout.report = decision.report


class RetrainTrigger:
    """Decides what each notification does and follows the runs it launched."""

    def __init__(self, config: TriggerConfig, backend: Backend,
                 exporter: Callable[[str, datetime, datetime], str | None] | None = None,
                 controller: Controller | None = None) -> None:
        self.config, self.backend, self.controller = config, backend, controller
        self.state = TriggerState(config.state_dir / "trigger.db")
        self.metrics = TriggerMetrics()
        self.exporter = exporter
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        for run in self.state.runs(("pending",)):  # a previous process stopped before launching these
            self.state.update_run(run["id"], only_if_state="pending", state=FAILED,
                                  finished_at=datetime.now(UTC).isoformat(),
                                  detail="the trigger stopped before launching this run")

    # Alertmanager notifications ---------------------------------------------------------------------------
    def handle(self, notification: Notification) -> tuple[int, dict[str, Any]]:
        """Process one notification; returns the HTTP status and the body."""
        self.metrics.received.labels(notification.status).inc()
        firing = [a for a in notification.alerts if a.status == "firing"]
        if notification.status == "resolved" or not firing:
            return 200, {"action": "ignored", "reason": "resolved notification"}
        with self.lock:  # one decision at a time: concurrent duplicates from an HA pair must not both launch
            keys = [a.key() for a in firing]
            seen = self.state.seen(keys)
            new_keys = [k for k in keys if k not in seen]
            self.metrics.deduplicated.inc(len(keys) - len(new_keys))
            if not new_keys:
                return 200, {"action": "duplicate", "reason": "every alert in this notification was handled before"}
            first = firing[keys.index(new_keys[0])]
            model = first.labels.get("model") or notification.commonLabels.get("model", "")
            alertname = first.labels.get("alertname", "")
            blocked = self._blocked(model)
            if blocked:
                self.state.remember(new_keys, notification.groupKey, alertname, model, blocked)
                self.metrics.suppressed.labels(blocked.split(":")[0]).inc()
                return 200, {"action": "suppressed", "reason": blocked}
            run_id = new_run_id()
            reason = f"{alertname} for {model or 'all models'}: {first.annotations.get('summary', '')}".strip(": ")
            self.state.add_run(run_id, self.backend.name, model, reason, new_keys)
            self.state.remember(new_keys, notification.groupKey, alertname, model, f"launched:{run_id}")
        threading.Thread(target=self._launch, args=(run_id,), name=f"launch-{run_id}", daemon=True).start()
        self.metrics.launched.inc()
        return 202, {"action": "launched", "run_id": run_id, "reason": reason}

    def _blocked(self, model: str) -> str | None:
        """Why no retrain may start now, or None."""
        self.refresh()
        active = self.state.runs((RUNNING, "pending"))
        if active:
            return f"busy: retraining {active[0]['id']} is still {active[0]['state']}"
        last = self.state.last_run_for(model)
        if last is not None:
            started = datetime.fromisoformat(last["created_at"])
            if datetime.now(UTC) - started < self.config.cooldown:
                return (f"cooldown: {model or 'this model'} was retrained at {last['created_at']}, less than "
                        f"{self.config.cooldown} ago")
        return None

    def _launch(self, run_id: str) -> None:
        end = datetime.now(UTC)
        try:
            extra: tuple[str, ...] = ()
            if self.exporter is not None:
                exported = self.exporter(run_id, end - self.config.recent_window, end)
                extra = (exported,) if exported else ()
            if not self.config.base_data and not extra:
                raise RuntimeError("no training data: no --base-data and no labelled recent traffic to export")
            request = RetrainRequest(run_id=run_id, data_uri=self.config.base_data or extra[0],
                                     extra_uris=extra if self.config.base_data else extra[1:],
                                     registry_url=self.config.registry_url, extra_args=self.config.pipeline_args,
                                     release=self.config.release)
            external = self.backend.launch(request)
            self.state.update_run(run_id, external_id=external, state=RUNNING,
                                  detail=f"training on {request.data_uri} + {list(request.extra_uris)}")
            self.metrics.active.inc()
            log.info("retraining %s launched on %s as %s", run_id, self.backend.name, external)
        except Exception as exc:  # a failed launch is recorded, never lost
            log.exception("retraining %s could not be launched", run_id)
            self.state.update_run(run_id, state=FAILED, finished_at=datetime.now(UTC).isoformat(),
                                  detail=f"launch failed: {exc}")
            self.metrics.failed.inc()

    # Following runs ---------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Ask the backend about every running run and record the ones that ended."""
        for run in self.state.runs((RUNNING,)):
            try:
                state = self.backend.status(run["external_id"])
            except Exception as exc:  # the backend's API may be down for a while: keep the run running
                log.warning("cannot get the state of run %s: %s", run["id"], exc)
                continue
            if state == RUNNING:
                continue
            # conditional: the watcher, GET /runs and the webhook all refresh; only one may count the end
            if not self.state.update_run(run["id"], only_if_state=RUNNING, state=state,
                                         finished_at=datetime.now(UTC).isoformat()):
                continue
            self.metrics.active.dec()
            (self.metrics.succeeded if state == SUCCEEDED else self.metrics.failed).inc()
            log.info("retraining %s %s", run["id"], state)

    def start(self) -> None:
        """Follow runs in the background; runs left running by a previous process are picked up."""
        self.metrics.active.set(len(self.state.runs((RUNNING,))))

        def loop() -> None:
            while not self._stop.wait(self.config.poll_seconds):
                self.refresh()
                if self.controller is not None:
                    try:
                        decision = self.controller.tick()
                        if decision is not None:
                            self.metrics.rollout_decided(decision)
                    except Exception:  # the store or the log may be down for a while: the next tick retries
                        log.exception("rollout controller step failed")

        self._watcher = threading.Thread(target=loop, name="trigger-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop following runs and close the state."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.state.close()


# -- HTTP -----------------------------------------------------------------------------------------------------
def openapi_document(max_body_bytes: int = MAX_BODY_BYTES, body_seconds: float = BODY_SECONDS) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `create_app`: every route, every status it answers, built from the models."""
    models = (Notification, Handled, Launched, Problem, Runs, Health)
    refs, defs = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    ref = {m: refs[(m, "validation")] for m in models}

    def body(description: str, model: type[BaseModel], **extra: Any) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": ref[model]}}, **extra}

    def get(summary: str, response: dict[str, Any]) -> dict[str, Any]:
        return {"get": {"summary": summary, "responses": {"200": response}}}

    alerts = {
        "summary": "An Alertmanager notification (webhook_configs, version 4); at most one retrain per alert instance",
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref[Notification]}}},
        "responses": {
            "200": body("Handled without a new retrain: ignored (resolved), duplicate or suppressed", Handled),
            "202": body("A retraining was launched", Launched),
            "400": body("Not an Alertmanager notification (the error names each bad field), or a Content-Length "
                        "that is not a number", Problem),
            "401": body("Missing or wrong bearer token (checked before the body is read)", Problem,
                        headers={"WWW-Authenticate": {"required": True, "schema": {"const": "Bearer"}}}),
            "408": body(f"The body did not arrive within {body_seconds:g} s", Problem),
            "413": body(f"The body is over {max_body_bytes} bytes (refused before it is read)", Problem),
            "415": body("The body is not application/json", Problem),
        },
    }
    text = {"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}
    document = {"description": "This document", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "fraudops retrain trigger", "version": "1",
                 "description": (__doc__ or "").split("\n\n")[0]},
        "paths": {
            "/alerts": {"post": alerts},
            "/runs": get("The runs launched, newest first (their state asked from the backend)",
                         body("Every run", Runs)),
            "/metrics": get("The trigger's Prometheus metrics", text),
            "/healthz": get("Liveness", body("Up", Health)),
            "/openapi.json": get("This OpenAPI document", document),
        },
        "components": {"schemas": defs["$defs"], "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


class BearerAuth:
    """ASGI middleware: 401 unless the ``Authorization`` header is ``Bearer <token>`` (the body stays unread)."""

    def __init__(self, app: Any, *, token: str, on_reject: Callable[[], None]) -> None:
        self.app, self.expected, self.on_reject = app, f"Bearer {token}".encode(), on_reject

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.datastructures import Headers
        from starlette.responses import JSONResponse

        given = Headers(scope=scope).get("authorization", "").encode()
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        self.on_reject()
        response = JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer", "Connection": "close"})
        await response(scope, receive, send)


def create_app(trigger: RetrainTrigger, token: str, max_body_bytes: int = MAX_BODY_BYTES,
               body_seconds: float = BODY_SECONDS) -> Any:
    """The Starlette app: ``POST /alerts``, ``GET /runs``, ``GET /metrics``, ``GET /healthz``,
    ``GET /openapi.json``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    document = openapi_document(max_body_bytes, body_seconds)

    async def alerts(request: Request) -> JSONResponse:
        try:
            notification = Notification.model_validate_json(await request.body())
        except ValidationError as exc:
            trigger.metrics.rejected.labels("invalid").inc()
            return JSONResponse({"error": f"invalid Alertmanager payload: {payload_problems(exc)}"}, status_code=400)
        # handling asks the backend's API (Kubernetes, KFP) about running runs: off the event loop, so that a slow
        # API never stalls /healthz or other deliveries
        status, body = await run_in_threadpool(trigger.handle, notification)
        return JSONResponse(body, status_code=status)

    def refreshed_runs() -> list[dict[str, Any]]:
        trigger.refresh()
        return trigger.state.runs()

    async def runs(_: Request) -> JSONResponse:
        return JSONResponse({"runs": await run_in_threadpool(refreshed_runs)})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(trigger.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "backend": trigger.backend.name, "time": time.time()})

    async def openapi(_: Request) -> JSONResponse:
        return JSONResponse(document)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        trigger.start()
        try:
            yield
        finally:
            trigger.stop()

    def refused(reason: str) -> None:
        trigger.metrics.rejected.labels(reason).inc()

    # the token is checked first, so that nobody without it can make the trigger read a body
    guard = [Middleware(BearerAuth, token=token, on_reject=lambda: refused("unauthorized")),
             Middleware(RequestGuard, paths={"/alerts"}, max_bytes=max_body_bytes, body_seconds=body_seconds,
                        on_reject=lambda _, reason: refused(reason))]
    return Starlette(routes=[Route("/alerts", alerts, methods=["POST"], middleware=guard), Route("/runs", runs),
                             Route("/metrics", metrics), Route("/healthz", healthz),
                             Route("/openapi.json", openapi)], lifespan=lifespan)
