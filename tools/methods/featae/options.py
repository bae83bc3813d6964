"""featae's ``--opt`` table."""

from __future__ import annotations

from typing import Any

from tools.backbones import VARIANTS
from tools.methods.components.feature_ae import AE_DEFAULTS
from tools.methods.components.features import check_layers
from tools.methods.components.options import Option
from tools.methods.components.options import parse_options as parse_table

JITTER = 1.5

OPTIONS: dict[str, Option] = {
    "backbone": Option("lite1", "ImageNet backbone: EfficientNet-Lite0, -Lite1 or -Lite2", choices=tuple(VARIANTS)),
    "layers": Option("s5,s6", "backbone stages whose features are reconstructed", check=check_layers),
    # wider than the shared AE_DEFAULTS (which patchcore's featae option keeps) and trained with jitter: on the tiles
    # 304 -> 192 -> 32 gave image AUROC 0.883 (int8), 512 -> 128 with jitter 1 0.929, 1.5 0.930 (docs/detection.md)
    "bottleneck": Option(128, "channels at the narrowest point", low=1, high=4096),
    "hidden": Option(512, "channels of the layers around the bottleneck", low=1, high=8192),
    "epochs": Option(AE_DEFAULTS["epochs"], "passes over the training patches", low=1, high=10_000),
    "lr": Option(AE_DEFAULTS["lr"], "Adam learning rate", low=0.0, low_open=True, high=1.0),
    "jitter": Option(JITTER, "Gaussian noise (standardized units) added to each training vector, "
                     "the clean one the target: the autoencoder learns to bring patches back to good features "
                     "rather than to copy any vector", low=0.0, high=10.0),
    "sigma": Option(4.0, "smoothing of the map in input pixels", low=0.0, high=256.0),
    "top": Option(0.1, "image score = mean of this fraction of the highest map cells (0: the maximum)", low=0.0,
                  high=1.0),
    "batch": Option(16, "feature extraction batch", low=1, high=1024),
}


def parse_options(extra: dict[str, Any]) -> dict[str, Any]:
    """`--opt` values (strings or CLI-typed) under the shared rules."""
    return parse_table("featae", OPTIONS, extra)
