"""Small helpers shared by the benchmarks: machine facts, timing, peak memory of a child process tree, and
markdown tables (printing and parsing them back)."""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import psutil

MIB = 2**20
GIB = 2**30


# -- machine and versions -----------------------------------------------------------------------------------
def cores() -> int:
    """CPUs this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine_info() -> dict[str, str]:
    """Facts about the machine a benchmark ran on."""
    mem = psutil.virtual_memory()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpus (nproc)": str(cores()),
        "cpu model": _cpu_model(),
        "RAM": f"{mem.total / GIB:.1f} GiB (available at start: {mem.available / GIB:.1f} GiB)",
        "load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in load),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of the given distributions (``missing`` when not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


# -- timing and memory --------------------------------------------------------------------------------------
@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """``with timer() as t: ...`` then ``t["s"]`` holds the elapsed wall seconds."""
    box = {"s": float("nan")}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - start


@dataclass
class ProcessResult:
    """A finished child process: exit code, wall time and memory high-water marks."""

    cmd: list[str]
    returncode: int
    wall_s: float
    peak_tree_rss: int
    """Largest sum of RSS over the child and all its descendants seen while polling (bytes)."""
    max_single_rss: int
    """Largest RSS any one process of the tree reached (bytes; its VmHWM high-water mark, read while polling)."""
    stdout: str
    stderr: str
    cpu_s: float = float("nan")
    """User + system CPU seconds of the child and its reaped descendants (wait4 rusage)."""

    @property
    def peak_rss(self) -> int:
        """Peak memory of the run: the polled tree sum, never below the exact single-process maximum."""
        return max(self.peak_tree_rss, self.max_single_rss)

    def check(self) -> ProcessResult:
        """Raise with the tail of stderr when the process failed."""
        if self.returncode != 0:
            tail = "\n".join((self.stderr or self.stdout).strip().splitlines()[-25:])
            raise RuntimeError(f"command failed with exit code {self.returncode}: {' '.join(self.cmd)}\n{tail}")
        return self


def _high_water(pid: int) -> int:
    """The process's own peak RSS (VmHWM, bytes) since it last exec'd; 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _sample_tree(proc: psutil.Process) -> tuple[int, int]:
    """(sum of RSS over the tree, largest per-process high-water mark in the tree) right now."""
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    total, high = 0, 0
    for member in members:
        try:
            rss = member.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        high = max(high, rss, _high_water(member.pid))
    return total, high


def run_measured(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 poll_s: float = 0.05, log_dir: str | Path | None = None) -> ProcessResult:
    """Run ``cmd`` to completion and measure wall time and peak memory of its whole process tree.

    Two measures, both from polling every ``poll_s`` with psutil and ``/proc``: the tree's summed RSS (may miss
    a spike shorter than the interval) and the largest per-process high-water mark (``VmHWM``, exact for every
    process still alive at a poll). The ``ru_maxrss`` of ``getrusage(RUSAGE_CHILDREN)``/``wait4`` is not used:
    on Linux a forked child's ``ru_maxrss`` starts from the *parent's* resident size, which is large here (the
    benchmark holds data frames), so it would overstate a child's peak; its CPU times are exact and reported.
    Output goes to files in ``log_dir`` (or a temporary directory) so that a chatty child cannot block on a full pipe.
    """
    import tempfile

    cmd = [str(c) for c in cmd]
    with tempfile.TemporaryDirectory(prefix="bench-out-") as tmp:
        logs = Path(log_dir or tmp)
        logs.mkdir(parents=True, exist_ok=True)
        out_path, err_path = logs / "stdout.txt", logs / "stderr.txt"
        with out_path.open("wb") as out_fh, err_path.open("wb") as err_fh:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=out_fh, stderr=err_fh, env=env, cwd=cwd)
            peak = {"tree": 0, "single": 0}
            done = threading.Event()

            def sample() -> None:
                try:
                    ps = psutil.Process(proc.pid)
                except psutil.Error:
                    return
                while not done.is_set():
                    tree, single = _sample_tree(ps)
                    peak["tree"], peak["single"] = max(peak["tree"], tree), max(peak["single"], single)
                    done.wait(poll_s)

            poller = threading.Thread(target=sample, daemon=True)
            poller.start()
            _, status, usage = os.wait4(proc.pid, 0)  # CPU times of the whole (reaped) tree
            wall = time.perf_counter() - start
            returncode = proc.returncode = os.waitstatus_to_exitcode(status)
            done.set()
            poller.join()
        return ProcessResult(cmd=cmd, returncode=returncode, wall_s=wall, peak_tree_rss=peak["tree"],
                             max_single_rss=peak["single"], stdout=out_path.read_text(errors="replace"),
                             stderr=err_path.read_text(errors="replace"), cpu_s=usage.ru_utime + usage.ru_stime)


