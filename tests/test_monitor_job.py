"""The drift job end to end: a real registered model, a real prediction log (LogWriter) with feedback, the
window and model filters, the label join, corrupt log files, the output layout, and the labelled export."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraudops.data.io import read_table
from fraudops.decisions import Bands
from fraudops.errors import ConfigError
from fraudops.monitoring.drift import DriftPolicy
from fraudops.monitoring.exporter import DriftCollector
from fraudops.monitoring.job import (
    export_labelled,
    labelled_window,
    latest_summaries,
    logged_bands,
    parse_window,
    run_drift_job,
)
from fraudops.predlog import FEEDBACK, PREDICTIONS, LogChunk, LogWriter
from fraudops.registry import REGISTRY_URL_ENV, Registry
from fraudops.steps import train_to_directory
from fraudops.training import TrainConfig
from fraudops.validation import validate

END = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=1)
START = END - WINDOW
OTHER_TAG = "fraud-detector:olderversion1"
POLICY = DriftPolicy(min_rows=100, min_labelled_rows=50)


@pytest.fixture(scope="module")
def model(tmp_path_factory, transactions):
    """A champion trained and registered in a temporary BentoML home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_DO_NOT_TRACK", "True")
        mp.delenv(REGISTRY_URL_ENV, raising=False)
        for name in ("FRAUDOPS_REVIEW_FACTOR", "FRAUDOPS_DECLINE_FACTOR"):
            mp.delenv(name, raising=False)
        root = tmp_path_factory.mktemp("model")
        data = root / "train.parquet"
        transactions(3000, seed=1).to_parquet(data, index=False)
        registry = Registry(home=root / "bentoml", remote="")
        result = train_to_directory(str(data), root / "out", None, TrainConfig(iterations=30, threads=2),
                                    registry=registry)
        assert result["gate"]["promote"] and registry.champion() == result["tag"]
        yield {"registry": registry, "tag": result["tag"], "bundle": registry.load(result["tag"]),
               "out": root / "out", "root": root}


@pytest.fixture(scope="module")
def live(model, transactions) -> dict:
    """900 new transactions from late February, with the champion's features, scores and decisions."""
    frame = transactions(900, seed=11, start="2026-02-20", days=8)
    frame["transaction_id"] = [f"live{i:05d}" for i in range(len(frame))]
    bundle = model["bundle"]
    features = bundle.features(frame)
    scores = bundle.score_features(features)
    return {"frame": frame, "features": features, "scores": scores,
            "decisions": Bands.around(bundle.threshold, 0.5, 1.0).decide(scores.tolist())}


