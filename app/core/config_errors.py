"""Short, pointed messages for mistakes in settings and models files.

A typo in a YAML file used to surface as a 40-70 line pydantic or yaml traceback. These
helpers turn it into one line per problem that names the file, the entry, the key, what is
allowed, and the closest valid key ("did you mean 'capabilities'?").
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

MAX_PROBLEMS = 3


class ConfigError(ValueError):
    """A settings or models file (or flag) the server cannot start with."""


def read_yaml(path: Path, what: str) -> Any:
    """Parse ``path``; a missing file or a YAML error is a one-line :class:`ConfigError`."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from exc


def suggestion(key: str, allowed: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed key, else the allowed list."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (allowed: {', '.join(allowed)})"


def unknown_keys(data: dict[str, Any], model: type[BaseModel], where: str) -> list[str]:
    """One message per key of ``data`` that ``model`` does not have."""
    fields = set(model.model_fields)
    return [f"{where}: unknown key '{key}'{suggestion(str(key), fields)}"
            for key in data if key not in fields]


def describe(exc: ValidationError, model: type[BaseModel], where: str) -> str:
    """A pydantic error as at most a few short lines: key, problem, what is allowed."""
    problems = []
    for error in exc.errors()[:MAX_PROBLEMS]:
        loc = [str(part) for part in error["loc"]]
        key = ".".join(loc) or "(entry)"
        if error["type"] == "extra_forbidden":
            fields = _fields_at(model, loc[:-1])
            problems.append(f"unknown key '{key}'{suggestion(loc[-1], fields)}")
        elif error["type"] == "missing":
            problems.append(f"missing key '{key}'")
        else:
            got = error.get("input")
            shown = f" (got {got!r})" if got is not None and len(repr(got)) < 80 else ""
            problems.append(f"{key}: {error['msg'][0].lower()}{error['msg'][1:]}{shown}")
    more = len(exc.errors()) - MAX_PROBLEMS
    if more > 0:
        problems.append(f"and {more} more")
    return f"{where}: " + "; ".join(problems)


def _fields_at(model: type[BaseModel], path: list[str]) -> set[str]:
    """Field names of the sub-model at ``path`` (the top level if it cannot be followed)."""
    current: Any = model
    for part in path:
        field = getattr(current, "model_fields", {}).get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return set(model.model_fields)
        current = annotation
    return set(current.model_fields)
