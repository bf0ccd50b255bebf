"""Durable, hour-partitioned log of predictions and feedback labels, written in batches off the request path."""

from __future__ import annotations

import atexit
import base64
import errno
import fcntl
import json
import logging
import os
import struct
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pydantic_core

from fraudops import storage
from fraudops.settings import StoreSettings

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
TIME_COLUMN = "logged_at"
WAL_WARN_SECONDS = 60.0
"""At most one warning per this many seconds while writes ahead fail (`LogWriter` ``on_wal_error`` counts each)."""
_RECORD = struct.Struct("<II")  # a WAL record's header: payload length, CRC-32 of the payload
_LENGTH = struct.Struct("<I")  # a ``B`` payload's JSON length
_MAX_PARTS = 512  # pieces of a record written with one pwritev (the OS takes at most IOV_MAX, 1,024 on Linux)
_BINARY_FLOATS = 32
"""Float and text lists at least this long go to the WAL as bytes: JSON formats a float in ~0.3 µs, and escapes
texts of JSON (request rows) slowly."""


def default_root() -> str:
    """``$FRAUDOPS_PREDICTION_LOG``, else ``<BENTOML_HOME>/fraudops/prediction-log`` (next to the champion pointer)."""
    from fraudops.registry import default_home  # imports bentoml: only when no root is configured

    return StoreSettings.from_env().prediction_log or str(default_home() / "fraudops" / "prediction-log")


def wal_directory(setting: str) -> Path | None:
    """The write-ahead directory of a scorer whose ``FRAUDOPS_PREDICTION_WAL`` is ``setting`` (None: ``off``; empty:
    ``<BENTOML_HOME>/fraudops/prediction-wal``)."""
    if setting == "off":
        return None
    if setting:
        return Path(setting)
    from fraudops.registry import default_home

    return default_home() / "fraudops" / "prediction-wal"


def spill_directory() -> Path:
    """Where a `LogWriter` saves the rows the log storage refused at its close: ``$FRAUDOPS_PREDICTION_SPILL``, else
    ``$TMPDIR/fraudops-predlog-spill``."""
    return Path(StoreSettings.from_env().prediction_spill or Path(tempfile.gettempdir()) / "fraudops-predlog-spill")


def recover_wal(root: str, wal_dir: Path, spill_dir: Path | None = None) -> tuple[int, int]:
    """Write to the log at ``root`` (or, if it refuses them, to ``spill_dir``) the rows that dead writers left in
    ``wal_dir`` (a live writer's segments stay its own), as a starting scorer does; (rows recovered, torn records
    skipped)."""
    writer = LogWriter(root, wal_dir=wal_dir, spill_dir=spill_dir)
    writer.close()
    return writer.wal_recovered_rows, writer.wal_unreadable_records


def json_text(value: Any) -> str:
    """``value`` as compact JSON text (types JSON lacks as their ``str``; NaN and infinities as ``json`` writes
    them): what a log's JSON columns hold. Rust's serialiser, ~5x faster than ``json.dumps`` on request rows."""
    return _json_bytes(value).decode()


def json_texts(values: Sequence[Any]) -> pa.StringArray:
    """`json_text` of each value, as one Arrow string array built from the encoded bytes (no Python string per
    value; a log chunk's texts stay far below Arrow's 2 GiB per array)."""
    encoded = [_json_bytes(value) for value in values]
    ends = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=ends[1:])
    return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(ends), pa.py_buffer(b"".join(encoded)))


def _json_bytes(value: Any) -> bytes:
    return pydantic_core.to_json(value, fallback=str, inf_nan_mode="constants")


class LogUnavailableError(RuntimeError):
    """The writer refuses new rows: it is closed, or too many rows wait because the log storage keeps failing."""


