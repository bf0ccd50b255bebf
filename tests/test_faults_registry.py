"""Registry faults, measured: the object store going down or hanging while a model is promoted, and a corrupt
model in the registry, against a real moto S3 server process that the tests pause (SIGSTOP: it keeps its
state and answers again on SIGCONT) and kill.

What the user sees and what is lost, per fault, is what the README's fault table reports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec.config
import pytest

from fraudops import storage
from fraudops.errors import FraudopsError
from fraudops.registry import REGISTRY_URL_ENV, Registry, RegistryStoreError

REPO = Path(__file__).resolve().parents[1]
MOTO = Path(sys.executable).with_name("moto_server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Store:
    """A moto S3 server in its own process group on 127.0.0.1."""

    url = ""  # a registry URL in its bucket, set by the fixture

    def __init__(self, log: Path) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        with log.open("ab") as out:
            self.popen = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(self.port)], stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        try:
            while not self._answers():
                assert self.popen.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.1)
        except BaseException:
            self.kill()
            raise

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def pause(self) -> None:
        """Stop the server: connections are accepted by the kernel and never answered."""
        os.killpg(self.popen.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Kill the server (its objects are lost): connections are refused."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGCONT)
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


@pytest.fixture(scope="module")
def bundle_dir(transactions, save_bundle, tmp_path_factory) -> str:
    """A small saved model bundle (every model registered here is a copy of it)."""
    return save_bundle(transactions(1000, seed=21), 15, tmp_path_factory.mktemp("bundle") / "model")


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "True")
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "default-bentoml-home"))
    monkeypatch.delenv(REGISTRY_URL_ENV, raising=False)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)


@pytest.fixture
def store(monkeypatch, tmp_path) -> Iterator[Store]:
    """A running moto server with an empty bucket; ``store.url`` is a registry URL in it."""
    import boto3

    server = Store(tmp_path / "moto.log")
    try:
        monkeypatch.setenv("FRAUDOPS_S3_ENDPOINT", server.endpoint)
        bucket = f"registry-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        server.url = f"s3://{bucket}/fraudops"
        yield server
    finally:
        server.kill()


@pytest.fixture
def quick_timeouts(monkeypatch) -> None:
    """1 s connect and read timeouts (3 attempts stay), set the way an operator would: fsspec's configuration."""
    monkeypatch.setitem(fsspec.config.conf, "s3", {"config_kwargs": {"connect_timeout": 1, "read_timeout": 1}})


def _state(registry: Registry) -> tuple[str | None, list[tuple[str, str, str | None]]]:
    return registry.champion(), [(h["action"], h["tag"], h["previous"]) for h in registry.history()]


def _timed(call: Callable[[], Any]) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(FraudopsError) as info:
        call()
    return info.value, time.monotonic() - started


# -- (a) the object store goes down while a model is promoted -------------------------------------------------


@pytest.mark.slow
def test_promote_with_the_store_killed_fails_at_once_and_registers_nothing(store, tmp_path, bundle_dir):
    registry = Registry(home=tmp_path / "home", remote=store.url)
    first = registry.register(bundle_dir)
    registry.promote(first, reason="first")
    second = registry.register(bundle_dir)
    store.kill()

    error, waited = _timed(lambda: registry.promote(second, reason="better"))
    assert isinstance(error, RegistryStoreError)
    assert str(error).startswith(f"cannot look for model {second} at {store.url}/models/")
    assert "Could not connect to the endpoint URL" in str(error)
    assert waited < 10
    with pytest.raises(RegistryStoreError, match=f"cannot read the champion pointer {store.url}/champion.json: "
                                                 "Could not connect"):
        registry.champion()

    # registering while the store is down keeps no local copy that the pointer could later name
    before = {m.tag for m in Registry(home=tmp_path / "home", remote="").list()}
    with pytest.raises(RegistryStoreError, match=r"cannot upload model .* was not registered$"):
        registry.register(bundle_dir)
    assert {m.tag for m in Registry(home=tmp_path / "home", remote="").list()} == before


@pytest.mark.slow
def test_promote_against_a_hung_store_gives_up_in_bounded_time(store, tmp_path, bundle_dir):
    """Default timeouts: s3fs's retry loop around botocore's took 7 minutes per call, an upload forever."""
    registry = Registry(home=tmp_path / "home", remote=store.url)
    first = registry.register(bundle_dir)
    registry.promote(first, reason="first")
    second = registry.register(bundle_dir)
    before = _state(registry)
    store.pause()
    try:
        error, waited = _timed(lambda: registry.promote(second, reason="better"))
    finally:
        store.resume()
    assert str(error).startswith(f"cannot look for model {second}") and "Read timeout on endpoint URL" in str(error)
    assert 25 < waited < 45, waited  # 3 attempts x 10 s read timeout, plus back-off
    assert _state(registry) == before
    registry.promote(second, reason="the store is back")
    assert registry.champion() == second


