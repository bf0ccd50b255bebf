"""Scoring logic of the fraud service: request validation, features, decisions, reason codes, model hot swap."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired, Required

import numpy as np
import pandas as pd
from catboost import Pool
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict before Python 3.12

from fraudops.bundle import ModelBundle
from fraudops.decisions import (
    APPROVE,
    DECLINE,
    DECLINE_COLUMN,
    DECLINE_FACTOR,
    REVIEW,
    REVIEW_COLUMN,
    REVIEW_FACTOR,
    Bands,
)
from fraudops.errors import ConfigError, FraudopsError, RegistryError, problems
from fraudops.features import FastFeatures, FeatureState
from fraudops.predlog import FEEDBACK, PREDICTIONS, LogChunk, LogUnavailableError, LogWriter, default_root
from fraudops.registry import MODEL_NAME, Registry
from fraudops.schema import PRESETS, DatasetSpec, load_dataset_config

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # how often an unready service retries loading when the champion poll is off
MAX_DETAIL = 50  # problems listed in one error response (all are counted in the metrics)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)

ENV_VARS = {
    "model_tag": "FRAUDOPS_MODEL_TAG",
    "dataset": "FRAUDOPS_SCHEMA",
    "max_batch": "FRAUDOPS_MAX_BATCH",
    "review_factor": "FRAUDOPS_REVIEW_FACTOR",
    "decline_factor": "FRAUDOPS_DECLINE_FACTOR",
    "reasons": "FRAUDOPS_REASONS",
    "poll_seconds": "FRAUDOPS_POLL_SECONDS",
    "prediction_log": "FRAUDOPS_PREDICTION_LOG",
    "log_flush_rows": "FRAUDOPS_LOG_FLUSH_ROWS",
    "log_flush_seconds": "FRAUDOPS_LOG_FLUSH_SECONDS",
    "workers": "FRAUDOPS_WORKERS",
    "max_body_bytes": "FRAUDOPS_MAX_BODY_BYTES",
    "body_timeout_seconds": "FRAUDOPS_BODY_TIMEOUT_SECONDS",
}


class ServingConfig(BaseModel):
    """Settings of the scoring service; `from_env` reads each from its variable in `ENV_VARS`."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_tag: str = Field("champion", min_length=1, description="champion (follows the pointer), name[:version]")
    dataset: str = Field("synthetic", min_length=1, description="preset or dataset config file clients' rows follow")
    max_batch: int = Field(1000, ge=1, le=100_000, description="most transactions (or labels) in one request")
    review_factor: float = Field(REVIEW_FACTOR, gt=0, le=1, description="review from threshold * review_factor")
    decline_factor: float = Field(DECLINE_FACTOR, gt=0, description="decline from threshold * decline_factor")
    reasons: int = Field(3, ge=1, le=50, description="reason codes per transaction when explain is true")
    poll_seconds: float = Field(30.0, ge=0, description="champion pointer poll interval; 0 turns polling off")
    prediction_log: str = Field("", description="log root, local or URL; empty: predlog.default_root()")
    log_flush_rows: int = Field(10_000, ge=1, description="write the log when this many rows wait")
    log_flush_seconds: float = Field(10.0, gt=0, description="... or this often")
    workers: int = Field(1, ge=1, le=64, description="BentoML worker processes (each polls the champion itself)")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request body (413 above, unread)")
    body_timeout_seconds: float = Field(30.0, gt=0, description="time a client has to send its body (408 after)")

    @model_validator(mode="after")
    def _bands_are_ordered(self) -> ServingConfig:
        if self.review_factor > self.decline_factor:
            raise ValueError(f"review_factor ({self.review_factor}) must not exceed decline_factor "
                             f"({self.decline_factor})")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServingConfig:
        """Settings from FRAUDOPS_* variables (unset or empty ones keep their defaults)."""
        env = os.environ if environ is None else environ
        values = {name: env[var].strip() for name, var in ENV_VARS.items() if env.get(var, "").strip()}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            detail = problems(exc, "settings", name=lambda loc: ENV_VARS[str(loc[0])])
            raise ConfigError(f"invalid scoring service settings: {detail}") from None

    def service_spec(self) -> DatasetSpec:
        """The transaction schema the service accepts (a preset name or a dataset config file)."""
        return PRESETS[self.dataset] if self.dataset in PRESETS else load_dataset_config(self.dataset)


