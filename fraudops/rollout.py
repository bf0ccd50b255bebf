"""Staged rollout of a challenger: shadow, then canary steps, then promotion, each judged on the prediction log.

`compare` measures the rows the scorer logged for a rollout (every row carries ``role`` and ``rollout_id``): per
role, decision rates, scores, latency and, where labels arrived, PR-AUC and recall; and the challenger's rows side by
side with the champion's scores of the same transactions: in shadow the champion's deciding rows, in canary the
champion's counterfactual rows (the scorer scores the canary's transactions with the champion too, off the request
path, and logs them as ``shadow`` rows of the champion's tag). The canary's share is sticky by account, not a random
sample of transactions, so only these pairs compare the two models without the bias of whose transactions each
decided. `decide` judges the current stage against a `RolloutPolicy` (on the pairs when it has enough of them), and
`step` applies the verdict through the registry, which keeps the rollout state beside the champion pointer so that
every scorer replica follows it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fraudops.decisions import APPROVE, DECLINE, DECLINE_COLUMN, REVIEW
from fraudops.evaluation import fraud_metrics
from fraudops.monitoring.drift import LABEL, SCORE, NumMethod, load_policy
from fraudops.monitoring.evidently_adapter import column_drift
from fraudops.monitoring.job import labelled_window
from fraudops.predlog import TIME_COLUMN
from fraudops.registry import CANARY, CHAMPION, SHADOW, Rollout

CHALLENGER = "challenger"
"""The group of all the challenger's rows (shadow and canary), reported when a window holds both."""
CHAMPION_ON_CANARY = "champion-on-canary"
"""The group of the champion's counterfactual rows: the canary's transactions, scored by the champion off the
request path (logged with role ``shadow`` and the champion's tag)."""
log = logging.getLogger(__name__)

ACTOR = "rollout-controller"
MIN_DISTANCE_ROWS = 30
"""Scores of fewer rows (on either side) make no distribution to measure a distance between."""
MAX_DISTANCE_ROWS = 200_000
"""Larger score samples are sampled down to this for the distance (as the drift job does)."""
Action = Literal["hold", "advance", "promote", "abort"]
Status = Literal["ok", "breach", "pending", "n/a"]
Compared = Literal["paired", "unpaired", ""]


