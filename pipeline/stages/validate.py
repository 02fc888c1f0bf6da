"""The validate stage: telemetry frames in, validated frames (or dead letters) out.

    validator = Validator(site)
    result = validator.validate(frame, Origin("telemetry.raw", 0, 1234), now, payload=raw)
    result.frame          # validated_frame record for telemetry.valid, or None
    result.dead_letter    # dead_letter record for telemetry.deadletter, or None

    batch = validator.validate_frames(frames, origins, now)   # a columnar batch (Frames)
    batch.frames          # the accepted frames, validated (flags, quality, validated_us)
    batch.rows            # the input index of each of them
    batch.dead_letters    # (input index, dead_letter record) of the others

`validate_frames` gives exactly what `validate` would give frame by frame, in batch order; the
reading checks run as array operations over the whole batch (`validate_batch`).

Every reading is checked and kept, with the flags it earned (QualityFlag of validated_frame):

    flag                   when                                             quality becomes
    DEVICE_BAD/_UNCERTAIN  the device said so (its value is then not checked) as the device said
    FUTURE_TIMESTAMP       ts > now + future_tolerance                      BAD
    TOO_OLD                ts < now - max_age                               BAD
    UNKNOWN_SIGNAL         the asset's type has no such signal              BAD
    NOT_FINITE             NaN or ±inf (not raised when the device said BAD) BAD
    OUT_OF_PHYSICAL_RANGE  outside what the sensor can report               BAD
    OUT_OF_EXPECTED_RANGE  outside normal operation                         unchanged
    RATE_OF_CHANGE         gauge: |Δv| > max_rate·Δt + noise allowance;     GOOD -> UNCERTAIN
                           counter: decreased (reset) or rose > max_rate·max(Δt, period)
    STALE                  a noisy gauge repeats the exact same value for   GOOD -> UNCERTAIN
                           the stale window (values pegged at a physical
                           limit excepted: clipping repeats them legitimately)
    OUT_OF_ORDER           ts earlier than the signal's latest accepted     unchanged
                           reading by more than out_of_order_tolerance

So `quality` on telemetry.valid is the verdict downstream stages use (KPIs take GOOD only),
and the device's own verdict stays visible as DEVICE_BAD / DEVICE_UNCERTAIN. State signals
(enumerated codes) jump by design and get no rate-of-change check. A reading updates its
signal's state (the reference for rate, order and stale checks) when its timestamp is
plausible, its value finite and physically possible and the device did not call it BAD;
a reading with a rate-of-change flag does too, so one spike flags its rise and its fall
and a genuine step flags once instead of forever.

Whole frames go to the dead-letter topic instead (reason_code): a missing or mistyped field
or no readings ("invalid_frame"), an asset the site does not know ("unknown_asset"), and a
(source_id, seq) already seen ("duplicate": a normal at-least-once artefact, dropped from
telemetry.valid so no reading is stored twice, but kept as a dead letter so it is visible).
The DUPLICATE flag is therefore never raised on a reading.

Sequence gaps are counted in `stats` only for assets that are the sole asset of their source:
a source's seq runs across all the assets it feeds, so a partition keyed by asset sees the
other assets' numbers as gaps.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from pipeline.site import Site
from pipeline.stages.common import Origin, to_micros
from pipeline.stages.frames import FLAGS, Frames
from pipeline.stages.validate_batch import SignalTable, Window, check_readings, flag_counts
from pipeline.stages.validate_records import dead_letter, describe, frame_problem, reading_times
from pipeline.stages.validate_state import AssetState, SeqWindow, SignalState, ValidateSettings

__all__ = [
    "FLAGS",
    "REASON_CODES",
    "STAGE",
    "Origin",
    "ValidateSettings",
    "Validated",
    "ValidatedBatch",
    "Validator",
]

STAGE = "validate"
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


@dataclass(slots=True)
class ValidatedBatch:
    """The outcome for a batch of frames."""

    frames: Frames
    """The accepted frames, validated: `flags`, `quality` after the checks, `validated_us`."""
    rows: list[int]
    """The input frame index of each accepted frame."""
    dead_letters: list[tuple[int, dict[str, Any]]]
    """(input frame index, dead_letter record) of each rejected frame."""


class Validator:
    """Per-reading checks and whole-frame rejections; state per asset (see module doc)."""

    def __init__(self, site: Site, settings: ValidateSettings | None = None) -> None:
        self.site = site
        self.settings = settings if settings is not None else ValidateSettings.for_site(site)
        self._table = SignalTable(site, self.settings)
        fed = Counter(asset.source_id for asset in site.assets)
        self._sole_asset = {a.id: fed[a.source_id] == 1 for a in site.assets}
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
        problem = frame_problem(frame)
        if problem is None:
            _, problem = reading_times(frame["readings"])
            if problem is not None:
                problem = f"{describe(frame)}: {problem}"
        if problem is not None:
            self._counts["frames"] += 1
            header = frame if isinstance(frame, dict) else {}
            letter = self._reject(header, origin, now, payload, key, "invalid_frame", problem)
            return Validated(None, letter)
        batch = self.validate_frames(Frames.from_records([frame]), [origin], now, [payload], [key])
        if batch.dead_letters:
            return Validated(None, batch.dead_letters[0][1])
        return Validated(batch.frames.record(0), None)

    def validate_frames(
        self,
        frames: Frames,
        origins: list[Origin],
        now: datetime,
        payloads: list[bytes | None] | None = None,
        keys: list[bytes | None] | None = None,
    ) -> ValidatedBatch:
        """Check a batch of telemetry frames (well-formed, as the serde decodes them): the
        same outcome, stats and state as `validate` on each frame in turn. `origins`,
        `payloads` and `keys` are per frame (payloads and keys kept in dead letters)."""
        rows: list[int] = []
        assets: list[int] = []
        letters: list[tuple[int, dict[str, Any]]] = []
        signals: dict[int, dict[str, SignalState]] = {}
        counts = self._counts
        asset_index = self._table.asset_index
        readings = frames.counts().tolist()
        for i, (asset_id, source_id, seq) in enumerate(
            zip(frames.asset_id, frames.source_id, frames.seq.tolist(), strict=True)
        ):
            counts["frames"] += 1
            a = asset_index.get(asset_id)
            state = self._states.get(asset_id)
            window = state.sources.get(source_id) if state is not None else None
            if not readings[i] or a is None or (window is not None and seq in window.seen):
                payload = payloads[i] if payloads is not None else None
                key = keys[i] if keys is not None else None
                letter = self._refuse(
                    {"asset_id": asset_id, "source_id": source_id, "seq": seq},
                    readings[i],
                    origins[i],
                    now,
                    payload,
                    key,
                )
                letters.append((i, letter))
                continue
            if state is None:
                state = self._states[asset_id] = AssetState()
            if window is None:
                window = state.sources[source_id] = SeqWindow(seq, [])
            elif seq > window.highest + 1 and self._sole_asset[asset_id]:
                counts["seq_gaps"] += 1
                counts["seqs_missing"] += seq - window.highest - 1
            elif seq < window.highest:
                counts["seqs_reordered"] += 1
            window.add(seq, self.settings.dedup_window)
            rows.append(i)
            assets.append(a)
            signals[a] = state.signals
        accepted = frames if len(rows) == len(frames) else frames.take(np.array(rows))
        now_us = to_micros(now)
        window_us = Window(now_us + self._future_us, now_us - self._max_age_us, self._order_us)
        checked = check_readings(
            self._table, accepted, np.array(assets, dtype=np.int64), signals, window_us
        )
        counts["frames_valid"] += len(rows)
        counts["readings"] += accepted.readings
        counts["readings_flagged"] += int(np.count_nonzero(checked.flags))
        for name, count in flag_counts(checked.flags).items():
            self._flag_counts[name] += count
        out = Frames(
            asset_id=accepted.asset_id,
            source_id=accepted.source_id,
            seq=accepted.seq,
            ingest_us=accepted.ingest_us,
            bounds=accepted.bounds,
            signal=accepted.signal,
            ts_us=accepted.ts_us,
            value=accepted.value,
            quality=checked.quality,
            flags=checked.flags,
            validated_us=np.full(len(rows), now_us, dtype=np.int64),
        )
        return ValidatedBatch(out, rows, letters)

    # -- internals ------------------------------------------------------------------------

    def _refuse(
        self,
        header: dict[str, Any],
        readings: int,
        origin: Origin,
        now: datetime,
        payload: bytes | None,
        key: bytes | None,
    ) -> dict[str, Any]:
        """The dead letter of a well-formed frame that cannot be validated: no readings, an
        unknown asset, or a (source_id, seq) already seen, checked in that order."""
        asset_id, source_id, seq = header["asset_id"], header["source_id"], header["seq"]
        if not readings:
            code, problem = "invalid_frame", f"{describe(header)}: no readings"
        elif asset_id not in self._table.asset_index:
            code, problem = "unknown_asset", f"unknown asset {asset_id!r} (site {self.site.name})"
        else:
            code = "duplicate"
            problem = f"frame seq {seq} of source {source_id} for asset {asset_id} already seen"
        return self._reject(header, origin, now, payload, key, code, problem)

    def _reject(
        self,
        header: dict[str, Any],
        origin: Origin,
        now: datetime,
        payload: bytes | None,
        key: bytes | None,
        code: str,
        problem: str,
    ) -> dict[str, Any]:
        self._dead_counts[code] += 1
        asset_id = header.get("asset_id")
        source_id = header.get("source_id")
        seq = header.get("seq")
        return dead_letter(
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
        )
