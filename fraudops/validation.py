"""Schema and data-quality checks: bad rows are reported with their row numbers and set aside, never lost."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from fraudops.errors import DataError
from fraudops.normalize import looks_numeric, time_kind_of, to_times
from fraudops.schema import DatasetSpec

ROW_COLUMN = "_row"
REASON_COLUMN = "_reasons"


@dataclass
class RowIssue:
    """One problem in one row. ``row`` counts data rows from 1, header excluded, in file order."""

    row: int
    column: str
    problem: str


@dataclass
class ValidationReport:
    """What validation found: per-row problems, warnings about the table, and the counts."""

    n_rows: int
    n_valid: int
    issues: list[RowIssue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_rejected(self) -> int:
        """Rows set aside because of at least one problem."""
        return self.n_rows - self.n_valid

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"n_rows": self.n_rows, "n_valid": self.n_valid, "n_rejected": self.n_rejected,
                "warnings": self.warnings, "issues": [asdict(i) for i in self.issues]}

    def to_markdown(self, max_rows: int = 50) -> str:
        """A short human report: counts, warnings, problems grouped by column, then the first bad rows."""
        lines = ["# Data validation", "", f"- rows read: {self.n_rows}", f"- rows accepted: {self.n_valid}",
                 f"- rows rejected: {self.n_rejected}"]
        lines += [f"- warning: {w}" for w in self.warnings]
        if self.issues:
            counts = pd.Series([f"{i.column}: {i.problem.split(',')[0]}" for i in self.issues]).value_counts()
            lines += ["", "## Problems", "", "| column: problem | rows |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in counts.items()]
            lines += ["", "## First rejected rows (data rows counted from 1)", "", "| row | column | problem |",
                      "|---|---|---|"]
            lines += [f"| {i.row} | {i.column} | {i.problem} |" for i in self.issues[:max_rows]]
        return "\n".join(lines) + "\n"


@dataclass
class ValidationResult:
    """Accepted rows (typed, in time order), rejected rows with reasons, the report and the resolved spec."""

    clean: pd.DataFrame
    rejected: pd.DataFrame
    report: ValidationReport
    spec: DatasetSpec
    numeric: list[str]


class _Collector:
    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self.issues: list[RowIssue] = []

    def flag(self, mask: np.ndarray, column: str, problem: str, values: pd.Series | None = None) -> None:
        positions = np.flatnonzero(mask)
        self.bad[positions] = True
        for pos in positions:
            detail = f", got {_plain(values.iloc[pos])!r}" if values is not None else ""
            self.issues.append(RowIssue(int(pos) + 1, column, problem + detail))


def _plain(value: object) -> object:
    """NumPy scalars as Python values, so that messages read ``-12.5`` rather than ``np.float64(-12.5)``."""
    return value.item() if isinstance(value, np.generic) else value


def _numeric(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Values as floats and the mask of present values that are not numbers."""
    parsed = pd.to_numeric(values, errors="coerce").astype("float64")
    return parsed, (parsed.isna() & values.notna()).to_numpy()


