"""The sink's columnar path for state estimates: a consume batch decoded together gives the
same rows, in the same order, with the same offsets, skips, counts, max_rows cuts and insert
tokens as message by message (`SinkProcess._take` -> `append_states`), alone and mixed with
validated frames, and whatever the columnar read cannot vouch for goes the one-by-one way."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from confluent_kafka import KafkaError, Message

from pipeline.errors import SerdeError
from pipeline.serde import AvroSerde, SchemaCatalog
from pipeline.serde.columnar import encode_states
from pipeline.serde.examples import example
from pipeline.serde.states import StatesDecoder
from pipeline.sink import TableRows
from pipeline.sink.consumer import SinkProcess
from pipeline.sink.rows import STATES, append_states, states_table
from pipeline.stages.frames import States, concat_states
from tests.unit.test_serde_columnar import newer_serde, random_states
from tests.unit.test_sink_columnar import (
    STATE,
    VALID,
    message,
    random_frame,
    same_stored,
    same_tables,
    stored,
    unflushed_process,
)

NAN = float("nan")
OTHERS = ("telemetry_frame", "anomaly_score", "kpi_window", "alert_event", "dead_letter")


@pytest.fixture(scope="module")
def serde() -> AvroSerde:
    return AvroSerde(SchemaCatalog.load())


@pytest.fixture(scope="module")
def decoder(serde: AvroSerde) -> StatesDecoder:
    return StatesDecoder(serde)


def records_of(states: States) -> list[dict[str, Any]]:
    return [states.record(i) for i in range(len(states))]


def one_by_one(records: list[dict[str, Any]], topic: str = STATE) -> pa.Table:
    rows = TableRows(STATES)
    for offset, record in enumerate(records):
        append_states(rows, record, topic, offset % 3, offset)
    return rows.arrow()


def table_of(states: States, topic: str = STATE) -> pa.Table:
    offsets = np.arange(len(states), dtype=np.int64)
    return states_table(states, [topic] * len(states), offsets % 3, offsets)


def every_combination() -> dict[str, Any]:
    """A state estimate whose signals take every outlier/measured pair with a null, a -0.0
    and a finite innovation and nis, and NaN, infinite and -0.0 levels and rates."""
    state = example("state_estimate")
    template = state["signals"][0]
    state["signals"] = [
        {
            **template,
            "value": value,
            "rate": -value,
            "innovation": innovation,
            "nis": nis,
            "outlier": bool(k & 1),
            "measured": bool(k & 2),
        }
        for k in range(4)
        for value in (NAN, -0.0, float("inf"), 3.5)
        for innovation, nis in ((None, None), (-0.0, 0.0), (1.25, None), (None, 2.5))
    ]
    return state


# -- rows and decoding ------------------------------------------------------------------------


def test_states_table_rows_are_the_rows_append_states_makes(
    serde: AvroSerde, decoder: StatesDecoder
) -> None:
    rng = random.Random(7)
    for _ in range(4):
        states = random_states(rng, rng.randint(1, 30))
        records = records_of(states)
        same_tables(table_of(states), one_by_one(records))
        values = [serde.encode("state_estimate", r) for r in records]
        decoded = decoder.decode(list(values))
        assert decoded.rows == list(range(len(values))) and decoded.left == []
        read = [serde.decode(v).record for v in values]  # as `SinkProcess._take` reads them
        same_tables(table_of(decoded.states), one_by_one(read))
        assert encode_states(serde, decoded.states) == values


def test_every_outlier_measured_and_null_combination_gives_the_same_rows(
    serde: AvroSerde, decoder: StatesDecoder
) -> None:
    state = every_combination()
    values = [serde.encode("state_estimate", state), serde.encode("state_estimate", state)]
    decoded = decoder.decode(list(values))
    assert decoded.rows == [0, 1]
    table = table_of(decoded.states)
    same_tables(table, one_by_one([serde.decode(v).record for v in values]))
    assert table.column("innovation").null_count == 2 * 32
    assert table.column("nis").null_count == 2 * 32
    flags = set(zip(*(table.column(n).to_pylist() for n in ("outlier", "measured")), strict=True))
    assert len(flags) == 4
    assert np.signbit(table.column("innovation").to_numpy(zero_copy_only=False)).any()


def test_what_does_not_come_back_is_left_to_one_by_one(
    serde: AvroSerde, decoder: StatesDecoder
) -> None:
    state = example("state_estimate")
    state["signals"] = state["signals"][:1]
    good = serde.encode("state_estimate", state)
    assert good.endswith(b"\x00\x01\x00")  # outlier, measured, end of the signals
    true_as_2 = good[:-2] + b"\x02\x00"  # fastavro reads any byte but 0 as true
    nan_values = [
        serde.encode("state_estimate", dict(state, signals=[dict(state["signals"][0], **{n: NAN})]))
        for n in ("innovation", "nis")
    ]
    late = decoder.decode([good]).states
    late.ts_us[:] = 253_402_300_800_000_000  # year 10000
    values: list[bytes | None] = [
        good,
        None,
        good[:-3],  # cut short
        b"\x00not avro",
        b"\x00\x00\x00\x00\x63garbage",  # an unknown schema id
        serde.encode("validated_frame", example("validated_frame")),
        serde.encode("telemetry_frame", example("telemetry_frame")),
        true_as_2,
        *nan_values,
        encode_states(serde, late)[0],
        serde.encode("state_estimate", dict(state, signals=[])),
        good,
    ]
    decoded = decoder.decode(values)
    assert decoded.rows == [0, 11, 12] and decoded.left == list(range(1, 11))
    assert serde.decode(true_as_2).record["signals"][0]["measured"] is True
    for value, name in zip(nan_values, ("innovation", "nis"), strict=True):
        kept = serde.decode(value).record["signals"][0][name]  # one by one: NaN, not null
        assert kept is not None and np.isnan(kept)
    with pytest.raises(SerdeError):
        serde.decode(values[10])


def test_a_corrupt_body_in_the_middle_leaves_the_others_decoded(
    serde: AvroSerde, decoder: StatesDecoder
) -> None:
    rng = random.Random(3)
    records = records_of(random_states(rng, 40))
    values: list[bytes | None] = [serde.encode("state_estimate", r) for r in records]
    corrupt = bytearray(values[20] or b"")
    corrupt[12:22] = b"\xff" * 10  # inside the header fields: lengths and varints go wrong
    values[20] = bytes(corrupt)
    decoded = decoder.decode(values)
    assert 20 in decoded.left
    assert set(decoded.rows) | set(decoded.left) == set(range(40))
    assert set(decoded.rows) >= set(range(40)) - {20}


def test_older_versions_are_left_to_one_by_one(tmp_path: Path, serde: AvroSerde) -> None:
    newer = newer_serde(tmp_path, "state_estimate", site_id=False)
    state = example("state_estimate")
    v1 = serde.encode("state_estimate", state)
    v2 = newer.encode("state_estimate", state)
    assert v1[5:] == v2[5:] and v1[:5] != v2[:5]  # the same body, another schema id
    decoder = StatesDecoder(newer)
    decoded = decoder.decode([v2, v1, v2])
    assert decoded.rows == [0, 2] and decoded.left == [1]
    assert newer.decode(v1).version == 1
    # A version with a field more is read one by one: its columns are not those known here.
    assert not StatesDecoder(newer_serde(tmp_path / "site", "state_estimate")).batch_reads


def test_states_are_taken_and_joined_in_any_order() -> None:
    rng = random.Random(9)
    states = random_states(rng, 12)
    rows = np.array([11, 0, 5, 5, 3], dtype=np.int64)
    taken = states.take(rows)
    want = [states.record(i) for i in rows.tolist()]
    same_tables(table_of(taken), one_by_one(want))
    joined = concat_states([states.take(rows[:2]), states.take(rows[2:])])
    same_tables(table_of(joined), one_by_one(want))
    assert len(states.take(np.zeros(0, dtype=np.int64))) == 0


# -- the sink loop ----------------------------------------------------------------------------


class CutProcess(SinkProcess):
    """A sink process that, where it would flush, notes what it holds and drops it (no
    insert, no commit): the cuts a consume batch is flushed at."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cuts: list[dict[str, Any]] = []

    def _flush_and_commit(self, final: bool = False) -> None:
        if self.sink.holding:
            self.cuts.append(stored(self))
        self.sink.discard()


