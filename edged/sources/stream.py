"""Network streams through FFmpeg: rtsp://, http(s):// (MJPEG IP cameras), any URL FFmpeg reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import cv2
from pydantic import Field, field_validator

from edged.sources.base import KIND_HELP, CameraConfig, CaptureSource

# TCP for RTSP: UDP loses packets on busy plant networks and shows up as smeared frames. Set at import,
# before any capture thread opens a stream (setenv while another thread's FFmpeg reads it is not safe).
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


class StreamCamera(CameraConfig):
    """A network camera; its timeouts make a stuck connection a failed read, so the camera is reopened."""

    kind: Literal["stream"] = Field("stream", description=KIND_HELP)
    open_timeout_s: float = Field(10.0, gt=0, le=300, description=(
        "Seconds to wait for the stream to open before the attempt counts as failed and is retried."))
    read_timeout_s: float = Field(5.0, gt=0, le=300, description=(
        "Seconds to wait for a frame before the read fails and the stream is reopened (a frozen camera)."))

    @classmethod
    def claims(cls, source: str, base: Path | None) -> bool:
        """A URL (with "://"): rtsp, http(s), file:// and other FFmpeg inputs."""
        return "://" in source

    @field_validator("source")
    @classmethod
    def _url(cls, v: str) -> str:
        if "://" not in v:
            raise ValueError("a stream camera's source is a URL such as rtsp://host/path")
        return v


class StreamSource(CaptureSource):
    """An rtsp/http stream through FFmpeg, with open and read timeouts, so a dead camera fails instead of hanging."""

    def __init__(self, cam: StreamCamera) -> None:
        super().__init__(cam.source)
        self.cam = cam

    def _create(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG, [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.cam.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.cam.read_timeout_s * 1000)])
