"""Read-only queries on the embedded engine while the sink holds it.

The embedded ClickHouse engine (chDB) can be opened by one process at a time, and a
running sink holds it. So the sink answers read-only queries for `twin sql` on a small HTTP
endpoint on 127.0.0.1 (a free port), whose address it writes to
`<data path>/.twin-query-endpoint` (JSON: host, port, pid, database) and removes on a clean
exit. `twin sql` reads that file when it finds the engine busy; a file left by a process
that is gone is ignored.

Bounded on purpose: one query at a time (the server handles one request after another),
only SELECT, WITH, SHOW, DESCRIBE, EXISTS and EXPLAIN statements, each run with ClickHouse's
`readonly=1` as a second guard, a time limit (`max_execution_time`) and a row limit
(`max_result_rows`, the query fails beyond it). The query runs on the sink's own client:
clickhouse-connect's chDB backend serializes the calls on one client with a lock, so a
query never runs while an insert is in flight (an insert waits for the query to finish).

Protocol: `POST /query` with `{"sql": ..., "format": "table"|"csv"|"json"}` answers 200
with the rendered result (the same text `twin sql` prints), or a JSON `{"error": ...}` with
403 (not a read-only statement), 422 (ClickHouse failed) or 400 (bad request).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.clickhouse.client import driver_errors, embedded_path
from pipeline.clickhouse.format import FORMATS, render
from pipeline.clickhouse.statements import first_keyword, single_statement
from pipeline.errors import ClickHouseError, ConfigError

log = logging.getLogger(__name__)

ENDPOINT_FILE = ".twin-query-endpoint"
READ_ONLY_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN"})
NOT_READ_ONLY = (
    "the pipeline holds the embedded engine; only read-only queries are answered while it runs"
)
QUERY_TIMEOUT_S = 60
MAX_ROWS = 100_000
_MAX_BODY = 1_000_000


class NotReadOnly(ConfigError):
    """A statement that could change data, sent while the pipeline holds the engine."""


class EndpointUnavailable(ClickHouseError):
    """The endpoint in the discovery file did not answer (its process is going away)."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    pid: int
    database: str


def is_read_only(statement: str) -> bool:
    return first_keyword(statement) in READ_ONLY_KEYWORDS


class QueryServer:
    """Answers read-only queries on `client` at 127.0.0.1 on a free port, advertised in
    `data_path / ENDPOINT_FILE` from `start()` until `stop()`."""

    def __init__(
        self,
        client: Client,
        data_path: Path,
        *,
        timeout_s: int = QUERY_TIMEOUT_S,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self.client = client
        self.path = data_path / ENDPOINT_FILE
        self.settings = {
            "readonly": 1,
            "max_execution_time": timeout_s,
            "max_result_rows": max_rows,
            "result_overflow_mode": "throw",
        }
        self._lock = threading.Lock()
        self._server = HTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="twin-query-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        record = {
            "host": "127.0.0.1",
            "port": self.port,
            "pid": os.getpid(),
            "database": str(self.client.database or "default"),
        }
        partial = self.path.with_name(f"{ENDPOINT_FILE}.{os.getpid()}")
        partial.write_text(json.dumps(record), encoding="utf-8")
        partial.replace(self.path)  # readers never see half a file
        log.info("sink: answering read-only queries on 127.0.0.1:%d", self.port)

    def stop(self) -> None:
        endpoint = read_endpoint(self.path.parent)
        if endpoint is not None and endpoint.pid == os.getpid():
            self.path.unlink(missing_ok=True)
        self._server.shutdown()
        self._server.server_close()

    def answer(self, sql: str, fmt: str) -> str:
        """The rendered result of one read-only statement (NotReadOnly, ClickHouseError)."""
        statement = single_statement(sql)
        if not is_read_only(statement):
            raise NotReadOnly(NOT_READ_ONLY)
        with self._lock, _without_our_settings(), driver_errors("query failed"):
            result = self.client.query(statement, settings=self.settings)
            columns = list(result.column_names)
            rows = [tuple(row) for row in result.result_rows]
            if not columns and first_keyword(statement) in ("SELECT", "WITH"):
                # The embedded engine sends no header for an empty result.
                described = self.client.query(
                    f"DESCRIBE TABLE ({statement})", settings=self.settings
                )
                columns = [str(row[0]) for row in described.result_rows]
        return render(fmt, columns, rows)


# ClickHouse quotes the statement with the SETTINGS clause the driver appended.
_OUR_SETTINGS = re.compile(r" SETTINGS readonly = '1'(?:, \w+ = '[^']*')*")


@contextmanager
def _without_our_settings() -> Iterator[None]:
    """Error messages quote the statement as the user wrote it."""
    try:
        yield
    except ClickHouseError as exc:
        raise ClickHouseError(_OUR_SETTINGS.sub("", str(exc))) from exc.__cause__


def _handler(server: QueryServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/query":
                self._reply(404, {"error": f"no such endpoint {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(min(length, _MAX_BODY)))
                sql, fmt = str(request["sql"]), str(request.get("format", "table"))
                if fmt not in FORMATS:
                    raise ValueError(f"unknown format {fmt!r}")
            except (ValueError, KeyError, TypeError) as exc:
                self._reply(400, {"error": f"bad request: {exc}"})
                return
            try:
                text = server.answer(sql, fmt)
            except NotReadOnly as exc:
                self._reply(403, {"error": str(exc)})
                return
            except ClickHouseError as exc:
                log.warning("sink: query failed: %s", exc)
                self._reply(422, {"error": str(exc)})
                return
            body = text.encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("query endpoint: " + format, *args)

    return Handler


@contextmanager
def serve_queries(client: Client, dsn: str) -> Iterator[QueryServer | None]:
    """Answer read-only queries on `client` while inside the block, when `dsn` names an
    embedded engine's data path (a server needs no help: None)."""
    data_path = embedded_path(dsn)
    if data_path is None:
        yield None
        return
    server = QueryServer(client, data_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def read_endpoint(data_path: Path) -> Endpoint | None:
    """The endpoint advertised under `data_path`; None if none or its process is gone."""
    try:
        record = json.loads((data_path / ENDPOINT_FILE).read_text(encoding="utf-8"))
        endpoint = Endpoint(
            str(record["host"]), int(record["port"]), int(record["pid"]), str(record["database"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return endpoint if _alive(endpoint.pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def query_endpoint(endpoint: Endpoint, sql: str, fmt: str) -> str:
    """Send one statement to a running sink; the rendered result.

    NotReadOnly for a statement that could change data, ClickHouseError when the query
    failed, EndpointUnavailable when nothing answered.
    """
    request = urllib.request.Request(
        f"http://{endpoint.host}:{endpoint.port}/query",
        data=json.dumps({"sql": sql, "format": fmt}).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        # Beyond the query's own limit: it may wait for an insert in flight.
        with urllib.request.urlopen(request, timeout=QUERY_TIMEOUT_S + 30) as response:
            return str(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        try:
            message = str(json.loads(exc.read())["error"])
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        if exc.code == 403:
            raise NotReadOnly(message) from exc
        raise ClickHouseError(message) from exc
    except OSError as exc:
        raise EndpointUnavailable(
            f"the pipeline's query endpoint {endpoint.host}:{endpoint.port} did not answer: {exc}"
        ) from exc
