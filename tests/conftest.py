"""Fixtures for every test; the helpers behind them live in devkit/support.py (import them from there)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
