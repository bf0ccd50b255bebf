"""Drift policy (defaults, YAML) and `compute_drift`: feature drift, score drift, weights, too little data,
unusable features, performance on labelled traffic and deterministic sampling (real Evidently, no mocks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from fraudops.errors import ConfigError
from fraudops.monitoring.drift import DriftPolicy, EntityDriftPolicy, compute_drift

FEATURES = ["amount", "velocity", "channel"]
CATEGORICAL = ["channel"]
CHANNELS = ("web", "app", "pos")


def traffic(n: int, *, seed: int, amount_shift: float = 0.0, channel_p: tuple[float, ...] = (0.5, 0.3, 0.2),
            score_shift: float = 0.0) -> pd.DataFrame:
    """Scored traffic with labels: the score ranks fraud well (fraud scores high, legit scores low)."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.1).astype("int64")
    score = np.where(label == 1, rng.beta(6, 2, n), rng.beta(1, 8, n))
    return pd.DataFrame({
        "amount": rng.lognormal(4.0, 0.5, n) + amount_shift,
        "velocity": rng.normal(3.0, 1.0, n),
        "channel": rng.choice(CHANNELS, size=n, p=list(channel_p)),
        "score": np.clip(score + score_shift, 0.0, 1.0),
        "label": label,
    })


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return traffic(2000, seed=1)


POLICY = DriftPolicy(min_rows=200, min_labelled_rows=100)


# -- policy ---------------------------------------------------------------------------------------------------
def test_policy_defaults_and_is_frozen() -> None:
    policy = DriftPolicy()
    assert (policy.min_rows, policy.max_current_rows, policy.reference_rows) == (500, 200_000, 100_000)
    assert (policy.num_method, policy.cat_method) == ("wasserstein", "jensenshannon")
    assert (policy.feature_threshold, policy.drift_share, policy.score_threshold) == (0.1, 0.3, 0.1)
    assert (policy.min_labelled_rows, policy.max_pr_auc_drop, policy.seed) == (200, 0.25, 0)
    assert policy.feature_thresholds == {} and policy.feature_weights == {}
    with pytest.raises(ValidationError):
        policy.min_rows = 1  # type: ignore[misc]


def test_policy_from_yaml_file(tmp_path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("min_rows: 50\ndrift_share: 0.5\nfeature_thresholds:\n  amount: 0.2\n"
                    "feature_weights:\n  amount: 3\nseed: 7\nentity_features:\n  drift_share: 0.6\n")
    policy = DriftPolicy.from_file(path)
    assert policy.entity_features == EntityDriftPolicy(drift_share=0.6, feature_threshold=None)
    assert policy.min_rows == 50 and policy.drift_share == 0.5 and policy.seed == 7
    assert policy.feature_thresholds == {"amount": 0.2} and policy.feature_weights == {"amount": 3.0}
    assert policy.cat_method == "jensenshannon"  # untouched keys keep their defaults
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert DriftPolicy.from_file(empty) == DriftPolicy()


def test_policy_file_with_an_unknown_key_names_it(tmp_path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("min_rows: 50\ndrift_shar: 0.5\n")
    with pytest.raises(ConfigError, match="drift_shar") as info:
        DriftPolicy.from_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("text", "key"), [
    ("drift_share: 2\n", "drift_share"),
    ("min_rows: 0\n", "min_rows"),
    ("feature_threshold: lots\n", "feature_threshold"),
    ("max_current_rows: 10\n", "max_current_rows"),
    ("feature_weights:\n  amount: heavy\n", "feature_weights.amount"),
])
def test_policy_file_with_a_bad_value_names_the_key(tmp_path, text: str, key: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        DriftPolicy.from_file(path)


def test_policy_file_missing_or_not_yaml_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read drift policy"):
        DriftPolicy.from_file(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("min_rows: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot read drift policy"):
        DriftPolicy.from_file(broken)


def test_policy_file_with_an_unknown_drift_method_names_the_key(tmp_path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("num_method: wasserstien\n")
    with pytest.raises(ConfigError, match="num_method"):
        DriftPolicy.from_file(path)


# -- drift ----------------------------------------------------------------------------------------------------
def test_identical_traffic_is_ok_with_no_drifted_feature(reference) -> None:
    summary, result = compute_drift(reference, reference.copy(), FEATURES, CATEGORICAL, POLICY)
    assert summary.verdict == "ok" and summary.reasons == []
    assert summary.share_drifted_features == 0.0 and not summary.dataset_drift
    assert summary.score_drift == pytest.approx(0.0, abs=1e-9) and not summary.score_drifted
    assert set(summary.features) == set(FEATURES) and summary.skipped_features == []
    assert all(not f["drifted"] and f["distance"] == pytest.approx(0.0, abs=1e-9) for f in summary.features.values())
    assert summary.features["amount"]["method"] == "wasserstein"
    assert summary.features["channel"]["method"] == "jensenshannon"
    assert summary.rows == summary.reference_rows == len(reference)
    assert result is not None and set(result.columns) == {*FEATURES, "score"}


def test_shifted_numeric_and_changed_category_mix_drift(reference) -> None:
    current = traffic(1000, seed=2, amount_shift=60.0, channel_p=(0.1, 0.1, 0.8))
    summary, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, POLICY)
    drifted = {name for name, info in summary.features.items() if info["drifted"]}
    assert drifted == {"amount", "channel"}
    assert summary.share_drifted_features == pytest.approx(2 / 3)
    assert summary.dataset_drift and summary.verdict == "drift"
    assert not summary.score_drifted
    assert any("features drifted" in reason for reason in summary.reasons)


def test_feature_weights_change_the_weighted_share(reference) -> None:
    current = traffic(1000, seed=3, amount_shift=60.0)  # only amount moves
    plain, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, POLICY.model_copy(update={"drift_share": 0.5}))
    assert plain.share_drifted_features == pytest.approx(1 / 3) and plain.verdict == "ok"

    heavy = POLICY.model_copy(update={"drift_share": 0.5, "feature_weights": {"amount": 3.0}})
    weighted, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, heavy)
    assert weighted.share_drifted_features == pytest.approx(3 / 5)
    assert weighted.features["amount"]["weight"] == 3.0 and weighted.features["velocity"]["weight"] == 1.0
    assert weighted.dataset_drift and weighted.verdict == "drift"

    light = POLICY.model_copy(update={"feature_weights": {"velocity": 4.0}})
    lighter, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, light)
    assert lighter.share_drifted_features == pytest.approx(1 / 6) and lighter.verdict == "ok"


