-- Twin outputs per asset: Kalman state estimates (one row per asset, signal and estimate)
-- and anomaly scores (one row per asset, model and scored frame).
-- Sorting keys are row identities (replays collapse with FINAL / on merge); inserts are
-- deduplicated by token like readings. Retention: states 90 days, anomalies 1 year.

CREATE TABLE IF NOT EXISTS states
(
    asset_id         LowCardinality(String) COMMENT 'Asset the estimate belongs to',
    signal           LowCardinality(String) COMMENT 'Signal of the asset',
    ts               DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1))
                     COMMENT 'Event time of the estimate (UTC)',
    value            Float64 CODEC(Gorilla, ZSTD(1)) COMMENT 'Filtered level, in the signal''s unit',
    rate             Float64 CODEC(Gorilla, ZSTD(1)) COMMENT 'Filtered rate of change, unit per second',
    variance         Float64 CODEC(Gorilla, ZSTD(1)) COMMENT 'Variance of the level estimate, unit²',
    rate_variance    Float64 CODEC(Gorilla, ZSTD(1)) COMMENT 'Variance of the rate estimate, (unit/s)²',
    innovation       Nullable(Float64) COMMENT 'Measurement minus prediction; NULL if not measured',
    nis              Nullable(Float64) COMMENT 'Normalised innovation squared; NULL if not measured',
    outlier          Bool COMMENT 'The reading failed the innovation gate and was not used',
    measured         Bool COMMENT 'false: predicted only (no usable reading)',
    source_id        LowCardinality(String) COMMENT 'Connector of the source frame',
    seq              Int64 CODEC(Delta, ZSTD(1)) COMMENT 'Sequence number of the source frame',
    ingest_ts        DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1))
                     COMMENT 'When the connector produced the source frame (UTC)',
    origin_topic     LowCardinality(String) DEFAULT '',
    origin_partition Int32 DEFAULT -1,
    origin_offset    Int64 DEFAULT -1 CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (asset_id, signal, ts, source_id, seq)
TTL toDateTime(ts) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1
COMMENT 'Kalman state estimates, one row per asset, signal and estimate; retention 90 days';

CREATE TABLE IF NOT EXISTS anomalies
(
    asset_id         LowCardinality(String) COMMENT 'Asset that was scored',
    ts               DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1))
                     COMMENT 'Event time of the scored frame (UTC)',
    ingest_ts        DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1))
                     COMMENT 'When the connector produced the source frame (UTC)',
    model_id         LowCardinality(String) COMMENT 'Detector that scored the frame',
    model_version    LowCardinality(String) COMMENT 'Version of the detector''s model',
    score            Float64 CODEC(Gorilla, ZSTD(1)) COMMENT 'Anomaly score (higher: more anomalous)',
    threshold        Float64 CODEC(Gorilla, ZSTD(1)) COMMENT 'Calibrated threshold at that time',
    is_anomaly       Bool COMMENT 'score above threshold, after warm-up',
    warming_up       Bool COMMENT 'The model was still warming up; the score is not used',
    contributors     Nested(signal LowCardinality(String), weight Float64)
                     COMMENT 'Signals that contributed most, with their weights',
    origin_topic     LowCardinality(String) DEFAULT '',
    origin_partition Int32 DEFAULT -1,
    origin_offset    Int64 DEFAULT -1 CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (asset_id, ts, model_id)
TTL toDateTime(ts) + INTERVAL 1 YEAR
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1
COMMENT 'Anomaly scores, one row per asset, scored frame and model; retention 1 year';
