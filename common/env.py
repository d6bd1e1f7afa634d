"""Typed readers for IMAGESVC_* environment variables that fail fast on bad values."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TypeVar

PREFIX = "IMAGESVC_"
N = TypeVar("N", int, float)

_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3}
_BINARY = {"KI": 1024, "MI": 1024**2, "GI": 1024**3}


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot run with."""


class Env:
    """Reads IMAGESVC_* variables from a mapping (os.environ by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def raw(self, name: str) -> str | None:
        value = self._environ.get(PREFIX + name)
        return None if value is None or value.strip() == "" else value.strip()

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{PREFIX}{name}={value!r} is not an integer") from None
        return self._bounded(name, number, minimum, maximum)

    def number(
        self, name: str, default: float, *, minimum: float = 0.0, maximum: float | None = None
    ) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{PREFIX}{name}={value!r} is not a number") from None
        return self._bounded(name, number, minimum, maximum)

    def size(self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        """A byte count: plain bytes or with a unit (`50MiB`, `2GB`, `512KiB`)."""
        value = self.raw(name)
        if value is None:
            return default
        match = _SIZE.match(value)
        if match is None:
            raise ConfigError(f"{PREFIX}{name}={value!r} is not a byte size such as 50MiB")
        unit = (match.group(2) or "").upper().rstrip("B")
        factor = _BINARY[unit] if unit in _BINARY else _UNITS[unit]
        return self._bounded(name, int(match.group(1)) * factor, minimum, maximum)

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{PREFIX}{name}={value!r} is not a boolean (true/false)")

    def items(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return default
        return tuple(item.strip() for item in value.split(",") if item.strip())

    @staticmethod
    def _bounded(name: str, number: N, minimum: N, maximum: N | None) -> N:
        if number < minimum or (maximum is not None and number > maximum):
            upper = "" if maximum is None else f" and {maximum}"
            raise ConfigError(f"{PREFIX}{name}={number} must be between {minimum}{upper}")
        return number
