"""The validate stage on hand-built frames: every check, the dead letters, state and stats."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from pipeline.serde import AvroSerde
from pipeline.settings import DEFAULT_SITE
from pipeline.site import Site, load_site, parse_site
from pipeline.stages.common import Origin, StageStateError, from_micros, to_micros
from pipeline.stages.validate import Validated, Validator
from pipeline.stages.validate_state import ValidateSettings

NOW = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
ORIGIN = Origin("telemetry.raw", 2, 1234)
ASSET, SOURCE = "cnc-01", "opcua-line1"


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(DEFAULT_SITE)


@pytest.fixture()
def validator(site: Site) -> Validator:
    return Validator(site)


def reading(signal: str, value: float, at: float = 0.0, quality: str = "GOOD") -> dict[str, Any]:
    """A raw reading `at` seconds after NOW."""
    return {
        "signal": signal,
        "ts": NOW + timedelta(seconds=at),
        "value": value,
        "quality": quality,
        "status_code": None,
    }


def frame(seq: int, *readings: dict[str, Any], asset: str = ASSET) -> dict[str, Any]:
    return {
        "asset_id": asset,
        "source_id": SOURCE,
        "seq": seq,
        "ingest_ts": NOW,
        "readings": list(readings),
    }


def one(validator: Validator, seq: int, r: dict[str, Any], at: float = 0.0) -> dict[str, Any]:
    """Validate a frame with one reading at NOW + `at`; the validated reading."""
    result = validator.validate(frame(seq, r), ORIGIN, NOW + timedelta(seconds=at))
    assert result.frame is not None and result.dead_letter is None
    return result.frame["readings"][0]


def test_origin_and_time_helpers() -> None:
    assert to_micros(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005
    assert from_micros(to_micros(NOW)) == NOW
    with pytest.raises(AttributeError):
        ORIGIN.offset = 3  # type: ignore[misc]


def test_clean_frame_passes_unchanged(validator: Validator) -> None:
    raw = frame(1, reading("spindle_speed", 12000.0), reading("parts_total", 10.0, 0.1))
    result = validator.validate(raw, ORIGIN, NOW + timedelta(seconds=1))
    assert result.dead_letter is None and result.frame is not None
    out = result.frame
    assert out["validated_ts"] == NOW + timedelta(seconds=1)
    assert {k: out[k] for k in ("asset_id", "source_id", "seq", "ingest_ts")} == {
        k: raw[k] for k in ("asset_id", "source_id", "seq", "ingest_ts")
    }
    assert out["readings"] == [
        {k: r[k] for k in ("signal", "ts", "value", "quality")} | {"flags": []}
        for r in raw["readings"]
    ]


def test_physical_and_expected_range(validator: Validator) -> None:
    broken = one(validator, 1, reading("spindle_speed", 30000.0))
    assert broken["flags"] == ["OUT_OF_PHYSICAL_RANGE"] and broken["quality"] == "BAD"
    unusual = one(validator, 2, reading("spindle_speed", 20000.0, 1.0), at=1.0)
    assert unusual["flags"] == ["OUT_OF_EXPECTED_RANGE"] and unusual["quality"] == "GOOD"


def test_rate_of_change_allows_noise_but_not_jumps(validator: Validator) -> None:
    # spindle_temperature: max_rate 0.5/s, noise 0.2: allowance 0.5·dt + 4·√2·0.2 ≈ 1.63 at 1 s
    one(validator, 1, reading("spindle_temperature", 40.0))
    within = one(validator, 2, reading("spindle_temperature", 41.6, 1.0), at=1.0)
    assert within["flags"] == [] and within["quality"] == "GOOD"
    jump = one(validator, 3, reading("spindle_temperature", 43.3, 2.0), at=2.0)
    assert jump["flags"] == ["RATE_OF_CHANGE"] and jump["quality"] == "UNCERTAIN"
    no_noise = Validator(validator.site, ValidateSettings(noise_sigmas=0))
    one(no_noise, 1, reading("spindle_temperature", 40.0))
    assert one(no_noise, 2, reading("spindle_temperature", 40.6, 1.0), at=1.0)["flags"] == [
        "RATE_OF_CHANGE"
    ]


def test_counter_reset_and_too_fast_counter(validator: Validator) -> None:
    one(validator, 1, reading("parts_total", 100.0))
    assert one(validator, 2, reading("parts_total", 101.0, 1.0), at=1)["flags"] == []
    assert one(validator, 3, reading("parts_total", 0.0, 2.0), at=2)["flags"] == ["RATE_OF_CHANGE"]
    assert one(validator, 4, reading("parts_total", 5.0, 3.0), at=3)["flags"] == ["RATE_OF_CHANGE"]


def test_state_codes_jump_without_rate_flags(validator: Validator) -> None:
    one(validator, 1, reading("machine_state", 0.0))
    assert one(validator, 2, reading("machine_state", 4.0, 0.5), at=1)["flags"] == []


def test_not_finite(validator: Validator) -> None:
    for seq, value in enumerate((math.nan, math.inf, -math.inf), start=1):
        out = one(validator, seq, reading("spindle_load", value))
        assert out["flags"] == ["NOT_FINITE"] and out["quality"] == "BAD"
    device_bad = one(validator, 9, reading("spindle_load", math.nan, quality="BAD"))
    assert device_bad["flags"] == ["DEVICE_BAD"] and device_bad["quality"] == "BAD"
    uncertain = one(validator, 10, reading("spindle_load", math.nan, quality="UNCERTAIN"))
    assert uncertain["flags"] == ["DEVICE_UNCERTAIN", "NOT_FINITE"]
    assert uncertain["quality"] == "BAD"


def test_device_quality_is_kept_as_flags(validator: Validator) -> None:
    out = one(validator, 1, reading("spindle_load", 50.0, quality="UNCERTAIN"))
    assert out["flags"] == ["DEVICE_UNCERTAIN"] and out["quality"] == "UNCERTAIN"
    # A BAD reading's value is not checked (nor used as the reference for later readings).
    out = one(validator, 2, reading("spindle_load", 500.0, 0.1, quality="BAD"), at=1)
    assert out["flags"] == ["DEVICE_BAD"] and out["quality"] == "BAD"
    assert one(validator, 3, reading("spindle_load", 50.5, 0.2), at=1)["flags"] == []


def test_stale_noisy_gauge(validator: Validator) -> None:
    # spindle_temperature: 1 s sampling, stale window max(10 x 1 s, 30 s) = 30 s
    flags = [
        one(validator, i + 1, reading("spindle_temperature", 40.0, float(i)), at=i)["flags"]
        for i in range(32)
    ]
    assert flags[:30] == [[]] * 30
    assert flags[30:] == [["STALE"], ["STALE"]]
    moved = one(validator, 40, reading("spindle_temperature", 40.1, 32.0), at=32)
    assert moved["flags"] == []


def test_stale_spares_exact_signals_and_pegged_values(validator: Validator) -> None:
    for i in range(40):
        at = float(i)
        assert one(validator, 2 * i + 1, reading("parts_total", 7.0, at), at=at)["flags"] == []
        # 0 rpm is the physical minimum: an idle spindle reads exactly 0 for as long as it likes
        assert one(validator, 2 * i + 2, reading("spindle_speed", 0.0, at), at=at)["flags"] == []


def test_timestamps(validator: Validator) -> None:
    future = one(validator, 1, reading("spindle_load", 50.0, 6.0))
    assert future["flags"] == ["FUTURE_TIMESTAMP"] and future["quality"] == "BAD"
    assert one(validator, 2, reading("spindle_load", 50.0, 4.0))["flags"] == []
    old = one(validator, 3, reading("spindle_load", 50.0, -3601.0))
    assert old["flags"] == ["TOO_OLD"] and old["quality"] == "BAD"
    late = one(validator, 4, reading("spindle_load", 50.0, 1.0), at=4)
    assert late["flags"] == ["OUT_OF_ORDER"] and late["quality"] == "GOOD"
    slightly = one(validator, 5, reading("spindle_load", 50.0, 2.5), at=4)
    assert slightly["flags"] == []


def test_site_validation_section_sets_time_tolerances(site: Site) -> None:
    """A replay of recorded data declares a long max_age in the site file."""
    data = yaml.safe_load(DEFAULT_SITE.read_text())
    data["validation"] = {"max_age": "3650d", "future_tolerance": "1m"}
    replay = Validator(parse_site(yaml.safe_dump(data)))
    assert replay.settings.max_age == timedelta(days=3650)
    assert one(replay, 1, reading("spindle_load", 50.0, -86400.0 * 365))["flags"] == []
    assert one(replay, 2, reading("spindle_load", 51.0, 30.0))["flags"] == []
    assert one(Validator(site), 1, reading("spindle_load", 50.0, -86400.0))["flags"] == ["TOO_OLD"]


def test_unknown_signal_is_kept_bad(validator: Validator) -> None:
    out = one(validator, 1, reading("spindel_speed", 1.0))
    assert out["flags"] == ["UNKNOWN_SIGNAL"] and out["quality"] == "BAD"
    assert validator.snapshot(ASSET) == {
        "version": 1,
        "signals": {},
        "sources": {SOURCE: {"highest": 1, "recent": [1]}},
    }


def rejected(result: Validated, code: str) -> dict[str, Any]:
    assert result.frame is None and result.dead_letter is not None
    letter = result.dead_letter
    assert letter["reason_code"] == code and letter["stage"] == "validate"
    assert (letter["origin_topic"], letter["origin_partition"], letter["origin_offset"]) == (
        "telemetry.raw",
        2,
        1234,
    )
    return letter


def test_duplicate_frame_goes_to_dead_letter(validator: Validator) -> None:
    raw = frame(7, reading("spindle_load", 50.0))
    assert validator.validate(raw, ORIGIN, NOW).frame is not None
    before = validator.snapshot(ASSET)
    again = validator.validate(raw, ORIGIN, NOW, payload=b"raw-bytes", key=b"cnc-01")
    letter = rejected(again, "duplicate")
    assert (letter["asset_id"], letter["source_id"], letter["seq"]) == (ASSET, SOURCE, 7)
    assert (letter["payload"], letter["origin_key"]) == (b"raw-bytes", b"cnc-01")
    assert "seq 7" in letter["reason"] and ASSET in letter["reason"]
    assert letter["detected_ts"] == NOW
    assert validator.snapshot(ASSET) == before
    # Another source's seq 7 is a different frame.
    other = dict(raw, source_id="opcua-line1-b")
    assert validator.validate(other, ORIGIN, NOW).frame is not None
    assert validator.stats["dead_letters"]["duplicate"] == 1


def test_dedup_window_is_bounded(site: Site) -> None:
    validator = Validator(site, ValidateSettings(dedup_window=3))
    for seq in range(1, 6):
        validator.validate(frame(seq, reading("spindle_load", 50.0)), ORIGIN, NOW)
    snapshot = validator.snapshot(ASSET)
    assert snapshot is not None
    assert snapshot["sources"][SOURCE] == {"highest": 5, "recent": [3, 4, 5]}
    assert validator.validate(frame(4, reading("spindle_load", 50.0)), ORIGIN, NOW).frame is None
    assert validator.validate(frame(1, reading("spindle_load", 50.0)), ORIGIN, NOW).frame


def test_unknown_asset_and_invalid_frames(validator: Validator) -> None:
    letter = rejected(
        validator.validate(frame(1, reading("x", 1.0), asset="press-9"), ORIGIN, NOW),
        "unknown_asset",
    )
    assert "press-9" in letter["reason"] and letter["asset_id"] == "press-9"
    empty = rejected(validator.validate(frame(2), ORIGIN, NOW), "invalid_frame")
    assert "no readings" in empty["reason"] and empty["seq"] == 2
    no_seq = {k: v for k, v in frame(3, reading("spindle_load", 1.0)).items() if k != "seq"}
    assert rejected(validator.validate(no_seq, ORIGIN, NOW), "invalid_frame")["seq"] is None
    broken = [
        {k: v for k, v in reading("spindle_load", 1.0).items() if k != "value"},
        reading("spindle_load", 1.0) | {"ts": NOW.replace(tzinfo=None)},
        reading("spindle_load", 1.0) | {"quality": "FINE"},
        reading("spindle_load", 1.0) | {"value": "1.0"},
        "spindle_load=1.0",
    ]
    for seq, bad in enumerate(broken, start=10):
        raw = frame(seq, reading("spindle_load", 1.0), bad)  # type: ignore[arg-type]
        letter = rejected(validator.validate(raw, ORIGIN, NOW), "invalid_frame")
        assert "reading 1" in letter["reason"] and f"seq {seq}" in letter["reason"]
    # Rejected frames leave no trace in the state: the first good reading is the reference.
    assert validator.assets() == []
    assert validator.stats["dead_letters"] == {
        "invalid_frame": 7,
        "unknown_asset": 1,
        "duplicate": 0,
        "undecodable": 0,
    }


def test_undecodable(validator: Validator) -> None:
    letter = validator.undecodable(b"\x00\x01", b"k", ORIGIN, "unknown schema id 1", NOW)
    assert letter["reason_code"] == "undecodable" and letter["payload"] == b"\x00\x01"
    assert letter["asset_id"] is None and letter["origin_offset"] == 1234
    assert validator.stats["dead_letters"]["undecodable"] == 1


def test_records_encode_with_the_contract(validator: Validator) -> None:
    serde = AvroSerde.local()
    valid = validator.validate(
        frame(1, reading("spindle_load", 50.0), reading("spindle_load", math.nan, 0.1)),
        ORIGIN,
        NOW,
    ).frame
    assert valid is not None
    decoded = serde.decode(serde.encode("validated_frame", valid)).record
    assert decoded["readings"][1]["flags"] == ["NOT_FINITE"]
    letter = validator.validate(frame(1, reading("spindle_load", 1.0)), ORIGIN, NOW).dead_letter
    assert letter is not None
    assert serde.decode(serde.encode("dead_letter", letter)).record == letter
    junk = validator.undecodable(b"junk", None, ORIGIN, "not Avro", NOW)
    assert serde.decode(serde.encode("dead_letter", junk)).record == junk


def test_stats_count_flags(validator: Validator) -> None:
    one(validator, 1, reading("spindle_load", 500.0))
    one(validator, 2, reading("spindle_load", math.nan, 0.1, quality="UNCERTAIN"))
    one(validator, 3, reading("spindle_load", 50.0, 0.2))
    stats = validator.stats
    assert stats["frames"] == stats["frames_valid"] == 3
    assert (stats["readings"], stats["readings_flagged"]) == (3, 2)
    assert {k: v for k, v in stats["flags"].items() if v} == {
        "OUT_OF_PHYSICAL_RANGE": 1,
        "NOT_FINITE": 1,
        "DEVICE_UNCERTAIN": 1,
    }


def test_snapshot_is_json_and_restores(validator: Validator, site: Site) -> None:
    for i in range(5):
        one(validator, i + 1, reading("spindle_temperature", 40.0, float(i)), at=i)
    snapshot = validator.snapshot(ASSET)
    assert snapshot is not None and validator.snapshot("pump-01") is None
    restored = Validator(site)
    restored.restore(ASSET, json.loads(json.dumps(snapshot)))
    assert restored.assets() == [ASSET] and restored.snapshot(ASSET) == snapshot
    with pytest.raises(StageStateError, match="cnc-01"):
        restored.restore(ASSET, {"version": 1, "signals": {"x": [1]}, "sources": {}})
    with pytest.raises(StageStateError):
        restored.restore(ASSET, {"signals": {}})


def sole_asset_site() -> Site:
    """The demo plant with one asset per source, so each source's seq belongs to one asset."""
    spec = yaml.safe_load(DEFAULT_SITE.read_text(encoding="utf-8"))
    keep = {"cnc-01", "pump-01", "conv-01"}
    spec["assets"] = [a for a in spec["assets"] if a["id"] in keep]
    spec["alerts"] = []
    return parse_site(yaml.safe_dump(spec))


def test_seq_gaps_counted_for_sole_assets_only(site: Site) -> None:
    shared = Validator(site)
    sole = Validator(sole_asset_site())
    for seq in (1, 2, 5, 9, 8):
        for validator in (shared, sole):
            validator.validate(frame(seq, reading("spindle_load", 50.0)), ORIGIN, NOW)
    assert (sole.stats["seq_gaps"], sole.stats["seqs_missing"]) == (2, 5)
    assert (shared.stats["seq_gaps"], shared.stats["seqs_missing"]) == (0, 0)
    assert sole.stats["seqs_reordered"] == shared.stats["seqs_reordered"] == 1
