"""Prediction log: batching, flushing, the partition layout, the reader, corrupt parts, failures and spills."""

from __future__ import annotations

import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraudops.predlog import (
    FEEDBACK,
    PREDICTIONS,
    LogChunk,
    LogUnavailableError,
    LogWriter,
    combined_table,
    read_feedback,
    read_log,
    read_predictions,
)

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def chunk(rows: int = 2, at: datetime = T0, kind: str = PREDICTIONS, **extra: list) -> LogChunk:
    return LogChunk(kind, at, rows, columns={"row": np.arange(rows, dtype="int32"), "score": [0.5] * rows, **extra},
                    shared={"request_id": uuid.uuid4().hex, "model_tag": "m:1"},
                    json_columns={"input": [{"amount": float(i), "note": None} for i in range(rows)]})


def parts(root: Path) -> list[Path]:
    return sorted(root.rglob("part-*.parquet"))


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_rows_wait_for_the_size_threshold_then_land_in_one_hour_partition(tmp_path):
    writer = LogWriter(str(tmp_path), flush_rows=5, flush_seconds=60)
    try:
        writer.append(chunk(3))
        time.sleep(0.3)
        assert parts(tmp_path) == [] and writer.pending_rows == 3
        writer.append(chunk(2))
        assert wait_for(lambda: len(parts(tmp_path)) == 1)
        (part,) = parts(tmp_path)
        assert part.parent.relative_to(tmp_path).as_posix() == "predictions/date=2026-03-01/hour=09"
        assert len(pd.read_parquet(part)) == 5 and writer.pending_rows == 0
    finally:
        writer.close()


def test_rows_are_written_after_the_interval(tmp_path):
    writer = LogWriter(str(tmp_path), flush_rows=1000, flush_seconds=0.2)
    try:
        writer.append(chunk(1))
        assert wait_for(lambda: len(parts(tmp_path)) == 1, timeout=3)
    finally:
        writer.close()


def test_close_writes_everything_and_refuses_later_rows(tmp_path):
    written = []
    writer = LogWriter(str(tmp_path), flush_rows=10_000, flush_seconds=60,
                       on_written=lambda kind, rows: written.append((kind, rows)))
    for _ in range(10):
        writer.append(chunk(3))
    writer.append(chunk(1, kind=FEEDBACK))
    writer.close()
    writer.close()  # idempotent
    assert len(read_predictions(str(tmp_path))) == 30
    assert len(read_feedback(str(tmp_path))) == 1
    assert sorted(written) == [(FEEDBACK, 1), (PREDICTIONS, 30)]
    with pytest.raises(LogUnavailableError, match="closed"):
        writer.append(chunk(1))


def test_reader_returns_a_time_window_across_days_and_hours(tmp_path):
    writer = LogWriter(str(tmp_path), flush_seconds=60)
    times = [T0 + timedelta(hours=h) for h in (0, 1, 20, 30)]  # 09:30 and 10:30 on day 1, 05:30 and 15:30 on day 2
    for at in times:
        writer.append(chunk(2, at=at))
    writer.close()
    assert len(parts(tmp_path)) == 4
    everything = read_predictions(str(tmp_path))
    assert len(everything) == 8 and everything["logged_at"].is_monotonic_increasing
    window = read_predictions(str(tmp_path), T0 + timedelta(minutes=30), T0 + timedelta(hours=21))
    assert sorted(set(window["logged_at"])) == [pd.Timestamp(t) for t in times[1:3]]
    naive = read_predictions(str(tmp_path), "2026-03-02 05:00", "2026-03-02 06:00")  # naive = UTC
    assert len(naive) == 2 and naive.attrs["corrupt_parts"] == 0
    assert read_predictions(str(tmp_path), "2026-04-01").empty
    assert "logged_at" in read_predictions(str(tmp_path / "nothing-here")).columns


def test_columns_roundtrip_and_schemas_may_differ_between_chunks(tmp_path):
    writer = LogWriter(str(tmp_path), flush_seconds=60)
    writer.append(chunk(2, country=["GB", "__missing__"]))
    writer.append(chunk(1, new_feature=[1.5]))  # e.g. after a switch to a model with other features
    writer.close()
    frame = read_predictions(str(tmp_path))
    assert len(frame) == 3
    assert frame["country"].tolist()[:2] == ["GB", "__missing__"] and pd.isna(frame["country"].iloc[2])
    assert frame["new_feature"].isna().sum() == 2
    assert frame["input"].iloc[0] == '{"amount": 0.0, "note": null}'
    assert str(frame["logged_at"].dt.tz) == "UTC" and frame["model_tag"].unique().tolist() == ["m:1"]


def test_corrupt_and_unreadable_parts_are_skipped_and_counted(tmp_path):
    writer = LogWriter(str(tmp_path), flush_seconds=60)
    writer.append(chunk(4))
    writer.close()
    (good,) = parts(tmp_path)
    (good.parent / "part-garbage.parquet").write_bytes(b"not parquet at all")
    (good.parent / "part-truncated.parquet").write_bytes(good.read_bytes()[:100])
    (good.parent / ".part-x.parquet.tmp").write_bytes(b"an unfinished write is ignored")
    frame = read_predictions(str(tmp_path))
    assert len(frame) == 4
    assert frame.attrs["corrupt_parts"] == 2
    assert sorted(Path(p).name for p in frame.attrs["corrupt_paths"]) == ["part-garbage.parquet",
                                                                          "part-truncated.parquet"]


