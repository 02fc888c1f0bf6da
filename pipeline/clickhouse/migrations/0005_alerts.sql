-- Alert lifecycle events: one row per transition (RAISED, UPDATED, CLEARED) of an alert.
-- alerts_open: the alerts whose latest transition is not CLEARED.
-- Retention: 2 years.

CREATE TABLE IF NOT EXISTS alerts
(
    alert_id         LowCardinality(String) COMMENT 'Stable id of the alert (one per asset and rule)',
    asset_id         LowCardinality(String) COMMENT 'Asset the alert is about',
    rule_id          LowCardinality(String) COMMENT 'Rule of the site file that fired',
    kind             LowCardinality(String) COMMENT 'THRESHOLD, STALE, ANOMALY or KPI_FLOOR',
    event            LowCardinality(String) COMMENT 'RAISED, UPDATED or CLEARED',
    severity         LowCardinality(String) COMMENT 'INFO, WARNING or CRITICAL',
    ts               DateTime64(6, 'UTC') COMMENT 'Event time of the transition (UTC)',
    raised_ts        DateTime64(6, 'UTC') COMMENT 'When the alert was raised (UTC)',
    emitted_ts       DateTime64(6, 'UTC') COMMENT 'When this event was emitted (UTC)',
    message          String COMMENT 'Human-readable description',
    signal           LowCardinality(Nullable(String)) COMMENT 'Signal concerned, if any',
    value            Nullable(Float64) COMMENT 'Value that triggered the transition, if any',
    threshold        Nullable(Float64) COMMENT 'Threshold of the rule, if any',
    context          Map(LowCardinality(String), String) COMMENT 'Extra key/value context',
    origin_topic     LowCardinality(String) DEFAULT '',
    origin_partition Int32 DEFAULT -1,
    origin_offset    Int64 DEFAULT -1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (asset_id, ts, alert_id, event)
TTL toDateTime(ts) + INTERVAL 2 YEAR
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1
COMMENT 'Alert transitions, one row per raised/updated/cleared event; retention 2 years';

CREATE VIEW IF NOT EXISTS alerts_open AS
SELECT *
FROM
(
    SELECT *
    FROM alerts FINAL
    ORDER BY alert_id, ts DESC, emitted_ts DESC
    LIMIT 1 BY alert_id
)
WHERE event != 'CLEARED';
