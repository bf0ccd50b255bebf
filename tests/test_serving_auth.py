"""Where the scorer's internal token comes from: the variable, a mounted file, or a 0600 file made at first start."""

from __future__ import annotations

import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from fraudops.errors import ConfigError
from fraudops.serving.auth import default_token_file, internal_token
from fraudops.settings import ServingConfig


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    for name in ("FRAUDOPS_INTERNAL_TOKEN", "FRAUDOPS_INTERNAL_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "bentoml"


def test_the_variable_wins(home: Path) -> None:
    assert internal_token(ServingConfig(internal_token="from-env", internal_token_file="/nowhere")) == "from-env"
    assert not default_token_file().exists()


def test_a_mounted_token_file_is_read_and_must_hold_a_token(home: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret" / "token"
    with pytest.raises(ConfigError, match=r"FRAUDOPS_INTERNAL_TOKEN_FILE: cannot read .*token"):
        internal_token(ServingConfig(internal_token_file=str(secret)))
    secret.parent.mkdir()
    secret.write_text("\n")
    with pytest.raises(ConfigError, match=r"FRAUDOPS_INTERNAL_TOKEN_FILE: .* is empty"):
        internal_token(ServingConfig(internal_token_file=str(secret)))
    secret.write_text("mounted-token\n")
    assert internal_token(ServingConfig(internal_token_file=str(secret))) == "mounted-token"
    assert not default_token_file().exists()


def test_without_a_token_one_is_generated_once_readable_by_the_owner_only(
        home: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = internal_token(ServingConfig())
    path = home / "fraudops" / "internal-token"
    assert len(first) >= 40 and path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in caplog.text and first not in caplog.text
    assert internal_token(ServingConfig()) == first  # a restart keeps it
    assert [p.name for p in path.parent.iterdir()] == ["internal-token"]  # no temporary file left


def _token_in_a_new_process(home: str) -> str:
    import os

    os.environ["BENTOML_HOME"] = home
    return internal_token(ServingConfig())


def test_workers_starting_together_agree_on_one_token(home: Path) -> None:
    with ProcessPoolExecutor(4) as pool:
        tokens = set(pool.map(_token_in_a_new_process, [str(home)] * 8))
    assert tokens == {default_token_file().read_text().strip()}