@dataclass
class LogChunk:
    """Rows for one log (``kind``) logged at one time: equal-length ``columns``, ``shared`` values repeated on
    every row, and ``json_columns`` whose values (e.g. raw request rows) the writer serialises to JSON text."""

    kind: str
    at: datetime
    rows: int
    columns: dict[str, Sequence[Any] | np.ndarray] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    json_columns: dict[str, Sequence[Any]] = field(default_factory=dict)
    blocks: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict)
    """Numeric columns given together as one 2-D array (rows x names): a scorer's features, which the writer joins
    across chunks with one operation per chunk instead of one per chunk and column."""
    table: pa.Table | None = None
    """Rows already joined into one Arrow table (by the writer; then the other fields other than ``kind``,
    ``at`` and ``rows`` are empty)."""

    def partition(self) -> str:
        """``date=YYYY-MM-DD/hour=HH`` of the logging time (UTC)."""
        return self.at.astimezone(UTC).strftime("date=%Y-%m-%d/hour=%H")

    def encoded(self) -> LogChunk:
        """This chunk with its ``json_columns`` turned into text columns (`json_texts`, or a list of `json_text`
        for a few rows): encoded once, for the write ahead and for the log."""
        if not self.json_columns:
            return self
        texts = {name: json_texts(values) if len(values) >= _BINARY_FLOATS else [json_text(v) for v in values]
                 for name, values in self.json_columns.items()}  # an Arrow array costs ~6 us, a text ~0.6
        return LogChunk(self.kind, self.at, self.rows, {**self.columns, **texts}, self.shared, {}, self.blocks,
                        self.table)

    def to_table(self) -> pa.Table:
        """The chunk as an Arrow table with the ``logged_at`` column first."""
        if self.table is not None:
            return self.table
        at = pd.Timestamp(self.at).tz_convert("UTC")
        data: dict[str, pa.Array] = {TIME_COLUMN: pa.array([at] * self.rows, pa.timestamp("us", tz="UTC"))}
        for name, value in self.shared.items():
            data[name] = pa.array([value] * self.rows)
        for name, values in self.columns.items():
            data[name] = pa.array(values)
        for names, block in self.blocks.items():
            data.update((name, pa.array(block[:, j])) for j, name in enumerate(names))
        for name, values in self.json_columns.items():
            data[name] = json_texts(values)
        return pa.table(data)


