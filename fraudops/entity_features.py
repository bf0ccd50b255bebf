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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

from fraudops.normalize import MISSING, TICKS_PER_SECOND, entity_keys, key_text, ticks, to_times
from fraudops.online_store import (
    EntityRef,
    FeatureStore,
    FrozenColumn,
    KeyQuery,
    KeyState,
    Record,
    SnapshotStore,
    StoreLimits,
    offsets,
    sorted_runs,
)
from fraudops.schema import DatasetSpec

DEFAULT_WINDOWS = ("1h", "24h", "7d")
ALL = "all"
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
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
        return cls(match.group(0), int(match.group(1)) * _UNIT_SECONDS[match.group(2)])

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
        return {column: self._column_names(column) for column in self.columns}

    def _column_names(self, column: str) -> list[str]:
        names = []
        for span in [*(w.name for w in self.windows), ALL]:
            names.append(f"{column}__count_{span}")
            if self.paired(column):
                names.append(f"{column}__accounts_{span}")
            if self.spec.amount:
                names += [f"{column}__amount_{stat}_{span}" for stat in ("sum", "mean", "max")]
        return [*names, f"{column}__seconds_since_prev", f"{column}__first_seen"]

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
    raw_times: list[float | int] = []
    for i, row in enumerate(rows):
        value = row.get(spec.timestamp)
        kind = Integral if config.time_kind == "datetime" else Real
        if not isinstance(value, kind) or isinstance(value, bool) or value != value:
            expected = "UTC nanoseconds (an integer)" if config.time_kind == "datetime" else "seconds (a number)"
            raise ValueError(f"row {i}: {spec.timestamp!r} must be {expected}, got {value!r}")
        raw_times.append(value)
    amount = np.zeros(len(rows))
    if spec.amount:
        amount = np.array([_amount(row, i, spec.amount) for i, row in enumerate(rows)], dtype="float64")
    keys = {}
    for col in config.columns:
        texts = [_key(row, i, col) for i, row in enumerate(rows)]
        keys[col] = KeyColumn(*_factorize(texts))
    kind_times = np.array(raw_times, dtype="int64" if config.time_kind == "datetime" else "float64")
    cols = Columns(ticks(kind_times, config.time_kind), amount, keys, keys[spec.account] if spec.account else None)
    ids = [_key(row, i, spec.id_column) if spec.id_column else None for i, row in enumerate(rows)]
    return replace(cols, txn=[txn if txn is not None else _digest(cols, i) for i, txn in enumerate(ids)])


def _amount(row: Mapping[str, Any], i: int, column: str) -> float:
    value = row.get(column)
    if not isinstance(value, Real) or isinstance(value, bool) or not np.isfinite(value):
        raise ValueError(f"row {i}: {column!r} must be a finite number, got {value!r}")
    return float(value)


def _key(row: Mapping[str, Any], i: int, column: str) -> str | None:
    text = key_text(row.get(column))
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
    window boundaries become ranks: for the time of rank r, ``window_start[w][r]`` is the first rank at or after
    that time - w, ``window_end[w][r]`` the first rank after that time + w.
    """

    ticks: np.ndarray
    amount: np.ndarray
    unique_ticks: np.ndarray
    rank: np.ndarray
    window_start: dict[str, np.ndarray]
    window_end: dict[str, np.ndarray]
    unique_amounts: np.ndarray
    amount_rank: np.ndarray

    @classmethod
    def of(cls, ticks_: np.ndarray, amount: np.ndarray, windows: Sequence[Window]) -> _Table:
        unique_ticks, rank = np.unique(ticks_, return_inverse=True)
        unique_amounts, amount_rank = np.unique(amount, return_inverse=True)
        start = {w.name: np.searchsorted(unique_ticks, unique_ticks - w.ticks, "left") for w in windows}
        end = {w.name: np.searchsorted(unique_ticks, unique_ticks + w.ticks, "right") for w in windows}
        return cls(ticks_, amount, unique_ticks, rank.astype(np.int64), start, end, unique_amounts,
                   amount_rank.astype(np.int64))


@dataclass(frozen=True)
class _Prior:
    """What a store knows beyond the table's transactions: per key code (folded aggregates), per table row
    (accounts first seen strictly before it; when its account was first seen, `_NEVER` or `_NONE`)."""

    count: np.ndarray
    amount_sum: np.ndarray
    amount_max: np.ndarray
    last: np.ndarray
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
        """max(values[lo:hi]) per pair; NaN for empty ranges."""
        length = hi - lo
        level = np.frexp(np.maximum(length, 1))[1] - 1  # floor(log2(length))
        top = np.maximum(self.table[level, lo], self.table[level, np.maximum(hi - (1 << level), 0)])
        return np.where(length > 0, top, np.nan)


def _prefix(flags: np.ndarray) -> np.ndarray:
    """prefix[i] = how many of flags[:i] are set."""
    return np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])


def _count_at_most(item_group: np.ndarray, item_rank: np.ndarray, group_base: np.ndarray, rank: np.ndarray,
                   width: int) -> np.ndarray:
    """Per query: items of its group whose rank is <= the query's rank (``group_base`` = group * width)."""
    keys = np.sort(item_group * width + item_rank)
    return np.searchsorted(keys, group_base + rank, "right") - np.searchsorted(keys, group_base, "left")


