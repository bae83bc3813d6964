"""Convolutional autoencoder detectors, trained on good images only.

Two variants share one implementation:

* ``cae-reference``: the reference design, kept so its figures can be reproduced: five stride-2 4x4
  convolutions 32-64-128-256-512 with BatchNorm+ReLU, the mirrored ConvTranspose decoder, a sigmoid
  output, MSE loss, and the whole-image MSE as the score (MTD, 128 px: image AUROC about 0.57).
* ``cae`` (default): the same encoder at half the width (16..256), a resize+3x3-convolution decoder
  (quantizes fully to int8; ONNX Runtime's CPU int8 kernels leave ConvTranspose in fp32), an SSIM+L1
  loss with brightness/contrast augmentation, and a score taken from a smoothed per-pixel error map
  (relative to the image's brightness, standardized per pixel by its spread on the training images),
  scored by its top-1% mean instead of the global MSE, which dilutes a small defect in thousands of
  well-reconstructed pixels.

docs/cae.md has the measurements behind these choices.

Every option can be changed with ``edged-train fit --method cae --opt KEY=VALUE`` (see `CaeConfig`).
The exported graph computes the map and the score itself, so the daemon only runs it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edged.bundle import InputSpec, OutputSpec
from tools.methods.base import FitOptions, Option, OptionError, QuantizeOptions, parse_options

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
HEAD_PREFIX = "/head/"  # ONNX node names of the error-map/score part (kept fp32 when quantizing)


@dataclass
class CaeConfig:
    """All knobs of the autoencoder; `--opt KEY=VALUE` sets any of them."""

    channels: int = 3  # 3: rgb (color defects visible; gray images are replicated), 1: gray
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)  # encoder channels, one stride-2 stage each
    latent: int = 0  # >0: 1x1 convolution to this many channels at the bottleneck (a narrower code)
    decoder: str = "resize"  # "resize" (upsample + 3x3 conv) | "convT" (4x4 stride-2 transposed conv)
    upsample: str = "nearest"  # "nearest" | "bilinear" (decoder "resize" only)
    act: str = "leaky"  # "relu" | "leaky"
    loss: str = "ssim+l1"  # "mse" | "l1" | "ssim" | "ssim+l1"
    error: str = "ssim+l1"  # per-pixel error map: "l2" | "l1" | "ssim" | "ssim+l1"
    blur: float = 2.0  # Gaussian sigma (px) applied to the error map; 0: none
    score: str = "topk"  # "mean" (whole-image) | "max" | "topk" (mean of the top-k fraction of pixels)
    topk: float = 0.01  # fraction of pixels for score "topk"
    position_norm: bool = True  # standardize the map per pixel with its mean/std over the training images
    relative: bool = True  # divide the error by the image's mean intensity (brighter image, larger error)
    ssim_window: int = 11
    augment: bool = True  # random brightness/contrast per training image
    brightness: float = 0.1  # +- added to [0,1] pixels
    contrast: float = 0.2  # +- relative gain
    flip: bool = False  # random flips (only for parts without an orientation)
    epochs: int = 15  # 36-50 s of CPU each on MTD's 566 images at 128 px: fit stays near 10 minutes
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0

    @classmethod
    def from_options(cls, base: CaeConfig, extra: dict[str, Any], epochs: int | None) -> CaeConfig:
        """Apply `--opt` strings (or already typed values) on top of a variant's defaults (shared rules)."""
        values = parse_options("cae", option_table(base), extra)
        cfg = replace(base, **values)
        if epochs is not None:
            cfg = replace(cfg, epochs=epochs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise OptionError("cae options epochs, batch_size, lr must be positive")


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
    return {f.name: Option(getattr(base, f.name), choices=CHOICES.get(f.name), check=checks.get(f.name),
                           **RANGES.get(f.name, {}))
            for f in fields(CaeConfig)}


# Variants: the reference design as published, and the default that works.
REFERENCE = CaeConfig(channels=3, widths=(32, 64, 128, 256, 512), decoder="convT", act="relu", loss="mse",
                      error="l2", blur=0.0, score="mean", position_norm=False, relative=False, augment=False,
                      epochs=113,
                      batch_size=16, lr=1e-3)
DEFAULT = CaeConfig()


# ----------------------------------------------------------------------------------------------- model


def _act(kind: str) -> nn.Module:
    return nn.LeakyReLU(0.2) if kind == "leaky" else nn.ReLU()


class Upsample2x(nn.Module):
    """x2 resize by output size, not scale: ONNX Runtime's symbolic shape inference (run before int8
    quantization) keeps the batch axis through a sized Resize but loses it through a scaled one."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2] * 2, x.shape[3] * 2)
        if self.mode == "bilinear":
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=size, mode="nearest")


class Autoencoder(nn.Module):
    """Encoder of stride-2 4x4 convolutions; decoder mirrors it (ConvTranspose or resize+conv)."""

    def __init__(self, cfg: CaeConfig) -> None:
        super().__init__()
        enc: list[nn.Module] = []
        cin = cfg.channels
        for w in cfg.widths:
            enc.append(nn.Sequential(nn.Conv2d(cin, w, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(w),
                                     _act(cfg.act)))
            cin = w
        if cfg.latent > 0:
            enc.append(nn.Sequential(nn.Conv2d(cin, cfg.latent, 1, bias=False), nn.BatchNorm2d(cfg.latent),
                                     _act(cfg.act)))
            enc.append(nn.Sequential(nn.Conv2d(cfg.latent, cin, 1, bias=False), nn.BatchNorm2d(cin),
                                     _act(cfg.act)))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        outs = [*reversed(cfg.widths[:-1]), cfg.channels]
        for i, w in enumerate(outs):
            last = i == len(outs) - 1
            if cfg.decoder == "convT":
                conv: nn.Module = nn.ConvTranspose2d(cin, w, 4, stride=2, padding=1, bias=last)
                layers = [conv]
            else:
                layers = [Upsample2x(cfg.upsample), nn.Conv2d(cin, w, 3, padding=1, bias=last)]
            layers += [nn.Sigmoid()] if last else [nn.BatchNorm2d(w), _act(cfg.act)]
            dec.append(nn.Sequential(*layers))
            cin = w
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _gaussian_1d(sigma: float, size: int | None = None) -> torch.Tensor:
    size = size or 2 * math.ceil(3 * sigma) + 1
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


class _Blur(nn.Module):
    """Separable Gaussian blur, same size out (reflect padding), one filter applied to every channel.

    A depthwise convolution (groups = channels) rather than one single-channel convolution over the
    channels folded into the batch: ONNX Runtime runs the depthwise form in its blocked-channel kernels,
    which made the CAE's error head about twice as fast (same numbers; see `_ssim_planes`)."""

    def __init__(self, sigma: float, size: int | None, channels: int, height: int, width: int) -> None:
        super().__init__()
        g = _gaussian_1d(sigma, size)
        self.pad = (len(g) - 1) // 2
        self.shape = (channels, height, width)  # static, so the exported graph has no shape arithmetic
        self.register_buffer("kh", g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1))
        self.register_buffer("kv", g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.shape[0]
        p = self.pad
        x = F.pad(x, (p, p, p, p), mode="reflect")
        return F.conv2d(F.conv2d(x, self.kh, groups=c), self.kv, groups=c)


class ErrorHead(nn.Module):
    """(input, reconstruction) -> per-pixel error map [N,1,H,W] and image score [N]."""

    def __init__(self, cfg: CaeConfig, height: int, width: int) -> None:
        super().__init__()
        self.error = cfg.error
        self.channels = cfg.channels
        self.relative = cfg.relative
        self.score_kind = cfg.score
        self.k = max(1, round(cfg.topk * height * width))
        self.window = ssim_window(cfg, height, width) if "ssim" in cfg.error else None
        self.blur = _Blur(cfg.blur, None, 1, height, width) if cfg.blur > 0 else None
        self.register_buffer("mu", None)
        self.register_buffer("sd", None)

    def set_position_stats(self, mu: np.ndarray, sd: np.ndarray) -> None:
        """Per-pixel mean/std ([H, W]) of the smoothed error on good images; the map becomes a z-score."""
        self.mu = torch.as_tensor(mu, dtype=torch.float32).reshape(1, 1, *mu.shape[-2:])
        self.sd = torch.as_tensor(sd, dtype=torch.float32).reshape(1, 1, *sd.shape[-2:])

    def error_map(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.error == "l2":
            return ((x - y) ** 2).mean(1, keepdim=True)
        l1 = (x - y).abs().mean(1, keepdim=True)
        if self.error == "l1":
            return l1
        assert self.window is not None
        dssim = (1 - ssim_map(x, y, self.window, self.channels)).mean(1, keepdim=True) / 2  # in [0, 1]
        return dssim if self.error == "ssim" else 0.5 * (dssim + l1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.error_map(x, y)
        if self.relative:  # texture and noise amplitude grow with the light: compare errors relative to it
            # one axis at a time: OpenCV DNN reduces several axes at once differently from ONNX Runtime
            level = x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True).mean(dim=1, keepdim=True)
            amap = amap / level.clamp(min=0.02)
        if self.blur is not None:
            amap = self.blur(amap)
        if self.mu is not None and self.sd is not None:
            amap = (amap - self.mu) / self.sd
        flat = amap.flatten(1)
        if self.score_kind == "mean":
            score = flat.mean(1)
        elif self.score_kind == "max":
            score = flat.amax(1)
        else:
            score = torch.topk(flat, self.k, dim=1).values.mean(1)
        return amap, score


def ssim_window(cfg: CaeConfig, height: int, width: int) -> _Blur:
    """The SSIM's Gaussian window, sized for the five statistics `ssim_map` filters in one go."""
    return _Blur(1.5, cfg.ssim_window, _ssim_planes(cfg.channels), height, width)


def _ssim_planes(channels: int) -> int:
    """5 statistics per channel, rounded up to a multiple of 8 (ONNX Runtime's blocked-channel layout)."""
    return -(-5 * channels // 8) * 8


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: _Blur, c: int) -> torch.Tensor:
    """Per-pixel, per-channel SSIM of images in [0, 1] with a Gaussian window (Wang et al. 2004).

    The five local statistics are stacked and filtered by one pad + two convolutions: the same numbers
    as five separate filterings (tested), in fewer, larger ops."""
    planes = [x, y, x * x, y * y, x * y]
    spare = window.shape[0] - 5 * c
    if spare:
        planes.append(x[:, :1].expand(-1, spare, -1, -1) * 0.0)
    stats = window(torch.cat(planes, dim=1))
    mx, my = stats[:, :c], stats[:, c:2 * c]
    sxx = stats[:, 2 * c:3 * c] - mx * mx
    syy = stats[:, 3 * c:4 * c] - my * my
    sxy = stats[:, 4 * c:5 * c] - mx * my
    return ((2 * mx * my + SSIM_C1) * (2 * sxy + SSIM_C2)) / ((mx * mx + my * my + SSIM_C1) * (sxx + syy + SSIM_C2))


class ScoringModel(nn.Module):
    """What is exported: image batch -> (anomaly_map, score)."""

    def __init__(self, ae: Autoencoder, head: ErrorHead) -> None:
        super().__init__()
        self.ae = ae
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(x, self.ae(x))


def _fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold eval-mode BatchNorm into the preceding (transposed) convolution: fewer ops, cleaner int8."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.children())
        for i in range(len(children) - 1):
            conv, bn = children[i], children[i + 1]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d):
                fused = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
                module[i] = fused
                module[i + 1] = nn.Identity()
    return model


# ------------------------------------------------------------------------------------------- training


def _to_batch(images: list[np.ndarray], channels: int) -> torch.Tensor:
    """uint8 HxW(xC) images (prepared by edged.preprocess) -> float tensor NxCxHxW in [0, 1]."""
    arr = np.stack([im[:, :, None] if im.ndim == 2 else im for im in images]).astype(np.float32) / 255.0
    if arr.shape[3] != channels:
        raise ValueError(f"images have {arr.shape[3]} channels, the model expects {channels}")
    return torch.from_numpy(arr.transpose(0, 3, 1, 2).copy())


def _augment(batch: torch.Tensor, cfg: CaeConfig, gen: torch.Generator) -> torch.Tensor:
    n = batch.shape[0]
    if cfg.augment:
        gain = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.contrast
        shift = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.brightness
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)
        batch = ((batch - mean) * gain + mean + shift).clamp(0, 1)
    if cfg.flip:
        hflip = torch.rand(n, generator=gen) < 0.5
        vflip = torch.rand(n, generator=gen) < 0.5
        batch = batch.clone()
        batch[hflip] = batch[hflip].flip(3)
        batch[vflip] = batch[vflip].flip(2)
    return batch


