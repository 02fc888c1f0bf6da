"""The simulator's ground truth on Kafka: noise-free values as telemetry frames.

Every step, one `telemetry_frame` per asset goes to the site's `sim.truth` topic (key
asset_id, source_id "sim-truth", `seq` increasing per frame), with the true values of every
signal, quality GOOD, and the same timestamps as the samples the devices serve. Later stages
can then be scored against what the plant really did (filter error, detection delay).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka.admin import NewTopic

from connectors.sim.errors import SimulatorError
from connectors.sim.plant import AssetSample
from pipeline.kafka.broker import answers
from pipeline.kafka.clients import admin_client, producer
from pipeline.serde import AvroSerde
from pipeline.settings import Settings
from pipeline.site import Site
from pipeline.topics import topic_spec

log = logging.getLogger(__name__)

SOURCE_ID = "sim-truth"
RECORD_TYPE = "telemetry_frame"
TRUTH_TOPIC = "sim.truth"


class TruthPublisher:
    """Publishes true values to `sim.truth`; build it with `connect` (checks Kafka)."""

    def __init__(self, settings: Settings, site: Site, serde: AvroSerde | None = None) -> None:
        self.settings = settings
        self.topic = site.topic(TRUTH_TOPIC)
        self.serde = serde if serde is not None else AvroSerde.from_settings(settings)
        self._producer = producer(settings)
        self.seq = 0
        self.frames = 0
        self.delivered = 0
        self.errors = 0

    @classmethod
    def connect(cls, settings: Settings, site: Site, timeout: float = 3.0) -> TruthPublisher:
        """A publisher for `site`, its topic created if missing; SimulatorError without Kafka."""
        if not answers(settings.kafka_bootstrap, timeout=timeout):
            raise SimulatorError(f"Kafka at {settings.kafka_bootstrap} does not answer")
        topic = site.topic(TRUTH_TOPIC)
        admin = admin_client(settings)
        try:
            if topic not in admin.list_topics(timeout=timeout).topics:
                spec = topic_spec(TRUTH_TOPIC)
                new = NewTopic(
                    topic,
                    site.kafka.partitions,
                    site.kafka.replication_factor,
                    config=spec.config(),
                )
                for future in admin.create_topics([new], request_timeout=timeout).values():
                    _created(future)
        except KafkaException as exc:
            raise SimulatorError(f"cannot prepare topic {topic}: {exc.args[0].str()}") from exc
        return cls(settings, site)

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.delivered += 1
            return
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning("truth frame not delivered to %s: %s", self.topic, error.str())

    def frame(self, sample: AssetSample, ingest_ts: datetime) -> dict[str, Any]:
        self.seq += 1
        return {
            "asset_id": sample.asset_id,
            "source_id": SOURCE_ID,
            "seq": self.seq,
            "ingest_ts": ingest_ts,
            "readings": sample.readings(truth=True),
        }

    def publish(self, samples: list[AssetSample]) -> int:
        """Queue one frame per asset (delivery happens in the background); returns frames."""
        now = datetime.now(UTC)
        for sample in samples:
            value = self.serde.encode(RECORD_TYPE, self.frame(sample, now), topic=self.topic)
            try:
                self._producer.produce(
                    self.topic,
                    value=value,
                    key=sample.asset_id.encode("utf-8"),
                    on_delivery=self._delivered,
                )
            except BufferError:
                # librdkafka's queue is full (Kafka gone for a while): truth is best effort.
                self.errors += 1
                continue
            self.frames += 1
        self._producer.poll(0)
        return len(samples)

    def close(self, timeout: float = 5.0) -> int:
        """Deliver what is queued (up to `timeout`); returns frames left undelivered."""
        left = int(self._producer.flush(timeout))
        if left:
            log.warning("%d truth frames not delivered to %s", left, self.topic)
        return left

    def stats(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "frames": self.frames,
            "delivered": self.delivered,
            "errors": self.errors,
        }


def _created(future: Any) -> None:
    try:
        future.result()
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
