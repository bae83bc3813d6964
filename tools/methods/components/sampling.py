"""Greedy k-center coreset sampling (PatchCore's memory-bank subsampling)."""

from __future__ import annotations

import math
from typing import Any

import torch


def greedy_coreset(x: torch.Tensor, k: int, dims: int = 128, seed: int = 0, chunk: int = 65536,
                   progress: bool = False) -> torch.Tensor:
    """Indices of `k` rows of `x` (N, D) picked by approximate greedy k-center: distances on a random
    projection to `dims`.

    Each pick costs one matrix-vector product over all patches, so k picks over N patches are
    O(k N dims); the projection keeps that practical on a CPU.
    """
    n, d = x.shape
    k = max(1, min(k, n))
    g = torch.Generator().manual_seed(seed)
    if d > dims:
        r = torch.randn(d, dims, generator=g) / math.sqrt(dims)
        z = torch.cat([x[i:i + chunk] @ r for i in range(0, n, chunk)])
    else:
        z = x.contiguous()
    sq = (z * z).sum(1)
    mind = torch.full((n,), float("inf"))
    picked = torch.empty(k, dtype=torch.long)
    cur = int(torch.randint(n, (1,), generator=g))
    steps: Any = range(k)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="patchcore coreset", unit="pick", mininterval=1.0)
    for i in steps:
        picked[i] = cur
        dist = torch.addmv(sq + sq[cur], z, z[cur], alpha=-2.0)
        torch.minimum(mind, dist, out=mind)
        mind[cur] = 0.0
        cur = int(torch.argmax(mind))
    return picked
