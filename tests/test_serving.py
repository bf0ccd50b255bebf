"""Scoring logic without HTTP: settings, validation, features, decisions, reason codes, model swap, log, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import math
import os
import queue
import re
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry
from pydantic_core import PydanticCustomError

from fraudops import steps
from fraudops.bundle import ModelBundle
from fraudops.data.synthetic import generate_transactions
from fraudops.decisions import Bands
from fraudops.errors import ConfigError, RegistryError
from fraudops.online_store import RedisStore, StoreUnavailable
from fraudops.predlog import LogWriter, read_feedback, read_predictions
from fraudops.registry import Registry
from fraudops.schema import SYNTHETIC, DatasetSpec
from fraudops.serving import (
    ModelLoadError,
    ModelSource,
    NotReadyError,
    RequestError,
    Scorer,
    ScoreResponse,
    ScorerMetrics,
    ServedModel,
    ServingConfig,
    packaged_model_tag,
    reason_codes,
)
from fraudops.serving.challenger import bucket
from fraudops.serving.rows import _TimeReader
from fraudops.serving.scorer import THREAD_ROWS
from fraudops.serving.siblings import Siblings
from fraudops.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def as_requests(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a client sends them: JSON types, ISO 8601 times, no label."""
    return json.loads(frame.drop(columns=["is_fraud"]).to_json(orient="records", date_format="iso"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Any]:
    """A registry with model A (champion) and model B (registered), plus new traffic as raw requests."""
    root = tmp_path_factory.mktemp("serving")
    registry = Registry(home=root / "home")
    tags = []
    for name, seed, config in (("a", 3, TrainConfig(iterations=60)), ("b", 4, TrainConfig(iterations=40, depth=4))):
        generate_transactions(4000, seed=seed).to_parquet(root / f"{name}.parquet")
        result = steps.train_to_directory(str(root / f"{name}.parquet"), root / name, None, config, registry=registry)
        tags.append(result["tag"])
    if registry.champion() != tags[0]:
        registry.promote(tags[0], reason="tests start from model A")
    history = generate_transactions(4000, seed=3)
    new = generate_transactions(1500, seed=5, start="2026-01-20", days=15)
    return {"home": root / "home", "a": tags[0], "b": tags[1], "requests": as_requests(new),
            "history": as_requests(history)}


@pytest.fixture
def home(trained, tmp_path) -> Path:
    """A private copy of the registry (tests move the champion pointer)."""
    return Path(shutil.copytree(trained["home"], tmp_path / "home"))


def make_scorer(home: Path, tmp_path: Path, registry: CollectorRegistry | None = None,
                siblings: Siblings | None = None, **settings: Any) -> Scorer:
    config = ServingConfig(prediction_log=str(tmp_path / "log"), poll_seconds=settings.pop("poll_seconds", 0),
                           **settings)
    writer = LogWriter(config.prediction_log, flush_seconds=60)
    return Scorer(config, ModelSource(registry=Registry(home=home)), writer,
                  ScorerMetrics(registry or CollectorRegistry()), siblings)


@pytest.fixture
def scorer(home, tmp_path):
    scorer = make_scorer(home, tmp_path)
    scorer.reload()
    yield scorer
    scorer.close()


def valid(**changes: Any) -> dict[str, Any]:
    row = {"transaction_id": "t-1", "user_id": "u1", "signup_time": "2026-01-02T10:00:00Z",
           "purchase_time": "2026-01-31T12:00:00+01:00", "amount": 59.9, "device_id": "DEV", "ip_address": "1.2.3.4",
           "country": "GB", "source": "Ads", "browser": "Chrome", "category": "electronics", "payment_method": "card"}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


# -- settings and decisions ---------------------------------------------------------------------------------------
def test_settings_come_from_the_environment(monkeypatch):
    def config(**env: str) -> ServingConfig:
        for name in [n for n in os.environ if n.startswith("FRAUDOPS_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return ServingConfig.from_env()

    got = config(FRAUDOPS_MAX_BATCH="50", FRAUDOPS_REVIEW_FACTOR=" 0.25 ", FRAUDOPS_POLL_SECONDS="0",
                 FRAUDOPS_MODEL_TAG="", FRAUDOPS_SCHEMA="ecommerce", OTHER="x")
    assert (got.max_batch, got.review_factor, got.poll_seconds, got.model_tag, got.dataset) == \
        (50, 0.25, 0, "champion", "ecommerce")
    with pytest.raises(ConfigError, match="FRAUDOPS_MAX_BATCH: Input should be greater than or equal to 1"):
        config(FRAUDOPS_MAX_BATCH="0")
    with pytest.raises(ConfigError, match="FRAUDOPS_POLL_SECONDS: Input should be a valid number"):
        config(FRAUDOPS_POLL_SECONDS="often")
    with pytest.raises(ConfigError, match=r"review_factor \(0.9\) must not exceed decline_factor \(0.8\)"):
        config(FRAUDOPS_REVIEW_FACTOR="0.9", FRAUDOPS_DECLINE_FACTOR="0.8")
    with pytest.raises(ConfigError, match="cannot read dataset config"):
        config(FRAUDOPS_SCHEMA="/no/such/schema.yaml").service_spec()


def test_decision_bands_around_the_threshold():
    bands = Bands.around(0.6, review_factor=0.5, decline_factor=1.0)
    assert (bands.review, bands.decline) == (0.3, 0.6)
    assert bands.decide([0.0, 0.29, 0.3, 0.59, 0.6, 1.0]) == ["approve", "approve", "review", "review", "decline",
                                                              "decline"]
    assert Bands.around(0.6, 1.0, 1.0).decide([0.59, 0.6]) == ["approve", "decline"]  # no review band


# -- validation -------------------------------------------------------------------------------------------------
def test_times_with_offsets_are_the_same_instant_in_utc_nanoseconds():
    parse = _TimeReader(None).one
    noon = pd.Timestamp("2026-01-31T12:00:00.000001").value
    assert parse("2026-01-31T12:00:00.000001") == parse("2026-01-31T12:00:00.000001Z") == noon
    assert parse("2026-01-31T13:30:00.000001+01:30") == parse("2026-01-31T06:00:00.000001-06:00") == noon
    # the supported years are those of the instant in UTC
    assert parse("2262-01-01T00:30:00+01:00") == pd.Timestamp("2261-12-31T23:30:00").value
    assert parse("1677-12-31T23:30:00-01:00") == pd.Timestamp("1678-01-01T00:30:00").value
    for outside in ("2262-01-01T00:00:00Z", "2261-12-31T23:30:00-01:00", "1678-01-01T00:30:00+01:00"):
        with pytest.raises(PydanticCustomError, match="outside the supported years"):
            parse(outside)
        with pytest.raises(ValueError):
            _TimeReader(None).column(["2026-01-31T12:00:00", outside])


@pytest.mark.parametrize(("row", "field", "reason", "problem"), [
    (valid(amount=...), "amount", "missing", "is required"),
    (valid(purchase_time=...), "purchase_time", "missing", "is required"),
    (valid(amount="12.5"), "amount", "wrong_type", "must be a number"),
    (valid(amount=True), "amount", "wrong_type", "must be a number"),
    (valid(amount=math.nan), "amount", "not_finite", "must be a finite number"),
    (valid(amount=math.inf), "amount", "not_finite", "must be a finite number"),
    (valid(amount=-0.01), "amount", "negative", "must not be negative"),
    (valid(purchase_time="31/01/2026"), "purchase_time", "bad_time", "cannot be read as an ISO 8601 date-time"),
    (valid(purchase_time=1767225600), "purchase_time", "bad_time", "must be an ISO 8601 date-time string"),
    (valid(signup_time="3026-01-01T00:00:00"), "signup_time", "bad_time", "is outside the supported years"),
    (valid(signup_time="0001-01-01T00:00:00+01:00"), "signup_time", "bad_time", "is outside the supported years"),
    (valid(signup_time="2026-02-01T00:00:00Z"), "signup_time", "time_order", "must not be after purchase_time"),
    (valid(country=["GB"]), "country", "wrong_type", "must be a string"),
    (valid(device_id=False), "device_id", "wrong_type", "must be a string"),
    ("not a transaction", None, "not_object", "must be a JSON object"),
])
def test_each_invalid_field_is_named_with_its_row_and_problem(scorer, row, field, reason, problem):
    with pytest.raises(RequestError) as caught:
        scorer.score([valid(), valid(), row])
    (found,) = caught.value.problems
    assert (found.row, found.field, found.reason) == (2, field, reason)
    assert problem in found.problem
    body = caught.value.body()
    assert caught.value.status == 400
    assert body["detail"][0]["row"] == 2 and body["detail"][0]["field"] == field
    assert f"row 2{' ' + field if field else ''}: {problem}" in body["error"]


def test_every_problem_is_reported_and_counted(home, tmp_path):
    metrics = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, metrics)
    scorer.reload()
    bad = [valid(amount=-1, country={"code": "GB"}), valid(purchase_time=...)] * 40
    with pytest.raises(RequestError) as caught:
        scorer.score(bad)
    scorer.close()
    assert len(caught.value.problems) == 120
    body = caught.value.body()
    assert len(body["detail"]) == 50 and body["omitted"] == 70
    assert body["error"].startswith("invalid request: row 0 country: must be a string (or an integer id) (got {")
    assert body["error"].endswith("and 117 more")

    def sample(name: str, **labels: str) -> float | None:
        return metrics.get_sample_value(name, labels)

    assert sample("fraudops_scorer_validation_errors_total", reason="negative") == 40
    assert sample("fraudops_scorer_validation_errors_total", reason="wrong_type") == 40
    assert sample("fraudops_scorer_validation_errors_total", reason="missing") == 40
    assert sample("fraudops_scorer_requests_total", endpoint="score", outcome="invalid") == 1


@pytest.mark.parametrize(("batch", "status", "reason"), [([], 400, "batch_empty"), ([valid()] * 6, 413,
                                                                                     "batch_too_large"),
                                                         ({"amount": 1}, 400, "wrong_type")])
def test_batch_size_limits(home, tmp_path, batch, status, reason):
    scorer = make_scorer(home, tmp_path, max_batch=5)
    scorer.reload()
    with pytest.raises(RequestError) as caught:
        scorer.score(batch)
    scorer.close()
    (problem,) = caught.value.problems
    assert (caught.value.status, problem.row, problem.field, problem.reason) == (status, None, "transactions", reason)
    if reason == "batch_too_large":
        assert "holds 6 items, more than the limit of 5 (FRAUDOPS_MAX_BATCH)" in str(caught.value)


def test_unknown_categories_extra_fields_integer_ids_and_missing_optionals_are_valid(scorer):
    rows = [valid(country="Atlantis", browser="NetscapeNavigator", channel="kiosk", user_id=12345, device_id=7.0),
            {"purchase_time": "2026-01-31T12:00:00", "signup_time": "2026-01-31", "amount": 0}]
    body = scorer.score(rows)
    ScoreResponse.model_validate(body)
    assert [r["row"] for r in body["results"]] == [0, 1]
    assert body["results"][0]["transaction_id"] == "t-1" and "transaction_id" not in body["results"][1]
    normalised = scorer.model.schema.validate(rows)
    assert [normalised[0][c] for c in ("user_id", "device_id", "country")] == ["12345", "7", "Atlantis"]
    assert "country" not in normalised[1] and "channel" not in normalised[0]


def test_keys_spelled_as_usual_take_the_plain_validation_with_the_same_result(scorer):
    """`RowSchema` first validates without a Python call per key; a key it cannot take that way (or a bad row) sends
    the batch to the full validation. Both give the same rows, for every spelling."""
    from pydantic import ValidationError

    schema = scorer.model.schema
    spellings = ["dev-1", "154.124.159.0", "10.0.0.0", "1.5.0", "a.0", "-.0", "--1.0", "1-2.0", "12..0", "x\n1.0",
                 "٣.0", "7.0", "-7.0", "07.0", ".0", "0", "", "é", "10", 7, -3, 2**70, 7.0, -3.0, 7.5, math.nan, None,
                 True]
    plain = 0
    for value in spellings:
        rows = [valid(device_id=value, user_id=value)]
        try:
            full = schema.adapter.validate_python(copy.deepcopy(rows))
        except ValidationError:
            full = None
        try:
            fast = schema._plain_rows(copy.deepcopy(rows))
        except ValidationError:
            fast = None
        if fast is not None:
            plain += 1
            assert fast == full, value
        if full is not None:
            assert schema.validate(copy.deepcopy(rows)) == full, value
    assert plain == 15  # the 11 texts key_text leaves alone, the 3 integers and None
    assert schema._plain_rows([valid()]) == schema.validate([valid()])


def test_times_read_column_by_column_equal_the_validators_reading(scorer):
    """The plain validation reads a batch's times after pydantic's pass: the same nanoseconds as the validator of
    the full one, for every spelling; a time it cannot read sends the batch to the full validation."""
    schema = scorer.model.schema
    spellings = ["2026-01-31T12:00:00", "2026-01-31T12:00:00Z", "2026-01-31 12:00:00.5", "2026-01-31T13:30:00+01:30",
                 "2026-01-31", "20260131T120000", "2026-01-31T12:00:00.123456-06:00", "1678-01-01T00:00:00.000001"]
    rows = [valid(purchase_time=time, signup_time="1678-01-01T00:00:00.000001") for time in spellings]
    assert schema._plain_rows(copy.deepcopy(rows)) == schema.adapter.validate_python(copy.deepcopy(rows))
    for bad in ("31/01/2026", "2262-01-01T00:00:00Z"):
        with pytest.raises(ValueError):
            schema._plain_rows([*copy.deepcopy(rows), valid(purchase_time=bad)])


# -- features and scores --------------------------------------------------------------------------------------
def test_row_path_features_equal_the_frame_path(scorer, trained):
    """The scorer's row adapters (validated rows) give the features of the frame adapters (`bundle.features`),
    row and entity features alike, on many rows: new and known entities, odd spellings, missing fields."""
    bundle = scorer.model.bundle
    rng = np.random.default_rng(0)
    # new entities and ones seen in training; copies: the shared fixture's rows stay as they are
    rows = copy.deepcopy(trained["requests"] + trained["history"][:1500])
    for i, row in enumerate(rows[:400]):  # optional fields missing, odd spellings of keys and times
        if i % 4 == 0:
            row.pop(["country", "device_id", "user_id", "browser"][i % 16 // 4], None)
        if i % 4 == 1:
            row["device_id"] = ["7.0", 7, -3.0, "", None][int(rng.integers(5))]
        if i % 4 == 2:
            row["purchase_time"] = pd.Timestamp(row["purchase_time"]).tz_localize("UTC").tz_convert(
                "Asia/Kolkata").isoformat()
    served = scorer.model.run(scorer.model.schema.validate(rows))
    canonical = bundle.features(pd.DataFrame(rows))
    assert list(served.features) == bundle.feature_names == list(canonical.columns)
    for name in bundle.feature_names:
        column = list(served.features[name])
        if name in bundle.state.categorical_features:
            assert column == canonical[name].astype(str).tolist(), name
        else:
            np.testing.assert_array_equal(np.array(column, dtype="float64"), canonical[name].to_numpy("float64"),
                                          err_msg=name)
    # the rows did exercise entities known to the snapshot and entities repeated within the batch
    assert canonical["device_id__accounts_all"].gt(0).any() and canonical["user_id__count_all"].gt(0).any()
    assert canonical["ip_address__count_1h"].gt(0).any() and canonical["device_id__first_seen"].eq(1).any()


def test_served_scores_and_reasons_equal_the_models_on_a_frame(scorer, trained):
    """The service's pool (numbers and categories as matrices, matched to the model's features by name) scores and
    explains exactly as the model does on a DataFrame in training order, for a batch and for one row."""
    served_model = scorer.model
    bundle = served_model.bundle
    for rows in (trained["requests"][:300], trained["requests"][:1]):
        served = served_model.run(served_model.schema.validate(copy.deepcopy(rows)), explain=True, reasons=5)
        frame = bundle.features(pd.DataFrame(rows))
        assert served.scores == bundle.score_features(frame).tolist()
        shap = bundle.model.get_feature_importance(bundle.pool(frame), type="ShapValues")[:, :-1]
        top = np.argsort(-shap, axis=1, kind="stable")[:, :5]
        assert [[r["feature"] for r in reasons] for reasons in served.reasons] == [
            [bundle.feature_names[j] for j in row] for row in top]
        np.testing.assert_allclose([[r["contribution"] for r in reasons] for reasons in served.reasons],
                                   np.take_along_axis(shap, top, axis=1), rtol=1e-12)
        categories = [bundle.feature_names.index(c) for c in bundle.state.categorical_features]
        assert categories and np.abs(shap[:, categories]).sum() > 0  # the categories, first in training, count


@pytest.mark.parametrize("kind", ["time_format", "seconds"])
def test_models_with_formatted_or_second_offset_times_are_served_like_the_canonical_function(tmp_path, kind):
    frame = generate_transactions(2500, seed=8)
    spec = SYNTHETIC.model_dump()
    if kind == "time_format":
        spec.update(name="formatted", time_format="%m/%d/%Y %H:%M")
        for col in ("purchase_time", "signup_time"):
            frame[col] = frame[col].dt.strftime(spec["time_format"])
    else:  # like IEEE-CIS: seconds from an undisclosed origin, no signup time
        spec.update(name="seconds", signup_time=None)
        frame["purchase_time"] = (frame["purchase_time"] - pd.Timestamp("2025-12-01")).dt.total_seconds()
        frame = frame.drop(columns=["signup_time"])
    spec = DatasetSpec.model_validate(spec)
    frame.to_parquet(tmp_path / "data.parquet")
    steps.train_to_directory(str(tmp_path / "data.parquet"), tmp_path / "out", spec, TrainConfig(iterations=30))
    bundle = ModelBundle.load(tmp_path / "out" / "model")
    served = ServedModel.build("m:1", bundle, ServingConfig(), spec)
    assert served.entities is not None and served.entities.live is None
    assert served.schema.seconds == (kind == "seconds")
    rows = as_requests(frame.tail(400))
    np.testing.assert_array_equal(served.run(served.schema.validate(rows)).scores, bundle.score(pd.DataFrame(rows)))
    with pytest.raises(RequestError, match="purchase_time: "):
        served.schema.validate([{**rows[0], "purchase_time": "2026-01-31T12:00:00Z" if kind == "seconds"
                                 else "2026-01-31T12:00:00"}])


def test_service_scores_equal_the_bundle_scores(scorer, trained):
    rows = trained["requests"][:900]
    expected = scorer.model.bundle.score(pd.DataFrame(rows))
    got = [r["score"] for r in scorer.score(rows)["results"]]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    single = [scorer.score([row])["results"][0]["score"] for row in rows[:20]]  # each alone against the snapshot
    alone = [scorer.model.bundle.score(pd.DataFrame([row]))[0] for row in rows[:20]]
    np.testing.assert_allclose(single, alone, rtol=0, atol=1e-12)


def test_reason_codes_rank_contributions():
    contributions = np.array([[0.1, -2.0, 0.7, 0.3], [-0.5, -0.1, -0.2, -0.3]])
    features = {"a": ["x", "y"], "b": [1.0, math.nan], "c": [2.0, 3.0], "d": [np.float64(4.0), 5.0]}
    codes = reason_codes(contributions, ["a", "b", "c", "d"], features, k=2)
    assert codes[0] == [{"feature": "c", "value": 2.0, "contribution": 0.7},
                        {"feature": "d", "value": 4.0, "contribution": 0.3}]
    assert [c["feature"] for c in codes[1]] == ["b", "c"] and codes[1][0]["value"] is None


def test_explain_adds_the_top_reasons_from_shap_values(home, tmp_path, trained):
    scorer = make_scorer(home, tmp_path, reasons=4)
    scorer.reload()
    rows = trained["requests"][:50]
    body = scorer.score(rows, explain=True)
    plain = scorer.score(rows)
    scorer.close()
    ScoreResponse.model_validate(body)
    names = set(scorer.model.feature_names)
    for item, same in zip(body["results"], plain["results"], strict=True):
        assert item["score"] == same["score"] and "reasons" not in same
        contributions = [r["contribution"] for r in item["reasons"]]
        assert len(contributions) == 4 and contributions == sorted(contributions, reverse=True)
        assert {r["feature"] for r in item["reasons"]} <= names
        assert list(item["features"]) == scorer.model.feature_names and "features" not in same
        for reason in item["reasons"]:
            assert item["features"][reason["feature"]] == reason["value"]
    first = scorer.model.bundle.features(pd.DataFrame(rows)).iloc[0]
    assert body["results"][0]["features"]["device_id__count_24h"] == first["device_id__count_24h"]
    assert body["results"][0]["features"]["country"] == rows[0]["country"]
    assert "features_fallback" not in body
    flagged = [i for i in body["results"] if i["decision"] != "approve"]
    assert flagged and all(i["reasons"][0]["contribution"] > 0 for i in flagged)


# -- model lifecycle --------------------------------------------------------------------------------------------
def test_swap_under_load_fails_no_request(home, tmp_path, trained):
    scorer = make_scorer(home, tmp_path)
    scorer.reload()
    rows = trained["requests"]
    seen: list[tuple[float, str]] = []
    failures: list[Exception] = []
    stop = threading.Event()

    def hammer(offset: int) -> None:
        i = offset
        while not stop.is_set():
            started = time.monotonic()
            try:
                seen.append((started, scorer.score(rows[i % len(rows): i % len(rows) + 3])["model_tag"]))
            except Exception as exc:
                failures.append(exc)
            i += 7

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    Registry(home=home).promote(trained["b"], reason="test")
    result = scorer.reload()
    switched = time.monotonic()
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join()
    scorer.close()
    assert failures == []
    assert result == {"model_tag": trained["b"], "previous": trained["a"], "changed": True, "rollout": None}
    assert {tag for _, tag in seen} == {trained["a"], trained["b"]}
    assert {tag for started, tag in seen if started > switched} == {trained["b"]}
    assert scorer.reload()["changed"] is False


def test_a_reload_names_the_workers_it_could_not_reach(home, tmp_path, trained, caplog, monkeypatch):
    """Workers that cannot share their directory (a read-only home) or ask each other (a full disk) still serve and
    reload themselves, and the answer says the others may not have; a sibling's failed reload is an answer."""
    (tmp_path / "file").write_text("")
    alone = make_scorer(home, tmp_path / "alone", workers=2, siblings=Siblings(tmp_path / "file"))
    alone.start()
    assert alone.ready and "POST /reload reaches only the worker that takes it" in caplog.text
    Registry(home=home).promote(trained["b"], reason="test")
    result = alone.reload_everywhere()
    alone.close()
    assert result["model_tag"] == trained["b"] and result["changed"]
    assert result["workers"]["serving"] == 1 and result["workers"]["total"] == 2
    assert re.fullmatch(r"cannot share .*file/\S+ with the other workers: .+", result["workers"]["errors"]["siblings"])

    siblings = Siblings(tmp_path / "workers")
    full = make_scorer(home, tmp_path / "full", workers=2, siblings=siblings)
    full.start()

    def no_space(action: str, timeout: float) -> dict[str, Any]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(siblings, "ask", no_space)
    assert full.reload_everywhere()["workers"] == {
        "serving": 1, "total": 2, "errors": {"siblings": f"cannot ask the other workers through {siblings.root}: "
                                                         "[Errno 28] No space left on device"}}
    monkeypatch.setattr(full, "reload", lambda: {}["model_tag"])
    assert full._reload_answer() == {"error": "KeyError: 'model_tag'"}
    full.close()


def test_a_model_that_fails_to_load_leaves_the_current_one_serving(home, tmp_path, trained, caplog):
    metrics = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, metrics)
    scorer.reload()
    registry = Registry(home=home)
    (registry.path(trained["b"]) / "model.cbm").write_bytes(b"corrupt")
    registry.promote(trained["b"], reason="test")
    with pytest.raises(ModelLoadError, match=f"cannot serve model {trained['b']}"):
        scorer.reload()
    assert scorer.model.tag == trained["a"] and scorer.ready
    assert scorer.score([valid()])["model_tag"] == trained["a"]
    assert f"still serving {trained['a']}" in caplog.text
    assert metrics.get_sample_value("fraudops_scorer_model_loads_total", {"outcome": "failed"}) == 1
    assert metrics.get_sample_value("fraudops_scorer_model_info", {"model_tag": trained["a"],
                                                                   "trained_at": scorer.model.trained_at}) == 1
    scorer.close()


def test_without_a_model_the_scorer_is_unready_until_one_is_promoted(tmp_path, trained, caplog):
    empty = tmp_path / "empty-home"
    scorer = make_scorer(empty, tmp_path)
    scorer.start()
    assert not scorer.ready
    assert "there is no champion yet" in scorer.error and "the service stays unready" in caplog.text
    with pytest.raises(NotReadyError, match="no model is loaded"):
        scorer.score([valid()])
    shutil.copytree(trained["home"], empty, dirs_exist_ok=True)
    scorer.reload()
    assert scorer.ready and scorer.error is None
    scorer.close()


def test_a_model_for_another_schema_is_refused(home, tmp_path):
    scorer = make_scorer(home, tmp_path, dataset="ecommerce")
    with pytest.raises(ModelLoadError, match=r"does not match the service's \(ecommerce, FRAUDOPS_SCHEMA\): "
                                             r"amount: model 'amount', service 'purchase_value'"):
        scorer.reload()
    assert not scorer.ready
    scorer.close()


def test_the_poll_follows_the_champion_pointer(home, tmp_path, trained):
    scorer = make_scorer(home, tmp_path, poll_seconds=0.1)
    scorer.start()
    assert scorer.model.tag == trained["a"]
    Registry(home=home).promote(trained["b"], reason="test")
    deadline = time.monotonic() + 10
    while scorer.model.tag != trained["b"] and time.monotonic() < deadline:
        time.sleep(0.05)
    scorer.close()
    assert scorer.model.tag == trained["b"]


def test_model_sources(home, tmp_path, trained):
    assert packaged_model_tag(registry=Registry(home=home)) == trained["a"]
    assert packaged_model_tag(trained["b"], registry=Registry(home=home)) == trained["b"]
    assert packaged_model_tag(registry=Registry(home=tmp_path / "empty")) is None
    # a champion only the object store holds (a new scorer pod) is not declared: BentoML could not find it
    published = Registry(home=home, remote=str(tmp_path / "bucket"))
    published._upload(trained["a"])
    published.promote(trained["a"], reason="publish")
    fresh = Registry(home=tmp_path / "fresh", remote=str(tmp_path / "bucket"))
    assert fresh.resolve("champion") == trained["a"]
    assert packaged_model_tag(registry=fresh) is None
    tag, path, _rollout = ModelSource(registry=Registry(home=home)).locate()
    assert tag == trained["a"] and (path / "model.cbm").exists()
    with pytest.raises(RegistryError, match="there is no champion yet"):
        ModelSource(registry=Registry(home=tmp_path / "empty")).locate()
    with pytest.raises(RegistryError, match=f"{trained['a']} is in neither the registry nor BentoML's model store"):
        ModelSource(registry=Registry(home=tmp_path / "empty"), packaged=trained["a"]).locate()



@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"row": 5_743_816_658}, "row", "less_than_equal"),  # answered 500 (int32 overflow) before the fuzzer found it
    ({"observed_at": "9999-12-31T23:59:59Z"}, "observed_at", "bad_time"),  # 500: beyond pandas' nanoseconds
    ({"observed_at": 1767225600}, "observed_at", "wrong_type"),  # seconds or milliseconds? text only
    ({"observed_at": "2026-02-20T10:00:00"}, "observed_at", "timezone_aware"),
])
def test_labels_the_log_cannot_hold_are_refused_not_failed(scorer, change, field, reason):
    label = {"request_id": "0" * 32, "row": 0, "is_fraud": True, "source": "chargeback", **change}
    with pytest.raises(RequestError) as caught:
        scorer.feedback([label])
    assert [(p.field, p.reason) for p in caught.value.problems] == [(field, reason)]

