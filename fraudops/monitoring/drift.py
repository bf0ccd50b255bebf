"""Drift policy and drift computation: live traffic against the reference sample stored with the model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fraudops.errors import ConfigError, problems
from fraudops.evaluation import fraud_metrics
from fraudops.monitoring.evidently_adapter import DriftResult, column_drift

SCORE = "score"
LABEL = "label"
Verdict = Literal["insufficient_data", "ok", "drift", "degraded"]
# Evidently's drift methods that give a distance (higher = more drift), usable with a distance threshold.
NumMethod = Literal["wasserstein", "psi", "kl_div", "jensenshannon", "hellinger", "ed"]
CatMethod = Literal["jensenshannon", "psi", "kl_div", "hellinger", "TVD"]


PolicyT = TypeVar("PolicyT", bound=BaseModel)


def load_policy(cls: type[PolicyT], path: str | Path, what: str) -> PolicyT:
    """A policy model from a YAML file; unreadable files, unknown keys and bad values are errors naming them."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {what} {path}: {problems(exc, 'policy')}") from None


class EntityDriftPolicy(BaseModel):
    """How the entity features (velocity and link counts over windows, `fraudops.entity_features`) count.

    They move with traffic volume and with the time since training (all-history counts only grow), so by default
    they are a group of their own: measured, reported and exported per feature, but not part of the vote on input
    drift."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drift_share: float | None = Field(None, gt=0, le=1, description="weighted share of drifted entity features "
                                      "for a drift verdict; null: reported, not voted")
    feature_threshold: float | None = Field(None, gt=0, description="distance at which one entity feature counts "
                                            "as drifted; null: the policy's feature_threshold")


class DriftPolicy(BaseModel):
    """When traffic counts as drifted or the model as degraded (a YAML file holds these keys).

    ``drift_share`` is the vote of the transaction's own features; the entity features have their own section,
    ``entity_features`` (`EntityDriftPolicy`). ``feature_thresholds`` and ``feature_weights`` apply to both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_rows: int = Field(500, ge=1, description="below this many current rows the verdict is insufficient_data")
    max_current_rows: int = Field(200_000, ge=100, description="larger windows are sampled down to this")
    reference_rows: int = Field(100_000, ge=100, description="larger references are sampled down to this")
    num_method: NumMethod = "wasserstein"
    cat_method: CatMethod = "jensenshannon"
    feature_threshold: float = Field(0.1, gt=0, description="distance at which one feature counts as drifted")
    feature_thresholds: dict[str, float] = Field(default_factory=dict, description="per-feature overrides")
    feature_weights: dict[str, float] = Field(default_factory=dict,
                                              description="features that matter more (default weight 1)")
    drift_share: float = Field(0.3, gt=0, le=1, description="weighted share of drifted features of the transaction "
                               "itself (not entity features) for a drift verdict")
    entity_features: EntityDriftPolicy = Field(default_factory=EntityDriftPolicy,
                                               description="the entity features' own group")
    score_threshold: float = Field(0.1, gt=0, description="distance of the score distribution for score drift")
    min_labelled_rows: int = Field(200, ge=1, description="labelled rows needed to judge performance")
    max_pr_auc_drop: float = Field(0.25, ge=0, le=1,
                                   description="relative PR-AUC drop versus the reference that means degraded")
    seed: int = 0

    @classmethod
    def from_file(cls, path: str | Path) -> DriftPolicy:
        """Read a policy from YAML; unknown keys and bad values are errors naming the key."""
        return load_policy(cls, path, "drift policy")


@dataclass
class DriftSummary:
    """The outcome of one drift run (JSON-ready through `to_dict`)."""

    verdict: Verdict
    rows: int
    reference_rows: int
    labelled_rows: int = 0
    share_drifted_features: float = 0.0
    """Of the transaction's own features (the vote on input drift)."""
    entity_share_drifted_features: float = 0.0
    """Of the entity features (voted only when the policy's ``entity_features.drift_share`` is set)."""
    dataset_drift: bool = False
    score_drift: float = 0.0
    score_drifted: bool = False
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped_features: list[str] = field(default_factory=list)
    decision_rates: dict[str, float] = field(default_factory=dict)
    reference_decision_rates: dict[str, float] = field(default_factory=dict)
    performance: dict[str, float] | None = None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return asdict(self)


def _rates(decisions: pd.Series) -> dict[str, float]:
    return {str(k): float(v) for k, v in decisions.value_counts(normalize=True).sort_index().items()}


def _sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    return frame.sample(rows, random_state=seed) if len(frame) > rows else frame


def _share(drifted: dict[str, bool], weights: dict[str, float]) -> float:
    return sum(weights[f] for f, d in drifted.items() if d) / max(sum(weights[f] for f in drifted), 1e-12)


