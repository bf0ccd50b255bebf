"""Small shared helpers for the tests (no autouse fixtures, nothing global)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SYNTHETIC_COLUMNS = (
    "transaction_id", "user_id", "signup_time", "purchase_time", "amount", "device_id", "ip_address",
    "country", "source", "browser", "category", "payment_method", "is_fraud",
)


def make_transactions(n: int = 2000, *, seed: int = 0, fraud_rate: float = 0.08,
                      start: str = "2026-01-01", days: float = 30.0) -> pd.DataFrame:
    """A small labelled transaction table with the columns of `schema.SYNTHETIC` and a learnable fraud signal.

    Fraud rows often buy seconds after signing up, spend more, come more often from ``Affiliate`` traffic,
    use ``gift_cards`` and share a few devices across many accounts; most legit rows signed up days earlier.
    The signal is deliberately noisy, so a one-split model is clearly worse than a small boosted model. Rows are
    in purchase-time order, fraud is spread evenly over time (so every time window has both classes).
    """
    rng = np.random.default_rng(seed)
    start_ts = pd.Timestamp(start)
    offsets = np.sort(rng.integers(0, int(days * 86_400), size=n))
    purchase = start_ts + pd.to_timedelta(offsets, unit="s")
    fraud = rng.random(n) < fraud_rate
    # make sure both classes are present even for tiny frames
    fraud[0], fraud[1] = False, True

    n_users = max(n // 3, 2)
    user = rng.integers(0, n_users, size=n)
    fraud_user = n_users + np.arange(n)  # account ids never used by legit rows
    user = np.where(fraud & (rng.random(n) < 0.4), fraud_user, user)  # some fraud from fresh accounts
    instant = np.where(fraud, rng.random(n) < 0.5, rng.random(n) < 0.03)
    gap = np.where(instant, rng.integers(1, 120, size=n), rng.integers(86_400, 90 * 86_400, size=n))
    signup = purchase - pd.to_timedelta(gap, unit="s")

    amount = np.round(np.where(fraud, rng.lognormal(5.0, 0.6, n), rng.lognormal(4.0, 0.8, n)), 2)
    legit_devices = np.array([f"D{i:05d}" for i in range(n_users)], dtype=object)
    ring_devices = np.array([f"RING{i}" for i in range(5)], dtype=object)
    device = np.where(fraud & (rng.random(n) < 0.4), ring_devices[rng.integers(0, 5, n)],
                      legit_devices[user % n_users])
    ip_int = np.where(fraud & (rng.random(n) < 0.4), rng.integers(1, 20, n) * 1_000_000 + 16_777_216,
                      (user % n_users) * 7919 + 33_554_432)
    ip = np.array([f"{(v >> 24) & 255}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}" for v in ip_int],
                  dtype=object)

    def pick(options: tuple[str, ...], legit_p: list[float], fraud_p: list[float]) -> np.ndarray:
        legit_choice = rng.choice(options, size=n, p=legit_p)
        fraud_choice = rng.choice(options, size=n, p=fraud_p)
        return np.where(fraud, fraud_choice, legit_choice).astype(object)

    frame = pd.DataFrame({
        "transaction_id": np.array([f"t{i:06d}" for i in range(n)], dtype=object),
        "user_id": np.array([f"u{u}" for u in user], dtype=object),
        "signup_time": signup,
        "purchase_time": purchase,
        "amount": amount,
        "device_id": device,
        "ip_address": ip,
        "country": pick(("US", "GB", "DE", "NG"), [0.6, 0.2, 0.18, 0.02], [0.3, 0.1, 0.1, 0.5]),
        "source": pick(("SEO", "Ads", "Direct", "Affiliate"), [0.4, 0.3, 0.25, 0.05], [0.2, 0.2, 0.1, 0.5]),
        "browser": pick(("Chrome", "Safari", "Firefox"), [0.5, 0.3, 0.2], [0.6, 0.1, 0.3]),
        "category": pick(("electronics", "fashion", "gift_cards"), [0.3, 0.6, 0.1], [0.4, 0.1, 0.5]),
        "payment_method": pick(("card", "paypal", "wallet"), [0.6, 0.3, 0.1], [0.8, 0.05, 0.15]),
        "is_fraud": fraud.astype("int64"),
    })
    return frame


@pytest.fixture(scope="session")
def transactions():
    """The factory `make_transactions` (call it with the size and seed a test needs)."""
    return make_transactions


@pytest.fixture
def small_frame() -> pd.DataFrame:
    """2000 labelled transactions with a learnable fraud signal."""
    return make_transactions(2000, seed=0)


def save_small_bundle(frame: pd.DataFrame, iterations: int, target: Path) -> str:
    """Train and save a small model bundle on ``frame`` (synthetic schema); returns its directory."""
    from fraudops.schema import SYNTHETIC
    from fraudops.training import TrainConfig, featurize, fit, split
    from fraudops.validation import validate

    result = validate(frame, SYNTHETIC)
    config = TrainConfig(iterations=iterations, threads=2)
    splits = split(result.clean, result.spec, config)
    state, x_train, x_valid, _ = featurize(splits, result.spec, result.numeric)
    bundle = fit(state, x_train, splits.train["is_fraud"], x_valid, splits.valid["is_fraud"], config)
    return str(bundle.save(target))


@pytest.fixture(scope="session")
def save_bundle():
    """`save_small_bundle`, for module fixtures that train a small model."""
    return save_small_bundle


REDIS_FIXTURES = frozenset({"redis_url", "redis_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that start a Redis (``-m redis``: what CI runs again with
    ``FRAUDOPS_TEST_REDIS_SERVER=valkey-server``): those asking for a Redis fixture, and the cases of store-kind
    parametrised fixtures (``new_store``, ``store_kind``) whose kind is ``redis``."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if REDIS_FIXTURES & set(getattr(item, "fixturenames", ())) or (
                callspec is not None and any(isinstance(v, str) and v == "redis" for v in callspec.params.values())):
            item.add_marker(pytest.mark.redis)


class RedisServer:
    """A private ``redis-server`` on a free loopback port, without persistence (`stop` ends it)."""

    def __init__(self, binary: str, home: Path) -> None:
        import redis

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}/0"
        with (home / "redis.log").open("wb") as log:
            self.process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                             "--appendonly", "no", "--dir", str(home)], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        client = redis.Redis(port=port, socket_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while True:
                assert self.process.poll() is None, (home / "redis.log").read_text()[-2000:]
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()

    def stop(self) -> None:
        """End the server (this test's own process, by its handle)."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _redis_binary() -> str:
    """The server the store tests run against: ``$FRAUDOPS_TEST_REDIS_SERVER`` (e.g. ``valkey-server``: a missing one
    fails), else Debian's redis-server (the tests skip without it)."""
    wanted = os.environ.get("FRAUDOPS_TEST_REDIS_SERVER")
    binary = shutil.which(wanted or "redis-server")
    if binary is None:
        if wanted:
            pytest.fail(f"FRAUDOPS_TEST_REDIS_SERVER={wanted} is not an executable on PATH")
        pytest.skip("needs Debian's redis-server (apt-get install redis-server)")
    return binary


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a private ``redis-server`` shared by the session (skips when Debian's redis-server is not
    installed). Tests keep apart by store namespace."""
    server = RedisServer(_redis_binary(), tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private ``redis-server`` of one test, which the test may stop."""
    server = RedisServer(_redis_binary(), tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()