# -- log and metrics --------------------------------------------------------------------------------------------
def test_every_scored_row_and_every_label_is_logged(home, tmp_path, trained):
    scorer = make_scorer(home, tmp_path)
    scorer.reload()
    first = scorer.score(trained["requests"][:250])
    second = scorer.score(trained["requests"][250:251], explain=True)
    scorer.feedback([{"request_id": first["request_id"], "row": 3, "is_fraud": True, "source": "chargeback",
                      "observed_at": "2026-02-20T10:00:00Z"},
                     {"request_id": second["request_id"], "is_fraud": False, "source": "manual_review",
                      "note": "customer confirmed"}])
    with pytest.raises(RequestError) as caught:
        scorer.feedback([{"request_id": "abc", "is_fraud": "yes", "source": "rumour", "extra": 1}])
    scorer.close()
    assert sorted((p.row, p.field, p.reason) for p in caught.value.problems) == [
        (0, "extra", "unknown_field"), (0, "is_fraud", "wrong_type"), (0, "request_id", "bad_format"),
        (0, "source", "not_allowed")]

    log = read_predictions(str(tmp_path / "log"))
    assert len(log) == 251 and log.attrs["corrupt_parts"] == 0
    assert log.groupby("request_id").size().to_dict() == {first["request_id"]: 250, second["request_id"]: 1}
    mine = log[log["request_id"] == first["request_id"]].sort_values("row")
    np.testing.assert_array_equal(mine["score"], [r["score"] for r in first["results"]])
    assert mine["decision"].tolist() == [r["decision"] for r in first["results"]]
    assert set(scorer.model.feature_names) <= set(log.columns)
    assert json.loads(mine["input"].iloc[0]) == trained["requests"][0]
    assert mine["transaction_id"].iloc[0] == trained["requests"][0]["transaction_id"]
    assert mine["purchase_time"].iloc[0] == pd.Timestamp(trained["requests"][0]["purchase_time"])
    assert (mine["model_tag"] == trained["a"]).all()
    # the decision bands each row was decided with travel in the log (the drift job reads them there)
    assert (mine["review_threshold"] == first["thresholds"]["review"]).all()
    assert (mine["decline_threshold"] == first["thresholds"]["decline"]).all()

    labels = read_feedback(str(tmp_path / "log"))
    assert labels[["row", "is_fraud", "source"]].values.tolist() == [[3, True, "chargeback"], [0, False,
                                                                                                "manual_review"]]
    assert labels["observed_at"].iloc[0] == pd.Timestamp("2026-02-20T10:00:00Z")


