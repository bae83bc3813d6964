"""collect.yaml, validated once at start: the central broker, which stations, and the database.

Kept apart from the daemon's edged.yaml: a collector runs on a plant server, not on a station, and
shares none of a station's keys. Errors are one line per key, as the daemon's are (exit 2).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from edged.config import ConfigError, TlsConfig
from edged.credentials import read_secret
from edged.safetext import escape
from edged.section import NAME_RE, Section
from edged.topic_names import check_prefix


class BrokerSection(Section):
    """The plant's central broker, where the stations' bridges deliver."""

    host: str = Field("localhost", min_length=1, description="Central broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Central broker port (8883 is usual for TLS).")
    client_id: str | None = Field(
        None, pattern=NAME_RE, description="MQTT client id, stable across restarts (the broker keeps this "
                                           "collector's queue under it); null: edged-collect-<host name>. Every "
                                           "collector needs its own.")
    username: str | None = Field(None, description="User name at the broker; null: anonymous.")
    password_file: Path | None = Field(None, description="File holding the broker password (never logged).")
    tls: TlsConfig = Field(TlsConfig(), description="TLS to the broker.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    session_expiry_s: int = Field(
        7 * 24 * 3600, ge=60, le=2**32 - 1, description="How long the broker keeps this collector's session "
                                                          "(subscriptions and queued messages) while it is down.")

    def resolved_client_id(self) -> str:
        """The configured id, or one made from this host's name (stable across restarts)."""
        return self.client_id or f"edged-collect-{socket.gethostname()}"

    def read_password(self) -> str | None:
        """The broker password from password_file, if set."""
        if self.password_file is None:
            return None
        return read_secret(self.password_file, "broker.password_file", ConfigError)


class PostgresSection(Section):
    """The central database."""

    dsn: str = Field(examples=["host=db.plant port=5432 dbname=edged user=edged"], description=(
        "libpq connection string (keywords or postgresql:// URL); keep the password out of it: password_file or "
        "~/.pgpass."))
    password_file: Path | None = Field(None, description="File holding the database password (never logged).")
    schema_name: str = Field("edged", pattern=r"^[a-z_][a-z0-9_]{0,62}$", description=(
        "Schema of the collector's tables and views, created when missing."))
    connect_timeout_s: int = Field(10, ge=1, le=300, description="Seconds to wait for the database to answer a "
                                                                 "connection.")

    def read_password(self) -> str | None:
        """The database password from password_file, if set."""
        if self.password_file is None:
            return None
        return read_secret(self.password_file, "postgres.password_file", ConfigError)


class CollectConfig(Section):
    """The whole collect.yaml."""

    broker: BrokerSection = Field(BrokerSection(), description="The central MQTT broker.")
    stations: tuple[str, ...] = Field(min_length=1, examples=[["acme/plant1/+/+"]], description=(
        "Topic prefixes of the stations to record (each station's mqtt.prefix); + stands for one whole level, "
        "e.g. acme/plant1/+/+ for every line of every shop. The prefix is recorded as the station's line."))
    share_group: str | None = Field("edged-collect", pattern=NAME_RE, description=(
        "MQTT 5 shared-subscription group: collectors of one group share the messages, each one once; null: "
        "a plain subscription (every collector gets everything)."))
    postgres: PostgresSection = Field(description="The database the rows go to.")
    batch_size: int = Field(500, ge=1, le=65535, description=(
        "Messages committed in one transaction at most; also the MQTT receive maximum (messages the broker "
        "sends before they are acknowledged)."))
    batch_ms: float = Field(50.0, ge=0, le=10_000, description=(
        "A batch is committed at most this many milliseconds after its first message arrived."))
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")

    @field_validator("stations")
    @classmethod
    def _station_filters(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, prefix in enumerate(v):
            try:
                check_prefix(prefix, wildcards=True)
            except ValueError as exc:
                raise ValueError(f"[{i}] {prefix!r} {exc}") from None
        return v


def _key(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line(err: Any) -> str:
    key = _key(tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None or "password" in key else f" (got {escape(repr(got))})"
    return f"{key}: {msg}{shown}"


def parse_collect_config(data: Any, origin: str = "collect.yaml") -> CollectConfig:
    """Validate a parsed document; ConfigError lists every problem by key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of keys at the top level")
    try:
        return CollectConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: invalid config:\n  " + "\n  ".join(_line(e) for e in exc.errors())) from None


def load_collect_config(path: str | Path) -> CollectConfig:
    """Read and validate collect.yaml; ConfigError (a message for a person) on any problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {escape(str(exc).splitlines()[0])}") from None
    return parse_collect_config(data, origin=str(path))
