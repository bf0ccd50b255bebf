"""Online stores of entity history for the real-time entity features: an in-memory one and Redis.

A store keeps, per entity value (a device, an IP, a card, an account), what `fraudops.entity_features` needs to
compute its features for a new transaction exactly as the offline replay does:

- the **kept events**: the entity's transactions within the longest window behind its newest one (each with
  time, amount, account and transaction id), at most `StoreLimits.max_events`;
- the **folded aggregates** of its older transactions (count, amount sum and max, newest time), which only the
  all-history features use;
- the **accounts** it was used by, each with the time first seen, for the all-history distinct-account count:
  exact up to `StoreLimits.exact_accounts` accounts, then a HyperLogLog (Redis: standard error 0.81%).

Writes are idempotent per transaction id: a transaction already recorded (within the longest window, the life of
its marker) is skipped whole. Both stores share these semantics; `MemoryStore` is the reference, `RedisStore` the
one every scorer replica shares. Times are integer microseconds ("ticks", see `fraudops.normalize.ticks`).

Exact: every feature of a transaction no older than its entity's newest recorded one, whatever the batching (the
replay test checks it). Approximate, by design:
- an entity with more than ``max_events`` transactions in the longest window: its windowed features count only
  the newest ``max_events`` (all-history ones stay exact);
- an entity with more than ``exact_accounts`` accounts: ``accounts_all`` is the HyperLogLog estimate of all
  accounts seen before the batch (standard error 0.81%), without accounts new earlier in the same batch;
- a late transaction (older than its entity's newest minus the longest window): all-history features include
  the folded transactions after it;
- a retry after its marker expired counts again; batches read concurrently (two replicas) do not see each other,
  though the stored state ends up the same.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from bisect import insort
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fraudops.normalize import TICKS_PER_SECOND

DAY = 86_400


class StoreUnavailable(RuntimeError):
    """The online store did not answer in time, could not be reached, or refused (the caller falls back).
    ``answered``: the store answered (a refusal such as NOHISTORY, or out of memory), so it is not slow."""

    def __init__(self, message: str, answered: bool = False) -> None:
        super().__init__(message)
        self.answered = answered


@dataclass(frozen=True)
class StoreLimits:
    """Bounds of what a store keeps.

    ``keep_seconds``: the longest window; events older than that behind an entity's newest one are folded, and the
    windowed keys and transaction markers expire that long after their last write (so a transaction retried later
    than that counts again). ``max_events``: most kept events per entity; beyond it the oldest are folded early,
    so windowed features of busier entities undercount (all-history ones stay exact). ``exact_accounts``: most
    accounts per entity counted exactly; beyond it the all-history distinct-account count becomes approximate.
    ``retention_seconds``: the all-history keys expire that long after their entity's last transaction.
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


class Event(NamedTuple):
    """One transaction as an entity's history holds it (``account`` None: missing)."""

    ticks: int
    amount: float
    account: str | None
    txn: str


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
class KeyQuery:
    """What to read about one entity value: ``times`` of the batch's transactions with it (for the distinct
    accounts first seen strictly before each) and their ``accounts`` (for when each was first seen)."""

    entity: EntityRef
    times: tuple[int, ...] = ()
    accounts: tuple[str, ...] = ()


@dataclass
class KeyState:
    """What a store knows about one entity value (see the module doc)."""

    events: list[Event] = field(default_factory=list)
    count: int = 0
    amount_sum: float = 0.0
    amount_max: float = math.nan
    last: int | None = None
    accounts_exact: bool = True
    accounts_before: list[int] = field(default_factory=list)
    """Per queried time: accounts first seen strictly before it (approximate: all accounts seen so far)."""
    account_first: dict[str, int] = field(default_factory=dict)
    """Per queried account known to the store: when it was first seen (exact mode only)."""


class FeatureStore(Protocol):
    """Read entity history for a batch, then record the batch."""

    limits: StoreLimits

    def read(self, queries: Sequence[KeyQuery]) -> list[KeyState]:
        """One state per query, in order."""
        ...

    def write(self, records: Sequence[Record]) -> int:
        """Record the transactions not recorded before (by id); returns how many were new."""
        ...

    def read_and_write(self, queries: Sequence[KeyQuery], records: Sequence[Record]) -> list[KeyState]:
        """`read`, then `write` (a scored batch: its history, then itself), as one call where the store can."""
        ...


# -- in memory ----------------------------------------------------------------------------------------------
def _member(event: Event) -> str:
    """An event as one string: Redis's sorted-set member, and the tie order of events at the same time. The
    compact JSON array ``[ticks,amount,account,txn]``, written as `json.dumps` writes it (in a quarter of its time)."""
    if not math.isfinite(event.amount):
        return json.dumps([event.ticks, event.amount, event.account, event.txn], separators=(",", ":"))
    account = "null" if event.account is None else _json_text(event.account)
    return f"[{int(event.ticks)},{float(event.amount)!r},{account},{_json_text(event.txn)}]"


