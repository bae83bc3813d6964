"""edged/credentials.py: the one reader of password files and systemd credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.config import ConfigError
from edged.credentials import credential, read_secret


def test_a_secret_is_read_without_the_editors_newline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("  s3cret\n")
    assert read_secret(tmp_path / "pw", "x.password_file", ConfigError) == "s3cret"


def test_an_unreadable_secret_raises_the_callers_error_naming_key_and_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^opcua.password_file: cannot read .*missing: No such file"):
        read_secret(tmp_path / "missing", "opcua.password_file", ValueError)
    with pytest.raises(ConfigError, match=r"^web.password_file: cannot read") as info:
        read_secret(tmp_path, "web.password_file", ConfigError)  # a folder
    assert "s3cret" not in str(info.value)
    (tmp_path / "latin1").write_bytes(b"s3cr\xe9t\n")
    with pytest.raises(ConfigError, match=r"^mqtt.password_file: cannot read .*latin1: not UTF-8 text$") as info:
        read_secret(tmp_path / "latin1", "mqtt.password_file", ConfigError)
    assert "s3cr" not in str(info.value)


def test_credential_is_under_credentials_directory_only_inside_a_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert credential("web-password") is None
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/edged.service")
    assert credential("web-password") == Path("/run/credentials/edged.service/web-password")


def test_every_password_file_section_reads_through_it(tmp_path: Path) -> None:
    from edged.collect.config import BrokerSection, PostgresSection
    from edged.config import MqttConfig, WebConfig
    from edged.opcua.config import OpcUaConfig

    (tmp_path / "pw").write_text("s3cret\n")
    missing = tmp_path / "missing"
    assert BrokerSection(password_file=tmp_path / "pw").read_password() == "s3cret"
    assert PostgresSection(dsn="dbname=x", password_file=tmp_path / "pw").read_password() == "s3cret"
    assert WebConfig(password_file=tmp_path / "pw").read_password() == "s3cret"
    assert MqttConfig(username="edged", password_file=tmp_path / "pw").read_password() == "s3cret"
    assert OpcUaConfig(username="plc", password_file=tmp_path / "pw").read_password() == "s3cret"
    for section, key, error in ((BrokerSection(password_file=missing), "broker", ConfigError),
                                (PostgresSection(dsn="dbname=x", password_file=missing), "postgres", ConfigError),
                                (WebConfig(password_file=missing), "web", ConfigError),
                                (MqttConfig(username="edged", password_file=missing), "mqtt", ConfigError),
                                (OpcUaConfig(username="plc", password_file=missing), "opcua", ValueError)):
        with pytest.raises(error, match=rf"^{key}.password_file: cannot read {missing}: No such file"):
            section.read_password()
