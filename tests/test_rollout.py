"""Staged rollout: every number `compare` reads from a hand-counted log (shadow then canary rows, labels, rows of
another rollout, of no rollout, written twice or outside the window), the score distance against its definition,
each limit of `decide` aborting with its numbers, holds until rows and minutes, the stages from shadow to
promotion, scorer alerts, the policy file's errors, the controller `step` and the command line; a canary judged
against the champion's scores of the same transactions (and, without them, against the champion's other ones), and
the comparison in the retrain trigger's metrics."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import wasserstein_distance
from starlette.testclient import TestClient

from fraudops import cli
from fraudops.decisions import DECLINE_COLUMN, REVIEW_COLUMN, Bands
from fraudops.errors import ConfigError
from fraudops.monitoring.trigger import RetrainTrigger, TriggerConfig, TriggerMetrics, create_app
from fraudops.predlog import FEEDBACK, PREDICTIONS, LogChunk, LogWriter
from fraudops.registry import REGISTRY_URL_ENV, Registry, Rollout
from fraudops.rollout import (
    ACTOR,
    CANARY,
    CHALLENGER,
    CHAMPION,
    CHAMPION_ON_CANARY,
    IDLE,
    SHADOW,
    CanaryStep,
    Controller,
    Decision,
    GroupStats,
    Pairing,
    RolloutPolicy,
    RolloutReport,
    StagePolicy,
    WindowReport,
    compare,
    decide,
    step,
)

POLICY_FILE = Path(__file__).parent.parent / "monitoring" / "rollout-policy.yaml"
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
CANARY_AT = T0 + timedelta(hours=2)
NOW = T0 + timedelta(hours=3)
OLD, NEW = "fraud-detector:old", "fraud-detector:new"
CHAMPION_BANDS, CHALLENGER_BANDS = Bands(review=0.3, decline=0.6), Bands(review=0.4, decline=0.8)


ROLLOUT = Rollout("r1", NEW, OLD, CANARY, 10.0, T0.isoformat(), CANARY_AT.isoformat(), "alice",
                  "retrained on drift")


def scored(request_id: str, role: str | None, tag: str, scores: list[float], bands: Bands, at: datetime,
           latency_ms: float | None, rollout_id: str | None = "r1", rows: list[int] | None = None) -> LogChunk:
    """One model's rows of one request as the scorer logs them (``role`` None: a scorer before rollouts)."""
    n = len(scores)
    shared: dict[str, Any] = {"request_id": request_id, "model_tag": tag, REVIEW_COLUMN: bands.review,
                              DECLINE_COLUMN: bands.decline}
    for name, value in (("role", role), ("rollout_id", rollout_id), ("latency_ms", latency_ms)):
        if value is not None:
            shared[name] = value
    return LogChunk(PREDICTIONS, at, n, shared=shared, json_columns={"input": [{"amount": 1.0}] * n},
                    columns={"row": np.array(rows if rows is not None else range(n), dtype="int32"),
                             "score": scores, "decision": bands.decide(scores), "amount": [10.0] * n})


def feedback(request_id: str, rows: list[int], labels: list[bool], at: datetime) -> LogChunk:
    n = len(rows)
    return LogChunk(FEEDBACK, at, n, columns={"request_id": [request_id] * n, "row": np.array(rows, dtype="int32"),
                                              "is_fraud": labels, "source": ["chargeback"] * n})


def write_log(root: Path, chunks: list[LogChunk]) -> str:
    writer = LogWriter(str(root), flush_rows=10**9, flush_seconds=3600, max_pending_rows=10**8)
    for chunk in chunks:
        writer.append(chunk)
    assert writer.flush()
    writer.close()
    return str(root)


def rollout_log(root: Path, rollout_id: str = "r1", champion: str = OLD, challenger: str = NEW,
                counterfactual: bool = False) -> str:
    """Shadow: requests A (4 rows) and B (2 rows), each scored by both models. Canary from CANARY_AT: C (rows 0, 1
    champion, row 2 canary) and D (row 0 champion, row 1 canary); with ``counterfactual``, the champion's scores of
    the canary rows too. Labels for every row but D's canary row. Left out: A's chunks written twice, a shadow row
    of an older rollout, rows of no rollout (one before the start, one from a replica that had not seen it), a row
    of another model, a row after NOW and a label after NOW."""
    a, b, c, d, old, other, late = (uuid.uuid4().hex for _ in range(7))
    at_a, at_b = T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)
    at_c, at_d = CANARY_AT + timedelta(minutes=10), CANARY_AT + timedelta(minutes=20)
    champion_a = scored(a, CHAMPION, champion, [0.10, 0.35, 0.65, 0.20], CHAMPION_BANDS, at_a, 2.0, rollout_id)
    shadow_a = scored(a, SHADOW, challenger, [0.15, 0.50, 0.85, 0.45], CHALLENGER_BANDS, at_a, 3.0, rollout_id)
    return write_log(root, [
        champion_a, shadow_a, champion_a, shadow_a,
        scored(b, CHAMPION, champion, [0.70, 0.05], CHAMPION_BANDS, at_b, 4.0, rollout_id),
        scored(b, SHADOW, challenger, [0.60, 0.02], CHALLENGER_BANDS, at_b, 5.0, rollout_id),
        scored(c, CHAMPION, champion, [0.40, 0.10], CHAMPION_BANDS, at_c, 1.0, rollout_id, rows=[0, 1]),
        scored(c, CANARY, challenger, [0.90], CHALLENGER_BANDS, at_c, 6.0, rollout_id, rows=[2]),
        scored(d, CHAMPION, champion, [0.62], CHAMPION_BANDS, at_d, 2.0, rollout_id, rows=[0]),
        scored(d, CANARY, challenger, [0.30], CHALLENGER_BANDS, at_d, 8.0, rollout_id, rows=[1]),
        *([scored(c, SHADOW, champion, [0.55], CHAMPION_BANDS, at_c, 1.5, rollout_id, rows=[2]),
           scored(d, SHADOW, champion, [0.35], CHAMPION_BANDS, at_d, 1.5, rollout_id, rows=[1])]
          if counterfactual else []),
        scored(old, SHADOW, challenger, [0.99], CHALLENGER_BANDS, at_a, 9.0, rollout_id="r0"),
        scored(uuid.uuid4().hex, None, champion, [0.99], CHAMPION_BANDS, T0 - timedelta(minutes=5), None, None),
        scored(uuid.uuid4().hex, CHAMPION, champion, [0.99], CHAMPION_BANDS, at_b, 1.0, rollout_id=None),
        scored(other, CHAMPION, "fraud-detector:other", [0.99], CHAMPION_BANDS, at_b, 1.0, rollout_id),
        scored(late, CANARY, challenger, [0.99], CHALLENGER_BANDS, NOW + timedelta(minutes=1), 9.0, rollout_id),
        feedback(a, [0, 1, 2, 3], [False, False, True, True], T0 + timedelta(minutes=50)),
        feedback(b, [0, 1], [True, False], T0 + timedelta(minutes=50)),
        feedback(c, [0, 1, 2], [False, True, True], NOW - timedelta(minutes=5)),
        feedback(d, [0], [False], NOW - timedelta(minutes=5)),
        feedback(d, [1], [True], NOW + timedelta(minutes=5)),
    ])


@pytest.fixture
def log(tmp_path) -> str:
    """`rollout_log` of rollout r1, champion OLD, challenger NEW."""
    return rollout_log(tmp_path / "log")