_json_text = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # a str as json.dumps writes it


@dataclass
class _History:
    events: list[tuple[int, str, Event]] = field(default_factory=list)  # sorted by (ticks, member)
    count: int = 0
    amount_sum: float = 0.0
    amount_max: float = math.nan
    last: int | None = None
    first_seen: dict[str, int] | None = field(default_factory=dict)  # None: beyond exact_accounts
    accounts: set[str] = field(default_factory=set)

    def fold(self, events: list[tuple[int, str, Event]]) -> None:
        for ticks, _, event in events:
            self.count += 1
            self.amount_sum += event.amount
            self.amount_max = event.amount if math.isnan(self.amount_max) else max(self.amount_max, event.amount)
            self.last = ticks if self.last is None else max(self.last, ticks)


class MemoryStore:
    """A store in this process's memory with the semantics of `RedisStore` (the reference for tests).

    Differences: nothing expires, and beyond ``exact_accounts`` the account count is an exact set's size where
    Redis has a HyperLogLog's estimate.
    """

    def __init__(self, limits: StoreLimits) -> None:
        self.limits = limits
        self._histories: dict[tuple[str, str], _History] = {}
        self._recorded: set[str] = set()

    def read(self, queries: Sequence[KeyQuery]) -> list[KeyState]:
        out = []
        for query in queries:
            history = self._histories.get(query.entity[:2])
            if history is None:
                out.append(KeyState(accounts_before=[0] * len(query.times)))
                continue
            state = KeyState(events=[event for _, _, event in history.events], count=history.count,
                             amount_sum=history.amount_sum, amount_max=history.amount_max, last=history.last)
            if query.entity.paired:
                firsts = history.first_seen
                state.accounts_exact = firsts is not None
                if firsts is None:
                    state.accounts_before = [len(history.accounts)] * len(query.times)
                else:
                    state.accounts_before = [sum(1 for f in firsts.values() if f < t) for t in query.times]
                    state.account_first = {a: firsts[a] for a in query.accounts if a in firsts}
            out.append(state)
        return out

    def read_and_write(self, queries: Sequence[KeyQuery], records: Sequence[Record]) -> list[KeyState]:
        states = self.read(queries)
        self.write(records)
        return states

    def write(self, records: Sequence[Record]) -> int:
        applied = 0
        for record in records:
            if record.txn in self._recorded:
                continue
            self._recorded.add(record.txn)
            applied += 1
            event = Event(record.ticks, float(record.amount), record.account, record.txn)
            entry = (event.ticks, _member(event), event)
            for ref in record.entities:
                history = self._histories.setdefault(ref[:2], _History())
                insort(history.events, entry, key=lambda e: (e[0], e[1]))
                self._trim(history)
                if ref.paired and record.account is not None:
                    self._add_account(history, record.account, record.ticks)
        return applied

    def _trim(self, history: _History) -> None:
        horizon = history.events[-1][0] - self.limits.keep_ticks
        old = sum(1 for e in history.events if e[0] < horizon)
        old = max(old, len(history.events) - self.limits.max_events)
        history.fold(history.events[:old])
        del history.events[:old]

    def _add_account(self, history: _History, account: str, ticks: int) -> None:
        if history.first_seen is None:
            history.accounts.add(account)
            return
        history.first_seen[account] = min(ticks, history.first_seen.get(account, ticks))
        if len(history.first_seen) > self.limits.exact_accounts:
            history.accounts = set(history.first_seen)
            history.first_seen = None


