"""Scoring throughput of a running release on Kubernetes (the cluster of `make kind-up`), with its feature store.

Sends batches of new synthetic transactions (customers, devices and IPs of a population new to the store, drawn
from a seed of the run; spread over 20 days) to the scorer Service, closed loop at each number of batches in
flight, and reports rows per second against one batch in flight, measured in the same run. Every scorer replica's
counters are read in its pod before and after (answers from the frozen snapshot, lost write races), and the
store's keys and memory at the end. Uses only the kubeconfig it is given (default: the one `make kind-up` wrote).

    .venv/bin/python bench/bench_cluster.py --url http://10.254.254.1:30080
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench.common` importable
    sys.path.insert(0, str(ROOT))

from bench.common import fmt, fmt_ratio, machine_info, markdown_table  # noqa: E402

COUNTERS = ("feature_store_requests", "feature_store_fallbacks", "feature_store_write_races")
# run in a scorer pod: the store's keys by kind and its memory, through the pod's own store URL
STORE_STATS = """
import collections, json, os, redis
r = redis.Redis.from_url(os.environ["FRAUDOPS_FEATURE_STORE_URL"])
kinds = collections.Counter(key.split(b":")[2].decode() for key in r.scan_iter(count=10000) if key.count(b":") >= 3)
print(json.dumps({"kinds": kinds, "used_memory": r.info("memory")["used_memory"]}))
"""


def kind_up_tools() -> tuple[str, Path]:
    """The kubectl and kubeconfig of the cluster `make kind-up` made, as its scripts find them (scripts/lib.sh: the
    kubectl built here, else the one on PATH; the kubeconfig it wrote)."""
    found = subprocess.run(["bash", "-c", 'source "$1" && printf "%s\\n%s" "$KUBECTL" "$KIND_KUBECONFIG"', "lib.sh",
                            str(ROOT / "scripts" / "lib.sh")], capture_output=True, text=True, check=True).stdout
    kubectl, kubeconfig = found.split("\n")
    return kubectl, Path(kubeconfig)


class Cluster:
    """kubectl against one kubeconfig and namespace, never the ambient ones."""

    def __init__(self, kubectl: str, kubeconfig: Path, namespace: str) -> None:
        self.base = [kubectl, "--kubeconfig", str(kubeconfig), "-n", namespace]

    def run(self, *args: str, timeout: float = 120) -> str:
        """kubectl's output; a failure stops the run with the command and kubectl's error."""
        result = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join([*self.base, *args])} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def scorers(self) -> list[str]:
        names = self.run("get", "pods", "-l", "app.kubernetes.io/component=scorer", "--field-selector",
                         "status.phase=Running", "-o", "jsonpath={.items[*].metadata.name}")
        return names.split()

    def python(self, pod: str, code: str) -> str:
        return self.run("exec", pod, "--", "python", "-c", code)

    def counters(self, pods: list[str]) -> dict[str, dict[str, float]]:
        """Each scorer pod's feature-store counters (its own /metrics, read inside the pod)."""
        from prometheus_client.parser import text_string_to_metric_families

        out = {}
        for pod in pods:
            text = self.python(pod, "import urllib.request; print(urllib.request.urlopen("
                                    "'http://127.0.0.1:3000/metrics', timeout=30).read().decode())")
            totals = dict.fromkeys(COUNTERS, 0.0)
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    name = sample.name.removeprefix("fraudops_scorer_").removesuffix("_total")
                    if name in totals and sample.name.endswith("_total"):
                        totals[name] += sample.value
            out[pod] = totals
        return out


def batches(count: int, size: int, seed: int) -> list[bytes]:
    """``count`` request bodies of ``size`` new transactions each, in time order, of the population of ``seed``."""
    from fraudops.data.synthetic import generate_transactions

    frame = generate_transactions(count * size, seed=seed, start="2026-04-01", days=20).drop(columns=["is_fraud"])
    for column in ("signup_time", "purchase_time"):
        frame[column] = frame[column].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = json.loads(frame.to_json(orient="records"))
    return [json.dumps({"transactions": rows[i:i + size]}).encode() for i in range(0, len(rows), size)]


