"""Threshold backtests: replay the logged scores of labelled transactions under the decision bands they were
decided with and under proposed ones, and sweep the decline threshold for the cost-optimal bands.

Label-based numbers count only rows whose label has arrived (the feedback join of the drift job: the label recorded
last wins). A band set costs ``cost_fn x frauds approved + cost_fp x good customers declined + cost_review x
reviews``: a review is assumed to stop a fraud and to let a good customer through.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from fraudops.decisions import APPROVE, DECLINE, DECLINE_COLUMN, REVIEW, REVIEW_COLUMN, Bands
from fraudops.errors import ConfigError, DataError
from fraudops.monitoring.drift import LABEL, SCORE
from fraudops.monitoring.job import labelled_window, logged_bands
from fraudops.predlog import TIME_COLUMN

MIN_FRAUDS = 30
"""Below this many labelled frauds, recall and cost estimates are weak (a warning says so)."""


@dataclass(frozen=True)
class Costs:
    """What a missed fraud, a declined good customer and a review cost."""

    fn: float
    fp: float
    review: float = 0.0

    def formula(self) -> str:
        """The cost formula with these costs."""
        return (f"cost = {self.fn:g} x frauds approved + {self.fp:g} x good customers declined + "
                f"{self.review:g} x reviews")


@dataclass(frozen=True)
class Model:
    """The model whose logged rows are replayed: its tag, its decision threshold and its training costs."""

    tag: str
    threshold: float
    costs: Costs


def model_for_backtest(registry: Any, tag: str, cost_fn: float | None = None, cost_fp: float | None = None,
                       cost_review: float = 0.0) -> Model:
    """The registered model ``tag`` (``champion`` allowed) with the costs it was trained with, each replaced by
    ``cost_fn`` / ``cost_fp`` when given."""
    for option, value in (("--cost-fn", cost_fn), ("--cost-fp", cost_fp), ("--cost-review", cost_review)):
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"{option} {value:g} must be a finite cost >= 0")
    info = registry.info(tag)
    params = info.metadata.get("params") or {}
    fn = cost_fn if cost_fn is not None else params.get("cost_fn")
    fp = cost_fp if cost_fp is not None else params.get("cost_fp")
    if fn is None or fp is None:
        raise ConfigError(f"model {info.tag} does not record its training costs: pass --cost-fn and --cost-fp")
    return Model(info.tag, float(info.metadata["threshold"]), Costs(float(fn), float(fp), float(cost_review)))


def check_proposal(review: float | None = None, decline: float | None = None, review_factor: float | None = None,
                   decline_factor: float | None = None) -> None:
    """Refuse proposed thresholds that are wrong whatever the log holds (checked before reading it)."""
    if (review is not None or decline is not None) and (review_factor is not None or decline_factor is not None):
        raise ConfigError("give thresholds either as --review/--decline or as --review-factor/--decline-factor, "
                          "not both")
    for option, value in (("--review", review), ("--decline", decline)):
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"{option} {value:g} is not a score threshold in [0, 1]")
    for option, value in (("--review-factor", review_factor), ("--decline-factor", decline_factor)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{option} {value:g} must be a factor > 0 of the model threshold")
    for (low_name, low), (high_name, high) in ((("--review", review), ("--decline", decline)),
                                               (("--review-factor", review_factor),
                                                ("--decline-factor", decline_factor))):
        if low is not None and high is not None and low > high:
            raise ConfigError(f"{low_name} {low:g} must not exceed {high_name} {high:g}")


def proposed_bands(current: Bands, threshold: float, review: float | None = None, decline: float | None = None,
                   review_factor: float | None = None, decline_factor: float | None = None) -> Bands | None:
    """The bands to try: absolute thresholds, or factors of the model's ``threshold`` (as the scorer's
    ``FRAUDOPS_REVIEW_FACTOR`` / ``FRAUDOPS_DECLINE_FACTOR``); an omitted one stays at ``current``. None when
    nothing is proposed."""
    check_proposal(review, decline, review_factor, decline_factor)
    names = ("--review", "--decline")
    if review_factor is not None or decline_factor is not None:
        names = ("--review-factor", "--decline-factor")
        review = None if review_factor is None else review_factor * threshold
        decline = None if decline_factor is None else decline_factor * threshold
    if review is None and decline is None:
        return None
    bands = Bands(review=current.review if review is None else review,
                  decline=current.decline if decline is None else decline)
    if bands.review > bands.decline:  # one of them is the current one
        given, other, which = (names[0], names[1], "decline") if decline is None else (names[1], names[0], "review")
        raise ConfigError(f"{given} puts the bands at review {bands.review:.4g}, decline {bands.decline:.4g}, with "
                          f"the current {which} threshold: the review threshold must not exceed the decline "
                          f"threshold; give {other} too")
    return bands


@dataclass(frozen=True)
class Replay:
    """The rows one model scored in a window: score, the bands each was decided with, label (NaN: none yet)."""

    model_tag: str
    end: datetime
    scores: np.ndarray
    review: np.ndarray
    decline: np.ndarray
    labels: np.ndarray
    first_logged: pd.Timestamp
    last_logged: pd.Timestamp
    unbanded_rows: int
    """Rows logged without their bands (by a scorer that did not record them yet), replayed with ``usual``."""
    usual: Bands
    """The bands most rows were logged with (else the default bands around the model threshold): a proposal
    keeps the threshold it omits from them."""
    corrupt_parts: int

    @property
    def labelled(self) -> np.ndarray:
        """Which rows have a label."""
        return ~np.isnan(self.labels)

    def band_settings(self) -> list[tuple[Bands, int]]:
        """Each distinct pair of logged bands and its row count, most used first."""
        pairs = pd.DataFrame({"review": self.review, "decline": self.decline}).value_counts()
        return [(Bands(float(r), float(d)), int(n)) for (r, d), n in pairs.items()]


def load_replay(log_root: str, start: datetime, end: datetime, model: Model) -> Replay:
    """The rows ``model`` scored in [start, end) with their labels; `DataError` if there are none."""
    frame = labelled_window(log_root, start, end, model_tag=model.tag)
    if frame.empty:
        raise DataError(f"no predictions of model {model.tag} were logged in {log_root} between "
                        f"{start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC")
    corrupt = int(frame.attrs.get("corrupt_parts", 0))
    usual = logged_bands(frame, model.threshold)
    bands = frame.reindex(columns=[REVIEW_COLUMN, DECLINE_COLUMN]).astype("float64")
    unbanded = bands.isna().any(axis=1)
    bands.loc[unbanded] = [usual.review, usual.decline]
    times = frame[TIME_COLUMN]
    return Replay(model.tag, end, frame[SCORE].to_numpy("float64"), bands[REVIEW_COLUMN].to_numpy(),
                  bands[DECLINE_COLUMN].to_numpy(), frame[LABEL].astype("float64").to_numpy(), times.min(),
                  times.max(), int(unbanded.sum()), usual, corrupt)


def decide(scores: np.ndarray, review: np.ndarray | float, decline: np.ndarray | float) -> np.ndarray:
    """Each score's decision under its own bands (`Bands.decide`, applied to the rows of each band setting)."""
    review, decline = np.broadcast_to(review, scores.shape), np.broadcast_to(decline, scores.shape)
    settings = pd.DataFrame({"review": review, "decline": decline}).groupby(["review", "decline"], sort=False)
    decisions = np.empty(len(scores), dtype=object)
    for (r, d), rows in settings.indices.items():
        decisions[rows] = Bands(review=float(r), decline=float(d)).decide(scores[rows].tolist())
    return decisions