def test_failed_writes_keep_the_rows_and_are_retried(tmp_path):
    root = tmp_path / "log"
    root.write_text("a file where the log directory should be")  # every write fails
    errors = []
    writer = LogWriter(str(root), flush_rows=1, flush_seconds=0.1, on_error=lambda kind, exc: errors.append(kind))
    try:
        writer.append(chunk(3))
        assert wait_for(lambda: len(errors) >= 2)  # retried, with back-off
        assert writer.pending_rows == 3
        root.unlink()  # storage is back
        assert wait_for(lambda: writer.pending_rows == 0)
    finally:
        writer.close()
    assert len(read_predictions(str(root))) == 3


def test_close_spills_rows_it_cannot_write(tmp_path):
    root = tmp_path / "log"
    root.write_text("blocked")
    writer = LogWriter(str(root), flush_seconds=60, spill_dir=tmp_path / "spill")
    writer.append(chunk(2))
    writer.append(chunk(1, kind=FEEDBACK))
    writer.close(attempts=1)
    assert len(read_log(str(tmp_path / "spill"), PREDICTIONS)) == 2
    assert len(read_log(str(tmp_path / "spill"), FEEDBACK)) == 1


def test_too_many_unwritten_rows_are_refused(tmp_path):
    root = tmp_path / "log"
    root.write_text("blocked")
    writer = LogWriter(str(root), flush_seconds=60, max_pending_rows=5, spill_dir=tmp_path / "spill")
    writer.append(chunk(5))
    with pytest.raises(LogUnavailableError, match="5 rows are waiting"):
        writer.append(chunk(1))
    writer.close(attempts=1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_object_store_log(monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1"), ("FRAUDOPS_S3_ENDPOINT", endpoint)):
            monkeypatch.setenv(name, value)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="predlog")
        writer = LogWriter("s3://predlog/scorer", flush_seconds=60)
        writer.append(chunk(3))
        writer.append(chunk(2, at=T0 + timedelta(days=1)))
        writer.close()
        assert len(read_predictions("s3://predlog/scorer")) == 5
        assert len(read_predictions("s3://predlog/scorer", T0 + timedelta(hours=1))) == 2
    finally:
        server.stop()


def test_combined_table_equals_joining_one_table_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    at = [T0 + timedelta(seconds=i) for i in range(4)]
    def seen(rows: int) -> np.ndarray:
        return np.array(["2026-03-01T09:00"] * rows, "M8[ns]")

    joined = [  # numpy columns of one dtype, lists, columns some chunks lack, shared and JSON values
        chunk(2, at[0], seen=seen(2)),
        chunk(1, at[1], seen=seen(1), decision=["approve"], purchase_time=[1_700_000_000]),
        chunk(3, at[2], seen=seen(3), decision=["review", None, "decline"], amount=[1.5, float("nan"), 3.0]),
        LogChunk(PREDICTIONS, at[3], 0, columns={"row": np.arange(0, dtype="int32"), "score": [], "seen": seen(0)}),
    ]
    by_table = [*joined[:3], LogChunk(PREDICTIONS, at[3], 1, columns={"row": np.arange(1, dtype="int64"),
                                                                      "score": [0.1]})]  # int32 + int64, no seen
    for chunks in (joined, by_table):
        expected = pa.concat_tables([c.to_table() for c in chunks], promote_options="permissive")
        got = combined_table(chunks)
        assert got.schema == expected.schema
        assert got.to_pandas().equals(expected.to_pandas())
    monkeypatch.setattr(LogChunk, "to_table", lambda self: pytest.fail("joined table by table"))
    assert combined_table(joined).column("decision").to_pylist() == [None, None, "approve", "review", None, "decline"]


def test_combined_table_joins_pandas_valued_chunks_table_by_table() -> None:
    stamps = pd.to_datetime(["2026-03-01T09:00:00Z", "2026-03-01T10:00:00Z"], utc=True)
    chunks = [LogChunk(FEEDBACK, T0, 2, columns={"transaction_id": ["a", "b"], "observed_at": stamps}),
              LogChunk(FEEDBACK, T0, 1, columns={"transaction_id": ["c"], "observed_at": stamps[:1]})]
    got = combined_table(chunks)
    assert got.column("observed_at").to_pylist() == [*stamps.to_pydatetime(), stamps[0].to_pydatetime()]
    assert got.schema.field("observed_at").type.tz == "UTC"


def test_queued_chunks_are_joined_between_flushes_without_changing_what_is_written(tmp_path):
    later = T0 + timedelta(hours=1)
    first = [chunk(2, T0), chunk(1, later), chunk(3, T0, decision=["a", "b", "c"])]
    second = [chunk(1, T0), chunk(2, later, decision=["d", "e"])]
    expected = {}
    for name, compact_seconds in (("plain", 3600.0), ("joined", 0.05)):
        root = tmp_path / name
        writer = LogWriter(str(root), flush_seconds=3600, compact_seconds=compact_seconds)
        try:
            for c in first:
                writer.append(c)
            if name == "joined":  # the thread joins the queue into one table per hour; nothing is written yet
                assert wait_for(lambda: len(writer._pending) == 2)  # noqa: B023
                assert parts(root) == [] and writer.pending_rows == 6
            for c in second:
                writer.append(c)
            assert writer.flush() and writer.pending_rows == 0
        finally:
            writer.close()
        expected[name] = {p.parent.name: pd.read_parquet(p) for p in parts(root)}
    assert sorted(expected["joined"]) == ["hour=09", "hour=10"]
    for hour, frame in expected["plain"].items():
        pd.testing.assert_frame_equal(expected["joined"][hour], frame)