def _entity_features(config: EntityFeatureConfig, column: str, table: _Table, codes: np.ndarray,
                     accounts: np.ndarray | None, prior: _Prior | None) -> dict[str, np.ndarray]:
    """The features of one entity column for every row of ``table`` (NaN where the key is missing).

    Rows are sorted by (key, time). Row i's strictly earlier transactions are the slice [start, end) of its key's
    run; window w's start is found by binary search on (key, rank of t - w). Sums come from a prefix sum, maxima
    from a sparse table (windows) and a running maximum (all history); distinct accounts in `_distinct_accounts`.
    """
    n = len(codes)
    names = config.column_feature_names(column)
    out = dict(zip(names, np.full((len(names), n), np.nan), strict=True))  # one allocation: a request is small
    rows = np.flatnonzero(codes >= 0)
    if not len(rows):
        return out
    width = len(table.unique_ticks) + 1
    sort_key = codes[rows] * width + table.rank[rows]
    by = np.argsort(sort_key)  # ties (same key and time) see the same rows whatever their order
    rows, sort_key = rows[by], sort_key[by]
    c, rank, t, amount = codes[rows], table.rank[rows], table.ticks[rows], table.amount[rows]
    pos = np.arange(len(rows))
    new_key = np.r_[True, c[1:] != c[:-1]]
    start = np.maximum.accumulate(np.where(new_key, pos, 0))
    end = np.maximum.accumulate(np.where(new_key | np.r_[True, rank[1:] != rank[:-1]], pos, 0))
    base = c * width
    lows = {w.name: np.searchsorted(sort_key, base + table.window_start[w.name][rank], "left") for w in config.windows}
    widest = max(config.windows, key=lambda w: w.seconds).name
    found: dict[str, np.ndarray] = {}
    spec = config.spec
    if spec.amount:
        sums = np.concatenate([[0], np.cumsum(amount, dtype=np.longdouble)])
        range_max = _RangeMax(amount, int((end - lows[widest]).max()))
    for w in config.windows:
        lo = lows[w.name]
        found[f"count_{w.name}"] = end - lo
        if spec.amount:
            found[f"amount_sum_{w.name}"] = (sums[end] - sums[lo]).astype("float64")
            found[f"amount_max_{w.name}"] = range_max.query(lo, end)
    earlier = end > start
    before = np.maximum(end - 1, 0)
    count_all = end - start
    if spec.amount:
        sum_all = (sums[end] - sums[start]).astype("float64")
        amount_width = len(table.unique_amounts) + 1
        running = np.maximum.accumulate(c * amount_width + table.amount_rank[rows])
        top = np.clip(running[before] - c * amount_width, 0, len(table.unique_amounts) - 1)
        max_all = np.where(earlier, table.unique_amounts[top], np.nan)
    prev = np.where(earlier, t[before], _NONE)
    if prior is not None:
        count_all = count_all + prior.count[c]
        prev = np.where(earlier, prev, prior.last[c])
        if spec.amount:
            sum_all = sum_all + prior.amount_sum[c]
            max_all = np.fmax(max_all, prior.amount_max[c])
    found[f"count_{ALL}"] = count_all
    if spec.amount:
        found[f"amount_sum_{ALL}"], found[f"amount_max_{ALL}"] = sum_all, max_all
        for span in [*(w.name for w in config.windows), ALL]:
            total, count = found[f"amount_sum_{span}"], found[f"count_{span}"]
            with np.errstate(invalid="ignore", divide="ignore"):
                found[f"amount_mean_{span}"] = np.where(count > 0, total / count, np.nan)
    found["seconds_since_prev"] = np.where(prev == _NONE, np.nan, (t - prev) / TICKS_PER_SECOND)
    found["first_seen"] = (count_all == 0).astype("float64")
    if accounts is not None:
        known = None if prior is None else (prior.accounts_before[rows], prior.account_first[rows])
        found.update(_distinct_accounts(config, table, accounts[rows], c, rank, t, start, end, lows, known))
    for name, values in found.items():
        out[f"{column}__{name}"][rows] = values
    return out


