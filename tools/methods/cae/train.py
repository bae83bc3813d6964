"""Training the autoencoder (seeded, deterministic, on CPU) and `CaeMethod`, what ``--method cae`` runs."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edged.bundle import InputSpec
from tools.methods.base import FitOptions
from tools.methods.cae.export import CaeTrained, quantize_options
from tools.methods.cae.model import Autoencoder, ErrorHead, ssim_map, ssim_window
from tools.methods.cae.options import CaeConfig, option_table
from tools.methods.components.blur import GaussianBlur
from tools.methods.components.options import Option
from tools.methods.components.tensors import images_to_tensor


def _to_batch(images: list[np.ndarray], channels: int) -> torch.Tensor:
    """Prepared images as a contiguous NCHW float batch: the layout the autoencoder's numbers were fixed on."""
    return images_to_tensor(images, channels).contiguous()


def _augment(batch: torch.Tensor, cfg: CaeConfig, gen: torch.Generator) -> torch.Tensor:
    n = batch.shape[0]
    if cfg.augment:
        gain = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.contrast
        shift = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.brightness
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)
        batch = ((batch - mean) * gain + mean + shift).clamp(0, 1)
    if cfg.flip:
        hflip = torch.rand(n, generator=gen) < 0.5
        vflip = torch.rand(n, generator=gen) < 0.5
        batch = batch.clone()
        batch[hflip] = batch[hflip].flip(3)
        batch[vflip] = batch[vflip].flip(2)
    return batch


def _loss(x: torch.Tensor, y: torch.Tensor, cfg: CaeConfig, window: GaussianBlur) -> torch.Tensor:
    if cfg.loss == "mse":
        return F.mse_loss(y, x)
    if cfg.loss == "l1":
        return F.l1_loss(y, x)
    dssim = (1 - ssim_map(x, y, window, cfg.channels).mean()) / 2
    return dssim if cfg.loss == "ssim" else dssim + F.l1_loss(y, x)


def _keep_freed_memory() -> None:
    """Ask glibc to reuse freed blocks instead of returning them to the OS after every batch.

    With glibc's defaults each large activation is mmap'ed and unmapped again per batch: measured on MTD,
    23 of 50 CPU seconds per epoch went to page faults; with this 36 s (with the environment variable
    MALLOC_MMAP_THRESHOLD_=4294967296 set before Python starts: 27 s). Best effort; nothing on other C
    libraries. Process-wide, which is fine for the training tool.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD: glibc's upper limit on 64-bit
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def train_autoencoder(images: list[np.ndarray], cfg: CaeConfig, seed: int, progress: bool = True,
                      desc: str = "cae") -> tuple[Autoencoder, list[float]]:
    """Seeded, deterministic training on CPU; returns the model (eval mode) and the loss per epoch."""
    _keep_freed_memory()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = _to_batch(images, cfg.channels)
    n = data.shape[0]
    if n == 0:
        raise ValueError("no training images")
    model = Autoencoder(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr * 0.05)
    window = ssim_window(cfg, data.shape[2], data.shape[3])
    history: list[float] = []
    from tqdm import tqdm

    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", disable=not progress, dynamic_ncols=True)
    with _deterministic():
        model.train()
        for _epoch in bar:
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                if len(idx) < 2 and n >= 2:  # BatchNorm needs more than one sample
                    continue
                x = _augment(data[idx], cfg, gen)
                y = model(x)
                loss = _loss(x, y, cfg, window)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            sched.step()
            history.append(total / n)
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    model.eval()
    return model, history


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


@torch.no_grad()
def position_stats(model: nn.Module, head: ErrorHead, data: torch.Tensor, batch: int = 32,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the smoothed error at each pixel over good images.

    A fixed camera sees every part in the same place, and the autoencoder errs more at some places
    (part edges, a bright rim, the frame border) than at others on every good part. Standardizing each
    pixel by its own spread on good images makes a defect stand out where good parts are steady. For
    a uniform texture the statistics are flat and this is a plain rescaling. The std has a floor (10% of
    its mean) so a pixel that never varies cannot blow up.
    """
    model.eval()
    maps = [head(x, model(x))[0] for x in data.split(batch)]
    stack = torch.cat(maps)[:, 0].double()
    mu = stack.mean(0)
    sd = stack.std(0)
    sd = sd.clamp(min=0.1 * float(sd.mean()) + 1e-6)
    return mu.float().numpy(), sd.float().numpy()


class CaeMethod:
    """A convolutional autoencoder of the images; its reconstruction error is the anomaly map.

    One object per variant (its `CaeConfig` defaults; `--opt` overrides any field)."""

    min_size = 32  # five halvings: the bottleneck is then 1x1
    max_size = 1024  # the training batch of 16 images no longer fits a few GB of memory beyond that

    def __init__(self, name: str, base: CaeConfig) -> None:
        self.name = name
        self.base = base

    @property
    def options(self) -> dict[str, Option]:
        """The --opt table: every `CaeConfig` field, with this variant's values as defaults."""
        return option_table(self.base)

    def config(self, opts: FitOptions) -> CaeConfig:
        """The variant's config with --opt and --epochs applied; OptionError naming a bad value."""
        return CaeConfig.from_options(self.base, opts.extra, opts.epochs)

    def input_spec(self, opts: FitOptions) -> InputSpec:
        """Square gray or RGB input at --size; ValueError unless --size is a multiple of 2 ** stages."""
        cfg = self.config(opts)
        if opts.size < 2 ** len(cfg.widths) or opts.size % 2 ** len(cfg.widths):
            raise ValueError(f"cae: --size must be a multiple of {2 ** len(cfg.widths)} (one halving per stage)")
        if cfg.channels == 1:
            return InputSpec(width=opts.size, height=opts.size, channels=1, color_order="gray", resize="halve_area")
        return InputSpec(width=opts.size, height=opts.size, channels=3, color_order="rgb", resize="halve_area")

    def fit(self, images: list[np.ndarray], opts: FitOptions) -> CaeTrained:
        """Train the autoencoder (and the per-pixel error statistics with ``position_norm``); exports once to
        learn the error head's node names, so the result is ready to quantize."""
        cfg = self.config(opts)
        spec = self.input_spec(opts)
        started = time.monotonic()
        model, history = train_autoencoder(images, cfg, opts.seed, progress=opts.progress, desc=self.name)
        params: dict[str, Any] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
        params.update(variant=self.name, seed=opts.seed, final_loss=round(history[-1], 6),
                      train_seconds=round(time.monotonic() - started, 1), images=len(images))
        trained = CaeTrained(spec=spec, cfg=cfg, model=model, params=params, quantize=quantize_options(cfg))
        if cfg.position_norm:
            trained.position_stats = position_stats(model, ErrorHead(cfg, spec.height, spec.width),
                                                    _to_batch(images, cfg.channels))
        with tempfile.TemporaryDirectory() as tmp:  # fills quantize.nodes_to_exclude before anyone asks
            trained.export_onnx(Path(tmp) / "probe.onnx")
        return trained
