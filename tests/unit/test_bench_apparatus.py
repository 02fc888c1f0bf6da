"""The latency phase's apparatus: the paced producer's frames, decoded once and re-stamped as
columns, encode to the very bytes the record-by-record replay gave; the watcher's reader of
leading fields gives what fastavro decodes, and None for bytes that are no such record."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import yaml

from connectors.sim.plant import PlantModel
from pipeline.bench.latency import latency_slices
from pipeline.bench.plant import GAUGE_PERIOD, BenchPlant, site_document
from pipeline.bench.replay import FrameReplay, replay_frames, restamped
from pipeline.bench.watch import LEADING, Arrival, LeadingTimes, leading_fields, leads_with
from pipeline.bench.workload import STEPS_PER_FRAME, _frame_readings, _scenario
from pipeline.errors import SerdeError, TwinError
from pipeline.serde import AvroSerde, SchemaCatalog
from pipeline.serde.columnar import FrameDecoder, encode_frames
from pipeline.serde.varint import zigzag
from pipeline.site import parse_site
from pipeline.stages.common import from_micros, to_micros
from pipeline.stages.frames import QUALITIES, Frames

TOPIC = "w1.telemetry.raw"
# Microseconds of year 1 and year 9999.
MIN_US, MAX_US = -62_135_596_800_000_000, 253_402_300_799_999_999
SIGNALS = ["spindle_temp", "Druck/ä", "température", "温度", "", "x" * 200, "🚀 rpm"]


@pytest.fixture(scope="module")
def serde() -> AvroSerde:
    return AvroSerde(SchemaCatalog.load())


def random_text(rng: random.Random) -> str:
    """ASCII, accented, CJK and astral characters; up to 150 of them (multi-byte lengths)."""
    alphabet = "az09-_ äöüßéñ 温度压力 🚀🔧"
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 40, 150])))


def random_long(rng: random.Random) -> int:
    return rng.choice([0, -1, 1, 63, -64, 2**63 - 1, -(2**63), rng.randint(-(2**63), 2**63 - 1)])


def random_time(rng: random.Random) -> int:
    """Microseconds a datetime can hold (fastavro decodes timestamps into datetimes)."""
    return rng.choice([MIN_US, MAX_US, -1, 0, rng.randint(MIN_US, MAX_US), 1_795_000_000_000_000])


def sim_like_frame(rng: random.Random, readings: int) -> dict[str, Any]:
    """A frame as the plant simulator's readings make one: status_code None."""
    ingest = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(microseconds=rng.randint(0, 10**12))
    return {
        "asset_id": rng.choice(["m-0001", "pompe-ü", "машина"]),
        "source_id": "bench-gateway",
        "seq": rng.randint(0, 10**6),
        "ingest_ts": ingest,
        "readings": [
            {
                "signal": rng.choice(SIGNALS),
                "ts": ingest - timedelta(microseconds=rng.randint(0, 10**6)),
                "value": rng.choice([rng.gauss(0, 1e3), float("nan"), -0.0, 1e308]),
                "quality": rng.choice(QUALITIES),
                "status_code": None,
            }
            for _ in range(readings)
        ],
    }


def sim_frames(steps: int) -> list[dict[str, Any]]:
    """Frames of the bench plant's simulator, built as the bench workload builds them."""
    plant = BenchPlant(assets=4, gauges=3, partitions=1, topic_prefix="")
    site = parse_site(yaml.safe_dump(site_document(plant), sort_keys=False))
    span = GAUGE_PERIOD * steps
    start = datetime(2026, 3, 1, tzinfo=UTC)
    model = PlantModel(site, seed=7, scenario=_scenario(plant, span), start=start)
    pending: dict[str, list[dict[str, Any]]] = {a.id: [] for a in site.assets}
    frames: list[dict[str, Any]] = []
    step_ts = start
    for step in range(1, steps + 1):
        previous, step_ts = step_ts, start + GAUGE_PERIOD * step
        for sample in model.step(step_ts):
            pending[sample.asset_id].extend(_frame_readings(sample, previous))
        if step % STEPS_PER_FRAME:
            continue
        for asset_id, readings in pending.items():
            if readings:
                frames.append(
                    {
                        "asset_id": asset_id,
                        "source_id": "bench-gateway",
                        "seq": len(frames),
                        "ingest_ts": step_ts,
                        "readings": list(readings),
                    }
                )
            readings.clear()
    return frames


