"""A trained model with everything needed to score raw transactions: CatBoost model, feature state, metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from catboost import CatBoostClassifier, CatBoostError, Pool

from fraudops.errors import RegistryError
from fraudops.features import FeatureState

MODEL_FILE = "model.cbm"
META_FILE = "bundle.json"
STATE_DIR = "features"
REFERENCE_FILE = "reference.parquet"
FORMAT_VERSION = 2  # 2: point-in-time entity features and their frozen snapshot (1: leave-one-out statistics)


@dataclass
class ModelBundle:
    """The unit that is trained, evaluated, registered and served."""

    model: CatBoostClassifier
    state: FeatureState
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)
    reference: pd.DataFrame | None = None

    @property
    def feature_names(self) -> list[str]:
        """Model inputs in order."""
        return self.state.feature_names

    def features(self, transactions: pd.DataFrame) -> pd.DataFrame:
        """Features for raw transactions after the training table (holdouts, backtests): entity features from the
        frozen snapshot (`FeatureState.transform`)."""
        return self.state.transform(transactions)

    def pool(self, features: pd.DataFrame, labels: np.ndarray | None = None) -> Pool:
        """A CatBoost pool with the categorical inputs declared."""
        return Pool(features, label=labels, cat_features=self.state.categorical_features)

    def score_features(self, features: pd.DataFrame) -> np.ndarray:
        """Fraud scores in [0, 1] for feature rows."""
        return self.model.predict_proba(self.pool(features))[:, 1]

    def score(self, transactions: pd.DataFrame) -> np.ndarray:
        """Fraud scores for raw transactions."""
        return self.score_features(self.features(transactions))

    def save(self, directory: str | Path) -> Path:
        """Write the bundle into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_model(str(directory / MODEL_FILE))
        self.state.save(directory / STATE_DIR)
        meta = {**self.meta, "format_version": FORMAT_VERSION, "threshold": self.threshold,
                "feature_names": self.feature_names, "categorical_features": self.state.categorical_features}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        if self.reference is not None:
            self.reference.to_parquet(directory / REFERENCE_FILE, index=False)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ModelBundle:
        """Read a bundle, checking that its files are complete and agree with each other."""
        directory = Path(directory)
        for name in (MODEL_FILE, META_FILE, STATE_DIR):
            if not (directory / name).exists():
                raise RegistryError(f"model bundle at {directory} is incomplete: {name} is missing")
        current = META_FILE
        try:
            meta = json.loads((directory / META_FILE).read_text())
            if meta.get("format_version") != FORMAT_VERSION:
                raise RegistryError(f"model bundle at {directory} has format {meta.get('format_version')!r}; this "
                                    f"fraudops reads format {FORMAT_VERSION} (point-in-time entity features): "
                                    "retrain the model")
            current = MODEL_FILE
            model = CatBoostClassifier()
            model.load_model(str(directory / MODEL_FILE))
            current = STATE_DIR
            state = FeatureState.load(directory / STATE_DIR)
        except (ValueError, OSError, KeyError, CatBoostError) as exc:
            raise RegistryError(f"model bundle at {directory} is unreadable: {current}: {exc}") from None
        if meta.get("feature_names") != state.feature_names or list(model.feature_names_) != state.feature_names:
            raise RegistryError(f"model bundle at {directory} is inconsistent: the model's features "
                                f"{list(model.feature_names_)} differ from the feature state's {state.feature_names}")
        ref_file = directory / REFERENCE_FILE
        reference = pd.read_parquet(ref_file) if ref_file.exists() else None
        return cls(model=model, state=state, threshold=float(meta["threshold"]), meta=meta, reference=reference)