class LogWriter:
    """Appends chunks to ``<root>/<kind>/date=YYYY-MM-DD/hour=HH/part-<time>-<id>.parquet``.

    `append` only queues; a background thread writes one Parquet file per log and hour when ``flush_rows`` rows
    are waiting or every ``flush_seconds``, and in between, every ``compact_seconds``, joins the rows queued so far
    into Arrow tables, so that no single step of the thread holds the GIL long enough to stall request threads.
    Failed writes keep their rows and are retried (``on_error`` is told); `close` (also run at interpreter exit)
    writes what is left and, if the storage still fails, spills it to a local directory instead of dropping it.
    Beyond ``max_pending_rows`` unwritten rows, `append` raises `LogUnavailableError` so that callers can refuse
    work they could not log.

    With a ``wal_dir``, `append` first writes the chunk ahead, as one record (`encode_record`), to this writer's
    current segment file there. The write reaches the OS page cache before `append` returns, so accepted rows
    survive a kill of the process; an fsync follows within ``fsync_seconds`` (0: in `append` itself), which bounds
    what a node crash or power loss can take. Each flush starts a new segment, then deletes those whose rows are
    all written. If the write ahead fails (e.g. the volume is full), the chunk is queued all the same (in memory
    only), ``on_wal_error`` is told and a warning logged at most every `WAL_WARN_SECONDS`.

    Several writers (processes) may share a ``wal_dir``: each holds an exclusive `fcntl.flock` on its segments
    while it lives. A new writer takes the segments nobody holds (left by killed writers) and writes their rows
    before it returns, one segment at a time (if the log storage fails, they wait in the queue); a torn last record
    (a kill during its write) is skipped and counted in ``wal_unreadable_records``. Rows written from one segment
    alone go to a part named after it, so that writing them again after a kill that came before the segment's
    deletion replaces that part: exactly once. Otherwise at least once: rows written together with rows of another
    segment or of none (after a failed write to the log storage, or a failed write ahead) are written again if a
    kill hits between that write and the segment's deletion, and the rows of an `append` that a kill interrupted
    may be logged although its caller never returned. `close` deletes the segments once their rows are in the log
    or the spill directory.
    """

    def __init__(self, root: str, *, flush_rows: int = 10_000, flush_seconds: float = 10.0,
                 compact_seconds: float = 0.5, max_pending_rows: int = 500_000, spill_dir: str | Path | None = None,
                 on_written: Callable[[str, int], None] | None = None,
                 on_error: Callable[[str, Exception], None] | None = None, wal_dir: str | Path | None = None,
                 fsync_seconds: float = 1.0, on_wal_error: Callable[[Exception], None] | None = None) -> None:
        self.root = root.rstrip("/")
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.compact_seconds = compact_seconds
        self.max_pending_rows = max_pending_rows
        self.spill_dir = Path(spill_dir) if spill_dir else spill_directory()
        self._on_written = on_written or (lambda _kind, _rows: None)
        self._on_error = on_error or (lambda _kind, _exc: None)
        self._on_wal_error = on_wal_error or (lambda _exc: None)
        self._pending: list[LogChunk] = []
        self._pending_rows = 0
        self._held: dict[tuple[str, str], set[str | None]] = {}
        """Per log and hour, the WAL segments holding its queued rows (None: some rows are in no segment)."""
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._closed = False
        self._wal_warning = threading.Lock()
        self._wal_failures = 0
        self._wal_warned = -WAL_WARN_SECONDS
        self.wal_recovered_rows = 0
        self.wal_unreadable_records = 0
        self.wal_dir = None if wal_dir is None else Path(wal_dir)
        self.fsync_seconds = fsync_seconds
        self._wal = None if self.wal_dir is None else _Wal(self.wal_dir, fsync_seconds, self._wal_failed)
        if self._wal is not None:
            self._recover()
        self._thread = threading.Thread(target=self._run, name="fraudops-predlog", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def options(self) -> dict[str, Any]:
        """The arguments that make a writer like this one (in another process: no callbacks)."""
        return {"root": self.root, "flush_rows": self.flush_rows, "flush_seconds": self.flush_seconds,
                "compact_seconds": self.compact_seconds, "max_pending_rows": self.max_pending_rows,
                "spill_dir": self.spill_dir, "wal_dir": self.wal_dir, "fsync_seconds": self.fsync_seconds}

    @property
    def pending_rows(self) -> int:
        """Rows accepted but not yet written."""
        return self._pending_rows

    def append(self, chunk: LogChunk) -> None:
        """Queue a chunk (never blocks on storage), after writing it ahead to the WAL segment if there is one."""
        chunk = chunk.encoded()
        record = error = None
        if self._wal is not None:
            try:
                record = record_parts(chunk)
            except Exception as exc:  # rows the encoder cannot hold fail at the write too, which reports them
                error = exc
        with self._cond:
            if self._closed:
                raise LogUnavailableError(f"the log writer for {self.root} is closed")
            if self._pending_rows + chunk.rows > self.max_pending_rows:
                raise LogUnavailableError(f"{self._pending_rows} rows are waiting to be written to {self.root}; "
                                   "the log storage is failing")
            segment = None
            if self._wal is not None and record is not None:
                try:
                    segment = self._wal.write(record)
                except OSError as exc:  # e.g. the volume is full: scoring goes on, with the rows in memory only
                    error = exc
            self._queue(chunk, segment)
            if self._pending_rows >= self.flush_rows:
                self._cond.notify()
        if error is not None:
            self._wal_failed(error)

    def _queue(self, chunk: LogChunk, segment: str | None) -> None:
        """Queue a chunk written ahead to ``segment`` (None: to none); the caller holds ``_cond``."""
        self._pending.append(chunk)
        self._pending_rows += chunk.rows
        if self._wal is not None:
            self._held.setdefault((chunk.kind, chunk.partition()), set()).add(segment)

    def _wal_failed(self, exc: Exception) -> None:
        """Tell ``on_wal_error`` about a failed write ahead or fsync, and warn at most every `WAL_WARN_SECONDS`."""
        self._on_wal_error(exc)
        with self._wal_warning:
            self._wal_failures += 1
            if time.monotonic() - self._wal_warned < WAL_WARN_SECONDS:
                return
            failures, self._wal_failures, self._wal_warned = self._wal_failures, 0, time.monotonic()
        log.warning("cannot write the prediction log ahead to %s (%d failures since the last warning): %s; "
                    "rows accepted meanwhile are in memory only until written", self.wal_dir, failures, exc)

    def flush(self) -> bool:
        """Write everything queued now; False if some of it could not be written (it stays queued). Then delete
        the WAL segments whose rows are all written."""
        with self._write_lock:
            with self._cond:
                chunks, self._pending = self._pending, []
                held, self._held = self._held, {}
                if self._wal is not None:
                    self._wal.rotate()  # later rows go to a new segment
            failed: list[LogChunk] = []
            for (kind, partition), group in _groups(chunks).items():
                rows = sum(c.rows for c in group)
                segments = held.get((kind, partition), set())
                # rows of one segment alone go to a part named after it, which writing them again replaces
                name = f"part-{next(iter(segments))}.parquet" if len(segments) == 1 and None not in segments else None
                try:
                    self._write(self.root, kind, partition, group, name)
                except Exception as exc:  # any storage failure: keep the rows for the next attempt
                    log.warning("cannot write %d %s rows to %s: %s", rows, kind, self.root, exc)
                    self._on_error(kind, exc)
                    failed.extend(group)
                    if self._wal is not None:
                        with self._cond:
                            self._held.setdefault((kind, partition), set()).update(segments)
                    continue
                with self._cond:
                    self._pending_rows -= rows
                self._on_written(kind, rows)
            if failed:
                with self._cond:
                    self._pending[:0] = failed
            if self._wal is not None:
                with self._cond:
                    live = set().union(*self._held.values())
                self._wal.release(live)
            return not failed

    def _recover(self) -> None:
        """Write the rows of segments left in the WAL directory by dead writers, one segment at a time (so that
        their parts are named after it); after a failed write, leave the rest queued for the thread."""
        ok = True
        for segment, chunks, unreadable in self._wal.adopt():
            rows = sum(c.rows for c in chunks)
            if rows or unreadable:
                log.warning("recovering %d rows from the prediction log's WAL segment %s (%d unreadable records)",
                            rows, segment, unreadable)
            self.wal_recovered_rows += rows
            self.wal_unreadable_records += unreadable
            with self._cond:
                for chunk in chunks:
                    self._queue(chunk, segment)
            ok = ok and self.flush()

    @staticmethod
    def _write(root: str, kind: str, partition: str, chunks: list[LogChunk], name: str | None = None) -> str:
        table = combined_table(chunks)
        name = name or f"part-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}.parquet"
        url = storage.join(root, kind, partition, name)
        fs, path = storage.filesystem(url)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        # dictionaries and statistics for all but the float columns (scores, ~70 feature values): dictionaries on
        # floats took a third of the write (29 -> 19 ms for 10,000 rows) for the same file size, their statistics
        # another tenth (readers select by time, never by a feature's range)
        dictionary = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
        if storage.is_remote(url):
            with fs.open(path, "wb") as fh:  # one PUT: readers never see a partial object
                pq.write_table(table, fh, use_dictionary=dictionary, write_statistics=dictionary)
            return url
        tmp = f"{path.rsplit('/', 1)[0]}/.{name}.tmp"  # readers only look at part-* files
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, use_dictionary=dictionary, write_statistics=dictionary)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return url

    COMPACT_CHUNKS = 32
    """Most chunks one step of `compact` joins: a step holds the GIL for about a millisecond at a scorer's rows."""

    def compact(self) -> None:
        """Join the queued chunks into tables per log and hour (they stay queued until written), `COMPACT_CHUNKS` at
        a time, letting the request threads run between steps (joining a second's worth at once stalled them)."""
        with self._write_lock:
            while True:
                with self._cond:
                    at = [i for i, c in enumerate(self._pending) if c.table is None][:self.COMPACT_CHUNKS]
                    if not at:
                        return
                    chunks = [self._pending[i] for i in at]
                    for i in reversed(at):
                        del self._pending[i]
                try:
                    joined = [LogChunk(kind, group[0].at, sum(c.rows for c in group), table=combined_table(group))
                              for (kind, _), group in _groups(chunks).items()]
                except Exception as exc:  # rows that cannot be joined fail again at the write, which reports it
                    log.warning("cannot join %d queued log chunks: %s", len(chunks), exc)
                    with self._cond:
                        self._pending[at[0]:at[0]] = chunks
                    return
                with self._cond:  # appends only add at the end, and flushes wait for the write lock
                    self._pending[at[0]:at[0]] = joined
                time.sleep(0)  # let a request thread take the GIL

    def _run(self) -> None:
        ok = True
        deadline = time.monotonic() + self.flush_seconds
        while True:
            with self._cond:
                if ok:
                    wait = min(self.compact_seconds, deadline - time.monotonic())
                    self._cond.wait_for(lambda: self._closed or self._pending_rows >= self.flush_rows,
                                        timeout=max(wait, 0.0))
                else:  # back off after a failed write instead of retrying in a loop
                    self._cond.wait(timeout=self.flush_seconds)
                if self._closed:
                    return
                due = not ok or self._pending_rows >= self.flush_rows or time.monotonic() >= deadline
            if due:
                ok = self.flush()
                deadline = time.monotonic() + self.flush_seconds
            else:
                self.compact()

    def close(self, attempts: int = 3) -> None:
        """Stop the thread and write everything left; spill to the local spill directory if storage fails. Then
        delete the WAL segments."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        atexit.unregister(self.close)
        self._thread.join()
        for _ in range(attempts):
            if self.flush():
                break
        else:
            with self._write_lock, self._cond:
                chunks, self._pending = self._pending, []
            for (kind, partition), group in _groups(chunks).items():
                url = self._write(str(self.spill_dir), kind, partition, group)
                log.error("could not write %d %s rows to %s; saved them to %s instead: copy them into the log",
                          sum(c.rows for c in group), kind, self.root, url)
            with self._cond:
                self._pending_rows = 0
        if self._wal is not None:
            self._wal.close()  # every row is in the log or the spill directory


def combined_table(chunks: list[LogChunk]) -> pa.Table:
    """One Arrow table of many chunks, with ``logged_at`` first and columns in order of first appearance.

    The scorer queues one chunk per request, so a flush holds hundreds to thousands of one-row chunks. Building
    one Arrow array per column from the joined values costs a fraction of one table per chunk (which held the GIL
    long enough to stall requests in the serving threads). A column is joined when all its values are Python
    lists (missing ones become nulls) or all are NumPy arrays of one numeric, string or datetime dtype; otherwise
    the chunks are joined table by table, with the same type promotion.
    """
    if any(c.table is not None for c in chunks):  # join each run of loose chunks, then the tables
        tables: list[pa.Table] = []
        loose: list[LogChunk] = []
        for chunk in [*chunks, None]:
            if chunk is not None and chunk.table is None:
                loose.append(chunk)
                continue
            if loose:
                tables.append(combined_table(loose))
                loose = []
            if chunk is not None:
                tables.append(chunk.table)
        return pa.concat_tables(tables, promote_options="permissive")
    names = list(dict.fromkeys(n for c in chunks for n in (*c.shared, *c.columns, *(n for b in c.blocks for n in b),
                                                            *c.json_columns)))
    micros = np.repeat(np.array([pd.Timestamp(c.at).value // 1000 for c in chunks], dtype=np.int64),
                       [c.rows for c in chunks])  # a Timestamp per row took a third of the join
    data = {TIME_COLUMN: pa.array(micros.view("datetime64[us]"), pa.timestamp("us", tz="UTC"))}
    joined: dict[str, np.ndarray] = {}
    for key in dict.fromkeys(key for c in chunks for key in c.blocks):  # a block every chunk has: one array
        if all(key in c.blocks for c in chunks) and len({c.blocks[key].dtype for c in chunks}) == 1:
            stacked = np.concatenate([c.blocks[key] for c in chunks])
            joined.update((name, stacked[:, j]) for j, name in enumerate(key))
    for name in names:
        if name in joined:
            data[name] = pa.array(joined[name])
            continue
        pieces = [_values(c, name) for c in chunks]
        pieces = [p.tolist() if isinstance(p, np.ndarray) and p.dtype.kind == "O" else p for p in pieces]
        arrow = [p.type for p in pieces if isinstance(p, pa.Array)]
        if arrow and all(isinstance(p, list) or (isinstance(p, pa.Array) and p.type == arrow[0]) for p in pieces):
            data[name] = pa.concat_arrays([p if isinstance(p, pa.Array) else pa.array(p, arrow[0]) for p in pieces])
        elif all(isinstance(p, list) for p in pieces):
            data[name] = pa.array([v for p in pieces for v in p])
        elif (all(isinstance(p, np.ndarray) for p in pieces) and len({p.dtype for p in pieces}) == 1
              and pieces[0].dtype.kind in "biufUMm"):
            data[name] = pa.array(np.concatenate(pieces))
        else:
            return pa.concat_tables([c.to_table() for c in chunks], promote_options="permissive")
    return pa.table(data)


def _values(chunk: LogChunk, name: str) -> Any:
    """A chunk's values of one column: a list (nulls where the chunk lacks it), or as given (arrays, Arrow texts,
    pandas)."""
    if name in chunk.shared:
        return [chunk.shared[name]] * chunk.rows
    if name in chunk.json_columns:
        return json_texts(chunk.json_columns[name])
    if name in chunk.columns:
        values = chunk.columns[name]
        return list(values) if isinstance(values, tuple) else values
    for names, block in chunk.blocks.items():
        if name in names:
            return block[:, names.index(name)]
    return [None] * chunk.rows


def _groups(chunks: list[LogChunk]) -> dict[tuple[str, str], list[LogChunk]]:
    """Chunks by log and hour partition: one file each."""
    groups: dict[tuple[str, str], list[LogChunk]] = {}
    for chunk in chunks:
        groups.setdefault((chunk.kind, chunk.partition()), []).append(chunk)
    return groups


def encode_record(chunk: LogChunk) -> bytes:
    """`record_parts` joined."""
    return b"".join(record_parts(chunk))


def record_parts(chunk: LogChunk) -> list[bytes | memoryview]:
    """A chunk as one WAL record, in pieces to write one after another (a scorer's batch of 1,000 is ~1 MB; joining
    it copied it twice): payload length and CRC-32 (little-endian uint32 each), then the payload.

    The payload is ``B``: a little-endian uint32 length, a JSON document, then raw bytes the document points into
    (lists and object arrays of texts as lists, long ones and Arrow strings as UTF-8 bytes with their offsets;
    1-d NumPy arrays of the kinds `combined_table` joins, numeric blocks and long float lists as dtype and bytes;
    tens of microseconds for a scorer's one-row chunk, ~1 ms for a thousand rows) or, for values JSON cannot hold
    exactly, ``A``: the chunk's kind, time and rows as JSON, a newline, then `LogChunk.to_table` as an Arrow IPC
    stream. Neither runs code when read back (unlike pickle), and both survive upgrades of the libraries between the
    write and the recovery. Records of earlier versions (``J``: the same document, arrays in base64) are still read.
    """
    head = [chunk.kind, chunk.at.isoformat(), chunk.rows]
    payload = _binary_payload(head, chunk) if chunk.table is None else None
    if payload is None:
        table = chunk.to_table()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as stream:
            stream.write_table(table)
        payload = [b"A" + json.dumps(head).encode() + b"\n" + sink.getvalue().to_pybytes()]
    crc = size = 0
    for part in payload:
        crc = zlib.crc32(part, crc)
        size += memoryview(part).nbytes
    return [_RECORD.pack(size, crc), *payload]


def read_records(data: bytes) -> tuple[list[LogChunk], int]:
    """The chunks of a WAL segment's bytes, and how many records were unreadable: a torn or corrupt record ends
    the segment (a kill during its write), a complete one that does not decode is skipped."""
    chunks: list[LogChunk] = []
    unreadable = offset = 0
    while offset < len(data):
        end = offset + _RECORD.size
        if end > len(data):
            return chunks, unreadable + 1
        length, crc = _RECORD.unpack_from(data, offset)
        payload = data[end:end + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            return chunks, unreadable + 1
        try:
            chunks.append(_decode(payload))
        except (ValueError, TypeError, KeyError, pa.ArrowException) as exc:
            log.warning("skipping an undecodable WAL record: %s", exc)
            unreadable += 1
        offset = end + length
    return chunks, unreadable


class _Raw:
    """The raw bytes of a ``B`` payload, and the JSON that describes where each array lies in them."""

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.size = 0

    def array(self, values: np.ndarray, as_list: bool) -> dict[str, Any]:
        data = np.ascontiguousarray(values)
        self.parts.append(memoryview(data.view(np.uint8)))
        self.size += data.nbytes
        return {"dtype": data.dtype.str, "at": self.size - data.nbytes, "count": len(data), "list": as_list}

    def strings(self, values: pa.StringArray, as_list: bool) -> dict[str, Any]:
        """An Arrow string array without nulls: its offsets and bytes as they are (``as_list``: read back as a
        list)."""
        ends, data = values.buffers()[1:]
        ends = np.frombuffer(ends, np.int32, len(values) + 1, values.offset * 4)
        start, stop = int(ends[0]), int(ends[-1])
        at = self.size
        self.parts.append(memoryview(data)[start:stop])
        self.size += stop - start
        return {"strings": self.array(ends - start, as_list=False), "at": at, "list": as_list}


def _binary_payload(head: list[Any], chunk: LogChunk) -> list[bytes | memoryview] | None:
    """The ``B`` payload of a chunk, in pieces, or None if JSON cannot hold its values exactly (pandas values, NumPy
    scalars, datetimes...)."""
    raw = _Raw()
    columns: dict[str, Any] = {}
    for name, values in chunk.columns.items():
        if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind == "O":
            values = values.tolist()  # texts (categories); anything JSON cannot hold fails below
        if isinstance(values, list | tuple):
            long = len(values) >= _BINARY_FLOATS
            if long and all(type(v) is float for v in values):
                columns[name] = raw.array(np.array(values, "float64"), as_list=True)
            elif long and all(type(v) is str for v in values):
                columns[name] = raw.strings(pa.array(values, pa.string()), as_list=True)
            else:
                columns[name] = values
        elif isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "biufUMm":
            columns[name] = raw.array(values, as_list=False)
        elif isinstance(values, pa.StringArray) and not values.null_count:
            columns[name] = raw.strings(values, as_list=False)
        else:
            return None
    blocks = []
    for names, block in chunk.blocks.items():
        if block.ndim != 2 or block.dtype.kind not in "biuf":
            return None
        blocks.append([list(names), raw.array(block.ravel(), as_list=False)])
    try:
        document = json.dumps([*head, columns, chunk.shared, chunk.json_columns, blocks],
                              separators=(",", ":")).encode()
    except (TypeError, ValueError):
        return None
    return [b"B" + _LENGTH.pack(len(document)) + document, *raw.parts]


def _unraw(values: dict[str, Any], raw: bytes) -> np.ndarray | pa.StringArray:
    """The array (flat) or Arrow strings `_Raw` placed in ``raw``."""
    if "strings" in values:
        ends = _unraw(values["strings"], raw)
        at = values["at"]
        return pa.StringArray.from_buffers(len(ends) - 1, pa.py_buffer(ends.copy()),
                                           pa.py_buffer(raw[at:at + int(ends[-1])]))
    return np.frombuffer(raw, values["dtype"], values["count"], values["at"])


def _unbase64(values: dict[str, Any], _raw: bytes) -> np.ndarray:
    """An array of a ``J`` record (flat)."""
    return np.frombuffer(base64.b64decode(values["bytes"]), values["dtype"])


def _decode(payload: bytes) -> LogChunk:
    kind_of = payload[:1]
    if kind_of == b"A":
        head, stream = payload[1:].split(b"\n", 1)
        kind, at, rows = json.loads(head)
        return LogChunk(kind, datetime.fromisoformat(at), rows, table=pa.ipc.open_stream(stream).read_all())
    if kind_of == b"B":
        (length,) = _LENGTH.unpack_from(payload, 1)
        document, raw, read = payload[1 + _LENGTH.size:1 + _LENGTH.size + length], \
            payload[1 + _LENGTH.size + length:], _unraw
    elif kind_of == b"J":
        document, raw, read = payload[1:], b"", _unbase64
    else:
        raise ValueError(f"unknown WAL record type {kind_of!r}")
    kind, at, rows, columns, shared, json_columns, *rest = json.loads(document)  # rest: blocks (older records: none)
    for name, values in columns.items():
        if isinstance(values, dict):
            array = read(values, raw)
            if values["list"]:
                array = array.tolist() if isinstance(array, np.ndarray) else array.to_pylist()
            columns[name] = array
    blocks = {tuple(names): read(values, raw).reshape(rows, len(names)) for names, values in (rest[0] if rest else [])}
    return LogChunk(kind, datetime.fromisoformat(at), rows, columns=columns, shared=shared, json_columns=json_columns,
                    blocks=blocks)


@dataclass
class _Segment:
    path: Path
    name: str
    """Names the parts of rows written from this segment alone."""
    fd: int
    size: int = 0
    synced: int = 0


class _Wal:
    """One writer's segment files in a WAL directory (see `LogWriter`). Records go with `os.pwrite` right after
    the last complete one, so that the next record overwrites whatever a failed write left."""

    def __init__(self, directory: Path, fsync_seconds: float, on_error: Callable[[Exception], None]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.fsync_seconds = fsync_seconds
        self._on_error = on_error
        self._lock = threading.Lock()
        self._current: _Segment | None = None
        self._sealed: list[_Segment] = []
        self._directory_synced = True
        self._stop = threading.Event()
        self._thread = None
        if fsync_seconds > 0:
            self._thread = threading.Thread(target=self._sync_loop, name="fraudops-predlog-fsync", daemon=True)
            self._thread.start()

    def write(self, record: list[bytes | memoryview]) -> str:
        """Write a record (`record_parts`) to the current segment (opened if need be); its name."""
        size = sum(memoryview(part).nbytes for part in record)
        if len(record) > _MAX_PARTS:
            record = [b"".join(record)]
        with self._lock:
            segment = self._current or self._open()
            if os.pwritev(segment.fd, record, segment.size) != size:
                raise OSError(errno.ENOSPC, f"short write to {segment.path}")
            segment.size += size
        if self.fsync_seconds <= 0:
            self.sync()
        return segment.name

    def _open(self) -> _Segment:
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        path, tmp = self.directory / f"{name}.wal", self.directory / f".{name}.wal.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:  # locked before it gets the name that recovering writers look for
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, path)
        except OSError:
            os.close(fd)
            with suppress(OSError):
                tmp.unlink()
            raise
        self._current = _Segment(path, name, fd)
        self._directory_synced = False
        return self._current

    def rotate(self) -> None:
        """Seal the current segment, if it holds records: the next write opens a new one."""
        with self._lock:
            if self._current is not None and self._current.size:
                self._sealed.append(self._current)
                self._current = None

    def release(self, live: set[str | None]) -> None:
        """Delete the sealed segments whose names are not in ``live`` (all their rows are written)."""
        with self._lock:
            done = [s for s in self._sealed if s.name not in live]
            self._sealed = [s for s in self._sealed if s.name in live]
        for segment in done:
            self._delete(segment)

    def adopt(self) -> Iterator[tuple[str, list[LogChunk], int]]:
        """Lock, one at a time, the segments that no live writer holds: their name, chunks and unreadable records
        (`read_records`). They stay locked, as sealed segments of this writer, until `release`."""
        for path in sorted(self.directory.iterdir()):
            if not path.name.endswith((".wal", ".wal.new")):  # .new: a writer was killed while opening it
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino != os.stat(path).st_ino:  # deleted by its writer in the meantime
                    raise FileNotFoundError(path)
                with open(fd, "rb", closefd=False) as fh:
                    data = fh.read()
            except OSError:  # BlockingIOError: a live writer holds it
                os.close(fd)
                continue
            segment = _Segment(path, path.name.removesuffix(".wal"), fd, len(data), len(data))
            with self._lock:
                self._sealed.append(segment)
            yield segment.name, *read_records(data)

    def sync(self) -> None:
        """fsync the segments written since the last sync, and the directory after a new segment; failures go to
        ``on_error``. The file descriptors are duplicated so that writes go on meanwhile."""
        try:
            with self._lock:
                todo = [(s, s.size, os.dup(s.fd)) for s in [*self._sealed, self._current]
                        if s is not None and s.synced < s.size]
                directory, self._directory_synced = not self._directory_synced, True
            for segment, size, fd in todo:
                try:
                    os.fsync(fd)
                    segment.synced = max(segment.synced, size)
                finally:
                    os.close(fd)
            if directory:
                fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            self._on_error(exc)

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_seconds):
            self.sync()

    def close(self) -> None:
        """Stop syncing and delete every segment (their rows are written)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            segments = [*self._sealed, *([self._current] if self._current else [])]
            self._sealed, self._current = [], None
        for segment in segments:
            self._delete(segment)

    @staticmethod
    def _delete(segment: _Segment) -> None:
        with suppress(FileNotFoundError):  # unlinked while still locked: no other writer can take it meanwhile
            segment.path.unlink()
        os.close(segment.fd)


def _utc(value: datetime | str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _parts(fs: Any, base: str, start: pd.Timestamp | None, end: pd.Timestamp | None) -> list[str]:
    """Part files whose hour partition overlaps [start, end)."""
    if start is None:
        patterns = [f"{base}/date=*/hour=*/part-*.parquet"]
    else:
        last = (end or pd.Timestamp.now(tz="UTC")).normalize()
        days = pd.date_range(start.normalize(), max(last, start.normalize()), freq="D")
        patterns = [f"{base}/date={d:%Y-%m-%d}/hour=*/part-*.parquet" for d in days]
    keep = []
    for path in sorted({p for pattern in patterns for p in fs.glob(pattern)}):
        date, hour = path.split("/date=", 1)[1].split("/hour=", 1)
        opened = pd.Timestamp(date.split("/", 1)[0], tz="UTC") + timedelta(hours=int(hour.split("/", 1)[0]))
        if (start is None or opened + timedelta(hours=1) > start) and (end is None or opened < end):
            keep.append(path)
    return keep


def log_parts(root: str, kind: str, start: datetime | str | None = None, end: datetime | str | None = None
              ) -> tuple[Any, list[str]]:
    """The filesystem of one log (``predictions`` or ``feedback``) and its part files whose hour partition
    overlaps [start, end), oldest partition first; read them with `read_part`."""
    fs, base = storage.filesystem(storage.join(root, kind))
    return fs, _parts(fs, base, _utc(start), _utc(end))


def read_part(fs: Any, path: str, columns: Sequence[str] | None = None) -> tuple[pa.Table, list[str]]:
    """One part file and the names of all its columns; ``columns``: only those of them it has (and the time logged)
    are read. Raises one of `UNREADABLE` when the file cannot be read."""
    with fs.open(path, "rb") as fh:
        part = pq.ParquetFile(fh)
        names = part.schema_arrow.names
        return part.read(columns=None if columns is None else
                         [c for c in names if c == TIME_COLUMN or c in columns]), names


UNREADABLE = (OSError, ValueError, pa.ArrowException)
"""What `read_part` raises for a file it cannot read."""


def read_log(root: str, kind: str, start: datetime | str | None = None, end: datetime | str | None = None,
             columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows of one log (``predictions`` or ``feedback``) logged in [start, end), oldest first; ``columns``: only
    those of them a file has (and the time logged), not all.

    Unreadable part files are skipped with a warning; ``frame.attrs["corrupt_parts"]`` counts them and
    ``frame.attrs["corrupt_paths"]`` lists them. Naive times are UTC.
    """
    begin, stop = _utc(start), _utc(end)
    fs, paths = log_parts(root, kind, begin, stop)
    frames, corrupt = [], []
    for path in paths:
        try:
            frames.append(read_part(fs, path, columns)[0].to_pandas())
        except UNREADABLE as exc:
            log.warning("skipping unreadable log file %s: %s", path, exc)
            corrupt.append(path)
    if frames:
        frame = pd.concat(frames, ignore_index=True, sort=False)
        keep = np.ones(len(frame), dtype=bool)
        if begin is not None:
            keep &= (frame[TIME_COLUMN] >= begin).to_numpy()
        if stop is not None:
            keep &= (frame[TIME_COLUMN] < stop).to_numpy()
        frame = frame[keep].sort_values(TIME_COLUMN, kind="stable").reset_index(drop=True)
    else:
        frame = pd.DataFrame({TIME_COLUMN: pd.Series([], dtype="datetime64[us, UTC]")})
    frame.attrs["corrupt_parts"] = len(corrupt)
    frame.attrs["corrupt_paths"] = corrupt
    return frame


def read_predictions(root: str, start: datetime | str | None = None, end: datetime | str | None = None,
                     columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Predictions logged in [start, end): request_id, row, model_tag, score, decision, features, input JSON
    (``columns``: only those)."""
    return read_log(root, PREDICTIONS, start, end, columns)


def read_feedback(root: str, start: datetime | str | None = None, end: datetime | str | None = None
                  ) -> pd.DataFrame:
    """Confirmed labels recorded in [start, end): request_id, row, is_fraud, source, observed_at."""
    return read_log(root, FEEDBACK, start, end)
