"""The monitoring benchmark runs and prints its drift-cost table (smallest configuration)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_drift_section_prints_a_table(tmp_path: Path) -> None:
    out = tmp_path / "monitoring.md"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_monitoring.py"), "--quick", "--only",
                             "drift", "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 20,000 |")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[3]) > 0 and float(cells[6]) > 0 and cells[8] in {"ok", "drift", "degraded"}
