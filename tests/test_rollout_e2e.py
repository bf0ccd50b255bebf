"""Staged rollout end to end with real scorer processes (`bentoml serve`): two replicas sharing one registry follow
the same stage and send each customer to the same model; the rollout controller's `step`, run here as the retrain
trigger runs it, takes a good challenger from shadow through a canary to champion and aborts one that declines far
more, judging only what the scorers logged."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_service_e2e import Service, as_requests

from fraudops import steps
from fraudops.bundle import META_FILE
from fraudops.data.synthetic import generate_transactions
from fraudops.predlog import read_feedback, read_predictions
from fraudops.registry import Registry
from fraudops.rollout import ACTOR, CanaryStep, Decision, RolloutPolicy, StagePolicy, step
from fraudops.serving.challenger import bucket
from fraudops.training import TrainConfig

pytestmark = pytest.mark.slow

POPULATION = 7
"""Customer base shared by the training data and the traffic: models trained on it decide alike on the traffic."""
BAD_FACTOR = 0.5
"""The bad challenger is model B with its decision threshold times this: it declines about three times as often as
the champion."""
BATCH = 50  # transactions per /score request
ROUND = 200  # transactions sent between two controller steps
POLL = 1.0  # FRAUDOPS_POLL_SECONDS of the replicas
POLICY = RolloutPolicy(
    shadow=StagePolicy(min_rows=300, min_minutes=0),
    canary=(CanaryStep(percent=50, min_rows=400, min_minutes=0),),
    min_judged_rows=200,
    # measured in shadow on this traffic: model B declines +3.2 pp and differs from A on 10% of transactions, the
    # bad copy +17 pp and 90%; the canary compares different customers (50/50 by account), hence the room.
    max_decline_rate_increase=0.08, max_review_rate_increase=0.08, max_disagreement=0.2,
    max_score_distance=1.0, max_latency_p99_ms=250, min_labelled_frauds=10, max_pr_auc_drop=0.5,
    max_recall_drop=0.3)


# -- models and processes -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Any]:
    """A BentoML home with champion A, a good challenger B (another model trained on the same data) and a bad one
    (B with a shifted threshold), all registered; and labelled traffic from the same customers in the days after."""
    root = tmp_path_factory.mktemp("rollout-models")
    registry = Registry(home=root / "home", remote="")
    generate_transactions(4000, seed=3, population_seed=POPULATION).to_parquet(root / "train.parquet")
    tags = {}
    for name, config in (("a", TrainConfig(iterations=60)), ("b", TrainConfig(iterations=45, depth=5))):
        steps.train_to_directory(str(root / "train.parquet"), root / name, None, config)  # no registry: no gate
        tags[name] = registry.register(root / name / "model")
    bad = Path(shutil.copytree(root / "b" / "model", root / "bad"))
    meta = json.loads((bad / META_FILE).read_text())
    meta["threshold"] *= BAD_FACTOR
    (bad / META_FILE).write_text(json.dumps(meta))
    tags["bad"] = registry.register(bad)
    registry.promote(tags["a"], reason="the champion the rollout tests start from", actor="test")
    traffic = generate_transactions(3000, seed=5, start="2026-02-01", days=5, population_seed=POPULATION)
    return {"home": root / "home", **tags, "requests": as_requests(traffic),
            "labels": traffic["is_fraud"].astype(bool).tolist()}


@contextmanager
def scorers(workdir: Path, home: Path, count: int = 1, **settings: str) -> Iterator[list[Service]]:
    """``count`` scorer processes (two workers each, as `auto` on 2 cores, unless ``settings`` say) on one BentoML
    home and one prediction log, ready; at the end each gets SIGTERM and then every process of their trees that is
    left is killed (BentoML workers run in sessions of their own)."""
    settings = {"FRAUDOPS_WORKERS": "2", **settings}
    log_root = workdir / "predlog"
    services: list[Service] = []
    family: dict[int, psutil.Process] = {}

    def remember(svc: Service) -> None:
        with suppress(psutil.NoSuchProcess):
            parent = psutil.Process(svc.proc.pid)
            family.update({p.pid: p for p in (parent, *parent.children(recursive=True))})

    try:
        for n in range(count):
            (workdir / f"scorer-{n}").mkdir(parents=True)
            svc = Service(workdir / f"scorer-{n}", home, FRAUDOPS_PREDICTION_LOG=str(log_root),
                          FRAUDOPS_LOG_FLUSH_SECONDS="1", **settings)
            svc.log_root = log_root
            services.append(svc)
        for svc in services:
            svc.wait(timeout=120)
            remember(svc)
        yield services
    finally:
        for svc in services:
            remember(svc)
            svc.stop()
        left = [p for p in family.values() if alive(p)]
        for proc in left:
            with suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(list(family.values()), timeout=10)
    assert not left, f"processes outlived SIGTERM: {[p.pid for p in left]}"


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


BOTH = {"serving": 2, "total": 2, "errors": {}}  # /reload reached both workers of a scorer


def reload(svc: Service) -> dict[str, Any]:
    response = svc.http.post("/reload", json={}, headers=svc.auth)
    assert response.status_code == 200, response.text
    return response.json()


ROLLOUT_INFO = re.compile(r"^fraudops_scorer_rollout_info\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.MULTILINE)


def rollouts_on(svc: Service) -> list[tuple[str, str, float]]:
    """The rollouts the scorer's metrics name active: (challenger, mode, percent) of each series at 1."""
    active = []
    for match in ROLLOUT_INFO.finditer(svc.http.get("/metrics").text):
        if float(match["value"]) == 1:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
            active.append((labels["challenger"], labels["mode"], float(labels["percent"])))
    return active


