"""The Avro serde: round trips, the exact Confluent wire format, errors, old data."""

from __future__ import annotations

import io
import json
import math
import random
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest

from pipeline.errors import SerdeError
from pipeline.serde import AvroSerde, Decoded, SchemaCatalog, record_new_versions
from pipeline.serde.catalog import DEFAULT_ROOT
from pipeline.serde.examples import RECORD_TYPES, example
from pipeline.settings import Settings


@pytest.fixture(scope="module")
def catalog() -> SchemaCatalog:
    return SchemaCatalog.load()


@pytest.fixture(scope="module")
def serde(catalog: SchemaCatalog) -> AvroSerde:
    return AvroSerde.local(catalog)


def test_every_record_type_has_an_example(catalog: SchemaCatalog) -> None:
    assert set(RECORD_TYPES) == set(catalog.record_types)
    assert len(catalog.record_types) == 7


@pytest.mark.parametrize("record_type", RECORD_TYPES)
def test_round_trip_of_every_record_type(serde: AvroSerde, record_type: str) -> None:
    record = example(record_type)
    decoded = serde.decode(
        serde.encode(record_type, record, topic=serde.catalog.topic(record_type))
    )
    assert isinstance(decoded, Decoded)
    assert decoded.record_type == record_type
    assert decoded.schema_id == serde.catalog.latest(record_type).schema_id
    assert decoded.version == 1
    assert decoded.record == record


@pytest.mark.parametrize("record_type", RECORD_TYPES)
def test_wire_format_is_magic_byte_catalog_id_and_plain_avro_body(
    serde: AvroSerde, record_type: str
) -> None:
    raw_catalog = json.loads((DEFAULT_ROOT / "catalog.json").read_text())
    recorded_id = raw_catalog["record_types"][record_type]["versions"][-1]["id"]
    schema = json.loads((DEFAULT_ROOT / record_type / "v1.avsc").read_text())
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema), example(record_type))

    data = serde.encode(record_type, example(record_type))

    assert data[0] == 0
    assert data[1:5] == recorded_id.to_bytes(4, "big")
    assert data[5:] == body.getvalue()


def test_schema_ids_follow_the_topic_order_and_are_unique(catalog: SchemaCatalog) -> None:
    ids = [catalog.latest(rt).schema_id for rt in catalog.record_types]
    assert ids == [1, 2, 3, 4, 5, 6, 7]
    assert catalog.topic("telemetry_frame") == "telemetry.raw"
    assert catalog.topic("alert_event") == "twin.alerts"


def test_nan_values_and_utc_timestamps_survive(serde: AvroSerde) -> None:
    frame = example("telemetry_frame")
    frame["readings"][0]["value"] = math.nan
    frame["readings"][0]["quality"] = "BAD"
    record = serde.decode(serde.encode("telemetry_frame", frame)).record
    assert math.isnan(record["readings"][0]["value"])
    assert record["ingest_ts"] == frame["ingest_ts"]
    assert record["ingest_ts"].utcoffset() == timedelta(0)


def test_local_settings_give_a_local_serde() -> None:
    serde = AvroSerde.from_settings(Settings(schema_registry_url=None))
    assert not serde.uses_registry
    data = serde.encode("alert_event", example("alert_event"))
    assert serde.decode(data).record == example("alert_event")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, "tombstone"),
        (b"", "too short"),
        (b"\x00\x00\x00\x01", "too short"),
        (b"\x01\x00\x00\x00\x01\x02ab", "magic byte"),
        (b'{"asset_id": 1}', "magic byte"),
        (b"\x00\x00\x00\x03\xe7\x02ab", "unknown schema id 999"),
    ],
)
def test_bad_headers_raise_serde_error(serde: AvroSerde, data: bytes | None, expected: str) -> None:
    with pytest.raises(SerdeError, match=expected):
        serde.decode(data)


def test_every_truncation_of_a_message_raises_serde_error(serde: AvroSerde) -> None:
    data = serde.encode("telemetry_frame", example("telemetry_frame"))
    for end in range(len(data)):
        with pytest.raises(SerdeError):
            serde.decode(data[:end])
    with pytest.raises(SerdeError, match=r"schema id 1 \(telemetry_frame v1\): corrupt"):
        serde.decode(data[:-3])


