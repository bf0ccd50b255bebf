"""The other workers of one BentoML server, so that a request to one of them can reach them all.

BentoML's workers share a listening socket, not state: ``POST /reload`` lands in one worker. That worker posts
the request as a file in a directory the server's workers share (``$BENTOML_HOME/fraudops/workers/<host>-<pid
namespace>-<arbiter pid>``: their parent, the arbiter, names it), and waits for each live sibling's answer; each
worker looks for requests a few times a second (`Siblings.pending`) and answers after doing what was asked. A
sibling is a registered pid whose parent is the arbiter: one that died is not waited for, one that does not answer
in time is named as unanswered. The directories of arbiters that are gone are removed by the next server to start
on the same host and pid namespace, requests left by askers that were killed after `STALE_SECONDS`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from fraudops.storage import PARTIAL_SUFFIX, write_json

log = logging.getLogger(__name__)

TICK_SECONDS = 0.2
"""How often a worker looks for its siblings' requests."""

STALE_SECONDS = 300.0
"""A request this old was left by an asker killed while it waited (asks wait seconds): it is removed."""


def default_root() -> Path:
    """``$BENTOML_HOME/fraudops/workers``: one directory per server under it."""
    from fraudops.registry import default_home

    return default_home() / "fraudops" / "workers"


def _namespace() -> str:
    """This process's pid namespace (the inode of ``/proc/self/ns/pid``; "0" without one): two containers with one
    host name and one volume have arbiters of the same pid, in namespaces of their own."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def _child_of(pid: int, parent: int) -> bool:
    """True while ``pid`` runs (not a zombie) as a child of ``parent`` (so a reused pid is not taken for it)."""
    try:
        proc = psutil.Process(pid)
        return proc.ppid() == parent and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _writing(path: Path) -> bool:
    """True for the temporary file `write_json` renames into place once it is whole."""
    return path.suffix == PARTIAL_SUFFIX


class Siblings:
    """This worker's view of the directory its server's workers share (see the module docstring)."""

    def __init__(self, root: Path | None = None, pid: int | None = None, parent: int | None = None) -> None:
        self.pid = pid or os.getpid()
        self.parent = parent or os.getppid()
        self.home = root or default_root()
        self.server = f"{socket.gethostname()}-{_namespace()}"  # where the arbiter's pid names one process
        self.root = self.home / f"{self.server}-{self.parent}"
        self.requests = self.root / "requests"
        self.answers = self.root / "answers"
        self._handled: set[str] = set()
        self._lock = threading.Lock()  # `ask` runs in a request's thread, `pending` in the watcher's

    def join(self) -> None:
        """Register this worker; forget workers that are gone, and the directories of servers that are gone."""
        for other in self.home.iterdir() if self.home.is_dir() else ():
            server, _, arbiter = other.name.rpartition("-")
            if server == self.server and other != self.root and arbiter.isdigit() and \
                    not psutil.pid_exists(int(arbiter)):
                shutil.rmtree(other, ignore_errors=True)
        for folder in (self.requests, self.answers):
            folder.mkdir(parents=True, exist_ok=True)
        for entry in self.root.glob("*.worker"):
            with contextlib.suppress(ValueError, OSError):
                if not _child_of(int(entry.stem), self.parent):
                    entry.unlink()
        with self._lock:
            self._handled.update(p.name for p in self.requests.iterdir())  # made before this worker was asked
        write_json(str(self.root / f"{self.pid}.worker"), {"pid": self.pid})

    def leave(self) -> None:
        """Unregister this worker (it is not waited for any more)."""
        with contextlib.suppress(OSError):
            (self.root / f"{self.pid}.worker").unlink()

    def others(self) -> list[int]:
        """The pids of the registered live workers besides this one."""
        pids = []
        for entry in self.root.glob("*.worker"):
            with contextlib.suppress(ValueError):
                pid = int(entry.stem)
                if pid != self.pid and _child_of(pid, self.parent):
                    pids.append(pid)
        return sorted(pids)

    def ask(self, action: str, timeout: float) -> dict[str, Any]:
        """Have every other registered live worker do ``action`` (`pending` hands it to them); wait up to
        ``timeout`` seconds for their answers: ``{"answers": {pid: answer}, "unanswered": [pid, ...]}``."""
        waiting = set(self.others())
        if not waiting:
            return {"answers": {}, "unanswered": []}
        request = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        with self._lock:
            self._handled.add(request)
        write_json(str(self.requests / request), {"action": action, "from": self.pid})
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
                    elif not (self.root / f"{pid}.worker").exists() or not _child_of(pid, self.parent):
                        waiting.discard(pid)  # left (shutting down) or gone
                if waiting:
                    time.sleep(TICK_SECONDS / 4)
        finally:
            with contextlib.suppress(OSError):
                (self.requests / request).unlink()
        if waiting:
            log.warning("workers %s did not answer %r within %.0f s", sorted(waiting), action, timeout)
        return {"answers": answers, "unanswered": sorted(waiting)}

    def pending(self) -> list[tuple[str, str]]:
        """The requests of other workers this one has not taken yet, oldest first: (request, action). Answers to
        requests their askers removed (given after the deadline) are deleted."""
        try:  # answers first: an answer whose request is gone after it was listed is one nobody waits for
            late = [p for p in self.answers.iterdir() if not _writing(p)]
            names = sorted(p.name for p in self.requests.iterdir() if not _writing(p))
        except FileNotFoundError:
            return []
        stale = time.time_ns() - int(STALE_SECONDS * 1e9)
        fresh = []
        for name in names:
            made = name.split("-", 1)[0]
            if made.isdigit() and int(made) < stale:
                with contextlib.suppress(OSError):
                    (self.requests / name).unlink()
            else:
                fresh.append(name)
        names = fresh
        found = []
        with self._lock:
            for name in names:
                if name in self._handled:
                    continue
                self._handled.add(name)
                with contextlib.suppress(OSError, ValueError, KeyError):
                    request = json.loads((self.requests / name).read_text())
                    if request["from"] != self.pid:
                        found.append((name, request["action"]))
            self._handled.intersection_update(names)  # forget requests their askers removed
        current = set(names)
        for answer in late:
            if answer.name.rsplit(".", 1)[0] not in current:
                with contextlib.suppress(OSError):
                    answer.unlink()
        return found

    def answer(self, request: str, answer: Any) -> None:
        """Give the asking worker this worker's answer to ``request``."""
        write_json(str(self.answers / f"{request}.{self.pid}"), answer)
