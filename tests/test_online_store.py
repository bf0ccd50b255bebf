"""Online stores: what stays exact beyond their limits, what becomes approximate, expiry, and failures."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import redis

from fraudops import online_store
from fraudops.entity_features import EntityFeatureConfig, OnlineFeatures
from fraudops.online_store import (
    NEVER,
    NO_ACCOUNT,
    NO_TIME,
    EntityRef,
    MemoryStore,
    Query,
    Record,
    Records,
    RedisStore,
    StoreLimits,
    StoreUnavailable,
    isin,
    lexorder,
    text_hashes,
)
from fraudops.schema import SYNTHETIC

CONFIG = EntityFeatureConfig.create(SYNTHETIC, "datetime", ["1h", "1d"])
START = pd.Timestamp("2026-03-01 12:00").value


def row(i: int, *, device: str = "dev", user: str | None = None, seconds: float = 60.0) -> dict[str, object]:
    """Transaction ``i`` of one device, ``seconds`` apart, amount i + 1."""
    return {"transaction_id": f"t{i}", "purchase_time": START + int(i * seconds * 1e9), "amount": float(i + 1),
            "device_id": device, "ip_address": f"ip{i}", "user_id": user or f"u{i % 3}"}


DEV = EntityRef("device_id", "dev", True)


def kept(store: MemoryStore | RedisStore, ref: EntityRef = DEV) -> int:
    """How many events the store keeps for an entity value."""
    return len(store.read(Query([ref])).ticks)


def marker(store: RedisStore, txn: str) -> str:
    """The key marking a transaction recorded (see `RedisStore`)."""
    return f"{store.namespace}:{online_store.LAYOUT}:t:{text_hashes([txn])[0]}"


def retention_ttl(store: RedisStore, key: str, seconds: int) -> bool:
    """Whether a key expires after ``seconds`` and at most an eighth more (a blob written whole, or appended to
    within that eighth: see `RedisStore`), give or take the test's own time."""
    return seconds - 100 < store.client.ttl(key) <= seconds + seconds // 8


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
    assert kept(store) == 5
    assert store.read(Query([DEV])).count.tolist() == [15]  # folded


