"""The model registry: BentoML model store plus champion pointer, locally and through a shared remote store."""

from __future__ import annotations

import json
import socket
import uuid

import numpy as np
import pandas as pd
import pytest

from fraudops.bundle import ModelBundle
from fraudops.errors import RegistryError
from fraudops.registry import MODEL_NAME, REGISTRY_URL_ENV, Registry
from fraudops.schema import SYNTHETIC
from fraudops.training import TrainConfig, featurize, fit, split
from fraudops.validation import validate


@pytest.fixture(scope="module")
def trained(transactions, tmp_path_factory) -> tuple[str, pd.DataFrame]:
    """A saved model bundle and raw test rows to score."""
    result = validate(transactions(1000, seed=21), SYNTHETIC)
    config = TrainConfig(iterations=15, threads=2)
    splits = split(result.clean, result.spec, config)
    state, x_train, x_valid, _ = featurize(splits, result.spec, result.numeric)
    bundle = fit(state, x_train, splits.train["is_fraud"], x_valid, splits.valid["is_fraud"], config)
    bundle.meta.update(name="synthetic", note=None)
    path = bundle.save(tmp_path_factory.mktemp("bundle") / "model")
    return str(path), splits.test.drop(columns=["is_fraud"])


@pytest.fixture(autouse=True)
def _bentoml_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "True")
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "default-bentoml-home"))
    monkeypatch.delenv(REGISTRY_URL_ENV, raising=False)


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(home=tmp_path / "home")


def test_register_and_list(registry, trained):
    bundle_dir, _ = trained
    assert registry.list() == []
    tag = registry.register(bundle_dir, labels={"stage": "candidate"},
                            metadata={"metrics": {"pr_auc": np.float64(0.5)}, "rows": np.int64(3), "gone": None})
    assert tag.startswith(f"{MODEL_NAME}:")
    models = registry.list()
    assert [m.tag for m in models] == [tag]
    assert models[0].champion is False
    assert models[0].local is True
    assert models[0].labels == {"stage": "candidate"}
    assert models[0].metadata["metrics"] == {"pr_auc": 0.5}
    # bundle metadata is stored too, as plain JSON types; None entries dropped
    assert models[0].metadata["name"] == "synthetic"
    assert models[0].metadata["rows"] == 3
    assert "note" not in models[0].metadata
    assert "gone" not in models[0].metadata
    assert (registry.path(tag) / "model.cbm").exists()


def test_register_extra_files(registry, trained, tmp_path):
    bundle_dir, _ = trained
    extra = tmp_path / "metrics.json"
    extra.write_text('{"pr_auc": 0.5}')
    tag = registry.register(bundle_dir, extra_files={"metrics.json": extra})
    assert (registry.path(tag) / "metrics.json").read_text() == '{"pr_auc": 0.5}'


def test_register_refuses_a_broken_bundle(registry, tmp_path):
    (tmp_path / "broken").mkdir()
    with pytest.raises(RegistryError, match="incomplete"):
        registry.register(tmp_path / "broken")
    assert registry.list() == []


def test_champion_before_promotion(registry, trained):
    assert registry.champion() is None
    assert registry.history() == []
    with pytest.raises(RegistryError, match="no champion yet"):
        registry.resolve("champion")
    registry.register(trained[0])
    with pytest.raises(RegistryError, match="no champion yet"):
        registry.load()


def test_promote_history_and_rollback(registry, trained):
    bundle_dir, _ = trained
    first = registry.register(bundle_dir)
    second = registry.register(bundle_dir)
    assert first != second
    assert registry.resolve(MODEL_NAME) == second  # latest

    event = registry.promote(first, reason="first model: PR-AUC 0.9 >= floor 0.2", actor="test")
    assert event["action"] == "promote"
    assert event["tag"] == first
    assert event["previous"] is None
    assert event["reason"] == "first model: PR-AUC 0.9 >= floor 0.2"
    assert event["actor"] == "test"
    assert registry.champion() == first
    assert registry.resolve("champion") == first
    assert {m.tag: m.champion for m in registry.list()} == {first: True, second: False}
    assert registry.info("champion").champion is True

    with pytest.raises(RegistryError, match="already the champion"):
        registry.promote(first, reason="again")

    event = registry.promote(second, reason="better")
    assert event["previous"] == first
    assert event["actor"] == "cli"
    assert registry.champion() == second
    assert {m.tag: m.champion for m in registry.list()} == {first: False, second: True}

    event = registry.rollback(reason="alerts fired", actor="oncall")
    assert event == {**event, "action": "rollback", "tag": first, "previous": second, "reason": "alerts fired",
                     "actor": "oncall"}
    assert registry.champion() == first
    history = registry.history()
    assert [(h["action"], h["tag"], h["previous"]) for h in history] == [
        ("promote", first, None), ("promote", second, first), ("rollback", first, second)]
    assert all(h["at"] for h in history)

    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback(reason="again")


def test_rollback_needs_two_champions(registry, trained):
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback(reason="no champion at all")
    registry.promote(registry.register(trained[0]), reason="first")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback(reason="only one champion so far")


def test_promote_unknown_model(registry, trained):
    registry.register(trained[0])
    with pytest.raises(RegistryError, match="not in the model store"):
        registry.promote(f"{MODEL_NAME}:doesnotexist", reason="typo")
    assert registry.champion() is None


