"""Decoded records as JSON-ready values, for `--json` output and documentation."""

from __future__ import annotations

import base64
import math
from datetime import datetime
from typing import Any


def to_jsonable(value: Any) -> Any:
    """Timestamps become ISO 8601 strings (UTC), bytes become base64 text, and NaN or
    infinite numbers become null (JSON has no NaN); everything else is kept."""
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