def test_beyond_exact_accounts_the_all_history_count_is_an_estimate(new_store) -> None:
    store = new_store(StoreLimits(keep_seconds=86_400, exact_accounts=10))
    online = OnlineFeatures(CONFIG, store)
    online.record([row(i, user=f"acct{i}", seconds=1) for i in range(300)])
    probe = [row(300, seconds=1)]
    assert feature(online, probe, "device_id__accounts_1h") == 300  # windows read the kept events: exact
    estimate = feature(online, probe, "device_id__accounts_all")
    probe_query = Query([DEV], np.array([0]), np.array([START // 1000 + 10**9]), text_hashes(["acct5"]))
    assert store.read(probe_query).account_first.tolist() == [NO_TIME]  # beyond exact counting
    if isinstance(store, RedisStore):
        assert abs(estimate - 300) <= 0.03 * 300  # HyperLogLog, standard error 0.81%
        assert store.client.pfcount(store.key("h", DEV)) == estimate
        assert len(store.client.get(store.key("e", DEV))) == 64 + 32 * 300  # header and events, no accounts
    else:
        assert estimate == 300


def test_the_redis_tests_run_on_the_server_asked_for(redis_url: str) -> None:
    """``FRAUDOPS_TEST_REDIS_SERVER=valkey-server`` runs these tests on Valkey (CI does, where Debian has it): the
    server answering must be that one, not whatever ``redis-server`` is on the PATH."""
    wanted = os.path.basename(os.environ.get("FRAUDOPS_TEST_REDIS_SERVER") or "redis-server")
    client = redis.Redis.from_url(redis_url)
    try:
        info = client.info("server")
    finally:
        client.close()
    assert os.path.basename(info["executable"]) == wanted
    assert (info.get("server_name") == "valkey") == wanted.startswith("valkey")


def test_redis_keys_expire_with_the_longest_window_or_the_retention(redis_url: str) -> None:
    limits = StoreLimits(keep_seconds=86_400, retention_seconds=30 * 86_400)
    store = RedisStore.from_url(redis_url, limits, namespace=f"t{uuid.uuid4().hex[:8]}")
    OnlineFeatures(CONFIG, store).record([row(0)])
    assert retention_ttl(store, store.key("e", DEV), 30 * 86_400)
    assert 86_000 < store.client.ttl(marker(store, "t0")) <= 86_400


def test_a_scored_transaction_is_remembered_by_its_kept_events_or_if_none_by_its_marker(new_store) -> None:
    """A scored batch marks only the transactions none of whose events it keeps; retries of both kinds count once
    (a replay, `record`, marks all: see the test above)."""
    store = new_store(StoreLimits(keep_seconds=86_400))
    online = OnlineFeatures(CONFIG, store)
    online.process([row(100, seconds=3600), row(101, seconds=3600)])
    late = row(0, user="u1") | {"ip_address": "ip100"}  # 100 hours behind every one of its values: folded at once
    online.process([late, row(102, seconds=3600)])
    if isinstance(store, RedisStore):
        assert [bool(store.client.exists(marker(store, f"t{i}"))) for i in (0, 100, 101, 102)] == [
            True, False, False, False]
        assert 86_000 < store.client.ttl(marker(store, "t0")) <= 86_400
    assert online.record([late, row(101, seconds=3600), row(102, seconds=3600)]) == 0
    assert feature(online, [row(103, seconds=3600)], "device_id__count_all") == 4
    assert kept(store) == 3


def test_a_scored_transaction_folded_early_by_the_cap_still_counts_once(new_store) -> None:
    """Beyond ``max_events`` a value folds events whose retries may still come: they get a marker as they fold."""
    store = new_store(StoreLimits(keep_seconds=86_400, max_events=3))
    online = OnlineFeatures(CONFIG, store)
    same = {"ip_address": "ip", "user_id": "u"}
    rows = [row(i) | same for i in range(4)]
    for one in rows:
        online.process([one])
    assert kept(store) == 3  # t0 folded by the cap, in every value it has
    online.process([rows[0]])  # a retry
    assert online.record(rows) == 0
    assert feature(online, [row(4) | same], "device_id__count_all") == 4


def test_a_neighbour_dated_ahead_of_the_clock_does_not_make_a_retry_count_twice(new_store) -> None:
    """A transaction dated two days ahead folds the live one before it (one day windows) at once: the folded one
    gets a marker, since its retries may still come."""
    store = new_store(StoreLimits(keep_seconds=86_400))
    online = OnlineFeatures(CONFIG, store)
    now = time.time_ns()
    live = row(0) | {"purchase_time": now}
    ahead = row(1) | {"purchase_time": now + 2 * 86_400 * 10**9, "ip_address": "ip0", "user_id": "u0"}
    online.process([live])
    online.process([ahead])
    assert kept(store) == 1
    online.process([live])  # a retry
    probe = row(2) | {"purchase_time": now + 3 * 86_400 * 10**9}
    assert feature(online, [probe], "device_id__count_all") == 2


def test_a_writer_with_shorter_windows_keeps_the_history_longer_windows_read(redis_url: str) -> None:
    """A canary trained with 1 h windows records into the champion's namespace (1 h and 1 d windows): the store
    keeps the day the champion reads, with the expiry of the longest horizon any writer has asked for."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    champion = RedisStore.from_url(redis_url, StoreLimits(keep_seconds=86_400), namespace=namespace)
    canary = RedisStore.from_url(redis_url, StoreLimits(keep_seconds=3_600, retention_seconds=3_600),
                                 namespace=namespace)
    OnlineFeatures(CONFIG, champion).record([row(i, seconds=1800) for i in range(10)])  # 4.5 hours of a device
    short = EntityFeatureConfig.create(SYNTHETIC, "datetime", ["1h"])
    OnlineFeatures(short, canary).record([row(10, seconds=1800), row(-96, seconds=1800)])  # the last 2 days late
    probe = [row(11, seconds=1800)]
    online = OnlineFeatures(CONFIG, champion)
    assert feature(online, probe, "device_id__count_1d") == 11  # nothing folded at the canary's 1 h horizon
    assert feature(online, probe, "device_id__count_1h") == 2
    assert kept(champion) == 11
    assert retention_ttl(champion, champion.key("e", DEV), 90 * 86_400)
    assert 86_000 < champion.client.ttl(marker(champion, "t-96")) <= 86_400  # a late one's marker


def test_after_a_long_pause_the_old_events_are_folded_at_the_next_write(new_store) -> None:
    store = new_store(StoreLimits(keep_seconds=86_400))
    online = OnlineFeatures(CONFIG, store)
    online.record([row(i, seconds=3600) for i in range(5)])
    later = [row(100, seconds=3600)]
    assert feature(online, later, "device_id__count_1d") == 0
    assert feature(online, later, "device_id__count_all") == 5
    assert feature(online, later, "device_id__amount_sum_all") == 15
    assert feature(online, later, "device_id__seconds_since_prev") == 96 * 3600
    online.record(later)
    assert kept(store) == 1 and store.read(Query([DEV])).count.tolist() == [5]
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


def test_batches_of_one_store_take_turns_each_waiting_as_long_as_the_work_ahead_of_it(redis_url: str) -> None:
    """Threads' calls go one at a time (Redis runs them one after another anyway): a call waits for its turn up to
    ``timeout_s`` plus ``key_timeout_s`` per entity value of the calls ahead of it, then answers as usual; behind a
    call that takes longer than that, it fails as a slow store does, and the queue is empty afterwards."""
    store = RedisStore.from_url(redis_url, StoreLimits(keep_seconds=86_400), timeout_s=0.05, key_timeout_s=0.1,
                                namespace=f"t{uuid.uuid4().hex[:8]}")
    on_wire: list[str] = []
    first_sent, answer_first = threading.Event(), threading.Event()
    real_send = store._send

    ids = {str(text_hashes([f"t{i}"])[0]): f"t{i}" for i in range(4)}  # markers are named by hashes

    def send(conn: object, commands: list[tuple[object, ...]]) -> None:
        markers = [ids[str(key).rsplit(":t:", 1)[1]] for key in commands[0][1:] if ":t:" in str(key)]
        if commands[0][0] == "MGET" and markers:  # a call's read (its transactions' markers)
            on_wire.append(markers[0])
            if markers[0] == "t0":  # the first call stays on the wire until told
                first_sent.set()
                answer_first.wait(10)
        real_send(conn, commands)

    store._send = send  # type: ignore[method-assign]
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


def test_lexorder_is_numpys_lexsort() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    hashes = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64)
    hashes[::5] = NO_ACCOUNT  # sentinels and repeats, as accounts and first sightings have them
    ticks = START + rng.integers(0, 10**12, n)
    ticks[::7] = NO_TIME
    cases = [
        (hashes, ticks, rng.integers(0, 300, n)),  # a batch's events: transaction, time, value
        (rng.integers(0, 2, n).astype(np.int8), ticks, rng.integers(0, 300, n)),  # small and wide keys
        (np.arange(n)[::-1].copy(), rng.integers(0, 3, n), rng.integers(0, 3, n)),  # ties everywhere
        (rng.integers(0, 2**40, n), rng.integers(0, 2**40, n), rng.integers(0, 2**40, n)),  # ranked, then packed
        (hashes[:1], ticks[:1]),
        (hashes[:0], ticks[:0]),
    ]
    for keys in cases:
        assert np.array_equal(lexorder(keys), np.lexsort(keys))
    texts = (np.array(["b", "a", "a"]), np.array([1, 2, 1]))  # not integers: numpy's own
    assert np.array_equal(lexorder(texts), np.lexsort(texts))


@pytest.mark.parametrize(("n", "m"), [(3, 5), (1000, 4000), (4000, 1000), (2000, 2000), (0, 9000), (9000, 0)])
def test_isin_is_numpys(n: int, m: int) -> None:
    rng = np.random.default_rng(n + m)
    among = rng.integers(-2**63, 2**63 - 1, m, dtype=np.int64)
    values = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64)
    values[::3] = among[rng.integers(0, m, len(values[::3]))] if m else values[::3]
    values[1::7] = np.iinfo(np.int64).max  # beyond every value among them
    assert np.array_equal(isin(values, among), np.isin(values, among))


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
    store.client.hset(f"{namespace}:{online_store.LAYOUT}:seed", mapping={"source": "m:1", "state": "loading"})
    with pytest.raises(StoreUnavailable, match="no history"):
        online.lookup([row(1)])
    store.mark_ready("m:1")
    assert feature(online, [row(1)], "device_id__count_1h") == 1


def test_a_rebuild_lowers_the_coverage_of_the_seed_it_read_only(redis_url: str) -> None:
    """A namespace holds every decided transaction since its seed's claim, or since an earlier complete rebuild; a
    rebuild that read the coverage of a seed since lost (and claimed again by a scorer) leaves the new one alone."""
    from datetime import timedelta

    namespace = f"t{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(redis_url, StoreLimits(keep_seconds=86_400), namespace=namespace)
    assert store.coverage() is None
    seed = f"{namespace}:{online_store.LAYOUT}:seed"
    store.client.eval(online_store._CLAIM, 1, seed, "m:1", "2026-03-01T10:00:00.250000+00:00")
    claimed = datetime(2026, 3, 1, 10, 0, 0, 250000, tzinfo=UTC)
    coverage = store.coverage()
    assert coverage is not None and coverage.since == claimed
    assert not store.mark_covered(claimed + timedelta(days=1), coverage)  # later: nothing to lower
    assert store.mark_covered(claimed - timedelta(days=7), coverage)
    assert store.coverage().since == claimed - timedelta(days=7)
    assert not store.mark_covered(claimed - timedelta(days=3), coverage)  # not below what it is
    store.client.delete(seed)  # lost, then claimed again by a scorer
    store.client.eval(online_store._CLAIM, 1, seed, "m:1", "2026-03-20T08:00:00.000001+00:00")
    assert not store.mark_covered(claimed - timedelta(days=30), coverage)
    assert store.coverage().since == datetime(2026, 3, 20, 8, 0, 0, 1, tzinfo=UTC)


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


def test_a_batch_reads_the_history_before_it_then_records_itself(new_store) -> None:
    """Each pair of a query is answered from the history before the call (accounts first seen strictly before
    its time, when its own account was first seen), then the batch is recorded once."""
    store, ticks = new_store(StoreLimits(keep_seconds=86_400)), START // 1000
    store.write(Records.of([Record("a", ticks, 5.0, "u1", (DEV,))]))
    query = Query([DEV], np.array([0, 0, 0]), np.array([ticks + 10, ticks + 10, ticks]),
                  np.r_[text_hashes(["u1", "u2"]), NO_ACCOUNT])
    states = store.read_and_write(query, Records.of([Record("b", ticks + 10, 7.0, "u2", (DEV,))]), lambda s: s)
    assert states.txn.tolist() == text_hashes(["a"]).tolist() and states.amount.tolist() == [5.0]
    assert states.account_first.tolist() == [ticks, NEVER, NEVER]
    assert states.accounts_before.tolist() == [1, 1, 0]  # u1 was first seen at ``ticks``: not strictly before
    after = store.read(Query([DEV], np.array([0]), np.array([ticks + 20]), text_hashes(["u2"])))
    assert after.txn.tolist() == text_hashes(["a", "b"]).tolist() and after.accounts_before.tolist() == [2]
    assert after.account_first.tolist() == [ticks + 10]
    assert store.write(Records.of([Record("b", ticks + 10, 7.0, "u2", (DEV,))])) == 0


def due_for_renewal(store: RedisStore, ref: EntityRef = DEV) -> None:
    """Make an entity value's blob due for renewal: the next write writes it whole (compare and set)."""
    store.client.setrange(store.key("e", ref), online_store._HEADER.fields["renew"][1], np.int64(0).tobytes())


def test_concurrent_writers_both_count_the_loser_reads_and_merges_again(redis_url: str) -> None:
    """Compare and set: a replica's batch written between another's read and its write of a blob whole makes that
    write read again what the other changed (only that), so that both batches count, once each."""
    namespace, limits = f"t{uuid.uuid4().hex[:8]}", StoreLimits(keep_seconds=86_400)
    first = RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=namespace)
    second = RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=namespace)
    OnlineFeatures(CONFIG, second).record([row(-100)])  # the device, 100 minutes before
    due_for_renewal(first)
    read_keys: list[list[str]] = []
    real_read = first._read

    def read_then_let_the_other_write(conn: object, blob_keys: list[str], *args: object) -> object:
        read_keys.append(blob_keys)
        answer = real_read(conn, blob_keys, *args)  # type: ignore[arg-type]
        if len(read_keys) == 1:  # the same device, another IP and user
            assert OnlineFeatures(CONFIG, second).record([row(1)]) == 1
        return answer

    first._read = read_then_let_the_other_write  # type: ignore[method-assign]
    assert OnlineFeatures(CONFIG, first).record([row(0)]) == 1
    assert len(read_keys[0]) == 3 and read_keys[1:] == [[first.key("e", DEV)]]
    assert first.take_races() == 1 and first.take_races() == 0 and second.take_races() == 0
    probe = OnlineFeatures(CONFIG, second)
    assert feature(probe, [row(2)], "device_id__count_1h") == 2
    assert feature(probe, [row(2)], "device_id__amount_sum_all") == -99 + 1 + 2
    assert feature(probe, [{**row(2), "ip_address": "ip0"}], "ip_address__count_all") == 1  # the first's, once


def test_a_scored_batch_computes_its_features_while_its_write_is_on_the_way(redis_url: str, monkeypatch) -> None:
    """The features of a scored batch are computed between sending the write script and reading its reply; when
    the write lost a race, computed again from what was read again (here: a transaction before it, written by
    another replica in between, which it then counts)."""
    import fraudops.entity_features as kernel_module

    namespace, limits = f"t{uuid.uuid4().hex[:8]}", StoreLimits(keep_seconds=86_400)
    first = RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=namespace)
    second = RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=namespace)
    OnlineFeatures(CONFIG, second).record([row(-100)])  # the device, 100 minutes before
    due_for_renewal(first)  # written whole by the next write: compared and set
    steps: list[str] = []
    real_write, real_read, real_kernel = first._write, first._read, kernel_module._entity_features

    def write(*args: object) -> object:
        steps.append("sent")
        reply = real_write(*args)  # type: ignore[arg-type]
        return lambda: steps.append("reply") or reply()

    def read_then_let_the_other_write(*args: object) -> object:
        answer = real_read(*args)  # type: ignore[arg-type]
        if not steps:
            assert OnlineFeatures(CONFIG, second).record([row(0)]) == 1  # same device, a minute before
        return answer

    monkeypatch.setattr(first, "_write", write)
    monkeypatch.setattr(first, "_read", read_then_let_the_other_write)
    monkeypatch.setattr(kernel_module, "_entity_features",
                        lambda *a, **k: steps.append("features") or real_kernel(*a, **k))
    online = OnlineFeatures(CONFIG, first)
    assert online.process([row(1)])[0, online.feature_names.index("device_id__count_1h")] == 1
    assert steps == ["sent", "features", "reply"] * 2 and first.take_races() == 1
    assert feature(OnlineFeatures(CONFIG, second), [row(2)], "device_id__count_1h") == 2  # both counted once


