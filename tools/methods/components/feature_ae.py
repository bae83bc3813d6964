"""The per-patch feature autoencoder, shared by ``--method featae`` (alone) and patchcore's ``featae`` option
(beside the memory bank in one graph): a 1x1-convolution autoencoder of standardized backbone features, whose
reconstruction error per patch is an anomaly grid."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# hidden/bottleneck channels, epochs, learning rate, jitter: patchcore's featae option (beside the bank); `--method
# featae` alone trains a wider one with jitter (tools/methods/featae/options.py; docs/detection.md has the sweep)
AE_DEFAULTS: dict[str, Any] = {"hidden": 192, "bottleneck": 32, "epochs": 30, "lr": 2e-3, "jitter": 0.0}


class FeatureAE(nn.Module):
    """Per-patch autoencoder as 1x1 convolutions (so it runs on the whole grid in one graph)."""

    def __init__(self, dims: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dims, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, bottleneck, 1), nn.ReLU(),
            nn.Conv2d(bottleneck, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, dims, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of standardized patch features, (N, D, h, w) -> (N, D, h, w)."""
        return self.net(x)


def reconstruction_error(ae: FeatureAE, f: torch.Tensor) -> torch.Tensor:
    """L2 error of every standardized patch vector, (N, D, h, w) -> (N, 1, h, w); the graph's own formula."""
    d = f - ae(f)
    return torch.sqrt((d * d).sum(dim=1, keepdim=True) + 1e-12)


def train_ae(patches: torch.Tensor, o: dict[str, Any], seed: int) -> tuple[FeatureAE, list[float]]:
    """Fit the autoencoder to standardized patch vectors (P, D) with ``o``'s hidden, bottleneck, epochs and lr
    (Adam, cosine schedule, batches of 1024); returns it in eval mode and the mean loss per epoch.

    ``o["jitter"]`` (default 0): Gaussian noise of that standard deviation (standardized units) added to each input
    vector, the clean one the target, so the autoencoder learns to bring a patch back to good features rather
    than to copy any vector (UniAD's feature jittering)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ae = FeatureAE(patches.shape[1], o["hidden"], o["bottleneck"])
    opt = torch.optim.Adam(ae.parameters(), lr=o["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o["epochs"])
    x4 = patches[:, :, None, None]
    jitter = float(o.get("jitter", 0.0))
    losses = []
    for _ in range(o["epochs"]):
        perm = torch.randperm(x4.shape[0], generator=g)
        total = 0.0
        for i in range(0, x4.shape[0], 1024):
            xb = x4[perm[i:i + 1024]]
            noisy = xb + jitter * torch.randn(xb.shape, generator=g) if jitter > 0 else xb
            loss = F.mse_loss(ae(noisy), xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * xb.shape[0]
        sched.step()
        losses.append(total / x4.shape[0])
    return ae.eval(), losses
