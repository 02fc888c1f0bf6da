"""OPC UA data values as readings: quality, timestamps, values, batching, reconnect delays."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from asyncua import ua

from connectors.base import CollectingSink
from connectors.opcua import Backoff
from connectors.opcua_readings import (
    GAP_STATUS,
    UNUSABLE_STATUS,
    FrameBatcher,
    as_float,
    gap_reading,
    quality_of,
    reading_from,
)

T0 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=UTC)
RECEIVED = T0 + timedelta(seconds=5)


def _value(
    value: object,
    *,
    status: int = ua.StatusCodes.Good,
    source: datetime | None = T0,
    server: datetime | None = None,
    variant: ua.VariantType | None = None,
) -> ua.DataValue:
    return ua.DataValue(
        ua.Variant(value, variant) if variant is not None else ua.Variant(value),
        StatusCode=ua.StatusCode(ua.UInt32(status)),
        SourceTimestamp=source,
        ServerTimestamp=server,
    )


@pytest.mark.parametrize(
    ("status", "quality"),
    [
        (ua.StatusCodes.Good, "GOOD"),
        (ua.StatusCodes.GoodSubscriptionTransferred, "GOOD"),
        (ua.StatusCodes.UncertainLastUsableValue, "UNCERTAIN"),
        (ua.StatusCodes.UncertainSensorNotAccurate, "UNCERTAIN"),
        (ua.StatusCodes.BadSensorFailure, "BAD"),
        (ua.StatusCodes.BadCommunicationError, "BAD"),
        (0xC0000000, "BAD"),  # reserved severity: the spec says treat as Bad
    ],
)
def test_status_code_severity_is_the_quality(status: int, quality: str) -> None:
    assert quality_of(status) == quality


def test_numbers_and_booleans_become_floats() -> None:
    assert as_float(True) == 1.0
    assert as_float(False) == 0.0
    assert as_float(7) == 7.0
    assert as_float(2.5) == 2.5
    assert math.isnan(as_float(None) or 0.0)
    assert as_float("running") is None
    assert as_float([1.0, 2.0]) is None


def test_reading_keeps_source_timestamp_value_and_raw_status() -> None:
    status = ua.StatusCodes.UncertainLastUsableValue
    reading = reading_from("flow", _value(12.5, status=status, server=RECEIVED), RECEIVED)
    assert reading == {
        "signal": "flow",
        "ts": T0,
        "value": 12.5,
        "quality": "UNCERTAIN",
        "status_code": status,
    }


def test_reading_falls_back_to_server_then_receive_time() -> None:
    server_ts = T0 + timedelta(seconds=1)
    assert (
        reading_from("s", _value(1.0, source=None, server=server_ts), RECEIVED)["ts"] == server_ts
    )
    assert reading_from("s", _value(1.0, source=None), RECEIVED)["ts"] == RECEIVED
    # An OPC UA DateTime of 0 means "no timestamp", not the year 1601.
    zero = datetime(1601, 1, 1, tzinfo=UTC)
    assert (
        reading_from("s", _value(1.0, source=zero, server=server_ts), RECEIVED)["ts"] == server_ts
    )


def test_integer_and_boolean_device_values() -> None:
    count = reading_from("parts_total", _value(42, variant=ua.VariantType.UInt32), RECEIVED)
    assert count["value"] == 42.0 and isinstance(count["value"], float)
    flag = reading_from("running", _value(True, variant=ua.VariantType.Boolean), RECEIVED)
    assert flag["value"] == 1.0


def test_bad_value_without_value_is_nan_and_bad() -> None:
    reading = reading_from("flow", _value(None, status=ua.StatusCodes.BadSensorFailure), RECEIVED)
    assert math.isnan(reading["value"])
    assert reading["quality"] == "BAD"
    assert reading["status_code"] == ua.StatusCodes.BadSensorFailure


def test_a_value_that_is_not_a_number_is_bad_type_mismatch() -> None:
    reading = reading_from("state", _value("cutting"), RECEIVED)
    assert math.isnan(reading["value"])
    assert reading["quality"] == "BAD"
    assert reading["status_code"] == UNUSABLE_STATUS


def test_gap_reading_marks_the_signal_not_live() -> None:
    reading = gap_reading("flow", T0)
    assert reading["ts"] == T0
    assert reading["quality"] == "BAD"
    assert reading["status_code"] == GAP_STATUS == 0x80050000
    assert math.isnan(reading["value"])


def _reading(signal: str, ts: datetime, value: float, status: int = 0) -> dict[str, object]:
    return {
        "signal": signal,
        "ts": ts,
        "value": value,
        "quality": quality_of(status),
        "status_code": status,
    }


def test_batcher_submits_one_frame_per_asset_and_empties() -> None:
    batcher = FrameBatcher()
    sink = CollectingSink()
    batcher.add("cnc-01", _reading("spindle_speed", T0, 100.0))
    batcher.add("cnc-02", _reading("spindle_speed", T0, 200.0))
    batcher.add("cnc-01", _reading("spindle_speed", T0 + timedelta(seconds=1), 110.0))
    batcher.add("cnc-01", _reading("feed_rate", T0, 900.0))
    assert batcher.pending == 4
    frames = batcher.flush(sink)
    assert [asset for asset, _ in sink.frames] == ["cnc-01", "cnc-02"]
    assert [r["value"] for r in sink.frames[0][1]] == [100.0, 110.0, 900.0]
    assert frames == sink.frames
    assert batcher.pending == 0
    assert batcher.flush(sink) == []
    assert len(sink.frames) == 2


def test_batcher_drops_a_repeat_of_the_last_delivered_sample_only() -> None:
    batcher = FrameBatcher()
    sink = CollectingSink()
    batcher.add("pump-01", _reading("flow", T0, 10.0))
    batcher.flush(sink)
    batcher.add("pump-01", _reading("flow", T0, 10.0))  # the same sample again
    batcher.add("pump-01", _reading("flow", T0, math.nan, ua.StatusCodes.BadSensorFailure))
    batcher.add("pump-01", _reading("flow", T0, math.nan, ua.StatusCodes.BadSensorFailure))
    batcher.add("pump-01", _reading("flow", T0 + timedelta(seconds=1), 10.0))  # new sample
    batcher.flush(sink)
    assert batcher.duplicates == 2
    second = sink.frames[1][1]
    assert [r["status_code"] for r in second] == [ua.StatusCodes.BadSensorFailure, 0]


def test_backoff_doubles_to_the_bound_with_bounded_jitter_and_resets() -> None:
    backoff = Backoff(initial=0.5, maximum=10.0, jitter=0.2)
    delays = [backoff.next_delay() for _ in range(8)]
    bases = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    for delay, base in zip(delays, bases, strict=True):
        assert base <= delay <= base * 1.2
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 0.6
    with pytest.raises(ValueError):
        Backoff(initial=0)