def _loss(x: torch.Tensor, y: torch.Tensor, cfg: CaeConfig, window: nn.Module) -> torch.Tensor:
    if cfg.loss == "mse":
        return F.mse_loss(y, x)
    if cfg.loss == "l1":
        return F.l1_loss(y, x)
    dssim = (1 - ssim_map(x, y, window, cfg.channels).mean()) / 2
    return dssim if cfg.loss == "ssim" else dssim + F.l1_loss(y, x)


def _keep_freed_memory() -> None:
    """Ask glibc to reuse freed blocks instead of returning them to the OS after every batch.

    With glibc's defaults each large activation is mmap'ed and unmapped again per batch: measured on MTD,
    23 of 50 CPU seconds per epoch went to page faults; with this 36 s (with the environment variable
    MALLOC_MMAP_THRESHOLD_=4294967296 set before Python starts: 27 s). Best effort; nothing on other C
    libraries. Process-wide, which is fine for the training tool.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD: glibc's upper limit on 64-bit
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def train_autoencoder(images: list[np.ndarray], cfg: CaeConfig, seed: int, progress: bool = True,
                      desc: str = "cae") -> tuple[Autoencoder, list[float]]:
    """Seeded, deterministic training on CPU; returns the model (eval mode) and the loss per epoch."""
    _keep_freed_memory()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = _to_batch(images, cfg.channels)
    n = data.shape[0]
    if n == 0:
        raise ValueError("no training images")
    model = Autoencoder(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr * 0.05)
    window = ssim_window(cfg, data.shape[2], data.shape[3])
    history: list[float] = []
    from tqdm import tqdm

    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", disable=not progress, dynamic_ncols=True)
    with _deterministic():
        model.train()
        for _epoch in bar:
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                if len(idx) < 2 and n >= 2:  # BatchNorm needs more than one sample
                    continue
                x = _augment(data[idx], cfg, gen)
                y = model(x)
                loss = _loss(x, y, cfg, window)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            sched.step()
            history.append(total / n)
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    model.eval()
    return model, history


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


@torch.no_grad()
def position_stats(model: nn.Module, head: ErrorHead, data: torch.Tensor, batch: int = 32,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the smoothed error at each pixel over good images.

    A fixed camera sees every part in the same place, and the autoencoder errs more at some places
    (part edges, a bright rim, the frame border) than at others on every good part. Standardizing each
    pixel by its own spread on good images makes a defect stand out where good parts are steady. For
    a uniform texture the statistics are flat and this is a plain rescaling. The std has a floor (10% of
    its mean) so a pixel that never varies cannot blow up.
    """
    model.eval()
    maps = [head(x, model(x))[0] for x in data.split(batch)]
    stack = torch.cat(maps)[:, 0].double()
    mu = stack.mean(0)
    sd = stack.std(0)
    sd = sd.clamp(min=0.1 * float(sd.mean()) + 1e-6)
    return mu.float().numpy(), sd.float().numpy()