# -- encode_frames ----------------------------------------------------------------------------


def test_telemetry_frames_encode_as_record_by_record(serde: AvroSerde) -> None:
    rng = random.Random(3)
    counts = [0, 1, 86, 3, 0, 200, 17, 86]
    records = [sim_like_frame(rng, n) for n in counts]
    values = [serde.encode("telemetry_frame", r, topic=TOPIC) for r in records]
    decoded = FrameDecoder(serde).decode(list(values))
    assert decoded.errors == {} and decoded.rows == list(range(len(values)))
    frames = decoded.frames
    assert set(frames.quality.tolist()) == {0, 1, 2}
    got = encode_frames(serde, frames, TOPIC)
    assert got == [
        serde.encode("telemetry_frame", frames.record(i), topic=TOPIC) for i in range(len(frames))
    ]
    # status_code None throughout: the columns give back the very messages.
    assert got == values


def test_telemetry_frames_with_extreme_longs_encode_as_record_by_record(serde: AvroSerde) -> None:
    rng = random.Random(4)
    records = []
    for n in (2, 0, 5):
        record = sim_like_frame(rng, n)
        record["seq"] = random_long(rng)
        record["ingest_ts"] = random_time(rng)
        for reading in record["readings"]:
            reading["ts"] = random_time(rng)
            reading["signal"] = random_text(rng)
        records.append(record)
    frames = Frames.from_records(records)
    assert encode_frames(serde, frames) == [
        serde.encode("telemetry_frame", frames.record(i)) for i in range(len(frames))
    ]


def test_encode_frames_of_no_frames_or_a_bad_quality(serde: AvroSerde) -> None:
    assert encode_frames(serde, Frames.from_records([])) == []
    frames = Frames.from_records([sim_like_frame(random.Random(5), 3)])
    frames.quality[2] = 3
    with pytest.raises(SerdeError, match="quality code 3"):
        encode_frames(serde, frames)


# -- the paced producer's replay --------------------------------------------------------------


def old_replay(
    serde: AvroSerde, values: list[bytes], rows: list[int], now: datetime, seq: int
) -> list[bytes]:
    """The replay record by record: decode, shift the readings by now - ingest_ts, encode."""
    out = []
    for i in rows:
        record = serde.decode(values[i]).record
        shift = now - record["ingest_ts"]
        for reading in record["readings"]:
            reading["ts"] += shift
        record["ingest_ts"] = now
        record["seq"] = seq
        seq += 1
        out.append(serde.encode("telemetry_frame", record, TOPIC))
    return out


def test_replayed_sim_frames_are_restamped_as_record_by_record(serde: AvroSerde) -> None:
    records = sim_frames(steps=40)
    values = [serde.encode("telemetry_frame", r, topic=TOPIC) for r in records]
    frames = replay_frames(serde, values)
    assert len(frames) == len(values) > 20
    assert len(set(frames.counts().tolist())) > 1  # frames of different sizes
    now = datetime(2026, 3, 2, 8, 30, 1, 123456, tzinfo=UTC)
    sent = len(values) - 3
    rows = [i % len(values) for i in range(sent, sent + 9)]  # wraps around to the first
    batch = restamped(frames, np.array(rows, dtype=np.int64), to_micros(now), 1000)
    want = old_replay(serde, values, rows, now, 1000)
    assert encode_frames(serde, batch, TOPIC) == want
    replay = FrameReplay(serde, frames, TOPIC)
    assert replay.encode(np.array(rows, dtype=np.int64), to_micros(now), 1000) == want
    assert batch.seq.tolist() == list(range(1000, 1009))
    assert [from_micros(int(t)) for t in batch.ingest_us] == [now] * 9
    assert frames.ingest_us[rows[0]] != to_micros(now)  # the decoded frames are untouched