def test_metrics_count_requests_rows_scores_and_decisions(home, tmp_path, trained):
    metrics = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, metrics)
    scorer.reload()
    body = scorer.score(trained["requests"][:120])
    scorer.close()
    decisions = pd.Series([r["decision"] for r in body["results"]]).value_counts()

    def sample(name: str, **labels: str) -> float | None:
        return metrics.get_sample_value(name, labels)

    assert sample("fraudops_scorer_rows_scored_total") == 120
    assert sample("fraudops_scorer_score_count") == 120
    assert sample("fraudops_scorer_requests_total", endpoint="score", outcome="ok") == 1
    assert sample("fraudops_scorer_request_latency_seconds_count", endpoint="score") == 1
    for decision in ("approve", "review", "decline"):
        assert sample("fraudops_scorer_decisions_total", decision=decision) == decisions.get(decision, 0)
    assert sample("fraudops_scorer_model_info", model_tag=trained["a"], trained_at=scorer.model.trained_at) == 1


def test_the_metric_table_lists_exactly_the_metrics_defined():
    documented = set(re.findall(r"^\| `(fraudops_scorer_\w+)`", (REPO / "services" / "scorer.py").read_text(),
                                flags=re.MULTILINE))
    metrics = ScorerMetrics(CollectorRegistry())
    defined = set()
    for value in vars(metrics).values():
        if not hasattr(value, "_type"):
            continue  # bookkeeping, not a metric
        name = value._name
        kind = value._type
        defined.add(f"{name}_total" if kind == "counter" else name)
    assert documented == defined


