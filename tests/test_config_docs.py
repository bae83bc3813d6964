"""The config documentation is generated from the schema and must be current (scripts/config_docs.py).

A field added without a description, or a default changed without regenerating config/edged.yaml,
docs/configuration.md and the README's key table, fails here with the command that fixes it.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import yaml

from devkit.support import load_script
from edged.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def load_docs() -> ModuleType:
    return load_script("config_docs")


def test_generated_files_are_current() -> None:
    docs = load_docs()
    stale = [str(p.relative_to(ROOT)) for p, text in docs.outputs().items() if p.read_text("utf-8") != text]
    assert not stale, f"not current: {stale}; run scripts/config_docs.py"


def test_every_key_is_documented() -> None:
    keys = list(load_docs().keys())
    assert len(keys) > 50
    assert all(len(k.description) > 10 for k in keys), [k.path for k in keys if len(k.description) <= 10]
    paths = {k.path for k in keys}
    for expected in ("station", "model.bundle", "cameras[].source", "cameras[].trigger.mode", "mqtt.reject_ttl_ms",
                     "storage.images.save"):
        assert expected in paths


def test_the_example_file_loads_and_holds_every_default(tmp_path: Path) -> None:
    """The generated example is valid, and each key it writes is the schema's default (or the example)."""
    config = load_config(ROOT / "config" / "edged.yaml")
    data = yaml.safe_load((ROOT / "config" / "edged.yaml").read_text("utf-8"))
    assert parse_config(data).mqtt == config.mqtt  # nothing in the example depends on the file's folder
    default_mqtt = parse_config({"model": {"bundle": "m"}, "cameras": [{"name": "c", "source": "0"}]}).mqtt
    assert config.mqtt == default_mqtt


def test_a_missing_description_is_caught() -> None:
    from pydantic import BaseModel, Field

    class Section(BaseModel):
        documented: int = Field(1, description="a key with a description")
        bare: int = 2

    docs = load_docs()
    try:
        list(docs.keys(Section))
    except SystemExit as exc:
        assert "Section.bare: no description" in str(exc)
    else:
        raise AssertionError("a field without a description was documented")
