"""Online stores of entity history for the real-time entity features: an in-memory one and Redis.

A store keeps, per entity value (a device, an IP, a card, an account), what `fraudops.entity_features` needs to
compute its features for a new transaction exactly as the offline replay does:

- the **kept events**: the entity's transactions within the longest window behind its newest one (each with
  time, amount, account and transaction id), at most `StoreLimits.max_events`;
- the **folded aggregates** of its older transactions (count, amount sum and max, newest time), which only the
  all-history features use;
- the **accounts** it was used by, each with the time first seen, for the all-history distinct-account count:
  exact up to `StoreLimits.exact_accounts` accounts, then a HyperLogLog (Redis: standard error 0.81%).

Accounts and transaction ids are kept as 64-bit hashes (`text_hashes`): two accounts of one entity value share a
hash with probability about n^2 / 2^65 (5e-12 for 10,000 accounts). Writes are idempotent per transaction id: a
transaction already recorded (while its events are kept, or within the longest window, the life of its marker: see
`RedisStore` for which transactions get one) is skipped whole. Both stores share these semantics;
`MemoryStore` is the reference, `RedisStore` the one every scorer replica shares. Times are integer
microseconds ("ticks", see `fraudops.normalize.ticks`).

A store answers a batch at once (`Query` -> `States`, columnar), so that a batch of 1,000 transactions costs a few
numpy operations rather than a Python object per stored event.

Exact: every feature of a transaction no older than its entity's newest recorded one, whatever the batching (the
replay test checks it). Approximate, by design:
- an entity with more than ``max_events`` transactions in the longest window: its windowed features count only
  the newest ``max_events`` (all-history ones stay exact);
- an entity with more than ``exact_accounts`` accounts: ``accounts_all`` is the HyperLogLog estimate of all
  accounts seen before the batch (standard error 0.81%), without accounts new earlier in the same batch;
- a late transaction (older than its entity's newest minus the longest window): all-history features include
  the folded transactions after it;
- a retry of a transaction whose events were folded and whose marker expired, or that had none, counts again:
  scored transactions dated before the wall clock are protected for the longest window minus that lag, and a
  retry naming other entity values than the original is found by a marker only (see `RedisStore`);
- batches read concurrently (two replicas) do not see each other, though the stored state ends up the same.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import secrets
import threading
import time
from bisect import insort
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import hiredis
import numpy as np
import pandas as pd
import pydantic_core
import redis
from pandas._libs.hashing import hash_object_array
from redis.backoff import NoBackoff
from redis.retry import Retry

from fraudops.normalize import TICKS_PER_SECOND

DAY = 86_400
NO_TIME = np.iinfo(np.int64).min
"""No time: no folded transaction, or (`States.account_first`) an account beyond exact counting."""
NEVER = np.iinfo(np.int64).max
"""`States.account_first` of an account the store has never seen with the entity value."""
NO_ACCOUNT = 0
"""The hash standing for a missing account (`text_hashes` never gives it to a text)."""


class StoreUnavailable(RuntimeError):
    """The online store did not answer in time, could not be reached, or refused (the caller falls back).
    ``answered``: the store answered (a refusal such as NOHISTORY, or out of memory), so it is not slow."""

    def __init__(self, message: str, answered: bool = False) -> None:
        super().__init__(message)
        self.answered = answered


@dataclass(frozen=True)
class StoreLimits:
    """Bounds of what a store keeps.

    ``keep_seconds``: the longest window; events older than that behind an entity's newest one are folded (and a
    transaction retried after all its events were folded counts again). ``max_events``: most kept events per
    entity; beyond it the oldest are folded early, so windowed features of busier entities undercount (all-history
    ones stay exact). ``exact_accounts``: most accounts per entity counted exactly; beyond it the all-history
    distinct-account count becomes approximate. ``retention_seconds``: an entity value's history expires that long
    after its last transaction was recorded (Redis: or up to an eighth later, see `RedisStore`).
    """

    keep_seconds: int
    max_events: int = 10_000
    exact_accounts: int = 10_000
    retention_seconds: int = 90 * DAY

    def __post_init__(self) -> None:
        for name in ("keep_seconds", "max_events", "exact_accounts", "retention_seconds"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"store limit {name} must be an integer >= 1, got {value!r}")
        if self.retention_seconds < self.keep_seconds:
            raise ValueError(f"store limit retention_seconds ({self.retention_seconds}) must be at least "
                             f"keep_seconds ({self.keep_seconds})")

    @property
    def keep_ticks(self) -> int:
        return self.keep_seconds * TICKS_PER_SECOND


class EntityRef(NamedTuple):
    """One entity value a transaction belongs to; ``paired``: the store tracks its accounts."""

    column: str
    key: str
    paired: bool


@dataclass(frozen=True)
class Record:
    """One transaction to record under each of its entity values."""

    txn: str
    ticks: int
    amount: float
    account: str | None
    entities: tuple[EntityRef, ...]


@dataclass(frozen=True)
class Records:
    """Transactions to record, columnar: per transaction (row) its id, time (ticks), amount and account (None:
    none); per entry, a transaction under one of its entity values, its ``entry_row`` and its ``entry_entity``
    (index into ``entities``, distinct values). A scored batch passes its query's entity list itself, so that a
    store matches the two without a lookup per value."""

    txn: np.ndarray
    ticks: np.ndarray
    amount: np.ndarray
    account: np.ndarray
    entities: Sequence[EntityRef]
    entry_row: np.ndarray
    entry_entity: np.ndarray

    def __len__(self) -> int:
        return len(self.ticks)

    @functools.cached_property
    def txn_hashes(self) -> np.ndarray:
        """`text_hashes` of the ids, computed once per batch."""
        return text_hashes(self.txn)

    @functools.cached_property
    def account_hashes(self) -> np.ndarray:
        """`text_hashes` of the accounts (`NO_ACCOUNT`: none)."""
        return text_hashes(self.account)

    @classmethod
    def of(cls, records: Sequence[Record]) -> Records:
        """Transactions given one by one."""
        index: dict[EntityRef, int] = {}
        entry_row, entry_entity = [], []
        for row, record in enumerate(records):
            for ref in record.entities:
                entry_row.append(row)
                entry_entity.append(index.setdefault(ref, len(index)))
        return cls(np.array([r.txn for r in records], dtype=object),
                   np.array([r.ticks for r in records], dtype=np.int64),
                   np.array([r.amount for r in records], dtype=np.float64),
                   np.array([r.account for r in records], dtype=object), list(index),
                   np.array(entry_row, dtype=np.int64), np.array(entry_entity, dtype=np.int64))

    @classmethod
    def concat(cls, parts: Sequence[Records]) -> Records:
        """The transactions of one or more parts, in order (an entity value in several parts is listed once per
        part)."""
        rows, entities = offsets([len(p) for p in parts]), offsets([len(p.entities) for p in parts])
        return cls(np.concatenate([p.txn for p in parts]), np.concatenate([p.ticks for p in parts]),
                   np.concatenate([p.amount for p in parts]), np.concatenate([p.account for p in parts]),
                   [ref for p in parts for ref in p.entities],
                   np.concatenate([p.entry_row + rows[i] for i, p in enumerate(parts)]),
                   np.concatenate([p.entry_entity + entities[i] for i, p in enumerate(parts)]))

    def take(self, lo: int, hi: int) -> Records:
        """Rows ``lo:hi``, with only their entity values."""
        entry = (self.entry_row >= lo) & (self.entry_row < hi)
        used, entity = np.unique(self.entry_entity[entry], return_inverse=True)
        return Records(self.txn[lo:hi], self.ticks[lo:hi], self.amount[lo:hi], self.account[lo:hi],
                       [self.entities[i] for i in used.tolist()], self.entry_row[entry] - lo,
                       entity.astype(np.int64))

    def row_entities(self) -> list[list[EntityRef]]:
        """Each transaction's entity values."""
        out: list[list[EntityRef]] = [[] for _ in range(len(self))]
        for row, entity in zip(self.entry_row.tolist(), self.entry_entity.tolist(), strict=True):
            out[row].append(self.entities[entity])
        return out


def _empty(dtype: Any = np.int64) -> np.ndarray:
    return np.empty(0, dtype=dtype)


_NO_RECORDS = Records.of([])
T = TypeVar("T")


def _states(states: States) -> States:
    return states


def _nothing_to_write() -> int:
    """The status of a write with nothing to send (`RedisStore._write`'s 1: done)."""
    return 1


@dataclass(frozen=True)
class Query:
    """What to read for a batch: its distinct ``entities``, and per (transaction, paired entity value) pair
    (``pair_entity``: index into ``entities``) the transaction's time and account hash (`NO_ACCOUNT`: none), for
    the accounts first seen strictly before it and when its own account was first seen."""

    entities: Sequence[EntityRef]
    pair_entity: np.ndarray = field(default_factory=_empty)
    pair_ticks: np.ndarray = field(default_factory=_empty)
    pair_account: np.ndarray = field(default_factory=_empty)


@dataclass
class States:
    """What a store knows about a `Query`'s entity values, columnar.

    Per entity value ``i``: its kept events are ``event_start[i]:event_start[i+1]`` of ``ticks``, ``amount``,
    ``account`` and ``txn`` (hashes; in time order), and its folded aggregates ``count``, ``amount_sum``,
    ``amount_max`` (NaN: none) and ``last`` (`NO_TIME`: none). Per pair of the query: ``accounts_before``, the
    accounts first seen strictly before its time (beyond exact counting: the estimate of all accounts so far), and
    ``account_first``, when its account was first seen (`NEVER`: not yet, or no account; `NO_TIME`: beyond exact
    counting)."""

    event_start: np.ndarray
    ticks: np.ndarray
    amount: np.ndarray
    account: np.ndarray
    txn: np.ndarray
    count: np.ndarray
    amount_sum: np.ndarray
    amount_max: np.ndarray
    last: np.ndarray
    accounts_before: np.ndarray
    account_first: np.ndarray


class FeatureStore(Protocol):
    """Read entity history for a batch, then record the batch."""

    limits: StoreLimits

    def read(self, query: Query) -> States:
        """The state of each of the query's entity values and the answers for its pairs."""
        ...

    def write(self, records: Records) -> int:
        """Record the transactions not recorded before (by id); returns how many were new."""
        ...

    def read_and_write(self, query: Query, records: Records, answer: Callable[[States], T],
                       meanwhile: Callable[[], object] | None = None) -> T:
        """``answer`` of `read`, then `write` (a scored batch: its history, then itself), as one call where the
        store can, and there ``answer`` runs while the write is on its way and ``meanwhile`` (work that needs no
        history) while the read is."""
        ...


