"""The model being served: checked against the service's schema, probed, warmed up; and where it comes from."""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from catboost import FeaturesData, Pool

from fraudops.bundle import ModelBundle
from fraudops.decisions import DECLINE_COLUMN, REVIEW_COLUMN, Bands
from fraudops.entity_features import OnlineFeatures
from fraudops.errors import FraudopsError, RegistryError
from fraudops.feature_store import SEED_TIMEOUT_SECONDS, seed_from_bundle
from fraudops.online_store import FeatureStore, Records, RedisStore, StoreLimits, StoreUnavailable
from fraudops.predlog import PREDICTIONS, LogChunk
from fraudops.registry import MODEL_NAME, NO_CHAMPION, Registry, Rollout
from fraudops.schema import DatasetSpec
from fraudops.serving.errors import RequestError
from fraudops.serving.rows import RowSchema
from fraudops.settings import ServingConfig

T = TypeVar("T")
THREADS = 1
"""CatBoost threads per model call. A serving worker is one of one per CPU (`FRAUDOPS_WORKERS=auto`), and CatBoost's
default (all cores) makes every `Pool` wake a TBB worker thread that spins for about 1 ms after the call: measured on
2 cores, a model's process CPU per single-row call 1.36 ms instead of 0.24, per 1,000-row call 2.6 instead of 1.3,
with the same scores."""

log = logging.getLogger(__name__)


class ModelLoadError(FraudopsError):
    """A model cannot be served: missing, unreadable, or built for another transaction schema."""


# -- served model ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scored:
    """One model's output for some rows of a request."""

    scores: list[float]
    decisions: list[str]
    features: Mapping[str, Sequence[Any]]
    seconds: float
    reasons: list[list[dict[str, Any]]] | None = None
    store: bool = False
    """The online feature store was asked for the entity features."""
    fallback: bool = False
    """... and did not answer in time: the entity features are the frozen snapshot's."""

    def features_of(self, i: int) -> dict[str, str | float | None]:
        """Row ``i``'s features as the model saw them (missing numbers as None)."""
        return {name: _plain(values[i]) for name, values in self.features.items()}


