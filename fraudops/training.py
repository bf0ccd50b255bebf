"""Training configuration, time-based splits and CatBoost training with native categorical features."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import pandas as pd
from catboost import CatBoostClassifier
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fraudops.bundle import ModelBundle
from fraudops.errors import DataError
from fraudops.evaluation import cost_threshold
from fraudops.features import FeatureState
from fraudops.schema import DatasetSpec

Progress = Callable[[int, int], None]


class TrainConfig(BaseModel):
    """Hyper-parameters, split and decision costs of one training run (validated; unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iterations: int = Field(800, ge=1, le=100_000)
    learning_rate: float = Field(0.08, gt=0, le=1)
    depth: int = Field(6, ge=1, le=12)
    early_stopping_rounds: int = Field(60, ge=1)
    class_weights: Literal["none", "Balanced", "SqrtBalanced"] = "SqrtBalanced"
    seed: int = 0
    threads: int = Field(-1, description="CatBoost threads; -1 = all cores")
    split: Literal["time", "random"] = "time"
    test_fraction: float = Field(0.2, gt=0, lt=0.9)
    valid_fraction: float = Field(0.15, gt=0, lt=0.9)
    cost_fn: float = Field(100.0, gt=0, description="cost of a missed fraud")
    cost_fp: float = Field(5.0, gt=0, description="cost of declining a legitimate transaction")
    reference_rows: int = Field(5000, ge=100)

    @model_validator(mode="after")
    def _fractions(self) -> TrainConfig:
        if self.test_fraction + self.valid_fraction >= 0.9:
            raise ValueError("test_fraction + valid_fraction must leave at least 10% of rows for training")
        return self


@dataclass
class Splits:
    """Training, validation (early stopping, threshold) and test (evaluation, gate) rows."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    def windows(self, timestamp: str | None) -> dict[str, dict[str, Any]]:
        """Rows and time range of each part."""
        out = {}
        for name, part in (("train", self.train), ("valid", self.valid), ("test", self.test)):
            info: dict[str, Any] = {"rows": len(part)}
            if timestamp:
                info.update(start=str(part[timestamp].min()), end=str(part[timestamp].max()))
            out[name] = info
        return out


def split(frame: pd.DataFrame, spec: DatasetSpec, config: TrainConfig) -> Splits:
    """Split validated rows: by time (train < valid < test), or stratified at random for comparisons."""
    n = len(frame)
    n_test, n_valid = int(n * config.test_fraction), int(n * config.valid_fraction)
    if n_test < 20 or n_valid < 20 or n - n_test - n_valid < 50:
        raise DataError(f"{n} rows are too few to split into train/valid/test; need at least a few hundred")
    if config.split == "random":
        from sklearn.model_selection import train_test_split

        rest, test = train_test_split(frame, test_size=n_test, stratify=frame[spec.target],
                                      random_state=config.seed)
        train, valid = train_test_split(rest, test_size=n_valid, stratify=rest[spec.target],
                                        random_state=config.seed)
        parts = [p.sort_values(spec.timestamp, kind="stable") if spec.timestamp else p
                 for p in (train, valid, test)]
    else:
        ordered = frame.sort_values(spec.timestamp, kind="stable") if spec.timestamp else frame
        cut_valid, cut_test = n - n_test - n_valid, n - n_test
        parts = [ordered.iloc[:cut_valid], ordered.iloc[cut_valid:cut_test], ordered.iloc[cut_test:]]
    for name, part in zip(("train", "valid", "test"), parts, strict=True):
        if part[spec.target].nunique() < 2:
            raise DataError(f"the {name} window has no {'fraud' if part[spec.target].max() == 0 else 'legit'} "
                            f"rows ({len(part)} rows); use more data or a random split")
    return Splits(*(p.reset_index(drop=True) for p in parts))


class _ProgressCallback:
    def __init__(self, total: int, progress: Progress) -> None:
        self.total, self.progress = total, progress

    def after_iteration(self, info: Any) -> bool:
        self.progress(info.iteration, self.total)
        return True


def featurize(splits: Splits, spec: DatasetSpec, numeric: list[str]
              ) -> tuple[FeatureState, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Features for train, valid and test: the whole table replayed in event time, so that each row's entity
    features come from the rows strictly before it whichever part they are in (what a scorer with an online
    store sees). The state's entity snapshot is the history at the end of the table (no labels are involved)."""
    parts = (splits.train, splits.valid, splits.test)
    whole = pd.concat(parts, ignore_index=True)
    state = FeatureState.fit(whole, spec, numeric)
    features = state.training_features(whole)
    bounds = np.cumsum([0, *(len(p) for p in parts)])
    train, valid, test = (features.iloc[lo:hi].reset_index(drop=True) for lo, hi in pairwise(bounds))
    return state, train, valid, test


def fit(state: FeatureState, x_train: pd.DataFrame, y_train: Any, x_valid: pd.DataFrame, y_valid: Any,
        config: TrainConfig, progress: Progress | None = None) -> ModelBundle:
    """Train CatBoost with early stopping on the validation window and pick the decision threshold that
    minimises the expected cost (``cost_fn`` per missed fraud, ``cost_fp`` per false decline) there."""
    model = CatBoostClassifier(
        iterations=config.iterations,
        learning_rate=config.learning_rate,
        depth=config.depth,
        loss_function="Logloss",
        eval_metric="PRAUC" if config.class_weights == "none" else "PRAUC:use_weights=false",
        auto_class_weights=None if config.class_weights == "none" else config.class_weights,
        random_seed=config.seed,
        thread_count=config.threads if config.threads > 0 else (os.cpu_count() or 1),
        od_type="Iter",
        od_wait=config.early_stopping_rounds,
        use_best_model=True,
        allow_writing_files=False,
        verbose=False,
    )
    bundle = ModelBundle(model=model, state=state, threshold=0.5)
    callbacks = [_ProgressCallback(config.iterations, progress)] if progress else None
    model.fit(bundle.pool(x_train, y_train), eval_set=bundle.pool(x_valid, y_valid), callbacks=callbacks)
    bundle.threshold = cost_threshold(y_valid, bundle.score_features(x_valid), config.cost_fn, config.cost_fp)
    bundle.meta.update(best_iteration=int(model.get_best_iteration() or 0), params=config.model_dump())
    return bundle
