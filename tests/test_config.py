"""Config validation: every error names the key; bad configs exit 2 without a traceback."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

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


@pytest.mark.parametrize(
    ("camera", "expected"),
    [
        ({"source": "rtsp://u:pw@cam/1", "watch": True},
         "cameras[0].watch: unknown key for a stream camera (source rtsp://u:***@cam/1); it applies to folder cameras"),
        ({"source": "0", "loop": True}, "cameras[0].loop: unknown key for a device camera (source 0); it applies to "
                                        "folder and file cameras"),
        ({"source": "/x.mp4", "open_timeout_s": 3}, "cameras[0].open_timeout_s: unknown key for a file camera"),
        ({"source": "/frames", "wach": True}, "cameras[0].wach: unknown key (did you mean 'watch'?)"),
        ({"source": "/frames", "reconnect": {"initial_sx": 1}}, "cameras[0].reconnect.initial_sx: unknown key (did "
                                                                "you mean 'initial_s'?)"),
        ({"source": "0", "kind": "camera"}, "cameras[0].kind: must be one of device, gst, stream, genicam, folder, "
                                            "file (got "
                                            "camera)"),
        ({"source": "rtsp://cam/1", "kind": "device"}, "cameras[0].source: a device camera's source is a V4L2 index"),
        ({"source": "0", "width": 640}, "cameras[0]: set both width and height"),
    ],
)
def test_a_key_of_another_kind_of_camera_is_named_with_its_kind(camera: dict[str, object], expected: str) -> None:
    msg = errors_for({**MINIMAL, "cameras": [{"name": "cam1", **camera}]})
    assert expected in msg
    assert "Tuple should have at least 1 item" not in msg  # the camera's own error says it all


def test_a_source_path_the_os_refuses_to_look_up_is_classified_by_its_name() -> None:
    """Found while splitting the kinds: Path.exists() raises on a name too long (ENAMETOOLONG)."""
    long_name = "/" + "a" * 5000
    assert parse_config({**MINIMAL, "cameras": [{"name": "c", "source": long_name}]}).cameras[0].kind == "folder"
    assert parse_config({**MINIMAL, "cameras": [{"name": "c", "source": long_name + ".mp4"}]}).cameras[0].kind == "file"


def test_each_kind_takes_its_own_keys() -> None:
    cams = parse_config({**MINIMAL, "cameras": [
        {"name": "a", "source": "/mnt/frames", "watch": True, "loop": True, "max_image_megapixels": 8},
        {"name": "b", "source": "rtsp://cam/1", "open_timeout_s": 2, "read_timeout_s": 1},
        {"name": "c", "source": "/dev/video1", "fps": 15, "width": 640, "height": 480},
        {"name": "d", "source": "/line.avi", "realtime": True, "fps": 20},
        {"name": "e", "source": "/mnt/2026.11", "kind": "folder", "watch": True},  # ambiguous: kind settles it
        {"name": "f", "source": "nvarguscamerasrc ! appsink", "kind": "gst"},
    ]}).cameras
    assert [c.kind for c in cams] == ["folder", "stream", "device", "file", "folder", "gst"]
    from edged.sources.device import DeviceCamera
    from edged.sources.file import FileCamera
    from edged.sources.folder import FolderCamera
    from edged.sources.gst import GstCamera
    from edged.sources.stream import StreamCamera

    a, b, c, d, _, f = cams
    assert isinstance(a, FolderCamera) and isinstance(b, StreamCamera) and isinstance(c, DeviceCamera)
    assert isinstance(d, FileCamera) and isinstance(f, GstCamera)
    assert a.watch and b.read_timeout_s == 1 and c.index == 1 and d.fps == 20
    assert f.pipeline == "nvarguscamerasrc ! appsink"


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
    assert cfg.cameras[0].source == str(tmp_path / "frames") and cfg.cameras[0].kind == "folder"
    assert cfg.storage.state_dir == tmp_path / "state"


def test_relative_sources_are_classified_and_resolved_from_the_config_folder(tmp_path: Path) -> None:
    """"line.d" exists only in the config's folder (not in the current directory): a folder, found there;
    a video file that is not there yet is resolved there too (where it will appear), never from the cwd."""
    (tmp_path / "line.d").mkdir()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"bundle": "b"}, "cameras": [
        {"name": "a", "source": "line.d", "watch": True}, {"name": "b", "source": "later/clip.mp4", "loop": True},
        {"name": "c", "source": "0"}, {"name": "d", "source": "rtsp://cam/1"}]}))
    a, b, c, d = load_config(path).cameras
    assert (a.kind, a.source) == ("folder", str(tmp_path / "line.d"))
    assert (b.kind, b.source) == ("file", str(tmp_path / "later" / "clip.mp4"))
    assert (c.source, d.source) == ("0", "rtsp://cam/1")


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


def test_an_unreadable_mqtt_password_file_stops_run_and_check_config_naming_the_key(
        tmp_path: Path, tiny_bundle: Path) -> None:
    """Not a traceback from the MQTT thread later: exit 2 at start with the key and the path, never the content."""
    secret = tmp_path / "mqtt-password"
    secret.write_bytes(b"s3cret\xff\xfe\n")  # not UTF-8 (a permission error cannot be made as root)
    path = tmp_path / "edged.yaml"
    path.write_text(f"model: {{bundle: {tiny_bundle}}}\ncameras: [{{name: c, source: '{tmp_path}'}}]\n"
                    f"mqtt: {{host: 127.0.0.1, username: edged, password_file: {secret}}}\n")
    for command in ("check-config", "run"):
        proc = run_cli(command, "-c", str(path))
        assert proc.returncode == 2, (command, proc.stderr)
        assert f"mqtt.password_file: cannot read {secret}: not UTF-8 text" in proc.stderr
        assert "Traceback" not in proc.stderr and "s3cret" not in proc.stderr
    secret.write_text("s3cret\n")
    proc = run_cli("check-config", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "user edged, password set" in proc.stdout and "s3cret" not in proc.stdout


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
    assert "cam7: stream rtsp://u:***@h/s" in out  # the kind, as the config understood the source
    assert "u:p@" not in out  # credentials in a URL are never printed
    assert "input:    frozen and covered frames only: the bundle has no training ranges" in out  # fitted before them


def test_check_config_says_recipes_web_and_opcua(tmp_path: Path, tiny_bundle: Path) -> None:
    """Recipes (bundle, model), each camera's starting recipe (a kept one named as such), the web view's URL and
    login mode (never its password) and the OPC UA endpoint."""
    secret = tmp_path / "web-password"
    secret.write_text("s3cret-pw\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / "recipes.json").write_text('{"cam2": "b"}')
    path = tmp_path / "edged.yaml"
    path.write_text(f"model: {{bundle: {tiny_bundle}}}\n"
                    f"recipes: {{a: {{bundle: {tiny_bundle}}}, b: {{bundle: {tiny_bundle}, threshold: 0.25}}}}\n"
                    "cameras: [{name: cam1, source: '0', recipe: b}, {name: cam2, source: '1'}]\n"
                    f"storage: {{state_dir: {state}}}\n"
                    f"web: {{bind: 0.0.0.0, port: 8181, password_file: {secret}}}\n"
                    "opcua: {enabled: true, port: 4850}\n")
    proc = run_cli("check-config", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"recipe:   a -> {tiny_bundle} (model test-max)" in out
    assert f"recipe:   b -> {tiny_bundle} (model test-max, threshold 0.25)" in out
    assert "camera cam1 starts on b (configured)" in out
    assert f"camera cam2 starts on b (kept in {state / 'recipes.json'}; configured a)" in out
    assert "web:      http://0.0.0.0:8181/ (password login" in out and "s3cret" not in out
    assert "opcua:    opc.tcp://127.0.0.1:4850/edged/ (security none; anonymous)" in out
    path.write_text(f"model: {{bundle: {tiny_bundle}}}\ncameras: [{{name: c, source: '0'}}]\n"
                    "web: {enabled: false}\n")
    proc = run_cli("check-config", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "web:      disabled" in proc.stdout and "opcua:" not in proc.stdout
    assert "recipe:   default -> " in proc.stdout and "camera c starts on default (configured)" in proc.stdout
    missing = tmp_path / "not-copied-yet"
    path.write_text(f"model: {{bundle: {tiny_bundle}}}\nrecipes: {{a: {{bundle: {tiny_bundle}}}, "
                    f"later: {{bundle: {missing}}}}}\ncameras: [{{name: c, source: '0'}}]\n")
    proc = run_cli("check-config", "-c", str(path))  # a recipe no camera starts on: said, not fatal
    assert proc.returncode == 0, proc.stderr
    assert f"later -> {missing} (model ? not loadable, a switch to it will be refused" in proc.stdout
    path.write_text(f"model: {{bundle: {tiny_bundle}}}\nrecipes: {{later: {{bundle: {missing}}}}}\n"
                    "cameras: [{name: c, source: '0'}]\n")
    proc = run_cli("check-config", "-c", str(path))  # the one a camera starts on: the daemon would refuse it
    assert proc.returncode == 2 and "recipes.later" in proc.stderr and "Traceback" not in proc.stderr


def test_trigger_mode_mqtt_needs_mqtt() -> None:
    msg = errors_for({**MINIMAL, "cameras": [{"name": "c", "source": "0", "trigger": {"mode": "mqtt"}}],
                      "mqtt": {"enabled": False}})
    assert "trigger mode mqtt" in msg


SAMPLE_SOURCES = {"device": "0", "stream": "rtsp://cam/1", "file": "/x.mp4", "folder": "/frames", "gst": "gst:x",
                  "genicam": "genicam:Fake_1"}


def float_keys(model: type[BaseModel], prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """The key path of every float key in the config tree (cameras as cameras[0], once per kind: the kind
    in the path, as in pydantic's error locations)."""
    from edged.config import _section_type
    from edged.sources import KINDS

    out: list[tuple[object, ...]] = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        args = getattr(ann, "__args__", ()) or ()
        section = _section_type(ann)
        if name == "cameras":
            for kind in KINDS.values():
                out += float_keys(kind.config, (*prefix, name, 0, kind.name))
        elif typing.get_origin(ann) is dict and section is not None:  # a table of sections by name (recipes)
            out += float_keys(section, (*prefix, name, "any-name"))
        elif section is not None and issubclass(section, BaseModel):
            out += float_keys(section, (*prefix, name))
        elif ann is float or float in args:
            out.append((*prefix, name))
    return out


def with_value(path: tuple[object, ...], value: object) -> dict[str, object]:
    """A minimal config with `value` at `path`; a camera path names its kind (cameras, 0, kind, ...)."""
    data: dict[str, object] = {"model": {"bundle": "/nonexistent"}, "cameras": [{"name": "cam1", "source": "0"}]}
    if path[0] == "cameras":
        kind = str(path[2])
        data["cameras"] = [{"name": "cam1", "kind": kind, "source": SAMPLE_SOURCES[kind]}]
        path = path[:2] + path[3:]
    node: object = data
    for i, key in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, list):
            assert isinstance(key, int), path
            node = node[key]
            continue
        assert isinstance(node, dict)
        node = node.setdefault(key, [] if isinstance(nxt, int) else {})
    assert isinstance(node, dict)
    node[path[-1]] = value
    return data


def test_every_float_key_refuses_inf_and_nan() -> None:
    """One rule for all float keys (TTLs, rates, quotas, gaps, intervals, thresholds): finite or an error
    that names the key. Walks the config tree, every camera kind too, so a float key added later is covered."""
    from edged.config import Config, _format_loc

    keys = float_keys(Config)
    assert len(keys) > 20 and ("mqtt", "reject_ttl_ms") in keys and ("cameras", 0, "device", "threshold") in keys
    assert ("cameras", 0, "folder", "max_image_megapixels") in keys and ("cameras", 0, "file", "fps") in keys
    for path in keys:
        shown = _format_loc(path[:2] + path[3:] if path[0] == "cameras" else path)
        for text in (".inf", "-.inf", ".nan"):
            value = yaml.safe_load(text)
            msg = errors_for(with_value(path, value))
            assert f"{shown}: Input should be a finite number" in msg, (path, text, msg)


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
