"""What every camera source shares: the exceptions, the `Source` base, and the camera config fields
that are not about the source (name, queue, threshold, roi, stall timeout, reconnect, trigger).

A source reads one frame at a time and signals what happened with exceptions, so the capture thread
has one place to decide: skip the frame (`BadFrame`), reopen (`SourceFailed`), wait (`NoFrameYet`) or
stop (`SourceEnded`). How the capture thread treats a source's frames is the source's to say: `live`
(a camera that never waits: drop the oldest queued frame) and `pacing` (frames per second to replay at
like a camera, or None); the capture thread never looks at a kind's own config keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field, field_validator
from typing_extensions import Self

from edged.frames import CameraStamp
from edged.safetext import redact_url
from edged.section import NAME_RE, Section


class SourceFailed(Exception):
    """The source cannot deliver frames now (not opened, disconnected, read timeout): reopen it."""


class SourceEnded(Exception):
    """A file or folder has no more frames (not an error)."""


class NoFrameYet(Exception):
    """A watched folder has no new file yet: wait, nothing is wrong."""


class BadFrame(Exception):
    """This one frame is unusable (corrupt file, empty image); the next may be fine."""


class SettingRefused(SourceFailed):
    """The camera refuses a configured setting (out of its range, not offered): a bad config, named by its key.

    At start (and in check-config) it is exit 2; a camera that refuses on a later reopen (swapped for another
    model) keeps being retried with the reason in its state, like any camera that cannot stream."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.reason = message


# --- config: the fields every camera has ----------------------------------------------------------

class ReconnectConfig(Section):
    """How a lost camera is reopened: exponential backoff with jitter."""

    initial_s: float = Field(1.0, gt=0, le=60, description=(
        "Seconds before the first reopen attempt; each further attempt waits twice as long, up to max_s."))
    max_s: float = Field(30.0, gt=0, le=3600, description=(
        "Longest wait between reopen attempts in seconds, so a camera that returns is found soon enough."))
    jitter: float = Field(0.2, ge=0, le=1, description=(
        "Each wait is varied by up to this fraction either way, so many cameras do not retry in step."))
    give_up_after: int = Field(0, ge=0, description=(
        "Failed attempts after which the camera is marked 'failed' and left alone; 0 keeps trying forever."))


class TriggerConfig(Section):
    """What makes a part: every frame (`free_run`) or a trigger message from the line (`mqtt`)."""

    mode: Literal["free_run", "mqtt"] = Field("free_run", json_schema_extra={"common": True}, description=(
        "free_run inspects every frame; mqtt inspects only the frame chosen by each message on "
        "<prefix>/<station>/trigger."))
    gap_ms: float = Field(500.0, ge=0, json_schema_extra={"common": True}, description=(
        "free_run: defective frames closer than this many milliseconds are one part with one reject."))
    max_part_ms: float = Field(5000.0, gt=0, le=3_600_000, json_schema_extra={"common": True}, description=(
        "free_run: a part still open this many milliseconds after its first defective frame is closed and "
        "rejected anyway, so defects that never pause still give a reject."))
    max_part_frames: int = Field(300, ge=1, le=100_000, json_schema_extra={"common": True}, description=(
        "free_run: a part is closed and rejected anyway after this many defective frames."))
    delay_ms: float = Field(0.0, ge=0, description=(
        "mqtt: the first frame captured this many milliseconds after the trigger's time is inspected."))
    timeout_ms: float = Field(1000.0, gt=0, description=(
        "mqtt: a triggered part with no verdict this many milliseconds after its frame time gets the "
        "result not_inspected."))
    fail_safe: Literal["pass", "reject"] = Field("pass", description=(
        "mqtt: whether a not_inspected part is also published as a reject (reject) or only as a result "
        "(pass)."))


KIND_HELP = ("The camera's kind (device, stream, file, folder, gst, genicam); left out, it follows from `source`. "
             "Give it where the string is ambiguous, e.g. a folder that is mounted after start and has a dot in "
             "its name.")


