"""The monitoring benchmark: its drift-cost table (smallest configuration), the window replay behind the
IEEE-CIS loop-payoff table on synthetic data with and without drift, and the staged rollout it replays for each
retrain (promoted, aborted, unfinished) on hand-made scores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.bench_monitoring import (
    REPLAY_HEADERS,
    ROLLOUT_HEADERS,
    Replay,
    ReplayModel,
    RolloutReplay,
    replay_policy,
    replay_rollout,
    replay_windows,
)
from fraudops.data.synthetic import DriftConfig, generate_transactions
from fraudops.decisions import Bands
from fraudops.monitoring.drift import DriftPolicy
from fraudops.schema import SYNTHETIC
from fraudops.serving.challenger import bucket
from fraudops.training import TrainConfig
from fraudops.validation import validate

REPO = Path(__file__).resolve().parents[1]
DAY = 86_400


@pytest.mark.slow
def test_quick_drift_section_prints_a_table(tmp_path: Path) -> None:
    out = tmp_path / "monitoring.md"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_monitoring.py"), "--quick", "--only",
                             "drift", "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 20,000 |")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[3]) > 0 and float(cells[6]) > 0 and cells[8] in {"ok", "drift", "degraded"}


def _replay(drift: DriftConfig | None, policy: DriftPolicy) -> tuple[Replay, list[dict[str, str]]]:
    """Two 10-day clean months' worth of history, then two 10-day windows (drifted when ``drift`` is given)."""
    frames = [generate_transactions(3000, seed=i, start=f"2026-01-{1 + 10 * i:02d}", days=10, population_seed=7,
                                    fraud_rate=0.05, drift=drift if i >= 2 else None) for i in range(4)]
    checked = validate(pd.concat(frames, ignore_index=True), SYNTHETIC)
    first_end = pd.Timestamp("2026-01-21").timestamp()
    replay = replay_windows(checked.clean, checked.spec, checked.numeric, first_end=first_end, window_s=10 * DAY,
                            n_windows=2, valid_s=5 * DAY, config=TrainConfig(iterations=60, learning_rate=0.2),
                            policy=policy)
    return replay, [dict(zip(REPLAY_HEADERS, row, strict=True)) for row in replay.rows]


def _metrics(row: dict[str, str], model: str) -> tuple[str, str]:
    return row[f"{model} PR-AUC"], row[f"{model} R@1%"]


def test_replay_retrains_after_a_drifted_window_and_rolls_the_retrained_model_out() -> None:
    replay, rows = _replay(DriftConfig(amount_shift=1.5, category_mix=1.0, new_pattern=True),
                           DriftPolicy(min_labelled_rows=100))
    assert [r["window"] for r in rows] == ["days 20-30", "days 30-40"]
    first, second = rows
    # before any retrain every model is the one trained on the history
    assert (_metrics(first, "frozen") == _metrics(first, "at-once") == _metrics(first, "loop")
            == _metrics(first, "every-window"))
    assert first["drift verdict"] in {"drift", "degraded"} and first["loop action"] == "retrain, roll out"
    assert first["at-once verdict: action"] == f"{first['drift verdict']}: retrain" and first["loop serves"] == "d20"
    # promoted at once, the retrained model is the every-window model for the next window; the frozen one differs
    assert _metrics(second, "at-once") == _metrics(second, "every-window") != _metrics(second, "frozen")
    # the staged loop rolled it out on the second window instead: one rollout, in the table (and a retrain after
    # the last window, if any, is listed as not replayed)
    assert len(replay.outcomes) == 1 and len(replay.rollouts) == 1 + (second["loop action"] != "keep")
    if second["loop action"] != "keep":
        assert second["loop action"] == "retrain (no window after)"
        assert replay.rollouts[1][:4] == ["days 30-40", f"d40 vs {replay.rollouts[0][-1][:3]}", "—",
                                          "not replayed: no window after it"]
    outcome, table = replay.outcomes[0], dict(zip(ROLLOUT_HEADERS, replay.rollouts[0], strict=True))
    assert (table["retrain after"], table["challenger vs champion"], table["rolled out on"]) == (
        "days 20-30", "d30 vs d20", "days 30-40")
    assert outcome.action in {"promote", "abort", "unfinished"} and len(outcome.challenger_decides) == 3000
    if outcome.action == "promote":
        assert table["outcome"] == "promoted after canary 50%" and table["loop then serves"] == "d30"
        assert second["loop serves"].startswith("d20 → d30 (promoted at ")
    else:
        assert table["loop then serves"] == "d20 (champion stays)" and second["loop serves"].startswith("d20 (d30 ")
    if not outcome.challenger_decides.any():  # aborted in shadow: the champion decided every transaction
        assert _metrics(second, "loop") == _metrics(second, "frozen")
    assert replay.retrains >= 1 and replay.staged_retrains >= 1 and replay.fits == 2


def test_replay_keeps_the_model_on_undrifted_traffic() -> None:
    replay, rows = _replay(None, DriftPolicy(min_labelled_rows=10**6))  # performance not judged
    assert [r["drift verdict"] for r in rows] == ["ok", "ok"] and [r["loop action"] for r in rows] == ["keep", "keep"]
    for row in rows:
        assert _metrics(row, "loop") == _metrics(row, "at-once") == _metrics(row, "frozen")
        assert row["at-once verdict: action"] == "ok: keep" and row["loop serves"] == "d20"
    assert replay.retrains == replay.staged_retrains == 0 and replay.rollouts == [] and replay.outcomes == []
    assert replay.fits == 2  # the history model and the every-window model for the second window