def compute_drift(reference: pd.DataFrame, current: pd.DataFrame, features: list[str], categorical: list[str],
                  policy: DriftPolicy, reference_decisions: pd.Series | None = None,
                  current_decisions: pd.Series | None = None, entity_features: Sequence[str] = ()
                  ) -> tuple[DriftSummary, DriftResult | None]:
    """Compare ``current`` with ``reference`` on ``features`` and the score; judge performance where
    ``current`` has labels (``label`` column, NaN where unknown). The ``entity_features`` among ``features`` are
    judged as their own group (`EntityDriftPolicy`).

    Returns the summary and Evidently's result (None when there were too few rows to compare).
    """
    summary = DriftSummary(verdict="ok", rows=len(current), reference_rows=len(reference))
    if len(current) < policy.min_rows:
        summary.verdict = "insufficient_data"
        summary.reasons.append(f"{len(current)} rows in the window, fewer than min_rows={policy.min_rows}")
        return summary, None
    window = current  # performance is judged on every labelled row, not on the sample
    reference = _sample(reference, policy.reference_rows, policy.seed)
    current = _sample(current, policy.max_current_rows, policy.seed)
    usable = [f for f in features if reference[f].notna().any() and current[f].notna().any()]
    summary.skipped_features = [f for f in features if f not in usable]
    categorical = [f for f in usable if f in set(categorical)]
    numerical = [f for f in usable if f not in set(categorical)]
    ref, cur = reference.copy(), current.copy()
    for name in categorical:  # Evidently wants one type per categorical column
        ref[name], cur[name] = ref[name].astype(str), cur[name].astype(str)
    entity = set(entity_features)
    entity_threshold = policy.entity_features.feature_threshold or policy.feature_threshold
    thresholds = {f: policy.feature_thresholds.get(f, entity_threshold if f in entity else policy.feature_threshold)
                  for f in usable}
    thresholds[SCORE] = policy.score_threshold
    result = column_drift(ref, cur, [*numerical, SCORE], categorical, num_method=policy.num_method,
                          cat_method=policy.cat_method, thresholds=thresholds)
    weights = {f: policy.feature_weights.get(f, 1.0) for f in usable}
    summary.share_drifted_features = _share({f: result.columns[f].drifted for f in usable if f not in entity},
                                            weights)
    summary.entity_share_drifted_features = _share({f: result.columns[f].drifted for f in usable if f in entity},
                                                   weights)
    entity_share = policy.entity_features.drift_share
    entity_drift = entity_share is not None and summary.entity_share_drifted_features >= entity_share
    summary.dataset_drift = summary.share_drifted_features >= policy.drift_share or entity_drift
    summary.features = {f: {"distance": result.columns[f].distance, "drifted": result.columns[f].drifted,
                            "method": result.columns[f].method, "weight": weights[f],
                            "group": "entity" if f in entity else "transaction"} for f in usable}
    summary.score_drift = result.columns[SCORE].distance
    summary.score_drifted = result.columns[SCORE].drifted
    if current_decisions is not None:
        summary.decision_rates = _rates(current_decisions)
    if reference_decisions is not None:
        summary.reference_decision_rates = _rates(reference_decisions)
    if summary.share_drifted_features >= policy.drift_share:
        summary.verdict = "drift"
        summary.reasons.append(f"{summary.share_drifted_features:.0%} of the (weighted) features drifted, at least "
                               f"drift_share={policy.drift_share:.0%}")
    if entity_drift:
        summary.verdict = "drift"
        summary.reasons.append(f"{summary.entity_share_drifted_features:.0%} of the (weighted) entity features "
                               f"drifted, at least entity_features.drift_share={entity_share:.0%}")
    if summary.score_drifted:
        summary.verdict = "drift"
        summary.reasons.append(f"score distribution moved by {summary.score_drift:.3f} >= {policy.score_threshold}")
    _judge_performance(summary, reference, window, policy)
    return summary, result


def _judge_performance(summary: DriftSummary, reference: pd.DataFrame, current: pd.DataFrame,
                       policy: DriftPolicy) -> None:
    if LABEL not in current:
        return
    labelled = current[current[LABEL].notna()]
    summary.labelled_rows = len(labelled)
    y = labelled[LABEL].to_numpy(dtype="int64")
    if len(labelled) < policy.min_labelled_rows or len(np.unique(y)) < 2:
        return
    now = fraud_metrics(y, labelled[SCORE].to_numpy(), threshold=0.5, what="labelled traffic")
    ref_labels = reference[LABEL].to_numpy(dtype="int64")
    before = fraud_metrics(ref_labels, reference[SCORE].to_numpy(), threshold=0.5, what="reference sample")
    summary.performance = {"pr_auc": now["pr_auc"], "recall_at_1pct_fpr": now["recall_at_1pct_fpr"],
                           "roc_auc": now["roc_auc"], "fraud_rate": now["fraud_rate"],
                           "reference_pr_auc": before["pr_auc"],
                           "reference_recall_at_1pct_fpr": before["recall_at_1pct_fpr"]}
    if now["pr_auc"] < before["pr_auc"] * (1 - policy.max_pr_auc_drop):
        summary.verdict = "degraded"
        summary.reasons.append(f"PR-AUC on {len(labelled)} labelled rows is {now['pr_auc']:.3f}, more than "
                               f"{policy.max_pr_auc_drop:.0%} below the reference's {before['pr_auc']:.3f}")
