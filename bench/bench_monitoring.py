"""Monitoring benchmarks: drift job cost, loop latency (and retrains for an alert burst), and whether the
drift-triggered loop pays off on real data (IEEE-CIS replayed month by month), with each retrain rolled out in
stages (shadow, canary, promote or abort) as the loop now does.

    .venv/bin/python bench/bench_monitoring.py [--quick] [--only drift,loop,ieee] [--out FILE]

Prints markdown tables (and writes them to --out). Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fmt, fmt_mib, fmt_ratio, markdown_table, report_sections, run_measured, section_parser

if TYPE_CHECKING:
    from fraudops.decisions import Bands
    from fraudops.rollout import Decision, GroupStats, RolloutPolicy

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
    summary, result = compute_drift(reference, current, bundle.feature_names, state.categorical_features, policy,
                                    entity_features=state.entity_feature_names)
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


# -- 3. IEEE-CIS: does the loop pay off, and would the staged rollout let each retrain through? -----------------
REPLAY_HEADERS = ["window", "rows", "fraud", "frozen PR-AUC", "frozen R@1%", "at-once PR-AUC", "at-once R@1%",
                  "at-once verdict: action", "loop PR-AUC", "loop R@1%", "every-window PR-AUC", "every-window R@1%",
                  "drift verdict", "drifted features", "score drift", "loop action", "loop serves"]
ROLLOUT_HEADERS = ["retrain after", "challenger vs champion", "rolled out on", "outcome", "shadow rows",
                   "shadow decline champion / challenger", "shadow decline disagreement",
                   "canary decline champion / canary, same transactions (canary rows)",
                   "labelled PR-AUC champion / challenger",
                   "labelled recall champion / challenger", "reason", "loop then serves"]
SHADOW_SHARE = 0.10
"""Replayed shadow stage: challenger rows it needs, as a share of the rollout window's transactions."""
CANARY_SHARES = ((5.0, 0.012), (25.0, 0.05), (50.0, 0.10))
"""Replayed canary steps: (percent of customers, canary rows the step needs as a share of the window's
transactions). At their nominal shares the stages take about 10 + 24 + 20 + 20 = 74% of the window."""
JUDGEMENTS_PER_STAGE = 4
"""The replayed controller judges a stage at each quarter of its minimum rows, so a breach aborts early."""
REPLAY_T0 = datetime(2026, 1, 1, tzinfo=UTC)
"""Logging time of a replayed rollout's first rows; each judged segment is logged one minute after the last."""


def replay_policy(window_rows: int) -> RolloutPolicy:
    """The default rollout policy's limits with its stages scaled to a window of ``window_rows`` transactions:
    `SHADOW_SHARE` and `CANARY_SHARES` of them, no minimum minutes (the replay compresses event time), and
    limits judged from ``min(default min_judged_rows, smallest stage)`` rows."""
    from fraudops.rollout import CanaryStep, RolloutPolicy, StagePolicy

    shadow = StagePolicy(min_rows=max(1, round(SHADOW_SHARE * window_rows)), min_minutes=0)
    canary = tuple(CanaryStep(percent=percent, min_rows=max(1, round(share * window_rows)), min_minutes=0)
                   for percent, share in CANARY_SHARES)
    judged = min(RolloutPolicy().min_judged_rows, shadow.min_rows, *(s.min_rows for s in canary))
    return RolloutPolicy(shadow=shadow, canary=canary, min_judged_rows=judged)


@dataclass(frozen=True)
class ReplayModel:
    """One model's scores for a window's transactions (in time order) and the bands that decide them."""

    tag: str
    scores: np.ndarray
    bands: Bands


@dataclass(frozen=True)
class StageOutcome:
    """A replayed stage at its last judgement: rows and decline rates of the champion and the challenger."""

    name: str
    champion_rows: int
    challenger_rows: int
    champion_decline: float
    """Of the champion on the challenger's transactions (shadow: every one; canary: the canary's)."""
    challenger_decline: float
    disagreement: float
    """Share of the challenger's transactions that exactly one of the two models declines."""


