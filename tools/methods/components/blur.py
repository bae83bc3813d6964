"""Gaussian kernels and a separable blur: one kernel formula for every method's smoothing."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel(sigma: float, size: int | None = None) -> torch.Tensor:
    """A normalized 1D Gaussian of `size` taps (default: radius 2 sigma, at least 3 taps).

    The taps are computed in float32 from offsets centred on the middle tap; the map head (sigma in
    patch-grid cells) takes the default size, the CAE's error blur and SSIM window pass their own."""
    size = size or 2 * max(1, math.ceil(2 * sigma)) + 1
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


class GaussianBlur(nn.Module):
    """Separable Gaussian blur, same size out (reflect padding), one filter applied to every channel.

    A depthwise convolution (groups = channels) rather than one single-channel convolution over the
    channels folded into the batch: ONNX Runtime runs the depthwise form in its blocked-channel kernels,
    which made the CAE's error head about twice as fast (same numbers)."""

    kh: torch.Tensor  # buffers: the horizontal (C, 1, 1, k) and vertical (C, 1, k, 1) taps
    kv: torch.Tensor

    def __init__(self, sigma: float, size: int | None, channels: int, height: int, width: int) -> None:
        super().__init__()
        g = gaussian_kernel(sigma, size or 2 * math.ceil(3 * sigma) + 1)  # default: radius 3 sigma
        self.pad = (len(g) - 1) // 2
        self.shape = (channels, height, width)  # static, so the exported graph has no shape arithmetic
        self.register_buffer("kh", g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1))
        self.register_buffer("kv", g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) at the shape given to __init__ -> blurred, same shape."""
        c = self.shape[0]
        p = self.pad
        x = F.pad(x, (p, p, p, p), mode="reflect")
        return F.conv2d(F.conv2d(x, self.kh, groups=c), self.kv, groups=c)
