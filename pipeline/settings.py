"""Settings from `TWIN_*` environment variables: one typed, frozen object.

Unknown `TWIN_*` variables are rejected, so a typo (`TWIN_KAFKA_BOOTSTRAPS`) is an error
rather than a silently ignored setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline import PROJECT_ROOT
from pipeline.errors import ConfigError

ENV_PREFIX = "TWIN_"
DEFAULT_SITE = PROJECT_ROOT / "topologies" / "sites" / "demo-plant.yaml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    kafka_bootstrap: str = "127.0.0.1:9092"
    """Kafka bootstrap servers (host:port[,host:port...])."""
    kafka_config: str = ""
    """Extra librdkafka settings, `key=value` pairs separated by `;` (security, SASL, TLS)."""
    kafka_password: SecretStr | None = None
    """SASL password, kept out of logs; sets librdkafka's `sasl.password`."""
    clickhouse_dsn: SecretStr | None = None
    """`chdb:///path` (embedded engine) or `http(s)://user:pass@host:8123/db`."""
    schema_registry_url: str | None = None
    """Confluent Schema Registry URL; without it, schema ids come from `schemas/avro/`."""
    site: Path = DEFAULT_SITE
    """The site description file."""
    data_dir: Path = Path(".twin")
    """Where the embedded stack keeps its data (the embedded ClickHouse among it)."""
    log_level: str = "INFO"

    def clickhouse_url(self) -> str:
        if self.clickhouse_dsn is not None:
            return self.clickhouse_dsn.get_secret_value()
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    def librdkafka(self) -> dict[str, str | int | float | bool]:
        """Client settings for confluent-kafka: bootstrap plus the pass-through settings."""
        conf: dict[str, str | int | float | bool] = {"bootstrap.servers": self.kafka_bootstrap}
        for item in filter(None, (p.strip() for p in self.kafka_config.split(";"))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"TWIN_KAFKA_CONFIG: expected key=value, got {item!r}")
            conf[key.strip()] = value.strip()
        if self.kafka_password is not None:
            conf["sasl.password"] = self.kafka_password.get_secret_value()
        return conf


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; `overrides` (e.g. from CLI flags) win."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    unknown = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        raise ConfigError(
            f"unknown setting {unknown[0]} (known: {', '.join(sorted(known))})",
            [f"unknown setting {name}" for name in unknown],
        )
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = [
            f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError(problems[0], problems) from exc
