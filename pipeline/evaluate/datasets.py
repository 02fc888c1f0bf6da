"""Labelled benchmark files read into per-asset series, and a site description derived from them.

Two layouts are understood:

- **skab**: a `;`-separated csv with a `datetime` column, numeric signal columns and, when
  labelled, `anomaly` and `changepoint` columns (0/1 per row). A directory stands for all its
  `*.csv` files in natural order (`2.csv` before `10.csv`).
- **nab**: a csv with a `timestamp` column and numeric columns (NAB has one, `value`), labelled
  by `labels/combined_windows.json` (and, when present, `labels/combined_labels.json`) in the
  nearest directory above the file that holds `labels/`; the key into those files is the csv's
  path relative to that directory's `data/`.

Times without a zone are UTC. Every file becomes one asset: its id is made from the file's
directory and name (`valve1/0.csv` -> `valve1-0`), its signals are the columns' names made into
signal names (`Volume Flow RateRMS` -> `volume_flow_raterms`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from pipeline.errors import ConfigError
from pipeline.stages.common import from_micros, to_micros

FORMATS = ("skab", "nab")
SKAB_TIME, SKAB_LABEL, SKAB_CHANGEPOINT = "datetime", "anomaly", "changepoint"
NAB_TIME = "timestamp"
_NOT_ID = re.compile(r"[^A-Za-z0-9_.-]+")
_NOT_SIGNAL = re.compile(r"[^a-z0-9]+")
_DIGITS = re.compile(r"(\d+)")


class DatasetError(ConfigError):
    """A benchmark file that cannot be read as the layout it was given as."""


@dataclass(frozen=True, eq=False)
class Series:
    """One benchmark file: one asset's readings, row by row, and the labels that go with them."""

    path: Path
    key: str
    """Name of the file in reports (NAB: its path relative to `data/`, the labels' key)."""
    asset_id: str
    signals: tuple[str, ...]
    """Signal names, one per value column, in column order."""
    columns: tuple[str, ...]
    """The csv's own column names, parallel to `signals`."""
    times: tuple[datetime, ...]
    """Row times, aware UTC."""
    values: npt.NDArray[np.float64]
    """Readings, shape (rows, signals); NaN where a cell is empty."""
    labels: npt.NDArray[np.bool_] | None
    """Per row: labelled anomalous (SKAB `anomaly`, NAB inside a window); None if unlabelled."""
    windows: tuple[tuple[datetime, datetime], ...] = ()
    """NAB anomaly windows [start, end]."""
    points: tuple[datetime, ...] = ()
    """NAB labelled anomaly times (combined_labels.json), when known."""

    @property
    def rows(self) -> int:
        return len(self.times)

    @property
    def times_us(self) -> list[int]:
        """Row times as microseconds since the Unix epoch."""
        return [to_micros(t) for t in self.times]

    def row(self, index: int) -> list[float]:
        """The readings of one row, parallel to `signals` (NaN where a cell is empty)."""
        return [float(v) for v in self.values[index]]


def natural_key(path: Path) -> list[Any]:
    """Sort key putting `2.csv` before `10.csv`."""
    return [int(p) if p.isdigit() else p.lower() for p in _DIGITS.split(path.name)]


def expand(paths: list[Path]) -> list[Path]:
    """Files to read: each file as given, each directory as its *.csv files in natural order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.csv"), key=natural_key)
            if not found:
                raise DatasetError(f"{path}: directory has no *.csv files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DatasetError(f"{path}: no such file or directory")
    return files


def read(paths: list[Path], fmt: str = "skab") -> list[Series]:
    """Every file under `paths` as a Series, with asset ids unique across them."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r} (one of {', '.join(FORMATS)})")
    reader = read_skab if fmt == "skab" else read_nab
    series: list[Series] = []
    taken: set[str] = set()
    for path in expand(paths):
        one = reader(path)
        asset_id, n = one.asset_id, 2
        while asset_id in taken:
            asset_id, n = f"{one.asset_id[:60]}-{n}", n + 1
        taken.add(asset_id)
        if asset_id != one.asset_id:
            one = replace(one, asset_id=asset_id)
        series.append(one)
    return series


def load(fmt: str, paths: Sequence[Path]) -> list[Series]:
    """`read` with the format first."""
    return read(list(paths), fmt)


def read_skab(path: Path) -> Series:
    frame = _read_csv(path, separator=";")
    times = _times(frame, SKAB_TIME, path)
    labels = None
    if SKAB_LABEL in frame.columns:
        labels = _column(frame, SKAB_LABEL, path) > 0.5
    columns = [c for c in frame.columns if c not in (SKAB_TIME, SKAB_LABEL, SKAB_CHANGEPOINT)]
    return Series(
        path=path,
        key=f"{path.parent.name}/{path.name}",
        asset_id=asset_id_for(f"{path.parent.name}-{path.stem}"),
        signals=signal_names(columns),
        columns=tuple(columns),
        times=times,
        values=_values(frame, columns, path),
        labels=labels,
    )


