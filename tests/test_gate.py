"""The promotion gate."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fraudops.gate import GatePolicy, decide

POLICY = GatePolicy(min_pr_auc_gain=0.01, recall_tolerance=0.02, floor_pr_auc=0.3)


def m(pr_auc: float, recall: float) -> dict[str, float]:
    return {"pr_auc": pr_auc, "recall_at_1pct_fpr": recall, "roc_auc": 0.9}


def test_defaults():
    policy = GatePolicy()
    assert policy.min_pr_auc_gain == 0.005
    assert policy.recall_tolerance == 0.0
    assert policy.floor_pr_auc == 0.2


def test_policy_rejects_bad_values():
    with pytest.raises(ValidationError):
        GatePolicy(min_pr_auc_gain=-0.1)
    with pytest.raises(ValidationError):
        GatePolicy(floor_pr_auc=1.5)
    with pytest.raises(ValidationError):
        GatePolicy(min_gain=0.1)


def test_first_model_above_floor_promoted():
    decision = decide(m(0.45, 0.3), None, POLICY)
    assert decision.promote
    assert decision.verdict == "promote"
    assert decision.reason == "first model: PR-AUC 0.4500 >= floor 0.3000"
    assert decision.champion is None
    assert decision.champion_tag is None


def test_first_model_below_floor_rejected():
    decision = decide(m(0.25, 0.3), None, POLICY)
    assert not decision.promote
    assert decision.verdict == "reject"
    assert "0.2500 < floor 0.3000" in decision.reason


def test_first_model_exactly_at_floor_promoted():
    assert decide(m(0.3, 0.0), None, POLICY).promote


def test_gain_below_margin_rejected():
    decision = decide(m(0.605, 0.5), m(0.6, 0.5), POLICY, champion_tag="fraud-detector:abc")
    assert not decision.promote
    assert "PR-AUC 0.6050 vs champion 0.6000" in decision.reason
    assert "gain +0.0050 is below the required 0.0100" in decision.reason
    assert decision.champion_tag == "fraud-detector:abc"
    assert decision.champion == m(0.6, 0.5)


def test_worse_model_rejected():
    decision = decide(m(0.4, 0.6), m(0.6, 0.5), POLICY)
    assert not decision.promote
    assert "gain -0.2000" in decision.reason


def test_recall_loss_rejected():
    decision = decide(m(0.7, 0.45), m(0.6, 0.5), POLICY, champion_tag="fraud-detector:abc")
    assert not decision.promote
    assert "recall at 1% FPR 0.4500 vs champion 0.5000" in decision.reason
    assert "loses 0.0500, more than the allowed 0.0200" in decision.reason


def test_recall_loss_within_tolerance_promoted():
    assert decide(m(0.7, 0.49), m(0.6, 0.5), POLICY).promote


def test_promote_reason_mentions_numbers():
    decision = decide(m(0.72, 0.55), m(0.6, 0.5), POLICY, champion_tag="fraud-detector:abc")
    assert decision.promote
    assert decision.reason == ("PR-AUC 0.7200 vs champion 0.6000 (gain +0.1200); recall at 1% FPR 0.5500 vs 0.5000")


def test_to_dict():
    decision = decide(m(0.72, 0.55), m(0.6, 0.5), POLICY, champion_tag="t:1")
    doc = decision.to_dict()
    assert doc["verdict"] == "promote"
    assert doc["promote"] is True
    assert doc["challenger"]["pr_auc"] == 0.72
    assert doc["champion"]["pr_auc"] == 0.6
    assert doc["champion_tag"] == "t:1"
    assert doc["reason"] == decision.reason
