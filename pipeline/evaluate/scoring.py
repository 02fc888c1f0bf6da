"""Scoring a detector's per-row flags against benchmark labels (pure: arrays in, dicts out).

- **SKAB** (point-wise, as the SKAB leaderboard's outlier-detection table): every row after the
  first `train_rows` of its file is one point; F1 of the anomalous class, FAR = false alarms /
  normal points, MAR = missed / anomalous points, pooled over all files (counts summed) and per
  file. A file without labels counts every point as normal.
- **NAB** (windows): a labelled window is detected when a row inside it is flagged; the first
  such row is its detection time, and its lead is how long before the window's labelled anomaly
  point (combined_labels.json) that was. A false alarm is an alarm *onset* (a flagged row whose
  predecessor was not flagged) outside every window, so one long alarm counts once; false alarms
  per day divide that by the time spent outside the windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.evaluate.datasets import Series

Flags = npt.NDArray[np.bool_]


def confusion(labels: Flags, flags: Flags) -> dict[str, int]:
    """tp, fp, fn, tn of flags against labels (same length)."""
    return {
        "tp": int(np.sum(labels & flags)),
        "fp": int(np.sum(~labels & flags)),
        "fn": int(np.sum(labels & ~flags)),
        "tn": int(np.sum(~labels & ~flags)),
    }


def rates(counts: dict[str, int]) -> dict[str, float]:
    """F1, FAR and MAR from confusion counts (0 where undefined: no points of that kind)."""
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    return {
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "far": fp / (fp + tn) if fp + tn else 0.0,
        "mar": fn / (fn + tp) if fn + tp else 0.0,
    }


def score_skab(
    files: Sequence[tuple[str, Flags | None, Flags]], train_rows: int = 400
) -> dict[str, Any]:
    """Pooled and per-file point-wise scores; `files` holds (name, labels or None, flags)."""
    total = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    per_file: list[dict[str, Any]] = []
    for name, labels, flags in files:
        scored_flags = np.asarray(flags, dtype=np.bool_)[train_rows:]
        if labels is None:
            scored_labels = np.zeros(scored_flags.shape, dtype=np.bool_)
        else:
            scored_labels = np.asarray(labels, dtype=np.bool_)[train_rows:]
        counts = confusion(scored_labels, scored_flags)
        for key, value in counts.items():
            total[key] += value
        per_file.append({"file": name, "points": int(scored_flags.size), **counts, **rates(counts)})
    return {**rates(total), **total, "train_rows": train_rows, "files": per_file}


def score(
    fmt: str, series: Sequence[Series], flags: dict[str, list[bool]], train_rows: int = 400
) -> dict[str, Any]:
    """The report for `fmt` ("skab" or "nab"); `flags` per asset id, one per row."""
    arrays = {one.asset_id: np.asarray(flags[one.asset_id], dtype=np.bool_) for one in series}
    if fmt == "skab":
        return score_skab([(s.key, s.labels, arrays[s.asset_id]) for s in series], train_rows)
    return score_nab([(s, arrays[s.asset_id]) for s in series])


def score_nab(files: Sequence[tuple[Series, Flags]]) -> dict[str, Any]:
    """Per file: windows detected (with first detection and lead), false alarms and per day."""
    per_file = [_nab_file(series, np.asarray(flags, dtype=np.bool_)) for series, flags in files]
    windows = [w for f in per_file for w in f["windows"]]
    # Point-wise too, with the labelled windows as the anomalous points (NAB itself scores
    # windows; these make the JSON comparable in shape with the skab report).
    total = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for f in per_file:
        for key in total:
            total[key] += f["points"][key]
    false_alarms = sum(f["false_alarms"] for f in per_file)
    days = sum(f["normal_days"] for f in per_file)
    return {
        "windows": len(windows),
        "detected": sum(w["detected"] for w in windows),
        "false_alarms": false_alarms,
        "false_alarms_per_day": false_alarms / days if days else 0.0,
        **rates(total),
        **total,
        "files": per_file,
    }


def _nab_file(series: Series, flags: Flags) -> dict[str, Any]:
    t = np.array([x.timestamp() for x in series.times])
    inside = np.zeros(t.size, dtype=np.bool_)
    windows: list[dict[str, Any]] = []
    for start, end in series.windows:
        mask = (t >= start.timestamp()) & (t <= end.timestamp())
        inside |= mask
        hits = np.flatnonzero(mask & flags)
        first = series.times[int(hits[0])] if hits.size else None
        point = _point_in(series.points, start, end)
        lead = None
        if first is not None and point is not None:
            lead = (point - first).total_seconds() / 3600
        windows.append(
            {
                "start": start.isoformat(),
                "end": end.isoformat(),
                "point": point.isoformat() if point is not None else None,
                "detected": bool(hits.size),
                "first_detection": first.isoformat() if first is not None else None,
                "lead_hours": lead,
                "before_point": lead is not None and lead > 0,
            }
        )
    onsets = flags.copy()
    onsets[1:] &= ~flags[:-1]
    false_onsets = np.flatnonzero(onsets & ~inside)
    steps = np.diff(t)
    step = float(np.median(steps[steps > 0])) if np.any(steps > 0) else 0.0
    normal_days = float(np.sum(~inside)) * step / 86_400
    return {
        "file": series.key,
        "rows": series.rows,
        "detected": sum(w["detected"] for w in windows),
        "windows": windows,
        "false_alarms": int(false_onsets.size),
        "false_alarm_times": [series.times[int(i)].isoformat() for i in false_onsets],
        "normal_days": normal_days,
        "false_alarms_per_day": false_onsets.size / normal_days if normal_days else 0.0,
        "flagged_rows": int(flags.sum()),
        "points": confusion(inside, flags),
    }


def _point_in(points: Sequence[datetime], start: datetime, end: datetime) -> datetime | None:
    for point in points:
        if start <= point <= end:
            return point
    return None
