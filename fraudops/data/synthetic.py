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

MAX_DAYS = 3660.0
_EARLIEST, _LATEST = pd.Timestamp("1700-01-01"), pd.Timestamp("2200-01-01")
_HOUR, _DAY = 3600.0, 86_400.0
_MAX_GAP = 5 * 365 * _DAY


def _p(*weights: float) -> np.ndarray:
    w = np.asarray(weights, dtype="float64")
    return w / w.sum()


def _countries(common: float) -> np.ndarray:
    """Country mix: the legit home mix, with `common` of the mass on common and the rest on rare countries."""
    n_common = len(COMMON_COUNTRIES)
    base = _p(34, 9, 8, 7, 6, 4, 4, 3, 3, 3, 3, 3, 2, 2, 2, *[0.7] * len(RARE_COUNTRIES))
    return np.concatenate([base[:n_common] / base[:n_common].sum() * common,
                           np.full(len(RARE_COUNTRIES), (1 - common) / len(RARE_COUNTRIES))])


_HOME_COUNTRY_P = _countries(0.9)
_MIXED_COUNTRY_P = _countries(0.75)
_RISKY_COUNTRY_P = _countries(0.45)
_LEGIT_SOURCE_P = _p(36, 30, 22, 6, 6)
_FRAUD_SOURCE_P = _p(33, 32, 21, 7, 7)
_RISKY_SOURCE_P = _p(12, 12, 6, 40, 30)
_LEGIT_BROWSER_P = _p(46, 26, 10, 12, 6)
_FRAUD_BROWSER_P = _p(50, 20, 12, 10, 8)
_LEGIT_PAYMENT_P = _p(55, 25, 14, 6)
_FRAUD_PAYMENT_P = _p(65, 18, 13, 4)
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


def _real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool | np.bool_)


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

    def __init__(self, rng: np.random.Generator, span: float, start: pd.Timestamp, category_p: np.ndarray):
        self.rng = rng
        self.span = span
        self.start_of_day = (start - start.normalize()).total_seconds()
        self.category_p = category_p
        self.gaps: list[np.ndarray] = []
        self.browsers: list[np.ndarray] = []
        self.n_users = self.n_devices = self.n_ips = 0
        self._ip_mult = int(rng.integers(0, 1 << 23)) * 2 + 1
        self._ip_add = int(rng.integers(0, 1 << 24))

    def users(self, gaps: np.ndarray) -> np.ndarray:
        """New accounts, signed up ``gaps`` seconds (1 s to 5 years) before their first purchase."""
        self.gaps.append(np.clip(gaps, 1.0, _MAX_GAP))
        self.n_users += len(gaps)
        return np.arange(self.n_users - len(gaps), self.n_users)

    def gap_of(self, users: np.ndarray) -> np.ndarray:
        return np.concatenate(self.gaps)[users]

    def devices(self, n: int, browser_p: np.ndarray) -> np.ndarray:
        """New devices, each with one browser."""
        self.browsers.append(self.rng.choice(len(BROWSERS), size=n, p=browser_p))
        self.n_devices += n
        return np.arange(self.n_devices - n, self.n_devices)

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
    # Devices: own, a family computer shared by a third of households, and a second device for a quarter.
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
    # Shopping sessions: some purchases follow the user's previous one within minutes.
    by_user = np.lexsort((t, u))
    same_user = u[by_user][1:] == u[by_user][:-1]
    follow = np.zeros(n, dtype=bool)
    follow[1:] = same_user & (rng.random(same_user.shape) < 0.2)
    t[by_user[follow]] = np.minimum(t[by_user[np.flatnonzero(follow) - 1]] + rng.exponential(180.0, follow.sum()),
                                    np.nextafter(w.span, 0))
    dev = device[u]
    other = (second[u] >= 0) & (rng.random(n) < 0.35)
    dev[other] = second[u[other]]
    country, ip = group_country[group[u]], group_ip[group[u]]
    mobile = rng.random(n) < 0.12
    ip[mobile] = w.ips(country[mobile])
    travel = rng.random(n) < 0.015
    country[travel] = w.choice(_HOME_COUNTRY_P, int(travel.sum()))
    ip[travel] = w.ips(country[travel])
    category = w.choice(w.category_p, n)
    amount = w.amounts(category)
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
    """Bots buying seconds after signing up (a third wait hours), on devices sometimes reused."""
    rng = w.rng
    gaps = np.where(rng.random(n) < 0.55, w.lognormal(8.0, 1.0, n), w.lognormal(3 * _HOUR, 1.8, n))
    pool = w.devices(max(1, round(0.8 * n)), _FRAUD_BROWSER_P)
    country = w.choice(_MIXED_COUNTRY_P, n)
    category = w.choice(_HIGH_VALUE_CATEGORY_P, n)
    return {
        "user": w.users(gaps), "t": w.times(n, _FRAUD_HOURS), "amount": w.amounts(category, 1.1),
        "device": pool[rng.integers(0, len(pool), size=n)], "ip": w.ips(country), "country": country,
        "source": w.choice(_FRAUD_SOURCE_P, n), "category": category, "payment": w.choice(_FRAUD_PAYMENT_P, n),
    }


