"""The sink's columnar path end to end: validated frames read from the session's real broker
are stored in the real ClickHouse engine exactly as the one-by-one rows, a corrupt message
among them is skipped, counted and committed past, and inserts stay near max_rows."""

from __future__ import annotations

import random
from datetime import timedelta

import pyarrow as pa
from clickhouse_connect.driver.client import Client

from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.sink import ClickHouseSink, FlushResult, TableRows
from pipeline.sink.consumer import SinkOptions, SinkProcess, sink_consumer
from pipeline.sink.rows import MAPPINGS, READINGS, Mapping, TableSpec
from pipeline.stages.frames import QUALITIES
from tests.integration.test_sink_clickhouse import frame
from tests.integration.test_sink_kafka import PARTITIONS, committed, db, publish, site
from tests.unit.test_sink_columnar import flags, same_tables

__all__ = ["db", "site"]  # fixtures

FRAMES = 90
MAX_ROWS = 500
LARGEST = 86  # readings in a frame, at most


class RecordingSink(ClickHouseSink):
    """A ClickHouse sink that notes the rows of every flush."""

    def __init__(self, client: Client, max_rows: int, max_delay_s: float) -> None:
        super().__init__(client, max_rows, max_delay_s)
        self.flushed: list[int] = []

    def flush(self) -> FlushResult:
        result = super().flush()
        if not result.empty:
            self.flushed.append(sum(result.rows.values()))
        return result


def test_validated_frames_are_stored_as_one_by_one_and_a_corrupt_one_skipped(
    site: tuple[Settings, str], db: Client
) -> None:
    settings, prefix = site
    serde = AvroSerde.local()
    valid = prefix + "telemetry.valid"
    rng = random.Random(4)
    records = []
    for seq in range(FRAMES):
        record = frame(seq, rng.choice([0, 3, 40, LARGEST]))
        record["asset_id"] = f"press-{seq % 5:02d}"  # the key: frames spread over partitions
        for k, reading in enumerate(record["readings"]):
            reading["ts"] += timedelta(microseconds=k)
            reading["quality"] = rng.choice(QUALITIES)
            reading["flags"] = flags(rng)
            reading["value"] = rng.choice([rng.gauss(0, 1e3), float("nan"), -0.0])
        records.append(record)
    values = [serde.encode("validated_frame", r, valid) for r in records]
    corrupt = values[FRAMES // 2][:-7]
    keyed = [(r["asset_id"].encode(), v) for r, v in zip(records, values, strict=True)]
    keyed.insert(FRAMES // 2, (b"press-00", corrupt))
    ends = publish(settings, valid, keyed)

    options = SinkOptions(
        topics=(valid,), mode="assign", max_rows=MAX_ROWS, max_delay_s=0.2, idle_exit_s=2.0,
        duration_s=120.0,
    )  # fmt: skip
    sink = RecordingSink(db, MAX_ROWS, 0.2)
    summary = SinkProcess(sink_consumer(settings), sink, serde, options).run()

    assert summary.records == {valid: FRAMES}
    assert summary.undecodable == {valid: 1}
    assert committed(settings, valid) == ends
    assert len(ends) == PARTITIONS
    total = sum(len(r["readings"]) for r in records)
    # A flush as soon as max_rows is reached: no insert holds a frame's worth more.
    assert sum(sink.flushed) == total
    assert max(sink.flushed) < MAX_ROWS + LARGEST
    assert len(sink.flushed) >= total // (MAX_ROWS + LARGEST)

    expected = read_back(settings, valid, FRAMES + 1, MAPPINGS["validated_frame"], corrupt)
    got = stored_rows(db, READINGS)
    assert got.num_rows == expected.num_rows == total
    same_tables(got, expected)


ORDER = ["origin_partition", "origin_offset", "signal"]
"""The order rows are compared in."""


def read_back(
    settings: Settings, topic: str, count: int, mapping: Mapping, skip: bytes
) -> pa.Table:
    """The rows of the `count` messages of `topic` read back from the broker and turned into
    rows one by one (the message whose value is `skip` left out), in ORDER."""
    serde = AvroSerde.local()
    reader = sink_consumer(settings, f"columnar-check-{topic}")
    reader.subscribe([topic])
    want = TableRows(mapping.table)
    seen = 0
    try:
        while seen < count:
            for message in reader.consume(500, timeout=1.0):
                if message.error() is not None:
                    continue
                seen += 1
                if message.value() == skip:
                    continue
                record = serde.decode(message.value()).record
                mapping.append(want, record, topic, message.partition(), message.offset())
    finally:
        reader.close()
    return want.arrow().sort_by([(name, "ascending") for name in ORDER])


def stored_rows(db: Client, spec: TableSpec) -> pa.Table:
    """The rows of a table in ClickHouse, in ORDER, with the sink's arrow types (not
    ClickHouse's LowCardinality, DateTime64)."""
    names = ", ".join(spec.column_names)
    got = db.query_arrow(f"SELECT {names} FROM {spec.name} ORDER BY {', '.join(ORDER)}")
    return pa.table([got.column(f.name).cast(f.type) for f in spec.schema], schema=spec.schema)
