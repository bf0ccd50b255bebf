"""Threshold backtests: every number of a small hand-counted log (per-row bands that change mid-window, unlabelled
rows, labels corrected later, another model, rows before the window), proposals as thresholds and as factors,
the sweep's optimum against a brute-force search, its speed, option errors and the command line."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fraudops.backtest import (
    MIN_FRAUDS,
    Costs,
    Model,
    Replay,
    backtest,
    check_proposal,
    load_replay,
    model_for_backtest,
    outcome,
    proposed_bands,
    simulate,
    sweep,
)
from fraudops.decisions import DECLINE_COLUMN, REVIEW_COLUMN, Bands
from fraudops.errors import ConfigError, DataError, RegistryError
from fraudops.evaluation import cost_threshold
from fraudops.predlog import FEEDBACK, PREDICTIONS, LogChunk, LogWriter
from fraudops.registry import REGISTRY_URL_ENV, Registry
from fraudops.steps import train_to_directory
from fraudops.training import TrainConfig

NOW = datetime.now(UTC)
WINDOW = timedelta(days=30)
OLD_BANDS, NEW_BANDS = Bands(review=0.3, decline=0.6), Bands(review=0.2, decline=0.5)
# request A, decided with the old bands; B, after the bands changed. Labels: True = fraud.
A_SCORES, A_LABELS = [0.10, 0.35, 0.55, 0.65, 0.90, 0.20], [False, False, True, False, True, True]
B_SCORES, B_LABELS = [0.15, 0.25, 0.50, 0.45, 0.05, 0.95], [False, True, False, True, False, True]
D_SCORES = [0.70, 0.80, 0.10]  # scored with the old bands, no label yet
COSTS = Costs(fn=100.0, fp=5.0, review=2.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory, transactions) -> dict:
    """A champion trained (with costs 40 / 2) and registered in a temporary BentoML home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_DO_NOT_TRACK", "True")
        mp.delenv(REGISTRY_URL_ENV, raising=False)
        root = tmp_path_factory.mktemp("model")
        data = root / "train.parquet"
        transactions(1500, seed=1).to_parquet(data, index=False)
        registry = Registry(home=root / "bentoml", remote="")
        config = TrainConfig(iterations=10, threads=2, cost_fn=40.0, cost_fp=2.0)
        result = train_to_directory(str(data), root / "out", None, config, registry=registry)
        assert registry.champion() == result["tag"]
        yield {"registry": registry, "tag": result["tag"], "home": root / "bentoml",
               "threshold": registry.load(result["tag"]).threshold}


def predictions(scores: list[float], at: datetime, tag: str, bands: Bands | None, request_id: str | None = None
                ) -> LogChunk:
    """One scoring request as the scorer logs it (``bands`` None: a scorer that did not log its bands yet)."""
    n = len(scores)
    shared = {"request_id": request_id or uuid.uuid4().hex, "model_tag": tag}
    if bands is not None:
        shared |= {REVIEW_COLUMN: bands.review, DECLINE_COLUMN: bands.decline}
    decisions = (bands or OLD_BANDS).decide(scores)
    return LogChunk(PREDICTIONS, at, n, columns={"row": np.arange(n, dtype="int32"), "score": scores,
                                                 "decision": decisions},
                    shared=shared, json_columns={"input": [{"amount": 1.0}] * n})


def feedback(request_id: str, rows: list[int], labels: list[bool], at: datetime) -> LogChunk:
    n = len(rows)
    return LogChunk(FEEDBACK, at, n, columns={
        "request_id": [request_id] * n, "row": np.array(rows, dtype="int32"), "transaction_id": [None] * n,
        "is_fraud": labels, "source": ["chargeback"] * n, "note": [None] * n,
        "observed_at": pd.to_datetime([at] * n, utc=True)})


def write_log(root: Path, chunks: list[LogChunk]) -> str:
    writer = LogWriter(str(root), flush_rows=10**9, flush_seconds=3600)
    for chunk in chunks:
        writer.append(chunk)
    assert writer.flush()
    writer.close()
    return str(root)


