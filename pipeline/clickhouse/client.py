"""Open a ClickHouse client from a DSN, and turn driver failures into `ClickHouseError`.

Two kinds of DSN, one code path (clickhouse-connect):
- `chdb:///abs/path[?database=name]`: the ClickHouse engine in-process (chDB), data under
  the path. chDB hosts one engine per process and one process per path: a process that has
  a client open on one path cannot open another path until every client on the first is
  closed, and a second process cannot open a path that another process holds.
- `http(s)://user:password@host:8123/database`: a ClickHouse server.

A DSN can carry a password, so messages name it through `redact_dsn`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

from pipeline.errors import ClickHouseError

EMBEDDED_SCHEME = "chdb"
UNKNOWN_DATABASE = 81
_MAX_MESSAGE = 600
_VERSION_TRAILER = re.compile(r"\s*\(version [^)]*\)\s*\.?\s*$")
# What chDB says, without a reason, when another process holds the data path's lock.
_ENGINE_LOCKED = re.compile(r"Error initializing EmbeddedServer: \.")


class EngineBusy(ClickHouseError):
    """The embedded engine's data path is held by another process (e.g. a running sink)."""


def open_client(dsn: str, *, create_database: bool = False) -> Client:
    """A client on the database the DSN names (or the default database).

    Datetimes come back timezone-aware. A database named in the DSN that does not exist
    is created when `create_database` is true (as `twin db migrate` does), otherwise it is
    an error that says so.
    """
    database = dsn_database(dsn)
    try:
        return _connect(dsn, database)
    except DriverError as exc:
        if getattr(exc, "code", None) != UNKNOWN_DATABASE or database is None:
            raise _open_error(dsn, exc) from exc
        if not create_database:
            raise ClickHouseError(
                f"database {database!r} does not exist at {redact_dsn(dsn)}; "
                "`twin db migrate` creates it"
            ) from exc
    try:
        client = _connect(dsn, "default")
    except DriverError as exc:
        raise _open_error(dsn, exc) from exc
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
        client.database = database
    except DriverError as exc:
        client.close()
        raise _open_error(dsn, exc) from exc
    return client


def _connect(dsn: str, database: str | None) -> Client:
    # An explicit `database` wins over the DSN's; the query parameter is dropped so that
    # the driver does not warn about it as well.
    parts = urlsplit(dsn)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "database"])
    return clickhouse_connect.get_client(
        dsn=urlunsplit(parts._replace(query=query)), database=database, tz_mode="aware"
    )


def _open_error(dsn: str, exc: Exception) -> ClickHouseError:
    message = one_line(exc, secret=_password(dsn))
    if is_embedded(dsn) and "already initialized with path" in message:
        message += " (one process can hold one embedded data path at a time)"
    elif is_embedded(dsn) and _ENGINE_LOCKED.search(message):
        message += " (is another process using this data path? only one process can)"
        return EngineBusy(f"cannot open ClickHouse at {redact_dsn(dsn)}: {message}")
    return ClickHouseError(f"cannot open ClickHouse at {redact_dsn(dsn)}: {message}")


def is_embedded(dsn: str) -> bool:
    """Whether the DSN names the in-process engine rather than a server."""
    return urlsplit(dsn).scheme == EMBEDDED_SCHEME


def embedded_path(dsn: str) -> Path | None:
    """The data directory of a `chdb:///abs/path` DSN; None for a server or in-memory engine."""
    parts = urlsplit(dsn)
    if parts.scheme != EMBEDDED_SCHEME or parts.netloc or not parts.path:
        return None
    return Path(unquote(parts.path))


def dsn_database(dsn: str) -> str | None:
    """The database the DSN names, read the way clickhouse-connect reads it; None if none.

    `chdb:///abs/path?database=name` (the whole path is the data location) or
    `chdb://memory/name`; `http(s)://host:port/name`.
    """
    parts = urlsplit(dsn)
    if parts.scheme == EMBEDDED_SCHEME:
        if parts.netloc:
            named = unquote(parts.path[1:].split("/")[0])
            if named:
                return named
        return parse_qs(parts.query).get("database", [None])[0] or None
    return unquote(parts.path[1:].split("/")[0]) or None


def redact_dsn(dsn: str) -> str:
    """The DSN with its password (if any) replaced by `***`."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


def _password(dsn: str) -> str | None:
    password = urlsplit(dsn).password
    return unquote(password) if password else None


def one_line(exc: BaseException, secret: str | None = None) -> str:
    """ClickHouse's message for `exc` on one line: from `Code: N.` on, without the stack
    trace and version trailer, bounded in length, with `secret` masked."""
    text = str(exc)
    start = text.find("Code: ")
    if start > 0:
        text = text[start:]
    text = text.split("Stack trace", 1)[0]
    text = _VERSION_TRAILER.sub("", " ".join(text.split())).rstrip(" ,")
    if secret:
        text = text.replace(secret, "***")
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return text or type(exc).__name__


@contextmanager
def driver_errors(action: str) -> Iterator[None]:
    """Re-raise a driver failure inside the block as `ClickHouseError("<action>: <message>")`."""
    try:
        yield
    except DriverError as exc:
        raise ClickHouseError(f"{action}: {one_line(exc)}") from exc
