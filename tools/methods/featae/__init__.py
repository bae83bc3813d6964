"""The design card's autoencoder, made to work: it reconstructs pretrained features instead of pixels.

Why: a pixel autoencoder learns to copy texture and copies defects along with it (the reference
design's barely beat chance on real parts). Reconstructing the frozen ImageNet features of each patch
through a narrow bottleneck learns what good patches look like in a space where a scratch and a
texture differ; the anomaly map is the per-patch reconstruction error (as in DFR-style feature
reconstruction). It needs no memory bank, so its cost does not grow with the training set, and its
graph is convolutions only, which int8 handles well.

Graph (`model.py`): RGB/255 -> EfficientNet-Lite stages (frozen, as in patchcore) -> 3x3 local average ->
concat -> (x - mean) / std per channel -> 1x1-conv autoencoder D -> hidden -> bottleneck -> hidden -> D ->
squared error summed over channels -> sqrt -> Gaussian smoothing -> bilinear upsample = anomaly map;
image score = mean of the top 10% cells. Training (`train.py`): Adam on the cached features of the good
images. Export (`export.py`): the autoencoder stays fp32.

Options (`--opt`, `options.py`): backbone, layers, bottleneck, hidden, epochs (also --epochs), lr,
sigma, top, batch.
"""

from tools.methods.featae.train import FeatAEMethod

METHOD = FeatAEMethod()