def read_nab(path: Path) -> Series:
    frame = _read_csv(path, separator=",")
    times = _times(frame, NAB_TIME, path)
    columns = [c for c in frame.columns if c != NAB_TIME]
    root, key = _nab_labels_root(path)
    windows_all = _json(root / "labels" / "combined_windows.json")
    if key not in windows_all:
        raise DatasetError(f"{path}: {key!r} is not in {root / 'labels/combined_windows.json'}")
    windows = tuple((_stamp(a, path), _stamp(b, path)) for a, b in windows_all[key])
    points: tuple[datetime, ...] = ()
    points_file = root / "labels" / "combined_labels.json"
    if points_file.is_file():
        points = tuple(_stamp(t, path) for t in _json(points_file).get(key, []))
    t = np.array([x.timestamp() for x in times])
    labels = np.zeros(len(times), dtype=np.bool_)
    for start, end in windows:
        labels |= (t >= start.timestamp()) & (t <= end.timestamp())
    return Series(
        path=path,
        key=key,
        asset_id=asset_id_for(path.stem),
        signals=signal_names(columns),
        columns=tuple(columns),
        times=times,
        values=_values(frame, columns, path),
        labels=labels,
        windows=windows,
        points=points,
    )


def asset_id_for(text: str) -> str:
    """A site-file asset id made from a file name (letters, digits, '-', '_', '.')."""
    cleaned = _NOT_ID.sub("-", text).strip("-._")[:64] or "series"
    return cleaned if cleaned[0].isalnum() else f"s{cleaned[:63]}"


def signal_names(columns: list[str]) -> tuple[str, ...]:
    """Column names as unique snake-case signal names (`Flow RateRMS` -> `flow_raterms`)."""
    names: list[str] = []
    for column in columns:
        name = _NOT_SIGNAL.sub("_", column.strip().lower()).strip("_")[:60] or "signal"
        if not name[0].isalpha():
            name = f"s_{name}"[:60]
        unique, n = name, 2
        while unique in names:
            unique, n = f"{name}_{n}", n + 1
        names.append(unique)
    return tuple(names)


# -- reading --------------------------------------------------------------------------------


def _read_csv(path: Path, separator: str) -> pl.DataFrame:
    try:
        frame = pl.read_csv(path, separator=separator, infer_schema_length=0)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise DatasetError(f"{path}: cannot read as a {separator!r}-separated csv: {exc}") from exc
    frame = frame.rename({c: c.strip() for c in frame.columns})
    if frame.height == 0:
        raise DatasetError(f"{path}: no rows")
    return frame


def _times(frame: pl.DataFrame, column: str, path: Path) -> tuple[datetime, ...]:
    if column not in frame.columns:
        raise DatasetError(f"{path}: no {column!r} column (columns: {', '.join(frame.columns)})")
    text = frame[column].str.strip_chars()
    try:
        parsed = text.str.to_datetime(time_unit="us", strict=True)
    except pl.exceptions.PolarsError as exc:
        raise DatasetError(f"{path}: column {column!r}: unparsable time: {exc}") from exc
    bad = parsed.is_null() & text.is_not_null()
    if parsed.null_count() or bad.any():
        row = int((parsed.is_null()).arg_max() or 0)
        raise DatasetError(f"{path}: column {column!r}: unparsable time at row {row + 1}")
    dtype = parsed.dtype
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        parsed = parsed.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return tuple(t.replace(tzinfo=UTC) for t in parsed.to_list())


def _column(frame: pl.DataFrame, column: str, path: Path) -> npt.NDArray[np.float64]:
    try:
        values = frame[column].str.strip_chars().cast(pl.Float64, strict=True)
    except pl.exceptions.PolarsError as exc:
        raise DatasetError(f"{path}: column {column!r} is not numeric: {exc}") from exc
    return values.fill_null(float("nan")).to_numpy().astype(np.float64)


def _values(frame: pl.DataFrame, columns: list[str], path: Path) -> npt.NDArray[np.float64]:
    if not columns:
        raise DatasetError(f"{path}: no signal columns besides time and labels")
    return np.column_stack([_column(frame, c, path) for c in columns])


def _stamp(text: str, path: Path) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise DatasetError(f"{path}: label time {text!r} is unparsable") from exc
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _nab_labels_root(path: Path) -> tuple[Path, str]:
    for parent in path.resolve().parents:
        if (parent / "labels" / "combined_windows.json").is_file():
            try:
                key = path.resolve().relative_to(parent / "data").as_posix()
            except ValueError:
                key = path.resolve().relative_to(parent).as_posix()
            return parent, key
    raise DatasetError(f"{path}: no labels/combined_windows.json in any directory above it")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read labels: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object of file -> labels")
    return data


