"""Monitoring benchmarks: drift job cost, loop latency (and retrains for an alert burst), and whether the
drift-triggered loop pays off on real data (IEEE-CIS replayed month by month).

    .venv/bin/python bench/bench_monitoring.py [--quick] [--only drift,loop,ieee] [--out FILE]

Prints markdown tables (and writes them to --out). Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fmt, fmt_mib, fmt_ratio, machine_info, markdown_table, package_versions, run_measured

REPO = Path(__file__).resolve().parent.parent
DAY = 86_400


# -- 1. drift job cost ----------------------------------------------------------------------------------------
def _drift_child(reference_rows: int, current_rows: int, max_current: int) -> None:
    """Child process: build reference/current feature frames, time compute_drift, print JSON."""
    from fraudops.data.synthetic import DriftConfig, generate_transactions
    from fraudops.monitoring.drift import DriftPolicy, compute_drift
    from fraudops.schema import SYNTHETIC
    from fraudops.training import TrainConfig, featurize, fit, split
    from fraudops.validation import validate

    base = validate(generate_transactions(60_000, seed=1, population_seed=1), SYNTHETIC)
    parts = split(base.clean, base.spec, TrainConfig())
    state, x_train, x_valid, _ = featurize(parts, base.spec, base.numeric)
    bundle = fit(state, x_train, parts.train[base.spec.target], x_valid, parts.valid[base.spec.target],
                 TrainConfig(iterations=100))

    def frame(rows: int, seed: int, drift: DriftConfig | None) -> pd.DataFrame:
        raw = generate_transactions(rows, seed=seed, start="2026-02-01", days=7, drift=drift, population_seed=1)
        x = bundle.features(raw)
        return x.assign(score=bundle.score_features(x), label=raw["is_fraud"].to_numpy())

    reference = frame(reference_rows, 2, None)
    current = frame(current_rows, 3, DriftConfig(amount_shift=0.3, category_mix=0.4))
    policy = DriftPolicy(max_current_rows=max_current, reference_rows=reference_rows)
    import evidently  # noqa: F401  (imported before timing: the job pays it once per process)

    start = time.perf_counter()
    summary, result = compute_drift(reference, current, bundle.feature_names, state.categorical_features, policy)
    elapsed = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        html_start = time.perf_counter()
        result.save_html(Path(tmp) / "r.html")
        html = time.perf_counter() - html_start
    print(json.dumps({"drift_s": elapsed, "html_s": html, "verdict": summary.verdict,
                      "features": len(summary.features)}))


def bench_drift(quick: bool) -> str:
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    reference = 20_000 if quick else 100_000
    rows = []
    baseline: float | None = None
    for current in sizes:
        policies = [(200_000, "default policy (samples above 200k)")]
        if current > 200_000:
            policies.append((current, "no sampling"))
        for max_current, label in policies:
            result = run_measured([sys.executable, __file__, "--drift-child", str(reference), str(current),
                                   str(max_current)], env={**os.environ}).check()
            data = json.loads(result.stdout.strip().splitlines()[-1])
            baseline = baseline or data["drift_s"]
            rows.append([f"{reference:,}", f"{current:,}", label, fmt(data["drift_s"], 1), fmt(data["html_s"], 1),
                         fmt_ratio(data["drift_s"], baseline), fmt_mib(result.peak_rss), data["features"],
                         data["verdict"], ("yes" if data["drift_s"] < 30 else "NO") if current == 100_000 else ""])
    note = ("Drift time is `compute_drift` alone (Evidently ValueDrift per feature + score, pinned wasserstein/"
            "jensenshannon); HTML is `save_html` of the same snapshot; peak RSS is the whole child process (data "
            "generation, a 60k-row model, feature frames and Evidently's import included). Ratio: against the "
            "smallest run. Aim: 100k x 100k under 30 s.")
    return "## 1. Drift job cost\n\n" + markdown_table(
        ["reference rows", "current rows", "policy", "drift s", "HTML s", "ratio", "peak RSS MiB", "features",
         "verdict", "aim (100k < 30 s)"], rows) + "\n\n" + note + "\n"


# -- 2. loop latency and alert burst ----------------------------------------------------------------------------
def bench_loop(quick: bool) -> str:
    import httpx

    from fraudops.demo import DemoSettings, Timeline, run_demo

    settings = DemoSettings(train_rows=10_000 if quick else 16_000, traffic_rows=2_000 if quick else 4_000,
                            drifted_rows=5_000 if quick else 8_000, iterations=150 if quick else 300)
    timeline = Timeline()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_demo(Path(tmp) / "loop", settings, timeline, finally_=lambda stack: _burst(stack, httpx))
    first = timeline.at("drifted traffic scored")
    rows = [[event, fmt(at - first, 1)] for at, event, _ in timeline.events
            if at >= first and event in ("drift job (drifted traffic)", "alert firing", "retraining launched",
                                         "retraining finished", "gate decided", "new champion serving")]
    burst = result["finally"]
    table = markdown_table(["event", "seconds after the drifted traffic"], rows)
    return ("## 2. Loop latency on this machine\n\n" + table + "\n\n"
            f"Gate: {result['gate']} ({result['gate_reason']}). Retraining is a full `kfp.local` pipeline run "
            f"({settings.train_rows:,} base rows + the labelled recent traffic, {settings.iterations} iterations); "
            "the drift job runs once right after the traffic (in a cluster it is a CronJob, so add up to its "
            "schedule). Prometheus and Alertmanager use 1 s intervals and the rules' windows shortened to seconds.\n\n"
            f"Alert burst: {burst['sent']} identical Alertmanager notifications posted concurrently to the trigger "
            f"after the loop: {burst['launched']} new retrain(s) launched; answers {burst['answers']}. Retrains "
            f"launched during the whole run: {len(result['runs'])} (must be 1).\n")


def _burst(stack: Any, httpx: Any) -> dict[str, Any]:
    """Post 50 identical firing notifications at once; count the retrains they start."""
    before = len(stack.trigger_runs())
    now = pd.Timestamp.now(tz="UTC").isoformat()
    alert = {"status": "firing", "labels": {"alertname": "FraudopsFeatureDrift", "model": "burst:test",
                                             "action": "retrain"}, "annotations": {"summary": "burst"},
             "startsAt": now, "fingerprint": "burst0000000001"}
    body = {"version": "4", "groupKey": '{}:{alertname="FraudopsFeatureDrift"}', "status": "firing",
            "receiver": "fraudops-retrain", "groupLabels": {}, "commonLabels": alert["labels"], "alerts": [alert]}
    answers: dict[str, int] = {}
    lock = threading.Lock()

    def post() -> None:
        response = httpx.post(stack.url("trigger") + "/alerts", json=body, timeout=30,
                              headers={"Authorization": f"Bearer {stack.token}"})
        with lock:
            key = f"{response.status_code} {response.json().get('action')}"
            answers[key] = answers.get(key, 0) + 1

    threads = [threading.Thread(target=post) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return {"sent": 50, "launched": len(stack.trigger_runs()) - before, "answers": answers}


# -- 3. IEEE-CIS: does the loop pay off? ------------------------------------------------------------------------
REPLAY_HEADERS = ["window", "rows", "fraud", "frozen PR-AUC", "frozen R@1%", "loop PR-AUC", "loop R@1%",
                  "every-window PR-AUC", "every-window R@1%", "drift verdict", "drifted features", "score drift",
                  "loop action"]


def replay_windows(data: pd.DataFrame, spec: Any, numeric: list[str], *, first_end: float, window_s: float,
                   n_windows: int, valid_s: float, config: Any, policy: Any) -> tuple[list[list[str]], int, int]:
    """Replay ``n_windows`` windows of ``window_s`` seconds after ``first_end`` as traffic.

    Each window is scored by (a) the model trained on everything before ``first_end``, (b) the model the
    drift-triggered loop keeps, (c) a model trained on everything before the window. After a window its labels
    arrive: the drift job compares the window with the loop model's reference (its last ``valid_s`` seconds of
    training data) and, on a drift or degraded verdict, the loop retrains on everything so far, used from the
    next window on. Fits are deterministic (fixed seed), so one model per cut-off is fitted and shared.
    Times are seconds on the timestamp axis (epoch seconds for datetime timestamps). Returns the table rows,
    the number of loop retrains and the number of distinct fits.
    """
    from fraudops.evaluation import fraud_metrics
    from fraudops.monitoring.drift import compute_drift
    from fraudops.training import Splits, featurize, fit

    stamps = data[spec.timestamp]
    # seconds on one axis whether the timestamp is a number of seconds (IEEE-CIS) or a datetime (synthetic)
    t = (stamps.astype("int64") / 1e9 if pd.api.types.is_datetime64_any_dtype(stamps) else stamps).to_numpy(float)
    fitted: dict[float, Any] = {}

    def train(until: float) -> Any:
        if until not in fitted:
            valid_start = until - valid_s
            parts = Splits(data[t < valid_start], data[(t >= valid_start) & (t < until)], data.iloc[:0])
            state, x_train, x_valid, _ = featurize(parts, spec, numeric)
            fitted[until] = fit(state, x_train, parts.train[spec.target], x_valid, parts.valid[spec.target], config)
        return fitted[until]

    def scored(bundle: Any, rows: pd.DataFrame) -> pd.DataFrame:
        x = bundle.features(rows)
        return x.assign(score=bundle.score_features(x), label=rows[spec.target].to_numpy())

    def reference(until: float) -> pd.DataFrame:
        return scored(train(until), data[(t >= until - valid_s) & (t < until)])

    frozen = train(first_end)
    loop_model, loop_reference = frozen, reference(first_end)
    rows, retrains = [], 0
    for i in range(n_windows):
        start, end = first_end + i * window_s, first_end + (i + 1) * window_s
        window = data[(t >= start) & (t < end)]
        if window.empty:
            continue
        results = {}
        for name, model in (("frozen", frozen), ("loop", loop_model), ("every", train(start))):
            s = scored(model, window)
            results[name] = fraud_metrics(s["label"].to_numpy(), s["score"].to_numpy(), model.threshold)
        summary, _ = compute_drift(loop_reference, scored(loop_model, window), loop_model.feature_names,
                                   loop_model.state.categorical_features, policy)
        row = [f"days {round((start - t.min()) / DAY)}-{round((end - t.min()) / DAY)}", f"{len(window):,}",
               f"{window[spec.target].mean():.2%}"]
        for name in ("frozen", "loop", "every"):
            row += [fmt(results[name]["pr_auc"]), fmt(results[name]["recall_at_1pct_fpr"])]
        row += [summary.verdict, f"{summary.share_drifted_features:.0%}", fmt(summary.score_drift)]
        if summary.verdict in ("drift", "degraded"):
            retrains += 1
            row.append("retrain")
            if i + 1 < n_windows:  # the retrained model only matters for the windows after this one
                loop_model, loop_reference = train(end), reference(end)
        else:
            row.append("keep")
        rows.append(row)
    return rows, retrains, len(fitted)


def bench_ieee(quick: bool, data_dir: Path) -> str:
    from fraudops.data.io import load_dataset
    from fraudops.monitoring.drift import DriftPolicy
    from fraudops.schema import IEEE_CIS
    from fraudops.training import TrainConfig
    from fraudops.validation import validate

    path = data_dir / "ieee_cis" / "ieee_cis_train.csv.gz"
    if not path.exists():
        return f"## 3. IEEE-CIS loop payoff\n\nskipped: {path} not found\n"
    frame, spec = load_dataset(path, IEEE_CIS)
    checked = validate(frame, spec)
    data, spec = checked.clean, checked.spec
    config = TrainConfig(iterations=150 if quick else 400, learning_rate=0.1)
    month = 30 * DAY
    rows, retrains, fits = replay_windows(
        data, spec, checked.numeric, first_end=data[spec.timestamp].min() + 2 * month, window_s=month,
        n_windows=2 if quick else 4, valid_s=15 * DAY, config=config, policy=DriftPolicy(min_labelled_rows=500))
    return ("## 3. IEEE-CIS: does the drift-triggered loop pay off?\n\n" + markdown_table(REPLAY_HEADERS, rows) +
            f"\n\nTrain on the first two months (last 15 days for early stopping), then replay 30-day windows. "
            f"Each window is scored by (a) the frozen first model, (b) the model the loop keeps — after each window "
            f"the drift job compares it with the loop model's reference (its last 15 training days) and, on a drift "
            f"or degraded verdict, retrains on everything labelled so far, used from the next window on — and "
            f"(c) a model retrained on all labelled data before every window (upper reference). Loop retrains: "
            f"{retrains}; distinct CatBoost fits: {fits} ({config.iterations} iterations, learning rate "
            f"{config.learning_rate}; a model for a cut-off is fitted once and shared by (b) and (c)).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", default="drift,loop,ieee", help="comma-separated sections")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "monitoring.md")
    parser.add_argument("--drift-child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drift_child:
        _drift_child(*args.drift_child)
        return
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    info = machine_info()
    header = ["# fraudops monitoring benchmark", "",
              f"- started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {'quick' if args.quick else 'full'}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in package_versions(
                  ["fraudops", "evidently", "catboost", "kfp", "bentoml", "pandas"]).items()),
              "- machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()), ""]
    parts = ["\n".join(header)]
    builders = {"drift": lambda: bench_drift(args.quick), "loop": lambda: bench_loop(args.quick),
                "ieee": lambda: bench_ieee(args.quick, args.data_dir)}
    for name in sections:
        start = time.perf_counter()
        text = builders[name]() + f"\n- section wall time: {time.perf_counter() - start:.0f} s\n"
        print(text, flush=True)
        parts.append(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(parts))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