def request_rows(live: dict, rows: slice) -> dict:
    """One scoring request of the rows ``rows`` of the live traffic, as the scorer logs it."""
    frame = live["frame"].iloc[rows].reset_index(drop=True)
    raw = frame.drop(columns=["is_fraud"])
    inputs = [{k: (v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in row.items()}
              for row in raw.to_dict("records")]
    return {"frame": frame, "features": live["features"].iloc[rows].reset_index(drop=True),
            "scores": live["scores"][rows], "decisions": live["decisions"][rows], "inputs": inputs,
            "request_id": uuid.uuid4().hex}


def prediction_chunk(request: dict, at: datetime, tag: str, drop: tuple[str, ...] = (),
                     bands: Bands | None = None) -> LogChunk:
    n = len(request["frame"])
    columns = {"row": np.arange(n, dtype="int32"), "score": request["scores"], "decision": request["decisions"],
               "transaction_id": request["frame"]["transaction_id"].tolist(),
               "purchase_time": request["frame"]["purchase_time"]}
    columns |= {name: request["features"][name].to_numpy() for name in request["features"].columns}
    for name in drop:
        columns.pop(name)
    shared = {"request_id": request["request_id"], "model_tag": tag}
    if bands is not None:
        shared |= {"review_threshold": bands.review, "decline_threshold": bands.decline}
    return LogChunk(PREDICTIONS, at, n, columns=columns, shared=shared,
                    json_columns={"input": request["inputs"]})


def feedback_chunk(request_id: str, rows: list[int], labels: list[bool], at: datetime) -> LogChunk:
    n = len(rows)
    return LogChunk(FEEDBACK, at, n, columns={
        "request_id": [request_id] * n, "row": np.array(rows, dtype="int32"), "transaction_id": [None] * n,
        "is_fraud": labels, "source": ["chargeback"] * n, "note": [None] * n,
        "observed_at": pd.to_datetime([at] * n, utc=True)})


def write_log(root: Path, chunks: list[LogChunk]) -> None:
    writer = LogWriter(str(root), flush_rows=10**9, flush_seconds=3600)
    for chunk in chunks:
        writer.append(chunk)
    assert writer.flush()
    writer.close()


@pytest.fixture
def traffic(model, live, tmp_path) -> dict:
    """A prediction log around the window [11:00, 12:00) with feedback for some of it.

    In the window for the champion: request A (300 rows, logged at 11:00 sharp) and B (300 rows, 11:40).
    Also logged: C (150 rows, another model, 11:20), D (50 rows, 10:59:59) and E (50 rows, 12:00 sharp).
    Labels: all of A (rows 0-9 first wrongly, then corrected), 150 of B, 100 of C, some for an unknown request.
    """
    tag = model["tag"]
    a, b, c, d, e = (request_rows(live, slice(lo, hi)) for lo, hi in ((0, 300), (300, 600), (600, 750),
                                                                        (750, 800), (800, 850)))
    truth = {r["request_id"]: r["frame"]["is_fraud"].astype(bool).tolist() for r in (a, b, c, d, e)}
    chunks = [prediction_chunk(a, START, tag), prediction_chunk(b, START + timedelta(minutes=40), tag),
              prediction_chunk(c, START + timedelta(minutes=20), OTHER_TAG),
              prediction_chunk(d, START - timedelta(seconds=1), tag), prediction_chunk(e, END, tag)]
    chunks += [
        feedback_chunk(a["request_id"], list(range(10)), [not x for x in truth[a["request_id"]][:10]],
                       END + timedelta(minutes=5)),
        feedback_chunk(a["request_id"], list(range(300)), truth[a["request_id"]], END + timedelta(minutes=10)),
        feedback_chunk(b["request_id"], list(range(150)), truth[b["request_id"]][:150], END + timedelta(hours=2)),
        feedback_chunk(c["request_id"], list(range(100)), truth[c["request_id"]][:100], END + timedelta(minutes=1)),
        feedback_chunk(uuid.uuid4().hex, [0, 1], [True, False], END + timedelta(minutes=1)),
    ]
    root = tmp_path / "log"
    write_log(root, chunks)
    return {"root": root, "tag": tag, "requests": {"a": a, "b": b, "c": c, "d": d, "e": e}, "truth": truth,
            "monitor": tmp_path / "monitor"}


def run(model, traffic, **kwargs) -> dict:
    options = {"window": WINDOW, "registry": model["registry"], "log_root": str(traffic["root"]),
               "monitor_root": str(traffic["monitor"]), "policy": POLICY, "now": END} | kwargs
    return run_drift_job(**options)


# -- parse_window -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("30s", timedelta(seconds=30)), ("15m", timedelta(minutes=15)), ("1h", timedelta(hours=1)),
    ("2d", timedelta(days=2)), (" 1.5h ", timedelta(minutes=90)),
])
def test_parse_window(text: str, expected: timedelta) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize("text", ["", "1", "h", "1w", "-1h", "1 hour", "1H", "1h30m", "one hour"])
def test_parse_window_rejects_other_text(text: str) -> None:
    with pytest.raises(ConfigError, match="is not a duration"):
        parse_window(text)


@pytest.mark.parametrize("text", ["36501d", "10000000d", "876001h"])
def test_parse_window_rejects_windows_beyond_a_century(text: str) -> None:
    with pytest.raises(ConfigError, match="is longer than 36500 days"):
        parse_window(text)