@dataclass(frozen=True)
class RolloutReplay:
    """A staged rollout replayed on one window: how it ended and what each model did on the way."""

    action: str
    """``promote``, ``abort`` or ``unfinished`` (the window ended first: the champion stays)."""
    stage: str
    decision: Decision
    judgements: int
    stages: tuple[StageOutcome, ...]
    labelled: dict[str, GroupStats]
    """Champion and challenger over the whole rollout (PR-AUC and recall of their labelled rows)."""
    challenger_decides: np.ndarray
    """Per transaction: the challenger's decision is the one served (its canary share, and all after promotion)."""
    promoted_at: int | None
    """The first transaction after the promotion."""


def replay_rollout(log_root: str, rollout_id: str, keys: Sequence[Any], labels: np.ndarray,
                   champion: ReplayModel, challenger: ReplayModel, policy: RolloutPolicy) -> RolloutReplay:
    """Replay the staged rollout of ``challenger`` beside ``champion`` on a window's transactions, in time order.

    The rows each model would have logged go to a prediction log at ``log_root``: in shadow, both models' rows
    for every transaction (same request id); in each canary step, the canary's rows for the customers whose
    `bucket` of ``keys`` falls below the step's percent and the champion's for the others, plus the champion's
    scores of the canary's transactions (shadow rows of its tag), which the canary is judged against. Each row is
    decided by its model's own bands; each transaction's label is logged as feedback at once (an offline replay: in
    production chargebacks take weeks). `decide` judges each stage `JUDGEMENTS_PER_STAGE` times as its rows come
    in, aborting on the first breach; a stage ends when it has its rows and `decide` advances or promotes.
    """
    from fraudops.decisions import DECLINE_COLUMN, REVIEW_COLUMN
    from fraudops.predlog import FEEDBACK, PREDICTIONS, LogChunk, LogWriter
    from fraudops.registry import Rollout
    from fraudops.rollout import CANARY, CHAMPION, SHADOW, Decision, compare, decide, stage_name
    from fraudops.serving.challenger import bucket

    if champion.tag == challenger.tag:
        raise ValueError(f"champion and challenger need distinct tags, both are {champion.tag}")
    n = len(labels)
    place = np.array([bucket(rollout_id, key) if key is not None else np.inf for key in keys])
    decided = {m.tag: np.asarray(m.bands.decide(m.scores.tolist()), dtype=object) for m in (champion, challenger)}
    request_ids = np.array([f"{rollout_id}-{i}" for i in range(n)], dtype=object)
    writer = LogWriter(log_root, flush_rows=10**9, flush_seconds=3600, max_pending_rows=10**9,
                       spill_dir=Path(log_root) / "_spill")

    def log(model: ReplayModel, role: str, rows: np.ndarray, at: datetime) -> None:
        if len(rows):
            writer.append(LogChunk(PREDICTIONS, at, len(rows), columns={
                "request_id": request_ids[rows].tolist(), "row": np.zeros(len(rows), "int32"),
                "score": np.asarray(model.scores[rows], "float64"), "decision": decided[model.tag][rows].tolist()},
                shared={"model_tag": model.tag, "role": role, "rollout_id": rollout_id,
                        REVIEW_COLUMN: model.bands.review, DECLINE_COLUMN: model.bands.decline}))

    served = np.zeros(n, bool)
    stages = [(SHADOW, 0.0, policy.shadow.min_rows), *((CANARY, s.percent, s.min_rows) for s in policy.canary)]
    outcomes: list[StageOutcome] = []
    pos = minute = judgements = 0
    current = stage_name(SHADOW, 0.0)
    action, decision, report = "unfinished", None, None
    try:
        for mode, percent, need in stages:
            name = current = stage_name(mode, percent)
            if pos >= n:
                decision = Decision("hold", f"{name}: the window ended before the stage began")
                break
            rollout = Rollout(rollout_id, challenger.tag, champion.tag, mode, percent, REPLAY_T0.isoformat(),
                              (REPLAY_T0 + timedelta(minutes=minute)).isoformat(), "replay",
                              "retrained after a drift verdict")
            by_challenger = np.ones(n, bool) if mode == SHADOW else place < percent
            seen = np.cumsum(by_challenger[pos:])  # the stage's challenger rows after each transaction
            begin = pos
            for j in range(1, JUDGEMENTS_PER_STAGE + 1):
                reach = int(np.searchsorted(seen, math.ceil(need * j / JUDGEMENTS_PER_STAGE)))
                stop = begin + reach + 1 if reach < len(seen) else n
                segment = np.arange(pos, stop)
                at = REPLAY_T0 + timedelta(minutes=minute)
                minute += 1
                mine = segment[by_challenger[segment]]
                log(champion, CHAMPION, segment if mode == SHADOW else segment[~by_challenger[segment]], at)
                log(challenger, mode, mine, at)
                if mode == CANARY:  # the champion scores the canary's transactions too, as the scorer does
                    log(champion, SHADOW, mine, at)
                if mode == CANARY:
                    served[mine] = True
                if len(segment):
                    writer.append(LogChunk(FEEDBACK, at, len(segment), columns={
                        "request_id": request_ids[segment].tolist(), "row": np.zeros(len(segment), "int32"),
                        "is_fraud": np.asarray(labels[segment], bool), "source": ["replay"] * len(segment)}))
                if not writer.flush():
                    raise RuntimeError(f"cannot write the replay's prediction log at {log_root}")
                pos, now = stop, at + timedelta(minutes=1)
                report = compare(log_root, rollout, now, score_method=policy.score_method)
                decision = decide(report, policy, rollout, now)
                judgements += 1
                if decision.action == "abort" or pos >= n:
                    break
            pairing = report.stage.paired.get(mode)  # both models on the same transactions
            mine_stats = report.stage.groups.get(mode)
            outcomes.append(StageOutcome(
                name, report.stage.rows(CHAMPION), mine_stats.rows if mine_stats else 0,
                pairing.champion.decline_rate if pairing else math.nan,
                pairing.challenger.decline_rate if pairing else math.nan,
                pairing.decline_disagreement if pairing else math.nan))
            if decision.action in ("abort", "promote"):
                action = decision.action
                break
            if decision.action == "hold":  # the window ended before the stage had its rows
                break
    finally:
        writer.close()
    promoted_at = pos if action == "promote" else None
    if promoted_at is not None:
        served[promoted_at:] = True
    labelled = {}
    if report is not None:
        labelled = {k: v for k, v in (("champion", report.whole.groups.get(CHAMPION)),
                                      ("challenger", report.whole.challenger())) if v is not None}
    assert decision is not None
    return RolloutReplay(action, current, decision, judgements, tuple(outcomes), labelled, served, promoted_at)


