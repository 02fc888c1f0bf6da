"""Splitting migration files and `twin sql` input into statements."""

from __future__ import annotations

import pytest

from pipeline.clickhouse.migrate import load_migrations
from pipeline.clickhouse.statements import first_keyword, single_statement, split_statements
from pipeline.errors import ClickHouseError


def test_splits_at_semicolons_and_drops_empty_statements() -> None:
    assert split_statements("SELECT 1; SELECT 2;\n;\n  ") == ["SELECT 1", "SELECT 2"]


def test_semicolons_inside_strings_identifiers_and_comments_do_not_split() -> None:
    sql = """
    CREATE TABLE t (a String COMMENT 'one; two', `b;c` Int8) ENGINE = Memory; -- end; here
    /* block; comment */ SELECT 'it''s; fine', 'back\\'slash;', "x;y" FROM t;
    SELECT $$heredoc; text$$, $tag$more; text$tag$
    """
    statements = split_statements(sql)
    assert len(statements) == 3
    assert statements[0].startswith("CREATE TABLE t") and statements[0].endswith("Memory")
    assert "'it''s; fine'" in statements[1]
    assert "'back\\'slash;'" in statements[1]
    assert statements[2] == "SELECT $$heredoc; text$$, $tag$more; text$tag$"


def test_comment_only_text_is_no_statement() -> None:
    assert split_statements("-- nothing here;\n/* nor; here */\n") == []


def test_line_comment_ends_at_newline() -> None:
    assert split_statements("-- see /* this\nSELECT 1 */ ;") == ["-- see /* this\nSELECT 1 */"]


@pytest.mark.parametrize("sql", ["SELECT 'open", "SELECT 1 /* open", "SELECT $$ open"])
def test_unterminated_tokens_are_errors(sql: str) -> None:
    with pytest.raises(ClickHouseError, match="unterminated"):
        split_statements(sql)


def test_first_keyword_skips_comments_and_parentheses() -> None:
    assert first_keyword("-- why\n/* how */ ( select 1)") == "SELECT"
    assert first_keyword("  with x AS (SELECT 1) SELECT * FROM x") == "WITH"
    assert first_keyword("-- only a comment") == ""


def test_single_statement() -> None:
    assert single_statement("SELECT 1;") == "SELECT 1"
    with pytest.raises(ClickHouseError, match="expected one SQL statement, got 2"):
        single_statement("SELECT 1; SELECT 2")
    with pytest.raises(ClickHouseError, match="got 0"):
        single_statement(" -- nothing")
    # Left for ClickHouse to report as a syntax error.
    assert single_statement("SELECT 'open") == "SELECT 'open"


def test_every_packaged_migration_splits_into_create_statements() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    for migration in migrations:
        statements = migration.statements()
        assert statements, migration.label
        assert all(first_keyword(s) == "CREATE" for s in statements), migration.label
        assert all("IF NOT EXISTS" in s for s in statements), migration.label