@pytest.fixture
def appending(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes of any size append (the tests' writes touch a few values, which are otherwise written whole)."""
    monkeypatch.setattr(online_store, "_APPEND_FROM", 1)


def test_a_small_write_writes_its_blobs_whole_unless_it_lost_a_race(redis_url: str) -> None:
    """Single transactions (fewer than `_APPEND_FROM` values) write their blobs whole, leaving no tail for the next
    read to settle; one that lost the compare and set appends when it tries again, so that it cannot lose again."""
    namespace, limits = f"t{uuid.uuid4().hex[:8]}", StoreLimits(keep_seconds=86_400)
    first = RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=namespace)
    second = RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=namespace)
    online = OnlineFeatures(CONFIG, first)
    online.record([row(0)])
    online.record([row(1)])
    assert stored(first)[1] == 0 and stored(first)[0]["n_events"] == 2
    real_read, reads = first._read, []

    def read_then_let_the_other_write(*args: object) -> object:
        answer = real_read(*args)  # type: ignore[arg-type]
        reads.append(1)
        if len(reads) == 1:
            assert OnlineFeatures(CONFIG, second).record([row(2)]) == 1  # written whole: a new token
        return answer

    first._read = read_then_let_the_other_write  # type: ignore[method-assign]
    assert online.record([row(3)]) == 1
    assert first.take_races() == 1 and len(reads) == 2
    assert stored(first)[1] == 1 and stored(first)[0]["n_events"] == 3  # lost once, then appended
    assert feature(OnlineFeatures(CONFIG, second), [row(4)], "device_id__count_all") == 4


