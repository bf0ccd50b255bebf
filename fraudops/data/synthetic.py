"""Seeded generator of synthetic e-commerce transactions with fraud patterns and controllable drift."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime
from numbers import Real

import numpy as np
import pandas as pd

from fraudops.errors import ConfigError

COLUMNS = (
    "transaction_id", "user_id", "signup_time", "purchase_time", "amount", "device_id", "ip_address",
    "country", "source", "browser", "category", "payment_method", "is_fraud",
)
PATTERN_COLUMN = "fraud_pattern"
SOURCES = ("SEO", "Ads", "Direct", "Affiliate", "Social")
BROWSERS = ("Chrome", "Safari", "Firefox", "Edge", "Opera")
CATEGORIES = ("electronics", "fashion", "home", "beauty", "sports", "gift_cards", "digital_goods")
PAYMENT_METHODS = ("card", "paypal", "wallet", "bank_transfer")
COMMON_COUNTRIES = ("US", "GB", "DE", "FR", "CA", "ES", "IT", "NL", "AU", "BR", "IN", "JP", "MX", "PL", "SE")
RARE_COUNTRIES = ("NG", "RU", "UA", "VN", "ID", "RO", "PH", "CN", "TR", "PK")
COUNTRIES = COMMON_COUNTRIES + RARE_COUNTRIES
PATTERNS = ("none", "instant_purchase", "device_ip_ring", "card_testing", "risky_source", "account_takeover")
_USER_CHARS, _DEVICE_CHARS = b"0123456789abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"

MAX_DAYS = 3660.0
_EARLIEST, _LATEST = pd.Timestamp("1700-01-01"), pd.Timestamp("2200-01-01")
_HOUR, _DAY = 3600.0, 86_400.0
_MAX_GAP = 5 * 365 * _DAY


def _p(*weights: float) -> np.ndarray:
    w = np.asarray(weights, dtype="float64")
    return w / w.sum()


def _countries(common: float) -> np.ndarray:
    """Country mix: the legit home mix, with `common` of the mass on common and the rest on rare countries."""
    weights = _p(34, 9, 8, 7, 6, 4, 4, 3, 3, 3, 3, 3, 2, 2, 2)
    return np.concatenate([weights * common, np.full(len(RARE_COUNTRIES), (1 - common) / len(RARE_COUNTRIES))])


_HOME_COUNTRY_P = _countries(0.9)
_MIXED_COUNTRY_P = _countries(0.75)
_RISKY_COUNTRY_P = _countries(0.45)
_LEGIT_SOURCE_P = _p(36, 30, 22, 6, 6)
_FRAUD_SOURCE_P = _p(33, 32, 21, 7, 7)
_RISKY_SOURCE_P = _p(12, 12, 6, 40, 30)
_CARD_TESTING_SOURCE_P = _p(30, 20, 40, 5, 5)
_LEGIT_BROWSER_P = _p(46, 26, 10, 12, 6)
_FRAUD_BROWSER_P = _p(50, 20, 12, 10, 8)
_LEGIT_PAYMENT_P = _p(55, 25, 14, 6)
_FRAUD_PAYMENT_P = _p(65, 18, 13, 4)
_CARD, _WALLET = PAYMENT_METHODS.index("card"), PAYMENT_METHODS.index("wallet")
_BASE_CATEGORY_P = _p(18, 25, 16, 13, 12, 6, 10)
_DRIFT_CATEGORY_P = _p(12, 8, 5, 5, 5, 30, 35)
_HIGH_VALUE_CATEGORY_P = _p(35, 20, 10, 6, 8, 15, 6)
_CATEGORY_MEDIAN = np.array([220.0, 60.0, 75.0, 32.0, 65.0, 50.0, 12.0])
_CATEGORY_SIGMA = np.array([0.85, 0.7, 0.8, 0.6, 0.75, 0.6, 1.1])
# Relative purchase intensity per hour of day (UTC): quiet at night, peaking in the evening.
_LEGIT_HOURS = np.array([0.3, 0.2, 0.15, 0.12, 0.12, 0.15, 0.3, 0.55, 0.8, 1.0, 1.1, 1.15,
                         1.2, 1.15, 1.1, 1.1, 1.15, 1.25, 1.4, 1.5, 1.45, 1.25, 0.9, 0.55])
_FRAUD_HOURS = _LEGIT_HOURS**0.6
# Share of fraud rows per pattern (PATTERNS[1:]); `new_pattern` gives account takeover a share of its own.
_PATTERN_SHARES = _p(30, 25, 25, 20, 0)
_DRIFT_PATTERN_SHARES = _p(30 * 0.65, 25 * 0.65, 25 * 0.65, 20 * 0.65, 35)
# First IPv4 octets of each country (fixed, so an address always maps to the same country).
_OCTETS = np.array([o for o in range(1, 224) if o not in (10, 100, 127, 169, 172, 192, 198, 203)])
_OCTETS = _OCTETS[: len(_OCTETS) // len(COUNTRIES) * len(COUNTRIES)].reshape(-1, len(COUNTRIES)).T

# Shared population (``population_seed``): customers and persistent fraud infrastructure arrive as stationary
# streams on the absolute time line, in weekly buckets; each member's attributes are a hash of its key.
_BUCKET = 7 * _DAY
_LANES = 40
_MAX_ARRIVALS_PER_DAY = 8000.0  # bounds the work per window; beyond it, customers buy more often instead
_NO_SIGNUP = np.iinfo(np.int64).min
_U64 = (1 << 64) - 1
_MUL1, _MUL2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), 0x9E3779B97F4A7C15
_NEW_CUSTOMER_SHARE = 0.12  # of legit orders: first purchases of customers who sign up in the window
_CUSTOMER_LIFE = (150 * _DAY, 1.0, _MAX_GAP)  # median, sigma, cap of how long a customer keeps buying
_CREW_LIFE = (60 * _DAY, 0.6, 180 * _DAY)  # ring crews and their devices and IPs
_PROXY_LIFE = (45 * _DAY, 0.7, 180 * _DAY)  # card-testing proxy IPs
_AFFILIATE_LIFE = (45 * _DAY, 0.6, 180 * _DAY)  # IPs behind fraudulent affiliate/social traffic
_BOT_LIFE = (30 * _DAY, 0.6, 180 * _DAY)  # devices of bots that buy right after signing up


def _real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool | np.bool_)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: scrambles 64-bit keys (a bijection)."""
    x = (x ^ (x >> np.uint64(30))) * _MUL1
    x = (x ^ (x >> np.uint64(27))) * _MUL2
    return x ^ (x >> np.uint64(31))


def _salt(field: int) -> np.uint64:
    return np.uint64((field * _GOLDEN) & _U64)


