"""Split ClickHouse SQL text into statements at the semicolons that end them.

A semicolon ends a statement only outside string literals ('...'), quoted identifiers
("..." and `...`), heredocs ($$...$$ or $tag$...$tag$) and comments (-- to the end of the
line, /* ... */). Quotes escape with a backslash or by doubling, as in ClickHouse.
"""

from __future__ import annotations

import re

from pipeline.errors import ClickHouseError

_HEREDOC_OPEN = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def split_statements(sql: str) -> list[str]:
    """The statements of `sql`, stripped, without their terminating semicolons.

    Text that is only whitespace and comments is not a statement. An unterminated
    quote, heredoc or block comment raises `ClickHouseError`.
    """
    statements: list[str] = []
    start = 0
    has_code = False  # whether the current statement holds more than whitespace and comments
    i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            i = _skip_quoted(sql, i)
            has_code = True
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise ClickHouseError(f"unterminated /* comment at {_where(sql, i)}")
            i = end + 2
        elif ch == "$" and (match := _HEREDOC_OPEN.match(sql, i)):
            end = sql.find(match.group(0), match.end())
            if end < 0:
                raise ClickHouseError(f"unterminated heredoc {match.group(0)} at {_where(sql, i)}")
            i = end + len(match.group(0))
            has_code = True
        elif ch == ";":
            if has_code:
                statements.append(sql[start:i].strip())
            i += 1
            start = i
            has_code = False
        else:
            has_code = has_code or not ch.isspace()
            i += 1
    if has_code:
        statements.append(sql[start:].strip())
    return statements


def _skip_quoted(sql: str, i: int) -> int:
    """Index just past the quoted token that opens at `i`."""
    quote = sql[i]
    j = i + 1
    while j < len(sql):
        ch = sql[j]
        if ch == "\\":
            j += 2
        elif ch == quote:
            if sql.startswith(quote * 2, j):
                j += 2
            else:
                return j + 1
        else:
            j += 1
    raise ClickHouseError(f"unterminated {quote} quote at {_where(sql, i)}")


def _where(sql: str, i: int) -> str:
    line = sql.count("\n", 0, i) + 1
    column = i - (sql.rfind("\n", 0, i) + 1) + 1
    return f"line {line}, column {column}"


def first_keyword(statement: str) -> str:
    """The statement's first word, upper-cased, after leading comments and parentheses."""
    text = statement
    while True:
        text = text.lstrip().lstrip("(").lstrip()
        if text.startswith("--"):
            newline = text.find("\n")
            text = "" if newline < 0 else text[newline + 1 :]
        elif text.startswith("/*"):
            end = text.find("*/")
            text = "" if end < 0 else text[end + 2 :]
        else:
            break
    match = re.match(r"[A-Za-z]+", text)
    return match.group(0).upper() if match else ""


def single_statement(sql: str) -> str:
    """The one statement of `sql` (a trailing semicolon allowed); `ClickHouseError` if it
    holds none or several. Text the splitter cannot read (an unterminated quote) is passed
    on whole, so that ClickHouse reports the syntax error."""
    try:
        statements = split_statements(sql)
    except ClickHouseError:
        return sql.strip()
    if len(statements) != 1:
        raise ClickHouseError(f"expected one SQL statement, got {len(statements)}")
    return statements[0]
