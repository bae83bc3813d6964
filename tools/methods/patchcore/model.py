"""PatchCore's inference graph: patch features -> distance to the nearest memory-bank patch -> map head."""

from __future__ import annotations

import torch
from torch import nn

from tools.methods.components.features import PatchFeatures
from tools.methods.components.map_head import MapHead


class PatchCoreGraph(nn.Module):
    """The whole inference path (what `export_onnx` writes): image -> (score [N], map [N, 1, H, W])."""

    bank_t: torch.Tensor  # buffers: -2 x the memory bank transposed (D, M), and its squared norms (M,)
    bank_sq: torch.Tensor

    def __init__(self, features: PatchFeatures, bank: torch.Tensor, sigma_cells: float, size: tuple[int, int],
                 top: float = 0.0) -> None:
        super().__init__()
        self.features = features
        # ||b||^2 - 2 a.b as one MatMul + Add: the -2 is folded into the bank constant.
        self.register_buffer("bank_t", (-2.0 * bank).t().contiguous())  # (D, M)
        self.register_buffer("bank_sq", (bank * bank).sum(1))  # (M,)
        self.head = MapHead(sigma_cells, size, top)

    def patch_distances(self, x: torch.Tensor) -> torch.Tensor:
        """Distance of every patch to its nearest memory-bank patch, (N, 1, h, w)."""
        f = self.features(x)
        n, _, h, w = f.shape
        a = f.flatten(2).transpose(1, 2)  # (N, hw, D)
        partial = torch.matmul(a, self.bank_t) + self.bank_sq  # (N, hw, M)
        nearest = partial.min(dim=2).values + (a * a).sum(2)  # (N, hw)
        return torch.sqrt(torch.clamp(nearest, min=0.0)).view(n, 1, h, w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB batch in [0, 1] (N, 3, H, W) -> (score [N], map [N, 1, H, W])."""
        return self.head(self.patch_distances(x))
