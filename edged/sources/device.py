"""V4L2 devices (USB and industrial cameras): "0" is /dev/video0, "/dev/video2" is index 2."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import cv2
from pydantic import Field, field_validator, model_validator

from edged.sources.base import KIND_HELP, CameraConfig, CaptureSource

_DEVICE = re.compile(r"(?:/dev/video)?(\d+)")


class DeviceCamera(CameraConfig):
    """A V4L2 camera. No open/read timeouts: OpenCV's V4L2 backend has none (a read that hangs in the
    driver stops the capture heartbeat and the systemd watchdog restarts the daemon instead)."""

    kind: Literal["device"] = Field("device", description=KIND_HELP)
    fps: float | None = Field(None, gt=0, le=1000, description=(
        "Frame rate asked of the camera in frames per second; null = the camera's default."))
    width: int | None = Field(None, gt=0, description=(
        "Capture width asked of the camera in pixels (with height); null = the camera's default."))
    height: int | None = Field(None, gt=0, description=(
        "Capture height asked of the camera in pixels (with width); null = the camera's default."))

    @classmethod
    def claims(cls, source: str, base: Path | None) -> bool:
        """A V4L2 device: `N` or `/dev/videoN`."""
        return _DEVICE.fullmatch(source) is not None

    @property
    def index(self) -> int:
        """The V4L2 device number (validated: the source is "N" or "/dev/videoN")."""
        match = _DEVICE.fullmatch(self.source)
        assert match is not None
        return int(match.group(1))

    @field_validator("source")
    @classmethod
    def _device_source(cls, v: str) -> str:
        if _DEVICE.fullmatch(v.strip()) is None:
            raise ValueError('a device camera\'s source is a V4L2 index ("0") or /dev/videoN')
        return v

    @model_validator(mode="after")
    def _size_together(self) -> DeviceCamera:
        if (self.width is None) != (self.height is None):
            raise ValueError("set both width and height (the capture size asked of the camera), or neither")
        return self


class DeviceSource(CaptureSource):
    """The newest frame of a V4L2 camera (driver buffer of one, so never a stale frame)."""

    def __init__(self, cam: DeviceCamera) -> None:
        super().__init__(cam.source)
        self.cam = cam

    def _create(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(self.cam.index, cv2.CAP_V4L2)

    def _configure(self, cap: cv2.VideoCapture) -> None:
        if self.cam.width and self.cam.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cam.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cam.height)
        if self.cam.fps:
            cap.set(cv2.CAP_PROP_FPS, self.cam.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a stale one from the driver