# -- policy ---------------------------------------------------------------------------------------------------
class StagePolicy(BaseModel):
    """How long a stage lasts at least."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_rows: int = Field(ge=1, description="challenger rows (shadow or canary) the stage needs before it ends")
    min_minutes: float = Field(ge=0, description="minutes the stage lasts at least")


class CanaryStep(StagePolicy):
    """One canary stage: the challenger decides for ``percent`` of the traffic."""

    percent: float = Field(gt=0, lt=100, description="share of traffic (sticky by account) the challenger decides")


class RolloutPolicy(BaseModel):
    """When a rollout advances, is promoted or is aborted (a YAML file holds these keys).

    Rate, disagreement, distance and latency limits judge the current stage, once it has ``min_judged_rows``
    challenger rows; the labelled limits judge the whole rollout (labels are slow), once each model has
    ``min_labelled_frauds`` labelled frauds. A stage ends when it has its rows and minutes and no limit breaks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shadow: StagePolicy = StagePolicy(min_rows=10_000, min_minutes=1440)
    canary: tuple[CanaryStep, ...] = (CanaryStep(percent=5, min_rows=2_000, min_minutes=240),
                                      CanaryStep(percent=25, min_rows=10_000, min_minutes=720),
                                      CanaryStep(percent=50, min_rows=20_000, min_minutes=1440))
    min_judged_rows: int = Field(1_000, ge=1, description="challenger rows of a stage before its limits are judged")
    max_decline_rate_increase: float = Field(0.02, ge=0, le=1,
                                             description="decline rate the challenger may add (absolute)")
    max_review_rate_increase: float = Field(0.03, ge=0, le=1,
                                            description="review rate the challenger may add (absolute)")
    max_disagreement: float = Field(0.10, ge=0, le=1,
                                    description="share of the transactions both models scored (shadow, and canary "
                                                "ones the champion scored too) that one model declines and the other "
                                                "does not (approve/review moves are review workload, not judged)")
    score_method: NumMethod = "wasserstein"
    max_score_distance: float = Field(0.2, gt=0, description="distance of the challenger's scores from the champion's")
    max_latency_p99_ms: float = Field(50.0, gt=0, description="p99 of the challenger's scoring time per request")
    min_labelled_frauds: int = Field(50, ge=1, description="labelled frauds each model needs for the labelled limits")
    max_pr_auc_drop: float = Field(0.10, ge=0, le=1,
                                   description="relative PR-AUC drop versus the champion that aborts")
    max_recall_drop: float = Field(0.05, ge=0, le=1,
                                   description="recall at the decline threshold the challenger may lose (absolute)")

    @field_validator("canary")
    @classmethod
    def _increasing(cls, steps: tuple[CanaryStep, ...]) -> tuple[CanaryStep, ...]:
        percents = [s.percent for s in steps]
        if any(b <= a for a, b in pairwise(percents)):
            raise ValueError(f"canary percents {percents} must increase from step to step")
        return steps

    @model_validator(mode="after")
    def _judged_before_ending(self) -> RolloutPolicy:
        for name, stage in [("shadow", self.shadow), *((f"canary.{i}", s) for i, s in enumerate(self.canary))]:
            if stage.min_rows < self.min_judged_rows:
                raise ValueError(f"{name}.min_rows {stage.min_rows} is below min_judged_rows {self.min_judged_rows}: "
                                 "the stage could end before its limits are judged")
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> RolloutPolicy:
        """Read a policy from YAML; unknown keys and bad values are errors naming the key."""
        return load_policy(cls, path, "rollout policy")

    def stage(self, mode: str, percent: float) -> tuple[StagePolicy, tuple[str, float] | None]:
        """What the stage ``mode``/``percent`` needs, and the stage after it (None: promote). A canary share
        between the policy's steps needs what the next larger step needs."""
        if mode == SHADOW:
            return self.shadow, (CANARY, self.canary[0].percent) if self.canary else None
        larger = [s for s in self.canary if s.percent >= percent]
        after = [s for s in self.canary if s.percent > percent]
        needs = larger[0] if larger else self.canary[-1] if self.canary else self.shadow
        return needs, (CANARY, after[0].percent) if after else None


def stage_name(mode: str, percent: float) -> str:
    """``shadow`` or ``canary 5%``."""
    return SHADOW if mode == SHADOW else f"{CANARY} {percent:g}%"


# -- comparison -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupStats:
    """The rows of one role (or all the challenger's rows) in a window. Rates and scores count every row; PR-AUC
    and recall count the labelled rows (NaN unless they hold frauds and good customers)."""

    group: str
    model_tag: str
    rows: int
    requests: int
    decline_rate: float
    review_rate: float
    approve_rate: float
    score_mean: float
    score_p50: float
    score_p90: float
    score_p99: float
    latency_p50_ms: float
    latency_p99_ms: float
    """Of the scoring time per request (each request once)."""
    labelled: int
    frauds: int
    pr_auc: float
    recall: float
    """Share of the labelled frauds scored at or above the decline threshold the rows were decided with."""


@dataclass(frozen=True)
class Pairing:
    """A challenger group's rows side by side with the champion's scores of the same transactions (request_id and
    row): in shadow the champion's deciding rows, in canary its counterfactual ones (`CHAMPION_ON_CANARY`)."""

    challenger: GroupStats
    """The group's rows that the champion scored too."""
    champion: GroupStats
    """The champion's rows of the same transactions."""
    disagreement: float
    """Share of the pairs with any other decision."""
    decline_disagreement: float
    """Share of the pairs that exactly one of the two models declines (what the policy judges)."""
    score_distance: float

    @property
    def rows(self) -> int:
        """Transactions scored by both."""
        return self.challenger.rows


