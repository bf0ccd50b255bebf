"""The scorer's amended OpenAPI document: error bodies, status codes, limits, fields and auth as they really are."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import anyio

from fraudops.serving.openapi import ISO_MOMENT, AmendedDocs, amend


def bentoml_doc() -> dict[str, Any]:
    """The parts of BentoML's /docs.json that amend touches."""
    def operation(body: dict[str, Any]) -> dict[str, Any]:
        return {"post": {"responses": {"200": {"content": {"application/json": {"schema": {
            "type": "object", "properties": {"previous": {"type": "string"},
                                             "rollout": {"$ref": "#/components/schemas/RolloutState"}}}}}},
            "400": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/InvalidArgument"}}}},
            "404": {}},
            "requestBody": {"content": {"application/json": {"schema": body}}}}}

    return {"openapi": "3.0.2", "components": {"schemas": {}}, "paths": {
        "/score": operation({"type": "object", "required": ["transactions"],
                             "properties": {"transactions": {"type": "array", "items": {}}}}),
        "/feedback": operation({"type": "object", "required": ["labels"],
                                "properties": {"labels": {"type": "array", "items": {}}}}),
        "/reload": operation({"type": "object", "properties": {}}),
        "/metrics": {"get": {"responses": {"200": {}}}}}}


ROWS = SimpleNamespace(keys=["country", "device_id"], numbers=["age"], time_columns=["purchase_time", "signup_time"],
                       amount="amount", seconds=False)


def test_every_route_documents_its_real_answers_and_auth() -> None:
    doc = amend(bentoml_doc(), max_batch=200, internal=frozenset({"/feedback", "/reload"}), rows=ROWS)
    paths = doc["paths"]
    assert sorted(paths["/score"]["post"]["responses"]) == ["200", "400", "408", "413", "415", "503"]
    assert sorted(paths["/feedback"]["post"]["responses"]) == ["200", "400", "401", "408", "413", "415", "503"]
    assert sorted(paths["/reload"]["post"]["responses"]) == ["200", "400", "401", "408", "409", "413", "415"]
    assert paths["/score"]["post"]["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
    assert "security" not in paths["/score"]["post"]
    assert paths["/feedback"]["post"]["security"] == paths["/reload"]["post"]["security"] == [{"internalToken": []}]
    assert doc["components"]["securitySchemes"]["internalToken"]["scheme"] == "bearer"
    reloaded = paths["/reload"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
    assert reloaded["previous"]["nullable"] is True
    assert reloaded["rollout"] == {"allOf": [{"$ref": "#/components/schemas/RolloutState"}], "nullable": True}
    assert paths["/metrics"] == bentoml_doc()["paths"]["/metrics"]  # BentoML's own routes untouched


def test_bodies_state_the_batch_limits_and_the_fields_of_the_model_serving() -> None:
    doc = amend(bentoml_doc(), max_batch=200, internal=frozenset(), rows=ROWS)
    score = doc["paths"]["/score"]["post"]["requestBody"]
    assert score["required"] is True
    transactions = score["content"]["application/json"]["schema"]["properties"]["transactions"]
    assert (transactions["minItems"], transactions["maxItems"]) == (1, 200)
    item = transactions["items"]
    assert item["required"] == ["purchase_time", "signup_time", "amount"]
    assert item["properties"]["amount"] == {"type": "number", "minimum": 0}
    assert item["properties"]["purchase_time"] == {"type": "string", "pattern": ISO_MOMENT}
    assert item["properties"]["age"] == {"type": "number", "nullable": True}
    labels = doc["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert labels["properties"]["labels"]["items"] == {"$ref": "#/components/schemas/FeedbackLabel"}
    label = doc["components"]["schemas"]["FeedbackLabel"]
    assert set(label["required"]) == {"request_id", "is_fraud", "source"}
    assert label["properties"]["row"]["maximum"] == 99_999
    assert label["properties"]["note"]["nullable"] is True and "anyOf" not in json.dumps(label)
    # before a model is loaded: any object, the service says what is missing
    assert amend(bentoml_doc(), max_batch=5, internal=frozenset(), rows=None)["paths"]["/score"]["post"][
        "requestBody"]["content"]["application/json"]["schema"]["properties"]["transactions"]["items"] == {
        "type": "object"}
    seconds = amend(bentoml_doc(), max_batch=5, internal=frozenset(), rows=SimpleNamespace(**{**vars(ROWS),
                                                                                             "seconds": True}))
    assert seconds["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"]["transactions"]["items"]["properties"]["signup_time"] == {"type": "number", "minimum": 0}


def test_the_middleware_amends_docs_json_only() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = json.dumps({"path": scope["path"]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    middleware = AmendedDocs(app, amend=lambda doc: {**doc, "amended": True})

    def get(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        anyio.run(middleware, {"type": "http", "method": "GET", "path": path, "headers": []}, None, send)
        return dict(sent[0]["headers"]), json.loads(sent[1]["body"])

    headers, body = get("/docs.json")
    assert body == {"path": "/docs.json", "amended": True}
    assert headers[b"content-length"] == str(len(json.dumps(body))).encode()
    assert get("/metrics")[1] == {"path": "/metrics"}
