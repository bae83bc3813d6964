"""Secrets from files: a password_file named in a config, or the file systemd's LoadCredential= puts in
$CREDENTIALS_DIRECTORY. One reader, so every section strips and reports an unreadable file the same way (the
key, the path and why; never the content)."""

from __future__ import annotations

import os
from pathlib import Path


def credential(name: str) -> Path | None:
    """$CREDENTIALS_DIRECTORY/<name> (systemd LoadCredential=), or None outside such a unit; it may not exist."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(cred_dir) / name if cred_dir else None


def read_secret(path: Path, key: str, error: type[Exception]) -> str:
    """The file's text without surrounding whitespace (an editor's trailing newline is not part of a password).
    An unreadable file (missing, a folder, no permission, not UTF-8 text) raises `error` (the caller's: ConfigError,
    or ValueError where it is caught) naming `key` and the path, never the content."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise error(f"{key}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{key}: cannot read {path}: not UTF-8 text") from None
