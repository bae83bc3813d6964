"""What `edged cameras` shows: each GenICam device found and the settings it takes, in the config's own keys.

A technician runs it at the box to write a camera's config: the source string to use, and for each key
(pixel_format, region, exposure_us, gain, fps, trigger.source, packet_size...) the camera's current value and
its range or entries. A device that cannot be opened (another program holds it) is listed with the reason.
"""

from __future__ import annotations

from typing import Any, TextIO

from edged.safetext import escape
from edged.sources.aravis import AravisCamera, AravisError, Bounds, DeviceInfo, devices
from edged.sources.genicam import ACTIVATION, PFNC, PREFIX

_CONVERTED = sorted(name for name, _, _ in PFNC.values())
_EDGE_KEYS = {v: k for k, v in ACTIVATION.items()}


def _range(bounds: Bounds, current: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {"current": current, "min": bounds.low, "max": bounds.high}
    if bounds.step not in (0, 1):
        out["step"] = bounds.step
    return out


def _float_settings(dev: AravisCamera) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, feature in (("exposure_us", "ExposureTime"), ("gain", "Gain"), ("fps", "AcquisitionFrameRate")):
        if dev.offers(feature):
            out[key] = _range(dev.float_bounds(feature), dev.float_value(feature))
    return out


def _trigger_settings(dev: AravisCamera) -> dict[str, Any]:
    out: dict[str, Any] = {"trigger.source": {"values": [s.lower() for s in dev.trigger_sources()]}}
    if dev.has("TriggerActivation"):
        out["trigger.activation"] = {"values": [_EDGE_KEYS.get(v, v) for v in dev.enum_values("TriggerActivation")]}
    return out


def settings(dev: AravisCamera) -> dict[str, Any]:
    """The settings a config can give this camera: current value and range (or entries), by config key."""
    offered = dev.pixel_formats()
    x, y, w, h = dev.region()
    width, height = dev.int_bounds("Width"), dev.int_bounds("Height")
    out: dict[str, Any] = {
        "pixel_format": {"current": dev.pixel_format(), "values": [f for f in offered if f in _CONVERTED],
                         "not_converted": [f for f in offered if f not in _CONVERTED]},
        "region": {"current": [x, y, w, h], "width": _range(width, w), "height": _range(height, h)},
        **_float_settings(dev), **_trigger_settings(dev),
    }
    if dev.is_gige:
        out["packet_size"] = _range(dev.int_bounds("GevSCPSPacketSize"), dev.packet_size())
        out["packet_delay_ns"] = {"current": dev.packet_delay_ns()}
    return out


def describe(info: DeviceInfo) -> dict[str, Any]:
    """One device: identity, the source string for the config, and its settings (or why they are unknown)."""
    # what a device on the network says of itself is outside text: escaped for the terminal and the JSON reader
    entry: dict[str, Any] = {"id": escape(info.id, 200), "vendor": escape(info.vendor, 200),
                             "model": escape(info.model, 200), "serial": escape(info.serial, 200),
                             "address": escape(info.address), "protocol": escape(info.protocol),
                             "source": escape(PREFIX + (info.id if info.protocol == "Fake" else info.serial or info.id),
                                              200)}
    try:
        dev = AravisCamera(info.id)
    except AravisError as exc:
        entry["error"] = str(exc)
        return entry
    try:
        entry["settings"] = settings(dev)
    except AravisError as exc:
        entry["error"] = str(exc)
    finally:
        dev.close()
    return entry


def list_cameras(with_fake: bool = False) -> list[dict[str, Any]]:
    """Every GenICam device found now, described (AravisMissing without Aravis)."""
    return [describe(info) for info in devices(with_fake=with_fake)]


def _setting_text(value: dict[str, Any]) -> str:
    if "values" in value:
        extra = f" (not converted: {', '.join(value['not_converted'])})" if value.get("not_converted") else ""
        now = f"{value['current']}; " if "current" in value else ""
        return f"{now}one of {', '.join(value['values']) or '-'}{extra}"
    if "width" in value:
        wb, hb = value["width"], value["height"]
        return (f"{value['current']}; width {wb['min']:g}..{wb['max']:g}{_step(wb)}, "
                f"height {hb['min']:g}..{hb['max']:g}{_step(hb)}")
    if "min" in value:
        return f"{_num(value['current'])}; {value['min']:g}..{value['max']:g}{_step(value)}"
    return _num(value.get("current"))


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _step(v: dict[str, Any]) -> str:
    return f" step {v['step']:g}" if "step" in v else ""


def write_text(found: list[dict[str, Any]], out: TextIO) -> None:
    """The listing for a person: one block per camera, one line per setting."""
    if not found:
        out.write("no GenICam camera found (GigE: same subnet and no firewall on UDP 3956; USB3: udev rules)\n")
    for cam in found:
        out.write(f"{cam['id']}: {cam['vendor']} {cam['model']}, serial {cam['serial'] or '-'}, "
                  f"{cam['protocol']} {cam['address']}\n")
        out.write(f"  source: \"{cam['source']}\"\n")
        if "error" in cam:
            out.write(f"  cannot open: {cam['error']}\n")
            continue
        for key, value in cam["settings"].items():
            out.write(f"  {key}: {_setting_text(value)}\n")
