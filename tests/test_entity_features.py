"""Real-time entity features: the offline replay against the definition, and the online path against the offline one."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fraudops.data.synthetic import generate_transactions
from fraudops.entity_features import EntityFeatureConfig, OnlineFeatures, Window, offline_features, row_columns
from fraudops.normalize import MISSING, entity_keys, ticks
from fraudops.online_store import MemoryStore, RedisStore, StoreLimits
from fraudops.schema import IEEE_CIS, SYNTHETIC

CONFIG = EntityFeatureConfig.create(SYNTHETIC, "datetime", ["1h", "1d", "3d"])  # 3d < the 30 days: events fold


def brute_force(frame: pd.DataFrame, config: EntityFeatureConfig) -> pd.DataFrame:
    """The definition, one row at a time: every transaction of the same entity strictly earlier, in the window."""
    spec = config.spec
    kind = config.time_kind
    t = ticks(frame[spec.timestamp].to_numpy(), kind)
    amount = frame[spec.amount].to_numpy(dtype="float64")
    account = entity_keys(frame[spec.account]).to_numpy(dtype=object)
    out = {name: np.full(len(frame), np.nan) for name in config.feature_names}
    for col in config.columns:
        key = entity_keys(frame[col]).to_numpy(dtype=object)
        for i in np.flatnonzero(key != MISSING):
            before = (key == key[i]) & (t < t[i])
            for span, seconds in [*((w.name, w.seconds) for w in config.windows), ("all", None)]:
                seen = before & (t >= t[i] - seconds * 1_000_000) if seconds else before
                out[f"{col}__count_{span}"][i] = seen.sum()
                if config.paired(col):
                    out[f"{col}__accounts_{span}"][i] = len(set(account[seen]) - {MISSING})
                out[f"{col}__amount_sum_{span}"][i] = amount[seen].sum()
                out[f"{col}__amount_mean_{span}"][i] = amount[seen].mean() if seen.any() else np.nan
                out[f"{col}__amount_max_{span}"][i] = amount[seen].max() if seen.any() else np.nan
            out[f"{col}__seconds_since_prev"][i] = (t[i] - t[before].max()) / 1e6 if before.any() else np.nan
            out[f"{col}__first_seen"][i] = float(not before.any())
    return pd.DataFrame(out, index=frame.index)


def awkward_table(n: int, seed: int) -> pd.DataFrame:
    """Synthetic transactions with ties (a block at one time), missing devices, IPs and accounts, empty accounts."""
    frame = generate_transactions(n, seed=seed)
    frame.loc[frame.index[20:32], "purchase_time"] = frame.loc[frame.index[20], "purchase_time"]
    frame.loc[frame.index[40:46], "device_id"] = None
    frame.loc[frame.index[50:53], "ip_address"] = None
    frame.loc[frame.index[60:63], "user_id"] = None
    frame.loc[frame.index[70:74], "user_id"] = ""  # an empty account is an account
    return frame.sort_values("purchase_time", kind="stable").reset_index(drop=True)


def as_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as `fraudops.serving.RowSchema` hands them over: times in UTC nanoseconds, text keys or None."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    for row in rows:
        row["purchase_time"] = pd.Timestamp(row["purchase_time"]).value
    return rows


def replay(online: OnlineFeatures, rows: list[dict[str, Any]], sizes: tuple[int, ...]) -> pd.DataFrame:
    """Feed rows in time order in batches of the given sizes (cycled); the features of every row."""
    chunks, i = [], 0
    for size in itertools.cycle(sizes):
        if i >= len(rows):
            break
        chunks.append(online.process(rows[i:i + size]))
        i += size
    return pd.DataFrame(np.vstack(chunks), columns=online.feature_names)


def assert_same_features(online: pd.DataFrame, offline: pd.DataFrame) -> None:
    assert list(online.columns) == list(offline.columns)
    for name in offline.columns:
        got, want = online[name].to_numpy(), offline[name].to_numpy()
        if "amount" in name:
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


def make_store(kind: str, redis_url: str | None, limits: StoreLimits) -> MemoryStore | RedisStore:
    if kind == "memory":
        return MemoryStore(limits)
    assert redis_url is not None
    return RedisStore.from_url(redis_url, limits, timeout_s=2, namespace=f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_url(store_kind: str, request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("redis_url") if store_kind == "redis" else None


# -- names and configuration --------------------------------------------------------------------------------
def test_feature_names_are_stable() -> None:
    config = EntityFeatureConfig.create(SYNTHETIC, "datetime")
    names = config.feature_names
    assert config.columns == ["device_id", "ip_address", "user_id"]
    assert names[:7] == ["device_id__count_1h", "device_id__accounts_1h", "device_id__amount_sum_1h",
                         "device_id__amount_mean_1h", "device_id__amount_max_1h", "device_id__count_24h",
                         "device_id__accounts_24h"]
    assert "device_id__amount_max_7d" in names and "device_id__count_all" in names
    assert names[20:22] == ["device_id__seconds_since_prev", "device_id__first_seen"]
    assert not any(n.startswith("user_id__accounts") for n in names)  # the account itself
    assert len(names) == 2 * 22 + 18
    ieee = EntityFeatureConfig.create(IEEE_CIS, "seconds")
    assert ieee.columns == ["card1", "addr1", "DeviceInfo"] and "addr1__accounts_7d" in ieee.feature_names


@pytest.mark.parametrize(("window", "message"), [
    ("1 hour", "window '1 hour' must be a whole number and a unit"), ("0h", "must be a whole number"),
    ("7", "must be a whole number"),
])
def test_bad_windows_are_named(window: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Window.parse(window)


def test_windows_of_equal_length_are_rejected() -> None:
    with pytest.raises(ValueError, match="windows must differ in length"):
        EntityFeatureConfig.create(SYNTHETIC, "datetime", ["24h", "1d"])


# -- offline ------------------------------------------------------------------------------------------------
def test_offline_features_follow_the_definition() -> None:
    frame = awkward_table(600, seed=5)
    offline = offline_features(frame, CONFIG)
    assert list(offline.columns) == CONFIG.feature_names and offline.index.equals(frame.index)
    assert_same_features(offline, brute_force(frame, CONFIG)[CONFIG.feature_names])


def test_offline_features_with_seconds_times_and_numeric_keys() -> None:
    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame({
        "TransactionDT": np.sort(rng.integers(86_400, 86_400 + 10 * 86_400, n)).astype("int64"),
        "TransactionAmt": np.round(rng.lognormal(4, 1, n), 3),
        "card1": rng.integers(1000, 1030, n),
        "addr1": np.where(rng.random(n) < 0.1, np.nan, rng.integers(100, 110, n).astype(float)),
        "DeviceInfo": rng.choice(np.array(["Windows", "iOS", None], dtype=object), n),
    })
    frame.loc[5:9, "TransactionDT"] = frame.loc[5, "TransactionDT"]
    config = EntityFeatureConfig.create(IEEE_CIS, "seconds", ["1h", "1d"])
    assert_same_features(offline_features(frame, config), brute_force(frame, config)[config.feature_names])


def test_offline_features_do_not_depend_on_row_order() -> None:
    frame = awkward_table(500, seed=8)
    shuffled = frame.sample(frac=1.0, random_state=1)
    pd.testing.assert_frame_equal(offline_features(shuffled, CONFIG).loc[frame.index], offline_features(frame, CONFIG))


def test_one_two_spellings_of_a_key_are_one_entity_and_ties_are_not_seen() -> None:
    frame = pd.DataFrame({
        "purchase_time": pd.to_datetime(["2026-01-01 10:00", "2026-01-01 10:01", "2026-01-01 10:01",
                                         "2026-01-01 10:02", "2026-01-01 10:03"]),
        "device_id": pd.Series([1, 1.0, "1", "1.0", None], dtype=object),
        "ip_address": ["a", "b", "c", "d", "e"], "user_id": ["u1", "u2", "u2", "u3", "u1"],
        "amount": [10.0, 20.0, 30.0, 40.0, 50.0],
    })
    out = offline_features(frame, CONFIG)
    assert out["device_id__count_1h"].tolist()[:4] == [0, 1, 1, 3]  # rows 1 and 2 tie: neither sees the other
    assert out["device_id__accounts_1h"].tolist()[:4] == [0, 1, 1, 2]
    assert out["device_id__amount_max_all"].tolist()[:4][1:] == [10.0, 10.0, 30.0]
    assert out["device_id__seconds_since_prev"].tolist()[:4][1:] == [60.0, 60.0, 60.0]
    assert out["device_id__first_seen"].tolist()[:4] == [1.0, 0.0, 0.0, 0.0]
    assert out.iloc[4].filter(like="device_id__").isna().all()  # a missing device is no entity
    assert out["user_id__count_all"].tolist() == [0, 0, 0, 0, 1]


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.drop(columns="ip_address"), r"need the columns \['ip_address'\], missing from the table"),
    (lambda f: f.assign(amount=f["amount"].where(f.index != 3)), "amount column 'amount' has 1 missing or not"
                                                                   " finite values \\(first at index 3\\)"),
    (lambda f: f.assign(purchase_time=f["purchase_time"].astype(str).where(f.index != 2, "soon")),
     "time column 'purchase_time' has 1 missing or unreadable values \\(first at index 2\\)"),
])
def test_bad_tables_are_named(change: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        offline_features(change(generate_transactions(20, seed=1)), CONFIG)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("purchase_time", "2026-01-01", "row 1: 'purchase_time' must be UTC nanoseconds"),
    ("amount", float("nan"), "row 1: 'amount' must be a finite number"),
    ("device_id", True, "row 1: 'device_id' must be a text or integer key, got True"),
])
def test_bad_rows_are_named(field: str, value: Any, message: str) -> None:
    rows = as_rows(generate_transactions(3, seed=1))
    rows[1][field] = value
    with pytest.raises(ValueError, match=message):
        row_columns(rows, CONFIG)


@pytest.mark.parametrize("spellings", [["7", "7.0", None, "x", "7"], ["7", 7.0, None, "x", 7]])
def test_row_keys_are_normalised_like_the_frame_path(spellings: list[Any]) -> None:
    """Text keys (validated rows) are normalised once per distinct text, other values row by row: either way
    "7", "7.0", 7 and 7.0 are one entity, as in `frame_columns`; ids are keys too."""
    rows = as_rows(generate_transactions(5, seed=1))
    for row, value in zip(rows, spellings, strict=True):
        row["device_id"], row["transaction_id"] = value, value if value is not None else "t-none"
    columns = row_columns(rows, CONFIG)
    device = columns.keys["device_id"]
    assert device.codes.tolist() == [0, 0, -1, 1, 0] and device.uniques.tolist() == ["7", "x"]
    assert columns.txn == ["7", "7", "t-none", "x", "7"]


def test_rows_without_an_id_get_a_stable_digest() -> None:
    rows = as_rows(generate_transactions(3, seed=1))
    for row in rows:
        del row["transaction_id"]
    first, again = row_columns(rows, CONFIG).txn, row_columns(rows, CONFIG).txn
    assert first == again and len(set(first or [])) == 3 and all(t.startswith("h:") for t in first or [])


def test_bursts_and_rings_stand_out_in_short_windows() -> None:
    frame = generate_transactions(5000, seed=11, with_pattern=True)
    features = offline_features(frame, EntityFeatureConfig.create(SYNTHETIC, "datetime"))
    mean = features.groupby(frame["fraud_pattern"]).mean()
    assert mean.loc["card_testing", "device_id__count_1h"] > 10 * mean.loc["none", "device_id__count_1h"]
    assert mean.loc["card_testing", "ip_address__count_1h"] > 10 * mean.loc["none", "ip_address__count_1h"]
    assert mean.loc["device_ip_ring", "device_id__count_24h"] > 3 * mean.loc["none", "device_id__count_24h"]
    assert mean.loc["device_ip_ring", "device_id__accounts_24h"] > 3 * mean.loc["none", "device_id__accounts_24h"]


# -- online -------------------------------------------------------------------------------------------------
def test_online_replay_equals_offline(store_kind: str, store_url: str | None) -> None:
    frame = awkward_table(1500, seed=2)
    store = make_store(store_kind, store_url, StoreLimits(keep_seconds=CONFIG.longest_seconds))
    online = replay(OnlineFeatures(CONFIG, store), as_rows(frame), sizes=(1, 4, 1, 9, 2))
    assert_same_features(online, offline_features(frame, CONFIG))


def test_a_replay_through_appended_tails_equals_offline_and_the_reference_store(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write appending (small writes are otherwise written whole), tails are settled at every read exactly as
    the writes would have: the features equal the offline ones; with a cap of 4 events per value and late rows
    (shuffled within each day), equal to the in-memory reference's."""
    from fraudops import online_store

    monkeypatch.setattr(online_store, "_APPEND_FROM", 1)
    frame = awkward_table(1500, seed=2)
    store = make_store("redis", redis_url, StoreLimits(keep_seconds=CONFIG.longest_seconds))
    assert_same_features(replay(OnlineFeatures(CONFIG, store), as_rows(frame), sizes=(1, 4, 1, 9, 2)),
                         offline_features(frame, CONFIG))
    day = frame["purchase_time"].dt.floor("D")
    late = frame.groupby(day, group_keys=False).apply(lambda part: part.sample(frac=1.0, random_state=3))
    limits = StoreLimits(keep_seconds=CONFIG.longest_seconds, max_events=4)
    got, want = (replay(OnlineFeatures(CONFIG, make_store(kind, redis_url, limits)), as_rows(late),
                        sizes=(1, 4, 1, 9, 2)) for kind in ("redis", "memory"))
    assert_same_features(got, want)


