"""The project's exception hierarchy: one base, and a subclass per kind of failure.

The CLI maps `ConfigError` to exit code 2 and any other `TwinError` to exit code 1, printing
the message as one line (or one line per problem).
"""

from __future__ import annotations


class TwinError(Exception):
    """Base of every error Twinline raises on purpose."""


class ConfigError(TwinError):
    """Usage or configuration is wrong (bad option, bad setting, bad site file): exit 2."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def lines(self) -> list[str]:
        return self.problems or [str(self)]


class SerdeError(TwinError):
    """Bytes that cannot be encoded or decoded with a known schema."""


class SchemaCompatibilityError(TwinError):
    """A schema version is not compatible with an earlier version of the same record type."""


class KafkaUnavailable(TwinError):
    """The Kafka cluster did not answer in time."""


class BrokerError(TwinError):
    """The embedded broker could not be started or stopped."""


class ClickHouseError(TwinError):
    """A ClickHouse query, insert or migration failed."""
