"""PatchCore's inference graph: patch features -> distance to the nearest memory-bank patch (optionally plus a
feature autoencoder's error on the same features) -> map head; optionally plus an image-level Gaussian's
distance on the same features added to the image score."""

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


def feature_statistics(f: torch.Tensor) -> torch.Tensor:
    """Each channel's mean and spread over the patch grid, (N, 2D): what the whole image looks like."""
    mean = f.mean(dim=(2, 3))
    var = torch.clamp((f * f).mean(dim=(2, 3)) - mean * mean, min=0.0)
    return torch.cat([mean, torch.sqrt(var + 1e-12)], dim=1)


class ImageGaussian(nn.Module):
    """An image-level Gaussian beside the bank (patchcore's ``gaussian`` option): the Mahalanobis distance of an
    image's `feature_statistics` from the good images', times a factor that puts it in the bank score's units
    (``weight`` x the mean bank score / the mean distance over the training images). It sees what no single
    patch shows: a tile shaded unevenly, a texture a little too coarse everywhere, a faint smudge spread wide."""

    mean: torch.Tensor  # buffers: the good images' mean statistics (2D,), the shrunk precision matrix (2D, 2D)
    precision: torch.Tensor
    factor: torch.Tensor

    def __init__(self, mean: torch.Tensor, precision: torch.Tensor, factor: float) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("precision", precision.float().clone())
        self.register_buffer("factor", torch.tensor(float(factor)))

    def distance(self, stats: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of statistics (N, 2D) from the good images', (N,)."""
        c = stats - self.mean
        return torch.sqrt(torch.clamp((torch.matmul(c, self.precision) * c).sum(1), min=0.0))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """What the image score gains for patch features f (N, D, h, w): factor x distance, (N,)."""
        return self.factor * self.distance(feature_statistics(f))


class PatchCoreGraph(nn.Module):
    """The whole inference path (what `export_onnx` writes): image -> (score [N], map [N, 1, H, W])."""

    bank_t: torch.Tensor  # buffers: -2 x the memory bank transposed (D, M), and its squared norms (M,)
    bank_sq: torch.Tensor

    def __init__(self, features: PatchFeatures, bank: torch.Tensor, sigma_cells: float, size: tuple[int, int],
                 top: float = 0.0, beside: BesideBank | None = None, gaussian: ImageGaussian | None = None,
                 pool: str = "top") -> None:
        super().__init__()
        self.features = features
        # ||b||^2 - 2 a.b as one MatMul + Add: the -2 is folded into the bank constant.
        self.register_buffer("bank_t", (-2.0 * bank).t().contiguous())  # (D, M)
        self.register_buffer("bank_sq", (bank * bank).sum(1))  # (M,)
        self.head = MapHead(sigma_cells, size, top, pool)
        self.beside = beside
        self.gaussian = gaussian

    def nearest(self, f: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
        """Distance of every patch of the features f to its nearest memory-bank patch, (N, 1, h, w); bank rows
        where the mask `ignore` (M,) is true are not candidates (fit: an image scored without its own patches)."""
        n, _, h, w = f.shape
        a = f.flatten(2).transpose(1, 2)  # (N, hw, D)
        partial = torch.matmul(a, self.bank_t) + self.bank_sq  # (N, hw, M)
        if ignore is not None:
            partial = partial.masked_fill(ignore, float("inf"))
        nearest = partial.min(dim=2).values + (a * a).sum(2)  # (N, hw)
        return torch.sqrt(torch.clamp(nearest, min=0.0)).view(n, 1, h, w)

    def distances_of(self, f: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
        """The anomaly of every patch of the features f, (N, 1, h, w): its bank distance (`nearest`), fused with
        the autoencoder's error when one sits beside the bank."""
        d = self.nearest(f, ignore)
        return d if self.beside is None else self.beside.fuse(d, f)

    def patch_distances(self, x: torch.Tensor) -> torch.Tensor:
        """`distances_of` the features of an RGB batch in [0, 1]."""
        return self.distances_of(self.features(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB batch in [0, 1] (N, 3, H, W) -> (score [N], map [N, 1, H, W]); the image Gaussian, when there is
        one, adds to the score only (the map stays the patches')."""
        f = self.features(x)
        score, amap = self.head(self.distances_of(f))
        return (score, amap) if self.gaussian is None else (score + self.gaussian(f), amap)
