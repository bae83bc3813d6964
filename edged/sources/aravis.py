"""The one place edged touches Aravis (GenICam cameras: GigE Vision, USB3 Vision) through PyGObject.

gi has no type information, so every Aravis call is made here, behind typed functions and the typed
`AravisCamera`; the rest of edged (the genicam source, `edged cameras`) sees plain Python values. Aravis is
optional: it is imported on first use, and a machine without it gets `AravisMissing`, one line saying what
to install, instead of an ImportError's traceback.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

from edged.safetext import escape

INSTALL_HINT = ("GenICam cameras need Aravis 0.8 and PyGObject: apt-get install gir1.2-aravis-0.8 "
                "libaravis-0.8-0 and pip install 'edged[genicam]' (or deploy/install.sh --with-genicam)")
FAKE_PREFIX = "Fake_"  # Aravis' in-process fake camera ("Fake_1"), for demos and tests without hardware
POP_TIMEOUT_S = 0.1  # one wait for a buffer: short, so the capture thread keeps beating and sees a stop

_lock = threading.Lock()
_module: Any = None  # gi.repository.Aravis once loaded
# Aravis' device list is one global table: capture threads of several cameras (re)opening at once take turns
_discovery = threading.Lock()


class AravisMissing(Exception):
    """Aravis (or PyGObject) is not installed: the message says what to install."""


class AravisError(Exception):
    """An Aravis call failed (device not found, lost, a feature refused): the message is Aravis' own."""


def aravis() -> Any:
    """The Aravis module, imported once (thread-safe); AravisMissing when it cannot be."""
    global _module
    with _lock:
        if _module is None:
            try:
                import gi

                gi.require_version("Aravis", "0.8")
                from gi.repository import Aravis
            except (ImportError, ValueError) as exc:  # ValueError: gi is there, the typelib is not
                raise AravisMissing(f"{INSTALL_HINT} ({exc})") from None
            _module = Aravis
        return _module


def available() -> bool:
    """Whether Aravis can be loaded here."""
    try:
        aravis()
    except AravisMissing:
        return False
    return True


def _call(what: str, fn: Any, *args: Any) -> Any:
    """One Aravis call; its GLib.Error becomes AravisError naming what was tried."""
    try:
        return fn(*args)
    except Exception as exc:  # GLib.Error (gi's only error type here); TypeError from a wrong binding
        message = getattr(exc, "message", None) or str(exc)
        raise AravisError(f"{what}: {message}") from None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One GenICam device as discovery found it."""

    id: str
    vendor: str
    model: str
    serial: str
    address: str
    protocol: str
    physical_id: str


def devices(with_fake: bool = False) -> list[DeviceInfo]:
    """The GenICam devices found now (GigE Vision broadcast discovery, USB3 Vision enumeration)."""
    ar = aravis()

    def text(value: Any) -> str:  # raw (ids are used to open the device); escaped where shown
        return str(value) if value is not None else ""

    with _discovery:
        if with_fake:
            ar.enable_interface("Fake")
        _call("device discovery", ar.update_device_list)
        return [DeviceInfo(id=text(ar.get_device_id(i)), vendor=text(ar.get_device_vendor(i)),
                           model=text(ar.get_device_model(i)), serial=text(ar.get_device_serial_nbr(i)),
                           address=text(ar.get_device_address(i)), protocol=text(ar.get_device_protocol(i)),
                           physical_id=text(ar.get_device_physical_id(i)))
                for i in range(int(ar.get_n_devices()))]


def resolve(wanted: str) -> str:
    """The Aravis device id for what a config names: a device id, a serial number, an address or a physical
    (MAC) id of a discovered device; anything else is passed on as it is (Aravis opens a GigE camera by its IP
    address even where broadcast discovery does not reach it)."""
    found = devices(with_fake=wanted.startswith(FAKE_PREFIX))
    for dev in found:
        if wanted in (dev.id, dev.serial, dev.address, dev.physical_id):
            return dev.id
    return wanted


@dataclass(frozen=True, slots=True)
class Bounds:
    """A numeric feature's allowed range (and step, 1 when the camera gives none)."""

    low: float
    high: float
    step: float = 1.0

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high

    def text(self) -> str:
        """The range as a technician reads it."""
        step = f" in steps of {self.step:g}" if self.step not in (0, 1) else ""
        return f"{self.low:g} to {self.high:g}{step}"


