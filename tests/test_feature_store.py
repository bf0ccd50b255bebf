"""The order a store rebuild replays the prediction log in, and how it reads the inputs (without holding them)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fraudops.feature_store import _Inputs, _ReplayOrder
from fraudops.predlog import PREDICTIONS, TIME_COLUMN

HOUR = datetime(2026, 3, 1, 10, tzinfo=UTC)


def part(root: Path, name: str, logged_second: int, rows: list[tuple[str, str, int, str | None]]) -> None:
    """A log part file of ``rows`` (role, request id, row, event time), all logged at ``logged_second`` past
    `HOUR`; each input names its request and row."""
    folder = root / PREDICTIONS / f"date={HOUR:%Y-%m-%d}" / f"hour={HOUR:%H}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        TIME_COLUMN: pa.array([HOUR + timedelta(seconds=logged_second)] * len(rows), pa.timestamp("us", tz="UTC")),
        "role": [r[0] for r in rows], "request_id": [r[1] for r in rows],
        "row": pa.array([r[2] for r in rows], pa.int32()),
        "purchase_time": pa.array([pd.Timestamp(r[3]) if r[3] else None for r in rows], pa.timestamp("ns")),
        "input": [json.dumps({"id": f"{r[1]}/{r[2]}", "logged": logged_second}) for r in rows]}),
        folder / f"part-{name}.parquet")


@pytest.mark.parametrize("cache_bytes", [1, 256 << 20])
def test_a_rebuild_replays_decided_rows_by_event_time_each_once_reading_inputs_file_by_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_bytes: int) -> None:
    """By event time (missing last), a time's rows as logged; shadow rows and rows logged outside the window left
    out; a row written twice counted once, the log's first copy (before a spill directory's, even an earlier one).
    The same with a cache too small for one file (every file read again when needed)."""
    log, spill = tmp_path / "log", tmp_path / "spill"
    part(log, "a", 1, [("champion", "r1", 0, "2026-03-01 10:05"), ("champion", "r1", 1, "2026-03-01 09:00"),
                       ("shadow", "r1", 0, "2026-03-01 08:00")])
    part(log, "b", 2, [("champion", "r2", 0, "2026-03-01 09:30"), ("champion", "r1", 1, "2026-03-01 09:00")])
    part(log, "c", 3, [("canary", "r3", 0, None), ("champion", "r4", 0, "2026-03-01 09:00")])
    part(log, "d", 3000, [("champion", "r6", 0, "2026-03-01 07:00")])  # logged after the window
    part(spill, "e", 0, [("champion", "r5", 0, "2026-03-01 09:10"), ("champion", "r2", 0, "2026-03-01 09:30")])
    monkeypatch.setattr(_Inputs, "CACHE_BYTES", cache_bytes)
    order = _ReplayOrder.of([str(log), str(spill)], "purchase_time", HOUR, HOUR + timedelta(minutes=30))
    assert order.logged_rows == 9 and not order.unreadable
    assert "input" in order.columns
    inputs = _Inputs(order)
    replayed, names = [], []
    for lo in range(0, len(order), 2):
        texts, where = inputs.texts(lo, min(lo + 2, len(order)))
        replayed += [json.loads(text) for text in texts]
        names += [where(k) for k in range(len(texts))]
    assert [(r["id"], r["logged"]) for r in replayed] == [
        ("r1/1", 1), ("r4/0", 3), ("r5/0", 0), ("r2/0", 2), ("r1/0", 1), ("r3/0", 3)]
    assert names == [f"request {r['id'].replace('/', ' row ')}" for r in replayed]
    assert order.logged.tolist() == [pd.Timestamp(HOUR + timedelta(seconds=r["logged"])).value // 1000
                                     for r in replayed]
    assert len(inputs.held) <= 1


def test_a_log_file_gone_before_its_inputs_are_read_is_named_unreadable_and_its_rows_left_out(
        tmp_path: Path) -> None:
    part(tmp_path, "a", 1, [("champion", "r1", 0, "2026-03-01 09:00")])
    part(tmp_path, "b", 2, [("champion", "r2", 0, "2026-03-01 09:10")])
    order = _ReplayOrder.of([str(tmp_path)], "purchase_time", HOUR, HOUR + timedelta(hours=1))
    gone = next(tmp_path.rglob("part-b.parquet"))
    gone.write_bytes(b"torn")
    inputs = _Inputs(order)
    texts, where = inputs.texts(0, 2)
    assert json.loads(texts[0])["id"] == "r1/0" and texts[1] is None
    assert where(1) == "logged row 1"
    assert inputs.unreadable == (str(gone),)