STEPS = {  # the storage call that starts each step of a promotion, in order
    "upload the model": "put_file",
    "read the pointer": "read_json",
    "write the pointer": "write_json",
}


@pytest.mark.slow
@pytest.mark.usefixtures("quick_timeouts")
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_the_store_fails_at_each_step_of_a_promotion(store, monkeypatch, tmp_path, bundle_dir, step, fault):
    """The store dies, or hangs, just as a step begins. The pointer document (champion, lineage, history) is one
    object, written by one PUT: a promotion either happened whole or not at all."""
    registry = Registry(home=tmp_path / "home", remote=store.url)
    first = registry.register(bundle_dir)
    registry.promote(first, reason="first")
    second = Registry(home=tmp_path / "home", remote="").register(bundle_dir)  # not uploaded yet: promote does it
    before = _state(registry)

    original = getattr(storage, STEPS[step])

    def failing(*args: Any) -> Any:
        if fault == "killed":
            store.kill()
        else:
            store.pause()
        return original(*args)

    monkeypatch.setattr(storage, STEPS[step], failing)
    try:
        error, waited = _timed(lambda: registry.promote(second, reason="better"))
    finally:
        monkeypatch.setattr(storage, STEPS[step], original)
        store.resume()
    message = str(error)
    assert isinstance(error, RegistryStoreError)
    assert "Traceback" not in message and "\n" not in message
    reason = "Could not connect to the endpoint URL" if fault == "killed" else "Read timeout on endpoint URL"
    assert reason in message
    assert message.startswith({"upload the model": f"cannot upload model {second} to {store.url}/models/",
                               "read the pointer": f"cannot read the champion pointer {store.url}/champion.json",
                               "write the pointer": f"cannot promote {second}: writing the champion pointer "
                                                    f"{store.url}/champion.json failed"}[step])
    if step == "write the pointer":
        assert "so nothing changed, unless the store saved the write without answering" in message
    assert waited < (6 if fault == "killed" else 10), waited
    if fault == "killed":
        return  # moto keeps its objects in memory: a killed store comes back empty

    reader = Registry(home=tmp_path / "reader", remote=store.url)
    promoted = (second, [*before[1], ("promote", second, first)])
    if step == "write the pointer":
        # The stopped server still held the PUT the client gave up on, and applies it once resumed: the user was
        # told the promotion failed, and it happened, whole (the error message says this can be so).
        deadline = time.monotonic() + 10
        while _state(reader) != promoted and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _state(reader) == promoted
    else:
        time.sleep(1)  # what the server accepted while stopped is answered now (an upload is stored, unnamed)
        assert _state(reader) == before
        registry.promote(second, reason="the store is back")
        assert _state(reader) == promoted