# -- the staged rollout replayed for each retrain ------------------------------------------------------------------
N = 20_000


@pytest.fixture(scope="module")
def window() -> tuple[list[int], np.ndarray, np.ndarray]:
    """A window of ``N`` transactions of 2,000 customers, 4% fraud; scores that rank frauds high."""
    rng = np.random.default_rng(0)
    keys = rng.integers(0, N // 10, N).tolist()
    labels = (rng.random(N) < 0.04).astype(int)
    return keys, labels, np.where(labels == 1, rng.beta(4, 3, N), rng.beta(1, 30, N))


def _rollout(tmp_path: Path, window: tuple[list[int], np.ndarray, np.ndarray], challenger: Bands,
             rows: int = N) -> RolloutReplay:
    keys, labels, scores = window
    return replay_rollout(str(tmp_path / "log"), "r1", keys[:rows], labels[:rows],
                          ReplayModel("m:old", scores[:rows], Bands.around(0.5)),
                          ReplayModel("m:new", scores[:rows], challenger), replay_policy(N))


def test_replay_policy_scales_the_stages_to_the_window_and_keeps_the_default_limits() -> None:
    from fraudops.rollout import RolloutPolicy

    policy, default = replay_policy(90_000), RolloutPolicy()
    assert (policy.shadow.min_rows, policy.shadow.min_minutes) == (9_000, 0)
    assert [(s.percent, s.min_rows, s.min_minutes) for s in policy.canary] == [(5, 1_080, 0), (25, 4_500, 0),
                                                                                (50, 9_000, 0)]
    assert policy.min_judged_rows == 1_000 and replay_policy(N).min_judged_rows == 240
    limits = ("max_decline_rate_increase", "max_review_rate_increase", "max_disagreement", "max_score_distance",
              "max_latency_p99_ms", "min_labelled_frauds", "max_pr_auc_drop", "max_recall_drop", "score_method")
    assert all(getattr(policy, name) == getattr(default, name) for name in limits)


def test_rollout_of_an_equal_challenger_goes_through_every_stage_sticky_by_customer(tmp_path, window) -> None:
    replay = _rollout(tmp_path, window, Bands.around(0.5))
    assert (replay.action, replay.stage, replay.decision.action) == ("promote", "canary 50%", "promote")
    assert [s.name for s in replay.stages] == ["shadow", "canary 5%", "canary 25%", "canary 50%"]
    shadow = replay.stages[0]
    assert (shadow.champion_rows, shadow.challenger_rows, shadow.disagreement) == (2_000, 2_000, 0.0)
    assert shadow.champion_decline == shadow.challenger_decline > 0
    assert [s.challenger_rows for s in replay.stages[1:]] == [240, 1_000, 2_000]
    assert replay.judgements == 16 and replay.decision.reason.endswith(": promote m:new")
    # served: the champion in shadow; the canary for its customers (bucket below the step); all after promotion
    keys, served, at = window[0], replay.challenger_decides, replay.promoted_at
    assert at is not None and not served[:2_000].any() and served[at:].all()
    places = np.array([bucket("r1", key) for key in keys[2_000:at]])
    assert not served[2_000:at][places >= 50].any() and served[2_000:at][places < 5].all()
    assert 0 < served[2_000:at].sum() < at - 2_000
    assert set(replay.labelled) == {"champion", "challenger"} and replay.labelled["challenger"].frauds >= 50


def test_rollout_of_a_challenger_that_declines_more_aborts_in_shadow(tmp_path, window) -> None:
    replay = _rollout(tmp_path, window, Bands.around(0.125))  # a shifted threshold: declines far more
    assert (replay.action, replay.stage, replay.judgements, replay.promoted_at) == ("abort", "shadow", 1, None)
    assert replay.decision.reason.startswith("shadow: shadow decline rate ")
    assert "> max 2 pp" in replay.decision.reason and not replay.challenger_decides.any()
    shadow = replay.stages[0]
    assert shadow.challenger_rows == 500 and shadow.challenger_decline > shadow.champion_decline + 0.02


def test_rollout_that_outlasts_its_window_leaves_the_champion(tmp_path, window) -> None:
    replay = _rollout(tmp_path, window, Bands.around(0.5), rows=3_000)  # the policy of an N-row window
    assert (replay.action, replay.stage, replay.decision.action) == ("unfinished", "canary 5%", "hold")
    assert replay.promoted_at is None and replay.decision.reason.startswith("canary 5%: ")
    assert replay.stages[-1].challenger_rows == replay.challenger_decides.sum() < 240


def test_the_ieee_section_skips_cleanly_without_the_data(tmp_path: Path) -> None:
    out = tmp_path / "monitoring.md"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_monitoring.py"), "--quick", "--only",
                             "ieee", "--data-dir", str(tmp_path / "none"), "--out", str(out)], capture_output=True,
                            text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped: " in out.read_text() and "ieee_cis_train.csv.gz not found" in out.read_text()
