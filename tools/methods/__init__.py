"""Detectors that `edged-train fit --method NAME` can train: one folder per method (its model, training,
export and options), `components/` for what several share, `base.py` for the contract with the pipeline,
and `registry.py`, the one table of method names."""