# -- rollouts: the challenger beside the champion (shadow, canary) ------------------------------------------
def rows_by_role(tmp_path: Path) -> dict[str, Any]:
    log = read_predictions(str(tmp_path / "log"))
    return {role: frame for role, frame in log.groupby("role")}


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_shadow_scores_every_request_with_the_challenger_and_returns_only_the_champion(home, trained, tmp_path):
    Registry(home=home).start_rollout(trained["b"], "shadow", reason="test")
    prom = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, prom)
    result = scorer.reload()
    assert result["rollout"]["challenger"] == trained["b"] and result["rollout"]["mode"] == "shadow"
    answers = [scorer.score(trained["requests"][i: i + 3]) for i in range(0, 60, 3)]
    scorer.close()  # waits for the shadow queue
    assert {a["model_tag"] for a in answers} == {trained["a"]}
    assert all("model_tag" not in item for a in answers for item in a["results"])
    roles = rows_by_role(tmp_path)
    champion, shadow = roles["champion"], roles["shadow"]
    assert len(champion) == len(shadow) == 60
    assert set(champion.model_tag) == {trained["a"]} and set(shadow.model_tag) == {trained["b"]}
    pairs = champion.merge(shadow, on=["request_id", "row"], suffixes=("", "_shadow"))
    assert len(pairs) == 60 and (pairs.score != pairs.score_shadow).any()  # two models, same transactions
    assert set(champion.rollout_id) == set(shadow.rollout_id) == {Registry(home=home).rollout().id}
    assert (shadow.latency_ms > 0).all()
    assert metric(prom, "fraudops_scorer_rows_scored_total") == 60  # only what was returned
    assert sum(metric(prom, "fraudops_scorer_role_decisions_total", role="shadow", decision=d)
               for d in ("approve", "review", "decline")) == 60
    assert metric(prom, "fraudops_scorer_rollout_info", challenger=trained["b"], mode="shadow", percent="0") == 1


def test_the_shadow_scores_in_a_process_of_its_own(home, trained, tmp_path):
    Registry(home=home).start_rollout(trained["b"], "shadow", reason="test")
    prom = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, prom)
    scorer.reload()
    scorer.score(trained["requests"][:4])
    deadline = time.monotonic() + 60
    while metric(prom, "fraudops_scorer_role_model_seconds_count", role="shadow") == 0:
        assert time.monotonic() < deadline, "the shadow process scored nothing in 60 s"
        time.sleep(0.05)
    pid = scorer._shadow.pid
    assert pid is not None and pid != os.getpid()
    assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 10  # answers come first
    assert metric(prom, "fraudops_scorer_role_model_seconds_count", role="champion") == 1
    os.kill(pid, signal.SIGTERM)  # a stopping service signals its process group: the worker decides when it ends
    time.sleep(0.5)
    assert scorer._shadow.pid == pid
    scorer.close()
    assert scorer._shadow.pid is None
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped
    assert len(rows_by_role(tmp_path)["shadow"]) == 4


def test_a_failing_shadow_never_fails_a_request(home, trained, tmp_path):
    Registry(home=home).start_rollout(trained["b"], "shadow", reason="test")
    prom = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, prom)
    scorer.reload()
    challenger = scorer.challenger  # a challenger the shadow process cannot load
    scorer._challenger = dataclasses.replace(challenger, model=dataclasses.replace(
        challenger.model, path=str(tmp_path / "nowhere")))
    answers = [scorer.score(trained["requests"][i: i + 2]) for i in range(0, 20, 2)]
    scorer.close()
    assert len(answers) == 10 and metric(prom, "fraudops_scorer_shadow_failures_total") == 10
    assert set(rows_by_role(tmp_path)) == {"champion"}


def test_a_killed_shadow_process_fails_no_request_and_is_started_again(home, trained, tmp_path, monkeypatch):
    monkeypatch.setattr("fraudops.serving.shadow.RESTART_SECONDS", 0.5)
    Registry(home=home).start_rollout(trained["b"], "shadow", reason="test")
    prom = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, prom)
    scorer.reload()
    requests = trained["requests"]
    scorer.score(requests[:1])
    deadline = time.monotonic() + 60
    while scorer._shadow.pid is None or metric(prom, "fraudops_scorer_role_model_seconds_count", role="shadow") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first = scorer._shadow.pid
    os.kill(first, signal.SIGKILL)
    answers = []
    while time.monotonic() < deadline and metric(prom, "fraudops_scorer_shadow_failures_total") == 0:
        answers.append(scorer.score(requests[1:2]))
        time.sleep(0.01)
    assert metric(prom, "fraudops_scorer_shadow_failures_total") >= 1  # the request it had, counted
    time.sleep(0.6)  # past the restart delay: the next request starts a new process
    answers.append(scorer.score(requests[2:3]))
    while metric(prom, "fraudops_scorer_role_model_seconds_count", role="shadow") < 2:
        assert time.monotonic() < deadline, "no new shadow process scored"
        time.sleep(0.05)
    assert scorer._shadow.pid not in (None, first)
    scorer.close()
    assert all(a["model_tag"] == trained["a"] for a in answers)


def test_a_canary_decides_for_a_sticky_share_of_customers(home, trained, tmp_path):
    registry = Registry(home=home)
    registry.start_rollout(trained["b"], "canary", 30, reason="test")
    rollout = registry.rollout()
    scorer = make_scorer(home, tmp_path)
    scorer.reload()
    requests = trained["requests"][:600]
    decided: dict[str, set[str]] = {}
    for start in range(0, len(requests), 5):
        answer = scorer.score(requests[start: start + 5])
        for item in answer["results"]:
            user = requests[start + item["row"]]["user_id"]
            decided.setdefault(user, set()).add(item.get("model_tag", answer["model_tag"]))
    scorer.close()
    assert all(len(tags) == 1 for tags in decided.values())  # one customer, one model
    canary_users = {u for u, tags in decided.items() if tags == {trained["b"]}}
    assert canary_users == {u for u in decided if bucket(rollout.id, u) < 30}
    assert 0.2 < len(canary_users) / len(decided) < 0.4
    roles = rows_by_role(tmp_path)
    assert set(roles) == {"champion", "canary", "shadow"} and len(roles["champion"]) + len(roles["canary"]) == 600
    assert set(roles["canary"].model_tag) == {trained["b"]}
    # the champion scored the canary's transactions off the request path: the canary's comparison on the same rows
    keys = ["request_id", "row"]
    assert set(roles["shadow"].model_tag) == {trained["a"]} and len(roles["shadow"]) == len(roles["canary"])
    assert len(roles["canary"].merge(roles["shadow"], on=keys)) == len(roles["canary"])
    # a larger canary keeps every customer the smaller one had
    registry.set_rollout_stage("canary", 60, reason="test")
    wider = registry.rollout()
    assert all(bucket(wider.id, u) < 60 for u in canary_users)


def test_promotion_ends_the_rollout_and_reuses_the_loaded_challenger(home, trained, tmp_path):
    registry = Registry(home=home)
    registry.start_rollout(trained["b"], "canary", 50, reason="test")
    scorer = make_scorer(home, tmp_path)
    scorer.reload()
    challenger = scorer.challenger.model
    registry.promote(trained["b"], reason="the canary held")
    result = scorer.reload()
    assert (result["model_tag"], result["previous"], result["rollout"]) == (trained["b"], trained["a"], None)
    assert scorer.model is challenger and scorer.challenger is None
    assert registry.rollout() is None and registry.history()[-1]["action"] == "promote"
    scorer.close()


def test_an_aborted_rollout_leaves_the_champion_alone(home, trained, tmp_path):
    registry = Registry(home=home)
    registry.start_rollout(trained["b"], "shadow", reason="test")
    scorer = make_scorer(home, tmp_path)
    scorer.reload()
    deadline = time.monotonic() + 60
    while scorer._shadow.pid is None:  # warmed up for the shadow stage
        assert time.monotonic() < deadline
        time.sleep(0.05)
    registry.abort_rollout(reason="declines too much", actor="rollout-controller")
    assert scorer.reload()["rollout"] is None and scorer.challenger is None
    assert scorer.model.tag == trained["a"]
    while scorer._shadow.pid is not None:  # the shadow process is stopped: its memory back
        assert time.monotonic() < deadline, "the shadow process outlived its rollout"
        time.sleep(0.05)
    scorer.close()
    event = registry.history()[-1]
    assert (event["action"], event["actor"], event["reason"]) == ("rollout-abort", "rollout-controller",
                                                                  "declines too much")


def test_a_challenger_that_cannot_be_served_leaves_the_champion_alone(home, trained, tmp_path):
    registry = Registry(home=home)
    registry.start_rollout(trained["b"], "canary", 50, reason="test")
    (Path(registry.path(trained["b"])) / "model.cbm").write_bytes(b"not a model")
    prom = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, prom)
    scorer.reload()
    assert scorer.challenger is None and metric(prom, "fraudops_scorer_model_loads_total", outcome="failed") == 1
    answer = scorer.score(trained["requests"][:20])
    assert all("model_tag" not in item for item in answer["results"])
    scorer.close()


def test_rollout_steps_are_checked_and_recorded(home, trained):
    registry = Registry(home=home)
    with pytest.raises(RegistryError, match="no rollout is active"):
        registry.set_rollout_stage("canary", 10, reason="x")
    with pytest.raises(RegistryError, match="is the champion already"):
        registry.start_rollout(trained["a"], reason="x")
    with pytest.raises(RegistryError, match="a canary needs a percent"):
        registry.start_rollout(trained["b"], "canary", 0, reason="x")
    with pytest.raises(RegistryError, match="rollout mode must be one of shadow, canary"):
        registry.start_rollout(trained["b"], "blue-green", reason="x")
    registry.start_rollout(trained["b"], reason="retrained after drift", actor="trigger")
    with pytest.raises(RegistryError, match="is active"):
        registry.start_rollout(trained["b"], reason="again")
    registry.set_rollout_stage("canary", 10, reason="shadow held", actor="rollout-controller")
    rollout = registry.rollout()
    assert (rollout.mode, rollout.percent, rollout.champion) == ("canary", 10.0, trained["a"])
    assert rollout.stage_started_at >= rollout.started_at
    actions = [(e["action"], e.get("mode"), e["actor"]) for e in registry.history()[-2:]]
    assert actions == [("rollout-start", "shadow", "trigger"), ("rollout-stage", "canary", "rollout-controller")]
    assert Counter(e["action"] for e in registry.history())["rollout-start"] == 1
    # a controller acting on what it judged a moment ago must not act on another rollout
    with pytest.raises(RegistryError, match="rollout stale-id has ended"):
        registry.set_rollout_stage("canary", 50, reason="x", rollout_id="stale-id")
    with pytest.raises(RegistryError, match="rollout stale-id has ended"):
        registry.promote(trained["b"], reason="x", rollout_id="stale-id")
    registry.abort_rollout(reason="enough", rollout_id=rollout.id)
    with pytest.raises(RegistryError, match="no rollout is active"):
        registry.abort_rollout(reason="again", rollout_id=rollout.id)


