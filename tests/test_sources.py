"""Camera sources (edged/sources/): the kinds and their one classifier, an HTTP MJPEG stream (a real HTTP
server), watched folders, the pixel budget of folder images."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import pytest

from devkit.support import spot_frame, write_config
from edged.config import load_config
from edged.sdnotify import Notifier
from edged.service import Service
from edged.sources import KINDS, BadFrame, CameraConfig, NoFrameYet, SourceEnded, camera_for, classify, open_source
from edged.sources.device import DeviceSource
from edged.sources.file import FileCamera, FileSource
from edged.sources.folder import FolderCamera, FolderSource
from edged.sources.genicam import GenicamSource
from edged.sources.gst import GstSource
from edged.sources.stream import StreamSource

N_STREAM_FRAMES = 60


class MjpegHandler(BaseHTTPRequestHandler):
    """An IP camera's MJPEG-over-HTTP stream: every 10th frame shows a defect, then the stream ends."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for i in range(N_STREAM_FRAMES):
                _, jpg = cv2.imencode(".jpg", spot_frame(i % 10 == 3, seed=i))
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg))
                self.wfile.write(jpg.tobytes() + b"\r\n")
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mjpeg_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), MjpegHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"
    server.shutdown()
    server.server_close()


def test_source_kinds(tmp_path: Path) -> None:
    assert classify("0") == "device" and classify("/dev/video2") == "device"
    assert classify("rtsp://cam/1") == "stream" and classify("https://cam/x.mjpg") == "stream"
    assert classify("file:///tmp/pipe") == "stream"
    assert classify("gst:nvarguscamerasrc ! appsink") == "gst"
    assert classify("gst:rtspsrc location=rtsp://cam/1 ! decodebin ! appsink") == "gst"  # not a stream
    assert classify(str(tmp_path)) == "folder" and classify(str(tmp_path / "v.mp4")) == "file"


def test_paths_not_there_yet_and_relative_paths(tmp_path: Path) -> None:
    """A folder mounted after start has no extension (a video file has one); an existing path is what it is;
    a relative path is classified from the config's folder, where it will be opened."""
    assert classify("/mnt/line3/frames") == "folder" and classify("/mnt/line3/frames/") == "folder"
    assert classify("/mnt/line3/clip.mp4") == "file"
    assert classify("/mnt/line3/2026.11") == "file"  # ambiguous: `kind: folder` settles it (test_config)
    (tmp_path / "recording").write_bytes(b"")  # an existing file without an extension
    (tmp_path / "frames.d").mkdir()  # an existing folder with one
    assert classify(str(tmp_path / "recording")) == "file" and classify(str(tmp_path / "frames.d")) == "folder"
    assert classify("frames.d", base=tmp_path) == "folder" and classify("frames.d") == "file"  # not in the cwd


def test_every_kind_builds_its_own_source() -> None:
    """One registry: each kind's config class and source class, the kind's name from its config."""
    samples = {"device": "0", "stream": "rtsp://cam/1", "file": "/x.mp4", "folder": "/x", "gst": "gst:x ! appsink",
               "genicam": "genicam:Fake_1"}
    expected = {"device": DeviceSource, "stream": StreamSource, "file": FileSource, "folder": FolderSource,
                "gst": GstSource, "genicam": GenicamSource}
    assert set(KINDS) == set(samples)
    for name, source in samples.items():
        cam = KINDS[name].config.model_validate({"name": "c", "source": source})
        assert cam.kind == name and classify(source) == name and isinstance(cam, CameraConfig)
        assert type(open_source(cam)) is expected[name]


def test_every_camera_key_is_described() -> None:
    """The config documentation is generated from these descriptions (scripts/config_docs.py)."""
    for kind in KINDS.values():
        for name, info in kind.config.model_fields.items():
            assert info.description and len(info.description) > 20, (kind.name, name)


def test_only_replays_are_paced_and_only_when_realtime(tmp_path: Path) -> None:
    live = FileCamera(name="c", source="/x.mp4")
    paced = FileCamera(name="c", source="/x.mp4", realtime=True, fps=12)
    assert FileSource(live).pacing is None and not FileSource(live).live
    assert FileSource(paced).pacing == 12
    assert FileSource(FileCamera(name="c", source="/x.mp4", realtime=True)).pacing == 30.0  # file rate unknown yet
    assert FolderSource(FolderCamera(name="c", source=str(tmp_path), realtime=True)).pacing == 30.0
    assert open_source(KINDS["stream"].config.model_validate({"name": "c", "source": "rtsp://x"})).live


def test_a_replay_camera_keeps_the_common_keys_only(tmp_path: Path) -> None:
    """`edged replay` runs the first camera's settings over a file: the common keys, not the kind's own."""
    cam = KINDS["folder"].config.model_validate({"name": "c", "source": str(tmp_path), "watch": True, "loop": True,
                                                 "threshold": 0.3, "trigger": {"gap_ms": 0}})
    video = camera_for(str(tmp_path / "v.mp4"), like=cam)
    assert isinstance(video, FileCamera) and video.threshold == 0.3 and video.trigger.gap_ms == 0
    assert not video.loop and not video.realtime