@pytest.fixture
def log(model, tmp_path) -> str:
    """A (old bands, 3 days ago) and B (new bands, 1 day ago), all labelled; A's row 2 first labelled good, then
    fraud, and B's row 4 first fraud, then good (the later label is right); D (old bands) without labels and
    written twice; C by another model; E before the window; a label for an unknown request."""
    tag = model["tag"]
    a, b, c, d, e = (uuid.uuid4().hex for _ in range(5))
    chunks = [
        predictions(A_SCORES, NOW - timedelta(days=3), tag, OLD_BANDS, a),
        predictions(B_SCORES, NOW - timedelta(days=1), tag, NEW_BANDS, b),
        predictions([0.99, 0.01, 0.5], NOW - timedelta(days=2), "fraud-detector:other", NEW_BANDS, c),
        predictions(D_SCORES, NOW - timedelta(days=2), tag, OLD_BANDS, d),
        predictions(D_SCORES, NOW - timedelta(days=2), tag, OLD_BANDS, d),
        predictions([0.99] * 4, NOW - timedelta(days=40), tag, OLD_BANDS, e),
        feedback(a, [2], [False], NOW - timedelta(hours=20)),
        feedback(b, [4], [True], NOW - timedelta(hours=20)),
        feedback(a, list(range(6)), A_LABELS, NOW - timedelta(hours=10)),
        feedback(b, list(range(6)), B_LABELS, NOW - timedelta(hours=10)),
        feedback(c, [0, 1, 2], [True, False, False], NOW - timedelta(hours=10)),
        feedback(e, [0, 1, 2, 3], [False] * 4, NOW - timedelta(hours=10)),
        feedback(uuid.uuid4().hex, [0], [True], NOW - timedelta(hours=10)),
    ]
    return write_log(tmp_path / "log", chunks)


def run(model, log, **options):
    options = {"cost_fn": COSTS.fn, "cost_fp": COSTS.fp, "cost_review": COSTS.review} | options
    return simulate(model["registry"], log, WINDOW, **options)


# -- the replay -------------------------------------------------------------------------------------------------
def test_current_bands_are_each_rows_own_and_every_number_is_the_hand_count(model, log) -> None:
    result = run(model, log)
    o = result.current
    # A (review 0.3, decline 0.6): approve .10 .20(F); review .35 .55(F); decline .65 .90(F)
    # B (review 0.2, decline 0.5): approve .15 .05; review .25(F) .45(F); decline .50 (at the threshold) .95(F)
    assert (o.labelled, o.frauds, o.good) == (12, 6, 6)
    assert (o.declined, o.reviewed, o.approved) == (4, 4, 4)
    assert (o.frauds_declined, o.frauds_reviewed, o.frauds_approved, o.good_declined) == (2, 3, 1, 2)
    assert o.cost == 100 * 1 + 5 * 2 + 2 * 4
    assert (o.recall, o.false_positive_rate) == (pytest.approx(2 / 6), pytest.approx(2 / 6))
    assert o.rate("decline") == o.rate("review") == o.rate("approve") == pytest.approx(1 / 3)
    assert o.cost_per_1k == pytest.approx(118 * 1000 / 12)
    # D (scored once, logged twice, no label): .70 .80 declined, .10 approved under the old bands
    assert (o.scored, o.scored_declined, o.scored_reviewed, o.scored_approved) == (15, 6, 4, 5)
    assert o.scored_rate("decline") == pytest.approx(6 / 15)
    assert (o.labelled_share("decline"), o.labelled_share("review"), o.labelled_share("approve")) == (
        pytest.approx(4 / 6), 1.0, pytest.approx(4 / 5))
    replay = result.replay
    assert replay.model_tag == model["tag"] and replay.unbanded_rows == 0 and replay.corrupt_parts == 0
    assert replay.band_settings() == [(OLD_BANDS, 9), (NEW_BANDS, 6)] and replay.usual == OLD_BANDS
    assert result.proposed is None and result.proposed_outcome is None and result.sweep is None