@dataclass
class Replay:
    """What `replay_windows` measured: the windows' table rows, the rollout table's rows, and counts."""

    rows: list[list[str]]
    rollouts: list[list[str]]
    retrains: int
    """Of the loop that promotes at once."""
    staged_retrains: int
    """Of the loop that rolls each retrain out (the ``loop`` columns)."""
    fits: int
    outcomes: list[RolloutReplay] = field(default_factory=list)


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.1%}"


def _customer_keys(frame: pd.DataFrame, spec: Any) -> list[Any]:
    """The scorer's canary key of each transaction (the account, else the first entity, else the transaction
    id), as a request would carry it: integral floats as ints, missing values as None."""
    column = spec.account or (spec.entities[0] if spec.entities else None) or spec.id_column
    if column is None or column not in frame:
        return [None] * len(frame)
    return [None if pd.isna(v) else int(v) if isinstance(v, float) and v.is_integer() else v
            for v in frame[column].tolist()]


def _rollout_row(after: str, on: str, challenger: str, champion: str, replay: RolloutReplay) -> list[str]:
    """One row of the rollout table."""
    shadow = replay.stages[0] if replay.stages else None
    canary = " · ".join(f"{s.name.removeprefix('canary ')}: {_pct(s.champion_decline)} / "
                        f"{_pct(s.challenger_decline)} ({s.challenger_rows:,})" for s in replay.stages[1:]) or "—"
    outcome = {"promote": f"promoted after {replay.stage}", "abort": f"aborted in {replay.stage}",
               "unfinished": f"unfinished in {replay.stage} (window ended)"}[replay.action]
    if replay.action == "promote":
        pending = sorted({c.name for c in replay.decision.checks if c.status == "pending"})
        reason = (f"no limit broke in {replay.judgements} judgements"
                  + (f" ({', '.join(pending)} still pending)" if pending else ""))
    else:
        reason = replay.decision.reason
    chal, champ = replay.labelled.get("challenger"), replay.labelled.get("champion")
    pr_auc = recall = "—"
    if chal is not None and champ is not None:
        pr_auc = f"{fmt(champ.pr_auc)} / {fmt(chal.pr_auc)} ({champ.frauds:,} / {chal.frauds:,} frauds)"
        recall = f"{_pct(champ.recall)} / {_pct(chal.recall)}"
    return [after, f"{challenger} vs {champion}", on, outcome, f"{shadow.challenger_rows:,}" if shadow else "—",
            f"{_pct(shadow.champion_decline)} / {_pct(shadow.challenger_decline)}" if shadow else "—",
            _pct(shadow.disagreement) if shadow else "—", canary, pr_auc, recall, reason,
            challenger if replay.action == "promote" else f"{champion} (champion stays)"]