def test_the_shadow_process_scores_each_models_requests_in_one_call(home, trained, tmp_path):
    from fraudops.serving.shadow import ShadowJob, serve

    ours, theirs = Pipe()
    config = ServingConfig(prediction_log=str(tmp_path / "log"))
    server = threading.Thread(target=serve, args=(theirs,))
    server.start()
    ours.send((config, LogWriter(config.prediction_log).options()))
    registry = Registry(home=home)
    paths = {t: str(registry.path(trained[t])) for t in ("a", "b")}
    requests = trained["requests"]
    batch = [ShadowJob("shadow", trained["b"], paths["b"], None, "")]  # a warm-up: loads, scores nothing
    for i in range(6):
        tag = "a" if i % 3 == 0 else "b"
        batch.append(ShadowJob("shadow", trained[tag], paths[tag], "r1", f"q{i}", requests[i * 3: i * 3 + 2],
                               [1, 2]))
    ours.send(batch)
    outcomes, counts = ours.recv()
    ours.send(None)
    _, final = ours.recv()  # after its writer closed: every row written
    server.join()
    assert sorted((o.tag, o.requests, len(o.scores)) for o in outcomes) == sorted(
        [(trained["a"], 2, 4), (trained["b"], 4, 8)])  # one call per model
    assert counts.written["predictions"] + final.written["predictions"] == 12
    logged = read_predictions(str(tmp_path / "log"))
    assert len(logged) == 12 and set(logged.role) == {"shadow"} and set(logged.rollout_id) == {"r1"}
    assert set(logged.row) == {1, 2} and logged.request_id.nunique() == 6


def test_a_champion_poll_reads_the_pointer_once(home, trained, tmp_path, monkeypatch):
    import fraudops.storage

    Registry(home=home).start_rollout(trained["b"], "canary", 10, reason="test")
    scorer = make_scorer(home, tmp_path)
    scorer.reload()
    reads = []
    real = fraudops.storage.read_json
    monkeypatch.setattr(fraudops.storage, "read_json", lambda url: reads.append(url) or real(url))
    assert scorer.reload()["rollout"]["percent"] == 10  # the champion and the rollout from one read
    scorer.close()
    assert len(reads) == 1


# -- the online feature store -----------------------------------------------------------------------------------
def burst(n: int, device: str, start: str = "2026-03-01T10:00:00+00:00", every: int = 30) -> list[dict[str, Any]]:
    """A card-testing burst: ``n`` small payments from one device and IP, by several accounts, ``every`` s apart."""
    t0 = pd.Timestamp(start)
    return [valid(transaction_id=f"{device}-{i}", user_id=f"{device}-u{i % 3}", device_id=device,
                  ip_address=f"10.9.{len(device)}.1", amount=1.0 + i,
                  purchase_time=(t0 + pd.Timedelta(seconds=every * i)).isoformat()) for i in range(n)]


def counter(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(f"fraudops_scorer_{name}_total") or 0.0


def test_scoring_with_a_store_counts_a_burst_once_per_transaction(home, tmp_path, redis_url):
    """Every scored transaction updates the store (read, then record): a card-testing burst's later transactions
    see the earlier ones in their 1 h counts, a retried transaction id counts once and sees what it saw."""
    registry = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, registry, feature_store_url=redis_url, feature_store_timeout_seconds=2)
    scorer.reload()
    assert scorer.model.entities.live is not None
    rows = burst(8, "BURST-DEV-1")
    try:
        seen = [scorer.score([row], explain=True)["results"][0]["features"] for row in rows]
        retried = scorer.score([rows[3]], explain=True)
        after = scorer.score(burst(9, "BURST-DEV-1")[8:], explain=True)["results"][0]["features"]
    finally:
        scorer.close()
    assert [f["device_id__count_1h"] for f in seen] == list(range(8))
    assert [f["device_id__accounts_1h"] for f in seen] == [0, 1, 2, 3, 3, 3, 3, 3]
    assert [f["ip_address__count_24h"] for f in seen] == list(range(8))
    assert seen[0]["device_id__first_seen"] == 1 and seen[1]["device_id__seconds_since_prev"] == 30
    assert seen[2]["device_id__amount_sum_1h"] == 1.0 + 2.0
    assert retried["results"][0]["features"] == seen[3]  # the retry sees what the first attempt saw
    assert after["device_id__count_1h"] == 8  # ... and did not count twice
    assert "features_fallback" not in retried
    assert counter(registry, "feature_store_requests") == 10 and counter(registry, "feature_store_fallbacks") == 0
    # without a store the same burst is invisible: every transaction sees the frozen snapshot only
    frozen = [scorer.model.bundle.features(pd.DataFrame([row])).iloc[0]["device_id__count_1h"] for row in rows]
    assert frozen == [0.0] * 8


def test_a_full_batch_gets_more_time_from_the_store_than_a_single_transaction(home, tmp_path, redis_url):
    """With the default timeouts a store call waits 50 ms plus 0.2 ms per entity value: a batch of 1,000 from as
    many devices and IPs (about 2,200 entity values to read and record; such batches take 80-110 ms of script with a
    week of history on this machine) is not taken for a slow store, which would answer it from the frozen snapshot
    and skip the store for the worker's next requests; a single transaction still falls back after about 50 ms.
    Redis paused for 100-200 ms (a pause ends on its next 100 ms tick) stands in for the work."""
    import redis

    registry = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, registry, feature_store_url=redis_url, feature_store_retry_seconds=0)
    scorer.reload()
    frame = generate_transactions(1000, seed=21, start="2026-03-02", days=1)
    frame["transaction_id"] = "full-" + frame["transaction_id"].astype(str)
    frame["device_id"] = [f"FULL-DEV-{i}" for i in range(len(frame))]
    frame["ip_address"] = [f"10.7.{i // 250}.{i % 250}" for i in range(len(frame))]
    rows = as_requests(frame)
    admin = redis.Redis.from_url(redis_url)
    try:
        scorer.score(burst(1, "FULL-BATCH-DEV"))  # the store connection is open before the pauses
        admin.client_pause(100)
        full = scorer.score(rows)
        admin.client_pause(100)
        single = scorer.score(burst(2, "FULL-BATCH-DEV")[1:])
    finally:
        time.sleep(0.25)
        admin.close()
        scorer.close()
    assert "features_fallback" not in full
    assert single["features_fallback"] is True
    assert counter(registry, "feature_store_requests") == 3 and counter(registry, "feature_store_fallbacks") == 1


def test_batches_wait_on_the_store_in_worker_threads_and_single_transactions_on_the_loop(home, tmp_path, redis_url,
                                                                                          monkeypatch):
    """`Scorer.score_async`, the service's handler: two batches of `THREAD_ROWS` in flight wait on the feature
    store at the same time, each in a worker thread, while the event loop is free (here each batch's store call
    waits until the other's has started: scored on the loop, the first would wait alone and fail); a single
    transaction is scored on the loop's own thread, and so is a batch for a model without a store."""
    met = threading.Barrier(2, timeout=10)
    callers: list[int] = []
    read_and_write = RedisStore.read_and_write

    def meet(self: RedisStore, queries: Any, records: Any, answer: Any, meanwhile: Any = None) -> Any:
        callers.append(threading.get_ident())
        if len(records) >= THREAD_ROWS:
            met.wait()
        return read_and_write(self, queries, records, answer, meanwhile)

    monkeypatch.setattr(RedisStore, "read_and_write", meet)
    scorer = make_scorer(home, tmp_path, feature_store_url=redis_url, feature_store_timeout_seconds=2)
    scorer.reload()

    async def score() -> tuple[list[dict[str, Any]], dict[str, Any], int]:
        batches = await asyncio.gather(*(scorer.score_async(burst(THREAD_ROWS, f"THREADED-{k}")) for k in (1, 2)))
        return batches, await scorer.score_async(burst(1, "THREADED-3")), threading.get_ident()

    try:
        batches, single, loop = asyncio.run(score())
    finally:
        scorer.close()
    assert [len(b["results"]) for b in batches] == [THREAD_ROWS, THREAD_ROWS] and len(single["results"]) == 1
    assert not any("features_fallback" in answer for answer in (*batches, single))
    assert len(callers) == 3 and loop not in callers[:2] and callers[0] != callers[1] and callers[2] == loop

    frozen = make_scorer(home, tmp_path)
    frozen.reload()
    scored_on: list[int] = []
    monkeypatch.setattr(frozen, "score", lambda *args: scored_on.append(threading.get_ident()))
    try:
        assert asyncio.run(frozen.score_async(burst(THREAD_ROWS, "THREADED-4"))) is None
    finally:
        frozen.close()
    assert scored_on == [threading.main_thread().ident]


def test_shadow_scoring_only_reads_the_store(home, tmp_path, redis_url, trained):
    """The challenger's shadow scores and the champion's scores of canary rows (the shadow process) read the
    store and never record: the deciding model already counted the transaction."""
    from fraudops.registry import SHADOW
    from fraudops.serving.shadow import ShadowJob, _Models, _score

    scorer = make_scorer(home, tmp_path, feature_store_url=redis_url, feature_store_timeout_seconds=2)
    scorer.reload()
    rows = burst(4, "BURST-DEV-2")
    models = _Models(scorer.config)
    registry = Registry(home=home)
    writer = LogWriter(str(tmp_path / "shadow-log"), flush_seconds=60)
    try:
        scorer.score(rows[:2])
        for tag in (trained["a"], trained["b"]):
            job = ShadowJob(SHADOW, tag, str(registry.path(tag)), "r1", "0" * 32, rows[2:4], [0, 1])
            outcome = _score([job, job], models, writer)
            assert outcome.error is None and len(outcome.scores) == 4
        shadowed = models.get(trained["b"], str(registry.path(trained["b"]))).run(
            scorer.model.schema.validate(rows[2:3]))
        answered = scorer.score(rows[2:3], explain=True)["results"][0]["features"]
    finally:
        writer.close()
        scorer.close()
    assert list(shadowed.features["device_id__count_1h"]) == [2.0]  # shadow calls did not record rows 2 and 3
    assert answered["device_id__count_1h"] == 2  # the champion sees the 2 it scored, not the shadow's


