"""Prediction log: batching, flushing, the partition layout, the reader, corrupt parts, failures and spills, and
the write-ahead log (records, recovery, segment deletion, a full volume, writers sharing a directory)."""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fraudops.predlog import (
    FEEDBACK,
    PREDICTIONS,
    LogChunk,
    LogUnavailableError,
    LogWriter,
    combined_table,
    encode_record,
    read_feedback,
    read_log,
    read_predictions,
    read_records,
    record_parts,
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


def test_joined_chunks_keep_each_ones_logging_time_in_utc():
    plus_two = timezone(timedelta(hours=2))
    times = [T0, T0 + timedelta(seconds=1, microseconds=7), (T0 + timedelta(minutes=2)).astimezone(plus_two)]
    table = combined_table([chunk(rows, at=at) for rows, at in zip((2, 1, 3), times, strict=True)])
    assert table.schema.field("logged_at").type == pa.timestamp("us", tz="UTC")
    expected = [pd.Timestamp(at).tz_convert("UTC") for rows, at in zip((2, 1, 3), times, strict=True)
                for _ in range(rows)]
    assert table.column("logged_at").to_pandas().tolist() == expected


def test_columns_roundtrip_and_schemas_may_differ_between_chunks(tmp_path):
    writer = LogWriter(str(tmp_path), flush_seconds=60)
    writer.append(chunk(2, country=["GB", "__missing__"]))
    writer.append(chunk(1, new_feature=[1.5]))  # e.g. after a switch to a model with other features
    writer.close()
    frame = read_predictions(str(tmp_path))
    assert len(frame) == 3
    assert frame["country"].tolist()[:2] == ["GB", "__missing__"] and pd.isna(frame["country"].iloc[2])
    assert frame["new_feature"].isna().sum() == 2
    assert frame["input"].iloc[0] == '{"amount":0.0,"note":null}'  # compact JSON text
    assert str(frame["logged_at"].dt.tz) == "UTC" and frame["model_tag"].unique().tolist() == ["m:1"]


def test_only_the_columns_asked_for_are_read(tmp_path):
    writer = LogWriter(str(tmp_path), flush_seconds=60)
    writer.append(chunk(2, country=["GB", "FR"]))
    writer.append(chunk(1))  # a file without the country column
    writer.close()
    frame = read_predictions(str(tmp_path), columns=["country", "not_logged"])
    assert list(frame.columns) == ["logged_at", "country"] and len(frame) == 3
    assert frame["country"].tolist()[:2] == ["GB", "FR"] and pd.isna(frame["country"].iloc[2])


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
        some = read_predictions("s3://predlog/scorer", columns=["input"])  # what a feature store rebuild reads
        assert list(some.columns) == ["logged_at", "input"] and len(some) == 5
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


# -- write-ahead log ---------------------------------------------------------------------------------------------

def segments(wal: Path) -> list[Path]:
    return sorted(wal.glob("*.wal"))


def dead_segment(wal: Path, chunks: list[LogChunk], tail: bytes = b"") -> Path:
    """A segment as a killed writer leaves it: nobody holds its lock."""
    wal.mkdir(exist_ok=True)
    path = wal / f"20260301T093000-1-{uuid.uuid4().hex[:12]}.wal"
    path.write_bytes(b"".join(encode_record(c) for c in chunks) + tail)
    return path


def scorer_chunk(rows: int, at: datetime = T0) -> LogChunk:
    """Columns as the scorer logs them: NumPy int32, float64 and datetime64 arrays, lists with None, categories as
    an object array, the numeric features as one block, shared values and raw request rows."""
    columns = {"row": np.arange(rows, dtype="int32"), "score": np.linspace(0, 1, rows),
               "purchase_time": np.array(["2026-03-01T09:00:00.123456789"] * rows, "M8[ns]"),
               "decision": ["approve", None, "decline"][:rows], "country": np.array(["GB", "FR", "US"][:rows], "U2"),
               "seconds_since_signup": [1.5, float("nan"), 3.0][:rows],
               "is_new": np.array([True, False, True][:rows], bool),
               "browser": np.array(["Chrome", "__missing__", "Safari"][:rows], dtype=object)}
    features = np.array([[0.0, 12.5], [3.0, float("nan")], [1.0, 7.25]])[:rows]
    return LogChunk(PREDICTIONS, at, rows, columns=columns,
                    shared={"request_id": uuid.uuid4().hex, "model_tag": "m:1", "review_threshold": 0.3},
                    json_columns={"input": [{"amount": 1.5, "note": None, "tags": ["a"]}, {"amount": 2}, {}][:rows]},
                    blocks={("device_id__count_1h", "device_id__amount_max_1h"): features})


def test_the_scorers_chunks_are_joined_without_a_table_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Category arrays and feature blocks join with an operation per column or per chunk, not per chunk and column
    (one-row chunks at hundreds a second made that the service's largest cost)."""
    import pyarrow as pa

    chunks = [scorer_chunk(3), scorer_chunk(1, T0 + timedelta(seconds=1)), scorer_chunk(2, T0 + timedelta(seconds=2))]
    expected = pa.concat_tables([c.to_table() for c in chunks], promote_options="permissive")
    monkeypatch.setattr(LogChunk, "to_table", lambda self: pytest.fail("joined table by table"))
    got = combined_table(chunks)
    assert got.schema == expected.schema and got.to_pandas().equals(expected.to_pandas())
    assert got.column("device_id__count_1h").to_pylist() == [0.0, 3.0, 1.0, 0.0, 0.0, 3.0]


def test_wal_records_round_trip_every_column_type():
    stamps = pd.to_datetime(["2026-03-01T09:00:00Z", "2026-03-01T10:00:00Z"], utc=True)
    floats = np.random.default_rng(0).random(40).tolist()
    chunks = [scorer_chunk(3), scorer_chunk(1, T0 + timedelta(hours=1)), scorer_chunk(0),
              chunk(40, amount=floats, mixed=[*floats[:39], 7]),  # long float lists go as bytes; ints stay ints
              chunk(2, extra=[np.int64(1), np.int64(2)]),  # NumPy scalars: JSON cannot hold them exactly
              LogChunk(FEEDBACK, T0, 2, columns={"request_id": ["a", "b"], "observed_at": stamps})]  # pandas values
    records = [encode_record(c) for c in chunks]
    assert [r[8:9] for r in records] == [b"B", b"B", b"B", b"B", b"A", b"A"]  # the scorer's chunks as JSON + bytes
    decoded, unreadable = read_records(b"".join(records))
    assert unreadable == 0 and len(decoded) == len(chunks)
    for before, after in zip(chunks, decoded, strict=True):
        assert (after.kind, after.at, after.rows) == (before.kind, before.at, before.rows)
        expected, got = before.to_table(), after.to_table()
        assert got.schema == expected.schema and got.to_pandas().equals(expected.to_pandas())  # NaN == NaN
    assert {name: type(v) for name, v in decoded[0].columns.items()} == {  # combined_table joins them fast:
        name: list if name == "browser" else type(v) for name, v in chunks[0].columns.items()}  # arrays, texts lists
    np.testing.assert_array_equal(decoded[0].blocks[("device_id__count_1h", "device_id__amount_max_1h")],
                                  chunks[0].blocks[("device_id__count_1h", "device_id__amount_max_1h")])
    assert decoded[0].columns["purchase_time"].dtype == np.dtype("M8[ns]")
    assert decoded[3].columns["amount"] == floats and decoded[3].columns["mixed"][-1] == 7
    assert records[3].count(b'"list":') == 3  # row (an array), score and amount as bytes; not mixed
    assert records[0].count(b'"strings":') == 0 and records[3].count(b'"strings":') == 0  # short text lists as JSON
    assert combined_table(decoded[:3]).to_pandas().equals(combined_table(chunks[:3]).to_pandas())


def test_long_text_columns_go_to_the_wal_as_bytes_and_come_back_equal():
    """A thousand-row request: its raw rows (encoded once by `append`), ids and decisions go as UTF-8 bytes, not
    escaped inside the JSON document; any text, quotes, newlines and non-ASCII included."""
    texts = [f'{{"id": "t-{i}", "note": "é\\n\\"{i}\\""}}' for i in range(1000)]
    big = LogChunk(PREDICTIONS, T0, 1000, columns={"row": np.arange(1000, dtype="int32"), "transaction_id": texts,
                                                   "decision": np.array(["approve", "décliné"] * 500, dtype=object)},
                   json_columns={"input": [{"amount": 1.5, "note": "x\"y\n"}] * 1000}).encoded()
    record = encode_record(big)
    assert record[8:9] == b"B" and b"t-999" not in record[:record.index(b"]]")]
    assert record.count(b'"strings":') == 3  # ids and decisions (lists), the input (an Arrow array)
    (decoded,), unreadable = read_records(record)
    assert unreadable == 0 and decoded.columns["transaction_id"] == texts
    assert decoded.columns["decision"] == ["approve", "décliné"] * 500
    assert [json.loads(t) for t in decoded.columns["input"].to_pylist()] == [{"amount": 1.5, "note": "x\"y\n"}] * 1000
    assert decoded.to_table().equals(big.to_table())


# A record the previous version (base64 inside JSON) wrote: a scorer killed before an upgrade is recovered by the next
_J_RECORD = (
    "XwEAAEGpgwxKWyJwcmVkaWN0aW9ucyIsIjIwMjYtMDMtMDFUMDk6MzA6MDArMDA6MDAiLDIseyJyb3ciOnsiZHR5cGUiOiI8aTQiLCJieXRlcyI6"
    "IkFBQUFBQUVBQUFBPSIsImxpc3QiOmZhbHNlfSwic2NvcmUiOlswLjI1LDAuNzVdLCJkZWNpc2lvbiI6WyJhcHByb3ZlIiwiZGVjbGluZSJdfSx7"
    "InJlcXVlc3RfaWQiOiJyMSIsIm1vZGVsX3RhZyI6Im06MSJ9LHsiaW5wdXQiOlt7ImFtb3VudCI6MS41LCJub3RlIjpudWxsfSx7ImFtb3VudCI6"
    "Mn1dfSxbW1siZl9hIiwiZl9iIl0seyJkdHlwZSI6IjxmOCIsImJ5dGVzIjoiQUFBQUFBQUFBQUFBQUFBQUFBQXBRQUFBQUFBQUFBaEFBQUFBQUFB"
    "QStIOD0iLCJsaXN0IjpmYWxzZX1dXV0=")


def test_records_of_the_previous_format_are_still_read():
    (decoded,), unreadable = read_records(base64.b64decode(_J_RECORD))
    assert unreadable == 0 and (decoded.kind, decoded.at, decoded.rows) == (PREDICTIONS, T0, 2)
    assert decoded.columns["row"].tolist() == [0, 1] and decoded.columns["score"] == [0.25, 0.75]
    assert decoded.columns["decision"] == ["approve", "decline"] and decoded.shared["request_id"] == "r1"
    assert decoded.encoded().columns["input"] == ['{"amount":1.5,"note":null}', '{"amount":2}']
    np.testing.assert_array_equal(decoded.blocks[("f_a", "f_b")], [[0.0, 12.5], [3.0, np.nan]])


def test_a_torn_or_corrupt_last_record_is_skipped_and_counted():
    records = [encode_record(scorer_chunk(2)) for _ in range(3)]
    whole = b"".join(records)
    for cut in (1, 7, 8, 20, len(records[2]) - 1):  # in the header, at its end, in the payload
        chunks, unreadable = read_records(whole[:len(whole) - len(records[2]) + cut])
        assert (len(chunks), unreadable) == (2, 1)
    flipped = bytearray(whole)
    flipped[-5] ^= 0xFF
    chunks, unreadable = read_records(bytes(flipped))
    assert (len(chunks), unreadable) == (2, 1)
    assert read_records(b"") == ([], 0)


def test_recovery_writes_rows_into_their_hour_partitions_exactly_once(tmp_path):
    root, wal = tmp_path / "log", tmp_path / "wal"
    chunks = [scorer_chunk(3), scorer_chunk(2, T0 + timedelta(hours=1)), chunk(1, kind=FEEDBACK)]
    segment = dead_segment(wal, chunks, tail=encode_record(scorer_chunk(1))[:-3])  # killed during a write
    saved = segment.read_bytes()
    writer = LogWriter(str(root), flush_seconds=60, wal_dir=wal)  # recovers before it returns
    assert (writer.wal_recovered_rows, writer.wal_unreadable_records) == (6, 1) and writer.pending_rows == 0
    assert segments(wal) == []
    assert sorted(p.relative_to(root).as_posix() for p in parts(root)) == [
        f"feedback/date=2026-03-01/hour=09/part-{segment.stem}.parquet",
        f"predictions/date=2026-03-01/hour=09/part-{segment.stem}.parquet",
        f"predictions/date=2026-03-01/hour=10/part-{segment.stem}.parquet"]
    frame = read_predictions(str(root))
    assert frame.groupby("request_id").size().to_dict() == {chunks[0].shared["request_id"]: 3,
                                                            chunks[1].shared["request_id"]: 2}
    assert frame["purchase_time"].iloc[0] == pd.Timestamp("2026-03-01T09:00:00.123456789")
    writer.close()
    segment.write_bytes(saved)  # killed again after writing the parts, before deleting the segment
    LogWriter(str(root), flush_seconds=60, wal_dir=wal).close()
    assert len(read_predictions(str(root))) == 5 and len(read_feedback(str(root))) == 1


def test_segments_are_deleted_once_their_rows_are_written(tmp_path):
    root, wal = tmp_path / "log", tmp_path / "wal"
    root.write_text("blocked")  # the log storage fails at first
    writer = LogWriter(str(root), flush_seconds=3600, wal_dir=wal, spill_dir=tmp_path / "spill")
    try:
        writer.append(chunk(2))
        (first,) = segments(wal)
        assert first.stat().st_size > 0
        assert not writer.flush() and segments(wal) == [first]  # rows not written: their segment stays
        writer.append(chunk(1))
        assert len(segments(wal)) == 2  # a new segment after each flush
        root.unlink()
        saved = {p.name: p.read_bytes() for p in segments(wal)}
        assert writer.flush() and segments(wal) == []
    finally:
        writer.close()
    assert len(read_predictions(str(root))) == 3
    for name, data in saved.items():  # killed before deleting them: the rows were written with later ones,
        (wal / name).write_bytes(data)  # so they are written again (see the LogWriter docstring)
    LogWriter(str(root), flush_seconds=60, wal_dir=wal).close()
    assert len(read_predictions(str(root))) == 6 and segments(wal) == []


def test_rows_of_one_segment_written_again_after_a_kill_replace_their_part(tmp_path):
    root, wal = tmp_path / "log", tmp_path / "wal"
    writer = LogWriter(str(root), flush_seconds=3600, wal_dir=wal)
    writer.append(chunk(2))
    writer.append(chunk(1, at=T0 + timedelta(hours=1)))
    (segment,) = segments(wal)
    saved = segment.read_bytes()
    assert writer.flush() and segments(wal) == []
    writer.close()
    segment.write_bytes(saved)  # killed between writing the parts and deleting the segment
    LogWriter(str(root), flush_seconds=60, wal_dir=wal).close()
    assert len(parts(root)) == 2 and len(read_predictions(str(root))) == 3


def test_close_deletes_the_segments_after_writing_or_spilling_the_rows(tmp_path):
    root, wal = tmp_path / "log", tmp_path / "wal"
    root.write_text("blocked")
    writer = LogWriter(str(root), flush_seconds=60, wal_dir=wal, spill_dir=tmp_path / "spill")
    writer.append(chunk(2))
    writer.close(attempts=1)
    assert segments(wal) == [] and len(read_log(str(tmp_path / "spill"), PREDICTIONS)) == 2


def test_a_full_wal_volume_is_counted_and_the_rows_still_reach_the_log(tmp_path, monkeypatch, caplog):
    root, wal = tmp_path / "log", tmp_path / "wal"
    errors: list[Exception] = []
    writer = LogWriter(str(root), flush_seconds=3600, wal_dir=wal, on_wal_error=errors.append)

    def full(fd: int, data: list[bytes], offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    chunks = [chunk(2) for _ in range(5)] + [chunk(1)]
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, "fraudops.predlog"):
        patch.setattr(os, "pwritev", full)
        for c in chunks[:5]:
            writer.append(c)  # scoring goes on
    assert [e.errno for e in errors] == [errno.ENOSPC] * 5
    assert len([r for r in caplog.records if "cannot write the prediction log ahead" in r.message]) == 1
    writer.append(chunks[5])  # the volume has room again
    (segment,) = segments(wal)
    saved = segment.read_bytes()
    assert [c.rows for c in read_records(saved)[0]] == [1]
    writer.close()
    assert len(read_predictions(str(root))) == 11 and len(errors) == 5
    segment.write_bytes(saved)  # killed before deleting it: its row is written again, and must not replace the
    LogWriter(str(root), flush_seconds=60, wal_dir=wal).close()  # part that also holds the rows of no segment
    assert set(read_predictions(str(root))["request_id"]) == {c.shared["request_id"] for c in chunks}


def test_a_record_is_written_in_pieces_as_encoded_and_a_short_write_is_a_failed_one(tmp_path, monkeypatch):
    """A record goes to its segment as the pieces it was encoded in (one pwritev; joined beyond the OS's limit of
    pieces): the segment holds exactly `encode_record`'s bytes. A write the volume cut short fails the write ahead,
    and the next record overwrites what it left."""
    wide = LogChunk(PREDICTIONS, T0, 40, columns={f"f{i}": [float(i)] * 40 for i in range(700)})  # 700 raw pieces
    small = scorer_chunk(3)
    assert len(record_parts(wide)) > 700
    root, wal = tmp_path / "log", tmp_path / "wal"
    errors: list[Exception] = []
    writer = LogWriter(str(root), flush_seconds=3600, wal_dir=wal, on_wal_error=errors.append)
    writer.append(wide)
    real = os.pwritev
    with monkeypatch.context() as patch:
        patch.setattr(os, "pwritev", lambda fd, parts, offset: real(fd, parts, offset) - 1)  # one byte short
        writer.append(small)
    writer.append(small)
    (segment,) = segments(wal)
    assert segment.read_bytes() == encode_record(wide.encoded()) + encode_record(small.encoded())
    assert [e.errno for e in errors] == [errno.ENOSPC]
    writer.close()
    assert len(read_predictions(str(root))) == 46


def test_segments_of_a_live_writer_are_not_taken(tmp_path):
    root, wal = tmp_path / "log", tmp_path / "wal"
    live = LogWriter(str(root), flush_seconds=3600, wal_dir=wal)
    live.append(chunk(2))
    (held,) = segments(wal)
    dead = dead_segment(wal, [chunk(3)])
    other = LogWriter(str(root), flush_seconds=3600, wal_dir=wal)  # e.g. another worker process starting
    assert other.wal_recovered_rows == 3 and segments(wal) == [held] and not dead.exists()
    other.append(chunk(1))
    live.close()
    other.close()
    frame = read_predictions(str(root))
    assert len(frame) == 6 and frame.groupby("request_id").size().sort_values().tolist() == [1, 2, 3]


def test_fsync_every_append_or_in_the_background(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    writer = LogWriter(str(tmp_path / "log"), flush_seconds=3600, wal_dir=tmp_path / "wal", fsync_seconds=0)
    for _ in range(3):
        writer.append(chunk(1))
    assert len(synced) >= 3
    writer.close()
    writer = LogWriter(str(tmp_path / "log"), flush_seconds=3600, wal_dir=tmp_path / "wal", fsync_seconds=0.05)
    try:
        synced.clear()
        writer.append(chunk(1))
        assert wait_for(lambda: len(synced) >= 2)  # the segment, then the directory holding its new name
    finally:
        writer.close()