@pytest.mark.slow
def test_online_replay_of_5000_rows_row_by_row_and_in_batches_equals_offline(store_kind: str,
                                                                             store_url: str | None) -> None:
    frame = awkward_table(5000, seed=21)
    offline = offline_features(frame, CONFIG)
    for sizes in ((1,), (25, 3, 50)):
        store = make_store(store_kind, store_url, StoreLimits(keep_seconds=CONFIG.longest_seconds))
        assert_same_features(replay(OnlineFeatures(CONFIG, store), as_rows(frame), sizes), offline)


def test_rows_validated_by_the_scorer_schema_give_the_offline_features() -> None:
    """The serving path end to end: raw JSON-like transactions, `RowSchema` validation, then the online kernel."""
    from fraudops.features import FeatureState
    from fraudops.serving.rows import RowSchema
    from fraudops.validation import validate

    frame = generate_transactions(400, seed=6)
    frame.loc[frame.index[10:14], "device_id"] = None
    result = validate(frame, SYNTHETIC)
    schema = RowSchema(FeatureState.fit(result.clean, SYNTHETIC, result.numeric))
    raw = frame.drop(columns=["is_fraud"]).astype(object).where(frame.notna(), None)
    for col in ("purchase_time", "signup_time"):
        raw[col] = frame[col].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    raw["device_id"] = [7 if i % 50 == 0 else d for i, d in enumerate(raw["device_id"])]  # an integer id
    rows = schema.validate(raw.to_dict("records"))
    online = replay(OnlineFeatures(CONFIG, MemoryStore(StoreLimits(keep_seconds=CONFIG.longest_seconds))), rows,
                    sizes=(1, 5))
    expected = frame.assign(device_id=raw["device_id"].map(lambda d: None if d is None else str(d)))
    assert_same_features(online, offline_features(expected, CONFIG))


