"""Real-time entity features: one kernel for the training replay and for live scoring.

For each entity column of the dataset spec (each of ``spec.entities``, then ``spec.account`` if it is not one of
them) and each window ``w`` of the configuration (default 1h, 24h, 7d) plus all history (``all``), a transaction
at time ``t`` is described by the entity value's transactions at times in ``[t - w, t)``:

- ``{col}__count_{w}``: how many;
- ``{col}__accounts_{w}``: how many distinct accounts (columns other than the account; missing accounts do not
  count);
- ``{col}__amount_sum_{w}``, ``{col}__amount_mean_{w}``, ``{col}__amount_max_{w}`` (when the spec names an
  amount): sum 0, mean and max NaN when there are none;

and by ``{col}__seconds_since_prev`` (since its latest strictly earlier transaction, NaN if none) and
``{col}__first_seen`` (1.0 when it has no earlier transaction, else 0.0).

**Point in time.** Only transactions *strictly* before ``t`` count: transactions at the same time as this one
(ties, including itself and a retry of itself) are not seen, whatever order they arrive in. Times are compared
as integer microseconds (`fraudops.normalize.ticks`), so window boundaries are exact.
**Keys.** Entity values are normalised once (`fraudops.normalize`): 1, 1.0, "1" and "1.0" are one entity. A
missing value is no entity: all its features are NaN, and it is not recorded.

The kernel works on columns. Two adapters feed it: `frame_columns` (a training table, replayed at once by
`offline_features`, vectorised) and `row_columns` (validated rows, for `OnlineFeatures`, which reads the entity
history from a `fraudops.online_store` store, computes with the same kernel, then records the rows).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from numbers import Integral, Real
from typing import Any, TypeVar, overload

import numpy as np
import pandas as pd

from fraudops.normalize import MISSING, TICKS_PER_SECOND, UNIT_SECONDS, entity_keys, key_text, ticks, to_times
from fraudops.online_store import (
    NO_ACCOUNT,
    NO_TIME,
    EntityRef,
    FeatureStore,
    FrozenColumn,
    Query,
    Records,
    SnapshotStore,
    States,
    StoreLimits,
    changes,
    isin,
    offsets,
    ranked,
    text_hashes,
)
from fraudops.schema import DatasetSpec

T = TypeVar("T")

DEFAULT_WINDOWS = ("1h", "24h", "7d")
ALL = "all"
_NONE = np.iinfo(np.int64).min  # no time: no earlier transaction / an account the store knew before everything
_NEVER = np.iinfo(np.int64).max  # an account the store has never seen


@dataclass(frozen=True)
class Window:
    """A sliding window such as ``1h``: its name in feature names and its length."""

    name: str
    seconds: int

    @classmethod
    def parse(cls, text: str) -> Window:
        """``30m``, ``1h``, ``24h``, ``7d``, ``2w``, ``90s``: a whole number and a unit."""
        match = re.fullmatch(r"([1-9]\d*)([smhdw])", text.strip()) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"window {text!r} must be a whole number and a unit (s, m, h, d or w), such as 1h or 7d")
        return cls(match.group(0), int(match.group(1)) * UNIT_SECONDS[match.group(2)])

    @property
    def ticks(self) -> int:
        return self.seconds * TICKS_PER_SECOND


@dataclass(frozen=True)
class EntityFeatureConfig:
    """Which entity features to compute: the dataset's column roles, its time kind, and the windows."""

    spec: DatasetSpec
    time_kind: str
    windows: tuple[Window, ...]

    def __post_init__(self) -> None:
        if not self.spec.timestamp:
            raise ValueError("entity features need a timestamp column in the dataset spec")
        if self.time_kind not in ("datetime", "seconds"):
            raise ValueError(f"time_kind must be 'datetime' or 'seconds', got {self.time_kind!r}")
        if not self.columns:
            raise ValueError("entity features need entity columns or an account column in the dataset spec")
        if not self.windows:
            raise ValueError("entity features need at least one window")
        names, lengths = [w.name for w in self.windows], [w.seconds for w in self.windows]
        if len(set(names)) < len(names) or len(set(lengths)) < len(lengths):
            raise ValueError(f"windows must differ in length, got {names}")

    @classmethod
    def create(cls, spec: DatasetSpec, time_kind: str, windows: Sequence[str] = DEFAULT_WINDOWS) -> EntityFeatureConfig:
        """A configuration with windows given as text (``["1h", "24h", "7d"]``)."""
        return cls(spec, time_kind, tuple(Window.parse(w) for w in windows))

    @functools.cached_property
    def columns(self) -> list[str]:
        """Entity columns: the entities, then the account if it is not one of them."""
        cols = list(self.spec.entities)
        if self.spec.account and self.spec.account not in cols:
            cols.append(self.spec.account)
        return cols

    def paired(self, column: str) -> bool:
        """Whether ``column`` has distinct-account features."""
        return bool(self.spec.account) and column != self.spec.account

    @property
    def longest_seconds(self) -> int:
        return max(w.seconds for w in self.windows)

    def column_feature_names(self, column: str) -> list[str]:
        """The features of one entity column, in order."""
        return self._names_by_column[column]

    @functools.cached_property
    def _names_by_column(self) -> dict[str, list[str]]:
        return {column: [f"{column}__{name}" for name in self.kernel_names(self.paired(column))]
                for column in self.columns}

    def kernel_names(self, paired: bool) -> list[str]:
        """The features of an entity column without its column's prefix, in order (``paired``: with distinct
        accounts)."""
        return self._kernel_names[paired]

    @functools.cached_property
    def _kernel_names(self) -> dict[bool, list[str]]:
        out = {}
        for paired in (False, True):
            names = []
            for span in self.spans:
                names.append(f"count_{span}")
                if paired:
                    names.append(f"accounts_{span}")
                if self.spec.amount:
                    names += [f"amount_{stat}_{span}" for stat in ("sum", "mean", "max")]
            out[paired] = [*names, "seconds_since_prev", "first_seen"]
        return out

    @property
    def spans(self) -> list[str]:
        """The windows' names, then ``all``."""
        return [*(w.name for w in self.windows), ALL]

    def stacked_order(self, paired: bool) -> np.ndarray:
        """Where each of `kernel_names` is among the kernel's stacked rows: per statistic (count, amount sum, mean,
        max, accounts) one row per span, then the recency rows."""
        return self._stacked_order[paired]

    @functools.cached_property
    def _stacked_order(self) -> dict[bool, np.ndarray]:
        out = {}
        for paired in (False, True):
            stats = ["count", *(["amount_sum", "amount_mean", "amount_max"] if self.spec.amount else []),
                     *(["accounts"] if paired else [])]
            rows = [f"{stat}_{span}" for stat in stats for span in self.spans] + ["seconds_since_prev", "first_seen"]
            out[paired] = np.array([rows.index(name) for name in self.kernel_names(paired)])
        return out

    @functools.cached_property
    def any_paired(self) -> bool:
        """Whether some entity column has distinct-account features."""
        return any(self.paired(column) for column in self.columns)

    @functools.cached_property
    def layout(self) -> list[tuple[int, np.ndarray]]:
        """Per entity column, in `columns` order: its first position in `feature_names`, and which of the kernel's
        rows (`kernel_names` of `any_paired`) are its features."""
        kernel = self.kernel_names(self.any_paired)
        out, offset = [], 0
        for column in self.columns:
            names = self.kernel_names(self.paired(column))
            out.append((offset, np.array([kernel.index(name) for name in names])))
            offset += len(names)
        return out

    @functools.cached_property
    def feature_names(self) -> list[str]:
        """All features, in order."""
        return [name for col in self.columns for name in self.column_feature_names(col)]