# -- decision bands -------------------------------------------------------------------------------------------
def test_logged_bands_are_the_ones_most_rows_were_decided_with() -> None:
    window = pd.DataFrame({"review_threshold": [0.2, 0.2, 0.3, None], "decline_threshold": [0.8, 0.8, 0.9, None]})
    assert logged_bands(window, 0.5) == Bands(review=0.2, decline=0.8)
    # a log from before the scorer recorded them: the default bands around the model's threshold
    assert logged_bands(window.drop(columns=["review_threshold"]), 0.5) == Bands.around(0.5)
    assert logged_bands(pd.DataFrame(), 0.5) == Bands(review=0.25, decline=0.5)


def test_drift_job_judges_decisions_with_the_bands_in_the_log_not_its_environment(model, live, tmp_path,
                                                                                   monkeypatch) -> None:
    # the scorer ran with wide bands; the drift job's pod has other (or no) factors in its environment
    bands = Bands(review=0.05, decline=0.9)
    request = request_rows(live, slice(0, 600))
    root = tmp_path / "log"
    write_log(root, [prediction_chunk(request, START + timedelta(minutes=5), model["tag"], bands=bands)])
    monkeypatch.setenv("FRAUDOPS_REVIEW_FACTOR", "0.9")
    monkeypatch.setenv("FRAUDOPS_DECLINE_FACTOR", "0.95")
    doc = run_drift_job(window=WINDOW, registry=model["registry"], log_root=str(root),
                        monitor_root=str(tmp_path / "monitor"), policy=POLICY, now=END)
    reference_scores = model["bundle"].reference["score"].tolist()
    expected = pd.Series(bands.decide(reference_scores)).value_counts(normalize=True)
    assert doc["reference_decision_rates"] == pytest.approx({k: float(v) for k, v in expected.items()})
    assert doc["reference_decision_rates"] != pytest.approx(
        {k: float(v) for k, v in pd.Series(Bands.around(model["bundle"].threshold, 0.9, 0.95).decide(
            reference_scores)).value_counts(normalize=True).items()})


