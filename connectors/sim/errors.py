"""The simulator's error: a device server that cannot start, a broker it cannot reach."""

from __future__ import annotations

from pipeline.errors import TwinError


class SimulatorError(TwinError):
    """The plant simulator cannot do what it was asked (exit 1 from `twin simulate`)."""
