"""`twin schemas` subcommands, called through their own parser, and the contracts README."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pytest

from pipeline.commands import schemas
from pipeline.errors import ConfigError
from pipeline.serde.catalog import DEFAULT_ROOT
from pipeline.serde.examples import RECORD_TYPES, example
from pipeline.serde.text import to_jsonable
from pipeline.settings import Settings


def run(argv: list[str], settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twin")
    schemas.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["schemas", *argv])
    return int(args.handler(args, settings or Settings(schema_registry_url=None)))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    copy = tmp_path / "avro"
    shutil.copytree(DEFAULT_ROOT, copy)
    return copy


def test_check_passes_on_the_real_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["check"]) == 0
    assert capsys.readouterr().out.startswith("schemas ok: 7 record types, 7 versions")


def test_check_json_lists_problems_and_fails(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = json.loads((root / "telemetry_frame" / "v1.avsc").read_text())
    schema["fields"].append({"name": "site_id", "type": "string", "doc": "Site."})
    (root / "telemetry_frame" / "v2.avsc").write_text(json.dumps(schema))

    assert run(["check", "--json", "--schemas-dir", str(root)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert len(report["problems"]) == 2
    assert any("v2.avsc is not recorded" in p for p in report["problems"])
    assert any("reader_field_missing_default_value at site_id" in p for p in report["problems"])


def test_record_then_list(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    schema = json.loads((root / "state_estimate" / "v1.avsc").read_text())
    schema["fields"].append(
        {"name": "model", "type": "string", "default": "cv", "doc": "Filter model."}
    )
    (root / "state_estimate" / "v2.avsc").write_text(json.dumps(schema))

    assert run(["record", "--schemas-dir", str(root)]) == 0
    assert "recorded state_estimate v2 as schema id 8" in capsys.readouterr().out
    assert run(["record", "--schemas-dir", str(root)]) == 0
    assert "nothing to record" in capsys.readouterr().out

    assert run(["list", "--json", "--schemas-dir", str(root)]) == 0
    listing = json.loads(capsys.readouterr().out)["record_types"]
    state = next(t for t in listing if t["record_type"] == "state_estimate")
    assert state["topic"] == "twin.state"
    assert [(v["version"], v["id"]) for v in state["versions"]] == [(1, 4), (2, 8)]


def test_list_shows_every_record_type(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"telemetry_frame\s+telemetry\.raw\s+v1 \(1\)", out)
    assert re.search(r"alert_event\s+twin\.alerts\s+v1 \(7\)", out)


def test_push_needs_a_registry_url() -> None:
    with pytest.raises(ConfigError, match="TWIN_SCHEMA_REGISTRY_URL is not set"):
        run(["push"])


def test_readme_examples_are_the_example_records() -> None:
    readme = (DEFAULT_ROOT / "README.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", readme, re.DOTALL)]
    assert blocks == [to_jsonable(example(rt)) for rt in RECORD_TYPES]
