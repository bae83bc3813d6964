"""A video file, replayed frame by frame (as fast as inspection goes, or paced like a camera)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from edged.sources.base import KIND_HELP, CaptureSource, ReplayCamera, SourceEnded, SourceFailed


class FileCamera(ReplayCamera):
    """A video file. It claims every source no other kind does: the classifier's last resort."""

    kind: Literal["file"] = Field("file", description=KIND_HELP)

    @classmethod
    def claims(cls, source: str, base: Path | None) -> bool:
        """Any path: the last resort, asked after every other kind."""
        return True


class FileSource(CaptureSource):
    """Not live: a replay loses no frame (the capture thread waits for room) unless paced (`realtime`)."""

    live = False

    def __init__(self, cam: FileCamera) -> None:
        super().__init__(cam.source)
        self.cam = cam
        self._frames_read = 0

    @property
    def pacing(self) -> float | None:
        """`fps` (or the video's own rate) when realtime; None: as fast as inspection goes."""
        return self.cam.pacing(self.nominal_fps)

    def _create(self) -> cv2.VideoCapture:
        try:
            is_file = Path(self.spec).is_file()
        except OSError as exc:  # e.g. a name too long: pathlib ignores only "not found" errors
            raise SourceFailed(f"cannot open {self.spec}: {exc}") from None
        if not is_file:
            raise SourceFailed(f"no such file: {self.spec}")
        self._frames_read = 0
        return cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG)

    def _frame_read(self) -> None:
        self._frames_read += 1

    def _read_failed(self) -> tuple[np.ndarray, str]:
        """The end of the file; with `loop`, the start again (unless it had no frame at all)."""
        if self.cam.loop and self._frames_read > 0 and self.cap is not None:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._frames_read = 0
            return self.read()
        raise SourceEnded
