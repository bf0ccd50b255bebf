"""The prediction log's write-ahead log against real kills: a child process appends chunks and prints the index of
each one `LogWriter.append` accepted; SIGKILL, at a random moment or in the middle of a record's write; the next
writer recovers every printed chunk, once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fraudops.predlog import LogWriter, read_predictions

CHILD = """
import sys
from datetime import UTC, datetime

import numpy as np

from fraudops.predlog import PREDICTIONS, LogChunk, LogWriter

root, wal, run, big = sys.argv[1:]
writer = LogWriter(root, wal_dir=wal or None, flush_rows=10**9, flush_seconds=3600)
i = 0
while True:
    rows = 100 if i % 20 == 0 else 1
    blob = {}
    if i == int(big):  # a record of 16 MB, which the kernel writes in pieces: a kill can tear it
        blob = {"blob": "x" * (16 << 20)}
        sys.stdout.write("big\\n")
        sys.stdout.flush()
    writer.append(LogChunk(PREDICTIONS, datetime.now(UTC), rows,
                           columns={"row": np.arange(rows, dtype="int32"), "score": [0.5] * rows,
                                    "seen": np.full(rows, np.datetime64("2026-03-01T09:00"), "M8[ns]")},
                           shared={"request_id": f"{run}-{i}", "model_tag": "m:1", **blob},
                           json_columns={"input": [{"amount": float(i), "note": None}] * rows}))
    sys.stdout.write(f"{i}\\n")
    sys.stdout.flush()
    i += 1
"""


def rows_of(request_id: str) -> int:
    return 100 if int(request_id.rsplit("-", 1)[1]) % 20 == 0 else 1


def run_and_kill(root: Path, wal: Path | None, run: int, after: int, tear: bool, stderr: Path) -> set[str]:
    """Start a child writer (it first recovers what the last one left) and SIGKILL it once ``after`` chunks were
    accepted, or with ``tear`` while it writes the next one, a big record, to its segment; the request ids of the
    chunks it reported accepted."""
    with stderr.open("w") as err:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(wal or ""), str(run),
                                  str(after if tear else -1)], stdout=subprocess.PIPE, stderr=err, text=True)
    lines: list[str] = []
    try:
        for line in child.stdout:
            if line == "big\n":
                (segment,) = wal.glob("*.wal")  # its only segment: no flush happens
                size, deadline = segment.stat().st_size, time.monotonic() + 10
                while segment.stat().st_size == size and time.monotonic() < deadline:
                    pass  # kill it as soon as the write has begun
                break
            lines.append(line)
            if not tear and len(lines) >= after:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        lines += child.stdout.read().splitlines(keepends=True)  # what it printed before it died
        child.wait(timeout=10)
    assert len(lines) >= after, stderr.read_text()
    return {f"{run}-{line.strip()}" for line in lines if line.endswith("\n")}  # a torn last line was not accepted


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_every_accepted_chunk_survives_sigkill_once(tmp_path):
    root, wal = tmp_path / "log", tmp_path / "wal"
    rng = random.Random()
    accepted: set[str] = set()
    for run, tear in enumerate((False, True, True)):  # each child first recovers the rows of the one killed before
        accepted |= run_and_kill(root, wal, run, rng.randint(300, 1500), tear, tmp_path / f"stderr-{run}.txt")
    writer = LogWriter(str(root), flush_seconds=3600, wal_dir=wal)
    writer.close()
    counts = read_predictions(str(root)).get("request_id", pd.Series(dtype=str)).value_counts()
    missing = accepted - set(counts.index)
    assert not missing, f"{len(missing)} of {len(accepted)} accepted chunks lost, e.g. {sorted(missing)[:5]}"
    twice = {rid: n for rid, n in counts.items() if n != rows_of(rid)}
    assert not twice, f"rows written more than once: {dict(list(twice.items())[:5])}"
    assert writer.wal_recovered_rows > 0 and writer.wal_unreadable_records <= 1  # at most the torn record
    assert list(wal.iterdir()) == []