def test_per_feature_threshold_overrides_the_default(reference) -> None:
    current = traffic(1000, seed=3, amount_shift=60.0)
    loose = POLICY.model_copy(update={"feature_thresholds": {"amount": 1e6}})
    summary, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, loose)
    assert not summary.features["amount"]["drifted"] and summary.share_drifted_features == 0.0


def test_entity_features_are_their_own_group(reference) -> None:
    """Velocity counts that double with traffic volume are reported, not voted, unless the policy says so."""
    current = traffic(1000, seed=3).assign(velocity=lambda f: f["velocity"] * 2)
    features = [*FEATURES, "device__count_24h"]
    ref = reference.assign(device__count_24h=reference["velocity"])
    cur = current.assign(device__count_24h=current["velocity"])
    entity = ["velocity", "device__count_24h"]
    summary, _ = compute_drift(ref, cur, features, CATEGORICAL, POLICY, entity_features=entity)
    assert summary.features["velocity"]["drifted"] and summary.features["device__count_24h"]["group"] == "entity"
    assert summary.features["amount"]["group"] == "transaction"
    assert (summary.share_drifted_features, summary.entity_share_drifted_features) == (0.0, 1.0)
    assert not summary.dataset_drift and summary.verdict == "ok"
    voted = POLICY.model_copy(update={"entity_features": EntityDriftPolicy(drift_share=0.5)})
    summary, _ = compute_drift(ref, cur, features, CATEGORICAL, voted, entity_features=entity)
    assert summary.dataset_drift and summary.verdict == "drift"
    assert any("entity_features.drift_share=50%" in reason for reason in summary.reasons)
    lax = POLICY.model_copy(update={"entity_features": EntityDriftPolicy(drift_share=0.5, feature_threshold=1e6)})
    summary, _ = compute_drift(ref, cur, features, CATEGORICAL, lax, entity_features=entity)
    assert summary.entity_share_drifted_features == 0.0 and summary.verdict == "ok"


def test_score_drift_alone_is_drift(reference) -> None:
    current = reference.assign(score=np.clip(reference["score"] + 0.4, 0, 1))
    summary, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, POLICY)
    assert summary.share_drifted_features == 0.0 and not summary.dataset_drift
    assert summary.score_drifted and summary.score_drift >= POLICY.score_threshold
    assert summary.verdict == "drift"
    assert any("score distribution" in reason for reason in summary.reasons)


def test_too_few_rows_is_insufficient_data_and_never_drift(reference) -> None:
    current = traffic(150, seed=4, amount_shift=500.0, channel_p=(0.0, 0.0, 1.0), score_shift=0.5)
    summary, result = compute_drift(reference, current, FEATURES, CATEGORICAL, POLICY)
    assert summary.verdict == "insufficient_data" and result is None
    assert summary.rows == 150 and not summary.dataset_drift and not summary.score_drifted
    assert summary.features == {} and summary.performance is None
    assert "min_rows=200" in summary.reasons[0]