# -- formatting ---------------------------------------------------------------------------------------------
def fmt(value: float | int | None, digits: int = 3) -> str:
    """A number for a table cell; ``—`` for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ")
    return f"{value:.{digits}f}"


def fmt_mib(n_bytes: float) -> str:
    """Bytes as MiB, no decimals."""
    return f"{n_bytes / MIB:.0f}"


def fmt_ratio(numerator: float, denominator: float, digits: int = 2) -> str:
    """``numerator / denominator`` as ``1.23×`` (``—`` when undefined)."""
    if not denominator or math.isnan(numerator) or math.isnan(denominator):
        return "—"
    return f"{numerator / denominator:.{digits}f}×"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned when a whole column parses as numbers)."""
    numeric = [all(_number(r[i]) is not None for r in rows) and rows for i in range(len(headers))]
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(text: object) -> float | None:
    s = str(text).strip().replace(" ", "").rstrip("×%")
    try:
        return float(s)
    except ValueError:
        return None


def parse_number(text: str) -> float | None:
    """The number in a cell written by `fmt`/`fmt_ratio` (``None`` for ``—`` and text)."""
    return _number(text)


def parse_markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in ``text`` as a list of rows keyed by header."""
    tables: list[list[dict[str, str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and set(lines[i + 1].replace("|", "").strip()) <= set("-: ") \
                and lines[i + 1].startswith("|"):
            headers = _split_row(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(headers, _split_row(lines[i]), strict=False)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def _split_row(line: str) -> list[str]:
    parts, cur, escaped = [], "", False
    for ch in line.strip().strip("|"):
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if ch == "|" and not escaped:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
        escaped = False
    parts.append(cur.strip())
    return parts


def report_sections(title: str, packages: Sequence[str], quick: bool, builders: dict[str, Callable[[], str]],
                    names: Sequence[str], out: Path) -> None:
    """Print a report's header (start, versions, machine) and each named section with its wall time as it
    finishes; then write the whole report to ``out``. An unknown name stops before anything runs."""
    unknown = [name for name in names if name not in builders]
    if unknown:
        raise SystemExit(f"unknown section {unknown[0]!r}; choose from {', '.join(builders)}")
    header = [f"# {title}", "",
              f"- started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {'quick' if quick else 'full'}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in package_versions(packages).items()),
              "- machine: " + "; ".join(f"{k}: {v}" for k, v in machine_info().items()), ""]
    parts = ["\n".join(header)]
    print(parts[0], flush=True)
    for name in names:
        start = time.perf_counter()
        text = builders[name]() + f"\n- section wall time: {time.perf_counter() - start:.0f} s\n"
        print(text, flush=True)
        parts.append(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))


def section_parser(doc: str | None, sections: Sequence[str], report: str) -> argparse.ArgumentParser:
    """The options of a benchmark made of sections: --quick, --only, --data-dir and --out (default
    ``bench/results/<report>``)."""
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", default=",".join(sections), help="comma-separated sections")
    parser.add_argument("--data-dir", type=Path, default=repo.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=repo / "bench" / "results" / report)
    return parser