def closed_loop(url: str, bodies: list[bytes], in_flight: int) -> tuple[float, list[float], list[str]]:
    """Send every body, ``in_flight`` at a time; wall seconds, per-batch seconds and failures."""
    pending = iter(bodies)
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def sender() -> None:
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    body = next(pending, None)
                if body is None:
                    return
                start = time.perf_counter()
                response = client.post(f"{url}/score", content=body, headers={"Content-Type": "application/json"})
                with lock:
                    latencies.append(time.perf_counter() - start)
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                    elif response.json().get("features_fallback"):
                        failures.append("answered from the frozen snapshot")

    start = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        for future in [pool.submit(sender) for _ in range(in_flight)]:
            future.result()
    return time.perf_counter() - start, latencies, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the scorer Service, e.g. http://10.254.254.1:30080")
    kubectl, kubeconfig = kind_up_tools()
    parser.add_argument("--kubeconfig", type=Path, default=kubeconfig)
    parser.add_argument("--kubectl", default=kubectl)
    parser.add_argument("--namespace", default="fraudops")
    parser.add_argument("--in-flight", default="1,2,4,8", help="comma-separated batches in flight")
    parser.add_argument("--batches", type=int, default=12, help="batches per number in flight")
    parser.add_argument("--size", type=int, default=1000, help="transactions per batch")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 1_000_000 * 100,
                        help="first seed of the run's populations (default: from the clock, new to the store)")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    cluster = Cluster(args.kubectl, args.kubeconfig, args.namespace)
    pods = cluster.scorers()
    if not pods:
        raise SystemExit(f"no running scorer pod in namespace {args.namespace!r}")
    facts = machine_info()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    levels = [int(n) for n in args.in_flight.split(",")]
    print(f"{len(pods)} scorer pods; warming up ...", flush=True)
    closed_loop(args.url, batches(2, args.size, seed=args.seed), 1)
    rows: list[list[Any]] = []
    base = float("nan")
    for seed, in_flight in enumerate(levels, start=args.seed + 1):
        bodies = batches(args.batches, args.size, seed)
        before = cluster.counters(pods)
        wall, latencies, failures = closed_loop(args.url, bodies, in_flight)
        after = cluster.counters(pods)
        grown = {name: sum(after[p][name] - before[p][name] for p in pods) for name in COUNTERS}
        rate = len(bodies) * args.size / wall
        base = rate if in_flight == levels[0] else base
        latencies.sort()
        rows.append([in_flight, len(bodies), fmt(rate, 0), fmt_ratio(rate, base),
                     fmt(latencies[len(latencies) // 2] * 1e3, 0), fmt(latencies[-1] * 1e3, 0),
                     *(int(grown[name]) for name in COUNTERS), len(failures)])
        print(rows[-1], *failures[:3], sep="\n  ", flush=True)
    stats = json.loads(cluster.python(pods[0], STORE_STATS))
    kinds = stats["kinds"]
    table = markdown_table(
        ["batches in flight", "batches", "rows/s", f"… / {levels[0]} in flight", "p50 a batch (ms)",
         "max a batch (ms)", "store calls", "from the frozen snapshot", "write races lost", "failed or flagged"],
        rows)
    report = "\n".join([
        f"# Cluster scoring, {len(pods)} scorer pods, batches of {args.size} (seeds from {args.seed})", "",
        f"- started {started}; machine: " + "; ".join(f"{k}: {v}" for k, v in facts.items()), "",
        table, "",
        f"- the store after the run: {kinds.get('e', 0):,} entity values, {kinds.get('t', 0):,} transaction markers "
        f"by id, {kinds.get('x', 0):,} by hash, {stats['used_memory'] / 2**20:.1f} MiB used", ""])
    print(report, flush=True)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
