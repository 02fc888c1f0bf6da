"""Human durations ("500ms", "1s", "1m30s", "2h") as they are written in the site file."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

from pipeline.errors import ConfigError

_UNITS = {
    "us": timedelta(microseconds=1),
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}
# "ms" and "us" come before "m" and "s" so that "500ms" is not read as 500 minutes + "s".
_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:us|ms|s|m|h|d))+")
_EXAMPLES = "e.g. '500ms', '1s', '1m30s', '2h'"


class DurationError(ConfigError, ValueError):
    """A duration string that cannot be read (a ValueError too, so models report it)."""


def parse_duration(text: str) -> timedelta:
    """Read a duration: one or more `<number><unit>` parts, units us, ms, s, m, h, d.

    >>> parse_duration("1m30s")
    datetime.timedelta(seconds=90)
    """
    if not isinstance(text, str):
        raise DurationError(f"expected a duration string ({_EXAMPLES}), got {text!r}")
    compact = text.strip().replace(" ", "")
    if not _WHOLE.fullmatch(compact):
        raise DurationError(
            f"bad duration {text!r}: expected a number with a unit "
            f"(us, ms, s, m, h, d), {_EXAMPLES}"
        )
    total = timedelta()
    for number, unit in _PART.findall(compact):
        total += float(number) * _UNITS[unit]
    return total


def format_duration(value: timedelta) -> str:
    """The shortest way to write `value` that `parse_duration` reads back."""
    micros = value // timedelta(microseconds=1)
    if micros == 0:
        return "0s"
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    parts = []
    for unit in ("d", "h", "m", "s", "ms", "us"):
        size = _UNITS[unit] // timedelta(microseconds=1)
        count, micros = divmod(micros, size)
        if count:
            parts.append(f"{count}{unit}")
    return sign + "".join(parts)


def _duration_input(value: object) -> object:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a duration ({_EXAMPLES}), got {value!r}")
    if isinstance(value, int | float):
        # A bare number is ambiguous (seconds? milliseconds?), so the file must say.
        raise ValueError(f"{value!r} has no unit: write e.g. '{value}s' or '{value}ms'")
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError(f"expected a duration ({_EXAMPLES}), got {type(value).__name__}")


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta():
        raise ValueError(f"must be longer than 0 (got {format_duration(value)})")
    return value


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta():
        raise ValueError(f"must not be negative (got {format_duration(value)})")
    return value


# In JSON, durations are written back the way the file writes them, so a dump loads again.
_AS_TEXT = PlainSerializer(format_duration, return_type=str, when_used="json")

Duration = Annotated[
    timedelta, BeforeValidator(_duration_input), AfterValidator(_not_negative), _AS_TEXT
]
"""A duration of zero or more, written like "500ms" or "1m"."""

PositiveDuration = Annotated[
    timedelta, BeforeValidator(_duration_input), AfterValidator(_positive), _AS_TEXT
]
"""A duration longer than zero, written like "500ms" or "1m"."""
