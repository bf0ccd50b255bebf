"""Durable, hour-partitioned log of predictions and feedback labels, written in batches off the request path."""

from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fraudops import storage

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
TIME_COLUMN = "logged_at"
LOG_ENV = "FRAUDOPS_PREDICTION_LOG"
SPILL_ENV = "FRAUDOPS_PREDICTION_SPILL"


def default_root() -> str:
    """``$FRAUDOPS_PREDICTION_LOG``, else ``<BENTOML_HOME>/fraudops/prediction-log`` (next to the champion pointer)."""
    from fraudops.registry import default_home  # imports bentoml: only when no root is configured

    return os.environ.get(LOG_ENV) or str(default_home() / "fraudops" / "prediction-log")


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
    table: pa.Table | None = None
    """Rows already joined into one Arrow table (by the writer; then the other fields other than ``kind``,
    ``at`` and ``rows`` are empty)."""

    def partition(self) -> str:
        """``date=YYYY-MM-DD/hour=HH`` of the logging time (UTC)."""
        return self.at.astimezone(UTC).strftime("date=%Y-%m-%d/hour=%H")

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
        for name, values in self.json_columns.items():
            data[name] = pa.array([json.dumps(v, default=str) for v in values], pa.string())
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
    """

    def __init__(self, root: str, *, flush_rows: int = 10_000, flush_seconds: float = 10.0,
                 compact_seconds: float = 0.5, max_pending_rows: int = 500_000, spill_dir: str | Path | None = None,
                 on_written: Callable[[str, int], None] | None = None,
                 on_error: Callable[[str, Exception], None] | None = None) -> None:
        self.root = root.rstrip("/")
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.compact_seconds = compact_seconds
        self.max_pending_rows = max_pending_rows
        self.spill_dir = Path(spill_dir or os.environ.get(SPILL_ENV) or
                              Path(tempfile.gettempdir()) / "fraudops-predlog-spill")
        self._on_written = on_written or (lambda _kind, _rows: None)
        self._on_error = on_error or (lambda _kind, _exc: None)
        self._pending: list[LogChunk] = []
        self._pending_rows = 0
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="fraudops-predlog", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @property
    def pending_rows(self) -> int:
        """Rows accepted but not yet written."""
        return self._pending_rows

    def append(self, chunk: LogChunk) -> None:
        """Queue a chunk (never blocks on storage)."""
        with self._cond:
            if self._closed:
                raise LogUnavailableError(f"the log writer for {self.root} is closed")
            if self._pending_rows + chunk.rows > self.max_pending_rows:
                raise LogUnavailableError(f"{self._pending_rows} rows are waiting to be written to {self.root}; "
                                   "the log storage is failing")
            self._pending.append(chunk)
            self._pending_rows += chunk.rows
            if self._pending_rows >= self.flush_rows:
                self._cond.notify()

    def flush(self) -> bool:
        """Write everything queued now; False if some of it could not be written (it stays queued)."""
        with self._write_lock:
            with self._cond:
                chunks, self._pending = self._pending, []
            if not chunks:
                return True
            failed: list[LogChunk] = []
            for (kind, partition), group in _groups(chunks).items():
                rows = sum(c.rows for c in group)
                try:
                    self._write(self.root, kind, partition, group)
                except Exception as exc:  # any storage failure: keep the rows for the next attempt
                    log.warning("cannot write %d %s rows to %s: %s", rows, kind, self.root, exc)
                    self._on_error(kind, exc)
                    failed.extend(group)
                    continue
                with self._cond:
                    self._pending_rows -= rows
                self._on_written(kind, rows)
            if failed:
                with self._cond:
                    self._pending[:0] = failed
            return not failed

    @staticmethod
    def _write(root: str, kind: str, partition: str, chunks: list[LogChunk]) -> str:
        table = combined_table(chunks)
        name = f"part-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}.parquet"
        url = storage.join(root, kind, partition, name)
        fs, path = storage.filesystem(url)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if storage.is_remote(url):
            with fs.open(path, "wb") as fh:  # one PUT: readers never see a partial object
                pq.write_table(table, fh)
            return url
        tmp = f"{path.rsplit('/', 1)[0]}/.{name}.tmp"  # readers only look at part-* files
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return url

    def compact(self) -> None:
        """Join the queued chunks into one table per log and hour (they stay queued until written)."""
        with self._write_lock:
            with self._cond:
                if all(c.table is not None for c in self._pending):
                    return
                chunks, self._pending = self._pending, []
            try:
                joined = [LogChunk(kind, group[0].at, sum(c.rows for c in group), table=combined_table(group))
                          for (kind, _), group in _groups(chunks).items()]
            except Exception as exc:  # rows that cannot be joined fail again at the write, which reports it
                log.warning("cannot join %d queued log chunks: %s", len(chunks), exc)
                joined = chunks
            with self._cond:
                self._pending[:0] = joined

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
        """Stop the thread and write everything left; spill to the local spill directory if storage fails."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        atexit.unregister(self.close)
        self._thread.join()
        for _ in range(attempts):
            if self.flush():
                return
        with self._write_lock, self._cond:
            chunks, self._pending = self._pending, []
        for (kind, partition), group in _groups(chunks).items():
            url = self._write(str(self.spill_dir), kind, partition, group)
            log.error("could not write %d %s rows to %s; saved them to %s instead: copy them into the log",
                      sum(c.rows for c in group), kind, self.root, url)
        with self._cond:
            self._pending_rows = 0


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
    names = list(dict.fromkeys(n for c in chunks for n in (*c.shared, *c.columns, *c.json_columns)))
    times = [at for c in chunks for at in [pd.Timestamp(c.at).tz_convert("UTC")] * c.rows]  # one per chunk
    data = {TIME_COLUMN: pa.array(times, pa.timestamp("us", tz="UTC"))}
    for name in names:
        pieces = [_values(c, name) for c in chunks]
        if all(isinstance(p, list) for p in pieces):
            json_valued = any(name in c.json_columns for c in chunks)
            data[name] = pa.array([v for p in pieces for v in p], pa.string() if json_valued else None)
        elif (all(isinstance(p, np.ndarray) for p in pieces) and len({p.dtype for p in pieces}) == 1
              and pieces[0].dtype.kind in "biufUMm"):
            data[name] = pa.array(np.concatenate(pieces))
        else:
            return pa.concat_tables([c.to_table() for c in chunks], promote_options="permissive")
    return pa.table(data)


