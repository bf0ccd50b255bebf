"""Reading transaction tables (CSV or Parquet, optionally gzipped, local or object store) and preset joins."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from fraudops.errors import DataError
from fraudops.schema import DatasetSpec
from fraudops.storage import filesystem, storage_options

COUNTRY_COLUMN = "country"
UNKNOWN_COUNTRY = "unknown"


def _format(path: str) -> str:
    name = path.lower().removesuffix(".gz").removesuffix(".gzip")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".txt")):
        return "csv"
    raise DataError(f"cannot tell the format of {path!r}: expected a .csv, .csv.gz, .parquet or .parquet.gz file")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet table from a local path or URL."""
    path = str(path)
    fmt = _format(path)
    fs, inner = filesystem(path)
    if not fs.exists(inner):
        raise DataError(f"data file not found: {path}")
    try:
        if fmt == "parquet":
            if path.lower().endswith((".gz", ".gzip")):
                with fs.open(inner, "rb", compression="gzip") as fh:
                    return pd.read_parquet(fh)
            return pd.read_parquet(path, storage_options=storage_options(path) or None)
        return pd.read_csv(path, storage_options=storage_options(path) or None, low_memory=False,
                           encoding="utf-8-sig")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path} as {fmt}: {exc}") from None


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a table as Parquet (or CSV when the name says so)."""
    path = str(path)
    opts = storage_options(path) or None
    if _format(path) == "parquet":
        frame.to_parquet(path, index=False, storage_options=opts)
    else:
        frame.to_csv(path, index=False, storage_options=opts)


def fingerprint(frame: pd.DataFrame) -> str:
    """A content hash of a table (row order and column names included)."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def attach_ip_country(frame: pd.DataFrame, ip_column: str, ip_table: str | Path) -> pd.DataFrame:
    """Add a ``country`` column by looking up integer IP addresses in a range table.

    The table has ``lower_bound_ip_address``, ``upper_bound_ip_address`` and ``country`` (the public
    e-commerce fraud release). Addresses outside every range get ``unknown``.
    """
    ranges = read_table(ip_table)
    needed = ["lower_bound_ip_address", "upper_bound_ip_address", "country"]
    missing = [c for c in needed if c not in ranges.columns]
    if missing:
        raise DataError(f"IP table {ip_table} lacks column(s) {missing}")
    ranges = ranges.dropna(subset=needed[:2]).sort_values("lower_bound_ip_address", kind="stable")
    lower = ranges["lower_bound_ip_address"].to_numpy(dtype="float64")
    upper = ranges["upper_bound_ip_address"].to_numpy(dtype="float64")
    countries = ranges["country"].astype(str).to_numpy()
    ips = pd.to_numeric(frame[ip_column], errors="coerce").to_numpy(dtype="float64")
    pos = np.searchsorted(lower, ips, side="right") - 1
    ok = (pos >= 0) & ~np.isnan(ips)
    ok[ok] &= ips[ok] <= upper[pos[ok]]
    out = frame.copy()
    out[COUNTRY_COLUMN] = np.where(ok, countries[np.clip(pos, 0, None)], UNKNOWN_COUNTRY)
    return out


def load_dataset(path: str | Path, spec: DatasetSpec, ip_table: str | Path | None = None
                 ) -> tuple[pd.DataFrame, DatasetSpec]:
    """Read a training table; with an IP table, add ``country`` and make it a categorical input."""
    frame = read_table(path)
    if ip_table is not None:
        ip_col = "ip_address" if "ip_address" in frame else None
        if ip_col is None:
            raise DataError("an IP table was given but the data has no 'ip_address' column to look up")
        frame = attach_ip_country(frame, ip_col, ip_table)
        if COUNTRY_COLUMN not in spec.categorical:
            spec = spec.model_copy(update={"categorical": (*spec.categorical, COUNTRY_COLUMN)})
    return frame, spec