def replay_windows(data: pd.DataFrame, spec: Any, numeric: list[str], *, first_end: float, window_s: float,
                   n_windows: int, valid_s: float, config: Any, policy: Any,
                   rollout_policy: Callable[[int], RolloutPolicy] = replay_policy) -> Replay:
    """Replay ``n_windows`` windows of ``window_s`` seconds after ``first_end`` as traffic.

    Each window is scored by (a) the model trained on everything before ``first_end``, (b) the model of a
    drift-triggered loop that promotes each retrain at once, (c) the model of the loop as it now runs, rolling
    each retrain out in stages, (d) a model trained on everything before the window. After a window its labels
    arrive: each loop's drift job compares the window with its model's reference (the last ``valid_s`` seconds of
    its training data) and, on a drift or degraded verdict, the loop retrains on everything so far. Loop (b)
    serves the retrained model from the next window on. Loop (c) rolls it out on the next window with
    `replay_rollout` (policy ``rollout_policy(rows of that window)``, logs in a temporary directory): its column
    scores each transaction with the model whose decision was served, and the challenger becomes its model only
    when promoted (its drift job then judges the window with the model serving at the window's end). Fits are
    deterministic (fixed seed), so one model per cut-off is fitted and shared. Times are seconds on the timestamp
    axis (epoch seconds for datetime timestamps).
    """
    from fraudops.decisions import Bands
    from fraudops.evaluation import fraud_metrics
    from fraudops.monitoring.drift import compute_drift
    from fraudops.training import Splits, featurize, fit

    stamps = data[spec.timestamp]
    # seconds on one axis whether the timestamp is a number of seconds (IEEE-CIS) or a datetime (synthetic)
    t = (stamps.astype("int64") / 1e9 if pd.api.types.is_datetime64_any_dtype(stamps) else stamps).to_numpy(float)
    t0 = t.min()
    fitted: dict[float, Any] = {}
    scores: dict[tuple[float, int], pd.DataFrame] = {}
    references: dict[float, pd.DataFrame] = {}
    drifts: dict[tuple[float, int], Any] = {}

    def train(until: float) -> Any:
        if until not in fitted:
            valid_start = until - valid_s
            parts = Splits(data[t < valid_start], data[(t >= valid_start) & (t < until)], data.iloc[:0])
            state, x_train, x_valid, _ = featurize(parts, spec, numeric)
            fitted[until] = fit(state, x_train, parts.train[spec.target], x_valid, parts.valid[spec.target], config)
        return fitted[until]

    def scored(bundle: Any, rows: pd.DataFrame) -> pd.DataFrame:
        # the features a scorer with the online store computes: the stream up to these rows replayed in event time
        x = bundle.state.training_features(data[t <= t[data.index.get_indexer(rows.index)].max()]).loc[rows.index]
        return x.assign(score=bundle.score_features(x), label=rows[spec.target].to_numpy())

    def window_scores(until: float, i: int, window: pd.DataFrame) -> pd.DataFrame:
        if (until, i) not in scores:
            scores[until, i] = scored(train(until), window)
        return scores[until, i]

    def drift(until: float, i: int, window: pd.DataFrame) -> Any:
        if (until, i) not in drifts:
            if until not in references:
                references[until] = scored(train(until), data[(t >= until - valid_s) & (t < until)])
            model = train(until)
            drifts[until, i], _ = compute_drift(references[until], window_scores(until, i, window),
                                                model.feature_names, model.state.categorical_features, policy,
                                                entity_features=model.state.entity_feature_names)
        return drifts[until, i]

    def metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> list[str]:
        result = fraud_metrics(y, score, threshold)
        return [fmt(result["pr_auc"]), fmt(result["recall_at_1pct_fpr"])]

    def name(until: float) -> str:
        return f"d{round((until - t0) / DAY)}"

    def replay_model(until: float, i: int, window: pd.DataFrame) -> ReplayModel:
        return ReplayModel(f"replay:{name(until)}", window_scores(until, i, window)["score"].to_numpy(),
                           Bands.around(train(until).threshold))

    train(first_end)
    at_once = staged = first_end
    pending: tuple[float, str] | None = None  # the staged loop's challenger and the window it was retrained after
    result = Replay([], [], 0, 0, 0)
    for i in range(n_windows):
        start, end = first_end + i * window_s, first_end + (i + 1) * window_s
        inside = (t >= start) & (t < end)
        window = data[inside].iloc[np.argsort(t[inside], kind="stable")]
        if window.empty:
            continue
        label = f"days {round((start - t0) / DAY)}-{round((end - t0) / DAY)}"
        y = window[spec.target].to_numpy()
        row = [label, f"{len(window):,}", f"{y.mean():.2%}"]
        row += metrics(y, window_scores(first_end, i, window)["score"].to_numpy(), train(first_end).threshold)
        # (b) promote at once
        row += metrics(y, window_scores(at_once, i, window)["score"].to_numpy(), train(at_once).threshold)
        verdict = drift(at_once, i, window).verdict
        retrain = verdict in ("drift", "degraded")
        row.append(f"{verdict}: {'retrain' if retrain else 'keep'}")
        if retrain:
            result.retrains += 1
            if i + 1 < n_windows:  # the retrained model only matters for the windows after this one
                at_once = end
        # (c) staged rollout
        champion = replay_model(staged, i, window)
        served, serves = champion.scores, name(staged)
        if pending is not None:
            until, after = pending
            challenger = replay_model(until, i, window)
            with tempfile.TemporaryDirectory() as tmp:
                replay = replay_rollout(tmp, f"replay-{i}", _customer_keys(window, spec), y, champion, challenger,
                                        rollout_policy(len(window)))
            served = np.where(replay.challenger_decides, challenger.scores, champion.scores)
            result.outcomes.append(replay)
            result.rollouts.append(_rollout_row(after, label, name(until), name(staged), replay))
            if replay.action == "promote":
                serves = f"{name(staged)} → {name(until)} (promoted at {replay.promoted_at / len(window):.0%})"
                staged = until
            else:
                ended = "unfinished" if replay.action == "unfinished" else f"aborted in {replay.stage}"
                serves = f"{name(staged)} ({name(until)} {ended})"
            pending = None
        row += metrics(y, served, train(staged).threshold)
        row += metrics(y, window_scores(start, i, window)["score"].to_numpy(), train(start).threshold)
        summary = drift(staged, i, window)
        row += [summary.verdict, f"{summary.share_drifted_features:.0%}", fmt(summary.score_drift)]
        if summary.verdict in ("drift", "degraded"):
            result.staged_retrains += 1
            if i + 1 < n_windows:
                pending = (end, label)
                row.append("retrain, roll out")
            else:
                row.append("retrain (no window after)")
                result.rollouts.append([label, f"{name(end)} vs {name(staged)}", "—", "not replayed: no window "
                                        "after it", *["—"] * (len(ROLLOUT_HEADERS) - 4)])
        else:
            row.append("keep")
        row.append(serves)
        result.rows.append(row)
    result.fits = len(fitted)
    return result


