"""The entity feature benchmark runs end to end at small sizes and prints its three tables."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import parse_markdown_tables, parse_number

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs Debian's redis-server")
def test_quick_run_prints_offline_online_memory_and_rebuild_tables(tmp_path: Path) -> None:
    out = tmp_path / "entity_features.md"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_entity_features.py"), "--quick",
                             "--data-dir", str(tmp_path / "no-data"), "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    offline, online, memory, rebuild = parse_markdown_tables(out.read_text())
    assert [row["table"] for row in offline] == ["synthetic"]  # IEEE-CIS absent: skipped, and said so
    assert "IEEE-CIS skipped" in out.read_text()
    assert (parse_number(offline[0]["rows/s"]) or 0) > (parse_number(offline[0]["baseline rows/s (sequential online, "
                                                                      "first 500 rows)"]) or 0)
    assert {row["batch rows"] for row in online} == {"1", "100"}
    assert all((parse_number(row["MiB per million entities"]) or 0) > 0 for row in memory)
    assert [(row["log"], row["store"]) for row in rebuild] == [
        ("in event-time order", "counting only"), ("in event-time order", "redis-server (loopback)"),
        ("shuffled", "counting only")]
    assert all(row["logged rows"] == "20 000" and (parse_number(row["rows/s"]) or 0) > 0 for row in rebuild)