@dataclass(frozen=True)
class WindowReport:
    """Every group of one window [start, end), each challenger group's score distance from all the champion's
    scores (unpaired), and each challenger group's pairing with the champion on the same transactions (``shadow``,
    ``canary``, and ``challenger`` when both are paired; absent: no pairs)."""

    start: datetime
    end: datetime
    groups: dict[str, GroupStats]
    score_distance: dict[str, float]
    paired: dict[str, Pairing]

    def rows(self, group: str) -> int:
        """Rows of ``group`` (0 when absent)."""
        return self.groups[group].rows if group in self.groups else 0

    def challenger(self) -> GroupStats | None:
        """All the challenger's rows of the window."""
        return self.groups.get(CHALLENGER) or self.groups.get(SHADOW) or self.groups.get(CANARY)

    def pairs(self) -> Pairing | None:
        """All the window's pairs (shadow and canary: those of the roles that have any)."""
        return self.paired.get(CHALLENGER) or self.paired.get(SHADOW) or self.paired.get(CANARY)

    @property
    def paired_rows(self) -> int:
        """Transactions scored by both models (`pairs`)."""
        pairs = self.pairs()
        return pairs.rows if pairs else 0

    @property
    def disagreement(self) -> float:
        """Share of the window's pairs with any other decision (NaN without pairs)."""
        pairs = self.pairs()
        return pairs.disagreement if pairs else math.nan

    @property
    def decline_disagreement(self) -> float:
        """Share of the window's pairs that exactly one model declines (NaN without pairs)."""
        pairs = self.pairs()
        return pairs.decline_disagreement if pairs else math.nan


@dataclass(frozen=True)
class RolloutReport:
    """The rollout's rows up to ``end``: all of them, and those of the current stage."""

    rollout: Rollout
    end: datetime
    whole: WindowReport
    stage: WindowReport
    score_method: str
    corrupt_parts: int


def _utc(value: datetime | str) -> datetime:
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def _rollout_rows(log_root: str, rollout: Rollout, end: datetime) -> tuple[pd.DataFrame, int]:
    """The rollout's logged rows with their labels (each row once), and the count of unreadable log files."""
    frame = labelled_window(log_root, _utc(rollout.started_at), end, feedback_until=end)
    corrupt = int(frame.attrs.get("corrupt_parts", 0))
    if "rollout_id" not in frame or "model_tag" not in frame:
        return pd.DataFrame(columns=[TIME_COLUMN, "request_id", "row", "model_tag", "role", SCORE, "decision",
                                     LABEL]), corrupt
    keep = ((frame["rollout_id"] == rollout.id) &
            frame["model_tag"].isin([rollout.champion, rollout.challenger])).to_numpy()
    role = frame["role"].fillna(CHAMPION) if "role" in frame else pd.Series(CHAMPION, index=frame.index)
    return frame.loc[keep].assign(role=role[keep]).reset_index(drop=True), corrupt


def _quantiles(values: np.ndarray, qs: Sequence[float]) -> list[float]:
    return [float(v) for v in np.quantile(values, qs)] if len(values) else [math.nan] * len(qs)


def _group_stats(group: str, tag: str, rows: pd.DataFrame) -> GroupStats:
    n = len(rows)
    decisions = rows["decision"].to_numpy()
    rate = {d: float((decisions == d).mean()) if n else math.nan for d in (DECLINE, REVIEW, APPROVE)}
    scores = rows[SCORE].to_numpy("float64")
    latency = (rows.drop_duplicates("request_id")["latency_ms"].dropna().to_numpy("float64")
               if "latency_ms" in rows else np.empty(0))
    labels = rows[LABEL].astype("float64").to_numpy()
    labelled = ~np.isnan(labels)
    y, labelled_scores = labels[labelled].astype("int64"), scores[labelled]
    pr_auc = recall = math.nan
    if len(np.unique(y)) == 2:
        thresholds = rows[DECLINE_COLUMN].dropna() if DECLINE_COLUMN in rows else pd.Series(dtype="float64")
        threshold = float(thresholds.mode().iloc[0]) if len(thresholds) else math.inf  # the one most rows had
        metrics = fraud_metrics(y, labelled_scores, threshold, what=f"labelled {group} rows")
        pr_auc = metrics["pr_auc"]
        recall = metrics["recall_at_threshold"] if len(thresholds) else math.nan
    p50, p90, p99 = _quantiles(scores, (0.5, 0.9, 0.99))
    lat50, lat99 = _quantiles(latency, (0.5, 0.99))
    return GroupStats(group=group, model_tag=tag, rows=n, requests=int(rows["request_id"].nunique()),
                      decline_rate=rate[DECLINE], review_rate=rate[REVIEW], approve_rate=rate[APPROVE],
                      score_mean=float(scores.mean()) if n else math.nan, score_p50=p50, score_p90=p90,
                      score_p99=p99, latency_p50_ms=lat50, latency_p99_ms=lat99, labelled=int(labelled.sum()),
                      frauds=int(y.sum()), pr_auc=pr_auc, recall=recall)


