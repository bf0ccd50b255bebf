"""The model being served: checked against the service's schema, probed, warmed up; and where it comes from."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraudops.bundle import ModelBundle
from fraudops.decisions import Bands
from fraudops.errors import FraudopsError, RegistryError
from fraudops.features import FastFeatures
from fraudops.registry import MODEL_NAME, Registry, Rollout
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

    def rollout(self) -> Rollout | None:
        """The active rollout, when the service follows the champion (a pinned model has none)."""
        return self.registry.rollout() if self.tag == "champion" else None


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

