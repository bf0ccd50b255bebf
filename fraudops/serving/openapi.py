"""The scorer's OpenAPI document as it really behaves: BentoML's /docs.json, amended.

BentoML documents every API with a generic 400 body, untyped request lists and no authentication. Clients and
fuzzers (schemathesis) need the truth: the error body every 4xx/503 has, which status codes each route answers,
the batch limits, the feedback label and transaction fields, and the bearer token of the internal routes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, MutableMapping
from typing import Any

from fraudops.serving.api import FeedbackLabel
from fraudops.serving.errors import MAX_DETAIL
from fraudops.serving.rows import RowSchema

SECURITY = "internalToken"
# dates the service reads whatever the model (years 1900-2099, days 1-28: every generated example is valid)
ISO_MOMENT = r"^(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?Z$"
ERROR = {
    "type": "object", "required": ["error"], "description": "What was refused and why",
    "properties": {
        "error": {"type": "string", "description": "summary"},
        "detail": {"type": "array", "maxItems": MAX_DETAIL, "description": "each bad row and field (400); pydantic's "
                   "errors when BentoML refuses the body's shape", "items": {"anyOf": [
                       {"$ref": "#/components/schemas/Problem"},
                       {"type": "object", "required": ["loc", "msg", "type"], "properties": {
                           "loc": {"type": "array"}, "msg": {"type": "string"}, "type": {"type": "string"}}}]}},
        "omitted": {"type": "integer", "minimum": 1, "description": "problems beyond those listed"},
        "model_tag": {"type": "string", "nullable": True, "description": "model still serving (409)"},
    },
}
PROBLEM = {
    "type": "object", "required": ["row", "field", "reason", "problem", "value"],
    "properties": {"row": {"type": "integer", "nullable": True}, "field": {"type": "string", "nullable": True},
                   "reason": {"type": "string"}, "problem": {"type": "string"},
                   "value": {"type": "string", "nullable": True}},
}
STATUS = {400: "invalid request (every bad row and field named)", 401: "no or wrong internal token",
          408: "the body did not arrive in time", 409: "the model cannot be served; the old one keeps serving",
          413: "body or batch over the limit", 415: "the body is not JSON", 503: "no model loaded, or the "
          "prediction log cannot take more rows"}
ROUTES = {"/score": (400, 408, 413, 415, 503), "/feedback": (400, 401, 408, 413, 415, 503),
          "/reload": (400, 401, 408, 409, 413, 415)}


def amend(doc: dict[str, Any], *, max_batch: int, internal: frozenset[str], rows: RowSchema | None) -> dict[str, Any]:
    """A copy of BentoML's document with the service's real contract (``rows``: the serving model's schema)."""
    doc = copy.deepcopy(doc)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"], schemas["Problem"] = ERROR, PROBLEM
    schemas["FeedbackLabel"] = label = _openapi30(FeedbackLabel.model_json_schema())
    label["properties"]["observed_at"].update(pattern=ISO_MOMENT)
    doc["components"].setdefault("securitySchemes", {})[SECURITY] = {
        "type": "http", "scheme": "bearer", "description": "the scorer's internal token (FRAUDOPS_INTERNAL_TOKEN)"}
    for route, statuses in ROUTES.items():
        operation = doc["paths"].get(route, {}).get("post")
        if operation is None:
            continue
        responses = operation["responses"]
        responses.pop("404", None)  # the route exists
        for status in statuses:
            responses[str(status)] = {"description": STATUS[status], "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        if route in internal:
            operation["security"] = [{SECURITY: []}]
        request = operation.get("requestBody", {})
        body = request.get("content", {}).get("application/json", {}).get("schema", {})
        if body.get("required"):
            request["required"] = True
        for name, items in (("transactions", _transaction(rows)), ("labels", {"$ref": "#/components/schemas/"
                                                                                     "FeedbackLabel"})):
            if name in body.get("properties", {}):
                body["properties"][name].update(minItems=1, maxItems=max_batch, items=items)
    reload = doc["paths"].get("/reload", {}).get("post")
    if reload:
        schema = reload["responses"]["200"]["content"]["application/json"]["schema"]
        schema["properties"]["previous"]["nullable"] = True  # BentoML drops the None of optional fields
        rollout = schema["properties"].get("rollout")
        if rollout is not None:
            ref = {k: rollout.pop(k) for k in list(rollout) if k == "$ref"}
            schema["properties"]["rollout"] = {**rollout, **({"allOf": [ref]} if ref else {}), "nullable": True}
    return doc


def _transaction(rows: RowSchema | None) -> dict[str, Any]:
    """One transaction's fields for the model serving now (any object before a model is loaded)."""
    if rows is None:
        return {"type": "object"}
    key = {"oneOf": [{"type": "string"}, {"type": "number"}], "nullable": True}  # 7, 7.0 and "7": one key
    props: dict[str, Any] = {name: key for name in rows.keys}
    props.update({name: {"type": "number", "nullable": True} for name in rows.numbers})
    time = {"type": "number", "minimum": 0} if rows.seconds else {"type": "string", "pattern": ISO_MOMENT}
    props.update({name: time for name in rows.time_columns})
    required = list(rows.time_columns)
    if rows.amount:
        props[rows.amount] = {"type": "number", "minimum": 0}
        required.append(rows.amount)
    return {"type": "object", "properties": props, "required": required}


def _openapi30(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema in OpenAPI 3.0 terms: ``anyOf [X, null]`` becomes ``X`` + ``nullable``."""
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            options = node.get("anyOf")
            if options and {"type": "null"} in options and len(options) == 2:
                (other,) = [o for o in options if o != {"type": "null"}]
                node = {**{k: v for k, v in node.items() if k != "anyOf"}, **other, "nullable": True}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


Scope = MutableMapping[str, Any]


class AmendedDocs:
    """ASGI middleware answering ``GET /docs.json`` with `amend` applied to BentoML's own document."""

    def __init__(self, app: Any, *, amend: Callable[[dict[str, Any]], dict[str, Any]],
                 path: str = "/docs.json") -> None:
        self.app, self.amend, self.path = app, amend, path

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        body = bytearray()

        async def keep(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                body.extend(message.get("body", b""))

        await self.app(scope, receive, keep)
        payload = bytes(body)
        if start.get("status") == 200:
            payload = json.dumps(self.amend(json.loads(payload))).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
