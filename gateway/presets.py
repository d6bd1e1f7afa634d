"""Presets: named transformations from a TOML file, asked for with `?preset=NAME`.

A preset is a set of query parameters, so it is checked by the parser that checks
requests, once at start: a preset that would be refused in a URL stops the gateway
instead of failing every request that names it. Expanded into its parameters, a preset
is the very request it stands for, so it renders (and is cached as) the same variant.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from common.env import ConfigError
from gateway.params import Parameters, Transformation, bad
from gateway.problems import HTTPProblem

QUERY_NAME = "preset"
# Lower case like every enumeration of the API, and nothing a URL must escape.
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
NAME_RULE = "1-64 of a-z, 0-9, '-' and '_', starting with a letter or digit"
# The TOML types a parameter takes, by its OpenAPI type: /presets then answers values
# of the types OpenAPI states, and `w = "300"` or `w = 300.0` is a mistake worth a word.
_TOML_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "string": (str,),
}
# bool before int: a bool is an int to Python.
_TOML_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (list, "array"),
    (dict, "table"),
)
_TYPE_WORDS = {"integer": "an integer", "number": "a number", "boolean": "true or false"}


@dataclass(frozen=True)
class Presets:
    """The configured presets (none: `preset` is an unknown parameter, as it was)."""

    # name -> the preset's values as the file gave them (what GET /presets lists)
    listing: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # name -> the same as query parameters, in the file's order
    queries: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    only: bool = False  # transformations by preset alone

    @property
    def names(self) -> list[str]:
        return list(self.queries)

    def expand(self, query: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """query with its preset spelled out; the query's own parameters win over the
        preset's. Raises the 400 problem for an unknown preset, or for a parameter given
        beside presets where only presets are taken."""
        if not self.queries:
            return list(query)
        asked = [value for name, value in query if name == QUERY_NAME]
        rest = [(name, value) for name, value in query if name != QUERY_NAME]
        if self.only and rest:
            raise bad(rest[0][0], "this service takes presets only (see GET /presets)")
        if not asked:
            return rest
        if len(asked) > 1:
            raise bad(QUERY_NAME, "given more than once")
        chosen = self.queries.get(asked[0])
        if chosen is None:
            # Shown as a Python literal: a name of any characters reads unambiguously.
            raise bad(QUERY_NAME, f"no preset named {asked[0][:64]!r}")
        given = {name for name, _ in rest}
        return rest + [(name, value) for name, value in chosen if name not in given]

    def parse(
        self, query: Sequence[tuple[str, str]], parameters: Parameters, accept: str
    ) -> Transformation | None:
        """Parameters.parse of the query with its preset spelled out. A refusal that
        blames a parameter the preset gave says so: the caller never wrote it."""
        expanded = self.expand(query)
        try:
            return parameters.parse(expanded, accept)
        except HTTPProblem as problem:
            asked = dict(query).get(QUERY_NAME)
            blamed = problem.extensions.get("parameter")
            if asked is not None and blamed not in dict(query):
                problem.detail += f" (from preset {asked})"
                problem.extensions[QUERY_NAME] = asked
            raise


def load_presets(path: str, parameters: Parameters, only: bool = False) -> Presets:
    """The presets of the TOML file at path, each checked as a request would be; raise
    ConfigError naming the file, the preset and what is wrong with it."""
    where = f"IMAGESVC_PRESETS={path}"
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{where}: not a TOML file: {exc}") from None
    if not document:
        raise ConfigError(f"{where}: names no preset (one [name] table per preset)")
    listing: dict[str, Mapping[str, Any]] = {}
    queries: dict[str, tuple[tuple[str, str], ...]] = {}
    for name, table in document.items():
        preset = f"{where}: preset {name!r}"
        if NAME.fullmatch(name) is None:
            raise ConfigError(f"{preset}: a preset name is {NAME_RULE}")
        if not isinstance(table, dict):
            raise ConfigError(f"{preset}: must be a table ([{name}], then w = 300...)")
        if not table:
            raise ConfigError(f"{preset}: has no parameters (the original needs no preset)")
        try:
            queries[name] = _query(table, parameters)
        except HTTPProblem as problem:
            raise ConfigError(f"{preset}: {problem.detail}") from None
        listing[name] = MappingProxyType(dict(table))
    return Presets(MappingProxyType(listing), MappingProxyType(queries), only)


def _query(table: Mapping[str, Any], parameters: Parameters) -> tuple[tuple[str, str], ...]:
    """The preset's query parameters, refused as the parser refuses a request's."""
    schemas = {p.name: p.schema["type"] for p in parameters.table}
    query: list[tuple[str, str]] = []
    for key, value in table.items():
        kind = schemas.get(key)
        if kind is not None and not _typed(value, kind):
            words = _TYPE_WORDS.get(kind, "a string")
            raise bad(key, f"must be {words} in TOML, not the {_toml_type(value)} {value!r}")
        query.append((key, _raw(value)))
    # The request's own parser: unknown names, bad values, parameters that do not go
    # together, in the words a URL would be answered with.
    parameters.parse(query, "")
    return tuple(query)


def _typed(value: Any, kind: str) -> bool:
    if kind != "boolean" and isinstance(value, bool):
        return False  # a bool is an int to Python, not to TOML
    return isinstance(value, _TOML_TYPES.get(kind, (str,)))


def _toml_type(value: Any) -> str:
    for kind, name in _TOML_NAMES:
        if isinstance(value, kind):
            return name
    return "date or time"


def _raw(value: Any) -> str:
    """A TOML value as it is written in a query string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)  # a float's str is its shortest round-trip spelling
    return repr(value)  # only under an unknown name, which the parser refuses
