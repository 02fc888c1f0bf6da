"""Building blocks of the site description models: the base model, names and ranges."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SIGNAL = re.compile(r"[a-z][a-z0-9_]{0,63}")


class SiteModel(BaseModel):
    """Base of every site file model: immutable, and an unknown key is an error, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def check_id(value: str) -> str:
    """An id of a line, asset, asset type, source or rule.

    Ids end up in Kafka keys, OPC UA node ids, MQTT topics and ClickHouse rows, so they are
    kept to characters that are safe in all of them.
    """
    if not _ID.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid id: use up to 64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return value


def check_signal_name(value: str) -> str:
    """A signal name: lower-case snake case, so it can also be a column or a JSON field."""
    if not _SIGNAL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid signal name: use lower-case letters, digits and '_', "
            "starting with a letter"
        )
    return value


Id = Annotated[str, AfterValidator(check_id)]
SignalName = Annotated[str, AfterValidator(check_signal_name)]


class Range(SiteModel):
    """A closed interval [min, max] in the signal's unit."""

    min: float
    max: float

    def contains(self, value: float) -> bool:
        return self.min <= value <= self.max

    def covers(self, other: Range) -> bool:
        return self.min <= other.min and other.max <= self.max

    @property
    def span(self) -> float:
        return self.max - self.min

    def __str__(self) -> str:
        return f"{self.min:g}..{self.max:g}"


def unknown(what: str, name: str, known: Iterable[str], owner: str = "") -> str:
    """The reason for a reference to something that does not exist, with a suggestion.

    >>> unknown("signal", "flw", ["flow", "speed"], owner="of asset type pump")
    "unknown signal 'flw' of asset type pump (did you mean 'flow'?)"
    """
    names = sorted(known)
    head = f"unknown {what} {name!r}" + (f" {owner}" if owner else "")
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        return f"{head} (did you mean {close[0]!r}?)"
    if not names:
        return f"{head} (none defined)"
    return f"{head} (known: {', '.join(names)})"
