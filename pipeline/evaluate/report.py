"""The `twin evaluate` report as text (the JSON form is the report dict itself)."""

from __future__ import annotations

from typing import Any


def render_text(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    lines = [
        f"{report['format']}: {len(report['files'])} files, {report['rows']} rows, "
        f"replayed in {report['seconds']} s ({report['model']})"
    ]
    if report["format"] == "skab":
        lines.append(
            f"pooled  F1 {report['f1']:.3f}  FAR {100 * report['far']:.1f}%  "
            f"MAR {100 * report['mar']:.1f}%  (tp {report['tp']} fp {report['fp']} "
            f"fn {report['fn']} tn {report['tn']})"
        )
        for f in report["files"]:
            lines.append(
                f"  {f['file']:<28} F1 {f['f1']:.3f}  FAR {100 * f['far']:5.1f}%  "
                f"MAR {100 * f['mar']:5.1f}%"
            )
    else:
        for f in report["files"]:
            lines.append(
                f"{f['file']}: windows detected {f['detected']}/{len(f['windows'])}, "
                f"false alarms {f['false_alarms']} ({f['false_alarms_per_day']:.2f}/day)"
            )
            for w in f["windows"]:
                lead = w.get("lead_hours")
                lines.append(
                    f"  window {w['start']} .. {w['end']}: "
                    + (
                        f"first flag {w['first_detection']}"
                        + (f", {lead:.1f} h before the labelled point" if lead is not None else "")
                        if w["detected"]
                        else "missed"
                    )
                )
    return "\n".join(lines)
