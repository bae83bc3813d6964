"""PatchCore's ``--opt`` table (the reasons for the defaults: docs/patchcore.md)."""

from __future__ import annotations

from typing import Any

from tools.backbones import VARIANTS
from tools.methods.components.features import check_layers
from tools.methods.components.map_head import POOLS
from tools.methods.components.options import Option, OptionError
from tools.methods.components.options import parse_options as parse_table

OPTIONS: dict[str, Option] = {
    "backbone": Option("lite1", "ImageNet backbone: EfficientNet-Lite0, -Lite1 or -Lite2", choices=tuple(VARIANTS)),
    "layers": Option("s4,s5,s6", "backbone stages whose features are compared", check=check_layers),
    "coreset": Option(0.1, "fraction of the training patches kept in the memory bank", low=0.0, low_open=True,
                      high=1.0),
    "top": Option(0.1, "image score = mean of this fraction of the highest map cells (0: the maximum)", low=0.0,
                  high=1.0),
    "pool": Option("top", "image score: top = the mean of the `top` fraction of the highest map cells; fused = the "
                          "largest z-score of the map's maximum, top mean and mean, each against good images the bank "
                          "did not see", choices=POOLS),
    "proj": Option(0, "0 = none, else PCA to that many dims", low=0, high=4096),
    "max_patches": Option(200_000, "random cap on training patches before the coreset", low=1, high=50_000_000),
    "sigma": Option(4.0, "smoothing of the map in input pixels", low=0.0, high=256.0),
    "batch": Option(16, "feature extraction batch", low=1, high=1024),
    "coreset_dims": Option(64, "random projection for the coreset distances", low=1, high=4096),
    "standardize": Option(True, "divide each feature channel by its spread on the good patches"),
    "featae": Option(0.0, "weight of a feature autoencoder's reconstruction error added to the bank's distance, "
                          "each divided by its mean on the training patches (0: the memory bank alone)", low=0.0,
                     high=100.0),
    "gaussian": Option(0.0, "weight of an image-level Gaussian (Mahalanobis distance of each channel's mean and "
                            "spread over the image) added to the image score, in units of the mean bank score "
                            "(0: off)", low=0.0, high=100.0),
}


def parse_options(extra: dict[str, Any]) -> dict[str, Any]:
    """`--opt` values (strings or CLI-typed) under the shared rules, ``layers`` normalized ("s5, s6" -> "s5,s6")."""
    out = parse_table("patchcore", OPTIONS, extra)
    out["layers"] = ",".join(s.strip() for s in str(out["layers"]).split(",") if s.strip())
    if out["pool"] == "fused" and out["gaussian"] > 0:
        # the Gaussian's factor is in units of the bank's score, which fused pooling replaces by z-scores
        raise OptionError("patchcore: gaussian needs pool=top (its weight is in units of the top-mean bank score)")
    return out
