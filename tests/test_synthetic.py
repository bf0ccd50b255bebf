"""Tests of the synthetic transaction generator."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from fraudops.data.synthetic import (
    BROWSERS,
    CATEGORIES,
    COLUMNS,
    COUNTRIES,
    PATTERN_COLUMN,
    PATTERNS,
    PAYMENT_METHODS,
    RARE_COUNTRIES,
    SOURCES,
    DriftConfig,
    generate_transactions,
)
from fraudops.errors import ConfigError
from fraudops.schema import SYNTHETIC

N = 20_000


@pytest.fixture(scope="module")
def baseline() -> pd.DataFrame:
    return generate_transactions(N, seed=11, with_pattern=True)


@pytest.fixture(scope="module")
def takeover() -> pd.DataFrame:
    return generate_transactions(N, seed=11, with_pattern=True, drift=DriftConfig(new_pattern=True))


def _rows(frame: pd.DataFrame, pattern: str) -> pd.DataFrame:
    return frame[frame[PATTERN_COLUMN] == pattern]


def _since_signup(frame: pd.DataFrame) -> pd.Series:
    return (frame["purchase_time"] - frame["signup_time"]).dt.total_seconds()


def test_same_arguments_give_the_same_frame() -> None:
    drift = DriftConfig(amount_shift=0.3, new_pattern=True)
    first = generate_transactions(3000, seed=5, drift=drift)
    pd.testing.assert_frame_equal(first, generate_transactions(3000, seed=5, drift=drift))
    other = generate_transactions(3000, seed=6, drift=drift)
    assert not first["amount"].equals(other["amount"])
    assert set(first["user_id"]).isdisjoint(other["user_id"])


def test_columns_dtypes_and_values(baseline: pd.DataFrame) -> None:
    plain = generate_transactions(500, seed=11)
    assert tuple(plain.columns) == COLUMNS
    assert tuple(baseline.columns) == (*COLUMNS, PATTERN_COLUMN)
    assert set(SYNTHETIC.required_columns) <= set(COLUMNS)
    for col in ("signup_time", "purchase_time"):
        assert baseline[col].dtype == "datetime64[ns]"
    assert baseline["amount"].dtype == "float64"
    assert baseline["is_fraud"].dtype == "int64"
    for col in ("transaction_id", "user_id", "device_id", "ip_address", "country", "source", "browser",
                "category", "payment_method", PATTERN_COLUMN):
        assert baseline[col].map(type).eq(str).all(), col
    for col, allowed in (("country", COUNTRIES), ("source", SOURCES), ("browser", BROWSERS),
                         ("category", CATEGORIES), ("payment_method", PAYMENT_METHODS),
                         (PATTERN_COLUMN, PATTERNS[:-1])):
        assert set(baseline[col]) == set(allowed), col
    assert set(baseline["is_fraud"]) == {0, 1}
    assert baseline["is_fraud"].eq(baseline[PATTERN_COLUMN].ne("none")).all()
    octets = baseline["ip_address"].str.split(".", expand=True).astype(int)
    assert octets.shape[1] == 4 and octets.ge(0).all().all() and octets.le(255).all().all()
    amount = baseline["amount"]
    assert amount.gt(0).all() and np.allclose(amount, amount.round(2), rtol=0, atol=1e-9)
    assert baseline["transaction_id"].is_unique


def test_rows_are_sorted_in_the_window_after_signup(baseline: pd.DataFrame) -> None:
    assert isinstance(baseline.index, pd.RangeIndex) and baseline.index.start == 0
    assert baseline["purchase_time"].is_monotonic_increasing
    assert baseline["purchase_time"].min() >= pd.Timestamp("2026-01-01")
    assert baseline["purchase_time"].max() < pd.Timestamp("2026-01-31")
    assert _since_signup(baseline).gt(0).all()
    assert baseline.groupby("user_id")["signup_time"].nunique().eq(1).all()


def test_legit_traffic_looks_like_returning_customers(baseline: pd.DataFrame) -> None:
    legit = _rows(baseline, "none")
    per_user = legit.groupby("user_id").size()
    assert per_user.gt(1).mean() > 0.3
    assert legit.groupby("user_id")["device_id"].nunique().mean() < 1.5
    assert _since_signup(legit).median() > 7 * 86_400
    assert legit["country"].value_counts(normalize=True).iloc[:3].sum() > 0.45
    hours = legit["purchase_time"].dt.hour.value_counts()
    assert hours[[2, 3, 4]].sum() * 3 < hours[[18, 19, 20]].sum()
    # Some overlap with fraud signals: IPs shared by several accounts, purchases within a minute of signup.
    assert legit.groupby("ip_address")["user_id"].nunique().max() >= 5
    assert _since_signup(legit).lt(60).sum() > 0


@pytest.mark.parametrize(
    "start", ["2026-03-01T04:00:00+02:00", datetime(2026, 3, 1, 4, tzinfo=timezone(timedelta(hours=2)))]
)
def test_timezone_aware_start_is_converted_to_naive_utc(start: str | datetime) -> None:
    frame = generate_transactions(200, start=start, days=1)
    assert frame["purchase_time"].min() >= datetime(2026, 3, 1, 2, tzinfo=UTC).replace(tzinfo=None)
    assert frame["purchase_time"].max() < pd.Timestamp("2026-03-02 02:00")


def test_transaction_ids_do_not_collide_across_frames() -> None:
    frames = [generate_transactions(300, seed=0), generate_transactions(300, seed=1),
              generate_transactions(300, seed=0, start="2026-02-01")]
    assert pd.concat(frames)["transaction_id"].is_unique


@pytest.mark.parametrize(("fraud_rate", "multiplier"), [(0.03, 1.0), (0.1, 1.0), (0.02, 2.5), (0.2, 0.5)])
def test_realised_fraud_rate_matches_the_target(fraud_rate: float, multiplier: float) -> None:
    frame = generate_transactions(5000, fraud_rate=fraud_rate,
                                  drift=DriftConfig(fraud_rate_multiplier=multiplier))
    assert frame["is_fraud"].mean() == pytest.approx(fraud_rate * multiplier, abs=1e-3)


def test_tiny_tables_work() -> None:
    assert len(generate_transactions(1)) == 1
    frame = generate_transactions(3, fraud_rate=0.9, drift=DriftConfig(new_pattern=True), with_pattern=True)
    assert len(frame) == 3 and frame["is_fraud"].sum() == 3


def test_baseline_has_every_pattern_but_account_takeover(baseline: pd.DataFrame) -> None:
    shares = baseline[PATTERN_COLUMN].value_counts(normalize=True)
    assert "account_takeover" not in shares
    for pattern in PATTERNS[1:-1]:
        assert shares[pattern] > 0.003, pattern


def test_instant_purchases_follow_signup_within_seconds(baseline: pd.DataFrame) -> None:
    instant = _since_signup(_rows(baseline, "instant_purchase"))
    legit = _since_signup(_rows(baseline, "none"))
    assert instant.lt(60).mean() > 0.4
    assert legit.lt(60).mean() < 0.02
    assert instant.gt(3600).mean() > 0.1  # noise: not every bot is instant


def test_rings_share_devices_across_many_accounts(baseline: pd.DataFrame) -> None:
    accounts_per_device = baseline.groupby("device_id")["user_id"].transform("nunique")
    ring = accounts_per_device[baseline[PATTERN_COLUMN] == "device_ip_ring"]
    legit = accounts_per_device[baseline[PATTERN_COLUMN] == "none"]
    assert ring.ge(3).mean() > 0.4 > 0.05 > legit.ge(3).mean()
    assert ring.ge(3).mean() < 0.9  # noise: some ring orders come from fresh devices
    ring_rows = _rows(baseline, "device_ip_ring")
    assert ring_rows.groupby("ip_address")["user_id"].nunique().max() >= 4


def test_card_testing_comes_in_small_bursts_from_one_ip(baseline: pd.DataFrame) -> None:
    rows = _rows(baseline, "card_testing")
    assert rows["amount"].median() < 10 < _rows(baseline, "none")["amount"].median()
    assert rows["category"].isin(["digital_goods", "gift_cards"]).all()
    bursts = rows.groupby("ip_address")["purchase_time"].agg(["size", "min", "max"])
    bursts = bursts[bursts["size"] >= 3]
    assert bursts["size"].sum() > 0.5 * len(rows)
    minutes_per_order = (bursts["max"] - bursts["min"]).dt.total_seconds() / 60 / (bursts["size"] - 1)
    assert minutes_per_order.median() < 2


def test_risky_source_is_affiliate_or_social_expensive_and_foreign(baseline: pd.DataFrame) -> None:
    risky, legit = _rows(baseline, "risky_source"), _rows(baseline, "none")

    def affiliate_social(frame: pd.DataFrame) -> float:
        return frame["source"].isin(["Affiliate", "Social"]).mean()

    def rare_country(frame: pd.DataFrame) -> float:
        return frame["country"].isin(RARE_COUNTRIES).mean()

    assert affiliate_social(risky) > 0.5 > 0.2 > affiliate_social(legit)
    assert rare_country(risky) > 3 * rare_country(legit)
    assert risky["amount"].median() > 1.5 * legit["amount"].median()
    assert affiliate_social(risky) < 0.95 and rare_country(risky) < 0.9  # only partly distinctive


def test_account_takeover_hijacks_old_accounts_from_new_devices(takeover: pd.DataFrame) -> None:
    ato = _rows(takeover, "account_takeover")
    assert len(ato) > 0.005 * N
    assert _since_signup(ato).min() > 60 * 86_400
    assert ato["category"].eq("electronics").mean() > 0.7
    assert ato["amount"].median() > 3 * _rows(takeover, "none")["amount"].median()
    legit = _rows(takeover, "none")
    history = legit[legit["user_id"].isin(ato["user_id"])]
    assert ato["user_id"].isin(history["user_id"]).all()
    assert not ato["device_id"].isin(legit["device_id"]).any()
    assert not ato["ip_address"].isin(legit["ip_address"]).any()
    home = history.groupby("user_id")["country"].agg(lambda c: c.mode().iloc[0])
    assert ato["country"].ne(ato["user_id"].map(home)).mean() > 0.8


def test_amount_shift_scales_amounts() -> None:
    base = generate_transactions(3000, seed=2)
    shifted = generate_transactions(3000, seed=2, drift=DriftConfig(amount_shift=math.log(2)))
    assert shifted["amount"].median() / base["amount"].median() == pytest.approx(2.0, rel=0.02)


def test_category_mix_moves_the_category_distribution() -> None:
    def digital_share(mix: float) -> float:
        frame = generate_transactions(5000, seed=3, drift=DriftConfig(category_mix=mix))
        return frame["category"].isin(["digital_goods", "gift_cards"]).mean()

    base, half, full = digital_share(0.0), digital_share(0.5), digital_share(1.0)
    assert base < 0.3 and full > 0.55
    assert base < half < full


def test_new_pattern_adds_account_takeover_only_when_enabled(
    baseline: pd.DataFrame, takeover: pd.DataFrame
) -> None:
    assert "account_takeover" not in set(baseline[PATTERN_COLUMN])
    assert takeover[PATTERN_COLUMN].eq("account_takeover").mean() > 0.005
    assert takeover["is_fraud"].mean() == pytest.approx(baseline["is_fraud"].mean(), abs=1e-3)


def test_fraud_rate_multiplier_changes_the_rate() -> None:
    low = generate_transactions(4000, seed=4)["is_fraud"].mean()
    high = generate_transactions(4000, seed=4, drift=DriftConfig(fraud_rate_multiplier=3))["is_fraud"].mean()
    assert high == pytest.approx(3 * low, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_rows": 0}, "n_rows"),
        ({"n_rows": 2.5}, "n_rows"),
        ({"seed": -1}, "seed"),
        ({"days": 0}, "days"),
        ({"days": float("nan")}, "days"),
        ({"fraud_rate": 0}, "fraud_rate"),
        ({"fraud_rate": 1.0}, "fraud_rate"),
        ({"fraud_rate": 0.4, "drift": DriftConfig(fraud_rate_multiplier=3)}, "fraud_rate_multiplier"),
        ({"start": "not a date"}, "start"),
        ({"start": 20260101}, "start"),
        ({"drift": {"amount_shift": 1.0}}, "drift"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict, name: str) -> None:
    args = {"n_rows": 10, **kwargs}
    with pytest.raises(ConfigError, match=name):
        generate_transactions(args.pop("n_rows"), **args)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"amount_shift": float("inf")}, "amount_shift"),
        ({"amount_shift": "1"}, "amount_shift"),
        ({"category_mix": 1.5}, "category_mix"),
        ({"category_mix": -0.1}, "category_mix"),
        ({"new_pattern": "yes"}, "new_pattern"),
        ({"fraud_rate_multiplier": 0}, "fraud_rate_multiplier"),
        ({"fraud_rate_multiplier": float("nan")}, "fraud_rate_multiplier"),
    ],
)
def test_bad_drift_raises_config_error(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        DriftConfig(**kwargs)


# Shared population (population_seed): one customer base and persistent fraud infrastructure across frames.

POPULATION = 5
JANUARY = {"start": "2026-01-01", "days": 30}
FEBRUARY = {"start": "2026-02-01", "days": 7}


@pytest.fixture(scope="module")
def january() -> pd.DataFrame:
    return generate_transactions(N, seed=1, population_seed=POPULATION, with_pattern=True, **JANUARY)


@pytest.fixture(scope="module")
def february() -> pd.DataFrame:
    return generate_transactions(N // 4, seed=2, population_seed=POPULATION, with_pattern=True, **FEBRUARY)


@pytest.fixture(scope="module")
def february_takeover() -> pd.DataFrame:
    return generate_transactions(N // 4, seed=3, population_seed=POPULATION, with_pattern=True,
                                 drift=DriftConfig(new_pattern=True), **FEBRUARY)


def test_shared_population_gives_mostly_returning_customers(january: pd.DataFrame, february: pd.DataFrame) -> None:
    old, new = _rows(january, "none"), _rows(february, "none")
    returning = new["user_id"].isin(old["user_id"])
    assert 0.55 < returning.mean() < 0.9  # most orders come from customers seen in January, some from new ones
    assert 0.5 < new["device_id"].isin(old["device_id"]).mean() < 0.9
    assert 0.4 < new["ip_address"].isin(old["ip_address"]).mean() < 0.9
    # A returning customer is the same account: same signup time, and its home device keeps its browser.
    both = pd.concat([old, new])
    assert both.groupby("user_id")["signup_time"].nunique().eq(1).all()
    assert both.groupby("device_id")["browser"].nunique().eq(1).all()
    # Customers who signed up since January buy in February: shortly after signing up, mostly.
    fresh = new[new["signup_time"] >= pd.Timestamp(FEBRUARY["start"])]
    assert 0.05 < len(fresh) / len(new) < 0.3
    assert _since_signup(fresh).lt(3600).mean() > 0.5
    assert not fresh["user_id"].isin(old["user_id"]).any()


def test_shared_population_frames_never_share_transaction_ids(january: pd.DataFrame, february: pd.DataFrame,
                                                             february_takeover: pd.DataFrame) -> None:
    frames = [january, february, february_takeover,
              generate_transactions(500, seed=1, population_seed=POPULATION + 1, **JANUARY),
              generate_transactions(500, seed=1, **JANUARY)]
    assert pd.concat(frames)["transaction_id"].is_unique


def test_without_population_seed_frames_have_their_own_customers(january: pd.DataFrame) -> None:
    first = generate_transactions(3000, seed=1, population_seed=None)
    pd.testing.assert_frame_equal(first, generate_transactions(3000, seed=1))
    second = generate_transactions(3000, seed=2, start="2026-02-01", days=7)
    for col in ("user_id", "device_id"):
        assert set(first[col]).isdisjoint(second[col]), col
    # and a different population is a different customer base
    other = generate_transactions(3000, seed=1, population_seed=POPULATION + 1, **JANUARY)
    for col in ("user_id", "device_id"):
        assert set(other[col]).isdisjoint(january[col]), col


def test_same_population_arguments_give_the_same_frame(february: pd.DataFrame) -> None:
    again = generate_transactions(N // 4, seed=2, population_seed=POPULATION, with_pattern=True, **FEBRUARY)
    pd.testing.assert_frame_equal(february, again)
    other_seed = generate_transactions(N // 4, seed=4, population_seed=POPULATION, with_pattern=True, **FEBRUARY)
    assert not other_seed["user_id"].equals(february["user_id"])
    assert other_seed["amount"].median() == pytest.approx(february["amount"].median(), rel=0.1)


@pytest.mark.parametrize(("start", "days"), [("2026-01-01", 30), ("2027-06-15T13:30:00", 3), ("1700-01-01", 10),
                                             ("2200-01-01", 365)])
def test_shared_population_signups_precede_purchases(start: str, days: float) -> None:
    frame = generate_transactions(4000, seed=9, population_seed=POPULATION, start=start, days=days,
                                  fraud_rate=0.1, drift=DriftConfig(new_pattern=True), with_pattern=True)
    assert _since_signup(frame).gt(0).all()
    assert frame["purchase_time"].is_monotonic_increasing
    assert frame["purchase_time"].min() >= pd.Timestamp(start)
    assert frame["purchase_time"].max() < pd.Timestamp(start) + pd.Timedelta(days=days)
    assert frame.groupby("user_id")["signup_time"].nunique().eq(1).all()
    assert frame["is_fraud"].mean() == pytest.approx(0.1, abs=1e-3)
    assert set(frame[PATTERN_COLUMN]) == set(PATTERNS)


def test_shared_population_keeps_the_fraud_patterns(january: pd.DataFrame) -> None:
    legit = _rows(january, "none")
    assert set(january[PATTERN_COLUMN]) == set(PATTERNS[:-1])
    assert january["is_fraud"].mean() == pytest.approx(0.03, abs=1e-3)
    assert legit.groupby("ip_address")["user_id"].nunique().max() >= 5  # households and offices
    assert 0.02 < _since_signup(legit).lt(3600).mean() < 0.2  # new customers at checkout
    assert _since_signup(_rows(january, "instant_purchase")).lt(60).mean() > 0.4
    accounts_per_device = january.groupby("device_id")["user_id"].transform("nunique")
    ring = accounts_per_device[january[PATTERN_COLUMN] == "device_ip_ring"]
    assert ring.ge(3).mean() > 0.4 > 0.05 > accounts_per_device[january[PATTERN_COLUMN] == "none"].ge(3).mean()
    fraud_users = january.loc[january["is_fraud"] == 1, "user_id"]
    assert not fraud_users.isin(legit["user_id"]).any()  # fraud accounts are new, only the infrastructure recurs


def test_fraud_infrastructure_partly_recurs() -> None:
    # Fraud accounts are new; ring crews, card-testing proxies, affiliate IP pools and bot devices stay active
    # for weeks, so part of February's fraud comes from infrastructure already seen in January.
    before = generate_transactions(N, seed=1, population_seed=POPULATION, fraud_rate=0.2, with_pattern=True,
                                   **JANUARY)
    later = generate_transactions(N // 2, seed=7, population_seed=POPULATION, fraud_rate=0.2, with_pattern=True,
                                  start="2026-02-01", days=15)
    for pattern, col in (("device_ip_ring", "device_id"), ("device_ip_ring", "ip_address"),
                         ("card_testing", "ip_address"), ("risky_source", "ip_address"),
                         ("instant_purchase", "device_id")):
        seen = _rows(later, pattern)[col].isin(before[col]).mean()
        assert 0.03 < seen < 0.8, (pattern, col, seen)
    assert not later["user_id"][later["is_fraud"] == 1].isin(before["user_id"]).any()


def test_account_takeover_on_a_shared_population_hijacks_known_customers(
    january: pd.DataFrame, february_takeover: pd.DataFrame
) -> None:
    ato = _rows(february_takeover, "account_takeover")
    assert len(ato) > 0.005 * len(february_takeover)
    assert ato["user_id"].isin(_rows(january, "none")["user_id"]).mean() > 0.6
    assert _since_signup(ato).min() > 60 * 86_400
    history = pd.concat([_rows(january, "none"), _rows(february_takeover, "none")])
    history = history[history["user_id"].isin(ato["user_id"])]
    assert ato["user_id"].isin(history["user_id"]).all()
    known = set(zip(history["user_id"], history["device_id"], strict=True))
    assert not any(pair in known for pair in zip(ato["user_id"], ato["device_id"], strict=True))
    assert not ato["device_id"].isin(history["device_id"]).any()
    home = history.groupby("user_id")["country"].agg(lambda c: c.mode().iloc[0])
    assert ato["country"].ne(ato["user_id"].map(home)).mean() > 0.8


def test_drift_knobs_work_on_a_shared_population(february: pd.DataFrame) -> None:
    shifted = generate_transactions(N // 4, seed=2, population_seed=POPULATION, with_pattern=True,
                                    drift=DriftConfig(amount_shift=math.log(2)), **FEBRUARY)
    assert shifted["user_id"].equals(february["user_id"])  # same traffic, amounts doubled
    assert shifted["amount"].median() / february["amount"].median() == pytest.approx(2.0, rel=0.02)
    mixed = generate_transactions(N // 4, seed=2, population_seed=POPULATION, drift=DriftConfig(category_mix=1.0),
                                  **FEBRUARY)
    assert mixed["category"].isin(["digital_goods", "gift_cards"]).mean() > 0.55


def test_tiny_tables_work_on_a_shared_population() -> None:
    assert len(generate_transactions(1, population_seed=1)) == 1
    frame = generate_transactions(3, fraud_rate=0.9, drift=DriftConfig(new_pattern=True), population_seed=1)
    assert len(frame) == 3 and frame["is_fraud"].sum() == 3
    assert len(generate_transactions(50, days=0.001, population_seed=1)) == 50


@pytest.mark.parametrize("population_seed", [-1, 1.5, True, "1"])
def test_bad_population_seed_raises_config_error(population_seed: object) -> None:
    with pytest.raises(ConfigError, match="population_seed"):
        generate_transactions(10, population_seed=population_seed)
