"""Request and response bodies of the scoring service (they document /docs.json)."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, StrictStr, TypeAdapter


class FeedbackLabel(BaseModel):
    """A confirmed label for one scored transaction (a chargeback, a manual review, ...)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="request_id returned by /score")
    row: int = Field(0, ge=0, strict=True, description="index of the transaction in that request")
    transaction_id: StrictStr | None = None
    is_fraud: StrictBool
    source: Literal["chargeback", "manual_review", "customer_report", "other"]
    observed_at: AwareDatetime | None = Field(None, description="when the label was established (default: now)")
    note: StrictStr | None = Field(None, max_length=500)


FEEDBACK_LABELS = TypeAdapter(list[FeedbackLabel])


class Reason(BaseModel):
    """One feature's contribution to a score (SHAP value, log-odds; positive pushes towards fraud)."""

    feature: str
    value: str | float | None
    contribution: float


class ScoredTransaction(BaseModel):
    """The outcome for one transaction of a request."""

    row: int
    transaction_id: str | None = None
    score: float
    decision: Literal["approve", "review", "decline"]
    reasons: list[Reason] | None = None


class Thresholds(BaseModel):
    """Scores from ``review`` are reviewed, from ``decline`` declined."""

    review: float
    decline: float


class ScoreResponse(BaseModel):
    """Response of POST /score."""

    request_id: str
    model_tag: str
    thresholds: Thresholds
    results: list[ScoredTransaction]


class FeedbackResponse(BaseModel):
    """Response of POST /feedback."""

    accepted: int


class ReloadResponse(BaseModel):
    """Response of POST /reload."""

    model_tag: str
    previous: str | None
    changed: bool

