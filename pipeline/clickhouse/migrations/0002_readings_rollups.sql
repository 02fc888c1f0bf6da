-- Rollups of readings per asset, signal and minute / hour, kept by materialized views as
-- readings are inserted. The tables hold aggregate states; the *_v views finalize them.
--
-- Statistics (min, max, avg, p95) cover GOOD readings with a finite value only;
-- count_all and count_bad count every reading of the bucket.
-- The tables keep their own insert deduplication window: with
-- deduplicate_blocks_in_dependent_materialized_views = 1 a replayed insert into readings
-- (same deduplication token) is dropped here too instead of being counted twice.
-- Retention: 1-minute rollups 1 year, 1-hour rollups 5 years.

CREATE TABLE IF NOT EXISTS readings_1m
(
    asset_id   LowCardinality(String),
    signal     LowCardinality(String),
    ts         DateTime('UTC') COMMENT 'Start of the minute (UTC)',
    count_all  SimpleAggregateFunction(sum, UInt64) COMMENT 'Readings of any quality',
    count_good SimpleAggregateFunction(sum, UInt64) COMMENT 'GOOD readings with a finite value',
    count_bad  SimpleAggregateFunction(sum, UInt64) COMMENT 'BAD readings',
    value_min  AggregateFunction(min, Float64),
    value_max  AggregateFunction(max, Float64),
    value_avg  AggregateFunction(avg, Float64),
    value_p95  AggregateFunction(quantile(0.95), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (asset_id, signal, ts)
TTL ts + INTERVAL 1 YEAR
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1
COMMENT 'Aggregate states of readings per asset, signal and minute; query readings_1m_v';

CREATE MATERIALIZED VIEW IF NOT EXISTS readings_1m_mv TO readings_1m AS
SELECT
    asset_id,
    signal,
    toStartOfMinute(ts) AS ts,
    count() AS count_all,
    countIf(quality = 'GOOD' AND isFinite(value)) AS count_good,
    countIf(quality = 'BAD') AS count_bad,
    minStateIf(value, quality = 'GOOD' AND isFinite(value)) AS value_min,
    maxStateIf(value, quality = 'GOOD' AND isFinite(value)) AS value_max,
    avgStateIf(value, quality = 'GOOD' AND isFinite(value)) AS value_avg,
    quantileStateIf(0.95)(value, quality = 'GOOD' AND isFinite(value)) AS value_p95
FROM readings
GROUP BY asset_id, signal, ts;

CREATE TABLE IF NOT EXISTS readings_1h
(
    asset_id   LowCardinality(String),
    signal     LowCardinality(String),
    ts         DateTime('UTC') COMMENT 'Start of the hour (UTC)',
    count_all  SimpleAggregateFunction(sum, UInt64) COMMENT 'Readings of any quality',
    count_good SimpleAggregateFunction(sum, UInt64) COMMENT 'GOOD readings with a finite value',
    count_bad  SimpleAggregateFunction(sum, UInt64) COMMENT 'BAD readings',
    value_min  AggregateFunction(min, Float64),
    value_max  AggregateFunction(max, Float64),
    value_avg  AggregateFunction(avg, Float64),
    value_p95  AggregateFunction(quantile(0.95), Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (asset_id, signal, ts)
TTL ts + INTERVAL 5 YEAR
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1
COMMENT 'Aggregate states of readings per asset, signal and hour; query readings_1h_v';

CREATE MATERIALIZED VIEW IF NOT EXISTS readings_1h_mv TO readings_1h AS
SELECT
    asset_id,
    signal,
    toStartOfHour(ts) AS ts,
    count() AS count_all,
    countIf(quality = 'GOOD' AND isFinite(value)) AS count_good,
    countIf(quality = 'BAD') AS count_bad,
    minStateIf(value, quality = 'GOOD' AND isFinite(value)) AS value_min,
    maxStateIf(value, quality = 'GOOD' AND isFinite(value)) AS value_max,
    avgStateIf(value, quality = 'GOOD' AND isFinite(value)) AS value_avg,
    quantileStateIf(0.95)(value, quality = 'GOOD' AND isFinite(value)) AS value_p95
FROM readings
GROUP BY asset_id, signal, ts;

-- Finalized rollups: one row per asset, signal and bucket. Statistics are NULL for a
-- bucket without GOOD readings.
CREATE VIEW IF NOT EXISTS readings_1m_v AS
SELECT
    asset_id,
    signal,
    ts,
    sum(count_all) AS count_all,
    sum(count_good) AS count_good,
    sum(count_bad) AS count_bad,
    if(count_good = 0, NULL, minMerge(value_min)) AS value_min,
    if(count_good = 0, NULL, maxMerge(value_max)) AS value_max,
    if(count_good = 0, NULL, avgMerge(value_avg)) AS value_avg,
    if(count_good = 0, NULL, quantileMerge(0.95)(value_p95)) AS value_p95
FROM readings_1m
GROUP BY asset_id, signal, ts;

CREATE VIEW IF NOT EXISTS readings_1h_v AS
SELECT
    asset_id,
    signal,
    ts,
    sum(count_all) AS count_all,
    sum(count_good) AS count_good,
    sum(count_bad) AS count_bad,
    if(count_good = 0, NULL, minMerge(value_min)) AS value_min,
    if(count_good = 0, NULL, maxMerge(value_max)) AS value_max,
    if(count_good = 0, NULL, avgMerge(value_avg)) AS value_avg,
    if(count_good = 0, NULL, quantileMerge(0.95)(value_p95)) AS value_p95
FROM readings_1h
GROUP BY asset_id, signal, ts;
