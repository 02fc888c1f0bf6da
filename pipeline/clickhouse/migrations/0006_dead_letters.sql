-- Dead letters: one row per message a stage rejected, with the original bytes and where
-- they came from. Retention: 30 days (as the dead-letter topic).

CREATE TABLE IF NOT EXISTS dead_letters
(
    detected_ts      DateTime64(6, 'UTC') COMMENT 'When the stage rejected the message (UTC)',
    stage            LowCardinality(String) COMMENT 'Process that rejected it (e.g. validate)',
    reason_code      LowCardinality(String)
                     COMMENT 'Machine reason (undecodable, schema_mismatch, unknown_asset, ...)',
    reason           String COMMENT 'Human reason',
    origin_topic     LowCardinality(String) COMMENT 'Topic of the rejected message',
    origin_partition Nullable(Int32) COMMENT 'Partition of the rejected message, if known',
    origin_offset    Nullable(Int64) COMMENT 'Offset of the rejected message, if known',
    origin_key       Nullable(String) COMMENT 'Key bytes of the rejected message, if any',
    payload          String CODEC(ZSTD(3)) COMMENT 'The rejected message''s bytes, unchanged',
    asset_id         LowCardinality(Nullable(String)) COMMENT 'Asset, if it could be read',
    source_id        LowCardinality(Nullable(String)) COMMENT 'Source, if it could be read',
    seq              Nullable(Int64) COMMENT 'Frame sequence number, if it could be read'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(detected_ts)
ORDER BY (stage, detected_ts, origin_topic, ifNull(origin_partition, -1), ifNull(origin_offset, -1))
TTL toDateTime(detected_ts) + INTERVAL 30 DAY
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1
COMMENT 'Rejected messages with reason and origin; retention 30 days';
