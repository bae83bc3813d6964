"""GenICam industrial cameras (GigE Vision, USB3 Vision) through Aravis: "genicam:<device id, serial or address>".

The camera's settings from the config are applied at every open and read back; one it refuses (out of its
range, not offered) is a `SettingRefused` naming the key and the allowed range. Frames come from an Aravis
stream of `buffers` buffers popped with a short timeout, so the capture thread keeps beating. A buffer that
comes back incomplete (missing packets) and a jump in the camera's frame id are frames the line sent that
edged never saw: they are counted (`take_missed`) and published beside the queue's drops. Pixels are
converted to what the pipeline takes: mono8 stays gray, Bayer and RGB8 become BGR.

Trigger: `trigger.source: software` has edged fire TriggerSoftware for each accepted MQTT trigger (one frame
per trigger); `line0..` has the camera triggered by the line's sensor or PLC, so every frame is a part.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field, field_validator, model_validator

from edged.frames import CameraStamp
from edged.safetext import escape
from edged.sources.aravis import (
    POP_TIMEOUT_S,
    AravisCamera,
    AravisError,
    AravisMissing,
    Bounds,
    RawBuffer,
    aravis,
    resolve,
)
from edged.sources.base import (
    KIND_HELP,
    BadFrame,
    CameraConfig,
    NoFrameYet,
    SettingRefused,
    Source,
    SourceFailed,
    TriggerConfig,
)

log = logging.getLogger(__name__)

PREFIX = "genicam:"
PixelFormat = Literal["Mono8", "BayerRG8", "BayerGB8", "BayerGR8", "BayerBG8", "RGB8"]

# PFNC codes of the formats edged converts, and how: None keeps the gray image, else a cv2 conversion.
# OpenCV names Bayer patterns by their 2x2 tile too (BayerRGGB = GenICam BayerRG8: R at the top left).
PFNC: dict[int, tuple[str, int | None, int]] = {  # code -> (name, cv2 conversion, channels in the buffer)
    0x01080001: ("Mono8", None, 1),
    0x01080009: ("BayerRG8", cv2.COLOR_BayerRGGB2BGR, 1),
    0x0108000A: ("BayerGB8", cv2.COLOR_BayerGBRG2BGR, 1),
    0x01080008: ("BayerGR8", cv2.COLOR_BayerGRBG2BGR, 1),
    0x0108000B: ("BayerBG8", cv2.COLOR_BayerBGGR2BGR, 1),
    0x02180014: ("RGB8", cv2.COLOR_RGB2BGR, 3),
}
_CONVERTED = {name for name, _, _ in PFNC.values()}
ACTIVATION = {"rising_edge": "RisingEdge", "falling_edge": "FallingEdge", "any_edge": "AnyEdge",
              "level_high": "LevelHigh", "level_low": "LevelLow"}
GEV_ID_MAX = 0xFFFF  # GigE Vision 1.x block ids: 16 bits, 0 never used, 65535 is followed by 1
SOFTWARE_POP_S = 0.005  # software trigger: the capture thread fires the next trigger between short waits
READBACK_TOLERANCE = 0.01  # a float setting read back more than 1% off was not applied as asked


class GenicamTrigger(TriggerConfig):
    """The trigger keys of every camera, plus what triggers a GenICam camera's exposure."""

    source: str | None = Field(None, pattern=r"^(software|line[0-9]{1,2})$", description=(
        "What starts each exposure: null = the camera runs free at `fps`; software = edged fires the camera "
        "once per accepted MQTT trigger (mode mqtt), exactly one inspected frame per trigger; line0, line1... = "
        "the camera's input line (the part sensor or PLC): every frame is a part (mode free_run)."))
    activation: Literal["rising_edge", "falling_edge", "any_edge", "level_high", "level_low"] = Field(
        "rising_edge", description="line triggers: which edge (or level) of the input line starts an exposure.")

    @model_validator(mode="before")
    @classmethod
    def _line_frames_are_parts(cls, data: object) -> object:
        """A line trigger makes every frame a part: frames are not grouped (gap_ms 0) unless the config says."""
        if isinstance(data, dict) and str(data.get("source", "")).startswith("line") and "gap_ms" not in data:
            return {**data, "gap_ms": 0}
        return data

    @model_validator(mode="after")
    def _source_fits_mode(self) -> GenicamTrigger:
        if self.source == "software" and self.mode != "mqtt":
            raise ValueError("trigger.source software fires the camera for each MQTT trigger: set mode: mqtt")
        if self.source is not None and self.source.startswith("line") and self.mode != "free_run":
            raise ValueError("with a line trigger every camera frame is a part: set mode: free_run")
        if self.source is not None and self.source.startswith("line") and self.gap_ms != 0:
            raise ValueError("with a line trigger every camera frame is a part of its own: gap_ms must be 0 "
                             "(leave it out)")
        return self

    @property
    def genicam_source(self) -> str | None:
        """The TriggerSource entry: Software, Line0...; None when free running."""
        if self.source is None:
            return None
        return "Software" if self.source == "software" else "Line" + self.source.removeprefix("line")


