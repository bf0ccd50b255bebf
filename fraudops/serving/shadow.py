"""Shadow scoring in a process of its own, so that it never holds the interpreter lock the answers need.

A scorer worker hands each request to shadow-score to `ShadowProcess.submit`, which only queues it. A sender
thread takes every request waiting (up to ``SHADOW_BATCH`` transactions) and sends them, pickled, over a socket
to the shadow process (`main`): it validates, scores each model's requests in one
call and writes the rows to the prediction log itself (its own writer, sharing the write-ahead directory), then
answers with the scores and decisions (for the worker's metrics) and its log writer's counts.

Nothing here fails a request: a full queue drops (counted), a failing model or a dead, hung or unstartable
process counts the requests it had as failed; a dead process is started again after ``RESTART_SECONDS``. The
process exits when its worker closes it or dies (end of file on the socket).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from fraudops.bundle import ModelBundle
from fraudops.predlog import LogWriter
from fraudops.registry import SHADOW
from fraudops.serving.errors import RequestError
from fraudops.serving.model import ServedModel
from fraudops.settings import ServingConfig

log = logging.getLogger(__name__)

SHADOW_QUEUE = 512  # requests waiting for shadow scoring; beyond it new ones are dropped (counted)
SHADOW_BATCH = 2000  # transactions sent to the shadow process at once, at most
RESTART_SECONDS = 5.0  # a dead shadow process is started again after this long (requests meanwhile fail)
REPLY_SECONDS = 20.0  # a shadow process silent this long on a batch is hung: killed, its batch failed
CLOSE_SECONDS = 10.0  # time a closing shadow process has to write its rows (its write-ahead log keeps the rest)
MODELS_KEPT = 3  # models a shadow process keeps loaded (champion, challenger, and the one being replaced)
FAILED_MODEL_SECONDS = 30.0  # a model that failed to load is not tried again for this long
NICENESS = 10  # the shadow process's CPU priority below its worker's: under contention the answers come first
ENTRY = ("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.signal(signal.SIGINT, signal.SIG_IGN)"
         "; import sys; from fraudops.serving.shadow import main; main(sys.argv[1:])")
"""The shadow process's program (not ``-m``: its classes must unpickle as this module's, not ``__main__``'s). It
ignores SIGTERM and SIGINT from its first instruction: a stopping service signals its whole process group, and
the process must write its rows and exit when its worker closes it, or when the worker is gone."""
_RELEASE: Any = object()  # in the queue: the rollout ended, stop the process (the next job starts another)
_NEXT: Any = object()  # in the sender: nothing taken ahead of the batch


@dataclass(frozen=True)
class ShadowJob:
    """Transactions of one request for one model to score, off the request path; ``index``: their rows in the
    request. Without transactions, a job only has the model loaded (before traffic needs it)."""

    role: str  # the metrics' role of these scores (the log says shadow: not returned)
    tag: str
    path: str
    rollout_id: str | None
    request_id: str
    transactions: list[Any] = field(default_factory=list)
    index: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ShadowOutcome:
    """What became of the requests of one model and role in one batch."""

    role: str
    tag: str
    requests: int
    scores: list[float]
    decisions: list[str]
    seconds: float
    error: str | None = None
    """Why every request of the group failed (then ``requests`` failed)."""
    failed: int = 0
    """Requests of the group left out because the model refused their transactions."""


@dataclass
class LogCounts:
    """The shadow process's log writer's counts since its last answer."""

    written: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    wal_failures: int = 0


class _Tally:
    """`LogCounts` added up from the log writer's threads and taken, whole, by each answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = LogCounts()

    def add(self, written: str | None = None, rows: int = 0, failed: str | None = None, wal: bool = False) -> None:
        with self._lock:
            if written:
                self._counts.written[written] += rows
            if failed:
                self._counts.failures[failed] += 1
            self._counts.wal_failures += wal

    def take(self) -> LogCounts:
        """The counts so far, and zero again."""
        with self._lock:
            taken, self._counts = self._counts, LogCounts()
        return taken


class ShadowUnavailable(RuntimeError):
    """The shadow process cannot take a batch now."""