def rollout_on(svc: Service) -> tuple[str, str, float] | None:
    """The rollout the scorer follows by its metrics, or None."""
    active = rollouts_on(svc)
    assert len(active) <= 1, active
    return active[0] if active else None


def until_all_follow(services: list[Service], change: Callable[[], object], line: str,
                     expected: tuple[str, str, float] | None, timeout: float = 15) -> list[float]:
    """Seconds from ``change()`` (of the registry) until each scorer logged ``line`` (it took up the new stage at a
    champion poll), checking that their metrics then name ``expected`` only. The log, not /metrics, tells when each
    one switched: replicas sharing a BentoML home share its Prometheus directory, and each one's /metrics reports
    the others' series too."""
    offsets = [svc.output.stat().st_size for svc in services]
    change()
    since = time.monotonic()
    seen: list[float | None] = [None] * len(services)
    while time.monotonic() - since < timeout:
        for n, svc in enumerate(services):
            if seen[n] is None:
                with svc.output.open("rb") as out:
                    out.seek(offsets[n])
                    if line.encode() in out.read():
                        seen[n] = time.monotonic() - since
        if all(s is not None for s in seen):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"after {timeout}s only {seen} logged {line!r}")
    deadline = time.monotonic() + 3  # the gauge is set just after the line is logged
    while (metrics := [rollouts_on(svc) for svc in services]) != [[expected] if expected else []] * len(services):
        assert time.monotonic() < deadline, f"the metrics name {metrics}, not {expected}"
        time.sleep(0.05)
    return [round(s, 2) for s in seen if s is not None]


