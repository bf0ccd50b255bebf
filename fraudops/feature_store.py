"""Operating the online feature store: load a model's frozen snapshot into a new store (so that it starts warm,
continuing the training table's windows and all-history counts) and rebuild a lost store from the prediction
log. The scorer seeds at start (`seed_from_bundle`); `fraudops features load-snapshot` and
`fraudops features rebuild --from-log WINDOW` do the same by hand."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fraudops.bundle import ModelBundle
from fraudops.entity_features import OnlineFeatures
from fraudops.errors import ConfigError
from fraudops.online_store import RedisStore, SeedResult, StoreLimits
from fraudops.predlog import TIME_COLUMN, read_predictions
from fraudops.registry import CANARY, CHAMPION

if TYPE_CHECKING:
    from fraudops.serving.rows import RowSchema

log = logging.getLogger(__name__)

SEED_TIMEOUT_SECONDS = 30.0
"""Longest wait for one call while seeding or rebuilding (a chunk of a few thousand keys), not a request's."""
DECIDED_ROLES = (CHAMPION, CANARY)
"""Prediction-log roles whose model decided the transaction, and so recorded it in the store (not the shadow's
nor the champion's counterfactual scores of canary rows)."""


def open_store(url: str, bundle: ModelBundle, timeout_s: float = SEED_TIMEOUT_SECONDS) -> RedisStore:
    """The store at ``url`` with the limits a scorer serving ``bundle`` uses (events kept for its longest window)."""
    config = bundle.state.entities
    if config is None:
        raise ConfigError("the model has no entity features (no timestamp or entity columns): nothing to store")
    try:
        return RedisStore.from_url(url, StoreLimits(keep_seconds=config.longest_seconds), timeout_s=timeout_s)
    except ValueError as exc:
        raise ConfigError(f"feature store URL: {exc}") from None


def seed_from_bundle(store: RedisStore, bundle: ModelBundle, tag: str) -> SeedResult:
    """Load ``bundle``'s frozen snapshot into ``store`` unless its namespace already has history
    (`RedisStore.seed`); raises `fraudops.online_store.StoreUnavailable` when the store does not answer."""
    if bundle.state.snapshot is None:
        raise ConfigError(f"model {tag} has no entity snapshot to load")
    result = store.seed(bundle.state.snapshot, tag)
    if result.loaded:
        log.info("feature store %s seeded with the snapshot of %s: %d entity values, %d transactions",
                 store.namespace, tag, result.entities, result.transactions)
    else:
        log.debug("feature store %s already has history (seeded from %s): snapshot of %s not loaded",
                  store.namespace, result.source, tag)
    return result


@dataclass(frozen=True)
class RebuildResult:
    """What `rebuild_from_log` did: the snapshot seeding, the decided transactions read from the log, how many
    of them the store had not recorded before, and the log files it could not read (their rows not replayed)."""

    seed: SeedResult
    transactions: int
    recorded: int
    unreadable: tuple[str, ...] = ()
    left_out: int = 0
    """Transactions the scorers recorded (logged since `RedisStore.coverage`) that the store no longer finds
    (a longest window behind every one of their entity values' newest): replayed, they would count twice."""
    covered_since: datetime | None = None
    rejected: int = 0
    """Logged transactions the model's schema refused (not replayed); ``problems`` names the first of them."""
    problems: tuple[str, ...] = ()


MAX_PROBLEMS = 5
"""Rejected logged transactions named in a `RebuildResult` (all are counted)."""


def _validated(schema: RowSchema, texts: list[str]
               ) -> tuple[list[dict[str, Any]], list[int], list[tuple[int, str]]]:
    """The rows of ``texts`` (logged input JSON) that ``schema`` accepts, their positions, and the position and
    problem of each other one, in order."""
    from fraudops.serving.errors import Problem, RequestError

    items, keep, refused = [], [], []
    for i, text in enumerate(texts):
        try:
            items.append(json.loads(text))
            keep.append(i)
        except (TypeError, ValueError) as exc:  # a torn or missing input (never written so by a scorer)
            refused.append((i, f"input: not JSON ({exc})"))
    rows: list[dict[str, Any]] = []
    while keep:
        try:
            rows = schema.validate(items)
            break
        except RequestError as exc:
            bad = {p.row for p in exc.problems if p.row is not None} or set(range(len(keep)))
            for j in sorted(bad):
                named = [str(Problem(None, p.field, p.reason, p.problem, p.value)).removeprefix(": ")
                         for p in exc.problems if p.row == j]
                refused.append((keep[j], "; ".join(named) or str(exc)))
            items = [item for j, item in enumerate(items) if j not in bad]
            keep = [k for j, k in enumerate(keep) if j not in bad]
    return rows, keep, sorted(refused)