def stored(store: RedisStore, ref: EntityRef = DEV) -> tuple[np.void, int]:
    """An entity value's blob as Redis holds it: its header, and how many events its tail holds."""
    raw = store.client.get(store.key("e", ref))
    assert raw is not None
    head = np.frombuffer(raw[:64], online_store._HEADER)[0]
    whole = 64 + 32 * int(head["n_events"]) + 16 * int(head["n_accounts"])
    return head, (len(raw) - whole) // 32


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b, equal_nan=True))


def test_a_value_gets_its_new_events_appended_and_a_long_tail_written_whole(redis_url: str, appending: None) -> None:
    """A new value's blob is a header of no history with its first events as a tail; its next transactions are
    appended to it (no compare and set: the token stays), until the tail would pass `_TAIL_EVENTS`: then it is written
    whole, folded, with a new token. Reads fold a tail as a write would have: features and state equal the in-memory
    reference's."""
    limits = StoreLimits(keep_seconds=86_400)
    store = RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=f"t{uuid.uuid4().hex[:8]}")
    online, reference = OnlineFeatures(CONFIG, store), OnlineFeatures(CONFIG, MemoryStore(limits))
    rows = [row(i, seconds=3 * 3600, user="u") | {"ip_address": "ip"} for i in range(online_store._TAIL_EVENTS + 1)]
    assert same_values(online.process(rows[:1]), reference.process(rows[:1]))
    token = stored(store)[0]["token"]
    for i, one in enumerate(rows[1:-1], 1):
        assert same_values(online.process([one]), reference.process([one]))
        head, tail = stored(store)
        assert head["token"] == token and tail == i + 1 and head["n_events"] == 0
    assert same_values(online.process(rows[-1:]), reference.process(rows[-1:]))
    head, tail = stored(store)
    assert tail == 0 and head["token"] != token and head["n_events"] == 9  # a day of 3-hour steps
    for ref in (DEV, EntityRef("ip_address", "ip", True), EntityRef("user_id", "u", False)):
        ours, theirs = store.read(Query([ref])), reference.store.read(Query([ref]))
        assert ours.ticks.tolist() == theirs.ticks.tolist() and ours.count.tolist() == theirs.count.tolist()
        assert ours.amount_sum.tolist() == theirs.amount_sum.tolist()
    probe = [row(40, seconds=3 * 3600, user="v")]
    assert same_values(online.lookup(probe), reference.lookup(probe))


