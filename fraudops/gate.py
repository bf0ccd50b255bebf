"""The promotion gate: a challenger replaces the champion only if it is better on the same recent holdout."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

RELEASES = ("promote", "rollout")
"""How a challenger that passed the gate is released: champion at once, or a staged rollout (shadow, canary)."""


class GatePolicy(BaseModel):
    """When a challenger may become champion."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_pr_auc_gain: float = Field(0.005, ge=0, description="PR-AUC the challenger must add over the champion")
    recall_tolerance: float = Field(0.0, ge=0, le=1, description="recall at 1% FPR the challenger may lose")
    floor_pr_auc: float = Field(0.2, ge=0, le=1, description="PR-AUC the first model must reach")


@dataclass
class GateDecision:
    """The verdict, why, and the numbers it rests on (champion measured on the challenger's holdout)."""

    promote: bool
    reason: str
    challenger: dict[str, float]
    champion: dict[str, float] | None = None
    champion_tag: str | None = None

    @property
    def verdict(self) -> str:
        """``promote`` or ``reject``."""
        return "promote" if self.promote else "reject"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"verdict": self.verdict, **asdict(self)}


def decide(challenger: dict[str, float], champion: dict[str, float] | None, policy: GatePolicy,
           champion_tag: str | None = None) -> GateDecision:
    """Compare metrics measured on the same holdout; without a champion, apply the absolute floor."""
    pr, recall = challenger["pr_auc"], challenger["recall_at_1pct_fpr"]
    if champion is None:
        ok = pr >= policy.floor_pr_auc
        reason = (f"first model: PR-AUC {pr:.4f} {'>=' if ok else '<'} floor {policy.floor_pr_auc:.4f}")
        return GateDecision(ok, reason, challenger)
    gain = pr - champion["pr_auc"]
    recall_loss = champion["recall_at_1pct_fpr"] - recall
    if gain < policy.min_pr_auc_gain:
        reason = (f"PR-AUC {pr:.4f} vs champion {champion['pr_auc']:.4f}: gain {gain:+.4f} is below the "
                  f"required {policy.min_pr_auc_gain:.4f}")
        return GateDecision(False, reason, challenger, champion, champion_tag)
    if recall_loss > policy.recall_tolerance:
        reason = (f"recall at 1% FPR {recall:.4f} vs champion {champion['recall_at_1pct_fpr']:.4f}: loses "
                  f"{recall_loss:.4f}, more than the allowed {policy.recall_tolerance:.4f}")
        return GateDecision(False, reason, challenger, champion, champion_tag)
    reason = (f"PR-AUC {pr:.4f} vs champion {champion['pr_auc']:.4f} (gain {gain:+.4f}); recall at 1% FPR "
              f"{recall:.4f} vs {champion['recall_at_1pct_fpr']:.4f}")
    return GateDecision(True, reason, challenger, champion, champion_tag)