def test_a_retried_transaction_counts_once_and_sees_the_same_features(store_kind: str, store_url: str | None) -> None:
    frame = awkward_table(60, seed=4)
    rows, names = as_rows(frame), CONFIG.feature_names
    store = make_store(store_kind, store_url, StoreLimits(keep_seconds=CONFIG.longest_seconds))
    online = OnlineFeatures(CONFIG, store)
    first = online.process(rows[:40])
    again = online.process(rows[30:40])  # a client retries its last ten
    assert_same_features(pd.DataFrame(again, columns=names), pd.DataFrame(first[30:40], columns=names))
    assert online.record(rows[:40]) == 0
    rest = pd.DataFrame(online.process(rows[40:]), columns=names, index=frame.index[40:])
    assert_same_features(rest, offline_features(frame, CONFIG).iloc[40:])


def test_the_store_must_keep_the_longest_window() -> None:
    with pytest.raises(ValueError, match=r"keeps 3600 s of events, less than the longest window \(259200 s\)"):
        OnlineFeatures(CONFIG, MemoryStore(StoreLimits(keep_seconds=3600)))


def test_an_empty_batch_has_no_features() -> None:
    online = OnlineFeatures(CONFIG, MemoryStore(StoreLimits(keep_seconds=CONFIG.longest_seconds)))
    assert online.process([]).shape == (0, len(CONFIG.feature_names))


