"""The autoencoder's knobs (`CaeConfig`, every field an ``--opt``) and its two variants."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from tools.methods.components.options import Option, OptionError, parse_options


@dataclass
class CaeConfig:
    """All knobs of the autoencoder; `--opt KEY=VALUE` sets any of them."""

    channels: int = 3
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    latent: int = 0
    decoder: str = "resize"
    upsample: str = "nearest"
    act: str = "leaky"
    loss: str = "ssim+l1"
    error: str = "ssim+l1"
    blur: float = 2.0
    score: str = "topk"
    topk: float = 0.01
    position_norm: bool = True
    relative: bool = True
    ssim_window: int = 11
    augment: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    flip: bool = False
    epochs: int = 15
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0

    @staticmethod
    def from_options(base: CaeConfig, extra: dict[str, Any], epochs: int | None) -> CaeConfig:
        """Apply `--opt` strings (or already typed values) on top of a variant's defaults (shared rules)."""
        values = parse_options("cae", option_table(base), extra)
        cfg = replace(base, **values)
        if epochs is not None:
            cfg = replace(cfg, epochs=epochs)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        """The rules no single option's range can say (OptionError): epochs, batch_size and lr positive."""
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise OptionError("cae options epochs, batch_size, lr must be positive")


DOCS: dict[str, str] = {  # what each knob does (`edged-train methods cae` shows them)
    "channels": "3: rgb (color defects visible; gray images are replicated), 1: gray",
    "widths": "encoder channels, one stride-2 stage each",
    "latent": ">0: 1x1 convolution to this many channels at the bottleneck (a narrower code)",
    "decoder": "resize: upsample + 3x3 conv; convT: 4x4 stride-2 transposed conv",
    "upsample": "interpolation of decoder resize",
    "act": "activation (leaky: LeakyReLU)",
    "loss": "training loss",
    "error": "per-pixel error that makes the anomaly map",
    "blur": "Gaussian sigma (px) applied to the error map; 0: none",
    "score": "image score from the map: mean, max, or topk (mean of the topk fraction of pixels)",
    "topk": "fraction of pixels for score 'topk'",
    "position_norm": "standardize the map per pixel with its mean/std over the training images",
    "relative": "divide the error by the image's mean intensity (brighter image, larger error)",
    "ssim_window": "SSIM window side in pixels (loss and error map)",
    "augment": "random brightness/contrast per training image",
    "brightness": "+- added to [0,1] pixels",
    "contrast": "+- relative gain",
    "flip": "random flips (only for parts without an orientation)",
    "epochs": "passes over the training images; 36-50 s of CPU each on MTD's 566 images at 128 px",
    "batch_size": "training images per step",
    "lr": "Adam learning rate",
    "weight_decay": "Adam weight decay",
}
CHOICES: dict[str, tuple[str, ...]] = {
    "decoder": ("resize", "convT"), "upsample": ("nearest", "bilinear"), "act": ("relu", "leaky"),
    "loss": ("mse", "l1", "ssim", "ssim+l1"), "error": ("l2", "l1", "ssim", "ssim+l1"),
    "score": ("mean", "max", "topk"),
}
RANGES: dict[str, dict[str, Any]] = {
    "latent": {"low": 0, "high": 4096}, "blur": {"low": 0.0, "high": 64.0},
    "topk": {"low": 0.0, "low_open": True, "high": 1.0}, "ssim_window": {"low": 3, "high": 63},
    "brightness": {"low": 0.0, "high": 1.0}, "contrast": {"low": 0.0, "high": 1.0},
    "epochs": {"low": 1, "high": 100_000}, "batch_size": {"low": 1, "high": 4096},
    "lr": {"low": 0.0, "low_open": True, "high": 10.0}, "weight_decay": {"low": 0.0, "high": 10.0},
}


def _channels(value: Any) -> str | None:
    return None if value in (1, 3) else "1 (gray) or 3 (rgb)"


def _widths(value: Any) -> str | None:
    return None if 1 <= len(value) <= 8 and all(0 < w <= 4096 for w in value) else \
        "1 to 8 positive channel counts, e.g. 32/64/128/256/512"


def option_table(base: CaeConfig) -> dict[str, Option]:
    """Every `CaeConfig` field is an option, typed by the variant's default, with its allowed values."""
    checks = {"channels": _channels, "widths": _widths}
    return {f.name: Option(getattr(base, f.name), DOCS[f.name], choices=CHOICES.get(f.name),
                           check=checks.get(f.name), **RANGES.get(f.name, {}))
            for f in fields(CaeConfig)}


# Variants: the reference design as published, and the default that works.
REFERENCE = CaeConfig(channels=3, widths=(32, 64, 128, 256, 512), decoder="convT", act="relu", loss="mse",
                      error="l2", blur=0.0, score="mean", position_norm=False, relative=False, augment=False,
                      epochs=113,
                      batch_size=16, lr=1e-3)
DEFAULT = CaeConfig()
