"""The model being served: checked against the service's schema, probed, warmed up; and where it comes from."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from catboost import Pool

from fraudops.bundle import ModelBundle
from fraudops.decisions import DECLINE_COLUMN, REVIEW_COLUMN, Bands
from fraudops.errors import FraudopsError, RegistryError
from fraudops.features import FastFeatures
from fraudops.predlog import PREDICTIONS, LogChunk
from fraudops.registry import MODEL_NAME, NO_CHAMPION, Registry, Rollout
from fraudops.schema import DatasetSpec
from fraudops.serving.errors import RequestError
from fraudops.serving.rows import RowSchema
from fraudops.settings import ServingConfig

log = logging.getLogger(__name__)


class ModelLoadError(FraudopsError):
    """A model cannot be served: missing, unreadable, or built for another transaction schema."""


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
@dataclass(frozen=True)
class Scored:
    """One model's output for some rows of a request."""

    scores: list[float]
    decisions: list[str]
    features: Mapping[str, Sequence[Any]]
    seconds: float
    reasons: list[list[dict[str, Any]]] | None = None


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
    path: str | None = None
    """The bundle's directory (what a shadow process loads it from)."""

    @classmethod
    def build(cls, tag: str, bundle: ModelBundle, config: ServingConfig, service: DatasetSpec,
              path: str | Path | None = None) -> ServedModel:
        """Check a bundle (read from ``path``) against the service and warm it up; `ModelLoadError` says why it
        cannot be served."""
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
                   feature_names=bundle.feature_names, path=None if path is None else str(path))

    def run(self, rows: list[dict[str, Any]], transactions: list[Any], explain: bool = False, reasons: int = 3
            ) -> Scored:
        """Features, scores, decisions (and with ``explain`` the top ``reasons`` reason codes) of validated rows."""
        started = time.perf_counter()
        names = self.feature_names
        model = self.bundle.model
        features: Mapping[str, Sequence[Any]]
        if self.fast is not None:
            matrix = self.fast.rows(rows)
            pool = Pool(matrix, cat_features=self.bundle.state.categorical_features, feature_names=names)
            features = {name: [row[j] for row in matrix] for j, name in enumerate(names)}
        else:
            frame = self.bundle.features(pd.DataFrame(transactions))  # the canonical function on raw rows
            pool = self.bundle.pool(frame)
            features = {name: frame[name].to_numpy() for name in names}
        scores = model.predict_proba(pool)[:, 1].tolist()
        seconds = time.perf_counter() - started
        codes = None
        if explain:
            shap = model.get_feature_importance(pool, type="ShapValues")[:, :-1]
            codes = reason_codes(shap, names, features, reasons)
        return Scored(scores, self.bands.decide(scores), features, seconds, codes)

    def log_chunk(self, role: str, index: list[int], rows: list[dict[str, Any]], scored: Scored,
                  transactions: list[Any], request_id: str | list[str], rollout_id: str | None) -> LogChunk:
        """The prediction-log chunk of these rows (of one request, or each with its ``request_id``) as this model
        scored them in ``role``; ``index``: their places in their requests."""
        spec = self.bundle.state.spec
        columns: dict[str, Any] = {"row": np.array(index, dtype="int32"), "score": scored.scores,
                                   "decision": scored.decisions}
        if spec.id_column:
            columns["transaction_id"] = [row.get(spec.id_column) for row in rows]
        if spec.timestamp:
            columns[spec.timestamp] = self.schema.times(rows, spec.timestamp)
        shared = {"model_tag": self.tag, "role": role, "rollout_id": rollout_id,
                  "latency_ms": scored.seconds * 1000, REVIEW_COLUMN: self.bands.review,
                  DECLINE_COLUMN: self.bands.decline}
        if isinstance(request_id, list):
            columns["request_id"] = request_id
        else:
            shared["request_id"] = request_id
        return LogChunk(PREDICTIONS, datetime.now(UTC), len(rows), columns={**columns, **scored.features},
                        shared=shared, json_columns={"input": transactions})


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


class ModelSource:
    """Where the model comes from: ``tag`` in the registry (``champion`` follows the pointer); failing that, the
    ``packaged`` model when it lives outside the registry's store (the Bento's own copy when serving a Bento)."""

    def __init__(self, tag: str = "champion", registry: Registry | None = None, packaged: str | None = None) -> None:
        self.tag = tag
        self.registry = registry or Registry()
        self.packaged = packaged

    def locate(self) -> tuple[str, Path, Rollout | None]:
        """Full tag and directory of the model to serve now, and the active rollout when the service follows the
        champion (a pinned or packaged model has none): one read of the champion pointer."""
        try:
            if self.tag == "champion":
                tag, rollout = self.registry.serving()
                if tag is None:
                    raise RegistryError(NO_CHAMPION)
            else:
                tag, rollout = self.registry.resolve(self.tag), None
            return tag, self.registry.path(tag), rollout
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
            return self.packaged, path, None


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

