"""Pieces several methods share (as anomalib's ``models/components``): option parsing, image -> tensor
conversion, Gaussian kernels and blur, backbone patch features, greedy coreset sampling, the map head and
the ONNX export. Import from the submodules: this package imports nothing, so a method without torch
(classic) can use `options` without loading it."""