# -- compare --------------------------------------------------------------------------------------------------
def test_compare_counts_every_number_of_the_whole_rollout_by_hand(log) -> None:
    report = compare(log, ROLLOUT, NOW)
    whole = report.whole
    assert (whole.start, whole.end, report.corrupt_parts) == (T0, NOW, 0)
    assert set(whole.groups) == {CHAMPION, SHADOW, CANARY, CHALLENGER}
    champion, shadow, canary, challenger = (whole.groups[g] for g in (CHAMPION, SHADOW, CANARY, CHALLENGER))
    # champion: A approve review decline approve, B decline approve, C review approve, D decline
    assert (champion.model_tag, champion.rows, champion.requests) == (OLD, 9, 4)
    assert champion.decline_rate == pytest.approx(3 / 9) and champion.review_rate == pytest.approx(2 / 9)
    assert champion.approve_rate == pytest.approx(4 / 9)
    assert champion.score_mean == pytest.approx(3.17 / 9) and champion.score_p50 == pytest.approx(0.35)
    assert champion.latency_p50_ms == pytest.approx(2.0) and champion.latency_p99_ms == pytest.approx(3.94)
    # labels: frauds A2 (0.65), A3 (0.20), B0 (0.70), C1 (0.10); declined from 0.6: A2 and B0
    assert (champion.labelled, champion.frauds) == (9, 4)
    assert champion.recall == pytest.approx(0.5) and champion.pr_auc == pytest.approx(0.75)
    # shadow (bands 0.4 / 0.8): A approve review decline review, B review approve
    assert (shadow.model_tag, shadow.rows, shadow.requests) == (NEW, 6, 2)
    assert (shadow.decline_rate, shadow.review_rate, shadow.approve_rate) == pytest.approx((1 / 6, 3 / 6, 2 / 6))
    assert shadow.latency_p50_ms == pytest.approx(4.0) and shadow.latency_p99_ms == pytest.approx(4.98)
    assert (shadow.labelled, shadow.frauds) == (6, 3)
    assert shadow.recall == pytest.approx(1 / 3) and shadow.pr_auc == pytest.approx(1 / 3 + 1 / 3 + 0.25)
    # canary: C2 decline (fraud), D1 approve (label after NOW: none)
    assert (canary.rows, canary.requests, canary.decline_rate, canary.review_rate) == (2, 2, 0.5, 0.0)
    assert canary.latency_p50_ms == pytest.approx(7.0) and canary.latency_p99_ms == pytest.approx(7.98)
    assert (canary.labelled, canary.frauds) == (1, 1)
    assert math.isnan(canary.pr_auc) and math.isnan(canary.recall)  # one class: no ranking metric
    # the challenger's rows together: frauds A2 0.85, A3 0.45, B0 0.60, C2 0.90
    assert (challenger.rows, challenger.requests, challenger.labelled, challenger.frauds) == (8, 4, 7, 4)
    assert (challenger.decline_rate, challenger.review_rate) == pytest.approx((2 / 8, 3 / 8))
    assert challenger.latency_p50_ms == pytest.approx(5.5) and challenger.latency_p99_ms == pytest.approx(7.94)
    assert challenger.recall == pytest.approx(0.5) and challenger.pr_auc == pytest.approx(0.95)
    # shadow against champion on the same transactions: A3 approve/review and B0 decline/review differ
    assert (whole.paired_rows, whole.disagreement) == (6, pytest.approx(2 / 6))
    assert whole.challenger() is challenger
    assert all(math.isnan(d) for d in whole.score_distance.values())  # too few rows for a distribution


def test_compare_counts_the_current_stage_apart(log) -> None:
    stage = compare(log, ROLLOUT, NOW).stage
    assert (stage.start, stage.end) == (CANARY_AT, NOW)
    assert set(stage.groups) == {CHAMPION, CANARY}
    champion, canary = stage.groups[CHAMPION], stage.groups[CANARY]
    assert (champion.rows, champion.requests) == (3, 2)
    assert (champion.decline_rate, champion.review_rate, champion.approve_rate) == pytest.approx((1 / 3,) * 3)
    assert champion.score_p50 == pytest.approx(0.40) and champion.latency_p99_ms == pytest.approx(1.99)
    assert (champion.labelled, champion.frauds) == (3, 1)
    assert champion.recall == 0.0 and champion.pr_auc == pytest.approx(1 / 3)  # C1 (0.10) ranks after D0 and C0
    assert canary.rows == 2 and stage.rows(SHADOW) == 0
    assert stage.paired_rows == 0 and math.isnan(stage.disagreement)
    assert stage.challenger() is canary
    # a shadow stage that began as B was logged: B's rows only (champion decline approve, shadow review approve)
    shadow = replace(ROLLOUT, mode=SHADOW, percent=0.0, stage_started_at=(T0 + timedelta(minutes=20)).isoformat())
    stage = compare(log, shadow, CANARY_AT).stage
    assert (stage.rows(CHAMPION), stage.rows(SHADOW), stage.paired_rows, stage.disagreement) == (2, 2, 2, 0.5)


def test_compare_pairs_each_challenger_role_with_the_champions_scores_of_the_same_transactions(tmp_path) -> None:
    report = compare(rollout_log(tmp_path / "log", counterfactual=True), ROLLOUT, NOW)
    whole, stage = report.whole, report.stage
    # the champion's scores of C2 (0.55) and D1 (0.35) are a group of their own, not shadow rows
    assert (whole.rows(SHADOW), whole.rows(CANARY), whole.rows(CHAMPION)) == (6, 2, 9)
    assert (whole.groups[CHAMPION_ON_CANARY].model_tag, whole.groups[CHAMPION_ON_CANARY].rows) == (OLD, 2)
    assert set(whole.paired) == {SHADOW, CANARY, CHALLENGER} and set(stage.paired) == {CANARY}
    # canary against champion: C2 decline vs review, D1 approve vs review
    canary = stage.paired[CANARY]
    assert (canary.rows, canary.disagreement, canary.decline_disagreement) == (2, 1.0, 0.5)
    assert (canary.challenger.decline_rate, canary.champion.decline_rate, canary.champion.review_rate) == (
        0.5, 0.0, 1.0)
    assert (canary.champion.labelled, canary.champion.frauds) == (1, 1)  # D1's label came after NOW
    # all of them: shadow's A3 and B0 differ too, B0 on declining
    assert (whole.paired_rows, whole.disagreement, whole.decline_disagreement) == (8, 0.5, 0.25)
    assert whole.paired[SHADOW].rows == 6 and whole.paired[CHALLENGER].champion.rows == 8


def test_compare_before_any_row_of_the_rollout_reports_empty_groups(tmp_path, log) -> None:
    for root in (str(tmp_path / "nothing"), log):
        later = replace(ROLLOUT, id="r9", started_at=NOW.isoformat(), stage_started_at=NOW.isoformat())
        report = compare(root, later, NOW + timedelta(minutes=30))
        for window in (report.whole, report.stage):
            assert set(window.groups) == {CHAMPION, CANARY}
            assert window.rows(CHAMPION) == 0 and window.rows(CANARY) == 0
            assert math.isnan(window.groups[CANARY].decline_rate) and math.isnan(window.disagreement)


