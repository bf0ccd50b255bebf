"""Reading tables, the IP-to-country join, and content fingerprints."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraudops.data.io import COUNTRY_COLUMN, attach_ip_country, fingerprint, load_dataset, read_table, write_table
from fraudops.errors import DataError
from fraudops.schema import ECOMMERCE


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "id": [1, 2, 3],
        "name": ["a", "b", "c"],
        "amount": [1.5, 2.25, np.nan],
        "class": [0, 1, 0],
    })


@pytest.fixture
def ip_ranges(tmp_path) -> str:
    path = tmp_path / "ip_ranges.csv"
    pd.DataFrame({
        # deliberately unsorted: the lookup must sort the ranges itself
        "lower_bound_ip_address": [300.0, 100.0, 1000.0],
        "upper_bound_ip_address": [399.0, 199.0, 1999.0],
        "country": ["France", "Japan", "Brazil"],
    }).to_csv(path, index=False)
    return str(path)


def test_read_csv(tmp_path, frame):
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    pd.testing.assert_frame_equal(read_table(path), frame)


def test_read_csv_gz(tmp_path, frame):
    path = tmp_path / "t.csv.gz"
    frame.to_csv(path, index=False, compression="gzip")
    pd.testing.assert_frame_equal(read_table(str(path)), frame)


def test_read_csv_with_bom(tmp_path, frame):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeff".encode() + frame.to_csv(index=False).encode())
    assert list(read_table(path).columns) == list(frame.columns)


def test_read_parquet(tmp_path, frame):
    path = tmp_path / "t.parquet"
    frame.to_parquet(path, index=False)
    pd.testing.assert_frame_equal(read_table(path), frame)


def test_write_table_round_trip(tmp_path, frame):
    for name in ("w.parquet", "w.csv"):
        write_table(frame, tmp_path / name)
        pd.testing.assert_frame_equal(read_table(tmp_path / name), frame)


def test_unknown_extension_names_the_file(tmp_path, frame):
    path = tmp_path / "table.xlsx"
    path.write_text("whatever")
    with pytest.raises(DataError, match=r"table\.xlsx"):
        read_table(path)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.csv"
    with pytest.raises(DataError, match=r"not found.*absent\.csv"):
        read_table(path)


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet"):
        read_table(path)


def test_attach_ip_country(ip_ranges):
    frame = pd.DataFrame({"ip_address": [150.0, 100, 199, 350, 250, 50, 5000, np.nan, 1000, "not an ip"]})
    out = attach_ip_country(frame, "ip_address", ip_ranges)
    assert out[COUNTRY_COLUMN].tolist() == [
        "Japan",    # inside
        "Japan",    # lower bound inclusive
        "Japan",    # upper bound inclusive
        "France",
        "unknown",  # between two ranges
        "unknown",  # below every range
        "unknown",  # above every range
        "unknown",  # missing IP
        "Brazil",
        "unknown",  # not a number
    ]
    # the input is not modified
    assert COUNTRY_COLUMN not in frame


def test_attach_ip_country_rejects_bad_table(tmp_path):
    path = tmp_path / "ranges.csv"
    pd.DataFrame({"lower_bound_ip_address": [1], "country": ["X"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="upper_bound_ip_address"):
        attach_ip_country(pd.DataFrame({"ip": [1]}), "ip", path)


def test_load_dataset_adds_country_to_categorical(tmp_path, ip_ranges):
    data = tmp_path / "fraud.csv"
    pd.DataFrame({"class": [0, 1], "ip_address": [120.5, 9.0], "source": ["SEO", "Ads"]}).to_csv(data, index=False)
    frame, spec = load_dataset(data, ECOMMERCE, ip_table=ip_ranges)
    assert frame[COUNTRY_COLUMN].tolist() == ["Japan", "unknown"]
    assert spec.categorical == (*ECOMMERCE.categorical, "country")
    assert "country" not in ECOMMERCE.categorical
    # a second join does not list the column twice
    _, again = load_dataset(data, spec, ip_table=ip_ranges)
    assert again.categorical.count("country") == 1


def test_load_dataset_without_ip_table(tmp_path):
    data = tmp_path / "fraud.parquet"
    pd.DataFrame({"class": [0, 1], "ip_address": [1.0, 2.0]}).to_parquet(data)
    frame, spec = load_dataset(data, ECOMMERCE)
    assert spec is ECOMMERCE
    assert COUNTRY_COLUMN not in frame


def test_load_dataset_ip_table_needs_ip_column(tmp_path, ip_ranges):
    data = tmp_path / "fraud.csv"
    pd.DataFrame({"class": [0, 1]}).to_csv(data, index=False)
    with pytest.raises(DataError, match="ip_address"):
        load_dataset(data, ECOMMERCE, ip_table=ip_ranges)


def test_fingerprint_stable_and_sensitive(frame):
    base = fingerprint(frame)
    assert fingerprint(frame.copy()) == base
    assert fingerprint(frame.copy().reset_index(drop=True)) == base
    assert len(base) == 16

    changed = frame.copy()
    changed.loc[1, "amount"] = 2.26
    assert fingerprint(changed) != base

    text_changed = frame.copy()
    text_changed.loc[0, "name"] = "z"
    assert fingerprint(text_changed) != base

    renamed = frame.rename(columns={"name": "label"})
    assert fingerprint(renamed) != base

    reordered = frame.iloc[[1, 0, 2]]
    assert fingerprint(reordered) != base


def test_fingerprint_ignores_index(frame):
    assert fingerprint(frame.set_axis([10, 11, 12])) == fingerprint(frame)