def test_writers_appending_at_once_both_count_and_a_retry_appended_twice_counts_once(redis_url: str,
                                                                                     appending: None) -> None:
    """Appends commute: a replica appending between another's read and write costs that write no second read,
    and a transaction both append (a retry sent to both at once) counts once."""
    namespace, limits = f"t{uuid.uuid4().hex[:8]}", StoreLimits(keep_seconds=86_400)
    first = RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=namespace)
    second = RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=namespace)
    known = {"ip_address": "ip", "user_id": "u"}
    OnlineFeatures(CONFIG, first).record([row(0) | known])
    retried = row(1) | known
    real_read = first._read

    def read_then_let_the_other_write(*args: object) -> object:
        answer = real_read(*args)  # type: ignore[arg-type]
        assert OnlineFeatures(CONFIG, second).record([retried, row(2) | known]) == 2
        return answer

    first._read = read_then_let_the_other_write  # type: ignore[method-assign]
    assert OnlineFeatures(CONFIG, first).record([retried, row(3) | known]) == 2  # it did not see the other's
    assert first.take_races() == 0 and stored(first)[1] == 5  # row 0 and the retry twice in the tail
    probe = OnlineFeatures(CONFIG, second)
    assert feature(probe, [row(4) | known], "device_id__count_all") == 4  # 0, 1 once, 2, 3
    assert feature(probe, [row(4) | known], "ip_address__amount_sum_all") == 1 + 2 + 3 + 4
    assert kept(second) == 4