def _distance(reference: pd.DataFrame, current: pd.DataFrame, method: str) -> float:
    """The drift job's distance (Evidently, ``method``) of ``current``'s scores from ``reference``'s."""
    if min(len(reference), len(current)) < MIN_DISTANCE_ROWS:
        return math.nan
    ref, cur = (frame[[SCORE]].sample(min(len(frame), MAX_DISTANCE_ROWS), random_state=0)
                for frame in (reference, current))
    result = column_drift(ref, cur, [SCORE], [], num_method=method, cat_method="jensenshannon",
                          thresholds={SCORE: math.inf})
    return result.columns[SCORE].distance


def _pairing(name: str, challenger: pd.DataFrame, champion: pd.DataFrame, tags: dict[str, str],
             method: str) -> Pairing | None:
    """``challenger``'s rows beside ``champion``'s rows of the same (request_id, row); None without any."""
    keys = ["request_id", "row"]
    pairs = challenger[keys].reset_index().merge(champion[keys].reset_index(), on=keys, suffixes=("", "_champion"))
    if not len(pairs):
        return None
    mine, theirs = challenger.loc[pairs["index"]], champion.loc[pairs["index_champion"]]
    ours, others = mine["decision"].to_numpy(), theirs["decision"].to_numpy()
    return Pairing(_group_stats(name, tags[name], mine), _group_stats(CHAMPION, tags[CHAMPION], theirs),
                   float((ours != others).mean()), float(((ours == DECLINE) != (others == DECLINE)).mean()),
                   _distance(theirs, mine, method))


def _window(rows: pd.DataFrame, rollout: Rollout, start: datetime, end: datetime, method: str) -> WindowReport:
    mode_role = SHADOW if rollout.mode == SHADOW else CANARY
    role, tag = rows["role"].to_numpy(), rows["model_tag"].to_numpy()
    shadow = role == SHADOW
    masks = {CHAMPION: role == CHAMPION, SHADOW: shadow & (tag == rollout.challenger), CANARY: role == CANARY,
             CHAMPION_ON_CANARY: shadow & (tag == rollout.champion)}
    by_group = {group: rows[mask] for group, mask in masks.items()}
    tags = {CHAMPION: rollout.champion, SHADOW: rollout.challenger, CANARY: rollout.challenger,
            CHALLENGER: rollout.challenger, CHAMPION_ON_CANARY: rollout.champion}
    frames = {group: frame for group, frame in by_group.items() if len(frame) or group in (CHAMPION, mode_role)}
    if len(by_group[SHADOW]) and len(by_group[CANARY]):
        frames[CHALLENGER] = pd.concat([by_group[SHADOW], by_group[CANARY]])
    groups = {name: _group_stats(name, tags[name], frame) for name, frame in frames.items()}
    distance = {name: _distance(by_group[CHAMPION], frame, method)
                for name, frame in frames.items() if name != CHAMPION}
    references = {SHADOW: by_group[CHAMPION], CANARY: by_group[CHAMPION_ON_CANARY]}
    paired = {name: pairing for name, reference in references.items()
              if (pairing := _pairing(name, by_group[name], reference, tags, method)) is not None}
    if len(paired) == 2:  # the union of both: the rows are distinct (one role per transaction and model)
        paired[CHALLENGER] = _pairing(CHALLENGER, frames[CHALLENGER],
                                      pd.concat([by_group[CHAMPION], by_group[CHAMPION_ON_CANARY]]), tags, method)
    return WindowReport(start, end, groups, distance, paired)


