"""The one feature function shared by training and serving, and the entity statistics it needs.

Entity features describe a transaction by the history of its device, IP, card or account: how many *other*
transactions and *other* accounts used the same value, and how its amount compares with theirs. The history is
the training window; its statistics are fitted once (`FeatureState.fit`), saved with the model and used again
by the scoring service, so that one transaction is featurised exactly as during training. Training rows are
part of that history, so their own contribution is removed (``exclude_self=True``, leave-one-out): a training
row then sees the same kind of value as a transaction the model has never seen.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraudops.normalize import MISSING, entity_keys, seconds, time_kind_of, to_times
from fraudops.schema import DatasetSpec

STATE_FILE = "feature_state.json"


def _pair_hash(entity: pd.Series, account: pd.Series) -> np.ndarray:
    return pd.util.hash_array((entity + "\x1f" + account).to_numpy(dtype=object))


@dataclass
class FeatureState:
    """Everything the feature function needs besides the transaction itself; fitted on the training window."""

    spec: DatasetSpec
    time_kind: str
    numeric: list[str]
    entity_stats: dict[str, pd.DataFrame] = field(default_factory=dict)
    account_pairs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def entity_columns(self) -> list[str]:
        """Columns with entity features: the entities, then the account if it is not one of them."""
        cols = list(self.spec.entities)
        if self.spec.account and self.spec.account not in cols:
            cols.append(self.spec.account)
        return cols

    @property
    def categorical_features(self) -> list[str]:
        """Model inputs that CatBoost treats as native categories."""
        return list(self.spec.categorical)

    @property
    def feature_names(self) -> list[str]:
        """Model inputs, in the order the model sees them."""
        names = [*self.spec.categorical, *self.numeric]
        if self.spec.timestamp:
            names += ["hour", "day_of_week"]
        if self.spec.timestamp and self.spec.signup_time:
            names.append("seconds_since_signup")
        for col in self.entity_columns:
            names.append(f"{col}__txn_count")
            if self.spec.account and col != self.spec.account:
                names.append(f"{col}__account_count")
            if self.spec.amount:
                names.append(f"{col}__amount_ratio")
        return names

    @property
    def input_columns(self) -> list[str]:
        """Raw columns the feature function reads (a transaction may omit the others)."""
        cols = [*self.spec.categorical, *self.numeric, *self.spec.time_columns, *self.entity_columns]
        if self.spec.amount:
            cols.append(self.spec.amount)
        return list(dict.fromkeys(cols))

    @classmethod
    def fit(cls, history: pd.DataFrame, spec: DatasetSpec, numeric: list[str]) -> FeatureState:
        """Learn entity statistics from the training window (a validated, typed frame)."""
        kind = time_kind_of(history[spec.timestamp]) if spec.timestamp else "datetime"
        state = cls(spec=spec, time_kind=kind, numeric=list(numeric))
        amount = history[spec.amount].astype("float64") if spec.amount else None
        for col in state.entity_columns:
            keys = entity_keys(history[col])
            frame = pd.DataFrame({"key": keys.to_numpy(dtype=object)})
            agg: dict[str, tuple[str, str]] = {"txn_count": ("key", "size")}
            if amount is not None:
                frame["amount"] = amount.to_numpy()
                agg["amount_sum"] = ("amount", "sum")
            if spec.account and col != spec.account:
                frame["account"] = entity_keys(history[spec.account]).to_numpy(dtype=object)
                agg["account_count"] = ("account", "nunique")
                pairs = _pair_hash(keys, entity_keys(history[spec.account]))
                state.account_pairs[col] = np.unique(pairs)
            state.entity_stats[col] = frame.groupby("key", sort=True).agg(**agg)
        return state

    def transform(self, frame: pd.DataFrame, *, exclude_self: bool = False) -> pd.DataFrame:
        """The model's input features for raw transactions (missing optional columns become missing values).

        ``exclude_self`` is for the rows the state was fitted on (the training window), see the module doc.
        """
        spec, n = self.spec, len(frame)

        def column(name: str) -> pd.Series:
            return frame[name] if name in frame else pd.Series([None] * n, index=frame.index, dtype=object)

        out: dict[str, pd.Series | np.ndarray] = {}
        for col in spec.categorical:
            out[col] = entity_keys(column(col))
        for col in self.numeric:
            out[col] = pd.to_numeric(column(col), errors="coerce").astype("float64")
        if spec.timestamp:
            ts = seconds(to_times(column(spec.timestamp), self.time_kind, spec.time_format), self.time_kind)
            out["hour"] = np.floor(ts / 3600.0) % 24
            out["day_of_week"] = np.floor(ts / 86400.0 + (0 if self.time_kind == "seconds" else 3)) % 7
            if spec.signup_time:
                signup = to_times(column(spec.signup_time), self.time_kind, spec.time_format)
                out["seconds_since_signup"] = ts - seconds(signup, self.time_kind)
        amount = (
            pd.to_numeric(column(spec.amount), errors="coerce").to_numpy(dtype="float64") if spec.amount else None
        )
        self_weight = 1.0 if exclude_self else 0.0
        for col in self.entity_columns:
            keys = entity_keys(column(col))
            stats = self.entity_stats[col].reindex(keys.to_numpy(dtype=object))
            count = stats["txn_count"].fillna(0).to_numpy(dtype="float64") - self_weight
            out[f"{col}__txn_count"] = count
            if spec.account and col != spec.account:
                pairs = self.account_pairs[col]
                hashed = _pair_hash(keys, entity_keys(column(spec.account)))
                pos = np.minimum(np.searchsorted(pairs, hashed), max(len(pairs) - 1, 0))
                known = (pairs[pos] == hashed) if len(pairs) else np.zeros(n, dtype=bool)
                out[f"{col}__account_count"] = stats["account_count"].fillna(0).to_numpy(dtype="float64") - known
            if amount is not None:
                other_sum = stats["amount_sum"].fillna(0).to_numpy(dtype="float64") - self_weight * amount
                with np.errstate(divide="ignore", invalid="ignore"):
                    mean_other = np.where(count > 0, other_sum / np.maximum(count, 1), np.nan)
                    out[f"{col}__amount_ratio"] = np.where(mean_other > 0, amount / mean_other, np.nan)
        features = pd.DataFrame(out, index=frame.index)
        return features[self.feature_names]

    def save(self, directory: str | Path) -> None:
        """Write the state as JSON plus one Parquet file per entity."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"spec": self.spec.model_dump(mode="json"), "time_kind": self.time_kind, "numeric": self.numeric}
        (directory / STATE_FILE).write_text(json.dumps(meta, indent=2))
        for col, stats in self.entity_stats.items():
            stats.to_parquet(directory / f"entity__{col}.parquet")
        for col, pairs in self.account_pairs.items():
            np.save(directory / f"pairs__{col}.npy", pairs)

    @classmethod
    def load(cls, directory: str | Path) -> FeatureState:
        """Read a state written by `save`."""
        directory = Path(directory)
        meta = json.loads((directory / STATE_FILE).read_text())
        state = cls(spec=DatasetSpec.model_validate(meta["spec"]), time_kind=meta["time_kind"],
                    numeric=list(meta["numeric"]))
        for col in state.entity_columns:
            state.entity_stats[col] = pd.read_parquet(directory / f"entity__{col}.parquet")
            pairs_file = directory / f"pairs__{col}.npy"
            if pairs_file.exists():
                state.account_pairs[col] = np.load(pairs_file)
        return state


