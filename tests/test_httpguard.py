"""The request guard in front of the scorer's JSON endpoints, as an ASGI middleware around a small echo app:
what it refuses (415, 413 before reading, 413 while streaming, 400, 408 for a slow client), what it passes on
unchanged, and what it reports. The real service behind it is tested over HTTP in tests/test_service_e2e.py."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from fraudops.httpguard import RequestGuard

PATHS = {"/score", "/feedback"}


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers 200 with the body it received and its length."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = json.dumps({"length": len(body), "body": body.decode()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


def call(guard: RequestGuard, headers: dict[str, str], chunks: list[bytes], *, path: str = "/score",
         method: str = "POST", delay: float = 0.0) -> tuple[int, dict[str, Any], list[int]]:
    """Send one request through ``guard``; returns the status, the JSON body and how many chunks were read."""
    read: list[int] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        index = len(read)
        read.append(index)
        if delay:
            await anyio.sleep(delay)
        if index >= len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[index], "more_body": index < len(chunks) - 1}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    anyio.run(guard, scope, receive, send)
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(body), read


@pytest.fixture
def rejected() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def guard(rejected: list[tuple[str, str]]) -> RequestGuard:
    return RequestGuard(echo, paths=PATHS, max_bytes=100, body_seconds=0.3,
                        on_reject=lambda path, reason: rejected.append((path, reason)))


def test_json_bodies_pass_unchanged(guard: RequestGuard, rejected: list[tuple[str, str]]) -> None:
    body = b'{"transactions": [{"amount": 1}]}'
    status, answer, _ = call(guard, {"content-type": "application/json; charset=utf-8",
                                     "content-length": str(len(body))}, [body[:10], body[10:]])
    assert (status, answer) == (200, {"length": len(body), "body": body.decode()})
    # an empty POST without a content type (POST /reload) too
    assert call(guard, {}, [b""])[0] == 200
    assert rejected == []


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=x", "text/plain",
                                          "application/x-www-form-urlencoded", ""])
def test_a_body_that_is_not_json_gets_415_unread(guard: RequestGuard, rejected: list[tuple[str, str]],
                                                 content_type: str) -> None:
    headers = {"content-length": "3"} | ({"content-type": content_type} if content_type else {})
    status, answer, read = call(guard, headers, [b"abc"])
    assert status == 415 and "send application/json" in answer["error"]
    assert read == [] and rejected == [("/score", "content_type")]


def test_a_declared_oversized_body_gets_413_before_any_of_it_is_read(guard: RequestGuard,
                                                                     rejected: list[tuple[str, str]]) -> None:
    status, answer, read = call(guard, {"content-type": "application/json", "content-length": "1000000000"},
                                [b"{"])
    assert status == 413 and "1000000000 bytes" in answer["error"]
    assert read == [] and rejected == [("/score", "too_large")]


def test_a_streamed_body_gets_413_once_it_passes_the_limit(guard: RequestGuard,
                                                           rejected: list[tuple[str, str]]) -> None:
    chunks = [b"x" * 60] * 10
    status, answer, read = call(guard, {"content-type": "application/json", "transfer-encoding": "chunked"},
                                chunks, path="/feedback")
    assert status == 413 and "limit of 100 bytes" in answer["error"]
    assert len(read) == 2 and rejected == [("/feedback", "too_large")]


def test_a_content_length_that_is_not_a_number_gets_400(guard: RequestGuard) -> None:
    status, answer, _ = call(guard, {"content-type": "application/json", "content-length": "12abc"}, [b"{}"])
    assert status == 400 and "Content-Length" in answer["error"]


def test_a_slow_client_gets_408(guard: RequestGuard, rejected: list[tuple[str, str]]) -> None:
    status, answer, _ = call(guard, {"content-type": "application/json", "content-length": "2"}, [b"{}"],
                             delay=1.0)
    assert status == 408 and "did not arrive within 0.3 s" in answer["error"]
    assert rejected == [("/score", "body_timeout")]


def test_other_paths_and_methods_are_not_touched(guard: RequestGuard, rejected: list[tuple[str, str]]) -> None:
    assert call(guard, {"content-type": "text/plain", "content-length": "3"}, [b"abc"], path="/metrics")[0] == 200
    assert call(guard, {"content-type": "text/plain"}, [b""], method="GET")[0] == 200
    assert rejected == []


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer wrong-token", "Basic czNjcjN0", "bearer s3cr3t",
                                           "Bearer s3cr3t ", "Bearer s3cr3"])
def test_protected_paths_need_the_bearer_token_before_their_body_is_read(
        rejected: list[tuple[str, str]], authorization: str | None) -> None:
    guard = RequestGuard(echo, paths={"/score"}, protected={"/feedback", "/reload"}, token="s3cr3t", max_bytes=100,
                         on_reject=lambda path, reason: rejected.append((path, reason)))
    headers = {"content-type": "application/json", "content-length": "2"}
    if authorization is not None:
        headers["authorization"] = authorization
    status, answer, read = call(guard, headers, [b"{}"], path="/feedback")
    assert status == 401 and "Authorization: Bearer" in answer["error"]
    assert read == [] and rejected == [("/feedback", "unauthorized")]
    assert call(guard, {}, [b""], path="/reload")[0] == 401
    # the right token passes, on protected paths only; /score needs none
    assert call(guard, headers | {"authorization": "Bearer s3cr3t"}, [b"{}"], path="/feedback")[:2] == \
        (200, {"length": 2, "body": "{}"})
    assert call(guard, headers, [b"{}"], path="/score")[0] == 200


def test_a_protected_path_without_a_token_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="need a token"):
        RequestGuard(echo, paths={"/score"}, protected={"/reload"}, token="", max_bytes=100)


def test_a_token_function_is_asked_once() -> None:
    asked: list[int] = []
    guard = RequestGuard(echo, paths=set(), protected={"/reload"}, max_bytes=100,
                         token=lambda: asked.append(1) or "t0ken")
    assert asked == []
    for _ in range(3):
        assert call(guard, {"authorization": "Bearer t0ken"}, [b""], path="/reload")[0] == 200
    assert call(guard, {"authorization": "Bearer other"}, [b""], path="/reload")[0] == 401
    assert asked == [1]
