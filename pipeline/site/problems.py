"""Problems found in a site file, each with the readable path of the field it is about."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

Loc = tuple[str | int, ...]

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Problem:
    loc: Loc
    """Where in the file: keys and list indexes, e.g. ("assets", 3, "signals", "flow")."""
    why: str

    def line(self, origin: str) -> str:
        """`<file>: <path>: <why>`, the form every site problem is reported in."""
        path = format_path(self.loc)
        return f"{origin}: {path}: {self.why}" if path else f"{origin}: {self.why}"


def format_path(loc: Loc) -> str:
    """A readable path: `assets[3].signals.flow.expected`, `asset_types.pump.signals`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def from_validation_error(
    exc: ValidationError, prefix: Loc = (), model: type[BaseModel] | None = None
) -> list[Problem]:
    """One problem per pydantic error, its location made relative to the whole file."""
    problems = []
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        why = _reason(err, loc, model)
        if loc and loc[-1] == "[key]":
            loc, why = loc[:-1], f"bad key: {why}"
        problems.append(Problem(prefix + loc, why))
    return problems


def _reason(err: Any, loc: Loc, model: type[BaseModel] | None) -> str:
    kind, msg, value = err["type"], err["msg"], err.get("input")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1]) if model is not None else None
        if not allowed:
            return "unknown key"
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        if close:
            return f"unknown key (did you mean {close[0]!r}?)"
        return f"unknown key (allowed: {', '.join(allowed)})"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    why = msg[:1].lower() + msg[1:]
    if isinstance(value, _SCALARS):
        why += f" (got {value!r})"
    return why


def _fields_at(model: type[BaseModel] | None, loc: Loc) -> list[str] | None:
    """The keys the model accepts at `loc`, walking fields, mapping values and list items."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if not isinstance(part, str) or part not in tp.model_fields:
                return None
            tp = tp.model_fields[part].annotation
        elif typing.get_origin(tp) in (dict, Mapping):
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) in (list, tuple):
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return None


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and `| None`; a real union of several models stays as it is."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp
