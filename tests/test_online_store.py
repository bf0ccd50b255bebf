"""Online stores: what stays exact beyond their limits, what becomes approximate, expiry, and failures."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import pandas as pd
import pytest
import redis

from fraudops.entity_features import EntityFeatureConfig, OnlineFeatures
from fraudops.online_store import (
    EntityRef,
    Event,
    KeyQuery,
    MemoryStore,
    Record,
    RedisStore,
    StoreLimits,
    StoreUnavailable,
    _member,
)
from fraudops.schema import SYNTHETIC

CONFIG = EntityFeatureConfig.create(SYNTHETIC, "datetime", ["1h", "1d"])
START = pd.Timestamp("2026-03-01 12:00").value


def row(i: int, *, device: str = "dev", user: str | None = None, seconds: float = 60.0) -> dict[str, object]:
    """Transaction ``i`` of one device, ``seconds`` apart, amount i + 1."""
    return {"transaction_id": f"t{i}", "purchase_time": START + int(i * seconds * 1e9), "amount": float(i + 1),
            "device_id": device, "ip_address": f"ip{i}", "user_id": user or f"u{i % 3}"}


def feature(online: OnlineFeatures, rows: list[dict[str, object]], name: str) -> float:
    values = online.lookup(rows)
    return float(values[-1, online.feature_names.index(name)])


@pytest.fixture(params=["memory", "redis"])
def new_store(request: pytest.FixtureRequest):
    """A factory of empty stores of the parametrised kind, each in its own Redis namespace."""
    if request.param == "memory":
        return MemoryStore
    url = request.getfixturevalue("redis_url")
    return lambda limits: RedisStore.from_url(url, limits, timeout_s=2, namespace=f"t{uuid.uuid4().hex[:8]}")


def test_beyond_max_events_windows_count_the_newest_and_all_history_stays_exact(new_store) -> None:
    store = new_store(StoreLimits(keep_seconds=86_400, max_events=5))
    online = OnlineFeatures(CONFIG, store)
    online.record([row(i) for i in range(20)])
    probe = [row(20)]
    assert feature(online, probe, "device_id__count_1h") == 5  # 20 in the last hour, 5 kept
    assert feature(online, probe, "device_id__count_all") == 20
    assert feature(online, probe, "device_id__amount_sum_all") == sum(range(1, 21))
    assert feature(online, probe, "device_id__amount_max_all") == 20
    assert feature(online, probe, "device_id__seconds_since_prev") == 60
    if isinstance(store, RedisStore):
        assert store.client.zcard(f"{store.namespace}:ev:device_id:dev") == 5


def test_beyond_exact_accounts_the_all_history_count_is_an_estimate(new_store) -> None:
    store = new_store(StoreLimits(keep_seconds=86_400, exact_accounts=10))
    online = OnlineFeatures(CONFIG, store)
    online.record([row(i, user=f"acct{i}", seconds=1) for i in range(300)])
    probe = [row(300, seconds=1)]
    assert feature(online, probe, "device_id__accounts_1h") == 300  # windows read the kept events: exact
    estimate = feature(online, probe, "device_id__accounts_all")
    if isinstance(store, RedisStore):
        assert abs(estimate - 300) <= 0.03 * 300  # HyperLogLog, standard error 0.81%
        assert store.client.exists(f"{store.namespace}:hll:device_id:dev")
        assert not store.client.exists(f"{store.namespace}:acc:device_id:dev")
    else:
        assert estimate == 300


def test_redis_keys_expire_with_the_longest_window_or_the_retention(redis_url: str) -> None:
    limits = StoreLimits(keep_seconds=86_400, retention_seconds=30 * 86_400)
    store = RedisStore.from_url(redis_url, limits, namespace=f"t{uuid.uuid4().hex[:8]}")
    OnlineFeatures(CONFIG, store).record([row(0)])
    ttl = {kind: store.client.ttl(f"{store.namespace}:{kind}:device_id:dev") for kind in ("ev", "agg", "acc")}
    assert 86_000 < ttl["ev"] <= 86_400 < 30 * 86_000 < ttl["agg"] == ttl["acc"] <= 30 * 86_400
    assert 86_000 < store.client.ttl(f"{store.namespace}:txn:t0") <= 86_400


def test_a_writer_with_shorter_windows_keeps_the_history_longer_windows_read(redis_url: str) -> None:
    """A canary trained with 1 h windows records into the champion's namespace (1 h and 1 d windows): the store
    keeps the day the champion reads, with the expiry of the longest horizon any writer has asked for."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    champion = RedisStore.from_url(redis_url, StoreLimits(keep_seconds=86_400), namespace=namespace)
    canary = RedisStore.from_url(redis_url, StoreLimits(keep_seconds=3_600, retention_seconds=3_600),
                                 namespace=namespace)
    OnlineFeatures(CONFIG, champion).record([row(i, seconds=1800) for i in range(10)])  # 4.5 hours of a device
    short = EntityFeatureConfig.create(SYNTHETIC, "datetime", ["1h"])
    OnlineFeatures(short, canary).record([row(10, seconds=1800)])
    probe = [row(11, seconds=1800)]
    online = OnlineFeatures(CONFIG, champion)
    assert feature(online, probe, "device_id__count_1d") == 11  # nothing folded at the canary's 1 h horizon
    assert feature(online, probe, "device_id__count_1h") == 2
    assert champion.client.zcard(f"{namespace}:ev:device_id:dev") == 11
    assert 86_000 < champion.client.ttl(f"{namespace}:ev:device_id:dev") <= 86_400
    assert 86_000 < champion.client.ttl(f"{namespace}:txn:t10") <= 86_400