def compare(log_root: str, rollout: Rollout, now: datetime | None = None, *,
            score_method: str = "wasserstein") -> RolloutReport:
    """Measure the rows logged for ``rollout`` from its start to ``now`` (default: the current time), and those
    of its current stage; labels are those recorded up to ``now``."""
    end = now or datetime.now(UTC)
    rows, corrupt = _rollout_rows(log_root, rollout, end)
    stage_start = _utc(rollout.stage_started_at)
    in_stage = (rows[TIME_COLUMN] >= pd.Timestamp(stage_start)).to_numpy() if len(rows) else np.empty(0, bool)
    return RolloutReport(rollout=rollout, end=end,
                         whole=_window(rows, rollout, _utc(rollout.started_at), end, score_method),
                         stage=_window(rows[in_stage], rollout, stage_start, end, score_method),
                         score_method=score_method, corrupt_parts=corrupt)


# -- decision -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One limit of the policy: what it measured, its limit, and whether it holds (``pending``: too few rows or
    labels yet; ``n/a``: it does not apply to this stage). ``compared``: for a judged comparison of the two
    models, ``paired`` (on the same transactions) or ``unpaired`` (on all the champion's rows)."""

    name: str
    value: str
    limit: str
    status: Status
    reason: str
    compared: Compared = ""


@dataclass(frozen=True)
class Decision:
    """What the controller does now and why; ``mode``/``percent`` name the next stage when advancing; ``report``:
    the comparison it was judged on (None when nothing was compared)."""

    action: Action
    reason: str
    mode: str | None = None
    percent: float | None = None
    checks: tuple[Check, ...] = ()
    rollout_id: str | None = None
    report: RolloutReport | None = field(default=None, repr=False, compare=False)


IDLE = Decision("hold", "no rollout is active")
"""What the controller decides while no rollout is active."""


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1%}"


def _pp(value: float) -> str:
    return f"{round(value * 100, 1) + 0.0:+.1f} pp"  # + 0.0: no "-0.0"


def _increase(name: str, who: str, challenger: float, champion: float, limit: float,
              on: str) -> tuple[str, Status, str]:
    diff = challenger - champion
    status: Status = "breach" if diff > limit + 1e-12 else "ok"
    sign = ">" if status == "breach" else "<="
    return (f"{_pct(challenger)} vs {_pct(champion)} ({_pp(diff)})", status,
            f"{who} {name} {_pct(challenger)} vs champion {_pct(champion)}{on}: {_pp(diff)} {sign} max "
            f"{limit * 100:g} pp")


