"""The shared feature function: what is trained is what is served."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraudops.entity_features import EntityFeatureConfig
from fraudops.features import MISSING, FeatureState
from fraudops.schema import SYNTHETIC, DatasetSpec
from fraudops.validation import validate

ROW_NAMES = ["country", "source", "browser", "category", "payment_method", "amount",
             "hour", "day_of_week", "seconds_since_signup"]
EXPECTED_NAMES = [*ROW_NAMES, *EntityFeatureConfig.create(SYNTHETIC, "datetime").feature_names]


@pytest.fixture(scope="module")
def history(transactions) -> tuple[pd.DataFrame, list[str]]:
    """A validated history with some missing entity values."""
    frame = transactions(300, seed=7)
    frame.loc[[10, 11, 200], "device_id"] = None
    frame.loc[[12], "ip_address"] = None
    result = validate(frame, SYNTHETIC)
    assert result.report.n_rejected == 0
    return result.clean, result.numeric


@pytest.fixture(scope="module")
def state(history) -> FeatureState:
    clean, numeric = history
    return FeatureState.fit(clean, SYNTHETIC, numeric)


def assert_features_equal(got: pd.DataFrame, want: pd.DataFrame, what: str) -> None:
    """Equal; amount sums and means to rounding (sums are added up in another order)."""
    assert list(got.columns) == list(want.columns), what
    for name in want.columns:
        if "__amount_" in name:
            np.testing.assert_allclose(got[name].to_numpy("float64"), want[name].to_numpy("float64"), rtol=1e-12,
                                       equal_nan=True, err_msg=f"{what}: {name}")
        else:
            assert got[name].tolist() == want[name].tolist() or np.array_equal(
                got[name].to_numpy("float64"), want[name].to_numpy("float64"), equal_nan=True), f"{what}: {name}"


def test_feature_names_order(state):
    assert state.feature_names == EXPECTED_NAMES
    assert state.entity_columns == ["device_id", "ip_address", "user_id"]
    assert state.categorical_features == list(SYNTHETIC.categorical)


def test_transform_columns_follow_feature_names(state, history):
    clean, _ = history
    shuffled_columns = clean[list(reversed(clean.columns))]
    out = state.transform(shuffled_columns)
    assert list(out.columns) == EXPECTED_NAMES
    pd.testing.assert_frame_equal(out, state.transform(clean))
    assert out.index.equals(clean.index)


def _positions_to_check(clean: pd.DataFrame, replayed: pd.DataFrame) -> list[int]:
    """Rows covering every situation: a first-seen entity value, shared devices, repeated accounts, missing
    entity values, and plain rows."""
    picks = set(range(0, len(clean), 25))
    picks |= set(np.flatnonzero(replayed["device_id__first_seen"].to_numpy() == 1)[:5])
    picks |= set(np.flatnonzero(replayed["device_id__accounts_all"].to_numpy() >= 2)[:5])
    picks |= set(np.flatnonzero(replayed["user_id__count_all"].to_numpy() >= 2)[:5])
    picks |= set(np.flatnonzero(clean["device_id"].isna().to_numpy()))
    picks |= set(np.flatnonzero(clean["ip_address"].isna().to_numpy()))
    return sorted(int(p) for p in picks)


def test_a_training_row_gets_the_features_of_a_new_transaction_after_its_history(history, state):
    """The central property: a training row's replayed features equal those it gets as a new transaction scored
    against the frozen snapshot of the rows strictly before it (what a scorer saw when it arrived)."""
    clean, numeric = history
    replayed = state.training_features(clean)
    positions = _positions_to_check(clean, replayed)
    covered = replayed.iloc[positions]  # the chosen rows do cover the interesting cases
    assert (covered["device_id__first_seen"] == 1).any() and (covered["device_id__first_seen"] == 0).any()
    assert covered["device_id__amount_mean_all"].isna().any() and covered["device_id__amount_mean_1h"].notna().any()
    assert (covered["device_id__accounts_all"] >= 2).any() and (covered["user_id__count_all"] >= 2).any()
    assert covered["device_id__count_all"].isna().any()  # a missing device is no entity
    times = clean["purchase_time"]
    for pos in positions:
        before = clean[times < times.iloc[pos]]
        as_new = FeatureState.fit(before, SYNTHETIC, numeric).transform(clean.iloc[[pos]])
        assert_features_equal(replayed.iloc[[pos]], as_new, f"row {pos}")


def test_transform_sees_the_snapshot_and_the_earlier_rows_of_the_batch(state, history):
    clean, _ = history
    device = clean["device_id"].dropna().value_counts().index[0]
    others = clean[clean["device_id"] == device]
    last = clean["purchase_time"].max()
    rows = clean.iloc[[0, 1]].assign(device_id=device, user_id=["someone-new", "someone-else"], amount=100.0,
                                     purchase_time=[last + pd.Timedelta("10min"), last + pd.Timedelta("20min")])
    out = state.transform(rows)
    assert out["device_id__count_all"].tolist() == [len(others), len(others) + 1]
    assert out["device_id__accounts_all"].tolist() == [others["user_id"].nunique(), others["user_id"].nunique() + 1]
    assert out["device_id__amount_max_all"].iloc[1] == max(100.0, others["amount"].max())
    assert out["device_id__seconds_since_prev"].iloc[1] == 600
    assert out["user_id__first_seen"].tolist() == [1.0, 1.0]


def test_unknown_entity_values(state, history):
    clean, _ = history
    row = clean.iloc[[3]].assign(device_id="NEVER-SEEN", ip_address="0.0.0.1", user_id="nobody")
    out = state.transform(row).iloc[0]
    for col in state.entity_columns:
        assert out[f"{col}__count_all"] == 0 and out[f"{col}__first_seen"] == 1
        assert np.isnan(out[f"{col}__amount_mean_24h"]) and np.isnan(out[f"{col}__seconds_since_prev"])
    assert out["device_id__accounts_all"] == 0
    assert out["ip_address__accounts_all"] == 0


def test_missing_optional_columns_give_missing_values(state, history):
    clean, _ = history
    row = clean.iloc[[5]].drop(columns=["browser", "device_id", "country", "numeric_noise"], errors="ignore")
    out = state.transform(row).iloc[0]
    assert out["browser"] == MISSING
    assert out["country"] == MISSING
    assert all(np.isnan(out[name]) for name in state.entities.column_feature_names("device_id"))  # no entity
    # columns that are present still work
    assert out["hour"] == clean["purchase_time"].iloc[5].hour
    assert out["user_id__count_all"] >= 0


def test_the_entity_features_name_the_columns_they_need(state):
    with pytest.raises(ValueError, match=r"missing from the table"):
        state.transform(pd.DataFrame({"amount": [10.0, None]}))
    with pytest.raises(ValueError, match=r"amount column 'amount' has 1 missing or not finite"):
        state.transform(pd.DataFrame({"amount": [10.0, None], "purchase_time": ["2026-01-01T00:00:00"] * 2}))
    with pytest.raises(ValueError, match=r"time column 'purchase_time' has 1 missing or unreadable"):
        state.transform(pd.DataFrame({"amount": [1.0], "purchase_time": ["not a time"]}))


def test_only_the_required_minimum(state):
    out = state.transform(pd.DataFrame({"amount": [10.0, 12.0], "purchase_time": ["2026-01-01T00:00:00"] * 2}))
    assert list(out.columns) == EXPECTED_NAMES
    assert len(out) == 2
    assert (out[list(SYNTHETIC.categorical)] == MISSING).all().all()


def test_missing_times_give_missing_row_time_features(state, history):
    clean, _ = history

    def row_features(frame: pd.DataFrame) -> dict[str, np.ndarray]:
        return state.row_features(state.frame_inputs(frame))

    no_times = row_features(clean.iloc[[5]].drop(columns=["purchase_time", "signup_time"]))
    assert np.isnan(no_times["hour"][0]) and np.isnan(no_times["day_of_week"][0])
    assert np.isnan(no_times["seconds_since_signup"][0])
    no_signup = state.transform(clean.iloc[[5]].drop(columns=["signup_time"])).iloc[0]
    assert np.isnan(no_signup["seconds_since_signup"])
    assert np.isnan(row_features(clean.iloc[[5]].assign(purchase_time="not a time"))["hour"][0])


def test_categorical_missing_values(state, history):
    clean, _ = history
    rows = clean.iloc[:3].copy()
    rows["browser"] = [None, np.nan, "Chrome"]
    rows["source"] = rows["source"].astype("category")
    out = state.transform(rows)
    assert out["browser"].tolist() == [MISSING, MISSING, "Chrome"]
    assert out["source"].tolist() == rows["source"].astype(str).tolist()


def test_entity_values_are_normalised():
    spec = DatasetSpec(target="y", timestamp="t", entities=("card",), amount="amount")
    hist = pd.DataFrame({"card": [1, 1, 2, 3], "amount": [10.0, 30.0, 5.0, 7.0], "y": [0, 1, 0, 0],
                         "t": [0.0, 1.0, 2.0, 3.0]})
    state = FeatureState.fit(hist, spec, ["amount"])
    as_float = pd.DataFrame({"card": [1.0, 2.0, np.nan, 4.0], "amount": [20.0, 5.0, 1.0, 1.0], "t": [9.0] * 4})
    out = state.transform(as_float)
    assert out["card__count_all"].tolist()[:2] == [2, 1] and np.isnan(out["card__count_all"].iloc[2])
    assert out["card__count_all"].iloc[3] == 0
    np.testing.assert_allclose(out["card__amount_mean_all"], [20.0, 5.0, np.nan, np.nan])
    as_text = pd.DataFrame({"card": ["1", "3"], "amount": [40.0, 7.0], "t": [9.0, 9.0]})
    out = state.transform(as_text)
    assert out["card__count_all"].tolist() == [2, 1]
    assert "card__accounts_all" not in out


def test_entity_float_in_object_column_is_normalised():
    spec = DatasetSpec(target="y", timestamp="t", entities=("card",))
    state = FeatureState.fit(pd.DataFrame({"card": [1, 1, 2], "y": [0, 1, 0], "t": [0.0, 1.0, 2.0]}), spec, [])
    out = state.transform(pd.DataFrame({"card": pd.Series([1.0, "2"], dtype=object), "t": [5.0, 5.0]}))
    assert out["card__count_all"].tolist() == [2, 1]


def test_no_entity_features_without_a_timestamp():
    spec = DatasetSpec(target="y", entities=("card",))
    state = FeatureState.fit(pd.DataFrame({"card": [1, 1, 2], "y": [0, 1, 0], "x": [1.0, 2.0, 3.0]}), spec, ["x"])
    assert state.feature_names == ["x"] and state.snapshot is None
    assert state.transform(pd.DataFrame({"x": [4.0]}))["x"].tolist() == [4.0]


def test_windows_come_from_the_dataset_spec():
    spec = SYNTHETIC.with_overrides(windows=("10m", "2d"))
    config = FeatureState(spec=spec, time_kind="datetime", numeric=[]).entities
    assert [w.name for w in config.windows] == ["10m", "2d"] and "device_id__count_10m" in config.feature_names
    with pytest.raises(ValueError, match=r"windows must be a whole number and a unit .* got \['1 hour'\]"):
        DatasetSpec(target="y", windows=("1h", "1 hour"))


def test_time_features_for_datetimes(state, history):
    clean, _ = history
    out = state.transform(clean)
    np.testing.assert_array_equal(out["hour"], clean["purchase_time"].dt.hour)
    np.testing.assert_array_equal(out["day_of_week"], clean["purchase_time"].dt.dayofweek)
    expected_gap = (clean["purchase_time"] - clean["signup_time"]).dt.total_seconds()
    np.testing.assert_allclose(out["seconds_since_signup"], expected_gap)


def test_time_features_for_raw_strings(state, history):
    clean, _ = history
    row = clean.iloc[[0]].assign(purchase_time="2026-01-01T13:45:10+02:00", signup_time="2025-12-31 11:45:00")
    out = state.transform(row).iloc[0]
    assert out["hour"] == 11  # 13:45 at UTC+2 is 11:45 UTC
    assert out["day_of_week"] == 3  # 2026-01-01 is a Thursday (Monday = 0)
    assert out["seconds_since_signup"] == 86_400 + 10


def test_time_features_for_numeric_seconds():
    spec = DatasetSpec(target="y", timestamp="t", signup_time="s")
    hist = pd.DataFrame({"t": [0.0, 90_061.0, 700_000.0], "s": [0.0, 61.0, 1.0], "y": [0, 1, 0]})
    state = FeatureState.fit(hist, spec, [])
    assert state.time_kind == "seconds"
    out = state.transform(hist)
    assert out["hour"].tolist() == [0, 1, (700_000 // 3600) % 24]
    assert out["day_of_week"].tolist() == [0, 1, (700_000 // 86_400) % 7]
    assert out["seconds_since_signup"].tolist() == [0, 90_000, 699_999]
    assert state.feature_names == ["hour", "day_of_week", "seconds_since_signup"]


def test_save_load_round_trip(tmp_path, state, history):
    clean, _ = history
    state.save(tmp_path / "state")
    loaded = FeatureState.load(tmp_path / "state")
    assert loaded.feature_names == state.feature_names
    assert loaded.spec == state.spec
    assert loaded.time_kind == state.time_kind
    assert loaded.numeric == state.numeric
    assert loaded.input_columns == state.input_columns
    pd.testing.assert_frame_equal(loaded.transform(clean), state.transform(clean), check_exact=True)
    unseen = clean.iloc[:5].assign(device_id="new", user_id=["a", "b", "c", "d", "e"])
    pd.testing.assert_frame_equal(loaded.transform(unseen), state.transform(unseen), check_exact=True)


def test_save_load_without_account(tmp_path):
    spec = DatasetSpec(target="y", timestamp="t", entities=("card",))
    hist = pd.DataFrame({"card": ["a", "a", "b"], "y": [0, 1, 0], "t": [0.0, 5.0, 7.0]})
    state = FeatureState.fit(hist, spec, [])
    state.save(tmp_path)
    loaded = FeatureState.load(tmp_path)
    assert loaded.feature_names == ["hour", "day_of_week", *EntityFeatureConfig.create(spec, "seconds").feature_names]
    pd.testing.assert_frame_equal(loaded.transform(hist), state.transform(hist))
    assert loaded.transform(hist)["card__count_all"].tolist() == [0, 1, 0]


def test_input_columns(state):
    assert state.input_columns == [
        *SYNTHETIC.categorical, "amount", "purchase_time", "signup_time", "device_id", "ip_address", "user_id",
    ]
