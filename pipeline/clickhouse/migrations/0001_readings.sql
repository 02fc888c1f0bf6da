-- Readings: one row per validated reading (a telemetry.valid frame exploded per reading).
--
-- The sorting key is the row's identity, so a replay re-cut into different insert batches
-- collapses to one row per reading when parts merge (or at once with FINAL).
-- non_replicated_deduplication_window keeps the hashes of the last inserted blocks, so an
-- insert repeating a recent insert's deduplication token is dropped (see docs/clickhouse.md).
-- Retention: 90 days of event time; whole parts are dropped once every row in them expired.
-- Statements use IF NOT EXISTS so that a migration interrupted half-way can be re-run.

CREATE TABLE IF NOT EXISTS readings
(
    asset_id         LowCardinality(String) COMMENT 'Asset the reading belongs to',
    signal           LowCardinality(String) COMMENT 'Signal of the asset',
    ts               DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1))
                     COMMENT 'Event time: when the source measured the value (UTC)',
    value            Float64 CODEC(Gorilla, ZSTD(1))
                     COMMENT 'Measured value in the signal''s unit; NaN when the source gave none',
    quality          LowCardinality(String) COMMENT 'GOOD, UNCERTAIN or BAD after validation',
    flags            Array(LowCardinality(String))
                     COMMENT 'Validation flags (e.g. OUT_OF_EXPECTED_RANGE, STALE); empty if none',
    source_id        LowCardinality(String) COMMENT 'Connector that produced the frame',
    seq              Int64 CODEC(Delta, ZSTD(1)) COMMENT 'Per-source frame sequence number',
    ingest_ts        DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1))
                     COMMENT 'When the connector produced the frame (UTC)',
    validated_ts     DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1))
                     COMMENT 'When the validator passed the frame (UTC)',
    origin_topic     LowCardinality(String) DEFAULT ''
                     COMMENT 'Kafka topic of the message the row came from',
    origin_partition Int32 DEFAULT -1 COMMENT 'Kafka partition of that message (-1: unknown)',
    origin_offset    Int64 DEFAULT -1 CODEC(Delta, ZSTD(1))
                     COMMENT 'Kafka offset of that message (-1: unknown)'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (asset_id, signal, ts, source_id, seq)
TTL toDateTime(ts) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1
COMMENT 'One row per validated reading; retention 90 days';
