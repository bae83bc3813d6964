"""The one registry of camera kinds and the one classifier of source strings.

Each kind is a module with a config class (its own keys, with the common ones from `CameraConfig`)
and a source class; `REGISTRY` lists them. Everything else is derived from it: the config's tagged
union (`AnyCamera`), `classify`, `open_source`. Adding a kind is one module and one
line in `REGISTRY`.

Classification rule, for a camera without an explicit `kind` (an explicit `kind` always wins):
the kinds are asked in `REGISTRY` order and the first that claims the string is its kind:

    device   "0", "/dev/video0"
    gst      "gst:<pipeline>" (before stream: a pipeline may hold a URL)
    stream   anything with "://" (rtsp, http(s), file:// and other FFmpeg URLs)
    genicam  "genicam:<device id, serial or address>" (Aravis)
    folder   an existing directory; a path that does not exist yet (mounted later) without an extension
    file     any other path (the last resort)

so a new non-path kind goes before `folder`. It is decided once, when the config is loaded (relative
paths from the config file's folder), and never again: a camera whose folder is mounted later keeps
its kind and its keys. An ambiguous string (a folder not there yet with a dot in its name) takes
`kind: folder`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Discriminator, Tag

from edged.sources.base import CameraConfig, SettingRefused, Source
from edged.sources.device import DeviceCamera, DeviceSource
from edged.sources.file import FileCamera, FileSource
from edged.sources.folder import FolderCamera, FolderSource
from edged.sources.genicam import GenicamCamera, GenicamSource
from edged.sources.gst import GstCamera, GstSource
from edged.sources.stream import StreamCamera, StreamSource


@dataclass(frozen=True)
class Kind:
    """One kind of camera: its config class (the keys it takes) and its source class (built from it)."""

    config: type[CameraConfig]
    source: Callable[[Any], Source]

    @property
    def name(self) -> str:
        """The kind's name: its config class's `kind` default."""
        return str(self.config.model_fields["kind"].default)


REGISTRY: tuple[Kind, ...] = (  # classification order: see the module docstring
    Kind(DeviceCamera, DeviceSource),
    Kind(GstCamera, GstSource),
    Kind(StreamCamera, StreamSource),
    Kind(GenicamCamera, GenicamSource),
    Kind(FolderCamera, FolderSource),
    Kind(FileCamera, FileSource),
)
KINDS: dict[str, Kind] = {k.name: k for k in REGISTRY}

# The config file's folder while a config is validated, so that the discriminator (which sees only the
# camera's keys) classifies a relative path where it will be opened, not from the current directory.
_base_dir: ContextVar[Path | None] = ContextVar("edged_config_base_dir", default=None)


@contextmanager
def paths_relative_to(base: Path | None) -> Iterator[None]:
    """Classify relative source paths from `base` while validating a config."""
    token = _base_dir.set(base)
    try:
        yield
    finally:
        _base_dir.reset(token)


def classify(source: str, base: Path | None = None) -> str:
    """The kind of a source string given without `kind` (relative paths are taken from `base`)."""
    source = source.strip()
    return next(k.name for k in REGISTRY if k.config.claims(source, base))


def camera_kind(value: Any) -> str | None:
    """The union's discriminator: the camera's `kind` if given, else its source's classification.

    None (an error naming the kinds) for a `kind` that is not one, or for something not a camera. A
    camera without a usable `source` string is given the first kind that takes all of its keys, so its
    errors are about the source, not about keys of another kind.
    """
    if isinstance(value, CameraConfig):
        return value.kind
    if not isinstance(value, dict):
        return None
    if "kind" in value:
        kind = value["kind"]
        return kind if isinstance(kind, str) and kind in KINDS else None
    source = value.get("source")
    if isinstance(source, str) and source.strip():
        return classify(source, _base_dir.get())
    keys = set(value)
    return next((k.name for k in REGISTRY if keys <= set(k.config.model_fields)), REGISTRY[0].name)


if TYPE_CHECKING:  # the union is built from REGISTRY at run time; to a type checker every camera is a CameraConfig
    from typing import TypeAlias

    AnyCamera: TypeAlias = CameraConfig
else:
    AnyCamera = Annotated[
        Union[tuple(Annotated[k.config, Tag(k.name)] for k in REGISTRY)],  # noqa: UP007 (built, not written)
        Discriminator(camera_kind, custom_error_type="camera_kind",
                      custom_error_message=f"must be a camera with kind one of: {', '.join(KINDS)}"),
    ]


def open_source(cam: CameraConfig) -> Source:
    """The source for a camera config, built by its kind (not opened yet)."""
    return KINDS[cam.kind].source(cam)


def camera_for(source: str, like: CameraConfig, kind: str | None = None) -> CameraConfig:
    """A camera of `source`'s kind with `like`'s common keys (name, queue, threshold, trigger...) and the
    kind's own keys at their defaults: `edged replay` runs the first camera's settings over a file."""
    kind = kind or classify(source)
    common = {name: getattr(like, name) for name in CameraConfig.model_fields if name != "kind"}
    return KINDS[kind].config.model_validate({**common, "source": source, "kind": kind})


def check_cameras(cameras: Iterable[CameraConfig]) -> list[str]:
    """Open each camera that has settings of its own (GenICam) to apply and read them back, before anything
    starts: a line per camera checked. SettingRefused, its key as the config writes it (`cameras[0].gain`),
    for the first refused setting; a camera not reachable now is a line, not an error."""
    lines = []
    for i, cam in enumerate(cameras):
        try:
            note = open_source(cam).check()
        except SettingRefused as exc:
            raise SettingRefused(f"cameras[{i}].{exc.key}", f"{exc.reason} (camera {cam.name}, {cam.source})") from None
        if note:
            lines.append(f"{cam.name}: {note}")
    return lines