def test_the_label_recorded_last_wins_and_unlabelled_rows_are_counted_apart(model, log) -> None:
    replay = run(model, log).replay
    labels = dict(zip(replay.scores.tolist(), replay.labels.tolist(), strict=True))
    assert labels[0.55] == 1.0 and labels[0.05] == 0.0  # A row 2 and B row 4: corrected later
    assert np.isnan([labels[s] for s in D_SCORES]).all()
    assert len(replay.scores) == 15  # not C (another model), E (before the window), nor D twice
    warnings = run(model, log).warnings()
    assert "3 of 15 scored rows have no label yet" in warnings[0]
    assert f"only 6 labelled frauds (fewer than {MIN_FRAUDS})" in warnings[1]


def test_proposed_thresholds_as_scores_or_as_factors_of_the_model_threshold(model, log) -> None:
    result = run(model, log, review=0.4, decline=0.7)
    o = result.proposed_outcome
    # decline .90(F) .95(F); review .55(F) .65 .50 .45(F); approve the rest, with frauds .20 and .25
    assert result.proposed == Bands(0.4, 0.7)
    assert (o.declined, o.reviewed, o.approved) == (2, 4, 6)
    assert (o.frauds_declined, o.frauds_reviewed, o.frauds_approved, o.good_declined) == (2, 2, 2, 0)
    assert o.cost == 100 * 2 + 5 * 0 + 2 * 4
    assert (o.scored_declined, o.scored_reviewed) == (4, 4)  # D: .70 .80 declined
    assert result.current.cost == 118  # the current bands are replayed beside it

    threshold = model["threshold"]
    by_factor = run(model, log, review_factor=0.5, decline_factor=1.5)
    assert by_factor.proposed == Bands.around(threshold, 0.5, 1.5)
    expected = outcome(by_factor.replay.scores, by_factor.replay.labels, threshold * 0.5, threshold * 1.5, COSTS)
    assert by_factor.proposed_outcome == expected


def test_an_omitted_threshold_stays_at_the_bands_most_rows_were_decided_with(model, log) -> None:
    assert run(model, log, decline=0.7).proposed == Bands(OLD_BANDS.review, 0.7)
    assert run(model, log, review=0.1).proposed == Bands(0.1, OLD_BANDS.decline)
    with pytest.raises(ConfigError, match=r"--review puts the bands at review 0\.65, decline 0\.6, with the "
                                          r"current decline threshold.*give --decline too"):
        run(model, log, review=0.65)


def test_costs_come_from_the_models_training_unless_given(model) -> None:
    trained = model_for_backtest(model["registry"], "champion")
    assert trained == Model(model["tag"], model["threshold"], Costs(fn=40.0, fp=2.0, review=0.0))
    assert model_for_backtest(model["registry"], model["tag"], cost_fp=7.0, cost_review=1.0).costs == Costs(
        40.0, 7.0, 1.0)
    with pytest.raises(ConfigError, match="--cost-fn -1 must be a finite cost >= 0"):
        model_for_backtest(model["registry"], "champion", cost_fn=-1.0)
    with pytest.raises(RegistryError, match="is not in the model store"):
        model_for_backtest(model["registry"], "fraud-detector:doesnotexist")


def test_rows_logged_without_bands_are_replayed_with_the_usual_ones(model, tmp_path) -> None:
    root = write_log(tmp_path / "log", [predictions([0.1, 0.55, 0.7], NOW - timedelta(days=2), model["tag"], None),
                                        predictions([0.25], NOW - timedelta(days=1), model["tag"], NEW_BANDS)])
    replay = load_replay(root, NOW - WINDOW, NOW, Model(model["tag"], model["threshold"], COSTS))
    assert replay.unbanded_rows == 3 and replay.usual == NEW_BANDS
    assert replay.band_settings() == [(NEW_BANDS, 4)]
    # a log from before any row carried its bands: the default bands around the model threshold
    old = write_log(tmp_path / "old", [predictions([0.1], NOW - timedelta(days=2), model["tag"], None)])
    assert load_replay(old, NOW - WINDOW, NOW, Model(model["tag"], 0.4, COSTS)).usual == Bands.around(0.4)