def bench_ieee(quick: bool, data_dir: Path) -> str:
    from fraudops.data.io import load_dataset
    from fraudops.monitoring.drift import DriftPolicy
    from fraudops.rollout import RolloutPolicy
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
    replay = replay_windows(
        data, spec, checked.numeric, first_end=data[spec.timestamp].min() + 2 * month, window_s=month,
        n_windows=2 if quick else 4, valid_s=15 * DAY, config=config, policy=DriftPolicy(min_labelled_rows=500))
    limits = RolloutPolicy()
    example = replay_policy(90_000)
    return ("## 3. IEEE-CIS: does the drift-triggered loop pay off, and would the staged rollout let it?\n\n"
            + markdown_table(REPLAY_HEADERS, replay.rows) +
            "\n\nTrain on the first two months (last 15 days for early stopping), then replay 30-day windows. "
            "Models are named by the day their training data ends (`d60`: the first model). Each window is scored "
            "by (a) the frozen first model; (b) *at-once*: the loop as it was, which after each window runs the "
            "drift job (the window against its model's reference, the model's last 15 training days) and, on a "
            "drift or degraded verdict, retrains on everything labelled so far and serves the new model from the "
            "next window on; (c) *loop*: the loop as it runs now, which rolls each retrain out on the next window "
            "(shadow, canary, then promote or abort; table below) — its columns score each transaction with the "
            "model whose decision was served (the champion, the canary for its share, the challenger after a "
            "promotion), the challenger becomes its model only when promoted, and its drift verdict is that of "
            "the model serving at the window's end; (d) a model retrained on all labelled data before every window "
            f"(upper reference). Retrains: at-once {replay.retrains}, loop {replay.staged_retrains}; distinct "
            f"CatBoost fits: {replay.fits} ({config.iterations} iterations, learning rate {config.learning_rate}; a "
            "model for a cut-off is fitted once and shared).\n\n"
            "### Staged rollout of each loop retrain\n\n"
            + (markdown_table(ROLLOUT_HEADERS, replay.rollouts) if replay.rollouts else
               "No loop retrain in these windows: nothing to roll out.") +
            "\n\nEach retrain of the loop, replayed through `fraudops.rollout`: the rows the scorer would have "
            "logged (shadow rows for every transaction, then canary rows for the customers whose "
            "`bucket(rollout_id, card1)` falls below the step's percent, the champion's rows for the others, and "
            "the champion's scores of the canary's transactions as shadow rows, as the scorer logs them; each "
            "model deciding with its own `Bands.around(threshold)`, review x0.5, decline x1.0) go to a prediction "
            "log in a temporary directory, and `compare` + `decide` judge each stage four times as its rows come "
            "in, in time order, from the start of the window after the retrain. Labels: the window's own labels, "
            "logged as feedback with the rows — an offline replay; in production chargebacks take weeks, so the "
            "labelled limits would judge later. Decline rates are those of the stage's rows at its last "
            "judgement, both models on the same transactions (canary: the champion's scores of the canary's "
            "transactions against the canary's); "
            "PR-AUC and recall (at each model's decline threshold) are over the labelled rows of the whole "
            "rollout. An aborted retrain leaves the champion serving; the loop retrains again after a later "
            "drift verdict.\n\n"
            f"Policy (`replay_policy`): the default limits — decline rate +{limits.max_decline_rate_increase * 100:g} "
            f"pp, review rate +{limits.max_review_rate_increase * 100:g} pp, disagreement "
            f"{limits.max_disagreement:.0%}, score distance {limits.max_score_distance:g} ({limits.score_method}), "
            f"PR-AUC -{limits.max_pr_auc_drop:.0%} (relative) and recall -{limits.max_recall_drop * 100:g} pp once "
            f"each model has {limits.min_labelled_frauds} labelled frauds; latency not judged (no serving here: "
            "see the serving benchmark) — with the stages scaled to the rollout window: shadow until "
            f"{SHADOW_SHARE:.0%} of the window's transactions, canary "
            + " / ".join(f"{p:g}%" for p, _ in CANARY_SHARES) + " of customers until "
            + " / ".join(f"{s:.1%}" for _, s in CANARY_SHARES) + " of them are canary rows, `min_minutes` 0 "
            "(event time is compressed: each judged segment is logged a minute after the last), `min_judged_rows` "
            f"min({limits.min_judged_rows:,}, smallest stage). For a 90,000-row window: shadow "
            f"{example.shadow.min_rows:,}, canary " + " / ".join(f"{s.min_rows:,}" for s in example.canary)
            + f" rows, judged from {example.min_judged_rows:,}.\n")


def main() -> None:
    parser = section_parser(__doc__, ["drift", "loop", "ieee"], "monitoring.md")
    parser.add_argument("--drift-child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drift_child:
        _drift_child(*args.drift_child)
        return
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    builders = {"drift": lambda: bench_drift(args.quick), "loop": lambda: bench_loop(args.quick),
                "ieee": lambda: bench_ieee(args.quick, args.data_dir)}
    report_sections("fraudops monitoring benchmark",
                    ["fraudops", "evidently", "catboost", "kfp", "bentoml", "pandas"], args.quick, builders, sections,
                    args.out)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
