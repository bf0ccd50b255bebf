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
import pyarrow as pa
import pyarrow.compute as pc
from pandas._libs.hashing import hash_object_array

from fraudops.bundle import ModelBundle
from fraudops.entity_features import OnlineFeatures
from fraudops.errors import ConfigError
from fraudops.online_store import RedisStore, SeedResult, StoreLimits, offsets
from fraudops.predlog import PREDICTIONS, TIME_COLUMN, UNREADABLE, log_parts, read_part
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


def _validated(schema: RowSchema, texts: list[str | None]
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
    ``batch`` at a time. It holds the order (`_ReplayOrder`, ~75 bytes a logged row at its peak) and the inputs of at
    most `_Inputs.LOOKAHEAD` rows, not the window's inputs.

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
    order = _ReplayOrder.of([root for root in (log_root, spill_dir) if root], spec.timestamp, start, end)
    if not order.logged_rows and not order.unreadable:
        raise ConfigError(f"the prediction log at {log_root} holds no prediction logged from {start:%Y-%m-%d %H:%M} "
                          f"to {end:%Y-%m-%d %H:%M} UTC: check --log-root (FRAUDOPS_PREDICTION_LOG); to load only "
                          "the model's snapshot, use `fraudops features load-snapshot`")
    if order.logged_rows and not {"role", "input", spec.timestamp} <= order.columns:
        raise ConfigError(f"the prediction log at {log_root} lacks the role, input or {spec.timestamp} column: "
                          "written by an older scorer, it cannot rebuild the store")
    from fraudops.serving.rows import RowSchema

    schema = RowSchema(bundle.state)
    config = bundle.state.entities
    assert config is not None  # open_store checked
    seed = seed_from_bundle(store, bundle, tag)
    coverage = store.coverage()
    since = _micros_of(coverage.since) if coverage is not None else None
    online = OnlineFeatures(config, store)
    inputs = _Inputs(order)
    recorded = rejected = 0
    named_problems: list[str] = []
    store.take_unfindable()
    for lo in range(0, len(order), batch):
        chunk = inputs.read(lo, min(lo + batch, len(order)))
        rows, keep, refused = _validated(schema, chunk.texts)
        rejected += len(refused)
        named_problems += [f"{chunk.name(j)}: {problem}"
                           for j, problem in refused[:MAX_PROBLEMS - len(named_problems)]]
        if rows:
            logged = order.logged[chunk.positions[keep]]
            recorded += store.write(online.records(rows), findable_only=logged >= since if since is not None
                                    else np.zeros(len(rows), dtype=bool))
    left_out = store.take_unfindable()
    unreadable = order.unreadable + inputs.unreadable
    if not unreadable and not rejected and coverage is not None:
        store.mark_covered(start, coverage)
    log.info("feature store %s rebuilt from %d logged transactions (%d new, %d left out, %d refused)",
             store.namespace, len(order), recorded, left_out, rejected)
    return RebuildResult(seed, len(order), recorded, unreadable, left_out,
                         coverage.since if coverage is not None else None, rejected, tuple(named_problems))


_REQUEST_KEYS = ("fraudops-request", "fraudops-req-two")  # two SipHash keys: a 128-bit name of a request id


@dataclass(frozen=True)
class _ReplayOrder:
    """The decided rows of a window of the prediction log (and of the spill directories read with it), in the
    order a rebuild replays them: by event time (missing last), a time's rows in the order logged. Each is named by
    where its input is (``file``, an index into ``files``, and ``at``, its row in that file) and when it was logged
    (``logged``, microseconds) and its request (a hash), not by its input: 24 bytes a row, ~75 while the order is
    built (measured: 1.8 million logged rows, 432 MB peak RSS of the whole rebuild with the store faked, 236 above
    the process's start). A row the log writer
    wrote twice (a recovery after a crash: the same request and row) counts once, the first logged; the log's
    copy before a spill directory's."""

    files: list[tuple[Any, str]]
    file: np.ndarray
    at: np.ndarray
    logged: np.ndarray
    request: np.ndarray
    """The (first) hash of each row's request id, to check that its file still holds it."""
    logged_rows: int
    """Rows of any role logged in the window."""
    columns: frozenset[str]
    """The columns of the files that hold rows of the window."""
    unreadable: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.file)

    @classmethod
    def of(cls, roots: list[str], timestamp: str, start: datetime, end: datetime) -> _ReplayOrder:
        begin, stop = _micros_of(start), _micros_of(end)
        files: list[tuple[Any, str]] = []
        parts: list[tuple[Any, ...]] = []
        columns: set[str] = set()
        unreadable: list[str] = []
        logged_rows = 0
        wanted = ["role", "request_id", "row", timestamp]
        for source, root in enumerate(roots):
            fs, paths = log_parts(root, PREDICTIONS, start, end)
            for path in paths:
                try:
                    table, names = read_part(fs, path, wanted)
                except UNREADABLE as exc:
                    log.warning("skipping unreadable log file %s: %s", path, exc)
                    unreadable.append(path)
                    continue
                logged = _micros(table.column(TIME_COLUMN))
                window = (logged >= begin) & (logged < stop)
                if not window.any():
                    continue
                logged_rows += int(window.sum())
                columns.update(names)
                rows = _decided_rows(table, window, timestamp, path)
                if rows is not None:
                    at = rows[0]
                    parts.append((np.full(len(at), len(files), dtype=np.int32), at, logged[at],
                                  np.full(len(at), source, dtype=np.int8), *rows[1:]))
                    files.append((fs, path))
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return cls(files, empty.astype(np.int32), empty.astype(np.int32), empty, empty, logged_rows,
                       frozenset(columns), tuple(unreadable))
        events = _event_column([part[4] for part in parts], [part[0] for part in parts], timestamp)
        file, at, logged, source, first, second, row, named = (np.concatenate(column) for column in zip(
            *((part[:4] + part[5:]) for part in parts), strict=True))
        del parts
        sequence = np.lexsort((np.arange(len(file)), logged, source))  # as logged: the log's, then a spill's
        rank = np.empty(len(file), dtype=np.int64)
        rank[sequence] = np.arange(len(file))
        del sequence
        same = np.lexsort((rank, row, second, first))  # each (request, row) with its first logged copy first
        repeat = np.zeros(len(file), dtype=bool)
        repeat[same[1:]] = ((first[same[1:]] == first[same[:-1]]) & (second[same[1:]] == second[same[:-1]])
                            & (row[same[1:]] == row[same[:-1]]) & named[same[1:]] & named[same[:-1]])
        del same, second, row, named
        kept = np.flatnonzero(~repeat)
        replay = kept[np.lexsort((rank[kept], events[kept]))]
        return cls(files, file[replay], at[replay], logged[replay], first[replay], logged_rows,
                   frozenset(columns), tuple(unreadable))


