"""The decision policy: a score becomes ``approve``, ``review`` or ``decline`` by two thresholds (bands) set
relative to the model's cost-optimal threshold, so that they follow the model when the champion changes.

The scorer applies them and writes the thresholds it applied into every logged prediction; the drift job reads
them back from the log instead of guessing the scorer's settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

APPROVE, REVIEW, DECLINE = "approve", "review", "decline"
# review from threshold x REVIEW_FACTOR, decline from threshold x DECLINE_FACTOR (FRAUDOPS_REVIEW_FACTOR,
# FRAUDOPS_DECLINE_FACTOR override them in the scorer)
REVIEW_FACTOR, DECLINE_FACTOR = 0.5, 1.0
# the prediction log's columns holding the thresholds each row was decided with
REVIEW_COLUMN, DECLINE_COLUMN = "review_threshold", "decline_threshold"


@dataclass(frozen=True)
class Bands:
    """Decision thresholds: ``decline`` from ``decline``, ``review`` from ``review``, ``approve`` below."""

    review: float
    decline: float

    @classmethod
    def around(cls, threshold: float, review_factor: float = REVIEW_FACTOR,
               decline_factor: float = DECLINE_FACTOR) -> Bands:
        """Bands relative to a model's threshold, so that they follow the model on a switch."""
        return cls(review=threshold * review_factor, decline=threshold * decline_factor)

    def decide(self, scores: Sequence[float]) -> list[str]:
        """The decision for each score."""
        return [DECLINE if s >= self.decline else REVIEW if s >= self.review else APPROVE for s in scores]
