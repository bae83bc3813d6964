"""featae's inference graph: patch features -> the feature autoencoder's error -> map head."""

from __future__ import annotations

import torch
from torch import nn

from tools.methods.components.feature_ae import FeatureAE, reconstruction_error
from tools.methods.components.features import PatchFeatures
from tools.methods.components.map_head import MapHead


class FeatAEGraph(nn.Module):
    """image -> (score [N], map [N, 1, H, W]): what `export_onnx` writes."""

    mean: torch.Tensor  # buffers: the patch features' per-channel mean and 1 / std, (1, D, 1, 1)
    inv_std: torch.Tensor

    def __init__(self, features: PatchFeatures, ae: FeatureAE, mean: torch.Tensor, inv_std: torch.Tensor,
                 sigma_cells: float, size: tuple[int, int], top: float) -> None:
        super().__init__()
        self.features, self.ae = features, ae
        self.head = MapHead(sigma_cells, size, top)
        self.register_buffer("mean", mean.view(1, -1, 1, 1).clone())
        self.register_buffer("inv_std", inv_std.view(1, -1, 1, 1).clone())

    def errors(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction error of every patch, (N, 1, h, w)."""
        return reconstruction_error(self.ae, (self.features(x) - self.mean) * self.inv_std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB batch in [0, 1] (N, 3, H, W) -> (score [N], map [N, 1, H, W])."""
        return self.head(self.errors(x))
