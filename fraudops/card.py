"""A short model card in Markdown: what the model is, what it was trained on, how well it does."""

from __future__ import annotations

from typing import Any

_METRICS = [("pr_auc", "PR-AUC"), ("roc_auc", "ROC-AUC"), ("recall_at_1pct_fpr", "recall at 1% FPR"),
            ("precision_at_threshold", "precision at threshold"), ("recall_at_threshold", "recall at threshold"),
            ("flag_rate_at_threshold", "share flagged at threshold")]


def model_card(meta: dict[str, Any], metrics: dict[str, Any], title: str = "Fraud detection model") -> str:
    """Render the card from a bundle's metadata and its holdout metrics."""
    spec, params, windows = meta.get("spec", {}), meta.get("params", {}), meta.get("windows", {})
    lines = [f"# {title}", "",
             "CatBoost classifier scoring e-commerce transactions for fraud (score in [0, 1]; higher is riskier).",
             "", "## Data", "",
             f"- dataset: `{spec.get('name', '?')}`, label `{spec.get('target', '?')}`, "
             f"time column `{spec.get('timestamp') or 'row order'}`",
             f"- fingerprint of the validated table: `{meta.get('data_fingerprint', '?')}`",
             f"- rows accepted / rejected by validation: {meta.get('rows_accepted', '?')} / "
             f"{meta.get('rows_rejected', '?')}"]
    for name in ("train", "valid", "test"):
        w = windows.get(name, {})
        span = f", {w['start']} to {w['end']}" if "start" in w else ""
        lines.append(f"- {name}: {w.get('rows', '?')} rows{span}")
    lines += ["", "## Model", "",
              f"- features ({len(meta.get('feature_names', []))}): "
              + ", ".join(f"`{f}`" for f in meta.get("feature_names", [])),
              "- categorical (native CatBoost): "
              + (", ".join(f"`{f}`" for f in meta.get("categorical_features", [])) or "none"),
              _rounds(meta) + f", depth {params.get('depth', '?')}, learning rate {params.get('learning_rate', '?')}, "
              f"class weights {params.get('class_weights', '?')}, seed {params.get('seed', '?')}",
              f"- decision threshold {metrics.get('threshold', float('nan')):.4f}: minimises "
              f"{params.get('cost_fn', '?')} x missed frauds + {params.get('cost_fp', '?')} x false declines "
              "on the validation window",
              "", "## Holdout metrics (test window, later than training)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {label} | {metrics[key]:.4f} |" for key, label in _METRICS if key in metrics]
    lines += [f"| rows / frauds | {metrics.get('n_rows', '?')} / {metrics.get('n_fraud', '?')} |", "",
              "## Use and limits", "",
              "- Scores rank transactions for review or decline; they are not calibrated probabilities when "
              "class weights are used.",
              "- Entity statistics (per device, IP, account) are frozen at training time; retrain as traffic "
              "drifts (fraudops monitors this).",
              "- Evaluated on a single later time window; expect decay as fraud patterns change."]
    return "\n".join(lines) + "\n"


def _rounds(meta: dict[str, Any]) -> str:
    best = meta.get("best_iteration")
    chosen = f"{best + 1} boosting rounds" if isinstance(best, int) else "? boosting rounds"
    text = f"- {chosen} chosen by early stopping on the validation window"
    refit = meta.get("refit")
    if refit:
        text += (f"; the final model refit on train + valid ({refit['rows']} rows, {refit['rounds']} rounds; the "
                 "threshold below is the early-stopped model's)")
    return text