@dataclass(frozen=True, slots=True)
class RawBuffer:
    """One buffer as it came from the stream, copied out of Aravis' memory (the buffer goes back at once)."""

    complete: bool  # status SUCCESS; else missing packets, timeout, size mismatch... (`status` says)
    status: str
    frame_id: int
    timestamp_ns: int  # the camera's clock (0 when it gives none)
    system_timestamp_ns: int  # the host's, when the buffer was completed
    width: int
    height: int
    pixel_format: int  # PFNC code
    data: bytes


def buffer_record(buf: Any) -> RawBuffer:
    """A RawBuffer from an Aravis buffer: what the source needs, as plain values."""
    ar = aravis()
    status = buf.get_status()
    complete = status == ar.BufferStatus.SUCCESS
    data = bytes(buf.get_image_data() or b"") if complete else b""
    return RawBuffer(complete=complete, status=str(getattr(status, "value_nick", status)),
                     frame_id=int(buf.get_frame_id()), timestamp_ns=int(buf.get_timestamp()),
                     system_timestamp_ns=int(buf.get_system_timestamp()),
                     width=int(buf.get_image_width()) if complete else 0,
                     height=int(buf.get_image_height()) if complete else 0,
                     pixel_format=int(buf.get_image_pixel_format()) if complete else 0, data=data)


