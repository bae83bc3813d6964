"""The map head of the feature-based methods (patch grid -> anomaly map and image score), so patchcore
and featae compute their maps and scores exactly alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tools.methods.components.blur import gaussian_kernel


class MapHead(nn.Module):
    """Per-patch anomaly grid (N, 1, h, w) -> (image score [N], anomaly map [N, 1, H, W]).

    Light Gaussian smoothing on the grid, bilinear upsampling to the input size, and as image score the
    mean of the `top` fraction of the highest smoothed cells (the maximum when `top` is 0). Why not the
    maximum: one cell is the noisiest statistic of a map, and the good part that scores highest sets the
    threshold; on the magnetic tiles the top 10% rank better (image AUROC 0.971 vs 0.964, recall at 1%
    false rejects 0.68 vs 0.59; docs/detection.md) while a defect of a tenth of the part still scores in full.
    """

    blur_h: torch.Tensor  # buffers: the grid's smoothing taps, (1, 1, 1, k) and (1, 1, k, 1)
    blur_v: torch.Tensor

    def __init__(self, sigma_cells: float, size: tuple[int, int], top: float = 0.0) -> None:
        super().__init__()
        k = gaussian_kernel(sigma_cells)
        self.register_buffer("blur_h", k.view(1, 1, 1, -1))
        self.register_buffer("blur_v", k.view(1, 1, -1, 1))
        self.pad = (k.numel() - 1) // 2
        self.size = size  # (height, width)
        self.top = top

    def forward(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, h, w) patch anomalies -> (score [N], map [N, 1, H, W] at the input size)."""
        p = self.pad
        m = F.conv2d(F.pad(grid, [p, p, 0, 0], mode="replicate"), self.blur_h)
        m = F.conv2d(F.pad(m, [0, 0, p, p], mode="replicate"), self.blur_v)
        amap = F.interpolate(m, size=self.size, mode="bilinear", align_corners=False)
        flat = m.flatten(1)
        k = max(1, round(self.top * int(flat.shape[1])))
        score = flat.max(dim=1).values if k == 1 else flat.topk(k, dim=1).values.mean(dim=1)
        return score, amap
