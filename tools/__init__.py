"""edged-train: turn folders of good images into the model bundle the daemon runs.

Uses torch and scikit-learn; the runtime package `edged` never imports this package.
"""
