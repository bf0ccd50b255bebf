"""Entity feature benchmarks: the offline replay's speed (synthetic 590k rows, and IEEE-CIS when present), the
online path's latency against a local Redis, Redis memory per million entities, and the memory and speed of a
store rebuild from the prediction log.

    .venv/bin/python bench/bench_entity_features.py [--quick] [--only offline,online,memory,rebuild] [--out FILE]

Prints markdown tables (and writes them to --out). The baseline is measured in the same run: the sequential
online path (`OnlineFeatures` with the in-memory store, one row at a time) over the first rows of the same table.
Redis is a private ``redis-server`` on a free loopback port, without persistence, stopped at the end.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fmt, fmt_ratio, markdown_table, report_sections, run_measured, section_parser
from fraudops.data.synthetic import generate_transactions
from fraudops.entity_features import EntityFeatureConfig, OnlineFeatures, compute, frame_columns
from fraudops.online_store import MemoryStore, RedisStore, StoreLimits
from fraudops.schema import IEEE_CIS, SYNTHETIC

IEEE_COLUMNS = ["TransactionID", "TransactionDT", "TransactionAmt", "card1", "addr1", "DeviceInfo"]
MIB = 2**20


def synthetic(rows: int) -> pd.DataFrame:
    """Synthetic transactions at about IEEE-CIS density (590k rows over 182 days)."""
    return generate_transactions(rows, seed=1, days=max(1.0, 182 * rows / 590_540))


def as_rows(frame: pd.DataFrame, config: EntityFeatureConfig) -> list[dict[str, Any]]:
    """Rows as the scorer's validation hands them over (UTC nanoseconds for datetimes, None for missing)."""
    ts = config.spec.timestamp
    assert ts is not None
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    if config.time_kind == "datetime":
        for row in rows:
            row[ts] = pd.Timestamp(row[ts]).value
    return rows


# -- 1. offline replay ----------------------------------------------------------------------------------------
def offline_case(name: str, frame: pd.DataFrame, config: EntityFeatureConfig, repeats: int,
                 baseline_rows: int) -> list[object]:
    """Best of ``repeats`` offline runs, and the sequential online path over the first ``baseline_rows``."""
    best = (float("inf"), 0.0, 0.0)
    for _ in range(repeats):
        started = time.perf_counter()
        columns = frame_columns(frame, config)
        adapted = time.perf_counter()
        compute(columns, config)
        done = time.perf_counter()
        best = min(best, (done - started, adapted - started, done - adapted))
    total, adapter, kernel = best
    head = frame.sort_values(config.spec.timestamp, kind="stable").head(baseline_rows)
    rows = as_rows(head, config)
    online = OnlineFeatures(config, MemoryStore(StoreLimits(keep_seconds=config.longest_seconds)))
    started = time.perf_counter()
    for row in rows:
        online.process([row])
    baseline = len(rows) / (time.perf_counter() - started)
    rate = len(frame) / total
    shape = f"{len(config.columns)} × {len(config.windows) + 1}"
    return [name, fmt(len(frame)), shape, fmt(len(config.feature_names)), fmt(adapter, 2), fmt(kernel, 2),
            fmt(total, 2), fmt(int(rate)), fmt(int(baseline)), fmt_ratio(rate, baseline, 0)]


def bench_offline(quick: bool, data_dir: Path) -> str:
    rows, repeats, baseline_rows = (50_000, 1, 500) if quick else (590_540, 3, 3_000)
    cases = [offline_case("synthetic", synthetic(rows), EntityFeatureConfig.create(SYNTHETIC, "datetime"),
                          repeats, baseline_rows)]
    ieee = data_dir / "ieee_cis" / "ieee_cis_train.csv.gz"
    note = ""
    if ieee.exists():
        frame = pd.read_csv(ieee, usecols=IEEE_COLUMNS, nrows=rows if quick else None)
        cases.append(offline_case("IEEE-CIS", frame, EntityFeatureConfig.create(IEEE_CIS, "seconds"), repeats,
                                  baseline_rows))
    else:
        note = f"\n- IEEE-CIS skipped: {ieee} is absent.\n"
    headers = ["table", "rows", "entity columns × windows", "features", "adapter s", "kernel s", "total s",
               "rows/s", f"baseline rows/s (sequential online, first {baseline_rows:,} rows)", "speed-up"]
    return ("## 1. Offline replay (frame -> every row's features, point-in-time; best of "
            f"{repeats})\n\n" + markdown_table(headers, cases) + "\n" + note)


