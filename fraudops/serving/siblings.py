"""The other workers of one BentoML server, so that a request to one of them can reach them all.

BentoML's workers share a listening socket, not state: ``POST /reload`` lands in one worker. That worker posts
the request as a file in a directory the server's workers share (named after the host and the arbiter, their
parent), and waits for each live sibling's answer; each worker looks for requests a few times a second
(`Siblings.pending`) and answers after doing what was asked. A worker that died is not waited for; one that does
not answer in time is named in the answer's ``unanswered``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TICK_SECONDS = 0.2
"""How often a worker looks for its siblings' requests."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Siblings:
    """This worker's view of the directory its server's workers share (see the module docstring)."""

    def __init__(self, root: Path | None = None, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()
        self.root = root or Path(tempfile.gettempdir()) / f"fraudops-workers-{socket.gethostname()}-{os.getppid()}"
        self.requests = self.root / "requests"
        self.answers = self.root / "answers"
        self._handled: set[str] = set()

    def join(self) -> None:
        """Register this worker, and forget the files of workers that are gone (a reused arbiter pid)."""
        for folder in (self.requests, self.answers):
            folder.mkdir(parents=True, exist_ok=True)
        for entry in self.root.glob("*.worker"):
            with contextlib.suppress(ValueError, OSError):
                if not _alive(int(entry.stem)):
                    entry.unlink()
        self._handled.update(p.name for p in self.requests.iterdir())  # asked before this worker served anything
        self._write(self.root / f"{self.pid}.worker", {"pid": self.pid})

    def leave(self) -> None:
        """Unregister this worker (it is not waited for any more); the last one out removes the directory."""
        with contextlib.suppress(OSError):
            (self.root / f"{self.pid}.worker").unlink()
        if not self.others():
            shutil.rmtree(self.root, ignore_errors=True)

    def others(self) -> list[int]:
        """The pids of the live workers besides this one."""
        pids = []
        for entry in self.root.glob("*.worker"):
            with contextlib.suppress(ValueError):
                pid = int(entry.stem)
                if pid != self.pid and _alive(pid):
                    pids.append(pid)
        return sorted(pids)

    def ask(self, action: str, timeout: float) -> dict[str, Any]:
        """Have every other live worker do ``action`` (`pending` hands it to them); wait up to ``timeout`` seconds
        for their answers: ``{"answers": {pid: answer}, "unanswered": [pid, ...]}``."""
        waiting = set(self.others())
        if not waiting:
            return {"answers": {}, "unanswered": []}
        request = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        self._handled.add(request)
        self._write(self.requests / request, {"action": action, "from": self.pid})
        answers: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        try:
            while waiting and time.monotonic() < deadline:
                for pid in sorted(waiting):
                    path = self.answers / f"{request}.{pid}"
                    if path.exists():
                        answers[pid] = json.loads(path.read_text())
                        path.unlink()
                        waiting.discard(pid)
                    elif not _alive(pid) or not (self.root / f"{pid}.worker").exists():  # gone, or leaving
                        waiting.discard(pid)
                if waiting:
                    time.sleep(TICK_SECONDS / 4)
        finally:
            with contextlib.suppress(OSError):
                (self.requests / request).unlink()
            for late in self.answers.glob(f"{request}.*"):  # answers after the deadline
                with contextlib.suppress(OSError):
                    late.unlink()
        if waiting:
            log.warning("workers %s did not answer %r within %.0f s", sorted(waiting), action, timeout)
        return {"answers": answers, "unanswered": sorted(waiting)}

    def pending(self) -> list[tuple[str, str]]:
        """The requests of other workers this one has not taken yet, oldest first: (request, action)."""
        try:
            names = sorted(p.name for p in self.requests.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name in self._handled:
                continue
            self._handled.add(name)
            with contextlib.suppress(OSError, ValueError):
                found.append((name, json.loads((self.requests / name).read_text())["action"]))
        self._handled.intersection_update(names)  # forget requests their askers removed
        return found

    def answer(self, request: str, answer: Any) -> None:
        """Give the asking worker this worker's answer to ``request``."""
        self._write(self.answers / f"{request}.{self.pid}", answer)

    @staticmethod
    def _write(path: Path, value: Any) -> None:
        """Write atomically (a reader never sees half a file)."""
        part = path.with_name(f".{path.name}.part")
        part.write_text(json.dumps(value))
        os.replace(part, path)