def answer(svc: Service, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of a successful /score answer."""
    response = svc.score(rows)
    assert response.status_code == 200, response.text
    return response.json()


def decided_by(body: dict[str, Any]) -> list[str]:
    """The model that decided each transaction of a /score answer (a canary result names its model)."""
    return [result.get("model_tag", body["model_tag"]) for result in body["results"]]


# -- traffic ----------------------------------------------------------------------------------------------------
class Traffic:
    """Sends the fixture's transactions in order (each once), labels them through /feedback, and counts the rows
    each role of a rollout must have logged."""

    def __init__(self, svc: Service, models: dict[str, Any]) -> None:
        self.svc, self.requests, self.labels = svc, models["requests"], models["labels"]
        self.next = 0
        self.expected: Counter[str] = Counter()
        self.labelled = 0
        self.answers: list[dict[str, Any]] = []

    def send(self, rows: int, *, shadow: bool, label: bool) -> list[dict[str, Any]]:
        answers = []
        for _ in range(rows // BATCH):
            start, self.next = self.next, self.next + BATCH
            assert self.next <= len(self.requests), "the test ran out of traffic"
            response = self.svc.score(self.requests[start:self.next])
            assert response.status_code == 200, response.text
            body = response.json()
            answers.append(body)
            for result in body["results"]:
                self.expected["canary" if "model_tag" in result else "champion"] += 1
            self.expected["shadow"] += BATCH if shadow else 0
            if label:
                labels = [{"request_id": body["request_id"], "row": k, "is_fraud": self.labels[start + k],
                           "source": "chargeback" if self.labels[start + k] else "manual_review"}
                          for k in range(BATCH)]
                sent = self.svc.http.post("/feedback", json={"labels": labels}, headers=self.svc.auth)
                assert sent.status_code == 200, sent.text
                self.labelled += BATCH
        self.answers += answers
        return answers

    def logged(self, rollout_id: str, timeout: float = 20) -> Counter[str]:
        """Wait until every row sent (and every label) is in the log; the rows logged for the rollout by role."""
        deadline = time.monotonic() + timeout
        while True:
            frame = read_predictions(str(self.svc.log_root))
            roles: Counter[str] = Counter()
            if "rollout_id" in frame:
                roles.update(frame.loc[frame["rollout_id"] == rollout_id, "role"])
            labels = len(read_feedback(str(self.svc.log_root))) if self.labelled else 0
            if all(roles[r] >= n for r, n in self.expected.items()) and labels >= self.labelled:
                return roles
            assert time.monotonic() < deadline, f"logged {dict(roles)} and {labels} labels, sent " \
                                                f"{dict(self.expected)} and {self.labelled}"
            time.sleep(0.2)


# -- tests ------------------------------------------------------------------------------------------------------
def test_two_replicas_follow_one_rollout_and_keep_each_customer_on_one_model(models, tmp_path):
    """Two scorers on one registry and one log: both take up the shadow, the canary and the abort within a couple
    of champion polls, and in the canary they route every customer alike, request after request."""
    home = Path(shutil.copytree(models["home"], tmp_path / "home"))
    registry = Registry(home=home, remote="")
    rows = models["requests"][:400]
    # one worker each: two replicas of two workers and their four shadow processes outran 2 cores in CI (the shadow
    # rows were not all logged within 15 s); the other rollout tests run two workers
    with scorers(tmp_path, home, 2, FRAUDOPS_POLL_SECONDS=str(POLL), FRAUDOPS_WORKERS="1") as replicas:
        assert [rollout_on(svc) for svc in replicas] == [None, None]

        shadow_after = until_all_follow(
            replicas, lambda: registry.start_rollout(models["b"], "shadow", reason="e2e: replicas", actor="test"),
            f"rollout of {models['b']} beside {models['a']}: shadow 0%",
            (models["b"], "shadow", 0.0))
        rid = registry.rollout().id
        assert max(shadow_after) < 2 * POLL + 1.5, shadow_after
        for svc in replicas:
            body = answer(svc, rows[:BATCH])
            assert body["model_tag"] == models["a"] and not any("model_tag" in r for r in body["results"])

        canary_after = until_all_follow(
            replicas, lambda: registry.set_rollout_stage("canary", 30, reason="e2e: canary", actor="test",
                                                         rollout_id=rid),
            f"rollout of {models['b']}: canary 30%", (models["b"], "canary", 30.0))
        assert max(canary_after) < 2 * POLL + 1.5, canary_after
        assert reload(replicas[0])["rollout"] == {"id": rid, "challenger": models["b"], "mode": "canary",
                                                  "percent": 30.0}

        # the same transactions, in batches, on both replicas: every row decided by the same model on both
        by_replica = [[tag for i in range(0, len(rows), BATCH) for tag in decided_by(answer(svc, rows[i:i + BATCH]))]
                      for svc in replicas]
        assert by_replica[0] == by_replica[1]
        users = [row["user_id"] for row in rows]
        expected = [models["b"] if bucket(rid, user) < 30 else models["a"] for user in users]
        assert by_replica[0] == expected
        share = sum(tag == models["b"] for tag in expected) / len(expected)
        assert 0.15 < share < 0.45, share

        # one customer, several transactions over time, each sent to either replica: always the same model
        canary_users = [u for u, tag in zip(users, expected, strict=True) if tag == models["b"]][:10]
        champion_users = [u for u, tag in zip(users, expected, strict=True) if tag == models["a"]][:10]
        seen: dict[str, set[str]] = {}
        others = models["requests"][400:460]
        for k in range(3):
            for n, user in enumerate(canary_users + champion_users):
                svc = replicas[(n + k) % 2]
                body = answer(svc, [{**others[(3 * n + k) % len(others)], "user_id": user}])
                seen.setdefault(user, set()).update(decided_by(body))
        assert {u: seen[u] for u in canary_users} == {u: {models["b"]} for u in canary_users}
        assert {u: seen[u] for u in champion_users} == {u: {models["a"]} for u in champion_users}

        # both replicas logged to the one log: roles, the rollout id, each model's own rows and scoring time
        deadline = time.monotonic() + 15
        while True:
            logged = read_predictions(str(replicas[0].log_root))
            mine = logged[logged["rollout_id"] == rid] if "rollout_id" in logged else logged.iloc[:0]
            roles = Counter(mine["role"])
            behind = roles["canary"] - ((mine["role"] == "shadow") & (mine["model_tag"] == models["a"])).sum()
            if (roles["shadow"] >= 2 * BATCH + roles["canary"] and behind == 0
                    and roles["canary"] + roles["champion"] >= 2 * BATCH + 2 * 400 + 60):
                break
            assert time.monotonic() < deadline, dict(roles)
            time.sleep(0.2)
        assert set(roles) == {"champion", "shadow", "canary"}
        assert set(mine.loc[mine["role"] == "canary", "model_tag"]) == {models["b"]}
        # shadow rows: the challenger's in the shadow stage, and the champion's scores of the canary's rows
        shadow = mine[mine["role"] == "shadow"]
        assert set(shadow["model_tag"]) == {models["a"], models["b"]}
        canary = mine[mine["role"] == "canary"]
        counterfactual = shadow[shadow["model_tag"] == models["a"]]
        assert len(canary.merge(counterfactual, on=["request_id", "row"])) == len(canary)
        assert set(mine.loc[mine["role"] == "champion", "model_tag"]) == {models["a"]}
        assert mine["latency_ms"].notna().all() and (mine["latency_ms"] > 0).all()

        abort_after = until_all_follow(
            replicas, lambda: registry.abort_rollout(reason="e2e: end", actor="test", rollout_id=rid),
            f"rollout of {models['b']} ended", None)
        assert max(abort_after) < 2 * POLL + 1.5, abort_after
        for svc in replicas:
            body = answer(svc, [{**others[0], "user_id": canary_users[0]}])
            assert decided_by(body) == [models["a"]] and "model_tag" not in body["results"][0]
    print(f"\nreplicas followed shadow after {shadow_after}, canary 30% after {canary_after}, abort after "
          f"{abort_after} s (poll {POLL:g} s); canary share of 400 transactions {share:.0%}")


def run_stage(traffic: Traffic, registry: Registry, *, shadow: bool, label: bool, rounds: int
              ) -> tuple[list[Decision], Counter[str]]:
    """Rounds of traffic, each followed (once logged) by a controller step, until the step does something other
    than hold; the decisions and the rows logged by role at the last step."""
    decisions: list[Decision] = []
    rollout = registry.rollout()
    assert rollout is not None
    for _ in range(rounds):
        traffic.send(ROUND, shadow=shadow, label=label)
        logged = traffic.logged(rollout.id)
        decisions.append(step(registry, str(traffic.svc.log_root), POLICY))
        if decisions[-1].action != "hold":
            return decisions, logged
    raise AssertionError(f"still holding after {rounds} rounds: {decisions[-1].reason}")


def test_controller_promotes_a_good_challenger_through_shadow_and_canary(models, tmp_path):
    home = Path(shutil.copytree(models["home"], tmp_path / "home"))
    registry = Registry(home=home, remote="")
    with scorers(tmp_path, home) as (svc,):
        traffic = Traffic(svc, models)
        # what the retrain pipeline does with a challenger that passed the gate when releasing by rollout
        steps.promote_step(models["b"], registry, reason="e2e: challenger B", actor="pipeline", release="rollout")
        rollout = registry.rollout()
        assert rollout is not None and (rollout.challenger, rollout.mode) == (models["b"], "shadow")
        assert reload(svc)["rollout"] == {"id": rollout.id, "challenger": models["b"], "mode": "shadow",
                                          "percent": 0.0}

        shadow, shadow_rows = run_stage(traffic, registry, shadow=True, label=True, rounds=4)
        *holds, advance = shadow
        assert holds and all(d.action == "hold" and "of 300 shadow rows" in d.reason for d in holds)
        assert (advance.action, advance.mode, advance.percent) == ("advance", "canary", 50), advance.reason
        assert f"over {shadow_rows['shadow']:,} shadow rows" in advance.reason
        assert re.search(r"shadow decline rate [\d.]+% vs champion [\d.]+%: [+-][\d.]+ pp <= max 8 pp",
                         advance.reason), advance.reason
        assert "advance to canary 50%" in advance.reason
        assert all(not any("model_tag" in r for r in body["results"]) and body["model_tag"] == models["a"]
                   for body in traffic.answers)  # the shadow decided nothing

        state = reload(svc)["rollout"]
        assert state == {"id": rollout.id, "challenger": models["b"], "mode": "canary", "percent": 50.0}
        canary_from = len(traffic.answers)
        canary, canary_rows = run_stage(traffic, registry, shadow=False, label=True, rounds=8)
        *holds, promote = canary
        assert all(d.action == "hold" and "of 400 canary rows" in d.reason for d in holds)
        assert promote.action == "promote", promote.reason
        assert re.search(r"canary 50% held \d+ minutes over [\d,]+ canary rows", promote.reason), promote.reason
        assert "challenger PR-AUC" in promote.reason and f"promote {models['b']}" in promote.reason
        decided = Counter(tag for body in traffic.answers[canary_from:] for tag in decided_by(body))
        assert 0.3 < decided[models["b"]] / sum(decided.values()) < 0.7, decided

        assert registry.champion() == models["b"] and registry.rollout() is None
        events = [e for e in registry.history() if e.get("tag") == models["b"]][-3:]
        assert [(e["action"], e["actor"]) for e in events] == [
            ("rollout-start", "pipeline"), ("rollout-stage", ACTOR), ("promote", ACTOR)]
        assert events[0]["reason"].startswith("passed the gate: e2e: challenger B")
        assert (events[1]["mode"], events[1]["percent"], events[1]["reason"]) == ("canary", 50.0, advance.reason)
        assert (events[2]["previous"], events[2]["rollout"], events[2]["reason"]) == (
            models["a"], rollout.id, promote.reason)

        assert reload(svc) == {"model_tag": models["b"], "previous": models["a"], "changed": True,
                               "rollout": None, "workers": BOTH}
        assert rollout_on(svc) is None
        body = answer(svc, models["requests"][-BATCH:])
        assert body["model_tag"] == models["b"] and not any("model_tag" in r for r in body["results"])
    print(f"\npromoted: shadow advanced after {len(shadow)} steps ({dict(shadow_rows)} rows), canary 50% promoted "
          f"after {len(canary)} steps ({dict(canary_rows)} rows); {advance.reason} || {promote.reason}")


def test_controller_aborts_a_challenger_that_declines_far_more(models, tmp_path):
    home = Path(shutil.copytree(models["home"], tmp_path / "home"))
    registry = Registry(home=home, remote="")
    with scorers(tmp_path, home) as (svc,):
        traffic = Traffic(svc, models)
        steps.promote_step(models["bad"], registry, reason="e2e: shifted threshold", actor="pipeline",
                           release="rollout")
        rollout = registry.rollout()
        assert rollout is not None
        assert reload(svc)["rollout"]["mode"] == "shadow"

        decisions, logged = run_stage(traffic, registry, shadow=True, label=False, rounds=3)
        abort = decisions[-1]
        assert abort.action == "abort", abort.reason
        assert len(decisions) == 1  # judged as soon as the stage had min_judged_rows shadow rows
        assert re.search(r"shadow decline rate [\d.]+% vs champion [\d.]+%: \+[\d.]+ pp > max 8 pp", abort.reason), \
            abort.reason
        assert re.search(r"shadow review rate [\d.]+% vs champion [\d.]+%: \+[\d.]+ pp > max 8 pp", abort.reason), \
            abort.reason
        decline = next(c for c in abort.checks if c.name == "decline rate")
        assert decline.status == "breach"

        assert registry.rollout() is None and registry.champion() == models["a"]
        last = registry.history()[-1]
        assert (last["action"], last["actor"], last["tag"], last["reason"]) == (
            "rollout-abort", ACTOR, models["bad"], abort.reason)
        assert all(body["model_tag"] == models["a"] and not any("model_tag" in r for r in body["results"])
                   for body in traffic.answers)  # the champion answered every request meanwhile

        assert reload(svc) == {"model_tag": models["a"], "previous": models["a"], "changed": False,
                               "rollout": None, "workers": BOTH}
        assert rollout_on(svc) is None
        assert answer(svc, models["requests"][-BATCH:])["model_tag"] == models["a"]
    print(f"\naborted after {dict(logged)} rows: {abort.reason}")
