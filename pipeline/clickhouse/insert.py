"""Insert a batch of rows idempotently: the write the ClickHouse sink makes per Kafka batch.

Idempotence comes from the insert deduplication token: every table keeps the hashes of its
last `non_replicated_deduplication_window` inserted blocks (see the migrations), and an insert
whose token matches a remembered one is dropped, in the table and in the rollups its
materialized views feed. The token names the Kafka messages the rows came from
(`batch_token`), so replaying the same offsets is dropped while new offsets are inserted.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

from clickhouse_connect.driver.client import Client

from pipeline.clickhouse.client import driver_errors
from pipeline.errors import ClickHouseError

if TYPE_CHECKING:
    import pyarrow as pa

#: Settings of every insert: synchronous (the rows are stored when the call returns, on a
#: server as in the embedded engine, whose default is asynchronous inserts).
INSERT_SETTINGS: Mapping[str, Any] = {"async_insert": 0}
#: Settings of a deduplicated insert, besides its token: deduplicate the blocks that the
#: materialized views derive from the insert too (rollups must not count a replay twice).
DEDUP_SETTINGS: Mapping[str, Any] = {"deduplicate_blocks_in_dependent_materialized_views": 1}


def insert_rows(
    client: Client,
    table: str,
    columns: Sequence[str],
    data: Sequence[Sequence[Any]] | pa.Table,
    dedup_token: str | None = None,
    *,
    column_oriented: bool = True,
) -> int:
    """Insert `data` into `table`; the number of rows sent.

    `data` holds one sequence per column, in the order of `columns` (or, with
    `column_oriented=False`, one sequence per row), or is a pyarrow Table holding at least
    `columns` (the fastest form: its dictionary-encoded strings suit LowCardinality
    columns). Columns left out take their defaults.
    With `dedup_token`, ClickHouse drops the insert when a recent insert into the same table
    carried the same token, so one token must always stand for the same rows: derive it
    from the Kafka offsets the rows came from (`batch_token`), and give each insert its
    own token when one batch is split into several inserts.
    """
    if not columns:
        raise ClickHouseError(f"insert into {table}: no columns given")
    settings = dict(INSERT_SETTINGS)
    if dedup_token is not None:
        if not dedup_token:
            raise ClickHouseError(f"insert into {table}: empty deduplication token")
        settings.update(DEDUP_SETTINGS, insert_deduplication_token=dedup_token)
    if _is_arrow_table(data):
        arrow = data.select(list(columns))
        if arrow.num_rows == 0:
            return 0
        with driver_errors(f"insert into {table} failed"):
            client.insert_arrow(table, arrow, settings=settings)
        return int(arrow.num_rows)
    rows = len(data[0]) if column_oriented and data else len(data)
    if rows == 0:
        return 0
    with driver_errors(f"insert into {table} failed"):
        client.insert(
            table,
            data,
            column_names=list(columns),
            column_oriented=column_oriented,
            settings=settings,
        )
    return rows


def _is_arrow_table(data: object) -> TypeGuard[pa.Table]:
    # Only a process that imported pyarrow can hold a Table; others skip the import.
    arrow = sys.modules.get("pyarrow")
    return arrow is not None and isinstance(data, arrow.Table)


def batch_token(topic: str, offsets: Mapping[int, tuple[int, int]]) -> str:
    """The deduplication token of a batch: its topic and, per partition, the first and last
    offset of the messages in it, e.g. `telemetry.valid:0:1200-1399,3:88-90`."""
    if not offsets:
        raise ClickHouseError(f"batch token for {topic}: no offsets")
    ranges = ",".join(
        f"{partition}:{first}-{last}" for partition, (first, last) in sorted(offsets.items())
    )
    return f"{topic}:{ranges}"
