"""The map head of the feature-based methods (patch grid -> anomaly map and image score), so patchcore
and featae compute their maps and scores exactly alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tools.methods.components.blur import gaussian_kernel

POOLS = ("top", "fused")  # how the smoothed grid becomes the image score (MapHead)


class MapHead(nn.Module):
    """Per-patch anomaly grid (N, 1, h, w) -> (image score [N], anomaly map [N, 1, H, W]).

    Light Gaussian smoothing on the grid, bilinear upsampling to the input size, and as image score:

    - ``pool="top"``: the mean of the `top` fraction of the highest smoothed cells (the maximum when `top` is 0).
      Why not the maximum: one cell is the noisiest statistic of a map, and the good part that scores highest sets
      the threshold; on the magnetic tiles the top 10% rank better (docs/detection.md).
    - ``pool="fused"``: the largest of three z-scores, of the maximum, the top-`top` mean and the mean of the grid,
      each in units of its own mean and spread over good images the bank did not see (`set_pool_stats`). A
      pin-point defect stands out in the maximum, one spread over a third of the part in the mean; each is judged
      against how much that statistic varies on good parts, so neither drowns in the other's noise.
    """

    blur_h: torch.Tensor  # buffers: the grid's smoothing taps, (1, 1, 1, k) and (1, 1, k, 1)
    blur_v: torch.Tensor
    pool_mean: torch.Tensor  # fused pooling only: (3,) mean and 1 / spread of (max, top mean, mean) on good images
    pool_inv_std: torch.Tensor

    def __init__(self, sigma_cells: float, size: tuple[int, int], top: float = 0.0, pool: str = "top") -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
        k = gaussian_kernel(sigma_cells)
        self.register_buffer("blur_h", k.view(1, 1, 1, -1))
        self.register_buffer("blur_v", k.view(1, 1, -1, 1))
        self.pad = (k.numel() - 1) // 2
        self.size = size  # (height, width)
        self.top = top
        self.pool = pool
        if pool == "fused":
            self.register_buffer("pool_mean", torch.zeros(3))
            self.register_buffer("pool_inv_std", torch.ones(3))

    def smoothed(self, grid: torch.Tensor) -> torch.Tensor:
        """The grid (N, 1, h, w) smoothed by the separable Gaussian, same shape (edges replicated)."""
        p = self.pad
        m = F.conv2d(F.pad(grid, [p, p, 0, 0], mode="replicate"), self.blur_h)
        return F.conv2d(F.pad(m, [0, 0, p, p], mode="replicate"), self.blur_v)

    def top_mean(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, cells) -> (N,): the mean of the `top` fraction of the highest cells (the maximum when it is one)."""
        k = max(1, round(self.top * int(flat.shape[1])))
        return flat.max(dim=1).values if k == 1 else flat.topk(k, dim=1).values.mean(dim=1)

    def statistics(self, smoothed: torch.Tensor) -> torch.Tensor:
        """(N, 1, h, w) smoothed grid -> (N, 3): its maximum, top-`top` mean and mean, what fused pooling weighs."""
        flat = smoothed.flatten(1)
        return torch.stack([flat.max(dim=1).values, self.top_mean(flat), flat.mean(dim=1)], dim=1)

    def set_pool_stats(self, stats: torch.Tensor) -> tuple[list[float], list[float]]:
        """Fused pooling's units from `statistics` (N, 3) of good images the bank did not see: (means, spreads)."""
        if self.pool != "fused" or stats.shape[0] < 2:
            raise ValueError("fused pooling needs the statistics of at least two good images")
        mean, std = stats.mean(0), stats.std(0)
        std = torch.maximum(std, 1e-6 * mean.abs().clamp_min(1e-6))  # a constant statistic must not divide by 0
        self.pool_mean.copy_(mean)
        self.pool_inv_std.copy_(1.0 / std)
        return [float(v) for v in mean], [float(v) for v in std]

    def forward(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, h, w) patch anomalies -> (score [N], map [N, 1, H, W] at the input size)."""
        m = self.smoothed(grid)
        amap = F.interpolate(m, size=self.size, mode="bilinear", align_corners=False)
        if self.pool == "fused":
            z = (self.statistics(m) - self.pool_mean) * self.pool_inv_std
            return z.max(dim=1).values, amap
        return self.top_mean(m.flatten(1)), amap