def _values(chunk: LogChunk, name: str) -> Any:
    """A chunk's values of one column: a list (nulls where the chunk lacks it), or as given (arrays, pandas)."""
    if name in chunk.shared:
        return [chunk.shared[name]] * chunk.rows
    if name in chunk.json_columns:
        return [json.dumps(v, default=str) for v in chunk.json_columns[name]]
    if name in chunk.columns:
        values = chunk.columns[name]
        return list(values) if isinstance(values, tuple) else values
    return [None] * chunk.rows


def _groups(chunks: list[LogChunk]) -> dict[tuple[str, str], list[LogChunk]]:
    """Chunks by log and hour partition: one file each."""
    groups: dict[tuple[str, str], list[LogChunk]] = {}
    for chunk in chunks:
        groups.setdefault((chunk.kind, chunk.partition()), []).append(chunk)
    return groups


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


def read_log(root: str, kind: str, start: datetime | str | None = None, end: datetime | str | None = None
             ) -> pd.DataFrame:
    """Rows of one log (``predictions`` or ``feedback``) logged in [start, end), oldest first.

    Unreadable part files are skipped with a warning; ``frame.attrs["corrupt_parts"]`` counts them and
    ``frame.attrs["corrupt_paths"]`` lists them. Naive times are UTC.
    """
    begin, stop = _utc(start), _utc(end)
    fs, base = storage.filesystem(storage.join(root, kind))
    frames, corrupt = [], []
    for path in _parts(fs, base, begin, stop):
        try:
            with fs.open(path, "rb") as fh:
                frames.append(pq.read_table(fh).to_pandas())
        except (OSError, ValueError, pa.ArrowException) as exc:
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


def read_predictions(root: str, start: datetime | str | None = None, end: datetime | str | None = None
                     ) -> pd.DataFrame:
    """Predictions logged in [start, end): request_id, row, model_tag, score, decision, features, input JSON."""
    return read_log(root, PREDICTIONS, start, end)


def read_feedback(root: str, start: datetime | str | None = None, end: datetime | str | None = None
                  ) -> pd.DataFrame:
    """Confirmed labels recorded in [start, end): request_id, row, is_fraud, source, observed_at."""
    return read_log(root, FEEDBACK, start, end)