def test_an_empty_window_or_one_without_labels_is_an_error(model, tmp_path) -> None:
    with pytest.raises(DataError, match=f"no predictions of model {model['tag']} were logged"):
        run(model, str(tmp_path / "nothing"))
    root = write_log(tmp_path / "log", [predictions([0.1, 0.7], NOW - timedelta(days=1), model["tag"], NEW_BANDS)])
    with pytest.raises(DataError, match=r"none of the 2 rows .* has a label yet"):
        run(model, root)


@pytest.mark.parametrize(("options", "message"), [
    ({"review": 0.2, "decline_factor": 1.2}, "either as --review/--decline or as --review-factor/--decline-factor"),
    ({"review": 1.5}, "--review 1.5 is not a score threshold in [0, 1]"),
    ({"decline": -0.1}, "--decline -0.1 is not a score threshold in [0, 1]"),
    ({"decline": float("nan")}, "--decline nan is not a score threshold"),
    ({"review_factor": 0.0}, "--review-factor 0 must be a factor > 0"),
    ({"review": 0.6, "decline": 0.5}, "--review 0.6 must not exceed --decline 0.5"),
    ({"review_factor": 1.2, "decline_factor": 1.0}, "--review-factor 1.2 must not exceed --decline-factor 1"),
])
def test_bad_proposals_are_refused_naming_the_option(options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_proposal(**options)
    assert message in str(error.value)
    with pytest.raises(ConfigError):
        proposed_bands(OLD_BANDS, 0.5, **options)


def test_options_are_checked_before_the_log_is_read(model, tmp_path) -> None:
    for options, message in (({"review": 2.0}, "--review 2"), ({"step": 0.0}, "--step 0 must be in"),
                             ({"cost_review": -2.0}, "--cost-review -2")):
        with pytest.raises(ConfigError, match=message):
            run(model, str(tmp_path / "nothing"), **options)


# -- the sweep --------------------------------------------------------------------------------------------------
def small() -> tuple[np.ndarray, np.ndarray]:
    return np.array(A_SCORES + B_SCORES + D_SCORES), np.array(A_LABELS + B_LABELS + [np.nan] * 3, dtype=float)


def test_sweep_finds_the_hand_computed_optimum_and_curve() -> None:
    scores, labels = small()
    # decline only: every fraud is at or above 0.20, so decline from 0.20 (good .35 .50 .65 declined: 15)
    result = sweep(scores, labels, Costs(100, 5), step=0.25)
    assert result.decline_only == Bands(0.2, 0.2) and result.with_review is None
    assert result.optimal == Bands(0.2, 0.2)
    # with reviews at 2: review every fraud from 0.20, decline above the last good customer (0.65): 7 x 2 = 14
    assert sweep(scores, labels, Costs(100, 5, 2)).optimal == Bands(0.2, 0.9)
    assert outcome(scores, labels, 0.2, 0.9, Costs(100, 5, 2)).cost == 14
    points = {p.threshold: p for p in result.curve}
    assert sorted(points) == [0.2, 0.25, 0.5, 0.75, 1.0]  # the grid and the optimum
    half = points[0.5]  # .50 .55 .65 .90 .95: frauds .55 .90 .95, good .50 .65
    assert (half.decline_rate, half.recall, half.false_positive_rate) == (5 / 12, 3 / 6, 2 / 6)
    assert half.cost == 100 * 3 + 5 * 2
    assert points[1.0].decline_rate == 0 and points[1.0].cost == 100 * 6


def labelled_counts(o) -> tuple:
    return o.declined, o.reviewed, o.frauds_declined, o.frauds_reviewed, o.good_declined, o.cost


def brute_force(scores: np.ndarray, labels: np.ndarray, costs: Costs, with_review: bool) -> tuple:
    """The cheapest bands over every pair of cuts; among equal costs, the highest decline then review threshold."""
    cuts = [*np.unique(scores[~np.isnan(labels)]).tolist(), 1.01]
    pairs = [(r, d) for d in cuts for r in (cuts if with_review else [d]) if r <= d]
    outcomes = [(outcome(scores, labels, r, d, costs), d, r) for r, d in pairs]
    return labelled_counts(min(outcomes, key=lambda x: (x[0].cost, -x[1], -x[2]))[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("costs", [Costs(100, 5), Costs(20, 5, 1.5), Costs(10, 1, 4), Costs(5, 5, 5)])
def test_sweep_optimum_equals_a_brute_force_search(seed: int, costs: Costs) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(60) < 0.3).astype(float)
    scores = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), 2)  # ties included
    labels[rng.random(60) < 0.1] = np.nan
    result = sweep(scores, labels, costs)
    optimal, decline_only = result.optimal, result.decline_only
    assert labelled_counts(outcome(scores, labels, optimal.review, optimal.decline, costs)) == brute_force(
        scores, labels, costs, costs.review > 0)
    assert labelled_counts(outcome(scores, labels, decline_only.review, decline_only.decline, costs)) == \
        brute_force(scores, labels, costs, False)
    # the decline-only optimum costs what the threshold chosen in training costs on these rows
    known = ~np.isnan(labels)
    trained = cost_threshold(labels[known].astype(int), scores[known], costs.fn, costs.fp)
    assert outcome(scores, labels, trained, trained, costs).cost == pytest.approx(
        outcome(scores, labels, decline_only.review, decline_only.decline, costs).cost)
    # the curve prices the decline-only policy as outcome does
    for point in result.curve:
        assert point.cost == pytest.approx(outcome(scores, labels, point.threshold, point.threshold,
                                                   Costs(costs.fn, costs.fp)).cost)