def _checks(report: RolloutReport, policy: RolloutPolicy, rollout: Rollout,
            alerts_firing: Sequence[str]) -> list[Check]:
    """The stage's limits compare the challenger's rows with the champion's scores of the same transactions when
    the stage has ``min_judged_rows`` of them, else with all the champion's rows of the stage (unpaired, as a
    scorer that logs no counterfactual rows allows: the canary then decides for other accounts than the champion)."""
    stage, whole = report.stage, report.whole
    who = SHADOW if rollout.mode == SHADOW else CANARY
    rows = stage.rows(who)
    judged = rows >= policy.min_judged_rows
    waiting = f"waiting for {policy.min_judged_rows:,} {who} rows in this stage ({rows:,} so far)"
    pairing = stage.paired.get(who)
    pairs = pairing.rows if pairing else 0
    compared: Compared = "paired" if pairs >= policy.min_judged_rows else "unpaired"
    if pairing is not None and compared == "paired":  # a shadow pairs by design: unsaid
        challenger, champion, distance = pairing.challenger, pairing.champion, pairing.score_distance
        on = f" on the same {pairs:,} transactions" if who == CANARY else ""
    else:
        challenger, champion = stage.groups.get(who), stage.groups.get(CHAMPION)
        distance, on = stage.score_distance.get(who, math.nan), " on the champion's own rows (unpaired)"
    checks: list[Check] = []

    def add(name: str, limit: str, applies: bool, measure: Any, why: str = "not measured in this stage",
            compares: bool = True) -> None:
        """``measure()`` -> (value, status, reason), called only when the check ``applies`` and is judged;
        ``compares``: a comparison of the two models (paired or not)."""
        if not applies:
            checks.append(Check(name, "", limit, "n/a", f"{name}: {why}"))
        elif not judged:
            checks.append(Check(name, "", limit, "pending", waiting))
        else:
            value, status, reason = measure()
            judging = compares and status in ("ok", "breach")
            checks.append(Check(name, value, limit, status, reason, compared if judging else ""))

    if rollout.mode == CANARY:
        firing = ", ".join(alerts_firing)
        checks.append(Check("scorer alerts", firing or "none", "none", "breach" if alerts_firing else "ok",
                            f"scorer alerts firing during the canary: {firing}" if alerts_firing
                            else "no scorer alert firing"))
    else:
        checks.append(Check("scorer alerts", "", "none", "n/a", "scorer alerts: not judged in shadow (the champion "
                                                                  "decides)"))
    both = challenger is not None and champion is not None and champion.rows > 0
    add("decline rate", f"+{policy.max_decline_rate_increase * 100:g} pp", both,
        lambda: _increase("decline rate", who, challenger.decline_rate, champion.decline_rate,
                          policy.max_decline_rate_increase, on))
    add("review rate", f"+{policy.max_review_rate_increase * 100:g} pp", both,
        lambda: _increase("review rate", who, challenger.review_rate, champion.review_rate,
                          policy.max_review_rate_increase, on))

    def disagreement() -> tuple[str, Status, str]:
        if pairing is None or compared == "unpaired":
            return "", "n/a", (f"disagreement: only {pairs:,} {who} transactions scored by the champion too, fewer "
                               f"than {policy.min_judged_rows:,} (unpaired)")
        share, limit = pairing.decline_disagreement, policy.max_disagreement
        status: Status = "breach" if share > limit else "ok"
        return (f"{_pct(share)} of {pairs:,}", status,
                f"{who} and champion disagree on declining {_pct(share)} of {pairs:,} transactions "
                f"({_pct(pairing.disagreement)} any decision) {'>' if status == 'breach' else '<='} max {limit:.0%}")

    add("disagreement", f"{policy.max_disagreement:.0%}", pairing is not None, disagreement,
        f"needs the champion's scores of the {who} transactions")

    def score_distance() -> tuple[str, Status, str]:
        if math.isnan(distance):
            return "", "pending", f"score distance: waiting for {MIN_DISTANCE_ROWS} rows of each model"
        status: Status = "breach" if distance > policy.max_score_distance else "ok"
        return (f"{distance:.3f}", status, f"{who} score distance from the champion {distance:.3f} "
                f"({report.score_method}){on} {'>' if status == 'breach' else '<='} max "
                f"{policy.max_score_distance:g}")

    add("score distance", f"{policy.max_score_distance:g}", both, score_distance)
    mine = stage.groups.get(who)
    latency = mine.latency_p99_ms if mine is not None else math.nan

    def latency_check() -> tuple[str, Status, str]:
        status: Status = "breach" if latency > policy.max_latency_p99_ms else "ok"
        return (f"{latency:.1f} ms", status, f"{who} p99 scoring time {latency:.1f} ms "
                f"{'>' if status == 'breach' else '<='} max {policy.max_latency_p99_ms:g} ms")

    add("latency p99", f"{policy.max_latency_p99_ms:g} ms", not math.isnan(latency), latency_check, compares=False)
    checks += _labelled_checks(whole, policy)
    return checks