# -- Redis --------------------------------------------------------------------------------------------------
# One script call per batch (`RedisStore._call`): ARGV[1] is the batch as JSON, [namespace, require_history (0/1),
# [keep_ticks, max_events, exact_accounts, keep_seconds, retention_seconds], records, entities]: a record is
# [txn, ticks, member, amount, account or null]; an entity value is [column:value, read (0/1), paired (0/1), times,
# accounts, positions of its records (0-based)]. Times travel as JSON numbers (doubles): exact for ticks below 2^53
# (microseconds up to the year 2255). Keys per entity value (built here from the namespace; the script
# runs on standalone Redis only): ev (sorted set of kept events scored by ticks), agg (hash: fn/fsum/fmax/flast
# folded, n/sum/max/last all events), acc (sorted set: account -> first ticks), hll (HyperLogLog of accounts,
# replacing acc beyond exact_accounts); per record its marker txn; the namespace's limits hash and seed hash.
# Each entity value is handled once: read (when asked), then its new records in batch order, from what the read
# fetched, so the read sees the history before the batch. A read of a namespace whose seed is not ready fails
# with NOHISTORY when require_history is set (a store restarted empty would answer as if every entity were new),
# before anything is written. The horizons are the namespace's: the longest any writer has asked for (a
# challenger with shorter windows than the champion's must not fold or expire the history the champion's windows
# still read). Returns one JSON text, [new records, replies]: per entity value read, in order, [kept members,
# count, sum, max and last of what the members leave out (the folded fields, or the totals when no event is kept;
# as strings)] and for paired ones also in_hll, the HyperLogLog's estimate,
# the accounts first seen before each time, and the first ticks of each account (null: unknown).
_BATCH = """
local batch = cjson.decode(ARGV[1])
local ns, lim, records, entities = batch[1], batch[3], batch[4], batch[5]
local null = cjson.null
local function num(x) return string.format('%.17g', x) end
local function ticks_of(member) return tonumber(string.match(member, '^%[(%-?%d+)')) end
local function quoted(values)
  local out = {}
  for i, v in ipairs(values) do out[i] = v and ('"' .. v .. '"') or 'null' end
  return '[' .. table.concat(out, ',') .. ']'
end
local function numbers(values)  -- scores: first ticks, written by this script as integers
  local out = {}
  for i, v in ipairs(values) do out[i] = v or 'null' end
  return '[' .. table.concat(out, ',') .. ']'
end
local AGG = {'fn', 'fsum', 'fmax', 'flast', 'n', 'sum', 'max', 'last'}
if batch[2] == 1 and redis.call('HGET', ns .. ':seed', 'state') ~= 'ready' then
  return redis.error_reply('NOHISTORY the namespace has no history (not seeded yet, or the store restarted empty)')
end
local fresh, applied, keep, ttl_window, ttl_keep = {}, 0, 0, 0, 0
if #records > 0 then
  local limits = ns .. ':limits'
  local held = redis.call('HMGET', limits, 'keep_ticks', 'keep_seconds', 'retention_seconds')
  keep = math.max(lim[1], tonumber(held[1]) or 0)
  ttl_window = math.max(lim[4], tonumber(held[2]) or 0)
  ttl_keep = math.max(lim[5], tonumber(held[3]) or 0)
  redis.call('HSET', limits, 'keep_ticks', num(keep), 'keep_seconds', ttl_window, 'retention_seconds', ttl_keep)
  for i, r in ipairs(records) do
    if redis.call('SET', ns .. ':txn:' .. r[1], '1', 'NX', 'EX', ttl_window) then
      fresh[i], applied = true, applied + 1
    end
  end
end
local cap, exact = lim[2], lim[3]

-- record one entity value's new events (in batch order) and accounts; members, f, in_hll: what the read fetched
local function apply(ev, agg, acc, hll, todo, paired, members, f, in_hll)
  local c, o, w
  if members then
    c = #members
  else
    f = redis.call('HMGET', agg, unpack(AGG))
    c = redis.call('ZCARD', ev)
    if c > 0 then members = {redis.call('ZRANGE', ev, 0, 0)[1], redis.call('ZRANGE', ev, -1, -1)[1]} end
  end
  if c > 0 then o, w = ticks_of(members[1]), ticks_of(members[#members]) end
  local fn, fs, fm, fl = tonumber(f[1]) or 0, tonumber(f[2]) or 0, tonumber(f[3]), tonumber(f[4])
  local tn, ts, tm, tl = tonumber(f[5]), tonumber(f[6]), tonumber(f[7]), tonumber(f[8])
  local folded = false
  local function fold(list)
    for _, m in ipairs(list) do
      local t, amount = string.match(m, '^%[(%-?%d+),([^,]+),')
      t, amount = tonumber(t), tonumber(amount)
      fn, fs = fn + 1, fs + amount
      if fm == nil or amount > fm then fm = amount end
      if fl == nil or t > fl then fl = t end
    end
    folded = folded or #list > 0
  end
  for _, r in ipairs(todo) do
    local t, amount = r[2], r[4]
    if c == 0 and tn then fn, fs, fm, fl, folded = tn, ts, tm, tl, true end  -- new, or its kept events expired
    c = c + redis.call('ZADD', ev, num(t), r[3])
    tn, ts = (tn or 0) + 1, (ts or 0) + amount
    if tm == nil or amount > tm then tm = amount end
    if tl == nil or t > tl then tl = t end
    if w == nil or t > w then w = t end
    if o == nil or t < o then o = t end
    if o < w - keep then
      local bound = '(' .. num(w - keep)
      local old = redis.call('ZRANGEBYSCORE', ev, '-inf', bound)
      fold(old)
      redis.call('ZREMRANGEBYSCORE', ev, '-inf', bound)
      c = c - #old
      o = ticks_of(redis.call('ZRANGE', ev, 0, 0)[1])
    end
    if c > cap then
      local extra = c - cap
      fold(redis.call('ZRANGE', ev, 0, extra - 1))
      redis.call('ZREMRANGEBYRANK', ev, 0, extra - 1)
      c = cap
      o = ticks_of(redis.call('ZRANGE', ev, 0, 0)[1])
    end
  end
  if folded then
    redis.call('HSET', agg, 'n', num(tn), 'sum', num(ts), 'max', num(tm), 'last', num(tl),
               'fn', num(fn), 'fsum', num(fs), 'fmax', num(fm), 'flast', num(fl))
  else
    redis.call('HSET', agg, 'n', num(tn), 'sum', num(ts), 'max', num(tm), 'last', num(tl))
  end
  redis.call('EXPIRE', ev, ttl_window)
  redis.call('EXPIRE', agg, ttl_keep)
  if not paired then return end
  local firsts, names = {}, {}
  for _, r in ipairs(todo) do
    if r[5] ~= null then
      local n = #firsts
      firsts[n + 1], firsts[n + 2] = num(r[2]), r[5]
      names[#names + 1] = r[5]
    end
  end
  if #names == 0 then return end
  if in_hll == nil then in_hll = redis.call('EXISTS', hll) end
  if in_hll == 0 then
    local added = 0
    for i = 1, #firsts, 1000 do
      added = added + redis.call('ZADD', acc, 'LT', unpack(firsts, i, math.min(i + 999, #firsts)))
    end
    if added > 0 and redis.call('ZCARD', acc) > exact then
      names, in_hll = redis.call('ZRANGE', acc, 0, -1), 1
      redis.call('DEL', acc)
    end
  end
  if in_hll == 1 then
    for i = 1, #names, 1000 do redis.call('PFADD', hll, unpack(names, i, math.min(i + 999, #names))) end
  end
  redis.call('EXPIRE', in_hll == 1 and hll or acc, ttl_keep)
end

local out = {}
for _, e in ipairs(entities) do
  local ev, agg, acc, hll = ns .. ':ev:' .. e[1], ns .. ':agg:' .. e[1], ns .. ':acc:' .. e[1], ns .. ':hll:' .. e[1]
  local paired, members, f, in_hll = e[3] == 1
  if e[2] == 1 then
    members, f = redis.call('ZRANGE', ev, 0, -1), redis.call('HMGET', agg, unpack(AGG))
    local totals = #members > 0 and {f[1], f[2], f[3], f[4]} or {f[5], f[6], f[7], f[8]}  -- see the reply above
    local reply = '[[' .. table.concat(members, ',') .. '],' .. quoted(totals)
    if paired then
      local counts, firsts = {}, {}
      for i, t in ipairs(e[4]) do counts[i] = redis.call('ZCOUNT', acc, '-inf', '(' .. num(t)) end
      for i = 1, #e[5], 1000 do
        for _, v in ipairs(redis.call('ZMSCORE', acc, unpack(e[5], i, math.min(i + 999, #e[5])))) do
          firsts[#firsts + 1] = v
        end
      end
      in_hll = redis.call('EXISTS', hll)
      local estimate = in_hll == 1 and redis.call('PFCOUNT', hll) or 0
      reply = reply .. ',' .. in_hll .. ',' .. estimate .. ',[' .. table.concat(counts, ',') .. '],' .. numbers(firsts)
    end
    out[#out + 1] = reply .. ']'
  end
  local todo = {}
  for _, i in ipairs(e[6]) do
    if fresh[i + 1] then todo[#todo + 1] = records[i + 1] end
  end
  if #todo > 0 then apply(ev, agg, acc, hll, todo, paired, members, f, in_hll) end
end
return '[' .. applied .. ',[' .. table.concat(out, ',') .. ']]'
"""

