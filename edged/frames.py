"""The records that flow through the pipeline: a captured frame, then its verdict.

They are plain immutable dataclasses so that threads can hand them over through queues
without sharing mutable state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class FrameInput:
    """A frame's input health (edged.input_health), set by the capture thread: in range or not, and whether
    its camera was degraded when it was captured."""

    ok: bool
    problems: tuple[str, ...] = ()  # what is out of range, most telling first
    degraded: str = ""  # the camera's degraded reason at capture ('' when not degraded)


@dataclass(frozen=True, slots=True)
class CameraStamp:
    """What the camera itself says of a frame (GenICam): its frame id and timestamp, beside the host's."""

    frame_id: int  # the camera's block id (GigE Vision: 16 bits, wraps; USB3 Vision: 64 bits)
    timestamp_ns: int  # the camera's clock in nanoseconds (its own epoch, not Unix time; 0 when it gives none)
    line_triggered: bool = False  # the line's sensor triggered this exposure: the frame is one part, named by frame_id


@dataclass(frozen=True, slots=True)
class Frame:
    """One image from one camera, stamped at capture time."""

    camera: str
    seq: int  # per camera, starts at 0 each run, increases by one per delivered frame
    image: np.ndarray  # HxWx3 uint8 BGR (OpenCV order) or HxW uint8 gray
    captured_mono: float  # time.monotonic() at capture: for latencies and deadlines
    captured_at: float  # time.time() at capture (Unix seconds): for logs and messages
    source_name: str = ""  # file name for folder sources, else ""
    part_id: str | None = None  # set when a trigger assigned this frame to a part
    camera_stamp: CameraStamp | None = None  # the camera's frame id and clock (GenICam sources), else None
    input: FrameInput | None = None  # input health; None when input_health is off


@dataclass(frozen=True, slots=True)
class Region:
    """A connected defect area, as a box in original-frame pixel coordinates."""

    x: int
    y: int
    w: int
    h: int
    area: int  # pixels over the map threshold, in frame pixels
    peak: float  # highest anomaly value inside

    def to_dict(self) -> dict[str, float | int]:
        """The region as it goes into messages and rows: frame pixels, the map's peak rounded."""
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "area": self.area,
                "peak": round(self.peak, 6)}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for one frame (or one part, when a trigger names it)."""

    frame: Frame
    score: float
    threshold: float
    is_defective: bool
    decided_mono: float
    decided_at: float
    model: str  # bundle id
    regions: tuple[Region, ...] = ()
    anomaly_map: np.ndarray | None = field(default=None, repr=False)  # HxW float32 at model size
    reason: str = "ok"  # "ok", "defect", "not_inspected"
    dequeued_mono: float = 0.0  # when a worker took the frame from the queue (stage timing; 0 = unknown)
    prepared_mono: float = 0.0  # when its preprocessing ended, inference began
    degraded: str = ""  # the camera's degraded reason when input health made this verdict not_inspected or flagged it
    recipe: str = ""  # the recipe (edged.recipes) whose model and threshold judged this frame

    @property
    def confidence(self) -> float:
        """score / threshold capped at 2.0, as the reference design defines it."""
        if self.threshold <= 0:
            return 2.0 if self.score > 0 else 0.0
        return float(min(self.score / self.threshold, 2.0))

    @property
    def latency_ms(self) -> float:
        """Capture to decision in milliseconds, on the monotonic clock (a wall-clock step does not show)."""
        return (self.decided_mono - self.frame.captured_mono) * 1000.0
