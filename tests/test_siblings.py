"""Requests between the workers of one server (`fraudops.serving.siblings`), as two workers see them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fraudops.serving.siblings import Siblings


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _serve(worker: Siblings, stop: threading.Event, answer: Any) -> threading.Thread:
    """A sibling's watcher: takes requests a few times a second and answers each with ``answer(action)``."""
    def loop() -> None:
        while not stop.wait(0.05):
            for request, action in worker.pending():
                worker.answer(request, answer(action))
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_a_request_reaches_every_live_sibling_and_waits_for_its_answer(tmp_path: Path) -> None:
    asker, other = Siblings(tmp_path, pid=os.getpid()), Siblings(tmp_path, pid=os.getppid())
    asker.join()
    other.join()
    stop = threading.Event()
    _serve(other, stop, lambda action: {"did": action})
    try:
        assert asker.others() == [os.getppid()] and other.others() == [os.getpid()]
        assert asker.ask("reload", timeout=10) == {"answers": {os.getppid(): {"did": "reload"}}, "unanswered": []}
        assert asker.ask("reload", timeout=10)["answers"] == {os.getppid(): {"did": "reload"}}  # each request once
    finally:
        stop.set()
    assert not list((tmp_path / "requests").iterdir()) and not list((tmp_path / "answers").iterdir())
    assert other.pending() == []  # the asker's own requests are never handed to it


def test_dead_silent_and_leaving_siblings(tmp_path: Path) -> None:
    asker = Siblings(tmp_path, pid=os.getpid())
    Siblings(tmp_path, pid=_dead_pid()).join()  # a worker that was killed without leaving
    asker.join()
    assert asker.others() == []
    assert asker.ask("reload", timeout=5) == {"answers": {}, "unanswered": []}

    silent = Siblings(tmp_path, pid=os.getppid())  # alive, never answers
    silent.join()
    started = time.monotonic()
    assert asker.ask("reload", timeout=0.5) == {"answers": {}, "unanswered": [os.getppid()]}
    assert 0.5 <= time.monotonic() - started < 3

    threading.Timer(0.3, silent.leave).start()  # a worker shutting down is not waited for
    started = time.monotonic()
    assert asker.ask("reload", timeout=10) == {"answers": {}, "unanswered": []}
    assert time.monotonic() - started < 3
    asker.leave()
    assert not tmp_path.exists()  # the last one out removed the directory


def test_a_worker_that_joins_later_skips_the_requests_made_before_it(tmp_path: Path) -> None:
    asker = Siblings(tmp_path, pid=os.getpid())
    asker.join()
    Siblings._write(tmp_path / "requests" / "1-old", {"action": "reload", "from": os.getpid()})
    late = Siblings(tmp_path, pid=os.getppid())
    late.join()
    assert late.pending() == []
    Siblings._write(tmp_path / "requests" / "2-new", {"action": "reload", "from": os.getpid()})
    assert late.pending() == [("2-new", "reload")] and late.pending() == []
