-- KPI windows: one row per asset and closed window. A window re-emitted because late data
-- arrived carries a higher version; ReplacingMergeTree(version) keeps only the highest
-- version of each window once parts merge, and kpi_windows_latest applies that at query time.
-- Retention: 2 years of window start.

CREATE TABLE IF NOT EXISTS kpi_windows
(
    line_id          LowCardinality(String) COMMENT 'Production line of the asset',
    asset_id         LowCardinality(String) COMMENT 'Asset the window describes',
    window_kind      LowCardinality(String) COMMENT 'TUMBLING or HOPPING',
    window_start     DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1))
                     COMMENT 'Start of the window, inclusive (UTC)',
    window_end       DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1))
                     COMMENT 'End of the window, exclusive (UTC)',
    version          UInt32 COMMENT 'Emission version; higher replaces lower',
    availability     Nullable(Float64) COMMENT 'Availability 0..1',
    performance      Nullable(Float64) COMMENT 'Performance 0..1',
    quality          Nullable(Float64) COMMENT 'Quality (good parts / parts) 0..1',
    oee              Nullable(Float64) COMMENT 'OEE = availability × performance × quality, 0..1',
    run_s            Float64 COMMENT 'Seconds running in the window',
    idle_s           Float64 COMMENT 'Seconds idle in the window',
    down_s           Float64 COMMENT 'Seconds down in the window',
    parts_total      Int64 COMMENT 'Parts produced in the window',
    parts_good       Int64 COMMENT 'Good parts produced in the window',
    failures         Int32 COMMENT 'Transitions to down in the window',
    mtbf_s           Nullable(Float64) COMMENT 'Mean time between failures, seconds',
    mttr_s           Nullable(Float64) COMMENT 'Mean time to repair, seconds',
    signals          Nested(
                         signal LowCardinality(String),
                         count  Int64,
                         min    Float64,
                         max    Float64,
                         mean   Float64,
                         p95    Float64
                     ) COMMENT 'Statistics per signal over GOOD readings in the window',
    emitted_ts       DateTime64(6, 'UTC') COMMENT 'When this version was emitted (UTC)',
    origin_topic     LowCardinality(String) DEFAULT '',
    origin_partition Int32 DEFAULT -1,
    origin_offset    Int64 DEFAULT -1
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (line_id, asset_id, window_kind, window_start, window_end)
TTL toDateTime(window_start) + INTERVAL 2 YEAR
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1
COMMENT 'Closed KPI windows, every emitted version; query kpi_windows_latest; retention 2 years';

-- The highest version of every window: what analysts should query.
CREATE VIEW IF NOT EXISTS kpi_windows_latest AS
SELECT * FROM kpi_windows FINAL;
