"""The `opcua:` config section (no asyncua import here: the config loads without the extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edged.credentials import credential, read_secret
from edged.section import Section

LOOPBACK = ("127.0.0.1", "::1", "localhost")
SecurityMode = Literal["none", "sign", "sign_and_encrypt"]


class OpcUaConfig(Section):
    """The OPC UA server: where it listens, who may log in and how messages are secured."""

    enabled: bool = Field(False, description="Serve the station over OPC UA (needs the opcua extra: "
                                             "pip install 'edged[opcua]'); its own thread, never in the pipeline.")
    bind: str = Field("127.0.0.1", min_length=1, description="Address to listen on; anything but loopback refuses "
                                                             "anonymous logins.")
    port: int = Field(4840, ge=1, le=65535, description="TCP port of the opc.tcp endpoint.")
    anonymous: bool = Field(True, description="Accept anonymous sessions (loopback only: refused at config time "
                                              "for another bind).")
    username: str | None = Field(None, description="The one user name accepted with a password (null: no "
                                                   "username logins).")
    password_file: Path | None = Field(None, description="File holding that user's password; without it, "
                                                         "$CREDENTIALS_DIRECTORY/opcua-password (systemd "
                                                         "LoadCredential=) is read. Never logged.")
    security: tuple[SecurityMode, ...] = Field(("none",), min_length=1, description=(
        "Message security offered: none, sign, sign_and_encrypt (Basic256Sha256; the last two need certificate "
        "and private_key)."))
    certificate: Path | None = Field(None, description="The server's certificate (DER or PEM) for Basic256Sha256.")
    private_key: Path | None = Field(None, description="The server's private key (PEM) for Basic256Sha256.")

    @model_validator(mode="after")
    def _safe(self) -> OpcUaConfig:
        if self.anonymous and self.bind not in LOOPBACK:
            raise ValueError(f"bind {self.bind} is not loopback: set anonymous: false and a username with its "
                             "password_file")
        if not self.anonymous and self.username is None:
            raise ValueError("anonymous is false and no username is set: nobody could log in")
        if set(self.security) - {"none"} and (self.certificate is None or self.private_key is None):
            raise ValueError("security sign or sign_and_encrypt needs certificate and private_key")
        return self

    @property
    def endpoint(self) -> str:
        """The opc.tcp URL the server opens (and check-config shows)."""
        return f"opc.tcp://{self.bind}:{self.port}/edged/"

    def read_password(self) -> str | None:
        """The user's password from password_file or the systemd credential; None when no username is set."""
        if self.username is None:
            return None
        path = self.password_file or credential("opcua-password")
        text = read_secret(path, "opcua.password_file", ValueError) if path is not None else ""
        if not text:
            raise ValueError("opcua: a username is set but no password was found (opcua.password_file, "
                             "$CREDENTIALS_DIRECTORY/opcua-password)")
        return text