def test_all_nan_feature_is_skipped_not_fatal(reference) -> None:
    current = traffic(500, seed=5).assign(velocity=np.nan)
    summary, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, POLICY)
    assert summary.skipped_features == ["velocity"]
    assert set(summary.features) == {"amount", "channel"}
    assert summary.verdict == "ok"
    # the same when the reference never saw the feature
    summary, _ = compute_drift(reference.assign(amount=np.nan), traffic(500, seed=5), FEATURES, CATEGORICAL, POLICY)
    assert summary.skipped_features == ["amount"] and "amount" not in summary.features


def test_decision_rates_are_reported(reference) -> None:
    current = traffic(400, seed=6)
    decisions = pd.Series(["approve"] * 300 + ["review"] * 60 + ["decline"] * 40)
    reference_decisions = pd.Series(["approve"] * 1800 + ["decline"] * 200)
    summary, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, POLICY, reference_decisions, decisions)
    assert summary.decision_rates == pytest.approx({"approve": 0.75, "decline": 0.1, "review": 0.15})
    assert summary.reference_decision_rates == pytest.approx({"approve": 0.9, "decline": 0.1})


def test_much_worse_ranking_on_labelled_traffic_is_degraded(reference) -> None:
    current = reference.sample(1000, random_state=0).reset_index(drop=True)
    # same score and feature distributions, but the labels now sit on the lowest scores: the model ranks badly
    order = current["score"].rank(method="first").to_numpy()
    current["label"] = (order <= current["label"].sum()).astype(float)
    current.loc[600:, "label"] = np.nan  # only some transactions have confirmed labels
    summary, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, POLICY)
    assert summary.labelled_rows == 600
    perf = summary.performance
    assert perf is not None
    assert set(perf) == {"pr_auc", "recall_at_1pct_fpr", "roc_auc", "fraud_rate", "reference_pr_auc",
                         "reference_recall_at_1pct_fpr"}
    assert perf["reference_pr_auc"] > 0.8 and perf["pr_auc"] < perf["reference_pr_auc"] * 0.75
    assert perf["roc_auc"] < 0.5
    assert summary.verdict == "degraded"
    assert any("PR-AUC" in reason for reason in summary.reasons)


def test_good_ranking_on_labelled_traffic_is_judged_but_ok(reference) -> None:
    current = traffic(1000, seed=7)
    summary, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, POLICY)
    assert summary.labelled_rows == 1000 and summary.performance is not None
    assert summary.performance["pr_auc"] > 0.8 and summary.verdict == "ok"


def test_too_few_labelled_rows_give_no_performance_judgement(reference) -> None:
    current = reference.sample(1000, random_state=1).reset_index(drop=True)
    current["label"] = current["label"].astype(float)
    current.loc[50:, "label"] = np.nan
    current.loc[:49, "label"] = 1.0 - current.loc[:49, "label"]  # terrible, but only 50 labels
    summary, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, POLICY)
    assert summary.labelled_rows == 50
    assert summary.performance is None and summary.verdict == "ok"
    # without a label column at all: nothing to judge either
    summary, _ = compute_drift(reference, current.drop(columns=["label"]), FEATURES, CATEGORICAL, POLICY)
    assert summary.labelled_rows == 0 and summary.performance is None


def test_sampling_above_max_current_rows_is_deterministic(reference) -> None:
    current = traffic(3000, seed=8, amount_shift=5.0)
    policy = POLICY.model_copy(update={"max_current_rows": 300, "reference_rows": 500, "seed": 11})
    first, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, policy)
    second, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, policy)
    assert first.to_dict() == second.to_dict()
    assert first.rows == 3000 and first.reference_rows == 2000  # what the window held, before sampling
    other, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, policy.model_copy(update={"seed": 12}))
    assert other.features["velocity"]["distance"] != first.features["velocity"]["distance"]


def test_sampling_keeps_every_labelled_row_for_the_performance_judgement(reference) -> None:
    current = reference.sample(3000, replace=True, random_state=2).reset_index(drop=True)
    order = current["score"].rank(method="first").to_numpy()
    current["label"] = (order <= current["label"].sum()).astype(float)  # badly ranked: should be degraded
    current.loc[250:, "label"] = np.nan  # 250 labelled rows in the window, above min_labelled_rows=100
    policy = POLICY.model_copy(update={"max_current_rows": 300})
    summary, _ = compute_drift(reference, current, FEATURES, CATEGORICAL, policy)
    assert summary.rows == 3000
    assert summary.labelled_rows == 250
    assert summary.performance is not None and summary.verdict == "degraded"