# -- errors -------------------------------------------------------------------------------------------------
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


class NotReadyError(FraudopsError):
    """No model is loaded (HTTP 503)."""


class ModelLoadError(FraudopsError):
    """A model cannot be served: missing, unreadable, or built for another transaction schema."""


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


def _problems(exc: ValidationError) -> list[Problem]:
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


# -- transactions ---------------------------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1)
_EARLIEST, _LATEST = datetime(1678, 1, 1), datetime(2262, 1, 1)  # within pandas' datetime64[ns] range


_WHOLE_NUMBER = re.compile(r"(-?\d+)\.0")


def _key(value: Any) -> Any:
    """Entity and category values as the feature state's text keys: 7, 7.0, "7" and "7.0" are one key."""
    if type(value) is str and not value.endswith(".0"):
        return value
    if isinstance(value, bool):
        return value  # rejected by the string check
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        value = str(value)
    if isinstance(value, str) and (whole := _WHOLE_NUMBER.fullmatch(value)):
        return whole.group(1)
    return value


def _time_parser(time_format: str | None) -> Callable[[Any], int]:
    """Validator turning a date-time string (ISO 8601, or ``time_format``) into UTC nanoseconds since 1970."""
    expected = f"a date-time string in the format {time_format!r}" if time_format else \
        "an ISO 8601 date-time string such as 2026-01-31T12:00:00Z"

    def parse(value: Any) -> int:
        if not isinstance(value, str):
            raise PydanticCustomError("bad_time", "must be {expected}", {"expected": expected})
        try:
            moment = datetime.strptime(value, time_format) if time_format else datetime.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError("bad_time", "cannot be read as {expected}", {"expected": expected}) from None
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        if not _EARLIEST < moment < _LATEST:
            raise PydanticCustomError("bad_time", "is outside the supported years 1678-2261")
        delta = moment - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000

    return parse


_Key = Annotated[StrictStr | None, BeforeValidator(_key)]
_Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
_Amount = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0)]