def test_score_distance_is_the_drift_jobs_wasserstein_on_the_same_window(tmp_path) -> None:
    rng = np.random.default_rng(3)
    champion_scores, shadow_scores = rng.beta(1, 12, 400), rng.beta(1.5, 10, 400)
    chunks = []
    for i in range(4):
        rid, at, part = uuid.uuid4().hex, T0 + timedelta(minutes=i), slice(100 * i, 100 * (i + 1))
        chunks += [scored(rid, CHAMPION, OLD, champion_scores[part].tolist(), CHAMPION_BANDS, at, 1.0),
                   scored(rid, SHADOW, NEW, shadow_scores[part].tolist(), CHALLENGER_BANDS, at, 1.0)]
    shadow = replace(ROLLOUT, mode=SHADOW, percent=0.0, stage_started_at=T0.isoformat())
    report = compare(write_log(tmp_path / "log", chunks), shadow, NOW)
    expected = wasserstein_distance(champion_scores, shadow_scores) / np.std(champion_scores)
    assert report.stage.score_distance == {SHADOW: pytest.approx(expected)}
    assert report.whole.score_distance == {SHADOW: pytest.approx(expected)}
    assert 0.1 < expected < 1


def test_rows_logged_before_roles_count_as_the_champions(tmp_path) -> None:
    rid = uuid.uuid4().hex
    root = write_log(tmp_path / "log", [scored(rid, None, OLD, [0.7, 0.1], CHAMPION_BANDS, T0, None),
                                        scored(rid, SHADOW, NEW, [0.2, 0.1], CHALLENGER_BANDS, T0, None)])
    report = compare(root, replace(ROLLOUT, mode=SHADOW, percent=0.0, stage_started_at=T0.isoformat()), NOW)
    assert report.whole.rows(CHAMPION) == 2 and report.whole.rows(SHADOW) == 2
    assert report.whole.disagreement == 0.5
    assert math.isnan(report.whole.groups[CHAMPION].latency_p99_ms)  # no latency logged


# -- policy ---------------------------------------------------------------------------------------------------
def test_the_shipped_policy_file_holds_the_defaults() -> None:
    policy = RolloutPolicy()
    assert RolloutPolicy.from_file(POLICY_FILE) == policy
    assert policy.shadow == StagePolicy(min_rows=10_000, min_minutes=1440)
    assert [s.percent for s in policy.canary] == [5, 25, 50]
    assert (policy.max_decline_rate_increase, policy.max_review_rate_increase, policy.max_disagreement) == (
        0.02, 0.03, 0.10)
    assert (policy.min_labelled_frauds, policy.max_pr_auc_drop, policy.max_recall_drop) == (50, 0.10, 0.05)


