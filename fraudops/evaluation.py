"""Fraud metrics: PR-AUC, ROC-AUC, recall at a fixed false-positive rate, and a cost-based threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fraudops.errors import DataError

FPR_BUDGET = 0.01


def _check(y: np.ndarray, score: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    y, score = np.asarray(y, dtype="int64"), np.asarray(score, dtype="float64")
    if len(y) != len(score):
        raise ValueError(f"{what}: {len(y)} labels but {len(score)} scores")
    if len(np.unique(y)) < 2:
        raise DataError(f"{what} has {len(y)} rows but only one class; fraud metrics need fraud and legit rows")
    return y, score


def recall_at_fpr(y: np.ndarray, score: np.ndarray, max_fpr: float = FPR_BUDGET) -> float:
    """The highest recall reachable while declining at most ``max_fpr`` of legitimate transactions."""
    from sklearn.metrics import roc_curve  # scikit-learn is imported only where metrics are computed (~1.5 s)

    y, score = _check(y, score, "recall at FPR data")
    fpr, tpr, _ = roc_curve(y, score)
    return float(tpr[fpr <= max_fpr].max())


def cost_threshold(y: np.ndarray, score: np.ndarray, cost_fn: float, cost_fp: float) -> float:
    """The score threshold (flag when ``score >= t``) that minimises ``cost_fn * FN + cost_fp * FP``."""
    y, score = _check(y, score, "threshold selection data")
    order = np.argsort(-score, kind="stable")
    s, labels = score[order], y[order]
    tp = np.cumsum(labels)
    fp = np.cumsum(1 - labels)
    last = np.r_[s[1:] != s[:-1], True]  # cut only between distinct scores
    fn = tp[-1] - tp
    cost = cost_fn * fn + cost_fp * fp
    cost = np.where(last, cost, np.inf)
    best = int(np.argmin(cost))
    if cost_fn * tp[-1] < cost[best]:  # flagging nothing is cheapest: a threshold above every score
        return float(np.nextafter(s[0], np.inf))
    return float(s[best])


def fraud_metrics(y: np.ndarray, score: np.ndarray, threshold: float, what: str = "evaluation data"
                  ) -> dict[str, float]:
    """Ranking metrics plus precision/recall/flag rate at ``threshold``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, score = _check(y, score, what)
    flagged = score >= threshold
    tp = int((flagged & (y == 1)).sum())
    return {
        "pr_auc": float(average_precision_score(y, score)),
        "roc_auc": float(roc_auc_score(y, score)),
        "recall_at_1pct_fpr": recall_at_fpr(y, score, FPR_BUDGET),
        "threshold": float(threshold),
        "precision_at_threshold": tp / max(int(flagged.sum()), 1),
        "recall_at_threshold": tp / int(y.sum()),
        "flag_rate_at_threshold": float(flagged.mean()),
        "n_rows": len(y),
        "n_fraud": int(y.sum()),
        "fraud_rate": float(y.mean()),
    }


def plot_pr_curve(y: np.ndarray, score: np.ndarray, path: str | Path, title: str,
                  threshold: float | None = None) -> None:
    """Save the precision-recall curve as a PNG, with the base rate and the operating point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, score)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    ax.plot(recall, precision, lw=1.8, label=f"model (PR-AUC {average_precision_score(y, score):.3f})")
    ax.axhline(float(np.mean(y)), color="grey", ls="--", lw=1, label=f"base rate {np.mean(y):.3f}")
    if threshold is not None:
        flagged = np.asarray(score) >= threshold
        tp = float((flagged & (np.asarray(y) == 1)).sum())
        ax.scatter([tp / max(np.sum(y), 1)], [tp / max(flagged.sum(), 1)], color="crimson", zorder=3,
                   label=f"threshold {threshold:.3f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
