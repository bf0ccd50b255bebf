"""Exceptions that carry a message meant for the user (the CLI prints them on one line)."""

from __future__ import annotations


class FraudopsError(Exception):
    """Base class: the message names what is wrong and, where possible, what to do."""


class ConfigError(FraudopsError):
    """A flag, preset, config file or parameter is invalid."""


class DataError(FraudopsError):
    """A data file is unreadable or unusable (a column missing, mistyped, too many bad rows)."""


class RegistryError(FraudopsError):
    """The model store or champion pointer cannot do what was asked."""