def test_trailing_bytes_raise_serde_error(serde: AvroSerde) -> None:
    data = serde.encode("state_estimate", example("state_estimate"))
    with pytest.raises(SerdeError, match=r"2 byte\(s\) left after the record"):
        serde.decode(data + b"\x00\x00")


def test_garbage_bodies_raise_only_serde_error(serde: AvroSerde) -> None:
    rng = random.Random(20250314)
    rejected = 0
    for _ in range(2000):
        schema_id = rng.randint(1, 7)
        body = rng.randbytes(rng.randint(0, 64))
        try:
            serde.decode(b"\x00" + schema_id.to_bytes(4, "big") + body)
        except SerdeError:
            rejected += 1
    # Random bytes almost never form a whole record with nothing left over.
    assert rejected > 1900


def test_a_body_written_with_another_schema_is_rejected(serde: AvroSerde) -> None:
    alert = serde.encode("alert_event", example("alert_event"))
    relabelled = b"\x00" + (1).to_bytes(4, "big") + alert[5:]  # claims telemetry_frame
    with pytest.raises(SerdeError, match="telemetry_frame"):
        serde.decode(relabelled)


def test_encoding_a_bad_enum_symbol_names_the_field(serde: AvroSerde) -> None:
    frame = example("telemetry_frame")
    frame["readings"][1]["quality"] = "EXCELLENT"
    with pytest.raises(SerdeError, match=r"Reading\.quality is 'EXCELLENT'.*GOOD, UNCERTAIN, BAD"):
        serde.encode("telemetry_frame", frame)


def test_encoding_a_missing_field_names_it(serde: AvroSerde) -> None:
    window = example("kpi_window")
    del window["line_id"]
    with pytest.raises(SerdeError, match=r"cannot encode kpi_window.*KpiWindow\.line_id"):
        serde.encode("kpi_window", window)


def test_encoding_a_wrong_type_names_the_field(serde: AvroSerde) -> None:
    alert = example("alert_event")
    alert["ts"] = "yesterday"
    with pytest.raises(SerdeError, match=r"AlertEvent\.ts is 'yesterday'.*timestamp-micros"):
        serde.encode("alert_event", alert)


def test_encoding_an_unknown_record_type_raises(serde: AvroSerde) -> None:
    with pytest.raises(SerdeError, match="unknown record type 'telemetry'"):
        serde.encode("telemetry", example("telemetry_frame"))


def _add_compatible_v2(root: Path) -> None:
    """telemetry_frame v2: a new top-level field and a new reading field, both defaulted."""
    schema: dict[str, Any] = json.loads((root / "telemetry_frame" / "v1.avsc").read_text())
    schema["fields"].append(
        {"name": "site_id", "type": "string", "default": "unknown", "doc": "Site of the asset."}
    )
    reading = schema["fields"][4]["type"]["items"]
    reading["fields"].append(
        {
            "name": "unit",
            "type": ["null", "string"],
            "default": None,
            "doc": "Engineering unit of value, e.g. bar.",
        }
    )
    (root / "telemetry_frame" / "v2.avsc").write_text(json.dumps(schema, indent=2))


def test_old_data_reads_with_the_newest_version(tmp_path: Path, serde: AvroSerde) -> None:
    root = tmp_path / "avro"
    shutil.copytree(DEFAULT_ROOT, root)
    _add_compatible_v2(root)
    [recorded] = record_new_versions(root)
    assert (recorded.record_type, recorded.version, recorded.schema_id) == ("telemetry_frame", 2, 8)

    newer = AvroSerde.local(SchemaCatalog.load(root))
    v1_bytes = serde.encode("telemetry_frame", example("telemetry_frame"))
    old = newer.decode(v1_bytes)
    assert (old.schema_id, old.version) == (1, 1)
    assert old.record["site_id"] == "unknown"
    assert [r["unit"] for r in old.record["readings"]] == [None, None, None]
    assert old.record["readings"][0]["value"] == 182.4

    frame = {**example("telemetry_frame"), "site_id": "plant-1"}
    v2_bytes = newer.encode("telemetry_frame", frame)
    assert v2_bytes[1:5] == (8).to_bytes(4, "big")
    new = newer.decode(v2_bytes)
    assert (new.schema_id, new.version) == (8, 2)
    assert new.record["site_id"] == "plant-1"
