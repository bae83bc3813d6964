"""Whether the bundle normalizes each image's light, chosen from the training images (`--normalize auto`).

Why: a model learns only the light it is shown. Good parts photographed under one steady lamp teach it
nothing about a lamp that ages: fitted on the `rail` set (its brightness within a few percent), the bundle
rejected every good part under light x1.3. Normalizing each image's brightness and contrast in the shared
preprocessing (`edged.preprocess.normalize_light`, daemon and training alike) hides a lamp's gain and offset
from the model: the same set gave no false reject under x0.6-x1.4 and a higher recall. Where the good parts
themselves span more than that range (the magnetic tiles: the brightest tenth twice the darkest), brightness is
part of what good looks like, the model learns its range from them, and normalizing throws information away
(the tiles: image AUROC 0.964 -> 0.954). The rule: normalize when the brightest tenth of the training images is
less than x1.3 brighter than the darkest tenth (`SPAN`, the light a station must tolerate). Measured in
docs/input-health.md. The daemon's input health still sees the raw frames, so a lamp's drift is still reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tools.dataset import Record, sample_images

SPAN = 1.3  # the brightest gain a station must tolerate (issue 20: x0.7-x1.3); also tools.fit.LIGHT_CORNERS
SAMPLE = 64  # images decoded to learn the range: a tenth of them at each end
LOW_Q, HIGH_Q = 10.0, 90.0  # percentiles of the images' mean brightness: a few odd images do not decide


@dataclass(frozen=True)
class LightChoice:
    """What `--normalize auto` decided, and the measurement it was decided on (for the log and the manifest)."""

    normalize: str  # "mean_std" or "none"
    span: float | None  # brightest tenth / darkest tenth of the sampled images' mean brightness; None: unmeasured
    n_images: int

    def describe(self) -> str:
        """One line for the fit's log: what was chosen and why."""
        if self.span is None:
            return f"light normalization none: the brightness of {self.n_images} sampled images could not be compared"
        side = "under" if self.normalize == "mean_std" else "at or over"
        return (f"light normalization {self.normalize}, chosen from the training images: the brightest tenth of "
                f"{self.n_images} sampled is x{self.span:.2f} the darkest, {side} the x{SPAN:g} a lamp may move")


def mean_brightness(image: np.ndarray) -> float:
    """An image's mean level over its color channels (alpha left out), in its own units (8 or 16 bit)."""
    pixels = image[..., :3] if image.ndim == 3 else image
    return float(pixels.mean())


def sample_brightness(records: Sequence[Record], sample: int = SAMPLE, seed: int = 0) -> list[float]:
    """Mean brightness of a seeded sample of the records' images as stored (unreadable ones skipped)."""
    return [mean_brightness(image) for image in sample_images(records, sample, [seed, 11])]


def choose(means: Sequence[float]) -> LightChoice:
    """`mean_std` when the images' brightness spans less than `SPAN` (p10 to p90), else `none`.

    The ratio is the same in 8 and 16 bits (a linear scale cancels). Too few images to compare, or a darkest
    tenth at black, leaves the light as it is: normalizing is the choice that needs evidence of a steady lamp."""
    values = np.asarray(means, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return LightChoice("none", None, int(values.size))
    low, high = np.percentile(values, [LOW_Q, HIGH_Q])
    if low <= 0:
        return LightChoice("none", None, int(values.size))
    span = float(high / low)
    return LightChoice("mean_std" if span < SPAN else "none", round(span, 3), int(values.size))


def choose_for(records: Sequence[Record], seed: int = 0) -> LightChoice:
    """`choose` on a sample of the training records."""
    return choose(sample_brightness(records, seed=seed))