def _labelled_checks(whole: WindowReport, policy: RolloutPolicy) -> list[Check]:
    """PR-AUC and recall over the whole rollout, once each model has enough labelled frauds: on the same
    transactions when every role of the challenger has pairs and they hold enough frauds, else on all the rollout's
    rows of each model."""
    need = policy.min_labelled_frauds
    pr_limit, recall_limit = f"-{policy.max_pr_auc_drop:.0%}", f"-{policy.max_recall_drop * 100:g} pp"
    mine = whole.challenger()
    pairing = whole.paired.get(mine.group) if mine is not None else None
    if pairing is not None and pairing.challenger.frauds < need:
        pairing = None
    challenger, champion = (pairing.challenger, pairing.champion) if pairing else (mine, whole.groups.get(CHAMPION))
    frauds = (challenger.frauds if challenger else 0, champion.frauds if champion else 0)
    if min(frauds) < need or challenger is None or champion is None:
        reason = (f"waiting for {need} labelled frauds per model ({frauds[0]} challenger, {frauds[1]} champion "
                  "so far)")
        return [Check("PR-AUC", "", pr_limit, "pending", reason), Check("recall", "", recall_limit, "pending", reason)]
    compared: Compared = "paired" if pairing else "unpaired"
    on = (f"on the same labelled transactions ({challenger.frauds} frauds)" if pairing else
          f"on labelled rollout rows ({challenger.frauds} and {champion.frauds} frauds, unpaired)")
    checks = []
    if math.isnan(challenger.pr_auc) or math.isnan(champion.pr_auc):
        checks.append(Check("PR-AUC", "", pr_limit, "pending", "PR-AUC needs labelled good customers too"))
    else:
        drop = 1 - challenger.pr_auc / champion.pr_auc if champion.pr_auc > 0 else 0.0
        change = 0.0 - drop  # 0.0 -: no "-0%"
        status: Status = "breach" if drop > policy.max_pr_auc_drop else "ok"
        checks.append(Check("PR-AUC", f"{challenger.pr_auc:.3f} vs {champion.pr_auc:.3f} ({change:+.0%})", pr_limit,
                            status, f"challenger PR-AUC {challenger.pr_auc:.3f} vs champion {champion.pr_auc:.3f} "
                            f"{on}: {change:+.1%} {'>' if status == 'breach' else 'within'} max "
                            f"{policy.max_pr_auc_drop:.0%} drop", compared))
    if math.isnan(challenger.recall) or math.isnan(champion.recall):
        checks.append(Check("recall", "", recall_limit, "pending", "recall needs the logged decline thresholds"))
    else:
        drop = champion.recall - challenger.recall
        status = "breach" if drop > policy.max_recall_drop + 1e-12 else "ok"
        checks.append(Check("recall", f"{challenger.recall:.1%} vs {champion.recall:.1%} ({_pp(-drop)})",
                            recall_limit, status, f"challenger recall {challenger.recall:.1%} vs champion "
                            f"{champion.recall:.1%} {on}: {_pp(-drop)} {'>' if status == 'breach' else 'within'} "
                            f"max {policy.max_recall_drop * 100:g} pp drop", compared))
    return checks


def decide(report: RolloutReport, policy: RolloutPolicy, rollout: Rollout, now: datetime | None = None,
           alerts_firing: Sequence[str] = ()) -> Decision:
    """Judge ``rollout``'s current stage: abort if a limit breaks (or, in canary, a scorer alert fires); hold
    until the stage has its rows and minutes; then advance to the next stage, or promote after the last one."""
    now = now or report.end
    checks = _checks(report, policy, rollout, alerts_firing)
    name = stage_name(rollout.mode, rollout.percent)

    def decision(action: Action, reason: str, target: tuple[str, float] | None = None) -> Decision:
        return Decision(action, reason, *(target or (None, None)), checks=tuple(checks), rollout_id=rollout.id,
                        report=report)

    breaches = [c.reason for c in checks if c.status == "breach"]
    if breaches:
        return decision("abort", f"{name}: {'; '.join(breaches)}")
    needs, after = policy.stage(rollout.mode, rollout.percent)
    who = SHADOW if rollout.mode == SHADOW else CANARY
    rows = report.stage.rows(who)
    minutes = (now - _utc(rollout.stage_started_at)).total_seconds() / 60
    missing = ([f"{rows:,} of {needs.min_rows:,} {who} rows"] if rows < needs.min_rows else []) + (
        [f"{minutes:,.0f} of {needs.min_minutes:,.0f} minutes"] if minutes < needs.min_minutes else [])
    if missing:
        return decision("hold", f"{name}: {', '.join(missing)}")
    within = [c.reason for c in checks if c.status == "ok"] or ["no limit could be judged"]
    pending = list(dict.fromkeys(c.reason for c in checks if c.status == "pending"))
    notes = "; ".join(within + ([f"not judged yet: {', '.join(pending)}"] if pending else []))
    held = f"{name} held {minutes:,.0f} minutes over {rows:,} {who} rows ({notes})"
    if after is None:
        return decision("promote", f"{held}: promote {rollout.challenger}")
    return decision("advance", f"{held}: advance to {stage_name(*after)}", after)