# -- the replay ----------------------------------------------------------------------------


def telemetry_frames(series: Series, ingest_ts: datetime) -> Iterator[dict[str, Any]]:
    """One telemetry_frame record per row, every column a reading stamped with the row's time;
    a missing value (NaN) is sent as a BAD reading, so every row gets its frame (and score)."""
    for index, ts_us in enumerate(series.times_us):
        ts = from_micros(int(ts_us))
        readings = []
        for signal, value in zip(series.signals, series.row(index), strict=True):
            value = float(value)
            readings.append(
                {
                    "signal": signal,
                    "ts": ts,
                    "value": value,
                    "quality": "GOOD" if math.isfinite(value) else "BAD",
                    "status_code": None,
                }
            )
        yield {
            "asset_id": series.asset_id,
            "source_id": REPLAY_SOURCE,
            "seq": index,
            "ingest_ts": ingest_ts,
            "readings": readings,
        }


# -- the site description -------------------------------------------------------------------

REPLAY_SOURCE = "replay"
REPLAY_LINE = "replay"
REPLAY_MAX_AGE = "36500d"
"""Benchmark data is years old; a replay accepts readings up to a century old."""
PROCESS_NOISE_RATIO = 0.05
"""Process noise of a derived signal, relative to its measurement noise per sample:
process_noise = ratio · noise / period^1.5, so the filter's smoothing spans the same number of
samples whatever the sampling period."""
RANGE_MARGIN = 10.0
"""The physical range is the training range widened each side by this many training spans
plus the largest magnitude seen (a sensor reading ~27 may well read 0 or 60)."""
RATE_MARGIN = 2.0
"""max_rate is this many times the largest change per second seen in the training rows."""


def site_for(series: list[Series], train_rows: int = 400) -> dict[str, Any]:
    """A site description (the YAML file's content) with one asset per series.

    Every asset has its own asset type; each signal's ranges, noise, max_rate, process noise
    and sampling period are derived from the series' first `train_rows` rows by the same rule
    for every file (see the module constants), never set by hand.
    """
    asset_types: dict[str, Any] = {}
    assets: list[dict[str, Any]] = []
    for one in series:
        period = _median_step(one.times[: max(train_rows, 2)])
        head = one.values[: max(train_rows, 2)]
        asset_types[one.asset_id] = {
            "description": f"replay of {one.key}",
            "signals": {
                name: _signal_spec(head[:, i], period, column)
                for i, (name, column) in enumerate(zip(one.signals, one.columns, strict=True))
            },
        }
        assets.append(
            {
                "id": one.asset_id,
                "name": one.key,
                "type": one.asset_id,
                "line": REPLAY_LINE,
                "source": REPLAY_SOURCE,
            }
        )
    return {
        "name": "replay",
        "description": "Benchmark files replayed as telemetry, one asset per file",
        "validation": {"max_age": REPLAY_MAX_AGE},
        "sources": {REPLAY_SOURCE: {"kind": "mqtt", "broker": "mqtt://127.0.0.1:1883"}},
        "lines": {REPLAY_LINE: {"name": "Replayed benchmark files"}},
        "asset_types": asset_types,
        "assets": assets,
    }


def _median_step(times: tuple[datetime, ...]) -> float:
    """Median time step in seconds (1 s when the rows give none)."""
    t = np.array([x.timestamp() for x in times])
    steps = np.diff(t)
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0


def _signal_spec(x: npt.NDArray[np.float64], period: float, column: str) -> dict[str, Any]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        x = np.zeros(1)
    steps = np.diff(x)
    noise = 0.0
    if steps.size:
        # Sensor noise shows in first differences (var = 2·sigma² when the level moves slowly).
        # A plain spread, trimmed of the largest 1% of steps (real jumps): a robust median
        # spread would see quantised readings (most steps ~0) as noiseless.
        size = np.abs(steps)
        kept = steps[size <= np.quantile(size, 0.99)]
        noise = float(np.std(kept if kept.size > 1 else steps)) / float(np.sqrt(2))
    low, high = float(x.min()), float(x.max())
    scale = max(abs(low), abs(high), 1e-6)
    noise = max(noise, scale * 1e-6)
    span = max(high - low, 10 * noise)
    largest_step = float(np.abs(steps).max()) if steps.size else span
    margin = RANGE_MARGIN * span + scale
    max_rate = RATE_MARGIN * max(largest_step, 4 * noise) / period
    return {
        "unit": "1",
        "description": f"column {column!r}",
        "physical": {"min": float(low - margin), "max": float(high + margin)},
        "expected": {"min": float(low - span), "max": float(high + span)},
        "max_rate": float(max_rate),
        "sampling_period": f"{round(period * 1e6)}us",
        "measurement_noise": float(noise),
        "process_noise": float(PROCESS_NOISE_RATIO * noise / period**1.5),
    }