def _unit(keys: np.ndarray, field: int) -> np.ndarray:
    """A uniform number in [0, 1) per key and field."""
    return (_mix(keys ^ _salt(field)) >> np.uint64(11)).astype("float64") * 2.0**-53


def _normal(keys: np.ndarray, field: int) -> np.ndarray:
    """A standard normal number per key and field (Box-Muller)."""
    radius = np.sqrt(-2.0 * np.log1p(-_unit(keys, field)))
    return radius * np.cos(2 * math.pi * _unit(keys, field + 1))


def _category(u: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Inverse CDF of a categorical distribution."""
    return np.minimum(np.searchsorted(np.cumsum(p), u, side="right"), len(p) - 1)


def _sub_keys(keys: np.ndarray, field: int, index: np.ndarray | int = 0) -> np.ndarray:
    """Keys of things belonging to ``keys`` (its devices, IPs, ...): field and index pick one."""
    return _mix(keys ^ _salt(field) ^ (np.asarray(index).astype(np.uint64) * np.uint64(_GOLDEN)))


def _key_ips(keys: np.ndarray, countries: np.ndarray) -> np.ndarray:
    """A fixed IPv4 address (as an integer) per key, in the given countries."""
    octet = _OCTETS[countries, (_unit(keys, 90) * _OCTETS.shape[1]).astype(np.int64)]
    return (octet.astype(np.int64) << 24) | (_mix(keys ^ _salt(91)) & np.uint64(0xFFFFFF)).astype(np.int64)


def _key_names(keys: np.ndarray, alphabet: bytes, length: int, prefix: bytes = b"") -> np.ndarray:
    """A fixed identifier per key: ``prefix`` then ``length`` characters from ``alphabet``."""
    words = np.stack([_mix(keys ^ _salt(92 + i)) for i in range(-(-length // 8))], axis=1)
    random_bytes = words.view(np.uint8)[:, :length].astype(np.uint16)
    table = np.frombuffer(alphabet, dtype=np.uint8)
    return _strings(prefix, table[(random_bytes * len(table)) >> 8])


def _hour_of_day(u: np.ndarray) -> np.ndarray:
    """Seconds into the day, following the legit intensity per hour (inverse CDF)."""
    cum = np.concatenate([[0.0], np.cumsum(_LEGIT_HOURS)]) / _LEGIT_HOURS.sum()
    hour = np.minimum(np.searchsorted(cum, u, side="right") - 1, 23)
    return (hour + (u - cum[hour]) / (cum[hour + 1] - cum[hour])) * _HOUR


def _mean_days(life: tuple[float, float, float]) -> float:
    """Mean in days of a lognormal lifetime (median, sigma, cap in seconds) capped at ``cap``."""
    median, sigma, cap = life
    mu = math.log(median)
    below = math.exp(mu + sigma**2 / 2) * 0.5 * (1 + math.erf((math.log(cap) - mu - sigma**2) / (sigma * 2**0.5)))
    above = cap * 0.5 * math.erfc((math.log(cap) - mu) / (sigma * 2**0.5))
    return (below + above) / _DAY


@dataclass
class _Cohort:
    """Members of one population stream that are around during a window (times in absolute Unix seconds)."""

    keys: np.ndarray
    bucket: np.ndarray  # week of arrival
    lane: np.ndarray  # lifetime class
    slot: np.ndarray  # index among the arrivals of the week and lane
    arrival: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, index: np.ndarray) -> _Cohort:
        return _Cohort(*(v[index] for v in (self.keys, self.bucket, self.lane, self.slot, self.arrival, self.end)))


class _Population:
    """A customer base and fraud infrastructure that exist independently of any one generated window.

    Every stream (customers, ring crews, proxy IPs, ...) has members arriving at a steady rate and staying for
    a lognormal lifetime. Arrivals are laid out in weekly buckets of the absolute time line and in lanes of
    similar lifetime, ``slot`` 0, 1, ... within each, and everything about a member is a hash of (population
    seed, stream, bucket, lane, slot), so any window - at any start - sees the same members. A window asks for
    the arrival rate its traffic needs; a higher rate adds slots, so windows with different volumes share the
    members of the smaller one. Only lanes whose members can still be around are laid out for old buckets.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def _stream(self, name: str) -> np.uint64:
        digest = hashlib.blake2b(f"{self.seed}:{name}".encode(), digest_size=8).digest()
        return np.uint64(int.from_bytes(digest, "little"))

    def keys(self, name: str, *parts: np.ndarray) -> np.ndarray:
        """Keys of stream ``name`` identified by integer ``parts`` (e.g. bucket and slot)."""
        keys = np.full(len(parts[0]), self._stream(name))
        for part in parts:
            keys = _mix(keys ^ (part.astype(np.uint64) * np.uint64(_GOLDEN)))
        return keys

    def cohort(self, name: str, per_day: float, lo: float, hi: float, life: tuple[float, float, float],
               daily_rhythm: bool = False) -> _Cohort:
        """Members of stream ``name`` arriving ``per_day`` that are around at some time in ``[lo, hi)``."""
        median, sigma, cap = life
        per_bucket = min(per_day, _MAX_ARRIVALS_PER_DAY) * _BUCKET / _DAY
        # Lifetime lanes: log-uniform within a lane, each lane holding its share of the lognormal.
        edges = np.linspace(math.log(_DAY), math.log(cap), _LANES + 1)
        cdf = [0.5 * math.erfc((math.log(median) - e) / (sigma * 2**0.5)) for e in edges[1:-1]]
        shares = np.diff([0.0, *cdf, 1.0])
        lanes = [np.arange(math.floor((lo - math.exp(edges[k + 1])) / _BUCKET), math.floor(hi / _BUCKET) + 1)
                 for k in range(_LANES)]
        lane = np.repeat(np.arange(_LANES), [len(b) for b in lanes])
        buckets = np.concatenate(lanes)
        expected = per_bucket * shares[lane]  # a fractional slot is present in some buckets only
        cell = self.keys(name, lane, buckets)
        counts = (np.floor(expected) + (_unit(cell, 1) < expected - np.floor(expected))).astype(np.int64)
        member, slot = _members(counts)
        bucket, lane = buckets[member], lane[member]
        keys = _mix(cell[member] + slot.astype(np.uint64) * np.uint64(_GOLDEN))
        life = np.exp(edges[lane] + _unit(keys, 4) * (edges[1] - edges[0]))
        if daily_rhythm:
            offset = np.floor(_unit(keys, 2) * 7) * _DAY + _hour_of_day(_unit(keys, 3))
        else:
            offset = _unit(keys, 2) * _BUCKET
        arrival = np.floor(bucket * _BUCKET + offset).astype(np.int64)
        end = arrival + life
        around = (arrival < hi) & (end > lo)
        return _Cohort(keys[around], bucket[around], lane[around], slot[around], arrival[around], end[around])


@dataclass(frozen=True)
class DriftConfig:
    """Knobs that make generated traffic differ from the baseline (all default to no drift).

    ``amount_shift`` multiplies every amount by ``exp(amount_shift)``; ``category_mix`` blends the legit
    category mix toward a gift-card/digital-goods heavy one (0 = baseline, 1 = fully shifted);
    ``new_pattern`` adds account takeover, a fraud pattern absent from baseline traffic, taking part of the
    fraud share; ``fraud_rate_multiplier`` scales the fraud rate.
    """

    amount_shift: float = 0.0
    category_mix: float = 0.0
    new_pattern: bool = False
    fraud_rate_multiplier: float = 1.0

    def __post_init__(self) -> None:
        if not (_real(self.amount_shift) and -10 <= self.amount_shift <= 10):
            raise ConfigError(f"drift amount_shift must be a finite number in [-10, 10], got {self.amount_shift!r}")
        if not (_real(self.category_mix) and 0 <= self.category_mix <= 1):
            raise ConfigError(f"drift category_mix must be a number in [0, 1], got {self.category_mix!r}")
        if not isinstance(self.new_pattern, bool | np.bool_):
            raise ConfigError(f"drift new_pattern must be true or false, got {self.new_pattern!r}")
        if not (_real(self.fraud_rate_multiplier) and 0 < self.fraud_rate_multiplier < math.inf):
            raise ConfigError(
                f"drift fraud_rate_multiplier must be a finite number > 0, got {self.fraud_rate_multiplier!r}"
            )


class _World:
    """Random state, time window and the users, devices and IP addresses shared by all traffic segments."""

    def __init__(self, rng: np.random.Generator, span: float, start: pd.Timestamp, category_p: np.ndarray,
                 population: _Population | None = None):
        self.rng = rng
        self.span = span
        self.start_of_day = (start - start.normalize()).total_seconds()
        self.category_p = category_p
        self.population = population
        self.lo, self.hi = start.value / 1e9, start.value / 1e9 + span  # the window in absolute Unix seconds
        self.rate_days = max(span / _DAY, 1.0)  # volume per day of the window (shorter ones count as a day)
        self.gaps: list[np.ndarray] = []
        self.signups: list[np.ndarray] = []  # absolute signup second of population accounts, else _NO_SIGNUP
        self.user_keys: list[np.ndarray] = []  # population key of each account (0: made up for this window)
        self.browsers: list[np.ndarray] = []
        self.device_keys: list[np.ndarray] = []
        self.n_users = self.n_devices = self.n_ips = 0
        self._ip_mult = int(rng.integers(0, 1 << 23)) * 2 + 1
        self._ip_add = int(rng.integers(0, 1 << 24))

    def users(self, gaps: np.ndarray) -> np.ndarray:
        """New accounts, signed up ``gaps`` seconds (1 s to 5 years) before their first purchase."""
        self.gaps.append(np.clip(gaps, 1.0, _MAX_GAP))
        self.signups.append(np.full(len(gaps), _NO_SIGNUP))
        self.user_keys.append(np.zeros(len(gaps), dtype=np.uint64))
        self.n_users += len(gaps)
        return np.arange(self.n_users - len(gaps), self.n_users)

    def known_users(self, keys: np.ndarray, signups: np.ndarray) -> np.ndarray:
        """Accounts of the shared population (distinct keys), signed up at absolute second ``signups``."""
        self.gaps.append(np.zeros(len(keys)))
        self.signups.append(signups.astype(np.int64))
        self.user_keys.append(keys)
        self.n_users += len(keys)
        return np.arange(self.n_users - len(keys), self.n_users)

    def gap_of(self, users: np.ndarray) -> np.ndarray:
        return np.concatenate(self.gaps)[users]

    def age_at_start(self, users: np.ndarray) -> np.ndarray:
        """Seconds from each population account's signup to the window start (-inf for other accounts)."""
        signup = np.concatenate(self.signups)[users]
        return np.where(signup != _NO_SIGNUP, self.lo - signup, -np.inf)

    def devices(self, n: int, browser_p: np.ndarray) -> np.ndarray:
        """New devices, each with one browser."""
        self.browsers.append(self.rng.choice(len(BROWSERS), size=n, p=browser_p))
        self.device_keys.append(np.zeros(n, dtype=np.uint64))
        self.n_devices += n
        return np.arange(self.n_devices - n, self.n_devices)

    def known_devices(self, keys: np.ndarray, browser_p: np.ndarray) -> np.ndarray:
        """Devices of the shared population (one per key; the browser is part of the device)."""
        unique, inverse = np.unique(keys, return_inverse=True)
        self.browsers.append(_category(_unit(unique, 93), browser_p))
        self.device_keys.append(unique)
        self.n_devices += len(unique)
        return (self.n_devices - len(unique) + inverse).astype(np.int64)

    def cohort(self, name: str, per_day: float, life: tuple[float, float, float],
               daily_rhythm: bool = False) -> _Cohort:
        """Members of a population stream around during the window (see `_Population.cohort`)."""
        assert self.population is not None
        return self.population.cohort(name, per_day, self.lo, self.hi, life, daily_rhythm)

    def reused(self, cohort: _Cohort, n: int, share: float) -> np.ndarray:
        """For ``n`` groups, a random member of ``cohort`` for about ``share`` of them, else -1 (new ones)."""
        pick = np.full(n, -1)
        reuse = self.rng.random(n) < share
        if len(cohort):
            pick[reuse] = self.rng.integers(0, len(cohort), size=int(reuse.sum()))
        return pick

    def in_use(self, cohort: _Cohort, t: np.ndarray, share: float) -> np.ndarray:
        """For rows at times ``t`` (seconds into the window), a random member of ``cohort`` around at that time
        for about ``share`` of them, else -1."""
        pick, t = self.reused(cohort, len(t), share), t + self.lo
        for _ in range(20):
            used = pick >= 0
            retry = used.copy()
            retry[used] = (cohort.arrival[pick[used]] > t[used]) | (t[used] >= cohort.end[pick[used]])
            if not retry.any():
                break
            pick[retry] = self.rng.integers(0, len(cohort), size=int(retry.sum()))
        else:
            pick[retry] = -1
        return pick

    def around(self, cohort: _Cohort, pick: np.ndarray, length: np.ndarray | float, lo: np.ndarray | float,
               hi: np.ndarray | float) -> tuple[np.ndarray | float, np.ndarray | float]:
        """Limits ``[lo, hi]`` for the start of episodes of ``length`` seconds, narrowed to the lifetime of the
        picked cohort member (where ``pick >= 0``) as far as the window allows."""
        if not (pick >= 0).any():
            return lo, hi
        lo, hi = np.broadcast_to(lo, pick.shape).copy(), np.broadcast_to(hi, pick.shape).copy()
        m = pick >= 0
        first = np.maximum(cohort.arrival[pick[m]] - self.lo, 0.0)
        last = np.maximum(first, cohort.end[pick[m]] - self.lo - np.broadcast_to(length, pick.shape)[m])
        lo[m], hi[m] = np.minimum(first, hi[m]), np.minimum(last, hi[m])
        return lo, hi

    def times_between(self, lo: np.ndarray, hi: np.ndarray, hour_weights: np.ndarray) -> np.ndarray:
        """One time per row in ``[lo, hi)`` (seconds into the window), with the given intensity per hour."""
        accept = hour_weights / hour_weights.max()
        t = np.empty(len(lo))
        todo = np.arange(len(lo))
        while len(todo):
            cand = lo[todo] + self.rng.random(len(todo)) * (hi[todo] - lo[todo])
            hour = ((cand + self.start_of_day) // _HOUR).astype(np.int64) % 24
            ok = self.rng.random(len(todo)) < accept[hour]
            t[todo[ok]] = cand[ok]
            todo = todo[~ok]
        return np.minimum(t, np.nextafter(hi, -np.inf))

    def ips(self, countries: np.ndarray) -> np.ndarray:
        """New distinct IPv4 addresses (as integers) in the given countries."""
        idx = np.arange(self.n_ips, self.n_ips + len(countries), dtype=np.int64)
        self.n_ips += len(countries)
        octet = _OCTETS[countries, self.rng.integers(0, _OCTETS.shape[1], size=len(countries))]
        return (octet.astype(np.int64) << 24) | ((idx * self._ip_mult + self._ip_add) & 0xFFFFFF)

    def times(self, n: int, hour_weights: np.ndarray) -> np.ndarray:
        """Seconds into the window, with the given intensity per hour of day."""
        accept = hour_weights / hour_weights.max()
        parts, have = [], 0
        while have < n:
            t = self.rng.random(2 * (n - have) + 16) * self.span
            hour = ((t + self.start_of_day) // _HOUR).astype(np.int64) % 24
            parts.append(t[self.rng.random(len(t)) < accept[hour]])
            have += len(parts[-1])
        return np.concatenate(parts)[:n] if parts else np.zeros(0)

    def choice(self, p: np.ndarray, n: int) -> np.ndarray:
        return self.rng.choice(len(p), size=n, p=p)

    def amounts(self, category: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Lognormal amounts around each category's median times ``scale``."""
        return scale * _CATEGORY_MEDIAN[category] * np.exp(self.rng.normal(0.0, _CATEGORY_SIGMA[category]))

    def lognormal(self, median: float, sigma: float, n: int) -> np.ndarray:
        return self.rng.lognormal(math.log(median), sigma, size=n)


def _group_sizes(rng: np.random.Generator, total: int, lo: int, hi: int) -> np.ndarray:
    """Random group sizes in [lo, hi] summing to ``total`` (the last group may be smaller)."""
    sizes = rng.integers(lo, hi + 1, size=total // lo + 1)
    cum = np.cumsum(sizes)
    k = int(np.searchsorted(cum, total)) + 1
    sizes = sizes[:k]
    sizes[-1] -= cum[k - 1] - total
    return sizes[sizes > 0]


def _pick(rng: np.random.Generator, starts: np.ndarray, counts: np.ndarray, group: np.ndarray) -> np.ndarray:
    """For each row, a random member of its group's block ``starts[g] .. starts[g] + counts[g]``."""
    return starts[group] + rng.integers(0, counts[group])


def _blocks(counts: np.ndarray) -> np.ndarray:
    """Start of each block when blocks of ``counts`` members are laid end to end."""
    return np.cumsum(counts) - counts


def _members(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For blocks of ``counts`` members laid end to end: each member's block and its index in the block."""
    owner = np.repeat(np.arange(len(counts)), counts)
    return owner, np.arange(len(owner)) - _blocks(counts)[owner]


def _legit(w: _World, n: int) -> dict[str, np.ndarray]:
    """Returning customers sharing household and office IPs, with a few quick and travelling purchases."""
    rng = w.rng
    n_users = max(1, round(n / 2.2))
    # Each user's home IP: own line (1), household (2-4 accounts) or office NAT (8-30 accounts).
    kind = rng.choice(3, size=n_users, p=[0.82, 0.14, 0.04])
    order = np.argsort(kind, kind="stable")
    sizes = np.concatenate([_group_sizes(rng, int((kind == k).sum()), lo, hi)
                            for k, (lo, hi) in enumerate(((1, 1), (2, 4), (8, 30)))])
    group = np.empty(n_users, dtype=np.int64)
    group[order] = np.repeat(np.arange(len(sizes)), sizes)
    group_country = w.choice(_HOME_COUNTRY_P, len(sizes))
    group_ip = w.ips(group_country)
    # Devices: own, or a family/office computer shared by a quarter of the groups; a second one for a quarter.
    device = w.devices(n_users, _LEGIT_BROWSER_P)
    leader = order[_blocks(sizes)]
    shared = (kind[leader] > 0) & (rng.random(len(sizes)) < 0.25)
    device = np.where(shared[group], device[leader[group]], device)
    second = np.full(n_users, -1)
    has_second = rng.random(n_users) < 0.25
    second[has_second] = w.devices(int(has_second.sum()), _LEGIT_BROWSER_P)
    # Signup: well before (65%), at checkout (30%) or seconds before the first purchase (5%).
    when = rng.choice(3, size=n_users, p=[0.65, 0.3, 0.05])
    gaps = np.choose(when, [w.lognormal(25 * _DAY, 1.4, n_users), w.lognormal(30 * 60.0, 1.8, n_users),
                            w.lognormal(45.0, 1.2, n_users)])
    users = w.users(gaps)
    source_u, payment_u = w.choice(_LEGIT_SOURCE_P, n_users), w.choice(_LEGIT_PAYMENT_P, n_users)
    gamer = rng.random(n_users) < 0.06  # regulars topping up games and apps with small digital orders

    activity = np.cumsum(rng.gamma(0.35, size=n_users))
    u = np.minimum(np.searchsorted(activity / activity[-1], rng.random(n)), n_users - 1)
    t = w.times(n, _LEGIT_HOURS)
    _sessions(w, u, t)
    return _purchases(w, u, t, users, device, second, group_country[group], group_ip[group], source_u, payment_u,
                      gamer, None)


def _legit_shared(w: _World, n: int) -> dict[str, np.ndarray]:
    """Purchases of the shared customer base: who buys, when and for how much is random per window; who the
    customers are (account, signup, home devices, IP, country, habits) is fixed by the population."""
    rng, population = w.rng, w.population
    assert population is not None
    if n == 0:
        return _legit(w, n)
    # Signups per day such that first purchases are about _NEW_CUSTOMER_SHARE of the window's legit orders.
    customers = w.cohort("customers", _NEW_CUSTOMER_SHARE * n / w.rate_days, _CUSTOMER_LIFE, daily_rhythm=True)
    since = customers.arrival - w.lo  # signup, in seconds into the window
    # Customers signing up during the window buy right away: mostly at checkout, minutes or seconds after
    # signing up; some come back days later.
    newcomer = np.flatnonzero(since >= 0)
    how = rng.random(len(newcomer))
    gap = np.choose((how >= 0.84).astype(np.int64) + (how >= 0.92),
                    [w.lognormal(30 * 60.0, 1.8, len(newcomer)), w.lognormal(45.0, 1.2, len(newcomer)),
                     w.lognormal(3 * _DAY, 1.2, len(newcomer))])
    first_t = since[newcomer] + np.maximum(gap, 1.5)
    newcomer, first_t = newcomer[first_t < w.span], first_t[first_t < w.span]
    if len(newcomer) > n:  # tiny windows
        keep = np.sort(rng.choice(len(newcomer), size=n, replace=False))
        newcomer, first_t = newcomer[keep], first_t[keep]
    # Other purchases: each customer buys at its own rate while a customer (after a newcomer's first purchase).
    activity = _normal(customers.keys, 10) ** 2  # gamma(0.5): most buy rarely, a few very often
    lo = np.maximum(since + 1.5, 0.0)
    hi = np.minimum(customers.end - w.lo, w.span)
    lo[since >= 0] = hi[since >= 0]
    lo[newcomer] = first_t + 1.0
    weight = np.cumsum(activity * np.maximum(hi - lo, 0.0))
    n_more = n - len(newcomer)
    if n_more and not (len(weight) and weight[-1] > 0):  # nobody around (tiny windows): made-up customers
        return _legit(w, n)
    more = (np.minimum(np.searchsorted(weight, np.sort(rng.random(n_more)) * weight[-1], side="right"),
                       len(weight) - 1)
            if n_more else np.zeros(0, dtype=np.int64))
    chosen, u = np.unique(np.concatenate([newcomer, more]), return_inverse=True)
    c, lo, hi = customers.take(chosen), lo[chosen], hi[chosen]
    n_users = len(c)
    t = np.concatenate([first_t, w.times_between(lo[u[len(newcomer):]], hi[u[len(newcomer):]], _LEGIT_HOURS)])
    _sessions(w, u, t)

    # The customers' fixed traits. Home IP: own line (82%), household (14%, 2-4 accounts signing up within a
    # month) or office NAT (4%); households and offices share a family/office computer a quarter of the time.
    kind = _category(_unit(c.keys, 12), _p(0.82, 0.14, 0.04))
    household = population.keys("households", c.bucket // 4, c.lane, c.slot // 4)
    office = population.keys("offices", c.bucket // 13, c.lane, c.slot // 48)
    group = np.choose(kind, [c.keys, household, office])
    home_country = _category(_unit(group, 18), _HOME_COUNTRY_P)
    home_ip = _key_ips(group, home_country)
    shared = (kind > 0) & (_unit(group, 19) < 0.25)
    device = w.known_devices(_sub_keys(np.where(shared, group, c.keys), 20), _LEGIT_BROWSER_P)
    has_second = _unit(c.keys, 21) < 0.25
    second = np.full(n_users, -1)
    second[has_second] = w.known_devices(_sub_keys(c.keys[has_second], 22), _LEGIT_BROWSER_P)
    source_u = _category(_unit(c.keys, 23), _LEGIT_SOURCE_P)
    payment_u = _category(_unit(c.keys, 24), _LEGIT_PAYMENT_P)
    gamer = _unit(c.keys, 25) < 0.06  # regulars topping up games and apps with small digital orders
    habit = np.exp(0.3 * _normal(c.keys, 26))  # spends a little more or less than most
    users = w.known_users(c.keys, c.arrival)

    return _purchases(w, u, t, users, device, second, home_country, home_ip, source_u, payment_u, gamer, habit)


def _sessions(w: _World, u: np.ndarray, t: np.ndarray) -> None:
    """Shopping sessions: some purchases follow the same customer's previous one within minutes (``t`` in place)."""
    rng, n = w.rng, len(u)
    by_user = np.lexsort((t, u))
    same_user = u[by_user][1:] == u[by_user][:-1]
    follow = np.zeros(n, dtype=bool)
    follow[1:] = same_user & (rng.random(same_user.shape) < 0.2)
    t[by_user[follow]] = np.minimum(t[by_user[np.flatnonzero(follow) - 1]] + rng.exponential(180.0, follow.sum()),
                                    np.nextafter(w.span, 0))


def _purchases(w: _World, u: np.ndarray, t: np.ndarray, users: np.ndarray, device: np.ndarray, second: np.ndarray,
               home_country: np.ndarray, home_ip: np.ndarray, source_u: np.ndarray, payment_u: np.ndarray,
               gamer: np.ndarray, habit: np.ndarray | None) -> dict[str, np.ndarray]:
    """Legit purchases by customers ``u`` at times ``t``: mostly from home (device, IP, country), sometimes on a
    second device, mobile or travelling; the customer's usual source and payment; amounts scaled by ``habit``."""
    rng, n = w.rng, len(u)
    dev = device[u]
    other = (second[u] >= 0) & (rng.random(n) < 0.35)
    dev[other] = second[u[other]]
    country, ip = home_country[u], home_ip[u]
    mobile = rng.random(n) < 0.12
    ip[mobile] = w.ips(country[mobile])
    travel = rng.random(n) < 0.015
    country[travel] = w.choice(_HOME_COUNTRY_P, int(travel.sum()))
    ip[travel] = w.ips(country[travel])
    category = w.choice(w.category_p, n)
    amount = w.amounts(category) if habit is None else w.amounts(category) * habit[u]
    top_up = gamer[u] & (rng.random(n) < 0.8)
    category[top_up] = CATEGORIES.index("digital_goods")
    amount[top_up] = w.lognormal(4.0, 0.8, int(top_up.sum()))
    return {
        "user": users[u], "t": t, "amount": amount, "device": dev, "ip": ip, "country": country,
        "source": np.where(rng.random(n) < 0.65, source_u[u], w.choice(_LEGIT_SOURCE_P, n)),
        "category": category,
        "payment": np.where(rng.random(n) < 0.75, payment_u[u], w.choice(_LEGIT_PAYMENT_P, n)),
    }


def _instant(w: _World, n: int) -> dict[str, np.ndarray]:
    """Bots buying seconds after signing up (45% wait hours), on devices sometimes reused."""
    rng = w.rng
    gaps = np.where(rng.random(n) < 0.55, w.lognormal(8.0, 1.0, n), w.lognormal(3 * _HOUR, 1.8, n))
    pool = w.devices(max(1, round(0.8 * n)), _FRAUD_BROWSER_P)
    country = w.choice(_MIXED_COUNTRY_P, n)
    category = w.choice(_HIGH_VALUE_CATEGORY_P, n)
    rows = {
        "user": w.users(gaps), "t": w.times(n, _FRAUD_HOURS), "amount": w.amounts(category, 1.1),
        "device": pool[rng.integers(0, len(pool), size=n)], "ip": w.ips(country), "country": country,
        "source": w.choice(_FRAUD_SOURCE_P, n), "category": category, "payment": w.choice(_FRAUD_PAYMENT_P, n),
    }
    if w.population is not None and n:  # the bots' devices (emulators, device farms) stay in use for weeks
        bots = w.cohort("bot_devices", 24 * n / w.rate_days / _mean_days(_BOT_LIFE), _BOT_LIFE)
        pick = w.in_use(bots, rows["t"], 1.0)
        rows["device"][pick >= 0] = w.known_devices(_sub_keys(bots.keys[pick[pick >= 0]], 60), _FRAUD_BROWSER_P)
    return rows


def _rings(w: _World, n: int) -> dict[str, np.ndarray]:
    """Rings of fresh accounts on a few shared devices and IPs, active for a few days (some rows leak out)."""
    rng = w.rng
    sizes = _group_sizes(rng, n, 5, 40)
    ring = np.repeat(np.arange(len(sizes)), sizes)
    ring_country = w.choice(_MIXED_COUNTRY_P, len(sizes))
    n_dev, n_ip = rng.integers(1, 4, size=len(sizes)), rng.integers(1, 5, size=len(sizes))
    if w.population is not None:  # about half the rings are crews seen before, on their devices and IPs
        crews = w.cohort("ring_crews", 12 * len(sizes) / w.rate_days / _mean_days(_CREW_LIFE), _CREW_LIFE)
        crew = w.reused(crews, len(sizes), 0.5)
        again = crew >= 0
        keys = crews.keys[crew[again]]
        ring_country[again] = _category(_unit(keys, 30), _MIXED_COUNTRY_P)
        n_dev[again] = 1 + (_unit(keys, 31) * 3).astype(np.int64)
        n_ip[again] = 1 + (_unit(keys, 32) * 4).astype(np.int64)
    n_acc = np.ceil(0.7 * sizes).astype(np.int64)
    devices = w.devices(int(n_dev.sum()), _FRAUD_BROWSER_P)
    ips = w.ips(np.repeat(ring_country, n_ip))
    if w.population is not None and again.any():  # the crews' own devices and IPs
        owner, nth = _members(n_dev)
        mine = again[owner]
        devices[mine] = w.known_devices(_sub_keys(crews.keys[crew[owner[mine]]], 33, nth[mine]), _FRAUD_BROWSER_P)
        owner, nth = _members(n_ip)
        mine = again[owner]
        ips[mine] = _key_ips(_sub_keys(crews.keys[crew[owner[mine]]], 34, nth[mine]), ring_country[owner[mine]])
    k = int(n_acc.sum())  # accounts opened for the ring, or bought aged ones (20%)
    users = w.users(np.where(rng.random(k) < 0.8, w.lognormal(12 * _HOUR, 1.8, k), w.lognormal(30 * _DAY, 1.5, k)))
    device = devices[_pick(rng, _blocks(n_dev), n_dev, ring)]
    ip = ips[_pick(rng, _blocks(n_ip), n_ip, ring)]
    country = ring_country[ring]
    own_device = rng.random(n) < 0.4
    device[own_device] = w.devices(int(own_device.sum()), _FRAUD_BROWSER_P)
    own_ip = rng.random(n) < 0.35
    ip[own_ip] = w.ips(country[own_ip])
    window = min(4 * _DAY, w.span)
    lo, hi = 0.0, w.span - window
    if w.population is not None:
        lo, hi = w.around(crews, crew, window, lo, hi)
    t = (lo + rng.random(len(sizes)) * (hi - lo))[ring] + rng.random(n) * window
    category = w.choice(_HIGH_VALUE_CATEGORY_P, n)
    return {
        "user": users[_pick(rng, _blocks(n_acc), n_acc, ring)], "t": t, "amount": w.amounts(category, 1.2),
        "device": device, "ip": ip, "country": country, "source": w.choice(_FRAUD_SOURCE_P, n),
        "category": category, "payment": w.choice(_FRAUD_PAYMENT_P, n),
    }


def _card_testing(w: _World, n: int) -> dict[str, np.ndarray]:
    """Bursts of small digital orders from one IP within minutes, then the odd cash-out gift card."""
    rng = w.rng
    sizes = _group_sizes(rng, n, 3, 20)
    burst = np.repeat(np.arange(len(sizes)), sizes)
    first = _blocks(sizes)
    burst_country = w.choice(_MIXED_COUNTRY_P, len(sizes))
    if w.population is not None:  # about half the bursts come through proxies seen before
        proxies = w.cohort("proxies", 6 * len(sizes) / w.rate_days / _mean_days(_PROXY_LIFE), _PROXY_LIFE)
        proxy = w.reused(proxies, len(sizes), 0.5)
        again = proxy >= 0
        burst_country[again] = _category(_unit(proxies.keys[proxy[again]], 40), _MIXED_COUNTRY_P)
    country = burst_country[burst]
    burst_ip = w.ips(country[first])
    if w.population is not None:
        burst_ip[again] = _key_ips(proxies.keys[proxy[again]], burst_country[again])
    ip = burst_ip[burst]
    rotated = rng.random(n) < 0.25  # some orders go through rotating proxies
    ip[rotated] = w.ips(country[rotated])
    n_dev, n_acc = rng.integers(1, 3, size=len(sizes)), rng.integers(1, 4, size=len(sizes))
    devices = w.devices(int(n_dev.sum()), _FRAUD_BROWSER_P)
    k = int(n_acc.sum())  # accounts opened for the attack, or bought aged ones (40%)
    users = w.users(np.where(rng.random(k) < 0.6, w.lognormal(2 * _HOUR, 1.5, k), w.lognormal(20 * _DAY, 1.5, k)))
    # Orders 40 s apart on average; a burst is squeezed into the window if it would not fit.
    elapsed = np.cumsum(rng.exponential(40.0, size=n))
    offset = elapsed - elapsed[first][burst]
    duration = np.maximum(offset[first + sizes - 1], 1e-9)
    squeeze = np.minimum(1.0, 0.999 * w.span / duration)
    lo, hi = 0.0, np.maximum(w.span - duration * squeeze, 0.0)
    if w.population is not None:
        lo, hi = w.around(proxies, proxy, duration * squeeze, lo, hi)
    anchor = lo + rng.random(len(sizes)) * (hi - lo)
    category = np.where(rng.random(n) < 0.6, CATEGORIES.index("digital_goods"), CATEGORIES.index("gift_cards"))
    amount = w.lognormal(3.0, 0.8, n)
    cash_out = rng.random(n) < 0.15
    category[cash_out] = CATEGORIES.index("gift_cards")
    amount[cash_out] = w.amounts(category[cash_out], 2.0)
    return {
        "user": users[_pick(rng, _blocks(n_acc), n_acc, burst)], "t": anchor[burst] + offset * squeeze[burst],
        "amount": amount, "device": devices[_pick(rng, _blocks(n_dev), n_dev, burst)], "ip": ip,
        "country": country, "source": w.choice(_CARD_TESTING_SOURCE_P, n), "category": category,
        "payment": np.where(rng.random(n) < 0.92, _CARD, _WALLET),
    }


def _risky_source(w: _World, n: int) -> dict[str, np.ndarray]:
    """Affiliate/Social traffic from unusual countries buying expensive goods on new accounts."""
    country = w.choice(_RISKY_COUNTRY_P, n)
    category = w.choice(_HIGH_VALUE_CATEGORY_P, n)
    rows = {
        "user": w.users(w.lognormal(2 * _DAY, 1.8, n)), "t": w.times(n, _FRAUD_HOURS),
        "amount": w.amounts(category, 1.6), "device": w.devices(n, _FRAUD_BROWSER_P), "ip": w.ips(country),
        "country": country, "source": w.choice(_RISKY_SOURCE_P, n), "category": category,
        "payment": w.choice(_FRAUD_PAYMENT_P, n),
    }
    if w.population is not None and n:  # 40% come from the IP pools of fraudulent affiliates
        pool = w.cohort("affiliate_ips", 4 * n / w.rate_days / _mean_days(_AFFILIATE_LIFE), _AFFILIATE_LIFE)
        pick = w.in_use(pool, rows["t"], 0.4)
        keys = pool.keys[pick[pick >= 0]]
        country[pick >= 0] = _category(_unit(keys, 50), _RISKY_COUNTRY_P)
        rows["ip"][pick >= 0] = _key_ips(keys, country[pick >= 0])
    return rows


def _account_takeover(w: _World, n: int, legit: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Established customers suddenly buying expensive electronics from a new device, IP and country."""
    rng = w.rng
    if w.population is None:
        old = np.flatnonzero(w.gap_of(legit["user"]) > 60 * _DAY)
    else:  # accounts of the shared customer base, signed up at least 60 days before the window
        old = np.flatnonzero(w.age_at_start(legit["user"]) > 60 * _DAY)
    if len(old):
        row = old[rng.integers(0, len(old), size=n)]
        user, source, payment, home = (legit[k][row] for k in ("user", "source", "payment", "country"))
    else:  # no customer history to hijack (tiny tables): dormant accounts
        user = w.users(w.lognormal(150 * _DAY, 0.4, n))
        source, payment = w.choice(_LEGIT_SOURCE_P, n), w.choice(_LEGIT_PAYMENT_P, n)
        home = w.choice(_HOME_COUNTRY_P, n)
    country = w.choice(_MIXED_COUNTRY_P, n)
    country = np.where(country == home, (country + rng.integers(1, len(COUNTRIES), size=n)) % len(COUNTRIES),
                       country)
    category = np.where(rng.random(n) < 0.85, CATEGORIES.index("electronics"), CATEGORIES.index("gift_cards"))
    return {
        "user": user, "t": w.times(n, _FRAUD_HOURS), "amount": w.lognormal(650.0, 0.5, n),
        "device": w.devices(n, _LEGIT_BROWSER_P), "ip": w.ips(country), "country": country, "source": source,
        "category": category, "payment": np.where(rng.random(n) < 0.7, _CARD, payment),
    }


def _strings(prefix: bytes, chars: np.ndarray) -> np.ndarray:
    """One string per row of ``chars`` (ASCII codes), each starting with ``prefix``."""
    width = len(prefix) + chars.shape[1]
    full = np.empty((len(chars), width), dtype=np.uint8)
    full[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    full[:, len(prefix):] = chars
    return full.view(f"S{width}").ravel().astype(f"U{width}").astype(object)


def _tokens(rng: np.random.Generator, n: int, alphabet: bytes, length: int, prefix: bytes = b"") -> np.ndarray:
    """``n`` random identifiers: ``prefix`` then ``length`` characters from ``alphabet``."""
    table = np.frombuffer(alphabet, dtype=np.uint8)
    return _strings(prefix, table[rng.integers(0, len(table), size=(n, length))])


def _names(rng: np.random.Generator, keys: np.ndarray, alphabet: bytes, length: int, prefix: bytes) -> np.ndarray:
    """Identifiers: fixed ones for population keys, random ones for the rest (key 0)."""
    known = keys != 0
    names = np.empty(len(keys), dtype=object)
    names[known] = _key_names(keys[known], alphabet, length, prefix)
    names[~known] = _tokens(rng, int((~known).sum()), alphabet, length, prefix)
    return names


def _numbered(prefix: str, n: int) -> np.ndarray:
    """``prefix`` followed by 0 .. n-1, zero-padded to one width."""
    width = len(str(n - 1))
    digits = np.arange(n, dtype=np.int64)[:, None] // 10 ** np.arange(width - 1, -1, -1) % 10
    return _strings(prefix.encode(), (digits + ord("0")).astype(np.uint8))


def _dotted(ips: np.ndarray) -> np.ndarray:
    unique, inverse = np.unique(ips, return_inverse=True)
    text = [f"{a}.{b}.{c}.{d}" for a, b, c, d in zip(
        (unique >> 24).tolist(), ((unique >> 16) & 255).tolist(), ((unique >> 8) & 255).tolist(),
        (unique & 255).tolist(), strict=True)]
    return np.array(text, dtype=object)[inverse]


def _start(start: str | datetime) -> pd.Timestamp:
    if not isinstance(start, str | datetime):
        raise ConfigError(f"start must be a date string or datetime, got {type(start).__name__}")
    try:
        ts = pd.Timestamp(start)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"start must be a date such as '2026-01-01', got {start!r}: {exc}") from None
    if pd.isna(ts):
        raise ConfigError(f"start must be a date such as '2026-01-01', got {start!r}")
    ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    if not _EARLIEST <= ts <= _LATEST:
        raise ConfigError(f"start must be between {_EARLIEST:%Y-%m-%d} and {_LATEST:%Y-%m-%d}, got {start!r}")
    return ts


def generate_transactions(
    n_rows: int,
    *,
    seed: int = 0,
    start: str | datetime = "2026-01-01",
    days: float = 30.0,
    fraud_rate: float = 0.03,
    drift: DriftConfig | None = None,
    with_pattern: bool = False,
    population_seed: int | None = None,
) -> pd.DataFrame:
    """``n_rows`` synthetic transactions in ``[start, start + days)``, sorted by purchase time.

    Legit traffic comes from returning customers; ``round(n_rows * fraud_rate * multiplier)`` rows are fraud,
    split over the patterns in `PATTERNS`. The same arguments always give the same frame. ``with_pattern``
    adds the `PATTERN_COLUMN` naming each row's pattern ("none" for legit rows) - a label leak, for
    diagnostics only.

    By default every frame has its own customers, devices and IPs, made up from ``seed``. With
    ``population_seed``, legit traffic comes from a customer base fixed by that seed alone - accounts, signup
    times, home devices and IPs, countries, preferred sources and payment methods, spending habits - that grows
    and churns slowly over (absolute) time, so frames of the same population share most of their customers
    whatever their ``seed``, ``start`` and size: a February frame mostly shows January's customers, plus those
    who signed up since. About half the fraud rings and card-testing bursts reuse crews and proxies that stay
    active for weeks, and some risky-source orders come from persistent affiliate IP pools; fraud accounts are
    new. ``seed`` still decides who buys, when, what and for how much.
    """
    if not (isinstance(n_rows, int | np.integer) and not isinstance(n_rows, bool) and n_rows >= 1):
        raise ConfigError(f"n_rows must be an integer >= 1, got {n_rows!r}")
    if not (isinstance(seed, int | np.integer) and not isinstance(seed, bool) and seed >= 0):
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if not (_real(days) and 0 < days <= MAX_DAYS):
        raise ConfigError(f"days must be a number in (0, {MAX_DAYS:g}], got {days!r}")
    if not (_real(fraud_rate) and 0 < fraud_rate < 1):
        raise ConfigError(f"fraud_rate must be a number in (0, 1), got {fraud_rate!r}")
    if drift is None:
        drift = DriftConfig()
    elif not isinstance(drift, DriftConfig):
        raise ConfigError(f"drift must be a DriftConfig, got {type(drift).__name__}")
    rate = fraud_rate * drift.fraud_rate_multiplier
    if rate >= 1:
        raise ConfigError(
            f"fraud_rate * drift fraud_rate_multiplier must be below 1, got {fraud_rate} * "
            f"{drift.fraud_rate_multiplier} = {rate:g}"
        )
    if population_seed is not None and not (
        isinstance(population_seed, int | np.integer) and not isinstance(population_seed, bool) and population_seed >= 0
    ):
        raise ConfigError(f"population_seed must be an integer >= 0 or None, got {population_seed!r}")
    start_ts = _start(start)
    rng = np.random.default_rng(int(seed))
    category_p = (1 - drift.category_mix) * _BASE_CATEGORY_P + drift.category_mix * _DRIFT_CATEGORY_P
    population = None if population_seed is None else _Population(int(population_seed))
    w = _World(rng, float(days) * _DAY, start_ts, category_p, population)

    n_fraud = round(n_rows * rate)
    counts = rng.multinomial(n_fraud, _DRIFT_PATTERN_SHARES if drift.new_pattern else _PATTERN_SHARES)
    legit = (_legit if population is None else _legit_shared)(w, n_rows - n_fraud)
    segments = [legit, _instant(w, counts[0]), _rings(w, counts[1]), _card_testing(w, counts[2]),
                _risky_source(w, counts[3]), _account_takeover(w, counts[4], legit)]
    rows = {key: np.concatenate([s[key] for s in segments]) for key in legit}
    pattern = np.repeat(np.arange(len(segments)), [len(s["t"]) for s in segments])

    t = np.floor(rows["t"]).astype(np.int64)
    order = np.argsort(t, kind="stable")
    rows = {key: v[order] for key, v in rows.items()}
    t, pattern = t[order], pattern[order]
    user = rows["user"]
    first = np.full(w.n_users, np.iinfo(np.int64).max)
    np.minimum.at(first, user, t)
    signup = first[user] - np.ceil(w.gap_of(user)).astype(np.int64)
    start_ns = start_ts.value
    signup_ns = start_ns + signup * 1_000_000_000
    if population is not None:  # population accounts keep their signup time in every window
        fixed = np.concatenate(w.signups)[user]
        signup_ns = np.where(fixed != _NO_SIGNUP, fixed * 1_000_000_000, signup_ns)
    amount = np.maximum(np.round(rows["amount"] * math.exp(drift.amount_shift), 2), 0.01)
    browsers = np.concatenate(w.browsers)

    identity: tuple = (int(seed), start_ts.isoformat(), float(days), float(fraud_rate), int(n_rows), drift)
    if population is not None:
        identity += (int(population_seed),)
    digest = hashlib.blake2b(repr(identity).encode(), digest_size=5).hexdigest()
    if population is None:
        user_names = _tokens(rng, w.n_users, _USER_CHARS, 11, b"u")
        device_names = _tokens(rng, w.n_devices, _DEVICE_CHARS, 13)
    else:  # population accounts and devices have the same name in every window
        user_names, device_names = (_names(rng, np.concatenate(keys), chars, length, prefix)
                                    for keys, chars, length, prefix in ((w.user_keys, _USER_CHARS, 11, b"u"),
                                                                        (w.device_keys, _DEVICE_CHARS, 13, b"")))
    frame = pd.DataFrame({
        "transaction_id": _numbered(f"t{digest}-", n_rows),
        "user_id": user_names[user],
        "signup_time": signup_ns.astype("datetime64[ns]"),
        "purchase_time": (start_ns + t * 1_000_000_000).astype("datetime64[ns]"),
        "amount": amount,
        "device_id": device_names[rows["device"]],
        "ip_address": _dotted(rows["ip"]),
        "country": np.array(COUNTRIES, dtype=object)[rows["country"]],
        "source": np.array(SOURCES, dtype=object)[rows["source"]],
        "browser": np.array(BROWSERS, dtype=object)[browsers[rows["device"]]],
        "category": np.array(CATEGORIES, dtype=object)[rows["category"]],
        "payment_method": np.array(PAYMENT_METHODS, dtype=object)[rows["payment"]],
        "is_fraud": (pattern > 0).astype(np.int64),
    })
    if with_pattern:
        frame[PATTERN_COLUMN] = np.array(PATTERNS, dtype=object)[pattern]
    return frame
