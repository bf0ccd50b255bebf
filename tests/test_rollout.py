"""Staged rollout: every number `compare` reads from a hand-counted log (shadow then canary rows, labels, rows of
another rollout, of no rollout, written twice or outside the window), the score distance against its definition,
each limit of `decide` aborting with its numbers, holds until rows and minutes, the stages from shadow to
promotion, scorer alerts, the policy file's errors, the controller `step` and the command line."""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import wasserstein_distance

from fraudops import cli
from fraudops.decisions import DECLINE_COLUMN, REVIEW_COLUMN, Bands
from fraudops.errors import ConfigError
from fraudops.predlog import FEEDBACK, PREDICTIONS, LogChunk, LogWriter
from fraudops.registry import REGISTRY_URL_ENV, Registry, Rollout
from fraudops.rollout import (
    ACTOR,
    CANARY,
    CHALLENGER,
    CHAMPION,
    SHADOW,
    CanaryStep,
    Decision,
    GroupStats,
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


def rollout_log(root: Path, rollout_id: str = "r1", champion: str = OLD, challenger: str = NEW) -> str:
    """Shadow: requests A (4 rows) and B (2 rows), each scored by both models. Canary from CANARY_AT: C (rows 0, 1
    champion, row 2 canary) and D (row 0 champion, row 1 canary). Labels for every row but D's canary row. Left
    out: A's chunks written twice, a shadow row of an older rollout, rows of no rollout (one before the start,
    one from a replica that had not seen it), a row of another model, a row after NOW and a label after NOW."""
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
                disagreement: float = 0.02, distance: float = 0.05, whole: dict[str, GroupStats] | None = None
                ) -> RolloutReport:
    """A report whose stage holds ``challenger`` (in the rollout's role) and ``champion``."""
    role = challenger.group
    groups = {CHAMPION: champion or stats(CHAMPION, rows=challenger.rows), role: challenger}
    paired = challenger.rows if role == SHADOW else 0
    share = disagreement if paired else math.nan  # here every disagreement is about declining
    stage = WindowReport(_utc(rollout.stage_started_at), NOW, groups, paired, share, share, {role: distance})
    whole_window = WindowReport(_utc(rollout.started_at), NOW, whole or groups, paired, share, share,
                                {role: distance})
    return RolloutReport(rollout, NOW, whole_window, stage, "wasserstein", 0)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


def at_stage(mode: str, percent: float, minutes: float) -> Rollout:
    return Rollout("r1", NEW, OLD, mode, percent, (NOW - timedelta(days=2)).isoformat(),
                   (NOW - timedelta(minutes=minutes)).isoformat(), "alice", "retrained on drift")


SHADOW_DONE, CANARY5_DONE = at_stage(SHADOW, 0.0, 90), at_stage(CANARY, 5.0, 45)


@pytest.mark.parametrize(("rollout", "challenger", "options", "reason"), [
    (CANARY5_DONE, stats(CANARY, decline=0.079), {"champion": stats(CHAMPION, decline=0.031)},
     "canary 5%: canary decline rate 7.9% vs champion 3.1%: +4.8 pp > max 2 pp"),
    (SHADOW_DONE, stats(SHADOW, review=0.09), {}, "shadow: shadow review rate 9.0% vs champion 5.0%: +4.0 pp > "
                                                  "max 3 pp"),
    (SHADOW_DONE, stats(SHADOW), {"disagreement": 0.125},
     "shadow: shadow and champion disagree on declining 12.5% of 5,000 transactions (12.5% any decision) > max "
     "10%"),
    (CANARY5_DONE, stats(CANARY), {"distance": 0.31},
     "canary 5%: canary score distance from the champion 0.310 (wasserstein) > max 0.2"),
    (SHADOW_DONE, stats(SHADOW, latency=80.0), {}, "shadow: shadow p99 scoring time 80.0 ms > max 50 ms"),
    (CANARY5_DONE, stats(CANARY), {"whole": {CHAMPION: stats(CHAMPION, frauds=30, pr_auc=0.60, recall=0.5),
                                             CHALLENGER: stats(CHALLENGER, frauds=25, pr_auc=0.45, recall=0.5)}},
     "canary 5%: challenger PR-AUC 0.450 vs champion 0.600 on labelled rollout rows (25 and 30 frauds): -25.0% > "
     "max 10% drop"),
    (CANARY5_DONE, stats(CANARY), {"whole": {CHAMPION: stats(CHAMPION, frauds=30, pr_auc=0.6, recall=0.61),
                                             CANARY: stats(CANARY, frauds=25, pr_auc=0.6, recall=0.52)}},
     "canary 5%: challenger recall 52.0% vs champion 61.0% on labelled rollout rows (25 and 30 frauds): -9.0 pp > "
     "max 5 pp drop"),
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
    assert "canary decline rate 5.0% vs champion 3.0%: +2.0 pp <= max 2 pp" in decision.reason
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
     "canary 10%: canary decline rate 50.0% vs champion 33.3%: +16.7 pp > max 10 pp"),
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
    assert ["decline rate", "pending", "", "+2 pp"] in rows  # default policy: 1,000 rows before judging
    assert re.search(r"shadow and champion disagree on declining [\d.]+% and on any decision 33\.3% of 6 "
                     r"transactions scored by both", " ".join(out.split()))
    assert "policy verdict: hold: canary 10%: 2 of 10,000 canary rows, 60 of 720 minutes" in out
    path = tmp_path / "policy.yaml"
    path.write_text(STRICT_FILE)
    result = invoke(["status", "--log-root", log, "--policy", str(path)])
    assert ("policy verdict: abort: canary 10%: canary decline rate 50.0% vs champion 33.3%: +16.7 pp > max 10 pp"
            in result.stdout)
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

    def rollout(self) -> object | None:
        return object() if self.active else None


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
    assert idle.tick(t0) is None and len(calls) == 2


def test_the_controller_holds_when_it_cannot_see_the_scorer_alerts(monkeypatch):
    from fraudops import rollout as module

    monkeypatch.setattr(module, "step", lambda *_a: pytest.fail("stepped without knowing the alerts"))

    def down() -> list[str]:
        raise ConnectionError("prometheus is down")

    decision = module.Controller(_OneRollout(), "log", module.RolloutPolicy(), timedelta(0), alerts=down).tick()
    assert decision.action == "hold" and "prometheus is down" in decision.reason