def test_after_the_kept_events_expire_all_history_features_come_from_the_totals(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, StoreLimits(keep_seconds=86_400), namespace=f"t{uuid.uuid4().hex[:8]}")
    online = OnlineFeatures(CONFIG, store)
    online.record([row(i, seconds=3600) for i in range(5)])
    store.client.delete(f"{store.namespace}:ev:device_id:dev")  # what the TTL does after a day without events
    later = [row(100, seconds=3600)]
    assert feature(online, later, "device_id__count_1d") == 0
    assert feature(online, later, "device_id__count_all") == 5
    assert feature(online, later, "device_id__amount_sum_all") == 15
    assert feature(online, later, "device_id__seconds_since_prev") == 96 * 3600
    online.record(later)
    assert feature(online, [row(101, seconds=3600)], "device_id__count_all") == 6


def test_an_unreachable_store_raises_store_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", StoreLimits(keep_seconds=86_400), timeout_s=0.2)
    online = OnlineFeatures(CONFIG, store)
    with pytest.raises(StoreUnavailable, match="feature store read failed"):
        online.lookup([row(0)])
    with pytest.raises(StoreUnavailable, match="feature store write failed"):
        online.record([row(0)])


def test_a_slow_store_raises_store_unavailable_within_its_timeout(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, StoreLimits(keep_seconds=86_400), timeout_s=0.05)
    admin = redis.Redis.from_url(redis_url)
    admin.client_pause(400)
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable, match="read failed"):
            OnlineFeatures(CONFIG, store).lookup([row(0)])
        assert time.monotonic() - started < 0.3
    finally:
        time.sleep(max(0.0, 0.45 - (time.monotonic() - started)))
        admin.close()