_BATCH_SHA = hashlib.sha1(_BATCH.encode()).hexdigest()  # EVALSHA's name for it


# Seeding a namespace with a frozen snapshot (`RedisStore.seed`). KEYS[1]: the namespace's seed hash (source,
# state, started, finished). ARGV: source, now. Returns {state, source}: 'claimed' when this call claimed it.
_CLAIM = """
local source = redis.call('HGET', KEYS[1], 'source')
if not source then
  redis.call('HSET', KEYS[1], 'source', ARGV[1], 'state', 'loading', 'started', ARGV[2])
  return {'claimed', ARGV[1]}
end
return {redis.call('HGET', KEYS[1], 'state'), source}
"""

# One chunk of a snapshot's folded aggregates and accounts, applied at most once (its id joins the done set in
# the same call; nothing once the seed is ready, when a loader that finished first has dropped the done set).
# KEYS: seed hash, done set, then per entity value agg, acc, hll. ARGV: source, chunk id, exact_accounts,
# retention_seconds, n_entities, then per entity value: folded n, sum, max, last ('' when n is 0), n_accounts,
# then account, first ticks pairs, then how many accounts beyond exact_accounts it had (added to the HyperLogLog
# as placeholders). Folded aggregates are added to the folded and to the total fields, so the
# kept events recorded before or after (through the write script) add up the same.
_SEED = """
local claim = redis.call('HMGET', KEYS[1], 'source', 'state')
if claim[1] ~= ARGV[1] then return -1 end
if claim[2] == 'ready' or redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return 0 end
local exact, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local function num(x) return string.format('%.17g', x) end
local function add(agg, nf, sf, mf, lf, n, s, mx, last)
  local f = redis.call('HMGET', agg, nf, sf, mf, lf)
  local m, l = tonumber(f[3]), tonumber(f[4])
  if m == nil or mx > m then m = mx end
  if l == nil or last > l then l = last end
  redis.call('HSET', agg, nf, num((tonumber(f[1]) or 0) + n), sf, num((tonumber(f[2]) or 0) + s), mf, num(m),
             lf, num(l))
end
local a, k = 6, 3
for _ = 1, tonumber(ARGV[5]) do
  local agg, acc, hll = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local n = tonumber(ARGV[a])
  if n > 0 then
    local s, mx, last = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    add(agg, 'fn', 'fsum', 'fmax', 'flast', n, s, mx, last)
    add(agg, 'n', 'sum', 'max', 'last', n, s, mx, last)
    redis.call('EXPIRE', agg, ttl)
  end
  local n_accounts = tonumber(ARGV[a + 4])
  a = a + 5
  for i = 0, n_accounts - 1 do
    if redis.call('EXISTS', hll) == 1 then
      redis.call('PFADD', hll, ARGV[a + 2 * i])
    else
      redis.call('ZADD', acc, 'LT', ARGV[a + 2 * i + 1], ARGV[a + 2 * i])
    end
  end
  a = a + 2 * n_accounts
  local placeholders = tonumber(ARGV[a])
  a = a + 1
  if placeholders > 0 or redis.call('ZCARD', acc) > exact then
    local members = redis.call('ZRANGE', acc, 0, -1)
    for i = 1, #members, 1000 do
      redis.call('PFADD', hll, unpack(members, i, math.min(i + 999, #members)))
    end
    for i = 1, placeholders, 1000 do
      local batch = {}
      for j = i, math.min(i + 999, placeholders) do batch[#batch + 1] = '\0seed:' .. j end
      redis.call('PFADD', hll, unpack(batch))
    end
    redis.call('DEL', acc)
  end
  if redis.call('EXISTS', hll) == 1 then redis.call('EXPIRE', hll, ttl) end
  if redis.call('EXISTS', acc) == 1 then redis.call('EXPIRE', acc, ttl) end
  k = k + 3
end
return 1
"""


