"""Static checks of the image and the kind tooling: Dockerfile, .dockerignore, kind-config.yaml, scripts/.

Nothing here needs Docker, kind or a cluster; shellcheck runs when installed (CI installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("scripts/*.sh"), *ROOT.glob("scripts/kind/*.sh")])
ENTRY_POINTS = ("kind-up.sh", "kind-e2e.sh", "kind-down.sh")
DOCKERFILE = (ROOT / "Dockerfile").read_text()
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.splitlines()
                                           if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"(?m)^\s*([A-Za-z]+)\s+(.*)$", text)]


# --- scripts -----------------------------------------------------------------------------------------------------

def test_scripts_exist_are_executable_and_strict() -> None:
    names = {p.name for p in SCRIPTS}
    assert set(ENTRY_POINTS) <= names
    for script in SCRIPTS:
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), script
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        if script.name != "lib.sh":  # lib.sh is sourced by scripts that set the options
            assert re.search(r"(?m)^set -euo pipefail$", text), f"{script} lacks set -euo pipefail"


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed: apt-get install -y --no-install-recommends shellcheck (CI has it)")
    result = subprocess.run([shellcheck, "-x", "--severity=style", *[str(p.relative_to(ROOT)) for p in SCRIPTS]],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_syntax() -> None:
    for script in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{script}: {result.stderr}"


def test_scripts_use_a_versioned_image_tag_never_latest() -> None:
    for script in [*SCRIPTS, ROOT / "Dockerfile", ROOT / "kind-config.yaml"]:
        code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r":latest\b", code), f"{script} uses a :latest image"
    lib = (ROOT / "scripts" / "lib.sh").read_text()
    assert "pyproject.toml" in lib and 'die "the image tag must be a version, not latest"' in lib
    up = (ROOT / "scripts" / "kind-up.sh").read_text()
    assert 'docker build -t "$image"' in up and 'kind load docker-image "$image"' in up
    assert '--set image.tag="$(project_version)"' in up


def test_lib_reads_the_project_version() -> None:
    result = subprocess.run(["bash", "-c", "source scripts/lib.sh && image_ref"], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"fraudops:{VERSION}"


def test_kind_up_installs_pinned_kfp_with_its_object_store() -> None:
    up = (ROOT / "scripts" / "kind-up.sh").read_text()
    lib = (ROOT / "scripts" / "lib.sh").read_text()
    (kfp_version,) = re.findall(r'KFP_VERSION="\$\{KFP_VERSION:-([0-9.]+)\}"', lib)
    major, minor = map(int, kfp_version.split(".")[:2])
    assert (major, minor) >= (2, 15), "KFP >= 2.15 ships SeaweedFS (the scripts rely on it)"
    assert "manifests/kustomize/cluster-scoped-resources?ref=$KFP_VERSION" in up
    assert "manifests/kustomize/env/platform-agnostic?ref=$KFP_VERSION" in up
    assert "crd/applications.app.k8s.io" in up
    assert "mlpipeline-minio-artifact" in up and "fraudops-s3" in up and "fraudops-trigger-token" in up
    assert "kubeflow-profile" in up  # SeaweedFS NetworkPolicy admits labelled namespaces
    assert re.search(r'KPS_VERSION="\$\{KPS_VERSION:-[0-9]+\.[0-9]+\.[0-9]+\}"', lib)
    assert '--version "$KPS_VERSION"' in up and 'PROMETHEUS" == "1"' in up
    assert "values-kind.yaml" in up and "values-kind-monitoring.yaml" in up


def test_create_bucket_job_renders_a_valid_secure_job() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    result = subprocess.run([str(ROOT / "scripts" / "kind" / "create-bucket-job.sh"), f"fraudops:{VERSION}"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    job = yaml.safe_load(result.stdout)
    kubernetes_validate.validate(job, "1.31", strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == f"fraudops:{VERSION}"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    compile(container["command"][-1], "create-bucket", "exec")


def test_e2e_script_points_pytest_at_the_kind_cluster() -> None:
    e2e = (ROOT / "scripts" / "kind-e2e.sh").read_text()
    assert 'export KUBECONFIG="$KIND_KUBECONFIG"' in e2e
    assert "tests/test_kind_e2e.py" in e2e


# --- kind-config.yaml --------------------------------------------------------------------------------------------

def test_kind_config() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker"]
    for node in config["nodes"]:
        assert re.fullmatch(r"kindest/node:v1\.31\.\d+@sha256:[0-9a-f]{64}", node["image"]), node["image"]
    mappings = [m for n in config["nodes"] for m in n.get("extraPortMappings", [])]
    assert {(m["containerPort"], m["hostPort"]) for m in mappings} == {(30080, 30080)}
    assert all(m.get("listenAddress") == "127.0.0.1" for m in mappings)
    kind_values = yaml.safe_load((ROOT / "helm" / "fraudops" / "values-kind.yaml").read_text())
    assert kind_values["scorer"]["service"] == {"type": "NodePort", "nodePort": 30080}


# --- Dockerfile ------------------------------------------------------------------------------------------------

def test_dockerfile_is_multi_stage_with_a_pinned_base() -> None:
    instructions = _instructions(DOCKERFILE)
    args = dict(a.split("=", 1) for op, a in instructions if op == "ARG" and "=" in a)
    froms = [a for op, a in instructions if op == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    for base in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base.split()[0])
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image
    assert froms[0].endswith("AS builder")
    assert "COPY --from=builder /opt/venv /opt/venv" in DOCKERFILE


def test_dockerfile_final_stage_is_non_root_without_build_tools() -> None:
    final = DOCKERFILE.split("FROM ${PYTHON_IMAGE} AS runtime", 1)[1]
    ops = _instructions(final)
    users = [a for op, a in ops if op == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    assert re.search(r"useradd .*--uid 10001", final)
    runs = " ".join(a for op, a in ops if op == "RUN")
    for tool in ("apt-get install", "build-essential", "gcc", "pip install", "git "):
        assert tool not in runs, f"final stage runs {tool!r}"
    entrypoint = [a for op, a in ops if op == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoint] == [["fraudops"]]
    env = " ".join(a for op, a in ops if op == "ENV")
    assert "BENTOML_HOME=/var/lib/fraudops/bentoml" in env and "/opt/venv/bin" in env


def test_dockerfile_installs_the_project_with_pip() -> None:
    builder = DOCKERFILE.split("AS runtime", 1)[0]
    assert "python -m venv /opt/venv" in builder
    assert re.search(r"pip install \.", builder) and "pip install --no-deps ." in builder
    for package in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"][
            "wheel"]["packages"]:
        assert f"COPY {package} ./{package}" in builder, f"the image misses package {package}"


def test_dockerignore_allows_only_what_the_build_needs() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "README.md", "fraudops", "pipelines", "services"} <= allowed
    assert not allowed & {".venv", ".git", "tests", ".kind"}
