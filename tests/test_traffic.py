"""The service's request timeout (`services.traffic`): answered requests leave no timer behind, slow ones get 504."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from services import traffic


def app(delay: float):
    async def handle(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(delay)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    return handle


async def call(middleware: TimeoutMiddleware) -> tuple[list[dict[str, Any]], list[asyncio.TimerHandle]]:
    """One request through the middleware: what it sent, and the loop's timers still pending after it."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    await middleware({"type": "http", "method": "POST", "path": "/score", "headers": []}, receive, send)
    await asyncio.sleep(0.01)  # let a cancelled handler finish
    loop = asyncio.get_running_loop()
    return sent, [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def patched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TimeoutMiddleware, "__call__", TimeoutMiddleware.__call__)  # restored after the test
    traffic.install()


def test_an_answered_request_leaves_no_timer() -> None:
    sent, pending = asyncio.run(call(TimeoutMiddleware(app(0.0), timeout=60)))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert pending == []


def test_a_request_slower_than_the_timeout_gets_504_and_its_handler_is_cancelled() -> None:
    sent, pending = asyncio.run(call(TimeoutMiddleware(app(5.0), timeout=0.05)))
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"]) == {"error": "Not able to process the request in 0.05 seconds"}
    assert pending == []


def test_the_service_installs_it() -> None:
    import services.scorer  # noqa: F401

    assert TimeoutMiddleware.__call__ is traffic._call