def _share(part: float, whole: float) -> float:
    return part / whole if whole else float("nan")


@dataclass(frozen=True)
class Outcome:
    """What one band set does to a window: label-based counts over the labelled rows, decision counts over all
    scored rows (no label needed), and the cost."""

    labelled: int
    frauds: int
    declined: int
    reviewed: int
    frauds_declined: int
    frauds_reviewed: int
    good_declined: int
    scored: int
    scored_declined: int
    scored_reviewed: int
    cost: float

    @property
    def good(self) -> int:
        """Labelled good customers."""
        return self.labelled - self.frauds

    @property
    def approved(self) -> int:
        """Labelled rows approved."""
        return self.labelled - self.declined - self.reviewed

    @property
    def frauds_approved(self) -> int:
        """Frauds missed: approved without a review."""
        return self.frauds - self.frauds_declined - self.frauds_reviewed

    @property
    def scored_approved(self) -> int:
        """Scored rows (labelled or not) approved."""
        return self.scored - self.scored_declined - self.scored_reviewed

    def rate(self, decision: str) -> float:
        """Share of the labelled rows that get ``decision``."""
        counts = {DECLINE: self.declined, REVIEW: self.reviewed, APPROVE: self.approved}
        return _share(counts[decision], self.labelled)

    def scored_rate(self, decision: str) -> float:
        """Share of all scored rows that get ``decision``."""
        counts = {DECLINE: self.scored_declined, REVIEW: self.scored_reviewed, APPROVE: self.scored_approved}
        return _share(counts[decision], self.scored)

    def labelled_share(self, decision: str) -> float:
        """Share of the scored rows getting ``decision`` whose label has arrived (declined transactions, for one,
        rarely get a chargeback)."""
        labelled = {DECLINE: self.declined, REVIEW: self.reviewed, APPROVE: self.approved}
        return _share(labelled[decision], {DECLINE: self.scored_declined, REVIEW: self.scored_reviewed,
                                           APPROVE: self.scored_approved}[decision])

    @property
    def recall(self) -> float:
        """Share of the frauds declined."""
        return _share(self.frauds_declined, self.frauds)

    @property
    def false_positive_rate(self) -> float:
        """Share of the good customers declined."""
        return _share(self.good_declined, self.good)

    @property
    def cost_per_1k(self) -> float:
        """Cost per 1,000 labelled rows."""
        return _share(self.cost * 1000, self.labelled)


