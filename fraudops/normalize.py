"""Key and time normalisation shared by every feature path (frames in training, validated rows in serving).

Entity and category values become text keys so that 1, 1.0, "1" and "1.0" are one entity; missing values
become `MISSING` (frames) or ``None`` (rows). Times become UTC datetimes or float seconds (`to_times`), then
numbers: float seconds for the frozen statistics (`seconds`), integer microseconds for the entity feature
kernel (`ticks`), so that window boundaries compare exactly.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

MISSING = "__missing__"

# A text column whose non-empty values are at least this share numbers holds numbers (with some bad values).
NUMERIC_SHARE = 0.95

TICKS_PER_SECOND = 1_000_000  # ticks are microseconds: exact as integers in a float64 (a Redis score) until 2255
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
"""Seconds in each unit of a duration (`30m`, `24h`, `7d`): entity-feature windows and the commands' windows."""


def to_times(values: pd.Series, kind: str, time_format: str | None = None) -> pd.Series:
    """Parse a time column: ``datetime`` -> naive UTC datetime64, ``seconds`` -> float; bad values -> NaT/NaN."""
    if kind == "seconds":
        return pd.to_numeric(values, errors="coerce").astype("float64")
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        parsed = pd.to_datetime(values, errors="coerce", format=time_format or "mixed", utc=True)
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed.astype("datetime64[ns]")


def looks_numeric(values: pd.Series) -> bool:
    """True for numeric columns and for text columns whose values are (almost all) numbers."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return True
    if pd.api.types.is_datetime64_any_dtype(values):
        return False
    present = values.dropna()
    return len(present) > 0 and pd.to_numeric(present, errors="coerce").notna().mean() >= NUMERIC_SHARE


def time_kind_of(values: pd.Series) -> str:
    """``seconds`` for numeric time columns (offsets such as IEEE-CIS TransactionDT), else ``datetime``."""
    return "seconds" if looks_numeric(values) else "datetime"


def seconds(values: pd.Series, kind: str) -> np.ndarray:
    """Parsed times (`to_times`) as float seconds (since 1970 for datetimes); NaN where missing."""
    if kind == "seconds":
        return values.to_numpy(dtype="float64")
    stamps = values.to_numpy(dtype="datetime64[ns]")
    return np.where(np.isnat(stamps), np.nan, stamps.astype("int64") / 1e9)


def ticks(values: np.ndarray, kind: str) -> np.ndarray:
    """Times as int64 microseconds: ``seconds`` kind from float seconds (rounded to the microsecond), ``datetime``
    kind from UTC nanoseconds since 1970 (datetime64[ns] or int64, floored). Callers reject missing times first."""
    if kind == "seconds":
        return np.rint(np.asarray(values, dtype="float64") * TICKS_PER_SECOND).astype("int64")
    nanos = np.asarray(values).astype("datetime64[ns]").astype("int64")
    return nanos // (1_000_000_000 // TICKS_PER_SECOND)


_WHOLE_FLOAT = r"^(-?\d+)\.0$"
_WHOLE_NUMBER = re.compile(r"(-?\d+)\.0")


def entity_keys(values: pd.Series) -> pd.Series:
    """A column of entity values as strings (missing -> MISSING), so that 1, 1.0 and "1" are one entity."""
    out = values.astype("string")
    if pd.api.types.is_float_dtype(values):
        out = out.str.removesuffix(".0")
    elif values.dtype == object:
        whole = out.str.endswith(".0").fillna(False).to_numpy(dtype=bool)  # the regex only where it may match
        if whole.any():
            out[whole] = out[whole].str.replace(_WHOLE_FLOAT, r"\1", regex=True)
    return out.fillna(MISSING)


def key_text(value: Any) -> Any:
    """One entity or category value as the same text key as `entity_keys` (missing -> None).

    Values that cannot be keys (booleans, lists, ...) come back unchanged, for the caller to reject.
    """
    if type(value) is str and not value.endswith(".0"):
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        value = str(value)
    if isinstance(value, str) and (whole := _WHOLE_NUMBER.fullmatch(value)):
        return whole.group(1)
    return value