def test_the_replay_patches_times_as_the_columns_encode_them(serde: AvroSerde) -> None:
    rng = random.Random(9)
    records = [sim_like_frame(rng, rng.choice([0, 1, 5, 86])) for _ in range(30)]
    records[3]["asset_id"] = records[4]["source_id"] = "x" * 300  # two-byte string lengths
    records[5]["seq"] = 2**63 - 1
    frames = replay_frames(serde, [serde.encode("telemetry_frame", r) for r in records])
    replay = FrameReplay(serde, frames, TOPIC)
    now = to_micros(datetime(2026, 3, 2, tzinfo=UTC))
    for rows in ([0], [29, 0, 1], list(range(30)), [7, 7, 3], [2, 4], [6]):
        picked = np.array(rows, dtype=np.int64)
        for seq in (0, 63, 64, 2**40):
            batch = restamped(frames, picked, now + seq, seq)
            assert replay.encode(picked, now + seq, seq) == encode_frames(serde, batch, TOPIC)
    assert replay.encode(np.array([], dtype=np.int64), now, 0) == []


def test_times_that_change_their_length_are_encoded_from_the_columns(serde: AvroSerde) -> None:
    rng = random.Random(10)
    record = sim_like_frame(rng, 4)
    record["ingest_ts"] = datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)  # a 3-byte varint
    record["readings"][0]["ts"] = datetime(1970, 1, 1, tzinfo=UTC)  # a 1-byte varint
    frames = replay_frames(serde, [serde.encode("telemetry_frame", record)])
    replay = FrameReplay(serde, frames, TOPIC)
    now = datetime(2026, 3, 2, tzinfo=UTC)
    rows = np.zeros(2, dtype=np.int64)
    want = old_replay(serde, [serde.encode("telemetry_frame", record)], [0, 0], now, 5)
    assert replay.encode(rows, to_micros(now), 5) == want


def test_a_frame_the_replay_would_send_otherwise_is_named(serde: AvroSerde) -> None:
    records = [sim_like_frame(random.Random(11), n) for n in (3, 2)]
    values = [serde.encode("telemetry_frame", r) for r in records]
    frames = replay_frames(serde, values)
    FrameReplay(serde, frames, "telemetry.raw", values)  # as produced: no complaint
    records[1]["readings"][1]["status_code"] = 0x40900000
    values[1] = serde.encode("telemetry_frame", records[1])
    with pytest.raises(TwinError, match="workload frame 1 of 2 would not be replayed"):
        FrameReplay(serde, replay_frames(serde, values), "telemetry.raw", values)


def test_a_workload_frame_that_does_not_decode_is_named(serde: AvroSerde) -> None:
    good = serde.encode("telemetry_frame", sim_like_frame(random.Random(6), 4))
    with pytest.raises(TwinError, match="workload frame 1 of 3 does not decode"):
        replay_frames(serde, [good, good[:-3], good])


# -- the watcher's leading fields -------------------------------------------------------------


def random_validated(rng: random.Random) -> dict[str, Any]:
    return {
        "asset_id": random_text(rng),
        "source_id": random_text(rng),
        "seq": random_long(rng),
        "ingest_ts": random_time(rng),
        "validated_ts": random_time(rng),
        "readings": [
            {"signal": random_text(rng), "ts": 5, "value": 1.5, "quality": "GOOD", "flags": []}
            for _ in range(rng.choice([0, 3]))
        ],
    }


def random_state(rng: random.Random) -> dict[str, Any]:
    signal = {
        "signal": random_text(rng),
        "value": 1.0,
        "rate": 0.0,
        "variance": 0.1,
        "rate_variance": 0.1,
        "innovation": None,
        "nis": None,
        "outlier": False,
        "measured": True,
    }
    return {
        "asset_id": random_text(rng),
        "source_id": random_text(rng),
        "seq": random_long(rng),
        "ts": random_time(rng),
        "ingest_ts": random_time(rng),
        "signals": [signal] * rng.choice([0, 2]),
    }


def micros_of(value: Any) -> int:
    return value if isinstance(value, int) else to_micros(value)


def test_leading_fields_are_what_fastavro_decodes(serde: AvroSerde) -> None:
    rng = random.Random(7)
    for record_type, make in (
        ("validated_frame", random_validated),
        ("state_estimate", random_state),
    ):
        for _ in range(200):
            value = serde.encode(record_type, make(rng))
            record = serde.decode(value).record
            assert leading_fields(value) == tuple(
                micros_of(record[name]) for name in LEADING[record_type][2:]
            )