@pytest.mark.slow
def test_cli_promote_with_the_store_down_prints_one_line_and_exits_1(store, tmp_path, bundle_dir):
    home = tmp_path / "home"
    tag = Registry(home=home, remote="").register(bundle_dir)
    store.kill()
    env = {**os.environ, "BENTOML_HOME": str(home), "COLUMNS": "300"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fraudops", "models", "--registry-url", store.url, "promote", tag,
                           "--reason", "store down"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    waited = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: cannot look for model {tag} at {store.url}/models/"), done.stderr
    assert "Could not connect to the endpoint URL" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert waited < 30, waited


def test_a_failed_pointer_write_on_a_mounted_volume_leaves_the_old_pointer(monkeypatch, tmp_path, bundle_dir):
    """A volume mounted in every pod: the pointer and model files are replaced by rename, never written in place."""
    volume = tmp_path / "volume"
    registry = Registry(home=tmp_path / "home", remote=str(volume))
    first = registry.register(bundle_dir)
    registry.promote(first, reason="first")
    second = registry.register(bundle_dir)
    before = (volume / "champion.json").read_bytes()

    def full(*_args: Any) -> None:
        raise OSError(28, "No space left on device")

    replace = os.replace
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(RegistryStoreError, match=f"cannot promote {second}: .* No space left on device.* so "
                                                 "nothing changed"):
        registry.promote(second, reason="better")
    with pytest.raises(RegistryStoreError, match=r"No space left on device; .* was not registered"):
        registry.register(bundle_dir)
    monkeypatch.setattr(os, "replace", replace)
    assert (volume / "champion.json").read_bytes() == before
    assert sorted(p.name for p in volume.rglob("*") if p.is_file() and ".tmp" in p.name) == []
    assert len(registry.list()) == 2


def test_a_pointer_that_is_not_json_is_named(tmp_path):
    registry = Registry(home=tmp_path / "home")
    pointer = Path(registry.pointer_url)
    pointer.parent.mkdir(parents=True)
    pointer.write_text('{"champion": "fraud-detector:abc", "lin')
    with pytest.raises(RegistryStoreError, match=f"the champion pointer {pointer} is not valid JSON"):
        registry.champion()


# -- (b) a corrupt model in the registry ----------------------------------------------------------------------


def _loads(scorer: Any, outcome: str) -> float:
    return next(s.value for metric in scorer.metrics.model_loads.collect() for s in metric.samples
                if s.name.endswith("_total") and s.labels == {"outcome": outcome})


@pytest.mark.slow
def test_a_corrupt_champion_in_the_store_leaves_the_scorer_on_the_old_model(store, monkeypatch, tmp_path, bundle_dir,
                                                                          transactions):
    """A scorer in a fresh pod imports each champion from the object store. A truncated or garbage model file
    there fails the reload with a named error; the old model keeps scoring; the failure is counted; nothing
    half-imported stays behind, so a repaired file loads on the next reload. (A corrupt model file in a local
    registry: tests/test_serving.py::test_a_model_that_fails_to_load_leaves_the_current_one_serving.)"""
    import boto3

    from fraudops.serving import Scorer, ServingConfig  # here: the only test that needs the scorer

    s3 = boto3.client("s3", endpoint_url=store.endpoint, region_name="us-east-1")
    bucket, prefix = store.url.removeprefix("s3://").split("/", 1)
    pipeline = Registry(home=tmp_path / "pipeline", remote=store.url)
    first = pipeline.register(bundle_dir)
    pipeline.promote(first, reason="first")

    scorer_home = tmp_path / "scorer"
    monkeypatch.setenv("BENTOML_HOME", str(scorer_home))
    monkeypatch.setenv(REGISTRY_URL_ENV, store.url)
    scorer = Scorer.from_config(ServingConfig(prediction_log=str(tmp_path / "log"), poll_seconds=0))
    rows = json.loads(transactions(20, seed=5).drop(columns=["is_fraud"])
                      .to_json(orient="records", date_format="iso"))
    try:
        assert scorer.reload()["model_tag"] == first
        expected = [r["score"] for r in scorer.score(rows)["results"]]

        failures = 0
        for damage in ("truncated", "garbage"):
            tag = pipeline.register(bundle_dir)
            key = f"{prefix}/models/{tag.replace(':', '/')}.bentomodel"
            good = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            s3.put_object(Bucket=bucket, Key=key, Body=good[: len(good) // 2] if damage == "truncated"
                          else b"\x00garbage" * 100)
            pipeline.promote(tag, reason=f"{damage} file in the store")

            with pytest.raises(FraudopsError, match=f"cannot serve model 'champion': cannot import model {tag} "
                                                    f"from {store.url}/models/.* truncated or corrupt"):
                scorer.reload()
            failures += 1
            assert scorer.ready and scorer.model.tag == first
            served = scorer.score(rows)
            assert served["model_tag"] == first and [r["score"] for r in served["results"]] == expected
            assert _loads(scorer, "failed") == failures
            assert not (scorer_home / "models" / tag.replace(":", "/")).exists()  # nothing half-imported

        s3.put_object(Bucket=bucket, Key=key, Body=good)  # the file is repaired: the next reload serves it
        reloaded = scorer.reload()
        assert (reloaded["model_tag"], reloaded["previous"], reloaded["changed"]) == (tag, first, True)
        assert scorer.score(rows)["model_tag"] == tag
        assert _loads(scorer, "ok") == 2

        # the store goes down: the pointer cannot be read, the scorer keeps its model
        store.kill()
        with pytest.raises(FraudopsError, match=f"cannot read the champion pointer {store.url}/champion.json"):
            scorer.reload()
        assert scorer.score(rows)["model_tag"] == tag
        assert _loads(scorer, "failed") == failures + 1
    finally:
        scorer.close()


def test_a_model_name_without_version_is_not_looked_up_as_a_file(tmp_path):
    registry = Registry(home=tmp_path / "home", remote=str(tmp_path / "volume"))
    for tag in ("fraud-detector", "fraud-detector:latest"):
        with pytest.raises(FraudopsError, match="searched by version only"):
            registry.resolve(tag)


def test_s3_options_bound_every_call(monkeypatch):
    """The timeouts and retries reach s3fs, and fsspec's configuration changes them."""
    monkeypatch.setitem(fsspec.config.conf, "s3", {"config_kwargs": {"read_timeout": 30}})
    options = storage.storage_options("s3://bucket/key")
    assert options["config_kwargs"] == {"connect_timeout": 5, "read_timeout": 30,
                                        "retries": {"total_max_attempts": 3, "mode": "standard"}}
    assert options["use_listings_cache"] is False
    fs, _ = storage.filesystem("s3://bucket/key")
    assert fs.retries == 1
    assert storage.storage_options("/var/lib/fraudops/registry") == {}