def _decided_rows(table: pa.Table, window: np.ndarray, timestamp: str, path: str) -> tuple[np.ndarray, ...] | None:
    """A log file's decided rows in the window (None: none): their rows in the file, event times (`_event_times`),
    the two hashes of their request ids and their rows in their requests, and whether they have those (a file
    without them: never taken for a repeat)."""
    names = table.column_names
    if "role" not in names:
        return None
    decided = pc.is_in(table.column("role"), value_set=pa.array(DECIDED_ROLES)).to_numpy(zero_copy_only=False)
    at = np.flatnonzero(window & decided).astype(np.int32)
    if not len(at):
        return None
    event = _event_times(table.column(timestamp), path)[at] if timestamp in names else None
    if not {"request_id", "row"} <= set(names):
        zeros = np.zeros(len(at), dtype=np.int64)
        return at, event, zeros, zeros, zeros, np.zeros(len(at), dtype=bool)
    first, second = _request_hashes(table.column("request_id").take(pa.array(at)))
    row = table.column("row").fill_null(-1).to_numpy(zero_copy_only=False)[at].astype(np.int64)
    return at, event, first, second, row, np.ones(len(at), dtype=bool)


def _request_hashes(ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit hashes of each request id (a null one apart from every text)."""
    texts = ids.fill_null(_NULL_REQUEST).to_numpy(zero_copy_only=False).astype(object)
    first, second = (hash_object_array(texts, key).view(np.int64) for key in _REQUEST_KEYS)
    return first, second


_NULL_REQUEST = "\0null"


@dataclass(frozen=True)
class _Chunk:
    """The inputs `_Inputs.read` could read of a stretch of the order: their ``positions`` in it (the rows of a
    log file unreadable by then left out), texts (None: not logged) and names for messages."""

    positions: np.ndarray
    texts: list[str | None]
    names: list[tuple[Any, Any]]

    def name(self, k: int) -> str:
        request, row = self.names[k]
        return f"request {request} row {row}" if row is not None else f"logged row {self.positions[k]}"


class _Inputs:
    """The logged inputs of a `_ReplayOrder`'s rows, read file by file: when the replay first needs a row of a
    file, the file's input column is read and the inputs of its rows among the next `LOOKAHEAD` of the order are
    kept; the file is dropped. Where the event order follows the order logged, each file is read once; where it
    does not (late or backfilled transactions spread over many files), a file is read once per `LOOKAHEAD` rows it
    spreads over, and no more than that many inputs are held. A file that no longer holds the rows the order read
    in it (rewritten, torn or gone since) is unreadable: its rows not read yet are left out."""

    LOOKAHEAD = 100_000

    def __init__(self, order: _ReplayOrder) -> None:
        self.order = order
        self.by_file = np.argsort(order.file, kind="stable")  # each file's positions in the order, ascending
        self.starts = offsets(np.bincount(order.file, minlength=len(order.files)))
        self.pending: dict[int, tuple[str | None, Any, Any]] = {}
        self.lost: list[int] = []  # files unreadable now, in the order found

    @property
    def unreadable(self) -> tuple[str, ...]:
        """The files found unreadable when their inputs were read."""
        return tuple(self.order.files[f][1] for f in self.lost)

    def read(self, lo: int, hi: int) -> _Chunk:
        """The inputs of positions [lo, hi) of the order, read in turn (``lo`` past every position read before)."""
        missing = [p for p in range(lo, hi) if p not in self.pending]
        for f in np.unique(self.order.file[missing]).tolist():
            if f not in self.lost:
                self._load(f, lo, max(hi, lo + self.LOOKAHEAD))
        positions, texts, names = [], [], []
        for p in range(lo, hi):
            got = self.pending.pop(p, None)
            if got is not None:
                positions.append(p)
                texts.append(got[0])
                names.append(got[1:])
        return _Chunk(np.array(positions, dtype=np.int64), texts, names)

    def _load(self, f: int, lo: int, hi: int) -> None:
        """Keep the inputs of file ``f``'s rows at positions [lo, hi) not kept yet."""
        mine = self.by_file[self.starts[f]:self.starts[f + 1]]
        mine = mine[np.searchsorted(mine, lo):np.searchsorted(mine, hi)]
        mine = np.array([p for p in mine.tolist() if p not in self.pending], dtype=np.int64)
        fs, path = self.order.files[f]
        try:
            table = read_part(fs, path, ["input", "request_id", "row"])[0]
            at = pa.array(self.order.at[mine])
            named = {"request_id", "row"} <= set(table.column_names)
            ids = table.column("request_id").take(at) if named else None
            if ids is not None and not np.array_equal(_request_hashes(ids)[0], self.order.request[mine]):
                raise ValueError("other requests at the rows the order read")
        except UNREADABLE as exc:  # rewritten (fewer rows: an ArrowIndexError), torn or gone since the order was read
            log.warning("skipping log file %s, unreadable now: %s", path, exc)
            self.lost.append(f)
            return
        texts = table.column("input").take(at).to_pylist() if "input" in table.column_names else [None] * len(mine)
        requests = ids.to_pylist() if ids is not None else [None] * len(mine)
        rows = table.column("row").take(at).to_pylist() if named else [None] * len(mine)
        self.pending.update(zip(mine.tolist(), zip(texts, requests, rows, strict=True), strict=True))


def _micros_of(time: datetime) -> int:
    """A time as microseconds since the epoch (naive: UTC)."""
    return pd.Timestamp(time).value // 1000


def _micros(column: pa.ChunkedArray) -> np.ndarray:
    """Times logged, as microseconds since the epoch (UTC)."""
    return pd.DatetimeIndex(column.to_pandas()).as_unit("us").asi8


def _event_times(column: pa.ChunkedArray, path: str) -> np.ndarray:
    """A file's event times as sortable numbers, exactly: nanoseconds (datetimes; missing: the largest int64) or
    seconds (second offsets; missing: infinity), so that missing times are replayed last, as a sort puts them."""
    if pa.types.is_timestamp(column.type):
        values = pd.DatetimeIndex(column.to_pandas()).as_unit("ns")
        out = values.asi8.copy()
        out[values.isna()] = np.iinfo(np.int64).max
        return out
    if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
        return np.nan_to_num(column.to_numpy(zero_copy_only=False).astype(np.float64), nan=np.inf)
    raise ConfigError(f"the log file {path} holds event times of type {column.type}, not times or seconds")


def _event_column(events: list[np.ndarray | None], rows: list[np.ndarray], timestamp: str) -> np.ndarray:
    """The files' event times as one array (a file without them: missing), all of one kind."""
    kinds = {e.dtype.kind for e in events if e is not None}
    if len(kinds) > 1:
        raise ConfigError(f"the prediction log holds {timestamp} both as times and as second offsets: rows of two "
                          "models' schemas; rebuild with each model over the window of its rows")
    kind = kinds.pop() if kinds else "i"
    missing = np.iinfo(np.int64).max if kind == "i" else np.inf
    return np.concatenate([e if e is not None else np.full(len(r), missing, dtype=np.int64 if kind == "i" else
                                                           np.float64) for e, r in zip(events, rows, strict=True)])