def test_a_truncated_or_foreign_value_has_no_leading_fields(serde: AvroSerde) -> None:
    rng = random.Random(8)
    for _ in range(30):
        value = serde.encode("validated_frame", random_validated(rng))
        whole = leading_fields(value)
        lengths = [k for k in range(len(value) + 1) if leading_fields(value[:k]) is not None]
        # Every prefix that holds the five leading fields reads them, every shorter one none.
        assert lengths == list(range(lengths[0], len(value) + 1))
        assert all(leading_fields(value[:k]) == whole for k in lengths)
        assert lengths[0] < len(value)  # the readings are not needed
    assert leading_fields(None) is None
    assert leading_fields(b"") is None
    assert leading_fields(b"\x00\x00\x00\x00\x02") is None
    assert leading_fields(b"\x01" + value[1:]) is None  # no magic byte
    assert leading_fields(b"\x00\x00\x00\x00\x02" + b"\xff" * 12) is None  # no varint
    assert leading_fields(b"\x00\x00\x00\x00\x02\x01" + value[5:]) is None  # length -1
    too_long = zigzag(len(value))  # a string longer than the value
    assert leading_fields(b"\x00\x00\x00\x00\x02" + too_long + value[5:]) is None


def test_the_newest_schemas_lead_with_what_the_watcher_reads(serde: AvroSerde) -> None:
    for record_type, names in LEADING.items():
        assert leads_with(serde.catalog.latest(record_type).schema, names)
    assert not leads_with(serde.catalog.latest("telemetry_frame").schema, LEADING["state_estimate"])


def test_the_watcher_reads_times_quickly_or_in_full_alike(serde: AvroSerde) -> None:
    rng = random.Random(12)
    times = LeadingTimes(serde)
    valid, state = (
        serde.encode("validated_frame", random_validated(rng)),
        serde.encode("state_estimate", random_state(rng)),
    )
    record = serde.decode(state).record
    want = (record["seq"], to_micros(record["ts"]), to_micros(record["ingest_ts"]))
    assert times.read(state, "state_estimate") == want
    assert times.read(valid, "validated_frame") == leading_fields(valid)
    # A record of another type is none of these, read quickly or decoded in full.
    assert times.read(state, "validated_frame") is None
    assert (
        times.read(serde.encode("telemetry_frame", sim_like_frame(rng, 2)), "state_estimate")
        is None
    )
    for bad in (None, b"", b"\x00\x00", b"\x00\x00\x00\x00\x03" + b"\xff" * 20, state[:7]):
        assert times.read(bad, "state_estimate") is None
    # Schema ids the serde does not know yet (a registry's, before their first decode): the
    # messages are decoded in full, with the same result.
    full = LeadingTimes(UnacquaintedSerde(SchemaCatalog.load()))
    assert full.read(state, "state_estimate") == want
    assert full.read(valid, "validated_frame") == leading_fields(valid)
    assert full.read(state, "validated_frame") is None
    assert full.read(state[:7], "state_estimate") is None


class UnacquaintedSerde(AvroSerde):
    """Knows no schema id before decoding, as with a registry: LeadingTimes decodes in full."""

    def known_schema(self, schema_id: int) -> tuple[str, int | None] | None:
        return None


def test_latency_slices_split_by_ingest_time_not_by_arrival() -> None:
    rng = random.Random(7)
    t0 = 1_700_000_000.0
    arrivals = []
    for _ in range(400):
        since = t0 + rng.uniform(0, 30)
        # Latency grows with ingest time: 50 ms in the first 10 s, 150 ms, then 300 ms.
        delay = (0.05, 0.15, 0.3)[int((since - t0) // 10)] + rng.uniform(0, 0.01)
        arrivals.append(Arrival(received=since + delay, since=since))
    arrivals.append(Arrival(received=t0 + 45.0, since=t0 + 44.9))  # after an empty slice
    rng.shuffle(arrivals)
    slices = latency_slices(arrivals, 10.0)
    starts = [s["start_s"] for s in slices]
    assert starts[:3] == [0.0, 10.0, 20.0] and len(starts) == 4
    # The last slice begins at a multiple of 10 s after the earliest ingest time.
    first = min(a.since for a in arrivals)
    assert starts[3] == round((t0 + 44.9 - first) // 10 * 10, 3) == 40.0
    assert sum(s["samples"] for s in slices) == len(arrivals)
    for s, low in zip(slices[:3], (50, 150, 300), strict=True):
        assert low <= s["p50_ms"] <= s["p99_ms"] <= low + 10
    assert slices[3]["samples"] == 1 and slices[3]["p50_ms"] == pytest.approx(100.0, abs=0.1)
    assert latency_slices([], 10.0) == []