@dataclass(frozen=True)
class SeedResult:
    """What `RedisStore.seed` did: ``loaded`` the snapshot (else the namespace already had history from
    ``source``), and how many entity values and transactions it wrote."""

    loaded: bool
    source: str
    entities: int = 0
    transactions: int = 0



class RedisStore:
    """The shared online store: Redis 7+ (tested with Debian's 7.0), standalone or with replicas, not Redis
    Cluster (one script touches the keys of many entities, and names them itself).

    Keys, all under ``namespace``: ``{ns}:ev:{column}:{value}`` (sorted set of kept events, scored by ticks,
    expires ``keep_seconds`` after its last write; then the totals stand in for it), ``{ns}:agg:{column}:{value}``
    (hash of folded and total aggregates), ``{ns}:acc:{column}:{value}`` (sorted set account -> first ticks) or, beyond
    ``exact_accounts``, ``{ns}:hll:{column}:{value}`` (HyperLogLog; all three expire ``retention_seconds``
    after the last write), and ``{ns}:txn:{id}`` (the idempotency marker, ``keep_seconds``). ``{ns}:limits`` holds
    the longest ``keep_seconds`` and ``retention_seconds`` any writer has used, and every write uses those: models
    with different windows share the namespace without one folding away what the other's windows read.
    A read, a write, and a scored batch's read then write (`read_and_write`) are one Lua script call (EVALSHA)
    each for the whole batch, atomic, which takes the batch as one JSON argument and answers one JSON text (each
    entity value read and written once); a write applies each transaction at most once. Any Redis error (timeout,
    connection, out of memory, a refusal) raises `StoreUnavailable`, without retries; a write that timed out may
    still have been applied, and retrying it is safe (idempotent).

    Timeouts: ``timeout_s`` bounds each connect, send and reply; a batch's script call waits ``key_timeout_s`` more
    per entity value it reads or records for its reply, so that a large batch's legitimate work is not taken for a
    slow store. (Its send keeps ``timeout_s``: the socket buffers take a batch of 1,000 while Redis runs another
    script; measured on loopback.) Threads take turns: one batch script call at a time per store, on one
    connection (Redis runs scripts one after another anyway, and a connection opened while it runs one would wait
    for its handshake longer than ``timeout_s``: measured on the kind cluster, four batches of 1,000 in flight). A
    call waits for its turn at most ``timeout_s`` plus ``key_timeout_s`` per entity value of the calls queued
    ahead of it (the lock is not strictly first come, first served).
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
        self._turn = threading.Lock()  # held by the batch script call on the wire
        self._queued = 0  # entity values of the batch script calls on the wire or waiting for their turn
        self._queue_lock = threading.Lock()

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

    def _key(self, kind: str, ref: EntityRef) -> str:
        return f"{self.namespace}:{kind}:{self._suffix(ref)}"

    def read(self, queries: Sequence[KeyQuery]) -> list[KeyState]:
        return self._call(queries, (), "read")[0] if queries else []

    def read_and_write(self, queries: Sequence[KeyQuery], records: Sequence[Record]) -> list[KeyState]:
        """One atomic script call: the read, then the write (none when the read fails)."""
        return self._call(queries, records, "read and write")[0]

    def write(self, records: Sequence[Record]) -> int:
        return self._call((), records, "write")[1] if records else 0

    def _call(self, queries: Sequence[KeyQuery], records: Sequence[Record], what: str) -> tuple[list[KeyState], int]:
        """The batch script (`_BATCH`): the queries' states, and how many records were new."""
        if not queries and not records:
            return [], 0
        entities: list[list[Any]] = []
        at: dict[EntityRef, int] = {}
        for query in queries:
            ref = query.entity
            at[ref] = len(entities)  # a repeated query: its records join the last, read after all of them
            entities.append([self._suffix(ref), 1, int(ref.paired), query.times, query.accounts, []])
        rows = []
        for i, record in enumerate(records):
            amount = float(record.amount)
            rows.append([record.txn, record.ticks, _member(Event(record.ticks, amount, record.account, record.txn)),
                         amount, record.account])
            for ref in record.entities:
                j = at.get(ref)
                if j is None:
                    j = at[ref] = len(entities)
                    entities.append([self._suffix(ref), 0, int(ref.paired), (), (), []])
                entities[j][5].append(i)
        limits = self.limits
        batch = [self.namespace, int(self.require_history and bool(queries)),  # only reads need the history
                 [limits.keep_ticks, limits.max_events, limits.exact_accounts, limits.keep_seconds,
                  limits.retention_seconds], rows, entities]
        text = json.dumps(batch, separators=(",", ":"))
        with self._queue_lock:
            ahead = self._queued
            self._queued += len(entities)
        try:
            if not self._turn.acquire(timeout=self.timeout_s + self.key_timeout_s * ahead):
                raise StoreUnavailable(f"feature store {what} failed: the calls ahead of it ({ahead} entity values) "
                                       "took longer than their allowance")
            try:
                with _unavailable(what):
                    reply = self._script(text, self.timeout_s + self.key_timeout_s * len(entities))
            finally:
                self._turn.release()
        finally:
            with self._queue_lock:
                self._queued -= len(entities)
        applied, replies = json.loads(reply)
        return [self._state(query, reply) for query, reply in zip(queries, replies, strict=True)], applied

    def _script(self, batch: str, timeout: float) -> bytes:
        """The batch script's reply, waited for at most ``timeout`` s (the client's own calls have one socket
        timeout for every command). A timed-out connection is closed, never reused for the next call."""
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_command("EVALSHA", _BATCH_SHA, 0, batch)
            try:
                return conn.read_response(timeout=timeout)
            except redis.exceptions.NoScriptError:  # a new or restarted server: load the script (same SHA), retry
                conn.send_command("SCRIPT", "LOAD", _BATCH)
                conn.read_response()
                conn.send_command("EVALSHA", _BATCH_SHA, 0, batch)
                return conn.read_response(timeout=timeout)
        finally:
            pool.release(conn)

    @staticmethod
    def _suffix(ref: EntityRef) -> str:
        if ":" in ref.column:
            raise ValueError(f"entity column names must not contain ':' in the feature store, got {ref.column!r}")
        return f"{ref.column}:{ref.key}"

    @staticmethod
    def _state(query: KeyQuery, reply: list[Any]) -> KeyState:
        events = list(map(Event._make, reply[0]))
        count, amount_sum, amount_max, last = (None if v is None else float(v) for v in reply[1])
        state = KeyState(events=events, count=int(count or 0), amount_sum=amount_sum or 0.0,
                         amount_max=math.nan if amount_max is None else amount_max,
                         last=None if last is None else int(last))
        if query.entity.paired:
            in_hll, estimate, counts, firsts = reply[2:6]
            state.accounts_exact = not in_hll
            state.accounts_before = [c + estimate for c in counts]
            state.account_first = {a: int(f) for a, f in zip(query.accounts, firsts, strict=True) if f is not None}
        return state


    # -- seeding ------------------------------------------------------------------------------------------------
    def seed(self, snapshot: SnapshotStore, source: str, chunk: int = 2000) -> SeedResult:
        """Load a frozen snapshot (the entity history at a training table's end) into this namespace if it has
        none yet, so that a new store continues the training table's windows and all-history counts instead of
        starting cold.

        The namespace's history is its seed marker ``{ns}:seed`` (a hash: ``source``, ``state`` loading or ready,
        ``started``, ``finished``), claimed by the first loader: a namespace seeded by another source (another
        model's snapshot, ``log`` for a rebuild) is left as it is. Idempotent and resumable: each chunk of folded
        aggregates and accounts is applied at most once (its id is recorded in the same script call), the kept
        events go through `write` (idempotent by transaction id), so a loader that died half-way, or two replicas
        loading at once, end with the snapshot loaded once. Transactions recorded meanwhile add up with it.
        Approximate: an entity the snapshot counted beyond ``exact_accounts`` accounts gets placeholders in its
        HyperLogLog for the accounts the snapshot no longer names, so those of them that are also among the
        snapshot's kept events, or are seen again later, count twice."""
        seed_key = f"{self.namespace}:seed"
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
            self.write(records[start:start + chunk])
        with _unavailable("seeding"):
            self.client.hset(seed_key, mapping={"state": "ready", "finished": _now()})
            self.client.delete(f"{self.namespace}:seed:done")
        return SeedResult(True, source, entities, len(records))

    def _seed_chunk(self, snapshot: SnapshotStore, column: str, lo: int, hi: int, source: str) -> int:
        frozen = snapshot.columns[column]
        keys = [f"{self.namespace}:seed", f"{self.namespace}:seed:done"]
        args: list[str | int] = [source, f"{column}:{lo}", self.limits.exact_accounts, self.limits.retention_seconds,
                                 hi - lo]
        accounts = snapshot.accounts
        for i in range(lo, hi):
            ref = EntityRef(column, str(frozen.keys[i]), frozen.account_start is not None)
            keys += [self._key(kind, ref) for kind in ("agg", "acc", "hll")]
            n = int(frozen.count[i])
            args += [n, *((repr(float(frozen.amount_sum[i])), repr(float(frozen.amount_max[i])), int(frozen.last[i]))
                          if n else ("", "", ""))]
            if frozen.account_start is None:
                args += [0, 0]
                continue
            assert frozen.account_code is not None and frozen.account_first is not None
            assert frozen.accounts_exact is not None and frozen.account_total is not None
            a_lo, a_hi = int(frozen.account_start[i]), int(frozen.account_start[i + 1])
            args.append(a_hi - a_lo)
            for code, first in zip(frozen.account_code[a_lo:a_hi].tolist(), frozen.account_first[a_lo:a_hi].tolist(),
                                   strict=True):
                args += [str(accounts[code]), first]
            args.append(0 if frozen.accounts_exact[i] else int(frozen.account_total[i]))
        with _unavailable("seeding"):
            self.client.eval(_SEED, len(keys), *keys, *args)
        return hi - lo

    def seed_state(self) -> dict[str, str]:
        """This namespace's seed marker (empty when nothing was seeded)."""
        with _unavailable("read"):
            return {k.decode(): v.decode() for k, v in self.client.hgetall(f"{self.namespace}:seed").items()}


