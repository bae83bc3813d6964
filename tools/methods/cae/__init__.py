"""Convolutional autoencoder detectors, trained on good images only.

Two variants share one implementation:

* ``cae-reference``: the reference design, kept so its figures can be reproduced: five stride-2 4x4
  convolutions 32-64-128-256-512 with BatchNorm+ReLU, the mirrored ConvTranspose decoder, a sigmoid
  output, MSE loss, and the whole-image MSE as the score (MTD, 128 px: image AUROC about 0.57).
* ``cae`` (default): the same encoder at half the width (16..256), a resize+3x3-convolution decoder
  (quantizes fully to int8; ONNX Runtime's CPU int8 kernels leave ConvTranspose in fp32), an SSIM+L1
  loss with brightness/contrast augmentation, and a score taken from a smoothed per-pixel error map
  (relative to the image's brightness, standardized per pixel by its spread on the training images),
  scored by its top-1% mean instead of the global MSE, which dilutes a small defect in thousands of
  well-reconstructed pixels.

docs/cae.md has the measurements behind these choices. Files: `options.py` (`CaeConfig`, the variants),
`model.py` (autoencoder, error head, SSIM), `train.py` (training, `CaeMethod`), `export.py` (the ONNX graph).

Every option can be changed with ``edged-train fit --method cae --opt KEY=VALUE`` (see `CaeConfig`).
The exported graph computes the map and the score itself, so the daemon only runs it.
"""

from tools.methods.cae.options import DEFAULT, REFERENCE
from tools.methods.cae.train import CaeMethod

METHOD = CaeMethod("cae", DEFAULT)
REFERENCE_METHOD = CaeMethod("cae-reference", REFERENCE)
