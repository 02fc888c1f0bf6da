"""Schema evolution: the real catalog is consistent and BACKWARD_TRANSITIVE compatible, and
the checks catch incompatible versions and recorded files that changed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import SchemaCompatibilityError
from pipeline.serde import (
    SchemaCatalog,
    SchemaCatalogError,
    audit,
    check_compatibility,
    record_new_versions,
)
from pipeline.serde.catalog import DEFAULT_ROOT
from pipeline.serde.files import read_schema_files
from pipeline.topics import TOPICS

Schema = dict[str, Any]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A copy of the real catalog to change."""
    copy = tmp_path / "avro"
    shutil.copytree(DEFAULT_ROOT, copy)
    return copy


def load(root: Path, record_type: str, version: int = 1) -> Schema:
    return json.loads((root / record_type / f"v{version}.avsc").read_text())


def save(root: Path, record_type: str, version: int, schema: Schema) -> None:
    (root / record_type / f"v{version}.avsc").write_text(json.dumps(schema, indent=2))


def field(schema: Schema, name: str) -> Schema:
    return next(f for f in schema["fields"] if f["name"] == name)


def reading_fields(schema: Schema) -> list[Schema]:
    fields: list[Schema] = field(schema, "readings")["type"]["items"]["fields"]
    return fields


def write_v2(root: Path, record_type: str, change: Callable[[Schema], None]) -> None:
    schema = load(root, record_type)
    change(schema)
    save(root, record_type, 2, schema)


def test_the_real_catalog_passes_every_check() -> None:
    result = audit()
    assert result.problems == []
    assert (result.record_types, result.versions) == (7, 7)


def test_the_real_catalog_is_backward_transitive_compatible() -> None:
    assert check_compatibility(SchemaCatalog.load()) == []


def test_catalog_topics_match_the_topic_catalog() -> None:
    catalog = SchemaCatalog.load()
    expected: dict[str, str] = {}
    for spec in TOPICS:  # a record type's home topic is the first that carries it
        if spec.record_type:
            expected.setdefault(spec.record_type, spec.name)
    assert expected["telemetry_frame"] == "telemetry.raw"
    assert {rt: catalog.topic(rt) for rt in catalog.record_types} == expected


def test_a_new_field_without_default_is_incompatible(root: Path) -> None:
    write_v2(
        root,
        "telemetry_frame",
        lambda s: reading_fields(s).append({"name": "unit", "type": "string", "doc": "Unit."}),
    )
    files, _ = read_schema_files(root)
    [problem] = check_compatibility(files)
    assert problem.reader.endswith("telemetry_frame/v2.avsc")
    assert problem.writer.endswith("telemetry_frame/v1.avsc")
    assert "reader_field_missing_default_value" in str(problem)
    assert "readings[].unit" in str(problem)
    assert any("cannot read data written with" in p for p in audit(root).problems)


def test_a_changed_field_type_is_incompatible(root: Path) -> None:
    write_v2(root, "telemetry_frame", lambda s: field(s, "seq").update(type="string"))
    files, _ = read_schema_files(root)
    [problem] = check_compatibility(files)
    assert str(problem).endswith(
        "type_mismatch at seq: reader type: string not compatible with writer type: long"
    )


def test_narrowing_a_reading_value_is_incompatible(root: Path) -> None:
    def narrow(schema: Schema) -> None:
        next(f for f in reading_fields(schema) if f["name"] == "value")["type"] = "float"

    write_v2(root, "telemetry_frame", narrow)
    files, _ = read_schema_files(root)
    [problem] = check_compatibility(files)
    assert "readings[].value" in str(problem)


def test_removing_an_enum_symbol_without_default_is_incompatible(root: Path) -> None:
    write_v2(
        root, "kpi_window", lambda s: field(s, "window_kind")["type"].update(symbols=["TUMBLING"])
    )
    files, _ = read_schema_files(root)
    [problem] = check_compatibility(files)
    assert "missing_enum_symbols at window_kind: {'HOPPING'}" in str(problem)


def test_widening_and_defaulted_fields_are_compatible(root: Path) -> None:
    def evolve(schema: Schema) -> None:
        field(schema, "failures")["type"] = "long"  # int -> long is a promotion
        schema["fields"].append(
            {"name": "shift", "type": ["null", "string"], "default": None, "doc": "Shift."}
        )

    write_v2(root, "kpi_window", evolve)
    files, _ = read_schema_files(root)
    assert check_compatibility(files) == []


def test_compatibility_is_checked_against_all_earlier_versions(root: Path) -> None:
    # v2 adds a defaulted field; v3 drops the default. v3 reads v2 data but not v1 data.
    def add_defaulted(schema: Schema) -> None:
        schema["fields"].append(
            {"name": "shift", "type": "string", "default": "day", "doc": "Shift."}
        )

    write_v2(root, "kpi_window", add_defaulted)
    v3 = load(root, "kpi_window", 2)
    del field(v3, "shift")["default"]
    save(root, "kpi_window", 3, v3)
    files, _ = read_schema_files(root)
    [problem] = check_compatibility(files)
    assert problem.reader.endswith("kpi_window/v3.avsc")
    assert problem.writer.endswith("kpi_window/v1.avsc")