# -- input adapters -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyColumn:
    """Normalised keys of one column: ``codes`` into ``uniques`` (text), -1 where missing."""

    codes: np.ndarray
    uniques: np.ndarray


@dataclass(frozen=True)
class Columns:
    """What the kernel reads about a batch of transactions."""

    ticks: np.ndarray
    amount: np.ndarray
    keys: dict[str, KeyColumn]
    account: KeyColumn | None
    txn: list[str] | None = None


def _merged(codes: np.ndarray, texts: pd.Series) -> KeyColumn:
    """Codes into distinct texts, merging raw values that normalise to one key (1 and "1.0")."""
    final, uniques = pd.factorize(texts.to_numpy(dtype=object))
    if not len(final):  # every value missing
        return KeyColumn(np.full(len(codes), -1, dtype=np.int64), uniques)
    return KeyColumn(np.where(codes >= 0, final[codes], -1).astype(np.int64), uniques)


def frame_columns(frame: pd.DataFrame, config: EntityFeatureConfig) -> Columns:
    """The kernel's input from a table (validated or raw): every row, in any order."""
    spec = config.spec
    needed = [spec.timestamp, *config.columns, *([spec.amount] if spec.amount else [])]
    absent = [c for c in needed if c not in frame]
    if absent:
        raise ValueError(f"entity features need the columns {absent}, missing from the table")
    times = to_times(frame[spec.timestamp], config.time_kind, spec.time_format)
    _reject(times.isna().to_numpy(), frame.index, f"time column {spec.timestamp!r}", "missing or unreadable")
    amount = np.zeros(len(frame))
    if spec.amount:
        amount = pd.to_numeric(frame[spec.amount], errors="coerce").to_numpy(dtype="float64")
        _reject(~np.isfinite(amount), frame.index, f"amount column {spec.amount!r}", "missing or not finite")
    keys = {}
    for col in config.columns:  # the account is one of them
        codes, uniques = frame[col].factorize()  # normalise the distinct values only
        keys[col] = _merged(codes, entity_keys(pd.Series(uniques)))
    return Columns(ticks(times.to_numpy(), config.time_kind), amount, keys,
                   keys[spec.account] if spec.account else None)