def rebuild_from_log(store: RedisStore, bundle: ModelBundle, tag: str, log_root: str, start: datetime,
                     end: datetime, batch: int = 1000, spill_dir: str | None = None) -> RebuildResult:
    """Rebuild a (new) store: seed it with ``bundle``'s snapshot if its namespace has no history, then record the
    transactions the prediction log holds from [start, end) in event-time order, as the scorer recorded them,
    ``batch`` at a time (the log's input column in memory, not the rows).

    Only decided rows count (roles champion and canary: a shadow row's transaction was decided by another model
    of the same request), each transaction once; recording is idempotent by transaction id while the store keeps
    the transaction's events or marker (a longest window). Beyond that, the namespace's coverage decides
    (`RedisStore.coverage`: its seed's claim, lowered to ``start`` by each complete rebuild): a transaction
    logged since then, which the scorers recorded, is recorded only where one of its entity values keeps its
    event (else it is left out, already counted), so a rebuild over a store that kept its history, or run twice,
    counts nothing twice. Not recovered: transactions older than the log's retention, writes a scorer dropped
    (beyond its held limit) that no entity value keeps by then, and the all-history counts of a transaction that
    is both in the model's training table and in the log (a retrained model's table holds exported traffic) and
    older than the longest window at the table's end, which count twice; nor those of the transactions the
    scorers held while the store was empty or down, before its reseed, when the rebuild comes a longest window
    after them. A window without any logged prediction is a `ConfigError` (before the store is touched): the
    wrong log, most likely.

    ``spill_dir``: a scorer's spill directory (`LogWriter`: the rows the log storage refused at its shutdown),
    read as a part of the log. A logged transaction ``bundle``'s schema refuses (a model of another schema, or a
    log file edited by hand) is counted and named in the result, not replayed; the others are. While some rows
    could not be read or were refused, the namespace's coverage stays as it was."""
    spec = bundle.state.spec
    assert spec.timestamp is not None  # a model with entity features has one (open_store checked)
    wanted = ["role", "input", "request_id", "row", spec.timestamp]
    parts = [read_predictions(root, start, end, columns=wanted) for root in (log_root, spill_dir) if root]
    unreadable = tuple(path for part in parts for path in part.attrs.get("corrupt_paths", ()))
    frame = pd.concat(parts, ignore_index=True, sort=False) if len(parts) > 1 else parts[0]
    if not len(frame) and not unreadable:
        raise ConfigError(f"the prediction log at {log_root} holds no prediction logged from {start:%Y-%m-%d %H:%M} "
                          f"to {end:%Y-%m-%d %H:%M} UTC: check --log-root (FRAUDOPS_PREDICTION_LOG); to load only "
                          "the model's snapshot, use `fraudops features load-snapshot`")
    if len(frame) and not {"role", "input", spec.timestamp} <= set(frame):
        raise ConfigError(f"the prediction log at {log_root} lacks the role, input or {spec.timestamp} column: "
                          "written by an older scorer, it cannot rebuild the store")
    decided = frame[frame["role"].isin(DECIDED_ROLES)] if len(frame) else frame
    if {"request_id", "row"} <= set(decided):  # a row the log writer wrote twice (recovery after a crash)
        decided = decided.drop_duplicates(["request_id", "row"], keep="first")
    if len(decided):  # stable: a time's transactions in the order they were logged
        decided = decided.sort_values(spec.timestamp, kind="stable")
    texts = decided["input"].tolist() if len(decided) else []
    logged = pd.DatetimeIndex(decided[TIME_COLUMN]) if len(decided) else pd.DatetimeIndex([], tz="UTC")
    named = {"request_id", "row"} <= set(decided)
    ids, numbers = (decided["request_id"].to_numpy(), decided["row"].to_numpy()) if named else ((), ())

    def where(i: int) -> str:
        return f"request {ids[i]} row {numbers[i]}" if named else f"logged row {i}"

    del frame, decided
    from fraudops.serving.rows import RowSchema

    schema = RowSchema(bundle.state)
    config = bundle.state.entities
    assert config is not None  # open_store checked
    seed = seed_from_bundle(store, bundle, tag)
    coverage = store.coverage()
    scorers = (logged >= coverage.since) if coverage is not None else np.zeros(len(texts), dtype=bool)
    online = OnlineFeatures(config, store)
    recorded = 0
    store.take_unfindable()
    rejected = 0
    named_problems: list[str] = []
    for i in range(0, len(texts), batch):
        rows, keep, refused = _validated(schema, texts[i:i + batch])
        rejected += len(refused)
        named_problems += [f"{where(i + j)}: {problem}" for j, problem in refused[:MAX_PROBLEMS - len(named_problems)]]
        if rows:
            recorded += store.write(online.records(rows), findable_only=scorers[i:i + batch][keep])
    left_out = store.take_unfindable()
    if not unreadable and not rejected and coverage is not None:
        store.mark_covered(start, coverage)
    log.info("feature store %s rebuilt from %d logged transactions (%d new, %d left out, %d refused)",
             store.namespace, len(texts), recorded, left_out, rejected)
    return RebuildResult(seed, len(texts), recorded, unreadable, left_out,
                         coverage.since if coverage is not None else None, rejected, tuple(named_problems))
