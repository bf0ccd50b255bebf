"""The shared feature function: what is trained is what is served."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraudops.features import MISSING, FeatureState
from fraudops.schema import SYNTHETIC, DatasetSpec
from fraudops.validation import validate

ENTITY_SUFFIXES = ("__txn_count", "__account_count", "__amount_ratio")

EXPECTED_NAMES = [
    "country", "source", "browser", "category", "payment_method", "amount",
    "hour", "day_of_week", "seconds_since_signup",
    "device_id__txn_count", "device_id__account_count", "device_id__amount_ratio",
    "ip_address__txn_count", "ip_address__account_count", "ip_address__amount_ratio",
    "user_id__txn_count", "user_id__amount_ratio",
]


@pytest.fixture(scope="module")
def history(transactions) -> tuple[pd.DataFrame, list[str]]:
    """A validated history with whole-number amounts (so leave-one-out sums are exact) and some missing
    entity values."""
    frame = transactions(300, seed=7)
    frame["amount"] = np.floor(frame["amount"]) + 1.0
    frame.loc[[10, 11, 200], "device_id"] = None
    frame.loc[[12], "ip_address"] = None
    result = validate(frame, SYNTHETIC)
    assert result.report.n_rejected == 0
    return result.clean, result.numeric


@pytest.fixture(scope="module")
def state(history) -> FeatureState:
    clean, numeric = history
    return FeatureState.fit(clean, SYNTHETIC, numeric)


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


def _positions_to_check(clean: pd.DataFrame, state: FeatureState) -> list[int]:
    """Rows covering every situation: a lone entity value, shared devices, repeated (device, account)
    pairs, missing entity values, and plain rows."""
    loo = state.transform(clean, exclude_self=True)
    picks = set(range(0, len(clean), 25))
    picks |= set(np.flatnonzero(loo["device_id__txn_count"].to_numpy() == 0)[:5])
    picks |= set(np.flatnonzero(loo["device_id__account_count"].to_numpy() >= 2)[:5])
    picks |= set(np.flatnonzero(loo["user_id__txn_count"].to_numpy() >= 2)[:5])
    picks |= set(np.flatnonzero(clean["device_id"].isna().to_numpy()))
    picks |= set(np.flatnonzero(clean["ip_address"].isna().to_numpy()))
    return sorted(int(p) for p in picks)


def test_leave_one_out_equals_unseen_transaction(history, state):
    """The central property: a training row featurised with ``exclude_self`` gets exactly the features it
    would get as a new transaction scored against a history that does not contain it."""
    clean, numeric = history
    in_history = state.transform(clean, exclude_self=True)
    positions = _positions_to_check(clean, state)
    # the chosen rows do cover the interesting cases
    covered = in_history.iloc[positions]
    assert (covered["device_id__txn_count"] == 0).any()
    assert covered["device_id__amount_ratio"].isna().any()
    assert (covered["device_id__account_count"] >= 2).any()
    assert (covered["user_id__txn_count"] >= 2).any()
    assert (covered["device_id__txn_count"] > 0).any() and covered["device_id__amount_ratio"].notna().any()

    for pos in positions:
        rest = clean.drop(index=clean.index[pos])
        unseen_state = FeatureState.fit(rest, SYNTHETIC, numeric)
        as_new = unseen_state.transform(clean.iloc[[pos]])
        pd.testing.assert_frame_equal(in_history.iloc[[pos]], as_new, check_exact=True, obj=f"row {pos}")


def test_without_exclude_self_a_row_counts_itself(history, state):
    clean, _ = history
    plain = state.transform(clean)
    loo = state.transform(clean, exclude_self=True)
    for col in state.entity_columns:
        np.testing.assert_array_equal(plain[f"{col}__txn_count"], loo[f"{col}__txn_count"] + 1)
    # the account count never includes the transaction's own account
    np.testing.assert_array_equal(plain["device_id__account_count"], loo["device_id__account_count"])


def test_unknown_entity_values(state, history):
    clean, _ = history
    row = clean.iloc[[3]].assign(device_id="NEVER-SEEN", ip_address="0.0.0.1", user_id="nobody")
    out = state.transform(row).iloc[0]
    for col in state.entity_columns:
        assert out[f"{col}__txn_count"] == 0
        assert np.isnan(out[f"{col}__amount_ratio"])
    assert out["device_id__account_count"] == 0
    assert out["ip_address__account_count"] == 0


def test_known_entity_counts(history, state):
    clean, _ = history
    device = clean["device_id"].dropna().value_counts().index[0]
    others = clean[clean["device_id"] == device]
    row = clean.iloc[[0]].assign(device_id=device, user_id="someone-new", amount=100.0)
    out = state.transform(row).iloc[0]
    assert out["device_id__txn_count"] == len(others)
    assert out["device_id__account_count"] == others["user_id"].nunique()
    assert out["device_id__amount_ratio"] == pytest.approx(100.0 / others["amount"].mean())


def test_missing_optional_columns_give_missing_values(state, history):
    clean, _ = history
    row = clean.iloc[[5]].drop(columns=["browser", "amount", "device_id", "country"])
    out = state.transform(row).iloc[0]
    assert out["browser"] == MISSING
    assert out["country"] == MISSING
    assert np.isnan(out["amount"])
    for col in state.entity_columns:
        assert np.isnan(out[f"{col}__amount_ratio"])
    # a missing device is the "missing" entity: it counts the history rows without a device
    assert out["device_id__txn_count"] == clean["device_id"].isna().sum()
    # columns that are present still work
    assert out["hour"] == clean["purchase_time"].iloc[5].hour
    assert out["user_id__txn_count"] == (clean["user_id"] == clean["user_id"].iloc[5]).sum()


def test_only_the_required_minimum(state):
    out = state.transform(pd.DataFrame({"amount": [10.0, None]}))
    assert list(out.columns) == EXPECTED_NAMES
    assert len(out) == 2
    assert (out[list(SYNTHETIC.categorical)] == MISSING).all().all()


def test_missing_times_give_missing_time_features(state, history):
    clean, _ = history
    no_times = state.transform(clean.iloc[[5]].drop(columns=["purchase_time", "signup_time"])).iloc[0]
    assert np.isnan(no_times["hour"])
    assert np.isnan(no_times["day_of_week"])
    assert np.isnan(no_times["seconds_since_signup"])
    no_signup = state.transform(clean.iloc[[5]].drop(columns=["signup_time"])).iloc[0]
    assert np.isnan(no_signup["seconds_since_signup"])
    bad_time = state.transform(clean.iloc[[5]].assign(purchase_time="not a time")).iloc[0]
    assert np.isnan(bad_time["hour"])


def test_categorical_missing_values(state, history):
    clean, _ = history
    rows = clean.iloc[:3].copy()
    rows["browser"] = [None, np.nan, "Chrome"]
    rows["source"] = rows["source"].astype("category")
    out = state.transform(rows)
    assert out["browser"].tolist() == [MISSING, MISSING, "Chrome"]
    assert out["source"].tolist() == rows["source"].astype(str).tolist()


def test_entity_values_are_normalised():
    spec = DatasetSpec(target="y", entities=("card",), amount="amount")
    hist = pd.DataFrame({"card": [1, 1, 2, 3], "amount": [10.0, 30.0, 5.0, 7.0], "y": [0, 1, 0, 0]})
    state = FeatureState.fit(hist, spec, ["amount"])
    as_float = pd.DataFrame({"card": [1.0, 2.0, np.nan, 4.0], "amount": [20.0, 5.0, 1.0, 1.0]})
    out = state.transform(as_float)
    assert out["card__txn_count"].tolist() == [2, 1, 0, 0]
    np.testing.assert_allclose(out["card__amount_ratio"], [1.0, 1.0, np.nan, np.nan])
    as_text = pd.DataFrame({"card": ["1", "3"], "amount": [40.0, 7.0]})
    out = state.transform(as_text)
    assert out["card__txn_count"].tolist() == [2, 1]
    np.testing.assert_allclose(out["card__amount_ratio"], [2.0, 1.0])
    assert "card__account_count" not in out


def test_entity_float_in_object_column_is_normalised():
    spec = DatasetSpec(target="y", entities=("card",))
    state = FeatureState.fit(pd.DataFrame({"card": [1, 1, 2], "y": [0, 1, 0]}), spec, [])
    out = state.transform(pd.DataFrame({"card": pd.Series([1.0, "2"], dtype=object)}))
    assert out["card__txn_count"].tolist() == [2, 1]


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
    for exclude_self in (False, True):
        pd.testing.assert_frame_equal(loaded.transform(clean, exclude_self=exclude_self),
                                      state.transform(clean, exclude_self=exclude_self), check_exact=True)
    unseen = clean.iloc[:5].assign(device_id="new", user_id=["a", "b", "c", "d", "e"])
    pd.testing.assert_frame_equal(loaded.transform(unseen), state.transform(unseen), check_exact=True)


def test_save_load_without_account(tmp_path):
    spec = DatasetSpec(target="y", entities=("card",))
    hist = pd.DataFrame({"card": ["a", "a", "b"], "y": [0, 1, 0]})
    state = FeatureState.fit(hist, spec, [])
    state.save(tmp_path)
    loaded = FeatureState.load(tmp_path)
    assert loaded.feature_names == ["card__txn_count"]
    pd.testing.assert_frame_equal(loaded.transform(hist), state.transform(hist))


def test_input_columns(state):
    assert state.input_columns == [
        *SYNTHETIC.categorical, "amount", "purchase_time", "signup_time", "device_id", "ip_address", "user_id",
    ]
