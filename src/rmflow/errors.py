"""The error every layer may raise for a bad setting (a leaf module: it imports nothing of rmflow)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


def check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")