def outcome(scores: np.ndarray, labels: np.ndarray, review: np.ndarray | float, decline: np.ndarray | float,
            costs: Costs) -> Outcome:
    """The outcome of deciding ``scores`` (labels 1, 0 or NaN for none yet) with these bands (per row or one)."""
    decisions = decide(scores, review, decline)
    labelled = ~np.isnan(labels)
    fraud, good = labelled & (labels == 1), labelled & (labels == 0)
    declined, reviewed = decisions == DECLINE, decisions == REVIEW
    frauds_approved = int((fraud & ~declined & ~reviewed).sum())
    good_declined = int((good & declined).sum())
    labelled_reviews = int((labelled & reviewed).sum())
    return Outcome(labelled=int(labelled.sum()), frauds=int(fraud.sum()), declined=int((labelled & declined).sum()),
                   reviewed=labelled_reviews, frauds_declined=int((fraud & declined).sum()),
                   frauds_reviewed=int((fraud & reviewed).sum()), good_declined=good_declined,
                   scored=len(scores), scored_declined=int(declined.sum()), scored_reviewed=int(reviewed.sum()),
                   cost=costs.fn * frauds_approved + costs.fp * good_declined + costs.review * labelled_reviews)


@dataclass(frozen=True)
class CurvePoint:
    """The decline-only policy (no review band) at one decline threshold, over the labelled rows."""

    threshold: float
    decline_rate: float
    recall: float
    false_positive_rate: float
    cost: float


@dataclass(frozen=True)
class Sweep:
    """The decline curve and the cost-optimal bands: without a review band (every flag a decline, as the
    training threshold is chosen) and, when reviews cost something, with the best review band below it."""

    curve: list[CurvePoint]
    decline_only: Bands
    with_review: Bands | None

    @property
    def optimal(self) -> Bands:
        """The cost-optimal bands: with a review band when reviews cost something."""
        return self.with_review or self.decline_only


def _round_within(low: float, high: float) -> float:
    """The shortest decimal in (low, high]: a threshold that splits the scores as ``high`` does."""
    for digits in range(1, 13):
        value = math.floor(high * 10**digits) / 10**digits
        if low < value <= high:
            return value
    return high


def sweep(scores: np.ndarray, labels: np.ndarray, costs: Costs, step: float = 0.05,
          marks: Sequence[float] = ()) -> Sweep:
    """The cost-optimal bands over every cut between distinct labelled scores, and the curve at every ``step``,
    at ``marks`` and at the optimal decline thresholds. The scores are sorted once; every cut is then priced by
    cumulative counts, with no pass over the rows per threshold."""
    labelled = ~np.isnan(labels)
    s, fraud = scores[labelled], labels[labelled] == 1
    order = np.argsort(s, kind="stable")
    s, fraud = s[order], fraud[order]
    distinct, starts = np.unique(s, return_index=True)
    # cut k (0..m) declines (or reviews) from distinct[k]: the rows, frauds and good customers below it
    below = np.r_[starts, len(s)]
    frauds_below = np.r_[0, np.cumsum(fraud)][below]
    good_below = below - frauds_below
    frauds, good = int(frauds_below[-1]), int(good_below[-1])

    def threshold(cut: int) -> float:
        low = distinct[cut - 1] if cut > 0 else -math.inf
        high = distinct[cut] if cut < len(distinct) else max(1.0, float(np.nextafter(distinct[-1], math.inf)))
        return _round_within(float(low), float(high))

    def last_min(values: np.ndarray) -> int:  # ties: the highest threshold (fewest declines or reviews)
        return len(values) - 1 - int(np.argmin(values[::-1]))

    good_declined_cost = costs.fp * (good - good_below)
    best = threshold(last_min(costs.fn * frauds_below + good_declined_cost))
    decline_only, with_review = Bands(review=best, decline=best), None
    if costs.review > 0:
        # review from cut i <= decline cut j: fn x frauds below i + review x rows in [i, j) + fp x good from j
        head = costs.fn * frauds_below - costs.review * below
        best_head = np.minimum.accumulate(head)
        best_cut = np.maximum.accumulate(np.where(head == best_head, np.arange(len(head)), 0))
        j = last_min(best_head + costs.review * below + good_declined_cost)
        with_review = Bands(review=threshold(int(best_cut[j])), decline=threshold(j))
    optimum = with_review or decline_only
    grid = np.round(np.arange(1, math.floor(1 / step + 1e-9) + 1) * step, 10)
    thresholds = np.unique(np.r_[grid, list(marks), decline_only.decline, optimum.decline])
    frauds_from = frauds - np.searchsorted(s[fraud], thresholds, side="left")
    good_from = good - np.searchsorted(s[~fraud], thresholds, side="left")
    curve = [CurvePoint(float(t), _share(f + g, len(s)), _share(f, frauds), _share(g, good),
                        float(costs.fn * (frauds - f) + costs.fp * g))
             for t, f, g in zip(thresholds, frauds_from, good_from, strict=True)]
    return Sweep(curve, decline_only, with_review)


