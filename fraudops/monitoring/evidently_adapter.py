"""The only module that imports Evidently (0.7 API): its interface moves between minor versions, so it stays here.

Note the argument order of Evidently 0.7: ``Report.run(current_data, reference_data)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class ColumnDrift:
    """Distance between reference and current for one column, and whether it crosses the threshold."""

    column: str
    method: str
    distance: float
    drifted: bool


@dataclass
class DriftResult:
    """Per-column drift plus the rendered Evidently snapshot (for the HTML report)."""

    columns: dict[str, ColumnDrift]
    snapshot: Any

    def save_html(self, path: str | Path) -> None:
        """Write Evidently's interactive HTML report."""
        self.snapshot.save_html(str(path))


def column_drift(reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str], categorical: list[str],
                 *, num_method: str, cat_method: str, thresholds: dict[str, float]) -> DriftResult:
    """Drift of each column with a pinned method per column type (so the test does not change with sample size).

    ``thresholds`` gives each column's distance threshold; a column drifts when its distance reaches it.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    columns = [*numerical, *categorical]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    ref = Dataset.from_pandas(reference[columns], data_definition=definition)
    cur = Dataset.from_pandas(current[columns], data_definition=definition)
    methods = {c: num_method for c in numerical} | {c: cat_method for c in categorical}
    metrics = [ValueDrift(column=c, method=methods[c], threshold=thresholds[c]) for c in columns]
    snapshot = Report(metrics).run(current_data=cur, reference_data=ref)
    result: dict[str, ColumnDrift] = {}
    for entry in snapshot.dict()["metrics"]:
        column = entry["config"].get("column")
        if column in methods:
            distance = float(entry["value"])
            result[column] = ColumnDrift(column, methods[column], distance, distance >= thresholds[column])
    missing = set(columns) - set(result)
    if missing:
        raise RuntimeError(f"Evidently returned no drift value for {sorted(missing)}; check the adapter")
    return DriftResult(result, snapshot)