# -- frozen snapshot ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrozenColumn:
    """One entity column of a `SnapshotStore`: per key (``keys``, sorted texts) its kept events (rows
    ``event_start[i]:event_start[i+1]`` of the event arrays, in time order), its folded aggregates, and for
    paired columns its accounts (rows ``account_start[i]:account_start[i+1]``, sorted by account code, with the
    time each was first seen; ``first_sorted``: the same times sorted) or, beyond ``exact_accounts``, their number.
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
    first_sorted: np.ndarray | None = None
    accounts_exact: np.ndarray | None = None
    account_total: np.ndarray | None = None


class SnapshotStore:
    """A read-only store holding what a `MemoryStore` holds after recording a table (`entity_features.snapshot`
    builds it vectorised): the frozen statistics a scorer without an online store serves with, never updated.

    Columnar (numpy arrays, saved as one Parquet file per table), so a model bundle loads it quickly and keeps it
    small. Writes raise `TypeError`. ``last`` is `NO_TIME` for a key with nothing folded."""

    NO_TIME = np.iinfo(np.int64).min

    def __init__(self, limits: StoreLimits, columns: dict[str, FrozenColumn], accounts: np.ndarray,
                 txns: np.ndarray) -> None:
        self.limits = limits
        self.columns = columns
        self.accounts = accounts
        self.txns = txns
        self._index = {col: {key: i for i, key in enumerate(frozen.keys.tolist())} for col, frozen in columns.items()}
        self._account_code = {text: code for code, text in enumerate(accounts.tolist())}

    def read(self, queries: Sequence[KeyQuery]) -> list[KeyState]:
        out = []
        for query in queries:
            frozen = self.columns.get(query.entity.column)
            found = self._index[query.entity.column].get(query.entity.key, -1) if frozen else -1
            if frozen is None or found < 0:
                out.append(KeyState(accounts_before=[0] * len(query.times)))
                continue
            lo, hi = frozen.event_start[found], frozen.event_start[found + 1]
            accounts, txns = self.accounts, self.txns
            events = [Event(t, a, None if c < 0 else accounts[c], txns[x]) for t, a, c, x in zip(
                frozen.event_ticks[lo:hi].tolist(), frozen.event_amount[lo:hi].tolist(),
                frozen.event_account[lo:hi].tolist(), frozen.event_txn[lo:hi].tolist(), strict=True)]
            last = int(frozen.last[found])
            state = KeyState(events=events, count=int(frozen.count[found]),
                             amount_sum=float(frozen.amount_sum[found]), amount_max=float(frozen.amount_max[found]),
                             last=None if last == self.NO_TIME else last)
            if query.entity.paired and frozen.account_start is not None:
                assert frozen.accounts_exact is not None and frozen.account_total is not None
                assert frozen.account_code is not None and frozen.account_first is not None
                assert frozen.first_sorted is not None
                state.accounts_exact = bool(frozen.accounts_exact[found])
                if not state.accounts_exact:
                    state.accounts_before = [int(frozen.account_total[found])] * len(query.times)
                else:
                    a_lo, a_hi = frozen.account_start[found], frozen.account_start[found + 1]
                    firsts = frozen.first_sorted[a_lo:a_hi]
                    state.accounts_before = np.searchsorted(firsts, np.array(query.times, dtype=np.int64),
                                                            "left").tolist()
                    codes = frozen.account_code[a_lo:a_hi]
                    for account in query.accounts:
                        code = self._account_code.get(account, -1)
                        at = int(np.searchsorted(codes, code)) if code >= 0 else len(codes)
                        if at < len(codes) and codes[at] == code:
                            state.account_first[account] = int(frozen.account_first[a_lo + at])
            out.append(state)
        return out

    def records(self) -> list[Record]:
        """The kept events as transactions to record (each with every entity value that keeps it), in time
        order: what `RedisStore.seed` writes after the folded aggregates."""
        by_txn: dict[int, list[EntityRef]] = {}
        first: dict[int, tuple[int, float, int]] = {}
        for column, frozen in self.columns.items():
            paired = frozen.account_start is not None
            sizes = np.diff(frozen.event_start)
            for key, ticks, amount, account, txn in zip(np.repeat(frozen.keys, sizes).tolist(),
                                                        frozen.event_ticks.tolist(), frozen.event_amount.tolist(),
                                                        frozen.event_account.tolist(), frozen.event_txn.tolist(),
                                                        strict=True):
                by_txn.setdefault(txn, []).append(EntityRef(column, str(key), paired))
                first.setdefault(txn, (ticks, amount, account))
        out = [Record(str(self.txns[txn]), ticks, amount, None if account < 0 else str(self.accounts[account]),
                      tuple(by_txn[txn])) for txn, (ticks, amount, account) in first.items()]
        return sorted(out, key=lambda r: (r.ticks, r.txn))

    def write(self, records: Sequence[Record]) -> int:
        raise TypeError("a frozen snapshot is read-only: record transactions in an online store")

    def read_and_write(self, queries: Sequence[KeyQuery], records: Sequence[Record]) -> list[KeyState]:
        self.write(records)  # read-only: raises
        return self.read(queries)

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
                             account_first=first, first_sorted=sorted_runs(first, start),
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
    return datetime.now(UTC).isoformat(timespec="seconds")


def offsets(lengths: np.ndarray) -> np.ndarray:
    """Start of each run of the given lengths, then the end of the last."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


def sorted_runs(values: np.ndarray, start: np.ndarray) -> np.ndarray:
    """``values`` sorted within each run ``start[i]:start[i+1]``."""
    run = np.repeat(np.arange(len(start) - 1), np.diff(start))
    return values[np.lexsort((values, run))]
