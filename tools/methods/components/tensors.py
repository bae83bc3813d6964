"""Prepared images -> the float tensor a torch model takes: one conversion for every method."""

from __future__ import annotations

import numpy as np
import torch


def images_to_tensor(images: list[np.ndarray], channels: int = 3) -> torch.Tensor:
    """uint8 HxW(xC) images (as `edged.preprocess.prepare_uint8` gives) -> float (N, C, H, W) in [0, 1].

    Gray images are replicated when `channels` is 3; any other mismatch is a ValueError. The result is a
    permuted view (channels-last in memory): convolutions round differently on that layout than on a
    contiguous NCHW copy, so a method whose numbers were fixed on NCHW calls ``.contiguous()`` on it.
    """
    arr = np.stack([np.repeat(im[:, :, None], 3, axis=2) if im.ndim == 2 and channels == 3
                    else im[:, :, None] if im.ndim == 2 else im for im in images])
    if arr.shape[3] != channels:
        raise ValueError(f"images have {arr.shape[3]} channels, the model expects {channels}")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
