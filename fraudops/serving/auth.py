"""The bearer token of the scorer's internal endpoints (/feedback writes training labels, /reload switches models).

Never open by default: without ``FRAUDOPS_INTERNAL_TOKEN`` the token is read from ``FRAUDOPS_INTERNAL_TOKEN_FILE``
(a mounted Kubernetes Secret), and without that from ``$BENTOML_HOME/fraudops/internal-token``, which the first
worker to start creates with a random token, readable by its owner only (0600).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from fraudops.errors import ConfigError
from fraudops.settings import ServingConfig

log = logging.getLogger(__name__)

TOKEN_FILE = "internal-token"


def default_token_file() -> Path:
    """``$BENTOML_HOME/fraudops/internal-token``."""
    from fraudops.registry import default_home

    return default_home() / "fraudops" / TOKEN_FILE


def internal_token(config: ServingConfig) -> str:
    """The token the internal endpoints require (see the module docstring); `ConfigError` if a configured token
    file is missing or empty."""
    token = config.internal_token.get_secret_value()
    if token:
        return token
    if config.internal_token_file:
        path = Path(config.internal_token_file)
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"FRAUDOPS_INTERNAL_TOKEN_FILE: cannot read {path}: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"FRAUDOPS_INTERNAL_TOKEN_FILE: {path} is empty")
        return token
    path = default_token_file()
    created = _create(path)
    log.warning("/feedback and /reload need 'Authorization: Bearer <token>'; the token is in %s (%s)", path,
                "generated now" if created else "kept from an earlier start")
    return path.read_text().strip()


def _create(path: Path) -> bool:
    """Write a random token to ``path`` (0600) unless it exists; atomic, so concurrent workers agree on one."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secrets.token_urlsafe(32).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another worker was first: its token stands
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
