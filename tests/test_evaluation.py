"""Fraud metrics and the cost-based decision threshold."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from fraudops.errors import DataError
from fraudops.evaluation import FPR_BUDGET, cost_threshold, fraud_metrics, plot_pr_curve, recall_at_fpr


def _cost(y, score, t, cost_fn, cost_fp):
    flagged = score >= t
    return cost_fn * int(((~flagged) & (y == 1)).sum()) + cost_fp * int((flagged & (y == 0)).sum())


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.05).astype(int)
    score = np.clip(rng.normal(0.3 + 0.35 * y, 0.15), 0, 1)
    return y, score


def test_recall_at_fpr_hand_example():
    # 100 legit rows with distinct low scores, 4 frauds: two above every legit, one above all but one, one low
    legit = np.linspace(0.0, 0.5, 100)
    y = np.r_[np.zeros(100, int), np.ones(4, int)]
    score = np.r_[legit, [0.9, 0.8, 0.495, 0.1]]
    # declining at most 1 legit (1%): threshold 0.495 catches 3 frauds and the legit at 0.5
    assert recall_at_fpr(y, score, 0.01) == pytest.approx(0.75)
    # declining no legit: only the two frauds above 0.5
    assert recall_at_fpr(y, score, 0.0) == pytest.approx(0.5)
    assert recall_at_fpr(y, score, 1.0) == pytest.approx(1.0)


def test_recall_at_fpr_matches_roc_curve(scored):
    y, score = scored
    fpr, tpr, _ = roc_curve(y, score)
    for budget in (0.001, 0.01, 0.05, 0.2):
        assert recall_at_fpr(y, score, budget) == pytest.approx(tpr[fpr <= budget].max())
    budgets = [0.0, 0.005, 0.01, 0.05, 0.5, 1.0]
    recalls = [recall_at_fpr(y, score, b) for b in budgets]
    assert recalls == sorted(recalls)


def test_cost_threshold_hand_example():
    y = np.array([1, 0, 1, 0, 0, 1, 0, 0])
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    # cost_fn=10, cost_fp=3: flag >=0.9 -> 2 FN = 20; >=0.7 -> 1 FN + 1 FP = 13; >=0.4 -> 3 FP = 9 (best);
    # >=0.2 -> 5 FP = 15
    assert cost_threshold(y, score, cost_fn=10, cost_fp=3) == 0.4
    # frauds cheap to miss: flag only the top row (2 FN x 1 + 0 FP = 2)
    assert cost_threshold(y, score, cost_fn=1, cost_fp=3) == 0.9


def test_cost_threshold_is_brute_force_optimal_on_small_examples():
    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(4, 14))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        score = np.round(rng.random(n), 1)  # ties on purpose
        cost_fn, cost_fp = float(rng.choice([1, 5, 20, 100])), float(rng.choice([1, 5, 20]))
        chosen = cost_threshold(y, score, cost_fn, cost_fp)
        # every score, or just above the highest one (flag nothing)
        candidates = [*np.unique(score), np.nextafter(score.max(), np.inf)]
        assert chosen in candidates, trial
        best = min(_cost(y, score, t, cost_fn, cost_fp) for t in candidates)
        assert _cost(y, score, chosen, cost_fn, cost_fp) == best, (trial, y, score, cost_fn, cost_fp)


def test_cost_threshold_never_splits_ties():
    y = np.array([1, 0, 0, 1, 0])
    score = np.array([0.7, 0.7, 0.7, 0.2, 0.1])
    # flagging the tied group costs 2 FP; a cut inside it does not exist
    t = cost_threshold(y, score, cost_fn=100, cost_fp=1)
    assert t == 0.2
    assert _cost(y, score, t, 100, 1) == 2


def test_cost_threshold_exhaustive_on_all_labelings():
    score = np.array([0.95, 0.9, 0.6, 0.6, 0.3, 0.1])
    for labels in itertools.product((0, 1), repeat=len(score)):
        y = np.array(labels)
        if len(set(labels)) < 2:
            continue
        chosen = cost_threshold(y, score, 7.0, 2.0)
        candidates = [*np.unique(score), np.nextafter(score.max(), np.inf)]
        assert _cost(y, score, chosen, 7.0, 2.0) == min(_cost(y, score, t, 7.0, 2.0) for t in candidates)


def test_cost_threshold_can_flag_nothing():
    y = np.array([0, 0, 1])
    score = np.array([0.9, 0.8, 0.1])
    chosen = cost_threshold(y, score, cost_fn=1, cost_fp=100)
    assert _cost(y, score, chosen, 1, 100) == 1


def test_fraud_metrics_values(scored):
    y, score = scored
    t = 0.55
    metrics = fraud_metrics(y, score, t)
    assert {"pr_auc", "roc_auc", "recall_at_1pct_fpr", "threshold"} <= set(metrics)
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(y, score))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, score))
    fpr, tpr, _ = roc_curve(y, score)
    assert metrics["recall_at_1pct_fpr"] == pytest.approx(tpr[fpr <= FPR_BUDGET].max())
    assert metrics["threshold"] == t
    flagged = score >= t
    tp = int((flagged & (y == 1)).sum())
    assert metrics["precision_at_threshold"] == pytest.approx(tp / flagged.sum())
    assert metrics["recall_at_threshold"] == pytest.approx(tp / y.sum())
    assert metrics["flag_rate_at_threshold"] == pytest.approx(flagged.mean())
    assert metrics["n_rows"] == len(y)
    assert metrics["n_fraud"] == y.sum()
    assert metrics["fraud_rate"] == pytest.approx(y.mean())
    for key in ("pr_auc", "roc_auc", "recall_at_1pct_fpr", "threshold"):
        assert isinstance(metrics[key], float)


def test_fraud_metrics_nothing_flagged(scored):
    y, score = scored
    metrics = fraud_metrics(y, score, threshold=2.0)
    assert metrics["precision_at_threshold"] == 0
    assert metrics["recall_at_threshold"] == 0
    assert metrics["flag_rate_at_threshold"] == 0


def test_perfect_ranking():
    y = np.array([0, 0, 0, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    metrics = fraud_metrics(y, score, 0.5)
    assert metrics["pr_auc"] == pytest.approx(1.0)
    assert metrics["roc_auc"] == pytest.approx(1.0)
    assert metrics["recall_at_1pct_fpr"] == pytest.approx(1.0)
    assert metrics["precision_at_threshold"] == metrics["recall_at_threshold"] == 1.0


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_is_a_data_error(label):
    y = np.full(10, label)
    score = np.linspace(0, 1, 10)
    with pytest.raises(DataError, match=r"the test window.*only one class"):
        fraud_metrics(y, score, 0.5, what="the test window")
    with pytest.raises(DataError, match="one class"):
        cost_threshold(y, score, 100, 5)


def test_length_mismatch():
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        fraud_metrics(np.array([0, 1, 0]), np.array([0.1, 0.2]), 0.5)


def test_plot_pr_curve_writes_png(tmp_path, scored):
    y, score = scored
    path = tmp_path / "pr.png"
    plot_pr_curve(y, score, path, title="test", threshold=0.55)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 5000
    plain = tmp_path / "plain.png"
    plot_pr_curve(y, score, str(plain), title="no threshold")
    assert plain.read_bytes().startswith(b"\x89PNG")
