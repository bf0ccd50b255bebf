"""The cluster benchmark's client side, against a local HTTP server: its request bodies and its closed loop (the
cluster part runs on the cluster of `make kind-up`; see the README's Deploying section)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.bench_cluster import ROOT, Cluster, batches, closed_loop, kind_up_tools
from fraudops.schema import SYNTHETIC


def test_batches_are_new_transactions_of_the_requested_size() -> None:
    first, second = batches(3, 50, seed=1), batches(2, 50, seed=2)
    requests = [json.loads(body)["transactions"] for body in first + second]
    assert [len(rows) for rows in requests] == [50] * 5
    ids = [row["transaction_id"] for rows in requests for row in rows]
    assert len(set(ids)) == len(ids)  # no batch of another seed retries one of these
    assert set(requests[0][0]) >= {SYNTHETIC.timestamp, SYNTHETIC.amount, *SYNTHETIC.entities}
    assert "is_fraud" not in requests[0][0]
    assert requests[0][0][SYNTHETIC.timestamp].endswith("Z")


@pytest.fixture
def scorer() -> Iterator[tuple[str, list[int]]]:
    """A server that answers /score like the scorer; every third request flagged as a frozen-snapshot answer."""
    seen: list[int] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rows = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["transactions"]
            with lock:
                seen.append(len(rows))
                flagged = len(seen) % 3 == 0
            body = json.dumps({"results": [{"row": i} for i in range(len(rows))], "features_fallback": flagged})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_closed_loop_sends_every_batch_once_and_reports_flagged_answers(scorer: tuple[str, list[int]]) -> None:
    url, seen = scorer
    bodies = batches(6, 20, seed=3)
    wall, latencies, failures = closed_loop(url, bodies, in_flight=4)
    assert sorted(seen) == [20] * 6 and len(latencies) == 6
    assert 0 < max(latencies) <= wall
    assert failures == ["answered from the frozen snapshot"] * 2


def test_a_failing_kubectl_stops_the_run_naming_the_command(tmp_path) -> None:
    kubectl = tmp_path / "kubectl"
    kubectl.write_text("#!/bin/sh\necho 'error: no cluster here' >&2\nexit 3\n")
    kubectl.chmod(0o755)
    with pytest.raises(SystemExit, match=r"--kubeconfig /nowhere -n fraudops get pods failed \(3\): error: no cluster"):
        Cluster(str(kubectl), Path("/nowhere"), "fraudops").run("get", "pods")


def test_the_kubectl_and_kubeconfig_are_the_ones_the_cluster_scripts_use(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FRAUDOPS_CACHE", str(tmp_path))
    monkeypatch.delenv("KIND_KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBE_VERSION", raising=False)
    assert kind_up_tools() == ("kubectl", ROOT / ".kind" / "kubeconfig")  # nothing built here: the one on PATH
    built = tmp_path / "bin" / "kubernetes-v1.2.3" / "kubectl"
    built.parent.mkdir(parents=True)
    built.write_text("#!/bin/sh\n")
    built.chmod(0o755)
    monkeypatch.setenv("KUBE_VERSION", "v1.2.3")
    monkeypatch.setenv("KIND_KUBECONFIG", str(tmp_path / "kubeconfig"))
    assert kind_up_tools() == (str(built), tmp_path / "kubeconfig")