@pytest.mark.slow
def test_http_mjpeg_stream_is_inspected(tmp_path: Path, tiny_bundle: Path, mjpeg_url: str) -> None:
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_bundle, mjpeg_url, tmp_path / "s",
                                   extra_camera="    queue_size: 64\n    reconnect: {initial_s: 5}"))
    service = Service(cfg, notifier=Notifier({}), handle_signals=False)
    runner = threading.Thread(target=service.run)
    runner.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and service.stats["cam1"].state != "reconnecting":
        time.sleep(0.05)  # the stream ends after its frames: the camera goes to 'reconnecting'
    service.stop_requested.set()
    runner.join(20)
    assert not runner.is_alive()
    db = sqlite3.connect(tmp_path / "s" / "edged.db")
    inspected, rejects = db.execute("SELECT COUNT(*), SUM(is_defective) FROM inspections").fetchone()
    assert inspected >= N_STREAM_FRAMES // 2  # live: some frames may be dropped on a busy machine, not most
    assert rejects >= 1
    assert service.stats["cam1"].reconnects == 0 and service.stats["cam1"].frames >= inspected


def test_watched_folder_picks_up_new_files(tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), spot_frame(False))
    src = FolderSource(FolderCamera(name="c", source=str(folder), watch=True), poll_s=0.01)
    src.open()
    with pytest.raises(NoFrameYet):
        src.read()  # a file written this instant may still be growing: wait until it settles
    old = time.time() - 5
    os.utime(folder / "a.png", (old, old))
    assert src.read()[1] == "a.png"
    with pytest.raises(NoFrameYet):
        src.read()
    cv2.imwrite(str(folder / "b.png"), spot_frame(True))
    (folder / "c.png").write_bytes(b"not a png")
    for name in ("b.png", "c.png"):
        os.utime(folder / name, (old, old))  # settled: not being written any more
    assert src.read()[1] == "b.png"
    with pytest.raises(BadFrame):
        src.read()


def test_folder_without_watch_ends(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), spot_frame(False))
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    src = FolderSource(FolderCamera(name="c", source=str(tmp_path)))
    src.open()
    src.read()
    with pytest.raises(SourceEnded):
        src.read()


# --- pixel budget: an image's size is read from its header before it is decoded -----------------------

@pytest.mark.parametrize(("ext", "channels"), [(e, c) for e in (".png", ".jpg", ".bmp", ".webp", ".tif")
                                               for c in (1, 3)] + [(".pgm", 1), (".ppm", 3), (".pbm", 1)])
def test_image_size_is_read_from_the_header(tmp_path: Path, ext: str, channels: int) -> None:
    import numpy as np

    from edged.sources import image_size

    image = np.random.default_rng(0).integers(0, 255, (23, 37, channels)[: 2 if channels == 1 else 3], np.uint8)
    path = tmp_path / f"x{ext}"
    assert cv2.imwrite(str(path), image)
    assert image_size(path) == (37, 23)


def test_image_size_of_unknown_or_broken_files_is_none(tmp_path: Path) -> None:
    from edged.sources import image_size

    for name, data in {"a.png": b"\x89PNG\r\n", "b.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF", "c.gif": b"GIF89a...",
                       "d.tif": b"II*\x00\xff\xff\xff\x00", "e.png": b""}.items():
        (tmp_path / name).write_bytes(data)
        assert image_size(tmp_path / name) is None, name
    assert image_size(tmp_path / "missing.png") is None


def write_huge_png(path: Path, width: int, height: int) -> None:
    """A real, valid 8-bit gray PNG of width x height black pixels, written without holding it in memory
    (it compresses to a few hundred kB; decoded it would take width x height bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.slow
def test_a_huge_image_in_a_folder_is_skipped_without_decoding(tmp_path: Path, tiny_bundle: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """20000 x 20000 = 400 MP against the default budget of 50 MP: counted as a bad frame, one clear log
    line, never decoded (it would take 400 MB gray, 1.2 GB in colour); the images around it are inspected.
    A real PNG, which OpenCV would decode: without the budget it is inspected as a third frame."""
    from edged.sources import image_size

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (0, 2):
        cv2.imwrite(str(folder / f"{i:02d}.png"), spot_frame(i == 2, seed=i))
    write_huge_png(folder / "01_huge.png", 20000, 20000)
    assert image_size(folder / "01_huge.png") == (20000, 20000)
    cfg = load_config(write_config(tmp_path / "edged.yaml", tiny_bundle, folder, tmp_path / "state"))
    service = Service(cfg, notifier=Notifier({}), handle_signals=False)
    with caplog.at_level("WARNING"):
        service.run()
    s = service.summary()
    assert (s.inspected, s.rejects, s.bad_frames) == (2, 1, 1)
    assert "01_huge.png: 20000x20000 pixels (400 MP) is over the pixel budget of 50 MP" in caplog.text
    assert "max_image_megapixels" in caplog.text  # (OpenCV itself would decode it: its limit is 1073 MP)