def test_a_blob_written_whole_loses_to_an_append_between_its_read_and_write(redis_url: str, appending: None) -> None:
    """A blob to be written whole (here: due for renewal when read) is compared on its token and its length: an
    append in between, which leaves the token, makes the writer read it again, so that the appended event is kept."""
    namespace, limits = f"t{uuid.uuid4().hex[:8]}", StoreLimits(keep_seconds=86_400)
    first = RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=namespace)
    second = RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=namespace)
    OnlineFeatures(CONFIG, first).record([row(0)])
    key, at = first.key("e", DEV), online_store._HEADER.fields["renew"][1]
    renew = first.client.getrange(key, at, at + 7)
    due_for_renewal(first)
    real_read, reads = first._read, []

    def read_then_let_the_other_append(*args: object) -> object:
        answer = real_read(*args)  # type: ignore[arg-type]
        reads.append(1)
        if len(reads) == 1:  # not due for the other: it appends
            first.client.setrange(key, at, renew)
            assert OnlineFeatures(CONFIG, second).record([row(1)]) == 1
        return answer

    first._read = read_then_let_the_other_append  # type: ignore[method-assign]
    assert OnlineFeatures(CONFIG, first).record([row(2)]) == 1
    assert first.take_races() == 1 and stored(first)[1] == 3  # read again: not due any more, appended
    assert feature(OnlineFeatures(CONFIG, second), [row(3)], "device_id__count_all") == 3


