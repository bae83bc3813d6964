"""PatchCore on EfficientNet-Lite features, exported as ONE ONNX graph the daemon runs like any bundle.

Why this shape: PatchCore-class detectors are far more accurate than autoencoders on real parts, but
are usually a big backbone plus a Python/faiss kNN. Here the backbone is an edge-friendly EfficientNet-Lite
and the nearest-neighbour search is two matrix ops inside the graph (||a||^2 - 2ab + ||b||^2, then min),
so a bundle is one int8 file with no extra runtime dependency.

Graph (`model.py`): RGB/255 -> the backbone's input normalization ((x-127)/128) -> its stages -> 3x3 local
average -> upsample to the finest grid -> concat (-> optional linear projection) -> per-channel scale ->
squared distance to every memory-bank patch -> min -> sqrt -> light Gaussian smoothing on the patch grid ->
bilinear upsample to the input size = anomaly map; image score = mean of the top 10% grid cells (pool=fused:
the largest z-score of the grid's maximum, top 10% mean and mean, each in units of good images the bank did not see).
Fitting (`train.py`): features of the good images, standardization, greedy coreset into the memory bank.
Export (`export.py`): the fp32 graph, with the kNN tail and the backbone's stem stage kept out of int8.

Options (`--opt KEY=VALUE`, `options.py`): backbone (default lite1), layers (default "s4,s5,s6":
stride 16 + 16 + 32, 80 + 112 + 192 channels, on the stride-16 grid), standardize (default true: each
feature channel divided by its spread on the good patches, so every channel weighs the same in the
distance), coreset (fraction of the training patches kept in the memory bank, default 0.1), top (the
image score's fraction of highest cells, default 0.1), pool (top, default, or fused),
featae (weight of a feature autoencoder's error fused
with the bank's distance in the same graph, default 0 = off; docs/detection.md), gaussian (weight of an
image-level Gaussian of the features' statistics added to the score, default 0 = off), proj, max_patches,
coreset_dims, sigma, batch.
The input may be any width x height (the pipeline picks it from the training images).
The choice of defaults and the sweep behind them: docs/patchcore.md.
"""

from tools.methods.patchcore.train import PatchCoreMethod

METHOD = PatchCoreMethod()