# -- controller -----------------------------------------------------------------------------------------------
class RolloutRegistry(Protocol):
    """What `step` needs of `fraudops.registry.Registry`."""

    def rollout(self) -> Rollout | None: ...

    def set_rollout_stage(self, mode: str, percent: float, *, reason: str, actor: str,
                          rollout_id: str | None = ...) -> dict[str, Any]: ...

    def abort_rollout(self, *, reason: str, actor: str, rollout_id: str | None = ...) -> dict[str, Any]: ...

    def promote(self, tag: str, reason: str, actor: str = ..., rollout_id: str | None = ...) -> dict[str, Any]: ...


def step(registry: RolloutRegistry, log_root: str, policy: RolloutPolicy, now: datetime | None = None,
         alerts_firing: Sequence[str] = ()) -> Decision:
    """One controller step: compare the active rollout, decide, and apply the decision through ``registry`` as
    `ACTOR` with the decision's reason. `IDLE` (a hold with no ``rollout_id``) when no rollout is active."""
    rollout = registry.rollout()
    if rollout is None:
        return IDLE
    now = now or datetime.now(UTC)
    report = compare(log_root, rollout, now, score_method=policy.score_method)
    decision = decide(report, policy, rollout, now, alerts_firing)
    if decision.action == "advance":
        registry.set_rollout_stage(decision.mode, decision.percent, reason=decision.reason, actor=ACTOR,
                                   rollout_id=rollout.id)
    elif decision.action == "promote":
        registry.promote(rollout.challenger, reason=decision.reason, actor=ACTOR, rollout_id=rollout.id)
    elif decision.action == "abort":
        registry.abort_rollout(reason=decision.reason, actor=ACTOR, rollout_id=rollout.id)
    return decision


SCORER_ALERTS = ("FraudopsScorerErrorRate", "FraudopsScorerLatencyHigh", "FraudopsPredictionLogFailing")
"""The scorer's own alerts (monitoring/rules): any of them firing during a canary aborts it."""


def firing_scorer_alerts(prometheus_url: str, timeout: float = 5.0) -> list[str]:
    """The scorer alerts firing now, from Prometheus' ``/api/v1/alerts``."""
    import httpx

    response = httpx.get(f"{prometheus_url.rstrip('/')}/api/v1/alerts", timeout=timeout)
    response.raise_for_status()
    return sorted({a["labels"].get("alertname", "") for a in response.json()["data"]["alerts"]
                   if a.get("state") == "firing" and a["labels"].get("alertname") in SCORER_ALERTS})


class Controller:
    """Runs `step` at most every ``every`` (the retrain trigger calls `tick` from its loop), with the firing
    scorer alerts from ``alerts``. Alerts it cannot read make it hold: no stage advances unwatched."""

    def __init__(self, registry: RolloutRegistry, log_root: str, policy: RolloutPolicy, every: timedelta,
                 alerts: Callable[[], Sequence[str]] | None = None) -> None:
        self.registry, self.log_root, self.policy, self.every, self.alerts = registry, log_root, policy, every, alerts
        self._last: datetime | None = None

    def tick(self, now: datetime | None = None) -> Decision | None:
        """One step if one is due: its decision (`IDLE` when no rollout is active; a hold without a report when
        the alerts cannot be read), else None."""
        now = now or datetime.now(UTC)
        if self._last is not None and now - self._last < self.every:
            return None
        self._last = now
        rollout = self.registry.rollout()
        if rollout is None:
            return IDLE
        try:
            firing = list(self.alerts()) if self.alerts else []
        except Exception as exc:  # Prometheus down: judge nothing rather than advance blind
            log.warning("rollout controller holds: cannot read the scorer's alerts: %s", exc)
            return Decision("hold", f"cannot read the scorer's alerts: {exc}", rollout_id=rollout.id)
        decision = step(self.registry, self.log_root, self.policy, now, firing)
        (log.info if decision.action != "hold" else log.debug)("rollout %s: %s: %s", decision.rollout_id,
                                                                decision.action, decision.reason)
        return decision
