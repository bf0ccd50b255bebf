"""Exceptions that carry a message meant for the user (the CLI prints them on one line)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class FraudopsError(Exception):
    """Base class: the message names what is wrong and, where possible, what to do."""


class ConfigError(FraudopsError):
    """A flag, preset, config file or parameter is invalid."""


class DataError(FraudopsError):
    """A data file is unreadable or unusable (a column missing, mistyped, too many bad rows)."""


class RegistryError(FraudopsError):
    """The model store or champion pointer cannot do what was asked."""


def problems(exc: ValidationError, whole: str = "value", name: Callable[[tuple], str] | None = None) -> str:
    """Pydantic's errors as one line, ``field: message; ...`` (``whole`` names errors without a field)."""
    def where(loc: tuple) -> str:
        return (name(loc) if name else ".".join(map(str, loc))) if loc else whole

    return "; ".join(f"{where(tuple(e['loc']))}: {e['msg']}" for e in exc.errors())