def test_equal_costs_go_to_the_fewest_declines() -> None:
    # declining from 0.6 (one good customer declined) costs what declining nothing (one fraud missed) costs
    result = sweep(np.array([0.3, 0.6, 0.8]), np.array([0.0, 1.0, 0.0]), Costs(5, 5))
    assert result.decline_only == Bands(1.0, 1.0)
    # reviewing the two rows at 0.5 (2 x 1) costs what missing their fraud (2) costs: no review
    result = sweep(np.array([0.5, 0.5]), np.array([1.0, 0.0]), Costs(2, 100, 1))
    assert result.with_review == Bands(1.0, 1.0)


def test_optimal_thresholds_are_short_decimals_that_split_the_scores_as_the_optimum() -> None:
    scores = np.array([0.123456, 0.2345678, 0.3456789, 0.456789, 0.5678901])
    labels = np.array([0, 0, 1, 0, 1], dtype=float)
    result = sweep(scores, labels, Costs(100, 5))
    assert result.decline_only == Bands(0.3, 0.3)  # any threshold in (0.2345678, 0.3456789] declines the same
    assert sweep(np.array([0.2, 0.25]), np.array([0.0, 1.0]), Costs(100, 5)).decline_only == Bands(0.25, 0.25)


def test_a_million_labelled_rows_replay_and_sweep_in_seconds() -> None:
    rng = np.random.default_rng(0)
    n = 1_000_000
    labels = (rng.random(n) < 0.03).astype(float)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.15), 0, 1)
    changed = np.arange(n) >= n // 2  # the bands changed half way
    replay = Replay("m:1", NOW, scores, np.where(changed, 0.3, 0.25), np.where(changed, 0.6, 0.5), labels,
                    pd.Timestamp(NOW - WINDOW), pd.Timestamp(NOW), 0, Bands(0.3, 0.6), 0)
    started = time.perf_counter()
    result = backtest(replay, Model("m:1", 0.5, Costs(100, 5, 1)), Bands(0.35, 0.7), with_sweep=True)
    assert time.perf_counter() - started < 5
    assert result.current.labelled == n and result.current.frauds == int(labels.sum())
    optimal = result.sweep.optimal
    assert 0.3 < optimal.review < optimal.decline < 1


def test_backtest_with_sweep_replays_the_optimal_bands(model, log) -> None:
    result = run(model, log, with_sweep=True, review=0.4, decline=0.7)
    assert result.sweep.optimal == Bands(0.2, 0.9)
    assert result.optimal_outcome.cost == 14
    thresholds = [p.threshold for p in result.sweep.curve]
    assert {0.05, 0.2, 0.6, 0.7, 0.9, 1.0} <= set(thresholds)  # grid, current, proposed, optimal
    free = backtest(result.replay, Model(model["tag"], 0.5, Costs(100, 5)), with_sweep=True)
    assert free.sweep.with_review is None and "reviews cost nothing here" in free.warnings()[-1]