def random_mix(serde: AvroSerde, rng: random.Random) -> list[Message]:
    """Messages in runs of one kind and topic: state estimates, validated frames, records
    of other types, bad values (cut short, none, an unknown schema id, a state estimate with
    a real NaN innovation) and consumer errors, on both topics and three partitions."""
    state = example("state_estimate")
    good = serde.encode("state_estimate", state)
    nan_state = dict(state, signals=[dict(state["signals"][0], innovation=NAN)])
    bad = [
        good[:-4],
        None,
        b"\x00\x00\x00\x00\x63garbage",
        serde.encode("state_estimate", nan_state),
    ]
    messages: list[Message] = []
    while len(messages) < 80:
        topic = rng.choice([STATE, STATE, VALID])
        kind = rng.choice(["state", "state", "state", "frame", "frame", "other", "bad"])
        for _ in range(rng.randint(1, 12)):
            value: bytes | None
            if kind == "state":
                value = serde.encode("state_estimate", random_states(rng, 1).record(0))
            elif kind == "frame":
                value = serde.encode("validated_frame", random_frame(rng))
            elif kind == "other":
                other = rng.choice(OTHERS)
                value = serde.encode(other, example(other))
            else:
                value = rng.choice(bad)
            messages.append(message(value, len(messages), topic, rng.randrange(3)))
        if rng.random() < 0.1:
            eof = KafkaError(KafkaError._PARTITION_EOF)
            messages.append(Message(topic=topic, partition=0, offset=len(messages), error=eof))
    return messages


