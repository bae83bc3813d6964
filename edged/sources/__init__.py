"""Camera sources, one module per kind: device (V4L2), stream (rtsp/http), file (video), folder (images),
gst (GStreamer), genicam (Aravis). `base` holds what they share, `registry` the one classifier and the kind
registry.

A camera's config is one class per kind (its own keys beside the common ones), chosen by `kind` or, when
that is left out, by classifying the `source` string; see edged/sources/registry.py for the rule.
"""

from edged.sources.base import (
    BadFrame,
    CameraConfig,
    NoFrameYet,
    ReconnectConfig,
    SettingRefused,
    Source,
    SourceEnded,
    SourceFailed,
    TriggerConfig,
)
from edged.sources.folder import IMAGE_EXTENSIONS, image_size
from edged.sources.registry import (
    KINDS,
    AnyCamera,
    camera_for,
    check_cameras,
    classify,
    open_source,
    paths_relative_to,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "KINDS",
    "AnyCamera",
    "BadFrame",
    "CameraConfig",
    "NoFrameYet",
    "ReconnectConfig",
    "SettingRefused",
    "Source",
    "SourceEnded",
    "SourceFailed",
    "TriggerConfig",
    "camera_for",
    "check_cameras",
    "classify",
    "image_size",
    "open_source",
    "paths_relative_to",
]