class ShadowProcess:
    """The worker's side: the queue, the sender thread and the process (started when first needed)."""

    def __init__(self, config: ServingConfig, log_options: dict[str, Any], *,
                 on_outcome: Callable[[ShadowOutcome], None], on_log: Callable[[LogCounts], None],
                 on_dropped: Callable[[], None], size: int = SHADOW_QUEUE) -> None:
        self._setup = (config, log_options)
        self._on_outcome, self._on_log, self._on_dropped = on_outcome, on_log, on_dropped
        self._queue: queue.Queue[Any] = queue.Queue(size)  # jobs, `_RELEASE`, and None: stop
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()  # the process and its connection
        self._thread = threading.Thread(target=self._loop, name="fraudops-shadow", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        """The shadow process's id while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def submit(self, job: ShadowJob) -> None:
        """Queue one job; never blocks (a full queue drops it, counted)."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._on_dropped()

    def warm(self, role: str, tag: str, path: str) -> None:
        """Start the process and have it load a model now, before traffic needs it."""
        self.submit(ShadowJob(role, tag, path, None, ""))

    def release(self) -> None:
        """The rollout ended: score what waits, then stop the process and free its memory (the next job starts
        another)."""
        with suppress(queue.Full):
            self._queue.put(_RELEASE, timeout=REPLY_SECONDS)

    def close(self) -> None:
        """Score what waits, have the process write its rows, then stop it (within about `REPLY_SECONDS` +
        `CLOSE_SECONDS` when it answers, at once when it is gone)."""
        with suppress(queue.Full):
            self._queue.put(None, timeout=REPLY_SECONDS)
        self._thread.join(REPLY_SECONDS + 2 * CLOSE_SECONDS)
        if self._thread.is_alive():
            log.warning("the shadow sender did not finish; stopping the shadow process")
            with self._lock:
                self._kill()

    # -- the sender thread --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        item = self._queue.get()
        while item is not None:
            if item is _RELEASE:
                self._stop()
                item = self._queue.get()
                continue
            batch, rows, item = [item], len(item.transactions), _NEXT
            while rows < SHADOW_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = _NEXT
                    break
                if item is None or item is _RELEASE:
                    break  # after this batch
                batch.append(item)
                rows += len(item.transactions)
                item = _NEXT
            try:
                self._send(batch)
            except Exception:  # never let the sender die: a dead sender would drop every request silently
                log.exception("shadow batch of %d requests failed", len(batch))
            if item is _NEXT:
                item = self._queue.get()
        self._stop()

    def _send(self, batch: list[ShadowJob]) -> None:
        try:
            conn = self._connection()
        except ShadowUnavailable as exc:  # waiting to restart
            outcomes, counts = _failed(batch, exc), LogCounts()
        except OSError as exc:  # cannot start one
            self._lost(exc)
            outcomes, counts = _failed(batch, exc), LogCounts()
        else:
            try:
                conn.send(batch)
                if not conn.poll(REPLY_SECONDS):
                    raise TimeoutError(f"the shadow process did not answer in {REPLY_SECONDS:g} s")
                outcomes, counts = conn.recv()
            except Exception as exc:  # died, hung (TimeoutError is an OSError) or sent what cannot be read
                self._lost(exc)
                outcomes, counts = _failed(batch, exc), LogCounts()
        self._on_log(counts)
        for outcome in outcomes:
            self._on_outcome(outcome)

    def _connection(self) -> Connection:
        with self._lock:
            if self._conn is not None:
                return self._conn
            if time.monotonic() < self._retry_at:
                raise ShadowUnavailable("the shadow process is down (restarting soon)")
            ours, theirs = socket.socketpair()
            try:
                self._process = subprocess.Popen([sys.executable, "-c", ENTRY, str(theirs.fileno())],
                                                 pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
            finally:
                theirs.close()
            self._conn = Connection(ours.detach())
            self._conn.send(self._setup)
            log.info("shadow process %d started", self._process.pid)
            return self._conn

    def _lost(self, exc: Exception) -> None:
        """The process died, hung or could not start: kill what is left, try again in `RESTART_SECONDS`."""
        with self._lock:
            what = f"shadow process {self._process.pid} lost" if self._process else "cannot start a shadow process"
            log.warning("%s (%s); trying again in %g s", what, exc, RESTART_SECONDS)
            self._kill()
            self._retry_at = time.monotonic() + RESTART_SECONDS

    def _kill(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def _stop(self) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.send(None)
                if self._conn.poll(CLOSE_SECONDS):
                    _outcomes, counts = self._conn.recv()
                    self._on_log(counts)
                    self._process.wait(CLOSE_SECONDS)
            except (OSError, EOFError, subprocess.TimeoutExpired) as exc:
                log.warning("shadow process did not stop cleanly: %s", exc)
            self._kill()


def _failed(batch: list[ShadowJob], exc: Exception) -> list[ShadowOutcome]:
    requests = Counter((job.role, job.tag) for job in batch if job.transactions)
    return [ShadowOutcome(role, tag, n, [], [], 0.0, error=str(exc)) for (role, tag), n in requests.items()]


# -- the shadow process ---------------------------------------------------------------------------------------
class _Models:
    """The models this process scores with, loaded when first asked for, the least recently used dropped."""

    def __init__(self, config: ServingConfig) -> None:
        self.config, self.spec = config, config.service_spec()
        self._loaded: dict[tuple[str, str], ServedModel] = {}
        self._failed: dict[tuple[str, str], tuple[float, Exception]] = {}

    def get(self, tag: str, path: str) -> ServedModel:
        """The model (`FAILED_MODEL_SECONDS` after a failed load, the same failure without trying again)."""
        key = (tag, path)
        failed_at, error = self._failed.get(key, (-FAILED_MODEL_SECONDS, None))
        if error is not None and time.monotonic() - failed_at < FAILED_MODEL_SECONDS:
            raise error
        model = self._loaded.pop(key, None)
        if model is None:
            try:
                model = ServedModel.build(tag, ModelBundle.load(path), self.config, self.spec, path=path)
            except Exception as exc:
                self._failed[key] = (time.monotonic(), exc)
                raise
        self._loaded[key] = model
        while len(self._loaded) > MODELS_KEPT:
            del self._loaded[next(iter(self._loaded))]
        return model


def _score(jobs: list[ShadowJob], models: _Models, writer: LogWriter) -> ShadowOutcome:
    """Score and log one model's jobs in one call."""
    first = jobs[0]
    requests = sum(1 for job in jobs if job.transactions)
    try:
        model = models.get(first.tag, first.path)
        rows: list[dict[str, Any]] = []
        transactions: list[Any] = []
        index: list[int] = []
        request_ids: list[str] = []
        refused = 0
        for job in jobs:
            try:
                valid = model.schema.validate(job.transactions) if job.transactions else []
            except RequestError as exc:  # the challenger's schema refuses what the champion took: this one only
                log.debug("shadow: %s refuses request %s: %s", first.tag, job.request_id, exc)
                refused += 1
                continue
            rows += valid
            transactions += job.transactions
            index += job.index
            request_ids += [job.request_id] * len(valid)
        if not rows:
            return ShadowOutcome(first.role, first.tag, requests - refused, [], [], 0.0, failed=refused)
        scored = model.run(rows)  # reads the feature store only: the deciding model recorded these transactions
        writer.append(model.log_chunk(SHADOW, index, rows, scored, transactions, request_ids, first.rollout_id))
        return ShadowOutcome(first.role, first.tag, requests - refused, scored.scores, scored.decisions,
                             scored.seconds, failed=refused)
    except Exception as exc:  # one model failing must not stop the others
        log.warning("shadow scoring of %d requests with %s failed: %s", requests, first.tag, exc)
        return ShadowOutcome(first.role, first.tag, requests, [], [], 0.0, error=f"{type(exc).__name__}: {exc}")


def serve(conn: Connection) -> None:
    """The shadow process: score the batches that arrive until told to stop or the worker is gone."""
    config, options = conn.recv()
    counts = _Tally()
    writer = LogWriter(**options, on_written=lambda kind, rows: counts.add(written=kind, rows=rows),
                       on_error=lambda kind, _exc: counts.add(failed=kind),
                       on_wal_error=lambda _exc: counts.add(wal=True))
    models = _Models(config)
    try:
        while True:
            try:
                batch: list[ShadowJob] | None = conn.recv()
            except EOFError:  # the worker is gone
                break
            if batch is None:
                break
            groups: dict[tuple[str, str, str, str | None], list[ShadowJob]] = {}
            for job in batch:
                groups.setdefault((job.role, job.tag, job.path, job.rollout_id), []).append(job)
            outcomes = [_score(jobs, models, writer) for jobs in groups.values()]
            conn.send(([o for o in outcomes if o.requests or o.error or o.failed], counts.take()))
    finally:
        writer.close()
    with suppress(OSError):
        conn.send(([], counts.take()))


def main(argv: list[str]) -> None:
    """The shadow process (see `ENTRY`), `NICENESS` below its worker."""
    os.nice(NICENESS)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s fraudops-shadow %(levelname)s %(name)s: %(message)s")
    serve(Connection(int(argv[0])))
