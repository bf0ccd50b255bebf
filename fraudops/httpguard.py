"""An ASGI middleware in front of the scoring service's JSON endpoints: what the service does not accept is
refused with a 4xx before BentoML parses it (BentoML answered a multipart body without a boundary with a 500).

- a body that is not JSON: 415 (a ``Content-Type`` other than ``application/json``, or none with a body);
- a body over ``max_bytes``: 413, from ``Content-Length`` before any of it is read, or as soon as a streamed
  (chunked) body passes the limit; a ``Content-Length`` that is not a number: 400;
- a client that does not finish sending its body within ``body_seconds``: 408, so that a slow client never
  keeps a request open;
- a request to one of the ``protected`` paths without ``Authorization: Bearer <token>``: 401, before its body is
  read (compared in constant time; ``token`` may be a function, asked at the first protected request).

The body is read here (at most ``max_bytes``) and handed on unchanged.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPES = ("application/json",)


class RequestGuard:
    """Refuses bodies a JSON endpoint does not accept (see the module docstring); ``on_reject(path, reason)`` is
    told about each refusal (reason: unauthorized, content_type, too_large, bad_length, body_timeout)."""

    def __init__(self, app: ASGIApp, *, paths: frozenset[str] | set[str], max_bytes: int,
                 body_seconds: float = 30.0, on_reject: Callable[[str, str], None] | None = None,
                 protected: frozenset[str] | set[str] = frozenset(), token: str | Callable[[], str] = "") -> None:
        if protected and not token:
            raise ValueError("protected paths need a token")
        self.app, self.paths, self.max_bytes = app, frozenset(paths) | frozenset(protected), max_bytes
        self.body_seconds, self.on_reject = body_seconds, on_reject
        self.protected, self._token, self._credentials = frozenset(protected), token, b""

    @property
    def credentials(self) -> bytes:
        """The ``Authorization`` value protected paths need (a token given as a function is asked once)."""
        if not self._credentials:
            token = self._token() if callable(self._token) else self._token
            if not token:
                raise ValueError("protected paths need a token")
            self._credentials = f"Bearer {token}".encode()
        return self._credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if scope["path"] in self.protected and not hmac.compare_digest(headers.get(b"authorization", b""),
                                                                       self.credentials):
            await self._refuse(scope, send, 401, "unauthorized", "this endpoint needs 'Authorization: Bearer "
                               "<token>' with the service's internal token", [(b"www-authenticate", b"Bearer")])
            return
        length_header = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if length_header is not None and not length_header.strip().isdigit():
            await self._refuse(scope, send, 400, "bad_length", "Content-Length is not a number of bytes")
            return
        length = int(length_header) if length_header is not None else 0
        media_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if (length or chunked or media_type) and media_type not in JSON_TYPES:
            shown = media_type or "none"
            await self._refuse(scope, send, 415, "content_type",
                               f"unsupported content type {shown!r}: send application/json")
            return
        if length > self.max_bytes:
            await self._refuse(scope, send, 413, "too_large",
                               f"the body has {length} bytes, more than the limit of {self.max_bytes}")
            return
        body = bytearray()
        try:
            with anyio.fail_after(self.body_seconds):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    if len(body) > self.max_bytes:
                        await self._refuse(scope, send, 413, "too_large",
                                           f"the body is over the limit of {self.max_bytes} bytes")
                        return
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._refuse(scope, send, 408, "body_timeout",
                               f"the body did not arrive within {self.body_seconds:g} s")
            return

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send, status: int, reason: str, message: str,
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
        if self.on_reject is not None:
            self.on_reject(scope["path"], reason)
        payload = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close"), *(headers or [])]})
        await send({"type": "http.response.body", "body": payload})
