"""Request and response bodies of the scoring service (they document /docs.json)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    TypeAdapter,
)
from pydantic_core import PydanticCustomError


def _text(value: Any) -> Any:
    """Times as ISO 8601 text only (a bare number is ambiguous: seconds or milliseconds?)."""
    if not isinstance(value, str):
        raise PydanticCustomError("datetime_type", "must be an ISO 8601 date-time string with a time zone")
    return value


def _storable(value: datetime) -> datetime:
    """Within the years the log's nanosecond timestamps hold."""
    if not 1678 <= value.astimezone(UTC).year <= 2261:
        raise PydanticCustomError("bad_time", "is outside the supported years 1678-2261")
    return value


class FeedbackLabel(BaseModel):
    """A confirmed label for one scored transaction (a chargeback, a manual review, ...)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="request_id returned by /score")
    row: int = Field(0, ge=0, le=99_999, strict=True, description="index of the transaction in that request")
    transaction_id: StrictStr | None = None
    is_fraud: StrictBool
    source: Literal["chargeback", "manual_review", "customer_report", "other"]
    observed_at: Annotated[AwareDatetime, BeforeValidator(_text), AfterValidator(_storable)] | None = Field(
        None, description="when the label was established, ISO 8601 with a time zone (default: now)")
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
    model_tag: str | None = Field(None, description="the canary model, when it decided this transaction")
    score: float
    decision: Literal["approve", "review", "decline"]
    reasons: list[Reason] | None = None
    features: dict[str, str | float | None] | None = Field(
        None, description="with explain: every feature the model saw (name -> value; null: missing)")


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
    features_fallback: bool | None = Field(
        None, description="true when the online feature store was slow or down and the entity features came from "
        "the model's frozen snapshot (the history at the training table's end: its windowed counts are stale, 0 "
        "once a window has passed); the scorer records this transaction once the store answers again")


class FeedbackResponse(BaseModel):
    """Response of POST /feedback."""

    accepted: int


class RolloutState(BaseModel):
    """The rollout the service follows: its challenger in shadow, or deciding for ``percent`` of customers."""

    id: str
    challenger: str
    mode: Literal["shadow", "canary"]
    percent: float


class WorkersState(BaseModel):
    """How many of the server's workers serve the answer's model after a /reload (with more than one worker)."""

    serving: int
    total: int
    errors: dict[str, str] = Field(default_factory=dict, description="worker pid: why it does not serve it")


class ReloadResponse(BaseModel):
    """Response of POST /reload."""

    model_tag: str
    previous: str | None
    changed: bool
    rollout: RolloutState | None = None
    workers: WorkersState | None = None