def _reject(bad: np.ndarray, index: pd.Index, what: str, problem: str) -> None:
    if bad.any():
        raise ValueError(f"{what} has {int(bad.sum())} {problem} values (first at index {index[bad.argmax()]!r})")


def row_columns(rows: Sequence[Mapping[str, Any]], config: EntityFeatureConfig) -> Columns:
    """The kernel's input from validated rows (`fraudops.serving.RowSchema`: text keys, floats, times as UTC
    nanoseconds or seconds). A row without a transaction id gets a digest of its time, amount and keys."""
    spec = config.spec
    raw_times = [row.get(spec.timestamp) for row in rows]
    if config.time_kind == "seconds" or not all(type(value) is int for value in raw_times):  # else valid at once
        for i, value in enumerate(raw_times):
            kind = Integral if config.time_kind == "datetime" else Real
            if not isinstance(value, kind) or isinstance(value, bool) or value != value:
                expected = "UTC nanoseconds (an integer)" if config.time_kind == "datetime" else "seconds (a number)"
                raise ValueError(f"row {i}: {spec.timestamp!r} must be {expected}, got {value!r}")
    amount = np.zeros(len(rows))
    if spec.amount:
        amount = _amounts([row.get(spec.amount) for row in rows], spec.amount)
    keys = {col: _key_column([row.get(col) for row in rows], col) for col in config.columns}
    kind_times = np.array(raw_times, dtype="int64" if config.time_kind == "datetime" else "float64")
    cols = Columns(ticks(kind_times, config.time_kind), amount, keys, keys[spec.account] if spec.account else None)
    ids = [row.get(spec.id_column) for row in rows] if spec.id_column else [None] * len(rows)
    if not all(v is None or (type(v) is str and not v.endswith(".0")) for v in ids):  # else already keys
        ids = [_key(v, i, spec.id_column) for i, v in enumerate(ids)]
    return replace(cols, txn=[txn if txn is not None else _digest(cols, i) for i, txn in enumerate(ids)])


def _key_column(values: list[Any], column: str) -> KeyColumn:
    """Codes of a column's values into their distinct keys. Texts (validated rows) are normalised once per
    distinct value; anything else row by row, so that a value that cannot be a key is named with its row."""
    if all(v is None or type(v) is str for v in values):
        codes, uniques = _factorize(values)
        texts = [key_text(u) for u in uniques.tolist()]  # "7.0" -> "7": may merge two values
        if texts == uniques.tolist():
            return KeyColumn(codes, uniques)
        return _merged(codes, pd.Series(texts, dtype=object))
    return KeyColumn(*_factorize([_key(v, i, column) for i, v in enumerate(values)]))


def _amounts(values: list[Any], column: str) -> np.ndarray:
    """The amounts as float64; `ValueError` naming the first row whose amount is not a finite number."""
    if all(type(value) is float for value in values):  # a validated batch: one pass, then one check of finiteness
        out = np.array(values, dtype="float64")
        if np.isfinite(out).all():
            return out
    for i, value in enumerate(values):
        if not isinstance(value, Real) or isinstance(value, bool) or not np.isfinite(value):
            raise ValueError(f"row {i}: {column!r} must be a finite number, got {value!r}")
    return np.array(values, dtype="float64")


def _key(value: Any, i: int, column: str) -> str | None:
    text = key_text(value)
    if text is not None and not isinstance(text, str):
        raise ValueError(f"row {i}: {column!r} must be a text or integer key, got {text!r}")
    return text


def _digest(cols: Columns, i: int) -> str:
    parts = [int(cols.ticks[i]), float(cols.amount[i])]
    parts += [None if k.codes[i] < 0 else k.uniques[k.codes[i]] for k in cols.keys.values()]
    return "h:" + hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


# -- the kernel ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Table:
    """Times and amounts of the transactions the kernel sees, ranked once for all entity columns.

    Times are replaced by their rank among the distinct times, so that (key, time) pairs become one int64 and
    window boundaries become ranks: for the time of rank r, ``window_start[i, r]`` is the first rank at or after
    that time - window i, ``window_end[i, r]`` the first rank after that time + window i.
    """

    ticks: np.ndarray
    amount: np.ndarray
    unique_ticks: np.ndarray
    rank: np.ndarray
    window_start: np.ndarray
    window_end: np.ndarray
    unique_amounts: np.ndarray
    amount_rank: np.ndarray

    @classmethod
    def of(cls, ticks_: np.ndarray, amount: np.ndarray, windows: Sequence[Window]) -> _Table:
        unique_ticks, rank = ranked(ticks_)
        unique_amounts, amount_rank = ranked(amount)
        lengths = np.array([w.ticks for w in windows], dtype=np.int64)[:, None]
        return cls(ticks_, amount, unique_ticks, rank, np.searchsorted(unique_ticks, unique_ticks - lengths, "left"),
                   np.searchsorted(unique_ticks, unique_ticks + lengths, "right"), unique_amounts, amount_rank)


