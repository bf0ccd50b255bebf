"""Training configuration, time-based splits and CatBoost training with native categorical features."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import pandas as pd
from catboost import CatBoostClassifier
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fraudops.bundle import ModelBundle
from fraudops.errors import DataError
from fraudops.evaluation import cost_threshold, fraud_metrics
from fraudops.features import FeatureState
from fraudops.schema import DatasetSpec

Progress = Callable[[int, int], None]
"""Called after each boosting round with the rounds done and the rounds expected in all."""
MAX_ROUNDS = 100_000
"""Most boosting rounds of one fit (``iterations``, a refit's rounds)."""


class TrainConfig(BaseModel):
    """Hyper-parameters, split and decision costs of one training run (validated; unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iterations: int = Field(800, ge=1, le=MAX_ROUNDS)
    learning_rate: float = Field(0.08, gt=0, le=1)
    depth: int = Field(6, ge=1, le=12)
    early_stopping_rounds: int = Field(60, ge=1)
    refit: bool = Field(False, description="after early stopping on the validation window, train the final model "
                        "again on train + valid (the most recent labelled rows before the test window) for the "
                        "rounds early stopping chose, scaled by the rows added (so possibly more than "
                        "iterations); the threshold stays the one picked on valid, and the test window stays "
                        "held out. Costs a second training run")
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
    """Reports the rounds done, ``offset`` + this fit's, out of ``total`` (a refit continues the first fit's
    count)."""

    def __init__(self, total: int, progress: Progress, offset: int = 0) -> None:
        self.total, self.progress, self.offset, self.done = total, progress, offset, 0

    def after_iteration(self, info: Any) -> bool:
        self.done = info.iteration  # CatBoost counts from 1
        self.progress(self.offset + self.done, self.total)
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
    minimises the expected cost (``cost_fn`` per missed fraud, ``cost_fp`` per false decline) there; then, with
    ``config.refit``, train the final model on train + valid (`refit`).
    ``meta["valid_metrics"]``: the early-stopped model's on the validation window, where settings are compared."""
    model = _classifier(config, config.iterations, od_type="Iter", od_wait=config.early_stopping_rounds,
                        use_best_model=True)
    bundle = ModelBundle(model=model, state=state, threshold=0.5)
    total = config.iterations  # the bar: at most the iterations, then the refit's rounds
    if config.refit:
        total += refit_rounds(config.iterations, len(x_train), len(x_valid))
    first = _ProgressCallback(total, progress) if progress else None
    model.fit(bundle.pool(x_train, y_train), eval_set=bundle.pool(x_valid, y_valid),
              callbacks=[first] if first else None)
    valid_scores = bundle.score_features(x_valid)
    bundle.threshold = cost_threshold(y_valid, valid_scores, config.cost_fn, config.cost_fp)
    valid = fraud_metrics(np.asarray(y_valid), valid_scores, bundle.threshold, what="the validation window")
    bundle.meta.update(best_iteration=int(model.get_best_iteration() or 0), params=config.model_dump(),
                       valid_metrics={k: valid[k] for k in ("pr_auc", "roc_auc", "recall_at_1pct_fpr")})
    if config.refit:
        return refit(bundle, x_train, y_train, x_valid, y_valid, progress, done=first.done if first else 0)
    return bundle


def refit(bundle: ModelBundle, x_train: pd.DataFrame, y_train: Any, x_valid: pd.DataFrame, y_valid: Any,
          progress: Progress | None = None, done: int = 0) -> ModelBundle:
    """The early-stopped ``bundle`` (from `fit`) with its model trained again on train + valid, the most recent
    labelled rows, for `refit_rounds` rounds. Its threshold and validation metrics stay the early-stopped model's
    (the refit has trained on the validation rows); ``done``: rounds already reported to ``progress``."""
    config = TrainConfig.model_validate({**bundle.meta["params"], "refit": True})
    early = bundle.meta["best_iteration"] + 1
    rounds = refit_rounds(early, len(x_train), len(x_valid))
    final = _classifier(config, rounds)
    x_all = pd.concat([x_train, x_valid], ignore_index=True)
    y_all = np.concatenate([np.asarray(y_train), np.asarray(y_valid)])
    callback = _ProgressCallback(done + rounds, progress, offset=done) if progress else None
    meta = {**copy.deepcopy(bundle.meta), "params": config.model_dump(),
            "refit": {"rounds": rounds, "rows": len(x_all), "early_stopped_rounds": early}}
    out = replace(bundle, model=final, meta=meta)
    final.fit(out.pool(x_all, y_all), callbacks=[callback] if callback else None)
    return out


def refit_rounds(rounds: int, n_train: int, n_valid: int) -> int:
    """Boosting rounds for the refit on train + valid: the rounds early stopping chose on train alone, scaled by
    the rows added (the same rounds per row; may exceed ``iterations``), at most `MAX_ROUNDS`."""
    return min(MAX_ROUNDS, max(1, round(rounds * (n_train + n_valid) / n_train)))


def _classifier(config: TrainConfig, iterations: int, **extra: Any) -> CatBoostClassifier:
    return CatBoostClassifier(
        iterations=iterations,
        learning_rate=config.learning_rate,
        depth=config.depth,
        loss_function="Logloss",
        eval_metric="PRAUC" if config.class_weights == "none" else "PRAUC:use_weights=false",
        auto_class_weights=None if config.class_weights == "none" else config.class_weights,
        random_seed=config.seed,
        thread_count=config.threads if config.threads > 0 else (os.cpu_count() or 1),
        allow_writing_files=False,
        verbose=False,
        **extra,
    )
