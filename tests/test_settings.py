"""One place for every environment variable: the settings module, the README's table, and nothing read elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fraudops.errors import ConfigError
from fraudops.settings import SETTINGS, ServingConfig, StoreSettings, TriggerSettings, table, variable

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("fraudops", "services", "pipelines", "monitoring") for p in (REPO / d).rglob("*.py")]


def test_the_readme_table_is_the_generated_one() -> None:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", text, re.S)
    assert match, "README.md lost its settings table markers"
    assert match.group(1) == table(), "README's settings table is stale: paste `python -m fraudops.settings`"


def test_no_module_reads_a_fraudops_variable_itself() -> None:
    """Variables are read through fraudops.settings only (os.environ.get("FRAUDOPS_...") elsewhere is a bug)."""
    offenders = []
    for path in SOURCES:
        text = path.read_text()
        constants = re.findall(r"""^(\w+) = ["']FRAUDOPS_""", text, re.M)
        names = "|".join([r"""["']FRAUDOPS_\w+["']""", *constants])
        if path.name != "settings.py" and re.search(rf"(?:environ\.get|getenv)\(\s*(?:{names})", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_every_fraudops_variable_the_code_names_is_declared() -> None:
    declared = {variable(cls, name) for cls in SETTINGS for name in cls.model_fields}
    named = {m for p in SOURCES for m in re.findall(r"\bFRAUDOPS_[A-Z_]+[A-Z]\b", p.read_text())}
    # set for child processes or only named in prose, never read as settings
    not_settings = {"FRAUDOPS_E2E_REQUIRED"}
    assert named - declared - not_settings == set()


def test_variables_are_found_by_their_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDOPS_SCHEMA", "ecommerce")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("KFP_TOKEN", "kfp-s3cr3t")
    monkeypatch.delenv("FRAUDOPS_S3_ENDPOINT", raising=False)
    assert ServingConfig.from_env().dataset == "ecommerce"
    assert StoreSettings.from_env().s3_endpoint == "http://127.0.0.1:9000"  # the fallback
    monkeypatch.setenv("FRAUDOPS_S3_ENDPOINT", "http://store:8333")
    assert TriggerSettings.from_env().s3_endpoint == "http://store:8333"  # FRAUDOPS_ first
    assert TriggerSettings.from_env().kfp_token.get_secret_value() == "kfp-s3cr3t"
    assert "s3cr3t" not in repr(TriggerSettings.from_env())  # tokens never printed


def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDOPS_WORKERS", "many")
    with pytest.raises(ConfigError, match="invalid scoring service settings: FRAUDOPS_WORKERS: Input should be"):
        ServingConfig.from_env()
    StoreSettings.from_env()  # other processes do not care
