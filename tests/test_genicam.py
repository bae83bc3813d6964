"""GenICam cameras (edged/sources/genicam.py) against Aravis' in-process fake camera ("Fake_1"): pixel
conversion, frame-id accounting, settings applied and read back, refused settings naming their key (exit 2),
the install hint without Aravis, and frames through the daemon to verdicts."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

from devkit.support import Broker, ServiceRunner, Subscriber, wait_until, write_config
from edged import cli
from edged.config import ConfigError, load_config
from edged.sources import SettingRefused, check_cameras, classify
from edged.sources import aravis as aravis_module
from edged.sources.aravis import RawBuffer
from edged.sources.genicam import PFNC, GenicamCamera, GenicamSource, missed_between, to_pipeline_image
from edged.topics import Topics

pytestmark = pytest.mark.skipif(not aravis_module.available(), reason="Aravis 0.8 is not installed")

CODE = {name: code for code, (name, _, _) in PFNC.items()}


def _raw(fmt: str, pixels: np.ndarray) -> RawBuffer:
    h, w = pixels.shape[:2]
    return RawBuffer(complete=True, status="success", frame_id=1, timestamp_ns=0, system_timestamp_ns=0,
                     width=w, height=h, pixel_format=CODE[fmt], data=pixels.tobytes())


def _mosaic(pattern: str, rgb: tuple[int, int, int], h: int = 8, w: int = 8) -> np.ndarray:
    """A uniform colour as a Bayer sensor with the 2x2 tile `pattern` (e.g. "RGGB": R at the top left) sees it."""
    value = dict(zip("RGB", rgb, strict=True))
    tile = np.array([[value[pattern[0]], value[pattern[1]]], [value[pattern[2]], value[pattern[3]]]], np.uint8)
    return np.tile(tile, (h // 2, w // 2))


@pytest.mark.parametrize("fmt,pattern", [("BayerRG8", "RGGB"), ("BayerGB8", "GBRG"), ("BayerGR8", "GRBG"),
                                         ("BayerBG8", "BGGR")])
def test_bayer_becomes_bgr_of_the_scene(fmt: str, pattern: str) -> None:
    rgb = (200, 90, 20)  # an orange part: every channel different, so a swapped pattern shows
    image = to_pipeline_image(_raw(fmt, _mosaic(pattern, rgb)))
    assert image.shape == (8, 8, 3)
    assert np.abs(image[2:6, 2:6].astype(int) - np.array(rgb[::-1])).max() <= 2, image[3, 3]


def test_mono8_stays_gray_and_rgb8_becomes_bgr() -> None:
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    out = to_pipeline_image(_raw("Mono8", gray))
    assert out.shape == (6, 8) and np.array_equal(out, gray)
    out[0, 0] = 1  # the pipeline may write into its frame (own memory)
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = 250  # red
    bgr = to_pipeline_image(_raw("RGB8", rgb))
    assert bgr[0, 0].tolist() == [0, 0, 250]


def test_a_short_or_unknown_buffer_is_a_bad_frame() -> None:
    from edged.sources import BadFrame

    short = RawBuffer(True, "success", 1, 0, 0, 8, 8, CODE["Mono8"], b"\0" * 10)
    with pytest.raises(BadFrame, match="10 bytes"):
        to_pipeline_image(short)
    with pytest.raises(BadFrame, match="not one edged converts"):
        to_pipeline_image(RawBuffer(True, "success", 1, 0, 0, 2, 2, 0x01100007, b"\0" * 8))  # Mono16


def test_missed_between_counts_frame_id_jumps() -> None:
    assert missed_between(None, 7) == 0
    assert missed_between(7, 8) == 0
    assert missed_between(7, 10) == 2
    assert missed_between(65534, 1) == 1  # GigE Vision: 65535 was lost, 0 is never used
    assert missed_between(65535, 1) == 0
    assert missed_between(500, 3) == 0  # the camera started counting again: nothing known lost


def _fake(**settings: object) -> GenicamCamera:
    return GenicamCamera.model_validate({"name": "cam1", "source": "genicam:Fake_1", **settings})


def test_source_string_is_genicam() -> None:
    assert classify("genicam:Fake_1") == "genicam"
    assert classify("genicam:192.168.10.20") == "genicam"


def test_fake_camera_settings_applied_and_read_back() -> None:
    cam = _fake(pixel_format="BayerRG8", region=[16, 8, 64, 48], exposure_us=2500, gain=3, fps=40)
    source = GenicamSource(cam)
    source.open()
    try:
        dev = source.camera
        assert dev is not None
        assert dev.pixel_format() == "BayerRG8"
        assert dev.region() == (16, 8, 64, 48)
        assert dev.get_string("TriggerMode") == "Off"
        assert source.settings == "BayerRG8 64x48+16+8, 40 fps"
        image, _ = source.read()
        assert image.shape == (48, 64, 3) and image.dtype == np.uint8
        first = source.stamp
        source.read()
        assert first is not None and source.stamp is not None
        assert source.stamp.frame_id == first.frame_id + 1  # the camera's own numbering, kept
        assert source.take_missed() == 0
        assert source.nominal_fps == pytest.approx(40)
    finally:
        source.close()


@pytest.mark.parametrize("settings,key,says", [
    ({"exposure_us": 1e9}, "exposure_us", "range 10 to 1e+07"),
    ({"gain": 50}, "gain", "range 0 to 10"),
    ({"fps": 5000}, "fps", "range 0.1 to 1000"),
    ({"region": [2000, 0, 100, 100]}, "region", "past the sensor"),
    ({"pixel_format": "BayerRG8", "packet_size": 1500}, "packet_size", "GigE Vision cameras only"),
    ({"trigger": {"source": "line5"}}, "trigger.source", "offers line0, software"),
    ({"gain": 3.5}, "gain", "asked 3.5, the camera reads back 3"),  # the fake's gain is an integer (GainRaw)
])
def test_a_refused_setting_names_its_key_and_the_range(settings: dict[str, object], key: str, says: str) -> None:
    with pytest.raises(SettingRefused) as err:
        check_cameras([_fake(**settings)])
    assert err.value.key == f"cameras[0].{key}"
    assert says in str(err.value) and "camera cam1" in str(err.value)


def test_an_unreachable_camera_is_checked_when_it_opens() -> None:
    cam = GenicamCamera.model_validate({"name": "cam1", "source": "genicam:no-such-camera"})
    (line,) = check_cameras([cam])
    assert "not reachable now" in line and "checked when it opens" in line


def test_wrong_setting_exits_2_naming_the_key(tmp_path: Path, tiny_bundle: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "edged.yaml", tiny_bundle, "genicam:Fake_1", tmp_path / "state",
                       extra_camera="    exposure_us: 99000000")
    assert cli.main(["check-config", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "cameras[0].exposure_us: 9.9e+07 is outside the camera's range 10 to 1e+07" in err
    assert "Traceback" not in err
    assert cli.main(["run", "-c", str(cfg)]) == 2
    assert "cameras[0].exposure_us" in capsys.readouterr().err
    cfg.write_text(cfg.read_text().replace("exposure_us: 99000000", "exposure_us: 5000"))
    assert cli.main(["check-config", "-c", str(cfg)]) == 0
    assert "camera:   cam1: settings applied and read back: Mono8 512x512+0+0" in capsys.readouterr().out


def test_without_aravis_the_config_says_what_to_install(tmp_path: Path, tiny_bundle: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aravis_module, "_module", None)
    monkeypatch.setitem(sys.modules, "gi", None)  # import gi now raises ImportError, as where it is missing
    cfg = write_config(tmp_path / "edged.yaml", tiny_bundle, "genicam:Fake_1", tmp_path / "state")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    assert "cameras[0]" in text and "apt-get install gir1.2-aravis-0.8" in text and "--with-genicam" in text
    assert not aravis_module.available()


def _camera(stats: dict[str, object], name: str = "cam1") -> dict[str, object]:
    cams = stats["cameras"]
    assert isinstance(cams, dict) and isinstance(cams[name], dict)
    return cams[name]


@pytest.mark.slow
def test_fake_camera_frames_flow_to_verdicts(tmp_path: Path, tiny_bundle: Path, broker: Broker) -> None:
    cfg_path = write_config(tmp_path / "edged.yaml", tiny_bundle, "genicam:Fake_1", tmp_path / "state",
                            broker.port, mqtt_extra="publish_results: true",
                            extra_camera="    pixel_format: Mono8\n    region: [0, 0, 32, 32]\n    fps: 50")
    cfg = load_config(cfg_path)
    topics = Topics.of(cfg)
    sub = Subscriber(broker.port, [topics.result, topics.stats])
    runner = ServiceRunner(cfg).start()
    try:
        results = sub.wait_for_objects(topics.result, 20, timeout=60)
        # the stats sent when the camera went streaming count its first frame only: wait for a periodic one
        # that counts the 20 (one full run failed on asserting the newest streaming stats before it came)
        wait_until(lambda: _streaming_stats(sub, topics.stats, 20), 30, "stats counting 20 frames streamed")
    finally:
        runner.stop()
        sub.close()
    assert {r["camera"] for r in results} == {"cam1"}
    assert all(c["missed"] == 0 for c in _streaming_stats(sub, topics.stats, 20))
    db = sqlite3.connect(tmp_path / "state" / "edged.db")
    (rows,) = db.execute("SELECT COUNT(*) FROM inspections WHERE camera = 'cam1'").fetchone()
    db.close()
    assert rows >= 20


def _streaming_stats(sub: Subscriber, topic: str, frames: int) -> list[dict[str, object]]:
    """cam1's entries of the stats messages that say it is streaming and has captured at least `frames`."""
    cams = [_camera(s) for s in sub.objects(topic)]
    return [c for c in cams if c["state"] == "streaming" and isinstance(c["frames"], int) and c["frames"] >= frames]