class CameraConfig(Section):
    """The keys of every camera, whatever its kind; each kind's module adds its own keys to a subclass.

    A kind's class also says which source strings are its own (`claims`, used by the one classifier in
    edged/sources/registry.py) and which of its strings are paths to resolve (`with_paths_from`).
    """

    name: str = Field(pattern=NAME_RE, examples=["cam1"], description=(
        "The camera's name in MQTT topics, the database and image file names (letters, digits, _ . -)."))
    source: str = Field(examples=["0"], json_schema_extra={"common": True}, description=(
        'Where frames come from: "0" (/dev/video0), rtsp:// or http(s):// streams, a video file, an image '
        'folder, "gst:<pipeline> ! appsink" or "genicam:<device id, serial or IP address>"; the kind follows '
        'from it (see kind).'))
    kind: str = Field(description=KIND_HELP)  # each kind's class narrows it to its own name, with that default
    queue_size: int = Field(4, ge=1, le=1024, description=(
        "Frames waiting for inference; a live camera drops the oldest when it is full (counted), a replay "
        "waits."))
    threshold: float | None = Field(None, json_schema_extra={"common": True}, description=(
        "Overrides the bundle's calibrated score threshold for this camera; null keeps the calibrated one."))
    roi: tuple[int, int, int, int] | None = Field(None, description=(
        "[x, y, width, height] in frame pixels: only this part of each frame is inspected; null = the whole "
        "frame."))
    stall_timeout_s: float = Field(10.0, gt=0, le=3600, description=(
        "Seconds without a usable frame after which the camera is closed and reopened."))
    reconnect: ReconnectConfig = Field(ReconnectConfig(), description=(
        "How a lost camera is reopened: exponential backoff with jitter."))
    trigger: TriggerConfig = Field(TriggerConfig(), description="What makes a part: every frame or a trigger.")
    recipe: str | None = Field(None, description=(
        "The recipe (top-level `recipes`) this camera starts on; null: the first recipe, else `default` "
        "(model.bundle)."))

    @classmethod
    def claims(cls, source: str, base: Path | None) -> bool:
        """Whether a source string given without `kind` is this kind's (relative paths from `base`)."""
        return False

    def with_paths_from(self, base: Path) -> Self:
        """This camera with relative paths in it taken from `base` (the config file's folder)."""
        return self

    @field_validator("source")
    @classmethod
    def _source_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    @field_validator("roi")
    @classmethod
    def _roi_positive(cls, v: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if v is not None and (v[0] < 0 or v[1] < 0 or v[2] <= 0 or v[3] <= 0):
            raise ValueError("must be [x, y, width, height] with x, y >= 0 and width, height > 0")
        return v


class PathCamera(CameraConfig):
    """A camera whose source is a path (files, folders): relative paths are from the config's folder."""

    def with_paths_from(self, base: Path) -> Self:
        """This camera with a relative source path taken from `base`."""
        path = Path(self.source)
        return self if path.is_absolute() else self.model_copy(update={"source": str(base / path)})


class ReplayCamera(PathCamera):
    """A recorded source (video file, image folder): replayed as fast as inspection goes, or like a camera.

    Both kinds share these keys, so they are declared (and described) once.
    """

    loop: bool = Field(False, json_schema_extra={"common": True}, description=(
        "Start again at the end instead of finishing (demos, soak tests)."))
    realtime: bool = Field(False, json_schema_extra={"common": True}, description=(
        "Replay at `fps` like a live camera, dropping the oldest frame when inspection falls behind; "
        "false replays as fast as inspection goes and loses nothing."))
    fps: float | None = Field(None, gt=0, le=1000, description=(
        "Frames per second for realtime replay; null = the video's own rate (30 for folders). Used only "
        "with realtime: true."))

    def pacing(self, nominal_fps: float | None) -> float | None:
        """Frames per second to replay at, or None (not paced) when not realtime."""
        return (self.fps or nominal_fps or 30.0) if self.realtime else None


# --- sources --------------------------------------------------------------------------------------

class Source:
    """One camera's frames. Subclasses implement open/read (and close); built from their kind's config."""

    live: ClassVar[bool] = True  # a camera that goes on without us: never wait for inference
    nominal_fps: float | None = None  # what the source says its rate is, once open (None: unknown)

    def __init__(self, spec: str) -> None:
        self.spec = spec

    @property
    def pacing(self) -> float | None:
        """Frames per second the capture thread paces this source at, like a camera; None: as it comes."""
        return None

    def open(self) -> None:
        """Open (or reopen) the source; raises SourceFailed when it cannot deliver frames now."""
        raise NotImplementedError

    def read(self) -> tuple[np.ndarray, str]:
        """The next frame and its name (file name for folders, '' otherwise)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the source; safe when not open and more than once."""
        pass

    def check(self) -> str:
        """Before start (and in check-config): open the source to check its settings where it has any; a line
        saying what was checked ('' when nothing). Raises SettingRefused for a refused setting."""
        return ""

    def take_missed(self) -> int:
        """Frames the camera sent that never arrived whole (incomplete buffers, frame-id jumps) since the last
        call; counted like drops. Only sources that can tell (GenICam) return more than 0."""
        return 0

    @property
    def fires_triggers(self) -> bool:
        """Whether edged fires this camera for each trigger (GenICam software trigger; see `fire`)."""
        return False

    def fire(self) -> bool:
        """Take one frame now (software trigger); False when the camera refused. Only where `fires_triggers`."""
        return False

    @property
    def stamp(self) -> CameraStamp | None:
        """The camera's own frame id and clock for the frame just read, where the camera gives them."""
        return None

    def describe(self) -> str:
        """The source for log lines, credentials masked."""
        return redact_url(self.spec)  # never log credentials in a URL (streams, GStreamer pipelines)


class CaptureSource(Source):
    """A source read through cv2.VideoCapture (devices, streams, files, GStreamer): a kind says how to
    open its capture (`_create`) and what a failed read means (`_read_failed`)."""

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        self.cap: cv2.VideoCapture | None = None

    def _create(self) -> cv2.VideoCapture:
        raise NotImplementedError

    def _configure(self, cap: cv2.VideoCapture) -> None:
        """Settings applied once the capture is open (devices: size, rate, buffer)."""

    def _read_failed(self) -> tuple[np.ndarray, str]:
        """A read that returned no frame: for a live source the camera is gone, so reopen it."""
        raise SourceFailed("read failed (stream ended, timeout or device lost)")

    def open(self) -> None:
        """Open the capture (closing a previous one first); raises SourceFailed when it does not open."""
        self.close()
        cap = self._create()
        if not cap.isOpened():
            cap.release()
            raise SourceFailed(f"cannot open {self.describe()}")
        self._configure(cap)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.nominal_fps = float(fps) if fps and 0 < fps < 1000 else None
        self.cap = cap

    def read(self) -> tuple[np.ndarray, str]:
        """The next frame (its name ''); what a failed read means is the kind's `_read_failed`."""
        if self.cap is None:
            raise SourceFailed("not open")
        ok, frame = self.cap.read()
        if ok and frame is not None and frame.size:
            self._frame_read()
            return frame, ""
        return self._read_failed()

    def _frame_read(self) -> None:
        """Called after every good frame (files count them to tell an empty file from its end)."""

    def close(self) -> None:
        """Release the capture; safe when not open."""
        if self.cap is not None:
            self.cap.release()
            self.cap = None

