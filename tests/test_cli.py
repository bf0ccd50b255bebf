"""The command line through the installed entry point: help everywhere, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

FRAUDOPS = str(Path(sys.executable).with_name("fraudops"))
COMMANDS = [[], ["data"], ["data", "generate"], ["train"], ["pipeline"], ["pipeline", "compile"],
            ["pipeline", "run"], ["pipeline", "submit"], ["models"], ["models", "list"], ["models", "show"],
            ["models", "promote"], ["models", "rollback"], ["models", "history"], ["serve"], ["features"],
            ["features", "load-snapshot"], ["features", "rebuild"], ["monitor"],
            ["monitor", "drift"], ["monitor", "exporter"], ["monitor", "export-labelled"], ["trigger"],
            ["trigger", "serve"], ["decisions"], ["decisions", "simulate"], ["rollout"], ["rollout", "start"],
            ["rollout", "status"], ["rollout", "promote"], ["rollout", "abort"], ["rollout", "step"], ["demo"]]


def run(args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", "COLUMNS": "200"}
    return subprocess.run([FRAUDOPS, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_every_subcommand_has_help(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path)}
    script = ("import sys; from click.testing import CliRunner; from fraudops.cli import main\n"
              f"for args in {COMMANDS!r}:\n"
              "    r = CliRunner().invoke(main, [*args, '--help'])\n"
              "    assert r.exit_code == 0 and 'Usage:' in r.output, (args, r.output)\n")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_generate_then_train_writes_the_results(tmp_path: Path) -> None:
    data = tmp_path / "tx.csv.gz"
    generated = run(["data", "generate", "--rows", "3000", "--seed", "3", "--output", str(data)], tmp_path / "b",
                    tmp_path)
    assert generated.returncode == 0 and "wrote 3,000 transactions" in generated.stdout
    trained = run(["train", "--data", str(data), "--output", str(tmp_path / "out"), "--iterations", "30"],
                  tmp_path / "b", tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {"pr_auc", "roc_auc", "recall_at_1pct_fpr", "threshold"} <= set(metrics)
    for name in ("pr_curve.png", "model_card.md", "validation.md", "model/model.cbm"):
        assert (tmp_path / "out" / name).exists(), name
    assert "pr_auc" in trained.stdout
    # column roles from flags over the default schema: one entity instead of device and IP
    # (and the final model refit on train + valid)
    trained = run(["train", "--data", str(data), "--output", str(tmp_path / "one"), "--iterations", "10",
                   "--account", "user_id", "--entities", "device_id", "--windows", "30m,2d", "--refit"],
                  tmp_path / "b", tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    meta = json.loads((tmp_path / "one" / "model" / "bundle.json").read_text())
    assert meta["params"]["refit"] is True and meta["refit"]["rounds"] >= meta["best_iteration"] + 1
    assert "refit" not in json.loads((tmp_path / "out" / "model" / "bundle.json").read_text())
    assert "refit on train + valid" in (tmp_path / "one" / "model_card.md").read_text()
    state = json.loads((tmp_path / "one" / "model" / "features" / "feature_state.json").read_text())
    assert (state["spec"]["account"], state["spec"]["entities"]) == ("user_id", ["device_id"])
    assert state["spec"]["windows"] == ["30m", "2d"]
    names = json.loads((tmp_path / "one" / "model" / "bundle.json").read_text())["feature_names"]
    assert "device_id__count_all" in names and not any(n.startswith("ip_address__") for n in names)
    assert {"device_id__count_30m", "device_id__accounts_2d"} <= set(names)
    assert not any(n.endswith(("_1h", "_24h", "_7d")) for n in names)


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--data", "missing.csv", "--output", "o"], "error: data file not found: missing.csv"),
    (["train", "--data", "tx.csv", "--output", "o", "--target", "label"], "missing required column(s) ['label']"),
    (["train", "--data", "tx.csv", "--output", "o", "--iterations", "0"], "invalid training option: iterations"),
    (["train", "--data", "tx.csv", "--output", "o", "--preset", "ecommerce", "--dataset-config", "x.yaml"],
     "either a preset or a dataset config file"),
    (["train", "--data", "tx.csv", "--output", "o", "--target", "is_fraud", "--entities", "device"],
     "missing required column(s) ['device']"),
    (["train", "--data", "tx.csv", "--output", "o", "--target", "is_fraud", "--windows", "1h,1 day"],
     "windows must be a whole number and a unit"),
    (["models", "promote", "fraud-detector:doesnotexist"], "is not in the model store"),
    (["models", "rollback"], "nothing to roll back to"),
    (["monitor", "drift", "--window", "soon"], "window 'soon' is not a duration"),
    (["pipeline", "submit", "--host", "http://127.0.0.1:9", "--rows", "100"], "cannot submit to the KFP API"),
])
def test_errors_are_one_line_and_exit_1(tmp_path: Path, args: list[str], message: str) -> None:
    pd.DataFrame({"a": [1, 2], "is_fraud": [0, 1]}).to_csv(tmp_path / "tx.csv", index=False)
    result = run(args, tmp_path / "b", tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
