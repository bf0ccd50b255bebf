"""The challenger of an active rollout, served beside the champion: in shadow (scored after the answer, never
returned) or as a canary (deciding for a sticky share of customers)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from fraudops.registry import CANARY, SHADOW, Rollout
from fraudops.serving.model import ServedModel

COUNTERFACTUAL = "champion-on-canary"
"""The metrics' role of the champion's scores of the canary's transactions (logged as shadow rows of the
champion's tag): what the champion would have decided, the canary's comparison on the same transactions."""


def bucket(rollout_id: str, key: Any) -> float:
    """A customer's place in [0, 100) for one rollout: the same key always lands in the same place, so a customer
    inside a canary of P% stays inside while P grows, and each rollout draws its customers afresh."""
    digest = hashlib.blake2b(f"{rollout_id}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100


@dataclass(frozen=True)
class Challenger:
    """The rollout and its loaded model."""

    rollout: Rollout
    model: ServedModel

    @property
    def shadow(self) -> bool:
        return self.rollout.mode == SHADOW

    def canary_rows(self, keys: list[Any]) -> list[int]:
        """Indices of the transactions the canary decides (none in shadow; rows without a key stay champion)."""
        if self.rollout.mode != CANARY or self.rollout.percent <= 0:
            return []
        percent, rid = self.rollout.percent, self.rollout.id
        return [i for i, key in enumerate(keys) if key is not None and bucket(rid, key) < percent]
