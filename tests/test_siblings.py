"""Requests between the workers of one server (`fraudops.serving.siblings`): this process is the arbiter, its
child processes the workers (one `Siblings` per pid, driven by threads here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fraudops.serving.siblings import Siblings
from fraudops.storage import write_json


@pytest.fixture
def children() -> Iterator[Callable[[], int]]:
    """Start a child process (a stand-in worker of this "arbiter") and return its pid; all killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> int:
        procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        return procs[-1].pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def worker(home: Path, pid: int) -> Siblings:
    siblings = Siblings(home, pid=pid, parent=os.getpid())
    siblings.join()
    return siblings


def serve(siblings: Siblings, stop: threading.Event, answer: Callable[[str], Any]) -> None:
    """A worker's watcher: takes requests a few times a second and answers each with ``answer(action)``."""
    def loop() -> None:
        while not stop.wait(0.05):
            for request, action in siblings.pending():
                siblings.answer(request, answer(action))
    threading.Thread(target=loop, daemon=True).start()


def test_a_request_reaches_every_live_sibling_and_waits_for_its_answer(tmp_path: Path, children) -> None:
    a, b, c = (worker(tmp_path, children()) for _ in range(3))
    stop = threading.Event()
    serve(b, stop, lambda action: {"did": action, "pid": b.pid})
    serve(c, stop, lambda action: {"did": action, "pid": c.pid})
    try:
        assert a.others() == sorted([b.pid, c.pid])
        expected = {"answers": {b.pid: {"did": "reload", "pid": b.pid}, c.pid: {"did": "reload", "pid": c.pid}},
                    "unanswered": []}
        assert a.ask("reload", timeout=10) == expected
        assert a.ask("reload", timeout=10) == expected  # each request once, answered again
        assert a.pending() == []  # its own requests are never handed back to the asker
    finally:
        stop.set()
    assert not list(a.requests.iterdir()) and not list(a.answers.iterdir())


def test_dead_reused_silent_and_leaving_siblings(tmp_path: Path, children) -> None:
    a = worker(tmp_path, children())
    killed = children()
    worker(tmp_path, killed)
    subprocess.run(["kill", "-9", str(killed)], check=True)
    worker(tmp_path, os.getppid())  # a pid that is alive but not a child of this arbiter (a reused pid)
    time.sleep(0.2)
    assert a.others() == []
    assert a.ask("reload", timeout=5) == {"answers": {}, "unanswered": []}

    silent = worker(tmp_path, children())  # alive, never answers
    started = time.monotonic()
    assert a.ask("reload", timeout=0.5) == {"answers": {}, "unanswered": [silent.pid]}
    assert 0.5 <= time.monotonic() - started < 3

    threading.Timer(0.3, silent.leave).start()  # a worker shutting down is not waited for
    started = time.monotonic()
    assert a.ask("reload", timeout=10) == {"answers": {}, "unanswered": []}
    assert time.monotonic() - started < 3


def test_late_workers_late_answers_and_servers_that_are_gone(tmp_path: Path, children) -> None:
    a = worker(tmp_path, children())
    old, new, gone = (f"{time.time_ns()}-{name}" for name in ("old", "new", "gone"))  # as `ask` names them
    write_json(str(a.requests / old), {"action": "reload", "from": a.pid})
    late = worker(tmp_path, children())
    assert late.pending() == []  # a request made before it joined: it loaded the model after it
    write_json(str(a.requests / new), {"action": "reload", "from": a.pid})
    assert late.pending() == [(new, "reload")] and late.pending() == []

    late.answer(new, {"model_tag": "m"})
    late.answer(gone, {"model_tag": "m"})  # its asker gave up and removed the request
    a.pending()
    assert sorted(p.name for p in a.answers.iterdir()) == [f"{new}.{late.pid}"]

    dead = 2**22 + 7  # a pid that no process has
    host, namespace = a.server.rsplit("-", 1)
    ended = tmp_path / f"{a.server}-{dead}"  # the directory of an arbiter that no longer runs
    others = [tmp_path / f"{host}-{int(namespace) + 1}-{dead}",  # in another pid namespace (another container)
              tmp_path / f"{host}-2-{namespace}-{dead}"]  # of another host whose name starts with this one's
    for folder in (ended, *others):
        (folder / "requests").mkdir(parents=True)
    worker(tmp_path, children())
    assert not ended.exists() and a.root.exists() and all(folder.exists() for folder in others)
    assert json.loads((a.root / f"{a.pid}.worker").read_text()) == {"pid": a.pid}


def test_requests_of_askers_killed_while_waiting_are_removed(tmp_path: Path, children) -> None:
    a, b = worker(tmp_path, children()), worker(tmp_path, children())
    old = f"{time.time_ns() - 301 * 10**9}-killed"  # older than STALE_SECONDS: its asker never removed it
    write_json(str(a.requests / old), {"action": "reload", "from": a.pid})
    b.answer(old, {"model_tag": "m"})
    write_json(str(a.requests / f"{time.time_ns()}-waiting"), {"action": "reload", "from": a.pid})
    assert [action for _, action in b.pending()] == ["reload"]
    assert [p.name.split("-", 1)[1] for p in a.requests.iterdir()] == ["waiting"]
    b.pending()
    assert list(b.answers.iterdir()) == []  # the answer to the removed request went with it
