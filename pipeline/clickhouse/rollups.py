"""Rebuild the readings rollups of a time range from the readings themselves.

The rollups are kept by materialized views as readings are inserted, so a replay that
insert deduplication cannot recognise (rows re-cut into batches with other tokens, or a
replay older than the deduplication window) counts those readings twice there, while
`readings` collapses them. Rebuilding the range from `readings FINAL` makes the rollups
exact again. The statistics below must stay those of the views in migration 0002; the
integration tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from clickhouse_connect.driver.client import Client

from pipeline.clickhouse.client import driver_errors
from pipeline.clickhouse.format import iso
from pipeline.errors import ClickHouseError

#: rollup table -> the function that gives a reading's bucket
ROLLUPS = {"readings_1m": "toStartOfMinute", "readings_1h": "toStartOfHour"}

_GOOD = "quality = 'GOOD' AND isFinite(value)"
_REBUILD = f"""
INSERT INTO {{table}} SETTINGS insert_deduplicate = 0
SELECT
    asset_id,
    signal,
    {{bucket}}(ts) AS ts,
    count() AS count_all,
    countIf({_GOOD}) AS count_good,
    countIf(quality = 'BAD') AS count_bad,
    minStateIf(value, {_GOOD}) AS value_min,
    maxStateIf(value, {_GOOD}) AS value_max,
    avgStateIf(value, {_GOOD}) AS value_avg,
    quantileStateIf(0.95)(value, {_GOOD}) AS value_p95
FROM readings FINAL
WHERE ts >= {{start}} AND ts < {{end}}
GROUP BY asset_id, signal, ts
"""


@dataclass(frozen=True)
class RebuiltRange:
    start: datetime
    """Start of the rebuilt range (inclusive), aligned down to the hour."""
    end: datetime
    """End of the rebuilt range (exclusive), aligned up to the hour."""
    readings: int
    """Readings (after FINAL) in the range."""


def rebuild_rollups(client: Client, start: datetime, end: datetime) -> RebuiltRange:
    """Replace the 1-minute and 1-hour rollups of [start, end), widened to whole hours, by
    aggregates of `readings FINAL`.

    The range must be one the sink no longer writes to (readings arriving meanwhile may be
    lost from or doubled in the rollups), and its readings must still be stored: a range
    starting before the oldest stored reading is refused.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ClickHouseError("rebuild range: timezone-aware start and end required")
    start = _hour_floor(start)
    end = _hour_floor(end) + (timedelta(hours=1) if end != _hour_floor(end) else timedelta(0))
    if end <= start:
        raise ClickHouseError("rebuild range: end must be after start")
    if end > datetime.now(UTC) + timedelta(hours=1):
        raise ClickHouseError("rebuild range: end lies in the future")
    lower, upper = _literal(start), _literal(end)
    with driver_errors("rebuilding rollups"):
        stored, oldest = client.query("SELECT count(), min(ts) FROM readings").result_rows[0]
        if not stored:
            raise ClickHouseError("rebuild range: no readings are stored")
        if oldest.astimezone(UTC) > start:
            raise ClickHouseError(
                f"rebuild range: readings are stored only since {iso(oldest)}, the range "
                f"starts at {iso(start)}; rebuilding would drop rollups it cannot restore"
            )
        for table, bucket in ROLLUPS.items():
            client.command(
                f"ALTER TABLE {table} DELETE WHERE ts >= {lower} AND ts < {upper} "
                "SETTINGS mutations_sync = 2"
            )
            client.command(_REBUILD.format(table=table, bucket=bucket, start=lower, end=upper))
        counted = client.query(
            f"SELECT count() FROM readings FINAL WHERE ts >= {lower} AND ts < {upper}"
        )
    return RebuiltRange(start, end, int(counted.result_rows[0][0]))


def _hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _literal(moment: datetime) -> str:
    # Formatted from a datetime, never from user text: nothing to escape.
    return f"toDateTime64('{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}', 6, 'UTC')"
