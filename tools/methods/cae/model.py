"""The autoencoder and its error head (error map, SSIM, blur, position normalization, score)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tools.methods.cae.options import CaeConfig
from tools.methods.components.blur import GaussianBlur

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _act(kind: str) -> nn.Module:
    return nn.LeakyReLU(0.2) if kind == "leaky" else nn.ReLU()


class Upsample2x(nn.Module):
    """x2 resize by output size, not scale: ONNX Runtime's symbolic shape inference (run before int8
    quantization) keeps the batch axis through a sized Resize but loses it through a scaled one."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, 2H, 2W)."""
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
        """Reconstruction in [0, 1] (sigmoid output) of an image batch (N, C, H, W), same shape."""
        return self.decoder(self.encoder(x))


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
        self.blur = GaussianBlur(cfg.blur, None, 1, height, width) if cfg.blur > 0 else None
        self.register_buffer("mu", None)
        self.register_buffer("sd", None)

    def set_position_stats(self, mu: np.ndarray, sd: np.ndarray) -> None:
        """Per-pixel mean/std ([H, W]) of the smoothed error on good images; the map becomes a z-score."""
        self.mu = torch.as_tensor(mu, dtype=torch.float32).reshape(1, 1, *mu.shape[-2:])
        self.sd = torch.as_tensor(sd, dtype=torch.float32).reshape(1, 1, *sd.shape[-2:])

    def error_map(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Raw per-pixel error of reconstruction `y` against `x` (the ``error`` option), (N, 1, H, W)."""
        if self.error == "l2":
            return ((x - y) ** 2).mean(1, keepdim=True)
        l1 = (x - y).abs().mean(1, keepdim=True)
        if self.error == "l1":
            return l1
        assert self.window is not None
        dssim = (1 - ssim_map(x, y, self.window, self.channels)).mean(1, keepdim=True) / 2  # in [0, 1]
        return dssim if self.error == "ssim" else 0.5 * (dssim + l1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, reconstruction) -> (map [N, 1, H, W]: relative, smoothed, standardized error; score [N])."""
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


def ssim_window(cfg: CaeConfig, height: int, width: int) -> GaussianBlur:
    """The SSIM's Gaussian window, sized for the five statistics `ssim_map` filters in one go."""
    return GaussianBlur(1.5, cfg.ssim_window, _ssim_planes(cfg.channels), height, width)


def _ssim_planes(channels: int) -> int:
    """5 statistics per channel, rounded up to a multiple of 8 (ONNX Runtime's blocked-channel layout)."""
    return -(-5 * channels // 8) * 8


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: GaussianBlur, c: int) -> torch.Tensor:
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
        """Image batch in [0, 1] (N, C, H, W) -> (anomaly_map [N, 1, H, W], score [N])."""
        return self.head(x, self.ae(x))
