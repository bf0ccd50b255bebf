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


@pytest.mark.parametrize("lookahead", [1, 200_000])
def test_a_rebuild_replays_decided_rows_by_event_time_each_once_reading_inputs_file_by_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lookahead: int) -> None:
    """By event time (missing last), a time's rows as logged; shadow rows and rows logged outside the window left
    out; a row written twice counted once, the log's first copy (before a spill directory's, even an earlier one);
    a null request id apart from an empty one. The same when each file is read again for every row."""
    log, spill = tmp_path / "log", tmp_path / "spill"
    part(log, "a", 1, [("champion", "r1", 0, "2026-03-01 10:05"), ("champion", "r1", 1, "2026-03-01 09:00"),
                       ("shadow", "r1", 0, "2026-03-01 08:00")])
    part(log, "b", 2, [("champion", "r2", 0, "2026-03-01 09:30"), ("champion", "r1", 1, "2026-03-01 09:00"),
                       ("champion", None, 0, "2026-03-01 09:40"), ("champion", "", 0, "2026-03-01 09:45")])
    part(log, "c", 3, [("canary", "r3", 0, None), ("champion", "r4", 0, "2026-03-01 09:00")])
    part(log, "d", 3000, [("champion", "r6", 0, "2026-03-01 07:00")])  # logged after the window
    part(spill, "e", 0, [("champion", "r5", 0, "2026-03-01 09:10"), ("champion", "r2", 0, "2026-03-01 09:30")])
    monkeypatch.setattr(_Inputs, "LOOKAHEAD", lookahead)
    order = _ReplayOrder.of([str(log), str(spill)], "purchase_time", HOUR, HOUR + timedelta(minutes=30))
    assert order.logged_rows == 11 and not order.unreadable
    assert "input" in order.columns
    inputs = _Inputs(order)
    replayed, names = [], []
    for lo in range(0, len(order), 3):
        chunk = inputs.read(lo, min(lo + 3, len(order)))
        replayed += [json.loads(text) for text in chunk.texts]
        names += [chunk.name(k) for k in range(len(chunk.texts))]
    assert [(r["id"], r["logged"]) for r in replayed] == [
        ("r1/1", 1), ("r4/0", 3), ("r5/0", 0), ("r2/0", 2), ("None/0", 2), ("/0", 2), ("r1/0", 1), ("r3/0", 3)]
    assert names == [f"request {r['id'].replace('/', ' row ')}" for r in replayed]
    assert order.logged.tolist() == [pd.Timestamp(HOUR + timedelta(seconds=r["logged"])).value // 1000
                                     for r in replayed]
    assert not inputs.pending and not inputs.unreadable


@pytest.mark.parametrize("later, earlier", [("2026-03-01 09:00:00.000000002", "2026-03-01 09:00:00.000000001"),
                                            ("2260-01-01 00:00:00.000002", "2260-01-01 00:00:00.000001")])
def test_event_times_are_ordered_to_the_nanosecond(tmp_path: Path, later: str, earlier: str) -> None:
    """Two transactions a nanosecond apart (or a microsecond apart in 2260), the later logged first, replay in
    the order of their event times."""
    part(tmp_path, "a", 1, [("champion", "later", 0, later)])
    part(tmp_path, "b", 2, [("champion", "earlier", 0, earlier)])
    order = _ReplayOrder.of([str(tmp_path)], "purchase_time", HOUR, HOUR + timedelta(hours=1))
    assert [json.loads(text)["id"] for text in _Inputs(order).read(0, 2).texts] == ["earlier/0", "later/0"]


@pytest.mark.parametrize("change", ["torn", "other rows", "fewer rows"])
def test_a_log_file_changed_before_its_inputs_are_read_is_unreadable_and_its_rows_left_out(
        tmp_path: Path, change: str) -> None:
    """Between reading the order and reading the inputs, a file is torn, or rewritten with other rows (as many or
    fewer): its rows are not replayed (not others in their place), and it is named unreadable."""
    part(tmp_path, "a", 1, [("champion", "r1", 0, "2026-03-01 09:00")])
    part(tmp_path, "b", 2, [("champion", "r2", 0, "2026-03-01 09:10"), ("champion", "r2", 1, "2026-03-01 09:20")])
    order = _ReplayOrder.of([str(tmp_path)], "purchase_time", HOUR, HOUR + timedelta(hours=1))
    changed = next(tmp_path.rglob("part-b.parquet"))
    if change == "torn":
        changed.write_bytes(b"torn")
    else:
        part(tmp_path, "b", 2, [("champion", "r9", 0, "2026-03-01 09:10"), ("champion", "r9", 1, "2026-03-01 09:20")]
             [:2 if change == "other rows" else 1])
    inputs = _Inputs(order)
    chunk = inputs.read(0, 3)
    assert [json.loads(text)["id"] for text in chunk.texts] == ["r1/0"] and chunk.positions.tolist() == [0]
    assert inputs.unreadable == (str(changed),)