def _distinct_accounts(config: EntityFeatureConfig, table: _Table, account: np.ndarray, c: np.ndarray,
                       rank: np.ndarray, t: np.ndarray, start: np.ndarray, end: np.ndarray,
                       lows: dict[str, np.ndarray], known: tuple[np.ndarray, np.ndarray] | None,
                       ) -> dict[str, np.ndarray]:
    """Distinct accounts per window and over all history, for rows sorted by (key, time) (`_entity_features`).

    Occurrence j of a (key, account) pair counts for window w at time t when it lies in [t - w, t) and the
    pair's previous occurrence does not: for t in (max(t_j, t_prev + w), t_j + w]. So the count at t is
    (first occurrences before t) + (repeats whose interval opened before t) - (occurrences before t - w).
    ``known`` (online): per row, the accounts the store saw first strictly before it, and when the store first
    saw the row's account.
    """
    width = len(table.unique_ticks) + 1
    base = c * width
    present = np.flatnonzero(account >= 0)
    pair = _codes(c[present] * (int(account.max()) + 1) + account[present])
    order = np.argsort(pair * width + rank[present])  # each pair's occurrences in time order
    by_pair, pair = present[order], pair[order]
    repeat_of = pair[1:] == pair[:-1]
    later, earlier = by_pair[1:][repeat_of], by_pair[:-1][repeat_of]
    prev_rank = np.full(len(account), -1)
    prev_rank[later] = rank[earlier]
    has_account = account >= 0
    first = has_account & (prev_rank < 0)
    repeat = has_account & (prev_rank >= 0) & (prev_rank < rank)  # a repeat at the same time never counts
    counted_before = _prefix(first | repeat)
    first_before = _prefix(first)
    firsts = first_before[end] - first_before[start]
    found = {}
    for w in config.windows:
        lo = lows[w.name]
        opened = np.maximum(rank[repeat] + 1, table.window_end[w.name][prev_rank[repeat]])
        repeats = _count_at_most(c[repeat], opened, base, rank, width)
        found[f"accounts_{w.name}"] = firsts + repeats - (counted_before[lo] - counted_before[start])
    if known is None:
        found[f"accounts_{ALL}"] = firsts
    else:  # pairs first seen here count until the store's first sight of them (then they are in accounts_before)
        accounts_before, store_first = known
        new = first & (store_first > t)
        new_before = _prefix(new)
        store_rank = np.searchsorted(table.unique_ticks, store_first[new], "right")
        found[f"accounts_{ALL}"] = (accounts_before + new_before[end] - new_before[start]
                                    - _count_at_most(c[new], store_rank, base, rank, width))
    return found


