"""The demo line: sample data, a trained model, the daemon on a sample video, and what it found.

Run through scripts/demo.sh (which installs everything first). Everything is written under
demo-run/ (override with --out); nothing outside it is touched, and a local mosquitto is started on a
free port when it is installed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devkit.localbroker import BrokerUnavailable, LocalBroker  # noqa: E402
from tools import synth  # noqa: E402

if TYPE_CHECKING:
    import numpy as np
    import paho.mqtt.client as mqtt
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True)


def start_broker(out: Path) -> LocalBroker | None:
    """A local mosquitto for the demo line, or None (the demo then runs without MQTT)."""
    broker = LocalBroker(out)
    try:
        broker.start()
    except BrokerUnavailable:
        print("mosquitto is not installed: the demo runs without MQTT (rejects are only logged)")
        return None
    print(f"mosquitto listening on 127.0.0.1:{broker.port}")
    return broker


def camera_round_trip(pngs: list[Path], work: Path) -> None:
    """Put test images through the same MJPG video encoding as the camera's frames (the model must be
    judged on what the camera delivers, not on cleaner pictures)."""
    import cv2

    def read(png: Path) -> np.ndarray:
        image = cv2.imread(str(png))
        if image is None:
            raise RuntimeError(f"cannot read {png}")
        return image

    first = read(pngs[0])
    video = work / "test_images.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (first.shape[1], first.shape[0]))
    for png in pngs:
        writer.write(read(png))
    writer.release()
    cap = cv2.VideoCapture(str(video))
    for png in pngs:
        ok, frame = cap.read()
        if not ok:
            raise RuntimeError(f"cannot read back {video}")
        cv2.imwrite(str(png), frame)
    cap.release()
    video.unlink()


def extract_frames(video: Path, folder: Path) -> int:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        cv2.imwrite(str(folder / f"good_{n:04d}.png"), frame)
        n += 1
    cap.release()
    return n


class RejectCounter:
    """What a reject actuator's controller would see: a real MQTT subscriber."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.rejects: list[dict[str, object]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-plc")
        self.client.on_message = self._on_message
        self.ready = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.ready.wait(5)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags, rc: ReasonCode,
                    props: Properties | None) -> None:
        client.subscribe("edged/demo/reject", qos=1)
        self.ready.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.rejects.append(json.loads(msg.payload))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=REPO / "demo-run")
    ap.add_argument("--method", default="patchcore")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--frames", type=int, default=300)
    args = ap.parse_args()
    out: Path = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t_start = time.monotonic()
    bin_dir = Path(sys.executable).parent

    step("1/5 a synthetic production line: good parts to learn from, a test set, and a video")
    data = out / "data"
    size = (160, 120)
    synth.write_dataset(data, n_train=1, n_test_good=20, n_test_defect=24, size=size, seed=1)
    # Train on what the camera really delivers: frames of good parts recorded from the line (MJPG).
    good_video = out / "good_parts.avi"
    synth.write_video(good_video, 100, set(), size=size, fps=30, seed=3)
    shutil.rmtree(data / "train" / "good")
    n_train = extract_frames(good_video, data / "train" / "good")
    # ...and a longer run of good parts to set the threshold on: `fit` cross-fits all 100 frames, still
    # too few to place a 1-in-200 threshold (README: calibrate on a few hundred good parts).
    calib_video = out / "good_shift.avi"
    synth.write_video(calib_video, 300, set(), size=size, fps=30, seed=4)
    n_calib = extract_frames(calib_video, out / "calibration")
    camera_round_trip(sorted((data / "test").rglob("*.png")), out)
    defective = set(range(7, args.frames, 10))  # one part in ten has a scratch, spot or crack
    video = out / "line.avi"
    synth.write_video(video, args.frames, defective, size=size, fps=30, seed=2)
    print(f"{data}: {n_train} good training frames, 44 test images; {out / 'calibration'}: {n_calib} good "
          f"frames for the threshold; {video}: {args.frames} frames, {len(defective)} defective")

    step(f"2/5 train a '{args.method}' model on the good images, set its threshold (edged-train fit, calibrate)")
    bundle = out / "bundle"
    cmd = [str(bin_dir / "edged-train"), "fit", str(data), "--method", args.method, "--out", str(bundle)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    run(cmd)
    run([str(bin_dir / "edged-train"), "calibrate", str(bundle), str(out / "calibration")])

    step("3/5 measure it on the test images (edged-train evaluate)")
    run([str(bin_dir / "edged-train"), "evaluate", str(bundle), str(data), "--report", str(out / "report")])

    step("4/5 run the daemon on the video, rejects published over MQTT (edged run)")
    broker = start_broker(out)
    port = broker.port if broker else None
    mqtt = (f"mqtt: {{host: 127.0.0.1, port: {port}}}" if port else "mqtt: {enabled: false}")
    config = out / "edged.yaml"
    config.write_text(f"""# the demo line's config (see config/edged.yaml for every key)
station: demo
model: {{bundle: bundle}}
cameras:
  - name: cam1
    source: line.avi
    realtime: true       # play the video at its 30 fps, like a camera
    trigger: {{gap_ms: 0}} # every frame is a different part here
storage: {{state_dir: state}}
{mqtt}
""")
    counter = RejectCounter(port) if port else None
    try:
        run([str(bin_dir / "edged"), "check-config", "-c", str(config)])
        run([str(bin_dir / "edged"), "run", "-c", str(config)])
        time.sleep(0.5)
    finally:
        if counter:
            counter.close()
        if broker:
            broker.stop()

    step("5/5 what it found")
    db = sqlite3.connect(out / "state" / "edged.db")
    rows = db.execute("SELECT seq, is_defective, latency_ms FROM inspections ORDER BY seq").fetchall()
    flagged = {seq for seq, bad, _ in rows if bad}
    tp, fp, fn = len(flagged & defective), len(flagged - defective), len(defective - flagged)
    health = json.loads((out / "state" / "health.json").read_text())
    cam = health["cameras"]["cam1"]
    lat = sorted(r[2] for r in rows)
    print(f"frames inspected: {len(rows)} of {args.frames} (dropped {cam['drops']})")
    print(f"defective frames: {len(defective)}; rejected: {len(flagged)} -> {tp} correct, {fp} false rejects, "
          f"{fn} missed")
    if counter:
        print(f"rejects received over MQTT by the demo PLC: {len(counter.rejects)}")
    if lat:
        print(f"latency capture->verdict: p50 {lat[len(lat) // 2]:.1f} ms, p99 {lat[int(len(lat) * 0.99)]:.1f} ms")
    print(f"report: {out / 'report' / 'report.html'}; defect images: {out / 'state' / 'images'}")
    print(f"demo finished in {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