@dataclass(frozen=True)
class _Prior:
    """What a store knows beyond the table's transactions: per key code its folded aggregates (``folded``, the
    store's answer), per entry the accounts first seen strictly before it and when its account was first seen
    (`_NEVER` or `_NONE`)."""

    folded: States
    accounts_before: np.ndarray
    account_first: np.ndarray


class _RangeMax:
    """Maximum over index ranges of a fixed array (a sparse table up to the longest range asked for)."""

    def __init__(self, values: np.ndarray, longest: int) -> None:
        levels = [values]
        span = 1
        while span * 2 <= longest:
            levels.append(np.maximum(levels[-1][:-span], levels[-1][span:]))
            span *= 2
        self.table = np.full((len(levels), len(values)), np.nan)
        for k, level in enumerate(levels):
            self.table[k, :len(level)] = level

    def query(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """max(values[lo:hi]) per pair (arrays of any shape, broadcast); NaN for empty ranges."""
        length = hi - lo
        level = np.frexp(np.maximum(length, 1))[1] - 1  # floor(log2(length))
        top = np.maximum(self.table[level, lo], self.table[level, np.maximum(hi - (1 << level), 0)])
        return np.where(length > 0, top, np.nan)


def _prefix(flags: np.ndarray) -> np.ndarray:
    """prefix[i] = how many of flags[:i] are set."""
    out = np.zeros(len(flags) + 1, dtype=np.int64)
    np.cumsum(flags, out=out[1:])
    return out


def _count_at_most(item_group: np.ndarray, item_rank: np.ndarray, group: np.ndarray, rank: np.ndarray,
                   width: int) -> np.ndarray:
    """Per query (``group``, ``rank``): the items of its group whose rank is <= the query's. With ``item_rank`` of
    shape windows x items, the answer is windows x queries, each window's items counted for its own queries."""
    layers = item_rank if item_rank.ndim == 2 else item_rank[None]
    groups = int(max(group.max(initial=0), item_group.max(initial=0))) + 1
    layer = np.arange(len(layers))[:, None] * groups
    keys = np.sort(((layer + item_group) * width + layers).ravel())
    base = (layer + group) * width
    found = np.searchsorted(keys, base + rank, "right") - np.searchsorted(keys, base, "left")
    return found if item_rank.ndim == 2 else found[0]


def _entity_features(config: EntityFeatureConfig, table: _Table, entry_row: np.ndarray, codes: np.ndarray,
                     accounts: np.ndarray | None, prior: _Prior | None, context: int = 0) -> np.ndarray:
    """The features of entries, (table row, key code) pairs: a matrix of `kernel_names` x entries (with distinct
    accounts when ``accounts``, the entries' account codes, -1 for none, is given). Keys of several entity columns
    can share one call (codes in one space), and every window is computed at once, so that a request's few
    transactions pay for one pass of a few dozen array operations. The first ``context`` entries are only history
    the others see (a store's events): the matrix has a column for each of the others, in order.

    Entries are sorted by (key, time). An entry's strictly earlier transactions are the slice [start, end) of its
    key's run; window w's start is found by binary search on (key, rank of t - w). Sums come from a prefix sum,
    maxima from a sparse table (windows) and a running maximum (all history); distinct accounts in
    `_distinct_accounts`.
    """
    paired = accounts is not None
    out = np.empty((len(config.kernel_names(paired)), len(codes) - context))  # a feature's values contiguous
    if len(codes) == context:
        return out
    width = len(table.unique_ticks) + 1
    sort_key = codes * width + table.rank[entry_row]
    by = np.argsort(sort_key)  # ties (same key and time) see the same rows whatever their order
    rows, sort_key, c_all = entry_row[by], sort_key[by], codes[by]
    rank_all, t_all, amount = table.rank[rows], table.ticks[rows], table.amount[rows]
    pos = np.arange(len(rows))
    new_key = changes(c_all)
    start_all = np.maximum.accumulate(np.where(new_key, pos, 0))
    end_all = np.maximum.accumulate(np.where(new_key | changes(rank_all), pos, 0))
    # the entries whose features are asked for, in sorted order (all: a view of every array)
    asked: slice | np.ndarray = slice(None) if not context else np.flatnonzero(by >= context)
    c, rank, t, start, end = (x[asked] for x in (c_all, rank_all, t_all, start_all, end_all))
    base = c * width
    lo = np.searchsorted(sort_key, base + table.window_start[:, rank], "left")  # windows x entries
    earlier = end > start
    before = np.maximum(end - 1, 0)
    count_all = end - start
    prev = np.where(earlier, t_all[before], _NONE)
    if prior is not None:
        count_all = count_all + prior.folded.count[c]
        prev = np.where(earlier, prev, prior.folded.last[c])
    stacked = [end - lo, count_all[None]]
    if config.spec.amount:
        sums = np.zeros(len(amount) + 1, dtype=np.longdouble)
        np.cumsum(amount, dtype=np.longdouble, out=sums[1:])
        total = np.vstack([sums[end] - sums[lo], (sums[end] - sums[start])[None]]).astype("float64")
        range_max = _RangeMax(amount, int((end - lo).max()))
        amount_width = len(table.unique_amounts) + 1
        running = np.maximum.accumulate(c_all * amount_width + table.amount_rank[rows])
        top = np.clip(running[before] - c * amount_width, 0, len(table.unique_amounts) - 1)
        max_all = np.where(earlier, table.unique_amounts[top], np.nan)
        if prior is not None:
            total[-1] += prior.folded.amount_sum[c]
            max_all = np.fmax(max_all, prior.folded.amount_max[c])
        count = np.vstack(stacked)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / count, np.nan)
        stacked = [count, total, mean, range_max.query(lo, end), max_all[None]]
    if paired:
        known = None if prior is None else (prior.accounts_before[by][asked], prior.account_first[by])
        stacked.append(_distinct_accounts(table, accounts[by], c_all, rank_all, t_all, start_all, end_all, asked, lo,
                                          known))
    recency = [np.where(prev == _NONE, np.nan, (t - prev) / TICKS_PER_SECOND), count_all == 0]
    values = [row for block in stacked for row in block] + recency  # views, in the stacked order
    order = config.stacked_order(paired)
    at = by[asked] - context
    if len(at) < 4096:  # a request's few entries: one operation
        out[:, at] = np.array([values[k] for k in order])
    else:  # a training table: a 1-d scatter per feature is several times faster than one 2-d scatter
        for j, k in enumerate(order):
            out[j, at] = values[k]
    return out


