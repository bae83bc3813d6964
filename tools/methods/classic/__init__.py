"""`classic`: the reference design's feature detector, exported as one ONNX graph.

Features (33 per image, see `edged.features.classic_v1`): LBP histogram (P=24, R=3, uniform, 26 bins),
Sobel gradient magnitude (mean, std, 25th, 75th percentile), gray level (mean, std, median). Training
computes them with scikit-image/SciPy (the reference's libraries); the daemon computes them with
numpy/OpenCV in `edged.features` and never needs either. ``tests/test_features.py`` proves the two agree.

Model: StandardScaler -> PCA -> IsolationForest, or One-Class SVM with ``--opt detector=ocsvm``.
PCA keeps every component by default (a decorrelating rotation): a defect often shows in directions
in which good parts barely vary, exactly the ones a "95% of the variance" cut throws away (measured on
the magnetic tile set at 128 px, 5 seeds: image AUROC 0.61 with all components, 0.54 with 95%).
The forest is exported as one ONNX tree-ensemble node, the scaler and PCA (and an OCSVM) by skl2onnx;
the graph's ``score`` is ``-decision_function`` (higher = more anomalous).

Files: `options.py` (the ``--opt`` table), `model.py` (training-side features and the scikit-learn
pipeline), `train.py` (`ClassicMethod`), `export.py` (the ONNX graph).

Options (``--opt KEY=VALUE``): ``detector`` (iforest | ocsvm), ``pca`` (none = all components, the
default; a variance fraction in (0, 1); or a number of components), ``n_estimators`` (200), ``nu``
(0.05, OCSVM), ``gamma`` ("scale", OCSVM).

int8 does not apply: the graph is a scaler, a small matrix product and a tree ensemble (or an SVM),
which ONNX Runtime has no int8 kernels for, and its cost is negligible next to the features. The
bundle's int8 entry therefore points at the fp32 file and the manifest says so.
"""

from tools.methods.classic.train import ClassicMethod

METHOD = ClassicMethod()