def test_an_append_to_a_value_that_expired_since_the_read_starts_it_again(redis_url: str, appending: None) -> None:
    """An append that finds no blob (it expired after the read) writes the header of a value without history first,
    with the expiry of a new blob; a value created meanwhile by another writer gets the tail appended instead."""
    namespace, limits = f"t{uuid.uuid4().hex[:8]}", StoreLimits(keep_seconds=86_400, retention_seconds=8 * 86_400)
    store = RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=namespace)
    other = RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=namespace)
    online = OnlineFeatures(CONFIG, store)
    online.record([row(0)])
    real_read = store._read
    meanwhile = [lambda: store.client.delete(store.key("e", DEV)),
                 lambda: OnlineFeatures(CONFIG, other).record([row(3) | {"device_id": "new"}])]

    def read_then(*args: object) -> object:
        answer = real_read(*args)  # type: ignore[arg-type]
        meanwhile.pop(0)()
        return answer

    store._read = read_then  # type: ignore[method-assign]
    assert online.record([row(1)]) == 1
    store._read = real_read  # type: ignore[method-assign]
    assert store.take_races() == 0 and stored(store)[1] == 1 and stored(store)[0]["n_events"] == 0
    assert retention_ttl(store, store.key("e", DEV), 8 * 86_400)
    assert feature(online, [row(2)], "device_id__count_all") == 1  # the expired history is gone, row 1 is not
    store._read = read_then  # type: ignore[method-assign]
    assert online.record([row(2) | {"device_id": "new"}]) == 1  # absent when read, created meanwhile: appended
    store._read = real_read  # type: ignore[method-assign]
    new = EntityRef("device_id", "new", True)
    assert stored(store, new)[1] == 2 and kept(store, new) == 2 and store.take_races() == 0


