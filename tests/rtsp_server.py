#!/usr/bin/python3
"""A real RTSP server for the camera fault tests: GStreamer's gst-rtsp-server, run by the SYSTEM python.

    /usr/bin/python3 tests/rtsp_server.py --port 8554 [--path /cam] [--file video.avi]

Serves a live H.264 test pattern (or a video file, looped) at rtsp://127.0.0.1:<port><path>. Prints
`READY <port>` once it listens. Ends cleanly on SIGTERM/SIGINT; the tests also SIGKILL and SIGSTOP it
to act out a camera that vanishes or hangs. Needs python3-gi and gir1.2-gst-rtsp-server-1.0 (Debian),
which are not in the project's virtual environment: that is why it runs as a separate process.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ENCODE = ("x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 bitrate=400 "
          "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1")


def launch_line(args: argparse.Namespace) -> str:
    caps = f"video/x-raw,format=I420,width={args.width},height={args.height},framerate={args.fps}/1"
    if args.file:
        # decode the file as fast as the clock allows, then re-encode: a live camera replaying a file
        return (f"( filesrc location={args.file} ! decodebin ! videoconvert ! videoscale ! videorate "
                f"! {caps} ! {ENCODE} )")
    return f"( videotestsrc is-live=true pattern={args.pattern} ! {caps} ! {ENCODE} )"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/cam")
    p.add_argument("--file", help="serve this video file instead of a test pattern")
    p.add_argument("--pattern", default="ball", help="videotestsrc pattern (ball moves: frames differ)")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--fps", type=int, default=15)
    args = p.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args))
    factory.set_shared(True)  # one encoder for every client, as a camera has
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, loop.quit)
    print(f"READY {args.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
