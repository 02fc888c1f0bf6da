"""DSN handling, error messages, batch tokens and migration files (no engine needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.clickhouse import batch_token, dsn_database, is_embedded, redact_dsn
from pipeline.clickhouse.client import one_line
from pipeline.clickhouse.migrate import load_migrations
from pipeline.errors import ClickHouseError


def test_redact_dsn_hides_only_the_password() -> None:
    assert (
        redact_dsn("https://analyst:s3cr%40t@ch.example:8443/plant?secure=1")
        == "https://analyst:***@ch.example:8443/plant?secure=1"
    )
    assert redact_dsn("chdb:///var/lib/twin/clickhouse") == "chdb:///var/lib/twin/clickhouse"


def test_dsn_database() -> None:
    assert dsn_database("http://u:p@host:8123/plant1") == "plant1"
    assert dsn_database("http://host:8123") is None
    assert dsn_database("chdb:///var/lib/twin/clickhouse") is None
    assert dsn_database("chdb:///var/lib/twin/clickhouse?database=plant1") == "plant1"
    assert dsn_database("chdb://memory/plant1") == "plant1"
    assert is_embedded("chdb:///x") and not is_embedded("https://h:8443/db")


def test_one_line_keeps_clickhouse_message_and_masks_secret() -> None:
    raw = (
        "HTTPDriver for http://host:8123 received ClickHouse error code 516\n"
        " Code: 516. DB::Exception: analyst: Authentication failed: password s3cret is "
        "incorrect. (AUTHENTICATION_FAILED) (version 24.8.1.1)\nStack trace:\n0. x"
    )
    assert one_line(Exception(raw), secret="s3cret") == (
        "Code: 516. DB::Exception: analyst: Authentication failed: password *** is "
        "incorrect. (AUTHENTICATION_FAILED)"
    )


def test_batch_token_names_topic_and_offset_ranges_in_partition_order() -> None:
    token = batch_token("telemetry.valid", {3: (88, 90), 0: (1200, 1399)})
    assert token == "telemetry.valid:0:1200-1399,3:88-90"
    with pytest.raises(ClickHouseError):
        batch_token("telemetry.valid", {})


def test_migration_files_need_versioned_names_and_unique_versions(tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE IF NOT EXISTS a (x Int8) ENGINE=Log")
    (tmp_path / "0002_second.sql").write_text("SELECT 1")
    loaded = load_migrations(tmp_path)
    assert [(m.version, m.name, m.label) for m in loaded] == [
        (1, "first", "0001_first"),
        (2, "second", "0002_second"),
    ]
    assert len({m.checksum for m in loaded}) == 2
    (tmp_path / "0002_again.sql").write_text("SELECT 2")
    with pytest.raises(ClickHouseError, match="share version 2"):
        load_migrations(tmp_path)
    (tmp_path / "0002_again.sql").unlink()
    (tmp_path / "third.sql").write_text("SELECT 3")
    with pytest.raises(ClickHouseError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)