def test_appends_keep_the_expiry_and_a_blob_due_for_renewal_is_written_whole(redis_url: str, appending: None) -> None:
    """A blob written whole expires after the retention and an eighth (its header says until when appends may
    leave the expiry as it is); a write after that writes it whole again, renewing the expiry."""
    limits = StoreLimits(keep_seconds=86_400, retention_seconds=8 * 86_400)
    store = RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=f"t{uuid.uuid4().hex[:8]}")
    online, key = OnlineFeatures(CONFIG, store), store.key("e", DEV)
    online.record([row(0)])
    assert retention_ttl(store, key, 8 * 86_400)
    assert stored(store)[0]["renew"] - time.time() == pytest.approx(86_400, abs=100)
    store.client.expire(key, 1_000)
    online.record([row(1)])
    assert stored(store)[1] == 2 and store.client.ttl(key) <= 1_000  # appended: the expiry left as it was
    due_for_renewal(store)
    online.record([row(2)])
    assert stored(store)[1] == 0 and retention_ttl(store, key, 8 * 86_400)
    assert feature(online, [row(3)], "device_id__count_all") == 3


def test_a_scored_batch_does_its_work_without_history_while_its_read_is_on_the_way(redis_url: str,
                                                                                   monkeypatch) -> None:
    """``meanwhile`` (the scorer's row features) runs between sending the read and reading its reply."""
    store = RedisStore.from_url(redis_url, StoreLimits(keep_seconds=86_400), timeout_s=2,
                                namespace=f"t{uuid.uuid4().hex[:8]}")
    steps: list[object] = []
    real_send, real_receive = store._send, store._receive
    monkeypatch.setattr(store, "_send", lambda conn, commands: steps.append(commands[0][0]) or real_send(conn,
                                                                                                      commands))
    monkeypatch.setattr(store, "_receive", lambda *args: steps.append("reply") or real_receive(*args))
    online = OnlineFeatures(CONFIG, store)
    online.process([row(0)], lambda features: steps.append("features"), lambda: steps.append("meanwhile"))
    assert steps == ["MGET", "meanwhile", "reply", "features", "reply"]  # the write's script: sent, then its reply


def test_a_blob_of_another_layout_is_refused_not_misread(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, StoreLimits(keep_seconds=86_400), timeout_s=2,
                                namespace=f"t{uuid.uuid4().hex[:8]}")
    store.client.set(store.key("e", DEV), b"\x07\x00" + bytes(62))
    with pytest.raises(StoreUnavailable, match="'device_id:dev' is not a layout-3 blob") as error:
        OnlineFeatures(CONFIG, store).lookup([row(0)])
    assert error.value.answered


def test_a_refused_read_records_nothing(redis_url: str) -> None:
    """A store without history refuses the read of a scored batch and does not record it either (the scorer answers
    from the frozen snapshot, flagged; the rebuild from the prediction log restores it)."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(redis_url, StoreLimits(keep_seconds=86_400), namespace=namespace,
                                require_history=True)
    online = OnlineFeatures(CONFIG, store)
    with pytest.raises(StoreUnavailable, match="NOHISTORY"):
        online.process([row(0)])
    assert not store.client.exists(marker(store, "t0"), store.key("e", DEV))
    store.mark_ready("m:1")
    assert online.process([row(0)])[0, online.feature_names.index("device_id__count_1h")] == 0
    assert store.client.exists(store.key("e", DEV))


def test_a_store_url_must_be_a_redis_url() -> None:
    with pytest.raises(ValueError, match="must start with redis://") as error:
        RedisStore.from_url("http://:s3cret@localhost:6379", StoreLimits(keep_seconds=100))
    assert "s3cret" not in str(error.value) and "got http://" in str(error.value)


def test_hashes_of_accounts_and_transaction_ids_are_stable() -> None:
    """Stored blobs and every replica depend on these exact values: a change of the hash is a change of layout."""
    assert text_hashes(["u1", "t-1", "", "ünïcödé ✓", None]).tolist() == [
        -4985727293639725253, 5661162605499955649, 8624156199600104480, -2282122819317484970, NO_ACCOUNT]
    assert text_hashes([]).tolist() == []
