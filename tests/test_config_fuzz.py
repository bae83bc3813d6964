"""Config fuzzing (issue 5, "Must show" 5): whatever a technician (or a bad editor) leaves in the YAML file,
the daemon answers with a message and exit code 2, or runs; never a traceback.

In-process with hypothesis (bounded: ~200 examples per property), plus a handful through the real CLI.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.config import Config, ConfigError, load_config, parse_config

DEFAULT = Path(__file__).resolve().parents[1] / "config" / "edged.yaml"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["0", "rtsp://x", "/nonexistent", "", " ", "cpu", "int8", "5", "3.1.1", "~", "yes", "-1", "1e9"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)


def check(data: Any) -> None:
    """parse_config either accepts or raises ConfigError with a non-empty message; nothing else."""
    try:
        cfg = parse_config(data, origin="fuzz")
    except ConfigError as exc:
        assert str(exc).strip()
        return
    assert isinstance(cfg, Config)


def check_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "edged.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path)
        except ConfigError as exc:
            assert str(exc).strip()


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a parsed YAML document (dict keys and list indexes)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out.extend(paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*prefix, i))
            out.extend(paths(v, (*prefix, i)))
    return out


def parent_of(doc: Any, path: tuple[Any, ...]) -> Any:
    node = doc
    for part in path[:-1]:
        node = node[part]
    return node


@FUZZ
@given(values)
def test_random_yaml_documents_never_crash(doc: Any) -> None:
    check(doc)
    check_text(yaml.safe_dump(doc))


@FUZZ
@given(st.text(max_size=200))
def test_random_text_never_crashes(text: str) -> None:
    check_text(text)


@FUZZ
@given(st.data())
def test_random_edits_of_the_default_config_never_crash(data: st.DataObject) -> None:
    doc = copy.deepcopy(yaml.safe_load(DEFAULT.read_text()))
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        all_paths = paths(doc)
        if not all_paths:
            break
        path = data.draw(st.sampled_from(all_paths), label="path")
        parent, key = parent_of(doc, path), path[-1]
        op = data.draw(st.sampled_from(["delete", "replace", "rename", "add"]), label="op")
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = data.draw(values, label="value")
        elif op == "rename" and isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=12), label="new key")] = parent.pop(key)
        elif op == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=12), label="extra key")] = data.draw(values, label="v")
    check(doc)
    check_text(yaml.safe_dump(doc))


def test_the_default_config_is_valid() -> None:
    assert isinstance(load_config(DEFAULT), Config)


@pytest.mark.slow
@pytest.mark.parametrize("text", [
    "",  # empty
    "station: [unclosed",  # not YAML
    "- a\n- b\n",  # a list at the top
    "station: s1\nmodel: {bundle: /x}\ncameras: []\n",  # no camera
    "station: s1\nmodel: {bundle: /x}\ncameras: [{name: c, source: '0', queue_sise: 3}]\n",  # typo
    "station: s1\nmodel: {bundle: /x, workers: many}\ncameras: [{name: c, source: '0'}]\n",  # wrong type
    "\x00\x01binary\xff",  # not text
    "a: " + "[" * 3000 + "]" * 3000,  # nested deeper than the YAML parser's recursion (was a RecursionError)
])
def test_bad_configs_through_the_cli_exit_2_with_a_message(tmp_path: Path, text: str) -> None:
    path = tmp_path / "edged.yaml"
    path.write_bytes(text.encode("utf-8", errors="surrogateescape") if "\xff" not in text else b"\x00\x01binary\xff")
    proc = subprocess.run([sys.executable, "-m", "edged", "check-config", "-c", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("edged: ") and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_nul_character_in_a_path_is_a_config_error_not_a_crash_at_run(tmp_path: Path, tiny_bundle: Path) -> None:
    """Found by fuzzing: "\\0" in state_dir passed validation, then `edged run` died with a ValueError."""
    path = tmp_path / "edged.yaml"
    path.write_text(f'station: s1\nmodel: {{bundle: {tiny_bundle}}}\ncameras: [{{name: c, source: "0"}}]\n'
                    f'storage: {{state_dir: "{tmp_path}/a\\0b"}}\nmqtt: {{enabled: false}}\n')
    proc = subprocess.run([sys.executable, "-m", "edged", "run", "-c", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "storage.state_dir: contains a NUL character" in proc.stderr and "Traceback" not in proc.stderr
