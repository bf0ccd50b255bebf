"""The training benchmark's smoke version runs end to end and prints well-formed tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `bench` is a folder of scripts, not part of the installed package
    sys.path.insert(0, str(REPO))

from bench.common import fmt_ratio, markdown_table, parse_markdown_tables, parse_number  # noqa: E402

SCRIPT = REPO / "bench" / "bench_training.py"
DATA_DIR = REPO.parent / "shared" / "data"

COST_COLUMNS = ["data", "rows", "wall s", "peak RSS MiB", "rows/s", "aim met?", "CPU s (user+sys)", "CPU s / cores"]
QUALITY_COLUMNS = ["dataset", "split", "model", "rows train/test", "PR-AUC", "ROC-AUC", "recall@1%FPR",
                   "published ROC-AUC", "aim met?"]


def _run(tmp_path: Path, *args: str, timeout: float = 600) -> tuple[str, str]:
    out = tmp_path / "training.md"
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("FRAUDOPS_REGISTRY_URL", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.exists()
    return proc.stdout, out.read_text()


def test_markdown_helpers_round_trip() -> None:
    text = markdown_table(["name", "value"], [["a|b", "1.5"], ["c", "2 000"]])
    [rows] = parse_markdown_tables(text)
    assert rows == [{"name": "a|b", "value": "1.5"}, {"name": "c", "value": "2 000"}]
    assert parse_number("2 000") == 2000
    assert parse_number("—") is None
    assert fmt_ratio(3.0, 2.0) == "1.50×"
    assert parse_number(fmt_ratio(3.0, 2.0)) == 1.5


@pytest.mark.slow
def test_quick_cost_section_prints_a_parseable_table(tmp_path: Path) -> None:
    stdout, written = _run(tmp_path, "--only", "cost")
    assert "catboost" in stdout and "kfp" in stdout and "nproc" in stdout
    tables = parse_markdown_tables(stdout)
    assert len(tables) == 1
    [row] = tables[0]
    assert list(row) == COST_COLUMNS
    assert parse_number(row["rows"]) == 5000
    for column in ("wall s", "peak RSS MiB", "rows/s", "CPU s (user+sys)", "CPU s / cores"):
        value = parse_number(row[column])
        assert value is not None and value > 0, (column, row[column])
    assert row["aim met?"].split()[0] in {"yes", "NO"}
    assert parse_markdown_tables(written) == tables  # the report file holds the same table
    assert "Total benchmark wall time" in written


@pytest.mark.slow
def test_quick_synthetic_section_compares_live_entity_features_with_frozen_ones(tmp_path: Path) -> None:
    """The generator's burst patterns: the live model, the same model on the frozen snapshot and the previous
    release's frozen statistics, with recall per pattern; live features catch card testing that frozen ones miss."""
    stdout, _ = _run(tmp_path, "--only", "synthetic")
    [table] = parse_markdown_tables(stdout)
    patterns = ["card_testing", "device_ip_ring", "instant_purchase", "risky_source"]
    assert list(table[0]) == [*QUALITY_COLUMNS[2:7], *(f"recall@1%FPR {p}" for p in patterns)]
    live, refit, snapshot, previous = table
    assert "live" in live["model"] and "frozen snapshot" in snapshot["model"] and "previous" in previous["model"]
    assert "--refit" in refit["model"] and 0.0 <= parse_number(refit["PR-AUC"]) <= 1.0
    card_testing = [parse_number(row["recall@1%FPR card_testing"]) for row in (live, snapshot, previous)]
    assert card_testing[0] > card_testing[1] and card_testing[0] > card_testing[2], card_testing
    assert parse_number(live["PR-AUC"]) > parse_number(previous["PR-AUC"])


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not (DATA_DIR / "ecommerce_fraud" / "Fraud_Data.csv.gz").exists(),
                    reason="../shared/data is absent")
def test_quick_ecommerce_quality_table(tmp_path: Path) -> None:
    stdout, _ = _run(tmp_path, "--only", "ecommerce", "--data-dir", str(DATA_DIR))
    [table] = parse_markdown_tables(stdout)
    assert list(table[0]) == QUALITY_COLUMNS
    models = [r["model"] for r in table]
    assert any("fraudops CatBoost" in m for m in models) and any("logistic" in m for m in models)
    assert sum("--refit" in m for m in models) == 2  # one per split
    for row in table:
        for column in ("PR-AUC", "ROC-AUC", "recall@1%FPR"):
            value = parse_number(row[column])
            assert value is not None and 0.0 <= value <= 1.0, (column, row[column])


def test_missing_data_dir_skips_cleanly(tmp_path: Path) -> None:
    stdout, _ = _run(tmp_path, "--only", "ecommerce,ieee", "--data-dir", str(tmp_path / "nowhere"), timeout=120)
    assert "skipped" in stdout
    assert parse_markdown_tables(stdout) == []
