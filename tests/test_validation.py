"""Data validation: bad rows are reported with file row numbers and set aside; unusable tables are refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraudops.errors import DataError
from fraudops.schema import SYNTHETIC, DatasetSpec
from fraudops.validation import REASON_COLUMN, ROW_COLUMN, validate

N = 400


@pytest.fixture
def raw(transactions) -> pd.DataFrame:
    """Transactions as they come out of a CSV: times as text, plus an extra numeric column."""
    frame = transactions(N, seed=3)
    for col in ("signup_time", "purchase_time"):
        frame[col] = frame[col].dt.strftime("%Y-%m-%d %H:%M:%S")
    frame["n_items"] = np.arange(N) % 5 + 1.0
    return frame


def _corrupt(frame: pd.DataFrame, case: str, pos: int) -> pd.DataFrame:
    frame = frame.copy()
    if case == "missing_label":
        frame["is_fraud"] = frame["is_fraud"].astype("float64")
        frame.loc[pos, "is_fraud"] = np.nan
    elif case == "non_binary_label":
        frame.loc[pos, "is_fraud"] = 2
    elif case == "unparseable_time":
        frame.loc[pos, "purchase_time"] = "next tuesday"
    elif case == "missing_time":
        frame.loc[pos, "purchase_time"] = None
    elif case == "signup_after_purchase":
        later = pd.Timestamp(frame.loc[pos, "purchase_time"]) + pd.Timedelta(days=1)
        frame.loc[pos, "signup_time"] = later.strftime("%Y-%m-%d %H:%M:%S")
    elif case == "negative_amount":
        frame.loc[pos, "amount"] = -12.5
    elif case == "missing_amount":
        frame.loc[pos, "amount"] = np.nan
    elif case == "infinite_numeric":
        frame.loc[pos, "n_items"] = np.inf
    elif case == "text_in_numeric":
        frame["n_items"] = frame["n_items"].astype(object)
        frame.loc[pos, "n_items"] = "three"
    elif case == "text_in_amount":
        frame["amount"] = frame["amount"].astype(object)
        frame.loc[pos, "amount"] = "12,50 EUR"
    elif case == "duplicate_id":
        frame.loc[pos, "transaction_id"] = frame.loc[3, "transaction_id"]
    else:  # pragma: no cover
        raise AssertionError(case)
    return frame


CASES = [
    ("missing_label", "is_fraud", "label is missing"),
    ("non_binary_label", "is_fraud", "label must be 0 or 1, got "),
    ("unparseable_time", "purchase_time", "cannot parse time, got 'next tuesday'"),
    ("missing_time", "purchase_time", "time is missing"),
    ("signup_after_purchase", "signup_time", "is after purchase_time (impossible)"),
    ("negative_amount", "amount", "amount is negative, got "),
    ("missing_amount", "amount", "amount is missing"),
    ("infinite_numeric", "n_items", "infinite value"),
    ("text_in_numeric", "n_items", "not a number, got 'three'"),
    ("text_in_amount", "amount", "not a number, got '12,50 EUR'"),
    ("duplicate_id", "transaction_id", "duplicate id (first occurrence kept), got 't000003'"),
]


@pytest.mark.parametrize(("case", "column", "problem"), CASES, ids=[c[0] for c in CASES])
def test_bad_row_reported_with_row_column_problem(raw, case, column, problem):
    pos = 57
    frame = _corrupt(raw, case, pos)
    result = validate(frame, SYNTHETIC)
    issues = [(i.row, i.column, i.problem) for i in result.report.issues]
    assert any(i.row == pos + 1 and i.column == column and i.problem.startswith(problem)
               for i in result.report.issues), issues
    assert {i.row for i in result.report.issues} == {pos + 1}
    assert result.report.n_rejected == 1
    assert result.rejected[ROW_COLUMN].tolist() == [pos + 1]
    assert result.rejected[REASON_COLUMN].iloc[0].startswith(f"{column}: {problem}")
    assert frame.loc[pos, "transaction_id"] == result.rejected["transaction_id"].iloc[0]
    if case != "duplicate_id":
        assert frame.loc[pos, "transaction_id"] not in set(result.clean["transaction_id"])


def test_nothing_dropped_silently(raw):
    bad = {case: 20 + 17 * k for k, (case, _, _) in enumerate(CASES)}
    frame = raw
    for case, pos in bad.items():
        frame = _corrupt(frame, case, pos)
    result = validate(frame, SYNTHETIC, max_bad_fraction=0.1)
    report = result.report
    assert report.n_rows == N
    assert report.n_valid + report.n_rejected == report.n_rows
    assert len(result.clean) == report.n_valid
    assert len(result.rejected) == report.n_rejected == len(bad)
    assert sorted(result.rejected[ROW_COLUMN]) == sorted(pos + 1 for pos in bad.values())
    # the rejected frame holds the original (raw, unparsed) values plus the row number and reasons
    assert list(result.rejected.columns) == [ROW_COLUMN, *frame.columns, REASON_COLUMN]
    for _, rejected_row in result.rejected.iterrows():
        original = frame.iloc[rejected_row[ROW_COLUMN] - 1]
        pd.testing.assert_series_equal(rejected_row[list(frame.columns)], original, check_names=False)
        assert rejected_row[REASON_COLUMN]
    text_row = result.rejected.loc[result.rejected[ROW_COLUMN] == bad["unparseable_time"] + 1].iloc[0]
    assert text_row["purchase_time"] == "next tuesday"
    # the accepted and rejected rows together are exactly the input rows
    ids = pd.concat([result.clean["transaction_id"], result.rejected["transaction_id"]])
    assert sorted(ids) == sorted(frame["transaction_id"])
    # dict form agrees
    as_dict = report.to_dict()
    assert as_dict["n_rejected"] == len(bad)
    assert len(as_dict["issues"]) == len(report.issues)


def test_one_row_with_several_problems_is_one_rejected_row(raw):
    frame = _corrupt(_corrupt(raw, "negative_amount", 9), "infinite_numeric", 9)
    result = validate(frame, SYNTHETIC)
    assert result.report.n_rejected == 1
    assert len(result.report.issues) == 2
    reasons = result.rejected[REASON_COLUMN].iloc[0]
    assert "amount: amount is negative" in reasons
    assert "n_items: infinite value" in reasons


def test_clean_rows_are_typed(raw):
    result = validate(raw, SYNTHETIC)
    clean = result.clean
    assert result.report.n_rejected == 0
    assert clean["is_fraud"].dtype == np.int64
    assert pd.api.types.is_datetime64_dtype(clean["purchase_time"])
    assert pd.api.types.is_datetime64_dtype(clean["signup_time"])
    assert clean["amount"].dtype == np.float64
    assert result.numeric == ["amount", "n_items"]
    assert result.spec.categorical == SYNTHETIC.categorical


def test_missing_required_column_is_fatal(raw):
    with pytest.raises(DataError, match="device_id"):
        validate(raw.drop(columns=["device_id"]), SYNTHETIC)


def test_empty_table_is_fatal(raw):
    with pytest.raises(DataError, match="no rows"):
        validate(raw.iloc[:0], SYNTHETIC)


def test_label_with_one_class_is_fatal(raw):
    frame = raw.assign(is_fraud=0)
    with pytest.raises(DataError, match=r"'is_fraud'.*only the class \[0\]"):
        validate(frame, SYNTHETIC)


def test_label_of_one_class_after_rejections_is_fatal(raw):
    # the only fraud rows are bad rows: after setting them aside a single class is left
    frame = raw.assign(is_fraud=0)
    frame.loc[[5, 6], "is_fraud"] = 1
    frame.loc[[5, 6], "amount"] = -1.0
    with pytest.raises(DataError, match="is_fraud"):
        validate(frame, SYNTHETIC)


def test_non_binary_label_column_is_fatal(raw):
    frame = raw.assign(is_fraud=np.where(raw["is_fraud"] == 1, "fraud", "legit"))
    with pytest.raises(DataError, match=r"'is_fraud'.*not binary"):
        validate(frame, SYNTHETIC)


def test_unparseable_time_column_is_fatal(raw):
    frame = raw.assign(purchase_time="03.01.2026 at noon")
    with pytest.raises(DataError, match=r"'purchase_time' cannot be read as datetime.*time_format"):
        validate(frame, SYNTHETIC)


def test_time_format_is_used(raw):
    frame = raw.copy()
    for col in ("signup_time", "purchase_time"):
        frame[col] = pd.to_datetime(frame[col]).dt.strftime("%d/%m/%Y %H:%M:%S")
    spec = SYNTHETIC.model_copy(update={"time_format": "%d/%m/%Y %H:%M:%S"})
    result = validate(frame, spec)
    assert result.report.n_rejected == 0
    expected = pd.to_datetime(raw["purchase_time"]).sort_values(kind="stable").reset_index(drop=True)
    pd.testing.assert_series_equal(result.clean["purchase_time"], expected, check_names=False)


def test_too_many_bad_rows_is_fatal(raw):
    frame = raw.copy()
    frame.loc[: N // 5, "amount"] = -1.0  # ~20% bad
    with pytest.raises(DataError, match=r"more than the allowed 5%.*column 'amount'.*row 1"):
        validate(frame, SYNTHETIC)
    # a higher budget accepts the same table
    result = validate(frame, SYNTHETIC, max_bad_fraction=0.5)
    assert result.report.n_rejected == N // 5 + 1


def test_text_column_treated_as_categorical_with_warning(raw):
    rng = np.random.default_rng(0)
    frame = raw.assign(shop=rng.choice(["north", "south", "online"], size=N))
    result = validate(frame, SYNTHETIC)
    assert result.spec.categorical == (*SYNTHETIC.categorical, "shop")
    assert "shop" not in result.numeric
    assert any("'shop'" in w and "categorical" in w for w in result.report.warnings)
    assert result.report.n_rejected == 0


def test_mostly_numeric_column_stays_numeric(raw):
    frame = _corrupt(raw, "text_in_numeric", 4)
    result = validate(frame, SYNTHETIC)
    assert "n_items" in result.numeric
    assert "n_items" not in result.spec.categorical
    assert result.clean["n_items"].dtype == np.float64


def test_dropped_columns_are_not_checked(raw):
    frame = raw.assign(notes=["free text"] * N)
    spec = SYNTHETIC.model_copy(update={"drop": ("notes",)})
    result = validate(frame, spec)
    assert "notes" not in result.spec.categorical
    assert "notes" not in result.numeric
    assert result.report.warnings == []


def test_unsorted_input_is_sorted_with_warning(raw):
    shuffled = raw.sample(frac=1.0, random_state=1).reset_index(drop=True)
    pos = 11
    shuffled = _corrupt(shuffled, "negative_amount", pos)
    result = validate(shuffled, SYNTHETIC)
    assert any("not in time order" in w and "purchase_time" in w for w in result.report.warnings)
    assert result.clean["purchase_time"].is_monotonic_increasing
    assert result.clean.index.tolist() == list(range(N - 1))
    # row numbers still refer to the input order
    assert result.rejected[ROW_COLUMN].tolist() == [pos + 1]
    assert result.rejected["transaction_id"].iloc[0] == shuffled.loc[pos, "transaction_id"]


def test_sorted_input_has_no_warning(raw):
    assert validate(raw, SYNTHETIC).report.warnings == []


def test_report_markdown_mentions_counts(raw):
    frame = _corrupt(_corrupt(raw, "negative_amount", 7), "duplicate_id", 30)
    frame = frame.assign(shop=["a", "b"] * (N // 2))
    md = validate(frame, SYNTHETIC).report.to_markdown()
    assert md.startswith("# Data validation")
    assert f"- rows read: {N}" in md
    assert f"- rows accepted: {N - 2}" in md
    assert "- rows rejected: 2" in md
    assert "warning: column 'shop'" in md
    assert "| amount: amount is negative | 1 |" in md
    assert "| 8 | amount | amount is negative, got " in md
    assert "| 31 | transaction_id | duplicate id (first occurrence kept), got 't000003' |" in md


def test_problem_details_show_plain_values(raw):
    frame = _corrupt(_corrupt(raw, "negative_amount", 7), "non_binary_label", 30)
    problems = {i.column: i.problem for i in validate(frame, SYNTHETIC).report.issues}
    assert problems["amount"] == "amount is negative, got -12.5"
    assert problems["is_fraud"] == "label must be 0 or 1, got 2"


def test_report_markdown_without_problems(raw):
    md = validate(raw, SYNTHETIC).report.to_markdown()
    assert "- rows rejected: 0" in md
    assert "## Problems" not in md


def test_numeric_seconds_timestamp(raw):
    spec = DatasetSpec(target="is_fraud", timestamp="t", amount="amount", id_column="transaction_id")
    frame = pd.DataFrame({"t": np.arange(N, 0, -1) * 60.0, "amount": raw["amount"], "is_fraud": raw["is_fraud"],
                          "transaction_id": raw["transaction_id"]})
    result = validate(frame, spec)
    assert result.clean["t"].dtype == np.float64
    assert result.clean["t"].is_monotonic_increasing
    assert result.numeric == ["amount"]


def test_numeric_seconds_timestamp_with_one_bad_value(raw):
    spec = DatasetSpec(target="is_fraud", timestamp="t", amount="amount")
    times = [str(60 * i) for i in range(N)]
    times[9] = "n/a?"
    frame = pd.DataFrame({"t": times, "amount": raw["amount"], "is_fraud": raw["is_fraud"]})
    result = validate(frame, spec)
    assert result.rejected[ROW_COLUMN].tolist() == [10]
