"""The columnar codec: batches decode to the same Frames as AvroSerde.decode record by record,
corrupt messages end up as errors without touching the others, and the column encoders give
the same bytes as AvroSerde.encode of every record."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.errors import SerdeError
from pipeline.serde import AvroSerde, Decoded, SchemaCatalog, record_new_versions
from pipeline.serde.catalog import DEFAULT_ROOT
from pipeline.serde.columnar import DecodedFrames, FrameDecoder, encode_states, encode_validated
from pipeline.serde.container import decoding_schema
from pipeline.serde.examples import example
from pipeline.serde.varint import Longs, zigzag
from pipeline.stages.frames import FLAGS, QUALITIES, Frames, States

# Microseconds of year 1 and year 9999: what a datetime can hold, so what a record can say.
MIN_US, MAX_US = -62_135_596_800_000_000, 253_402_300_799_999_999
SIGNALS = ["spindle_temp", "Druck/ä", "température", "温度", "", "x" * 200, "🚀 rpm"]


class CountingSerde(AvroSerde):
    """Counts the messages decoded one by one (not through the batch read)."""

    alone = 0

    def decode(self, data: bytes | None) -> Decoded:
        self.alone += 1
        return super().decode(data)


@pytest.fixture(scope="module")
def serde() -> CountingSerde:
    return CountingSerde(SchemaCatalog.load())


@pytest.fixture(scope="module", params=["polars", "quick"])
def decoder(serde: AvroSerde, request: pytest.FixtureRequest) -> FrameDecoder:
    """Every batch read by polars, or every batch read message by message (`QuickFrames`)."""
    return FrameDecoder(serde, quick_max=0 if request.param == "polars" else 1_000_000)


def random_time(rng: random.Random) -> int:
    return rng.choice(
        [
            rng.randint(MIN_US, MAX_US),
            rng.randint(-(10**6), 10**6),
            1_795_000_000_000_000 + rng.randint(0, 10**9),
            MIN_US,
            MAX_US,
            0,
            -1,
        ]
    )


def random_value(rng: random.Random) -> float:
    return rng.choice(
        [rng.gauss(0, 1e3), float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 5e-324, 1e308]
    )


def random_frame(rng: random.Random, readings: int | None = None) -> dict[str, Any]:
    count = rng.choice([0, 1, 3, 86, 200]) if readings is None else readings
    return {
        "asset_id": rng.choice(["press-01", "pompe-ü", "машина", ""]),
        "source_id": rng.choice(["opcua-line1", "bench-gateway"]),
        "seq": rng.choice([0, -1, rng.randint(-(2**63), 2**63 - 1), 2**63 - 1, -(2**63)]),
        "ingest_ts": random_time(rng),
        "readings": [
            {
                "signal": rng.choice(SIGNALS),
                "ts": random_time(rng),
                "value": random_value(rng),
                "quality": rng.choice(QUALITIES),
                "status_code": rng.choice([None, 0, 2**31, -(2**63)]),
            }
            for _ in range(count)
        ],
    }


def message(serde: AvroSerde, frame: dict[str, Any]) -> bytes:
    return serde.encode("telemetry_frame", frame)


def same_frames(a: Frames, b: Frames) -> None:
    """Every column equal, float bits included (NaN payloads, -0.0)."""
    assert a.asset_id == b.asset_id
    assert a.source_id == b.source_id
    assert a.signal.dtype == b.signal.dtype == np.object_
    assert a.signal.tolist() == b.signal.tolist()
    for name in ("seq", "ingest_us", "bounds", "ts_us", "quality"):
        left, right = getattr(a, name), getattr(b, name)
        assert left.dtype == right.dtype, name
        assert np.array_equal(left, right), name
    assert a.value.dtype == b.value.dtype == np.float64
    assert np.array_equal(a.value.view(np.uint64), b.value.view(np.uint64))
    assert a.flags is None and b.flags is None
    assert a.validated_us is None and b.validated_us is None


def expected(serde: AvroSerde, values: list[bytes | None]) -> DecodedFrames:
    """What AvroSerde.decode says message by message (the earlier per-message decoding)."""
    records, rows, errors = [], [], {}
    for i, value in enumerate(values):
        try:
            decoded = serde.decode(value)
        except SerdeError as exc:
            errors[i] = str(exc)
            continue
        if decoded.record_type != "telemetry_frame":
            errors[i] = f"expected a telemetry_frame, got a {decoded.record_type}"
            continue
        records.append(decoded.record)
        rows.append(i)
    return DecodedFrames(Frames.from_records(records), rows, errors)


def check(
    decoder: FrameDecoder, serde: AvroSerde, values: list[bytes | None], alone: int | None = None
) -> DecodedFrames:
    """Decode a batch and compare with message by message; `alone`: at most that many
    messages may be decoded one by one."""
    if isinstance(serde, CountingSerde):
        serde.alone = 0
        got = decoder.decode(values)
        if alone is not None:
            assert serde.alone <= alone
    else:
        got = decoder.decode(values)
    want = expected(serde, values)
    assert got.rows == want.rows
    assert _addressless(got.errors) == _addressless(want.errors)
    same_frames(got.frames, want.frames)
    return got


def _addressless(errors: dict[int, str]) -> dict[int, str]:
    """fastavro names the stream it read from by its memory address: different every time."""
    return {i: re.sub(r" at 0x[0-9a-f]+", "", reason) for i, reason in errors.items()}


# -- decoding ---------------------------------------------------------------------------------


def test_random_batches_decode_as_message_by_message(
    decoder: FrameDecoder, serde: AvroSerde
) -> None:
    rng = random.Random(1)
    for _ in range(5):
        values: list[bytes | None] = [
            message(serde, random_frame(rng)) for _ in range(rng.randint(1, 40))
        ]
        got = check(decoder, serde, values, alone=0)
        assert got.rows == list(range(len(values)))


def test_the_newest_frame_version_is_read_in_batches(decoder: FrameDecoder) -> None:
    assert decoder.batch_reads


def test_the_decoding_schema_has_no_enums_logical_types_or_docs(serde: AvroSerde) -> None:
    text = json.dumps(decoding_schema(serde.catalog.latest("telemetry_frame").schema))
    assert "enum" not in text and "logicalType" not in text and '"doc"' not in text
    assert '"name": "quality", "type": "int"' in text


def test_enum_references_by_name_become_ints_too() -> None:
    schema = {
        "type": "record",
        "name": "R",
        "namespace": "n",
        "fields": [
            {"name": "a", "type": {"type": "enum", "name": "Q", "symbols": ["X", "Y"]}},
            {"name": "b", "type": "Q"},
            {"name": "c", "type": {"type": "array", "items": "n.Q"}},
        ],
    }
    fields = decoding_schema(schema)["fields"]
    assert [f["type"] for f in fields] == ["int", "int", {"type": "array", "items": "int"}]


def test_messages_that_are_no_frames_are_errors_with_the_serde_reason(
    decoder: FrameDecoder, serde: AvroSerde
) -> None:
    frame = message(serde, random_frame(random.Random(2), readings=3))
    values: list[bytes | None] = [
        frame,
        None,
        b"",
        b"\x00\x00\x00",
        b"\x00\x00\x00\x00\x01",  # a header and no body
        b"\x07" + frame[1:],
        b"\x00\x00\x00\x03\xe7" + frame[5:],  # unknown schema id 999
        serde.encode("validated_frame", example("validated_frame")),
        serde.encode("state_estimate", example("state_estimate")),
        frame,
    ]
    got = check(decoder, serde, values)
    assert got.rows == [0, 9]
    assert got.errors[7] == "expected a telemetry_frame, got a validated_frame"
    assert "unknown schema id 999" in got.errors[6]


def test_an_empty_batch_gives_no_frames(decoder: FrameDecoder) -> None:
    got = decoder.decode([])
    assert (len(got.frames), got.rows, got.errors) == (0, [], {})


def test_frames_without_readings_and_with_long_arrays(
    decoder: FrameDecoder, serde: AvroSerde
) -> None:
    rng = random.Random(3)
    values: list[bytes | None] = [message(serde, random_frame(rng, n)) for n in (0, 5000, 0, 1)]
    got = check(decoder, serde, values)
    assert got.frames.counts().tolist() == [0, 5000, 0, 1]


def corruptions(good: bytes, rng: random.Random) -> list[bytes]:
    """Damaged copies of one valid message: each keeps the valid 5-byte header."""
    head, body = good[:5], good[5:]
    cut = rng.randrange(1, len(body))
    flipped = bytearray(body)
    flipped[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
    return [
        good[:-1],  # truncated
        good[: 5 + cut],
        good + b"\x00",  # trailing garbage
        good + bytes(rng.randrange(256) for _ in range(30)),
        head + bytes(rng.randrange(256) for _ in range(len(body))),  # random body
        head + b"\x02a\x02g\x02\x02" + zigzag(2**60),  # a huge array count
        head + b"\x02a\x02g\x02\x02" + zigzag(-(2**40)) + zigzag(10),
        head + zigzag(2**60) + b"abc",  # a huge string length
        head + b"\x04\xff\xfe" + body[3:],  # invalid UTF-8 in place of a 2-byte string
        head + body[:cut] + body[cut + 1 :],  # a byte gone
        head + bytes(flipped),
    ]


def test_corrupt_messages_are_errors_and_leave_the_others_intact(
    decoder: FrameDecoder, serde: AvroSerde
) -> None:
    rng = random.Random(4)
    for _ in range(3):
        frames = [random_frame(rng, rng.choice([2, 3, 20])) for _ in range(12)]
        frames[0]["asset_id"] = "a"  # so that the handmade bodies above fit the schema
        good = [message(serde, f) for f in frames]
        for bad in corruptions(good[0], rng):
            for where in (0, 5, 11):
                values: list[bytes | None] = [*good[1 : where + 1], bad, *good[where + 1 :]]
                # Only the bad message is decoded on its own, after the batch read.
                got = check(decoder, serde, values, alone=1)
                # The other messages are all there, decoded as on their own.
                assert set(range(len(values))) - {where} <= set(got.rows)


def test_many_random_mutations(decoder: FrameDecoder, serde: AvroSerde) -> None:
    rng = random.Random(5)
    good = [message(serde, random_frame(rng, rng.choice([1, 4, 30]))) for _ in range(30)]
    for _ in range(30):
        values: list[bytes | None] = list(good)
        damaged = rng.sample(range(len(values)), rng.randint(1, 4))
        for i in damaged:
            data = bytearray(good[i])
            for _ in range(rng.randint(1, 3)):
                spot = rng.randrange(5, len(data))
                action = rng.randrange(3)
                if action == 0:
                    data[spot] = rng.randrange(256)
                elif action == 1:
                    del data[spot]
                else:
                    data.insert(spot, rng.randrange(256))
            values[i] = bytes(data)
        check(decoder, serde, values, alone=len(damaged))


def test_an_unknown_quality_index_is_an_error_for_that_message(
    decoder: FrameDecoder, serde: AvroSerde
) -> None:
    frame = random_frame(random.Random(6), readings=2)
    frame["readings"][1].update(quality="GOOD", status_code=None, value=1.0)
    good = message(serde, frame)
    # The last reading ends: quality (0 = GOOD), status_code null (0), array end (0).
    assert good.endswith(b"\x00\x00\x00")
    for index in (3, 9, 1000, -4):
        bad = good[:-3] + zigzag(index) + b"\x00\x00"
        got = check(decoder, serde, [good, bad, good])
        assert got.rows == [0, 2]
        assert "corrupt or truncated" in got.errors[1]
    # fastavro takes a negative index from the end of the symbols (-1 is BAD); so does this.
    got = check(decoder, serde, [good, good[:-3] + zigzag(-1) + b"\x00\x00"])
    assert got.rows == [0, 1]
    assert got.frames.quality.tolist()[-1] == QUALITIES.index("BAD")


def test_timestamps_no_datetime_can_hold_are_errors_as_message_by_message(
    decoder: FrameDecoder, serde: AvroSerde
) -> None:
    frame = random_frame(random.Random(13), readings=2)
    frame["asset_id"], frame["source_id"], frame["seq"], frame["ingest_ts"] = "a", "g", 5, 0
    frame["readings"][0]["ts"] = MAX_US
    good = message(serde, frame)
    assert good[5:12] == b"\x02a\x02g\x0a\x00\x04"
    late_ingest = good[:10] + zigzag(MAX_US + 1) + good[11:]
    early_ingest = good[:10] + zigzag(MIN_US - 1) + good[11:]
    late_reading = good.replace(zigzag(MAX_US), zigzag(MAX_US + 1))
    values: list[bytes | None] = [good, late_ingest, early_ingest, late_reading, good]
    got = check(decoder, serde, values, alone=3)
    assert got.rows == [0, 4]
    assert all("out of range" in got.errors[i] for i in (1, 2, 3))


def test_a_non_canonical_body_decodes_as_fastavro_reads_it(
    decoder: FrameDecoder, serde: AvroSerde
) -> None:
    frame = random_frame(random.Random(7), readings=3)
    frame["asset_id"], frame["source_id"], frame["seq"] = "a", "g", 5
    good = message(serde, frame)
    assert good[5:12] == b"\x02a\x02g\x0a" + good[10:12]
    overlong = good[:9] + b"\x8a\x00" + good[10:]  # seq 5 as a two-byte varint
    got = check(decoder, serde, [good, overlong, good], alone=1)
    assert got.rows == [0, 1, 2]
    assert got.frames.seq.tolist() == [5, 5, 5]


def test_a_batch_of_bodies_encoded_otherwise_decodes_all_the_same(
    decoder: FrameDecoder, serde: AvroSerde
) -> None:
    rng = random.Random(14)
    values: list[bytes | None] = []
    for k in range(60):
        frame = random_frame(rng, readings=2)
        frame["asset_id"], frame["source_id"], frame["seq"] = "a", "g", 5
        good = message(serde, frame)
        # Every other body holds seq 5 as a two-byte varint: valid Avro, not fastavro's.
        values.append(good[:9] + b"\x8a\x00" + good[10:] if k % 2 else good)
    got = check(decoder, serde, values, alone=30)
    assert got.rows == list(range(60))


def newer_serde(tmp_path: Path, record_type: str, site_id: bool = True) -> AvroSerde:
    """A serde whose catalog holds a v2 of `record_type`: v1 with a `site_id` field more, or
    (`site_id` False) v1 with another doc, the same fields."""
    root = tmp_path / "avro"
    shutil.copytree(DEFAULT_ROOT, root)
    schema: dict[str, Any] = json.loads((root / record_type / "v1.avsc").read_text())
    if site_id:
        schema["fields"].append(
            {"name": "site_id", "type": "string", "default": "unknown", "doc": "Site of the asset."}
        )
    else:
        schema["doc"] += " Version 2."
    (root / record_type / "v2.avsc").write_text(json.dumps(schema, indent=2))
    record_new_versions(root)
    return AvroSerde.local(SchemaCatalog.load(root))


def test_older_versions_and_frames_with_unknown_fields_decode_one_by_one(
    tmp_path: Path, serde: AvroSerde
) -> None:
    newer = newer_serde(tmp_path, "telemetry_frame")
    rng = random.Random(8)
    values: list[bytes | None] = []
    for k in range(6):
        frame = random_frame(rng, 3)
        if k % 2:
            values.append(newer.encode("telemetry_frame", {**frame, "site_id": "p1"}))
        else:
            values.append(serde.encode("telemetry_frame", frame))
    got = check(FrameDecoder(newer), newer, values)
    assert got.rows == list(range(6))


def test_the_serde_names_known_schema_ids_and_headers(serde: AvroSerde) -> None:
    assert serde.known_schema(1) == ("telemetry_frame", 1)
    assert serde.known_schema(4) == ("state_estimate", 1)
    assert serde.known_schema(999) is None
    encoded = serde.encode("validated_frame", example("validated_frame"))
    assert serde.header("validated_frame") == encoded[:5] == b"\x00\x00\x00\x00\x02"
    with pytest.raises(SerdeError, match="unknown record type"):
        serde.header("telemetry")


# -- encoding ---------------------------------------------------------------------------------


def random_validated(rng: random.Random, frames: int) -> Frames:
    records = []
    for _ in range(frames):
        frame = random_frame(rng)
        frame["validated_ts"] = random_time(rng)
        for reading in frame["readings"]:
            del reading["status_code"]
            reading["flags"] = []
        records.append(frame)
    batch = Frames.from_records(records)
    batch.flags = np.array(
        [rng.choice([0, 0, rng.randrange(1 << 16)]) for _ in range(batch.readings)], np.uint16
    )
    return batch


def test_validated_frames_encode_as_record_by_record(serde: AvroSerde) -> None:
    rng = random.Random(9)
    for _ in range(4):
        frames = random_validated(rng, rng.randint(1, 25))
        got = encode_validated(serde, frames, "plant1.telemetry.valid")
        assert got == [
            serde.encode("validated_frame", frames.record(i), topic="plant1.telemetry.valid")
            for i in range(len(frames))
        ]


def test_every_flag_combination_encodes_as_the_record_lists_it(serde: AvroSerde) -> None:
    combos = 1 << len(FLAGS)
    records = [
        {
            "asset_id": "a",
            "source_id": "s",
            "seq": 1,
            "ingest_ts": 0,
            "validated_ts": 1,
            "readings": [
                {"signal": "x", "ts": 2, "value": 0.5, "quality": "BAD", "flags": []}
                for _ in range(combos)
            ],
        }
    ]
    frames = Frames.from_records(records)
    frames.flags = np.arange(combos, dtype=np.uint16)
    [got] = encode_validated(serde, frames)
    assert got == serde.encode("validated_frame", frames.record(0))


def test_encoding_frames_without_flags_or_with_a_bad_quality_raises(serde: AvroSerde) -> None:
    frames = Frames.from_records([random_frame(random.Random(10), 2)])
    with pytest.raises(SerdeError, match="no validation flags"):
        encode_validated(serde, frames)
    frames.flags = np.zeros(2, dtype=np.uint16)
    frames.validated_us = np.zeros(1, dtype=np.int64)
    frames.quality[1] = 3
    with pytest.raises(SerdeError, match="quality code 3"):
        encode_validated(serde, frames)


def random_states(rng: random.Random, frames: int) -> States:
    counts = [rng.choice([0, 1, 16, 300]) for _ in range(frames)]
    bounds = np.zeros(frames + 1, dtype=np.int64)
    np.cumsum(counts, out=bounds[1:])
    n = int(bounds[-1])
    signal = np.empty(n, dtype=object)
    signal[:] = [rng.choice(SIGNALS) for _ in range(n)]

    def floats() -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.array([random_value(rng) for _ in range(n)], dtype=np.float64)

    return States(
        asset_id=[rng.choice(["press-01", "ü"]) for _ in range(frames)],
        source_id=["src"] * frames,
        seq=np.array([rng.randint(-(2**63), 2**63 - 1) for _ in range(frames)], np.int64),
        ts_us=np.array([random_time(rng) for _ in range(frames)], np.int64),
        ingest_us=np.array([random_time(rng) for _ in range(frames)], np.int64),
        bounds=bounds,
        signal=signal,
        value=floats(),
        rate=floats(),
        variance=floats(),
        rate_variance=floats(),
        innovation=floats(),
        nis=floats(),
        outlier=np.array([rng.random() < 0.5 for _ in range(n)], dtype=np.bool_),
        measured=np.array([rng.random() < 0.5 for _ in range(n)], dtype=np.bool_),
    )


def test_state_estimates_encode_as_record_by_record(serde: AvroSerde) -> None:
    rng = random.Random(11)
    for _ in range(4):
        states = random_states(rng, rng.randint(1, 20))
        assert encode_states(serde, states) == [
            serde.encode("state_estimate", states.record(i)) for i in range(len(states))
        ]


def test_empty_batches_encode_to_nothing(serde: AvroSerde) -> None:
    assert encode_states(serde, random_states(random.Random(12), 0)) == []
    assert encode_validated(serde, random_validated(random.Random(12), 0)) == []


def test_longs_are_zigzag_varints_of_every_length() -> None:
    values = [0, -1, 1, 63, -64, 64, 2**31, -(2**31), 2**62, 2**63 - 1, -(2**63)]
    values += [(1 << (7 * k)) - 1 for k in range(1, 10)] + [-(1 << (7 * k)) for k in range(9)]
    column = Longs(np.array(values, dtype=np.int64))
    starts = np.zeros(len(values), dtype=np.int64)
    np.cumsum(column.lengths[:-1], out=starts[1:])
    out = np.zeros(int(column.lengths.sum()), dtype=np.uint8)
    column.write(out, starts)
    assert out.tobytes() == b"".join(zigzag(v) for v in values)
    assert zigzag(-(2**63)) == b"\xff" * 9 + b"\x01"
