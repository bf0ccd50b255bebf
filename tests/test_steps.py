"""The directory steps of the training workflow, chained as the pipeline and the CLI run them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraudops.bundle import ModelBundle
from fraudops.errors import ConfigError
from fraudops.gate import GatePolicy
from fraudops.registry import REGISTRY_URL_ENV, Registry
from fraudops.schema import SYNTHETIC
from fraudops.steps import (
    CARD_FILE,
    DATA_FILE,
    GATE_FILE,
    LABEL,
    METRICS_FILE,
    PR_CURVE_FILE,
    SPEC_FILE,
    evaluate_step,
    gate_step,
    ingest,
    promote_step,
    register_step,
    split_features,
    train_step,
    train_to_directory,
    validate_step,
)
from fraudops.training import TrainConfig

N = 2000
CONFIG = TrainConfig(iterations=30, threads=2)
WORSE = TrainConfig(iterations=1, depth=1, threads=2)
POLICY = GatePolicy()
REQUIRED_METRICS = {"pr_auc", "roc_auc", "recall_at_1pct_fpr", "threshold"}


@pytest.fixture(scope="module")
def env():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_DO_NOT_TRACK", "True")
        mp.delenv(REGISTRY_URL_ENV, raising=False)
        yield mp


@pytest.fixture(scope="module")
def raw_frame(transactions) -> pd.DataFrame:
    frame = transactions(N, seed=5)
    frame.loc[[17, 400], "amount"] = -3.0  # two bad rows
    return frame


@pytest.fixture(scope="module")
def chain(env, raw_frame, tmp_path_factory) -> dict:
    """Run every step once, for a champion and a deliberately worse challenger."""
    root = tmp_path_factory.mktemp("steps")
    data = root / "input.parquet"
    raw_frame.to_parquet(data, index=False)
    registry = Registry(home=root / "bentoml")
    d = {name: root / name for name in ("raw", "valid", "split", "model", "eval", "gate",
                                         "model2", "eval2", "gate2")}
    out: dict = {"root": root, "dirs": d, "registry": registry, "data": data}
    out["ingest"] = ingest(d["raw"], data_uri=str(data))
    out["validate"] = validate_step(d["raw"], d["valid"])
    out["windows"] = split_features(d["valid"], d["split"], CONFIG)
    out["train"] = train_step(d["split"], d["model"], CONFIG)
    out["metrics"] = evaluate_step(d["model"], d["split"], d["eval"])
    out["gate"] = gate_step(d["split"], d["eval"], registry, POLICY, d["gate"])
    out["tag"] = register_step(d["model"], d["eval"], d["gate"], registry)
    out["promote"] = promote_step(out["tag"], registry, reason=out["gate"]["reason"])
    # the challenger: one depth-1 tree on the same data
    train_step(d["split"], d["model2"], WORSE)
    out["metrics2"] = evaluate_step(d["model2"], d["split"], d["eval2"])
    out["gate2"] = gate_step(d["split"], d["eval2"], registry, POLICY, d["gate2"])
    out["tag2"] = register_step(d["model2"], d["eval2"], d["gate2"], registry)
    return out


def test_ingest(chain, raw_frame):
    raw = chain["dirs"]["raw"]
    assert chain["ingest"] == {"source": str(chain["data"]), "rows": N, "columns": list(raw_frame.columns)}
    pd.testing.assert_frame_equal(pd.read_parquet(raw / DATA_FILE), raw_frame)
    info = json.loads((raw / SPEC_FILE).read_text())
    assert info["spec"] == SYNTHETIC.model_dump(mode="json")


def test_validate_step(chain):
    valid = chain["dirs"]["valid"]
    summary = chain["validate"]
    assert (summary["rows_read"], summary["rows_accepted"], summary["rows_rejected"]) == (N, N - 2, 2)
    assert len(summary["data_fingerprint"]) == 16
    assert len(pd.read_parquet(valid / DATA_FILE)) == N - 2
    rejected = pd.read_parquet(valid / "rejected.parquet")
    assert rejected["_row"].tolist() == [18, 401]
    assert "rows rejected: 2" in (valid / "report.md").read_text()
    assert json.loads((valid / "report.json").read_text())["n_rejected"] == 2
    info = json.loads((valid / SPEC_FILE).read_text())
    assert info["numeric"] == ["amount"]
    assert info["validation"]["rows_rejected"] == 2
    assert info["ingest"]["rows"] == N


def test_split_features(chain):
    split_dir = chain["dirs"]["split"]
    windows = chain["windows"]
    assert sum(w["rows"] for w in windows.values()) == N - 2
    assert all(w["fraud"] > 0 for w in windows.values())
    assert windows["train"]["end"] <= windows["valid"]["start"] <= windows["valid"]["end"] <= windows["test"]["start"]
    for part in ("train", "valid", "test"):
        raw = pd.read_parquet(split_dir / f"{part}.parquet")
        features = pd.read_parquet(split_dir / f"{part}_features.parquet")
        assert len(raw) == len(features) == windows[part]["rows"]
        np.testing.assert_array_equal(features[LABEL], raw["is_fraud"])
    assert (split_dir / "features" / "feature_state.json").exists()
    info = json.loads((split_dir / SPEC_FILE).read_text())
    assert info["split"] == "time"
    assert info["windows"] == json.loads(json.dumps(windows))


def test_train_step(chain):
    bundle = ModelBundle.load(chain["dirs"]["model"])
    assert chain["train"]["threshold"] == bundle.threshold
    assert bundle.meta["name"] == "synthetic"
    assert bundle.meta["rows_accepted"] == N - 2
    assert bundle.meta["rows_rejected"] == 2
    assert bundle.meta["data_fingerprint"] == chain["validate"]["data_fingerprint"]
    assert bundle.meta["source"] == str(chain["data"])
    assert bundle.meta["params"]["iterations"] == CONFIG.iterations


def test_evaluate_step(chain):
    eval_dir = chain["dirs"]["eval"]
    metrics = json.loads((eval_dir / METRICS_FILE).read_text())
    assert set(metrics) >= REQUIRED_METRICS
    assert metrics == pytest.approx(chain["metrics"])
    assert metrics["n_rows"] == chain["windows"]["test"]["rows"]
    assert metrics["pr_auc"] > POLICY.floor_pr_auc
    assert "cost_per_1k_transactions" in metrics
    assert (eval_dir / PR_CURVE_FILE).read_bytes().startswith(b"\x89PNG")
    card = (eval_dir / CARD_FILE).read_text()
    assert card.startswith("# Fraud detection model")
    assert f"| PR-AUC | {metrics['pr_auc']:.4f} |" in card
    assert chain["validate"]["data_fingerprint"] in card
    assert f"rows accepted / rejected by validation: {N - 2} / 2" in card
    reference = pd.read_parquet(eval_dir / "reference.parquet")
    bundle = ModelBundle.load(chain["dirs"]["model"])
    assert list(reference.columns) == [*bundle.feature_names, "score", "label", "purchase_time"]
    assert len(reference) == metrics["n_rows"]
    # the holdout scored on its replayed (point-in-time) features, the ones the model was trained on
    test = pd.read_parquet(chain["dirs"]["split"] / "test_features.parquet").drop(columns=[LABEL])
    np.testing.assert_allclose(reference["score"], bundle.score_features(test))
    pd.testing.assert_frame_equal(reference[bundle.feature_names], test, check_dtype=False)


def test_first_model_passes_the_floor(chain):
    gate = chain["gate"]
    assert gate["verdict"] == "promote"
    assert gate["promote"] is True
    assert gate["reason"].startswith("first model: PR-AUC")
    assert json.loads((chain["dirs"]["gate"] / GATE_FILE).read_text()) == gate


def test_register_and_promote(chain):
    registry, tag = chain["registry"], chain["tag"]
    info = registry.info(tag)
    assert info.labels == {"dataset": "synthetic", "gate": "promote", "stage": "candidate"}
    assert info.metadata["metrics"]["pr_auc"] == pytest.approx(chain["metrics"]["pr_auc"])
    assert info.metadata["gate_reason"] == chain["gate"]["reason"]
    stored = registry.path(tag)
    for name in (METRICS_FILE, CARD_FILE, PR_CURVE_FILE, "reference.parquet", GATE_FILE, "model.cbm"):
        assert (stored / name).exists(), name
    assert chain["promote"]["actor"] == "pipeline"
    assert chain["promote"]["previous"] is None


def test_worse_challenger_is_rejected_and_champion_stays(chain):
    registry = chain["registry"]
    gate = chain["gate2"]
    assert chain["metrics2"]["pr_auc"] < chain["metrics"]["pr_auc"]
    assert gate["verdict"] == "reject"
    assert gate["champion_tag"] == chain["tag"]
    # the champion was measured on the challenger's holdout: the same test window it was evaluated on
    assert gate["champion"]["pr_auc"] == pytest.approx(chain["metrics"]["pr_auc"])
    assert "vs champion" in gate["reason"]
    assert registry.champion() == chain["tag"]
    assert registry.info(chain["tag2"]).labels["gate"] == "reject"
    assert [h["action"] for h in registry.history()] == ["promote"]



def test_release_by_rollout_puts_the_challenger_in_shadow_and_the_first_model_in_charge(tmp_path, chain):
    registry = Registry(home=tmp_path / "home", remote="")
    one, two = (registry.register(chain["registry"].path(chain[t])) for t in ("tag", "tag2"))
    first = promote_step(one, registry, reason="first", release="rollout")
    assert first["action"] == "promote" and registry.champion() == one  # nothing to stand beside
    event = promote_step(two, registry, reason="better on the holdout", release="rollout")
    rollout = registry.rollout()
    assert event["action"] == "rollout-start" and registry.champion() == one
    assert (rollout.challenger, rollout.mode, rollout.reason) == (two, "shadow",
                                                                  "passed the gate: better on the holdout")
    with pytest.raises(ConfigError, match="release must be one of promote, rollout"):
        promote_step(two, registry, reason="x", release="yolo")

def test_gate_refuses_a_champion_of_another_schema(chain, raw_frame, tmp_path):
    other = raw_frame.rename(columns={"is_fraud": "label"})
    data = tmp_path / "other.csv"
    other.to_csv(data, index=False)
    spec = SYNTHETIC.model_copy(update={"name": "other", "target": "label"})
    ingest(tmp_path / "raw", data_uri=str(data), spec=spec)
    validate_step(tmp_path / "raw", tmp_path / "valid")
    split_features(tmp_path / "valid", tmp_path / "split", CONFIG)
    result = gate_step(tmp_path / "split", chain["dirs"]["eval"], chain["registry"], POLICY, tmp_path / "gate")
    assert result["verdict"] == "reject"
    assert "another schema" in result["reason"]
    assert chain["registry"].champion() == chain["tag"]


def test_ingest_generates_synthetic_data(tmp_path):
    summary = ingest(tmp_path, rows=300, seed=1)
    assert summary["rows"] == 300
    assert summary["source"].startswith("synthetic(rows=300, seed=1")
    frame = pd.read_parquet(tmp_path / DATA_FILE)
    assert set(SYNTHETIC.required_columns) <= set(frame.columns)


def test_ingest_without_data_refuses_a_custom_spec(tmp_path):
    with pytest.raises(ConfigError, match="synthetic schema"):
        ingest(tmp_path, spec=SYNTHETIC.model_copy(update={"target": "label"}))


def test_ingest_appends_extra_files(tmp_path, transactions):
    first, second = transactions(50, seed=1), transactions(30, seed=2)
    first.to_parquet(tmp_path / "a.parquet", index=False)
    second.to_parquet(tmp_path / "b.parquet", index=False)
    summary = ingest(tmp_path / "out", data_uri=str(tmp_path / "a.parquet"),
                     extra_uris=(str(tmp_path / "b.parquet"), ""))
    assert summary["rows"] == 80
    assert summary["source"] == f"{tmp_path / 'a.parquet'} + {tmp_path / 'b.parquet'}"
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / DATA_FILE),
                                  pd.concat([first, second], ignore_index=True))


def test_ingest_appends_extra_csv_to_parquet(tmp_path, transactions):
    first, second = transactions(50, seed=1), transactions(30, seed=2)
    first.to_parquet(tmp_path / "a.parquet", index=False)
    second.to_csv(tmp_path / "b.csv", index=False)
    summary = ingest(tmp_path / "out", data_uri=str(tmp_path / "a.parquet"), extra_uris=(str(tmp_path / "b.csv"),))
    assert summary["rows"] == 80


def _layout(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_train_to_directory_with_bad_rows(env, raw_frame, tmp_path):
    data = tmp_path / "input.csv"
    raw_frame.to_csv(data, index=False)
    out = tmp_path / "run"
    steps: list[str] = []
    registry = Registry(home=tmp_path / "bentoml")
    result = train_to_directory(str(data), out, None, CONFIG, registry=registry, on_step=steps.append)
    assert _layout(out) == {"model", METRICS_FILE, PR_CURVE_FILE, CARD_FILE, "reference.parquet",
                            "validation.md", "rejected_rows.csv", GATE_FILE}
    assert steps == ["ingest", "validate", "split + features", "train", "evaluate", "gate", "register"]
    rejected = pd.read_csv(out / "rejected_rows.csv")
    assert rejected["_row"].tolist() == [18, 401]
    assert rejected["_reasons"].str.contains("amount is negative").all()
    assert result["validation"]["rows_rejected"] == 2
    assert set(result["metrics"]) >= REQUIRED_METRICS
    assert result["gate"]["promote"] is True
    assert registry.champion() == result["tag"]
    assert registry.history()[0]["actor"] == "fraudops train"
    ModelBundle.load(out / "model")


def test_train_to_directory_clean_data_without_registry(raw_frame, tmp_path):
    data = tmp_path / "input.parquet"
    raw_frame.assign(amount=raw_frame["amount"].abs()).to_parquet(data, index=False)
    out = tmp_path / "run"
    result = train_to_directory(str(data), out, SYNTHETIC, CONFIG)
    assert _layout(out) == {"model", METRICS_FILE, PR_CURVE_FILE, CARD_FILE, "reference.parquet", "validation.md"}
    assert "gate" not in result
    assert result["validation"]["rows_rejected"] == 0
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics == pytest.approx(result["metrics"])