class StoreGuard:
    """What a scorer worker does while its feature store fails; one per worker, shared by the models it serves.

    - **Breaker.** Once the store was slow or unreachable, requests skip it for ``retry_seconds`` and answer from
      the frozen snapshot at once (instead of each waiting for the timeout); then the next request tries it again.
      A quick refusal (a store without history yet) does not open it.
    - **Held writes.** The transactions a deciding model could not record wait here, oldest first, and are written
      before the next scored batch once the store answers, `FLUSH_ROWS` per batch (catching up is spread over
      requests). At most ``max_pending`` wait: beyond, the oldest are dropped and counted (`fraudops features
      rebuild --from-log` restores them). A write that timed out but was applied counts once (idempotent by
      transaction id). Held writes live in the worker's memory: a restart loses them (the prediction log has them).
    """

    FLUSH_ROWS = 500

    def __init__(self, retry_seconds: float = 1.0, max_pending: int = 50_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_seconds = retry_seconds
        self.max_pending = max_pending
        self.clock = clock
        self.pending: deque[Records] = deque()
        """Held batches, oldest first."""
        self._pending_rows = 0
        self._dropped = 0
        self._skip_until = -math.inf
        self._lock = threading.Lock()

    @property
    def pending_rows(self) -> int:
        """How many transactions are held."""
        return self._pending_rows

    def skipping(self) -> bool:
        """Whether requests skip the store now (the breaker is open)."""
        return self.clock() < self._skip_until

    def failed(self, exc: StoreUnavailable) -> None:
        """A store call failed: open the breaker unless the store answered (a refusal)."""
        if not exc.answered:
            self._skip_until = self.clock() + self.retry_seconds

    def hold(self, records: Records) -> None:
        """Keep transactions to write once the store answers (the oldest dropped beyond ``max_pending``)."""
        with self._lock:
            self.pending.append(records)
            self._pending_rows += len(records)
            while self._pending_rows > self.max_pending:
                excess, oldest = self._pending_rows - self.max_pending, self.pending[0]
                if excess >= len(oldest):
                    self.pending.popleft()
                else:
                    self.pending[0] = oldest.take(excess, len(oldest))
                dropped = min(excess, len(oldest))
                self._pending_rows -= dropped
                self._dropped += dropped

    def flush(self, store: FeatureStore) -> None:
        """Write up to `FLUSH_ROWS` held transactions, oldest first; on `StoreUnavailable` they stay held."""
        with self._lock:
            taken, rows = [], 0
            for held in self.pending:
                if rows >= self.FLUSH_ROWS:
                    break
                taken.append((held, min(len(held), self.FLUSH_ROWS - rows)))
                rows += taken[-1][1]
        if not taken:
            return
        store.write(Records.concat([held if n == len(held) else held.take(0, n) for held, n in taken]))
        with self._lock:  # another thread may have written (or dropped) some of them meanwhile
            for held, n in taken:
                if not self.pending or self.pending[0] is not held:
                    break
                if n == len(held):
                    self.pending.popleft()
                else:
                    self.pending[0] = held.take(n, len(held))
                self._pending_rows -= n

    def take_dropped(self) -> int:
        """Held writes dropped since the last call."""
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        return dropped


class EntityFeatures:
    """Where a served model's entity features come from: the online store when there is one (read, and recorded
    by the models whose decisions are returned), else, or when the store is slow, down or skipped (`StoreGuard`),
    the bundle's frozen snapshot (never updated). ``seed`` loads that snapshot into the store if the store has no
    history (at model load, then at every champion poll, so that a store restarted empty starts warm again)."""

    WARN_SECONDS = 60.0

    def __init__(self, frozen: OnlineFeatures, live: OnlineFeatures | None,
                 seed: Callable[[], bool] | None = None, guard: StoreGuard | None = None) -> None:
        self.frozen = frozen
        self.live = live
        self.seed = seed
        self.guard = guard or StoreGuard()
        self._warned = -math.inf

    def take_races(self) -> int:
        """The online store's writes that lost a compare-and-set race to another replica since the last call."""
        store = self.live.store if self.live is not None else None
        return store.take_races() if isinstance(store, RedisStore) else 0

    def compute(self, rows: list[dict[str, Any]], record: bool, then: Callable[[np.ndarray], T],
                meanwhile: Callable[[], object] | None = None) -> tuple[T, bool]:
        """``then`` of the entity features of validated rows (rows x names), and whether they fell back on the
        snapshot.

        ``record``: read then record the rows, in one store call (a transaction id already recorded is not counted
        again), after the writes held from an outage, with ``then`` run while the store records them (and
        ``meanwhile``, work that needs no history, while it reads them); otherwise
        only read (shadow scoring: the deciding model records the transaction). When the store fails, the rows that
        were to be recorded are held for later."""
        live, guard = self.live, self.guard
        if live is None:
            return then(self.frozen.lookup(rows)), False
        if not guard.skipping():
            try:
                if record:
                    guard.flush(live.store)
                return (live.process(rows, then, meanwhile) if record else then(live.lookup(rows))), False
            except StoreUnavailable as exc:
                guard.failed(exc)
                now = time.monotonic()
                if now - self._warned >= self.WARN_SECONDS:
                    self._warned = now
                    log.warning("the feature store is unavailable, serving frozen entity features: %s", exc)
        if record:
            guard.hold(live.records(rows))
        return then(self.frozen.lookup(rows)), True


def _seed(url: str, limits: StoreLimits, bundle: ModelBundle, tag: str) -> bool:
    """`seed_from_bundle` over a connection of its own (a load takes longer than a request's timeout); a store
    that does not answer is logged, and tried again at the next champion poll. Whether this call loaded it."""
    seeder = RedisStore.from_url(url, limits, timeout_s=SEED_TIMEOUT_SECONDS)
    try:
        return seed_from_bundle(seeder, bundle, tag).loaded
    except StoreUnavailable as exc:
        log.warning("the snapshot of %s was not loaded into the feature store (%s); tried again at the next "
                    "champion poll, or load it with `fraudops features load-snapshot`", tag, exc)
        return False
    finally:
        seeder.client.close()


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
    entities: EntityFeatures | None
    trained_at: str
    feature_names: list[str]
    path: str | None = None
    """The bundle's directory (what a shadow process loads it from)."""

    @property
    def reads_store(self) -> bool:
        """Whether its entity features come from the online store (else the frozen snapshot, or none)."""
        return self.entities is not None and self.entities.live is not None

    @classmethod
    def build(cls, tag: str, bundle: ModelBundle, config: ServingConfig, service: DatasetSpec,
              path: str | Path | None = None, seed: bool = False, guard: StoreGuard | None = None) -> ServedModel:
        """Check a bundle (read from ``path``) against the service and warm it up; `ModelLoadError` says why it
        cannot be served. ``seed``: load the bundle's snapshot into a feature store without history (the
        champion's load in a scorer worker; a challenger or the shadow process never claims the store). ``guard``:
        the worker's `StoreGuard` (a new one if not given)."""
        mismatch = schema_mismatch(bundle.state.spec, service)
        if mismatch:
            raise ModelLoadError(f"model {tag} was trained on a schema ({bundle.state.spec.name}) that does not match "
                                 f"the service's ({service.name}, FRAUDOPS_SCHEMA): {'; '.join(mismatch)}")
        if not 0 < bundle.threshold <= 1:
            raise ModelLoadError(f"model {tag} has an invalid decision threshold {bundle.threshold}")
        schema = RowSchema(bundle.state)
        state = bundle.state
        frozen = state.frozen()
        served = cls(tag=tag, bundle=bundle, schema=schema,
                     entities=EntityFeatures(frozen, None) if frozen is not None else None,
                     trained_at=str(bundle.meta.get("created_at", "")), feature_names=bundle.feature_names,
                     bands=Bands.around(bundle.threshold, config.review_factor, config.decline_factor),
                     path=None if path is None else str(path))
        probe = schema.probe_rows()
        try:
            scores = np.array(served.run(schema.validate(probe)).scores)
        except (ValueError, KeyError, TypeError, RequestError) as exc:
            raise ModelLoadError(f"model {tag} cannot score its probe rows: {exc}") from exc
        if not np.all((scores >= 0) & (scores <= 1)):
            raise ModelLoadError(f"model {tag} returns scores outside [0, 1] on probe rows: {scores.tolist()}")
        url = config.feature_store_url.get_secret_value()
        if frozen is None or not url:
            return served
        # the store keeps events for the longest window any model recording them has: a challenger with a longer
        # window than the champion's reads undercounted long windows until it decides (and records) itself
        limits = StoreLimits(keep_seconds=frozen.config.longest_seconds)
        store = RedisStore.from_url(url, limits, timeout_s=config.feature_store_timeout_seconds,
                                    key_timeout_s=config.feature_store_key_timeout_seconds, require_history=True)
        seeder = functools.partial(_seed, url, limits, bundle, tag)
        if seed:
            seeder()  # a new store starts warm: the training table's history, unless the store has history already
        return replace(served, entities=EntityFeatures(frozen, OnlineFeatures(frozen.config, store), seeder, guard))

    def seed_store(self) -> bool:
        """Load the bundle's snapshot into the feature store if the store has no history; whether this call did
        (False without a store)."""
        entities = self.entities
        return entities is not None and entities.seed is not None and entities.seed()

    def run(self, rows: list[dict[str, Any]], explain: bool = False, reasons: int = 3, record: bool = False
            ) -> Scored:
        """Features, scores, decisions (and with ``explain`` the top ``reasons`` reason codes) of validated rows.

        ``record``: record the rows in the online store (the models whose decisions are returned); shadow scoring
        only reads it."""
        started = time.perf_counter()
        names = self.feature_names
        state, model, entities = self.bundle.state, self.bundle.model, self.entities
        row_features = functools.cache(lambda: state.row_features(state.row_inputs(rows)))

        def score(matrix: np.ndarray | None) -> tuple[dict[str, Any], Pool, list[float]]:
            features: dict[str, Any] = dict(row_features())
            if matrix is not None and entities is not None:
                features.update(zip(entities.frozen.feature_names, matrix.T, strict=True))
            pool = _pool(features, names, state.categorical_features)
            return features, pool, model.predict_proba(pool, thread_count=THREADS)[:, 1].tolist()

        store = fallback = False
        if entities is None:
            features, pool, scores = score(None)
        else:  # with a store recording the rows: scored while it records (again if a race changed the features)
            (features, pool, scores), fallback = entities.compute(rows, record, score, row_features)
            store = entities.live is not None
        seconds = time.perf_counter() - started
        codes = None
        if explain:
            shap = model.get_feature_importance(pool, type="ShapValues", thread_count=THREADS)[:, :-1]
            codes = reason_codes(shap, names, features, reasons)
        return Scored(scores, self.bands.decide(scores), {name: features[name] for name in names}, seconds, codes,
                      store, fallback)

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
        numeric = tuple(name for name, values in scored.features.items()
                        if isinstance(values, np.ndarray) and values.dtype.kind == "f")
        columns.update((name, values) for name, values in scored.features.items() if name not in numeric)
        block = np.array([scored.features[name] for name in numeric]).T if numeric else None
        return LogChunk(PREDICTIONS, datetime.now(UTC), len(rows), columns=columns, shared=shared,
                        json_columns={"input": transactions}, blocks={numeric: block} if block is not None else {})


def _pool(features: Mapping[str, np.ndarray], names: list[str], categorical: list[str]) -> Pool:
    """A CatBoost pool of feature columns: numbers as one float32 matrix, categories as one object matrix
    (`catboost.FeaturesData`; the model matches them to its features by name). A 1,000-row model call builds it in
    1.1 ms (a DataFrame: 2.1 ms, with 1.4 ms of fixed cost; row tuples: 7.2 ms), one row in 0.09 ms."""
    numeric = [name for name in names if name not in categorical]
    rows = len(features[names[0]])
    numbers = np.empty((rows, len(numeric)), dtype=np.float32)  # CatBoost's own precision
    for j, name in enumerate(numeric):
        numbers[:, j] = features[name]
    categories = np.empty((rows, len(categorical)), dtype=object)
    for j, name in enumerate(categorical):
        categories[:, j] = features[name]
    return Pool(FeaturesData(num_feature_data=numbers, cat_feature_data=categories, num_feature_names=numeric,
                             cat_feature_names=list(categorical)), thread_count=THREADS)


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