def test_a_fired_gate_gives_each_trigger_the_next_frame_only() -> None:
    """The trigger gate of a camera edged fires: one trigger in flight at a time, the next frame is its own; a frame
    nobody asked for is not inspected; a trigger whose frame never comes is let go at its deadline."""
    import time

    from edged.frames import Frame
    from edged.parts import Trigger, TriggerGate

    gate = TriggerGate()
    fired: list[float] = []

    def fire() -> bool:
        fired.append(time.time())
        return True

    gate.fire = fire
    now = time.time()

    def frame(seq: int) -> Frame:
        return Frame(camera="cam1", seq=seq, image=np.zeros((2, 2), np.uint8), captured_mono=time.monotonic(),
                     captured_at=time.time())

    assert gate.offer(frame(0)) == [] and gate.unasked == 1  # not asked for
    gate.inbox.put(Trigger("A", "cam1", now, now + 60, now))
    gate.inbox.put(Trigger("B", "cam1", now, now + 60, now))
    gate.inbox.put(Trigger("C", "cam1", now, now + 0.05, now))  # its frame will never come in time
    assert gate.offer(None) == [] and len(fired) == 1  # A fired, B waits for A's frame
    (a,) = gate.offer(frame(1))
    assert a.part_id == "A" and len(fired) == 2  # B fired at once
    (b,) = gate.offer(frame(2))
    assert b.part_id == "B" and len(fired) == 3  # C fired
    time.sleep(0.1)
    gate.offer(None)  # C past its deadline: let go (the recorder reports it not_inspected)
    assert gate.offer(frame(3)) == [] and gate.unasked == 2