def test_load_champion_scores_like_the_bundle(registry, trained):
    bundle_dir, raw = trained
    tag = registry.register(bundle_dir)
    registry.promote(tag, reason="first")
    loaded = registry.load()
    np.testing.assert_array_equal(loaded.score(raw), ModelBundle.load(bundle_dir).score(raw))
    np.testing.assert_array_equal(registry.load(tag).score(raw), loaded.score(raw))


def test_registries_with_different_homes_are_isolated(tmp_path, trained):
    a, b = Registry(home=tmp_path / "a"), Registry(home=tmp_path / "b")
    tag = a.register(trained[0])
    a.promote(tag, reason="first")
    assert b.list() == []
    assert b.champion() is None
    with pytest.raises(RegistryError):
        b.path(tag)
    # a new object on the same home sees the same state
    again = Registry(home=tmp_path / "a")
    assert again.champion() == tag
    assert [m.tag for m in again.list()] == [tag]


def test_registry_url_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(REGISTRY_URL_ENV, str(tmp_path / "shared") + "/")
    registry = Registry(home=tmp_path / "home")
    assert registry.remote == str(tmp_path / "shared")
    assert Registry(home=tmp_path / "home", remote="").remote is None


# -- shared remote store ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(params=["s3", "directory"])
def remote(request, monkeypatch, tmp_path) -> str:
    if request.param == "directory":  # a volume mounted in every pod
        return str(tmp_path / "mounted-volume" / "fraudops")
    import boto3

    endpoint = request.getfixturevalue("s3_server")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("FRAUDOPS_S3_ENDPOINT", endpoint)
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/fraudops"


def test_remote_registry_is_shared(remote, tmp_path, trained):
    bundle_dir, raw = trained
    a = Registry(home=tmp_path / "a", remote=remote)
    b = Registry(home=tmp_path / "b", remote=remote + "/")
    assert b.remote == remote

    first = a.register(bundle_dir, labels={"stage": "candidate"})
    a.promote(first, reason="first model", actor="pipeline")

    # B sees the champion and the model, which it does not hold yet
    assert b.champion() == first
    listed = b.list()
    assert [(m.tag, m.champion, m.local) for m in listed] == [(first, True, False)]
    assert b.history()[0]["actor"] == "pipeline"

    # loading imports it into B's own store, and it scores like the original
    loaded = b.load("champion")
    np.testing.assert_array_equal(loaded.score(raw), ModelBundle.load(bundle_dir).score(raw))
    assert [(m.tag, m.local) for m in b.list()] == [(first, True)]
    assert b.info(first).labels == {"stage": "candidate"}
    assert (tmp_path / "b" / "models").is_dir()

    # a second model from B, then a rollback by B, are visible to A
    second = b.register(bundle_dir)
    b.promote(second, reason="retrained", actor="b")
    assert a.champion() == second
    assert {m.tag: m.local for m in a.list()} == {first: True, second: False}
    b.rollback(reason="bad alerts", actor="oncall")
    assert a.champion() == first
    last = a.history()[-1]
    assert (last["action"], last["tag"], last["previous"], last["actor"]) == ("rollback", first, second, "oncall")

    # A can load B's model from the remote store too
    np.testing.assert_array_equal(a.load(second).score(raw), loaded.score(raw))


def test_a_long_running_reader_sees_what_other_processes_write_later(s3_server, monkeypatch, tmp_path, trained):
    """The drift exporter and the trigger run for days; drift jobs and training pods write beside them."""
    import bentoml
    import boto3
    from bentoml._internal.models.model import ModelStore

    from fraudops.monitoring.job import latest_summaries

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("FRAUDOPS_S3_ENDPOINT", s3_server)
    bucket = f"shared-{uuid.uuid4().hex[:12]}"
    other_process = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    other_process.create_bucket(Bucket=bucket)
    writer_home = tmp_path / "writer"

    def publish(model: int) -> str:
        """What another pod does: register a model and write a drift summary for it."""
        tag = Registry(home=writer_home).register(trained[0])
        export = tmp_path / f"{model}.bentomodel"
        bentoml.models.export_model(tag, str(export), _model_store=ModelStore(writer_home / "models"))
        name, version = tag.split(":")
        other_process.upload_file(str(export), bucket, f"registry/models/{name}/{version}.bentomodel")
        other_process.put_object(Bucket=bucket, Key=f"monitor/latest/{model}.json",
                                 Body=json.dumps({"model": tag, "verdict": "ok"}).encode())
        return tag

    reader = Registry(home=tmp_path / "reader", remote=f"s3://{bucket}/registry")
    first = publish(1)
    assert [m.tag for m in reader.list()] == [first]
    assert [s["model"] for s in latest_summaries(f"s3://{bucket}/monitor")] == [first]
    second = publish(2)
    assert {m.tag for m in reader.list()} == {first, second}
    assert [s["model"] for s in latest_summaries(f"s3://{bucket}/monitor")] == [first, second]


def test_remote_model_missing_everywhere(remote, tmp_path):
    registry = Registry(home=tmp_path / "c", remote=remote)
    with pytest.raises(RegistryError, match="neither in"):
        registry.path(f"{MODEL_NAME}:missing")
    assert registry.list() == []
    assert registry.champion() is None
