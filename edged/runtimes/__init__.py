"""The inference libraries a bundle can run under, one module per library, behind one small interface.

`registry` names them and opens one for a model file; `choice` decides which one (and which precision) a
Detector runs: an explicit `model.runtime`, or `auto`, the fastest of those the bundle was verified under
(`edged-train verify`). Everything above this package (the Detector, the workers) sees only `Backend`.
"""