def compute(columns: Columns, config: EntityFeatureConfig) -> dict[str, np.ndarray]:
    """Every feature for every row of ``columns``, each row seeing only the strictly earlier rows."""
    table = _Table.of(columns.ticks, columns.amount, config.windows)
    account = columns.account.codes if columns.account is not None else None
    out: dict[str, np.ndarray] = {}
    for col in config.columns:
        out.update(_entity_features(config, col, table, columns.keys[col].codes,
                                    account if config.paired(col) else None, None))
    return {name: out[name] for name in config.feature_names}


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

    def process(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Features of the rows (rows x `feature_names`), then the rows recorded in the store."""
        columns = row_columns(rows, self.config)
        features = self._lookup(columns)
        self.store.write(self._records(columns))
        return features

    def lookup(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Features of the rows (rows x `feature_names`), without recording them."""
        return self._lookup(row_columns(rows, self.config))

    def lookup_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Features of a table's rows (a frame adapter's `lookup`), without recording them."""
        columns = with_transaction_ids(frame, frame_columns(frame, self.config), self.config)
        return pd.DataFrame(self._lookup(columns), index=frame.index, columns=self.feature_names)

    def record(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Record the rows in the store; returns how many were new (by transaction id)."""
        return self.store.write(self._records(row_columns(rows, self.config)))

    def _records(self, columns: Columns) -> list[Record]:
        assert columns.txn is not None
        account = columns.account
        refs = {col: [EntityRef(col, key, self.config.paired(col)) for key in columns.keys[col].uniques]
                for col in self.config.columns}
        return [Record(txn, int(columns.ticks[i]), float(columns.amount[i]),
                       None if account is None or account.codes[i] < 0 else account.uniques[account.codes[i]],
                       tuple(refs[col][code] for col in self.config.columns
                             if (code := columns.keys[col].codes[i]) >= 0))
                for i, txn in enumerate(columns.txn)]

    def _lookup(self, columns: Columns) -> np.ndarray:
        """Read the batch's entity values, then run the kernel over one table: every stored event (not queried)
        followed by the batch's rows. A retried transaction is left out of the stored events: it counts once, as
        in the batch, and sees what it saw the first time (unless its event was folded, a week or more ago)."""
        config, n = self.config, len(columns.ticks)
        if not n:
            return np.empty((0, len(config.feature_names)))
        plans, queries = {}, []
        for col in config.columns:
            keys = columns.keys[col]
            members = _members(keys.codes, len(keys.uniques))
            plans[col] = (len(queries), members)
            queries += [self._query(EntityRef(col, key, config.paired(col)), columns, rows)
                        for key, rows in zip(keys.uniques, members, strict=True)]
        states = self.store.read(queries)
        retried = set(columns.txn or ())
        by_column = {col: states[first:first + len(members)] for col, (first, members) in plans.items()}
        stored = [(j, code, event) for j, col in enumerate(config.columns) for code, state in enumerate(by_column[col])
                  for event in state.events if event.txn not in retried]
        m = len(stored)
        owner = np.array([j for j, _, _ in stored], dtype=np.int64)
        owner_code = np.array([code for _, code, _ in stored], dtype=np.int64)
        table = _Table.of(np.array([e.ticks for _, _, e in stored] + columns.ticks.tolist(), dtype=np.int64),
                          np.array([e.amount for _, _, e in stored] + columns.amount.tolist()), config.windows)
        batch_accounts = columns.account
        texts = [e.account for _, _, e in stored]
        if batch_accounts is not None:
            texts += [None if code < 0 else batch_accounts.uniques[code] for code in batch_accounts.codes]
        accounts = _factorize(texts)[0] if batch_accounts is not None else None
        out: dict[str, np.ndarray] = {}
        for j, col in enumerate(config.columns):
            codes = np.concatenate([np.where(owner == j, owner_code, -1), columns.keys[col].codes])
            prior = self._prior(by_column[col], plans[col][1], texts if config.paired(col) else None, m, n)
            found = _entity_features(config, col, table, codes, accounts if config.paired(col) else None, prior)
            out.update({name: values[m:] for name, values in found.items()})
        return np.column_stack([out[name] for name in config.feature_names])

    @staticmethod
    def _prior(states: list[KeyState], members: list[np.ndarray], texts: list[str | None] | None, m: int,
               n: int) -> _Prior:
        """What the store knows beyond the table, for one column (stored events: their accounts are known);
        ``texts``: the table's accounts, None for a column without distinct-account features."""
        accounts_before = np.zeros(m + n, dtype=np.int64)
        account_first = np.full(m + n, _NONE)
        for state, rows in zip(states, members, strict=True) if texts is not None else ():
            at = m + rows
            if state.accounts_before:
                accounts_before[at] = state.accounts_before
            if state.accounts_exact:
                account_first[at] = [_NEVER if (text := texts[i]) is None else state.account_first.get(text, _NEVER)
                                     for i in at.tolist()]
        return _Prior(count=np.array([s.count for s in states], dtype=np.int64),
                      amount_sum=np.array([s.amount_sum for s in states], dtype="float64"),
                      amount_max=np.array([s.amount_max for s in states], dtype="float64"),
                      last=np.array([_NONE if s.last is None else s.last for s in states], dtype=np.int64),
                      accounts_before=accounts_before, account_first=account_first)

    def _query(self, ref: EntityRef, columns: Columns, rows: np.ndarray) -> KeyQuery:
        if not ref.paired or columns.account is None:
            return KeyQuery(ref)
        account = columns.account
        names = {account.uniques[code] for code in account.codes[rows] if code >= 0}
        return KeyQuery(ref, tuple(int(x) for x in columns.ticks[rows]), tuple(sorted(names)))


def _factorize(texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Codes of texts into their distinct values (None -> -1): a dict, faster than pandas for a batch."""
    index: dict[str, int] = {}
    codes = [-1 if text is None else index.setdefault(text, len(index)) for text in texts]
    return np.array(codes, dtype=np.int64), np.array(list(index), dtype=object)


def _codes(values: np.ndarray) -> np.ndarray:
    """Codes of int64 values into their distinct values: sorting is cheaper for the few rows of a request,
    hashing for a training table."""
    return np.unique(values, return_inverse=True)[1] if len(values) < 4096 else pd.factorize(values)[0]


def _members(codes: np.ndarray, n_keys: int) -> list[np.ndarray]:
    """Row positions of each key code 0..n_keys-1 (missing keys, -1, left out)."""
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_keys + 1))
    return [order[bounds[k]:bounds[k + 1]] for k in range(n_keys)]


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
        last = np.full(n_keys, SnapshotStore.NO_TIME)
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
            "first_sorted": sorted_runs(first_ticks, start), "accounts_exact": is_exact, "account_total": total}