@dataclass(frozen=True)
class _Entity:
    column: str
    index: pd.Index
    txn: np.ndarray
    accounts: np.ndarray | None
    amount_sum: np.ndarray | None
    pairs: np.ndarray | None


class FastFeatures:
    """Row-by-row twin of `FeatureState.transform` for small batches of new transactions (the scorer's path).

    `FeatureState.transform` is the definition; it costs ~8 ms per call in pandas overhead whatever the row count,
    this twin tens of microseconds per row, reading the same fitted statistics. Rows come validated and
    normalised by `fraudops.serving.RowSchema` (text keys, floats, times as UTC nanoseconds or seconds). The
    scorer compares both on probe rows at every model load and serves with `transform` alone if any value
    differs; tests check them equal on many rows. Change both together.
    """

    def __init__(self, state: FeatureState) -> None:
        spec = state.spec
        self.categorical = list(spec.categorical)
        self.numeric = list(state.numeric)
        self.timestamp = spec.timestamp
        self.signup = spec.signup_time if spec.timestamp else None
        self.seconds = state.time_kind == "seconds"
        self.amount = spec.amount
        self.account = spec.account
        self.entities = []
        names = [*self.categorical, *self.numeric]
        names += ["hour", "day_of_week"] if self.timestamp else []
        names += ["seconds_since_signup"] if self.signup else []
        for col in state.entity_columns:
            stats = state.entity_stats[col]
            if not stats.index.is_unique:
                raise ValueError(f"entity statistics of {col!r} have duplicate keys")
            paired = bool(spec.account) and col != spec.account
            self.entities.append(_Entity(
                column=col, index=stats.index, txn=stats["txn_count"].to_numpy(dtype="float64"),
                accounts=stats["account_count"].to_numpy(dtype="float64") if paired else None,
                amount_sum=stats["amount_sum"].to_numpy(dtype="float64") if spec.amount else None,
                pairs=state.account_pairs[col] if paired else None))
            names += [f"{col}__txn_count", *([f"{col}__account_count"] if paired else []),
                      *([f"{col}__amount_ratio"] if spec.amount else [])]
        if names != state.feature_names:
            raise ValueError(f"feature order {names} differs from the feature state's {state.feature_names}")

    def _known_pairs(self, rows: list[dict[str, Any]], positions: list[list[int]]) -> np.ndarray:
        """known[i, j]: row i's (entity, account) pair was seen in training, for the j-th entity with pairs.

        Only pairs whose entity was seen are hashed: a pair with an unseen entity cannot be among the training
        pairs (barring a 64-bit hash collision), and new devices and IPs are the common case.
        """
        paired = [(e, where) for e, where in zip(self.entities, positions, strict=True) if e.pairs is not None]
        known = np.zeros((len(rows), len(paired)), dtype=bool)
        seen = [(i, j) for j, (_, where) in enumerate(paired) for i, pos in enumerate(where) if pos >= 0]
        if not seen:
            return known
        texts = [f"{_text(rows[i].get(paired[j][0].column))}\x1f{_text(rows[i].get(self.account or ''))}"
                 for i, j in seen]
        hashed = pd.util.hash_array(np.array(texts, dtype=object), categorize=False)
        at_row, at_col = np.array(seen).T
        for j, (entity, _) in enumerate(paired):
            pairs, mine = entity.pairs, at_col == j
            if pairs is not None and len(pairs) and mine.any():
                pos = np.minimum(np.searchsorted(pairs, hashed[mine]), len(pairs) - 1)
                known[at_row[mine], j] = pairs[pos] == hashed[mine]
        return known

    @staticmethod
    def _positions(entity: _Entity, rows: list[dict[str, Any]]) -> list[int]:
        """Row of each transaction's key in the entity statistics (-1: unseen in training)."""
        keys = [_text(row.get(entity.column)) for row in rows]
        if len(keys) > 8:  # one vectorised lookup beats per-key calls from here on
            return entity.index.get_indexer(np.array(keys, dtype=object)).tolist()
        positions = []
        for key in keys:
            try:
                positions.append(entity.index.get_loc(key))
            except KeyError:
                positions.append(-1)
        return positions

    def rows(self, rows: list[dict[str, Any]]) -> list[list[Any]]:
        """Feature rows (in `FeatureState.feature_names` order) for validated transactions."""
        positions = [self._positions(entity, rows) for entity in self.entities]
        known = self._known_pairs(rows, positions)
        out = []
        for i, row in enumerate(rows):
            values: list[Any] = [_text(row.get(c)) for c in self.categorical]
            values += [math.nan if (v := row.get(c)) is None else float(v) for c in self.numeric]
            if self.timestamp:
                ts = self._seconds(row[self.timestamp])
                values += [float(math.floor(ts / 3600.0) % 24),
                           float(math.floor(ts / 86400.0 + (0 if self.seconds else 3)) % 7)]
                if self.signup:
                    values.append(ts - self._seconds(row[self.signup]))
            amount = math.nan if not self.amount or row.get(self.amount) is None else float(row[self.amount])
            paired = 0
            for entity, where in zip(self.entities, positions, strict=True):
                pos = where[i]
                count = 0.0 if pos < 0 else float(entity.txn[pos])
                values.append(count)
                if entity.accounts is not None:
                    accounts = 0.0 if pos < 0 else _zero_if_nan(entity.accounts[pos])
                    values.append(accounts - float(known[i, paired]))
                    paired += 1
                if entity.amount_sum is not None:
                    other_sum = 0.0 if pos < 0 else _zero_if_nan(entity.amount_sum[pos])
                    mean_other = other_sum / max(count, 1.0) if count > 0 else math.nan
                    values.append(amount / mean_other if mean_other > 0 else math.nan)
            out.append(values)
        return out

    def _seconds(self, value: float | int) -> float:
        return float(value) if self.seconds else value / 1e9


def _text(value: str | None) -> str:
    return MISSING if value is None else value


def _zero_if_nan(value: float) -> float:
    return 0.0 if value != value else float(value)