# -- frozen snapshot ----------------------------------------------------------------------------------------
def test_a_snapshot_reads_as_the_memory_store_that_recorded_the_table(tmp_path) -> None:
    """The vectorised snapshot holds what a memory store holds after recording the table (folded events, capped
    events, accounts beyond the exact limit), and features looked up against it (saved and loaded) are equal."""
    from fraudops.entity_features import snapshot
    from fraudops.online_store import SnapshotStore

    frame = awkward_table(3000, seed=11)
    history, later = frame.iloc[:2500], frame.iloc[2500:]
    limits = StoreLimits(keep_seconds=3 * 86_400, max_events=4, exact_accounts=2)
    memory = MemoryStore(limits)
    OnlineFeatures(CONFIG, memory).record(as_rows(history.sample(frac=1, random_state=0)))
    frozen = snapshot(history, CONFIG, limits)
    frozen.save(tmp_path / "snap")
    loaded = SnapshotStore.load(tmp_path / "snap")
    assert any(not f.accounts_exact.all() for f in frozen.columns.values() if f.accounts_exact is not None)
    assert any(f.count.any() for f in frozen.columns.values())  # something was folded
    rows = as_rows(later)
    want = OnlineFeatures(CONFIG, memory).lookup(rows)
    for store in (frozen, loaded):
        got = OnlineFeatures(CONFIG, store).lookup(rows)
        assert_same_features(pd.DataFrame(got, columns=CONFIG.feature_names),
                             pd.DataFrame(want, columns=CONFIG.feature_names))
    frame_path = OnlineFeatures(CONFIG, loaded).lookup_frame(later)
    assert_same_features(frame_path.reset_index(drop=True), pd.DataFrame(want, columns=CONFIG.feature_names))
    with pytest.raises(TypeError, match="read-only"):
        OnlineFeatures(CONFIG, loaded).record(rows)


