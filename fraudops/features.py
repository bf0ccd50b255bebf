"""The model's features: one definition for training and serving, fed by a table or by validated rows.

**Row features** describe the transaction itself: its categories, numbers, hour, day of week and seconds since
signup (`row_features`). **Entity features** describe the history of its device, IP, card or account strictly
before it, in sliding windows (`fraudops.entity_features`: counts, distinct accounts, amounts, recency).

Each is computed by one function fed by two adapters, a table (`frame_inputs`) or rows validated by
`fraudops.serving.RowSchema` (`row_inputs`). Training replays the whole table in event-time order
(`FeatureState.training_features`: point in time correct). The state also keeps a frozen snapshot of the entity
history at the end of that table (`fraudops.online_store.SnapshotStore`), which `transform` and a scorer without
an online store read and never update: a transaction more than a window after the table's end finds no events in
that window (counts 0, amount mean and max missing, a long time since the previous transaction); only the
all-history features still describe the entity. A scorer with an online store reads (and records) live history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraudops.entity_features import EntityFeatureConfig, OnlineFeatures, offline_features, snapshot
from fraudops.normalize import MISSING, entity_keys, seconds, time_kind_of, to_times
from fraudops.online_store import SnapshotStore, StoreLimits
from fraudops.schema import DatasetSpec

STATE_FILE = "feature_state.json"
SNAPSHOT_DIR = "snapshot"


@dataclass(frozen=True)
class RowInputs:
    """What the row features read: category keys (text, `MISSING` where missing), numbers (float, NaN where
    missing), the event time and signup time in seconds (None when the spec has none)."""

    categorical: dict[str, np.ndarray]
    numeric: dict[str, np.ndarray]
    time: np.ndarray | None
    signup: np.ndarray | None


@dataclass
class FeatureState:
    """Everything the feature function needs besides the transactions: the dataset's column roles, its time kind,
    the numeric inputs, and the frozen entity snapshot of the training table."""

    spec: DatasetSpec
    time_kind: str
    numeric: list[str]
    snapshot: SnapshotStore | None = None

    @property
    def entities(self) -> EntityFeatureConfig | None:
        """The entity feature configuration (None without a timestamp or entity columns)."""
        spec = self.spec
        if not spec.timestamp or not (spec.entities or spec.account):
            return None
        return EntityFeatureConfig.create(spec, self.time_kind, spec.windows)

    @property
    def entity_columns(self) -> list[str]:
        """Columns with entity features: the entities, then the account if it is not one of them."""
        config = self.entities
        return config.columns if config is not None else []

    @property
    def entity_feature_names(self) -> list[str]:
        """The entity features among the model inputs (velocity and link counts; empty without entities)."""
        config = self.entities
        return config.feature_names if config is not None else []

    @property
    def categorical_features(self) -> list[str]:
        """Model inputs that CatBoost treats as native categories."""
        return list(self.spec.categorical)

    @property
    def row_feature_names(self) -> list[str]:
        """Features of the transaction itself, in model order."""
        names = [*self.spec.categorical, *self.numeric]
        if self.spec.timestamp:
            names += ["hour", "day_of_week"]
            if self.spec.signup_time:
                names.append("seconds_since_signup")
        return names

    @property
    def feature_names(self) -> list[str]:
        """Model inputs, in the order the model sees them: row features, then entity features."""
        return [*self.row_feature_names, *self.entity_feature_names]

    @property
    def input_columns(self) -> list[str]:
        """Raw columns the feature function reads (a transaction may omit the others)."""
        cols = [*self.spec.categorical, *self.numeric, *self.spec.time_columns, *self.entity_columns]
        if self.spec.amount:
            cols.append(self.spec.amount)
        return list(dict.fromkeys(cols))

    @classmethod
    def fit(cls, history: pd.DataFrame, spec: DatasetSpec, numeric: list[str]) -> FeatureState:
        """The state of a training table (validated, typed): its time kind and its entity snapshot."""
        kind = time_kind_of(history[spec.timestamp]) if spec.timestamp else "datetime"
        state = cls(spec=spec, time_kind=kind, numeric=list(numeric))
        config = state.entities
        if config is not None:
            state.snapshot = snapshot(history, config, StoreLimits(keep_seconds=config.longest_seconds))
        return state

    # -- adapters and the row features ------------------------------------------------------------------
    def frame_inputs(self, frame: pd.DataFrame) -> RowInputs:
        """The row features' input from a table (missing optional columns become missing values)."""
        spec, n = self.spec, len(frame)

        def column(name: str) -> pd.Series:
            return frame[name] if name in frame else pd.Series([None] * n, index=frame.index, dtype=object)

        def times(name: str | None) -> np.ndarray | None:
            return seconds(to_times(column(name), self.time_kind, spec.time_format), self.time_kind) if name else None

        return RowInputs(
            categorical={c: entity_keys(column(c)).to_numpy(dtype=object) for c in spec.categorical},
            numeric={c: pd.to_numeric(column(c), errors="coerce").to_numpy(dtype="float64") for c in self.numeric},
            time=times(spec.timestamp), signup=times(spec.signup_time if spec.timestamp else None))

    def row_inputs(self, rows: list[dict[str, Any]]) -> RowInputs:
        """The row features' input from rows validated by `fraudops.serving.RowSchema` (text keys or None,
        floats or None, times as UTC nanoseconds or seconds)."""
        spec = self.spec
        scale = 1.0 if self.time_kind == "seconds" else 1e9

        def times(name: str | None) -> np.ndarray | None:
            if not name:
                return None
            dtype = "float64" if self.time_kind == "seconds" else "int64"
            return np.array([row[name] for row in rows], dtype=dtype) / scale

        return RowInputs(
            categorical={c: np.array([MISSING if (v := row.get(c)) is None else v for row in rows], dtype=object)
                         for c in spec.categorical},
            numeric={c: np.array([row.get(c) for row in rows], dtype="float64") for c in self.numeric},
            time=times(spec.timestamp), signup=times(spec.signup_time if spec.timestamp else None))

    def row_features(self, inputs: RowInputs) -> dict[str, np.ndarray]:
        """The features of the transactions themselves (`row_feature_names`), whichever adapter fed them."""
        out: dict[str, np.ndarray] = {**inputs.categorical, **inputs.numeric}
        if inputs.time is not None:
            ts = inputs.time
            out["hour"] = np.floor(ts / 3600.0) % 24
            out["day_of_week"] = np.floor(ts / 86400.0 + (0 if self.time_kind == "seconds" else 3)) % 7
            if inputs.signup is not None:
                out["seconds_since_signup"] = ts - inputs.signup
        return {name: out[name] for name in self.row_feature_names}

    # -- tables -----------------------------------------------------------------------------------------
    def training_features(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's input features of a training table, its entity features replayed over the table itself
        in event-time order (each row sees the strictly earlier rows only)."""
        out = pd.DataFrame(self.row_features(self.frame_inputs(frame)), index=frame.index)
        config = self.entities
        if config is not None:
            out = pd.concat([out, offline_features(self._with_entity_columns(frame), config)], axis=1)
        return out[self.feature_names]

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's input features of new transactions (holdouts, backtests): entity features looked up in the
        frozen snapshot, the rows of ``frame`` seeing each other's strictly earlier transactions, as in one request
        to a scorer without an online store."""
        out = pd.DataFrame(self.row_features(self.frame_inputs(frame)), index=frame.index)
        frozen = self.frozen()
        if frozen is not None:
            out = pd.concat([out, frozen.lookup_frame(self._with_entity_columns(frame))], axis=1)
        return out[self.feature_names]

    def frozen(self) -> OnlineFeatures | None:
        """Entity features against the frozen snapshot (None without entity features)."""
        config = self.entities
        if config is None:
            return None
        if self.snapshot is None:
            raise ValueError("the feature state has entity features but no entity snapshot")
        return OnlineFeatures(config, self.snapshot)

    def _with_entity_columns(self, frame: pd.DataFrame) -> pd.DataFrame:
        absent = [c for c in self.entity_columns if c not in frame]
        return frame.assign(**{c: None for c in absent}) if absent else frame

    # -- files ------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write the state as JSON and the entity snapshot as Parquet files (`SnapshotStore.save`)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"spec": self.spec.model_dump(mode="json"), "time_kind": self.time_kind, "numeric": self.numeric}
        (directory / STATE_FILE).write_text(json.dumps(meta, indent=2))
        if self.snapshot is not None:
            self.snapshot.save(directory / SNAPSHOT_DIR)

    @classmethod
    def load(cls, directory: str | Path) -> FeatureState:
        """Read a state written by `save`."""
        directory = Path(directory)
        meta = json.loads((directory / STATE_FILE).read_text())
        state = cls(spec=DatasetSpec.model_validate(meta["spec"]), time_kind=meta["time_kind"],
                    numeric=list(meta["numeric"]))
        if state.entities is not None:
            if not (directory / SNAPSHOT_DIR).is_dir():
                raise ValueError(f"the feature state at {directory} has entity features but no {SNAPSHOT_DIR}/")
            state.snapshot = SnapshotStore.load(directory / SNAPSHOT_DIR)
        return state