# -- a private Redis ------------------------------------------------------------------------------------------
@contextmanager
def redis_server() -> Iterator[str]:
    """A ``redis-server`` on a free loopback port without persistence; its URL."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("needs Debian's redis-server (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as home:
        server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", home], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(10)


# -- 2. online latency ----------------------------------------------------------------------------------------
def latencies(online: OnlineFeatures, rows: list[dict[str, Any]], batch: int, calls: int) -> np.ndarray:
    """Wall milliseconds of `OnlineFeatures.process` per call, over consecutive batches of ``rows``."""
    out = []
    for i in range(calls):
        chunk = rows[i * batch:(i + 1) * batch]
        started = time.perf_counter()
        online.process(chunk)
        out.append((time.perf_counter() - started) * 1000)
    return np.array(out)


def bench_online(quick: bool) -> str:
    preload, calls = (5_000, 100) if quick else (100_000, 500)
    config = EntityFeatureConfig.create(SYNTHETIC, "datetime")
    frame = synthetic(preload + calls * 101)
    rows = as_rows(frame, config)
    history, live = rows[:preload], rows[preload:]
    limits = StoreLimits(keep_seconds=config.longest_seconds)
    table = []
    # The input rows (a million objects) are long-lived, as a scorer's model and libraries are: without this a
    # full collection walking them (~80 ms) lands in one call in fifty, and p99 measured the benchmark's own heap.
    # The scorer freezes its long-lived objects the same way (`fraudops.serving.scorer`).
    gc.freeze()
    with redis_server() as url:
        stores = {"Redis (loopback)": RedisStore.from_url(url, limits, timeout_s=1.0),
                  "in-memory (reference)": MemoryStore(limits)}
        for name, store in stores.items():
            online = OnlineFeatures(config, store)
            for i in range(0, len(history), 500):
                online.record(history[i:i + 500])
            offset = 0
            for batch in (1, 100):
                n_calls = calls if batch == 1 else max(calls // 10, 10)
                ms = latencies(online, live[offset:], batch, n_calls)
                offset += batch * n_calls
                table.append([name, fmt(batch), fmt(n_calls), fmt(float(np.percentile(ms, 50)), 2),
                              fmt(float(np.percentile(ms, 99)), 2), fmt(float(ms.mean() / batch), 3)])
    headers = ["store", "batch rows", "calls", "p50 ms per call", "p99 ms per call", "mean ms per row"]
    gc.unfreeze()
    return (f"## 2. Online path (read, compute, record) after {preload:,} recorded transactions\n\n"
            + markdown_table(headers, table) + "\n\n- one process, sequential calls; Redis on the same machine.\n")


# -- 3. Redis memory ------------------------------------------------------------------------------------------
def bench_memory(quick: bool) -> str:
    import redis

    n = 20_000 if quick else 200_000
    config = EntityFeatureConfig.create(SYNTHETIC, "datetime")
    limits = StoreLimits(keep_seconds=config.longest_seconds)
    frame = synthetic(n)
    singles = frame.assign(device_id=[f"d{i}" for i in range(n)], ip_address=[f"i{i}" for i in range(n)],
                           user_id=[f"u{i}" for i in range(n)])
    cases = [("synthetic", frame), ("one transaction per entity", singles)]
    table = []
    with redis_server() as url:
        client = redis.Redis.from_url(url)
        for (name, data), how in itertools.product(cases, ("scored", "replayed")):
            client.flushall()
            before = int(client.info("memory")["used_memory"])
            online = OnlineFeatures(config, RedisStore.from_url(url, limits, timeout_s=10.0))
            rows = as_rows(data, config)
            step = online.process if how == "scored" else online.record
            for i in range(0, len(rows), 1000):
                step(rows[i:i + 1000])
            used = int(client.info("memory")["used_memory"]) - before
            entities = sum(data[col].nunique() for col in config.columns)
            per_million = used / entities * 1_000_000 / MIB
            table.append([f"{name}, {how}", fmt(len(data)), fmt(int(entities)), fmt(int(client.dbsize())),
                          fmt(used / MIB, 1), fmt(used / entities, 0), fmt(per_million, 0)])
        client.close()
    headers = ["load", "transactions", "entities", "keys", "used_memory MiB", "bytes per entity",
               "MiB per million entities"]
    return ("## 3. Redis memory (INFO used_memory after recording, minus before)\n\n"
            + markdown_table(headers, table)
            + "\n\n- per entity: its kept events, aggregates and accounts, plus its share of the transaction"
              " markers, kept for the longest window: scored traffic (batches of 1,000 read and recorded, as the"
              " scorer does) marks only the transactions whose events it keeps nowhere or folds early, a replay"
              " (`record`: a rebuild from the log, a seed) marks every transaction.\n")


# -- 4. store rebuild from the prediction log --------------------------------------------------------------------
def write_log(work: Path, rows: int, shuffled: bool) -> None:
    """A model (``work/home``) and a prediction log (``work/log``) of ``rows`` synthetic transactions scored by the
    real scorer in batches of 1,000 (frozen features: no store), in event-time order or shuffled (every log file
    then spans the whole window: late or backfilled traffic, the rebuild's worst case)."""
    from prometheus_client import CollectorRegistry

    from fraudops import steps
    from fraudops.predlog import LogWriter
    from fraudops.registry import Registry
    from fraudops.serving import ModelSource, Scorer, ScorerMetrics, ServingConfig
    from fraudops.training import TrainConfig

    registry = Registry(home=work / "home")
    generate_transactions(5000, seed=3).to_parquet(work / "train.parquet")
    tag = steps.train_to_directory(str(work / "train.parquet"), work / "model", None, TrainConfig(iterations=40),
                                   registry=registry)["tag"]
    if registry.champion() != tag:
        registry.promote(tag, reason="benchmark")
    traffic = generate_transactions(rows, seed=5, start="2026-02-01", days=7).drop(columns=["is_fraud"])
    if shuffled:
        traffic = traffic.sample(frac=1.0, random_state=7)
    requests = json.loads(traffic.to_json(orient="records", date_format="iso"))
    config = ServingConfig(prediction_log=str(work / "log"), poll_seconds=0, prediction_wal="off")
    scorer = Scorer(config, ModelSource(registry=registry), LogWriter(config.prediction_log, flush_seconds=3600,
                                                                      flush_rows=10_000),
                    ScorerMetrics(CollectorRegistry()))
    scorer.reload()
    for i in range(0, rows, 1000):
        scorer.score(requests[i:i + 1000])
    scorer.close()


def rebuild_child(work: str, how: str) -> None:
    """In a child process (its peak memory measured by the parent): ``rebuild`` replays the log at ``work`` with
    `rebuild_from_log` into a store that only counts what it is given (memory and speed of the rebuild itself, not
    of Redis), a ``redis://`` URL into that Redis; ``inputs`` only reads the window's inputs as one frame, as the
    rebuild did before it streamed them. Prints the rows as JSON."""
    from datetime import UTC, datetime, timedelta

    from fraudops.feature_store import DECIDED_ROLES, open_store, rebuild_from_log
    from fraudops.online_store import SeedResult
    from fraudops.predlog import read_predictions
    from fraudops.registry import Registry

    end = datetime.now(UTC) + timedelta(hours=1)
    start = end - timedelta(days=2)
    if how == "inputs":
        frame = read_predictions(f"{work}/log", start, end,
                                 columns=["role", "input", "request_id", "row", "purchase_time"])
        texts = frame[frame["role"].isin(DECIDED_ROLES)].sort_values("purchase_time", kind="stable")["input"].tolist()
        print(json.dumps({"rows": len(texts)}))
        return

    class CountingStore:
        namespace = "benchmark"
        limits = StoreLimits(keep_seconds=7 * 86_400)

        def seed(self, snapshot: Any, source: str) -> SeedResult:
            return SeedResult(False, source)

        def coverage(self) -> None:
            return None

        def take_unfindable(self) -> int:
            return 0

        def write(self, records: Any, findable_only: Any = None) -> int:
            return len(records)

        def mark_covered(self, since: Any, coverage: Any) -> bool:
            return True

    registry = Registry(home=Path(work) / "home")
    tag = registry.champion()
    assert tag is not None
    bundle = registry.load(tag)
    store = open_store(how, bundle) if how.startswith("redis://") else CountingStore()
    result = rebuild_from_log(store, bundle, tag, f"{work}/log", start, end)  # type: ignore[arg-type]
    print(json.dumps({"rows": result.recorded}))


def bench_rebuild(quick: bool) -> str:
    rows = 20_000 if quick else 1_200_000
    table = []
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}

    def child(work: Path, how: str) -> tuple[Any, int]:
        run = run_measured([sys.executable, "-c", "import sys; from bench.bench_entity_features import "
                            "rebuild_child; rebuild_child(sys.argv[1], sys.argv[2])", str(work), how],
                           env=env, cwd=repo).check()
        return run, json.loads(run.stdout.strip().splitlines()[-1])["rows"]

    with tempfile.TemporaryDirectory(prefix="bench-rebuild-") as tmp:
        for order in ("in event-time order", "shuffled"):
            work = Path(tmp) / order.split()[0]
            work.mkdir()
            write_log(work, rows, shuffled=order == "shuffled")
            base, base_rows = child(work, "inputs")
            stores = ["counting only", "redis-server (loopback)"] if order != "shuffled" else ["counting only"]
            for store in stores:
                if store == "counting only":
                    run, replayed = child(work, "rebuild")
                else:
                    with redis_server() as url:
                        run, replayed = child(work, url)
                assert base_rows == replayed == rows, (base_rows, replayed, rows)
                table.append([order, store, fmt(rows), fmt(run.wall_s, 1), fmt(rows / run.wall_s, 0),
                              fmt(run.peak_rss / MIB, 0), fmt(base.peak_rss / MIB, 0),
                              fmt_ratio(run.peak_rss, base.peak_rss)])
    headers = ["log", "store", "logged rows", "rebuild s", "rows/s", "rebuild peak RSS MiB",
               "baseline peak RSS MiB (the window's inputs read)", "rebuild / baseline"]
    return ("## 4. Store rebuild from the prediction log (`fraudops features rebuild`)\n\n"
            + markdown_table(headers, table)
            + "\n\n- each in a process of its own (peak RSS of the whole process, its libraries included); the log"
              " written by the scorer (frozen features) in batches of 1,000, 10,000 rows a file; the rebuild"
              " validates and replays every logged transaction into a store that only counts them, or into a"
              " private redis-server (the peak RSS is the rebuild's process, not Redis's); the baseline only"
              " reads the window's inputs as one frame, as the rebuild"
              " did before it read them file by file (2026-12-04).\n")


def main() -> None:
    args = section_parser(__doc__, ["offline", "online", "memory", "rebuild"], "entity_features.md").parse_args()
    builders = {"offline": lambda: bench_offline(args.quick, args.data_dir),
                "online": lambda: bench_online(args.quick), "memory": lambda: bench_memory(args.quick),
                "rebuild": lambda: bench_rebuild(args.quick)}
    report_sections("fraudops entity feature benchmark", ["fraudops", "numpy", "pandas", "redis"], args.quick,
                    builders, [s.strip() for s in args.only.split(",") if s.strip()], args.out)


if __name__ == "__main__":
    main()