def text_hashes(texts: Sequence[str | None] | np.ndarray) -> np.ndarray:
    """64-bit hashes (int64) of texts, the same in every process and on every machine: SipHash-2-4 of their UTF-8
    bytes with a fixed key (pandas' C implementation): how stores keep accounts and transaction ids. None:
    `NO_ACCOUNT`."""
    values = np.asarray(texts, dtype=object)
    if not len(values):
        return _empty()
    missing = pd.isna(values)
    out = hash_object_array(np.where(missing, "", values) if missing.any() else values, _HASH_KEY).view(np.int64)
    out[out == NO_ACCOUNT] = 1
    out[missing] = NO_ACCOUNT
    return out


_HASH_KEY = "0123456789123456"  # pandas' default; stored hashes depend on it: never change it within a layout


def account_answers(table_entity: np.ndarray, table_account: np.ndarray, table_first: np.ndarray,
                    estimate: np.ndarray, query: Query) -> tuple[np.ndarray, np.ndarray]:
    """`States.accounts_before` and `States.account_first` of a query's pairs from the stores' accounts: rows
    (entity index, account hash, first ticks) of the entity values counted exactly, and per entity value the
    HyperLogLog ``estimate`` of those beyond exact counting (-1: counted exactly)."""
    pe, pt, pa = query.pair_entity, query.pair_ticks, query.pair_account
    n_table, n_pairs = len(table_entity), len(pe)
    if not n_pairs:
        return _empty(), _empty()
    # accounts first seen strictly before each pair's time: pairs sort before accounts of the same time
    entity = np.concatenate([table_entity, pe])
    is_table = np.concatenate([np.ones(n_table, np.int8), np.zeros(n_pairs, np.int8)])
    order = lexorder((is_table, np.concatenate([table_first, pt]), entity))
    seen = np.cumsum(order < n_table)
    entity_start = offsets(np.bincount(table_entity, minlength=len(estimate)))
    before = seen[at_of(order)[n_table:]] - entity_start[pe]
    # when each pair's account was first seen: the table row at or before it in (entity, account) order
    order = lexorder((1 - is_table, np.concatenate([table_account, pa]), entity))
    last = np.maximum.accumulate(np.where(order < n_table, np.arange(len(order)), -1))
    found = np.where(last >= 0, order[np.maximum(last, 0)], -1)[at_of(order)[n_table:]]
    hit = (found >= 0) & (pa != NO_ACCOUNT)
    hit[hit] = (table_entity[found[hit]] == pe[hit]) & (table_account[found[hit]] == pa[hit])
    first = np.full(n_pairs, NEVER)
    first[hit] = table_first[found[hit]]
    beyond = estimate[pe] >= 0
    return np.where(beyond, estimate[pe], before), np.where(beyond, NO_TIME, first)


def isin(values: np.ndarray, among: np.ndarray) -> np.ndarray:
    """`numpy.isin` of int64 arrays: through a set for the few values of a request (numpy's costs ~20 us), else by
    binary search in ``among`` sorted, the values sorted too when they are the more (a batch's transactions among
    its stored events: 0.03 ms instead of numpy's 0.3)."""
    if len(values) * len(among) <= 4096:
        present = set(among.tolist())
        return np.fromiter((v in present for v in values.tolist()), bool, len(values))
    ordered = np.sort(among)
    order = np.argsort(values) if len(values) > len(among) else None  # sorted needles: searches stay near
    probe = values if order is None else values[order]
    found = ordered[np.minimum(np.searchsorted(ordered, probe), len(ordered) - 1)] == probe
    if order is None:
        return found
    out = np.empty(len(values), dtype=bool)
    out[order] = found
    return out


def at_of(order: np.ndarray) -> np.ndarray:
    """The inverse of a permutation: where each element went."""
    out = np.empty(len(order), dtype=np.int64)
    out[order] = np.arange(len(order))
    return out


_PACKED = 1 << 62
"""Keys packed for `lexorder` stay below this."""


def lexorder(keys: Sequence[np.ndarray]) -> np.ndarray:
    """`numpy.lexsort` of integer keys (the last primary), as one stable argsort of the keys packed into one int64:
    each key less its minimum or, while their spans together do not fit, the widest by its rank among its distinct
    values (hashes). 3-4x faster than `numpy.lexsort` on a batch's events and accounts (~8,000 rows: 0.25 ms
    instead of 0.86)."""
    n = len(keys[0])
    if n < 2 or not all(np.can_cast(np.asarray(key).dtype, np.int64) for key in keys):
        return np.lexsort(keys)
    parts = [np.asarray(key, dtype=np.int64) for key in keys]
    lows = [int(part.min()) for part in parts]
    spans = [int(part.max()) - low + 1 for part, low in zip(parts, lows, strict=True)]
    unranked = set(range(len(parts)))
    while math.prod(spans) >= _PACKED:
        if not unranked:
            return np.lexsort(keys)
        i = max(unranked, key=spans.__getitem__)
        unranked.remove(i)
        distinct, parts[i] = ranked(parts[i])
        lows[i], spans[i] = 0, len(distinct)
    packed = np.zeros(n, dtype=np.int64)
    room = 1
    for part, low, span in zip(parts, lows, spans, strict=True):
        packed += (part - low) * room
        room *= span
    return np.argsort(packed, kind="stable")


