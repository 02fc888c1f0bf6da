"""Twinline: a stream-processing pipeline on Kafka for industrial digital twins."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: The repository root (the project is installed in editable mode by `make setup`).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
