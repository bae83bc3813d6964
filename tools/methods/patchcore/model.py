"""PatchCore's inference graph: patch features -> distance to the nearest memory-bank patch (optionally plus a
feature autoencoder's error on the same features) -> map head."""

from __future__ import annotations

import torch
from torch import nn

from tools.methods.components.feature_ae import FeatureAE, reconstruction_error
from tools.methods.components.features import PatchFeatures
from tools.methods.components.map_head import MapHead


class BesideBank(nn.Module):
    """A feature autoencoder beside the memory bank (patchcore's ``featae`` option): its error on the same
    features, and the scales that put the two grids on one footing (each divided by its mean over the
    training patches, then ``weight`` x the autoencoder's added), so neither map's units decide."""

    ae_mean: torch.Tensor  # buffers: the bank features' per-channel mean and 1 / std (1, D, 1, 1); scalar scales
    ae_inv_std: torch.Tensor
    bank_scale: torch.Tensor
    ae_scale: torch.Tensor

    def __init__(self, ae: FeatureAE, mean: torch.Tensor, inv_std: torch.Tensor, weight: float) -> None:
        super().__init__()
        self.ae = ae
        self.weight = weight
        self.register_buffer("ae_mean", mean.view(1, -1, 1, 1).clone())
        self.register_buffer("ae_inv_std", inv_std.view(1, -1, 1, 1).clone())
        self.register_buffer("bank_scale", torch.tensor(1.0))
        self.register_buffer("ae_scale", torch.tensor(1.0))

    def errors(self, f: torch.Tensor) -> torch.Tensor:
        """The autoencoder's error of every patch of the (bank-scaled) features f, (N, 1, h, w)."""
        return reconstruction_error(self.ae, (f - self.ae_mean) * self.ae_inv_std)

    def fuse(self, distances: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """bank distance / its scale + weight x autoencoder error / its scale."""
        return distances / self.bank_scale + (self.weight / self.ae_scale) * self.errors(f)


class PatchCoreGraph(nn.Module):
    """The whole inference path (what `export_onnx` writes): image -> (score [N], map [N, 1, H, W])."""

    bank_t: torch.Tensor  # buffers: -2 x the memory bank transposed (D, M), and its squared norms (M,)
    bank_sq: torch.Tensor

    def __init__(self, features: PatchFeatures, bank: torch.Tensor, sigma_cells: float, size: tuple[int, int],
                 top: float = 0.0, beside: BesideBank | None = None) -> None:
        super().__init__()
        self.features = features
        # ||b||^2 - 2 a.b as one MatMul + Add: the -2 is folded into the bank constant.
        self.register_buffer("bank_t", (-2.0 * bank).t().contiguous())  # (D, M)
        self.register_buffer("bank_sq", (bank * bank).sum(1))  # (M,)
        self.head = MapHead(sigma_cells, size, top)
        self.beside = beside

    def nearest(self, f: torch.Tensor) -> torch.Tensor:
        """Distance of every patch of the features f to its nearest memory-bank patch, (N, 1, h, w)."""
        n, _, h, w = f.shape
        a = f.flatten(2).transpose(1, 2)  # (N, hw, D)
        partial = torch.matmul(a, self.bank_t) + self.bank_sq  # (N, hw, M)
        nearest = partial.min(dim=2).values + (a * a).sum(2)  # (N, hw)
        return torch.sqrt(torch.clamp(nearest, min=0.0)).view(n, 1, h, w)

    def patch_distances(self, x: torch.Tensor) -> torch.Tensor:
        """The anomaly of every patch, (N, 1, h, w): its bank distance, fused with the autoencoder's error
        when one sits beside the bank."""
        f = self.features(x)
        d = self.nearest(f)
        return d if self.beside is None else self.beside.fuse(d, f)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB batch in [0, 1] (N, 3, H, W) -> (score [N], map [N, 1, H, W])."""
        return self.head(self.patch_distances(x))