def test_recording_an_incompatible_version_is_refused(root: Path) -> None:
    before = (root / "catalog.json").read_text()
    write_v2(root, "telemetry_frame", lambda s: field(s, "seq").update(type="string"))
    with pytest.raises(SchemaCompatibilityError, match=r"telemetry_frame/v2\.avsc"):
        record_new_versions(root)
    assert (root / "catalog.json").read_text() == before


def test_new_versions_get_new_ids_that_are_never_reused(root: Path) -> None:
    write_v2(
        root,
        "alert_event",
        lambda s: s["fields"].append(
            {"name": "ack_by", "type": ["null", "string"], "default": None, "doc": "Who."}
        ),
    )
    with pytest.raises(SchemaCatalogError, match=r"alert_event/v2\.avsc is not recorded"):
        SchemaCatalog.load(root)
    [first] = record_new_versions(root)
    assert (first.record_type, first.version, first.schema_id) == ("alert_event", 2, 8)
    assert record_new_versions(root) == []

    write_v2(
        root,
        "anomaly_score",
        lambda s: s["fields"].append(
            {"name": "note", "type": "string", "default": "", "doc": "Note."}
        ),
    )
    [second] = record_new_versions(root)
    assert second.schema_id == 9
    catalog = SchemaCatalog.load(root)
    assert catalog.latest("alert_event").schema_id == 8
    assert [v.schema_id for v in catalog.versions("alert_event")] == [7, 8]
    assert json.loads((root / "catalog.json").read_text())["next_id"] == 10


def test_a_recorded_file_that_changed_is_detected(root: Path) -> None:
    schema = load(root, "dead_letter")
    field(schema, "stage")["type"] = ["null", "string"]
    save(root, "dead_letter", 1, schema)
    problem = (
        "schemas/avro/dead_letter/v1.avsc changed after it was recorded with id 3; "
        "restore it and add the change as v2.avsc instead"
    )
    assert any(p.endswith(problem.split("/", 2)[2]) for p in audit(root).problems)
    with pytest.raises(SchemaCatalogError, match="changed after it was recorded with id 3"):
        SchemaCatalog.load(root)
    with pytest.raises(SchemaCatalogError):
        record_new_versions(root)


def test_a_changed_default_counts_as_a_change(root: Path) -> None:
    # Defaults are outside the Avro canonical form, yet they change what readers see.
    schema = load(root, "alert_event")
    field(schema, "context")["default"] = {"line_id": "?"}
    save(root, "alert_event", 1, schema)
    with pytest.raises(SchemaCatalogError, match="changed after it was recorded with id 7"):
        SchemaCatalog.load(root)


def test_a_doc_edit_is_not_a_change(root: Path) -> None:
    schema = load(root, "kpi_window")
    field(schema, "run_s")["doc"] = "Running time within the window, in seconds."
    save(root, "kpi_window", 1, schema)
    assert SchemaCatalog.load(root).latest("kpi_window").schema_id == 6
    assert audit(root).problems == []


def test_a_deleted_recorded_version_is_detected(root: Path) -> None:
    shutil.rmtree(root / "state_estimate")
    problems = audit(root).problems
    assert any("state_estimate v1 (id 4)" in p and "never be deleted" in p for p in problems)


def test_version_gaps_and_renames_are_detected(root: Path) -> None:
    schema = load(root, "anomaly_score")
    schema["name"] = "Score"
    schema["fields"].append({"name": "x", "type": "int", "default": 0, "doc": "X."})
    save(root, "anomaly_score", 3, schema)
    problems = audit(root).problems
    assert any("without gaps; found v1, v3" in p for p in problems)
    assert any("names twinline.anomaly.v1.Score" in p for p in problems)


def test_missing_docs_and_unversioned_namespaces_are_reported(root: Path) -> None:
    schema = load(root, "alert_event")
    schema["namespace"] = "twinline.alerts"
    del field(schema, "message")["doc"]
    save(root, "alert_event", 2, schema)
    problems = audit(root).problems
    assert any("field AlertEvent.message has no doc" in p for p in problems)
    assert any(
        "namespace 'twinline.alerts' should be twinline.<area>.v<major>" in p for p in problems
    )


def test_a_union_default_must_match_the_first_branch(root: Path) -> None:
    schema = load(root, "alert_event")
    field(schema, "value")["type"] = ["double", "null"]
    save(root, "alert_event", 2, schema)
    assert any(
        "field AlertEvent.value: a union's default must match its first branch" in p
        for p in audit(root).problems
    )


def test_a_malformed_catalog_json_is_an_error(root: Path) -> None:
    (root / "catalog.json").write_text('{"record_types": []}')
    with pytest.raises(SchemaCatalogError, match=r"catalog\.json is malformed"):
        SchemaCatalog.load(root)
    assert any("malformed" in p for p in audit(root).problems)