class GenicamCamera(CameraConfig):
    """A GenICam camera (GigE Vision, USB3 Vision) through Aravis; null settings keep the camera's own."""

    kind: Literal["genicam"] = Field("genicam", description=KIND_HELP)
    exposure_us: float | None = Field(None, gt=0, description=(
        "Exposure time in microseconds (auto exposure is turned off); null keeps the camera's."))
    gain: float | None = Field(None, ge=0, description=(
        "Gain in the camera's unit (usually dB; auto gain is turned off); null keeps the camera's."))
    pixel_format: PixelFormat | None = Field(None, description=(
        "GenICam pixel format: Mono8 (gray), BayerRG8/GB8/GR8/BG8 (colour, demosaiced to BGR), RGB8; null "
        "keeps the camera's, which must be one of these."))
    region: tuple[int, int, int, int] | None = Field(None, description=(
        "[x, y, width, height] on the sensor, in pixels (the camera's offset and size steps apply); null keeps "
        "the camera's."))
    fps: float | None = Field(None, gt=0, le=10000, description=(
        "Frame rate asked of a free-running camera (AcquisitionFrameRate); null keeps the camera's."))
    packet_size: int | None = Field(None, ge=64, le=65536, description=(
        "GigE Vision: stream packet size in bytes (GevSCPSPacketSize; 9000 needs jumbo frames on the NIC and "
        "switch); null keeps the camera's."))
    packet_delay_ns: int | None = Field(None, ge=0, le=1_000_000_000, description=(
        "GigE Vision: pause between stream packets in nanoseconds (GevSCPD), so several cameras on one link do "
        "not overrun the switch; null keeps the camera's."))
    buffers: int = Field(8, ge=2, le=256, description=(
        "Stream buffers Aravis fills while edged converts a frame; too few and frames are lost as incomplete."))
    read_timeout_s: float = Field(2.0, gt=0, le=300, description=(
        "A free-running camera that delivers no frame for this many seconds is reopened (triggered cameras wait "
        "for their trigger; a lost GigE camera is noticed by its heartbeat at once)."))
    packet_resend: bool = Field(True, description=(
        "GigE Vision: ask the camera to resend lost packets; false shows every lost packet as a missed frame "
        "(network diagnosis)."))
    trigger: GenicamTrigger = Field(GenicamTrigger(), description=(
        "What makes a part (every frame or an MQTT trigger) and what starts each exposure (source)."))

    @classmethod
    def claims(cls, source: str, base: Path | None) -> bool:
        """`genicam:<device id, serial or address>`."""
        return source.startswith(PREFIX)

    @property
    def device(self) -> str:
        """The device as the config names it (without "genicam:")."""
        return self.source.removeprefix(PREFIX).strip()

    @field_validator("source")
    @classmethod
    def _genicam_source(cls, v: str) -> str:
        if not v.strip().removeprefix(PREFIX).strip():
            raise ValueError('a genicam camera\'s source is "genicam:<device id, serial or IP address>" '
                             "(edged cameras lists them)")
        try:
            aravis()
        except AravisMissing as exc:
            raise ValueError(str(exc)) from None
        return v if v.startswith(PREFIX) else PREFIX + v.strip()

    @field_validator("region")
    @classmethod
    def _region_positive(cls, v: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if v is not None and (v[0] < 0 or v[1] < 0 or v[2] <= 0 or v[3] <= 0):
            raise ValueError("must be [x, y, width, height] with x, y >= 0 and width, height > 0")
        return v


# --- pixels -----------------------------------------------------------------------------------------

def to_pipeline_image(raw: RawBuffer) -> np.ndarray:
    """A complete buffer's pixels as the pipeline takes them: HxW gray (Mono8) or HxWx3 BGR (Bayer, RGB8).

    BadFrame for a format edged does not convert or a buffer smaller than its size says."""
    known = PFNC.get(raw.pixel_format)
    if known is None:
        raise BadFrame(f"pixel format 0x{raw.pixel_format:08x} is not one edged converts "
                       f"({', '.join(sorted(_CONVERTED))})")
    _, conversion, channels = known
    size = raw.width * raw.height * channels
    if raw.width <= 0 or raw.height <= 0 or len(raw.data) < size:
        raise BadFrame(f"buffer of {len(raw.data)} bytes for a {raw.width}x{raw.height} image")
    pixels = np.frombuffer(raw.data, np.uint8, size).reshape(
        (raw.height, raw.width) if channels == 1 else (raw.height, raw.width, channels))
    if conversion is None:
        return pixels.copy()  # own memory: the bytes object is not writeable
    return cv2.cvtColor(pixels, conversion)


def missed_between(last: int | None, current: int) -> int:
    """Frames the camera numbered between two it delivered (0 when consecutive or when the camera restarted
    its count). GigE Vision ids wrap from 65535 to 1."""
    if last is None or current == last + 1:
        return 0
    if current > last:
        return current - last - 1
    if last <= GEV_ID_MAX and last > GEV_ID_MAX - 4096 and current < 4096:  # a 16-bit id wrapped (0 is skipped)
        return (GEV_ID_MAX - last) + max(current - 1, 0)
    return 0  # the camera started counting again (reopened, reset): nothing known to be lost


# --- settings ---------------------------------------------------------------------------------------

def _in_range(key: str, value: float, bounds: Bounds) -> None:
    if value not in bounds:
        raise SettingRefused(key, f"{value:g} is outside the camera's range {bounds.text()}")


def _read_back(key: str, asked: float, got: float) -> None:
    if not math.isfinite(got) or abs(got - asked) > READBACK_TOLERANCE * max(abs(asked), 1e-9):
        raise SettingRefused(key, f"asked {asked:g}, the camera reads back {got:g} (its steps, or a limit the "
                                  "other settings set, e.g. a rate the exposure does not allow); write one it takes")


def _apply_pixel_format(dev: AravisCamera, cam: GenicamCamera) -> str:
    if cam.pixel_format is None:
        current = dev.pixel_format()
        if current not in _CONVERTED:
            raise SettingRefused("pixel_format", f"the camera delivers {escape(current)}; set one edged converts: "
                                 f"{', '.join(f for f in dev.pixel_formats() if f in _CONVERTED) or 'none offered'}")
        return current
    offered = dev.pixel_formats()
    if cam.pixel_format not in offered:
        raise SettingRefused("pixel_format", f"{cam.pixel_format} is not offered by this camera; it offers "
                             f"{escape(', '.join(offered), 300)}")
    got = dev.set_pixel_format(cam.pixel_format)
    if got != cam.pixel_format:
        raise SettingRefused("pixel_format", f"asked {cam.pixel_format}, the camera reads back {got}")
    return got


def _apply_region(dev: AravisCamera, cam: GenicamCamera) -> None:
    if cam.region is None:
        return
    x, y, w, h = cam.region
    width, height = dev.int_bounds("Width"), dev.int_bounds("Height")
    for key, value, bounds in (("width", w, width), ("height", h, height)):
        if value not in bounds or (value - bounds.low) % bounds.step:
            raise SettingRefused("region", f"{key} {value} is not one the camera takes ({bounds.text()})")
    for key, offset, size, full in (("x", x, w, width.high), ("y", y, h, height.high)):
        if offset + size > full:
            raise SettingRefused("region", f"{key} {offset} + size {size} is past the sensor's {full:g} pixels")
    got = dev.set_region(x, y, w, h)
    if got != (x, y, w, h):
        raise SettingRefused("region", f"asked {list(cam.region)}, the camera reads back {list(got)} "
                                       "(its offset steps)")


def _apply_float(dev: AravisCamera, key: str, feature: str, value: float | None) -> None:
    if value is None:
        return
    if not dev.offers(feature):
        raise SettingRefused(key, f"this camera has no {feature}")
    _in_range(key, value, dev.float_bounds(feature))
    setter = {"ExposureTime": dev.set_exposure_us, "Gain": dev.set_gain,
              "AcquisitionFrameRate": dev.set_frame_rate}[feature]
    _read_back(key, value, setter(value))


def _apply_gige(dev: AravisCamera, cam: GenicamCamera) -> None:
    if cam.packet_size is None and cam.packet_delay_ns is None:
        return
    if not dev.is_gige:
        key = "packet_size" if cam.packet_size is not None else "packet_delay_ns"
        raise SettingRefused(key, "applies to GigE Vision cameras only (this one is not)")
    if cam.packet_size is not None:
        bounds = dev.int_bounds("GevSCPSPacketSize")
        _in_range("packet_size", cam.packet_size, bounds)
        got = dev.set_packet_size(cam.packet_size)
        if abs(got - cam.packet_size) > bounds.step:
            _read_back("packet_size", cam.packet_size, got)
    if cam.packet_delay_ns is not None:
        got = dev.set_packet_delay_ns(cam.packet_delay_ns)
        if abs(got - cam.packet_delay_ns) > max(1000, READBACK_TOLERANCE * cam.packet_delay_ns):
            _read_back("packet_delay_ns", cam.packet_delay_ns, got)  # the camera's tick rounds it


def _apply_trigger(dev: AravisCamera, cam: GenicamCamera) -> None:
    source = cam.trigger.genicam_source
    if source is not None:
        offered = dev.trigger_sources()
        if source not in offered:
            raise SettingRefused("trigger.source", f"{cam.trigger.source} is not offered by this camera; it "
                                 f"offers {escape(', '.join(s.lower() for s in offered), 300) or 'no trigger'}")
        activation = ACTIVATION[cam.trigger.activation]
        if source != "Software" and dev.has("TriggerActivation"):
            edges = dev.enum_values("TriggerActivation")
            if activation not in edges:
                raise SettingRefused("trigger.activation", f"{cam.trigger.activation} is not offered; this "
                                     f"camera takes {escape(', '.join(edges), 300)}")
    try:
        dev.set_trigger(source, ACTIVATION[cam.trigger.activation])
    except AravisError as exc:
        raise SettingRefused("trigger.source", str(exc)) from None


def apply_settings(dev: AravisCamera, cam: GenicamCamera) -> str:
    """Apply the camera's configured settings in the order GenICam needs (format and region before the rates
    that depend on them) and read each back; SettingRefused names the first one refused. Returns a summary."""
    fmt = _apply_pixel_format(dev, cam)
    _apply_region(dev, cam)
    _apply_trigger(dev, cam)
    _apply_float(dev, "exposure_us", "ExposureTime", cam.exposure_us)
    _apply_float(dev, "gain", "Gain", cam.gain)
    if cam.trigger.source is None:
        _apply_float(dev, "fps", "AcquisitionFrameRate", cam.fps)
    _apply_gige(dev, cam)
    x, y, w, h = dev.region()
    rate = dev.frame_rate()
    return (f"{fmt} {w}x{h}+{x}+{y}" + (f", {rate:g} fps" if rate and cam.trigger.source is None else "")
            + (f", trigger {cam.trigger.source}" if cam.trigger.source else ""))


# --- the source -------------------------------------------------------------------------------------

class GenicamSource(Source):
    """A GenICam camera through Aravis: settings applied at each open, frames converted, losses counted."""

    live = True

    def __init__(self, cam: GenicamCamera) -> None:
        super().__init__(cam.source)
        self.cam = cam
        self.camera: AravisCamera | None = None
        self.settings = ""  # what open applied, read back (for logs and check-config)
        self._last_id: int | None = None
        self._missed = 0
        self._stamp: CameraStamp | None = None
        self._gone = False  # the camera stopped answering: release it without waiting on it

    @property
    def _line_triggered(self) -> bool:
        return self.cam.trigger.source is not None and self.cam.trigger.source.startswith("line")

    @property
    def fires_triggers(self) -> bool:
        """Software trigger: edged fires the camera for each accepted trigger (see `fire`)."""
        return self.cam.trigger.source == "software"

    def open(self) -> None:
        """Open the camera, apply and read back its settings, start the stream; SourceFailed (SettingRefused for a
        refused setting) when it cannot stream."""
        self.close()
        try:
            dev = AravisCamera(resolve(self.cam.device))
        except (AravisError, AravisMissing) as exc:
            raise SourceFailed(str(exc)) from None
        try:
            self.settings = apply_settings(dev, self.cam)
            dev.start(self.cam.buffers, packet_resend=self.cam.packet_resend)
        except AravisError as exc:
            dev.close()
            raise SourceFailed(str(exc)) from None
        except BaseException:
            dev.close()
            raise
        self.nominal_fps = dev.frame_rate() if self.cam.trigger.source is None else None
        self.camera = dev
        self._last_id = None
        log.info("%s: %s open: %s", self.cam.name, escape(self.cam.device), escape(self.settings, 200))

    def check(self) -> str:
        """Open the camera once to apply its settings (SettingRefused names a refused one), then close it. A camera
        not reachable now is not an error here: the capture thread keeps trying it."""
        try:
            self.open()
        except SettingRefused:
            raise
        except SourceFailed as exc:
            return (f"not reachable now ({exc}); its settings are checked when it opens, and a refused one keeps "
                    "it reconnecting with the reason in its state")
        finally:
            self.close()
        return f"settings applied and read back: {self.settings}"

    def read(self) -> tuple[np.ndarray, str]:
        """The next complete frame, converted. Incomplete buffers are skipped and counted; a triggered camera with
        no frame yet raises NoFrameYet, a free-running one with none for read_timeout_s SourceFailed."""
        dev = self.camera
        if dev is None:
            raise SourceFailed("not open")
        deadline = time.monotonic() + self.cam.read_timeout_s
        while True:
            if dev.control_lost.is_set():
                self._gone = True
                raise SourceFailed("camera lost (no answer to its heartbeat: unplugged, rebooted or its address "
                                   "changed)")
            try:
                raw = dev.pop(SOFTWARE_POP_S if self.fires_triggers else POP_TIMEOUT_S)
            except AravisError as exc:
                self._gone = True
                raise SourceFailed(str(exc)) from None
            if raw is None:
                if self.cam.trigger.source is not None:
                    raise NoFrameYet()  # a triggered camera is quiet between parts
                if time.monotonic() > deadline:
                    self._gone = True
                    raise SourceFailed(f"no frame for {self.cam.read_timeout_s:g} s")
                continue
            self._count(raw)
            if raw.complete:
                self._stamp = CameraStamp(raw.frame_id, raw.timestamp_ns, line_triggered=self._line_triggered)
                return to_pipeline_image(raw), ""

    def _count(self, raw: RawBuffer) -> None:
        """An incomplete buffer is one missed frame; a frame-id jump is that many more."""
        self._missed += missed_between(self._last_id, raw.frame_id) + (0 if raw.complete else 1)
        self._last_id = raw.frame_id

    def take_missed(self) -> int:
        """Missed frames since the last call (the capture thread adds them to the camera's count)."""
        missed, self._missed = self._missed, 0
        return missed

    @property
    def stamp(self) -> CameraStamp | None:
        """The camera's frame id and timestamp of the frame just read."""
        return self._stamp

    def fire(self) -> bool:
        """Fire TriggerSoftware once; False (logged) when the camera refuses (it is being lost)."""
        if self.camera is None:
            return False
        try:
            self.camera.software_trigger()
        except AravisError as exc:
            log.warning("%s: software trigger failed: %s", self.cam.name, exc)
            return False
        return True

    def close(self) -> None:
        """Stop acquisition and release the camera; safe when not open. A camera that stopped answering is released
        in the background (its control writes time out for seconds), so the capture thread can go on reopening."""
        if self.camera is not None:
            self.camera.close(in_background=self._gone)
            self.camera = None
        self._gone = False

    def describe(self) -> str:
        """The camera as the config names it."""
        return self.cam.source

