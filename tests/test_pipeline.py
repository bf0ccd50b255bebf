"""The KFP pipeline: compile round-trip, and real ``kfp.local`` runs through the installed CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp import components

from fraudops.orchestration import compile_pipeline
from fraudops.registry import Registry
from pipelines.training import CACHING, PIPELINE_NAME

FRAUDOPS = str(Path(sys.executable).with_name("fraudops"))


def test_compile_round_trip_keeps_image_caching_and_parameters(tmp_path: Path) -> None:
    path = compile_pipeline(tmp_path / "p.yaml", "registry.example/fraudops:1.2.3", s3_secret="s3-creds",
                            s3_endpoint="http://minio:9000")
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == PIPELINE_NAME
    docs = list(yaml.safe_load_all(path.read_text()))
    spec, platform = docs[0], docs[1]
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/fraudops:1.2.3"}
    assert all("pip install" not in " ".join(e["container"]["command"]) for e in executors.values())
    tasks = dict(spec["root"]["dag"]["tasks"])
    tasks.update(spec["components"]["comp-condition-1"]["dag"]["tasks"])
    for name, cache in CACHING.items():
        assert tasks[name]["cachingOptions"].get("enableCache", False) is cache, name
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["rows"]["defaultValue"] == 20000 and "registry_url" in params
    secrets = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {"exec-gate", "exec-register", "exec-promote"} <= set(secrets)
    assert "FRAUDOPS_S3_ENDPOINT" in path.read_text()


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FRAUDOPS, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture
def bento_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    import os

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    return {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}


@pytest.mark.slow
def test_local_runs_promote_first_model_and_reject_worse_challenger(tmp_path: Path, bento_env: dict[str, str]
                                                                    ) -> None:
    data = tmp_path / "tx.parquet"
    assert _run(["data", "generate", "--rows", "6000", "--seed", "7", "--output", str(data)], bento_env,
                tmp_path).returncode == 0
    common = ["pipeline", "run", "--local", "--root", str(tmp_path / "runs"), "--data", str(data)]
    first = _run([*common, "--iterations", "80"], bento_env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    registry = Registry(home=tmp_path / "bentoml")
    champion = registry.champion()
    assert champion is not None and f"registered {champion}; gate: promote" in first.stdout
    model_dir = registry.path(champion)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert {"pr_auc", "roc_auc", "recall_at_1pct_fpr", "threshold"} <= set(metrics)
    assert (model_dir / "model_card.md").exists() and (model_dir / "reference.parquet").exists()
    assert registry.load("champion").score(registry.load("champion").reference.head(0)).shape == (0,)

    # Same data URI again with a crippled model: train must run again (no cache) and the gate must reject it.
    second = _run([*common, "--iterations", "2", "--depth", "1", "--learning-rate", "0.01"], bento_env, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    tags = [info.tag for info in registry.list()]
    assert len(tags) == 2 and registry.champion() == champion
    rejected = next(t for t in tags if t != champion)
    assert registry.info(rejected).labels["gate"] == "reject"
    assert f"registered {rejected}; gate: reject" in second.stdout
    gate = json.loads((registry.path(rejected) / "gate.json").read_text())
    assert gate["champion_tag"] == champion and gate["champion"]["pr_auc"] > gate["challenger"]["pr_auc"]
    assert [e["action"] for e in registry.history()] == ["promote"]
    runs = sorted((tmp_path / "runs").glob(f"{PIPELINE_NAME}-*"))
    assert len(runs) == 2 and (runs[1] / "train").is_dir() and not (runs[1] / "promote").exists()
    assert not (tmp_path / "runs" / "workspace").exists()


@pytest.mark.slow
def test_local_run_without_parameters_trains_on_generated_data(tmp_path: Path, bento_env: dict[str, str]) -> None:
    result = _run(["pipeline", "run", "--local", "--root", str(tmp_path / "runs"), "--rows", "4000",
                   "--iterations", "40"], bento_env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    registry = Registry(home=tmp_path / "bentoml")
    assert registry.champion() is not None
    assert registry.info("champion").metadata["source"].startswith("synthetic(rows=4000")


def test_unusable_data_fails_the_run_with_a_clear_error(tmp_path: Path, bento_env: dict[str, str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    result = _run(["pipeline", "run", "--local", "--root", str(tmp_path / "runs"), "--data", str(bad),
                   "--target", "b"], bento_env, tmp_path)
    assert result.returncode == 1
    assert "pipeline run failed: DataError: column 'b' (the label) is not binary" in result.stderr
    assert Registry(home=tmp_path / "bentoml").champion() is None
