"""The earlier per-frame implementation of the validate stage, kept as the reference.

`ReferenceValidator.validate(frame, ...)` checks one telemetry_frame record reading by reading
in Python, exactly as the stage did before it worked on columnar batches. The batch
implementation (`Validator.validate_frames`) is checked against it: the same sequence of
frames must give the same records, dead letters, stats and snapshots. The checks and flags are
those of the `pipeline.stages.validate` module doc.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pipeline.site import Site
from pipeline.stages.common import Origin, to_micros
from pipeline.stages.validate_records import dead_letter, describe, frame_problem, reading_times
from pipeline.stages.validate_state import (
    COUNTER,
    GAUGE,
    AssetState,
    SeqWindow,
    SignalLimits,
    SignalState,
    ValidateSettings,
)

STAGE = "validate"
FLAGS = (
    "OUT_OF_PHYSICAL_RANGE",
    "OUT_OF_EXPECTED_RANGE",
    "RATE_OF_CHANGE",
    "NOT_FINITE",
    "STALE",
    "FUTURE_TIMESTAMP",
    "TOO_OLD",
    "OUT_OF_ORDER",
    "DUPLICATE",
    "UNKNOWN_SIGNAL",
    "DEVICE_BAD",
    "DEVICE_UNCERTAIN",
)
_ONE_US = timedelta(microseconds=1)
COUNTS = (
    "frames",
    "frames_valid",
    "readings",
    "readings_flagged",
    "seq_gaps",
    "seqs_missing",
    "seqs_reordered",
)
REASON_CODES = ("invalid_frame", "unknown_asset", "duplicate", "undecodable")


@dataclass(frozen=True, slots=True)
class Validated:
    """The outcome for one frame: exactly one of the two records is set."""

    frame: dict[str, Any] | None
    """validated_frame record for telemetry.valid."""
    dead_letter: dict[str, Any] | None
    """dead_letter record for telemetry.deadletter."""


class ReferenceValidator:
    """Per-reading checks and whole-frame rejections; state per asset (the earlier code)."""

    def __init__(self, site: Site, settings: ValidateSettings | None = None) -> None:
        self.site = site
        self.settings = settings if settings is not None else ValidateSettings.for_site(site)
        self._limits = {
            asset.id: {name: SignalLimits(s, self.settings) for name, s in asset.signals.items()}
            for asset in site.assets
        }
        self._sole_asset = {a.id: len(site.assets_fed_by(a.source_id)) == 1 for a in site.assets}
        self._states: dict[str, AssetState] = {}
        self._future_us = self.settings.future_tolerance // _ONE_US
        self._max_age_us = self.settings.max_age // _ONE_US
        self._order_us = self.settings.out_of_order_tolerance // _ONE_US
        self._flag_counts = dict.fromkeys(FLAGS, 0)
        self._dead_counts = dict.fromkeys(REASON_CODES, 0)
        self._counts = dict.fromkeys(COUNTS, 0)

    # -- state ----------------------------------------------------------------------------

    def assets(self) -> list[str]:
        return sorted(self._states)

    def snapshot(self, asset_id: str) -> dict[str, Any] | None:
        state = self._states.get(asset_id)
        return None if state is None else state.snapshot()

    def restore(self, asset_id: str, state: dict[str, Any]) -> None:
        self._states[asset_id] = AssetState.restore(asset_id, state)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters since start: frames, readings, readings per flag, dead letters per reason
        code, and sequence gaps (`seq_gaps` events, `seqs_missing` numbers skipped)."""
        return {
            **self._counts,
            "flags": dict(self._flag_counts),
            "dead_letters": dict(self._dead_counts),
        }

    # -- records --------------------------------------------------------------------------

    def undecodable(
        self, payload: bytes, key: bytes | None, origin: Origin, reason: str, now: datetime
    ) -> dict[str, Any]:
        """The dead letter for bytes that could not be decoded as a telemetry frame."""
        self._dead_counts["undecodable"] += 1
        return dead_letter(
            STAGE, "undecodable", reason, origin, now, payload, key, None, None, None
        )

    def validate(
        self,
        frame: dict[str, Any],
        origin: Origin,
        now: datetime,
        payload: bytes | None = None,
        key: bytes | None = None,
    ) -> Validated:
        """Check one telemetry_frame record. `payload` and `key` are the message's original
        bytes, kept in a dead letter (an empty payload when not given)."""
        self._counts["frames"] += 1
        problem = frame_problem(frame)
        times: list[int] | None = None
        if problem is None:
            times, problem = reading_times(frame["readings"])
            if problem is not None:
                problem = f"{describe(frame)}: {problem}"
        if problem is not None:
            return self._reject(frame, origin, now, payload, key, "invalid_frame", problem)
        asset_id, source_id, seq = frame["asset_id"], frame["source_id"], frame["seq"]
        limits = self._limits.get(asset_id)
        if limits is None:
            problem = f"unknown asset {asset_id!r} (site {self.site.name})"
            return self._reject(frame, origin, now, payload, key, "unknown_asset", problem)
        state = self._states.get(asset_id)
        window = state.sources.get(source_id) if state is not None else None
        if window is not None and seq in window.seen:
            problem = f"frame seq {seq} of source {source_id} for asset {asset_id} already seen"
            return self._reject(frame, origin, now, payload, key, "duplicate", problem)

        if state is None:
            state = self._states[asset_id] = AssetState()
        if window is None:
            window = state.sources[source_id] = SeqWindow(seq, [])
        elif seq > window.highest + 1 and self._sole_asset[asset_id]:
            self._counts["seq_gaps"] += 1
            self._counts["seqs_missing"] += seq - window.highest - 1
        elif seq < window.highest:
            self._counts["seqs_reordered"] += 1
        window.add(seq, self.settings.dedup_window)

        readings = self._check(frame["readings"], times or [], limits, state.signals, now)
        self._counts["frames_valid"] += 1
        return Validated(
            {
                "asset_id": asset_id,
                "source_id": source_id,
                "seq": seq,
                "ingest_ts": frame["ingest_ts"],
                "validated_ts": now,
                "readings": readings,
            },
            None,
        )

    # -- internals ------------------------------------------------------------------------

    def _check(
        self,
        readings: list[dict[str, Any]],
        times: list[int],
        limits: dict[str, SignalLimits],
        signals: dict[str, SignalState],
        now: datetime,
    ) -> list[dict[str, Any]]:
        now_us = to_micros(now)
        future_us = now_us + self._future_us
        oldest_us = now_us - self._max_age_us
        order_us = self._order_us
        flag_counts = self._flag_counts
        flagged = 0
        out: list[dict[str, Any]] = []
        for reading, t in zip(readings, times, strict=True):
            name = reading["signal"]
            value = reading["value"]
            device = reading["quality"]
            flags: list[str] = []
            bad = suspect = False
            if device == "BAD":
                flags.append("DEVICE_BAD")
            elif device == "UNCERTAIN":
                flags.append("DEVICE_UNCERTAIN")
            timely = True
            if t > future_us:
                flags.append("FUTURE_TIMESTAMP")
                bad, timely = True, False
            elif t < oldest_us:
                flags.append("TOO_OLD")
                bad, timely = True, False
            limit = limits.get(name)
            if limit is None:
                flags.append("UNKNOWN_SIGNAL")
                bad = True
            elif value - value != 0.0:  # NaN and ±inf only
                if device != "BAD":
                    flags.append("NOT_FINITE")
                    bad = True
            elif device != "BAD":
                if value < limit.physical_min or value > limit.physical_max:
                    flags.append("OUT_OF_PHYSICAL_RANGE")
                    bad = True
                else:
                    if value < limit.expected_min or value > limit.expected_max:
                        flags.append("OUT_OF_EXPECTED_RANGE")
                    if timely:
                        suspect = _follow(name, t, value, limit, signals, order_us, flags)
            if flags:
                flagged += 1
                for flag in flags:
                    flag_counts[flag] += 1
            if bad:
                device = "BAD"
            elif suspect and device == "GOOD":
                device = "UNCERTAIN"
            out.append(
                {
                    "signal": name,
                    "ts": reading["ts"],
                    "value": value,
                    "quality": device,
                    "flags": flags,
                }
            )
        self._counts["readings"] += len(out)
        self._counts["readings_flagged"] += flagged
        return out

    def _reject(
        self,
        frame: Any,
        origin: Origin,
        now: datetime,
        payload: bytes | None,
        key: bytes | None,
        code: str,
        problem: str,
    ) -> Validated:
        self._dead_counts[code] += 1
        header = frame if isinstance(frame, dict) else {}
        asset_id = header.get("asset_id")
        source_id = header.get("source_id")
        seq = header.get("seq")
        return Validated(
            None,
            dead_letter(
                STAGE,
                code,
                f"{problem} (at {origin.topic}[{origin.partition}]@{origin.offset})",
                origin,
                now,
                payload if payload is not None else b"",
                key,
                asset_id if isinstance(asset_id, str) else None,
                source_id if isinstance(source_id, str) else None,
                seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
            ),
        )