def _rings(w: _World, n: int) -> dict[str, np.ndarray]:
    """Rings of fresh accounts on a few shared devices and IPs, active for a few days (some rows leak out)."""
    rng = w.rng
    sizes = _group_sizes(rng, n, 5, 40)
    ring = np.repeat(np.arange(len(sizes)), sizes)
    ring_country = w.choice(_MIXED_COUNTRY_P, len(sizes))
    n_dev, n_ip = rng.integers(1, 4, size=len(sizes)), rng.integers(1, 5, size=len(sizes))
    n_acc = np.ceil(0.7 * sizes).astype(np.int64)
    devices = w.devices(int(n_dev.sum()), _FRAUD_BROWSER_P)
    ips = w.ips(np.repeat(ring_country, n_ip))
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
    t = (rng.random(len(sizes)) * (w.span - window))[ring] + rng.random(n) * window
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
    country = w.choice(_MIXED_COUNTRY_P, len(sizes))[burst]
    ip = w.ips(country[first])[burst]
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
    anchor = rng.random(len(sizes)) * np.maximum(w.span - duration * squeeze, 0.0)
    category = np.where(rng.random(n) < 0.6, CATEGORIES.index("digital_goods"), CATEGORIES.index("gift_cards"))
    amount = w.lognormal(3.0, 0.8, n)
    cash_out = rng.random(n) < 0.15
    category[cash_out] = CATEGORIES.index("gift_cards")
    amount[cash_out] = w.amounts(category[cash_out], 2.0)
    return {
        "user": users[_pick(rng, _blocks(n_acc), n_acc, burst)], "t": anchor[burst] + offset * squeeze[burst],
        "amount": amount, "device": devices[_pick(rng, _blocks(n_dev), n_dev, burst)], "ip": ip,
        "country": country, "source": w.choice(_p(30, 20, 40, 5, 5), n), "category": category,
        "payment": np.where(rng.random(n) < 0.92, 0, 2),
    }


def _risky_source(w: _World, n: int) -> dict[str, np.ndarray]:
    """Affiliate/Social traffic from unusual countries buying expensive goods on new accounts."""
    country = w.choice(_RISKY_COUNTRY_P, n)
    category = w.choice(_HIGH_VALUE_CATEGORY_P, n)
    return {
        "user": w.users(w.lognormal(2 * _DAY, 1.8, n)), "t": w.times(n, _FRAUD_HOURS),
        "amount": w.amounts(category, 1.6), "device": w.devices(n, _FRAUD_BROWSER_P), "ip": w.ips(country),
        "country": country, "source": w.choice(_RISKY_SOURCE_P, n), "category": category,
        "payment": w.choice(_FRAUD_PAYMENT_P, n),
    }


def _account_takeover(w: _World, n: int, legit: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Established customers suddenly buying expensive electronics from a new device, IP and country."""
    rng = w.rng
    old = np.flatnonzero(w.gap_of(legit["user"]) > 60 * _DAY)
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
        "category": category, "payment": np.where(rng.random(n) < 0.7, 0, payment),
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
) -> pd.DataFrame:
    """``n_rows`` synthetic transactions in ``[start, start + days)``, sorted by purchase time.

    Legit traffic comes from returning customers; ``round(n_rows * fraud_rate * multiplier)`` rows are fraud,
    split over the patterns in `PATTERNS`. The same arguments always give the same frame. ``with_pattern``
    adds the `PATTERN_COLUMN` naming each row's pattern ("none" for legit rows) - a label leak, for
    diagnostics only.
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
    start_ts = _start(start)
    rng = np.random.default_rng(int(seed))
    category_p = (1 - drift.category_mix) * _BASE_CATEGORY_P + drift.category_mix * _DRIFT_CATEGORY_P
    w = _World(rng, float(days) * _DAY, start_ts, category_p)

    n_fraud = round(n_rows * rate)
    counts = rng.multinomial(n_fraud, _DRIFT_PATTERN_SHARES if drift.new_pattern else _PATTERN_SHARES)
    legit = _legit(w, n_rows - n_fraud)
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
    amount = np.maximum(np.round(rows["amount"] * math.exp(drift.amount_shift), 2), 0.01)
    browsers = np.concatenate(w.browsers)

    digest = hashlib.blake2b(
        repr((int(seed), start_ts.isoformat(), float(days), float(fraud_rate), int(n_rows), drift)).encode(),
        digest_size=5,
    ).hexdigest()
    start_ns = start_ts.value
    frame = pd.DataFrame({
        "transaction_id": _numbered(f"t{digest}-", n_rows),
        "user_id": _tokens(rng, w.n_users, b"0123456789abcdefghijklmnopqrstuvwxyz", 11, b"u")[user],
        "signup_time": (start_ns + signup * 1_000_000_000).astype("datetime64[ns]"),
        "purchase_time": (start_ns + t * 1_000_000_000).astype("datetime64[ns]"),
        "amount": amount,
        "device_id": _tokens(rng, w.n_devices, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 13)[rows["device"]],
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