@dataclass(frozen=True)
class Backtest:
    """The replay of one window under its logged bands, the proposed ones and the cost-optimal ones."""

    replay: Replay
    model: Model
    current: Outcome
    proposed: Bands | None
    proposed_outcome: Outcome | None
    sweep: Sweep | None
    optimal_outcome: Outcome | None

    def warnings(self) -> list[str]:
        """What makes the estimate weak or partial."""
        notes = []
        unlabelled = self.current.scored - self.current.labelled
        if unlabelled:
            notes.append(f"{unlabelled:,} of {self.current.scored:,} scored rows have no label yet and are left out "
                         "of the label-based numbers")
        if self.current.frauds < MIN_FRAUDS:
            notes.append(f"only {self.current.frauds} labelled frauds (fewer than {MIN_FRAUDS}): recall and cost "
                         "estimates are weak")
        if self.replay.unbanded_rows:
            usual = self.replay.usual
            notes.append(f"{self.replay.unbanded_rows:,} rows were logged without their bands (an older scorer): "
                         f"replayed with review {usual.review:.4g}, decline {usual.decline:.4g}")
        if self.replay.corrupt_parts:
            notes.append(f"{self.replay.corrupt_parts} unreadable log files were skipped")
        if self.sweep is not None and self.sweep.with_review is None:
            notes.append("reviews cost nothing here (--cost-review 0), so reviewing more always looks cheaper: the "
                         "optimum has no review band; pass --cost-review to optimise the review band too")
        return notes


def backtest(replay: Replay, model: Model, proposed: Bands | None = None, *, with_sweep: bool = False,
             step: float = 0.05) -> Backtest:
    """Replay ``replay`` under its logged bands, ``proposed`` and (``with_sweep``) the cost-optimal bands, whose
    curve has a point every ``step`` and at the current and proposed decline thresholds."""
    if not replay.labelled.any():
        raise DataError(f"none of the {len(replay.scores):,} rows model {replay.model_tag} scored in the window has "
                        "a label yet; labels arrive through the scorer's /feedback")
    costs = model.costs

    def replayed(review: np.ndarray | float, decline: np.ndarray | float) -> Outcome:
        return outcome(replay.scores, replay.labels, review, decline, costs)

    current = replayed(replay.review, replay.decline)
    swept = None
    if with_sweep:
        marks = [replay.usual.decline] + ([proposed.decline] if proposed else [])
        swept = sweep(replay.scores, replay.labels, costs, step, marks)
    return Backtest(replay, model, current, proposed,
                    None if proposed is None else replayed(proposed.review, proposed.decline), swept,
                    None if swept is None else replayed(swept.optimal.review, swept.optimal.decline))


def simulate(registry: Any, log_root: str, window: timedelta, *, end: datetime | None = None,
             model_tag: str = "champion", review: float | None = None, decline: float | None = None,
             review_factor: float | None = None, decline_factor: float | None = None, cost_fn: float | None = None,
             cost_fp: float | None = None, cost_review: float = 0.0, with_sweep: bool = False,
             step: float = 0.05) -> Backtest:
    """`backtest` the rows ``model_tag`` scored in the ``window`` before ``end`` (default: now), with the options
    of ``fraudops decisions simulate`` (checked before the log is read)."""
    check_proposal(review, decline, review_factor, decline_factor)
    if not 0 < step <= 0.5:
        raise ConfigError(f"--step {step:g} must be in (0, 0.5]")
    model = model_for_backtest(registry, model_tag, cost_fn, cost_fp, cost_review)
    end = end or datetime.now(UTC)
    replay = load_replay(log_root, end - window, end, model)
    proposed = proposed_bands(replay.usual, model.threshold, review, decline, review_factor, decline_factor)
    return backtest(replay, model, proposed, with_sweep=with_sweep, step=step)