def test_a_store_that_goes_down_gives_flagged_frozen_answers_and_never_a_failed_request(home, tmp_path,
                                                                                          redis_server):
    registry = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, registry, feature_store_url=redis_server.url,
                         feature_store_timeout_seconds=0.2)
    scorer.reload()
    rows = burst(6, "BURST-DEV-3")
    try:
        live = [scorer.score([row], explain=True) for row in rows[:3]]
        redis_server.stop()
        down = [scorer.score([row], explain=True) for row in rows[3:]]
        ready = scorer.ready
    finally:
        scorer.close()
    assert [b["results"][0]["features"]["device_id__count_1h"] for b in live] == [0, 1, 2]
    assert not any("features_fallback" in b for b in live)
    for body, row in zip(down, rows[3:], strict=True):
        ScoreResponse.model_validate(body)
        assert body["features_fallback"] is True
        frozen = scorer.model.bundle.features(pd.DataFrame([row])).iloc[0]
        assert body["results"][0]["features"]["device_id__count_1h"] == frozen["device_id__count_1h"] == 0
        assert body["results"][0]["score"] == pytest.approx(scorer.model.bundle.score(pd.DataFrame([row]))[0],
                                                             abs=1e-12)
    assert ready
    assert counter(registry, "feature_store_requests") == 6 and counter(registry, "feature_store_fallbacks") == 3
    assert registry.get_sample_value("fraudops_scorer_requests_total", {"endpoint": "score", "outcome": "ok"}) == 6


class FlakyStore:
    """A memory store that fails like a slow or unreachable one while ``down``, counting the calls it was asked."""

    def __init__(self, store: Any) -> None:
        self.store, self.limits, self.down, self.calls = store, store.limits, False, 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        def call(*args: Any) -> Any:
            self.calls += 1
            if self.down:
                raise StoreUnavailable("feature store read and write failed: TimeoutError: Timeout reading")
            return method(*args)
        return call


def test_a_failing_store_is_skipped_for_a_while_and_the_writes_it_missed_are_made_when_it_answers() -> None:
    from fraudops.entity_features import EntityFeatureConfig, OnlineFeatures, snapshot
    from fraudops.online_store import MemoryStore, StoreLimits
    from fraudops.serving.model import EntityFeatures, StoreGuard

    config = EntityFeatureConfig.create(SYNTHETIC, "datetime", ["1h"])
    limits = StoreLimits(keep_seconds=3600)
    history = generate_transactions(200, seed=3, start="2026-01-01", days=2)
    frozen = OnlineFeatures(config, snapshot(history, config, limits))
    store = FlakyStore(MemoryStore(limits))
    now = [0.0]
    guard = StoreGuard(retry_seconds=1.0, max_pending=100, clock=lambda: now[0])
    entities = EntityFeatures(frozen, OnlineFeatures(config, store), guard=guard)
    schema_rows = [{**row, "purchase_time": pd.Timestamp(row["purchase_time"]).value}  # as validated
                   for row in burst(6, "FLAKY-DEV")]
    count = config.feature_names.index("device_id__count_1h")

    def score(i: int, at: float) -> tuple[float, bool]:
        now[0] = at
        features, fallback = entities.compute(schema_rows[i:i + 1], record=True, then=lambda matrix: matrix)
        return features[0, count], fallback

    assert score(0, 0.0) == (0, False)
    store.down = True
    assert score(1, 0.0)[1] is True and store.calls == 2  # tried, timed out: the breaker opens for 1 s
    assert score(2, 0.5)[1] is True and store.calls == 2  # skipped: answered at once from the snapshot
    store.down = False
    assert score(3, 0.9)[1] is True and store.calls == 2 and guard.pending_rows == 3
    assert score(4, 1.2) == (4, False)  # tried again: the 3 held writes first, then this one sees them all
    assert not guard.pending and guard.pending_rows == 0 and store.calls == 4
    store.down = True
    guard.failed(StoreUnavailable("NOHISTORY the namespace has no history", answered=True))
    assert not guard.skipping()  # a quick refusal does not open the breaker


def test_held_writes_beyond_the_limit_drop_the_oldest_and_count_them() -> None:
    from fraudops.online_store import EntityRef, MemoryStore, Record, Records, StoreLimits
    from fraudops.serving.model import StoreGuard

    guard = StoreGuard(max_pending=5)
    refs = [EntityRef("device_id", f"d{i % 3}", False) for i in range(7)]
    records = [Record(f"t{i}", i, 1.0, None, (refs[i],)) for i in range(7)]
    guard.hold(Records.of(records[:3]))
    guard.hold(Records.of(records[3:5]))
    assert guard.pending_rows == 5 and guard.take_dropped() == 0
    guard.hold(Records.of(records[5:]))  # 7 held: the 2 oldest go, from the middle of the oldest batch
    assert [t for held in guard.pending for t in held.txn.tolist()] == ["t2", "t3", "t4", "t5", "t6"]
    assert guard.pending_rows == 5 and guard.take_dropped() == 2 and guard.take_dropped() == 0
    assert guard.pending[0].entities == [refs[2]]  # only the values of the rows kept
    store = MemoryStore(StoreLimits(keep_seconds=3600))
    guard.FLUSH_ROWS = 3
    guard.flush(store)  # the oldest 3, across two held batches, in one write
    assert [t for held in guard.pending for t in held.txn.tolist()] == ["t5", "t6"] and guard.pending_rows == 2
    assert store._recorded == {"t2", "t3", "t4"}
    guard.flush(store)
    assert not guard.pending and guard.pending_rows == 0 and store._recorded == {"t2", "t3", "t4", "t5", "t6"}
    assert [h.events for h in store._histories.values()] and sum(len(h.events) for h in store._histories.values()) == 5


def test_a_frozen_store_records_the_outage_once_it_answers_again(home, tmp_path, redis_server):
    """Redis stopped (SIGSTOP: every call times out), then resumed: the requests meanwhile were answered from the
    snapshot, flagged, and held; once it answers, the next request sees every transaction of the outage, counted
    once (the timed-out calls Redis ran on resuming and the held writes are the same transactions)."""
    registry = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, registry, feature_store_url=redis_server.url,
                         feature_store_timeout_seconds=0.2, feature_store_retry_seconds=0)
    scorer.reload()
    rows = burst(6, "BURST-DEV-5")
    count = []
    try:
        for row in rows[:2]:
            count.append(scorer.score([row], explain=True)["results"][0]["features"]["device_id__count_1h"])
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            down = [scorer.score([row]) for row in rows[2:5]]
            pending = registry.get_sample_value("fraudops_scorer_feature_store_pending_writes")
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        back = scorer.score([rows[5]], explain=True)
    finally:
        scorer.close()
    assert count == [0, 1]
    assert all(body["features_fallback"] is True for body in down) and pending == 3
    assert "features_fallback" not in back
    assert back["results"][0]["features"]["device_id__count_1h"] == 5
    assert registry.get_sample_value("fraudops_scorer_feature_store_pending_writes") == 0
    assert counter(registry, "feature_store_dropped_writes") == 0


class SlowLink:
    """A TCP proxy on a free loopback port that delays every byte ``delay`` seconds each way, in order: a network
    between the scorer and its store (this kernel has no netem). ``delay`` may change while connections are open."""

    def __init__(self, upstream: str, delay: float) -> None:
        import socket
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        self.delay, self._target = delay, (target.hostname, target.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._listener.getsockname()[1]}{target.path}"
        self._lock = threading.Lock()
        self._closed = False
        self._sockets: list[Any] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self._target)
            except OSError:
                return  # closed
            with self._lock:
                self._sockets += [client, server]
                if self._closed:
                    break
                for source, sink in ((client, server), (server, client)):
                    source.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()
                    for pump, args in ((self._read, (source, chunks)), (self._write, (chunks, sink))):
                        self._threads.append(threading.Thread(target=pump, args=args, daemon=True))
                        self._threads[-1].start()
        self._shut([client, server])

    def _read(self, source: Any, chunks: queue.Queue[tuple[float, bytes]]) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            chunks.put((time.monotonic() + self.delay, data))
            if not data:
                return

    def _write(self, chunks: queue.Queue[tuple[float, bytes]], sink: Any) -> None:
        import socket

        while True:
            due, data = chunks.get()
            time.sleep(max(0.0, due - time.monotonic()) if not self._closed else 0.0)
            try:
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except OSError:
                return

    @staticmethod
    def _shut(sockets: list[Any]) -> None:
        """Wake whatever waits on them (closing alone does not, on Linux), then close."""
        import socket

        for sock in sockets:
            with contextlib.suppress(OSError):  # never connected, or already shut
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = [self._listener, *self._sockets]
        self._shut(sockets)
        for thread in self._threads:
            thread.join(timeout=5)
        assert not any(thread.is_alive() for thread in self._threads), "the slow link's threads did not stop"


def test_a_store_across_a_slow_network_is_waited_for_within_the_timeout_and_loses_nothing(home, tmp_path,
                                                                                           redis_server):
    """The store behind a network of 60 ms round trip, inside the 0.5 s timeout: each request waits for its two
    round trips and is answered from the store. Then 1.2 s away: each request is answered from the snapshot, flagged,
    after about the timeout (not the network's time), and its transaction held. Back to 60 ms: the next request
    sees every transaction once, the held ones included."""
    link = SlowLink(redis_server.url, delay=0.03)
    registry = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, registry, feature_store_url=link.url, feature_store_timeout_seconds=0.5,
                         feature_store_retry_seconds=0)
    rows = burst(7, "SLOW-NET-DEV")
    near, far = [], []
    try:
        scorer.reload()
        for batch, out, delay in ((rows[:3], near, 0.03), (rows[3:6], far, 0.6)):
            link.delay = delay
            for row in batch:
                started = time.monotonic()
                out.append((scorer.score([row], explain=True), time.monotonic() - started))
        link.delay = 0.03
        back = scorer.score(rows[6:], explain=True)
    finally:
        scorer.close()
        link.close()
    assert [body["results"][0]["features"]["device_id__count_1h"] for body, _ in near] == [0, 1, 2]
    assert not any("features_fallback" in body for body, _ in near)
    assert all(seconds >= 0.12 for _, seconds in near)  # two round trips through the link
    assert all(body["features_fallback"] is True for body, _ in far)
    assert all(seconds < 1.2 for _, seconds in far), [seconds for _, seconds in far]  # not the 1.2 s round trip
    assert "features_fallback" not in back
    assert back["results"][0]["features"]["device_id__count_1h"] == 6
    assert registry.get_sample_value("fraudops_scorer_feature_store_pending_writes") == 0
    assert counter(registry, "feature_store_dropped_writes") == 0
    assert counter(registry, "feature_store_requests") == 7 and counter(registry, "feature_store_fallbacks") == 3


