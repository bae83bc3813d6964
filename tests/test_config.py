"""Config validation: every error names the key; bad configs exit 2 without a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edged.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"model": {"bundle": "/nonexistent"}, "cameras": [{"name": "cam1", "source": "0"}]}


def test_default_config_file_is_valid() -> None:
    cfg = load_config(REPO / "config" / "edged.yaml")
    assert cfg.cameras[0].name == "cam1"
    assert cfg.mqtt.reject_ttl_ms == 2000


def errors_for(data: object) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    return str(exc.value)


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"cameras": [{"name": "cam1", "source": "0", "queue_size": "big"}]}, "cameras[0].queue_size"),
        ({"cameras": [{"name": "cam1", "source": "0", "queu_size": 3}]}, "did you mean 'queue_size'"),
        ({"mqtt": {"hots": "x"}}, "mqtt.hots: unknown key (did you mean 'host'?)"),
        ({"mqtt": {"port": 70000}}, "mqtt.port"),
        ({"cameras": []}, "cameras"),
        ({"cameras": [{"name": "a b", "source": "0"}]}, "cameras[0].name"),
        ({"cameras": [{"name": "c", "source": "0"}, {"name": "c", "source": "1"}]}, "unique"),
        ({"model": {"bundle": "/x", "providers": ["gpu"]}}, "model.providers[0]"),
        ({"storage": {"images": {"save": "sometimes"}}}, "storage.images.save"),
        ({"cameras": [{"name": "c", "source": "0", "trigger": {"mode": "plc"}}]}, "cameras[0].trigger.mode"),
    ],
)
def test_errors_name_the_key(patch: dict[str, object], expected: str) -> None:
    assert expected in errors_for({**MINIMAL, **patch})


def test_missing_required_keys() -> None:
    msg = errors_for({"cameras": [{"name": "cam1"}]})
    assert "model: required key is missing" in msg
    assert "cameras[0].source: required key is missing" in msg


@pytest.mark.parametrize("data", [None, [], "text", 3])
def test_not_a_mapping(data: object) -> None:
    assert "config" in errors_for(data)


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "frames").mkdir()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"bundle": "b"}, "cameras": [{"name": "c", "source": "frames"}],
                                    "storage": {"state_dir": "state"}}))
    cfg = load_config(path)
    assert cfg.model.bundle == tmp_path / "b"
    assert cfg.cameras[0].source == str(tmp_path / "frames")
    assert cfg.storage.state_dir == tmp_path / "state"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model: {bundle: b}\ncameras: [{name: c, source: '0', queue_size: many}]\n", "cameras[0].queue_size"),
        ("model: {bundle: b}\ncameras: [{name: c, source: '0'}]\nmqtt: {prot: 1}\n", "mqtt.prot: unknown key"),
        ("model: {bundle: [unclosed\n", "not valid YAML at line"),
        ("", "empty"),
    ],
)
def test_cli_bad_config_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "edged.yaml"
    path.write_text(text)
    proc = run_cli("check-config", "-c", str(path))
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_model_and_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "edged.yaml"
    path.write_text("model: {bundle: nowhere}\ncameras: [{name: c, source: '0'}]\n")
    proc = run_cli("check-config", "-c", str(path))
    assert proc.returncode == 2 and "nowhere" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("run", "-c", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "not found" in proc.stderr
    path.write_bytes(b"\xff\xfe\x00garbage")
    proc = run_cli("run", "-c", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_cli_damaged_model_file(tmp_path: Path, tiny_bundle: Path) -> None:
    (tiny_bundle / "model.onnx").write_bytes(b"not onnx")
    path = tmp_path / "edged.yaml"
    path.write_text(f"model: {{bundle: {tiny_bundle}}}\ncameras: [{{name: c, source: '0'}}]\n")
    proc = run_cli("check-config", "-c", str(path))
    assert proc.returncode == 2 and "sha256" in proc.stderr and "Traceback" not in proc.stderr
    path.write_text(f"model: {{bundle: {tiny_bundle}, verify_sha256: false}}\ncameras: [{{name: c, source: '0'}}]\n")
    proc = run_cli("check-config", "-c", str(path))
    assert proc.returncode == 2 and "cannot load" in proc.stderr and "Traceback" not in proc.stderr


def test_check_config_prints_what_will_run(tmp_path: Path, tiny_bundle: Path) -> None:
    path = tmp_path / "edged.yaml"
    path.write_text(f"model: {{bundle: {tiny_bundle}}}\ncameras: [{{name: cam7, source: 'rtsp://u:p@h/s', "
                    f"threshold: 0.7}}]\nmqtt: {{host: broker.local}}\n")
    proc = run_cli("check-config", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "test-max" in out and "cam7" in out and "broker.local:1883" in out
    assert "0.7 (camera override)" in out and "CPUExecutionProvider" in out
    assert "u:p@" not in out  # credentials in a URL are never printed


def test_trigger_mode_mqtt_needs_mqtt() -> None:
    msg = errors_for({**MINIMAL, "cameras": [{"name": "c", "source": "0", "trigger": {"mode": "mqtt"}}],
                      "mqtt": {"enabled": False}})
    assert "trigger mode mqtt" in msg


def float_keys(model: type, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """The key path of every float key in the config tree (cameras as cameras[0])."""
    from pydantic import BaseModel

    from edged.config import _section_type

    out: list[tuple[object, ...]] = []
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        ann = info.annotation
        args = getattr(ann, "__args__", ()) or ()
        section = _section_type(ann)
        if section is not None and issubclass(section, BaseModel):
            out += float_keys(section, (*prefix, name, 0) if name == "cameras" else (*prefix, name))
        elif ann is float or float in args:
            out.append((*prefix, name))
    return out


def with_value(path: tuple[object, ...], value: object) -> dict[str, object]:
    data: dict[str, object] = {"model": {"bundle": "/nonexistent"}, "cameras": [{"name": "cam1", "source": "0"}]}
    node: object = data
    for i, key in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, list):
            node = node[key]  # type: ignore[index]
            continue
        assert isinstance(node, dict)
        node = node.setdefault(key, [] if isinstance(nxt, int) else {})
    assert isinstance(node, dict)
    node[path[-1]] = value
    return data


def test_every_float_key_refuses_inf_and_nan() -> None:
    """One rule for all float keys (TTLs, rates, quotas, gaps, intervals, thresholds): finite or an error
    that names the key. Walks the config tree, so a float key added later is covered too."""
    from edged.config import Config, _format_loc

    keys = float_keys(Config)
    assert len(keys) > 20 and ("mqtt", "reject_ttl_ms") in keys and ("cameras", 0, "threshold") in keys
    for path in keys:
        for text in (".inf", "-.inf", ".nan"):
            value = yaml.safe_load(text)
            msg = errors_for(with_value(path, value))
            assert f"{_format_loc(path)}: Input should be a finite number" in msg, (path, text, msg)


def test_inf_in_a_config_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "edged.yaml"
    path.write_text("model: {bundle: b}\ncameras: [{name: c, source: '0', trigger: {gap_ms: .inf}}]\n"
                    "mqtt: {reject_ttl_ms: .nan}\n")
    proc = run_cli("check-config", "-c", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cameras[0].trigger.gap_ms: Input should be a finite number (got inf)" in proc.stderr
    assert "mqtt.reject_ttl_ms: Input should be a finite number (got nan)" in proc.stderr


def test_a_config_error_never_echoes_a_password() -> None:
    """The message goes to the journal: a password of the wrong type is named, never shown."""
    base = {"model": {"bundle": "b"}, "cameras": [{"name": "c", "source": "0"}]}
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "mqtt": {"password": 73519268, "port": "rtsp://u:hunter2@cam"}})
    text = str(info.value)
    assert "mqtt.password: Input should be a valid string" in text and "73519268" not in text
    assert "hunter2" not in text and "u:***@cam" in text
