"""Fixtures for every test; the helpers behind them live in devkit/support.py (import them from there)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.postgres import LocalPostgres
from devkit.support import Broker, build_max_bundle


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    return build_max_bundle(tmp_path / "bundle")


@pytest.fixture
def postgres() -> Iterator[LocalPostgres]:
    """A real PostgreSQL server on loopback (devkit/postgres.py); skipped where it or psycopg is missing."""
    pytest.importorskip("psycopg")
    if not LocalPostgres.available():
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh dev installs it)")
    server = LocalPostgres()
    server.start()
    yield server
    server.stop()
