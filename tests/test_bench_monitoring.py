"""The monitoring benchmark: its drift-cost table (smallest configuration) and the window replay behind the
IEEE-CIS loop-payoff table, on synthetic data with and without drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fraudops.data.synthetic import DriftConfig, generate_transactions
from fraudops.monitoring.drift import DriftPolicy
from fraudops.schema import SYNTHETIC
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


def _replay(drift: DriftConfig | None, policy: DriftPolicy) -> tuple[list[dict[str, str]], int, int]:
    """Two 10-day clean months' worth of history, then two 10-day windows (drifted when ``drift`` is given)."""
    from bench.bench_monitoring import REPLAY_HEADERS, replay_windows

    frames = [generate_transactions(3000, seed=i, start=f"2026-01-{1 + 10 * i:02d}", days=10, population_seed=7,
                                    fraud_rate=0.05, drift=drift if i >= 2 else None) for i in range(4)]
    checked = validate(pd.concat(frames, ignore_index=True), SYNTHETIC)
    first_end = pd.Timestamp("2026-01-21").timestamp()
    rows, retrains, fits = replay_windows(checked.clean, checked.spec, checked.numeric, first_end=first_end,
                                          window_s=10 * DAY, n_windows=2, valid_s=5 * DAY,
                                          config=TrainConfig(iterations=60, learning_rate=0.2), policy=policy)
    return [dict(zip(REPLAY_HEADERS, row, strict=True)) for row in rows], retrains, fits


def _metrics(row: dict[str, str], model: str) -> tuple[str, str]:
    return row[f"{model} PR-AUC"], row[f"{model} R@1%"]


def test_replay_retrains_after_a_drifted_window_and_then_serves_the_retrained_model() -> None:
    rows, retrains, fits = _replay(DriftConfig(amount_shift=1.5, category_mix=1.0, new_pattern=True),
                                   DriftPolicy(min_labelled_rows=100))
    assert [r["window"] for r in rows] == ["days 20-30", "days 30-40"]
    first, second = rows
    # before any retrain all three are the model trained on the history
    assert _metrics(first, "frozen") == _metrics(first, "loop") == _metrics(first, "every-window")
    assert first["drift verdict"] in {"drift", "degraded"} and first["loop action"] == "retrain"
    # the loop's retrained model is the every-window model for the next window; the frozen model differs
    assert _metrics(second, "loop") == _metrics(second, "every-window")
    assert _metrics(second, "loop") != _metrics(second, "frozen")
    assert retrains >= 1 and fits == 2


def test_replay_keeps_the_model_on_undrifted_traffic() -> None:
    rows, retrains, fits = _replay(None, DriftPolicy(min_labelled_rows=10**6))  # performance not judged
    assert [r["drift verdict"] for r in rows] == ["ok", "ok"] and [r["loop action"] for r in rows] == ["keep", "keep"]
    for row in rows:
        assert _metrics(row, "loop") == _metrics(row, "frozen")
    assert retrains == 0 and fits == 2  # the history model and the every-window model for the second window