class AravisCamera:
    """An open GenICam camera with its stream: typed wrappers of the Aravis calls edged makes."""

    def __init__(self, device_id: str) -> None:
        ar = aravis()
        self._ar = ar
        self.device_id = device_id
        with _discovery:  # opening looks the id up in the same table
            self._cam: Any = _call(f"open {device_id}", ar.Camera.new, device_id)
        self._stream: Any = None
        self.control_lost = threading.Event()  # set by Aravis' thread when a GigE camera stops answering
        device = self._cam.get_device()
        self._lost_handler = device.connect("control-lost", lambda *_: self.control_lost.set())
        self._device = device

    # --- identity ----------------------------------------------------------------------------------
    @property
    def is_gige(self) -> bool:
        """A GigE Vision camera (packet size and delay apply)."""
        return bool(self._cam.is_gv_device())

    def identity(self) -> dict[str, str]:
        """Vendor, model and serial as the camera reports them."""
        def text(fn: Any) -> str:
            try:
                return escape(fn() or "", 200)
            except Exception:  # a camera without the feature: unknown, not an error
                return ""
        return {"vendor": text(self._cam.get_vendor_name), "model": text(self._cam.get_model_name),
                "serial": text(self._cam.get_device_serial_number)}

    # --- features ----------------------------------------------------------------------------------
    def has(self, feature: str) -> bool:
        """Whether the camera implements and offers a feature now."""
        try:
            return bool(self._cam.is_feature_available(feature))
        except Exception:  # GLib.Error: not there
            return False

    def offers(self, feature: str) -> bool:
        """Whether the camera has ExposureTime, Gain or AcquisitionFrameRate, under whatever node name it uses
        (ExposureTimeAbs, GainRaw...: Aravis knows the variants)."""
        check = {"ExposureTime": self._cam.is_exposure_time_available, "Gain": self._cam.is_gain_available,
                 "AcquisitionFrameRate": self._cam.is_frame_rate_available}.get(feature)
        try:
            return bool(check()) if check is not None else self.has(feature)
        except Exception:  # GLib.Error: not there
            return False

    def float_bounds(self, feature: str) -> Bounds:
        """A float feature's range (Aravis picks the camera's actual node: ExposureTime or ExposureTimeAbs)."""
        getter = {"ExposureTime": self._cam.get_exposure_time_bounds, "Gain": self._cam.get_gain_bounds,
                  "AcquisitionFrameRate": self._cam.get_frame_rate_bounds}.get(feature)
        low, high = _call(f"{feature} range", getter) if getter else _call(
            f"{feature} range", self._cam.get_float_bounds, feature)
        return Bounds(float(low), float(high), 0.0)

    def int_bounds(self, feature: str) -> Bounds:
        """An integer feature's range and increment."""
        low, high = _call(f"{feature} range", self._cam.get_integer_bounds, feature)
        step = _call(f"{feature} increment", self._cam.get_integer_increment, feature)
        return Bounds(float(low), float(high), float(step or 1))

    def enum_values(self, feature: str) -> list[str]:
        """An enumeration feature's available entries."""
        return [str(v) for v in _call(f"{feature} entries", self._cam.dup_available_enumerations_as_strings,
                                      feature) or []]

    def pixel_formats(self) -> list[str]:
        """The pixel formats the camera offers (GenICam names: Mono8, BayerRG8, RGB8...)."""
        return [str(v) for v in _call("PixelFormat entries", self._cam.dup_available_pixel_formats_as_strings) or []]

    def trigger_sources(self) -> list[str]:
        """The trigger sources the camera offers (Software, Line0...)."""
        return [str(v) for v in _call("TriggerSource entries", self._cam.dup_available_trigger_sources) or []]

    def set_exposure_us(self, value: float) -> float:
        """Exposure in microseconds with auto exposure off; the value read back."""
        if self._cam.is_exposure_auto_available():
            _call("ExposureAuto", self._cam.set_exposure_time_auto, self._ar.Auto.OFF)
        _call("ExposureTime", self._cam.set_exposure_time, value)
        return float(_call("ExposureTime", self._cam.get_exposure_time))

    def set_gain(self, value: float) -> float:
        """Gain (the camera's unit, usually dB) with auto gain off; the value read back."""
        if self._cam.is_gain_auto_available():
            _call("GainAuto", self._cam.set_gain_auto, self._ar.Auto.OFF)
        _call("Gain", self._cam.set_gain, value)
        return float(_call("Gain", self._cam.get_gain))

    def float_value(self, feature: str) -> float | None:
        """ExposureTime, Gain or AcquisitionFrameRate now (whatever node the camera uses); None where it has none."""
        getter = {"ExposureTime": self._cam.get_exposure_time, "Gain": self._cam.get_gain,
                  "AcquisitionFrameRate": self._cam.get_frame_rate}[feature]
        return float(_call(feature, getter)) if self.offers(feature) else None

    def packet_size(self) -> int:
        """GigE stream packet size in bytes now."""
        return int(_call("GevSCPSPacketSize", self._cam.gv_get_packet_size))

    def packet_delay_ns(self) -> int:
        """GigE inter-packet delay in nanoseconds now."""
        return int(_call("GevSCPD", self._cam.gv_get_packet_delay))

    def set_frame_rate(self, value: float) -> float:
        """Frames per second (AcquisitionFrameRateEnable on where the camera has it); read back."""
        _call("AcquisitionFrameRate", self._cam.set_frame_rate, value)
        return float(_call("AcquisitionFrameRate", self._cam.get_frame_rate))

    def frame_rate(self) -> float | None:
        """The camera's frame rate, None where it has none."""
        if not self._cam.is_frame_rate_available():
            return None
        return float(_call("AcquisitionFrameRate", self._cam.get_frame_rate))

    def set_pixel_format(self, name: str) -> str:
        """Set the pixel format by its GenICam name; the name read back."""
        _call("PixelFormat", self._cam.set_pixel_format_from_string, name)
        return self.pixel_format()

    def pixel_format(self) -> str:
        """The current pixel format's GenICam name."""
        return str(_call("PixelFormat", self._cam.get_pixel_format_as_string))

    def set_region(self, x: int, y: int, width: int, height: int) -> tuple[int, int, int, int]:
        """Set the sensor region (offset and size); the region read back."""
        _call("region", self._cam.set_region, x, y, width, height)
        return self.region()

    def region(self) -> tuple[int, int, int, int]:
        """The current region: x, y, width, height."""
        r = _call("region", self._cam.get_region)
        return int(r[0]), int(r[1]), int(r[2]), int(r[3])

    def set_packet_size(self, value: int) -> int:
        """GigE stream packet size in bytes (GevSCPSPacketSize); read back."""
        _call("GevSCPSPacketSize", self._cam.gv_set_packet_size, value)
        return int(_call("GevSCPSPacketSize", self._cam.gv_get_packet_size))

    def set_packet_delay_ns(self, value: int) -> int:
        """GigE inter-packet delay in nanoseconds (GevSCPD, converted by Aravis); read back."""
        _call("GevSCPD", self._cam.gv_set_packet_delay, value)
        return int(_call("GevSCPD", self._cam.gv_get_packet_delay))

    def set_trigger(self, source: str | None, activation: str) -> None:
        """FrameStart triggered by `source` (Software, Line0...) on `activation`; None: free running."""
        if source is None:
            if self.has("TriggerMode"):
                _call("TriggerMode", self._cam.set_string, "TriggerMode", "Off")
            return
        _call("TriggerSource", self._cam.set_trigger, source)  # selector FrameStart, mode On, RisingEdge
        if self.has("TriggerActivation"):
            _call("TriggerActivation", self._cam.set_string, "TriggerActivation", activation)

    def get_string(self, feature: str) -> str:
        """A feature's value as text (reading a setting back)."""
        return str(_call(feature, self._cam.get_string, feature))

    def software_trigger(self) -> None:
        """Fire TriggerSoftware: the camera takes one frame."""
        _call("TriggerSoftware", self._cam.software_trigger)

    # --- stream ------------------------------------------------------------------------------------
    def start(self, buffers: int, packet_resend: bool = True) -> None:
        """Create the stream with `buffers` buffers and start acquisition (continuous)."""
        stream = _call("create stream", self._cam.create_stream, None, None)
        if self.is_gige and not packet_resend:
            stream.set_property("packet-resend", self._ar.GvStreamPacketResend.NEVER)
        payload = int(_call("payload size", self._cam.get_payload))
        for _ in range(buffers):
            stream.push_buffer(self._ar.Buffer.new_allocate(payload))
        _call("AcquisitionMode", self._cam.set_acquisition_mode, self._ar.AcquisitionMode.CONTINUOUS)
        self._stream = stream
        _call("AcquisitionStart", self._cam.start_acquisition)

    def pop(self, timeout_s: float = POP_TIMEOUT_S) -> RawBuffer | None:
        """The next buffer (copied out; Aravis' buffer is queued again at once), None after `timeout_s`."""
        if self._stream is None:
            raise AravisError("stream not started")
        buf = self._stream.timeout_pop_buffer(int(timeout_s * 1_000_000))
        if buf is None:
            return None
        try:
            return buffer_record(buf)
        finally:
            self._stream.push_buffer(buf)

    def close(self, in_background: bool = False) -> None:
        """Stop acquisition and release the camera; safe more than once, never raises (a lost camera).

        `in_background` for a camera that stopped answering: each control write to it is retried until it times
        out (AcquisitionStop 2.5 s, the stream's teardown 5 s more with Aravis' GigE defaults), which the capture
        thread must not wait for; a short-lived thread does it. A camera that comes back meanwhile is safe: the
        old session lost its control privilege with its heartbeat, so its late writes are refused."""
        cam, stream, device, handler = self._cam, self._stream, self._device, self._lost_handler
        self._cam = self._stream = None
        if cam is None:
            return
        if in_background:
            threading.Thread(target=_release, args=(cam, stream, device, handler), name="genicam-release",
                             daemon=True).start()
        else:
            _release(cam, stream, device, handler)


def _release(cam: Any, stream: Any, device: Any, handler: Any) -> None:
    """Stop acquisition, disconnect the lost-camera signal and drop the references (Aravis frees on the last)."""
    with contextlib.suppress(Exception):  # a gone camera cannot be stopped, only released
        cam.stop_acquisition()
    with contextlib.suppress(Exception):  # already gone with the device
        device.disconnect(handler)
    del stream, cam