def test_monitoring_does_not_import_the_scoring_service() -> None:
    code = ("import sys; import fraudops.monitoring.job, fraudops.monitoring.exporter, fraudops.monitoring.trigger, "
            "fraudops.monitoring.backends, fraudops.monitoring.drift; "
            "print(sorted(m for m in sys.modules if m.startswith('fraudops.serving')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


# -- the job ----------------------------------------------------------------------------------------------------
def test_drift_run_writes_summary_report_and_latest(model, traffic) -> None:
    doc = run(model, traffic)
    tag, monitor = traffic["tag"], traffic["monitor"]
    name, version = tag.split(":")
    assert doc["model"] == tag
    assert doc["rows"] == 600  # A and B: not C (other model), D (before) or E (at the end of the window)
    assert doc["labelled_rows"] == 450 and doc["corrupt_parts"] == 0
    assert doc["window"] == {"start": START.isoformat(), "end": END.isoformat(), "seconds": 3600.0}
    assert doc["run_id"].startswith("20260301T120000Z-")
    assert doc["verdict"] in {"ok", "drift", "degraded"}
    assert doc["reference_rows"] == len(model["bundle"].reference)
    assert set(doc["features"]) | set(doc["skipped_features"]) == set(model["bundle"].feature_names)
    assert doc["performance"] is not None and 0 <= doc["performance"]["pr_auc"] <= 1
    assert sum(doc["decision_rates"].values()) == pytest.approx(1.0)
    assert sum(doc["reference_decision_rates"].values()) == pytest.approx(1.0)

    run_dir = monitor / "runs" / name / version / doc["run_id"]
    assert doc["summary_json"] == str(run_dir / "summary.json")
    assert doc["report_html"] == str(run_dir / "report.html")
    assert json.loads((run_dir / "summary.json").read_text()) == doc
    assert "<html" in (run_dir / "report.html").read_text().lower()
    latest = monitor / "latest" / f"{name}__{version}.json"
    assert json.loads(latest.read_text()) == doc
    assert latest_summaries(str(monitor)) == [doc]

    # the exporter serves what the job wrote
    families = {f.name: f for f in DriftCollector(str(monitor)).collect()}
    assert [(s.labels, s.value) for s in families["fraudops_drift_rows"].samples] == [({"model": tag}, 600.0)]

    # a second run adds a run directory and replaces latest
    again = run(model, traffic)
    assert again["run_id"] != doc["run_id"]
    assert len(list((monitor / "runs" / name / version).iterdir())) == 2
    assert json.loads(latest.read_text())["run_id"] == again["run_id"]


def test_feedback_joins_on_request_id_and_row(traffic) -> None:
    frame = labelled_window(str(traffic["root"]), START, END, model_tag=traffic["tag"])
    assert len(frame) == 600 and set(frame["model_tag"]) == {traffic["tag"]}
    truth = {rid: labels for rid, labels in traffic["truth"].items()}
    labelled = frame[frame["label"].notna()]
    assert len(labelled) == 450
    for rid, row, label in zip(labelled["request_id"], labelled["row"], labelled["label"], strict=True):
        assert bool(label) == truth[rid][row], (rid, row)  # the later correction wins for rows 0-9 of A
    b = traffic["requests"]["b"]["request_id"]
    assert frame.loc[frame["request_id"] == b, "label"].notna().sum() == 150
    assert frame.attrs["corrupt_parts"] == 0
    # without the model filter, the other model's rows (and their labels) are in the window too
    everything = labelled_window(str(traffic["root"]), START, END)
    assert len(everything) == 750 and everything["label"].notna().sum() == 550


def test_feedback_arriving_after_the_cutoff_is_not_used(traffic) -> None:
    frame = labelled_window(str(traffic["root"]), START, END, model_tag=traffic["tag"],
                            feedback_until=END + timedelta(hours=1))
    assert frame["label"].notna().sum() == 300  # B's labels came two hours after the window


def test_window_filters_by_time(model, traffic) -> None:
    earlier = run(model, traffic, now=START, window=timedelta(minutes=30))  # [10:30, 11:00): only D
    assert earlier["rows"] == 50 and earlier["verdict"] == "insufficient_data"
    later = run(model, traffic, now=END + timedelta(hours=1))  # [12:00, 13:00): only E
    assert later["rows"] == 50
    wide = run(model, traffic, window=timedelta(hours=2), now=END + timedelta(seconds=1))  # everything
    assert wide["rows"] == 700


def test_empty_window_is_insufficient_data_without_a_report(model, traffic) -> None:
    doc = run(model, traffic, now=datetime(2026, 6, 1, tzinfo=UTC))
    assert doc["rows"] == 0 and doc["verdict"] == "insufficient_data"
    assert doc["report_html"] is None and Path(doc["summary_json"]).exists()
    assert not list(traffic["monitor"].rglob("report.html"))
    assert latest_summaries(str(traffic["monitor"]))[0]["run_id"] == doc["run_id"]


def test_corrupt_log_files_are_skipped_and_counted(model, traffic) -> None:
    hour = traffic["root"] / PREDICTIONS / "date=2026-03-01" / "hour=11"
    (hour / "part-20260301T113000-garbage.parquet").write_bytes(b"\x00not parquet at all" * 10)
    feedback_hour = next((traffic["root"] / FEEDBACK).rglob("hour=12"))
    (feedback_hour / "part-20260301T121500-garbage.parquet").write_bytes(b"PAR1 truncated")
    doc = run(model, traffic)
    assert doc["corrupt_parts"] == 2
    assert doc["rows"] == 600 and doc["labelled_rows"] == 450
    families = {f.name: f for f in DriftCollector(str(traffic["monitor"])).collect()}
    assert families["fraudops_drift_corrupt_log_parts"].samples[0].value == 2.0


def test_log_without_the_model_features_is_a_config_error(model, live, tmp_path) -> None:
    request = request_rows(live, slice(0, 200))
    root = tmp_path / "log"
    write_log(root, [prediction_chunk(request, START + timedelta(minutes=5), model["tag"],
                                      drop=("amount", "seconds_since_signup"))])
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['amount', 'seconds_since_signup'\]"):
        run_drift_job(window=WINDOW, registry=model["registry"], log_root=str(root),
                      monitor_root=str(tmp_path / "monitor"), policy=POLICY, now=END)
    assert not (tmp_path / "monitor").exists()


def test_model_without_reference_is_a_config_error(model, traffic) -> None:
    bare_dir = model["root"] / "bare-model"
    shutil.copytree(model["out"] / "model", bare_dir)
    (bare_dir / "reference.parquet").unlink(missing_ok=True)
    bare = model["registry"].register(bare_dir)
    with pytest.raises(ConfigError, match=f"model {bare} has no reference sample"):
        run(model, traffic, reference_tag=bare)


def test_export_labelled_writes_training_rows(model, traffic, tmp_path) -> None:
    output = tmp_path / "exports" / "recent.parquet"
    count = export_labelled(str(traffic["root"]), START, END, str(output), "is_fraud")
    assert count == 550  # labelled rows of A, B and C: every model's traffic is training data
    table = read_table(output)
    original = model["bundle"].state.spec
    inputs = set(traffic["requests"]["a"]["inputs"][0])
    assert set(table.columns) == inputs | {"is_fraud"} and len(table) == 550
    assert "score" not in table.columns and "label" not in table.columns
    truth = make_truth(traffic)
    assert table["is_fraud"].tolist() == [int(truth[t]) for t in table["transaction_id"]]
    result = validate(table, original)
    assert result.report.n_rejected == 0 and len(result.clean) == 550
    live_rows = pd.concat([r["frame"] for r in traffic["requests"].values()]).set_index("transaction_id")
    expected = live_rows.loc[table["transaction_id"], "amount"].to_numpy()
    np.testing.assert_allclose(table["amount"].to_numpy(dtype=float), expected)


def test_export_labelled_keeps_one_row_per_transaction_scored_twice(model, traffic, tmp_path) -> None:
    # ten transactions of request A scored again later in the window (a client's retry) and labelled otherwise
    a = traffic["requests"]["a"]
    again = {**{k: v[:10] for k, v in a.items() if k in ("frame", "features", "scores", "decisions", "inputs")},
             "request_id": uuid.uuid4().hex}
    flipped = [not x for x in traffic["truth"][a["request_id"]][:10]]
    write_log(traffic["root"], [prediction_chunk(again, START + timedelta(minutes=50), traffic["tag"]),
                                feedback_chunk(again["request_id"], list(range(10)), flipped,
                                               END + timedelta(minutes=20))])
    every = export_labelled(str(traffic["root"]), START, END, str(tmp_path / "every.parquet"), "is_fraud")
    once = export_labelled(str(traffic["root"]), START, END, str(tmp_path / "once.parquet"), "is_fraud",
                           "transaction_id")
    table = read_table(tmp_path / "once.parquet")
    assert every == 560 and once == len(table) == 550 and table["transaction_id"].is_unique
    ids = again["frame"]["transaction_id"].tolist()
    assert table.set_index("transaction_id").loc[ids, "is_fraud"].tolist() == [int(x) for x in flipped]


def test_export_labelled_with_no_labels_writes_an_empty_table(traffic, tmp_path) -> None:
    output = tmp_path / "none.parquet"
    assert export_labelled(str(traffic["root"]), START - timedelta(hours=3), START - timedelta(hours=2),
                           str(output), "is_fraud") == 0
    assert len(read_table(output)) == 0


def make_truth(traffic) -> dict[str, bool]:
    truth = {}
    for request in traffic["requests"].values():
        truth |= dict(zip(request["frame"]["transaction_id"], request["frame"]["is_fraud"].astype(bool),
                          strict=True))
    return truth


def test_export_labelled_leaves_out_a_rollouts_shadow_rows(model, traffic, tmp_path) -> None:
    # request A scored again by a challenger in shadow (and by the champion on a canary's rows): not training rows
    a = traffic["requests"]["a"]
    shadow = prediction_chunk(a, START + timedelta(minutes=7), "fraud-detector:challenger")
    shadow.shared.update(role="shadow", rollout_id="r1")
    write_log(traffic["root"], [shadow])
    count = export_labelled(str(traffic["root"]), START, END, str(tmp_path / "recent.parquet"), "is_fraud")
    assert count == 550 and read_table(tmp_path / "recent.parquet")["transaction_id"].is_unique