def test_a_batch_waits_longer_per_entity_value_and_never_reads_a_timed_out_reply(redis_url: str) -> None:
    """The script call waits ``timeout_s`` plus ``key_timeout_s`` per entity value; a call that timed out closes
    its connection, so that its late reply is never taken for the next call's."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    limits = StoreLimits(keep_seconds=86_400)
    patient = OnlineFeatures(CONFIG, RedisStore.from_url(redis_url, limits, timeout_s=0.05, key_timeout_s=0.2,
                                                         namespace=namespace))
    hasty = OnlineFeatures(CONFIG, RedisStore.from_url(redis_url, limits, timeout_s=0.05, namespace=namespace))
    admin = redis.Redis.from_url(redis_url)
    try:
        for online in (patient, hasty):  # connected before the pauses (a connection's handshake gets timeout_s)
            online.lookup([row(0)])
        admin.client_pause(300)
        patient.record([row(0), row(1)])  # 5 entity values (a device, 2 IPs, 2 accounts): 1.05 s to answer
        admin.client_pause(300)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="write failed"):
            hasty.record([row(2, device="other")])
        time.sleep(max(0.0, 0.55 - (time.monotonic() - started)))  # a pause ends on Redis's next tick (100 ms)
        assert feature(hasty, [row(3)], "device_id__count_1h") == 2
    finally:
        admin.close()


def test_batches_of_one_store_take_turns_each_waiting_as_long_as_the_work_ahead_of_it() -> None:
    """Threads' script calls go one at a time (Redis runs them one after another anyway): a call waits for its turn
    up to ``timeout_s`` plus ``key_timeout_s`` per entity value of the calls ahead of it, then answers as usual;
    behind a call that takes longer than that, it fails as a slow store does, and the queue is empty afterwards."""
    store = RedisStore(redis.Redis(), StoreLimits(keep_seconds=86_400), timeout_s=0.05, key_timeout_s=0.1)
    on_wire: list[str] = []
    first_sent, answer_first = threading.Event(), threading.Event()

    def script(batch: str, timeout: float) -> bytes:
        txn = json.loads(batch)[3][0][0]
        on_wire.append(txn)
        if txn == "t0":  # the first call stays on the wire until told
            first_sent.set()
            answer_first.wait(10)
        return json.dumps([1, []]).encode()

    store._script = script  # type: ignore[method-assign]
    online = OnlineFeatures(CONFIG, store)

    def behind(hold: float) -> threading.Thread:
        """A first call (5 entity values: 0.55 s of allowance for the calls behind it) answered after ``hold``."""
        first_sent.clear()
        answer_first.clear()
        first = threading.Thread(target=online.record, args=([row(0), row(1)],))
        first.start()
        assert first_sent.wait(10)
        threading.Timer(hold, answer_first.set).start()
        return first

    first = behind(0.25)
    started = time.monotonic()
    assert online.record([row(2, device="second")]) == 1  # waited for the first, within its 0.55 s
    first.join(10)
    assert time.monotonic() - started > 0.2 and on_wire == ["t0", "t2"]
    first = behind(1.0)
    with pytest.raises(StoreUnavailable, match=r"the calls ahead of it \(5 entity values\) took longer"):
        online.record([row(3, device="third")])
    first.join(10)
    assert on_wire == ["t0", "t2", "t0"] and store._queued == 0


def test_a_server_that_lost_the_script_gets_it_again(redis_url: str) -> None:
    """A restarted or failed-over Redis has no scripts: the first call loads it and goes on."""
    store = RedisStore.from_url(redis_url, StoreLimits(keep_seconds=86_400), timeout_s=2,
                                namespace=f"t{uuid.uuid4().hex[:8]}")
    online = OnlineFeatures(CONFIG, store)
    online.record([row(0)])
    store.client.script_flush()
    online.record([row(1)])
    assert feature(online, [row(2)], "device_id__count_1h") == 2


@pytest.mark.parametrize(("timeouts", "message"), [
    ({"timeout_s": 0}, "feature store timeout must be > 0 seconds, got 0"),
    ({"key_timeout_s": -1}, "feature store timeout per entity value must be >= 0 seconds, got -1"),
])
def test_bad_timeouts_are_named(timeouts: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisStore.from_url("redis://127.0.0.1:1/0", StoreLimits(keep_seconds=100), **timeouts)


@pytest.mark.parametrize(("limits", "message"), [
    ({"keep_seconds": 0}, "store limit keep_seconds must be an integer >= 1, got 0"),
    ({"keep_seconds": 100, "max_events": 2.5}, "store limit max_events must be an integer >= 1, got 2.5"),
    ({"keep_seconds": 100, "retention_seconds": 50}, r"retention_seconds \(50\) must be at least keep_seconds"),
])
def test_bad_limits_are_named(limits: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StoreLimits(**limits)  # type: ignore[arg-type]


def test_a_store_that_requires_history_refuses_reads_until_its_seed_is_ready(redis_url: str) -> None:
    namespace = f"t{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(redis_url, StoreLimits(keep_seconds=86_400), namespace=namespace,
                                require_history=True)
    online = OnlineFeatures(CONFIG, store)
    online.record([row(0)])  # writes are not refused: a rebuild may replay before the seed is marked
    with pytest.raises(StoreUnavailable, match="NOHISTORY"):
        online.lookup([row(1)])
    store.client.hset(f"{namespace}:seed", mapping={"source": "m:1", "state": "loading"})
    with pytest.raises(StoreUnavailable, match="no history"):
        online.lookup([row(1)])
    store.client.hset(f"{namespace}:seed", "state", "ready")
    assert feature(online, [row(1)], "device_id__count_1h") == 1


def test_a_scored_batch_reads_then_records_itself_in_one_call(new_store) -> None:
    """`process` is one store call: the batch sees the history before it, then is recorded (a retry sees the same
    and counts once)."""
    online = OnlineFeatures(CONFIG, new_store(StoreLimits(keep_seconds=86_400)))
    calls: list[str] = []
    store = online.store
    for name in ("read", "write", "read_and_write"):
        real = getattr(store, name)
        setattr(store, name, lambda *args, _real=real, _name=name: calls.append(_name) or _real(*args))
    counts = [online.process([row(i)])[0, online.feature_names.index("device_id__count_1h")] for i in range(3)]
    assert counts == [0, 1, 2]
    assert calls.count("read_and_write") == 3
    if isinstance(store, RedisStore):
        assert calls == ["read_and_write"] * 3  # one round trip per scored batch
    assert online.process([row(2)])[0, online.feature_names.index("device_id__count_1h")] == 2  # a retry
    assert feature(online, [row(3)], "device_id__count_1h") == 3


def test_a_value_queried_twice_in_one_call_reads_the_history_before_the_batch_twice(new_store) -> None:
    """The store answers each query, in order, from the history before the call, and records the batch once."""
    store, ref, ticks = new_store(StoreLimits(keep_seconds=86_400)), EntityRef("device_id", "dev", True), START // 1000
    store.write([Record("a", ticks, 5.0, "u1", (ref,))])
    query = KeyQuery(ref, (ticks + 10,), ("u1", "u2"))
    states = store.read_and_write([query, query], [Record("b", ticks + 10, 7.0, "u2", (ref,))])
    assert [[e.txn for e in s.events] for s in states] == [["a"], ["a"]]
    assert [s.account_first for s in states] == [{"u1": ticks}] * 2
    (after,) = store.read([KeyQuery(ref, (ticks + 20,), ("u2",))])
    assert [e.txn for e in after.events] == ["a", "b"] and after.accounts_before == [2]
    assert after.account_first == {"u2": ticks + 10}


def test_a_refused_read_records_nothing(redis_url: str) -> None:
    """A store without history refuses the read of a scored batch and does not record it either (the scorer answers
    from the frozen snapshot, flagged; the rebuild from the prediction log restores it)."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(redis_url, StoreLimits(keep_seconds=86_400), namespace=namespace,
                                require_history=True)
    online = OnlineFeatures(CONFIG, store)
    with pytest.raises(StoreUnavailable, match="NOHISTORY"):
        online.process([row(0)])
    assert not store.client.exists(f"{namespace}:txn:t0")
    store.client.hset(f"{namespace}:seed", mapping={"source": "m:1", "state": "ready"})
    assert online.process([row(0)])[0, online.feature_names.index("device_id__count_1h")] == 0
    assert store.client.exists(f"{namespace}:txn:t0")


def test_a_store_url_must_be_a_redis_url() -> None:
    with pytest.raises(ValueError, match="must start with redis://") as error:
        RedisStore.from_url("http://:s3cret@localhost:6379", StoreLimits(keep_seconds=100))
    assert "s3cret" not in str(error.value) and "got http://" in str(error.value)


@pytest.mark.parametrize("event", [
    Event(1_769_228_787_000_000, 37.4, "u1", "t-1"),
    Event(-5, 1e-05, None, 'quote " and \\ backslash'),
    Event(0, -0.0, "ünïcödé ✓", "tab\tnewline\n"),
    Event(2**53, 1.5e300, "", "x"),
])
def test_a_member_is_written_as_json_dumps_writes_it(event: Event) -> None:
    """Members already stored and the in-memory store's tie order depend on the exact text."""
    assert _member(event) == json.dumps(list(event), separators=(",", ":"))