def _follow(
    name: str,
    t: int,
    value: float,
    limit: SignalLimits,
    signals: dict[str, SignalState],
    order_us: int,
    flags: list[str],
) -> bool:
    """Rate, stale and order checks against the signal's state, which the reading then
    updates; True when the reading is suspect (rate of change or stale)."""
    state = signals.get(name)
    if state is None:
        signals[name] = SignalState(t, value, t)
        return False
    dt = t - state.ts
    if dt <= 0:
        # Same instant (a held sample sent again) or slightly earlier: nothing to compare.
        if dt < -order_us:
            flags.append("OUT_OF_ORDER")
        return False
    suspect = False
    change = value - state.value
    if limit.kind == GAUGE:
        if abs(change) > limit.rate_per_us * dt + limit.noise_allowance:
            flags.append("RATE_OF_CHANGE")
            suspect = True
    elif limit.kind == COUNTER and (
        change < 0 or change > limit.rate_per_us * max(dt, limit.period_us)
    ):
        flags.append("RATE_OF_CHANGE")
        suspect = True
    if limit.stale_us:
        if change != 0.0 or value == limit.physical_min or value == limit.physical_max:
            state.since = t
        elif t - state.since >= limit.stale_us:
            flags.append("STALE")
            suspect = True
    state.ts = t
    state.value = value
    return suspect
