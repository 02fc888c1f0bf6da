"""The sink's columnar path for validated frames: a consume batch decoded together gives the
same rows, in the same order, with the same offsets, skips and counts as message by message
(`SinkProcess._take` -> `append_readings`), and whatever the columnar read cannot vouch for
goes the one-by-one way."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, KafkaError, Message

from pipeline.errors import SerdeError
from pipeline.serde import AvroSerde, SchemaCatalog
from pipeline.serde.columnar import encode_validated
from pipeline.serde.examples import example
from pipeline.serde.validated import ValidatedDecoder
from pipeline.sink import ClickHouseSink, TableRows
from pipeline.sink.consumer import SinkOptions, SinkProcess
from pipeline.sink.rows import READINGS, append_readings, readings_table
from pipeline.stages.frames import FLAG_ORDER, QUALITIES, flag_mask

VALID = "plant1.telemetry.valid"
STATE = "plant1.twin.state"
SIGNALS = ["spindle_temp", "Druck/ä", "温度", "", "x" * 200]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def serde() -> AvroSerde:
    return AvroSerde(SchemaCatalog.load())


@pytest.fixture(scope="module")
def decoder(serde: AvroSerde) -> ValidatedDecoder:
    return ValidatedDecoder(serde)


def moment(rng: random.Random) -> datetime:
    micros = rng.choice(
        [rng.randint(-(10**15), 4 * 10**15), 0, -1, 1_795_000_000_000_000 + rng.randint(0, 10**9)]
    )
    return EPOCH + timedelta(microseconds=micros)


def flags(rng: random.Random) -> list[str]:
    """Flags as the validator lists them (FLAG_ORDER), none most of the time."""
    if rng.random() < 0.6:
        return []
    chosen = set(rng.sample(FLAG_ORDER, rng.randint(1, len(FLAG_ORDER))))
    return [name for name in FLAG_ORDER if name in chosen]


def random_frame(rng: random.Random, readings: int | None = None) -> dict[str, Any]:
    count = rng.choice([0, 1, 5, 86]) if readings is None else readings
    return {
        "asset_id": rng.choice(["press-01", "press-02", "pompe-ü", "машина", ""]),
        "source_id": rng.choice(["opcua-line1", "bench-gateway"]),
        "seq": rng.choice([0, -1, rng.randint(-(2**63), 2**63 - 1)]),
        "ingest_ts": moment(rng),
        "validated_ts": moment(rng),
        "readings": [
            {
                "signal": rng.choice(SIGNALS),
                "ts": moment(rng),
                "value": rng.choice([rng.gauss(0, 1e3), float("nan"), -0.0, float("inf")]),
                "quality": rng.choice(QUALITIES),
                "flags": flags(rng),
            }
            for _ in range(count)
        ],
    }


def message(value: bytes | None, offset: int, topic: str = VALID, partition: int = 0) -> Message:
    return Message(topic=topic, partition=partition, offset=offset, value=value)


def same_tables(got: pa.Table, want: pa.Table) -> None:
    """Same columns, types and rows in the same order; floats compared by their bits, and
    where they are null."""
    assert got.schema == want.schema
    assert got.num_rows == want.num_rows
    for name in got.column_names:
        left, right = got.column(name), want.column(name)
        if left.type == pa.float64():
            assert left.is_null().to_pylist() == right.is_null().to_pylist(), name
            bits = [c.to_numpy(zero_copy_only=False).view(np.uint64) for c in (left, right)]
            assert np.array_equal(*bits), name
        else:
            assert left.to_pylist() == right.to_pylist(), name


def one_by_one(serde: AvroSerde, values: list[bytes], topic: str = VALID) -> pa.Table:
    rows = TableRows(READINGS)
    for offset, value in enumerate(values):
        append_readings(rows, serde.decode(value).record, topic, offset % 3, offset)
    return rows.arrow()


def unflushed_process(
    serde: AvroSerde, max_rows: int = 10**9, kind: type[SinkProcess] = SinkProcess
) -> SinkProcess:
    """A sink process whose buffer comes due by rows only: never, by default (nothing is
    inserted, no consumer is asked for anything)."""
    sink = ClickHouseSink(cast(Client, None), max_rows=max_rows, max_delay_s=1e9)
    options = SinkOptions(topics=(VALID, STATE), max_rows=max_rows)
    return kind(cast(Consumer, None), sink, serde, options)


def stored(process: SinkProcess) -> dict[Any, Any]:
    """What the process buffered: rows per (table, topic), offsets and insert tokens per
    topic."""
    batch = process.sink._open
    return {
        "tables": {key: rows.arrow() for key, rows in batch.tables.items()},
        "ranges": batch.ranges,
        "tokens": {topic: batch.token(topic) for topic in batch.ranges},
        "offsets": batch.offsets(),
        "rows": batch.rows,
        "records": dict(process._records),
        "undecodable": dict(process.summary.undecodable),
    }


def same_stored(got: dict[Any, Any], want: dict[Any, Any]) -> None:
    assert got["tables"].keys() == want["tables"].keys()
    for key, table in got["tables"].items():
        same_tables(table, want["tables"][key])
    for name in ("ranges", "tokens", "offsets", "rows", "records", "undecodable"):
        assert got[name] == want[name], name


# -- decoding and rows ------------------------------------------------------------------------


def test_columnar_rows_are_the_rows_append_readings_makes(
    serde: AvroSerde, decoder: ValidatedDecoder
) -> None:
    rng = random.Random(7)
    for _ in range(4):
        values = [
            serde.encode("validated_frame", random_frame(rng)) for _ in range(rng.randint(1, 60))
        ]
        decoded = decoder.decode(list(values))
        assert decoded.rows == list(range(len(values))) and decoded.left == []
        offsets = np.arange(len(values), dtype=np.int64)
        table = readings_table(decoded.frames, [VALID] * len(values), offsets % 3, offsets)
        same_tables(table, one_by_one(serde, values))


def test_every_flag_combination_and_quality_gives_the_same_rows(
    serde: AvroSerde, decoder: ValidatedDecoder
) -> None:
    frame = example("validated_frame")
    template = frame["readings"][0]
    frame["readings"] = [
        {
            **template,
            "quality": QUALITIES[mask % 3],
            "flags": [name for name in FLAG_ORDER if mask & flag_mask([name])],
        }
        for mask in range(1 << len(FLAG_ORDER))
    ]
    values = [serde.encode("validated_frame", frame)]
    decoded = decoder.decode(list(values))
    assert decoded.rows == [0]
    table = readings_table(decoded.frames, [VALID], np.zeros(1, np.int64), np.zeros(1, np.int64))
    same_tables(table, one_by_one(serde, values))


def test_what_a_mask_cannot_say_back_is_left_to_one_by_one(
    serde: AvroSerde, decoder: ValidatedDecoder
) -> None:
    frame = example("validated_frame")
    good = serde.encode("validated_frame", frame)
    reordered = dict(frame, readings=[dict(frame["readings"][0], flags=["STALE", "DEVICE_BAD"])])
    twice = dict(frame, readings=[dict(frame["readings"][0], flags=["STALE", "STALE"])])
    raw = serde.encode("telemetry_frame", example("telemetry_frame"))
    state = serde.encode("state_estimate", example("state_estimate"))
    values: list[bytes | None] = [
        good,
        serde.encode("validated_frame", reordered),
        None,
        good[:-3],
        serde.encode("validated_frame", twice),
        raw,
        state,
        b"\x00not avro",
        good,
    ]
    decoded = decoder.decode(values)
    assert decoded.rows == [0, 8]
    assert decoded.left == [1, 2, 3, 4, 5, 6, 7]


def test_symbols_and_timestamps_no_record_can_hold_are_left_to_one_by_one(
    serde: AvroSerde, decoder: ValidatedDecoder
) -> None:
    frame = example("validated_frame")
    frame["readings"] = [dict(frame["readings"][0], flags=["DEVICE_BAD"])]
    good = serde.encode("validated_frame", frame)
    assert good.endswith(b"\x02\x14\x00\x00")  # one flag, index 10, end of both arrays
    flag_12 = good[:-3] + b"\x18\x00\x00"
    quality_3 = good[:-5] + b"\x06" + good[-4:]  # the quality before them: index 3
    frames = decoder.decode([good]).frames
    frames.ts_us[:] = 253_402_300_800_000_000  # year 10000
    late = encode_validated(serde, frames)[0]
    decoded = decoder.decode([good, flag_12, late, quality_3, good])
    assert decoded.rows == [0, 4] and decoded.left == [1, 2, 3]
    for value in (flag_12, late, quality_3):
        with pytest.raises(SerdeError):
            serde.decode(value)


def test_a_corrupt_body_in_the_middle_leaves_the_others_decoded(
    serde: AvroSerde, decoder: ValidatedDecoder
) -> None:
    rng = random.Random(3)
    values: list[bytes | None] = [
        serde.encode("validated_frame", random_frame(rng, 86)) for _ in range(40)
    ]
    corrupt = bytearray(values[20] or b"")
    corrupt[30:40] = b"\xff" * 10  # inside the first readings: lengths and varints go wrong
    values[20] = bytes(corrupt)
    decoded = decoder.decode(values)
    assert 20 in decoded.left
    assert set(decoded.rows) | set(decoded.left) == set(range(40))
    assert set(decoded.rows) >= set(range(40)) - {20}


def test_rows_added_as_tables_and_as_lists_keep_their_order(serde: AvroSerde) -> None:
    rng = random.Random(5)
    records = [random_frame(rng, 3) for _ in range(4)]
    values = [serde.encode("validated_frame", r) for r in records]
    decoder = ValidatedDecoder(serde)
    rows = TableRows(READINGS)
    for k in (0, 1):
        append_readings(rows, serde.decode(values[k]).record, VALID, k % 3, k)
    decoded = decoder.decode(values[2:])
    offsets = np.array([2, 3], dtype=np.int64)
    rows.extend(readings_table(decoded.frames, [VALID] * 2, offsets % 3, offsets))
    assert rows.columns[0] == []  # lists appended before the table are kept as they are
    assert rows.rows == 12
    same_tables(rows.arrow(), one_by_one(serde, values))
    with pytest.raises(ValueError, match="another schema"):
        TableRows(READINGS).extend(pa.table({"asset_id": ["press-01"]}))


# -- the sink loop ----------------------------------------------------------------------------


def test_a_consume_batch_is_stored_as_message_by_message(serde: AvroSerde) -> None:
    rng = random.Random(11)
    frame = example("validated_frame")
    reordered = dict(frame, readings=[dict(frame["readings"][0], flags=["STALE", "DEVICE_BAD"])])
    for _ in range(3):
        values: list[tuple[str, bytes | None]] = [
            (VALID, serde.encode("validated_frame", random_frame(rng))) for _ in range(30)
        ]
        good = values[3][1] or b""
        extras: list[tuple[str, bytes | None]] = [
            (VALID, good[:-5]),  # corrupt
            (VALID, None),
            (VALID, b"\x00\x00\x00\x00\x63garbage"),  # an unknown schema id
            (VALID, serde.encode("validated_frame", reordered)),  # decoded one by one
            (VALID, serde.encode("state_estimate", example("state_estimate"))),
            (VALID, serde.encode("telemetry_frame", example("telemetry_frame"))),
            (STATE, serde.encode("state_estimate", example("state_estimate"))),
            (STATE, serde.encode("validated_frame", random_frame(rng))),
        ]
        for extra in extras:
            values.insert(rng.randint(0, len(values)), extra)
        messages = [
            message(value, offset, topic, offset % 3)
            for offset, (topic, value) in enumerate(values)
        ]
        old, new = unflushed_process(serde), unflushed_process(serde)
        for m in messages:
            old._take(m)
        new._take_batch(messages, 0.0)
        want = stored(old)
        assert want["undecodable"] == {VALID: 4}  # a state estimate on VALID is stored
        same_stored(stored(new), want)


def test_a_corrupt_message_in_the_middle_is_skipped_counted_and_committed_past(
    serde: AvroSerde,
) -> None:
    rng = random.Random(2)
    values = [serde.encode("validated_frame", random_frame(rng, 86)) for _ in range(9)]
    values[4] = values[4][:60]
    process = unflushed_process(serde)
    process._take_batch([message(v, 100 + k) for k, v in enumerate(values)], 0.0)
    got = stored(process)
    assert got["undecodable"] == {VALID: 1}
    assert got["records"] == {VALID: 8}
    assert got["offsets"] == {(VALID, 0): 109}
    kept = values[:4] + values[5:]
    table = got["tables"][("readings", VALID)]
    assert table.num_rows == 8 * 86
    assert sorted(set(table.column("origin_offset").to_pylist())) == [
        100 + k for k in range(9) if k != 4
    ]
    want = one_by_one(serde, kept)
    same_tables(table.drop_columns(["origin_partition", "origin_offset"]),
                want.drop_columns(["origin_partition", "origin_offset"]))  # fmt: skip


def test_consumer_errors_and_empty_batches_take_the_one_by_one_way(serde: AvroSerde) -> None:
    process = unflushed_process(serde)
    process._take_batch([], 0.0)
    eof = Message(topic=VALID, partition=0, offset=5, error=KafkaError(KafkaError._PARTITION_EOF))
    value = serde.encode("validated_frame", example("validated_frame"))
    process._take_batch([eof, message(value, 5)], 0.0)
    got = stored(process)
    assert got["records"] == {VALID: 1} and got["undecodable"] == {}
    assert got["offsets"] == {(VALID, 0): 6}