def ranked(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values, sorted, and each value's rank among them (`np.unique` with ``return_inverse``,
    without its overhead on a request's few values)."""
    order = np.argsort(values)
    ordered = values[order]
    new = changes(ordered)
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.cumsum(new) - 1
    return ordered[new], rank


def changes(values: np.ndarray) -> np.ndarray:
    """Whether each value differs from the one before it (the first does)."""
    out = np.empty(len(values), dtype=bool)
    out[:1] = True
    np.not_equal(values[1:], values[:-1], out=out[1:])
    return out


def empty_states(query: Query) -> States:
    """States of a query's entity values in a store that knows none of them."""
    n = len(query.entities)
    return States(np.zeros(n + 1, dtype=np.int64), _empty(), _empty(np.float64), _empty(), _empty(),
                  np.zeros(n, dtype=np.int64), np.zeros(n), np.full(n, np.nan), np.full(n, NO_TIME),
                  np.zeros(len(query.pair_entity), dtype=np.int64), np.full(len(query.pair_entity), NEVER))


# -- in memory ----------------------------------------------------------------------------------------------
@dataclass
class _History:
    events: list[tuple[int, int, float, int]] = field(default_factory=list)  # (ticks, txn, amount, account) sorted
    count: int = 0
    amount_sum: float = 0.0
    amount_max: float = math.nan
    last: int = NO_TIME
    first_seen: dict[int, int] | None = field(default_factory=dict)  # account -> ticks; None: beyond exact_accounts
    accounts: set[int] = field(default_factory=set)

    def fold(self, events: list[tuple[int, int, float, int]]) -> None:
        for ticks, _, amount, _ in events:
            self.count += 1
            self.amount_sum += amount
            self.amount_max = amount if math.isnan(self.amount_max) else max(self.amount_max, amount)
            self.last = max(self.last, ticks)


class MemoryStore:
    """A store in this process's memory with the semantics of `RedisStore` (the reference for tests).

    Differences: nothing expires, a transaction id once recorded is never recorded again, and beyond
    ``exact_accounts`` the account count is an exact set's size where Redis has a HyperLogLog's estimate.
    """

    def __init__(self, limits: StoreLimits) -> None:
        self.limits = limits
        self._histories: dict[tuple[str, str], _History] = {}
        self._recorded: set[str] = set()

    def read(self, query: Query) -> States:
        histories = [self._histories.get(ref[:2]) for ref in query.entities]
        states = empty_states(query)
        events = [h.events if h else [] for h in histories]
        states.event_start = offsets([len(e) for e in events])
        flat = [e for es in events for e in es]
        ticks, txn, amount, account = (np.array(v) for v in zip(*flat, strict=True)) if flat else (
            _empty(), _empty(), _empty(np.float64), _empty())
        states.ticks, states.txn, states.amount, states.account = ticks, txn, amount.astype(np.float64), account
        table: list[tuple[int, int, int]] = []
        estimate = np.full(len(histories), -1, dtype=np.int64)
        for i, (ref, h) in enumerate(zip(query.entities, histories, strict=True)):
            if h is None:
                continue
            states.count[i], states.amount_sum[i], states.amount_max[i], states.last[i] = (
                h.count, h.amount_sum, h.amount_max, h.last)
            if ref.paired and h.first_seen is None:
                estimate[i] = len(h.accounts)
            elif ref.paired:
                table += [(i, account, first) for account, first in h.first_seen.items()]
        columns = np.array(table, dtype=np.int64).reshape(-1, 3).T
        states.accounts_before, states.account_first = account_answers(*columns, estimate, query)
        return states

    def read_and_write(self, query: Query, records: Records, answer: Callable[[States], T],
                       meanwhile: Callable[[], object] | None = None) -> T:
        if meanwhile is not None:
            meanwhile()
        states = self.read(query)
        self.write(records)
        return answer(states)

    def write(self, records: Records) -> int:
        applied = 0
        for txn_id, ticks, amount, txn, account, refs in zip(
                records.txn.tolist(), records.ticks.tolist(), records.amount.tolist(), records.txn_hashes.tolist(),
                records.account_hashes.tolist(), records.row_entities(), strict=True):
            if txn_id in self._recorded:
                continue
            self._recorded.add(txn_id)
            applied += 1
            entry = (ticks, txn, float(amount), account)
            for ref in refs:
                history = self._histories.setdefault(ref[:2], _History())
                insort(history.events, entry)
                self._trim(history)
                if ref.paired and account != NO_ACCOUNT:
                    self._add_account(history, account, ticks)
        return applied

    def _trim(self, history: _History) -> None:
        horizon = history.events[-1][0] - self.limits.keep_ticks
        old = sum(1 for e in history.events if e[0] < horizon)
        old = max(old, len(history.events) - self.limits.max_events)
        history.fold(history.events[:old])
        del history.events[:old]

    def _add_account(self, history: _History, account: int, ticks: int) -> None:
        if history.first_seen is None:
            history.accounts.add(account)
            return
        history.first_seen[account] = min(ticks, history.first_seen.get(account, ticks))
        if len(history.first_seen) > self.limits.exact_accounts:
            history.accounts = set(history.first_seen)
            history.first_seen = None


# -- Redis --------------------------------------------------------------------------------------------------
LAYOUT = 3
"""The version of the Redis layout: its keys are named ``{namespace}:3:...``, so a namespace written by another
layout is a new, unseeded one (the scorer seeds it from its model's snapshot, `fraudops features rebuild` adds
the prediction log)."""
_HEADER = np.dtype([("layout", "<u2"), ("flags", "<u2"), ("n_events", "<u4"), ("token", "<u8"),
                    ("n_accounts", "<u4"), ("spare", "<u4"), ("count", "<i8"), ("amount_sum", "<f8"),
                    ("amount_max", "<f8"), ("last", "<i8"), ("renew", "<i8")])
_BEYOND = 1  # header flag: the accounts are counted in the HyperLogLog
_HEADER_UNITS, _EVENT_UNITS, _ACCOUNT_UNITS = 4, 2, 1  # of 16 bytes
_TAIL_EVENTS = 32
"""Most events appended to a blob since it was last written whole: a write that would append more rewrites it."""
_APPEND_FROM = 32
"""Fewest entity values a write must touch to append to their blobs; a smaller one (the single transactions of
real-time traffic) writes them whole, so that their next reads have no tail to settle, unless it lost a race."""
_PAIR_HASH = np.int64(0x9E3779B97F4A7C1)  # odd: (value, transaction hash) pairs to one int64 (wrapping), see _settled
_ATTEMPTS = 5
"""Reads and compare-and-set writes of one batch before it gives up, when other writers keep changing its keys."""

# The write of a batch (`RedisStore._call`), after the client read the keys and merged the batch in. KEYS, every key
# it touches: the three horizons (keep_ticks, keep_seconds, retention_seconds), the seed hash and its set of applied
# chunks, the c blobs written whole, the w blobs created (absent when read), the a blobs appended to, the m markers to
# set (see `RedisStore`), then the HyperLogLogs of the entity values whose accounts are beyond exact counting.
# ARGV[1]: JSON [c, w, a, m, [keep_ticks, keep_seconds, retention_seconds], byte lengths of the c blobs and of the
# w + a tails, the c blobs' lengths when read (0: none), HyperLogLog members per HyperLogLog (in KEYS' order), seed
# guard ([source, chunk id]) or null]; ARGV[2]: per blob written whole the token it had when read (8 bytes, zeros:
# none); ARGV[3]: the new blobs, then the tails; ARGV[4]: the HyperLogLog members, 8 bytes each; ARGV[5]: the header
# of a blob created with a tail only (no folded history, no events or accounts of its own).
# Compare and set, for the blobs written whole only: nothing is written unless each still has the token and the
# length read (an append changes the length only), else the script returns the positions (1 to c) of those that
# changed (another writer came between: the client reads them again). Tails need no check: appends commute, and a
# reader dedups and folds a blob's tail (`_Blobs.decode`). A blob created is set only if still absent (else its tail
# is appended to the one another writer created); an append that finds no blob (it expired since the read) gets the
# header first. A seed guard also requires the namespace's seed to be claimed by that source and not ready, and the
# chunk not applied yet (-1 not the owner, 2 already applied). The transactions recorded that need a marker (see
# `RedisStore`) get ``:t:{hash}`` for the longest window. The horizons are the namespace's: the longest any writer has
# asked for (a challenger with shorter windows than the champion's must not fold or expire history the champion's
# windows still read). A blob written whole or created expires after the retention and an eighth more, so that the
# appends of that eighth need no EXPIRE (the client writes whole a blob whose eighth is over: its header's
# ``renew``). Keys come as KEYS, not built in the script, as Redis asks of scripts (ACL key patterns, key tracking).
# The tokens are read with MGET in chunks (one call per blob cost more). Measured on a warm server, 2,600 blobs of
# 300 bytes: layout 2's tokens' check and SET ... EX of every blob took 5.3 ms of Redis; an APPEND of 32 bytes to each,
# 1.3 ms (2.6 with an EXPIRE each). (Layout 2, replayed: the blob SETs 5.8 ms of 9.9, the tokens' check 2.7, decoding
# the arguments 1.1; WATCH instead of the tokens: 27 ms for 2,606 keys; the blobs as arguments of their own instead
# of one string: -1.4 ms in Redis, +0.8 ms in the client. Checking with EXISTS that the blobs to append to exist cost
# ~0.5 us each, more than the appends.)
_WRITE = """
local meta = cjson.decode(ARGV[1])
local c, w, a, m, lim, lengths, held_lengths, counts, guard = meta[1], meta[2], meta[3], meta[4], meta[5], meta[6],
  meta[7], meta[8], meta[9]
local tokens, blobs, members, header = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local zero = string.rep('\\0', 8)
local changed = {}
for lo = 1, c, 500 do
  local hi = math.min(lo + 499, c)
  local blobs_held = redis.call('MGET', unpack(KEYS, 5 + lo, 5 + hi))
  for i = lo, hi do
    local held = blobs_held[i - lo + 1]
    if (held and #held or 0) ~= held_lengths[i] or
       (held and string.sub(held, 9, 16) or zero) ~= string.sub(tokens, 8 * i - 7, 8 * i) then
      changed[#changed + 1] = i
    end
  end
end
if #changed > 0 then return changed end
if guard ~= cjson.null then
  local claim = redis.call('HMGET', KEYS[4], 'source', 'state')
  if claim[1] ~= guard[1] then return -1 end
  if claim[2] == 'ready' or redis.call('SADD', KEYS[5], guard[2]) == 0 then return 2 end
end
local held = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3])
local keep, window = math.max(lim[1], tonumber(held[1]) or 0), math.max(lim[2], tonumber(held[2]) or 0)
local ttl = math.max(lim[3], tonumber(held[3]) or 0)
redis.call('MSET', KEYS[1], string.format('%.17g', keep), KEYS[2], window, KEYS[3], ttl)
local life = string.format('%d', ttl + math.floor(ttl / 8))  -- once: a number is formatted at every call
window = string.format('%d', window)
local n = c + w + a
for i = 6 + n, 5 + n + m do redis.call('SET', KEYS[i], '1', 'EX', window) end
local at = 1
for i = 1, n do
  local key, bytes = KEYS[5 + i], string.sub(blobs, at, at + lengths[i] - 1)
  at = at + lengths[i]
  if i <= c then
    redis.call('SET', key, bytes, 'EX', life)
  elseif i <= c + w then
    if not redis.call('SET', key, header .. bytes, 'NX', 'EX', life) then redis.call('APPEND', key, bytes) end
  elseif redis.call('APPEND', key, bytes) == #bytes then
    redis.call('SET', key, header .. bytes, 'EX', life)
  end
end
local member = 1
for h = 1, #counts do
  local key = KEYS[5 + n + m + h]
  for j = 0, counts[h] - 1, 1000 do
    local batch = {}
    for q = j, math.min(j + 999, counts[h] - 1) do
      batch[#batch + 1] = string.sub(members, member + 8 * q, member + 8 * q + 7)
    end
    redis.call('PFADD', key, unpack(batch))
  end
  member = member + 8 * counts[h]
  redis.call('EXPIRE', key, life)
end
return 1
"""
_WRITE_SHA = hashlib.sha1(_WRITE.encode()).hexdigest()  # EVALSHA's name for it

# Lowering a namespace's coverage (`RedisStore.mark_covered`). KEYS[1]: the seed hash. ARGV: the new start (epoch
# seconds), the claim it was read under (``started``: not another seed's, after a loss), that claim's time (epoch).
_COVER = """
if redis.call('HGET', KEYS[1], 'started') ~= ARGV[2] then return 0 end
local covered = tonumber(redis.call('HGET', KEYS[1], 'covered_from')) or tonumber(ARGV[3])
if covered <= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'covered_from', ARGV[1])
return 1
"""
# Claiming a namespace's seed (`RedisStore.seed`). KEYS[1]: the seed hash (source, state, started, finished).
# ARGV: source, now. Returns {state, source}: 'claimed' when this call claimed it.
_CLAIM = """
local source = redis.call('HGET', KEYS[1], 'source')
if not source then
  redis.call('HSET', KEYS[1], 'source', ARGV[1], 'state', 'loading', 'started', ARGV[2])
  return {'claimed', ARGV[1]}
end
return {redis.call('HGET', KEYS[1], 'state'), source}
"""


@dataclass(frozen=True)
class SeedResult:
    """What `RedisStore.seed` did: ``loaded`` the snapshot (else the namespace already had history from
    ``source``), and how many entity values and transactions it wrote."""

    loaded: bool
    source: str
    entities: int = 0
    transactions: int = 0


@dataclass(frozen=True)
class _Additions:
    """What a seed chunk adds to its entity values besides events: folded aggregates (per value), accounts (rows
    of value index, account hash, first ticks), and how many accounts beyond exact counting the snapshot no longer
    names (per value: placeholders in its HyperLogLog). ``guard``: (source, chunk id), applied at most once."""

    count: np.ndarray
    amount_sum: np.ndarray
    amount_max: np.ndarray
    last: np.ndarray
    account_entity: np.ndarray
    account: np.ndarray
    account_first: np.ndarray
    placeholders: np.ndarray
    guard: tuple[str, str]


@dataclass
class _Blobs:
    """Entity values' blobs as read, decoded columnar (see `RedisStore`), their tails settled: as if written whole.
    ``length``: each blob's bytes as read (0: none); ``tail``: its events appended since it was written whole."""

    head: np.ndarray
    event_start: np.ndarray
    ticks: np.ndarray
    amount: np.ndarray
    account: np.ndarray
    txn: np.ndarray
    account_start: np.ndarray
    account_hash: np.ndarray
    account_first: np.ndarray
    length: np.ndarray
    tail: np.ndarray

    @classmethod
    def decode(cls, blobs: Sequence[bytes | None], names: Sequence[str], paired: np.ndarray, horizon: int,
               max_events: int) -> _Blobs:
        """The blobs read for the entity values ``names`` (``paired``: those whose accounts are tracked), with
        ``horizon`` and ``max_events`` to fold their tails by."""
        n = len(blobs)
        lengths = np.fromiter((0 if b is None else len(b) for b in blobs), np.int64, n)
        misfit = np.flatnonzero(lengths % 16)
        if len(misfit):
            raise _not_this_layout(names[misfit[0]])
        units = np.frombuffer(b"".join(b for b in blobs if b is not None), "<i8").reshape(-1, 2)
        base = offsets(lengths // 16)[:-1]
        present = np.flatnonzero(lengths)
        head = np.zeros(n, _HEADER)
        head["amount_max"], head["last"] = np.nan, NO_TIME
        if len(present):
            raw = units[(base[present, None] + np.arange(_HEADER_UNITS)).ravel()]
            head[present] = raw.reshape(-1, 8).view(_HEADER).ravel()
        n_events, n_accounts = head["n_events"].astype(np.int64), head["n_accounts"].astype(np.int64)
        whole = _HEADER_UNITS + _EVENT_UNITS * n_events + _ACCOUNT_UNITS * n_accounts
        extra = lengths // 16 - whole
        bad = present[(head["layout"][present] != LAYOUT) | (extra[present] < 0) | (extra[present] % _EVENT_UNITS > 0)]
        if len(bad):
            raise _not_this_layout(names[bad[0]])
        tail = np.where(lengths > 0, extra // _EVENT_UNITS, 0)
        at = _ranges(base + _HEADER_UNITS, n_events, _EVENT_UNITS)
        a_at = _ranges(base + _HEADER_UNITS + _EVENT_UNITS * n_events, n_accounts)
        event_start, from_tail = offsets(n_events + tail), None
        if tail.any():  # each value's tail after its other events
            in_tail = _ranges(event_start[:-1] + n_events, tail)
            gathered = np.empty(int(event_start[-1]), dtype=np.int64)
            gathered[_ranges(event_start[:-1], n_events)] = at
            gathered[in_tail] = _ranges(base + whole, tail, _EVENT_UNITS)
            at, from_tail = gathered, np.zeros(len(gathered), dtype=bool)
            from_tail[in_tail] = True
        blobs_read = cls(head, event_start, units[at, 0], units[at, 1].view(np.float64), units[at + 1, 0],
                         units[at + 1, 1], offsets(n_accounts), units[a_at, 0], units[a_at, 1], lengths, tail)
        return blobs_read if from_tail is None else blobs_read._settled(from_tail, paired, horizon, max_events)

    def _settled(self, from_tail: np.ndarray, paired: np.ndarray, horizon: int, max_events: int) -> _Blobs:
        """These blobs as `_merge` would have written them whole: a transaction appended twice under a value (by
        writers that raced) once, the events in time order, those beyond the horizon or the cap folded, and the
        accounts of the tails' events among the accounts (of the paired values counted exactly)."""
        n = len(self.head)
        ent, ticks, amount, account, txn = (np.repeat(np.arange(n), np.diff(self.event_start)), self.ticks, self.amount,
                                            self.account, self.txn)
        # sorting is the cost here: only when a transaction may be there twice (one sort of a hash of value and
        # transaction tells), or the tails are not in time order already (late events)
        pairs = np.sort(txn + ent * _PAIR_HASH)
        if (pairs[1:] == pairs[:-1]).any():
            order = lexorder((np.arange(len(ent)), txn, ent))
            repeated = np.zeros(len(ent), dtype=bool)
            repeated[order[1:]] = (ent[order[1:]] == ent[order[:-1]]) & (txn[order[1:]] == txn[order[:-1]])
            first = np.flatnonzero(~repeated)
            ent, ticks, amount, account, txn, from_tail = (x[first] for x in (ent, ticks, amount, account, txn,
                                                                               from_tail))
        later = ticks[1:] - ticks[:-1]
        if not ((ent[1:] > ent[:-1]) | (later > 0) | ((later == 0) & (txn[1:] > txn[:-1]))).all():
            order = lexorder((txn, ticks, ent))
            ent, ticks, amount, account, txn, from_tail = (x[order] for x in (ent, ticks, amount, account, txn,
                                                                               from_tail))
        kept = _kept(ent, ticks, n, horizon, max_events)[0]
        head = self.head.copy()
        head["count"], head["amount_sum"], head["amount_max"], head["last"] = _folded(head, ent, ticks, amount, ~kept)
        counted = paired & ((head["flags"] & _BEYOND) == 0)
        seen = from_tail & counted[ent] & (account != NO_ACCOUNT)
        account_start, a_hash, a_first = self.account_start, self.account_hash, self.account_first
        if seen.any():
            a_owner = np.repeat(np.arange(n), np.diff(self.account_start))
            a_ent, a_hash, a_first = _first_sightings([(a_owner, a_hash, a_first),
                                                       (ent[seen], account[seen], ticks[seen])])
            account_start = offsets(np.bincount(a_ent, minlength=n))
        return _Blobs(head, offsets(np.bincount(ent[kept], minlength=n)), ticks[kept], amount[kept], account[kept],
                      txn[kept], account_start, a_hash, a_first, self.length, self.tail)

    def states(self, query: Query, estimate: np.ndarray) -> States:
        """The `States` of the query's entity values, the first of these blobs."""
        q = len(query.entities)
        e, a = self.event_start[q], self.account_start[q]
        head = self.head[:q]
        table_entity = np.repeat(np.arange(q), np.diff(self.account_start[:q + 1]))
        before, first = account_answers(table_entity, self.account_hash[:a], self.account_first[:a], estimate, query)
        return States(self.event_start[:q + 1], self.ticks[:e], self.amount[:e], self.account[:e], self.txn[:e],
                      head["count"].astype(np.int64), head["amount_sum"].astype(np.float64),
                      head["amount_max"].astype(np.float64), head["last"].astype(np.int64), before, first)


def _not_this_layout(name: str) -> StoreUnavailable:
    """The refusal of an entity value's blob that this layout cannot read."""
    return StoreUnavailable(f"feature store entity value {name!r} is not a layout-{LAYOUT} blob (written by another "
                            "version?)", answered=True)


def _kept(ent: np.ndarray, ticks: np.ndarray, n: int, horizon: int, max_events: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """Which events (sorted by value ``ent`` < ``n``, then time) a value keeps: those within ``horizon`` ticks of its
    newest and among its newest ``max_events``; the others are folded. Also each event's value's newest time."""
    start = offsets(np.bincount(ent, minlength=n))
    newest = np.full(n, NO_TIME)
    nonempty = start[1:] > start[:-1]
    newest[nonempty] = ticks[start[1:][nonempty] - 1]
    newest_of = newest[ent]
    return (ticks >= newest_of - horizon) & (start[ent + 1] - 1 - np.arange(len(ent)) < max_events), newest_of


def _folded(head: np.ndarray, ent: np.ndarray, ticks: np.ndarray, amount: np.ndarray, folded: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The folded aggregates (count, amount sum and max, last) of the values of ``head`` (`_HEADER` rows) with the
    ``folded`` events (of values ``ent``) added."""
    n = len(head)
    count = head["count"].astype(np.int64) + np.bincount(ent[folded], minlength=n)
    amount_sum = head["amount_sum"].astype(np.float64) + np.bincount(ent[folded], weights=amount[folded], minlength=n)
    amount_max, last = head["amount_max"].astype(np.float64), head["last"].astype(np.int64)
    if folded.any():
        folded_max = np.full(n, -np.inf)
        np.maximum.at(folded_max, ent[folded], amount[folded])
        amount_max = np.fmax(amount_max, np.where(np.isneginf(folded_max), np.nan, folded_max))
        np.maximum.at(last, ent[folded], ticks[folded])
    return count, amount_sum, amount_max, last


def _first_sightings(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (value, account hash, ticks) of the parts, sorted by value and account, each account of a value once
    with the earliest time it was seen."""
    a_ent, a_hash, a_first = (np.concatenate(p) for p in zip(*parts, strict=True))
    order = lexorder((a_first, a_hash, a_ent))
    a_ent, a_hash, a_first = a_ent[order], a_hash[order], a_first[order]
    firsts = np.ones(len(a_ent), dtype=bool)
    firsts[1:] = (a_ent[1:] != a_ent[:-1]) | (a_hash[1:] != a_hash[:-1])
    return a_ent[firsts], a_hash[firsts], a_first[firsts]


@dataclass(frozen=True)
class _NewEvents:
    """The batch's events to add: per (transaction, entity value) pair (``entity``: blob index)."""

    entity: np.ndarray
    ticks: np.ndarray
    amount: np.ndarray
    account: np.ndarray
    txn: np.ndarray


@dataclass(frozen=True)
class _Clock:
    """Redis's clock at the read (``now``, epoch seconds) and when a blob written whole now must be written whole
    again to renew its expiry (``renew``: ``now`` plus an eighth of the retention, see `_WRITE`)."""

    now: int
    renew: int


@dataclass(frozen=True)
class _Merged:
    """What a write sends: the blob indices it writes, the first ``rewritten`` whole, the next ``created`` (absent
    when read) and the others appended to; their bytes (the new blobs, then the tails), the ``header`` of a blob
    created with a tail only, and the HyperLogLog members of the values beyond exact counting (``hll``:
    their blob indices; ``member_counts``: how many members each). ``kept_new``: the hashes of the batch's
    transactions among the kept events (sorted), which need no marker. ``folded_early``: the hashes of stored
    transactions folded while their retries must still count once (by the ``max_events`` cap, or within the longest
    window of the wall clock: behind a neighbour dated ahead of it), which get a marker."""

    touched: np.ndarray
    rewritten: int
    created: int
    blobs: bytes
    header: bytes
    lengths: list[int]
    members: bytes
    member_counts: list[int]
    hll: np.ndarray
    kept_new: np.ndarray
    folded_early: np.ndarray


def _merge_fresh(old: _Blobs, paired: np.ndarray, records: Records, owner: np.ndarray, fresh: np.ndarray,
                 adds: _Additions | None, keep_ticks: int, limits: StoreLimits, clock: _Clock, whole_below: int
                 ) -> _Merged | None:
    """`_merge` of the ``fresh`` transactions of ``records`` (entries under the blob indices ``owner``) into
    ``old`` (None: nothing to write)."""
    take = fresh[records.entry_row]
    rows = records.entry_row[take]
    new = _NewEvents(owner[take], records.ticks[rows], records.amount[rows], records.account_hashes[rows],
                     records.txn_hashes[rows])
    if not len(new.entity) and adds is None:
        return None
    return _merge(old, paired, new, adds, keep_ticks, limits, secrets.randbits(63) | 1,
                  time.time_ns() // (1_000_000_000 // TICKS_PER_SECOND), clock, whole_below)


def _merge(old: _Blobs, paired: np.ndarray, new: _NewEvents, adds: _Additions | None, keep_ticks: int,
           limits: StoreLimits, token: int, now: int, clock: _Clock, whole_below: int) -> _Merged:
    """The writes of the entity values the batch changes: old and new events merged in time order, those beyond
    the horizon (newest - ``keep_ticks``) or the ``max_events`` cap folded, accounts merged (first sight kept), and
    the values beyond ``exact_accounts`` moved to their HyperLogLog. A value's new events are appended to its blob
    (to a header of no history when it has none) unless the write touches fewer than ``whole_below`` values, its
    tail would pass `_TAIL_EVENTS`, its expiry is due for renewal (``clock``), its accounts go beyond exact counting
    now, or a seed adds to it: then its blob is written whole. Blobs written whole or created get ``token``. ``now``:
    the wall clock in ticks, for which stored events fold early (see `_Merged.folded_early`)."""
    n = len(old.head)
    touched_mask = np.zeros(n, dtype=bool)
    touched_mask[new.entity] = True
    if adds is not None:
        touched_mask[:] = True
    touched = np.flatnonzero(touched_mask)
    code = np.full(n, -1, dtype=np.int64)
    code[touched] = np.arange(len(touched))
    t = len(touched)
    # events, sorted by (value, time, transaction)
    owner = np.repeat(np.arange(n), np.diff(old.event_start))
    sel = touched_mask[owner]
    ent = np.concatenate([code[owner[sel]], code[new.entity]])
    ticks = np.concatenate([old.ticks[sel], new.ticks])
    amount = np.concatenate([old.amount[sel], new.amount])
    account = np.concatenate([old.account[sel], new.account])
    txn = np.concatenate([old.txn[sel], new.txn])
    order = lexorder((txn, ticks, ent))
    ent, ticks, amount, account, txn = ent[order], ticks[order], amount[order], account[order], txn[order]
    is_new = order >= len(order) - len(new.txn)
    kept, newest = _kept(ent, ticks, t, keep_ticks, limits.max_events)
    folded = ~kept
    kept_new = np.unique(txn[kept & is_new])
    early = folded & ~is_new & ((ticks >= newest - keep_ticks) | (ticks > now - keep_ticks))
    head = old.head[touched]
    count, amount_sum, amount_max, last = _folded(head, ent, ticks, amount, folded)
    if adds is not None:
        count += adds.count
        amount_sum += adds.amount_sum
        amount_max = np.fmax(amount_max, adds.amount_max)
        last = np.maximum(last, adds.last)
    # accounts: the old ones, the paired values' new events', a seed's
    a_owner = np.repeat(np.arange(n), np.diff(old.account_start))
    a_sel = touched_mask[a_owner]
    seen = paired[new.entity] & (new.account != NO_ACCOUNT)
    parts = [(code[a_owner[a_sel]], old.account_hash[a_sel], old.account_first[a_sel]),
             (code[new.entity[seen]], new.account[seen], new.ticks[seen])]
    placeholders = np.zeros(t, dtype=np.int64)
    if adds is not None:
        parts.append((code[adds.account_entity], adds.account, adds.account_first))
        placeholders = adds.placeholders[touched]
    a_ent, a_hash, a_first = _first_sightings(parts)
    was_beyond = (head["flags"] & _BEYOND) > 0
    beyond = was_beyond | (np.bincount(a_ent, minlength=t) > limits.exact_accounts) | (placeholders > 0)
    in_blob = ~beyond[a_ent]
    # HyperLogLog members: the accounts not in a blob (all of a value going beyond now: its blob's accounts are
    # among them; a value beyond before keeps none in its blob, so only its new ones)
    m_ent, m_hash = a_ent[~in_blob], a_hash[~in_blob]
    if placeholders.any():
        p_ent = np.repeat(np.arange(t), placeholders)
        p_names = [f"\0seed:{j}" for k in placeholders.tolist() for j in range(k)]
        m_ent, m_hash = np.concatenate([m_ent, p_ent]), np.concatenate([m_hash, text_hashes(p_names)])
        order = np.argsort(m_ent, kind="stable")
        m_ent, m_hash = m_ent[order], m_hash[order]
    a_ent, a_hash, a_first = a_ent[in_blob], a_hash[in_blob], a_first[in_blob]
    # whole blobs (header, kept events, accounts) or tails (the new events), in 16-byte units
    n_events = np.bincount(ent[kept], minlength=t)
    n_accounts = np.bincount(a_ent, minlength=t)
    n_new = np.bincount(ent[is_new], minlength=t)
    present = old.length[touched] > 0
    rewrite = (beyond & ~was_beyond) | (adds is not None) | (t < whole_below) | present & (
        (old.tail[touched] + n_new > _TAIL_EVENTS) | (head["renew"] < clock.now))
    units = np.where(rewrite, _HEADER_UNITS + _EVENT_UNITS * n_events + _ACCOUNT_UNITS * n_accounts,
                     _EVENT_UNITS * n_new)
    whole, tails = np.flatnonzero(rewrite), np.flatnonzero(~rewrite)
    created = np.flatnonzero(~rewrite & ~present)
    slots = np.concatenate([whole, created, np.flatnonzero(~rewrite & present)])  # the order written
    base = offsets(units[slots])
    at_value = np.empty(t, dtype=np.int64)
    at_value[slots] = base[:-1]
    out = np.zeros((int(base[-1]), 2), dtype="<i8")
    header = np.zeros(len(whole), _HEADER)
    header["layout"], header["flags"], header["token"] = LAYOUT, np.where(beyond[whole], _BEYOND, 0), token
    header["n_events"], header["n_accounts"], header["renew"] = n_events[whole], n_accounts[whole], clock.renew
    header["count"], header["amount_sum"] = count[whole], amount_sum[whole]
    header["amount_max"], header["last"] = amount_max[whole], last[whole]
    out[(at_value[whole, None] + np.arange(_HEADER_UNITS)).ravel()] = header.view("<i8").reshape(-1, 2)
    written = kept & rewrite[ent]  # events and accounts are sorted by value
    at = _ranges(at_value[whole] + _HEADER_UNITS, n_events[whole], _EVENT_UNITS)
    appended = is_new & ~rewrite[ent]
    at = np.concatenate([at, _ranges(at_value[tails], n_new[tails], _EVENT_UNITS)])
    events = np.concatenate([np.flatnonzero(written), np.flatnonzero(appended)])
    out[at, 0], out[at, 1] = ticks[events], amount[events].view("<i8")
    out[at + 1, 0], out[at + 1, 1] = account[events], txn[events]
    listed = rewrite[a_ent]
    at = _ranges(at_value[whole] + _HEADER_UNITS + _EVENT_UNITS * n_events[whole], n_accounts[whole])
    out[at, 0], out[at, 1] = a_hash[listed], a_first[listed]
    empty = np.zeros(int(len(created) > 0), _HEADER)  # of a value without history, for those created
    empty["layout"], empty["token"], empty["renew"] = LAYOUT, token, clock.renew
    empty["amount_max"], empty["last"] = np.nan, NO_TIME
    return _Merged(touched[slots], len(whole), len(created), out.tobytes(), empty.tobytes(),
                   (units[slots] * 16).tolist(),
                   m_hash.astype("<i8").tobytes(), np.bincount(m_ent, minlength=t)[beyond].tolist(), touched[beyond],
                   kept_new, np.unique(txn[early]))


class _Read(NamedTuple):
    """What a read learnt besides the blobs: the namespace's horizon (ticks) and retention (seconds; 0: none yet),
    Redis's clock (epoch seconds), and which of the batch's transactions are marked."""

    keep_ticks: int
    retention_seconds: int
    now: int
    marked: np.ndarray


class RedisStore:
    """The shared online store: Redis 7+ (tested with Debian's 7.0), standalone or with replicas, not Redis
    Cluster (one call reads and one script writes the keys of many entities, which span hash slots).

    Layout 3 (`LAYOUT`), all keys under ``{namespace}:3``: per entity value one binary string ``:e:{column}:{value}``
    (a 64-byte header with the folded aggregates, then the kept events, 32 bytes each, in time order, then the
    accounts counted exactly, 16 bytes each, then a tail: the events appended since, at most `_TAIL_EVENTS`, in the
    order written; little-endian, see `_HEADER`), beyond ``exact_accounts`` a HyperLogLog ``:h:{column}:{value}``
    of account hashes; both expire ``retention_seconds`` after the value's last write, or up to an eighth later.
    ``:keep_ticks``, ``:keep_seconds`` and ``:retention_seconds`` hold the longest horizon and retention any writer
    has used, and every write uses those: models with different windows share the namespace without one folding
    away what the other's windows read. ``:seed`` marks the namespace's history and ``:ready`` its end (`seed`).

    A read is one MGET (the ready marker, the horizon and retention, the batch's blobs, the batch's transaction
    markers) and Redis's clock, decoded and answered in numpy; a blob's tail is settled as it is decoded: in time
    order, a transaction appended twice (by writers that raced) once, the events beyond the horizon or the cap
    folded, exactly as if the blob had been written whole. A write reads the same way, merges the batch into the
    blobs in numpy (`_merge`), then sends one script call (`_WRITE`): a value's new events are appended to its blob
    (created with a header of no history if it has none), and a blob is written whole, compared and set, only when
    its tail is full, its expiry due for renewal, its accounts go beyond exact counting, or a seed adds to it. Appends
    commute, so writers recording the same values at once need no second read; when a blob written whole was changed
    by another writer in between, the write reads it again and merges again (at most `_ATTEMPTS` times). While Redis
    runs the script, the caller's ``answer`` runs on the states read (the scorer's features and scores): a batch of
    1,000 scored in-process with the store took 33 ms instead of 45 (~11 ms of Redis's work overlapped).

    Retries: a transaction is recorded when it is not among the events its entity values keep and has no marker
    (``:t:{hash}``, expiring after the longest window). `write` (a rebuild's or a seed's replay) marks every
    transaction it records, so that running it again counts nothing twice. A scored batch (`read_and_write`) marks
    only the transactions none of whose events it keeps (late for all their values), and the stored transactions its
    merge folds while their retries may still come: by the ``max_events``
    cap, or dated within the longest window of the wall clock (behind a neighbour dated ahead of it; times in
    relative seconds, such as IEEE-CIS's ``TransactionDT``, are never near the clock, so only the cap's). So a scored
    transaction dated d before it was scored counts once for its retries during at least the longest window minus d;
    one dated more than the longest window before the clock (a scored backfill), while its events are kept. A retry
    is found among the events of the values it names: one naming other values than the original only by a marker.
    A marker is a key of its own with its expiry: one per scored transaction was a third of Redis's memory and a
    quarter of its time a batch on synthetic traffic. Two writers recording one transaction at once (a retry sent to
    two replicas) both append it; readers count it once.

    Any Redis error (timeout, connection, out of memory, a refusal) raises `StoreUnavailable`, without retries; a
    write that timed out may still have been applied, and retrying it is safe (idempotent).

    Timeouts: ``timeout_s`` bounds each connect, send and reply; a batch's reply is waited for ``key_timeout_s`` more
    per entity value it reads or writes, so that a large batch's legitimate work is not taken for a slow store.
    Threads take turns: one batch call at a time per store, on one connection (Redis runs commands one after
    another anyway, and a connection opened while it runs a long one would wait for its handshake longer than
    ``timeout_s``: measured on the kind cluster, four batches of 1,000 in flight). A call waits for its turn at most
    ``timeout_s`` plus ``key_timeout_s`` per entity value of the calls queued ahead of it (the lock is not strictly
    first come, first served).
    """

    def __init__(self, client: redis.Redis, limits: StoreLimits, namespace: str = "fraudops",
                 require_history: bool = False, *, timeout_s: float, key_timeout_s: float = 0.0) -> None:
        if not namespace or ":" in namespace:
            raise ValueError(f"store namespace must be a non-empty name without ':', got {namespace!r}")
        if not timeout_s > 0:
            raise ValueError(f"feature store timeout must be > 0 seconds, got {timeout_s!r}")
        if not key_timeout_s >= 0:
            raise ValueError(f"feature store timeout per entity value must be >= 0 seconds, got {key_timeout_s!r}")
        self.client = client
        self.limits = limits
        self.namespace = namespace
        self.require_history = require_history
        """Reads fail (`StoreUnavailable`) unless the namespace's seed is ready: the scorer's reads, so that a
        store restarted empty is a flagged fallback, not features of brand-new entities."""
        self.timeout_s = timeout_s
        self.key_timeout_s = key_timeout_s
        self._prefix = f"{namespace}:{LAYOUT}"
        self._turn = threading.Lock()  # held by the batch call on the wire
        self._queued = 0  # entity values of the batch calls on the wire or waiting for their turn
        self._queue_lock = threading.Lock()
        self._races = 0
        self._unfindable = 0

    @classmethod
    def from_url(cls, url: str, limits: StoreLimits, *, timeout_s: float = 0.05, key_timeout_s: float = 0.0,
                 namespace: str = "fraudops", require_history: bool = False) -> RedisStore:
        """A store at a ``redis://`` URL; a call fails with `StoreUnavailable` after ``timeout_s`` (each connect,
        send and reply), plus ``key_timeout_s`` per entity value for a batch's reply."""
        if not url.startswith(("redis://", "rediss://", "unix://")):
            scheme = url.split("://", 1)[0] + "://" if "://" in url else "no scheme"
            raise ValueError(f"feature store URL must start with redis://, rediss:// or unix://, got {scheme} (the "
                             "rest of the URL is not shown: it may hold the password)")
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                      retry=Retry(NoBackoff(), 0))
        return cls(client, limits, namespace, require_history, timeout_s=timeout_s, key_timeout_s=key_timeout_s)

    def key(self, kind: str, ref: EntityRef) -> str:
        """The name of an entity value's key: ``kind`` e (its blob) or h (its HyperLogLog)."""
        return f"{self._prefix}:{kind}:{self._suffix(ref)}"

    def read(self, query: Query) -> States:
        return self._call(query, _NO_RECORDS, "read", _states)[0] if len(query.entities) else empty_states(query)

    def read_and_write(self, query: Query, records: Records, answer: Callable[[States], T],
                       meanwhile: Callable[[], object] | None = None) -> T:
        """The read, then the write of the records (none when the read fails); ``meanwhile`` runs while the read's
        MGET is on its way, ``answer`` of the states read while the write's script call is (again on the states read
        again, if the write lost a race)."""
        return self._call(query, records, "read and write", answer, meanwhile=meanwhile)[0]

    def write(self, records: Records, findable_only: np.ndarray | None = None) -> int:
        """Record the transactions not recorded before; returns how many were new. ``findable_only`` (per
        transaction; a rebuild's replay of those the scorers recorded): record such a transaction only if one of its
        entity values keeps its event, where a later replay finds it (see `take_unfindable`)."""
        return self._call(None, records, "write", findable_only=findable_only)[1] if len(records) else 0

    def _call(self, query: Query | None, records: Records, what: str, answer: Callable[[States], T] | None = None,
              adds: _Additions | None = None, refs: Sequence[EntityRef] = (), findable_only: np.ndarray | None = None,
              meanwhile: Callable[[], object] | None = None) -> tuple[T | None, int]:
        """Read the query's and the records' entity values (or ``refs``, a seed chunk's), answer the query, record
        the new records (and a seed chunk's ``adds``). Returns ``answer`` of the query's states and how many records
        were new (a seed chunk: 1 applied, 0 applied before, -1 not this seed's owner)."""
        refs = list(query.entities if query is not None else refs)
        if query is not None and records.entities is query.entities:  # a scored batch: the same values
            owner = records.entry_entity
        else:
            index = {ref[:2]: i for i, ref in enumerate(refs)}
            at = np.empty(len(records.entities), dtype=np.int64)
            for j, ref in enumerate(records.entities):
                i = index.get(ref[:2])
                if i is None:
                    i = index[ref[:2]] = len(refs)
                    refs.append(ref)
                at[j] = i
            owner = at[records.entry_entity]
        with self._queue_lock:
            ahead = self._queued
            self._queued += len(refs)
        try:
            if not self._turn.acquire(timeout=self.timeout_s + self.key_timeout_s * ahead):
                raise StoreUnavailable(f"feature store {what} failed: the calls ahead of it ({ahead} entity values) "
                                       "took longer than their allowance")
            try:
                with _unavailable(what):
                    return self._exchange(query, records, owner, refs, adds, what, answer, findable_only, meanwhile)
            finally:
                self._turn.release()
        finally:
            with self._queue_lock:
                self._queued -= len(refs)

    def _exchange(self, query: Query | None, records: Records, owner: np.ndarray, refs: list[EntityRef],
                  adds: _Additions | None, what: str, answer: Callable[[States], T] | None,
                  findable_only: np.ndarray | None = None, meanwhile: Callable[[], object] | None = None
                  ) -> tuple[T | None, int]:
        names = [self._suffix(ref) for ref in refs]
        blob_keys = [f"{self._prefix}:e:{name}" for name in names]  # read, and written for the touched ones
        timeout = self.timeout_s + self.key_timeout_s * len(refs)
        txn = records.txn_hashes
        paired = np.array([ref.paired for ref in refs], dtype=bool)
        markers = self._markers(txn)
        first_of_id = np.zeros(len(records), dtype=bool)  # a transaction id repeated in the batch counts once
        first_of_id[np.unique(txn, return_index=True)[1]] = True
        conn = self.client.connection_pool.get_connection()
        try:
            raw, read = self._read(conn, blob_keys, markers, query is not None and self.require_history, timeout,
                                   what, meanwhile)
            whole_below = _APPEND_FROM
            for _ in range(_ATTEMPTS):
                horizon = max(read.keep_ticks, self.limits.keep_ticks)
                old = _Blobs.decode(raw, names, paired, horizon, self.limits.max_events)
                estimate = self._estimates(conn, old, query, paired, names, timeout) if query is not None else None
                fresh = first_of_id & ~read.marked & ~isin(txn, old.txn)  # not among the events its values keep
                retention = max(read.retention_seconds, self.limits.retention_seconds)
                clock = _Clock(read.now, read.now + retention // 8)
                merged, unfindable = _merge_fresh(old, paired, records, owner, fresh, adds, horizon, self.limits,
                                                  clock, whole_below), 0
                if merged is not None and findable_only is not None:  # again without those a replay cannot find
                    left_out = fresh & findable_only & ~isin(txn, merged.kept_new)
                    if left_out.any():
                        fresh, unfindable = fresh & ~left_out, int(left_out.sum())
                        merged = _merge_fresh(old, paired, records, owner, fresh, adds, horizon, self.limits, clock,
                                              whole_below)
                written: Callable[[], int | list[int]] = _nothing_to_write
                if merged is not None:
                    marking = fresh if query is None else fresh & ~isin(txn, merged.kept_new)  # see the class
                    written = self._write(conn, merged, old, blob_keys, names, adds,
                                          [markers[i] for i in np.flatnonzero(marking).tolist()]
                                          + self._markers(merged.folded_early), timeout)
                try:  # the answer from the blobs this write replaces, while Redis runs the script
                    result = answer(old.states(query, estimate)) if query is not None and answer is not None else None
                finally:  # read the reply whatever happened, so that the connection stays in step
                    status = written()
                if not isinstance(status, list):
                    if unfindable:
                        with self._queue_lock:
                            self._unfindable += unfindable
                    return result, (status if adds is not None else int(fresh.sum()))
                with self._queue_lock:
                    self._races += 1
                whole_below = 0  # a small write that lost a race appends what it can: appends do not race
                changed = merged.touched[np.asarray(status) - 1].tolist()  # read again only what changed
                again, read = self._read(conn, [blob_keys[i] for i in changed], markers,
                                         query is not None and self.require_history, timeout, what)
                for i, blob in zip(changed, again, strict=True):
                    raw[i] = blob
            raise StoreUnavailable(f"feature store {what} failed: other writers changed the batch's entity values "
                                   f"{_ATTEMPTS} times in a row", answered=True)
        finally:
            self.client.connection_pool.release(conn)

    def _markers(self, txn_hashes: np.ndarray) -> list[str]:
        """Marker keys of transactions, by the hashes of their ids (see the class)."""
        return [f"{self._prefix}:t:{value}" for value in txn_hashes.tolist()]

    def take_unfindable(self) -> int:
        """Transactions `write` left out since the last call, because with ``findable_only`` none of their entity
        values would keep their events."""
        with self._queue_lock:
            unfindable, self._unfindable = self._unfindable, 0
        return unfindable

    def take_races(self) -> int:
        """Writes that lost the compare-and-set race to another writer (and read and merged again) since the last
        call."""
        with self._queue_lock:
            races, self._races = self._races, 0
        return races

    def _read(self, conn: Any, blob_keys: list[str], markers: list[str], require_history: bool, timeout: float,
              what: str, meanwhile: Callable[[], object] | None = None) -> tuple[list[bytes | None], _Read]:
        """One MGET (more for a batch beyond 10,000 keys) and Redis's clock: whether the seed is ready (NOHISTORY
        unless it is, when required), the namespace's horizon and retention, the blobs at ``blob_keys``, and which
        transactions are marked (``markers``, one per transaction). ``meanwhile`` runs before the reply is read."""
        p = self._prefix
        keys = [f"{p}:ready", f"{p}:keep_ticks", f"{p}:retention_seconds", *blob_keys, *markers]
        commands: list[tuple[Any, ...]] = [("MGET", *keys[i:i + 10_000]) for i in range(0, len(keys), 10_000)]
        commands.append(("TIME",))
        self._send(conn, commands)
        try:
            if meanwhile is not None:
                meanwhile()
        finally:  # read the replies whatever happened, so that the connection stays in step
            *replies, clock = self._receive(conn, len(commands), timeout)
        values = [value for reply in replies for value in reply]
        if require_history and values[0] is None:
            raise StoreUnavailable(f"feature store {what} failed: NOHISTORY the namespace has no history (not "
                                   "seeded yet, or the store restarted empty)", answered=True)
        marked = np.fromiter((value is not None for value in values[3 + len(blob_keys):]), bool, len(markers))
        return values[3:3 + len(blob_keys)], _Read(int(float(values[1] or 0)), int(values[2] or 0), int(clock[0]),
                                                   marked)

    def _estimates(self, conn: Any, old: _Blobs, query: Query, paired: np.ndarray, names: list[str],
                   timeout: float) -> np.ndarray:
        """Per queried value: its HyperLogLog's estimate when its accounts are beyond exact counting, else -1 (a
        second round trip, only for such values)."""
        q = len(query.entities)
        estimate = np.full(q, -1, dtype=np.int64)
        beyond = np.flatnonzero(paired[:q] & ((old.head["flags"][:q] & _BEYOND) > 0))
        if len(beyond):
            counts = self._round_trip(conn, [("PFCOUNT", f"{self._prefix}:h:{names[i]}") for i in beyond], timeout)
            estimate[beyond] = counts
        return estimate

    def _write(self, conn: Any, merged: _Merged, old: _Blobs, blob_keys: list[str], names: list[str],
               adds: _Additions | None, markers: list[str], timeout: float) -> Callable[[], int | list[int]]:
        """Send the compare-and-set script call (`_WRITE`) for the blobs ``merged`` writes (of ``old``, read at
        ``blob_keys``, of the entity values ``names``) and the transactions' ``markers``; returns the wait for its
        reply: 1 written, or the positions (1-based, in ``merged.touched``) of the blobs another writer changed in
        between (see the script for a seed chunk's -1 and 2)."""
        p = self._prefix
        whole = merged.touched[:merged.rewritten]
        keys = [f"{p}:keep_ticks", f"{p}:keep_seconds", f"{p}:retention_seconds", f"{p}:seed", f"{p}:seed:done",
                *(blob_keys[i] for i in merged.touched.tolist()), *markers,
                *(f"{p}:h:{names[i]}" for i in merged.hll.tolist())]
        meta = pydantic_core.to_json([merged.rewritten, merged.created,  # Rust's JSON: 4x json.dumps on the lengths
                                      len(merged.touched) - merged.rewritten - merged.created, len(markers),
                                      [self.limits.keep_ticks, self.limits.keep_seconds,
                                       self.limits.retention_seconds],
                                      merged.lengths, old.length[whole].tolist(), merged.member_counts,
                                      list(adds.guard) if adds else None])
        command = ("EVALSHA", _WRITE_SHA, len(keys), *keys, meta, old.head["token"][whole].astype("<u8").tobytes(),
                   merged.blobs, merged.members, merged.header)
        RedisStore._send(conn, [command])

        def status() -> int | list[int]:
            try:
                (reply,) = self._receive(conn, 1, timeout)
            except redis.exceptions.NoScriptError:  # a new or restarted server: load the script (same SHA), retry
                self._round_trip(conn, [("SCRIPT", "LOAD", _WRITE)], timeout)
                (reply,) = self._round_trip(conn, [command], timeout)
            return reply if isinstance(reply, list) else int(reply)

        return status

    @staticmethod
    def _round_trip(conn: Any, commands: list[tuple[Any, ...]], timeout: float) -> list[Any]:
        """Send the commands at once, then read every reply (`_receive`)."""
        RedisStore._send(conn, commands)
        return RedisStore._receive(conn, len(commands), timeout)

    @staticmethod
    def _send(conn: Any, commands: list[tuple[Any, ...]]) -> None:
        conn.send_packed_command([hiredis.pack_command(command) for command in commands])  # redis-py's own packing
        # checks every argument in Python: ~1 us each, and a batch of 1,000 transactions sends ~7,000 keys

    @staticmethod
    def _receive(conn: Any, count: int, timeout: float) -> list[Any]:
        """The replies of ``count`` commands sent, each within ``timeout`` s (the client's own calls have one socket
        timeout for every command). A timed-out connection is closed, never reused; an error reply is raised once
        every reply was read, so the connection stays in step."""
        replies, error = [], None
        for _ in range(count):
            try:
                replies.append(conn.read_response(timeout=timeout))
            except redis.exceptions.ResponseError as exc:
                replies.append(None)
                error = error or exc
        if error is not None:
            raise error
        return replies

    @staticmethod
    def _suffix(ref: EntityRef) -> str:
        if ":" in ref.column:
            raise ValueError(f"entity column names must not contain ':' in the feature store, got {ref.column!r}")
        return f"{ref.column}:{ref.key}"

    # -- seeding ------------------------------------------------------------------------------------------------
    def seed(self, snapshot: SnapshotStore, source: str, chunk: int = 2000) -> SeedResult:
        """Load a frozen snapshot (the entity history at a training table's end) into this namespace if it has
        none yet, so that a new store continues the training table's windows and all-history counts instead of
        starting cold.

        The namespace's history is its seed marker ``{ns}:3:seed`` (a hash: ``source``, ``state`` loading or
        ready, ``started``, ``finished``; once ready, also the string ``{ns}:3:ready``, which reads check), claimed
        by the first loader: a namespace seeded by another source
        (another model's snapshot, ``log`` for a rebuild) is left as it is. Idempotent and resumable: each chunk of
        folded aggregates and accounts is applied at most once (its id joins ``{ns}:3:seed:done`` in the same
        compare-and-set call), the kept events go through `write` (idempotent by transaction id), so a loader that
        died half-way, or two replicas loading at once, end with the snapshot loaded once. Transactions recorded
        meanwhile add up with it. Approximate: an entity the snapshot counted beyond ``exact_accounts`` accounts
        gets placeholders in its HyperLogLog for the accounts the snapshot no longer names, so those of them that
        are also among the snapshot's kept events, or are seen again later, count twice."""
        seed_key = f"{self._prefix}:seed"
        with _unavailable("seeding"):
            state, owner = (v.decode() for v in self.client.eval(_CLAIM, 1, seed_key, source, _now()))
        if owner != source or state == "ready":
            return SeedResult(False, owner)
        entities = 0
        for column, frozen in snapshot.columns.items():
            for start in range(0, len(frozen.keys), chunk):
                entities += self._seed_chunk(snapshot, column, start, min(start + chunk, len(frozen.keys)), source)
        records = snapshot.records()
        for start in range(0, len(records), chunk):
            self.write(records.take(start, start + chunk))
        self.mark_ready(source)
        return SeedResult(True, source, entities, len(records))

    def mark_ready(self, source: str) -> None:
        """Mark the namespace's seed ready (its history loaded from ``source``): reads that require history pass."""
        with _unavailable("seeding"):
            self.client.pipeline(transaction=True).hset(
                f"{self._prefix}:seed", mapping={"source": source, "state": "ready", "finished": _now()}).set(
                f"{self._prefix}:ready", source).delete(f"{self._prefix}:seed:done").execute()

    def _seed_chunk(self, snapshot: SnapshotStore, column: str, lo: int, hi: int, source: str) -> int:
        frozen = snapshot.columns[column]
        paired = frozen.account_start is not None
        refs = [EntityRef(column, str(key), paired) for key in frozen.keys[lo:hi].tolist()]
        n = hi - lo
        account_entity, account, first, placeholders = _empty(), _empty(), _empty(), np.zeros(n, dtype=np.int64)
        if paired:
            assert frozen.account_start is not None and frozen.account_code is not None
            assert frozen.account_first is not None and frozen.accounts_exact is not None
            assert frozen.account_total is not None
            a_lo, a_hi = int(frozen.account_start[lo]), int(frozen.account_start[hi])
            account_entity = np.repeat(np.arange(n), np.diff(frozen.account_start[lo:hi + 1]))
            account = snapshot.account_hashes[frozen.account_code[a_lo:a_hi]]
            first = frozen.account_first[a_lo:a_hi]
            placeholders = np.where(frozen.accounts_exact[lo:hi], 0, frozen.account_total[lo:hi])
        count = frozen.count[lo:hi].astype(np.int64)
        adds = _Additions(count, frozen.amount_sum[lo:hi].astype(np.float64),
                          np.where(count > 0, frozen.amount_max[lo:hi], np.nan),
                          np.where(count > 0, frozen.last[lo:hi], NO_TIME), account_entity, account, first,
                          placeholders, (source, f"{column}:{lo}"))
        status = self._call(None, _NO_RECORDS, "seeding", adds=adds, refs=refs)[1]
        if status < 0:
            raise StoreUnavailable(f"feature store seeding failed: the namespace's seed is no longer claimed by "
                                   f"{source}", answered=True)
        return n

    def seed_state(self) -> dict[str, str]:
        """This namespace's seed marker (empty when nothing was seeded)."""
        with _unavailable("read"):
            return {k.decode(): v.decode() for k, v in self.client.hgetall(f"{self._prefix}:seed").items()}

    def coverage(self) -> Coverage | None:
        """Since when the namespace has recorded every decided transaction (as far as the scorers could): when its
        seed was claimed, or the start of the earliest complete rebuild since (`mark_covered`); None unseeded."""
        state = self.seed_state()
        if "started" not in state:
            return None
        since = (datetime.fromtimestamp(float(state["covered_from"]), UTC) if "covered_from" in state
                 else datetime.fromisoformat(state["started"]))
        return Coverage(since, state["started"])

    def mark_covered(self, since: datetime, coverage: Coverage) -> bool:
        """Record that the transactions logged since ``since`` are in the namespace (a rebuild replayed them) if that
        is earlier than its coverage, and the namespace still has the seed ``coverage`` was read under (not a new one
        after a loss meanwhile). Whether it did."""
        claimed = datetime.fromisoformat(coverage.claim).timestamp()
        with _unavailable("write"):
            return bool(self.client.eval(_COVER, 1, f"{self._prefix}:seed", repr(since.timestamp()), coverage.claim,
                                         repr(claimed)))


class Coverage(NamedTuple):
    """A namespace's `RedisStore.coverage`: ``since`` when, under the seed claimed at ``claim`` (its ``started``)."""

    since: datetime
    claim: str


# -- frozen snapshot ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrozenColumn:
    """One entity column of a `SnapshotStore`: per key (``keys``, sorted texts) its kept events (rows
    ``event_start[i]:event_start[i+1]`` of the event arrays, in time order), its folded aggregates, and for
    paired columns its accounts (rows ``account_start[i]:account_start[i+1]``, sorted by account code, with the
    time each was first seen) or, beyond ``exact_accounts``, their number.
    Accounts and transaction ids are codes into the snapshot's vocabularies; no account is -1."""

    keys: np.ndarray
    event_start: np.ndarray
    event_ticks: np.ndarray
    event_amount: np.ndarray
    event_account: np.ndarray
    event_txn: np.ndarray
    count: np.ndarray
    amount_sum: np.ndarray
    amount_max: np.ndarray
    last: np.ndarray
    account_start: np.ndarray | None = None
    account_code: np.ndarray | None = None
    account_first: np.ndarray | None = None
    accounts_exact: np.ndarray | None = None
    account_total: np.ndarray | None = None


class SnapshotStore:
    """A read-only store holding what a `MemoryStore` holds after recording a table (`entity_features.snapshot`
    builds it vectorised): the frozen statistics a scorer without an online store serves with, never updated.

    Columnar (numpy arrays, saved as one Parquet file per table), so a model bundle loads it quickly and keeps it
    small. Writes raise `TypeError`. ``last`` is `NO_TIME` for a key with nothing folded."""

    def __init__(self, limits: StoreLimits, columns: dict[str, FrozenColumn], accounts: np.ndarray,
                 txns: np.ndarray) -> None:
        self.limits = limits
        self.columns = columns
        self.accounts = accounts
        self.txns = txns
        self._index = {col: {key: i for i, key in enumerate(frozen.keys.tolist())} for col, frozen in columns.items()}
        self.account_hashes = np.append(text_hashes(accounts), NO_ACCOUNT)  # by code; -1 (no account): NO_ACCOUNT
        self.txn_hashes = text_hashes(txns)

    def read(self, query: Query) -> States:
        states = empty_states(query)
        n = len(query.entities)
        sizes = np.zeros(n, dtype=np.int64)
        groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # column -> (entity indices, rows of its keys)
        by_column: dict[str, list[int]] = {}
        for i, ref in enumerate(query.entities):
            by_column.setdefault(ref.column, []).append(i)
        for column, members in by_column.items():
            index = self._index.get(column, {})
            rows = np.fromiter((index.get(query.entities[i].key, -1) for i in members), np.int64, len(members))
            known = rows >= 0
            groups[column] = (np.asarray(members, dtype=np.int64)[known], rows[known])
        for column, (members, rows) in groups.items():
            start = self.columns[column].event_start
            sizes[members] = start[rows + 1] - start[rows]
        states.event_start = offsets(sizes)
        total = int(states.event_start[-1])
        states.ticks, states.amount = np.empty(total, dtype=np.int64), np.empty(total)
        states.account, states.txn = np.empty(total, dtype=np.int64), np.empty(total, dtype=np.int64)
        table: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        estimate = np.full(n, -1, dtype=np.int64)
        for column, (members, rows) in groups.items():
            frozen = self.columns[column]
            counts = sizes[members]
            dest = _ranges(states.event_start[members], counts)
            src = _ranges(frozen.event_start[rows], counts)
            states.ticks[dest], states.amount[dest] = frozen.event_ticks[src], frozen.event_amount[src]
            states.account[dest] = self.account_hashes[frozen.event_account[src]]
            states.txn[dest] = self.txn_hashes[frozen.event_txn[src]]
            states.count[members], states.amount_sum[members] = frozen.count[rows], frozen.amount_sum[rows]
            states.amount_max[members], states.last[members] = frozen.amount_max[rows], frozen.last[rows]
            if frozen.account_start is None:
                continue
            assert frozen.accounts_exact is not None and frozen.account_total is not None
            assert frozen.account_code is not None and frozen.account_first is not None
            paired = np.fromiter((query.entities[i].paired for i in members.tolist()), bool, len(members))
            exact = frozen.accounts_exact[rows]
            estimate[members[paired & ~exact]] = frozen.account_total[rows[paired & ~exact]]
            listed = paired & exact
            counts = frozen.account_start[rows[listed] + 1] - frozen.account_start[rows[listed]]
            src = _ranges(frozen.account_start[rows[listed]], counts)
            table.append((np.repeat(members[listed], counts), self.account_hashes[frozen.account_code[src]],
                          frozen.account_first[src]))
        parts = [np.concatenate(p) for p in zip(*table, strict=True)] if table else [_empty()] * 3
        states.accounts_before, states.account_first = account_answers(*parts, estimate, query)
        return states

    def records(self) -> Records:
        """The kept events as transactions to record (each with every entity value that keeps it), in time
        order: what `RedisStore.seed` writes after the folded aggregates."""
        entities: list[EntityRef] = []
        txn, ticks, amount, account, entity = [], [], [], [], []
        for column, frozen in self.columns.items():
            paired = frozen.account_start is not None
            sizes = np.diff(frozen.event_start)
            entity.append(len(entities) + np.repeat(np.arange(len(frozen.keys)), sizes))
            entities += [EntityRef(column, str(key), paired) for key in frozen.keys.tolist()]
            txn.append(frozen.event_txn)
            ticks.append(frozen.event_ticks)
            amount.append(frozen.event_amount)
            account.append(frozen.event_account)
        if not txn:
            return _NO_RECORDS
        txn_code = np.concatenate(txn)
        distinct, first, row = np.unique(txn_code, return_index=True, return_inverse=True)
        event_ticks, event_amount = np.concatenate(ticks)[first], np.concatenate(amount)[first]
        event_account = np.concatenate(account)[first]
        ids = self.txns[distinct]
        order = np.lexsort((ids.astype(str), event_ticks))  # time order, then id
        rank = at_of(order)
        accounts = np.append(self.accounts, None).astype(object)  # code -1: none
        return Records(ids[order], event_ticks[order], event_amount[order].astype(np.float64),
                       accounts[event_account[order]], entities, rank[row.ravel()], np.concatenate(entity))

    def write(self, records: Records) -> int:
        raise TypeError("a frozen snapshot is read-only: record transactions in an online store")

    def read_and_write(self, query: Query, records: Records, answer: Callable[[States], T],
                       meanwhile: Callable[[], object] | None = None) -> T:
        self.write(records)  # read-only: raises
        return answer(self.read(query))

    # -- files ------------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """One Parquet file per table: ``keys``, ``events`` and ``accounts`` of each column, the vocabularies,
        and ``snapshot.json`` (limits and columns)."""
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"limits": asdict(self.limits), "columns": {}}
        for col, f in self.columns.items():
            meta["columns"][col] = {"paired": f.account_start is not None}
            keys = {"key": f.keys, "events": np.diff(f.event_start), "count": f.count, "amount_sum": f.amount_sum,
                    "amount_max": f.amount_max, "last": f.last}
            if f.account_start is not None:
                keys.update(accounts=np.diff(f.account_start), accounts_exact=f.accounts_exact,
                            account_total=f.account_total)
                pd.DataFrame({"account": f.account_code, "first": f.account_first}).to_parquet(
                    directory / f"{col}.accounts.parquet", index=False)
            pd.DataFrame(keys).to_parquet(directory / f"{col}.keys.parquet", index=False)
            pd.DataFrame({"ticks": f.event_ticks, "amount": f.event_amount, "account": f.event_account,
                          "txn": f.event_txn}).to_parquet(directory / f"{col}.events.parquet", index=False)
        pd.DataFrame({"account": self.accounts.astype(str)}).to_parquet(directory / "accounts.parquet", index=False)
        pd.DataFrame({"txn": self.txns.astype(str)}).to_parquet(directory / "txns.parquet", index=False)
        (directory / SNAPSHOT_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> SnapshotStore:
        """Read a snapshot written by `save`."""
        meta = json.loads((directory / SNAPSHOT_FILE).read_text())
        columns = {}
        for col, info in meta["columns"].items():
            keys = pd.read_parquet(directory / f"{col}.keys.parquet")
            events = pd.read_parquet(directory / f"{col}.events.parquet")
            parts: dict[str, Any] = {}
            if info["paired"]:
                accounts = pd.read_parquet(directory / f"{col}.accounts.parquet")
                start = offsets(keys["accounts"].to_numpy())
                first = accounts["first"].to_numpy(dtype=np.int64)
                parts = dict(account_start=start, account_code=accounts["account"].to_numpy(dtype=np.int64),
                             account_first=first,
                             accounts_exact=keys["accounts_exact"].to_numpy(dtype=bool),
                             account_total=keys["account_total"].to_numpy(dtype=np.int64))
            columns[col] = FrozenColumn(
                keys=keys["key"].to_numpy(dtype=object), event_start=offsets(keys["events"].to_numpy()),
                event_ticks=events["ticks"].to_numpy(dtype=np.int64),
                event_amount=events["amount"].to_numpy(dtype="float64"),
                event_account=events["account"].to_numpy(dtype=np.int64),
                event_txn=events["txn"].to_numpy(dtype=np.int64), count=keys["count"].to_numpy(dtype=np.int64),
                amount_sum=keys["amount_sum"].to_numpy(dtype="float64"),
                amount_max=keys["amount_max"].to_numpy(dtype="float64"),
                last=keys["last"].to_numpy(dtype=np.int64), **parts)
        return cls(StoreLimits(**meta["limits"]), columns,
                   pd.read_parquet(directory / "accounts.parquet")["account"].to_numpy(dtype=object),
                   pd.read_parquet(directory / "txns.parquet")["txn"].to_numpy(dtype=object))


SNAPSHOT_FILE = "snapshot.json"


@contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """Any Redis error inside as `StoreUnavailable` ("feature store <what> failed: ...")."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise StoreUnavailable(f"feature store {what} failed: {type(exc).__name__}: {exc}",
                               answered=isinstance(exc, redis.exceptions.ResponseError)) from exc


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def offsets(lengths: np.ndarray) -> np.ndarray:
    """Start of each run of the given lengths, then the end of the last."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


def _ranges(starts: np.ndarray, counts: np.ndarray, step: int = 1) -> np.ndarray:
    """The positions ``starts[i] + step * k`` for k < ``counts[i]``, of every i, concatenated."""
    run = np.repeat(np.arange(len(counts)), counts)
    return np.asarray(starts, dtype=np.int64)[run] + step * (np.arange(int(counts.sum())) - offsets(counts)[:-1][run])
