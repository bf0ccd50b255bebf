"""Splits, CatBoost training, the decision threshold and the model bundle on disk."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from fraudops.bundle import META_FILE, MODEL_FILE, STATE_DIR, ModelBundle
from fraudops.errors import DataError, RegistryError
from fraudops.evaluation import cost_threshold
from fraudops.schema import SYNTHETIC
from fraudops.training import MAX_ROUNDS, TrainConfig, featurize, fit, refit, refit_rounds, split
from fraudops.validation import validate

N = 2000
CONFIG = TrainConfig(iterations=30, threads=2)


@pytest.fixture(scope="module")
def validated(transactions):
    result = validate(transactions(N, seed=11), SYNTHETIC)
    return result.clean, result.spec, result.numeric


@pytest.fixture(scope="module")
def prepared(validated):
    clean, spec, numeric = validated
    splits = split(clean, spec, CONFIG)
    state, x_train, x_valid, x_test = featurize(splits, spec, numeric)
    return splits, state, x_train, x_valid, x_test


@pytest.fixture(scope="module")
def bundle(prepared):
    splits, state, x_train, x_valid, _ = prepared
    return fit(state, x_train, splits.train["is_fraud"], x_valid, splits.valid["is_fraud"], CONFIG)


@pytest.fixture(scope="module")
def saved_bundle(bundle, tmp_path_factory):
    return bundle.save(tmp_path_factory.mktemp("bundle") / "model")


def test_config_validation():
    with pytest.raises(ValidationError, match="at least 10%"):
        TrainConfig(test_fraction=0.5, valid_fraction=0.45)
    with pytest.raises(ValidationError):
        TrainConfig(itertions=5)
    with pytest.raises(ValidationError):
        TrainConfig(iterations=0)


def test_time_split_order_and_sizes(validated, prepared):
    clean, _, _ = validated
    splits = prepared[0]
    n_test, n_valid = int(N * CONFIG.test_fraction), int(N * CONFIG.valid_fraction)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (N - n_test - n_valid, n_valid, n_test)
    assert splits.train["purchase_time"].max() <= splits.valid["purchase_time"].min()
    assert splits.valid["purchase_time"].max() <= splits.test["purchase_time"].min()
    everything = pd.concat([splits.train, splits.valid, splits.test])
    assert sorted(everything["transaction_id"]) == sorted(clean["transaction_id"])
    for part in (splits.train, splits.valid, splits.test):
        assert part.index.tolist() == list(range(len(part)))
    windows = splits.windows("purchase_time")
    assert windows["train"]["rows"] == len(splits.train)
    assert windows["test"]["end"] == str(clean["purchase_time"].max())
    assert windows["train"]["start"] == str(clean["purchase_time"].min())


def test_time_split_sorts_unsorted_input(validated):
    clean, spec, _ = validated
    shuffled = clean.sample(frac=1.0, random_state=0)
    splits = split(shuffled, spec, CONFIG)
    assert splits.train["purchase_time"].max() <= splits.valid["purchase_time"].min()
    assert splits.valid["purchase_time"].max() <= splits.test["purchase_time"].min()


def test_random_split_is_stratified(validated):
    clean, spec, _ = validated
    config = TrainConfig(iterations=30, split="random", seed=3)
    splits = split(clean, spec, config)
    n_test, n_valid = int(N * config.test_fraction), int(N * config.valid_fraction)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (N - n_test - n_valid, n_valid, n_test)
    n_fraud = clean["is_fraud"].sum()
    for part in (splits.train, splits.valid, splits.test):
        expected = n_fraud * len(part) / N
        assert abs(part["is_fraud"].sum() - expected) <= 1.0
        assert part["purchase_time"].is_monotonic_increasing
    everything = pd.concat([splits.train, splits.valid, splits.test])
    assert sorted(everything["transaction_id"]) == sorted(clean["transaction_id"])
    # windows overlap in time: this is not a time split
    assert splits.train["purchase_time"].max() > splits.test["purchase_time"].min()
    # seeded
    again = split(clean, spec, config)
    assert again.test["transaction_id"].tolist() == splits.test["transaction_id"].tolist()


def test_too_few_rows(validated):
    clean, spec, _ = validated
    with pytest.raises(DataError, match="100 rows are too few"):
        split(clean.iloc[:100], spec, CONFIG)


def test_window_without_fraud(validated):
    clean, spec, _ = validated
    frame = clean.copy()
    frame.loc[frame.index[-400:], "is_fraud"] = 0  # no fraud in the last (test) window
    with pytest.raises(DataError, match="test window has no fraud"):
        split(frame, spec, CONFIG)


def test_featurize_replays_the_whole_table_in_event_time(prepared):
    """Every part's entity features come from the rows strictly before it, in whichever part (point in time):
    a validation row sees the training rows before it, a training row never sees a later row."""
    splits, state, x_train, x_valid, x_test = prepared
    whole = pd.concat([splits.train, splits.valid, splits.test], ignore_index=True)
    expected = state.training_features(whole)
    got = pd.concat([x_train, x_valid, x_test], ignore_index=True)
    pd.testing.assert_frame_equal(got, expected)
    first = whole.groupby("device_id")["purchase_time"].transform("min")
    seen_before = (whole["purchase_time"] > first).to_numpy()
    np.testing.assert_array_equal(got["device_id__first_seen"].to_numpy() == 0, seen_before)
    assert (x_valid["user_id__count_all"] > 0).any()  # validation rows see the training window
    assert x_train["device_id__count_all"].iloc[0] == 0
    # the frozen snapshot holds the whole table: every transaction is the newest of its user or folded before it
    frozen = state.snapshot.columns["user_id"]
    assert int(np.diff(frozen.event_start).sum() + frozen.count.sum()) == len(whole)


@pytest.fixture(scope="module")
def refitted(prepared):
    """The same training with the refit on train + valid."""
    splits, state, x_train, x_valid, _ = prepared
    return fit(state, x_train, splits.train["is_fraud"], x_valid, splits.valid["is_fraud"],
               CONFIG.model_copy(update={"refit": True}))


def test_fit_threshold_minimises_valid_cost(bundle, prepared):
    splits, _, _, x_valid, _ = prepared
    y = splits.valid["is_fraud"].to_numpy()
    scores = bundle.score_features(x_valid)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert bundle.threshold == cost_threshold(y, scores, CONFIG.cost_fn, CONFIG.cost_fp)

    def cost(t):
        flagged = scores >= t
        return CONFIG.cost_fn * ((~flagged) & (y == 1)).sum() + CONFIG.cost_fp * (flagged & (y == 0)).sum()

    assert cost(bundle.threshold) == min(cost(t) for t in np.unique(scores))


def test_refit_trains_the_final_model_on_train_and_valid_with_the_early_stopping_threshold(
        refitted, bundle, prepared):
    splits, _, x_train, x_valid, x_test = prepared
    best = refitted.meta["best_iteration"]
    assert best == bundle.meta["best_iteration"]
    rounds = refit_rounds(best + 1, len(x_train), len(x_valid))
    assert rounds > best + 1  # more rows, proportionally more rounds
    assert refitted.meta["refit"] == {"rounds": rounds, "rows": len(splits.train) + len(splits.valid),
                                      "early_stopped_rounds": best + 1}
    assert refitted.meta["params"]["refit"] is True
    assert refitted.model.tree_count_ == rounds
    params = refitted.model.get_params()
    assert (params["depth"], params["learning_rate"]) == (CONFIG.depth, CONFIG.learning_rate)
    assert bundle.model.tree_count_ == best + 1
    assert "refit" not in bundle.meta
    # the threshold is the one picked on valid by the early-stopped model (valid is in the refit's training rows)
    assert refitted.threshold == bundle.threshold
    assert not np.array_equal(refitted.score_features(x_test), bundle.score_features(x_test))
    # so are the validation metrics (where settings are compared): the early-stopped model's, not the refit's
    from sklearn.metrics import average_precision_score

    y_valid = splits.valid["is_fraud"].to_numpy()
    assert refitted.meta["valid_metrics"] == bundle.meta["valid_metrics"]
    assert refitted.meta["valid_metrics"]["pr_auc"] == pytest.approx(
        average_precision_score(y_valid, bundle.score_features(x_valid)))


def test_refit_of_a_trained_bundle_leaves_it_unchanged(bundle, refitted, prepared):
    splits, _, x_train, x_valid, x_test = prepared
    before = json.dumps(bundle.meta, sort_keys=True)
    again = refit(bundle, x_train, splits.train["is_fraud"], x_valid, splits.valid["is_fraud"])
    assert json.dumps(bundle.meta, sort_keys=True) == before  # its meta is copied, not shared
    assert "refit" not in bundle.meta and bundle.meta["params"]["refit"] is False
    assert again.meta["params"]["refit"] is True and again.meta["refit"] == refitted.meta["refit"]
    np.testing.assert_array_equal(again.score_features(x_test), refitted.score_features(x_test))


def test_refit_rounds_scale_with_the_rows_added():
    assert refit_rounds(100, 700, 150) == 121
    assert refit_rounds(1, 10_000, 1) == 1
    assert refit_rounds(1, 10, 10) == 2
    assert refit_rounds(MAX_ROUNDS, 100, 900) == MAX_ROUNDS


def test_fit_records_meta(bundle):
    assert bundle.meta["params"] == CONFIG.model_dump()
    assert 0 <= bundle.meta["best_iteration"] < CONFIG.iterations
    assert bundle.model.get_params()["thread_count"] == 2
    assert list(bundle.model.feature_names_) == bundle.feature_names


def test_model_learns_something(bundle, prepared):
    from sklearn.metrics import average_precision_score

    splits, _, _, _, x_test = prepared
    y = splits.test["is_fraud"].to_numpy()
    assert average_precision_score(y, bundle.score_features(x_test)) > 3 * y.mean()


def test_same_seed_same_scores(bundle, prepared):
    splits, state, x_train, x_valid, x_test = prepared
    again = fit(state, x_train, splits.train["is_fraud"], x_valid, splits.valid["is_fraud"], CONFIG)
    np.testing.assert_array_equal(again.score_features(x_test), bundle.score_features(x_test))
    assert again.threshold == bundle.threshold


def test_progress_without_refit_counts_the_early_stopped_fit(prepared):
    splits, state, x_train, x_valid, _ = prepared
    calls: list[tuple[int, int]] = []
    fit(state, x_train, splits.train["is_fraud"], x_valid, splits.valid["is_fraud"], TrainConfig(iterations=15),
        progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 15) for i in range(1, len(calls) + 1)] and 0 < len(calls) <= 15


def test_single_thread_and_progress(prepared):
    splits, state, x_train, x_valid, x_test = prepared
    config = TrainConfig(iterations=20, threads=1, seed=5, class_weights="Balanced", refit=True)
    calls: list[tuple[int, int]] = []
    one = fit(state, x_train, splits.train["is_fraud"], x_valid, splits.valid["is_fraud"], config,
              progress=lambda i, total: calls.append((i, total)))
    assert one.model.get_params()["thread_count"] == 1
    assert one.model.get_params()["random_seed"] == 5
    assert one.model.get_params()["auto_class_weights"] == "Balanced"
    done = [d for d, _ in calls]
    assert done == list(range(1, len(calls) + 1))  # one call per round, early-stopped fit then refit
    best = one.meta["best_iteration"]
    refit = one.meta["refit"]["rounds"]
    assert refit == refit_rounds(best + 1, len(x_train), len(x_valid))
    first = len(calls) - refit  # rounds the early-stopped fit ran (up to 20)
    assert best < first <= 20
    assert all(total == 20 + refit_rounds(20, len(x_train), len(x_valid)) for _, total in calls[:first])
    assert all(total == len(calls) for _, total in calls[first:])  # the bar ends full
    assert len(one.score_features(x_test)) == len(x_test)


def test_fit_without_class_weights(prepared):
    splits, state, x_train, x_valid, x_test = prepared
    config = TrainConfig(iterations=10, class_weights="none")
    bundle = fit(state, x_train, splits.train["is_fraud"], x_valid, splits.valid["is_fraud"], config)
    assert len(bundle.score_features(x_test)) == len(x_test)


def test_bundle_round_trip_scores_raw_rows(bundle, saved_bundle, prepared):
    splits = prepared[0]
    loaded = ModelBundle.load(saved_bundle)
    raw = splits.test.drop(columns=["is_fraud"])
    np.testing.assert_array_equal(loaded.score(raw), bundle.score(raw))
    assert loaded.threshold == bundle.threshold
    assert loaded.feature_names == bundle.feature_names
    assert loaded.meta["params"] == CONFIG.model_dump()
    assert loaded.reference is None
    # a single raw transaction, as the scoring service sends it, gets the score it had in the batch
    one = raw.iloc[[7]].reset_index(drop=True)
    assert loaded.score(one)[0] == pytest.approx(bundle.score(raw)[7], abs=1e-12)


def test_bundle_round_trip_with_reference(bundle, tmp_path):
    bundle.reference = pd.DataFrame({"score": [0.1, 0.9], "label": [0, 1]})
    try:
        loaded = ModelBundle.load(bundle.save(tmp_path / "with_ref"))
    finally:
        bundle.reference = None
    pd.testing.assert_frame_equal(loaded.reference, pd.DataFrame({"score": [0.1, 0.9], "label": [0, 1]}))


@pytest.mark.parametrize("name", [MODEL_FILE, META_FILE, STATE_DIR])
def test_load_incomplete_bundle_names_the_file(saved_bundle, tmp_path, name):
    copy = shutil.copytree(saved_bundle, tmp_path / "copy")
    target = copy / name
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(RegistryError, match=f"incomplete: {name} is missing"):
        ModelBundle.load(copy)


def test_load_bundle_missing_entity_file(saved_bundle, tmp_path):
    copy = shutil.copytree(saved_bundle, tmp_path / "copy")
    (copy / STATE_DIR / "snapshot" / "device_id.events.parquet").unlink()
    with pytest.raises(RegistryError, match=r"device_id\.events\.parquet"):
        ModelBundle.load(copy)


def test_load_bundle_corrupt_state(saved_bundle, tmp_path):
    copy = shutil.copytree(saved_bundle, tmp_path / "copy")
    (copy / STATE_DIR / "snapshot" / "ip_address.keys.parquet").write_bytes(b"not parquet")
    with pytest.raises(RegistryError, match="unreadable"):
        ModelBundle.load(copy)


def test_load_bundle_corrupt_meta_raises_registry_error(saved_bundle, tmp_path):
    copy = shutil.copytree(saved_bundle, tmp_path / "copy")
    (copy / META_FILE).write_text("{not json")
    with pytest.raises(RegistryError, match="unreadable"):
        ModelBundle.load(copy)


def test_load_bundle_corrupt_meta_names_the_file(saved_bundle, tmp_path):
    copy = shutil.copytree(saved_bundle, tmp_path / "copy")
    (copy / META_FILE).write_text("{not json")
    with pytest.raises(RegistryError, match=META_FILE):
        ModelBundle.load(copy)


def test_load_bundle_corrupt_model(saved_bundle, tmp_path):
    copy = shutil.copytree(saved_bundle, tmp_path / "copy")
    (copy / MODEL_FILE).write_bytes(b"garbage")
    with pytest.raises(RegistryError, match=MODEL_FILE):
        ModelBundle.load(copy)


def test_load_inconsistent_bundle(saved_bundle, tmp_path):
    copy = shutil.copytree(saved_bundle, tmp_path / "copy")
    meta = json.loads((copy / META_FILE).read_text())
    meta["feature_names"] = meta["feature_names"][::-1]
    (copy / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="inconsistent"):
        ModelBundle.load(copy)


def test_load_bundle_of_an_older_format_says_retrain(saved_bundle, tmp_path):
    copy = shutil.copytree(saved_bundle, tmp_path / "copy")
    meta = json.loads((copy / META_FILE).read_text())
    (copy / META_FILE).write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(RegistryError, match=r"has format 1; this fraudops reads format 2 .* retrain the model"):
        ModelBundle.load(copy)


def test_model_card_names_the_rounds_and_the_refit(bundle, refitted):
    from fraudops.card import model_card

    metrics = {"threshold": bundle.threshold, "pr_auc": 0.5}
    early = model_card(bundle.meta, metrics)
    best = bundle.meta["best_iteration"]
    assert f"- {best + 1} boosting rounds chosen by early stopping on the validation window, depth 6" in early
    assert "refit" not in early
    card = model_card(refitted.meta, metrics)
    info = refitted.meta["refit"]
    assert (f"{best + 1} boosting rounds chosen by early stopping on the validation window; the final model refit "
            f"on train + valid ({info['rows']} rows, {info['rounds']} rounds;") in card