def test_a_backlog_of_held_writes_is_recorded_500_a_request_without_new_fallbacks(home, tmp_path, redis_server):
    """With the default timeouts: Redis stopped, one request times out and opens the breaker, two batches of 1,000
    meanwhile are answered from the snapshot and held, never sent. Once the store answers, each request first
    records 500 held transactions (a call of its own) and is answered from the store: the backlog drains without a
    new fallback, and the burst inside the held batches is counted once."""
    registry = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, registry, feature_store_url=redis_server.url)
    scorer.reload()
    frame = generate_transactions(2000, seed=23, start="2026-03-05T10:00:00", days=0.02)
    frame["transaction_id"] = "held-" + frame["transaction_id"].astype(str)
    frame["device_id"] = [f"HELD-DEV-{i}" if i % 100 else "HELD-BURST" for i in range(len(frame))]  # 20 of them
    rows = as_requests(frame)
    probe = burst(1, "HELD-BURST", start="2026-03-05T10:40:00+00:00")
    pending = []
    try:
        scorer.score(burst(1, "HELD-WARM"))
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            down = [scorer.score(burst(1, "HELD-WARM", start="2026-03-05T09:00:00+00:00")), scorer.score(rows[:1000]),
                    scorer.score(rows[1000:])]
            pending.append(registry.get_sample_value("fraudops_scorer_feature_store_pending_writes"))
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        time.sleep(1.1)  # the breaker's FRAUDOPS_FEATURE_STORE_RETRY_SECONDS
        back = []
        for i in range(5):
            back.append(scorer.score(burst(1, f"HELD-AFTER-{i}", start="2026-03-05T10:30:00+00:00")))
            pending.append(registry.get_sample_value("fraudops_scorer_feature_store_pending_writes"))
        seen = scorer.score(probe, explain=True)["results"][0]["features"]["device_id__count_1h"]
    finally:
        scorer.close()
    assert all(body["features_fallback"] is True for body in down)
    assert not any("features_fallback" in body for body in back)
    assert pending == [2001, 1501, 1001, 501, 1, 0]
    assert seen == 20
    assert counter(registry, "feature_store_fallbacks") == 3 and counter(registry, "feature_store_dropped_writes") == 0


def rebuild_cli(store_url: str, log_root: Path, wal_dir: Path | None = None, spill_dir: Path | None = None) -> Any:
    """`fraudops features rebuild --from-log 1h` of the log at ``log_root`` into the store at ``store_url``, with
    this host's write-ahead and spill directories ``wal_dir`` and ``spill_dir`` (none: not the defaults, which
    other processes of this machine may use)."""
    from click.testing import CliRunner

    from fraudops.cli import main

    return CliRunner().invoke(main, ["features", "rebuild", "--from-log", "1h", "--store-url", store_url,
                                     "--log-root", str(log_root), "--wal-dir", str(wal_dir or "off"),
                                     "--spill-dir", str(spill_dir or log_root.parent / "no-spill")])


def test_a_lost_store_is_rebuilt_from_the_prediction_log(home, tmp_path, redis_server, trained, monkeypatch):
    """Score traffic (a retry among it) with a store, lose the store, rebuild it from the log: every entity
    feature of new transactions is what it was before the loss (the snapshot loaded, each transaction once)."""
    import redis

    scorer = make_scorer(home, tmp_path, feature_store_url=redis_server.url, feature_store_timeout_seconds=2)
    scorer.reload()
    traffic, probe = trained["requests"][:400], trained["requests"][400:440]
    try:
        for start in range(0, len(traffic), 40):
            scorer.score(traffic[start:start + 40])
        scorer.score(traffic[100:103])  # a client's retry
        live = scorer.model.entities.live
        rows = scorer.model.schema.validate(probe)
        before = live.lookup(rows)
    finally:
        scorer.close()
    assert live.store.seed_state()["source"] == trained["a"]
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    assert client.dbsize() == 0
    monkeypatch.setenv("BENTOML_HOME", str(home))
    result = rebuild_cli(redis_server.url, tmp_path / "log")
    assert result.exit_code == 0, result.output
    assert f"loaded the snapshot of {trained['a']}" in result.output
    assert "replayed 403 logged transactions, 400 new" in result.output
    np.testing.assert_array_equal(live.lookup(rows), before)
    again = rebuild_cli(redis_server.url, tmp_path / "log")
    assert "kept its history" in again.output and "403 logged transactions, 0 new" in again.output
    np.testing.assert_array_equal(live.lookup(rows), before)
    # an unreadable log file: the rest is replayed, and the command fails naming it
    (broken := sorted((tmp_path / "log").rglob("part-*.parquet"))[0]).write_bytes(b"torn")
    partial = rebuild_cli(redis_server.url, tmp_path / "log")
    assert partial.exit_code == 1 and "0 new" in partial.output, partial.output
    assert f"1 log file(s) could not be read, their transactions not replayed: {broken}" in partial.output
    # the wrong log (or none): an error before the store is touched
    client.flushall()
    wrong = rebuild_cli(redis_server.url, tmp_path / "no-log-here")
    assert wrong.exit_code == 1 and "holds no prediction logged from" in wrong.output, wrong.output
    assert client.dbsize() == 0


def logged_then_edited(home: Path, tmp_path: Path, store_url: str, requests: list[Any],
                       edit: Callable[[list[str]], None]) -> Any:
    """Score ``requests`` with the store at ``store_url``, 20 a request, each request logged at a time of its own;
    then rewrite the log's one part file with its input texts changed in place by ``edit``. Returns the table as
    logged (before the edit)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scorer = make_scorer(home, tmp_path, feature_store_url=store_url, feature_store_timeout_seconds=2)
    scorer.reload()
    try:
        for start in range(0, len(requests), 20):
            scorer.score(requests[start:start + 20])
            time.sleep(0.01)
    finally:
        scorer.close()
    part = sorted((tmp_path / "log").rglob("part-*.parquet"))[0]
    table = pq.read_table(part)
    inputs = table.column("input").to_pylist()
    edit(inputs)
    pq.write_table(table.set_column(table.schema.get_field_index("input"), "input", pa.array(inputs)), part)
    return table


def test_logged_rows_the_schema_refuses_are_named_and_the_others_replayed(home, tmp_path, redis_server, trained,
                                                                          monkeypatch):
    """Five logged transactions edited so that the model's schema refuses them (a text amount, no purchase time,
    torn JSON, JSON that is not an object, a signup after the purchase: refused only once the others are out): the
    rebuild replays the other 95, names the five in order by request and row with their field and problem, and
    fails, so that they are mended and the rebuild run again."""
    from datetime import UTC, datetime

    import redis

    from fraudops.feature_store import open_store

    def edit(inputs: list[str]) -> None:
        edited = [json.loads(inputs[i]) for i in (0, 1, 4)]
        edited[0]["amount"] = "lots"
        del edited[1]["purchase_time"]
        edited[2]["signup_time"] = "2027-01-01T00:00:00Z"
        inputs[:5] = [json.dumps(edited[0]), json.dumps(edited[1]), '{"amount": 1', "5", json.dumps(edited[2])]

    table = logged_then_edited(home, tmp_path, redis_server.url, trained["requests"][:100], edit)
    ids = table.column("request_id").to_pylist()[:5]
    rows = table.column("row").to_pylist()[:5]
    redis.Redis.from_url(redis_server.url).flushall()
    monkeypatch.setenv("BENTOML_HOME", str(home))
    before = datetime.now(UTC)
    result = rebuild_cli(redis_server.url, tmp_path / "log")
    assert result.exit_code == 1, result.output
    assert "replayed 95 logged transactions, 95 new" in result.output
    # incomplete: the namespace still covers only since its seed (at this rebuild), not the window (an hour back)
    assert open_store(redis_server.url, Registry(home=home).load(trained["a"])).coverage().since >= before
    text = " ".join(result.output.split())
    named = re.search(rf"5 logged transaction\(s\) that the schema of {trained['a']} refuses were not replayed: (.*); "
                      "mend them", text)
    assert named, text
    problems = named.group(1).split("; request ")
    assert problems[0] == f"request {ids[0]} row {rows[0]}: amount: must be a number (got 'lots')", problems
    assert problems[1] == f"{ids[1]} row {rows[1]}: purchase_time: is required", problems
    assert problems[2].startswith(f"{ids[2]} row {rows[2]}: input: not JSON ("), problems
    assert problems[3].startswith(f"{ids[3]} row {rows[3]}: must be a JSON object"), problems
    assert problems[4] == f"{ids[4]} row {rows[4]}: signup_time: must not be after purchase_time", problems


def test_with_refused_rows_each_replayed_transaction_keeps_its_own_findable_only_mark(home, tmp_path, redis_server,
                                                                                       trained, monkeypatch):
    """A rebuild writes the rows logged since the namespace's coverage began (the scorers recorded them) findable
    only, the older ones unconditionally. With refused rows on both sides of that time, every replayed transaction
    still gets the mark of its own row, not of a neighbour's."""
    from datetime import UTC, datetime, timedelta

    from fraudops.feature_store import open_store, rebuild_from_log
    from fraudops.online_store import Coverage, RedisStore

    def edit(inputs: list[str]) -> None:
        for i in (0, 38, 39, 61):  # refused: the first row, the last two before the coverage began, one after
            inputs[i] = json.dumps({**json.loads(inputs[i]), "amount": "lots"})

    table = logged_then_edited(home, tmp_path, redis_server.url, trained["requests"][:100], edit)
    logged = table.column("logged_at").to_pylist()
    since = logged[40]  # the coverage began with the third request
    ids = [json.loads(text)["transaction_id"] for text in table.column("input").to_pylist()]
    expected = {ids[i]: logged[i] >= since for i in range(100) if i not in (0, 38, 39, 61)}
    assert set(expected.values()) == {True, False}
    marks: dict[str, bool] = {}
    real_write = RedisStore.write

    def write(self: RedisStore, records: Any, findable_only: Any = None) -> int:
        marks.update(zip(records.txn.tolist(), findable_only.tolist(), strict=True))
        return real_write(self, records, findable_only)

    monkeypatch.setattr(RedisStore, "write", write)
    monkeypatch.setattr(RedisStore, "coverage", lambda self: Coverage(since, "the claim"))
    bundle = Registry(home=home).load(trained["a"])
    now = datetime.now(UTC)
    result = rebuild_from_log(open_store(redis_server.url, bundle), bundle, trained["a"], str(tmp_path / "log"),
                              now - timedelta(hours=1), now + timedelta(minutes=1), batch=32)
    assert result.rejected == 4 and result.transactions == 100
    assert marks == expected


