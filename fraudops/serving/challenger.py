"""The challenger of an active rollout, served beside the champion: in shadow (scored after the answer, never
returned) or as a canary (deciding for a sticky share of customers)."""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fraudops.registry import CANARY, SHADOW, Rollout
from fraudops.serving.model import ServedModel

log = logging.getLogger(__name__)

SHADOW_QUEUE = 512  # requests waiting for shadow scoring; beyond it new ones are dropped (counted)
SHADOW_BATCH = 2000  # transactions the shadow scores in one call, at most


def bucket(rollout_id: str, key: Any) -> float:
    """A customer's place in [0, 100) for one rollout: the same key always lands in the same place, so a customer
    inside a canary of P% stays inside while P grows, and each rollout draws its customers afresh."""
    digest = hashlib.blake2b(f"{rollout_id}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100


@dataclass(frozen=True)
class Challenger:
    """The rollout and its loaded model."""

    rollout: Rollout
    model: ServedModel

    @property
    def shadow(self) -> bool:
        return self.rollout.mode == SHADOW

    def canary_rows(self, keys: list[Any]) -> list[int]:
        """Indices of the transactions the canary decides (none in shadow; rows without a key stay champion)."""
        if self.rollout.mode != CANARY or self.rollout.percent <= 0:
            return []
        percent, rid = self.rollout.percent, self.rollout.id
        return [i for i, key in enumerate(keys) if key is not None and bucket(rid, key) < percent]


_NEXT: Any = object()  # in the worker: no request taken ahead of the current batch
Shadowed = tuple[list[Any], str]
"""One request for the shadow: its transactions and request id."""


class ShadowWorker:
    """Scores requests with the challenger off the request path, in a thread of its own, in micro-batches: each
    call takes every request waiting for the same challenger (up to ``SHADOW_BATCH`` transactions), so that a
    backlog costs one model call, not one per request. It still shares the process and its GIL with the answers:
    the serving benchmark measures what that costs at p99.

    `submit` never blocks and never fails a request: when ``SHADOW_QUEUE`` requests wait, new ones are dropped
    (``on_dropped``); a failing shadow scoring is logged and counted (``on_failed``, once per request) and the
    next one goes on.
    """

    def __init__(self, run: Callable[[Challenger, list[Shadowed]], None], *, on_dropped: Callable[[], None],
                 on_failed: Callable[[Exception], None], size: int = SHADOW_QUEUE) -> None:
        self._run, self._on_dropped, self._on_failed = run, on_dropped, on_failed
        self._queue: queue.Queue[tuple[Challenger, list[Any], str] | None] = queue.Queue(size)
        self._thread = threading.Thread(target=self._loop, name="fraudops-shadow", daemon=True)
        self._thread.start()

    def submit(self, challenger: Challenger, transactions: list[Any], request_id: str) -> None:
        """Queue one request for the challenger."""
        try:
            self._queue.put_nowait((challenger, transactions, request_id))
        except queue.Full:
            self._on_dropped()

    def _loop(self) -> None:
        item = self._queue.get()
        while item is not None:
            challenger, batch, rows = item[0], [item[1:]], len(item[1])
            item = _NEXT  # nothing taken ahead yet
            while rows < SHADOW_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = _NEXT
                    break
                if item is None or item[0] is not challenger:
                    break  # the end, or another challenger: taken ahead for after this batch
                batch.append(item[1:])
                rows += len(item[1])
                item = _NEXT
            try:
                self._run(challenger, batch)
            except Exception as exc:  # a shadow must never take the service down
                log.warning("shadow scoring of %d requests with %s failed: %s", len(batch), challenger.model.tag,
                            exc)
                for _ in batch:
                    self._on_failed(exc)
            if item is _NEXT:
                item = self._queue.get()

    def close(self) -> None:
        """Score what waits, then stop."""
        self._queue.put(None)
        self._thread.join()
