"""tools/methods/components/feature_ae.py: the per-patch autoencoder and its feature jittering."""

from __future__ import annotations

import torch

from tools.methods.components.feature_ae import AE_DEFAULTS, reconstruction_error, train_ae


def _on_a_line(n: int, seed: int) -> torch.Tensor:
    """Good "features": every vector on one line through the origin of a 4-dimensional space."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.tensor([0.8, 0.6, 0.0, 0.0])
    return torch.randn(n, 1, generator=g) * direction


def test_jitter_teaches_it_to_bring_vectors_back_to_good_features_not_to_copy_them() -> None:
    """Trained on jittered inputs towards the clean ones, with a bottleneck as wide as the input (nothing forces
    it to compress), the autoencoder learns the good features' line and projects onto it: a vector off that line
    (an anomalous patch) keeps its distance as error, while good vectors come back almost exactly. The jitter is
    applied: the noise it must undo keeps its training loss above the plain one's."""
    torch.manual_seed(0)
    good = _on_a_line(4000, seed=1)
    opts = {**AE_DEFAULTS, "hidden": 32, "bottleneck": 4, "epochs": 40, "lr": 5e-3}
    _, plain_losses = train_ae(good, {**opts, "jitter": 0.0}, seed=0)
    jittered, losses = train_ae(good, {**opts, "jitter": 0.5}, seed=0)
    off = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [-0.6, 0.8, 0.0, 0.0]])  # off the line
    new_good = _on_a_line(200, seed=2)

    def err(ae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return reconstruction_error(ae, x[:, :, None, None]).flatten()  # type: ignore[arg-type]

    assert float(err(jittered, new_good).mean()) < 0.15
    assert float(err(jittered, off).min()) > 0.7  # each at distance 1 from the line: mostly kept as error
    assert losses[-1] < losses[0] and losses[-1] > 2 * plain_losses[-1]