def test_a_rebuild_replays_what_a_killed_scorer_wrote_ahead_and_a_stopped_one_spilled(home, tmp_path, redis_server,
                                                                                        trained, monkeypatch):
    """One scorer stops while the log storage refuses writes: its rows go to the spill directory. Another is
    killed (SIGKILL) before it writes its log: its rows are only in its write-ahead directory. The store is lost.
    The rebuild writes the killed scorer's rows to the log, replays them with the spilled ones, and every entity
    feature equals that of a store that recorded the same traffic and was never lost."""
    import subprocess
    import sys

    import redis
    from click.testing import CliRunner

    from fraudops.cli import main

    requests, probe = trained["requests"][:400], trained["requests"][400:440]
    (tmp_path / "blocked").write_text("a file where the log's directory should be")
    reference_url = redis_server.url.rsplit("/", 1)[0] + "/1"
    config = ServingConfig(prediction_log=str(tmp_path / "blocked" / "log"), poll_seconds=0,
                           feature_store_url=redis_server.url, feature_store_timeout_seconds=2)
    spilling = Scorer(config, ModelSource(registry=Registry(home=home)),
                      LogWriter(config.prediction_log, flush_seconds=60, spill_dir=tmp_path / "spill"),
                      ScorerMetrics(CollectorRegistry()))
    reference = make_scorer(home, tmp_path / "reference", feature_store_url=reference_url,
                            feature_store_timeout_seconds=2)
    try:
        spilling.reload()
        reference.reload()
        for start in range(0, 200, 40):
            spilling.score(requests[start:start + 40])
    finally:
        spilling.close()
    assert len(read_predictions(str(tmp_path / "spill"))) == 200
    wal = home / "fraudops" / "prediction-wal"  # the scorer's default
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_SCORER, str(home), str(tmp_path / "log"), str(wal), redis_server.url],
        input=json.dumps(requests[200:]), text=True, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "log").exists()  # nothing written but ahead
    try:
        for start in range(0, 400, 40):
            reference.score(requests[start:start + 40])
        rows = reference.model.schema.validate(probe)
        expected = reference.model.entities.live.lookup(rows)
    finally:
        reference.close()
    redis.Redis.from_url(redis_server.url).flushdb()  # lost
    monkeypatch.setenv("BENTOML_HOME", str(home))
    rebuild = ["features", "rebuild", "--from-log", "1h", "--store-url", redis_server.url]
    # another log than the scorers' own: their default write-ahead directory does not hold its rows
    other = CliRunner().invoke(main, [*rebuild, "--log-root", str(tmp_path / "log")])
    assert other.exit_code == 1 and "holds no prediction logged" in other.output, other.output
    assert not (tmp_path / "log").exists()
    # the scorers' settings: their own log, so their default write-ahead directory too, and their spill directory
    monkeypatch.setenv("FRAUDOPS_PREDICTION_LOG", str(tmp_path / "log"))
    monkeypatch.setenv("FRAUDOPS_PREDICTION_SPILL", str(tmp_path / "spill"))
    out = CliRunner().invoke(main, rebuild)
    assert out.exit_code == 0, out.output
    assert f"recovered 200 rows that killed scorers left in {wal} (written to the log" in " ".join(out.output.split())
    assert "replayed 400 logged transactions, 400 new" in out.output
    live = make_scorer(home, tmp_path / "after", feature_store_url=redis_server.url, feature_store_timeout_seconds=2)
    try:
        live.reload()
        np.testing.assert_allclose(live.model.entities.live.lookup(rows), expected, rtol=1e-12)
    finally:
        live.close()


KILLED_SCORER = """
import json, os, signal, sys
from pathlib import Path
from prometheus_client import CollectorRegistry
from pydantic_core import PydanticCustomError
from fraudops.predlog import LogWriter
from fraudops.registry import Registry
from fraudops.serving import ModelSource, Scorer, ScorerMetrics, ServingConfig

home, log, wal, url = sys.argv[1:5]
requests = json.load(sys.stdin)
config = ServingConfig(prediction_log=log, poll_seconds=0, feature_store_url=url, feature_store_timeout_seconds=2)
scorer = Scorer(config, ModelSource(registry=Registry(home=Path(home))),
                LogWriter(log, flush_seconds=3600, wal_dir=wal), ScorerMetrics(CollectorRegistry()))
scorer.reload()
for start in range(0, len(requests), 40):
    scorer.score(requests[start:start + 40])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_rebuild_over_a_store_the_scorers_kept_counts_nothing_twice(home, tmp_path, redis_server, monkeypatch):
    """Two weeks of traffic (the longest window: 7 d) recorded by the scorer, then a rebuild over the whole log (a
    store that was not lost, or was reseeded and recorded for longer than a window before the rebuild): the
    transactions the store folded without a marker are left out, not counted again, and every feature stays."""
    requests = as_requests(generate_transactions(1440, seed=5, start="2026-01-20", days=15))
    scorer = make_scorer(home, tmp_path, feature_store_url=redis_server.url, feature_store_timeout_seconds=2)
    scorer.reload()
    try:
        for start in range(0, 1400, 40):
            scorer.score(requests[start:start + 40])
        live = scorer.model.entities.live
        rows = scorer.model.schema.validate(requests[1400:])
        before = live.lookup(rows)
    finally:
        scorer.close()
    monkeypatch.setenv("BENTOML_HOME", str(home))
    outputs = [rebuild_cli(redis_server.url, tmp_path / "log") for _ in range(2)]
    assert all(out.exit_code == 0 for out in outputs), [out.output for out in outputs]
    first = re.search(r"replayed 1,400 logged transactions, 0 new; ([\d,]+) left out: the scorers recorded them",
                      outputs[0].output)
    assert first and int(first.group(1).replace(",", "")) > 100, outputs[0].output
    assert "replayed 1,400 logged transactions, 0 new" in outputs[1].output
    np.testing.assert_array_equal(live.lookup(rows), before)


def test_a_late_rebuild_after_a_reseed_restores_what_the_lost_store_had(home, tmp_path, redis_server, monkeypatch):
    """The store is lost after 3 days of traffic; the scorer loads the snapshot again (its champion poll) and
    records 12 more days (beyond the 7 d window) before the rebuild: the lost days are replayed, the days since
    (recorded by the scorer, partly folded) are not counted again, and every feature equals a store never lost."""
    import redis

    requests = as_requests(generate_transactions(1440, seed=6, start="2026-01-20", days=15))
    reference_url = redis_server.url.rsplit("/", 1)[0] + "/1"
    scorer = make_scorer(home, tmp_path, feature_store_url=redis_server.url, feature_store_timeout_seconds=2)
    reference = make_scorer(home, tmp_path / "reference", feature_store_url=reference_url,
                            feature_store_timeout_seconds=2)
    lost_at = next(i for i, r in enumerate(requests) if r["purchase_time"] >= "2026-01-23")
    try:
        scorer.reload()
        reference.reload()
        for start in range(0, 1400, 40):
            if start <= lost_at < start + 40:
                scorer.score(requests[start:lost_at])
                redis.Redis.from_url(redis_server.url).flushdb()  # lost
                assert scorer.model.seed_store()  # the next champion poll's reseed
                scorer.score(requests[lost_at:start + 40])
            else:
                scorer.score(requests[start:start + 40])
            reference.score(requests[start:start + 40])
        rows = scorer.model.schema.validate(requests[1400:])
        live, never_lost = scorer.model.entities.live, reference.model.entities.live
        expected = never_lost.lookup(rows)
    finally:  # the log written
        scorer.close()
        reference.close()
    assert not np.array_equal(live.lookup(rows), expected, equal_nan=True)  # the store lost 3 days
    monkeypatch.setenv("BENTOML_HOME", str(home))
    out = rebuild_cli(redis_server.url, tmp_path / "log")
    assert out.exit_code == 0, out.output
    assert f"replayed 1,400 logged transactions, {lost_at:,} new" in out.output
    np.testing.assert_allclose(live.lookup(rows), expected, rtol=1e-12)  # sums added in another order


def test_only_the_champion_claims_an_empty_store(home, tmp_path, redis_server, trained):
    """A challenger (rollout) or the shadow process loading its model never seeds the store: the champion's
    snapshot would not load into a namespace another model claimed."""
    registry = Registry(home=home)
    config = ServingConfig(prediction_log=str(tmp_path / "log"), feature_store_url=redis_server.url,
                           feature_store_timeout_seconds=2)
    bundle = registry.load(trained["b"])
    challenger = ServedModel.build(trained["b"], bundle, config, bundle.state.spec)
    assert challenger.entities.live.store.seed_state() == {}
    scorer = make_scorer(home, tmp_path, feature_store_url=redis_server.url, feature_store_timeout_seconds=2)
    try:
        scorer.reload()
        assert challenger.entities.live.store.seed_state()["source"] == trained["a"]
    finally:
        scorer.close()


def test_a_store_restarted_empty_gets_the_snapshot_again_at_the_next_poll(home, tmp_path, redis_server, trained):
    import redis

    registry = CollectorRegistry()
    scorer = make_scorer(home, tmp_path, registry, feature_store_url=redis_server.url,
                         feature_store_timeout_seconds=2)
    scorer.reload()
    store = scorer.model.entities.live.store
    rows = scorer.model.schema.validate(trained["requests"][:20])
    try:
        warm = scorer.model.entities.live.lookup(rows)
        assert not scorer.reload()["changed"] and counter(registry, "feature_store_reseeds") == 0
        redis.Redis.from_url(redis_server.url).flushall()  # a restart without persistence
        assert store.seed_state() == {}
        # until the poll: not features of brand-new entities, but the frozen snapshot's, flagged and counted
        assert scorer.score(trained["requests"][20:21])["features_fallback"] is True
        assert counter(registry, "feature_store_fallbacks") == 1
        assert not scorer.reload()["changed"]  # the champion poll
        assert store.seed_state()["source"] == trained["a"]
        assert counter(registry, "feature_store_reseeds") == 1
        np.testing.assert_array_equal(scorer.model.entities.live.lookup(rows), warm)
        assert "features_fallback" not in scorer.score(trained["requests"][21:22])
    finally:
        scorer.close()


@pytest.mark.parametrize("multiprocess", [False, True])
def test_observe_many_equals_one_observe_per_value(tmp_path, monkeypatch, multiprocess):
    """Batched score observations give the exposition of one `observe` per score, also in the multiprocess mode
    BentoML runs the scorer in (values in shared files): same buckets (edges included), count and sum."""
    from prometheus_client import Histogram, generate_latest, values
    from prometheus_client.multiprocess import MultiProcessCollector

    from fraudops.serving.metrics import SCORE_BUCKETS, observe_many

    if multiprocess:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: 4242))
    scores = np.random.default_rng(3).random(1000)
    scores[:6] = [0.0, 0.01, 0.5, 0.99, 1.0, 0.0100000001]  # on and just past bucket edges
    exposed = []
    for batched in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram(f"score_{int(batched)}", "scores", ["role"], buckets=SCORE_BUCKETS, registry=registry)
        child = histogram.labels("champion")
        if batched:
            observe_many(child, scores[:500])
            observe_many(child, scores[500:])
            observe_many(child, np.empty(0))
        else:
            for score in scores:
                child.observe(float(score))
        if multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(tmp_path))
        text = generate_latest(registry).decode()
        exposed.append({line.split(" ")[0].replace(f"score_{int(batched)}", "score"): float(line.split(" ")[1])
                        for line in text.splitlines() if line.startswith(f"score_{int(batched)}_")
                        and "_created" not in line})
    one_by_one, batched = exposed
    assert one_by_one.keys() == batched.keys() and len(one_by_one) == len(SCORE_BUCKETS) + 3  # +Inf, count, sum
    for name, value in one_by_one.items():
        assert batched[name] == pytest.approx(value, rel=1e-12), name
    assert one_by_one['score_bucket{le="0.01",role="champion"}'] >= 3