def test_a_line_trigger_makes_every_frame_a_part() -> None:
    trig = _fake(trigger={"source": "line1", "activation": "falling_edge"}).trigger
    assert trig.gap_ms == 0 and trig.genicam_source == "Line1"
    with pytest.raises(ValueError, match="gap_ms must be 0"):
        _fake(trigger={"source": "line1", "gap_ms": 200})
    with pytest.raises(ValueError, match="set mode: mqtt"):
        _fake(trigger={"source": "software"})


@pytest.mark.slow
def test_line_triggered_frames_are_parts_named_by_the_camera_frame_id(tmp_path: Path, tiny_bundle: Path,
                                                                       broker: Broker) -> None:
    """Line0 armed on the fake camera (which, unlike a real one, also exposes without a pulse): each frame is a
    part of its own; the fake's bright pattern is a defect for the max model, so each frame is a reject, named
    `cam1-<the camera's frame id>`."""
    cfg_path = write_config(tmp_path / "edged.yaml", tiny_bundle, "genicam:Fake_1", tmp_path / "state",
                            broker.port, extra_camera="    pixel_format: Mono8\n    region: [0, 0, 32, 32]\n"
                                                      "    trigger: {source: line0}")
    cfg_path.write_text(cfg_path.read_text().replace("    trigger: {gap_ms: 0}\n", ""))
    cfg = load_config(cfg_path)
    topics = Topics.of(cfg)
    sub = Subscriber(broker.port, [topics.reject])
    runner = ServiceRunner(cfg).start()
    try:
        rejects = sub.wait_for_objects(topics.reject, 5, timeout=60)
    finally:
        runner.stop()
        sub.close()
    ids = [int(str(r["part_id"]).removeprefix("cam1-")) for r in rejects]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # one part per frame, the camera's numbering
    assert ids[0] != 0  # the camera's frame id (the fake starts near 65400), not edged's seq (0, 1, ...)
    assert [r["camera_frame_id"] for r in rejects] == ids  # and said as such, beside the part id
    db = sqlite3.connect(tmp_path / "state" / "edged.db")
    # a free-run row is written before its part closes (part_id NULL): the camera's number ties it to the reject
    stored = {uid: n for uid, n in db.execute("SELECT uid, camera_frame_id FROM inspections")}
    db.close()
    assert [stored[str(r["id"])] for r in rejects] == ids


def test_edged_cameras_lists_devices_and_the_settings_they_take(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert cli.main(["cameras", "--fake", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    (fake,) = [c for c in listing["cameras"] if c["id"] == "Fake_1"]
    assert fake["vendor"] == "Aravis" and fake["model"] == "Fake" and fake["source"] == "genicam:Fake_1"
    settings = fake["settings"]
    assert settings["exposure_us"]["min"] == 10 and settings["exposure_us"]["max"] == 1e7
    assert settings["gain"] == {"current": settings["gain"]["current"], "min": 0, "max": 10}
    assert "BayerRG8" in settings["pixel_format"]["values"] and settings["pixel_format"]["not_converted"] == ["Mono16"]
    assert settings["trigger.source"]["values"] == ["line0", "software"]
    assert settings["region"]["width"]["max"] == 2048
    assert "packet_size" not in settings  # not a GigE camera
    assert cli.main(["cameras", "--fake"]) == 0
    text = capsys.readouterr().out
    assert 'source: "genicam:Fake_1"' in text and "exposure_us: 10000; 10..1e+07" in text


def test_edged_cameras_without_aravis_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(aravis_module, "_module", None)
    monkeypatch.setitem(sys.modules, "gi", None)
    assert cli.main(["cameras"]) == 2
    err = capsys.readouterr().err
    assert "apt-get install gir1.2-aravis-0.8" in err and "Traceback" not in err