# -------------------------------------------------------------------------------------------- methods


@dataclass
class CaeTrained:
    """A trained autoencoder with its error head; exports one ONNX graph (map and score inside)."""

    spec: InputSpec
    cfg: CaeConfig
    model: Autoencoder
    outputs: OutputSpec = field(default_factory=lambda: OutputSpec(score="score", map="anomaly_map"))
    params: dict[str, Any] = field(default_factory=dict)
    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)
    position_stats: tuple[np.ndarray, np.ndarray] | None = None  # (mean, std) of the error map per pixel

    def scoring_model(self) -> ScoringModel:
        head = ErrorHead(self.cfg, self.spec.height, self.spec.width)
        if self.position_stats is not None:
            head.set_position_stats(*self.position_stats)
        return ScoringModel(_fuse_batchnorm(self.model), head).eval()

    @torch.no_grad()
    def score(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Torch scores of an NxCxHxW float32 batch: (anomaly maps [N,1,H,W], scores [N])."""
        amap, score = self.scoring_model()(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return amap.numpy(), score.numpy()

    def export_onnx(self, path: Path) -> None:
        import onnx

        model = self.scoring_model()
        dummy = torch.rand(2, self.spec.channels, self.spec.height, self.spec.width)
        names = [self.outputs.map or "anomaly_map", self.outputs.score]
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer chatter
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (dummy,), str(path), input_names=[self.spec.name], output_names=names,
                              dynamic_axes={self.spec.name: {0: "N"}, names[0]: {0: "N"}, names[1]: {0: "N"}},
                              opset_version=17, dynamo=False, do_constant_folding=True)
        graph = onnx.load(str(path)).graph
        self.quantize.nodes_to_exclude = [n.name for n in graph.node if n.name.startswith(HEAD_PREFIX)]


def _quantize_options(cfg: CaeConfig) -> QuantizeOptions:
    # Only the autoencoder's layers: the error head (SSIM statistics, blur, top-k) needs fp32 precision
    # for differences of nearly equal numbers, and is cheap. ConvTranspose has no int8 CPU kernel, but
    # listing it costs nothing when the decoder has none. uint8 activations: with them ONNX Runtime's CPU
    # provider runs every layer of the autoencoder in int8 (QLinearConv, QLinearLeakyRelu, uint8 Resize,
    # QLinearSigmoid); with int8 activations the first convolution, the Resizes, the Sigmoid and half the
    # LeakyRelus stayed float between Dequantize/Quantize pairs (measured, onnxruntime 1.32).
    ops = ["Conv", "ConvTranspose", "Resize", "Relu", "LeakyRelu", "Sigmoid"]
    return QuantizeOptions(enabled=True, per_channel=True, op_types=ops, calibrate_method="MinMax",
                           extra_options={"ActivationType": "QUInt8", "WeightType": "QInt8"})


class CaeMethod:
    """`Method` for one autoencoder variant (its defaults; `--opt` overrides any `CaeConfig` field)."""

    min_size = 32  # five halvings: the bottleneck is then 1x1
    max_size = 1024  # the training batch of 16 images no longer fits a few GB of memory beyond that

    def __init__(self, name: str, base: CaeConfig) -> None:
        self.name = name
        self.base = base

    @property
    def options(self) -> dict[str, Option]:
        return option_table(self.base)

    def config(self, opts: FitOptions) -> CaeConfig:
        return CaeConfig.from_options(self.base, opts.extra, opts.epochs)

    def input_spec(self, opts: FitOptions) -> InputSpec:
        cfg = self.config(opts)
        if opts.size < 2 ** len(cfg.widths) or opts.size % 2 ** len(cfg.widths):
            raise ValueError(f"cae: --size must be a multiple of {2 ** len(cfg.widths)} (one halving per stage)")
        if cfg.channels == 1:
            return InputSpec(width=opts.size, height=opts.size, channels=1, color_order="gray")
        return InputSpec(width=opts.size, height=opts.size, channels=3, color_order="rgb")

    def fit(self, images: list[np.ndarray], opts: FitOptions) -> CaeTrained:
        cfg = self.config(opts)
        spec = self.input_spec(opts)
        started = time.monotonic()
        model, history = train_autoencoder(images, cfg, opts.seed, progress=opts.progress, desc=self.name)
        params: dict[str, Any] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
        params.update(variant=self.name, seed=opts.seed, final_loss=round(history[-1], 6),
                      train_seconds=round(time.monotonic() - started, 1), images=len(images))
        trained = CaeTrained(spec=spec, cfg=cfg, model=model, params=params, quantize=_quantize_options(cfg))
        if cfg.position_norm:
            trained.position_stats = position_stats(model, ErrorHead(cfg, spec.height, spec.width),
                                                    _to_batch(images, cfg.channels))
        with tempfile.TemporaryDirectory() as tmp:  # fills quantize.nodes_to_exclude before anyone asks
            trained.export_onnx(Path(tmp) / "probe.onnx")
        return trained


METHODS: dict[str, CaeMethod] = {
    "cae": CaeMethod("cae", DEFAULT),
    "cae-reference": CaeMethod("cae-reference", REFERENCE),
}
METHOD = METHODS["cae"]