class RowSchema:
    """Validation of raw transactions for one model, derived from its feature state.

    Required: the time columns and the amount (training rejects rows without them). Optional: categories and
    entities (strings or integer ids; unknown values are fine), other numeric inputs (finite numbers or null).
    Times are ISO 8601 strings, naive = UTC (or the dataset's ``time_format``; numbers for second offsets).
    Fields the model does not use are ignored. Valid rows come back normalised for `FastFeatures`: text keys
    (None = missing), floats, and times as UTC nanoseconds (or seconds).
    """

    def __init__(self, state: FeatureState) -> None:
        spec = state.spec
        self.state = state
        self.seconds = state.time_kind == "seconds"
        self.time_columns = list(spec.time_columns)
        self.amount = spec.amount
        self.numbers = [c for c in state.numeric if c != spec.amount]
        self.keys = list(dict.fromkeys([*spec.categorical, *state.entity_columns,
                                        *([spec.id_column] if spec.id_column else [])]))
        time_type: Any = _Number if self.seconds else Annotated[int, BeforeValidator(_time_parser(spec.time_format))]
        fields: dict[str, Any] = {name: NotRequired[_Key] for name in self.keys}
        fields.update({name: NotRequired[_Number | None] for name in self.numbers})
        if self.amount:
            fields[self.amount] = Required[_Amount]
        fields.update({name: Required[time_type] for name in self.time_columns})
        self.adapter = TypeAdapter(list[TypedDict("Transaction", fields)])  # type: ignore[operator]

    def validate(self, transactions: list[Any]) -> list[dict[str, Any]]:
        """Normalised rows, or `RequestError` naming every bad row, field and problem."""
        try:
            rows = self.adapter.validate_python(transactions)
        except ValidationError as exc:
            raise RequestError(_problems(exc)) from None
        spec = self.state.spec
        if spec.timestamp and spec.signup_time:
            late = [Problem(i, spec.signup_time, "time_order", f"must not be after {spec.timestamp}")
                    for i, row in enumerate(rows) if row[spec.signup_time] > row[spec.timestamp]]
            if late:
                raise RequestError(late)
        return rows

    def times(self, rows: list[dict[str, Any]], column: str) -> np.ndarray:
        """A validated time column as datetime64[ns] (float seconds for second-offset timestamps)."""
        values = [row[column] for row in rows]
        return np.array(values, dtype="float64") if self.seconds else np.array(values, dtype="int64").view("M8[ns]")

    def probe_rows(self) -> list[dict[str, Any]]:
        """Raw transactions for self-checks at model load: known and unknown entities, keys written as ints,
        floats and "7.0" strings, missing values, times in several ISO 8601 spellings (or ``time_format``)."""
        stats = self.state.entity_stats
        known = {col: list(stats[col].index[[0, len(stats[col]) // 2, -1]]) if len(stats[col]) else []
                 for col in self.state.entity_columns}
        odd_keys: list[Any] = [None, "probe", "7.0", 7, 7.5, -3.0, ""]
        fmt = self.state.spec.time_format
        stamps = ["2026-01-01T00:00:00Z", "2026-01-01T07:01:01.250+02:00", "2026-01-02 14:02:02", "2026-01-03T23:59:59"]
        signups = ["2025-12-31T23:00:00Z", "2025-06-01T00:00:00", "2026-01-02 14:02:02", "2020-02-29T12:00:00+00:00"]
        if fmt:  # the dataset's own spelling
            stamps, signups = ([datetime.fromisoformat(t).strftime(fmt) for t in ts] for ts in (stamps, signups))
        rows = []
        for i in range(8):
            row: dict[str, Any] = {c: odd_keys[(i + j) % len(odd_keys)]
                                   for j, c in enumerate(self.state.spec.categorical)}
            row.update({c: keys[i % len(keys)] if keys and i % 3 else odd_keys[i % len(odd_keys)]
                        for c, keys in known.items()})
            row.update({c: [None, 1, 250.5][i % 3] for c in self.numbers})
            if self.amount:
                row[self.amount] = [0, 12.5, 99.99, 1500][i % 4]
            times = {self.state.spec.timestamp: stamps[i % 4], self.state.spec.signup_time: signups[i % 4]}
            row.update({c: 86_400.0 * i + 0.5 if self.seconds else times[c] for c in self.time_columns})
            rows.append(row)
        return rows


def _same_features(fast: list[list[Any]], canonical: pd.DataFrame) -> str | None:
    """None if the fast rows equal the canonical frame, else the first differing feature."""
    for j, name in enumerate(canonical.columns):
        column = [row[j] for row in fast]
        if isinstance(column[0], str):
            equal = column == [str(v) for v in canonical[name]]
        else:
            equal = np.array_equal(np.array(column, dtype="float64"), canonical[name].to_numpy(dtype="float64"),
                                   equal_nan=True)
        if not equal:
            return name
    return None


# -- served model ---------------------------------------------------------------------------------------------
def schema_mismatch(model: DatasetSpec, service: DatasetSpec) -> list[str]:
    """Column roles on which a model's dataset spec disagrees with the service's (empty when compatible)."""
    problems = [f"{role}: model {getattr(model, role)!r}, service {getattr(service, role)!r}"
                for role in ("timestamp", "signup_time", "account", "amount", "time_format")
                if getattr(model, role) != getattr(service, role)]
    if set(model.entities) != set(service.entities):
        problems.append(f"entities: model {list(model.entities)}, service {list(service.entities)}")
    missing = [c for c in service.categorical if c not in model.categorical]
    if missing:
        problems.append(f"categorical: the model lacks {missing}")
    return problems


@dataclass(frozen=True)
class ServedModel:
    """A loaded model with everything a request needs; replaced as a whole on reload."""

    tag: str
    bundle: ModelBundle
    bands: Bands
    schema: RowSchema
    fast: FastFeatures | None
    trained_at: str
    feature_names: list[str]

    @classmethod
    def build(cls, tag: str, bundle: ModelBundle, config: ServingConfig, service: DatasetSpec) -> ServedModel:
        """Check a bundle against the service and warm it up; `ModelLoadError` says why it cannot be served."""
        mismatch = schema_mismatch(bundle.state.spec, service)
        if mismatch:
            raise ModelLoadError(f"model {tag} was trained on a schema ({bundle.state.spec.name}) that does not match "
                                 f"the service's ({service.name}, FRAUDOPS_SCHEMA): {'; '.join(mismatch)}")
        if not 0 < bundle.threshold <= 1:
            raise ModelLoadError(f"model {tag} has an invalid decision threshold {bundle.threshold}")
        schema = RowSchema(bundle.state)
        probe = schema.probe_rows()
        canonical = bundle.features(pd.DataFrame(probe))
        scores = bundle.score_features(canonical)
        if not np.all((scores >= 0) & (scores <= 1)):
            raise ModelLoadError(f"model {tag} returns scores outside [0, 1] on probe rows: {scores.tolist()}")
        try:
            fast: FastFeatures | None = FastFeatures(bundle.state)
            differs = _same_features(fast.rows(schema.validate(probe)), canonical)
        except (ValueError, KeyError, TypeError, RequestError) as exc:
            fast, differs = None, f"cannot be built or checked: {exc}"
        if differs:
            log.warning("model %s: the fast feature path disagrees with FeatureState.transform (%s); "
                        "using FeatureState.transform for every request", tag, differs)
            fast = None
        return cls(tag=tag, bundle=bundle, schema=schema, fast=fast, trained_at=str(bundle.meta.get("created_at", "")),
                   bands=Bands.around(bundle.threshold, config.review_factor, config.decline_factor),
                   feature_names=bundle.feature_names)


class ModelSource:
    """Where the model comes from: ``tag`` in the registry (``champion`` follows the pointer); failing that, the
    ``packaged`` model when it lives outside the registry's store (the Bento's own copy when serving a Bento)."""

    def __init__(self, tag: str = "champion", registry: Registry | None = None, packaged: str | None = None) -> None:
        self.tag = tag
        self.registry = registry or Registry()
        self.packaged = packaged

    def locate(self) -> tuple[str, Path]:
        """Full tag and directory of the model to serve now."""
        try:
            tag = self.registry.resolve(self.tag)
            return tag, self.registry.path(tag)
        except RegistryError:
            if self.packaged is None:
                raise
            import bentoml

            try:
                path = Path(bentoml.models.get(self.packaged).path)
            except bentoml.exceptions.BentoMLException:
                raise RegistryError(f"{self.packaged} is in neither the registry nor BentoML's model store") from None
            if path.parent.parent == self.registry.home / "models":
                raise
            return self.packaged, path


def packaged_model_tag(tag: str = "champion", registry: Registry | None = None) -> str | None:
    """The model to declare on the BentoML service (what `bentoml build` packages): ``tag`` resolved in the
    registry if the registry's own store holds it, else a model of that name in BentoML's active store (a Bento's
    own models); None if neither.

    A model that only an object-store registry holds (a fresh pod) is not declared: BentoML would look for it in
    its own store or cloud at start-up and fail; the scorer imports it from the registry itself."""
    import bentoml

    registry = registry or Registry()
    try:
        resolved = registry.resolve(tag)
        registry.store.get(resolved)
        return resolved
    except Exception:  # the service module must import even when no model or registry is reachable
        log.debug("no model %r in the local registry to declare on the service", tag, exc_info=True)
    try:
        return str(bentoml.models.get(MODEL_NAME if tag == "champion" else tag).tag)
    except bentoml.exceptions.BentoMLException:
        return None


# -- request and response models ------------------------------------------------------------------------------
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


_FEEDBACK = TypeAdapter(list[FeedbackLabel])


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


def reason_codes(contributions: np.ndarray, names: list[str], features: Mapping[str, Sequence[Any]], k: int
                 ) -> list[list[dict[str, Any]]]:
    """The ``k`` features pushing each row's score most towards fraud (largest SHAP values first)."""
    top = np.argsort(-contributions, axis=1, kind="stable")[:, :k]
    return [[{"feature": names[j], "value": _plain(features[names[j]][i]), "contribution": float(contributions[i, j])}
             for j in top[i]] for i in range(len(contributions))]


def _plain(value: Any) -> str | float | None:
    if isinstance(value, str):
        return value
    value = float(value)
    return None if math.isnan(value) else value


# -- metrics --------------------------------------------------------------------------------------------------
class ScorerMetrics:
    """Prometheus metrics of the scoring service (the table is in services/scorer.py's docstring).

    ``registry`` defaults to prometheus_client's global registry; under BentoML every process writes to the
    multiprocess directory and BentoML's /metrics merges them.
    """

    def __init__(self, registry: Any = None) -> None:
        import prometheus_client as prom  # late: BentoML sets PROMETHEUS_MULTIPROC_DIR after importing services

        reg = prom.REGISTRY if registry is None else registry
        p = "fraudops_scorer_"
        self.requests = prom.Counter(p + "requests", "Requests handled, by endpoint and outcome "
                                     "(ok, invalid, unavailable, error)", ["endpoint", "outcome"], registry=reg)
        self.rows = prom.Counter(p + "rows_scored", "Transactions scored", registry=reg)
        self.latency = prom.Histogram(p + "request_latency_seconds", "Handler time from validation to response, "
                                      "by endpoint", ["endpoint"], buckets=LATENCY_BUCKETS, registry=reg)
        self.scores = prom.Histogram(p + "score", "Fraud scores returned", buckets=SCORE_BUCKETS, registry=reg)
        self.decisions = prom.Counter(p + "decisions", "Decisions returned, by outcome", ["decision"], registry=reg)
        self.invalid = prom.Counter(p + "validation_errors", "Problems found in rejected requests, by reason",
                                    ["reason"], registry=reg)
        self.model_info = prom.Gauge(p + "model_info", "1 for the model being served (0 once replaced)",
                                     ["model_tag", "trained_at"], multiprocess_mode="livemax", registry=reg)
        self.model_loads = prom.Counter(p + "model_loads", "Model load attempts, by outcome (ok, failed)",
                                        ["outcome"], registry=reg)
        self.log_rows = prom.Counter(p + "predlog_rows_written", "Rows written to the prediction log, by log "
                                     "(predictions, feedback)", ["log"], registry=reg)
        self.log_failures = prom.Counter(p + "predlog_write_failures", "Failed prediction-log writes (the rows are "
                                         "kept and retried), by log", ["log"], registry=reg)
        self.feedback = prom.Counter(p + "feedback_labels", "Confirmed labels recorded, by source", ["source"],
                                     registry=reg)
        for decision in (APPROVE, REVIEW, DECLINE):
            self.decisions.labels(decision)
        for kind in (PREDICTIONS, FEEDBACK):
            self.log_rows.labels(kind)
            self.log_failures.labels(kind)

    def scored(self, scores: Sequence[float], decisions: Sequence[str]) -> None:
        """Count scored rows, their scores and decisions."""
        self.rows.inc(len(scores))
        for score in scores:
            self.scores.observe(score)
        for decision, count in Counter(decisions).items():
            self.decisions.labels(decision).inc(count)

    def refused(self, endpoint: str, reason: str) -> None:
        """Count a request the request guard refused before it reached the handler (httpguard)."""
        self.requests.labels(endpoint, "invalid").inc()
        self.invalid.labels(reason).inc()

    def serving(self, model: ServedModel, previous: ServedModel | None) -> None:
        """Point the model-info gauge at ``model``."""
        if previous is not None:
            self.model_info.labels(previous.tag, previous.trained_at).set(0)
        self.model_info.labels(model.tag, model.trained_at).set(1)


# -- the scorer -----------------------------------------------------------------------------------------------
class Scorer:
    """Scores requests with the current model, logs them, and swaps in a new model without failing requests.

    A request reads the current `ServedModel` once and uses it to the end, so a reload (an attribute swap)
    never mixes two models in one response. A model that fails to load or check leaves the current one serving.
    """

    def __init__(self, config: ServingConfig, source: ModelSource, log_writer: LogWriter,
                 metrics: ScorerMetrics | None = None) -> None:
        self.config = config
        self.source = source
        self.service_spec = config.service_spec()
        self.log = log_writer
        self.metrics = metrics or ScorerMetrics(_private_registry())
        self.error: str | None = "not loaded yet"
        self._model: ServedModel | None = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: ServingConfig, *, packaged: str | None = None,
                    metrics: ScorerMetrics | None = None) -> Scorer:
        """A scorer with the registry, prediction log and metrics the settings describe."""
        metrics = metrics or ScorerMetrics()
        writer = LogWriter(config.prediction_log or default_root(), flush_rows=config.log_flush_rows,
                           flush_seconds=config.log_flush_seconds,
                           on_written=lambda kind, rows: metrics.log_rows.labels(kind).inc(rows),
                           on_error=lambda kind, _exc: metrics.log_failures.labels(kind).inc())
        return cls(config, ModelSource(config.model_tag, packaged=packaged), writer, metrics)

    @property
    def model(self) -> ServedModel | None:
        """The model serving now (None before the first successful load)."""
        return self._model

    @property
    def ready(self) -> bool:
        """True once a model is loaded."""
        return self._model is not None

    # -- model lifecycle ----------------------------------------------------------------------------------
    def reload(self) -> dict[str, Any]:
        """Serve the model the source points at now if it changed; `ModelLoadError` (old model kept) on failure."""
        with self._reload_lock:
            previous = self._model
            tag = None
            try:
                tag, path = self.source.locate()
                if previous is not None and tag == previous.tag:
                    return {"model_tag": tag, "previous": tag, "changed": False}
                served = ServedModel.build(tag, ModelBundle.load(path), self.config, self.service_spec)
            except Exception as exc:  # missing, corrupt or mismatched: whatever it is, keep the current model
                self._failed(tag, exc)
                raise ModelLoadError(self.error) from exc
            self._model = served  # the swap: requests in flight keep the model they started with
            # A full collection walks every long-lived object (~220k: the libraries and the model) and paused every
            # request for 130-170 ms. Frozen objects are skipped by the collector and still freed by reference
            # counting when the model is replaced (only cyclic garbage among them would stay).
            gc.freeze()
            self.error = None
            self.metrics.model_loads.labels("ok").inc()
            self.metrics.serving(served, previous)
            log.info("serving model %s (threshold %.4f, fast features: %s)%s", tag, served.bundle.threshold,
                     served.fast is not None, f", replacing {previous.tag}" if previous else "")
            return {"model_tag": tag, "previous": previous.tag if previous else None, "changed": True}

    def _failed(self, tag: str | None, exc: Exception) -> None:
        what = f"model {tag}" if tag else f"model {self.source.tag!r}"
        error = f"cannot serve {what}: {exc}"
        still = f"; still serving {self._model.tag}" if self._model else "; the service stays unready"
        if error != self.error:
            log.error("%s%s", error, still)
        self.error = error
        self.metrics.model_loads.labels("failed").inc()

    def start(self) -> None:
        """Load the model (a failure leaves the service unready and is retried) and start the champion poll."""
        self._try_reload()
        if self.config.poll_seconds > 0 or not self.ready:
            self._watcher = threading.Thread(target=self._watch, name="fraudops-model-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while True:
            interval = self.config.poll_seconds or (None if self.ready else RETRY_SECONDS)
            if interval is None or self._stop.wait(interval):
                return
            self._try_reload()

    def _try_reload(self) -> None:
        with contextlib.suppress(ModelLoadError):  # logged when the reason changes; the watcher retries
            self.reload()

    def close(self) -> None:
        """Stop polling and write every logged row."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        self.log.close()

    # -- requests -------------------------------------------------------------------------------------------
    def _handle(self, endpoint: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = work()
            outcome = "ok"
            return result
        except RequestError as exc:
            outcome = "invalid"
            for reason, count in Counter(p.reason for p in exc.problems).items():
                self.metrics.invalid.labels(reason).inc(count)
            raise
        except (NotReadyError, LogUnavailableError):
            outcome = "unavailable"
            raise
        finally:
            self.metrics.requests.labels(endpoint, outcome).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    def score(self, transactions: Any, explain: bool = False) -> dict[str, Any]:
        """Score 1..max_batch raw transactions (see `RowSchema`); the body of a `ScoreResponse`."""
        return self._handle("score", lambda: self._score(transactions, explain))

    def _score(self, transactions: Any, explain: bool) -> dict[str, Any]:
        served = self._model
        if served is None:
            raise NotReadyError(f"no model is loaded: {self.error}")
        check_batch(transactions, "transactions", self.config.max_batch)
        rows = served.schema.validate(transactions)
        names = served.feature_names
        model = served.bundle.model
        features: Mapping[str, Sequence[Any]]
        if served.fast is not None:
            matrix = served.fast.rows(rows)
            pool = Pool(matrix, cat_features=served.bundle.state.categorical_features, feature_names=names)
            features = {name: [row[j] for row in matrix] for j, name in enumerate(names)}
        else:
            frame = served.bundle.features(pd.DataFrame(transactions))  # the canonical function on raw rows
            pool = served.bundle.pool(frame)
            features = {name: frame[name].to_numpy() for name in names}
        scores = model.predict_proba(pool)[:, 1].tolist()
        decisions = served.bands.decide(scores)
        request_id = uuid.uuid4().hex
        spec = served.bundle.state.spec
        columns: dict[str, Any] = {"row": np.arange(len(rows), dtype="int32"), "score": scores,
                                   "decision": decisions}
        ids = [row.get(spec.id_column) for row in rows] if spec.id_column else None
        if ids is not None:
            columns["transaction_id"] = ids
        if spec.timestamp:
            columns[spec.timestamp] = served.schema.times(rows, spec.timestamp)
        self.log.append(LogChunk(PREDICTIONS, datetime.now(UTC), len(rows), columns={**columns, **features},
                                 shared={"request_id": request_id, "model_tag": served.tag,
                                         REVIEW_COLUMN: served.bands.review, DECLINE_COLUMN: served.bands.decline},
                                 json_columns={"input": transactions}))
        self.metrics.scored(scores, decisions)
        results: list[dict[str, Any]] = [{"row": i, "score": s, "decision": d}
                                         for i, (s, d) in enumerate(zip(scores, decisions, strict=True))]
        if ids is not None:
            for item, tid in zip(results, ids, strict=True):
                if tid is not None:
                    item["transaction_id"] = tid
        if explain:
            shap = model.get_feature_importance(pool, type="ShapValues")[:, :-1]
            for item, reasons in zip(results, reason_codes(shap, names, features, self.config.reasons), strict=True):
                item["reasons"] = reasons
        return {"request_id": request_id, "model_tag": served.tag,
                "thresholds": {"review": served.bands.review, "decline": served.bands.decline}, "results": results}

    def feedback(self, labels: Any) -> dict[str, Any]:
        """Record confirmed labels against request ids (the ``feedback`` log); the body of a `FeedbackResponse`."""
        return self._handle("feedback", lambda: self._feedback(labels))

    def _feedback(self, labels: Any) -> dict[str, Any]:
        check_batch(labels, "labels", self.config.max_batch)
        try:
            items = _FEEDBACK.validate_python(labels)
        except ValidationError as exc:
            raise RequestError(_problems(exc)) from None
        now = datetime.now(UTC)
        columns = {"request_id": [x.request_id for x in items], "row": np.array([x.row for x in items], "int32"),
                   "transaction_id": [x.transaction_id for x in items], "is_fraud": [x.is_fraud for x in items],
                   "source": [x.source for x in items], "note": [x.note for x in items],
                   "observed_at": pd.to_datetime([x.observed_at or now for x in items], utc=True)}
        self.log.append(LogChunk(FEEDBACK, now, len(items), columns=columns))
        for source, count in Counter(x.source for x in items).items():
            self.metrics.feedback.labels(source).inc(count)
        return {"accepted": len(items)}


def _private_registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()
