"""Request errors of the scoring service: every bad row, field and problem, named; the metric reason of each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from fraudops.errors import FraudopsError

MAX_DETAIL = 50  # problems listed in one error response (all are counted in the metrics)


@dataclass(frozen=True)
class Problem:
    """One invalid input: where (row, field), why (``reason``, the metric label) and what to fix."""

    row: int | None
    field: str | None
    reason: str
    problem: str
    value: str | None = None

    def __str__(self) -> str:
        where = " ".join(p for p in (f"row {self.row}" if self.row is not None else "", self.field or "") if p)
        got = f" (got {self.value})" if self.value is not None else ""
        return f"{where}: {self.problem}{got}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form for error responses."""
        return {"row": self.row, "field": self.field, "reason": self.reason, "problem": self.problem,
                "value": self.value}


class RequestError(FraudopsError):
    """The request is invalid (HTTP 4xx); ``problems`` name every row, field and problem found."""

    def __init__(self, problems: list[Problem], status: int = 400) -> None:
        self.problems = problems
        self.status = status
        shown = "; ".join(str(p) for p in problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        super().__init__(f"invalid request: {shown}{more}")

    def body(self) -> dict[str, Any]:
        """Response body: a summary plus the first `MAX_DETAIL` problems."""
        body: dict[str, Any] = {"error": str(self), "detail": [p.to_dict() for p in self.problems[:MAX_DETAIL]]}
        if len(self.problems) > MAX_DETAIL:
            body["omitted"] = len(self.problems) - MAX_DETAIL
        return body


# pydantic error types -> metric reasons; other `*_type`/`*_parsing` errors are "wrong_type"
_REASONS = {"missing": "missing", "finite_number": "not_finite", "greater_than_equal": "negative",
            "dict_type": "not_object", "model_type": "not_object", "extra_forbidden": "unknown_field",
            "string_pattern_mismatch": "bad_format", "literal_error": "not_allowed"}
_MESSAGES = {
    "missing": "is required",
    "finite_number": "must be a finite number (NaN and infinity are not allowed)",
    "greater_than_equal": "must not be negative",
    "dict_type": "must be a JSON object holding one item",
    "model_type": "must be a JSON object holding one item",
    "float_type": "must be a number",
    "string_type": "must be a string (or an integer id)",
    "bool_type": "must be true or false",
    "extra_forbidden": "is not a known field",
    "string_pattern_mismatch": "must be a request_id returned by /score (32 hexadecimal digits)",  # the one pattern
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def problems_of(exc: ValidationError) -> list[Problem]:
    """Pydantic errors of a list validation as problems with row index and field name."""
    out = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        kind = err["type"]
        reason = _REASONS.get(kind) or ("wrong_type" if kind.endswith(("_type", "_parsing")) else kind)
        out.append(Problem(row=loc[0] if loc and isinstance(loc[0], int) else None,
                           field=".".join(str(p) for p in loc[1:]) or None, reason=reason,
                           problem=_MESSAGES.get(kind, err["msg"]),
                           value=None if kind == "missing" else _shown(err.get("input"))))
    return out


def check_batch(items: Any, what: str, limit: int) -> None:
    """Reject a list that is not a list, is empty, or holds more than ``limit`` items."""
    if not isinstance(items, list):
        raise RequestError([Problem(None, what, "wrong_type", "must be a list", _shown(items))])
    if not items:
        raise RequestError([Problem(None, what, "batch_empty", "must hold at least one item")])
    if len(items) > limit:
        raise RequestError([Problem(None, what, "batch_too_large",
                                    f"holds {len(items)} items, more than the limit of {limit} (FRAUDOPS_MAX_BATCH)")],
                           status=413)

