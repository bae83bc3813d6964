"""GStreamer pipelines ending in appsink ("gst:nvarguscamerasrc ! ... ! appsink"): Jetson CSI cameras.
Needs OpenCV built with GStreamer, as JetPack's is."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
from pydantic import Field

from edged.sources.base import KIND_HELP, CameraConfig, CaptureSource, SourceFailed

PREFIX = "gst:"


class GstCamera(CameraConfig):
    """A GStreamer pipeline; with `kind: gst` the "gst:" prefix may be left out."""

    kind: Literal["gst"] = Field("gst", description=KIND_HELP)

    @classmethod
    def claims(cls, source: str, base: Path | None) -> bool:
        """`gst:<pipeline>` (asked before stream: a pipeline may hold a URL)."""
        return source.startswith(PREFIX)

    @property
    def pipeline(self) -> str:
        """The pipeline as GStreamer gets it (without `gst:`)."""
        return self.source.removeprefix(PREFIX).strip()


class GstSource(CaptureSource):
    """A GStreamer pipeline ending in appsink, through OpenCV; SourceFailed when OpenCV lacks GStreamer."""

    def __init__(self, cam: GstCamera) -> None:
        super().__init__(cam.source)
        self.cam = cam

    def _create(self) -> cv2.VideoCapture:
        if "GStreamer:                   YES" not in cv2.getBuildInformation():
            raise SourceFailed("this OpenCV is built without GStreamer (use JetPack's OpenCV on Jetson)")
        return cv2.VideoCapture(self.cam.pipeline, cv2.CAP_GSTREAMER)