def test_a_consume_batch_is_stored_as_message_by_message(serde: AvroSerde) -> None:
    rng = random.Random(11)
    for _ in range(3):
        messages = random_mix(serde, rng)
        old, new = unflushed_process(serde), unflushed_process(serde)
        for m in messages:
            old._take(m)
        new._take_batch(messages, 0.0)
        want = stored(old)
        assert {table for table, _ in want["tables"]} >= {"states", "readings"}
        same_stored(stored(new), want)


@pytest.mark.parametrize("max_rows", [1, 40, 300])
def test_a_consume_batch_is_flushed_where_message_by_message_is(
    serde: AvroSerde, max_rows: int
) -> None:
    rng = random.Random(max_rows)
    for _ in range(2):
        messages = random_mix(serde, rng)
        old = unflushed_process(serde, max_rows, CutProcess)
        new = unflushed_process(serde, max_rows, CutProcess)
        for m in messages:  # the sink loop before the columnar path
            old._take(m)
            if old.sink.due(0.0):
                old._flush_and_commit()
        old._flush_and_commit()
        new._take_batch(messages, 0.0)
        new._flush_and_commit()
        assert isinstance(old, CutProcess) and isinstance(new, CutProcess)
        assert len(new.cuts) == len(old.cuts) > 1
        for got, want in zip(new.cuts, old.cuts, strict=True):
            same_stored(got, want)


def test_a_corrupt_state_in_the_middle_is_skipped_counted_and_committed_past(
    serde: AvroSerde,
) -> None:
    records = records_of(random_states(random.Random(2), 9))
    values = [serde.encode("state_estimate", r) for r in records]
    values[4] = values[4][: len(values[4]) // 2]
    process = unflushed_process(serde)
    process._take_batch([message(v, 100 + k, STATE) for k, v in enumerate(values)], 0.0)
    got = stored(process)
    assert got["undecodable"] == {STATE: 1}
    assert got["records"] == {STATE: 8}
    assert got["offsets"] == {(STATE, 0): 109}
    table = got["tables"][("states", STATE)]
    kept = records[:4] + records[5:]
    assert sorted(set(table.column("origin_offset").to_pylist())) == [
        100 + k for k in range(9) if k != 4 and records[k]["signals"]
    ]
    same_tables(table.drop_columns(["origin_partition", "origin_offset"]),
                one_by_one(kept).drop_columns(["origin_partition", "origin_offset"]))  # fmt: skip