# -- the command line -------------------------------------------------------------------------------------------
def cli(model, monkeypatch, *args: str):
    from fraudops.cli import main

    monkeypatch.setenv("BENTOML_HOME", str(model["home"]))
    monkeypatch.delenv(REGISTRY_URL_ENV, raising=False)
    return CliRunner().invoke(main, ["decisions", "simulate", *args])


def test_cli_prints_current_proposed_and_optimal_bands(model, log, monkeypatch) -> None:
    result = cli(model, monkeypatch, "--log-root", log, "--review", "0.4", "--decline", "0.7", "--cost-fn", "100",
                 "--cost-fp", "5", "--cost-review", "2", "--sweep")
    assert result.exit_code == 0, result.output + result.stderr
    text = result.stdout
    assert f"model {model['tag']} (threshold {model['threshold']:.4f}), last 30d up to" in text
    assert "15 rows scored from" in text and "12 labelled, 6 frauds" in text
    assert "current bands: review 0.3, decline 0.6 (9 rows)" in text
    assert "current bands: review 0.2, decline 0.5 (6 rows)" in text
    assert "proposed bands: review 0.4, decline 0.7" in text
    assert "cost = 100 x frauds approved + 5 x good customers declined + 2 x reviews" in text
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in text.splitlines() if line.count("│") >= 4}
    assert rows["frauds declined (recall)"] == ["2 (33.33%)", "2 (33.33%)", "2 (33.33%)"]
    assert rows["frauds sent to review"] == ["3", "2", "4"]
    assert rows["good customers declined (FPR)"] == ["2 (33.33%)", "0 (0.00%)", "0 (0.00%)"]
    assert rows["frauds approved (missed)"] == ["1", "2", "0"]
    assert rows["cost"] == ["118", "208", "14"]
    assert rows["0.5"] == ["41.67%", "50.00%", "33.33%", "310", ""]
    assert rows["all scored rows: reviews (load)"] == ["4 (26.67%)", "4 (26.67%)", "9 (60.00%)"]
    assert "labels arrived for 80.00% of the approved, 100.00% of the reviewed and 66.67% of the declined" in text
    assert rows["0.6"][-1] == "current" and rows["0.7"][-1] == "proposed"
    assert rows["0.2"][-1] == "optimal" and rows["0.9"][-1] == "optimal with review"
    assert "cost-optimal bands: review 0.2, decline 0.9 (cost 14, current 118)" in text
    threshold = model["threshold"]
    assert f"FRAUDOPS_REVIEW_FACTOR={0.2 / threshold:.6g} FRAUDOPS_DECLINE_FACTOR={0.9 / threshold:.6g}" in text
    assert "3 of 15 scored rows have no label yet" in result.stderr
    assert "only 6 labelled frauds" in result.stderr


def test_cli_uses_the_models_training_costs_by_default(model, log, monkeypatch) -> None:
    result = cli(model, monkeypatch, "--log-root", log)
    assert result.exit_code == 0, result.output + result.stderr
    assert "cost = 40 x frauds approved + 2 x good customers declined + 0 x reviews" in result.stdout
    assert "cost-optimal" not in result.stdout and "proposed" not in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--window", "soon"], "window 'soon' is not a duration"),
    (["--review", "0.8", "--decline", "0.5"], "--review 0.8 must not exceed --decline 0.5"),
    (["--decline", "3"], "--decline 3 is not a score threshold in [0, 1]"),
    (["--review", "0.1", "--review-factor", "0.5"], "either as --review/--decline or"),
    (["--model", "fraud-detector:doesnotexist"], "is not in the model store"),
    (["--window", "1h"], "were logged in"),
])
def test_cli_errors_are_one_line_and_exit_1(model, log, monkeypatch, args: list[str], message: str) -> None:
    result = cli(model, monkeypatch, "--log-root", log, *args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