def test_a_seeded_redis_store_continues_the_training_table(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new store loaded with a bundle's frozen snapshot gives the live rows after the training table the
    features of the whole table replayed (windows and all history continue); the load resumes after a loader
    died half-way without counting anything twice, and happens once per namespace."""
    from fraudops.entity_features import snapshot
    from fraudops.online_store import SeedResult, StoreUnavailable

    frame = awkward_table(3000, seed=11)
    history, later = frame.iloc[:2500], frame.iloc[2500:]
    limits = StoreLimits(keep_seconds=CONFIG.longest_seconds)
    frozen = snapshot(history, CONFIG, limits)
    assert any(f.count.any() for f in frozen.columns.values())  # something was folded
    store = make_store("redis", redis_url, limits)
    assert isinstance(store, RedisStore)
    written: list[int] = []

    def dies_after_one_write(records: list[Any]) -> int:
        if written:
            raise StoreUnavailable("loader died")
        written.append(len(records))
        return RedisStore.write(store, records)

    with monkeypatch.context() as patch:
        patch.setattr(store, "write", dies_after_one_write)
        with pytest.raises(StoreUnavailable, match="loader died"):
            store.seed(frozen, "fraud-detector:a", chunk=300)
    assert store.seed_state()["state"] == "loading"
    result = store.seed(frozen, "fraud-detector:a", chunk=300)
    assert result.loaded and result.transactions == len(frozen.records())
    assert store.seed_state()["state"] == "ready"
    assert store.seed(frozen, "fraud-detector:a") == store.seed(frozen, "fraud-detector:b") == SeedResult(
        False, "fraud-detector:a")
    online = replay(OnlineFeatures(CONFIG, store), as_rows(later), sizes=(7, 1, 30))
    assert_same_features(online, offline_features(frame, CONFIG).iloc[2500:].reset_index(drop=True))


def test_a_seed_beyond_exact_accounts_counts_them_in_the_hyperloglog(redis_url: str) -> None:
    """Values the snapshot counted beyond ``exact_accounts`` get their count as HyperLogLog placeholders: the
    seeded store answers like the snapshot, the all-history account counts of those values within the HyperLogLog's
    error plus the accounts of their kept events, which the placeholders may count again (documented)."""
    from fraudops.entity_features import snapshot

    frame = awkward_table(3000, seed=11)
    limits = StoreLimits(keep_seconds=3 * 86_400, max_events=4, exact_accounts=2)
    frozen = snapshot(frame.iloc[:2500], CONFIG, limits)
    assert any(not f.accounts_exact.all() for f in frozen.columns.values() if f.accounts_exact is not None)
    store = make_store("redis", redis_url, limits)
    assert isinstance(store, RedisStore) and store.seed(frozen, "fraud-detector:a").loaded
    rows = as_rows(frame.iloc[2500:])
    want = pd.DataFrame(OnlineFeatures(CONFIG, frozen).lookup(rows), columns=CONFIG.feature_names)
    got = pd.DataFrame(OnlineFeatures(CONFIG, store).lookup(rows), columns=CONFIG.feature_names)
    estimated = [name for name in CONFIG.feature_names if name.endswith("__accounts_all")]
    assert_same_features(got.drop(columns=estimated), want.drop(columns=estimated))
    for name in estimated:
        assert (got[name].isna() == want[name].isna()).all()
        differ = got[name].notna() & (got[name] != want[name])
        assert differ.any()  # some values are beyond exact counting
        assert ((got[name] >= 0.97 * want[name]) & (got[name] <= 1.03 * want[name] + limits.max_events))[differ].all()


def test_a_batch_beyond_one_mget_reads_and_records_in_chunks(redis_url: str) -> None:
    """A rebuild's or a seed's large batch: more keys than one MGET takes (10,000) are read in several, in order."""
    frame = awkward_table(6000, seed=5)
    rows = as_rows(frame)
    store = make_store("redis", redis_url, StoreLimits(keep_seconds=CONFIG.longest_seconds))
    online = OnlineFeatures(CONFIG, store)
    online.process(rows[:2000])
    got = online.process(rows[2000:])  # 4,000 transactions: ~12,000 entity values
    assert_same_features(pd.DataFrame(got, columns=CONFIG.feature_names),
                         offline_features(frame, CONFIG).iloc[2000:].reset_index(drop=True))
    replay = OnlineFeatures(CONFIG, make_store("redis", redis_url, StoreLimits(keep_seconds=CONFIG.longest_seconds)))
    assert replay.record(rows) == len(rows)  # 6,000 markers besides the entity values
    assert replay.record(rows) == 0