def _distinct_accounts(table: _Table, account: np.ndarray, c: np.ndarray, rank: np.ndarray, t: np.ndarray,
                       start: np.ndarray, end: np.ndarray, asked: slice | np.ndarray, lo: np.ndarray,
                       known: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Distinct accounts per window (rows), then over all history (the last row), of the ``asked`` entries among
    entries sorted by (key, time) (`_entity_features`; ``lo``: each asked entry's first entry per window, windows x
    asked entries).

    Occurrence j of a (key, account) pair counts for window w at time t when it lies in [t - w, t) and the
    pair's previous occurrence does not: for t in (max(t_j, t_prev + w), t_j + w]. So the count at t is
    (first occurrences before t) + (repeats whose interval opened before t) - (occurrences before t - w).
    ``known`` (online): per entry, the accounts the store saw first strictly before it, and when the store first
    saw the entry's account.
    """
    width = len(table.unique_ticks) + 1
    has_account = account >= 0
    present = np.flatnonzero(has_account)
    pair = _codes(c[present] * (int(account.max()) + 1) + account[present])
    order = np.argsort(pair * width + rank[present])  # each pair's occurrences in time order
    by_pair, pair = present[order], pair[order]
    repeat_of = pair[1:] == pair[:-1]
    later, earlier = by_pair[1:][repeat_of], by_pair[:-1][repeat_of]
    prev_rank = np.full(len(account), -1)
    prev_rank[later] = rank[earlier]
    first = has_account & (prev_rank < 0)
    repeat = has_account & (prev_rank >= 0) & (prev_rank < rank)  # a repeat at the same time never counts
    counted_before = _prefix(first | repeat)
    first_before = _prefix(first)
    a_c, a_rank, a_start, a_end = c[asked], rank[asked], start[asked], end[asked]
    firsts = first_before[a_end] - first_before[a_start]
    opened = np.maximum(rank[repeat] + 1, table.window_end[:, prev_rank[repeat]])
    windows = (firsts + _count_at_most(c[repeat], opened, a_c, a_rank, width)
               - (counted_before[lo] - counted_before[a_start]))
    if known is None:
        return np.vstack([windows, firsts])
    # pairs first seen here count until the store's first sight of them (then they are in accounts_before)
    accounts_before, store_first = known
    new = first & (store_first > t)
    new_before = _prefix(new)
    store_rank = np.searchsorted(table.unique_ticks, store_first[new], "right")
    return np.vstack([windows, accounts_before + new_before[a_end] - new_before[a_start]
                      - _count_at_most(c[new], store_rank, a_c, a_rank, width)])


def compute(columns: Columns, config: EntityFeatureConfig) -> dict[str, np.ndarray]:
    """Every feature for every row of ``columns``, each row seeing only the strictly earlier rows."""
    table = _Table.of(columns.ticks, columns.amount, config.windows)
    account = columns.account.codes if columns.account is not None else None
    out: dict[str, np.ndarray] = {}
    for col in config.columns:  # one column at a time: a training table's entries are many
        codes = columns.keys[col].codes
        present = np.flatnonzero(codes >= 0)
        paired = account is not None and config.paired(col)
        found = _entity_features(config, table, present, codes[present], account[present] if paired else None, None)
        block = found
        if len(present) < len(codes):  # some rows have no key: their features are missing
            block = np.full((len(found), len(codes)), np.nan)
            block[:, present] = found
        out.update(zip(config.column_feature_names(col), block, strict=True))
    return out


def offline_features(frame: pd.DataFrame, config: EntityFeatureConfig) -> pd.DataFrame:
    """The entity features of a training table, point-in-time correct (row order and index are kept)."""
    return pd.DataFrame(compute(frame_columns(frame, config), config), index=frame.index)


# -- online -------------------------------------------------------------------------------------------------
class OnlineFeatures:
    """Entity features of live transactions: read their entities' history from a store, compute with the kernel,
    then record them. Rows of one batch see each other's strictly earlier transactions, as in the offline replay;
    replaying a table in time order (row by row or in batches) gives the offline values (see
    `fraudops.online_store` for what is approximate beyond the store's limits).
    """

    def __init__(self, config: EntityFeatureConfig, store: FeatureStore) -> None:
        if store.limits.keep_seconds < config.longest_seconds:
            raise ValueError(f"the store keeps {store.limits.keep_seconds} s of events, less than the longest "
                             f"window ({config.longest_seconds} s)")
        self.config = config
        self.store = store

    @property
    def feature_names(self) -> list[str]:
        return self.config.feature_names

    @overload
    def process(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray: ...

    @overload
    def process(self, rows: Sequence[Mapping[str, Any]], then: Callable[[np.ndarray], T],
                meanwhile: Callable[[], object] | None = None) -> T: ...

    def process(self, rows: Sequence[Mapping[str, Any]], then: Callable[[np.ndarray], Any] | None = None,
                meanwhile: Callable[[], object] | None = None) -> Any:
        """Features of the rows (rows x `feature_names`), then the rows recorded in the store. With ``then``:
        ``then`` of the features, run while the store records the rows, and ``meanwhile`` (work that needs no
        history) while the store reads (`FeatureStore.read_and_write`)."""
        columns = row_columns(rows, self.config)
        return self._lookup(columns, record=True, then=then, meanwhile=meanwhile)

    def lookup(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Features of the rows (rows x `feature_names`), without recording them."""
        return self._lookup(row_columns(rows, self.config))

    def lookup_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Features of a table's rows (a frame adapter's `lookup`), without recording them."""
        columns = with_transaction_ids(frame, frame_columns(frame, self.config), self.config)
        return pd.DataFrame(self._lookup(columns), index=frame.index, columns=self.feature_names)

    def record(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Record the rows in the store; returns how many were new (by transaction id)."""
        return self.store.write(self.records(rows))

    def records(self, rows: Sequence[Mapping[str, Any]]) -> Records:
        """The rows as the store records them (to write later: `fraudops.serving.model.StoreGuard`)."""
        columns = row_columns(rows, self.config)
        return self._records(columns, *self._entity_values(columns))

    def _entity_values(self, columns: Columns) -> tuple[list[EntityRef], dict[str, int], list[np.ndarray]]:
        """The batch's distinct entity values (column by column), where each column's start among them, and per
        column the rows that have a key."""
        refs: list[EntityRef] = []
        first: dict[str, int] = {}
        for col in self.config.columns:
            first[col] = len(refs)
            paired = self.config.paired(col)
            refs += [EntityRef(col, key, paired) for key in columns.keys[col].uniques.tolist()]
        return refs, first, [np.flatnonzero(columns.keys[col].codes >= 0) for col in self.config.columns]

    def _records(self, columns: Columns, refs: list[EntityRef], first: dict[str, int], batch: list[np.ndarray]
                 ) -> Records:
        assert columns.txn is not None
        account = columns.account
        names = np.full(len(columns.ticks), None, dtype=object)
        if account is not None and len(account.uniques):
            known = account.codes >= 0
            names[known] = account.uniques[account.codes[known]]
        entity = [first[col] + columns.keys[col].codes[rows] for col, rows in zip(self.config.columns, batch,
                                                                                  strict=True)]
        return Records(np.array(columns.txn, dtype=object), columns.ticks, columns.amount, names, refs,
                       np.concatenate(batch).astype(np.int64), np.concatenate(entity).astype(np.int64))

    def _lookup(self, columns: Columns, record: bool = False, then: Callable[[np.ndarray], Any] | None = None,
                meanwhile: Callable[[], object] | None = None) -> Any:
        """Read the batch's entity values, then run the kernel once over one table: every stored event (not queried)
        followed by the batch's rows, each under each of its entity values (one code per value read). A retried
        transaction is left out of the stored events: it counts once, as in the batch, and sees what it saw the
        first time (unless its events were folded: behind transactions a longest window newer, or beyond
        ``max_events``). ``record``: the same store call then records the batch (`FeatureStore.read_and_write`).
        ``then``: returns ``then`` of the features instead (recording, computed while the store records), and
        ``meanwhile`` runs while the store reads (recording only)."""
        config, n = self.config, len(columns.ticks)
        if not n:
            empty = np.empty((0, len(config.feature_names)))
            return empty if then is None else then(empty)
        refs, first, batch = self._entity_values(columns)
        pairs = [(col, rows) for col, rows in zip(config.columns, batch, strict=True)  # the paired columns' rows
                 if config.paired(col) and columns.account is not None]
        account = columns.account
        row_account = np.full(n, NO_ACCOUNT, dtype=np.int64)
        if account is not None and len(account.uniques):
            known = account.codes >= 0
            row_account[known] = text_hashes(account.uniques)[account.codes[known]]
        pair_rows = np.concatenate([rows for _, rows in pairs]) if pairs else np.empty(0, dtype=np.int64)
        pair_entity = [first[col] + columns.keys[col].codes[rows] for col, rows in pairs]
        query = Query(refs, np.concatenate(pair_entity) if pairs else pair_rows, columns.ticks[pair_rows],
                      row_account[pair_rows])
        records = self._records(columns, refs, first, batch) if record else None
        retried = text_hashes(columns.txn) if records is None else records.txn_hashes

        def features(states: States) -> Any:
            event_code = np.repeat(np.arange(len(refs)), np.diff(states.event_start))
            stored = slice(None)
            if columns.txn:  # retried transactions: drop their events
                keep = ~isin(states.txn, retried)
                if not keep.all():
                    stored, event_code = keep, event_code[keep]
            m = len(event_code)
            table = _Table.of(np.concatenate([states.ticks[stored], columns.ticks]),
                              np.concatenate([states.amount[stored], columns.amount]), config.windows)
            entry_row = np.concatenate([np.arange(m), *(m + rows for rows in batch)])
            codes = np.concatenate([event_code,
                                    *(first[col] + columns.keys[col].codes[rows]
                                      for col, rows in zip(config.columns, batch, strict=True))])
            accounts = None
            if config.any_paired and account is not None:
                hashes = np.concatenate([states.account[stored], row_account])
                account_codes = np.where(hashes != NO_ACCOUNT, _codes(hashes), -1)
                paired = np.array([ref.paired for ref in refs], dtype=bool)
                accounts = np.where(paired[codes], account_codes[entry_row], -1)
            prior = self._prior(states, batch, [col for col, _ in pairs], m)
            found = _entity_features(config, table, entry_row, codes, accounts, prior, context=m)
            out = np.full((n, len(config.feature_names)), np.nan)
            at = 0
            for (offset, kernel_columns), rows in zip(config.layout, batch, strict=True):
                out[rows, offset:offset + len(kernel_columns)] = found[kernel_columns, at:at + len(rows)].T
                at += len(rows)
            return out if then is None else then(out)

        # recording, the store computes the features while its write is on the way (Redis: while it runs the script)
        return features(self.store.read(query)) if records is None else \
            self.store.read_and_write(query, records, features, meanwhile)

    def _prior(self, states: States, batch: list[np.ndarray], paired: list[str], m: int) -> _Prior:
        """What the store knows beyond the table: per value read (folded aggregates), per entry (stored events: none;
        the batch's rows under a paired column: the accounts first seen strictly before them, and when their own
        account was; ``paired``: the columns the query asked that for, in order)."""
        accounts_before, account_first = [np.zeros(m, dtype=np.int64)], [np.full(m, _NONE)]
        at = 0
        for col, rows in zip(self.config.columns, batch, strict=True):
            if col in paired:
                accounts_before.append(states.accounts_before[at:at + len(rows)])
                account_first.append(states.account_first[at:at + len(rows)])
                at += len(rows)
            else:
                accounts_before.append(np.zeros(len(rows), dtype=np.int64))
                account_first.append(np.full(len(rows), _NONE))
        return _Prior(states, np.concatenate(accounts_before), np.concatenate(account_first))


def _factorize(texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Codes of texts into their distinct values (None -> -1): a dict, faster than pandas for a batch."""
    index: dict[str, int] = {}
    codes = [-1 if text is None else index.setdefault(text, len(index)) for text in texts]
    return np.array(codes, dtype=np.int64), np.array(list(index), dtype=object)


def _codes(values: np.ndarray) -> np.ndarray:
    """Codes of int64 values into their distinct values: sorting is cheaper for the few rows of a request,
    hashing for a training table."""
    return np.unique(values, return_inverse=True)[1] if len(values) < 4096 else pd.factorize(values)[0]


# -- frozen snapshot ----------------------------------------------------------------------------------------
def with_transaction_ids(frame: pd.DataFrame, columns: Columns, config: EntityFeatureConfig) -> Columns:
    """``columns`` of ``frame`` with their transaction ids: the id column's keys, or the digest `row_columns`
    gives a row without one."""
    id_column = config.spec.id_column
    ids = entity_keys(frame[id_column]).tolist() if id_column and id_column in frame else [None] * len(frame)
    return replace(columns, txn=[_digest(columns, i) if txn in (None, MISSING) else txn
                                 for i, txn in enumerate(ids)])


def snapshot(frame: pd.DataFrame, config: EntityFeatureConfig, limits: StoreLimits) -> SnapshotStore:
    """What a `MemoryStore` with ``limits`` holds after recording every row of ``frame`` (in any order), built
    vectorised: the frozen statistics of a model bundle. Ties at the ``max_events`` cap may keep another of the
    events at the same time than the memory store would (features do not depend on which)."""
    columns = with_transaction_ids(frame, frame_columns(frame, config), config)
    assert columns.txn is not None
    account = columns.account
    frozen, event_rows = {}, []
    for col in config.columns:
        key = columns.keys[col]
        n_keys = len(key.uniques)
        rows = np.flatnonzero(key.codes >= 0)
        rows = rows[np.lexsort((columns.ticks[rows], key.codes[rows]))]
        c, t, amount = key.codes[rows], columns.ticks[rows], columns.amount[rows]
        sizes = np.bincount(c, minlength=n_keys)
        start = offsets(sizes)
        newest = np.full(n_keys, _NONE)
        np.maximum.at(newest, c, t)
        from_end = start[c + 1] - 1 - np.arange(len(rows))
        kept = (t >= newest[c] - limits.keep_ticks) & (from_end < limits.max_events)
        folded = ~kept
        amount_max = np.full(n_keys, -np.inf)
        np.maximum.at(amount_max, c[folded], amount[folded])
        last = np.full(n_keys, NO_TIME)
        np.maximum.at(last, c[folded], t[folded])
        parts: dict[str, np.ndarray] = {}
        if config.paired(col) and account is not None:
            parts = _frozen_accounts(c, account.codes[rows], t, n_keys, limits.exact_accounts)
        frozen[col] = FrozenColumn(
            keys=key.uniques, event_start=offsets(np.bincount(c[kept], minlength=n_keys)), event_ticks=t[kept],
            event_amount=amount[kept],
            event_account=account.codes[rows][kept] if account is not None else np.full(int(kept.sum()), -1),
            event_txn=rows[kept], count=np.bincount(c[folded], minlength=n_keys),
            amount_sum=np.bincount(c[folded], weights=amount[folded], minlength=n_keys),
            amount_max=np.where(np.isneginf(amount_max), np.nan, amount_max), last=last, **parts)
        event_rows.append(rows[kept])
    used = np.unique(np.concatenate(event_rows)) if event_rows else np.empty(0, dtype=np.int64)
    for col, f in frozen.items():
        frozen[col] = replace(f, event_txn=np.searchsorted(used, f.event_txn))
    return SnapshotStore(limits, frozen, account.uniques if account is not None else np.empty(0, dtype=object),
                         np.array(columns.txn, dtype=object)[used])


def _frozen_accounts(c: np.ndarray, account: np.ndarray, t: np.ndarray, n_keys: int, exact: int
                     ) -> dict[str, np.ndarray]:
    """Each key's accounts with the time each was first seen (rows sorted by key then time)."""
    present = np.flatnonzero(account >= 0)
    order = present[np.lexsort((t[present], account[present], c[present]))]
    pc, pa = c[order], account[order]
    first = np.r_[True, (pc[1:] != pc[:-1]) | (pa[1:] != pa[:-1])] if len(order) else np.zeros(0, dtype=bool)
    pc, pa, pt = pc[first], pa[first], t[order][first]
    total = np.bincount(pc, minlength=n_keys)
    is_exact = total <= exact
    keep = is_exact[pc]
    start = offsets(np.where(is_exact, total, 0))
    first_ticks = pt[keep]
    return {"account_start": start, "account_code": pa[keep], "account_first": first_ticks,
            "accounts_exact": is_exact, "account_total": total}