def test_policy_from_yaml_keeps_untouched_defaults(tmp_path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("shadow: {min_rows: 100, min_minutes: 5}\ncanary: [{percent: 10, min_rows: 200, "
                    "min_minutes: 1}]\nmin_judged_rows: 50\n")
    policy = RolloutPolicy.from_file(path)
    assert policy.shadow.min_rows == 100 and policy.canary == (CanaryStep(percent=10, min_rows=200, min_minutes=1),)
    assert policy.max_latency_p99_ms == RolloutPolicy().max_latency_p99_ms
    (tmp_path / "empty.yaml").write_text("")
    assert RolloutPolicy.from_file(tmp_path / "empty.yaml") == RolloutPolicy()


@pytest.mark.parametrize(("text", "key"), [
    ("max_decline_rate_increase: 2\n", "max_decline_rate_increase"),
    ("max_disagreement: lots\n", "max_disagreement"),
    ("score_method: cosine\n", "score_method"),
    ("declines: 0.1\n", "declines"),
    ("canary: [{percent: 150, min_rows: 2000, min_minutes: 0}]\n", "canary.0.percent"),
    ("canary: [{percent: 5, min_minutes: 0}]\n", "canary.0.min_rows"),
    ("canary: [{percent: 25, min_rows: 2000, min_minutes: 0}, {percent: 5, min_rows: 2000, min_minutes: 0}]\n",
     "canary"),
    ("shadow: {min_rows: 100, min_minutes: 0}\n", "shadow.min_rows 100 is below min_judged_rows 1000"),
])
def test_policy_file_errors_name_the_key(tmp_path, text: str, key: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"invalid rollout policy {path}: .*{key}"):
        RolloutPolicy.from_file(path)


def test_policy_file_missing_or_not_yaml_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read rollout policy"):
        RolloutPolicy.from_file(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("shadow: [")
    with pytest.raises(ConfigError, match="cannot read rollout policy"):
        RolloutPolicy.from_file(tmp_path / "broken.yaml")


# -- decide ---------------------------------------------------------------------------------------------------
POLICY = RolloutPolicy(shadow=StagePolicy(min_rows=2_000, min_minutes=60),
                       canary=(CanaryStep(percent=5, min_rows=1_000, min_minutes=30),
                               CanaryStep(percent=25, min_rows=3_000, min_minutes=60)),
                       min_judged_rows=500, min_labelled_frauds=20)


def stats(group: str, rows: int = 5_000, decline: float = 0.03, review: float = 0.05, latency: float = 4.0,
          frauds: int = 0, pr_auc: float = math.nan, recall: float = math.nan) -> GroupStats:
    return GroupStats(group=group, model_tag=OLD if group == CHAMPION else NEW, rows=rows, requests=rows,
                      decline_rate=decline, review_rate=review, approve_rate=1 - decline - review, score_mean=0.1,
                      score_p50=0.05, score_p90=0.3, score_p99=0.8, latency_p50_ms=latency / 2,
                      latency_p99_ms=latency, labelled=frauds * 10, frauds=frauds, pr_auc=pr_auc, recall=recall)


def make_report(rollout: Rollout, challenger: GroupStats, champion: GroupStats | None = None,
                disagreement: float = 0.02, distance: float = 0.05, whole: dict[str, GroupStats] | None = None,
                paired: bool | None = None) -> RolloutReport:
    """A report whose stage holds ``challenger`` (in the rollout's role) and ``champion``, on the same transactions
    if ``paired`` (default: in shadow; every disagreement is about declining)."""
    role = challenger.group
    champion = champion or stats(CHAMPION, rows=challenger.rows)
    groups = {CHAMPION: champion, role: challenger}
    pairs = ({role: Pairing(challenger, champion, disagreement, disagreement, distance)}
             if (role == SHADOW if paired is None else paired) else {})
    stage = WindowReport(_utc(rollout.stage_started_at), NOW, groups, {role: distance}, pairs)
    whole_window = WindowReport(_utc(rollout.started_at), NOW, whole or groups, {role: distance},
                                {} if whole else pairs)
    return RolloutReport(rollout, NOW, whole_window, stage, "wasserstein", 0)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


def at_stage(mode: str, percent: float, minutes: float) -> Rollout:
    return Rollout("r1", NEW, OLD, mode, percent, (NOW - timedelta(days=2)).isoformat(),
                   (NOW - timedelta(minutes=minutes)).isoformat(), "alice", "retrained on drift")


SHADOW_DONE, CANARY5_DONE = at_stage(SHADOW, 0.0, 90), at_stage(CANARY, 5.0, 45)


@pytest.mark.parametrize(("rollout", "challenger", "options", "reason"), [
    (CANARY5_DONE, stats(CANARY, decline=0.079), {"champion": stats(CHAMPION, decline=0.031)},
     "canary 5%: canary decline rate 7.9% vs champion 3.1% on the champion's own rows (unpaired): +4.8 pp > max 2 pp"),
    (CANARY5_DONE, stats(CANARY, decline=0.079), {"champion": stats(CHAMPION, decline=0.031), "paired": True},
     "canary 5%: canary decline rate 7.9% vs champion 3.1% on the same 5,000 transactions: +4.8 pp > max 2 pp"),
    (SHADOW_DONE, stats(SHADOW, review=0.09), {}, "shadow: shadow review rate 9.0% vs champion 5.0%: +4.0 pp > "
                                                  "max 3 pp"),
    (SHADOW_DONE, stats(SHADOW), {"disagreement": 0.125},
     "shadow: shadow and champion disagree on declining 12.5% of 5,000 transactions (12.5% any decision) > max "
     "10%"),
    (CANARY5_DONE, stats(CANARY), {"distance": 0.31},
     "canary 5%: canary score distance from the champion 0.310 (wasserstein) on the champion's own rows (unpaired) "
     "> max 0.2"),
    (CANARY5_DONE, stats(CANARY), {"distance": 0.31, "paired": True},
     "canary 5%: canary score distance from the champion 0.310 (wasserstein) on the same 5,000 transactions > max "
     "0.2"),
    (CANARY5_DONE, stats(CANARY), {"disagreement": 0.125, "paired": True},
     "canary 5%: canary and champion disagree on declining 12.5% of 5,000 transactions (12.5% any decision) > max "
     "10%"),
    (SHADOW_DONE, stats(SHADOW, latency=80.0), {}, "shadow: shadow p99 scoring time 80.0 ms > max 50 ms"),
    (CANARY5_DONE, stats(CANARY), {"whole": {CHAMPION: stats(CHAMPION, frauds=30, pr_auc=0.60, recall=0.5),
                                             CHALLENGER: stats(CHALLENGER, frauds=25, pr_auc=0.45, recall=0.5)}},
     "canary 5%: challenger PR-AUC 0.450 vs champion 0.600 on labelled rollout rows (25 and 30 frauds, unpaired): "
     "-25.0% > max 10% drop"),
    (CANARY5_DONE, stats(CANARY), {"whole": {CHAMPION: stats(CHAMPION, frauds=30, pr_auc=0.6, recall=0.61),
                                             CANARY: stats(CANARY, frauds=25, pr_auc=0.6, recall=0.52)}},
     "canary 5%: challenger recall 52.0% vs champion 61.0% on labelled rollout rows (25 and 30 frauds, unpaired): "
     "-9.0 pp > max 5 pp drop"),
])
def test_each_limit_aborts_naming_its_numbers(rollout, challenger, options, reason) -> None:
    decision = decide(make_report(rollout, challenger, **options), POLICY, rollout, NOW)
    assert decision.action == "abort" and decision.reason == reason, decision.reason
    assert decision.rollout_id == "r1" and decision.mode is None
    assert [c.status for c in decision.checks].count("breach") == 1


def test_the_same_numbers_within_the_limits_advance() -> None:
    challenger = stats(CANARY, decline=0.05, review=0.08, latency=50.0)
    whole = {CHAMPION: stats(CHAMPION, frauds=30, pr_auc=0.60, recall=0.60),
             CHALLENGER: stats(CHALLENGER, frauds=25, pr_auc=0.54, recall=0.55)}
    report = make_report(CANARY5_DONE, challenger, disagreement=0.10, distance=0.2, whole=whole)
    decision = decide(report, POLICY, CANARY5_DONE, NOW)
    assert decision.action == "advance", decision.reason
    assert {c.name: c.status for c in decision.checks} == {
        "scorer alerts": "ok", "decline rate": "ok", "review rate": "ok", "disagreement": "n/a",
        "score distance": "ok", "latency p99": "ok", "PR-AUC": "ok", "recall": "ok"}
    assert "canary decline rate 5.0% vs champion 3.0% on the champion's own rows (unpaired): +2.0 pp <= max 2 pp" \
        in decision.reason
    assert "not judged yet" not in decision.reason
    unlabelled = decide(make_report(CANARY5_DONE, challenger), POLICY, CANARY5_DONE, NOW)
    assert unlabelled.action == "advance"
    assert unlabelled.reason.endswith("; not judged yet: waiting for 20 labelled frauds per model (0 challenger, 0 "
                                      "champion so far)): advance to canary 25%")


def test_several_breaches_abort_with_every_reason() -> None:
    decision = decide(make_report(CANARY5_DONE, stats(CANARY, decline=0.2, latency=90.0)), POLICY, CANARY5_DONE,
                      NOW, alerts_firing=["FraudopsScorerErrorRate"])
    assert decision.action == "abort"
    assert decision.reason.startswith("canary 5%: scorer alerts firing during the canary: FraudopsScorerErrorRate; "
                                      "canary decline rate 20.0%")
    assert "p99 scoring time 90.0 ms > max 50 ms" in decision.reason


def test_scorer_alerts_abort_a_canary_and_not_a_shadow() -> None:
    alerts = ["FraudopsScorerLatencyHigh", "FraudopsPredictionLogFailing"]
    canary = decide(make_report(CANARY5_DONE, stats(CANARY)), POLICY, CANARY5_DONE, NOW, alerts)
    assert canary.action == "abort"
    assert canary.reason == ("canary 5%: scorer alerts firing during the canary: FraudopsScorerLatencyHigh, "
                             "FraudopsPredictionLogFailing")
    young = at_stage(CANARY, 5.0, 1)  # abort beats the hold of a young stage
    assert decide(make_report(young, stats(CANARY, rows=10)), POLICY, young, NOW, alerts).action == "abort"
    shadow = decide(make_report(SHADOW_DONE, stats(SHADOW)), POLICY, SHADOW_DONE, NOW, alerts)
    assert shadow.action == "advance"


def test_a_stage_holds_until_its_rows_and_minutes() -> None:
    rollout = at_stage(SHADOW, 0.0, 20)
    decision = decide(make_report(rollout, stats(SHADOW, rows=1_500)), POLICY, rollout, NOW)
    assert (decision.action, decision.reason) == ("hold", "shadow: 1,500 of 2,000 shadow rows, 20 of 60 minutes")
    decision = decide(make_report(SHADOW_DONE, stats(SHADOW, rows=1_999)), POLICY, SHADOW_DONE, NOW)
    assert (decision.action, decision.reason) == ("hold", "shadow: 1,999 of 2,000 shadow rows")
    rollout = at_stage(SHADOW, 0.0, 59)
    assert decide(make_report(rollout, stats(SHADOW)), POLICY, rollout, NOW).reason == "shadow: 59 of 60 minutes"


def test_limits_wait_for_enough_rows_and_labels() -> None:
    rollout = at_stage(CANARY, 5.0, 45)
    bad = stats(CANARY, rows=499, decline=0.5, latency=500.0)
    whole = {CHAMPION: stats(CHAMPION, frauds=30, pr_auc=0.9), CANARY: stats(CANARY, frauds=19, pr_auc=0.1)}
    decision = decide(make_report(rollout, bad, distance=5.0, whole=whole), POLICY, rollout, NOW)
    assert decision.action == "hold"
    checks = {c.name: c for c in decision.checks}
    assert checks["decline rate"].status == "pending"
    assert checks["decline rate"].reason == "waiting for 500 canary rows in this stage (499 so far)"
    assert checks["PR-AUC"].status == "pending"
    assert checks["PR-AUC"].reason == "waiting for 20 labelled frauds per model (19 challenger, 30 champion so far)"
    assert decide(make_report(rollout, replace(bad, rows=500), whole=whole), POLICY, rollout, NOW).action == "abort"


@pytest.mark.parametrize(("mode", "percent", "needs", "action", "target"), [
    (SHADOW, 0.0, (2_000, 60), "advance", (CANARY, 5.0)),
    (CANARY, 5.0, (1_000, 30), "advance", (CANARY, 25.0)),
    (CANARY, 10.0, (3_000, 60), "advance", (CANARY, 25.0)),  # started by hand between two steps
    (CANARY, 25.0, (3_000, 60), "promote", (None, None)),
    (CANARY, 70.0, (3_000, 60), "promote", (None, None)),
])
def test_stages_advance_from_shadow_through_canary_to_promotion(mode, percent, needs, action, target) -> None:
    rows, minutes = needs
    role = SHADOW if mode == SHADOW else CANARY
    early = at_stage(mode, percent, minutes - 1)
    assert decide(make_report(early, stats(role, rows=rows)), POLICY, early, NOW).action == "hold"
    assert decide(make_report(early, stats(role, rows=rows - 1)), POLICY, early, NOW).action == "hold"
    rollout = at_stage(mode, percent, minutes)
    assert decide(make_report(rollout, stats(role, rows=rows - 1)), POLICY, rollout, NOW).action == "hold"
    decision = decide(make_report(rollout, stats(role, rows=rows)), POLICY, rollout, NOW)
    assert (decision.action, decision.mode, decision.percent) == (action, *target)
    name = "shadow" if mode == SHADOW else f"canary {percent:g}%"
    assert decision.reason.startswith(f"{name} held {minutes} minutes over {rows:,} {role} rows (")
    assert decision.reason.endswith(f"promote {NEW}" if action == "promote" else f"advance to canary {target[1]:g}%")


def test_a_policy_without_canary_steps_promotes_after_shadow() -> None:
    policy = POLICY.model_copy(update={"canary": ()})
    decision = decide(make_report(SHADOW_DONE, stats(SHADOW)), policy, SHADOW_DONE, NOW)
    assert decision.action == "promote"


# -- the canary judged on the same transactions -----------------------------------------------------------------
PAIRED = RolloutPolicy(shadow=StagePolicy(min_rows=200, min_minutes=0),
                       canary=(CanaryStep(percent=10, min_rows=200, min_minutes=30),
                               CanaryStep(percent=50, min_rows=200, min_minutes=30)),
                       min_judged_rows=200, min_labelled_frauds=20)
LIMITS = ("decline rate", "review rate", "disagreement", "score distance", "PR-AUC", "recall")


def canary_log(root: Path, challenger_bands: Bands = CHAMPION_BANDS, counterfactual: int = 100) -> str:
    """`ROLLOUT`'s canary stage: 100 requests of 10 transactions from CANARY_AT. Rows 0 and 1 are riskier accounts
    (higher scores; frauds at random), which the canary decides with the champion's very scores under
    ``challenger_bands``; rows 2-9 the champion decides (frauds: its scores above 0.2). The first ``counterfactual``
    requests' canary rows are logged scored by the champion too, as the scorer does off the request path."""
    rng = np.random.default_rng(7)
    chunks = []
    for i in range(100):
        rid, at = uuid.uuid4().hex, CANARY_AT + timedelta(seconds=20 * i)
        risky, others = rng.beta(3, 4, 2).tolist(), rng.beta(1, 12, 8).tolist()
        chunks += [scored(rid, CHAMPION, OLD, others, CHAMPION_BANDS, at, 2.0, rows=list(range(2, 10))),
                   scored(rid, CANARY, NEW, risky, challenger_bands, at, 3.0, rows=[0, 1])]
        if i < counterfactual:
            chunks.append(scored(rid, SHADOW, OLD, risky, CHAMPION_BANDS, at, 2.5, rows=[0, 1]))
        labels = [*(rng.random(2) < 0.3).tolist(), *(score > 0.2 for score in others)]
        chunks.append(feedback(rid, list(range(10)), labels, at))
    return write_log(root, chunks)


def test_a_canary_of_riskier_accounts_with_the_champions_model_passes_on_the_same_transactions(tmp_path) -> None:
    report = compare(canary_log(tmp_path / "log"), ROLLOUT, NOW, score_method=PAIRED.score_method)
    stage, whole = report.stage, report.whole
    canary, champion, counterfactual = (stage.groups[g] for g in (CANARY, CHAMPION, CHAMPION_ON_CANARY))
    assert (canary.rows, champion.rows, counterfactual.rows, counterfactual.model_tag) == (200, 800, 200, OLD)
    assert set(stage.paired) == {CANARY} and stage.paired_rows == 200
    pairing = stage.paired[CANARY]
    assert (pairing.challenger.decline_rate, pairing.champion.decline_rate) == (canary.decline_rate,
                                                                              counterfactual.decline_rate)
    assert (pairing.disagreement, pairing.decline_disagreement, pairing.score_distance) == (0, 0, 0)
    # unpaired, the same model looks far worse on its accounts than on the champion's
    assert canary.decline_rate - champion.decline_rate > 0.1 and stage.score_distance[CANARY] > 1
    assert whole.groups[CANARY].pr_auc < whole.groups[CHAMPION].pr_auc / 2
    assert whole.paired[CANARY].challenger.pr_auc == whole.paired[CANARY].champion.pr_auc
    decision = decide(report, PAIRED, ROLLOUT, NOW)
    assert (decision.action, decision.percent) == ("advance", 50.0), decision.reason
    checks = {c.name: c for c in decision.checks}
    assert {name: (checks[name].status, checks[name].compared) for name in LIMITS} == dict.fromkeys(
        LIMITS, ("ok", "paired"))
    rate = f"{canary.decline_rate:.1%}"
    assert checks["decline rate"].reason == (f"canary decline rate {rate} vs champion {rate} on the same 200 "
                                             "transactions: +0.0 pp <= max 2 pp")
    assert checks["disagreement"].reason == ("canary and champion disagree on declining 0.0% of 200 transactions "
                                             "(0.0% any decision) <= max 10%")
    assert checks["PR-AUC"].reason.startswith("challenger PR-AUC ")
    assert f"on the same labelled transactions ({canary.frauds} frauds): +0.0% within" in checks["PR-AUC"].reason


def test_a_canary_that_declines_far_more_on_the_same_transactions_aborts(tmp_path) -> None:
    log = canary_log(tmp_path / "log", challenger_bands=Bands(review=0.2, decline=0.35))
    report = compare(log, ROLLOUT, NOW, score_method=PAIRED.score_method)
    pairing = report.stage.paired[CANARY]
    mine, theirs = pairing.challenger.decline_rate, pairing.champion.decline_rate
    assert mine - theirs > 0.3 and pairing.decline_disagreement == pytest.approx(mine - theirs)
    decision = decide(report, PAIRED, ROLLOUT, NOW)
    assert decision.action == "abort"
    breaches = {c.name: c for c in decision.checks if c.status == "breach"}
    assert set(breaches) == {"decline rate", "disagreement"} and {c.compared for c in breaches.values()} == {
        "paired"}
    assert breaches["decline rate"].reason == (f"canary decline rate {mine:.1%} vs champion {theirs:.1%} on the "
                                               f"same 200 transactions: {(mine - theirs) * 100:+.1f} pp > max 2 pp")


@pytest.mark.parametrize(("counterfactual", "why"), [
    (0, "disagreement: needs the champion's scores of the canary transactions"),
    (5, "disagreement: only 10 canary transactions scored by the champion too, fewer than 200 (unpaired)"),
])
def test_without_enough_counterfactual_rows_the_canary_is_compared_unpaired_as_before(tmp_path, counterfactual,
                                                                                       why) -> None:
    report = compare(canary_log(tmp_path / "log", counterfactual=counterfactual), ROLLOUT, NOW,
                     score_method=PAIRED.score_method)
    stage, whole = report.stage, report.whole
    assert stage.rows(CHAMPION_ON_CANARY) == 2 * counterfactual and stage.paired_rows == 2 * counterfactual
    canary, champion = stage.groups[CANARY], stage.groups[CHAMPION]
    decision = decide(report, PAIRED, ROLLOUT, NOW)
    assert decision.action == "abort"
    checks = {c.name: c for c in decision.checks}
    assert {name: (checks[name].status, checks[name].compared) for name in LIMITS} == {
        "decline rate": ("breach", "unpaired"), "review rate": ("breach", "unpaired"), "disagreement": ("n/a", ""),
        "score distance": ("breach", "unpaired"), "PR-AUC": ("breach", "unpaired"), "recall": ("ok", "unpaired")}
    diff = (canary.decline_rate - champion.decline_rate) * 100
    assert checks["decline rate"].reason == (
        f"canary decline rate {canary.decline_rate:.1%} vs champion {champion.decline_rate:.1%} on the champion's own "
        f"rows (unpaired): {diff:+.1f} pp > max 2 pp")
    assert checks["score distance"].value == f"{stage.score_distance[CANARY]:.3f}"
    assert checks["disagreement"].reason == why
    mine, theirs = whole.groups[CANARY], whole.groups[CHAMPION]
    assert checks["PR-AUC"].reason.startswith(
        f"challenger PR-AUC {mine.pr_auc:.3f} vs champion {theirs.pr_auc:.3f} on labelled rollout rows "
        f"({mine.frauds} and {theirs.frauds} frauds, unpaired): ")


# -- step and the command line, with the real registry --------------------------------------------------------
SMALL = RolloutPolicy(shadow=StagePolicy(min_rows=6, min_minutes=5), canary=(CanaryStep(percent=10, min_rows=2,
                      min_minutes=30),), min_judged_rows=2, min_labelled_frauds=3, max_disagreement=0.5,
                      max_decline_rate_increase=0.2, max_review_rate_increase=0.4, max_recall_drop=0.5)
STRICT_FILE = ("shadow: {min_rows: 6, min_minutes: 5}\ncanary: [{percent: 10, min_rows: 2, min_minutes: 30}]\n"
               "min_judged_rows: 2\nmax_decline_rate_increase: 0.1\n")


@pytest.fixture(scope="module")
def bundle_dir(transactions, save_bundle, tmp_path_factory) -> str:
    """A small saved model bundle (registered twice: champion and challenger)."""
    return save_bundle(transactions(600, seed=5), 5, tmp_path_factory.mktemp("bundle") / "model")


class Clock:
    """The registry's clock (`fraudops.registry._now`), so that stages start at the log's times."""

    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> str:
        return self.at.isoformat(timespec="seconds")


@dataclass
class Models:
    registry: Registry
    champion: str
    challenger: str
    clock: Clock


@pytest.fixture
def models(bundle_dir, tmp_path, monkeypatch) -> Models:
    """A registry in tmp_path (the command line's too, through $BENTOML_HOME): a champion and a challenger."""
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "True")
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(REGISTRY_URL_ENV, raising=False)
    monkeypatch.setenv("USER", "alice")
    clock = Clock()
    monkeypatch.setattr("fraudops.registry._now", clock)
    registry = Registry(home=tmp_path / "home", remote="")
    champion, challenger = registry.register(bundle_dir), registry.register(bundle_dir)
    registry.promote(champion, reason="first model", actor="alice")
    return Models(registry, champion, challenger, clock)


@pytest.fixture
def live(models, tmp_path) -> tuple[Rollout, str]:
    """`rollout_log`'s rollout in the registry: shadow from T0, canary 10% from CANARY_AT."""
    models.registry.start_rollout(models.challenger, reason="retrained on drift", actor="alice")
    models.clock.at = CANARY_AT
    models.registry.set_rollout_stage(CANARY, 10.0, reason="by hand", actor="alice")
    rollout = models.registry.rollout()
    return rollout, rollout_log(tmp_path / "log", rollout.id, models.champion, models.challenger)


def test_step_advances_then_promotes_through_the_registry(models, tmp_path) -> None:
    registry = models.registry
    registry.start_rollout(models.challenger, reason="retrained on drift", actor="trigger")
    rollout = registry.rollout()
    log = rollout_log(tmp_path / "log", rollout.id, models.champion, models.challenger)
    models.clock.at = CANARY_AT
    decision = step(registry, log, SMALL, CANARY_AT)
    assert (decision.action, decision.mode, decision.percent) == ("advance", CANARY, 10.0)
    assert decision.reason.startswith("shadow held 120 minutes over 6 shadow rows (")
    assert registry.rollout() == replace(rollout, mode=CANARY, percent=10.0, stage_started_at=CANARY_AT.isoformat())
    event = registry.history()[-1]
    assert (event["action"], event["actor"], event["reason"], event["mode"], event["percent"]) == (
        "rollout-stage", ACTOR, decision.reason, CANARY, 10.0)

    models.clock.at = NOW
    decision = step(registry, log, SMALL, NOW)  # +16.7 pp declines within 20 pp; 4 labelled frauds each
    assert decision.action == "promote", decision.reason
    assert decision.reason.startswith("canary 10% held 60 minutes over 2 canary rows (")
    assert decision.reason.endswith(f"promote {models.challenger}")
    assert registry.champion() == models.challenger and registry.rollout() is None
    event = registry.history()[-1]
    assert (event["action"], event["tag"], event["actor"], event["reason"], event["rollout"]) == (
        "promote", models.challenger, ACTOR, decision.reason, rollout.id)
    assert step(registry, log, SMALL, NOW) == Decision("hold", "no rollout is active")


@pytest.mark.parametrize(("policy", "alerts", "reason"), [
    (SMALL.model_copy(update={"max_decline_rate_increase": 0.1}), (),
     "canary 10%: canary decline rate 50.0% vs champion 33.3% on the champion's own rows (unpaired): +16.7 pp > "
     "max 10 pp"),
    (SMALL, ("FraudopsScorerErrorRate",),
     "canary 10%: scorer alerts firing during the canary: FraudopsScorerErrorRate"),
])
def test_step_aborts_through_the_registry_and_the_champion_stays(models, live, policy, alerts, reason) -> None:
    rollout, log = live
    decision = step(models.registry, log, policy, NOW, alerts_firing=alerts)
    assert (decision.action, decision.reason, decision.rollout_id) == ("abort", reason, rollout.id)
    assert models.registry.rollout() is None and models.registry.champion() == models.champion
    event = models.registry.history()[-1]
    assert (event["action"], event["tag"], event["actor"], event["reason"]) == (
        "rollout-abort", models.challenger, ACTOR, reason)


class _Frozen(datetime):
    """`datetime` whose now() is NOW, for the command line's comparisons."""

    @classmethod
    def now(cls, tz: Any = None) -> datetime:
        return NOW


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(cli.main, ["rollout", *args])


def test_cli_status_prints_both_windows_and_the_policys_verdict(models, live, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("fraudops.rollout.datetime", _Frozen)
    rollout, log = live
    result = invoke(["status", "--log-root", log])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert (f"rollout {rollout.id}: {models.challenger} beside champion {models.champion}, started 2026-05-01 08:00 "
            "UTC by alice (retrained on drift)") in out
    assert "current stage: canary 10% since 2026-05-01 10:00 UTC (60 minutes)" in out
    assert "whole rollout since 2026-05-01 08:00 UTC, up to 2026-05-01 11:00 UTC" in out
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines() if line.count("│") >= 3]
    assert ["decline rate", "33.3%", "50.0%"] in rows  # the stage: champion, canary
    assert ["decline rate", "33.3%", "16.7%", "50.0%", "25.0%"] in rows  # the rollout: and shadow, all challenger
    assert ["PR-AUC (labelled rows)", "0.750", "0.917", "n/a", "0.950"] in rows
    assert ["scoring time p50 / p99 (ms)", "2.0 / 3.9", "4.0 / 5.0", "7.0 / 8.0", "5.5 / 7.9"] in rows
    assert ["decline rate", "pending", "", "+2 pp", ""] in rows  # default policy: 1,000 rows before judging
    text = " ".join(out.split())
    assert ("paired: shadow and champion on the same 6 transactions: decline rate 16.7% vs 33.3%, review rate "
            "50.0% vs 16.7%, score distance n/a; they disagree on declining 16.7% and on any decision 33.3%") in text
    assert ("unpaired: no canary transactions scored by the champion too (a scorer that logs no counterfactual "
            "rows): the canary is compared with the champion's other transactions") in text
    assert "policy verdict: hold: canary 10%: 2 of 10,000 canary rows, 60 of 720 minutes" in out
    path = tmp_path / "policy.yaml"
    path.write_text(STRICT_FILE)
    result = invoke(["status", "--log-root", log, "--policy", str(path)])
    assert ("policy verdict: abort: canary 10%: canary decline rate 50.0% vs champion 33.3% on the champion's own "
            "rows (unpaired): +16.7 pp > max 10 pp" in " ".join(result.stdout.split()))
    assert ["decline rate", "breach", "50.0% vs 33.3% (+16.7 pp)", "+10 pp", "unpaired"] in [
        [cell.strip() for cell in line.split("│")[1:-1]] for line in result.stdout.splitlines()]
    assert models.registry.rollout() == rollout  # status changes nothing


def test_cli_step_start_promote_and_abort_go_through_the_registry(models, live, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("fraudops.rollout.datetime", _Frozen)
    _, log = live
    registry, champion, challenger = models.registry, models.champion, models.challenger
    path = tmp_path / "policy.yaml"
    path.write_text(STRICT_FILE)
    result = invoke(["step", "--log-root", log, "--policy", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("abort: canary 10%: canary decline rate 50.0%")
    assert registry.rollout() is None and registry.history()[-1]["actor"] == ACTOR

    result = invoke(["start", challenger, "--mode", "canary", "--percent", "5", "--reason", "try it"])
    assert result.exit_code == 0, result.output
    started = registry.rollout()
    assert (started.challenger, started.mode, started.percent, started.actor, started.reason) == (
        challenger, CANARY, 5.0, "alice", "try it")
    assert f"rollout {started.id}: {challenger} in canary 5% beside champion {champion}" in result.stdout
    result = invoke(["promote", "--reason", "looks good"])
    assert result.exit_code == 0, result.output
    assert f"champion: {challenger} (was {champion}); rollout {started.id} ended" in result.stdout
    assert registry.champion() == challenger and registry.rollout() is None
    event = registry.history()[-1]
    assert (event["action"], event["actor"], event["reason"]) == ("promote", "alice", "looks good")

    assert invoke(["start", champion]).exit_code == 0  # the former champion, in shadow
    result = invoke(["abort"])
    assert result.exit_code == 0, result.output
    assert f"aborted: {challenger} stays champion" in result.stdout
    event = registry.history()[-1]
    assert (event["action"], event["actor"], event["reason"]) == ("rollout-abort", "alice", "manual abort")


def test_cli_without_a_rollout(models, tmp_path) -> None:
    result = invoke(["status", "--log-root", str(tmp_path / "log")])
    assert result.exit_code == 0 and f"no rollout is active; champion: {models.champion}" in result.stdout
    assert invoke(["step", "--log-root", str(tmp_path / "log")]).stdout.strip() == "hold: no rollout is active"


@pytest.mark.parametrize(("args", "message"), [
    (["start", "CHALLENGER", "--mode", "canary"], "--mode canary needs --percent"),
    (["start", "CHALLENGER", "--mode", "shadow", "--percent", "5"], "--percent applies to --mode canary only"),
    (["start", "CHALLENGER", "--mode", "canary", "--percent", "0"], "a canary needs a percent in (0, 100], not 0"),
    (["start", "fraud-detector:nope"], "is not in the model store"),
    (["start", "CHAMPION"], "is the champion already"),
    (["status", "--policy", "absent.yaml"], "cannot read rollout policy absent.yaml"),
    (["step", "--policy", "absent.yaml"], "cannot read rollout policy absent.yaml"),
    (["promote"], "no rollout is active (`fraudops models promote TAG` promotes any model)"),
    (["abort"], "no rollout is active"),
])
def test_cli_errors_are_one_line_and_exit_1(models, args, message) -> None:
    tags = {"CHALLENGER": models.challenger, "CHAMPION": models.champion}
    result = invoke([tags.get(arg, arg) for arg in args])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], errors


def test_cli_refuses_a_second_rollout(models, live) -> None:
    result = invoke(["start", models.challenger])
    assert result.exit_code == 1
    assert f"a rollout of {models.challenger} is active (canary): promote or abort it first" in result.stderr


def test_a_million_rows_compare_in_seconds(tmp_path) -> None:
    rng = np.random.default_rng(0)
    batch, requests = 5_000, 100
    chunks = []
    for i in range(requests):
        rid, at = uuid.uuid4().hex, T0 + timedelta(seconds=30 * i)
        for role, tag in ((CHAMPION, OLD), (SHADOW, NEW)):
            scores = rng.beta(1, 12, batch)
            chunks.append(LogChunk(PREDICTIONS, at, batch, columns={
                "row": np.arange(batch, dtype="int32"), "score": scores,
                "decision": np.where(scores >= 0.6, "decline", np.where(scores >= 0.3, "review", "approve"))},
                shared={"request_id": rid, "model_tag": tag, "role": role, "rollout_id": "r1", "latency_ms": 3.0,
                        REVIEW_COLUMN: 0.3, DECLINE_COLUMN: 0.6}))
        chunks.append(feedback(rid, list(range(100)), (rng.random(100) < 0.1).tolist(), at))
    root = write_log(tmp_path / "log", chunks)
    shadow = replace(ROLLOUT, mode=SHADOW, percent=0.0, stage_started_at=(T0 + timedelta(minutes=25)).isoformat())
    compare(root, shadow, T0 + timedelta(minutes=1))  # Evidently's first run costs seconds once per process
    started = time.perf_counter()
    report = compare(root, shadow, NOW)
    assert time.perf_counter() - started < 10
    assert report.whole.rows(CHAMPION) == report.whole.rows(SHADOW) == batch * requests
    assert report.whole.paired_rows == batch * requests and report.whole.groups[SHADOW].labelled == 100 * requests
    assert report.stage.rows(SHADOW) == batch * (requests - 50)


# -- the controller the retrain trigger runs ------------------------------------------------------------------
class _OneRollout:
    """A registry with an active rollout, for the controller's scheduling."""

    def __init__(self, active: bool = True) -> None:
        self.active = active

    def rollout(self) -> Rollout | None:
        return ROLLOUT if self.active else None


def test_the_controller_steps_at_most_every_interval_and_only_during_a_rollout(monkeypatch):
    from fraudops import rollout as module

    calls: list[tuple[datetime, list[str]]] = []
    monkeypatch.setattr(module, "step", lambda _r, _l, _p, now, firing: calls.append((now, firing)) or
                        module.Decision("hold", "waiting"))
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    controller = module.Controller(_OneRollout(), "log", module.RolloutPolicy(), timedelta(minutes=1),
                                   alerts=lambda: ["FraudopsScorerErrorRate"])
    assert controller.tick(t0).action == "hold"
    assert controller.tick(t0 + timedelta(seconds=30)) is None
    assert controller.tick(t0 + timedelta(minutes=1)) is not None
    assert calls == [(t0, ["FraudopsScorerErrorRate"]), (t0 + timedelta(minutes=1), ["FraudopsScorerErrorRate"])]
    idle = module.Controller(_OneRollout(active=False), "log", module.RolloutPolicy(), timedelta(0))
    assert idle.tick(t0) is module.IDLE and len(calls) == 2  # the trigger clears the rollout's gauges


def test_the_controller_holds_when_it_cannot_see_the_scorer_alerts(monkeypatch):
    from fraudops import rollout as module

    monkeypatch.setattr(module, "step", lambda *_a: pytest.fail("stepped without knowing the alerts"))

    def down() -> list[str]:
        raise ConnectionError("prometheus is down")

    decision = module.Controller(_OneRollout(), "log", module.RolloutPolicy(), timedelta(0), alerts=down).tick()
    assert decision.action == "hold" and "prometheus is down" in decision.reason
    assert decision.rollout_id == ROLLOUT.id and decision.report is None


# -- the comparison in the retrain trigger's metrics ----------------------------------------------------------
class _Registry:
    """The rollout state `step` reads and changes (a stage set now starts at ``at``)."""

    def __init__(self, rollout: Rollout | None, at: datetime) -> None:
        self.state, self.at = rollout, at

    def rollout(self) -> Rollout | None:
        return self.state

    def set_rollout_stage(self, mode: str, percent: float, **_: Any) -> dict[str, Any]:
        self.state = replace(self.state, mode=mode, percent=percent, stage_started_at=self.at.isoformat())
        return {}

    def abort_rollout(self, **_: Any) -> dict[str, Any]:
        self.state = None
        return {}

    def promote(self, tag: str, **_: Any) -> dict[str, Any]:
        self.state = None
        return {}


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def exposition(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """``fraudops_rollout_<name>{labels}`` (None: no such series)."""
    return samples.get((f"fraudops_rollout_{name}", tuple(sorted(labels.items()))))


def rollout_series(samples: Samples) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """The rollout's gauges (the decision counter aside)."""
    return [key for key in samples if key[0].startswith("fraudops_rollout_") and "decisions" not in key[0]]


def test_each_controller_tick_exports_the_comparison_by_role_and_no_rollout_clears_it(tmp_path) -> None:
    registry = _Registry(ROLLOUT, NOW)
    controller = Controller(registry, canary_log(tmp_path / "log"), PAIRED, timedelta(minutes=1))
    metrics = TriggerMetrics()

    def tick(at: datetime) -> Samples:
        decision = controller.tick(at)
        metrics.rollout_decided(decision)
        return exposition(generate_latest(metrics.registry).decode())

    seen = tick(NOW)
    report = metrics.rollout.report
    assert report is not None and report.rollout == ROLLOUT
    stage, whole = report.stage, report.whole
    assert sample(seen, "stage_info", rollout_id="r1", challenger=NEW, champion=OLD, stage="canary 10%") == 1
    assert [sample(seen, "rows", window="stage", role=role) for role in (CHAMPION, CANARY, CHAMPION_ON_CANARY)] == [
        800, 200, 200]
    assert sample(seen, "rows", window="rollout", role=CANARY) == 200
    for name in ("decline_rate", "review_rate"):
        assert sample(seen, name, window="stage", role=CANARY) == pytest.approx(getattr(stage.groups[CANARY], name))
        assert sample(seen, name, window="stage", role=CHAMPION_ON_CANARY) == sample(seen, name, window="stage",
                                                                                     role=CANARY)
    assert sample(seen, "latency_p99_seconds", window="stage", role=CANARY) == pytest.approx(0.003)
    assert sample(seen, "paired_rows", window="stage", role=CANARY) == 200
    assert sample(seen, "disagreement", window="stage", role=CANARY, kind="decline") == 0
    assert sample(seen, "disagreement", window="rollout", role=CANARY, kind="any") == 0
    assert sample(seen, "score_distance", window="stage", role=CANARY, comparison="paired") == 0
    assert sample(seen, "score_distance", window="stage", role=CANARY, comparison="unpaired") == pytest.approx(
        stage.score_distance[CANARY])
    for role in (CHAMPION, CANARY, CHAMPION_ON_CANARY):
        group = whole.groups[role]
        assert sample(seen, "labelled_rows", role=role) == group.labelled
        assert sample(seen, "pr_auc", role=role) == pytest.approx(group.pr_auc)
        assert sample(seen, "recall", role=role) == pytest.approx(group.recall)
    assert [sample(seen, "decisions_total", action=a) for a in ("hold", "advance", "promote", "abort")] == [
        0, 1, 0, 0]

    seen = tick(NOW + timedelta(minutes=1))  # canary 50% since NOW: no row yet, so no rate (NaN: no series)
    assert sample(seen, "stage_info", rollout_id="r1", challenger=NEW, champion=OLD, stage="canary 50%") == 1
    assert sample(seen, "stage_info", rollout_id="r1", challenger=NEW, champion=OLD, stage="canary 10%") is None
    assert sample(seen, "rows", window="stage", role=CANARY) == 0
    assert sample(seen, "decline_rate", window="stage", role=CANARY) is None
    assert sample(seen, "rows", window="rollout", role=CANARY) == 200
    assert sample(seen, "decisions_total", action="hold") == 1

    registry.state = None
    seen = tick(NOW + timedelta(minutes=2))
    assert rollout_series(seen) == []
    assert sample(seen, "decisions_total", action="advance") == 1 and sample(seen, "decisions_total",
                                                                             action="hold") == 1


def test_a_rollout_that_ends_clears_the_gauges_and_a_blind_hold_keeps_the_last_ones() -> None:
    metrics = TriggerMetrics()
    report = make_report(CANARY5_DONE, stats(CANARY))

    def seen() -> Samples:
        return exposition(generate_latest(metrics.registry).decode())

    metrics.rollout_decided(Decision("hold", "canary 5%: 10 of 1,000 canary rows", rollout_id="r1", report=report))
    exported = rollout_series(seen())
    assert exported and sample(seen(), "rows", window="stage", role=CANARY) == 5_000
    metrics.rollout_decided(Decision("hold", "cannot read the scorer's alerts: down", rollout_id="r1"))
    assert rollout_series(seen()) == exported
    metrics.rollout_decided(Decision("abort", "canary 5%: ...", rollout_id="r1", report=report))
    assert rollout_series(seen()) == []
    assert [sample(seen(), "decisions_total", action=a) for a in ("hold", "abort")] == [2, 1]


class _NoBackend:
    name = "none"

    def launch(self, request: Any) -> str:
        raise AssertionError("no retrain in this test")

    def status(self, external_id: str) -> str:
        raise AssertionError("no retrain in this test")


class _Ticks:
    """A controller whose every tick decides ``decision``."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision

    def tick(self) -> Decision:
        return self.decision


def test_the_trigger_serves_the_controllers_comparison_on_its_metrics(tmp_path) -> None:
    controller = _Ticks(Decision("hold", "waiting", rollout_id="r1", report=make_report(CANARY5_DONE, stats(CANARY))))
    trigger = RetrainTrigger(TriggerConfig(state_dir=tmp_path, poll_seconds=0.01), _NoBackend(),
                             controller=controller)

    def scraped(client: TestClient, until: Any) -> Samples:
        deadline = time.monotonic() + 10
        while not until(samples := exposition(client.get("/metrics").text)):
            assert time.monotonic() < deadline, "the trigger's loop did not export the rollout"
            time.sleep(0.02)
        return samples

    with TestClient(create_app(trigger, "token")) as client:
        samples = scraped(client, rollout_series)
        assert sample(samples, "stage_info", rollout_id="r1", challenger=NEW, champion=OLD, stage="canary 5%") == 1
        assert sample(samples, "rows", window="stage", role=CANARY) == 5_000
        controller.decision = IDLE
        assert sample(scraped(client, lambda s: not rollout_series(s)), "decisions_total", action="hold") >= 1