def validate(frame: pd.DataFrame, spec: DatasetSpec, *, max_bad_fraction: float = 0.05) -> ValidationResult:
    """Check a raw table against ``spec``.

    Raises `DataError` naming the column and the problem when the table is unusable: a required column is
    missing, the label has fewer than two classes, a time column cannot be parsed, or more than
    ``max_bad_fraction`` of the rows are bad. Otherwise every bad row is returned in ``rejected`` with its
    row number and reasons, and the report lists them.
    """
    if frame.empty:
        raise DataError("the table has no rows")
    missing = [c for c in spec.required_columns if c not in frame.columns]
    if missing:
        raise DataError(f"missing required column(s) {missing}; columns present: {list(frame.columns)[:30]}")
    frame = frame.reset_index(drop=True)
    n = len(frame)
    col = _Collector(n)
    warnings: list[str] = []
    clean = frame.copy()

    label = frame[spec.target]
    parsed_label = pd.to_numeric(label, errors="coerce")
    col.flag(label.isna().to_numpy(), spec.target, "label is missing")
    not_binary = label.notna().to_numpy() & ~parsed_label.isin([0, 1]).to_numpy()
    col.flag(not_binary, spec.target, "label must be 0 or 1", label)
    if not_binary.mean() > 0.5:
        raise DataError(f"column {spec.target!r} (the label) is not binary: values like "
                        f"{label[not_binary].unique()[:5].tolist()}; expected 0/1")
    clean[spec.target] = parsed_label.fillna(-1).astype("int64")

    kind = "datetime"
    for tcol in spec.time_columns:
        kind = time_kind_of(frame[tcol]) if tcol == spec.timestamp else kind
        parsed = to_times(frame[tcol], kind, spec.time_format)
        unparsed = parsed.isna().to_numpy() & frame[tcol].notna().to_numpy()
        if unparsed.mean() > 0.5:
            example = frame[tcol][unparsed].iloc[0]
            raise DataError(f"column {tcol!r} cannot be read as {kind} ({unparsed.sum()} of {n} values, e.g. "
                            f"{example!r}); set the time format in the dataset config (time_format)")
        col.flag(frame[tcol].isna().to_numpy(), tcol, "time is missing")
        col.flag(unparsed, tcol, "cannot parse time", frame[tcol])
        clean[tcol] = parsed
    if spec.timestamp and spec.signup_time:
        before = (clean[spec.signup_time] > clean[spec.timestamp]).to_numpy()
        col.flag(before, spec.signup_time, f"is after {spec.timestamp} (impossible)")

    categorical = list(spec.categorical)
    numeric: list[str] = []
    skip = spec.non_feature_columns() | set(categorical)
    for name in frame.columns:
        if name in skip:
            continue
        if not looks_numeric(frame[name]):
            categorical.append(name)
            warnings.append(f"column {name!r} holds text; treated as categorical (list it in --drop to ignore it)")
            continue
        numeric.append(name)
    for name in dict.fromkeys([*numeric, *([spec.amount] if spec.amount else [])]):
        values, not_number = _numeric(frame[name])
        col.flag(not_number, name, "not a number", frame[name])
        col.flag(np.isinf(values.to_numpy()), name, "infinite value")
        clean[name] = values
    if spec.amount:
        amount = clean[spec.amount]
        col.flag(amount.isna().to_numpy() & frame[spec.amount].isna().to_numpy(), spec.amount, "amount is missing")
        col.flag((amount < 0).to_numpy(), spec.amount, "amount is negative", frame[spec.amount])
    if spec.id_column and spec.id_column in frame:
        dup = frame[spec.id_column].duplicated().to_numpy() & frame[spec.id_column].notna().to_numpy()
        col.flag(dup, spec.id_column, "duplicate id (first occurrence kept)", frame[spec.id_column])

    bad_fraction = col.bad.mean()
    if bad_fraction > max_bad_fraction:
        worst = pd.Series([i.column for i in col.issues]).value_counts().index[0]
        example = next(i for i in col.issues if i.column == worst)
        raise DataError(f"{col.bad.sum()} of {n} rows ({bad_fraction:.1%}) are bad, more than the allowed "
                        f"{max_bad_fraction:.0%}; most problems are in column {worst!r}, e.g. row {example.row}: "
                        f"{example.problem}")

    reasons: dict[int, list[str]] = {}
    for issue in col.issues:
        reasons.setdefault(issue.row, []).append(f"{issue.column}: {issue.problem}")
    rejected = frame[col.bad].copy()
    rejected.insert(0, ROW_COLUMN, np.flatnonzero(col.bad) + 1)
    rejected[REASON_COLUMN] = ["; ".join(reasons[r]) for r in rejected[ROW_COLUMN]]

    clean = clean[~col.bad]
    if spec.timestamp:
        if not clean[spec.timestamp].is_monotonic_increasing:
            warnings.append(f"rows are not in time order; sorted by {spec.timestamp!r}")
        clean = clean.sort_values(spec.timestamp, kind="stable")
    clean = clean.reset_index(drop=True)
    classes = clean[spec.target].value_counts()
    if len(classes) < 2:
        raise DataError(f"column {spec.target!r} (the label) has only the class {classes.index.tolist()} "
                        "after validation; training needs both fraud (1) and legitimate (0) rows")
    resolved = spec.model_copy(update={"categorical": tuple(categorical)})
    report = ValidationReport(n_rows=n, n_valid=len(clean), issues=col.issues, warnings=warnings)
    return ValidationResult(clean=clean, rejected=rejected, report=report, spec=resolved, numeric=numeric)
